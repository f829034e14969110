/*
 * Drives the first virtio-blk device through every request type and
 * prints what the device answered, for the differential test: features,
 * configuration space, the serial (get-id), reads of what the host put
 * in the image, writes of fixed patterns (the host checks them with
 * qemu-io afterwards), multi-segment chains, flush, write-zeroes with
 * and without unmap, discard, and requests the device must refuse.
 * Command line: "indirect" and "evidx" negotiate those ring features;
 * "assign" places the BARs itself even where firmware did.
 * Exits with code 0x20 (0x21 if the device was not usable).
 *
 * Image layout the test prepares: sectors 0-127 hold 0xa5. The guest
 * leaves: 16-23 zero, 32 0x22, 33-34 0x33, 35 0x44, 64-71 0x5a.
 */
#include "vblk.h"

#define ALL_BLK_FEATURES ((1u << VIRTIO_BLK_F_SIZE_MAX) | (1u << VIRTIO_BLK_F_SEG_MAX) | \
    (1u << VIRTIO_BLK_F_GEOMETRY) | (1u << VIRTIO_BLK_F_RO) | (1u << VIRTIO_BLK_F_BLK_SIZE) | \
    (1u << VIRTIO_BLK_F_FLUSH) | (1u << VIRTIO_BLK_F_TOPOLOGY) | (1u << VIRTIO_BLK_F_CONFIG_WCE) | \
    (1u << VIRTIO_BLK_F_MQ) | (1u << VIRTIO_BLK_F_DISCARD) | (1u << VIRTIO_BLK_F_WRITE_ZEROES))

static uint8_t buf[8192] __attribute__((aligned(4096)));
static uint8_t buf2[8192] __attribute__((aligned(4096)));

