/* PCI enumeration and BAR assignment for the test guests; see pci.h. */
#include "pci.h"

#define MEM_WINDOW 0xe0000000u
#define IO_WINDOW 0xc000u

static uint32_t next_mem = MEM_WINDOW, next_io = IO_WINDOW;
int pci_reassign;

uint32_t pci_cfg_read32(const struct pci_dev *d, int reg)
{
    return pci_read32(d->bus, d->dev, d->fn, reg);
}

void pci_cfg_write32(const struct pci_dev *d, int reg, uint32_t value)
{
    pci_write32(d->bus, d->dev, d->fn, reg, value);
}

uint16_t pci_read16(const struct pci_dev *d, int reg)
{
    return (uint16_t)(pci_cfg_read32(d, reg & ~3) >> ((reg & 2) * 8));
}

uint8_t pci_read8(const struct pci_dev *d, int reg)
{
    return (uint8_t)(pci_cfg_read32(d, reg & ~3) >> ((reg & 3) * 8));
}

void pci_write16(const struct pci_dev *d, int reg, uint16_t value)
{
    outl(0xcf8, 0x80000000u | (uint32_t)d->bus << 16 | (uint32_t)d->dev << 11 | (uint32_t)d->fn << 8 | (reg & 0xfc));
    outw((uint16_t)(0xcfc + (reg & 2)), value);
}

int pci_scan(int (*visit)(struct pci_dev *dev, void *arg), void *arg)
{
    for (int dev = 0; dev < 32; dev++) {
        for (int fn = 0; fn < 8; fn++) {
            struct pci_dev d = {.bus = 0, .dev = (uint8_t)dev, .fn = (uint8_t)fn};
            uint32_t id = pci_cfg_read32(&d, PCI_VENDOR_ID);
            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            d.vendor = (uint16_t)id;
            d.device = (uint16_t)(id >> 16);
            int found = visit(&d, arg);
            if (found)
                return found;
            if (fn == 0 && !(pci_read8(&d, PCI_HEADER_TYPE) & 0x80))
                break;
        }
    }
    return 0;
}

uint8_t pci_find_cap(const struct pci_dev *d, uint8_t cap_id, uint8_t after)
{
    if (!(pci_read16(d, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    uint8_t pos = after ? pci_read8(d, after + 1) : pci_read8(d, PCI_CAP_PTR);
    for (int hops = 0; pos >= 0x40 && hops < 48; hops++) {
        pos &= 0xfc;
        if (pci_read8(d, pos) == cap_id)
            return pos;
        pos = pci_read8(d, pos + 1);
    }
    return 0;
}

static uint32_t take(uint32_t *next, uint32_t size)
{
    uint32_t base = (*next + size - 1) & ~(size - 1);
    *next = base + size;
    return base;
}

/* Sizes BAR n (decoding is off); returns how many BAR slots it takes (2 for 64-bit). */
static int map_bar(struct pci_dev *d, int n)
{
    int reg = PCI_BAR0 + 4 * n;
    uint32_t low = pci_cfg_read32(d, reg);
    int is_io = low & 1, is64 = !is_io && (low & 6) == 4;
    uint32_t high = is64 ? pci_cfg_read32(d, reg + 4) : 0;
    pci_cfg_write32(d, reg, 0xffffffffu);
    uint32_t mask = pci_cfg_read32(d, reg) & (is_io ? ~3u : ~15u);
    pci_cfg_write32(d, reg, low);
    if (!mask)
        return is64 ? 2 : 1;
    uint32_t size = ~mask + 1;
    if (is_io)
        size &= 0xffff;
    uint32_t addr = low & (is_io ? ~3u : ~15u);
    if (!addr || high || pci_reassign) {
        addr = is_io ? take(&next_io, size) : take(&next_mem, size);
        pci_cfg_write32(d, reg, addr | (low & (is_io ? 3u : 15u)));
        if (is64)
            pci_cfg_write32(d, reg + 4, 0);
    }
    d->bar[n] = addr;
    d->bar_size[n] = size;
    return is64 ? 2 : 1;
}

void pci_map_bars(struct pci_dev *d)
{
    uint16_t command = pci_read16(d, PCI_COMMAND);
    pci_write16(d, PCI_COMMAND, command & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
    for (int n = 0; n < PCI_NUM_BARS; n += map_bar(d, n))
        ;
    pci_write16(d, PCI_COMMAND, command | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
}
