/* Prints a line and exits with code 0x10 (process status 0x21). */
#include "lib.h"

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    serial_init();
    print("hello from the guest, magic %x, cmdline '%s'\n", magic, guest_cmdline(info));
    return 0x10;
}
