/* Reads two lines from COM1 and echoes them: the first may have been
   typed before the guest started (it waits in the host chardev and the
   UART), the second after "ready". Exits with code 0x11. */
#include "lib.h"

static void read_line(char *buf, int size)
{
    int n = 0;
    for (;;) {
        int c = serial_getc();
        if (c == '\n' || c == '\r')
            break;
        if (n < size - 1)
            buf[n++] = (char)c;
    }
    buf[n] = 0;
}

uint32_t guest_main(uint32_t magic, struct multiboot_info *info)
{
    char line[80];
    (void)magic;
    (void)info;
    serial_init();
    print("ready\n");
    for (int i = 1; i <= 2; i++) {
        read_line(line, sizeof(line));
        print("line %u: '%s'\n", i, line);
    }
    return 0x11;
}
