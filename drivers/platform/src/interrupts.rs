//! Interrupt-remapping glue (VT-d spec §5.1 "Interrupt Remapping", §5.1.4 source-id validation,
//! §8.3.1 device scopes of type I/O APIC; SPEC.md "Requester IDs the IOMMU sees"): which source
//! ID an interrupt remapping table entry (IRTE) must name for a PCI function or an I/O APIC, and
//! [`RemappedVectors`]: a block of IRTEs on a function's unit, each written with its vector and
//! source ID, with the remappable-format messages the function is programmed with.
//!
//! Source IDs:
//! - a PCI function's interrupts reach the unit with the requester ID its DMA carries there
//!   ([`pci::Topology::iommu_source_id`]: the function itself, or its isolation group's DMA
//!   alias when it sits behind a PCIe-to-PCI bridge, which takes ownership of the request as
//!   (secondary bus, 00.0)). We name exactly that ID (SVT = 1, SQ = 0, all 16 bits compared):
//!   narrower than Linux's SVT = 2 bus-range check for conventional buses, and exact for the
//!   bridges QEMU and PCIe hardware model (the bridge rewrites the requester ID of everything
//!   it forwards);
//! - an I/O APIC's requests carry the source ID its DMAR device scope gives (the scope's
//!   enumeration ID is the MADT I/O APIC ID; QEMU: bus 0xff, 00.0) ([`ioapic_sources`]).
//!
//! Pure over the parsed DMAR and the topology, generic over the unit's register access and
//! platform, so the host tests run it over `iommu_vtd::fake`.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use iommu_vtd::dmar::ScopeKind;
use iommu_vtd::{Destination, Dmar, Irte, Platform, RegisterIo, SourceId, VtdError, VtdUnit};
use pci::msi::MsiMessage;
use pci::{Bdf, Topology};

/// Where an I/O APIC's interrupt requests come from, per the DMAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicSource {
    /// The I/O APIC ID (the scope's enumeration ID; the MADT's I/O APIC ID).
    pub ioapic_id: u8,
    /// Register base of the unit whose DRHD holds the scope (the unit remapping its
    /// interrupts).
    pub unit_base: u64,
    /// The requester ID its interrupt requests carry.
    pub bdf: Bdf,
}

impl IoApicSource {
    /// The source ID its IRTEs name (SVT = 1 with [`IoApicSource::bdf`]).
    pub fn source_id(&self) -> SourceId {
        SourceId::Requester(self.bdf.requester_id())
    }
}

/// Every I/O APIC scope of the DMAR's DRHDs, resolved: the scope's path is followed through
/// the bridges `topology` enumerated (an I/O APIC is usually on a bus of its own, a one-entry
/// path, as QEMU's bus 0xff 00.0). Scopes whose path does not resolve are left out.
pub fn ioapic_sources(dmar: &Dmar<'_>, topology: &Topology) -> Vec<IoApicSource> {
    let mut out = Vec::new();
    for drhd in dmar.drhds() {
        let segment = drhd.segment();
        for scope in drhd.scopes() {
            if scope.kind() != ScopeKind::IoApic {
                continue;
            }
            let secondary = |bus: u8, dev: u8, func: u8| {
                let bdf = Bdf::new(segment, bus, dev, func).ok()?;
                topology.function(bdf)?.bridge.map(|b| b.secondary)
            };
            if let Ok(bdf) = scope.resolve(secondary) {
                out.push(IoApicSource {
                    ioapic_id: scope.enumeration_id(),
                    unit_base: drhd.register_base(),
                    bdf,
                });
            }
        }
    }
    out
}

/// The source ID the IRTEs of PCI function `bdf` must name: SVT = 1 with the requester ID its
/// requests carry at the unit ([`pci::Topology::iommu_source_id`]). `None` for a function the
/// topology does not hold.
pub fn msi_source(topology: &Topology, bdf: Bdf) -> Option<SourceId> {
    topology
        .iommu_source_id(bdf)
        .map(|alias| SourceId::Requester(alias.requester_id()))
}

/// Why remapped vectors could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemapError {
    /// No vectors asked for, or more than a table block holds.
    BadCount(usize),
    /// The unit refused (remapping off, table exhausted, a reserved vector, ...).
    Vtd(VtdError),
}

impl fmt::Display for RemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCount(n) => write!(f, "{n} vectors: need 1 to 32768"),
            Self::Vtd(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for RemapError {}

impl From<VtdError> for RemapError {
    fn from(e: VtdError) -> Self {
        Self::Vtd(e)
    }
}

/// A naturally aligned block of IRTEs on one unit, entry `i` delivering `vectors[i]` to one
/// destination, usable only by requests from one source. Dropping it clears the entries,
/// invalidates their interrupt-entry-cache entries and frees the block
/// ([`VtdUnit::free_irtes`]); a failure then is logged and the block stays allocated (never
/// reused while a stale copy may be cached).
pub struct RemappedVectors<R: RegisterIo, P: Platform> {
    unit: Arc<VtdUnit<R, P>>,
    handle: u16,
    block: u32,
    vectors: Vec<u8>,
    destination: Destination,
    source: SourceId,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for RemappedVectors<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemappedVectors")
            .field("handle", &self.handle)
            .field("block", &self.block)
            .field("vectors", &self.vectors)
            .field("destination", &self.destination)
            .field("source", &self.source)
            .finish()
    }
}