static uint32_t fnv(const uint8_t *p, uint32_t n)
{
    uint32_t h = 2166136261u;
    while (n--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

static int all_bytes(const uint8_t *p, uint32_t n, uint8_t v)
{
    while (n--)
        if (*p++ != v)
            return 0;
    return 1;
}

static void print_config(struct vblk *b)
{
    struct virtio_dev *v = &b->v;
    print("capacity %u:%u size_max %u seg_max %u\n", (uint32_t)(b->capacity >> 32), (uint32_t)b->capacity,
          vcfg32(v, VBLK_CFG_SIZE_MAX), vcfg32(v, VBLK_CFG_SEG_MAX));
    print("geometry %u/%u/%u blk_size %u phys_exp %u align %u min_io %u opt_io %u\n",
          vcfg16(v, VBLK_CFG_CYLINDERS), vcfg8(v, VBLK_CFG_HEADS), vcfg8(v, VBLK_CFG_SECTORS),
          vcfg32(v, VBLK_CFG_BLK_SIZE), vcfg8(v, VBLK_CFG_PHYS_EXP), vcfg8(v, VBLK_CFG_ALIGN_OFFSET),
          vcfg16(v, VBLK_CFG_MIN_IO), vcfg32(v, VBLK_CFG_OPT_IO));
    print("wce %u num_queues %u discard %u/%u/%u write_zeroes %u/%u/%u\n", vcfg8(v, VBLK_CFG_WCE),
          vcfg16(v, VBLK_CFG_NUM_QUEUES), vcfg32(v, VBLK_CFG_MAX_DISCARD_SECTORS),
          vcfg32(v, VBLK_CFG_MAX_DISCARD_SEG), vcfg32(v, VBLK_CFG_DISCARD_ALIGN),
          vcfg32(v, VBLK_CFG_MAX_WZ_SECTORS), vcfg32(v, VBLK_CFG_MAX_WZ_SEG), vcfg8(v, VBLK_CFG_WZ_MAY_UNMAP));
}

static int submit_wait(struct vblk *b, uint32_t type, uint64_t sector, const struct vbuf *d, int n, uint32_t *len)
{
    uint16_t head;
    if (vblk_submit(b, type, sector, d, n) < 0)
        return -1;
    return vblk_complete(b, &head, len);
}

static void plain_requests(struct vblk *b)
{
    char id[VIRTIO_BLK_ID_BYTES + 1];
    uint32_t len;
    int st = vblk_get_id(b, id);
    print("get-id %d '%s'\n", st, id);
    struct vbuf rd = {buf, 4096, 0};
    st = submit_wait(b, VIRTIO_BLK_T_IN, 0, &rd, 1, &len);
    print("read 0+8: %d len %u fnv %x all-a5 %u\n", st, len, fnv(buf, 4096), all_bytes(buf, 4096, 0xa5));
    memset(buf, 0x5a, 4096);
    struct vbuf wr = {buf, 4096, 0};
    st = submit_wait(b, VIRTIO_BLK_T_OUT, 64, &wr, 1, &len);
    print("write 64+8: %d len %u\n", st, len);
    memset(buf2, 0, 4096);
    st = vblk_rw(b, VIRTIO_BLK_T_IN, 64, buf2, 4096);
    print("read back 64+8: %d same %u\n", st, all_bytes(buf2, 4096, 0x5a));
    print("flush: %d\n", vblk_flush(b));
}

static void segmented_requests(struct vblk *b)
{
    memset(buf, 0x22, 512);
    memset(buf + 512, 0x33, 1024);
    memset(buf + 1536, 0x44, 512);
    struct vbuf w[3] = {{buf, 512, 0}, {buf + 512, 1024, 0}, {buf + 1536, 512, 0}};
    uint32_t len;
    int st = submit_wait(b, VIRTIO_BLK_T_OUT, 32, w, 3, &len);
    print("write 3 segments at 32: %d len %u\n", st, len);
    memset(buf2, 0, 2048);
    struct vbuf r[2] = {{buf2, 1536, 0}, {buf2 + 1536, 512, 0}};
    st = submit_wait(b, VIRTIO_BLK_T_IN, 32, r, 2, &len);
    print("read 2 segments at 32: %d len %u fnv %x\n", st, len, fnv(buf2, 2048));
}

static void zeroing_requests(struct vblk *b)
{
    memset(buf, 0x11, 4096);
    print("write 16+8: %d\n", vblk_rw(b, VIRTIO_BLK_T_OUT, 16, buf, 4096));
    print("write-zeroes 16+4: %d\n", vblk_write_zeroes(b, 16, 4, 0));
    print("write-zeroes 20+4 unmap: %d\n", vblk_write_zeroes(b, 20, 4, 1));
    memset(buf2, 0xee, 4096);
    int st = vblk_rw(b, VIRTIO_BLK_T_IN, 16, buf2, 4096);
    print("read 16+8: %d zero %u\n", st, all_bytes(buf2, 4096, 0));
    memset(buf, 0x66, 4096);
    print("write 48+8: %d\n", vblk_rw(b, VIRTIO_BLK_T_OUT, 48, buf, 4096));
    print("discard 48+8: %d\n", vblk_discard(b, 48, 8));
    st = vblk_rw(b, VIRTIO_BLK_T_IN, 48, buf2, 4096);
    print("read 48+8: %d fnv %x\n", st, fnv(buf2, 4096));
}

static void refused_requests(struct vblk *b)
{
    uint64_t end = b->capacity;
    print("read at capacity: %d\n", vblk_rw(b, VIRTIO_BLK_T_IN, end, buf, 512));
    print("read across the end: %d\n", vblk_rw(b, VIRTIO_BLK_T_IN, end - 1, buf, 1024));
    print("write at capacity: %d\n", vblk_rw(b, VIRTIO_BLK_T_OUT, end, buf, 512));
    print("write of 100 bytes: %d\n", vblk_rw(b, VIRTIO_BLK_T_OUT, 8, buf, 100));
    print("unknown type 99: %d\n", vblk_rw(b, 99, 0, buf, 512));
    print("write-zeroes beyond the end: %d\n", vblk_write_zeroes(b, end - 2, 4, 0));
    print("discard beyond the end: %d\n", vblk_discard(b, end, 1));
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    struct vblk b;
    const char *cmdline = guest_cmdline(info);
    uint64_t wanted = ALL_BLK_FEATURES;
    (void)magic;
    serial_init();
    guest_alloc_init(info);
    if (str_has(cmdline, "evidx"))
        wanted |= 1ull << VIRTIO_F_EVENT_IDX;
    if (str_has(cmdline, "indirect"))
        wanted |= 1ull << VIRTIO_F_INDIRECT_DESC;
    pci_reassign = str_has(cmdline, "assign");
    int st = vblk_init(&b, 0, wanted, 128);
    if (st != 0) {
        print("virtio-blk init failed: %d\n", st);
        return 0x21;
    }
    b.indirect = str_has(cmdline, "indirect");
    uint64_t offered = virtio_device_features(&b.v);
    print("device features %x\n", (uint32_t)offered & 0xffffff);
    print("transport %x:%x\n", (uint32_t)(offered >> 32), (uint32_t)offered & 0xff000000u);
    print("negotiated %x:%x\n", (uint32_t)(b.v.features >> 32), (uint32_t)b.v.features);
    print("queues %u queue 0 size %u\n", virtio_num_queues(&b.v), b.vq.size);
    print_config(&b);
    plain_requests(&b);
    segmented_requests(&b);
    zeroing_requests(&b);
    refused_requests(&b);
    print("status %x\n", virtio_status(&b.v));
    print("done\n");
    return 0x20;
}
