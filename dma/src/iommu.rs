//! The seam between the DMA API and an IOMMU: one translation domain, as a small trait.
//!
//! `iommu-vtd` implements [`IommuDomain`] for a VT-d second-level page table; the host tests
//! implement it in memory. The DMA layer above owns IOVA allocation and decides *what* to map;
//! the domain only edits its page table and invalidates.
//!
//! Invalidation is explicit and hard to forget, in the style of the `x86_64` crate's
//! `MapperFlush`: [`IommuDomain::unmap`] records what it removed into an [`IotlbGather`] (Linux's
//! *iotlb gather*: the union of ranges to invalidate), which is `#[must_use]` and is consumed by
//! [`IommuDomain::flush`]. A batch is simply several unmaps into one gather before one flush.
//! Mapping needs no invalidation on hardware that never caches not-present entries; where it does
//! (VT-d caching mode, a write buffer), [`IommuDomain::sync_map`] makes new entries visible, once
//! per linked span.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};

bitflags::bitflags! {
    /// Access rights and memory type of one mapping.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Prot: u32 {
        /// The device may read.
        const READ = 1 << 0;
        /// The device may write.
        const WRITE = 1 << 1;
        /// Snooped (cache-coherent) access is wanted. A domain sets its snoop bit only when the
        /// hardware supports it (VT-d ECAP.SC) and never together with [`Prot::MMIO`].
        const CACHE = 1 << 2;
        /// The target is device memory (a PCI BAR). Never snooped.
        const MMIO = 1 << 3;
    }
}

bitflags::bitflags! {
    /// Page sizes a domain can map in one entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageSizes: u64 {
        /// 4 KiB.
        const SIZE_4K = 1 << 12;
        /// 2 MiB.
        const SIZE_2M = 1 << 21;
        /// 1 GiB.
        const SIZE_1G = 1 << 30;
    }
}

/// What a domain can do, fixed for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainInfo {
    /// Highest IOVA the domain can translate (inclusive), e.g. `2^39 - 1` for a 3-level table.
    pub aperture_end: DmaAddr,
    /// Page sizes usable for leaf entries.
    pub page_sizes: PageSizes,
    /// Output addresses must be below this (the IOMMU's host address width).
    pub output_limit: u64,
}

/// Why a domain operation failed. Every failing operation leaves the page table as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuError {
    /// An address or size is not a multiple of 4 KiB, or the size is zero.
    Misaligned {
        /// The IOVA given.
        iova: u64,
        /// The physical address given (0 for unmap).
        paddr: u64,
        /// The size given.
        size: u64,
    },
    /// The range reaches past the domain's aperture.
    OutsideAperture {
        /// First IOVA of the range.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// The output address is at or beyond the IOMMU's host address width.
    OutputBeyondLimit {
        /// The physical address that cannot be expressed.
        paddr: u64,
    },
    /// Part of the range is already mapped.
    AlreadyMapped {
        /// The first mapped IOVA found.
        iova: u64,
    },
    /// Part of the range is not mapped (unmap of something never mapped, or a double unmap).
    NotMapped {
        /// The first unmapped IOVA found.
        iova: u64,
    },
    /// The unmap would split a superpage that was mapped as one unit.
    PartialSuperpage {
        /// The superpage's IOVA.
        iova: u64,
        /// The superpage's size.
        size: u64,
    },
    /// No memory for page tables.
    OutOfMemory,
    /// The hardware did not complete an invalidation in time.
    InvalidationTimeout,
    /// The domain is not attached to working hardware any more.
    Detached,
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned { iova, paddr, size } => {
                write!(
                    f,
                    "iova {iova:#x}, paddr {paddr:#x}, size {size:#x}: not 4 KiB granular"
                )
            }
            Self::OutsideAperture { iova, size } => {
                write!(
                    f,
                    "iova range {iova:#x}+{size:#x} is outside the domain aperture"
                )
            }
            Self::OutputBeyondLimit { paddr } => {
                write!(
                    f,
                    "physical address {paddr:#x} is beyond the IOMMU's address width"
                )
            }
            Self::AlreadyMapped { iova } => write!(f, "iova {iova:#x} is already mapped"),
            Self::NotMapped { iova } => write!(f, "iova {iova:#x} is not mapped"),
            Self::PartialSuperpage { iova, size } => {
                write!(
                    f,
                    "unmap would split the {size:#x}-byte superpage at {iova:#x}"
                )
            }
            Self::OutOfMemory => f.write_str("out of memory for I/O page tables"),
            Self::InvalidationTimeout => f.write_str("IOTLB invalidation did not complete in time"),
            Self::Detached => f.write_str("the domain is detached from its IOMMU"),
        }
    }
}

impl core::error::Error for IommuError {}

