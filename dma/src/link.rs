//! The IOVA link API (Linux's `dma_iova_try_alloc` / `dma_iova_link` / `dma_iova_sync` /
//! `dma_iova_unlink` / `dma_iova_destroy`): allocate one IOVA range, link physical ranges into it
//! at offsets, make them visible with one IOTLB sync, unlink, destroy.
//!
//! Implements SPEC.md "An IOVA link API ... with the robustness the reviewers asked for", i.e.
//! digest item 14 and items 1-10:
//!
//! - `phys` and `offset` are checked for mutual alignment separately (a zero start pad does not
//!   prove it): [`IovaLink::link`] reports which one is misaligned;
//! - a link that starts mid-range must start on a granule boundary, and one that ends before the
//!   end of the range must end on one (otherwise two links would share a page);
//! - every link remembers its own direction, attributes and protection; unlink removes each link
//!   exactly as it was mapped (item 10) and copies back with its own attributes;
//! - unlink walks a `BTreeMap` of links, each step advancing to the next key (no loop that can
//!   `continue` without progress);
//! - destroy frees the **whole** IOVA allocation, not the linked length, also when nothing was
//!   ever linked (item 9: no leak when the first link fails);
//! - [`IovaLink::link_ranges`] links a list and on a failure at index `k` unwinds exactly the `k`
//!   links it made (items 1, 2);
//! - sizes and offsets are `u64` with checked arithmetic (items 4, 6, 7); segments handed to a
//!   device are split by [`crate::split_segments`] (item 5).
//!
//! Unlink always flushes before returning, even on a deferred domain: the IOVA stays allocated
//! to this object and could be linked again at once, so it must not wait in a queue.
//!
//! If that flush fails, the range is *poisoned*: the unlinked granules may still be reachable
//! through stale IOTLB entries, so [`IovaLink::link`] refuses new links
//! ([`DmaError::IovaPoisoned`]) and the allocation is never freed. Everything else still works:
//! later unlinks and destroy still remove and flush the remaining links (every later flush also
//! covers the granules whose flush failed), only the IOVA is leaked, and destroy reports the
//! error.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::attrs::{Attrs, Direction};
use crate::checks::{check_attrs, check_range, page_span};
use crate::device::{DeviceInner, DmaDevice, Translation};
use crate::domain::DmaDomain;
use crate::engine::{
    after_unwind, finish_cpu_side, make_part, needs_bounce, unmap_parts, unmap_parts_best_effort,
    unwind_incomplete, UnmapBatch,
};
use crate::error::DmaError;
use crate::iommu::{IommuError, IotlbGather};
use crate::record::{MapRecord, Part, Parts};
use crate::segment::{split_segments, DmaSegment};

/// One linked range.
#[derive(Debug, Clone, Copy)]
struct Link {
    part: Part,
    dir: Direction,
    attrs: Attrs,
    /// Offset in the IOVA range (bytes from [`IovaLink::addr`]).
    offset: u64,
}

/// One IOVA allocation with physical ranges linked into it. Destroyed (everything unlinked,
/// one flush, the whole allocation freed) on drop.
pub struct IovaLink {
    dev: Arc<DeviceInner>,
    domain: Arc<DmaDomain>,
    /// The allocation: page-aligned start and size.
    alloc: (DmaAddr, u64),
    /// Device address of offset 0: the allocation start plus the page offset of the `phys`
    /// given to [`DmaDevice::iova_try_alloc`].
    addr: DmaAddr,
    size: u64,
    /// Links keyed by the first IOVA page they occupy.
    links: BTreeMap<u64, Link>,
    /// Not destroyed yet (teardown has not run).
    live: bool,
    /// The error of the first flush that failed: the range takes no new link and its allocation
    /// is never freed (module docs).
    poisoned: Option<IommuError>,
    /// Granules unmapped by a flush that failed; added to every later flush.
    unflushed: IotlbGather,
}

