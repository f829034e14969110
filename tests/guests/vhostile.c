/*
 * A hostile virtio-blk driver: each attack sets the device up afresh
 * (queue size 8), breaks one rule of the split ring or of virtio-blk,
 * notifies, and prints whether the device answered (a used element) or
 * asked for a reset (NEEDS_RESET). The device must survive every one, and
 * a well-formed read afterwards must work; the serial console printing
 * all this is the other device that must keep working. Then it waits for
 * a byte on the serial line (the test looks at the VMM meanwhile) and
 * exits with 0x22.
 */
#include "vblk.h"

#define QSIZE 8
#define WAIT_TICKS 3000000000ull

static uint8_t data[4096] __attribute__((aligned(4096)));
static struct vblk_outhdr hdr __attribute__((aligned(16)));
static uint8_t status_byte;
static struct vring_desc table[2048] __attribute__((aligned(16)));

static void desc(struct virtq *vq, int i, uint32_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    vq->desc[i] = (struct vring_desc){addr, len, flags, next};
}

static void read_request(struct virtq *vq, uint32_t data_addr, uint32_t data_len)
{
    hdr = (struct vblk_outhdr){VIRTIO_BLK_T_IN, 0, 0};
    desc(vq, 0, (uint32_t)&hdr, sizeof(hdr), VRING_DESC_F_NEXT, 1);
    desc(vq, 1, data_addr, data_len, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    desc(vq, 2, (uint32_t)&status_byte, 1, VRING_DESC_F_WRITE, 0);
}

static void loop_chain(struct virtq *vq)
{
    read_request(vq, (uint32_t)data, 512);
    vq->desc[1].next = 0;                                   /* 0 -> 1 -> 0 -> ... */
}

static void outside_ram(struct virtq *vq) { read_request(vq, 0xf0000000u, 512); }
static void beyond_ram_top(struct virtq *vq) { read_request(vq, 0x08000000u, 512); }
static void huge_buffer(struct virtq *vq) { read_request(vq, (uint32_t)data, 0x7fffffffu); }
static void zero_length(struct virtq *vq) { read_request(vq, (uint32_t)data, 0); }

static void no_status(struct virtq *vq)
{
    hdr = (struct vblk_outhdr){VIRTIO_BLK_T_OUT, 0, 0};
    desc(vq, 0, (uint32_t)&hdr, sizeof(hdr), VRING_DESC_F_NEXT, 1);
    desc(vq, 1, (uint32_t)data, 512, 0, 0);
}

static void short_header(struct virtq *vq)
{
    read_request(vq, (uint32_t)data, 512);
    vq->desc[0].len = 8;
}

static void next_out_of_table(struct virtq *vq)
{
    read_request(vq, (uint32_t)data, 512);
    vq->desc[1].next = 500;
}

static void indirect_too_long(struct virtq *vq)
{
    /* 2048 one-byte device-readable buffers, then the status: more than any device takes. */
    for (int i = 0; i < 2048; i++)
        table[i] = (struct vring_desc){(uint32_t)data, 1, (uint16_t)(i < 2047 ? VRING_DESC_F_NEXT : VRING_DESC_F_WRITE),
                                       (uint16_t)(i + 1)};
    desc(vq, 0, (uint32_t)table, sizeof(table), VRING_DESC_F_INDIRECT, 0);
}

static void indirect_bad_size(struct virtq *vq)
{
    desc(vq, 0, (uint32_t)table, 24, VRING_DESC_F_INDIRECT, 0);
}

struct attack {
    const char *name;
    void (*build)(struct virtq *vq);
};

static const struct attack attacks[] = {
    {"descriptor loop", loop_chain},
    {"buffer outside RAM", outside_ram},
    {"buffer beyond the top of RAM", beyond_ram_top},
    {"2 GiB buffer", huge_buffer},
    {"zero-length buffer", zero_length},
    {"no status byte", no_status},
    {"8-byte header", short_header},
    {"next beyond the table", next_out_of_table},
    {"indirect chain of 2048", indirect_too_long},
    {"indirect table of 24 bytes", indirect_bad_size},
};

/* Waits for the device's answer: a used element, NEEDS_RESET, or nothing. */
static const char *outcome(struct vblk *b)
{
    uint64_t start = rdtsc();
    uint16_t head;
    uint32_t len;
    while (rdtsc() - start < WAIT_TICKS) {
        if (virtq_poll(&b->vq, &head, &len))
            return status_byte == VIRTIO_BLK_S_OK ? "completed ok" : "completed with an error";
        if (virtio_status(&b->v) & VIRTIO_STATUS_NEEDS_RESET)
            return "needs reset";
    }
    return "no answer";
}

static int setup(struct vblk *b)
{
    return vblk_init(b, 0, 1ull << VIRTIO_F_INDIRECT_DESC, QSIZE);
}

static void ring_attack(struct vblk *b, const char *name, int kind)
{
    if (setup(b) != 0) {
        print("%s: setup failed\n", name);
        return;
    }
    read_request(&b->vq, (uint32_t)data, 512);
    if (kind == 0) {
        b->vq.avail[2] = 200;                               /* a head beyond the queue */
        mb();
        b->vq.avail[1] = 1;
    } else {
        b->vq.avail[2] = 0;
        mb();
        b->vq.avail[1] = 100;                               /* 100 new entries in a ring of 8 */
    }
    virtq_notify(&b->vq);
    print("%s: %s\n", name, outcome(b));
}

/* A queue of `size` entries (not a power of two, or too big) holding one good read. */
static void queue_size_attack(struct vblk *b, uint16_t size)
{
    struct virtio_dev *v = &b->v;
    struct virtq *vq = &b->vq;
    uintptr_t area = (uintptr_t)table;
    virtio_find(VIRTIO_ID_BLOCK, 0, v);
    virtio_negotiate(v, 0);
    memset(table, 0, sizeof(table));
    vq->desc = (struct vring_desc *)area;
    vq->avail = (volatile uint16_t *)(area + 16384);
    vq->used = (volatile uint8_t *)(area + 24576);
    vq->size = 3;                                           /* the driver only uses slot 0 */
    vq->last_used = vq->avail_idx = 0;
    vq->event_idx = 0;
    mmio_write16(v->common + VCOMMON_Q_SELECT, 0);
    mmio_write16(v->common + VCOMMON_Q_SIZE, size);
    mmio_write32(v->common + VCOMMON_Q_DESCLO, (uint32_t)area);
    mmio_write32(v->common + VCOMMON_Q_AVAILLO, (uint32_t)area + 16384);
    mmio_write32(v->common + VCOMMON_Q_USEDLO, (uint32_t)area + 24576);
    vq->notify_addr = v->notify + (uint32_t)mmio_read16(v->common + VCOMMON_Q_NOFF) * v->notify_mult;
    mmio_write16(v->common + VCOMMON_Q_ENABLE, 1);
    virtio_driver_ok(v);
    read_request(vq, (uint32_t)data, 512);
    status_byte = 0xff;
    virtq_publish(vq, 0);
    virtq_notify(vq);
    print("queue size %u: %s\n", size, outcome(b));
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    struct vblk b;
    (void)magic;
    serial_init();
    guest_alloc_init(info);
    for (unsigned i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        if (setup(&b) != 0) {
            print("%s: setup failed\n", attacks[i].name);
            continue;
        }
        attacks[i].build(&b.vq);
        virtq_publish(&b.vq, 0);
        virtq_notify(&b.vq);
        print("%s: %s\n", attacks[i].name, outcome(&b));
    }
    ring_attack(&b, "head beyond the queue", 0);
    ring_attack(&b, "avail index jump", 1);
    queue_size_attack(&b, 3);
    queue_size_attack(&b, 0x8000);
    if (setup(&b) != 0) {
        print("final setup failed\n");
        return 0x22;
    }
    memset(data, 0, 512);
    int st = vblk_rw(&b, VIRTIO_BLK_T_IN, 0, data, 512);
    print("after the attacks: read %d, first byte %x\n", st, data[0]);
    serial_getc();
    return 0x22;
}
