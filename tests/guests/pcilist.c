/* Lists the PCI functions of bus 0 through configuration mechanism #1:
   ids, class, header type, interrupt pin/line, the capability ids and
   each BAR's size mask (decoding off while sizing, as Linux does).
   Exits with code 0x21. */
#include "lib.h"

static void list_bars(int dev, int fn)
{
    uint32_t command = pci_read32(0, dev, fn, 0x04);
    pci_write32(0, dev, fn, 0x04, command & ~3u);
    for (int bar = 0; bar < 6; bar++) {
        int reg = 0x10 + 4 * bar;
        uint32_t saved = pci_read32(0, dev, fn, reg);
        pci_write32(0, dev, fn, reg, 0xffffffff);
        uint32_t mask = pci_read32(0, dev, fn, reg);
        pci_write32(0, dev, fn, reg, saved);
        if (mask)
            print("  bar%u %08x\n", bar, mask);
    }
    pci_write32(0, dev, fn, 0x04, command);
}

static void list_caps(int dev, int fn)
{
    if (!(pci_read32(0, dev, fn, 0x04) & (0x10u << 16)))
        return;
    uint32_t at = pci_read32(0, dev, fn, 0x34) & 0xfc;
    print("  caps");
    for (int n = 0; at && n < 48; n++) {
        uint32_t head = pci_read32(0, dev, fn, (int)at);
        print(" %02x", head & 0xff);
        if ((head & 0xff) == 0x09)
            print("/%u", (head >> 24) & 0xff);
        at = (head >> 8) & 0xfc;
    }
    print("\n");
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    serial_init();
    for (int dev = 0; dev < 32; dev++) {
        for (int fn = 0; fn < 8; fn++) {
            uint32_t id = pci_read32(0, dev, fn, 0x00);
            if (id == 0xffffffff) {
                if (fn == 0)
                    break;
                continue;
            }
            uint32_t class = pci_read32(0, dev, fn, 0x08);
            uint32_t header = pci_read32(0, dev, fn, 0x0c);
            uint32_t sub = pci_read32(0, dev, fn, 0x2c);
            uint32_t irq = pci_read32(0, dev, fn, 0x3c);
            print("00:%02x.%u %04x:%04x sub %04x:%04x class %06x rev %02x hdr %02x pin %u line %u\n",
                  dev, fn, id & 0xffff, id >> 16, sub & 0xffff, sub >> 16, class >> 8, class & 0xff,
                  (header >> 16) & 0xff, (irq >> 8) & 0xff, irq & 0xff);
            list_caps(dev, fn);
            list_bars(dev, fn);
            if (fn == 0 && !(header & 0x800000))
                break;
        }
    }
    guest_exit(0x21);
}
