//! Streaming mappings: [`DmaDevice::map_phys`] (one range), [`DmaDevice::map_sg`] (a list of
//! ranges), their RAII handles [`Mapping`] / [`SgMapping`], the raw (Linux-style) unmap
//! [`DmaDevice::unmap_phys`], and CPU/device synchronisation.
//!
//! Implements SPEC.md "A physical-address DMA API", "Rules for every public operation" (every
//! argument is validated before anything changes, digest item 8; a failure unwinds exactly what
//! was done, digest items 1, 2, 10), "MMIO attribute" (never bounced, never synced, `Prot::MMIO`
//! and never `Prot::CACHE`, refused when a bounce would be needed; unaligned MMIO maps fine,
//! digest item 13), "sub-page isolation" (bounce for untrusted devices) and the strict / batched /
//! deferred unmap paths of "Invalidation modes".
//!
//! Under an IOMMU a mapping is: IOVA allocation (size-aligned, so superpages apply when the
//! physical side is aligned too), one [`IommuDomain::map`] per range, one
//! [`IommuDomain::sync_map`] for the whole span. On the direct path it is a mask check.
//!
//! [`IommuDomain::map`]: crate::iommu::IommuDomain::map
//! [`IommuDomain::sync_map`]: crate::iommu::IommuDomain::sync_map

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::attrs::{Attrs, Direction};
use crate::bounce::BounceSlot;
use crate::device::{DeviceInner, DmaDevice, Translation};
use crate::domain::DmaDomain;
use crate::error::{BounceReason, DmaError};
use crate::interval::IntervalIndex;
use crate::invalidation::{InvalidationMode, Retired, UnmapBatch};
use crate::iommu::{IommuError, IotlbGather, Prot};
use crate::phys::CacheOp;
use crate::segment::DmaSegment;

/// One physically contiguous piece of a mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    /// The caller's physical address.
    pub orig: PhysAddr,
    /// Bytes.
    pub len: u64,
    /// Device address of the first byte.
    pub dma: DmaAddr,
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
    fn target(&self) -> PhysAddr {
        self.bounce.map_or(self.orig, |s| s.data())
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
    fn containing(&self, a: u64) -> Option<(u64, &MapRecord)> {
        let (key, end) = self.index.reaching_furthest(a)?;
        if end <= a {
            return None;
        }
        self.records.get(&key).map(|r| (key.0, r))
    }
}

pub(crate) fn check_attrs(attrs: Attrs) -> Result<(), DmaError> {
    let unknown = attrs.bits() & !Attrs::all().bits();
    if unknown != 0 {
        return Err(DmaError::UnsupportedAttrs(unknown));
    }
    Ok(())
}

/// `len > 0` and `phys + len - 1` representable.
pub(crate) fn check_range(phys: PhysAddr, len: u64) -> Result<(), DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    phys.checked_add(len - 1)?;
    Ok(())
}

/// Bytes of whole pages covering `len` bytes at `offset` into the first page.
pub(crate) fn page_span(offset: u64, len: u64) -> Result<u64, DmaError> {
    offset
        .checked_add(len)
        .and_then(|b| b.checked_next_multiple_of(PAGE_SIZE))
        .ok_or(DmaError::Overflow { addr: offset, len })
}

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
        dma: DmaAddr::new(target.as_u64()),
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
        part.dma = DmaAddr::new(iova.as_u64() + target.page_offset());
    }
    Ok(part)
}

