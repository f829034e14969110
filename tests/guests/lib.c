/* The test guests' library; see lib.h. */
#include <stdarg.h>
#include "lib.h"

void serial_init(void)
{
    /* 115200 8N1, interrupts off. The FIFO is left alone so that input
       typed before the guest started stays queued in the host chardev. */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1 + 0, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 4, 0x03);
}

void serial_putc(char c)
{
    while (!(inb(COM1 + 5) & 0x20))
        cpu_relax();
    outb(COM1, (uint8_t)c);
}

int serial_has_input(void)
{
    return inb(COM1 + 5) & 0x01;
}

int serial_getc(void)
{
    while (!serial_has_input())
        cpu_relax();
    return inb(COM1);
}

uint64_t udiv64(uint64_t n, uint32_t d, uint32_t *rem)
{
    uint64_t q = 0, r = 0;
    for (int bit = 63; bit >= 0; bit--) {
        r = (r << 1) | ((n >> bit) & 1);
        if (r >= d) {
            r -= d;
            q |= (uint64_t)1 << bit;
        }
    }
    if (rem)
        *rem = (uint32_t)r;
    return q;
}

static void put_number(uint64_t v, uint32_t base, int width, char pad)
{
    char buf[24];
    int n = 0;
    do {
        uint32_t digit;
        v = udiv64(v, base, &digit);
        buf[n++] = "0123456789abcdef"[digit];
    } while (v);
    while (n < width--)
        serial_putc(pad);
    while (n)
        serial_putc(buf[--n]);
}

void print_u64(uint64_t v)
{
    put_number(v, 10, 0, ' ');
}

void print(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0;
        fmt++;
        if (*fmt == '0')
            pad = '0';
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s)
                serial_putc(*s++);
            break;
        }
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 'u':
            put_number(va_arg(ap, uint32_t), 10, width, pad);
            break;
        case 'd': {
            int32_t v = va_arg(ap, int32_t);
            if (v < 0) {
                serial_putc('-');
                v = -v;
            }
            put_number((uint32_t)v, 10, width, pad);
            break;
        }
        case 'x':
            put_number(va_arg(ap, uint32_t), 16, width, pad);
            break;
        default:
            serial_putc(*fmt);
        }
    }
    va_end(ap);
}

uint8_t cmos_read(uint8_t index)
{
    outb(0x70, index);
    return inb(0x71);
}

void cmos_write(uint8_t index, uint8_t value)
{
    outb(0x70, index);
    outb(0x71, value);
}

static uint32_t pci_address(int bus, int dev, int fn, int reg)
{
    return 0x80000000u | (uint32_t)bus << 16 | (uint32_t)dev << 11 | (uint32_t)fn << 8 | (reg & 0xfc);
}

uint32_t pci_read32(int bus, int dev, int fn, int reg)
{
    outl(0xcf8, pci_address(bus, dev, fn, reg));
    return inl(0xcfc);
}

void pci_write32(int bus, int dev, int fn, int reg, uint32_t value)
{
    outl(0xcf8, pci_address(bus, dev, fn, reg));
    outl(0xcfc, value);
}

const char *guest_cmdline(const struct multiboot_info *info)
{
    if (!(info->flags & MB_INFO_CMDLINE))
        return "";
    return (const char *)(uintptr_t)info->cmdline;
}

int str_has(const char *haystack, const char *needle)
{
    for (; *haystack; haystack++) {
        const char *h = haystack, *n = needle;
        while (*n && *h == *n) {
            h++;
            n++;
        }
        if (!*n)
            return 1;
    }
    return 0;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

uint64_t tsc_per_second(void)
{
    uint8_t s = cmos_read(0x00);
    while (cmos_read(0x00) == s)
        ;
    uint64_t t0 = rdtsc();
    s = cmos_read(0x00);
    while (cmos_read(0x00) == s)
        ;
    return rdtsc() - t0;
}

void guest_exit(uint32_t code)
{
    outl(EXIT_PORT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

__attribute__((weak)) void ap_main(void)
{
}
