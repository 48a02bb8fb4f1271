//! What a live mapping consists of: its physically contiguous [`Part`]s and the [`MapRecord`]
//! a handle (or a device's raw-mapping table, [`RawTable`]) keeps until unmap (SPEC.md "A
//! physical-address DMA API"). Plain data: the mapping engine (`engine`) creates and
//! consumes records, the device handle owns the raw table.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::{Attrs, Direction};
use crate::bounce::BounceSlot;
use crate::interval::IntervalIndex;
use crate::iommu::Prot;

/// One physically contiguous piece of a mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    /// The caller's physical address.
    pub orig: PhysAddr,
    /// Bytes.
    pub len: u64,
    /// Page-aligned physical address actually mapped (the original or a bounce slot).
    pub target_page: PhysAddr,
    /// Page-aligned IOVA of the page-table entries (IOMMU path).
    pub map_iova: DmaAddr,
    /// Bytes of page-table entries (0 on the direct path).
    pub map_size: u64,
    /// Rights the entries were created with (to re-create them when an unmap must be undone).
    pub prot: Prot,
    /// The bounce slot, when bounced.
    pub bounce: Option<BounceSlot>,
}

impl Part {
    pub fn target(&self) -> PhysAddr {
        self.bounce.map_or(self.orig, |s| s.data())
    }

    /// Device address of the first byte: in the part's IOVA page on the IOMMU path (IOVA page 0
    /// is never allocated, so `map_iova` is 0 only on the direct path), the target itself on
    /// the direct path. Derived rather than stored, which keeps the record (and every
    /// [`Mapping`](crate::Mapping) moved on the hot path) small.
    pub fn dma(&self) -> DmaAddr {
        let target = self.target();
        match self.map_iova.as_u64() {
            0 => DmaAddr::new(target.as_u64()),
            page => DmaAddr::new(page + target.page_offset()),
        }
    }
}

/// The pieces of a mapping; one piece needs no heap allocation (the 4 KiB hot path).
#[derive(Debug)]
pub(crate) enum Parts {
    One(Part),
    Many(Vec<Part>),
}

impl Parts {
    pub fn as_slice(&self) -> &[Part] {
        match self {
            Self::One(p) => core::slice::from_ref(p),
            Self::Many(v) => v,
        }
    }
}

/// Everything needed to unmap and sync a mapping.
#[derive(Debug)]
pub(crate) struct MapRecord {
    pub dir: Direction,
    pub attrs: Attrs,
    /// The IOVA allocation `(start, size)` (IOMMU path).
    pub iova: Option<(DmaAddr, u64)>,
    pub parts: Parts,
}

/// A device's raw mappings ([`Mapping::into_raw`]): the records keyed by (DMA address, id), so
/// that two direct mappings of the same buffer do not collide, plus an interval index over
/// `[dma, dma + len)` so that a raw sync finds the mapping containing an address in O(log n)
/// even where direct mappings overlap (see `interval`).
#[derive(Default)]
pub(crate) struct RawTable {
    pub records: BTreeMap<(u64, u64), MapRecord>,
    index: IntervalIndex,
}

impl RawTable {
    fn end_of(key: (u64, u64), rec: &MapRecord) -> u64 {
        let len: u64 = rec.parts.as_slice().iter().map(|p| p.len).sum();
        key.0.saturating_add(len)
    }

    /// Adds a record under `key`, which must be new.
    pub fn insert(&mut self, key: (u64, u64), rec: MapRecord) {
        self.index.insert(key, Self::end_of(key, &rec));
        self.records.insert(key, rec);
    }

    /// Takes the record under `key` out.
    pub fn remove(&mut self, key: (u64, u64)) -> Option<MapRecord> {
        let rec = self.records.remove(&key)?;
        self.index.remove(key);
        Some(rec)
    }

    /// Number of raw mappings.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The mapping that contains `a` and reaches furthest past it, with its start.
    pub fn containing(&self, a: u64) -> Option<(u64, &MapRecord)> {
        let (key, end) = self.index.reaching_furthest(a)?;
        if end <= a {
            return None;
        }
        self.records.get(&key).map(|r| (key.0, r))
    }
}
