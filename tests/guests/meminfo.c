/* Prints the pc board's CMOS memory-size bytes and the multiboot memory
   information (mem_lower, mem_upper, the memory map); exits with 0x13. */
#include "lib.h"

static const uint8_t regs[] = {0x10, 0x12, 0x14, 0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34,
                               0x35, 0x38, 0x3d, 0x5b, 0x5c, 0x5d, 0x5f};

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    serial_init();
    print("cmos");
    for (unsigned i = 0; i < sizeof(regs); i++)
        print(" %02x=%02x", regs[i], cmos_read(regs[i]));
    print("\nflags %x\n", info->flags & (MB_INFO_MEMORY | MB_INFO_MEM_MAP));
    if (info->flags & MB_INFO_MEMORY)
        print("mem_lower %u mem_upper %u\n", info->mem_lower, info->mem_upper);
    if (info->flags & MB_INFO_MEM_MAP) {
        uint32_t at = info->mmap_addr, end = info->mmap_addr + info->mmap_length;
        while (at < end) {
            const struct multiboot_mmap_entry *e = (const void *)(uintptr_t)at;
            print("mmap %08x%08x %08x%08x %u\n", (uint32_t)(e->addr >> 32), (uint32_t)e->addr,
                  (uint32_t)(e->len >> 32), (uint32_t)e->len, e->type);
            at += e->size + 4;
        }
    }
    return 0x13;
}
