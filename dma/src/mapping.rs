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
//! physical side is aligned too), one [`IommuDomain::map`] per range (per *run* of a
//! scatter-gather list: consecutive unbounced ranges whose pages are physically contiguous are
//! mapped together, as Linux merges contiguous segments), one [`IommuDomain::sync_map`] for the
//! whole span. On the direct path it is a mask check.
//!
//! The single unbounced range under an IOMMU (the common 4 KiB case) has a fast path for map
//! and strict unmap: the same checks, steps and unwinding as the general path, without building
//! and moving intermediate records, and without any heap allocation (issue 12; proved by the
//! counting-allocator tests in `dma/tests/hot_path.rs`).
//!
//! [`IommuDomain::map`]: crate::iommu::IommuDomain::map
//! [`IommuDomain::sync_map`]: crate::iommu::IommuDomain::sync_map

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::{Attrs, Direction};
use crate::checks::{check_attrs, check_range, page_span};
use crate::device::{DeviceInner, DmaDevice, Translation};
use crate::domain::DmaDomain;
use crate::engine::{
    after_unwind, make_part, needs_bounce, prot_for, sync_record, unmap_record,
    unmap_strict_unbounced, unwind, UnmapBatch,
};
use crate::error::DmaError;
use crate::phys::CacheOp;
use crate::record::{MapRecord, Part, Parts};
use crate::segment::DmaSegment;

