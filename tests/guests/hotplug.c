/* Plays the guest's part of ACPI PCI hotplug (the PIIX4 registers at 0xae00
   and GPE0 at 0xafe0) without ACPI code: lists bus 0, enables GPE 1, then
   waits for the host to add a device (UP), lists the bus again, waits for
   the host to ask for a removal (DOWN), ejects that slot, lists the bus a
   last time. Each step prints what it saw; waits are bounded (the host's
   test drives them through QMP). Exits with code 0x23. */
#include "lib.h"

#define PCIHP_UP 0xae00
#define PCIHP_DOWN 0xae04
#define PCIHP_EJECT 0xae08
#define PCIHP_REMOVABLE 0xae0c
#define GPE0_STS 0xafe0
#define GPE0_EN 0xafe2
#define GPE_PCI_HOTPLUG 0x02
#define POLL_LIMIT 2000000000u

static void list_bus(const char *when)
{
    print("%s:", when);
    for (int dev = 0; dev < 32; dev++) {
        uint32_t id = pci_read32(0, dev, 0, 0x00);
        if (id != 0xffffffff)
            print(" %02x=%04x:%04x", dev, id & 0xffff, id >> 16);
    }
    print("\n");
}

/* Polls `port` until it reads nonzero; returns the value (0 on time-out). */
static uint32_t wait_for(uint16_t port)
{
    for (uint32_t n = 0; n < POLL_LIMIT; n++) {
        uint32_t value = inl(port);
        if (value)
            return value;
        cpu_relax();
    }
    return 0;
}

/* Reads and acknowledges the hotplug GPE (write 1 to clear). */
static void ack_gpe(void)
{
    uint8_t status = inb(GPE0_STS);
    outb(GPE0_STS, status & GPE_PCI_HOTPLUG);
    print("gpe status %02x, after ack %02x\n", status, inb(GPE0_STS));
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    serial_init();
    print("removable %08x\n", inl(PCIHP_REMOVABLE));
    outb(GPE0_EN, GPE_PCI_HOTPLUG);
    list_bus("before");
    print("waiting for a plug\n");
    uint32_t up = wait_for(PCIHP_UP);
    print("up %08x, again %08x\n", up, inl(PCIHP_UP));
    ack_gpe();
    list_bus("plugged");
    print("waiting for an unplug request\n");
    uint32_t down = wait_for(PCIHP_DOWN);
    print("down %08x\n", down);
    ack_gpe();
    outl(PCIHP_EJECT, down);
    print("ejected, down %08x\n", inl(PCIHP_DOWN));
    list_bus("after");
    return 0x23;
}