fn release_slot(inner: &DeviceInner, slot: Option<BounceSlot>) {
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

fn slots_of(inner: &DeviceInner, parts: &[Part]) -> Vec<(Arc<crate::BouncePool>, BounceSlot)> {
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
                Some(b) => b.direct.push((inner.clone(), rec)),
                None => complete_record(inner, rec),
            }
            return Ok(());
        }
        Translation::Iommu(d) => d,
    };
    let mut gather = IotlbGather::new();
    if let Err(e) = unmap_parts(domain, rec.parts.as_slice(), &mut gather) {
        return Err((e.into(), Some(rec)));
    }
    if let Some(b) = batch {
        let entry = b.entry(domain);
        entry.gather.merge(gather);
        entry.pending.push((inner.clone(), rec));
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
fn sync_record(
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

impl DmaDevice {
    /// Maps `len` bytes at `phys` for the device and returns the RAII handle; the device
    /// address is [`Mapping::dma_addr`].
    ///
    /// Errors (nothing changed): zero length, `phys + len` overflow, unknown attribute bits
    /// (`UnsupportedAttrs`), an MMIO range that would need a bounce (`MmioNeedsBounce`), a
    /// direct-path range beyond the mask with no usable bounce pool (`MaskViolation`), IOVA or
    /// bounce exhaustion, an IOMMU refusal.
    pub fn map_phys(
        &self,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<Mapping, DmaError> {
        let inner = &self.inner;
        check_attrs(attrs)?;
        check_range(phys, len)?;
        let bounce = needs_bounce(inner, phys, len, attrs)?;
        let rec = match &inner.translation {
            Translation::Direct => {
                let part = make_part(inner, phys, len, dir, attrs, bounce, None)?;
                MapRecord {
                    dir,
                    attrs,
                    iova: None,
                    parts: Parts::One(part),
                }
            }
            Translation::Iommu(domain) => {
                domain.tick();
                let size = page_span(phys.page_offset(), len)?;
                let iova = domain.alloc_iova(size, inner.cfg.mask)?;
                let part = match make_part(inner, phys, len, dir, attrs, bounce, Some(iova)) {
                    Ok(p) => p,
                    Err(e) => {
                        // Nothing was mapped: no translation to flush, the IOVA is clean.
                        domain.free_iova(iova, size);
                        return Err(e);
                    }
                };
                if let Err(e) = domain.hw().sync_map(iova, size) {
                    // Digest item 2: a failed step after mapping unwinds and errors out.
                    let unwound = unwind(inner, &[part], Some((iova, size)));
                    return Err(after_unwind(unwound, e.into()));
                }
                MapRecord {
                    dir,
                    attrs,
                    iova: Some((iova, size)),
                    parts: Parts::One(part),
                }
            }
        };
        Ok(Mapping {
            dev: inner.clone(),
            rec: Some(rec),
        })
    }

    /// Maps a scatter-gather list of `(phys, len)` ranges. Under an IOMMU the ranges share one
    /// IOVA allocation, laid out back to back page by page, and are made visible with one
    /// `sync_map`; the device addresses are contiguous wherever inner boundaries are page
    /// aligned ([`SgMapping::iova_span`]). On the direct path each range is its own segment.
    ///
    /// Every entry is validated before anything is mapped; a failure at entry `k` unwinds
    /// exactly the `k` entries mapped before it and frees the IOVA (digest items 1, 9).
    pub fn map_sg(
        &self,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
        attrs: Attrs,
    ) -> Result<SgMapping, DmaError> {
        let inner = &self.inner;
        check_attrs(attrs)?;
        if ranges.is_empty() {
            return Err(DmaError::EmptyList);
        }
        let mut plan = Vec::new();
        plan.try_reserve_exact(ranges.len())
            .map_err(|_| DmaError::TooManyEntries)?;
        let mut total: u64 = 0;
        for &(phys, len) in ranges {
            check_range(phys, len)?;
            let bounce = needs_bounce(inner, phys, len, attrs)?;
            let span = page_span(phys.page_offset(), len)?;
            total = total.checked_add(span).ok_or(DmaError::Overflow {
                addr: total,
                len: span,
            })?;
            plan.push((phys, len, bounce, span));
        }
        let mut parts: Vec<Part> = Vec::with_capacity(ranges.len());
        let iova = match &inner.translation {
            Translation::Direct => None,
            Translation::Iommu(domain) => {
                domain.tick();
                Some((domain.alloc_iova(total, inner.cfg.mask)?, total))
            }
        };
        let mut cursor = iova.map(|(a, _)| a.as_u64());
        for &(phys, len, bounce, span) in &plan {
            match make_part(
                inner,
                phys,
                len,
                dir,
                attrs,
                bounce,
                cursor.map(DmaAddr::new),
            ) {
                Ok(p) => parts.push(p),
                Err(e) => return Err(after_unwind(unwind(inner, &parts, iova), e)),
            }
            // 64-bit accumulation (digest item 4); cannot overflow: the total was checked.
            cursor = cursor.map(|c| c + span);
        }
        if let (Translation::Iommu(domain), Some((a, size))) = (&inner.translation, iova) {
            if let Err(e) = domain.hw().sync_map(a, size) {
                return Err(after_unwind(unwind(inner, &parts, iova), e.into()));
            }
        }
        let rec = MapRecord {
            dir,
            attrs,
            iova,
            parts: Parts::Many(parts),
        };
        Ok(SgMapping {
            dev: inner.clone(),
            rec: Some(rec),
        })
    }

    /// Raw unmap (Linux's `dma_unmap_phys`) of a mapping turned into a raw address by
    /// [`Mapping::into_raw`]. `len`, `dir` and `attrs` must be the ones it was mapped with.
    ///
    /// Errors (nothing changed): `NotMapped` (never mapped or double unmap), `SizeMismatch`,
    /// `DirectionMismatch`, `AttrsMismatch`, `UnsupportedAttrs`. When several raw mappings start
    /// at `dma` (the same buffer mapped more than once on the direct path), the one with this
    /// length, direction and attributes is unmapped; a mismatch is reported only if none has.
    pub fn unmap_phys(
        &self,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<(), DmaError> {
        self.unmap_raw(dma, len, dir, attrs, None)
    }

    /// [`DmaDevice::unmap_phys`] into a batch: the flush happens at [`UnmapBatch::finish`].
    pub fn unmap_phys_in(
        &self,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: Attrs,
        batch: &mut UnmapBatch,
    ) -> Result<(), DmaError> {
        self.unmap_raw(dma, len, dir, attrs, Some(batch))
    }

    fn unmap_raw(
        &self,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: Attrs,
        batch: Option<&mut UnmapBatch>,
    ) -> Result<(), DmaError> {
        check_attrs(attrs)?;
        let key = {
            let mut table = self.inner.raw.lock();
            let a = dma.as_u64();
            // Several raw mappings may start at `a` (the same buffer mapped more than once on the
            // direct path): look at every one before reporting a mismatch.
            let mut first = None;
            let mut same_len = None;
            let mut found = None;
            for (k, rec) in table.records.range((a, 0)..=(a, u64::MAX)) {
                let p = &rec.parts.as_slice()[0];
                first.get_or_insert(p.len);
                if p.len == len {
                    if rec.dir == dir && rec.attrs == attrs {
                        found = Some(*k);
                        break;
                    }
                    same_len.get_or_insert((rec.dir, rec.attrs));
                }
            }
            match (found, same_len, first) {
                (Some(k), _, _) => table.remove(k).map(|r| (k, r)),
                (None, Some((d, _)), _) if d != dir => {
                    return Err(DmaError::DirectionMismatch { addr: a })
                }
                (None, Some((_, mapped)), _) => {
                    return Err(DmaError::AttrsMismatch {
                        addr: a,
                        mapped: mapped.bits(),
                        given: attrs.bits(),
                    })
                }
                (None, None, Some(mapped)) => {
                    return Err(DmaError::SizeMismatch {
                        addr: a,
                        mapped,
                        given: len,
                    })
                }
                (None, None, None) => return Err(DmaError::NotMapped { addr: a }),
            }
        };
        let Some((k, rec)) = key else {
            return Err(DmaError::NotMapped { addr: dma.as_u64() });
        };
        match unmap_record(&self.inner, rec, batch) {
            Ok(()) => Ok(()),
            Err((e, Some(rec))) => {
                self.inner.raw.lock().insert(k, rec);
                Err(e)
            }
            Err((e, None)) => Err(e),
        }
    }

    /// Raw `sync_for_cpu` of `[dma, dma + len)` inside a raw mapping: copies bounced data back.
    /// Must not race with the unmap of the same mapping (the Linux contract).
    pub fn sync_for_cpu(&self, dma: DmaAddr, len: u64) -> Result<(), DmaError> {
        self.sync_raw(dma, len, true)
    }

    /// Raw `sync_for_device` of `[dma, dma + len)` inside a raw mapping: copies into the bounce.
    pub fn sync_for_device(&self, dma: DmaAddr, len: u64) -> Result<(), DmaError> {
        self.sync_raw(dma, len, false)
    }

    fn sync_raw(&self, dma: DmaAddr, len: u64, for_cpu: bool) -> Result<(), DmaError> {
        let a = dma.as_u64();
        let table = self.inner.raw.lock();
        // O(log n) whatever the overlap (direct mappings of one buffer may nest): the mapping
        // that contains `a` and reaches furthest; if it does not hold the whole range, none
        // does and `sync_record` reports `OutOfRange`.
        let (start, rec) = table.containing(a).ok_or(DmaError::NotMapped { addr: a })?;
        sync_record(&self.inner, rec, a - start, len, for_cpu)
    }
}

/// A streaming mapping of one physical range. Unmapped on drop (strictly, or into the domain's
/// deferred queue); an unmap failure in `Drop` is logged, never a panic.
#[must_use = "dropping a Mapping unmaps it at once"]
pub struct Mapping {
    dev: Arc<DeviceInner>,
    rec: Option<MapRecord>,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("record", &self.rec)
            .finish()
    }
}

impl Mapping {
    fn part(&self) -> Option<&Part> {
        self.rec.as_ref().map(|r| &r.parts.as_slice()[0])
    }

    /// The address the device must use.
    pub fn dma_addr(&self) -> DmaAddr {
        self.part().map_or(DmaAddr::new(0), |p| p.dma)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.part().map_or(0, |p| p.len)
    }

    /// Never true for a live mapping (kept for the `len`/`is_empty` convention).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The physical address that was mapped.
    pub fn phys(&self) -> PhysAddr {
        self.part().map_or(PhysAddr::new(0), |p| p.orig)
    }

    /// Whether the data goes through a bounce buffer.
    pub fn is_bounced(&self) -> bool {
        self.part().is_some_and(|p| p.bounce.is_some())
    }

    /// The IOVA allocation `(start, size)` behind this mapping (IOMMU path).
    pub fn iova_allocation(&self) -> Option<(DmaAddr, u64)> {
        self.rec.as_ref().and_then(|r| r.iova)
    }

    /// Makes device writes visible to the CPU (copy-back from a bounce, cache invalidation for
    /// a non-coherent device). A no-op for MMIO.
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        self.sync_range_for_cpu(0, self.len())
    }

    /// Makes CPU writes visible to the device (copy into a bounce, cache write-back). A no-op
    /// for MMIO.
    pub fn sync_for_device(&self) -> Result<(), DmaError> {
        self.sync_range_for_device(0, self.len())
    }

    /// [`Mapping::sync_for_cpu`] for `[offset, offset + len)` of the mapping.
    pub fn sync_range_for_cpu(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, offset, len, true),
            None => Err(DmaError::NotMapped { addr: 0 }),
        }
    }

    /// [`Mapping::sync_for_device`] for `[offset, offset + len)` of the mapping.
    pub fn sync_range_for_device(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, offset, len, false),
            None => Err(DmaError::NotMapped { addr: 0 }),
        }
    }

    /// Unmaps now and reports the result. In strict mode the invalidation has completed when this
    /// returns `Ok`. If it fails, the mapping's resources are leaked (never reused).
    pub fn unmap(mut self) -> Result<(), DmaError> {
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, None).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }

    /// Unmaps into `batch`; the flush (and the copy-back of bounced data) happens at
    /// [`UnmapBatch::finish`].
    pub fn unmap_in(mut self, batch: &mut UnmapBatch) -> Result<(), DmaError> {
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, Some(batch)).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }

    /// Gives up RAII: the mapping stays until [`DmaDevice::unmap_phys`] with the returned
    /// address, this length, direction and attributes. For embedders that keep plain addresses
    /// in descriptors.
    pub fn into_raw(mut self) -> DmaAddr {
        let dma = self.dma_addr();
        if let Some(rec) = self.rec.take() {
            let id = self.dev.next_id.fetch_add(1, Ordering::Relaxed);
            self.dev.raw.lock().insert((dma.as_u64(), id), rec);
        }
        dma
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            if let Err((e, _)) = unmap_record(&self.dev, rec, None) {
                log::error!("dma: unmap on drop failed: {e}");
            }
        }
    }
}

