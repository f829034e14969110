/* virtio 1.x PCI transport and split virtqueues for the test guests; see virtio.h. */
#include "virtio.h"

#define PCI_CAP_ID_VNDR 0x09
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

extern char _end[];
static uintptr_t pool_next = (uintptr_t)_end, pool_top = 0x00f00000u;

void guest_alloc_init(const struct multiboot_info *info)
{
    if (info->flags & MB_INFO_MEMORY)
        pool_top = 0x100000u + info->mem_upper * 1024u;
}

void *guest_alloc_uninit(uint32_t size, uint32_t align)
{
    uintptr_t base = (pool_next + align - 1) & ~(uintptr_t)(align - 1);
    if (base + size > pool_top || base + size < base)
        return 0;
    pool_next = base + size;
    return (void *)base;
}

void *guest_alloc(uint32_t size, uint32_t align)
{
    void *p = guest_alloc_uninit(size, align);
    return p ? memset(p, 0, size) : 0;
}

struct find_state {
    uint16_t type;
    int nth;
    struct virtio_dev *out;
};

static uint16_t virtio_type_of(struct pci_dev *d)
{
    if (d->device >= 0x1040)
        return (uint16_t)(d->device - 0x1040);
    return pci_read16(d, PCI_SUBSYSTEM_ID);   /* transitional ids 0x1000-0x103f */
}

static int match_virtio(struct pci_dev *d, void *arg)
{
    struct find_state *want = arg;
    if (d->vendor != VIRTIO_VENDOR || d->device < 0x1000 || d->device > 0x107f)
        return 0;
    if (virtio_type_of(d) != want->type || want->nth-- > 0)
        return 0;
    want->out->pci = *d;
    want->out->type = want->type;
    return 1;
}

/* Takes the first capability of each kind, as the spec asks of drivers. */
static void map_caps(struct virtio_dev *v)
{
    struct pci_dev *d = &v->pci;
    for (uint8_t pos = pci_find_cap(d, PCI_CAP_ID_VNDR, 0); pos; pos = pci_find_cap(d, PCI_CAP_ID_VNDR, pos)) {
        uint8_t kind = pci_read8(d, pos + 3), bar = pci_read8(d, pos + 4);
        if (bar >= PCI_NUM_BARS || !d->bar[bar])
            continue;
        uintptr_t addr = d->bar[bar] + pci_cfg_read32(d, pos + 8);
        if (kind == VIRTIO_PCI_CAP_COMMON_CFG && !v->common)
            v->common = addr;
        else if (kind == VIRTIO_PCI_CAP_NOTIFY_CFG && !v->notify) {
            v->notify = addr;
            v->notify_mult = pci_cfg_read32(d, pos + 16);
        } else if (kind == VIRTIO_PCI_CAP_ISR_CFG && !v->isr)
            v->isr = addr;
        else if (kind == VIRTIO_PCI_CAP_DEVICE_CFG && !v->device)
            v->device = addr;
    }
}

int virtio_find(uint16_t type, int nth, struct virtio_dev *vdev)
{
    struct find_state want = {type, nth, vdev};
    memset(vdev, 0, sizeof(*vdev));
    if (!pci_scan(match_virtio, &want))
        return -1;
    pci_map_bars(&vdev->pci);
    map_caps(vdev);
    return vdev->common && vdev->notify && vdev->device ? 0 : -2;
}

uint8_t virtio_status(struct virtio_dev *v)
{
    return mmio_read8(v->common + VCOMMON_STATUS);
}

void virtio_set_status(struct virtio_dev *v, uint8_t status)
{
    mmio_write8(v->common + VCOMMON_STATUS, status);
}

uint16_t virtio_num_queues(struct virtio_dev *v)
{
    return mmio_read16(v->common + VCOMMON_NUMQ);
}

uint64_t virtio_device_features(struct virtio_dev *v)
{
    mmio_write32(v->common + VCOMMON_DFSELECT, 0);
    uint32_t low = mmio_read32(v->common + VCOMMON_DF);
    mmio_write32(v->common + VCOMMON_DFSELECT, 1);
    uint32_t high = mmio_read32(v->common + VCOMMON_DF);
    return (uint64_t)high << 32 | low;
}

int virtio_negotiate(struct virtio_dev *v, uint64_t wanted)
{
    virtio_set_status(v, 0);
    while (virtio_status(v) != 0)
        cpu_relax();
    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    v->features = virtio_device_features(v) & (wanted | (1ull << VIRTIO_F_VERSION_1));
    mmio_write32(v->common + VCOMMON_GFSELECT, 0);
    mmio_write32(v->common + VCOMMON_GF, (uint32_t)v->features);
    mmio_write32(v->common + VCOMMON_GFSELECT, 1);
    mmio_write32(v->common + VCOMMON_GF, (uint32_t)(v->features >> 32));
    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    return virtio_status(v) & VIRTIO_STATUS_FEATURES_OK ? 0 : -1;
}

void virtio_driver_ok(struct virtio_dev *v)
{
    virtio_set_status(v, virtio_status(v) | VIRTIO_STATUS_DRIVER_OK);
}

static void write_addr(struct virtio_dev *v, int low_reg, const volatile void *p)
{
    mmio_write32(v->common + low_reg, (uint32_t)(uintptr_t)p);
    mmio_write32(v->common + low_reg + 4, 0);
}

static volatile uint16_t *used_event(struct virtq *vq) { return &vq->avail[2 + vq->size]; }
static volatile uint16_t *avail_event(struct virtq *vq) { return (volatile uint16_t *)(vq->used + 4 + 8 * vq->size); }
static volatile uint16_t *used_idx(struct virtq *vq) { return (volatile uint16_t *)(vq->used + 2); }

