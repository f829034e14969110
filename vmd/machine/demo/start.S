/* Multiboot (v1) entry of the demo guest: a stack, then demo_main(magic, info). */
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002                /* magic */
        .long 0x00000003                /* page-align modules, want memory info */
        .long -(0x1BADB002 + 0x00000003)

        .text
        .globl _start
_start:
        cli
        mov $stack_top, %esp
        push %ebx                       /* multiboot info */
        push %eax                       /* multiboot magic */
        call demo_main
1:      hlt
        jmp 1b

        .bss
        .align 16
        .space 16384
stack_top:

        .section .note.GNU-stack, "", @progbits
