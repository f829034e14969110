/* Starts the second vCPU with INIT and two SIPIs through the local APIC;
   the AP reports its APIC id through memory. Exits with code 0x18. */
#include "lib.h"

#define LAPIC 0xfee00000u
#define TRAMPOLINE 0x8000u

extern const char ap_trampoline[], ap_trampoline_end[];
static volatile uint32_t ap_report;

void ap_main(void)
{
    ap_report = 0x100 | (mmio_read32(LAPIC + 0x20) >> 24);
}

static void send_ipi(uint32_t apic_id, uint32_t command)
{
    mmio_write32(LAPIC + 0x310, apic_id << 24);
    mmio_write32(LAPIC + 0x300, command);
    while (mmio_read32(LAPIC + 0x300) & 0x1000)
        cpu_relax();
}

static void wait_ticks(uint32_t n)
{
    while (n--)
        inb(0x80);
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    serial_init();
    mmio_write32(LAPIC + 0xf0, 0x1ff);  /* software-enable the local APIC */
    print("bsp apic id %u\n", mmio_read32(LAPIC + 0x20) >> 24);
    memcpy((void *)TRAMPOLINE, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));
    send_ipi(1, 0x4500);                /* INIT */
    wait_ticks(100);
    for (int i = 0; i < 2 && !ap_report; i++) {
        send_ipi(1, 0x4600 | (TRAMPOLINE >> 12));  /* STARTUP */
        wait_ticks(100);
    }
    for (uint32_t spins = 0; !ap_report && spins < 2000000; spins++)
        inb(0x80);
    if (ap_report)
        print("ap apic id %u running\n", ap_report & 0xff);
    else
        print("ap did not start\n");
    return 0x18;
}
