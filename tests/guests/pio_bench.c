/* Measures the cost of a port-I/O exit with RDTSC: 200000 writes to port
   0x80 (count=N on the command line changes it). The TSC rate comes from
   one RTC second, so the cost is also printed in nanoseconds. */
#include "lib.h"

static uint32_t parse_count(const char *cmdline)
{
    uint32_t n = 0;
    for (const char *p = cmdline; *p; p++) {
        if (p[0] == 'c' && p[1] == 'o' && p[2] == 'u' && p[3] == 'n' && p[4] == 't' && p[5] == '=') {
            for (p += 6; *p >= '0' && *p <= '9'; p++)
                n = n * 10 + (uint32_t)(*p - '0');
            return n;
        }
    }
    return 200000;
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    uint32_t count = parse_count(guest_cmdline(info));
    (void)magic;
    serial_init();
    uint64_t hz = tsc_per_second();
    uint64_t t0 = rdtsc();
    for (uint32_t i = 0; i < count; i++)
        outb(0x80, 0);
    uint64_t cycles = rdtsc() - t0;
    uint64_t per_exit = udiv64(cycles, count, 0);
    uint64_t per_exit_ns = udiv64(per_exit * 1000000, (uint32_t)udiv64(hz, 1000, 0), 0);
    print("pio-exit count=%u cycles=", count);
    print_u64(cycles);
    print(" tsc_khz=");
    print_u64(udiv64(hz, 1000, 0));
    print(" per_exit_cycles=");
    print_u64(per_exit);
    print(" per_exit_ns=");
    print_u64(per_exit_ns);
    print("\n");
    return 0x1a;
}
