/* Prints "tick N" each time the RTC's seconds change, for stop/cont
   tests; stops after 600 ticks with code 0x17. */
#include "lib.h"

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    (void)info;
    serial_init();
    uint8_t last = cmos_read(0x00);
    for (uint32_t tick = 1; tick <= 600;) {
        uint8_t now = cmos_read(0x00);
        if (now != last) {
            last = now;
            print("tick %u\n", tick++);
        }
    }
    return 0x17;
}