/// A scatter-gather mapping. Unmapped on drop like [`Mapping`].
#[must_use = "dropping an SgMapping unmaps it at once"]
pub struct SgMapping {
    dev: Arc<DeviceInner>,
    rec: Option<MapRecord>,
}

impl fmt::Debug for SgMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgMapping")
            .field("record", &self.rec)
            .finish()
    }
}

impl SgMapping {
    fn parts(&self) -> &[Part] {
        self.rec.as_ref().map_or(&[], |r| r.parts.as_slice())
    }

    /// One segment per input range, in order.
    pub fn segments(&self) -> impl Iterator<Item = DmaSegment> + '_ {
        self.parts().iter().map(|p| DmaSegment {
            addr: p.dma,
            len: p.len,
        })
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.parts().len()
    }

    /// Whether there are no segments (never true for a live mapping).
    pub fn is_empty(&self) -> bool {
        self.parts().is_empty()
    }

    /// Under an IOMMU: the device-address span from the first to the last byte, which is one
    /// contiguous range when every inner boundary is page aligned. `None` on the direct path.
    pub fn iova_span(&self) -> Option<DmaSegment> {
        let parts = self.parts();
        let (first, last) = (parts.first()?, parts.last()?);
        self.rec.as_ref()?.iova?;
        let end = last.dma.as_u64() + last.len;
        Some(DmaSegment {
            addr: first.dma,
            len: end - first.dma.as_u64(),
        })
    }

    /// The IOVA allocation `(start, size)` (IOMMU path).
    pub fn iova_allocation(&self) -> Option<(DmaAddr, u64)> {
        self.rec.as_ref().and_then(|r| r.iova)
    }

    /// Copies bounced data back / invalidates caches, for all segments.
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        let total = self.parts().iter().map(|p| p.len).sum();
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, 0, total, true),
            None => Ok(()),
        }
    }

    /// Copies into bounce slots / writes caches back, for all segments.
    pub fn sync_for_device(&self) -> Result<(), DmaError> {
        let total = self.parts().iter().map(|p| p.len).sum();
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, 0, total, false),
            None => Ok(()),
        }
    }

    /// Unmaps now: each range exactly as mapped, one flush for all.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, None).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }

    /// Unmaps into `batch`.
    pub fn unmap_in(mut self, batch: &mut UnmapBatch) -> Result<(), DmaError> {
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, Some(batch)).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }
}

impl Drop for SgMapping {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            if let Err((e, _)) = unmap_record(&self.dev, rec, None) {
                log::error!("dma: scatter-gather unmap on drop failed: {e}");
            }
        }
    }
}

impl UnmapBatch {
    /// Flushes once per domain, waits for completion, then frees IOVAs and copies bounced data
    /// back. Returns the first error (the mappings of a domain whose flush failed are leaked).
    pub fn finish(mut self) -> Result<(), DmaError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<(), DmaError> {
        let mut first_err = None;
        for entry in self.entries.drain(..) {
            match entry.domain.hw().flush(entry.gather) {
                Ok(()) => {
                    for (inner, rec) in entry.pending {
                        complete_record(&inner, rec);
                    }
                }
                Err(e) => {
                    log::error!(
                        "dma: batch flush failed ({e}); leaking {} mappings",
                        entry.pending.len()
                    );
                    first_err.get_or_insert(DmaError::from(e));
                }
            }
        }
        for (inner, rec) in self.direct.drain(..) {
            complete_record(&inner, rec);
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
