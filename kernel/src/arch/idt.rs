//! The IDT: every vector enters through a small assembly stub on an IST stack, saves all general
//! registers and the SSE state, and calls [`trap_dispatch`] with a [`TrapFrame`].
//!
//! CPU exceptions are fatal in this kernel: they print a decoded report (vector name, error code,
//! RIP, CR2 for page faults, registers) in the machine-readable form xtask looks for
//! (`KERNEL EXCEPTION vector=...`) and end the run with a failure status. Vectors 32-255 are
//! external/software interrupts, routed to `irq::dispatch` (per-vector handlers, counters, EOI).
//!
//! Stubs are 16 bytes apart starting at `isr_stubs`; each pushes a zero error code when the CPU
//! does not push one (vectors other than 8, 10-14, 17, 21, 29, 30), then its vector number.

use core::arch::global_asm;

use spin::Once;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

use super::gdt;

global_asm!(
    r#"
    .section .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    cld
    mov %rsp, %rdi
    mov %rsp, %rbx
    sub $512, %rsp
    and $-16, %rsp
    fxsave64 (%rsp)
    call trap_dispatch
    fxrstor64 (%rsp)
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    static isr_stubs: u8;
}

/// Distance between two stubs (see the `.balign 16` above).
const STUB_STRIDE: u64 = 16;

/// Registers saved on entry, in stack order (lowest address first).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number pushed by the stub.
    pub vector: u64,
    /// Error code pushed by the CPU, or 0 pushed by the stub.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

static IDT: Once<InterruptDescriptorTable> = Once::new();

fn stub(vector: u8) -> VirtAddr {
    let base = core::ptr::addr_of!(isr_stubs) as u64;
    VirtAddr::new(base + u64::from(vector) * STUB_STRIDE)
}

/// Builds and loads the IDT. Must run after [`gdt::init`] (the entries use the current CS and
/// the TSS's IST stacks).
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        macro_rules! entry {
            ($field:expr, $vector:expr, $ist:expr) => {
                // SAFETY: the stub for this vector is a valid handler for it (it matches the
                // CPU's error-code convention) and the IST slot is populated by gdt::init.
                unsafe { $field.set_handler_addr(stub($vector)).set_stack_index($ist) };
            };
        }
        entry!(idt.divide_error, 0, gdt::IST_EXCEPTION);
        entry!(idt.debug, 1, gdt::IST_EXCEPTION);
        entry!(idt.non_maskable_interrupt, 2, gdt::IST_NMI);
        entry!(idt.breakpoint, 3, gdt::IST_EXCEPTION);
        entry!(idt.overflow, 4, gdt::IST_EXCEPTION);
        entry!(idt.bound_range_exceeded, 5, gdt::IST_EXCEPTION);
        entry!(idt.invalid_opcode, 6, gdt::IST_EXCEPTION);
        entry!(idt.device_not_available, 7, gdt::IST_EXCEPTION);
        entry!(idt.double_fault, 8, gdt::IST_DOUBLE_FAULT);
        entry!(idt[9], 9, gdt::IST_EXCEPTION);
        entry!(idt.invalid_tss, 10, gdt::IST_EXCEPTION);
        entry!(idt.segment_not_present, 11, gdt::IST_EXCEPTION);
        entry!(idt.stack_segment_fault, 12, gdt::IST_EXCEPTION);
        entry!(idt.general_protection_fault, 13, gdt::IST_EXCEPTION);
        entry!(idt.page_fault, 14, gdt::IST_EXCEPTION);
        entry!(idt.x87_floating_point, 16, gdt::IST_EXCEPTION);
        entry!(idt.alignment_check, 17, gdt::IST_EXCEPTION);
        entry!(idt.machine_check, 18, gdt::IST_MACHINE_CHECK);
        entry!(idt.simd_floating_point, 19, gdt::IST_EXCEPTION);
        entry!(idt.virtualization, 20, gdt::IST_EXCEPTION);
        entry!(idt.cp_protection_exception, 21, gdt::IST_EXCEPTION);
        entry!(idt.hv_injection_exception, 28, gdt::IST_EXCEPTION);
        entry!(idt.vmm_communication_exception, 29, gdt::IST_EXCEPTION);
        entry!(idt.security_exception, 30, gdt::IST_EXCEPTION);
        for vector in 32..=255u8 {
            entry!(idt[vector], vector, gdt::IST_INTERRUPT);
        }
        idt
    });
    idt.load();
}

/// Name of a CPU exception vector.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating point",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        28 => "#HV hypervisor injection",
        29 => "#VC VMM communication",
        30 => "#SX security",
        _ => "reserved",
    }
}

/// Decodes a page-fault error code into words.
fn page_fault_cause(code: u64) -> (&'static str, &'static str, &'static str) {
    let present = if code & 1 != 0 {
        "protection-violation"
    } else {
        "not-present"
    };
    let access = if code & 0x10 != 0 {
        "instruction-fetch"
    } else if code & 2 != 0 {
        "write"
    } else {
        "read"
    };
    let mode = if code & 4 != 0 { "user" } else { "supervisor" };
    (present, access, mode)
}

#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if let Ok(vector @ 32..) = u8::try_from(frame.vector) {
        super::irq::dispatch(vector);
        return;
    }
    let f = *frame;
    let print = crate::console::emergency_print;
    print(format_args!(
        "KERNEL EXCEPTION vector={} ({}) error={:#x} rip={:#x}",
        f.vector,
        exception_name(f.vector),
        f.error_code,
        f.rip
    ));
    if f.vector == 14 {
        let (p, a, m) = page_fault_cause(f.error_code);
        print(format_args!(" cr2={:#x} ({p}, {a}, {m})", Cr2::read_raw()));
    }
    print(format_args!(
        "\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x} rsp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  cs={:#x} ss={:#x} rflags={:#x}\n",
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11, f.r12,
        f.r13, f.r14, f.r15, f.cs, f.ss, f.rflags
    ));
    super::exit::exit(super::exit::Status::Failure);
}
