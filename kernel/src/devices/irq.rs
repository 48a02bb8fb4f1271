//! Device interrupts for drivers: a driver asks for MSI or MSI-X vectors with a handler and gets
//! a guard; it never sees a message address. Underneath (VT-d spec §5.1; SPEC.md "Security
//! invariants": every interrupt a device can raise goes through interrupt remapping when the
//! unit offers it):
//!
//! - CPU vectors come from `arch::irq` and get the driver's handler;
//! - when the function's unit remaps interrupts, a block of IRTEs is written for those
//!   vectors, each checked against the source ID the function's requests carry
//!   (`vtd_platform::msi_source`: its requester ID or its group's DMA alias), and the function
//!   is programmed with remappable-format messages naming them; without remapping (no IOMMU,
//!   no ECAP.IR, `vtd.intremap=off`) with compatibility-format messages for the vectors;
//! - MSI through the function's capability (one vector), MSI-X through its table in the BAR the
//!   capability names, mapped uncached like other MMIO;
//! - dropping the guard disables MSI / MSI-X, clears the IRTEs (with their interrupt-entry-cache
//!   invalidation) and frees the CPU vectors, in that order.
//!
//! The I/O APIC's pins go the same way ([`route_gsi`]): an IRTE whose source ID is the I/O
//! APIC's from its DMAR scope, and a remappable-format redirection entry naming it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use iommu_vtd::{Destination, SourceId};
use pci::msi::{Msi, MsiError, MsiMessage, Msix, MsixError, VolatileMmio};
use pci::{Bdf, Ecam};
use vtd_platform::{RemapError, RemappedVectors};

use super::iommu::{self, Iommu, KernelPlatform, Unit};
use super::pci::PciSystem;
use crate::arch::irq::{self, Handler, IrqError};
use crate::arch::{apic, ioapic};
use crate::mem::paging::{self, Cache};

/// The IRTE block type the kernel runs.
pub type Remapped = RemappedVectors<iommu_vtd::MmioRegisters, KernelPlatform>;

/// Why interrupts could not be set up.
#[derive(Debug)]
pub enum InterruptError {
    /// The function is not in the topology.
    NoSuchDevice(Bdf),
    /// No CPU vector left, or registering the handler failed.
    Vector(IrqError),
    /// Interrupt remapping refused (table exhausted, ...).
    Remap(RemapError),
    /// No compatibility-format message for the vector.
    Message(pci::msi::MessageError),
    /// The MSI capability refused (absent, or the message).
    Msi(MsiError),
    /// The MSI-X capability refused (absent, table outside its BAR, ...).
    Msix(MsixError),
    /// The BAR holding the MSI-X table or PBA is absent or could not be mapped.
    MsixBar {
        /// BAR index.
        bir: u8,
    },
    /// No handlers given, or more than the function offers.
    BadCount(usize),
    /// The I/O APIC refused.
    IoApic(ioapic::IoApicError),
    /// A level-triggered input (only edge-triggered inputs are routed).
    LevelTriggered(u32),
    /// This CPU's APIC ID does not fit an xAPIC destination.
    Destination(u32),
}

impl fmt::Display for InterruptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice(b) => write!(f, "{b} is not in the PCI topology"),
            Self::Vector(e) => write!(f, "CPU vector: {e}"),
            Self::Remap(e) => write!(f, "interrupt remapping: {e}"),
            Self::Message(e) => write!(f, "MSI message: {e}"),
            Self::Msi(e) => write!(f, "MSI: {e}"),
            Self::Msix(e) => write!(f, "MSI-X: {e}"),
            Self::MsixBar { bir } => write!(f, "MSI-X BAR {bir} absent or unmappable"),
            Self::BadCount(n) => write!(f, "{n} vectors asked for"),
            Self::IoApic(e) => write!(f, "I/O APIC: {e}"),
            Self::LevelTriggered(gsi) => write!(f, "GSI {gsi} is level-triggered"),
            Self::Destination(id) => write!(f, "APIC ID {id} is not an xAPIC destination"),
        }
    }
}

impl core::error::Error for InterruptError {}

/// This CPU as an 8-bit xAPIC destination.
fn destination() -> Result<u8, InterruptError> {
    let id = apic::id();
    u8::try_from(id).map_err(|_| InterruptError::Destination(id))
}

/// CPU vectors with their handlers, and the IRTEs delivering them when the unit remaps
/// interrupts. Field order is drop order: the IRTEs are cleared before the vectors are freed.
pub struct Vectors {
    remapped: Option<Remapped>,
    vectors: Vec<u8>,
}

