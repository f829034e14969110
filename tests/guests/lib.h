/*
 * The test guests' freestanding library: port I/O, the COM1 console,
 * CMOS, PCI configuration mechanism #1, the multiboot hand-off, and
 * leaving through isa-debug-exit (iobase 0xf4, iosize 4: status is
 * (code << 1) | 1). No libc and no libgcc: 64-bit division has its own
 * helper, and printing supports %s %c %u %d %x with a zero-padded width.
 */
#ifndef GUEST_LIB_H
#define GUEST_LIB_H

#include <stdint.h>
#include <stddef.h>

#define COM1 0x3f8
#define EXIT_PORT 0xf4

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline uint32_t mmio_read32(uintptr_t addr) { return *(volatile uint32_t *)addr; }
static inline void mmio_write32(uintptr_t addr, uint32_t v) { *(volatile uint32_t *)addr = v; }

/* Multiboot v1 information (the fields the guests use). */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MB_INFO_MEMORY 0x001
#define MB_INFO_CMDLINE 0x004
#define MB_INFO_MEM_MAP 0x040
struct multiboot_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
    uint32_t mods_count, mods_addr, syms[4];
    uint32_t mmap_length, mmap_addr;
} __attribute__((packed));
struct multiboot_mmap_entry {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

void serial_init(void);
void serial_putc(char c);
int serial_has_input(void);
int serial_getc(void);
void print(const char *fmt, ...);
void print_u64(uint64_t v);
uint64_t udiv64(uint64_t n, uint32_t d, uint32_t *rem);

uint8_t cmos_read(uint8_t index);
/* TSC ticks in one RTC second (waits for two second boundaries). */
uint64_t tsc_per_second(void);
void cmos_write(uint8_t index, uint8_t value);
uint32_t pci_read32(int bus, int dev, int fn, int reg);
void pci_write32(int bus, int dev, int fn, int reg, uint32_t value);

const char *guest_cmdline(const struct multiboot_info *info);
int str_has(const char *haystack, const char *needle);
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

void guest_exit(uint32_t code) __attribute__((noreturn));
uint32_t guest_main(uint32_t magic, struct multiboot_info *info);
void ap_main(void);

#endif
