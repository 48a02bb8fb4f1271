//! The I/O APICs of the MADT (82093AA datasheet; Intel ICH/PCH I/O APIC chapter): register
//! window, redirection-table entries in both formats, and per-GSI routing.
//!
//! Each I/O APIC is reached through an index/data pair (IOREGSEL at +0x00, IOWIN at +0x10),
//! mapped uncached; the pair is one critical section ([`IrqMutex`]). Redirection entry `n`
//! (registers 0x10 + 2n, low dword first) is written as:
//! - [`RteCompat`], the compatibility format: vector, delivery mode, destination mode and ID,
//!   polarity, trigger and mask;
//! - [`RteRemap`], the remappable format of VT-d spec §5.1.5.1 (interrupt format bit 48 set,
//!   handle[14:0] in bits 63:49, handle[15] in bit 11; the vector field carries the vector the
//!   IRTE delivers, as the I/O APIC matches EOIs by it).
//!
//! [`init`] masks every entry of every I/O APIC. [`isa_route`] gives the GSI, polarity and trigger
//! of an ISA IRQ from the MADT's interrupt source overrides (identity, edge, active high without
//! one).

use alloc::vec::Vec;

use bitfield_struct::bitfield;
use spin::Once;

use super::irq::IrqMutex;
use crate::acpi::{MadtInfo, Polarity, Trigger};
use crate::mem::paging::{self, Cache, MapError};

/// IOREGSEL offset.
const IOREGSEL: usize = 0x00;
/// IOWIN offset.
const IOWIN: usize = 0x10;
/// Size of the register window to map.
const WINDOW: u64 = 0x20;
/// Version register index.
const REG_VERSION: u32 = 0x01;
/// First redirection-table register index.
const REG_REDIRECTION_BASE: u32 = 0x10;

/// I/O APIC version register.
#[bitfield(u32)]
struct Version {
    version: u8,
    __: u8,
    /// Entries minus one.
    max_redirection_entry: u8,
    __: u8,
}

/// Delivery mode: fixed.
pub const DELIVERY_FIXED: u8 = 0;

/// A redirection-table entry, compatibility format.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RteCompat {
    /// Vector.
    pub vector: u8,
    /// Delivery mode (0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT).
    #[bits(3)]
    pub delivery_mode: u8,
    /// Logical destination mode.
    pub logical: bool,
    /// Delivery status (read-only).
    pub pending: bool,
    /// Active low.
    pub active_low: bool,
    /// Remote IRR (read-only).
    pub remote_irr: bool,
    /// Level triggered.
    pub level_triggered: bool,
    /// Masked.
    pub masked: bool,
    #[bits(31)]
    __: u32,
    /// Interrupt format: 0 (compatibility).
    pub remappable: bool,
    #[bits(7)]
    __: u8,
    /// Destination APIC ID (physical) or set (logical).
    pub destination: u8,
}

/// A redirection-table entry, remappable format (VT-d spec §5.1.5.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RteRemap {
    /// The vector the IRTE delivers (the I/O APIC matches EOIs by it).
    pub vector: u8,
    #[bits(3)]
    __: u8,
    /// Interrupt handle bit 15.
    pub handle_15: bool,
    /// Delivery status (read-only).
    pub pending: bool,
    /// Active low.
    pub active_low: bool,
    /// Remote IRR (read-only).
    pub remote_irr: bool,
    /// Level triggered.
    pub level_triggered: bool,
    /// Masked.
    pub masked: bool,
    #[bits(31)]
    __: u32,
    /// Interrupt format: 1 (remappable).
    pub remappable: bool,
    /// Interrupt handle bits 14:0.
    #[bits(15)]
    pub handle_low: u16,
}

/// An interrupt-remapping-table index split the way the remappable RTE and MSI formats hold it.
#[bitfield(u16)]
pub struct IrteHandle {
    /// Bits 14:0.
    #[bits(15)]
    pub low: u16,
    /// Bit 15.
    pub high: bool,
}

impl RteRemap {
    /// A masked remappable entry naming IRTE `handle`, delivering `vector`.
    pub fn for_handle(handle: u16, vector: u8, active_low: bool, level: bool) -> Self {
        let h = IrteHandle::from_bits(handle);
        Self::new()
            .with_remappable(true)
            .with_handle_low(h.low())
            .with_handle_15(h.high())
            .with_vector(vector)
            .with_active_low(active_low)
            .with_level_triggered(level)
            .with_masked(true)
    }