impl fmt::Debug for Vectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vectors")
            .field("vectors", &self.vectors)
            .field("remapped", &self.remapped)
            .finish()
    }
}

impl Vectors {
    /// Allocates one CPU vector per handler and, when `unit` is given (remapping on), an IRTE
    /// block for them checked against `source`.
    fn new(
        handlers: &[Handler],
        unit: Option<(&Arc<Unit>, SourceId)>,
    ) -> Result<Self, InterruptError> {
        let mut this = Self {
            remapped: None,
            vectors: Vec::with_capacity(handlers.len()),
        };
        for &h in handlers {
            let v = irq::alloc_vector().map_err(InterruptError::Vector)?;
            this.vectors.push(v);
            irq::register(v, h).map_err(InterruptError::Vector)?;
        }
        if let Some((unit, source)) = unit {
            let dest = Destination::XApic(destination()?);
            this.remapped = Some(
                RemappedVectors::new(unit, &this.vectors, dest, source)
                    .map_err(InterruptError::Remap)?,
            );
        }
        Ok(this)
    }

    /// The CPU vector of entry `i`.
    pub fn vector(&self, i: usize) -> Option<u8> {
        self.vectors.get(i).copied()
    }

    /// The IRTEs, when interrupts are remapped.
    pub fn remapped(&self) -> Option<&Remapped> {
        self.remapped.as_ref()
    }

    /// The IRTEs, mutably (to retarget an entry or, in tests, name another source).
    pub fn remapped_mut(&mut self) -> Option<&mut Remapped> {
        self.remapped.as_mut()
    }

    /// The message for entry `i`: remappable naming its IRTE, or compatibility for its vector.
    fn message(&self, i: usize) -> Result<MsiMessage, InterruptError> {
        match &self.remapped {
            Some(r) => r.msix_message(i).ok_or(InterruptError::BadCount(i)),
            None => {
                let v = self.vector(i).ok_or(InterruptError::BadCount(i))?;
                MsiMessage::fixed(destination()?, v).map_err(InterruptError::Message)
            }
        }
    }
}

impl Drop for Vectors {
    fn drop(&mut self) {
        // IRTEs first (cleared, invalidated, freed), then the vectors.
        drop(self.remapped.take());
        for &v in &self.vectors {
            if let Err(e) = irq::free_vector(v) {
                log::error!("irq: freeing vector {v:#x}: {e}");
            }
        }
    }
}

/// The unit remapping `bdf`'s interrupts and the source ID its IRTEs name, or `None` when its
/// interrupts are not remapped (no IOMMU, no unit, remapping off on it).
fn remapping_for(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    bdf: Bdf,
) -> Result<Option<(Arc<Unit>, SourceId)>, InterruptError> {
    let source =
        vtd_platform::msi_source(&pci.topology, bdf).ok_or(InterruptError::NoSuchDevice(bdf))?;
    Ok(iommu
        .and_then(|i| i.unit_for(pci, bdf))
        .filter(|u| u.unit.interrupt_remapping_enabled())
        .map(|u| (u.unit.clone(), source)))
}

/// A function's MSI vector, enabled. Dropping it disables MSI, clears the IRTE and frees the
/// vector.
pub struct MsiInterrupt<'a> {
    msi: Msi<&'a Ecam>,
    vectors: Vectors,
}

impl fmt::Debug for MsiInterrupt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsiInterrupt")
            .field("bdf", &self.msi.bdf())
            .field("vectors", &self.vectors)
            .finish()
    }
}

impl MsiInterrupt<'_> {
    /// The CPU vector the handler runs on.
    pub fn vector(&self) -> u8 {
        self.vectors.vector(0).unwrap_or(0)
    }

    /// The vectors and IRTEs.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// The vectors and IRTEs, mutably.
    pub fn vectors_mut(&mut self) -> &mut Vectors {
        &mut self.vectors
    }

    /// The message the function was programmed with (as read back from its capability).
    pub fn message(&self) -> MsiMessage {
        self.msi.message()
    }
}

impl Drop for MsiInterrupt<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.msi.disable() {
            log::error!("irq: disabling MSI of {}: {e}", self.msi.bdf());
        }
    }
}