impl DmaDevice {
    /// Maps `len` bytes at `phys` for the device and returns the RAII handle; the device
    /// address is [`Mapping::dma_addr`].
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: zero length, `phys + len` overflow, unknown attribute bits
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
        // Checks the range too (`check_range`).
        let bounce = needs_bounce(inner, phys, len, attrs)?;
        let rec = match &inner.translation {
            Translation::Iommu(domain) if !bounce => {
                return map_unbounced(inner, domain, phys, len, dir, attrs);
            }
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
    /// aligned ([`SgMapping::iova_span`]). Consecutive unbounced ranges whose pages are
    /// physically contiguous are mapped as one page-table run (one `IommuDomain::map`, larger
    /// leaves where alignment allows) and unmapped as that run. Each range stays its own
    /// segment ([`SgMapping::segments`]). On the direct path each range is its own segment.
    ///
    /// Every entry is validated before anything is mapped; a failure at entry `k` unwinds
    /// exactly the `k` entries mapped before it and frees the IOVA (digest items 1, 9).
    ///
    /// # Errors
    ///
    /// Nothing stays mapped on an error: [`DmaError::EmptyList`], [`DmaError::TooManyEntries`],
    /// unknown attribute bits ([`DmaError::UnsupportedAttrs`]), a zero-length entry, an overflow
    /// (an entry or the total), `MmioNeedsBounce`, `MaskViolation`, IOVA or bounce exhaustion, an
    /// IOMMU refusal; [`DmaError::UnwindIncomplete`] when undoing the entries mapped so far fails
    /// too.
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
        let domain = match &inner.translation {
            Translation::Direct => {
                for &(phys, len, bounce, _) in &plan {
                    match make_part(inner, phys, len, dir, attrs, bounce, None) {
                        Ok(p) => parts.push(p),
                        Err(e) => return Err(after_unwind(unwind(inner, &parts, None), e)),
                    }
                }
                return Ok(SgMapping {
                    dev: inner.clone(),
                    rec: Some(MapRecord {
                        dir,
                        attrs,
                        iova: None,
                        parts: Parts::Many(parts),
                    }),
                });
            }
            Translation::Iommu(domain) => domain,
        };
        domain.tick();
        let base = domain.alloc_iova(total, inner.cfg.mask)?;
        let iova = Some((base, total));
        // The entries lie back to back page by page from `base`. Consecutive unbounced entries
        // whose pages are physically contiguous form one *run*, mapped with one
        // `IommuDomain::map` (as Linux merges contiguous segments): the run's first part holds
        // the run's page-table entries (`map_size`), the others none, so that every unmap and
        // unwind removes exactly the runs that were mapped.
        let mut cursor = base.as_u64();
        let mut run: Option<Run> = None;
        for &(phys, len, bounce, span) in &plan {
            let mut p = match make_part(inner, phys, len, dir, attrs, bounce, None) {
                Ok(p) => p,
                Err(e) => return Err(after_unwind(unwind(inner, &parts, iova), e)),
            };
            p.map_iova = DmaAddr::new(cursor);
            // 64-bit accumulation (digest item 4); cannot overflow: the total was checked.
            cursor += span;
            parts.push(p);
            let joins = run.as_ref().is_some_and(|r| {
                r.mergeable && !bounce && r.phys_end == Some(p.target_page.as_u64())
            });
            if joins {
                if let Some(r) = run.as_mut() {
                    r.size += span;
                    r.phys_end = p.target_page.as_u64().checked_add(span);
                }
                continue;
            }
            if let Some(r) = run.replace(Run::start(parts.len() - 1, &p, span)) {
                if let Err(e) = map_run(domain, &mut parts, r) {
                    return Err(after_unwind(unwind(inner, &parts, iova), e));
                }
            }
        }
        if let Some(r) = run {
            if let Err(e) = map_run(domain, &mut parts, r) {
                return Err(after_unwind(unwind(inner, &parts, iova), e));
            }
        }
        if let Err(e) = domain.hw().sync_map(base, total) {
            return Err(after_unwind(unwind(inner, &parts, iova), e.into()));
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
    /// # Errors
    ///
    /// Nothing changes on an error: `NotMapped` (never mapped or double unmap), `SizeMismatch`,
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
    ///
    /// # Errors
    ///
    /// The errors of [`DmaDevice::unmap_phys`] (nothing changed, the batch untouched).
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
    ///
    /// # Errors
    ///
    /// [`DmaError::NotMapped`] when `dma` is in no raw mapping, [`DmaError::ZeroLength`],
    /// `Overflow`, [`DmaError::OutOfRange`] when the range leaves the mapping, the bounce copy's
    /// physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_cpu(&self, dma: DmaAddr, len: u64) -> Result<(), DmaError> {
        self.sync_raw(dma, len, true)
    }

    /// Raw `sync_for_device` of `[dma, dma + len)` inside a raw mapping: copies into the bounce.
    ///
    /// # Errors
    ///
    /// As [`DmaDevice::sync_for_cpu`].
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

/// The fast path of a single-range map under an IOMMU without a bounce (the common 4 KiB
/// case): IOVA, cache maintenance, one `map`, one `sync_map`, and the handle, with the same
/// checks and unwinding as the general path (`make_part`) but no intermediate part to build and
/// move. The caller checked the arguments and that no bounce is needed.
#[inline]
fn map_unbounced(
    inner: &Arc<DeviceInner>,
    domain: &DmaDomain,
    phys: PhysAddr,
    len: u64,
    dir: Direction,
    attrs: Attrs,
) -> Result<Mapping, DmaError> {
    domain.tick();
    let offset = phys.page_offset();
    let size = page_span(offset, len)?;
    let iova = domain.alloc_iova(size, inner.cfg.mask)?;
    if !inner.cfg.coherent && !attrs.contains(Attrs::MMIO) {
        inner.phys.cache_sync(phys, len, CacheOp::ForDevice(dir));
    }
    let prot = prot_for(inner, dir, attrs);
    let page = phys.page_align_down();
    if let Err(e) = domain.hw().map(iova, page, size, prot) {
        // Nothing was mapped: no translation to flush, the IOVA is clean.
        domain.free_iova(iova, size);
        return Err(e.into());
    }
    let part = Part {
        orig: phys,
        len,
        target_page: page,
        map_iova: iova,
        map_size: size,
        prot,
        bounce: None,
    };
    if let Err(e) = domain.hw().sync_map(iova, size) {
        // Digest item 2: a failed step after mapping unwinds and errors out.
        let unwound = unwind(inner, &[part], Some((iova, size)));
        return Err(after_unwind(unwound, e.into()));
    }
    Ok(Mapping {
        dev: inner.clone(),
        rec: Some(MapRecord {
            dir,
            attrs,
            iova: Some((iova, size)),
            parts: Parts::One(part),
        }),
    })
}

/// A run of a scatter-gather mapping: consecutive parts whose pages are contiguous in both
/// address spaces, mapped with one [`IommuDomain::map`](crate::iommu::IommuDomain::map).
struct Run {
    /// Index of the run's first part (which records the run's entries).
    head: usize,
    /// Bytes of pages in the run.
    size: u64,
    /// Physical address just past the run's last page (`None` at the top of the address
    /// space: nothing can follow).
    phys_end: Option<u64>,
    /// Whether later parts may join (never a bounced run: a bounce slot is freed on its own).
    mergeable: bool,
}

impl Run {
    fn start(head: usize, p: &Part, span: u64) -> Self {
        Self {
            head,
            size: span,
            phys_end: p.target_page.as_u64().checked_add(span),
            mergeable: p.bounce.is_none(),
        }
    }
}

/// Maps run `r` of `parts`; on success its head part records the entries.
fn map_run(domain: &DmaDomain, parts: &mut [Part], r: Run) -> Result<(), DmaError> {
    let Some(head) = parts.get_mut(r.head) else {
        return Ok(()); // unreachable: the run's head was pushed before the run started
    };
    domain
        .hw()
        .map(head.map_iova, head.target_page, r.size, head.prot)?;
    head.map_size = r.size;
    Ok(())
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
        self.part().map_or(DmaAddr::new(0), Part::dma)
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
    ///
    /// # Errors
    ///
    /// The bounce copy-back's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        self.sync_range_for_cpu(0, self.len())
    }

    /// Makes CPU writes visible to the device (copy into a bounce, cache write-back). A no-op
    /// for MMIO.
    ///
    /// # Errors
    ///
    /// The bounce copy's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_device(&self) -> Result<(), DmaError> {
        self.sync_range_for_device(0, self.len())
    }

