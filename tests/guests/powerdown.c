/* Waits for system_powerdown. With ACPI (QEMU's pc) it is a power-button
   event: PWRBTN_STS in the PM1a status register named by the FADT,
   once the guest enables PWRBTN_EN. Without ACPI vmd types Ctrl-Alt-Del
   on the i8042. Prints which arrived; exits with 0x15 or 0x16. With "s5"
   on the command line it answers the power button as an OS does: ACPI S5
   (SLP_TYP 0, QEMU's pc _S5, and SLP_EN in PM1a control), then waits to
   be switched off, as an OS does. */
#include "lib.h"

static int sig_is(const void *p, const char *sig, int n)
{
    const char *s = p;
    for (int i = 0; i < n; i++)
        if (s[i] != sig[i])
            return 0;
    return 1;
}

static const uint8_t *find_rsdp(void)
{
    uint32_t ebda = (uint32_t)(*(volatile uint16_t *)0x40e) << 4;
    for (uint32_t a = ebda; ebda && a < ebda + 1024; a += 16)
        if (sig_is((const void *)(uintptr_t)a, "RSD PTR ", 8))
            return (const void *)(uintptr_t)a;
    for (uint32_t a = 0xe0000; a < 0x100000; a += 16)
        if (sig_is((const void *)(uintptr_t)a, "RSD PTR ", 8))
            return (const void *)(uintptr_t)a;
    return 0;
}

/* The FADT, 0 without ACPI. */
static const uint8_t *find_fadt(void)
{
    const uint8_t *rsdp = find_rsdp();
    if (!rsdp)
        return 0;
    uint32_t rsdt = *(const uint32_t *)(rsdp + 16);
    int entry_size = 4;
    if (rsdp[15] >= 2 && !rsdt) {
        rsdt = *(const uint32_t *)(rsdp + 24);  /* XSDT below 4 GiB */
        entry_size = 8;
    }
    if (!rsdt)
        return 0;
    const uint8_t *table = (const void *)(uintptr_t)rsdt;
    uint32_t length = *(const uint32_t *)(table + 4);
    for (uint32_t off = 36; off + entry_size <= length; off += entry_size) {
        const uint8_t *sdt = (const void *)(uintptr_t)*(const uint32_t *)(table + off);
        if (sig_is(sdt, "FACP", 4))
            return sdt;
    }
    return 0;
}

/* ACPI S5 through the FADT's PM1a control block; the machine goes off. */
static void power_off(const uint8_t *fadt)
{
    uint16_t control = (uint16_t)*(const uint32_t *)(fadt + 64);
    print("powering off\n");
    outw(control, (inw(control) & ~0x1c00) | 0x2000);
    for (;;)
        cpu_relax();
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    int saw_e0 = 0;
    (void)magic;
    serial_init();
    const uint8_t *fadt = find_fadt();
    uint16_t pm1a = fadt ? (uint16_t)*(const uint32_t *)(fadt + 56) : 0;
    int s5 = str_has(guest_cmdline(info), "s5");
    if (pm1a) {
        outw(pm1a, 0x0100);                 /* clear a stale PWRBTN_STS */
        outw(pm1a + 2, inw(pm1a + 2) | 0x0100);
    }
    print("waiting (acpi %s)\n", pm1a ? "yes" : "no");
    for (;;) {
        if (pm1a && (inw(pm1a) & 0x0100)) {
            outw(pm1a, 0x0100);
            print("power button\n");
            if (s5)
                power_off(fadt);
            return 0x15;
        }
        if (inb(0x64) & 0x01) {
            uint8_t code = inb(0x60);
            if (saw_e0 && (code == 0x53 || code == 0x71)) {
                print("ctrl-alt-del\n");
                return 0x16;
            }
            saw_e0 = code == 0xe0;
        }
    }
}