/// One MSI vector for `bdf` running `handler`, remapped when its unit remaps interrupts, and
/// MSI enabled. The driver still has to make its device raise it (edu: register 0x60).
///
/// # Errors
///
/// [`InterruptError`] when the function has no MSI capability, no vector or IRTE is left, or
/// the capability refuses the message; nothing stays allocated then.
pub fn request_msi<'a>(
    pci: &'a PciSystem,
    iommu: Option<&Iommu>,
    bdf: Bdf,
    handler: Handler,
) -> Result<MsiInterrupt<'a>, InterruptError> {
    let mut msi = Msi::new(&pci.ecam, bdf).map_err(InterruptError::Msi)?;
    let remap = remapping_for(pci, iommu, bdf)?;
    let vectors = Vectors::new(&[handler], remap.as_ref().map(|(u, s)| (u, *s)))?;
    let message = match vectors.remapped() {
        Some(r) => r.msi_message(),
        None => vectors.message(0)?,
    };
    msi.configure(1, message).map_err(InterruptError::Msi)?;
    msi.enable().map_err(InterruptError::Msi)?;
    Ok(MsiInterrupt { msi, vectors })
}

/// A function's MSI-X vectors, enabled. Dropping it disables MSI-X, clears the IRTEs and frees
/// the vectors.
pub struct MsixInterrupt<'a> {
    msix: Msix<&'a Ecam, VolatileMmio>,
    vectors: Vectors,
}

impl fmt::Debug for MsixInterrupt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsixInterrupt")
            .field("bdf", &self.msix.bdf())
            .field("vectors", &self.vectors)
            .finish()
    }
}

impl MsixInterrupt<'_> {
    /// The CPU vector of table entry `i`.
    pub fn vector(&self, i: usize) -> Option<u8> {
        self.vectors.vector(i)
    }

    /// The vectors and IRTEs.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// The message in table entry `i` (read back from the table).
    ///
    /// # Errors
    ///
    /// [`InterruptError::Msix`] for an entry beyond the table.
    pub fn message(&self, i: u16) -> Result<MsiMessage, InterruptError> {
        self.msix.message(i).map_err(InterruptError::Msix)
    }
}

impl Drop for MsixInterrupt<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.msix.disable() {
            log::error!("irq: disabling MSI-X of {}: {e}", self.msix.bdf());
        }
    }
}

/// Maps BAR `bir` of `bdf` uncached as MSI-X memory.
fn msix_bar(pci: &PciSystem, bdf: Bdf, bir: u8) -> Result<VolatileMmio, InterruptError> {
    let bar = pci
        .topology
        .function(bdf)
        .and_then(|f| f.bar(bir))
        .ok_or(InterruptError::MsixBar { bir })?;
    let len = usize::try_from(bar.size).map_err(|_| InterruptError::MsixBar { bir })?;
    let ptr = paging::map_phys(bar.phys_address, bar.size, Cache::Uncached)
        .map_err(|_| InterruptError::MsixBar { bir })?;
    let ptr = NonNull::new(ptr).ok_or(InterruptError::MsixBar { bir })?;
    // SAFETY: the BAR (page aligned, so 4-byte aligned) is mapped uncached for the rest of the
    // run and is the MMIO of the function whose MSI-X structures it holds; this kernel keeps no
    // Rust reference to it.
    Ok(unsafe { VolatileMmio::new(ptr, len) })
}

/// MSI-X table entries `0..handlers.len()` of `bdf`, entry `i` running `handlers[i]`, remapped
/// when its unit remaps interrupts; MSI-X enabled with every other entry masked.
///
/// # Errors
///
/// [`InterruptError`] when the function has no MSI-X capability or fewer entries, its BAR
/// cannot be mapped, or no vector or IRTE is left; nothing stays allocated then.
pub fn request_msix<'a>(
    pci: &'a PciSystem,
    iommu: Option<&Iommu>,
    bdf: Bdf,
    handlers: &[Handler],
) -> Result<MsixInterrupt<'a>, InterruptError> {
    let cap = pci::msi::MsixCapability::find(&pci.ecam, bdf).map_err(InterruptError::Msix)?;
    if handlers.is_empty() || handlers.len() > usize::from(cap.table_size()) {
        return Err(InterruptError::BadCount(handlers.len()));
    }
    let table = msix_bar(pci, bdf, cap.table().bir)?;
    let pba = msix_bar(pci, bdf, cap.pba().bir)?;
    let mut msix =
        Msix::with_capability(&pci.ecam, bdf, cap, table, pba).map_err(InterruptError::Msix)?;
    let remap = remapping_for(pci, iommu, bdf)?;
    let vectors = Vectors::new(handlers, remap.as_ref().map(|(u, s)| (u, *s)))?;
    let mut entries = Vec::with_capacity(handlers.len());
    for i in 0..handlers.len() {
        let entry = u16::try_from(i).map_err(|_| InterruptError::BadCount(i))?;
        entries.push((entry, vectors.message(i)?));
    }
    msix.enable(&entries).map_err(InterruptError::Msix)?;
    Ok(MsixInterrupt { msix, vectors })
}

