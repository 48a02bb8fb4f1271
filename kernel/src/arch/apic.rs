//! The local APIC (Intel SDM vol. 3, chapter 11 "Advanced Programmable Interrupt Controller"):
//! its registers declared once, the [`ApicAccess`] seam between the driver and the register
//! interface, and the boot-time setup.
//!
//! [`init`] maps the xAPIC page (uncached, at the MADT's local-APIC address), software-enables
//! the APIC through SVR with [`SPURIOUS_VECTOR`] (§11.9: a spurious interrupt is not EOId),
//! programs the LVT error entry to [`ERROR_VECTOR`] (its handler, [`handle_error`], re-arms and
//! reads ESR, §11.5.3), masks LINT0/LINT1 (the 8259 and NMI lines: both PICs are masked, and
//! nothing in this kernel expects an external NMI) and sets TPR to 0 (every priority class
//! accepted).
//!
//! The driver reads and writes registers through [`ApicAccess`], keyed by [`Reg`]. Only the
//! xAPIC (MMIO) implementation exists: QEMU 7.2 under TCG offers no x2APIC (CPUID.1:ECX.x2APIC is
//! clear, [`x2apic_supported`] reports it at boot). An x2APIC implementation reaches the same
//! registers as MSRs `0x800 + offset / 16` with 32-bit IDs and a single 64-bit ICR; the seam has
//! one method per such difference ([`ApicAccess::send_ipi`], [`ApicAccess::id`]).
//!
//! QEMU's APIC never raises the LVT error interrupt itself and only ever records "illegal
//! register address" in ESR (reads and writes of reserved offsets); ESR writes do not clear it.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bitfield_struct::bitfield;
use spin::Once;

use crate::mem::paging::{self, Cache, MapError};

/// Vector the APIC delivers for a spurious interrupt (SVR bits 7:0). Its handler does not EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Vector of the LVT error entry.
pub const ERROR_VECTOR: u8 = 0xfe;

/// Size of the xAPIC register page.
const XAPIC_PAGE: u64 = 4096;

/// A local APIC register, by its xAPIC MMIO offset (SDM table 11-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reg {
    /// Local APIC ID.
    Id = 0x020,
    /// Version.
    Version = 0x030,
    /// A reserved offset; an access sets ESR "illegal register address" (test hook).
    Reserved = 0x040,
    /// Task priority.
    Tpr = 0x080,
    /// End of interrupt (write-only).
    Eoi = 0x0b0,
    /// Spurious-interrupt vector.
    Svr = 0x0f0,
    /// Error status.
    Esr = 0x280,
    /// Interrupt command, low half.
    IcrLow = 0x300,
    /// Interrupt command, high half (destination).
    IcrHigh = 0x310,
    /// LVT timer.
    LvtTimer = 0x320,
    /// LVT LINT0.
    LvtLint0 = 0x350,
    /// LVT LINT1.
    LvtLint1 = 0x360,
    /// LVT error.
    LvtError = 0x370,
    /// Timer initial count.
    TimerInitial = 0x380,
    /// Timer current count.
    TimerCurrent = 0x390,
    /// Timer divide configuration.
    TimerDivide = 0x3e0,
}

/// Spurious-interrupt vector register, SDM §11.9 figure 11-23.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Svr {
    /// Spurious vector.
    pub vector: u8,
    /// APIC software enable.
    pub enabled: bool,
    /// Focus processor checking disabled.
    pub focus_check_disabled: bool,
    #[bits(2)]
    __: u8,
    /// EOI-broadcast suppression.
    pub eoi_broadcast_suppression: bool,
    #[bits(19)]
    __: u32,
}