    /// [`Mapping::sync_for_cpu`] for `[offset, offset + len)` of the mapping.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroLength`], `Overflow`, [`DmaError::OutOfRange`] when the range leaves the
    /// mapping, the bounce copy's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_range_for_cpu(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, offset, len, true),
            None => Err(DmaError::NotMapped { addr: 0 }),
        }
    }

    /// [`Mapping::sync_for_device`] for `[offset, offset + len)` of the mapping.
    ///
    /// # Errors
    ///
    /// As [`Mapping::sync_range_for_cpu`].
    pub fn sync_range_for_device(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, offset, len, false),
            None => Err(DmaError::NotMapped { addr: 0 }),
        }
    }

    /// Unmaps now and reports the result. In strict mode the invalidation has completed when this
    /// returns `Ok`. If it fails, the mapping's resources are leaked (never reused).
    ///
    /// # Errors
    ///
    /// The IOMMU's unmap or IOTLB flush error ([`DmaError::Iommu`]), or the flush error of a
    /// deferred queue that was due; the resources are then leaked, never reused.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        let Some(rec) = self.rec.as_ref() else {
            return Ok(());
        };
        if let Some(r) = unmap_strict_unbounced(&self.dev, rec) {
            // Done (or failed and leaked, never reused): the handle forgets the record.
            self.rec = None;
            return r;
        }
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, None).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }

    /// Unmaps into `batch`; the flush (and the copy-back of bounced data) happens at
    /// [`UnmapBatch::finish`].
    ///
    /// # Errors
    ///
    /// The IOMMU's page-table unmap error ([`DmaError::Iommu`]); nothing was added to the batch,
    /// and the mapping's IOVA and bounce slot are leaked, never reused.
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
        if let Some(rec) = self.rec.as_ref() {
            if let Some(r) = unmap_strict_unbounced(&self.dev, rec) {
                self.rec = None;
                if let Err(e) = r {
                    log::error!("dma: unmap on drop failed: {e}");
                }
                return;
            }
        }
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
            addr: p.dma(),
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
        let (start, end) = (first.dma(), last.dma().as_u64() + last.len);
        Some(DmaSegment {
            addr: start,
            len: end - start.as_u64(),
        })
    }

    /// The IOVA allocation `(start, size)` (IOMMU path).
    pub fn iova_allocation(&self) -> Option<(DmaAddr, u64)> {
        self.rec.as_ref().and_then(|r| r.iova)
    }

    /// Copies bounced data back / invalidates caches, for all segments.
    ///
    /// # Errors
    ///
    /// The bounce copy-back's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        let total = self.parts().iter().map(|p| p.len).sum();
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, 0, total, true),
            None => Ok(()),
        }
    }

    /// Copies into bounce slots / writes caches back, for all segments.
    ///
    /// # Errors
    ///
    /// The bounce copy's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_device(&self) -> Result<(), DmaError> {
        let total = self.parts().iter().map(|p| p.len).sum();
        match &self.rec {
            Some(r) => sync_record(&self.dev, r, 0, total, false),
            None => Ok(()),
        }
    }

    /// Unmaps now: each range exactly as mapped, one flush for all.
    ///
    /// # Errors
    ///
    /// The IOMMU's unmap or IOTLB flush error ([`DmaError::Iommu`]); the IOVA and bounce slots are
    /// then leaked, never reused.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        match self.rec.take() {
            Some(rec) => unmap_record(&self.dev, rec, None).map_err(|(e, _)| e),
            None => Ok(()),
        }
    }

    /// Unmaps into `batch`.
    ///
    /// # Errors
    ///
    /// The IOMMU's page-table unmap error ([`DmaError::Iommu`]); nothing was added to the batch,
    /// and the mapping's IOVA and bounce slots are leaked, never reused.
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
