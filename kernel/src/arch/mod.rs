//! CPU bring-up for x86_64: PVH entry and long mode, GDT/TSS with interrupt stacks, the IDT and
//! its exception reports, time from the TSC, the QEMU exit device, and interrupts: the legacy
//! PICs (masked), the local APIC, the I/O APICs, the dispatch table and the LAPIC timer.
//!
//! Layering inside `arch`: `time` and `apic` are leaves (`apic` maps its page through
//! `mem::paging`); `irq` (dispatch) uses both; `timer` and `ioapic` use `irq`; `idt` calls
//! `irq::dispatch`.

pub mod apic;
pub mod boot;
pub mod exit;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod irq;
pub mod pic;
pub mod time;
pub mod timer;

use alloc::string::{String, ToString};

/// What [`init_interrupts`] set up, for the boot log.
#[derive(Debug, Clone, Copy)]
pub struct InterruptsReport {
    /// This CPU's APIC ID.
    pub apic_id: u32,
    /// Whether the CPU offers x2APIC (the kernel runs xAPIC either way).
    pub x2apic_supported: bool,
    /// I/O APICs found and masked.
    pub io_apics: usize,
    /// The LAPIC timer's count rate after its divider, in Hz.
    pub timer_hz: u64,
    /// The tick period.
    pub period_us: u64,
}

/// Brings up interrupts: PICs remapped and masked, the local APIC (xAPIC) enabled with its
/// spurious and error vectors, every I/O APIC entry masked, the LAPIC timer calibrated and
/// started with `period_us`, then `sti`.
///
/// # Errors
///
/// A description of the step that failed; interrupts then stay disabled.
pub fn init_interrupts(
    madt: &crate::acpi::MadtInfo,
    period_us: u64,
) -> Result<InterruptsReport, String> {
    pic::init();
    let x2apic_supported = apic::x2apic_supported();
    let lapic = apic::init(madt.local_apic_address).map_err(|e| e.to_string())?;
    irq::install_system(apic::ERROR_VECTOR, apic::handle_error);
    let io_apics = ioapic::init(madt).map_err(|e| e.to_string())?;
    let timer_hz = timer::init(period_us).map_err(|e| e.to_string())?;
    irq::enable();
    Ok(InterruptsReport {
        apic_id: lapic.id(),
        x2apic_supported,
        io_apics,
        timer_hz,
        period_us,
    })
}
