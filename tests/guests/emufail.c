/* Makes KVM emulate what no KVM emulator can: fetching instructions from
   MMIO (address 0xfe000000 is in the PCI hole, not RAM). The VM should
   stop in internal-error; if it does not, the guest says so and exits
   with code 0x19. */
#include "lib.h"

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    serial_init();
    print("about to fail\n");
    ((void (*)(void))0xfe000000u)();
    print("still running\n");
    return 0x19;
}