/// A local vector table entry (timer, LINT0/1, error), SDM §11.5.1 figure 11-8.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Lvt {
    /// Vector.
    pub vector: u8,
    /// Delivery mode (0 fixed, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT; not for timer/error).
    #[bits(3)]
    pub delivery_mode: u8,
    __: bool,
    /// Delivery status (send pending).
    pub pending: bool,
    /// Input pin polarity: active low (LINT only).
    pub active_low: bool,
    /// Remote IRR (LINT only).
    pub remote_irr: bool,
    /// Level triggered (LINT only).
    pub level_triggered: bool,
    /// Masked.
    pub masked: bool,
    /// Timer mode (timer only): 0 one-shot, 1 periodic, 2 TSC-deadline.
    #[bits(2)]
    pub timer_mode: u8,
    #[bits(13)]
    __: u16,
}

/// LVT timer mode: one-shot.
pub const TIMER_ONE_SHOT: u8 = 0;
/// LVT timer mode: periodic.
pub const TIMER_PERIODIC: u8 = 1;

/// Error status register, SDM §11.5.3 figure 11-9.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Esr {
    /// Send checksum error.
    pub send_checksum: bool,
    /// Receive checksum error.
    pub receive_checksum: bool,
    /// Send accept error.
    pub send_accept: bool,
    /// Receive accept error.
    pub receive_accept: bool,
    /// Redirectable IPI.
    pub redirectable_ipi: bool,
    /// Send illegal vector.
    pub send_illegal_vector: bool,
    /// Received illegal vector.
    pub receive_illegal_vector: bool,
    /// Illegal register address.
    pub illegal_register_address: bool,
    #[bits(24)]
    __: u32,
}

/// Interrupt command register, low half, SDM §11.6.1 figure 11-12.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct IcrLow {
    /// Vector.
    pub vector: u8,
    /// Delivery mode (0 fixed).
    #[bits(3)]
    pub delivery_mode: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// Delivery status (send pending).
    pub pending: bool,
    __: bool,
    /// Level: assert.
    pub assert: bool,
    /// Level triggered.
    pub level_triggered: bool,
    #[bits(2)]
    __: u8,
    /// Destination shorthand: 0 none, 1 self, 2 all, 3 all but self.
    #[bits(2)]
    pub shorthand: u8,
    #[bits(12)]
    __: u16,
}

/// ICR destination shorthand: self.
pub const SHORTHAND_SELF: u8 = 1;

/// Interrupt command register, high half (xAPIC), SDM §11.6.1.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct IcrHigh {
    #[bits(24)]
    __: u32,
    /// Destination APIC ID.
    pub destination: u8,
}

/// xAPIC ID register, SDM §11.4.6.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct XApicId {
    #[bits(24)]
    __: u32,
    /// The APIC ID.
    pub id: u8,
}

/// Timer divide configuration register, SDM §11.5.4 figure 11-10.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct TimerDivide {
    /// Divide value bits 1:0.
    #[bits(2)]
    pub low: u8,
    __: bool,
    /// Divide value bit 2 (register bit 3).
    pub high: bool,
    #[bits(28)]
    __: u32,
}

impl TimerDivide {
    /// Divide by 16 (0b011).
    pub const BY_16: Self = Self::new().with_low(3);
    /// The divisor this setting selects.
    pub const DIVISOR_16: u64 = 16;
}

/// IA32_APIC_BASE MSR (0x1b), SDM §11.4.4 figure 11-5.
#[bitfield(u64)]
pub struct ApicBaseMsr {
    #[bits(8)]
    __: u8,
    /// This is the bootstrap processor.
    pub bsp: bool,
    __: bool,
    /// x2APIC mode enabled.
    pub x2apic: bool,
    /// APIC globally enabled.
    pub enabled: bool,
    /// Base address, in 4 KiB frames.
    #[bits(40)]
    pub base_frame: u64,
    #[bits(12)]
    __: u16,
}

/// MSR number of IA32_APIC_BASE.
const IA32_APIC_BASE: u32 = 0x1b;

/// CPUID leaf 1 ECX, the bit this kernel reads (SDM vol. 2A, CPUID).
#[bitfield(u32)]
struct Cpuid1Ecx {
    #[bits(21)]
    __: u32,
    /// x2APIC supported.
    x2apic: bool,
    #[bits(10)]
    __: u16,
}

