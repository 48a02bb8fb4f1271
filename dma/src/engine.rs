//! The mapping engine: how a device's mapping is made, synchronised and undone (SPEC.md "A
//! physical-address DMA API", "Rules for every public operation", "MMIO attribute", "sub-page
//! isolation", "Invalidation modes"). Crate-private building blocks shared by every
//! device-facing operation (streaming mappings, coherent buffers, the link API, peer mappings):
//! argument checks, bounce decisions, page-table unmap with exact unwind, record completion,
//! the strict / deferred / batched unmap of one record, and [`UnmapBatch`], the public handle
//! of the batched path.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::attrs::{Attrs, Direction};
use crate::bounce::{BouncePool, BounceSlot};
use crate::checks::{check_range, page_span};
use crate::device::{DeviceInner, Translation};
use crate::domain::DmaDomain;
use crate::error::{BounceReason, DmaError};
use crate::invalidation::{InvalidationMode, Retired};
use crate::iommu::{IommuError, IotlbGather, Prot};
use crate::phys::CacheOp;
use crate::record::{MapRecord, Part, Parts};

pub(crate) fn prot_for(inner: &DeviceInner, dir: Direction, attrs: Attrs) -> Prot {
    let mut prot = Prot::empty();
    if dir.device_reads() {
        prot |= Prot::READ;
    }
    if dir.device_writes() {
        prot |= Prot::WRITE;
    }
    if attrs.contains(Attrs::MMIO) {
        prot | Prot::MMIO
    } else if inner.cfg.coherent {
        prot | Prot::CACHE
    } else {
        prot
    }
}

/// Decides whether `[phys, phys + len)` needs a bounce for this device, or must be refused.
/// Pure: changes nothing.
pub(crate) fn needs_bounce(
    inner: &DeviceInner,
    phys: PhysAddr,
    len: u64,
    attrs: Attrs,
) -> Result<bool, DmaError> {
    // `len > 0` and `phys + len - 1` fit (check_range); `last + 1` may not (a range ending at
    // the top of the address space), so the end is tested through the last byte.
    check_range(phys, len)?;
    let last = phys.as_u64() + (len - 1);
    let reason = match inner.translation {
        Translation::Direct if last > inner.cfg.mask => BounceReason::MaskUnreachable,
        Translation::Iommu(_)
            if !inner.cfg.trusted
                && (phys.page_offset() != 0 || last % PAGE_SIZE != PAGE_SIZE - 1) =>
        {
            BounceReason::SubPage
        }
        _ => return Ok(false),
    };
    if attrs.contains(Attrs::MMIO) {
        return Err(DmaError::MmioNeedsBounce {
            addr: phys.as_u64(),
            len,
            reason,
        });
    }
    match &inner.bounce {
        Some(_) => Ok(true),
        None if reason == BounceReason::MaskUnreachable => Err(DmaError::MaskViolation {
            addr: phys.as_u64(),
            len,
            mask: inner.cfg.mask,
        }),
        None => Err(DmaError::NoBouncePool),
    }
}

/// Creates one part: bounce if needed (slot filled, padding zeroed), cache maintenance, and on
/// the IOMMU path the page-table entries at `iova_page`. All-or-nothing.
pub(crate) fn make_part(
    inner: &DeviceInner,
    phys: PhysAddr,
    len: u64,
    dir: Direction,
    attrs: Attrs,
    bounce: bool,
    iova_page: Option<DmaAddr>,
) -> Result<Part, DmaError> {
    let slot = match (bounce, &inner.bounce) {
        (true, Some(pool)) => {
            Some(pool.alloc_slot(phys, len, !attrs.contains(Attrs::SKIP_CPU_SYNC))?)
        }
        (true, None) => return Err(DmaError::NoBouncePool),
        (false, _) => None,
    };
    let target = slot.map_or(phys, |s| s.data());
    let mmio = attrs.contains(Attrs::MMIO);
    if !inner.cfg.coherent && !mmio {
        inner.phys.cache_sync(target, len, CacheOp::ForDevice(dir));
    }
    let prot = prot_for(inner, dir, attrs);
    let mut part = Part {
        orig: phys,
        len,
        target_page: target.page_align_down(),
        map_iova: DmaAddr::new(0),
        map_size: 0,
        prot,
        bounce: slot,
    };
    if let (Translation::Iommu(domain), Some(iova)) = (&inner.translation, iova_page) {
        let size = page_span(target.page_offset(), len)?;
        if let Err(e) = domain.hw().map(iova, part.target_page, size, prot) {
            release_slot(inner, slot);
            return Err(e.into());
        }
        part.map_iova = iova;
        part.map_size = size;
    }
    Ok(part)
}

