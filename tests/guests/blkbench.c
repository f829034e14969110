/*
 * Disk throughput through the virtio-blk driver, timed by the guest with
 * the TSC (its rate from one RTC second): sequential writes then reads of
 * the disk in 1 MiB requests (wrapping around at its end), then random
 * 4 KiB reads and writes, each with several requests in flight. Command
 * line: "seq=N" MiB of each sequential kind (default 512), "rand=N"
 * random requests of each kind (default 2000), "depth=N" requests in
 * flight (default 4). The buffers are left as they are (touching fresh
 * guest pages is slow on a software KVM). Prints one "RESULT name MiB/s IOPS" line per workload and
 * exits with 0x24.
 */
#include "vblk.h"

#define MIB (1u << 20)
#define MAX_DEPTH 16

struct workload {
    const char *name;
    uint32_t type, size, count, random;
};

static uint32_t option(const char *cmdline, const char *key, uint32_t fallback)
{
    for (const char *p = cmdline; *p; p++) {
        const char *k = key, *q = p;
        while (*k && *q == *k) {
            k++;
            q++;
        }
        if (!*k && *q == '=') {
            uint32_t n = 0;
            for (q++; *q >= '0' && *q <= '9'; q++)
                n = n * 10 + (uint32_t)(*q - '0');
            return n;
        }
    }
    return fallback;
}

static uint32_t next_random(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* Runs `w` with `depth` requests in flight; the TSC ticks it took, 0 on a failed request. */
static uint64_t run(struct vblk *b, const struct workload *w, uint8_t *buffers[], uint32_t depth)
{
    uint32_t sectors = w->size / 512, slots = (uint32_t)b->capacity / sectors, issued = 0, done = 0;
    uint32_t seed = 12345;
    uint64_t start = rdtsc();
    while (done < w->count) {
        while (issued < w->count && issued - done < depth) {
            uint32_t slot = w->random ? next_random(&seed) % slots : issued % slots;
            struct vbuf data = {buffers[issued % depth], w->size, 0};
            if (vblk_submit(b, w->type, (uint64_t)slot * sectors, &data, 1) < 0)
                return 0;
            issued++;
        }
        uint16_t head;
        uint32_t len;
        if (vblk_complete(b, &head, &len) != VIRTIO_BLK_S_OK)
            return 0;
        done++;
    }
    return rdtsc() - start;
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    struct vblk b;
    uint8_t *buffers[MAX_DEPTH];
    const char *cmdline = guest_cmdline(info);
    uint32_t depth = option(cmdline, "depth", 4), rand = option(cmdline, "rand", 2000);
    uint32_t seq = option(cmdline, "seq", 512);
    (void)magic;
    serial_init();
    guest_alloc_init(info);
    if (depth < 1 || depth > MAX_DEPTH || vblk_init(&b, 0, 1u << VIRTIO_BLK_F_FLUSH, 64) != 0) {
        print("virtio-blk init failed\n");
        return 0x21;
    }
    for (uint32_t i = 0; i < depth; i++) {
        buffers[i] = guest_alloc_uninit(MIB, 4096);
        if (!buffers[i]) {
            print("not enough memory for %u buffers of 1 MiB\n", depth);
            return 0x21;
        }
    }
    const struct workload loads[] = {
        {"seq-write-1M", VIRTIO_BLK_T_OUT, MIB, seq, 0},
        {"seq-read-1M", VIRTIO_BLK_T_IN, MIB, seq, 0},
        {"rand-read-4k", VIRTIO_BLK_T_IN, 4096, rand, 1},
        {"rand-write-4k", VIRTIO_BLK_T_OUT, 4096, rand, 1},
    };
    uint64_t hz = tsc_per_second();
    for (unsigned i = 0; i < sizeof(loads) / sizeof(loads[0]); i++) {
        uint64_t ticks = run(&b, &loads[i], buffers, depth);
        if (!ticks) {
            print("RESULT %s failed\n", loads[i].name);
            continue;
        }
        /* KiB/s and requests/s, scaled so that 32-bit division suffices. */
        uint64_t ms = udiv64(ticks, (uint32_t)udiv64(hz, 1000, 0), 0) + 1;
        uint64_t kib = (uint64_t)loads[i].count * (loads[i].size / 1024);
        print("RESULT %s ", loads[i].name);
        print_u64(udiv64(kib * 1000, (uint32_t)ms, 0));
        print(" KiB/s ");
        print_u64(udiv64((uint64_t)loads[i].count * 1000, (uint32_t)ms, 0));
        print(" IOPS\n");
    }
    print("flush %d\n", vblk_flush(&b));
    return 0x24;
}