    /// The IRTE index it names.
    pub fn handle(&self) -> u16 {
        IrteHandle::new()
            .with_low(self.handle_low())
            .with_high(self.handle_15())
            .into_bits()
    }
}

/// The low and high dwords of a 64-bit entry.
fn halves(raw: u64) -> (u32, u32) {
    let b = raw.to_le_bytes();
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

fn join(low: u32, high: u32) -> u64 {
    let (l, h) = (low.to_le_bytes(), high.to_le_bytes());
    u64::from_le_bytes([l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3]])
}

/// The masked bit of either format (same position), as a compatibility-format view.
fn with_mask(raw: u64, masked: bool) -> u64 {
    RteCompat::from_bits(raw).with_masked(masked).into_bits()
}

/// Why an I/O APIC operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoApicError {
    /// No I/O APIC serves this GSI.
    NoSuchGsi(u32),
    /// Mapping a register window failed.
    Map(MapError),
    /// [`init`] has not run (or found no I/O APIC).
    NotReady,
}

impl core::fmt::Display for IoApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchGsi(g) => write!(f, "no I/O APIC input for GSI {g}"),
            Self::Map(e) => write!(f, "mapping an I/O APIC: {e}"),
            Self::NotReady => f.write_str("no I/O APIC initialised"),
        }
    }
}

impl core::error::Error for IoApicError {}

/// One I/O APIC.
#[derive(Debug)]
pub struct IoApic {
    /// Its ID (MADT).
    pub id: u8,
    /// Physical address of its window.
    pub address: u64,
    /// GSI of input 0.
    pub gsi_base: u32,
    /// Redirection entries.
    pub entries: u32,
    window: IrqMutex<usize>,
}

impl IoApic {
    fn read(base: usize, index: u32) -> u32 {
        // SAFETY: `base` is this I/O APIC's mapped uncached window; IOREGSEL/IOWIN are 32-bit
        // registers inside it; the caller holds the window lock with interrupts disabled, so the
        // select/data pair is not interleaved.
        unsafe {
            ((base + IOREGSEL) as *mut u32).write_volatile(index);
            ((base + IOWIN) as *const u32).read_volatile()
        }
    }

    fn write(base: usize, index: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            ((base + IOREGSEL) as *mut u32).write_volatile(index);
            ((base + IOWIN) as *mut u32).write_volatile(value);
        }
    }

    fn serves(&self, gsi: u32) -> Option<u32> {
        let pin = gsi.checked_sub(self.gsi_base)?;
        (pin < self.entries).then_some(pin)
    }

    fn read_entry(&self, pin: u32) -> u64 {
        let reg = REG_REDIRECTION_BASE + 2 * pin;
        self.window
            .with(|&mut b| join(Self::read(b, reg), Self::read(b, reg + 1)))
    }

    /// Writes entry `pin`: masked first, then the high dword, then the low dword with its final
    /// mask, so no half-written entry is ever live.
    fn write_entry(&self, pin: u32, raw: u64) {
        let reg = REG_REDIRECTION_BASE + 2 * pin;
        let (low, high) = halves(raw);
        let (masked_low, _) = halves(with_mask(raw, true));
        self.window.with(|&mut b| {
            Self::write(b, reg, masked_low);
            Self::write(b, reg + 1, high);
            Self::write(b, reg, low);
        });
    }
}

/// The I/O APICs and the ISA overrides.
struct System {
    apics: Vec<IoApic>,
    overrides: Vec<crate::acpi::IsaOverride>,
}

static SYSTEM: Once<System> = Once::new();

/// Maps every I/O APIC of the MADT and masks all their entries; returns how many there are.
///
/// # Errors
///
/// [`IoApicError::Map`] when a window cannot be mapped.
pub fn init(madt: &MadtInfo) -> Result<usize, IoApicError> {
    let mut apics = Vec::with_capacity(madt.io_apics.len());
    for a in &madt.io_apics {
        let base = paging::map_phys(a.address, WINDOW, Cache::Uncached).map_err(IoApicError::Map)?
            as usize;
        let version = Version::from_bits(IoApic::read(base, REG_VERSION));
        let apic = IoApic {
            id: a.id,
            address: a.address,
            gsi_base: a.gsi_base,
            entries: u32::from(version.max_redirection_entry()) + 1,
            window: IrqMutex::new(base),
        };
        for pin in 0..apic.entries {
            apic.write_entry(pin, RteCompat::new().with_masked(true).into_bits());
        }
        log::info!(
            "ioapic: id {} at {:#x}, version {:#x}, GSIs {}-{}",
            apic.id,
            apic.address,
            version.version(),
            apic.gsi_base,
            apic.gsi_base + apic.entries - 1
        );
        apics.push(apic);
    }
    let n = apics.len();
    SYSTEM.call_once(|| System {
        apics,
        overrides: madt.overrides.clone(),
    });
    Ok(n)
}

