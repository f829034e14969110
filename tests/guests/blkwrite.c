/*
 * Writes the whole virtio-blk disk over and over, 8 sectors a request:
 * in pass g every 32-bit word of sector s holds s in even and g in odd
 * positions, so the host can tell for each sector which pass wrote it and
 * that no sector is torn. Prints "pass g" after each pass. A byte on the
 * serial line asks it to stop: it finishes the pass under way, flushes,
 * prints "stopped after pass g" and exits with 0x23.
 */
#include "vblk.h"

#define CHUNK_SECTORS 8

static uint32_t buf[CHUNK_SECTORS * 128] __attribute__((aligned(4096)));

static void fill(uint32_t first_sector, uint32_t pass)
{
    for (uint32_t s = 0; s < CHUNK_SECTORS; s++)
        for (uint32_t w = 0; w < 128; w += 2) {
            buf[s * 128 + w] = first_sector + s;
            buf[s * 128 + w + 1] = pass;
        }
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    struct vblk b;
    (void)magic;
    serial_init();
    guest_alloc_init(info);
    if (vblk_init(&b, 0, 1u << VIRTIO_BLK_F_FLUSH, 16) != 0) {
        print("virtio-blk init failed\n");
        return 0x21;
    }
    uint32_t sectors = (uint32_t)b.capacity, stop = 0;
    for (uint32_t pass = 1;; pass++) {
        for (uint32_t s = 0; s + CHUNK_SECTORS <= sectors; s += CHUNK_SECTORS) {
            fill(s, pass);
            int st = vblk_rw(&b, VIRTIO_BLK_T_OUT, s, buf, sizeof(buf));
            if (st != VIRTIO_BLK_S_OK) {
                print("write of sector %u in pass %u: status %d\n", s, pass, st);
                return 0x21;
            }
            if (serial_has_input()) {
                serial_getc();
                stop = 1;
            }
        }
        print("pass %u\n", pass);
        if (stop) {
            print("flush %d\n", vblk_flush(&b));
            print("stopped after pass %u\n", pass);
            return 0x23;
        }
    }
}