impl<R: RegisterIo, P: Platform> RemappedVectors<R, P> {
    /// Allocates a block of IRTEs on `unit` (the smallest power of two holding
    /// `vectors.len()`) and writes entry `i` as a fixed, edge-triggered, physical-destination
    /// entry for `vectors[i]` to `destination`, checked against `source` (each write followed
    /// by its interrupt-entry-cache invalidation, [`VtdUnit::set_irte`]). Entries of the block
    /// beyond `vectors.len()` stay not present.
    ///
    /// # Errors
    ///
    /// [`RemapError::BadCount`] for no vectors or more than 32768; [`RemapError::Vtd`] when
    /// the unit refuses (interrupt remapping off, no free block, a vector below 16, a
    /// destination of the wrong format). Nothing stays allocated then.
    pub fn new(
        unit: &Arc<VtdUnit<R, P>>,
        vectors: &[u8],
        destination: Destination,
        source: SourceId,
    ) -> Result<Self, RemapError> {
        let n = vectors.len();
        if n == 0 || n > 1 << 15 {
            return Err(RemapError::BadCount(n));
        }
        let block = u32::try_from(n.next_power_of_two()).map_err(|_| RemapError::BadCount(n))?;
        let handle = unit.alloc_irtes(block)?;
        let this = Self {
            unit: unit.clone(),
            handle,
            block,
            vectors: vectors.to_vec(),
            destination,
            source,
        };
        for (i, &vector) in vectors.iter().enumerate() {
            // On failure `this` drops: the block is cleared and freed.
            this.write(i, vector, source)?;
        }
        Ok(this)
    }

    fn index(&self, i: usize) -> Option<u16> {
        u16::try_from(i)
            .ok()
            .filter(|&i| usize::from(i) < self.vectors.len())
            .and_then(|i| self.handle.checked_add(i))
    }

    fn write(&self, i: usize, vector: u8, source: SourceId) -> Result<(), RemapError> {
        let index = self.index(i).ok_or(RemapError::BadCount(i))?;
        let entry = Irte::msi(vector, self.destination, source).map_err(VtdError::from)?;
        self.unit.set_irte(index, &entry)?;
        Ok(())
    }

    /// The unit holding the entries.
    pub fn unit(&self) -> &Arc<VtdUnit<R, P>> {
        &self.unit
    }

    /// The first entry's index: the handle of the remappable-format messages.
    pub fn handle(&self) -> u16 {
        self.handle
    }

    /// How many vectors the block serves.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Whether it serves none (never true for a value [`RemappedVectors::new`] returned).
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The vector entry `i` delivers.
    pub fn vector(&self, i: usize) -> Option<u8> {
        self.vectors.get(i).copied()
    }

    /// The source ID every entry checks.
    pub fn source(&self) -> SourceId {
        self.source
    }

    /// The IRTE index serving vector `i`.
    pub fn irte_index(&self, i: usize) -> Option<u16> {
        self.index(i)
    }

    /// The MSI-X table entry message for vector `i`: remappable format naming its own IRTE
    /// (no subhandle).
    pub fn msix_message(&self, i: usize) -> Option<MsiMessage> {
        self.index(i)
            .map(|index| MsiMessage::remappable(index, None))
    }

    /// The MSI capability message: for one vector the handle alone; for a multi-message MSI
    /// the handle with subhandle 0, so message `i` (data `| i`) uses entry `handle + i`.
    pub fn msi_message(&self) -> MsiMessage {
        if self.vectors.len() == 1 {
            MsiMessage::remappable(self.handle, None)
        } else {
            MsiMessage::remappable(self.handle, Some(0))
        }
    }

    /// Rewrites entry `i` to deliver `vector` (same destination and source); when this
    /// returns, the interrupt-entry-cache invalidation has completed and the next interrupt
    /// through it arrives on `vector`.
    ///
    /// # Errors
    ///
    /// [`RemapError::BadCount`] for `i` beyond the vectors; [`RemapError::Vtd`] as
    /// [`VtdUnit::set_irte`] (the old entry stays on a refused vector).
    pub fn retarget(&mut self, i: usize, vector: u8) -> Result<(), RemapError> {
        self.write(i, vector, self.source)?;
        if let Some(v) = self.vectors.get_mut(i) {
            *v = vector;
        }
        Ok(())
    }

    /// Rewrites entry `i` with another source ID (same vector): for tests and negative
    /// controls that prove the unit checks it.
    ///
    /// # Errors
    ///
    /// As [`RemappedVectors::retarget`].
    pub fn set_source(&mut self, i: usize, source: SourceId) -> Result<(), RemapError> {
        let vector = self.vector(i).ok_or(RemapError::BadCount(i))?;
        self.write(i, vector, source)
    }

    /// Clears and frees the block now, reporting the outcome (dropping does the same and logs
    /// a failure).
    ///
    /// # Errors
    ///
    /// [`VtdError`] from [`VtdUnit::free_irtes`]: the entries are cleared but the block stays
    /// allocated.
    pub fn release(mut self) -> Result<(), VtdError> {
        let r = self.unit.free_irtes(self.handle, self.block);
        self.block = 0;
        r
    }
}

impl<R: RegisterIo, P: Platform> Drop for RemappedVectors<R, P> {
    fn drop(&mut self) {
        if self.block == 0 {
            return;
        }
        if let Err(e) = self.unit.free_irtes(self.handle, self.block) {
            log::error!("vt-d: freeing IRTEs {}+{}: {e}", self.handle, self.block);
        }
    }
}
