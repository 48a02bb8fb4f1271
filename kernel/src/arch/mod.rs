//! CPU bring-up for x86_64: PVH entry and long mode, GDT/TSS with interrupt stacks, the IDT and
//! its exception reports, time from the TSC, and the QEMU exit device.

pub mod boot;
pub mod exit;
pub mod gdt;
pub mod idt;
pub mod time;