/// A page-table page an unmap unlinked, waiting in its [`IotlbGather`] for the invalidation
/// that makes it unreachable.
///
/// Until an invalidation that drops the paging-structure caches for `[iova, iova + size)` has
/// completed (VT-d: IH = 0 page-selective covering it, or domain-selective/global), the
/// hardware may still walk the page, so its memory must not be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlinkedTable {
    /// The table page.
    pub phys: PhysAddr,
    /// First IOVA of the region the table mapped.
    pub iova: DmaAddr,
    /// Size of that region.
    pub size: u64,
    /// Opaque token of the domain whose table it was: a domain frees only its own pages (a
    /// gather flushed through another domain leaks them instead).
    pub owner: u64,
}

/// IOVA ranges whose IOTLB entries must be invalidated: the union (one span) of everything
/// gathered, plus the page-table pages the unmaps unlinked (which also requires the
/// paging-structure caches to be invalidated before they are freed).
///
/// Merging into one span over-invalidates disjoint ranges; that is correct (invalidating more is
/// always safe) and keeps the flush to O(log span) page-selective commands.
///
/// The unlinked table pages belong to the gather: [`IommuDomain::flush`] frees exactly these,
/// and only after its invalidation completed. A gather dropped without a flush *leaks* them
/// (they are never freed): nothing proved the hardware stopped caching references to them.
#[must_use = "IOTLB invalidations must be flushed (IommuDomain::flush) before the IOVA is reused"]
#[derive(Debug, PartialEq, Eq)]
pub struct IotlbGather {
    start: u64,
    end: u64,
    freed_tables: bool,
    unlinked: Vec<UnlinkedTable>,
}

impl Default for IotlbGather {
    /// The same as [`IotlbGather::new`] (a derived default would start the span at IOVA 0).
    fn default() -> Self {
        Self::new()
    }
}

impl IotlbGather {
    /// An empty gather.
    pub const fn new() -> Self {
        Self {
            start: u64::MAX,
            end: 0,
            freed_tables: false,
            unlinked: Vec::new(),
        }
    }

    /// Adds `[iova, iova + size)` (saturating at the top of the address space).
    pub fn add(&mut self, iova: DmaAddr, size: u64) {
        if size == 0 {
            return;
        }
        self.start = self.start.min(iova.as_u64());
        self.end = self.end.max(iova.as_u64().saturating_add(size));
    }

    /// Notes that page-table pages were freed (or unlinked) without handing them to the gather:
    /// the flush must still drop the paging-structure caches.
    pub fn add_freed_tables(&mut self) {
        self.freed_tables = true;
    }

    /// Reserves room for `n` more unlinked tables; `false` when out of memory.
    pub fn try_reserve_unlinked(&mut self, n: usize) -> bool {
        self.unlinked.try_reserve(n).is_ok()
    }

    /// Hands an unlinked table page to the gather (its region is added to the span). Returns
    /// `false` when there was no memory to record it: the page then leaks (is never freed), but
    /// the flush still drops the paging-structure caches for its region.
    pub fn add_unlinked_table(&mut self, table: UnlinkedTable) -> bool {
        self.add(table.iova, table.size);
        self.freed_tables = true;
        if self.unlinked.try_reserve(1).is_err() {
            return false;
        }
        self.unlinked.push(table);
        true
    }

    /// The unlinked table pages gathered so far.
    pub fn unlinked_tables(&self) -> &[UnlinkedTable] {
        &self.unlinked
    }

    /// Takes the unlinked table pages out of the gather (for the flush that frees them once its
    /// invalidation completed). The gather still reports [`IotlbGather::freed_tables`].
    pub fn take_unlinked_tables(&mut self) -> Vec<UnlinkedTable> {
        core::mem::take(&mut self.unlinked)
    }

    /// Merges another gather into this one, including its unlinked tables (if there is no
    /// memory to hold them, they leak rather than being freed early).
    pub fn merge(&mut self, mut other: IotlbGather) {
        if !other.is_empty() {
            self.add(DmaAddr::new(other.start), other.end - other.start);
        }
        self.freed_tables |= other.freed_tables();
        if self.unlinked.try_reserve(other.unlinked.len()).is_ok() {
            self.unlinked.append(&mut other.unlinked);
        }
    }

    /// Whether nothing was gathered.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The gathered span `(start, size)`, if any.
    pub fn span(&self) -> Option<(DmaAddr, u64)> {
        (!self.is_empty()).then(|| (DmaAddr::new(self.start), self.end - self.start))
    }

    /// Whether page-table pages were freed or unlinked (the flush must then also invalidate
    /// the paging-structure caches: VT-d IH = 0).
    pub fn freed_tables(&self) -> bool {
        self.freed_tables || !self.unlinked.is_empty()
    }
}

/// One IOMMU translation domain (an I/O page table plus the hardware that walks it).
///
/// Implementations are internally synchronised (`&self` methods) so that map/unmap on different
/// domains never contend; the DMA layer serialises nothing globally.
pub trait IommuDomain: Send + Sync {
    /// Fixed properties of the domain.
    fn info(&self) -> DomainInfo;