impl fmt::Debug for IovaLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaLink")
            .field("addr", &self.addr)
            .field("size", &self.size)
            .field("allocation", &self.alloc)
            .field("links", &self.links.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl DmaDevice {
    /// Allocates one IOVA range for `size` bytes whose first byte will be linked from a physical
    /// address with the same page offset as `phys`. Fails with `NoIommu` on the direct path
    /// (callers then map each range on its own).
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: [`DmaError::NoIommu`] on the direct path,
    /// [`DmaError::ZeroLength`], `Overflow` (`size` rounded up to pages),
    /// [`DmaError::IovaExhausted`].
    pub fn iova_try_alloc(&self, phys: PhysAddr, size: u64) -> Result<IovaLink, DmaError> {
        let inner = &self.inner;
        let Translation::Iommu(domain) = &inner.translation else {
            return Err(DmaError::NoIommu);
        };
        if size == 0 {
            return Err(DmaError::ZeroLength);
        }
        let bytes = page_span(phys.page_offset(), size)?;
        domain.tick();
        let start = domain.alloc_iova(bytes, inner.cfg.mask)?;
        Ok(IovaLink {
            dev: inner.clone(),
            domain: domain.clone(),
            alloc: (start, bytes),
            addr: DmaAddr::new(start.as_u64() + phys.page_offset()),
            size,
            links: BTreeMap::new(),
            live: true,
            poisoned: None,
            unflushed: IotlbGather::new(),
        })
    }

    /// Maps `ranges` back to back into one IOVA range: allocate, link each, sync once (the
    /// export-mapping recipe of the digest). A failure leaves nothing behind: no link, no IOVA.
    /// If undoing the links made so far fails too, the error is
    /// [`DmaError::UnwindIncomplete`], naming what is still mapped.
    ///
    /// # Errors
    ///
    /// Nothing stays mapped or allocated on an error: [`DmaError::EmptyList`], every error of
    /// [`DmaDevice::iova_try_alloc`] and of [`IovaLink::link_ranges`] (`ZeroLength`, `Overflow` of
    /// a range or the total, unknown attributes, `MmioNeedsBounce`, IOMMU errors);
    /// [`DmaError::UnwindIncomplete`] when undoing the links fails too.
    pub fn map_linked(
        &self,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
        attrs: Attrs,
    ) -> Result<IovaLink, DmaError> {
        let (first, _) = *ranges.first().ok_or(DmaError::EmptyList)?;
        let mut total: u64 = 0;
        for &(phys, len) in ranges {
            check_range(phys, len)?;
            total = total
                .checked_add(len)
                .ok_or(DmaError::Overflow { addr: total, len })?;
        }
        let mut link = self.iova_try_alloc(first, total)?;
        let linked = link
            .link_each(0, ranges, dir, attrs, &mut Vec::new())
            .and_then(|()| link.sync(0, total));
        match linked {
            Ok(()) => Ok(link),
            // Everything unlinked, one flush, the whole IOVA freed (or the stuck part named).
            Err(e) => Err(link.discard(e)),
        }
    }
}

impl IovaLink {
    /// Device address of offset 0.
    pub fn addr(&self) -> DmaAddr {
        self.addr
    }

    /// Size given at allocation.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole IOVA allocation `(start, size)`.
    pub fn allocation(&self) -> (DmaAddr, u64) {
        self.alloc
    }

    /// Number of live links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Whether an unlink flush failed: no new link is accepted and the allocation will never be
    /// freed (see the module documentation).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Bytes currently linked (64-bit).
    pub fn linked_len(&self) -> u64 {
        self.links.values().map(|l| l.part.len).sum()
    }

    /// Links `len` bytes at `phys` at `offset` into the range and returns their device address.
    /// Not visible to a device that caches not-present entries until [`IovaLink::sync`].
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: `IovaPoisoned` once an unlink flush of this range failed,
    /// unknown attrs, zero length, overflow, `offset + len` past the size (`OutOfRange`),
    /// `Misaligned { what: "phys" | "offset" | "len" }`, granules already linked
    /// (`AlreadyMapped`), MMIO that would need a bounce, exhaustion, IOMMU errors.
    pub fn link(
        &mut self,
        phys: PhysAddr,
        offset: u64,
        len: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr, DmaError> {
        if self.poisoned.is_some() {
            return Err(DmaError::IovaPoisoned {
                addr: self.addr.as_u64(),
            });
        }
        check_attrs(attrs)?;
        check_range(phys, len)?;
        let end = self.check_window(offset, len)?;
        // `addr + size` fits (it is inside the allocation), so these cannot overflow.
        let iova = self.addr.as_u64() + offset;
        let iova_end = iova + len;
        // Two separate checks (digest item 14): the IOVA position, then the physical address.
        if offset != 0 && !iova.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "offset",
                value: offset,
                align: PAGE_SIZE,
            });
        }
        if phys.page_offset() != iova % PAGE_SIZE {
            return Err(DmaError::Misaligned {
                what: "phys",
                value: phys.as_u64(),
                align: PAGE_SIZE,
            });
        }
        if end != self.size && !iova_end.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "len",
                value: len,
                align: PAGE_SIZE,
            });
        }
        let first_page = iova & !(PAGE_SIZE - 1);
        let span = page_span(iova % PAGE_SIZE, len)?;
        // Overlap with the previous link (the one starting at or before us) or the next one.
        if let Some((&s, l)) = self.links.range(..=first_page).next_back() {
            if s + l.part.map_size > first_page {
                return Err(DmaError::AlreadyMapped { addr: l.offset });
            }
        }
        if let Some((&s, l)) = self.links.range(first_page..).next() {
            if s < first_page + span {
                return Err(DmaError::AlreadyMapped { addr: l.offset });
            }
        }
        let bounce = needs_bounce(&self.dev, phys, len, attrs)?;
        let part = make_part(
            &self.dev,
            phys,
            len,
            dir,
            attrs,
            bounce,
            Some(DmaAddr::new(first_page)),
        )?;
        debug_assert_eq!(part.dma().as_u64(), iova);
        self.links.insert(
            first_page,
            Link {
                part,
                dir,
                attrs,
                offset,
            },
        );
        Ok(DmaAddr::new(iova))
    }

    /// Links `ranges` back to back starting at `offset`. On a failure at index `k`, exactly the
    /// `k` links made by this call are unlinked (one flush) and the error of the failed link is
    /// returned.
    ///
    /// If that unwind fails too (an unmap or the flush fails), the `k` links stay reachable: they
    /// stay owned by this object (unlinked by [`IovaLink::destroy`] or on drop; a failed flush
    /// also poisons the range), and the error returned is [`DmaError::UnwindIncomplete`] naming
    /// the first of them, so the caller knows its buffers are still mapped (the original error is
    /// logged).
    ///
    /// # Errors
    ///
    /// Every error of [`IovaLink::link`] for the range that failed (the links made before it are
    /// undone), or [`DmaError::UnwindIncomplete`] when that undo fails too (see above).
    pub fn link_ranges(
        &mut self,
        offset: u64,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
        attrs: Attrs,
    ) -> Result<(), DmaError> {
        let mut made: Vec<u64> = Vec::with_capacity(ranges.len());
        let Err(e) = self.link_each(offset, ranges, dir, attrs, &mut made) else {
            return Ok(());
        };
        if made.is_empty() {
            return Err(e);
        }
        let keys = self.keys_of(&made);
        let parts: Vec<Part> = keys
            .iter()
            .filter_map(|k| self.links.get(k).map(|l| l.part))
            .collect();
        let incomplete = match self.unlink_keys(&keys) {
            Ok(()) => None,
            Err(undo) => unwind_incomplete(&parts, 0..parts.len(), undo),
        };
        Err(after_unwind(incomplete, e))
    }

    /// Links `ranges` back to back from `offset`, recording the offset of each link made in
    /// `made`; stops at the first error (nothing unwound).
    fn link_each(
        &mut self,
        offset: u64,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
        attrs: Attrs,
        made: &mut Vec<u64>,
    ) -> Result<(), DmaError> {
        let mut at = offset;
        for &(phys, len) in ranges {
            let next = at
                .checked_add(len)
                .ok_or(DmaError::Overflow { addr: at, len })?;
            self.link(phys, at, len, dir, attrs)?;
            made.push(at);
            at = next;
        }
        Ok(())
    }

    /// Makes the links in `[offset, offset + len)` visible to the IOMMU hardware: one
    /// `sync_map` for the granule span.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroLength`], `Overflow`, [`DmaError::OutOfRange`] when the window leaves the
    /// range, the IOMMU's `sync_map` error ([`DmaError::Iommu`]).
    pub fn sync(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        let (first, span) = self.granules(offset, len)?;
        Ok(self.domain.hw().sync_map(DmaAddr::new(first), span)?)
    }

    /// `[offset, offset + len)` must lie inside the allocation (no overflow); returns its end.
    fn check_window(&self, offset: u64, len: u64) -> Result<u64, DmaError> {
        let end = offset
            .checked_add(len)
            .ok_or(DmaError::Overflow { addr: offset, len })?;
        if end > self.size {
            return Err(DmaError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(end)
    }

    fn granules(&self, offset: u64, len: u64) -> Result<(u64, u64), DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        self.check_window(offset, len)?;
        let iova = self.addr.as_u64() + offset;
        Ok((iova & !(PAGE_SIZE - 1), page_span(iova % PAGE_SIZE, len)?))
    }

    /// Unlinks every link inside `[offset, offset + len)`: each exactly as it was linked, one
    /// flush, then bounced data is copied back with each link's own attributes. The range must
    /// not cut through a link (`SizeMismatch`) and must hold at least one (`NotMapped`). The IOVA
    /// stays allocated until [`IovaLink::destroy`].
    ///
    /// # Errors
    ///
    /// Nothing changes on a check error: [`DmaError::ZeroLength`], `Overflow`,
    /// [`DmaError::OutOfRange`], [`DmaError::SizeMismatch`] (the window cuts through a link),
    /// [`DmaError::NotMapped`] (no link inside). An unmap or flush error of the IOMMU
    /// ([`DmaError::Iommu`]) after the checks; a failed flush poisons the range (see
    /// [`DmaError::IovaPoisoned`]).
    pub fn unlink(&mut self, offset: u64, len: u64) -> Result<(), DmaError> {
        let (first, span) = self.granules(offset, len)?;
        let end = offset + len;
        if let Some((_, l)) = self.links.range(..first).next_back() {
            if l.offset + l.part.len > offset {
                return Err(DmaError::SizeMismatch {
                    addr: l.offset,
                    mapped: l.part.len,
                    given: len,
                });
            }
        }
        let mut keys = Vec::new();
        for (&k, l) in self.links.range(first..first + span) {
            if l.offset < offset || l.offset + l.part.len > end {
                return Err(DmaError::SizeMismatch {
                    addr: l.offset,
                    mapped: l.part.len,
                    given: len,
                });
            }
            keys.push(k);
        }
        if keys.is_empty() {
            return Err(DmaError::NotMapped { addr: offset });
        }
        Ok(self.unlink_keys(&keys)?)
    }

    /// The link keys (first IOVA page) of links made at `offsets`.
    fn keys_of(&self, offsets: &[u64]) -> Vec<u64> {
        let base = self.addr.as_u64();
        offsets
            .iter()
            .map(|o| (base + o) & !(PAGE_SIZE - 1))
            .collect()
    }

    /// All-or-nothing for the page-table unmap: if one fails the links are restored and kept
    /// (the caller still owns them). A failed flush poisons the range (module docs).
    fn unlink_keys(&mut self, keys: &[u64]) -> Result<(), IommuError> {
        let links: Vec<Link> = keys
            .iter()
            .filter_map(|k| self.links.get(k).copied())
            .collect();
        let parts: Vec<Part> = links.iter().map(|l| l.part).collect();
        let mut gather = IotlbGather::new();
        unmap_parts(&self.domain, &parts, &mut gather)?;
        for k in keys {
            self.links.remove(k);
        }
        // Strict: completed before the IOVA can be linked again. On failure the bounce slots
        // are leaked (the device may still reach them) and no copy-back happens.
        self.flush(gather)?;
        self.complete_links(&links);
        Ok(())
    }

    /// CPU side of links whose entries are gone and flushed: copy-back with each link's own
    /// direction and attributes, then the bounce slots freed.
    fn complete_links(&self, links: &[Link]) {
        for l in links {
            finish_cpu_side(&self.dev, core::slice::from_ref(&l.part), l.dir, l.attrs);
            if let (Some(slot), Some(pool)) = (l.part.bounce, &self.dev.bounce) {
                pool.free_slot(slot);
            }
        }
    }

    /// Flushes `gather` plus whatever an earlier failed flush left behind. On failure the range
    /// is poisoned (the first error is kept) and the granules are remembered for the next flush.
    fn flush(&mut self, mut gather: IotlbGather) -> Result<(), IommuError> {
        gather.merge(core::mem::take(&mut self.unflushed));
        if gather.is_empty() {
            return Ok(());
        }
        let retry = copy_gather(&gather);
        match self.domain.hw().flush(gather) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::error!(
                    "dma: IOTLB flush of IOVA link {:?} failed ({e}); the range is poisoned: no \
                     new link, its IOVA is never freed",
                    self.addr
                );
                self.unflushed = retry;
                self.poisoned.get_or_insert(e);
                Err(e)
            }
        }
    }

    /// CPU view of every bounced / non-coherent link (copy-back, cache invalidation).
    ///
    /// # Errors
    ///
    /// The bounce copy-back's physical-memory error ([`DmaError::Phys`]).
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        for l in self.links.values() {
            finish_cpu_side(&self.dev, core::slice::from_ref(&l.part), l.dir, l.attrs);
        }
        Ok(())
    }

    /// The linked span `[offset, offset + len)` as device segments no longer than the device's
    /// `max_segment` (rounded down to a page; 64-bit accumulation, digest items 4-7).
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroLength`], `Overflow`, [`DmaError::OutOfRange`] when the window leaves the
    /// range, and the errors of [`crate::split_segments`].
    pub fn segments(&self, offset: u64, len: u64) -> Result<Vec<DmaSegment>, DmaError> {
        self.granules(offset, len)?;
        let seg = DmaSegment {
            addr: DmaAddr::new(self.addr.as_u64() + offset),
            len,
        };
        split_segments(&[seg], self.dev.cfg.max_segment)
    }

    /// Unlinks everything (one flush) and frees the whole IOVA allocation.
    ///
    /// Best effort, since nobody owns the links afterwards: every link whose page-table unmap
    /// succeeds is removed, and one flush covers them (and any granules an earlier failed flush
    /// left behind). The allocation is freed except the granules of links that could not be
    /// unmapped; it is not freed at all if a flush of this range ever failed (poisoned).
    ///
    /// # Errors
    ///
    ///
    /// the error of the first flush of this range that failed (an earlier unlink's, or this
    /// call's), otherwise that of the first unmap that failed.
    pub fn destroy(mut self) -> Result<(), DmaError> {
        self.teardown().result
    }

    /// Tears a link that never reached its caller down after `original` made its creation
    /// fail, and returns the error to report: [`DmaError::UnwindIncomplete`] if the teardown
    /// left something reachable, `original` otherwise.
    fn discard(mut self, original: DmaError) -> DmaError {
        after_unwind(self.teardown().incomplete, original)
    }

    /// Like [`IovaLink::destroy`], but the invalidation joins `batch`: the page-table entries are
    /// removed now, and the flush (one per domain for the whole batch), the CPU-side completion
    /// of each link (with its own direction and attributes) and the freeing of the whole
    /// allocation happen in [`UnmapBatch::finish`], never before the flush completed.
    ///
    /// # Errors
    ///
    /// if a page-table unmap fails, nothing was unlinked into the batch and the batch is
    /// untouched; the link is then destroyed at once the strict way (what
    /// [`IovaLink::destroy`] does), and the error is [`DmaError::UnwindIncomplete`] if that left
    /// a link mapped (or reachable after a failed flush), the unmap's error otherwise. If the
    /// range is poisoned, every link is still unlinked into the batch (and flushed by it), the
    /// allocation is never freed, and the poisoning error is returned.
    pub fn destroy_in(mut self, batch: &mut UnmapBatch) -> Result<(), DmaError> {
        if !self.live {
            return Ok(());
        }
        let links: Vec<Link> = self.links.values().copied().collect();
        let parts: Vec<Part> = links.iter().map(|l| l.part).collect();
        // A gather of our own: `unmap_parts` flushes and empties the gather it is given when it
        // fails, and the batch's gather covers other mappings whose IOVAs `finish` frees.
        let mut gather = IotlbGather::new();
        if let Err(e) = unmap_parts(&self.domain, &parts, &mut gather) {
            let left = self.teardown();
            return Err(after_unwind(left.incomplete, e.into()));
        }
        self.live = false;
        self.links.clear();
        gather.merge(core::mem::take(&mut self.unflushed));
        let entry = batch.entry(&self.domain);
        batch.entries[entry].gather.merge(gather);
        for l in links {
            let rec = MapRecord {
                dir: l.dir,
                attrs: l.attrs,
                iova: None,
                parts: Parts::One(l.part),
            };
            batch.push(Some(entry), &self.dev, rec);
        }
        if let Some(e) = self.poisoned {
            log::error!(
                "dma: destroying poisoned IOVA link {:?}: its allocation stays leaked",
                self.addr
            );
            return Err(e.into());
        }
        // The whole allocation, freed by `finish` after the flush (digest item 14).
        let whole = MapRecord {
            dir: Direction::Bidirectional,
            attrs: Attrs::empty(),
            iova: Some(self.alloc),
            parts: Parts::Many(Vec::new()),
        };
        batch.push(Some(entry), &self.dev, whole);
        Ok(())
    }

    /// Unlinks everything best effort, one flush, frees the allocation (see
    /// [`IovaLink::destroy`]).
    fn teardown(&mut self) -> Leftover {
        if !self.live {
            return Leftover::default();
        }
        self.live = false;
        let links: Vec<Link> = core::mem::take(&mut self.links).into_values().collect();
        let parts: Vec<Part> = links.iter().map(|l| l.part).collect();
        let mut gather = IotlbGather::new();
        let stuck = unmap_parts_best_effort(&self.domain, &parts, &mut gather);
        let flushed = self.flush(gather);
        let incomplete = match (flushed, stuck.first()) {
            // Every removed link may still be reachable through a stale IOTLB entry.
            (Err(e), _) => unwind_incomplete(&parts, 0..parts.len(), e),
            (Ok(()), Some(&(_, undo))) => {
                unwind_incomplete(&parts, stuck.iter().map(|&(i, _)| i), undo)
            }
            (Ok(()), None) => None,
        };
        if flushed.is_ok() {
            let removed: Vec<Link> = links
                .iter()
                .enumerate()
                .filter(|(i, _)| !stuck.iter().any(|(j, _)| j == i))
                .map(|(_, l)| *l)
                .collect();
            self.complete_links(&removed);
        }
        if let Some(e) = self.poisoned {
            // Never freed: stale IOTLB entries may remain (this call's flush failing included).
            return Leftover {
                result: Err(e.into()),
                incomplete,
            };
        }
        // The whole allocation (digest item 14), not the linked length, minus the granules of
        // links that could not be unmapped (still mapped: never handed out again).
        let keep: Vec<(DmaAddr, u64)> = stuck
            .iter()
            .map(|&(i, _)| (parts[i].map_iova, parts[i].map_size))
            .collect();
        self.domain
            .free_iova_keeping(self.alloc.0, self.alloc.1, &keep);
        Leftover {
            result: stuck.first().map_or(Ok(()), |&(_, e)| Err(e.into())),
            incomplete,
        }
    }
}

/// What a teardown left behind.
#[derive(Debug)]
struct Leftover {
    /// What [`IovaLink::destroy`] reports (module docs).
    result: Result<(), DmaError>,
    /// What is still reachable, for the error of an unwind.
    incomplete: Option<DmaError>,
}

impl Default for Leftover {
    fn default() -> Self {
        Self {
            result: Ok(()),
            incomplete: None,
        }
    }
}

/// A copy of a gather (`IotlbGather` is deliberately not `Clone`): kept to retry a failed flush.
fn copy_gather(g: &IotlbGather) -> IotlbGather {
    let mut c = IotlbGather::new();
    if let Some((a, s)) = g.span() {
        c.add(a, s);
    }
    if g.freed_tables() {
        c.add_freed_tables();
    }
    c
}

impl Drop for IovaLink {
    fn drop(&mut self) {
        if let Err(e) = self.teardown().result {
            log::error!("dma: IOVA link destroy failed (range leaked): {e}");
        }
    }
}