/// How the driver reaches the local APIC's registers: MMIO (xAPIC) today, MSRs (x2APIC) later.
pub trait ApicAccess: Sync {
    /// Reads a 32-bit register.
    fn read(&self, reg: Reg) -> u32;
    /// Writes a 32-bit register.
    fn write(&self, reg: Reg, value: u32);
    /// This CPU's APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode).
    fn id(&self) -> u32;
    /// Sends an IPI: `destination` is an APIC ID (ignored with a shorthand).
    ///
    /// # Errors
    ///
    /// [`ApicError::DestinationOutOfRange`] for an ID this mode cannot address.
    fn send_ipi(&self, icr: IcrLow, destination: u32) -> Result<(), ApicError>;
}

/// The xAPIC: registers in the uncached MMIO page.
#[derive(Debug)]
pub struct XApic {
    base: usize,
}

impl XApic {
    fn ptr(&self, reg: Reg) -> *mut u32 {
        (self.base + reg as usize) as *mut u32
    }
}

impl ApicAccess for XApic {
    fn read(&self, reg: Reg) -> u32 {
        // SAFETY: `base` is the mapped (uncached) xAPIC page and every Reg offset is a 16-byte
        // aligned register inside it.
        unsafe { self.ptr(reg).read_volatile() }
    }

    fn write(&self, reg: Reg, value: u32) {
        // SAFETY: as in `read`.
        unsafe { self.ptr(reg).write_volatile(value) }
    }

    fn id(&self) -> u32 {
        u32::from(XApicId::from_bits(self.read(Reg::Id)).id())
    }

    fn send_ipi(&self, icr: IcrLow, destination: u32) -> Result<(), ApicError> {
        // 0xff is the physical-mode broadcast: not an ID.
        let dest = u8::try_from(destination)
            .ok()
            .filter(|&d| d != u8::MAX)
            .ok_or(ApicError::DestinationOutOfRange(destination))?;
        self.write(
            Reg::IcrHigh,
            IcrHigh::new().with_destination(dest).into_bits(),
        );
        // Writing the low half sends it.
        self.write(Reg::IcrLow, icr.into_bits());
        Ok(())
    }
}

/// Why the local APIC could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// Mapping its register page failed.
    Map(MapError),
    /// An IPI destination the APIC mode cannot address (xAPIC: IDs 0-254).
    DestinationOutOfRange(u32),
    /// The MADT's address differs from IA32_APIC_BASE (not an identity the kernel can use).
    AddressMismatch {
        /// From the MADT.
        madt: u64,
        /// From the MSR.
        msr: u64,
    },
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "mapping the local APIC: {e}"),
            Self::DestinationOutOfRange(id) => {
                write!(f, "APIC ID {id} cannot be addressed in xAPIC mode")
            }
            Self::AddressMismatch { madt, msr } => write!(
                f,
                "MADT local APIC at {madt:#x} but IA32_APIC_BASE says {msr:#x}"
            ),
        }
    }
}

impl core::error::Error for ApicError {}

static LAPIC: Once<XApic> = Once::new();

/// Error interrupts handled.
static ERRORS: AtomicU64 = AtomicU64::new(0);
/// ESR as read by the last error interrupt.
static LAST_ESR: AtomicU32 = AtomicU32::new(0);
/// Spurious interrupts seen.
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// The APIC's register access, once [`init`] ran.
pub fn access() -> Option<&'static dyn ApicAccess> {
    LAPIC.get().map(|a| a as &dyn ApicAccess)
}

/// Whether the CPU supports x2APIC (CPUID.1:ECX bit 21).
pub fn x2apic_supported() -> bool {
    let leaf = core::arch::x86_64::__cpuid(1);
    Cpuid1Ecx::from_bits(leaf.ecx).x2apic()
}