/// The fast path of a strict unmap of a single unbounced range under an IOMMU: unmap, flush,
/// cache maintenance, IOVA freed, without moving the record. `None` when `rec` is not such a
/// mapping (the caller takes the general path, [`unmap_record`]); otherwise the result, after
/// which the record is spent: on `Err` its IOVA is leaked, never reused, as on the general path
/// (a failed page-table unmap changed nothing, so its translation stays and so does the IOVA).
#[inline]
pub(crate) fn unmap_strict_unbounced(
    inner: &DeviceInner,
    rec: &MapRecord,
) -> Option<Result<(), DmaError>> {
    let (Translation::Iommu(domain), Parts::One(p), Some((addr, size))) =
        (&inner.translation, &rec.parts, rec.iova)
    else {
        return None;
    };
    if p.bounce.is_some() || domain.mode() != InvalidationMode::Strict || p.map_size == 0 {
        return None;
    }
    let mut gather = IotlbGather::new();
    if let Err(e) = domain.hw().unmap(p.map_iova, p.map_size, &mut gather) {
        return Some(Err(e.into()));
    }
    if let Err(e) = domain.hw().flush(gather) {
        log::error!("dma: IOTLB flush failed ({e}); leaking {:?}", rec.iova);
        return Some(Err(e.into()));
    }
    if !inner.cfg.coherent && !rec.attrs.contains(Attrs::MMIO) {
        inner
            .phys
            .cache_sync(p.orig, p.len, CacheOp::ForCpu(rec.dir));
    }
    domain.free_iova(addr, size);
    Some(Ok(()))
}

pub(crate) fn release_slot(inner: &DeviceInner, slot: Option<BounceSlot>) {
    if let (Some(slot), Some(pool)) = (slot, &inner.bounce) {
        pool.free_slot(slot);
    }
}

