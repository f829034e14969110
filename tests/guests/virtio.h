/*
 * virtio 1.x over PCI (the modern transport) for the test guests: the
 * device is found by its vendor capabilities (common, notify, ISR and
 * device configuration), features are negotiated, and split virtqueues
 * live in a static pool. Drivers poll the used ring (interrupts stay
 * off: VRING_AVAIL_F_NO_INTERRUPT, or a used_event far ahead with
 * EVENT_IDX). Physical and virtual addresses are equal (no paging).
 */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include "pci.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_ID_BLOCK 2

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define INDIRECT_MAX 16

/* Common configuration registers (virtio_pci_common_cfg). */
#define VCOMMON_DFSELECT 0
#define VCOMMON_DF 4
#define VCOMMON_GFSELECT 8
#define VCOMMON_GF 12
#define VCOMMON_MSIX 16
#define VCOMMON_NUMQ 18
#define VCOMMON_STATUS 20
#define VCOMMON_CFGGENERATION 21
#define VCOMMON_Q_SELECT 22
#define VCOMMON_Q_SIZE 24
#define VCOMMON_Q_MSIX 26
#define VCOMMON_Q_ENABLE 28
#define VCOMMON_Q_NOFF 30
#define VCOMMON_Q_DESCLO 32
#define VCOMMON_Q_DESCHI 36
#define VCOMMON_Q_AVAILLO 40
#define VCOMMON_Q_AVAILHI 44
#define VCOMMON_Q_USEDLO 48
#define VCOMMON_Q_USEDHI 52

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

struct virtio_dev {
    struct pci_dev pci;
    uint16_t type;                  /* virtio device id: 2 for block */
    uintptr_t common, notify, isr, device;
    uint32_t notify_mult;
    uint64_t features;              /* negotiated */
};

struct virtq {
    struct virtio_dev *vdev;
    uint16_t index, size;
    struct vring_desc *desc;
    struct vring_desc *indirect;    /* INDIRECT_MAX entries per head, if negotiated */
    volatile uint16_t *avail;       /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;         /* flags, idx, {id, len}[size], avail_event */
    uintptr_t notify_addr;
    uint16_t free_head, num_free, last_used, avail_idx, kicked_idx;
    int event_idx;
};

/* A buffer of a request: `device_writes` marks it writable by the device. */
struct vbuf {
    void *addr;
    uint32_t len;
    int device_writes;
};

/* Finds the `nth` (0-based) virtio device of `type` and maps its structures; 0 on success. */
int virtio_find(uint16_t type, int nth, struct virtio_dev *vdev);
/* Reset, ACKNOWLEDGE, DRIVER, then offer `wanted` & device features plus VERSION_1; 0 if FEATURES_OK held. */
int virtio_negotiate(struct virtio_dev *vdev, uint64_t wanted);
uint64_t virtio_device_features(struct virtio_dev *vdev);
uint16_t virtio_num_queues(struct virtio_dev *vdev);
uint8_t virtio_status(struct virtio_dev *vdev);
void virtio_set_status(struct virtio_dev *vdev, uint8_t status);
void virtio_driver_ok(struct virtio_dev *vdev);
/* Sets up queue `index` with at most `size` entries (the device's maximum if smaller); 0 on success. */
int virtq_setup(struct virtio_dev *vdev, struct virtq *vq, uint16_t index, uint16_t size);
/* Places a chain of n buffers (indirectly if `indirect`), returns its head or -1 when full. Does not notify. */
int virtq_add(struct virtq *vq, const struct vbuf *bufs, int n, int indirect);
/* Notifies the device of what virtq_add placed (honouring EVENT_IDX and NO_NOTIFY). */
void virtq_kick(struct virtq *vq);
/* Takes one used element if there is one: 1 with *head and *len set, else 0. */
int virtq_poll(struct virtq *vq, uint16_t *head, uint32_t *len);
/* Waits for one used element; 0 on success, -1 after `ticks` TSC ticks without one. */
int virtq_wait(struct virtq *vq, uint16_t *head, uint32_t *len, uint64_t ticks);
/* Raw access for tests that build descriptors themselves: make `head` available and notify. */
void virtq_publish(struct virtq *vq, uint16_t head);
void virtq_notify(struct virtq *vq);

/* The device-configuration space (little-endian, read with 8/16/32-bit accesses). */
static inline uint8_t vcfg8(struct virtio_dev *v, uint32_t off) { return mmio_read8(v->device + off); }
static inline uint16_t vcfg16(struct virtio_dev *v, uint32_t off) { return mmio_read16(v->device + off); }
static inline uint32_t vcfg32(struct virtio_dev *v, uint32_t off) { return mmio_read32(v->device + off); }

static inline void mb(void) { __asm__ volatile("lock; addl $0, (%%esp)" ::: "memory"); }

/* A bump allocator from the end of the image up to the top of RAM the
   multiboot info reports (call guest_alloc_init first); 0 when exhausted. */
void guest_alloc_init(const struct multiboot_info *info);
void *guest_alloc(uint32_t size, uint32_t align);
/* The same without zeroing: first touches of guest pages are slow on a
   software KVM, so large buffers whose content does not matter skip it. */
void *guest_alloc_uninit(uint32_t size, uint32_t align);

#endif
