/* Reads the RTC in BCD and binary, 24- and 12-hour modes, and checks the
   update (UF) and periodic (PF) flags by polling register C for one
   second. Prints what it read; exits with code 0x12. */
#include "lib.h"

struct rtc_time {
    uint8_t sec, min, hour, day, mon, year, century;
};

static void read_raw(struct rtc_time *t)
{
    struct rtc_time again;
    do {
        while (cmos_read(0x0a) & 0x80)
            cpu_relax();
        t->sec = cmos_read(0x00);
        t->min = cmos_read(0x02);
        t->hour = cmos_read(0x04);
        t->day = cmos_read(0x07);
        t->mon = cmos_read(0x08);
        t->year = cmos_read(0x09);
        t->century = cmos_read(0x32);
        while (cmos_read(0x0a) & 0x80)
            cpu_relax();
        again.sec = cmos_read(0x00);
    } while (again.sec != t->sec);
}

static uint8_t from_bcd(uint8_t v)
{
    return (uint8_t)((v >> 4) * 10 + (v & 15));
}

static void print_time(const char *label, const struct rtc_time *t, int bcd)
{
    struct rtc_time d = *t;
    if (bcd) {
        d.sec = from_bcd(t->sec);
        d.min = from_bcd(t->min);
        d.hour = from_bcd(t->hour);
        d.day = from_bcd(t->day);
        d.mon = from_bcd(t->mon);
        d.year = from_bcd(t->year);
        d.century = from_bcd(t->century);
    }
    print("%s %02u%02u-%02u-%02u %02u:%02u:%02u\n", label, d.century, d.year, d.mon, d.day,
          d.hour, d.min, d.sec);
}

/* Polls register C until UF has been seen twice (one whole second); counts PF. */
static uint32_t count_pf_in_one_second(void)
{
    uint32_t updates = 0, periodic = 0;
    cmos_read(0x0c);
    while (updates < 2) {
        uint8_t c = cmos_read(0x0c);
        if (c & 0x10)
            updates++;
        if ((c & 0x40) && updates == 1)
            periodic++;
    }
    return periodic;
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    struct rtc_time t;
    (void)magic;
    (void)info;
    serial_init();
    print("regs a=%02x b=%02x d=%02x\n", cmos_read(0x0a), cmos_read(0x0b), cmos_read(0x0d));
    read_raw(&t);
    print_time("bcd", &t, 1);
    cmos_write(0x0b, 0x06);             /* binary, 24-hour */
    read_raw(&t);
    print_time("bin", &t, 0);
    cmos_write(0x0b, 0x00);             /* BCD, 12-hour */
    read_raw(&t);
    print("hour12 %02x\n", t.hour);
    cmos_write(0x0b, 0x02);
    cmos_write(0x0a, 0x2d);             /* 8 Hz */
    cmos_write(0x0b, 0x42);             /* PIE, interrupts stay masked by cli */
    uint32_t pf = count_pf_in_one_second();
    cmos_write(0x0b, 0x02);
    cmos_write(0x0a, 0x26);
    if (pf >= 6 && pf <= 10)
        print("periodic ok\n");
    else
        print("periodic wrong: %u flags in one second at 8 Hz\n", pf);
    return 0x12;
}
