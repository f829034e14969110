/*
 * Entry of every test guest: a multiboot (v1) header, a flat 32-bit GDT,
 * a stack, then guest_main(magic, info); its return value leaves through
 * isa-debug-exit. The AP trampoline (16-bit code that smp.c copies below
 * 1 MiB and starts with INIT/SIPI) switches an AP to the same GDT and
 * calls ap_main on its own stack.
 */
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003       /* page-aligned modules, memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text
    .code32
    .globl _start
_start:
    cli
    lgdt gdt_ptr
    ljmp $0x08, $1f
1:  mov $0x10, %cx                  /* eax and ebx hold the multiboot hand-off */
    mov %cx, %ds
    mov %cx, %es
    mov %cx, %fs
    mov %cx, %gs
    mov %cx, %ss
    mov $stack_top, %esp
    push %ebx
    push %eax
    call guest_main
    push %eax
    call guest_exit
2:  hlt
    jmp 2b

    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    lgdtl %cs:(ap_gdt_ptr - ap_trampoline)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .align 4
ap_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:

    .code32
ap_entry32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $ap_stack_top, %esp
    call ap_main
3:  hlt
    jmp 3b

    .section .data
    .align 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF        /* 0x08: flat 32-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: flat data */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .align 16
    .space 16384
stack_top:
    .space 4096
ap_stack_top:

    .section .note.GNU-stack, "", @progbits