/// Unmaps the page-table entries of `parts` into `gather`, each exactly as it was mapped
/// (digest item 10). If one fails, `gather` is flushed and emptied and the ones already removed
/// are mapped again, so the call is all-or-nothing.
///
/// Every restored part is made visible again with its own [`IommuDomain::sync_map`] (restored
/// parts need not be contiguous): on hardware that caches not-present entries (VT-d caching
/// mode) or buffers writes (RWBF), a re-created entry the hardware is not told about stays
/// invisible, and the device would fault on a mapping its owner still holds.
///
/// [`IommuDomain::sync_map`]: crate::iommu::IommuDomain::sync_map
pub(crate) fn unmap_parts(
    domain: &DmaDomain,
    parts: &[Part],
    gather: &mut IotlbGather,
) -> Result<(), IommuError> {
    for (i, p) in parts.iter().enumerate() {
        if p.map_size == 0 {
            continue;
        }
        if let Err(e) = domain.hw().unmap(p.map_iova, p.map_size, gather) {
            // Flush before restoring, so the restored entries never meet a stale IOTLB entry.
            if let Err(e2) = domain.hw().flush(core::mem::take(gather)) {
                log::error!("dma: flush before restoring failed: {e2}");
            }
            for q in parts[..i].iter().filter(|q| q.map_size > 0) {
                let restored = domain
                    .hw()
                    .map(q.map_iova, q.target_page, q.map_size, q.prot)
                    .and_then(|()| domain.hw().sync_map(q.map_iova, q.map_size));
                if let Err(e2) = restored {
                    log::error!(
                        "dma: could not restore {:?} after a failed unmap: {e2}",
                        q.map_iova
                    );
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Unmaps the page-table entries of `parts` into `gather`, each exactly as it was mapped, part
/// by part and best effort: a part whose unmap fails is skipped (never restored, never retried)
/// and reported in the returned list as `(index, error)`. For teardown paths whose caller gets
/// nothing back to own: every entry that can be removed is removed.
pub(crate) fn unmap_parts_best_effort(
    domain: &DmaDomain,
    parts: &[Part],
    gather: &mut IotlbGather,
) -> Vec<(usize, IommuError)> {
    let mut stuck = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.map_size == 0 {
            continue;
        }
        if let Err(e) = domain.hw().unmap(p.map_iova, p.map_size, gather) {
            log::error!(
                "dma: unmap of {:?}+{:#x} failed ({e}); it stays mapped and its IOVA is leaked",
                p.map_iova,
                p.map_size
            );
            stuck.push((i, e));
        }
    }
    stuck
}

/// The [`DmaError::UnwindIncomplete`] for `parts` of which those at `stuck` (indices into
/// `parts`, in order) are still mapped, the undo having failed with `undo`. `None` when none of
/// them has page-table entries (nothing is reachable).
pub(crate) fn unwind_incomplete(
    parts: &[Part],
    stuck: impl IntoIterator<Item = usize>,
    undo: IommuError,
) -> Option<DmaError> {
    let mut stuck = stuck
        .into_iter()
        .filter_map(|i| parts.get(i))
        .filter(|p| p.map_size > 0);
    let first = stuck.next()?;
    Some(DmaError::UnwindIncomplete {
        still_mapped: (first.map_iova, first.map_size),
        reaches: first.target_page,
        stuck: 1 + stuck.count(),
        undo,
    })
}

/// The error a failed operation returns after its unwind: the unwind's own
/// [`DmaError::UnwindIncomplete`] if something stayed mapped (`original` is then logged),
/// `original` otherwise.
pub(crate) fn after_unwind(incomplete: Option<DmaError>, original: DmaError) -> DmaError {
    match incomplete {
        None => original,
        Some(incomplete) => {
            log::error!("dma: unwinding after `{original}` failed: {incomplete}");
            incomplete
        }
    }
}

/// Undoes `parts` of a mapping that never reached the caller: entries removed part by part (best
/// effort, nothing restored), one flush for whatever was removed, then the IOVA and the bounce
/// slots freed. No copy-back (the device never had the mapping).
///
/// A part whose unmap failed keeps its IOVA range and its slot for ever: the entries still
/// point at them, so they must never be handed out again. If the flush fails, everything is
/// leaked (stale IOTLB entries may still reach any removed part). Either way the returned
/// [`DmaError::UnwindIncomplete`] names what is still mapped, so that the caller does not free
/// memory the device can still reach (`None`: everything was undone).
pub(crate) fn unwind(
    inner: &DeviceInner,
    parts: &[Part],
    iova: Option<(DmaAddr, u64)>,
) -> Option<DmaError> {
    match &inner.translation {
        Translation::Iommu(domain) => {
            let mut gather = IotlbGather::new();
            let stuck = unmap_parts_best_effort(domain, parts, &mut gather);
            let flushed = if gather.is_empty() {
                Ok(())
            } else {
                domain.hw().flush(gather)
            };
            if let Err(e) = flushed {
                log::error!(
                    "dma: flush during unwind failed ({e}); leaking {iova:?} and its bounce slots"
                );
                return unwind_incomplete(parts, 0..parts.len(), e);
            }
            let keep: Vec<(DmaAddr, u64)> = stuck
                .iter()
                .map(|&(i, _)| (parts[i].map_iova, parts[i].map_size))
                .collect();
            if let Some((addr, size)) = iova {
                domain.free_iova_keeping(addr, size, &keep);
            }
            for (i, p) in parts.iter().enumerate() {
                if !stuck.iter().any(|&(j, _)| j == i) {
                    release_slot(inner, p.bounce);
                }
            }
            let &(_, undo) = stuck.first()?;
            unwind_incomplete(parts, stuck.iter().map(|&(i, _)| i), undo)
        }
        Translation::Direct => {
            for p in parts {
                release_slot(inner, p.bounce);
            }
            None
        }
    }
}

pub(crate) fn slots_of(inner: &DeviceInner, parts: &[Part]) -> Vec<(Arc<BouncePool>, BounceSlot)> {
    match &inner.bounce {
        Some(pool) => parts
            .iter()
            .filter_map(|p| p.bounce.map(|s| (pool.clone(), s)))
            .collect(),
        None => Vec::new(),
    }
}

/// After the device lost access: cache maintenance and copy-back of bounced data.
pub(crate) fn finish_cpu_side(inner: &DeviceInner, parts: &[Part], dir: Direction, attrs: Attrs) {
    if attrs.contains(Attrs::MMIO) {
        return;
    }
    for p in parts {
        if !inner.cfg.coherent {
            inner
                .phys
                .cache_sync(p.target(), p.len, CacheOp::ForCpu(dir));
        }
        if let (Some(slot), Some(pool)) = (p.bounce, &inner.bounce) {
            if dir.device_writes() && !attrs.contains(Attrs::SKIP_CPU_SYNC) {
                if let Err(e) = pool.copy_out(&slot, p.orig, 0, p.len) {
                    log::error!("dma: bounce copy-back to {:?} failed: {e}", p.orig);
                }
            }
        }
    }
}

/// Copy-back, then slots and IOVA freed. Only once the device can no longer reach them.
pub(crate) fn complete_record(inner: &DeviceInner, rec: MapRecord) {
    let parts = rec.parts.as_slice();
    finish_cpu_side(inner, parts, rec.dir, rec.attrs);
    for p in parts {
        release_slot(inner, p.bounce);
    }
    if let (Translation::Iommu(domain), Some((addr, size))) = (&inner.translation, rec.iova) {
        domain.free_iova(addr, size);
    }
}

/// Unmaps a record: strictly, deferred, or into `batch`. On `Err`, the record is given back
/// when nothing changed (the page-table unmap failed), or `None` when it was consumed (the
/// flush failed: IOVA and slots are leaked on purpose).
///
/// The large `Err` is deliberate: it is the cold path, and handing the record back by value keeps
/// the hot path free of a heap allocation.
#[allow(clippy::result_large_err)]
pub(crate) fn unmap_record(
    inner: &Arc<DeviceInner>,
    rec: MapRecord,
    batch: Option<&mut UnmapBatch>,
) -> Result<(), (DmaError, Option<MapRecord>)> {
    let domain = match &inner.translation {
        Translation::Direct => {
            match batch {
                Some(b) => b.push(None, inner, rec),
                None => complete_record(inner, rec),
            }
            return Ok(());
        }
        Translation::Iommu(d) => d,
    };
    // A gather of its own even in a batch: a failed unmap flushes and empties the gather it
    // is given (`unmap_parts`), which must not be the batch's.
    let mut gather = IotlbGather::new();
    if let Err(e) = unmap_parts(domain, rec.parts.as_slice(), &mut gather) {
        return Err((e.into(), Some(rec)));
    }
    if let Some(b) = batch {
        // Merged into the batch's gather for this domain: one union span, one flush.
        let i = b.entry(domain);
        b.entries[i].gather.merge(gather);
        b.push(Some(i), inner, rec);
        return Ok(());
    }
    match domain.mode() {
        InvalidationMode::Strict => match domain.hw().flush(gather) {
            Ok(()) => {
                complete_record(inner, rec);
                Ok(())
            }
            Err(e) => {
                log::error!("dma: IOTLB flush failed ({e}); leaking {:?}", rec.iova);
                Err((e.into(), None))
            }
        },
        InvalidationMode::Deferred(_) => {
            // The driver expects its data now; the slots and IOVA wait for the flush.
            finish_cpu_side(inner, rec.parts.as_slice(), rec.dir, rec.attrs);
            let retired = Retired {
                iova: rec.iova,
                slots: slots_of(inner, rec.parts.as_slice()),
            };
            domain.defer(gather, retired).map_err(|e| (e, None))
        }
    }
}

/// Synchronises `[offset, offset + len)` of a mapping's data (offsets across all parts).
pub(crate) fn sync_record(
    inner: &DeviceInner,
    rec: &MapRecord,
    offset: u64,
    len: u64,
    for_cpu: bool,
) -> Result<(), DmaError> {
    if rec.attrs.contains(Attrs::MMIO) {
        return Ok(()); // MMIO is never synced.
    }
    let total: u64 = rec.parts.as_slice().iter().map(|p| p.len).sum();
    let end = offset
        .checked_add(len)
        .ok_or(DmaError::Overflow { addr: offset, len })?;
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    if end > total {
        return Err(DmaError::OutOfRange {
            offset,
            len,
            size: total,
        });
    }
    let mut base = 0u64;
    for p in rec.parts.as_slice() {
        let (lo, hi) = (offset.max(base), end.min(base + p.len));
        if lo < hi {
            let (o, l) = (lo - base, hi - lo);
            let target = PhysAddr::new(p.target().as_u64() + o);
            if for_cpu {
                if !inner.cfg.coherent {
                    inner.phys.cache_sync(target, l, CacheOp::ForCpu(rec.dir));
                }
                if let (Some(slot), Some(pool)) = (p.bounce, &inner.bounce) {
                    if rec.dir.device_writes() {
                        pool.copy_out(&slot, p.orig, o, l)?;
                    }
                }
            } else {
                if let (Some(slot), Some(pool)) = (p.bounce, &inner.bounce) {
                    if rec.dir.device_reads() {
                        pool.copy_in(&slot, p.orig, o, l)?;
                    }
                }
                if !inner.cfg.coherent {
                    inner
                        .phys
                        .cache_sync(target, l, CacheOp::ForDevice(rec.dir));
                }
            }
        }
        base += p.len;
    }
    Ok(())
}

/// One domain's share of a batch.
pub(crate) struct BatchEntry {
    pub domain: Arc<DmaDomain>,
    pub gather: IotlbGather,
    /// Set by `finish` once this entry's flush completed.
    pub flushed: bool,
}

/// A mapping waiting in a batch for its flush.
struct Pending {
    /// The index of its domain's [`BatchEntry`]; `None` on the direct path (no flush).
    entry: Option<usize>,
    dev: Arc<DeviceInner>,
    rec: MapRecord,
}

/// An explicit batch of unmaps: one flush per domain for all of them (SPEC.md "Batched").
///
/// Add mappings with [`crate::Mapping::unmap_in`] (or the scatter-gather/raw equivalents), then
/// call [`UnmapBatch::finish`], which flushes and returns after the flush completed; only then
/// are the IOVAs freed and bounced data copied back. Dropping an unfinished batch finishes it
/// (errors are logged), so a forgotten `finish` costs a late flush, never a reused IOVA.
///
/// Each domain's unmaps are merged into one [`IotlbGather`] (the union span), so 64 scattered
/// pages cost one flush request set for their span, not 64 flushes.
/// [`UnmapBatch::with_capacity`] makes the room up front so that adding mappings does not
/// allocate.
#[derive(Default)]
pub struct UnmapBatch {
    pub(crate) entries: Vec<BatchEntry>,
    /// Every mapping added, in order. Direct-path mappings need no flush but their bounce
    /// copy-out waits for `finish` too, so a batch behaves the same whatever the path.
    pending: Vec<Pending>,
}

impl core::fmt::Debug for UnmapBatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UnmapBatch")
            .field("domains", &self.entries.len())
            .field("mappings", &self.len())
            .finish()
    }
}

impl UnmapBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `mappings` unmaps of one domain, allocated now: adding up
    /// to that many (of one domain, or of the direct path) then allocates nothing. A second
    /// domain's first unmap makes room for its share.
    pub fn with_capacity(mappings: usize) -> Self {
        Self {
            entries: Vec::with_capacity(1),
            pending: Vec::with_capacity(mappings),
        }
    }

    /// Mappings added so far.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The index of `domain`'s entry, created if needed.
    pub(crate) fn entry(&mut self, domain: &Arc<DmaDomain>) -> usize {
        match self
            .entries
            .iter()
            .position(|e| Arc::ptr_eq(&e.domain, domain))
        {
            Some(i) => i,
            None => {
                self.entries.push(BatchEntry {
                    domain: domain.clone(),
                    gather: IotlbGather::new(),
                    flushed: false,
                });
                self.entries.len() - 1
            }
        }
    }

    /// Adds a mapping whose entries are gone (into `entry`'s gather, or on the direct path).
    pub(crate) fn push(&mut self, entry: Option<usize>, dev: &Arc<DeviceInner>, rec: MapRecord) {
        self.pending.push(Pending {
            entry,
            dev: dev.clone(),
            rec,
        });
    }
}

impl UnmapBatch {
    /// Flushes once per domain, waits for completion, then frees IOVAs and copies bounced data
    /// back. Returns the first error (the mappings of a domain whose flush failed are leaked).
    ///
    /// # Errors
    ///
    /// The first IOMMU flush error ([`DmaError::Iommu`]); the mappings of a domain whose flush
    /// failed are leaked (IOVAs and bounce slots never reused), every other domain's are completed.
    pub fn finish(mut self) -> Result<(), DmaError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<(), DmaError> {
        let mut first_err = None;
        for entry in &mut self.entries {
            match entry.domain.hw().flush(core::mem::take(&mut entry.gather)) {
                Ok(()) => entry.flushed = true,
                Err(e) => {
                    log::error!("dma: batch flush failed ({e}); leaking its mappings");
                    first_err.get_or_insert(DmaError::from(e));
                }
            }
        }
        let mut leaked = 0usize;
        for p in self.pending.drain(..) {
            match p.entry {
                Some(i) if !self.entries.get(i).is_some_and(|e| e.flushed) => leaked += 1,
                _ => complete_record(&p.dev, p.rec),
            }
        }
        self.entries.clear();
        if leaked > 0 {
            log::error!("dma: {leaked} batched mappings leaked (their flush failed)");
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for UnmapBatch {
    fn drop(&mut self) {
        if let Err(e) = self.finish_inner() {
            log::error!("dma: unfinished batch dropped; its flush failed: {e}");
        }
    }
}