fn locate(gsi: u32) -> Result<(&'static IoApic, u32), IoApicError> {
    let sys = SYSTEM.get().ok_or(IoApicError::NotReady)?;
    sys.apics
        .iter()
        .find_map(|a| a.serves(gsi).map(|pin| (a, pin)))
        .ok_or(IoApicError::NoSuchGsi(gsi))
}

/// The I/O APICs found by [`init`].
pub fn apics() -> &'static [IoApic] {
    SYSTEM.get().map_or(&[], |s| &s.apics)
}

/// Where an ISA IRQ arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaRoute {
    /// Its GSI.
    pub gsi: u32,
    /// Active low.
    pub active_low: bool,
    /// Level triggered.
    pub level: bool,
}

/// The GSI and input flags of ISA IRQ `irq` (override if the MADT has one; ISA defaults of edge,
/// active high otherwise).
pub fn isa_route(irq: u8) -> IsaRoute {
    let o = SYSTEM
        .get()
        .and_then(|s| s.overrides.iter().find(|o| o.irq == irq));
    match o {
        Some(o) => IsaRoute {
            gsi: o.gsi,
            active_low: o.polarity == Polarity::ActiveLow,
            level: o.trigger == Trigger::Level,
        },
        None => IsaRoute {
            gsi: u32::from(irq),
            active_low: false,
            level: false,
        },
    }
}

/// Programs the entry of `gsi` in compatibility format.
///
/// # Errors
///
/// [`IoApicError::NoSuchGsi`] / [`IoApicError::NotReady`].
pub fn route(gsi: u32, rte: RteCompat) -> Result<(), IoApicError> {
    let (a, pin) = locate(gsi)?;
    a.write_entry(pin, rte.with_remappable(false).into_bits());
    Ok(())
}

/// Programs the entry of `gsi` in remappable format (interrupt remapping on).
///
/// # Errors
///
/// As [`route`].
pub fn route_remappable(gsi: u32, rte: RteRemap) -> Result<(), IoApicError> {
    let (a, pin) = locate(gsi)?;
    a.write_entry(pin, rte.with_remappable(true).into_bits());
    Ok(())
}

/// A fixed, physical-destination compatibility entry for ISA IRQ `irq` to APIC `dest` with the
/// override's polarity and trigger, masked; returns it with its GSI (write it with [`route`],
/// then [`unmask`]).
pub fn isa_entry(irq: u8, vector: u8, dest: u8) -> (u32, RteCompat) {
    let r = isa_route(irq);
    let rte = RteCompat::new()
        .with_vector(vector)
        .with_delivery_mode(DELIVERY_FIXED)
        .with_active_low(r.active_low)
        .with_level_triggered(r.level)
        .with_destination(dest)
        .with_masked(true);
    (r.gsi, rte)
}

/// Masks `gsi`'s entry.
///
/// # Errors
///
/// As [`route`].
pub fn mask(gsi: u32) -> Result<(), IoApicError> {
    set_mask(gsi, true)
}

/// Unmasks `gsi`'s entry.
///
/// # Errors
///
/// As [`route`].
pub fn unmask(gsi: u32) -> Result<(), IoApicError> {
    set_mask(gsi, false)
}

fn set_mask(gsi: u32, masked: bool) -> Result<(), IoApicError> {
    let (a, pin) = locate(gsi)?;
    let reg = REG_REDIRECTION_BASE + 2 * pin;
    a.window.with(|&mut b| {
        let (low, _) = halves(with_mask(join(IoApic::read(b, reg), 0), masked));
        IoApic::write(b, reg, low);
    });
    Ok(())
}

/// The raw entry of `gsi` (both formats share the mask and trigger bits).
///
/// # Errors
///
/// As [`route`].
pub fn entry(gsi: u32) -> Result<u64, IoApicError> {
    let (a, pin) = locate(gsi)?;
    Ok(a.read_entry(pin))
}
