/*
 * vmd's demo guest: a banner and a few commands on the first serial port.
 * Freestanding 32-bit code started by a multiboot loader (vmd's or QEMU's).
 */
#include <stdint.h>

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }

#define COM1 0x3f8
#define PM1_STS 0x600   /* ACPI PM1 status/enable/control (PIIX4 PM base) */
#define PM1_EN 0x602
#define PM1_CNT 0x604
#define PWRBTN (1 << 8)

struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4], mmap_length, mmap_addr;
};
struct mb_mmap { uint32_t size; uint64_t addr, len; uint32_t type; } __attribute__((packed));

static void putc(char c)
{
    while (!(inb(COM1 + 5) & 0x20))
        ;
    outb(COM1, (uint8_t)c);
}

static void puts(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            putc('\r');
        putc(*s);
    }
}

static void putdec(uint32_t v)
{
    char buf[11];
    int i = 10;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts(buf + i);
}

static void puthex(uint64_t v, int digits)
{
    char buf[17];
    buf[digits] = 0;
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        buf[i] = "0123456789abcdef"[v & 15];
    puts(buf);
}

static void poweroff(void)
{
    outw(PM1_CNT, 0x2000);                       /* SLP_TYP 0 (S5), SLP_EN */
}

/* Waits for a key; the ACPI power button (system_powerdown) powers off. */
static char getc(void)
{
    while (!(inb(COM1 + 5) & 0x01)) {
        if (inw(PM1_STS) & PWRBTN) {
            outw(PM1_STS, PWRBTN);
            puts("\npower button pressed: powering off\n");
            poweroff();
        }
    }
    return (char)inb(COM1);
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static void readline(char *buf, int size)
{
    int n = 0;
    for (;;) {
        char c = getc();
        if (c == '\r' || c == '\n') {
            puts("\n");
            break;
        }
        if ((c == 0x7f || c == 8) && n > 0) {
            n--;
            puts("\b \b");
        } else if (c >= ' ' && n < size - 1) {
            buf[n++] = c;
            putc(c);
        }
    }
    buf[n] = 0;
}

static void show_memory(const struct mb_info *info)
{
    puts("mem_lower=");
    putdec(info->mem_lower);
    puts(" KiB mem_upper=");
    putdec(info->mem_upper);
    puts(" KiB\n");
    if (!(info->flags & (1 << 6)))
        return;
    uint32_t p = info->mmap_addr, end = info->mmap_addr + info->mmap_length;
    while (p < end) {
        const struct mb_mmap *e = (const struct mb_mmap *)p;
        puts("mmap ");
        puthex(e->addr, 16);
        puts(" ");
        puthex(e->len, 16);
        puts(" ");
        putdec(e->type);
        puts("\n");
        p += e->size + 4;
    }
}

static void count(void)
{
    for (uint32_t i = 1; i <= 10; i++) {
        putdec(i);
        puts(i == 10 ? "\n" : " ");
        for (volatile uint32_t spin = 0; spin < 2000000; spin++)
            ;
    }
}

static void tsc_per_exit(void)
{
    const uint32_t n = 1000;
    uint64_t start = rdtsc();
    for (uint32_t i = 0; i < n; i++)
        outb(0x80, 0);
    puts("port-I/O exit: ");
    putdec((uint32_t)(rdtsc() - start) / n);
    puts(" TSC ticks\n");
}

static void help(void)
{
    puts("commands: help  mem  count  exits  reboot  poweroff\n");
}

void demo_main(uint32_t magic, const struct mb_info *info)
{
    char line[64];
    outw(PM1_EN, PWRBTN);
    puts("\nvmd demo guest: hello from a virtual machine\n");
    if (magic != 0x2BADB002) {
        puts("not started by a multiboot loader\n");
        return;
    }
    if (info->flags & (1 << 2)) {
        puts("cmdline: ");
        puts((const char *)info->cmdline);
        puts("\n");
    }
    help();
    for (;;) {
        puts("demo> ");
        readline(line, sizeof(line));
        if (streq(line, "help"))
            help();
        else if (streq(line, "mem"))
            show_memory(info);
        else if (streq(line, "count"))
            count();
        else if (streq(line, "exits"))
            tsc_per_exit();
        else if (streq(line, "reboot"))
            outb(0x64, 0xfe);                    /* i8042 reset line */
        else if (streq(line, "poweroff"))
            poweroff();
        else if (line[0])
            puts("unknown command (try help)\n");
    }
}
