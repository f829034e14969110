/* The test guests' virtio-blk driver; see vblk.h. */
#include "vblk.h"

int vblk_init(struct vblk *b, int nth, uint64_t wanted, uint16_t qsize)
{
    memset(b, 0, sizeof(*b));
    if (virtio_find(VIRTIO_ID_BLOCK, nth, &b->v) != 0)
        return -1;
    if (virtio_negotiate(&b->v, wanted) != 0)
        return -2;
    if (virtq_setup(&b->v, &b->vq, 0, qsize) != 0)
        return -3;
    b->slots = guest_alloc(sizeof(struct vblk_slot) * b->vq.size, 16);
    if (!b->slots)
        return -4;
    b->capacity = (uint64_t)vcfg32(&b->v, VBLK_CFG_CAPACITY + 4) << 32 | vcfg32(&b->v, VBLK_CFG_CAPACITY);
    virtio_driver_ok(&b->v);
    return 0;
}

static int device_writes_data(uint32_t type)
{
    return type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
}

int vblk_submit(struct vblk *b, uint32_t type, uint64_t sector, const struct vbuf *data, int n)
{
    struct vbuf bufs[INDIRECT_MAX];
    if (n + 2 > INDIRECT_MAX || !b->vq.num_free)
        return -1;
    /* The slot is the one of the head the chain will get: the free list's first entry. */
    struct vblk_slot *slot = &b->slots[b->vq.free_head];
    slot->hdr.type = type;
    slot->hdr.ioprio = 0;
    slot->hdr.sector = sector;
    slot->status = 0xff;
    bufs[0] = (struct vbuf){&slot->hdr, sizeof(slot->hdr), 0};
    for (int k = 0; k < n; k++) {
        bufs[1 + k] = data[k];
        bufs[1 + k].device_writes = device_writes_data(type);
    }
    bufs[n + 1] = (struct vbuf){&slot->status, 1, 1};
    int head = virtq_add(&b->vq, bufs, n + 2, b->indirect);
    if (head >= 0)
        virtq_kick(&b->vq);
    return head;
}

int vblk_complete(struct vblk *b, uint16_t *head, uint32_t *len)
{
    if (virtq_wait(&b->vq, head, len, VBLK_TIMEOUT) != 0)
        return -1;
    if (*head >= b->vq.size)
        return -2;
    return *(volatile uint8_t *)&b->slots[*head].status;
}

static int run(struct vblk *b, uint32_t type, uint64_t sector, const struct vbuf *data, int n)
{
    uint16_t head;
    uint32_t len;
    if (vblk_submit(b, type, sector, data, n) < 0)
        return -1;
    return vblk_complete(b, &head, &len);
}

int vblk_rw(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
    struct vbuf data = {buf, len, 0};
    return run(b, type, sector, &data, 1);
}

int vblk_flush(struct vblk *b)
{
    return run(b, VIRTIO_BLK_T_FLUSH, 0, 0, 0);
}

int vblk_get_id(struct vblk *b, char id[VIRTIO_BLK_ID_BYTES + 1])
{
    memset(id, 0, VIRTIO_BLK_ID_BYTES + 1);
    return vblk_rw(b, VIRTIO_BLK_T_GET_ID, 0, id, VIRTIO_BLK_ID_BYTES);
}

/* Discard and write-zeroes carry one {sector, count, flags} segment, kept in the request's slot. */
static int segment_request(struct vblk *b, uint32_t type, uint64_t sector, uint32_t count, uint32_t flags)
{
    struct vblk_slot *slot = &b->slots[b->vq.free_head];
    slot->seg.sector = sector;
    slot->seg.num_sectors = count;
    slot->seg.flags = flags;
    struct vbuf data = {&slot->seg, sizeof(slot->seg), 0};
    return run(b, type, 0, &data, 1);
}

int vblk_discard(struct vblk *b, uint64_t sector, uint32_t count)
{
    return segment_request(b, VIRTIO_BLK_T_DISCARD, sector, count, 0);
}

int vblk_write_zeroes(struct vblk *b, uint64_t sector, uint32_t count, int unmap)
{
    return segment_request(b, VIRTIO_BLK_T_WRITE_ZEROES, sector, count, unmap ? 1 : 0);
}
