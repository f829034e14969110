/*
 * PCI for the test guests: enumeration of bus 0 through configuration
 * mechanism #1, capability lists, and BARs that work with or without
 * firmware. Under QEMU SeaBIOS has assigned every BAR before the
 * multiboot kernel runs; vmd boots without firmware and leaves them
 * zero, so pci_map_bars() assigns the unassigned ones itself (memory
 * from 0xe0000000, I/O from 0xc000, as a BIOS would) and then turns on
 * decoding and bus mastering. The guests run in 32-bit mode without
 * paging, so a 64-bit BAR above 4 GiB is moved below.
 */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H

#include "lib.h"

#define PCI_VENDOR_ID 0x00
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_CAP_PTR 0x34
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_NUM_BARS 6

struct pci_dev {
    uint8_t bus, dev, fn;
    uint16_t vendor, device;
    uint32_t bar[PCI_NUM_BARS];      /* addresses after pci_map_bars (0: none) */
    uint32_t bar_size[PCI_NUM_BARS];
};

uint8_t pci_read8(const struct pci_dev *d, int reg);
uint16_t pci_read16(const struct pci_dev *d, int reg);
uint32_t pci_cfg_read32(const struct pci_dev *d, int reg);
void pci_cfg_write32(const struct pci_dev *d, int reg, uint32_t value);
void pci_write16(const struct pci_dev *d, int reg, uint16_t value);

/* Calls visit(dev, arg) for every function on bus 0; stops when it returns nonzero. */
int pci_scan(int (*visit)(struct pci_dev *dev, void *arg), void *arg);
/* The offset of the next capability with id cap_id after offset `after` (0: from the start), or 0. */
uint8_t pci_find_cap(const struct pci_dev *d, uint8_t cap_id, uint8_t after);
/* Sizes every BAR, assigns those left unassigned, enables decoding and bus mastering. */
void pci_map_bars(struct pci_dev *d);
/* Nonzero: pci_map_bars treats every BAR as unassigned (the firmware-less path, under QEMU too). */
extern int pci_reassign;

static inline uint8_t mmio_read8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }

#endif
