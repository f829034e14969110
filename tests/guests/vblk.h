/*
 * A minimal virtio-blk driver for the test guests: read, write, flush,
 * get-id, discard and write-zeroes on queue 0, synchronously or with
 * several requests in flight (vblk_submit / vblk_complete). Every
 * request is a header (device-readable), the data buffers, and a status
 * byte (device-writable); the status byte is what the calls return.
 */
#ifndef GUEST_VBLK_H
#define GUEST_VBLK_H

#include "virtio.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define VBLK_TIMEOUT 60000000000ull    /* TSC ticks: tens of seconds */

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_GEOMETRY 4
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_TOPOLOGY 10
#define VIRTIO_BLK_F_CONFIG_WCE 11
#define VIRTIO_BLK_F_MQ 12
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* virtio_blk_config offsets. */
#define VBLK_CFG_CAPACITY 0
#define VBLK_CFG_SIZE_MAX 8
#define VBLK_CFG_SEG_MAX 12
#define VBLK_CFG_CYLINDERS 16
#define VBLK_CFG_HEADS 18
#define VBLK_CFG_SECTORS 19
#define VBLK_CFG_BLK_SIZE 20
#define VBLK_CFG_PHYS_EXP 24
#define VBLK_CFG_ALIGN_OFFSET 25
#define VBLK_CFG_MIN_IO 26
#define VBLK_CFG_OPT_IO 28
#define VBLK_CFG_WCE 32
#define VBLK_CFG_NUM_QUEUES 34
#define VBLK_CFG_MAX_DISCARD_SECTORS 36
#define VBLK_CFG_MAX_DISCARD_SEG 40
#define VBLK_CFG_DISCARD_ALIGN 44
#define VBLK_CFG_MAX_WZ_SECTORS 48
#define VBLK_CFG_MAX_WZ_SEG 52
#define VBLK_CFG_WZ_MAY_UNMAP 56

struct vblk_outhdr {
    uint32_t type, ioprio;
    uint64_t sector;
};

struct vblk_slot {                  /* one per descriptor head, in guest memory */
    struct vblk_outhdr hdr;
    struct {
        uint64_t sector;
        uint32_t num_sectors, flags;
    } seg;
    uint8_t status;
};

struct vblk {
    struct virtio_dev v;
    struct virtq vq;
    struct vblk_slot *slots;
    uint64_t capacity;              /* 512-byte sectors */
    int indirect;                   /* chains go through indirect tables */
};

/* Finds the nth virtio-blk device, negotiates `wanted` features, sets up queue 0 with up to `qsize` entries. */
int vblk_init(struct vblk *b, int nth, uint64_t wanted, uint16_t qsize);
/* Starts a request whose data is `data[0..n)`; returns its head (pass to vblk_complete) or -1. */
int vblk_submit(struct vblk *b, uint32_t type, uint64_t sector, const struct vbuf *data, int n);
/* Waits for one completion: its status byte (VIRTIO_BLK_S_*), or -1 on timeout; *head and *len say which. */
int vblk_complete(struct vblk *b, uint16_t *head, uint32_t *len);
/* Synchronous forms; they return the status byte or -1. */
int vblk_rw(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len);
int vblk_flush(struct vblk *b);
int vblk_get_id(struct vblk *b, char id[VIRTIO_BLK_ID_BYTES + 1]);
int vblk_discard(struct vblk *b, uint64_t sector, uint32_t count);
int vblk_write_zeroes(struct vblk *b, uint64_t sector, uint32_t count, int unmap);

#endif
