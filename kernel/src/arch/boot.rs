//! PVH entry: the 32-bit protected-mode entry point QEMU jumps to, the switch to long mode, and the
//! `.note.Xen` note that advertises it (Xen PVH boot ABI, `XEN_ELFNOTE_PHYS32_ENTRY` = 18).
//!
//! On entry (PVH ABI): protected mode, paging off, `%ebx` = physical address of `hvm_start_info`.
//! We zero `.bss`, identity-map the first 1 GiB with 2 MiB pages (enough for the image, the boot
//! stack and the start-info block; Rust code builds the real tables), enable PAE, SSE, long mode
//! and NX, and call `kernel_main(start_info_paddr)` on the boot stack.

use core::arch::global_asm;

/// Size of the boot stack in bytes (the main kernel stack; interrupt stacks are separate).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 8                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
    .global boot_stack_top
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    /* Zero .bss (page tables and stacks live there). %ebx (start info) is preserved. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT, PDPT[0] -> PD, PD = 512 x 2 MiB identity pages (present|write|PS). */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $0x3, %eax
    mov %eax, boot_pdpt
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne 1b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT. */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    /* EFER: LME | NXE. */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax
    wrmsr
    /* CR0: PG | MP, clear EM (SSE usable). */
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax
    or $0x80000002, %eax
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmpl $0x08, $2f

    .code64
2:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    lea boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %ebx, %edi
    call kernel_main
3:
    cli
    hlt
    jmp 3b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);
