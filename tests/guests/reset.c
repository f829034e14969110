/* Counts its boots in CMOS RAM (byte 0x7e survives a reset); on the
   first boot it resets the machine the way the command line asks
   ("port92": fast reset, otherwise i8042 command 0xfe), on the second it
   exits with code 0x14. */
#include "lib.h"

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    const char *cmdline = guest_cmdline(info);
    uint8_t boots = cmos_read(0x7e);
    (void)magic;
    serial_init();
    cmos_write(0x7e, (uint8_t)(boots + 1));
    print("boot %u\n", boots);
    if (boots)
        return 0x14;
    if (str_has(cmdline, "port92")) {
        outb(0x92, inb(0x92) | 1);
    } else {
        while (inb(0x64) & 0x02)
            cpu_relax();
        outb(0x64, 0xfe);
    }
    for (;;)
        cpu_relax();
}