/// Maps and enables the local APIC at `madt_address` in xAPIC mode (module docs). Interrupts
/// stay disabled; the caller enables them once vectors are routed.
///
/// # Errors
///
/// [`ApicError::Map`] when the page cannot be mapped, [`ApicError::AddressMismatch`] when the
/// MSR disagrees with the MADT.
pub fn init(madt_address: u64) -> Result<&'static dyn ApicAccess, ApicError> {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; reading it has no side effect.
    let msr = ApicBaseMsr::from_bits(unsafe {
        x86_64::registers::model_specific::Msr::new(IA32_APIC_BASE).read()
    });
    let msr_base = msr.base_frame() * XAPIC_PAGE;
    if msr_base != madt_address {
        return Err(ApicError::AddressMismatch {
            madt: madt_address,
            msr: msr_base,
        });
    }
    let ptr =
        paging::map_phys(madt_address, XAPIC_PAGE, Cache::Uncached).map_err(ApicError::Map)?;
    let apic = LAPIC.call_once(|| XApic { base: ptr as usize });
    apic.write(Reg::Tpr, 0);
    let masked = Lvt::new().with_masked(true);
    apic.write(Reg::LvtLint0, masked.into_bits());
    apic.write(Reg::LvtLint1, masked.into_bits());
    apic.write(Reg::LvtTimer, masked.into_bits());
    apic.write(
        Reg::LvtError,
        Lvt::new().with_vector(ERROR_VECTOR).into_bits(),
    );
    apic.write(
        Reg::Svr,
        Svr::new()
            .with_vector(SPURIOUS_VECTOR)
            .with_enabled(true)
            .into_bits(),
    );
    // Clear anything latched before: write, then read (§11.5.3).
    apic.write(Reg::Esr, 0);
    let _ = apic.read(Reg::Esr);
    Ok(apic)
}

/// Signals end of interrupt (no-op before [`init`]).
pub fn eoi() {
    if let Some(a) = LAPIC.get() {
        a.write(Reg::Eoi, 0);
    }
}

/// This CPU's APIC ID (0 before [`init`]).
pub fn id() -> u32 {
    LAPIC.get().map_or(0, |a| a.id())
}

/// Sends a fixed, edge-triggered IPI with `vector` to this CPU (no-op before [`init`]).
pub fn send_self_ipi(vector: u8) {
    if let Some(a) = LAPIC.get() {
        let icr = IcrLow::new()
            .with_vector(vector)
            .with_assert(true)
            .with_shorthand(SHORTHAND_SELF);
        // The destination is ignored with the self shorthand; 0 is always addressable.
        let _ = a.send_ipi(icr, 0);
    }
}

/// Reads a register (tests and diagnostics; 0 before [`init`]).
pub fn read(reg: Reg) -> u32 {
    LAPIC.get().map_or(0, |a| a.read(reg))
}

/// Writes a register (the timer driver; no-op before [`init`]).
pub fn write(reg: Reg, value: u32) {
    if let Some(a) = LAPIC.get() {
        a.write(reg, value);
    }
}

/// Re-arms and reads ESR (write, then read, §11.5.3).
pub fn read_esr() -> Esr {
    write(Reg::Esr, 0);
    Esr::from_bits(read(Reg::Esr))
}

/// The LVT error handler: reads ESR, records it and logs it. Runs with interrupts disabled.
pub fn handle_error(_vector: u8) {
    let esr = read_esr();
    LAST_ESR.store(esr.into_bits(), Ordering::Relaxed);
    let n = ERRORS.fetch_add(1, Ordering::Relaxed);
    // Rate limit: the first few and then every 1024th.
    if n < 4 || n.is_multiple_of(1024) {
        log::warn!("local APIC error interrupt: {esr:?}");
    }
}

/// Counts a spurious interrupt (no EOI: §11.9).
pub fn handle_spurious() {
    SPURIOUS.fetch_add(1, Ordering::Relaxed);
}

/// Error interrupts handled so far, and the ESR the last one read.
pub fn error_stats() -> (u64, Esr) {
    (
        ERRORS.load(Ordering::Relaxed),
        Esr::from_bits(LAST_ESR.load(Ordering::Relaxed)),
    )
}

/// Spurious interrupts seen so far.
pub fn spurious_count() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}