/// An I/O APIC input routed to a vector. Dropping it masks the entry, clears the IRTE and
/// frees the vector.
pub struct GsiRoute {
    gsi: u32,
    vectors: Vectors,
}

impl fmt::Debug for GsiRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsiRoute")
            .field("gsi", &self.gsi)
            .field("vectors", &self.vectors)
            .finish()
    }
}

impl GsiRoute {
    /// The CPU vector the handler runs on.
    pub fn vector(&self) -> u8 {
        self.vectors.vector(0).unwrap_or(0)
    }

    /// The vector and IRTE.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// The vector and IRTE, mutably.
    pub fn vectors_mut(&mut self) -> &mut Vectors {
        &mut self.vectors
    }

    /// Unmasks the entry.
    ///
    /// # Errors
    ///
    /// [`InterruptError::IoApic`].
    pub fn unmask(&self) -> Result<(), InterruptError> {
        ioapic::unmask(self.gsi).map_err(InterruptError::IoApic)
    }

    /// Masks the entry.
    ///
    /// # Errors
    ///
    /// [`InterruptError::IoApic`].
    pub fn mask(&self) -> Result<(), InterruptError> {
        ioapic::mask(self.gsi).map_err(InterruptError::IoApic)
    }
}

impl Drop for GsiRoute {
    fn drop(&mut self) {
        if let Err(e) = ioapic::mask(self.gsi) {
            log::error!("irq: masking GSI {}: {e}", self.gsi);
        }
    }
}

/// The unit and source ID of the I/O APIC holding `gsi`, when its interrupts are remapped.
fn ioapic_remapping(iommu: Option<&Iommu>, gsi: u32) -> Option<(Arc<Unit>, SourceId)> {
    let iommu = iommu?;
    let apic = ioapic::apics()
        .iter()
        .find(|a| (a.gsi_base..a.gsi_base.saturating_add(a.entries)).contains(&gsi))?;
    let source = iommu::ioapic_sources()
        .iter()
        .find(|s| s.ioapic_id == apic.id)?;
    iommu
        .units
        .iter()
        .find(|u| u.base == source.unit_base)
        .filter(|u| u.unit.interrupt_remapping_enabled())
        .map(|u| (u.unit.clone(), source.source_id()))
}

/// Routes `gsi` (polarity and trigger as given, e.g. from `ioapic::isa_route`) to a new vector
/// running `handler`, masked: through an IRTE naming the I/O APIC's DMAR source ID and a
/// remappable-format redirection entry when its unit remaps interrupts, else a compatibility
/// entry. Unmask it with [`GsiRoute::unmask`].
///
/// # Errors
///
/// [`InterruptError`] when no vector or IRTE is left or the I/O APIC has no such input.
pub fn route_gsi(
    iommu: Option<&Iommu>,
    gsi: u32,
    active_low: bool,
    level: bool,
    handler: Handler,
) -> Result<GsiRoute, InterruptError> {
    // Level-triggered inputs need level IRTEs and EOI handling this kernel does not route yet.
    if level {
        return Err(InterruptError::LevelTriggered(gsi));
    }
    let remap = ioapic_remapping(iommu, gsi);
    let vectors = Vectors::new(&[handler], remap.as_ref().map(|(u, s)| (u, *s)))?;
    let vector = vectors.vector(0).ok_or(InterruptError::BadCount(0))?;
    match vectors.remapped() {
        Some(r) => {
            let rte = ioapic::RteRemap::for_handle(r.handle(), vector, active_low, level);
            ioapic::route_remappable(gsi, rte).map_err(InterruptError::IoApic)?;
        }
        None => {
            let rte = ioapic::RteCompat::new()
                .with_vector(vector)
                .with_delivery_mode(ioapic::DELIVERY_FIXED)
                .with_active_low(active_low)
                .with_level_triggered(level)
                .with_destination(destination()?)
                .with_masked(true);
            ioapic::route(gsi, rte).map_err(InterruptError::IoApic)?;
        }
    }
    Ok(GsiRoute { gsi, vectors })
}