    /// Maps `[iova, iova + size)` to `[paddr, paddr + size)` with `prot`, using the largest page
    /// sizes alignment allows. All three values must be 4 KiB multiples and `size > 0`.
    /// All-or-nothing: on error nothing was mapped.
    ///
    /// # Errors
    ///
    /// [`IommuError::Misaligned`], [`IommuError::OutsideAperture`],
    /// [`IommuError::OutputBeyondLimit`], [`IommuError::AlreadyMapped`] (any page of the range),
    /// [`IommuError::OutOfMemory`] (no page-table page), [`IommuError::Detached`].
    fn map(&self, iova: DmaAddr, paddr: PhysAddr, size: u64, prot: Prot) -> Result<(), IommuError>;

    /// Makes entries created by `map` in `[iova, iova + size)` visible to the hardware where it
    /// may cache not-present entries (VT-d caching mode) or buffers writes. Called once per
    /// mapped or linked span.
    ///
    /// # Errors
    ///
    /// [`IommuError::InvalidationTimeout`] when caching mode needs an invalidation and it does not
    /// complete, [`IommuError::Detached`].
    fn sync_map(&self, iova: DmaAddr, size: u64) -> Result<(), IommuError>;

    /// Unmaps exactly `[iova, iova + size)`, which must be fully mapped and must not split a
    /// superpage, and records it in `gather`. All-or-nothing.
    ///
    /// # Errors
    ///
    /// [`IommuError::Misaligned`], [`IommuError::NotMapped`] (any page of the range),
    /// [`IommuError::PartialSuperpage`], [`IommuError::Detached`]; nothing was unmapped.
    fn unmap(&self, iova: DmaAddr, size: u64, gather: &mut IotlbGather) -> Result<(), IommuError>;

    /// Invalidates everything in `gather` and returns once the hardware has completed it: after
    /// this, no device can reach the unmapped memory through a stale translation. The gather's
    /// unlinked table pages ([`IotlbGather::unlinked_tables`]) are freed after that completion,
    /// and only they; if the invalidation fails they are leaked, never freed.
    ///
    /// # Errors
    ///
    /// [`IommuError::InvalidationTimeout`], [`IommuError::Detached`]; the gathered ranges must
    /// then be treated as still reachable (their IOVAs and memory are never reused).
    fn flush(&self, gather: IotlbGather) -> Result<(), IommuError>;

    /// Looks up one IOVA: the physical address it translates to and the entry's rights.
    fn translate(&self, iova: DmaAddr) -> Option<(PhysAddr, Prot)>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_is_the_union_span() {
        let mut g = IotlbGather::new();
        assert!(g.is_empty());
        assert_eq!(g.span(), None);
        g.add(DmaAddr::new(0x5000), 0x1000);
        g.add(DmaAddr::new(0x1000), 0x1000);
        g.add(DmaAddr::new(0x9000), 0);
        assert_eq!(g.span(), Some((DmaAddr::new(0x1000), 0x5000)));
        let mut h = IotlbGather::new();
        h.add_freed_tables();
        h.add(DmaAddr::new(0x10000), 0x1000);
        g.merge(h);
        assert_eq!(g.span(), Some((DmaAddr::new(0x1000), 0x10000)));
        assert!(g.freed_tables());
    }

    #[test]
    fn unlinked_tables_follow_their_gather() {
        let t = |phys: u64, iova: u64| UnlinkedTable {
            phys: PhysAddr::new(phys),
            iova: DmaAddr::new(iova),
            size: 0x20_0000,
            owner: 7,
        };
        let mut g = IotlbGather::new();
        g.add(DmaAddr::new(0x1000), 0x1000);
        assert!(!g.freed_tables());
        assert!(g.add_unlinked_table(t(0xA000, 0x40_0000)));
        assert!(g.freed_tables());
        assert_eq!(
            g.span(),
            Some((DmaAddr::new(0x1000), 0x60_0000 - 0x1000)),
            "the table's region is part of the span"
        );
        let mut h = IotlbGather::new();
        assert!(h.add_unlinked_table(t(0xB000, 0x80_0000)));
        g.merge(h);
        assert_eq!(
            g.unlinked_tables(),
            [t(0xA000, 0x40_0000), t(0xB000, 0x80_0000)]
        );
        let taken = g.take_unlinked_tables();
        assert_eq!(taken.len(), 2);
        assert!(g.unlinked_tables().is_empty());
        assert!(g.freed_tables(), "the flush still needs IH = 0");
    }

    #[test]
    fn a_default_gather_is_a_new_one() {
        let mut g = IotlbGather::default();
        g.add(DmaAddr::new(0x5000), 0x1000);
        assert_eq!(g.span(), Some((DmaAddr::new(0x5000), 0x1000)));
    }

    #[test]
    fn gather_saturates_at_the_top() {
        let mut g = IotlbGather::new();
        g.add(DmaAddr::new(u64::MAX - 0xfff), 0x2000);
        assert_eq!(g.span(), Some((DmaAddr::new(u64::MAX - 0xfff), 0xfff)));
    }
}
