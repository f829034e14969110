/* A virtio-console driver: finds virtio-serial (virtio id 3), negotiates
   MULTIPORT and EMERG_WRITE, runs the control protocol as Linux does
   (DEVICE_READY; PORT_READY for each PORT_ADD; opens console ports) and
   prints each control message it gets on COM1. Then it echoes port 0:
   a line arriving from the host goes back upper-cased, after an
   emergency-write 'E' and "ready\n"; "quit" closes the port and, after
   a byte on COM1, exits with code 0x33. With "hostile" on the command
   line it instead queues a descriptor loop and waits for NEEDS_RESET. */
#include "virtio.h"

#define VIRTIO_ID_CONSOLE 3
#define F_MULTIPORT 1
#define F_EMERG_WRITE 2
#define NBUF 8
#define BUFSZ 64

enum { DEVICE_READY, PORT_ADD, PORT_REMOVE, PORT_READY, CONSOLE_PORT, RESIZE, PORT_OPEN, PORT_NAME };

struct ctrl {
    uint32_t id;
    uint16_t event, value;
} __attribute__((packed));

static struct virtio_dev dev;
static struct virtq rx0, tx0, crx, ctx;
static uint8_t *rx_by_head[64], *crx_by_head[64];

static void post(struct virtq *q, uint8_t **by_head, uint8_t *buf)
{
    struct vbuf b = {buf, BUFSZ, 1};
    int head = virtq_add(q, &b, 1, 0);
    if (head >= 0)
        by_head[head] = buf;
    virtq_kick(q);
}

static void send(struct virtq *q, const void *data, uint32_t len)
{
    static uint8_t out[BUFSZ];
    uint16_t head;
    uint32_t used;
    memcpy(out, data, len);
    struct vbuf b = {out, len, 0};
    virtq_add(q, &b, 1, 0);
    virtq_kick(q);
    if (virtq_wait(q, &head, &used, 2000000000ull) != 0) {
        print("send timed out\n");
        guest_exit(0x3f);
    }
}

static void control(uint32_t id, uint16_t event, uint16_t value)
{
    struct ctrl c = {id, event, value};
    send(&ctx, &c, sizeof(c));
}

static int console_open;

static void handle_control(const uint8_t *msg, uint32_t len)
{
    struct ctrl c;
    memcpy(&c, msg, sizeof(c));
    print("ctrl port %u event %u value %u", c.id, c.event, c.value);
    if (c.event == PORT_NAME && len > sizeof(c))
        print(" name %s", (const char *)msg + sizeof(c));
    print(" len %u\n", len);
    if (c.event == PORT_ADD)
        control(c.id, PORT_READY, 1);
    if (c.event == CONSOLE_PORT && c.id == 0) {
        control(0, PORT_OPEN, 1);
        console_open = 1;
        mmio_write32(dev.device + 8, 'E');   /* emerg_wr */
        send(&tx0, "ready\n", 6);
    }
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    (void)magic;
    serial_init();
    /* Read the command line first: the allocator may reuse the memory QEMU put it in. */
    int hostile = str_has(guest_cmdline(info), "hostile");
    guest_alloc_init(info);
    if (virtio_find(VIRTIO_ID_CONSOLE, 0, &dev) != 0) {
        print("no virtio-serial\n");
        guest_exit(0x3e);
    }
    uint64_t offered = virtio_device_features(&dev);
    int ok = virtio_negotiate(&dev, (1ull << F_MULTIPORT) | (1ull << F_EMERG_WRITE));
    print("device features %x negotiated %x ok %d\n", (uint32_t)offered, (uint32_t)dev.features, ok);
    print("max_nr_ports %u queues %u\n", vcfg32(&dev, 4), virtio_num_queues(&dev));
    if (virtq_setup(&dev, &rx0, 0, 16) || virtq_setup(&dev, &tx0, 1, 16) || virtq_setup(&dev, &crx, 2, 16)
        || virtq_setup(&dev, &ctx, 3, 16)) {
        print("queue setup failed\n");
        guest_exit(0x3d);
    }
    virtio_driver_ok(&dev);
    if (hostile) {
        /* A descriptor that chains to itself: the device must refuse it, not spin. */
        tx0.desc[0].addr = (uintptr_t)guest_alloc(16, 8);
        tx0.desc[0].len = 16;
        tx0.desc[0].flags = VRING_DESC_F_NEXT;
        tx0.desc[0].next = 0;
        virtq_publish(&tx0, 0);
        virtq_notify(&tx0);
        while (!(virtio_status(&dev) & VIRTIO_STATUS_NEEDS_RESET))
            cpu_relax();
        print("device needs reset: status %x\n", virtio_status(&dev));
        serial_getc();   /* the host checks the daemon still answers */
        guest_exit(0x34);
    }
    for (int i = 0; i < NBUF; i++) {
        post(&crx, crx_by_head, guest_alloc(BUFSZ, 8));
        post(&rx0, rx_by_head, guest_alloc(BUFSZ, 8));
    }
    control(0, DEVICE_READY, 1);
    for (;;) {
        uint16_t head;
        uint32_t len;
        while (virtq_poll(&crx, &head, &len)) {   /* all control messages before data */
            handle_control(crx_by_head[head], len);
            post(&crx, crx_by_head, crx_by_head[head]);
        }
        if (virtq_poll(&rx0, &head, &len)) {
            uint8_t *data = rx_by_head[head];
            char line[BUFSZ + 1];
            memcpy(line, data, len);
            line[len] = 0;
            print("rx %u bytes\n", len);
            if (str_has(line, "quit")) {
                control(0, PORT_OPEN, 0);
                print("closed\n");
                serial_getc();   /* the host has seen VSERPORT_CHANGE */
                guest_exit(0x33);
            }
            for (uint32_t i = 0; i < len; i++)
                if (line[i] >= 'a' && line[i] <= 'z')
                    line[i] = (char)(line[i] - 32);
            send(&tx0, line, len);
            post(&rx0, rx_by_head, data);
        }
        if (virtio_status(&dev) & VIRTIO_STATUS_NEEDS_RESET) {
            print("device needs reset\n");
            guest_exit(0x3c);
        }
    }
}
