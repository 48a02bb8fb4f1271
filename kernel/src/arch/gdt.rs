//! The long-mode GDT and the TSS whose interrupt stack table gives every IDT vector its own stack.
//!
//! Why every vector: the prebuilt `core`/`alloc` are compiled for a target that uses the 128-byte
//! red zone below RSP. An interrupt delivered on the current stack would overwrite it, so the IDT
//! (see `idt.rs`) switches to an IST stack for every vector, exceptions and interrupts alike.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST slot (0-based, as the `x86_64` crate counts) for ordinary exceptions.
pub const IST_EXCEPTION: u16 = 0;
/// IST slot for #DF, so a stack overflow on the exception stack still reports.
pub const IST_DOUBLE_FAULT: u16 = 1;
/// IST slot for NMI.
pub const IST_NMI: u16 = 2;
/// IST slot for #MC.
pub const IST_MACHINE_CHECK: u16 = 3;
/// IST slot for external and software interrupts (vectors 32-255).
pub const IST_INTERRUPT: u16 = 4;

const IST_STACK_SIZE: usize = 64 * 1024;
const IST_SLOTS: usize = 5;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; IST_SLOTS] = [const { Stack([0; IST_STACK_SIZE]) }; IST_SLOTS];

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = Once::new();

/// Loads the GDT, reloads the segment registers and loads the TSS.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        // Only the address of the static is taken (no reference); the stacks are used
        // exclusively by the CPU through the IST.
        let stacks = core::ptr::addr_of_mut!(IST_STACKS) as u64;
        let mut table = [VirtAddr::zero(); 7];
        for (slot, top) in table.iter_mut().take(IST_SLOTS).enumerate() {
            *top = VirtAddr::new(stacks + ((slot + 1) * IST_STACK_SIZE) as u64);
        }
        tss.interrupt_stack_table = table;
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
    gdt.load();
    // SAFETY: the selectors point at valid descriptors of the GDT just loaded, which lives in a
    // static for the rest of the run.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(*data);
        ES::set_reg(*data);
        SS::set_reg(*data);
        load_tss(*tss_sel);
    }
}