int virtq_setup(struct virtio_dev *v, struct virtq *vq, uint16_t index, uint16_t size)
{
    mmio_write16(v->common + VCOMMON_Q_SELECT, index);
    uint16_t max = mmio_read16(v->common + VCOMMON_Q_SIZE);
    if (!max)
        return -1;
    memset(vq, 0, sizeof(*vq));
    vq->vdev = v;
    vq->index = index;
    vq->size = size < max ? size : max;
    vq->event_idx = !!(v->features & (1ull << VIRTIO_F_EVENT_IDX));
    vq->desc = guest_alloc(16u * vq->size, 16);
    vq->avail = guest_alloc(6u + 2u * vq->size, 2);
    vq->used = guest_alloc(6u + 8u * vq->size, 4);
    if (v->features & (1ull << VIRTIO_F_INDIRECT_DESC))
        vq->indirect = guest_alloc(16u * INDIRECT_MAX * vq->size, 16);
    if (!vq->desc || !vq->avail || !vq->used)
        return -2;
    for (uint16_t i = 0; i < vq->size; i++)
        vq->desc[i].next = (uint16_t)(i + 1);
    vq->num_free = vq->size;
    vq->avail[0] = vq->event_idx ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
    *used_event(vq) = 0x7fff;
    mmio_write16(v->common + VCOMMON_Q_SIZE, vq->size);
    write_addr(v, VCOMMON_Q_DESCLO, vq->desc);
    write_addr(v, VCOMMON_Q_AVAILLO, vq->avail);
    write_addr(v, VCOMMON_Q_USEDLO, vq->used);
    vq->notify_addr = v->notify + (uint32_t)mmio_read16(v->common + VCOMMON_Q_NOFF) * v->notify_mult;
    mmio_write16(v->common + VCOMMON_Q_ENABLE, 1);
    return 0;
}

static void fill(struct vring_desc *d, const struct vbuf *b, uint16_t next, int more)
{
    d->addr = (uint32_t)(uintptr_t)b->addr;
    d->len = b->len;
    d->flags = (uint16_t)((b->device_writes ? VRING_DESC_F_WRITE : 0) | (more ? VRING_DESC_F_NEXT : 0));
    d->next = next;
}

static int take_descs(struct virtq *vq, const struct vbuf *bufs, int n)
{
    if (vq->num_free < n)
        return -1;
    uint16_t head = vq->free_head, i = head;
    for (int k = 0; k < n; k++) {
        uint16_t next = vq->desc[i].next;
        fill(&vq->desc[i], &bufs[k], next, k + 1 < n);
        if (k + 1 < n)
            i = next;
        else
            vq->free_head = next;
    }
    vq->num_free = (uint16_t)(vq->num_free - n);
    return head;
}

static int take_indirect(struct virtq *vq, const struct vbuf *bufs, int n)
{
    if (!vq->num_free || n > INDIRECT_MAX || !vq->indirect)
        return -1;
    uint16_t head = vq->free_head;
    struct vring_desc *table = vq->indirect + INDIRECT_MAX * head;
    for (int k = 0; k < n; k++)
        fill(&table[k], &bufs[k], (uint16_t)(k + 1), k + 1 < n);
    vq->free_head = vq->desc[head].next;
    vq->desc[head].addr = (uint32_t)(uintptr_t)table;
    vq->desc[head].len = 16u * (uint32_t)n;
    vq->desc[head].flags = VRING_DESC_F_INDIRECT;
    vq->num_free--;
    return head;
}

void virtq_publish(struct virtq *vq, uint16_t head)
{
    vq->avail[2 + vq->avail_idx % vq->size] = head;
    mb();
    vq->avail[1] = ++vq->avail_idx;
}

int virtq_add(struct virtq *vq, const struct vbuf *bufs, int n, int indirect)
{
    int head = indirect ? take_indirect(vq, bufs, n) : take_descs(vq, bufs, n);
    if (head >= 0)
        virtq_publish(vq, (uint16_t)head);
    return head;
}

void virtq_notify(struct virtq *vq)
{
    mmio_write16(vq->notify_addr, vq->index);
}

void virtq_kick(struct virtq *vq)
{
    mb();
    uint16_t old = vq->kicked_idx, now = vq->avail_idx;
    vq->kicked_idx = now;
    int needed;
    if (vq->event_idx)
        needed = (uint16_t)(now - *avail_event(vq) - 1) < (uint16_t)(now - old);
    else
        needed = !(*(volatile uint16_t *)vq->used & VRING_USED_F_NO_NOTIFY);
    if (needed)
        virtq_notify(vq);
}

static void free_chain(struct virtq *vq, uint16_t head)
{
    uint16_t i = head;
    vq->num_free++;
    while (vq->desc[i].flags & VRING_DESC_F_NEXT) {
        i = vq->desc[i].next;
        vq->num_free++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = head;
}

int virtq_poll(struct virtq *vq, uint16_t *head, uint32_t *len)
{
    if (*used_idx(vq) == vq->last_used)
        return 0;
    mb();
    volatile uint8_t *elem = vq->used + 4 + 8 * (vq->last_used % vq->size);
    *head = (uint16_t)*(volatile uint32_t *)elem;
    *len = *(volatile uint32_t *)(elem + 4);
    vq->last_used++;
    *used_event(vq) = (uint16_t)(vq->last_used + 0x7fff);
    if (*head < vq->size)
        free_chain(vq, *head);
    return 1;
}

int virtq_wait(struct virtq *vq, uint16_t *head, uint32_t *len, uint64_t ticks)
{
    uint64_t start = rdtsc();
    while (!virtq_poll(vq, head, len)) {
        if (rdtsc() - start > ticks)
            return -1;
        cpu_relax();
    }
    return 0;
}
