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

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::attrs::{Attrs, Direction};
use crate::device::{DeviceInner, DmaDevice, Translation};
use crate::domain::DmaDomain;
use crate::error::DmaError;
use crate::invalidation::UnmapBatch;
use crate::iommu::IotlbGather;
use crate::mapping::{
    check_attrs, check_range, finish_cpu_side, make_part, needs_bounce, page_span, unmap_parts,
    MapRecord, Part, Parts,
};
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
    live: bool,
}

impl fmt::Debug for IovaLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaLink")
            .field("addr", &self.addr)
            .field("size", &self.size)
            .field("allocation", &self.alloc)
            .field("links", &self.links.len())
            .finish()
    }
}

impl DmaDevice {
    /// Allocates one IOVA range for `size` bytes whose first byte will be linked from a physical
    /// address with the same page offset as `phys`. Fails with `NoIommu` on the direct path
    /// (callers then map each range on its own).
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
        })
    }

    /// Maps `ranges` back to back into one IOVA range: allocate, link each, sync once (the
    /// export-mapping recipe of the digest). A failure leaves nothing behind: no link, no IOVA.
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
        link.link_ranges(0, ranges, dir, attrs)?; // on error `link` drops: whole IOVA freed
        link.sync(0, total)?;
        Ok(link)
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

    /// Bytes currently linked (64-bit).
    pub fn linked_len(&self) -> u64 {
        self.links.values().map(|l| l.part.len).sum()
    }

    /// Links `len` bytes at `phys` at `offset` into the range and returns their device address.
    /// Not visible to a device that caches not-present entries until [`IovaLink::sync`].
    ///
    /// Errors (nothing changed): unknown attrs, zero length, overflow, `offset + len` past the
    /// size (`OutOfRange`), `Misaligned { what: "phys" | "offset" | "len" }`, granules already
    /// linked (`AlreadyMapped`), MMIO that would need a bounce, exhaustion, IOMMU errors.
    pub fn link(
        &mut self,
        phys: PhysAddr,
        offset: u64,
        len: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr, DmaError> {
        check_attrs(attrs)?;
        check_range(phys, len)?;
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
        debug_assert_eq!(part.dma.as_u64(), iova);
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
    /// `k` links made by this call are unlinked (one flush) and the error is returned.
    pub fn link_ranges(
        &mut self,
        offset: u64,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
        attrs: Attrs,
    ) -> Result<(), DmaError> {
        let mut made: Vec<u64> = Vec::with_capacity(ranges.len());
        let mut at = offset;
        for &(phys, len) in ranges {
            let r = at
                .checked_add(len)
                .ok_or(DmaError::Overflow { addr: at, len })
                .and_then(|next| self.link(phys, at, len, dir, attrs).map(|_| next));
            match r {
                Ok(next) => {
                    made.push(at);
                    at = next;
                }
                Err(e) => {
                    if !made.is_empty() {
                        self.unlink_offsets(&made)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes the links in `[offset, offset + len)` visible to the IOMMU hardware: one
    /// `sync_map` for the granule span.
    pub fn sync(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        let (first, span) = self.granules(offset, len)?;
        Ok(self.domain.hw().sync_map(DmaAddr::new(first), span)?)
    }

    fn granules(&self, offset: u64, len: u64) -> Result<(u64, u64), DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
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
        let iova = self.addr.as_u64() + offset;
        Ok((iova & !(PAGE_SIZE - 1), page_span(iova % PAGE_SIZE, len)?))
    }

    /// Unlinks every link inside `[offset, offset + len)`: each exactly as it was linked, one
    /// flush, then bounced data is copied back with each link's own attributes. The range must
    /// not cut through a link (`SizeMismatch`) and must hold at least one (`NotMapped`). The IOVA
    /// stays allocated until [`IovaLink::destroy`].
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
        self.unlink_keys(&keys)
    }

    fn unlink_offsets(&mut self, offsets: &[u64]) -> Result<(), DmaError> {
        let base = self.addr.as_u64();
        let keys: Vec<u64> = offsets
            .iter()
            .map(|o| (base + o) & !(PAGE_SIZE - 1))
            .collect();
        self.unlink_keys(&keys)
    }

    /// All-or-nothing: if a page-table unmap fails the links are restored and kept.
    fn unlink_keys(&mut self, keys: &[u64]) -> Result<(), DmaError> {
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
        let slots = match &self.dev.bounce {
            Some(pool) => parts
                .iter()
                .filter_map(|p| p.bounce.map(|s| (pool.clone(), s)))
                .collect(),
            None => Vec::new(),
        };
        // Strict: completed before the IOVA can be linked again.
        if let Err(e) = self.domain.hw().flush(gather) {
            log::error!("dma: flush after unlink failed ({e}); this IOVA range is now unusable");
            self.live = false; // never free the allocation: stale entries may remain
            return Err(e.into());
        }
        for l in &links {
            finish_cpu_side(&self.dev, core::slice::from_ref(&l.part), l.dir, l.attrs);
        }
        for (pool, slot) in slots {
            pool.free_slot(slot);
        }
        Ok(())
    }

    /// CPU view of every bounced / non-coherent link (copy-back, cache invalidation).
    pub fn sync_for_cpu(&self) -> Result<(), DmaError> {
        for l in self.links.values() {
            finish_cpu_side(&self.dev, core::slice::from_ref(&l.part), l.dir, l.attrs);
        }
        Ok(())
    }

    /// The linked span `[offset, offset + len)` as device segments no longer than the device's
    /// `max_segment` (rounded down to a page; 64-bit accumulation, digest items 4-7).
    pub fn segments(&self, offset: u64, len: u64) -> Result<Vec<DmaSegment>, DmaError> {
        self.granules(offset, len)?;
        let seg = DmaSegment {
            addr: DmaAddr::new(self.addr.as_u64() + offset),
            len,
        };
        split_segments(&[seg], self.dev.cfg.max_segment)
    }

    /// Unlinks everything (one flush) and frees the whole IOVA allocation.
    pub fn destroy(mut self) -> Result<(), DmaError> {
        self.teardown()
    }

    /// Like [`IovaLink::destroy`], but the invalidation joins `batch`: the page-table entries are
    /// removed now, and the flush (one per domain for the whole batch), the CPU-side completion
    /// of each link (with its own direction and attributes) and the freeing of the whole
    /// allocation happen in [`UnmapBatch::finish`], never before the flush completed.
    /// On error nothing was unlinked by this call; the link is then destroyed the strict way as
    /// it is dropped (exactly what [`IovaLink::destroy`] does).
    pub fn destroy_in(mut self, batch: &mut UnmapBatch) -> Result<(), DmaError> {
        if !self.live {
            return Ok(());
        }
        let links: Vec<Link> = self.links.values().copied().collect();
        let parts: Vec<Part> = links.iter().map(|l| l.part).collect();
        let entry = batch.entry(&self.domain);
        unmap_parts(&self.domain, &parts, &mut entry.gather)?;
        self.links.clear();
        for l in links {
            let rec = MapRecord {
                dir: l.dir,
                attrs: l.attrs,
                iova: None,
                parts: Parts::One(l.part),
            };
            entry.pending.push((self.dev.clone(), rec));
        }
        // The whole allocation, freed by `finish` after the flush (digest item 14).
        let whole = MapRecord {
            dir: Direction::Bidirectional,
            attrs: Attrs::empty(),
            iova: Some(self.alloc),
            parts: Parts::Many(Vec::new()),
        };
        entry.pending.push((self.dev.clone(), whole));
        self.live = false;
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), DmaError> {
        if !self.live {
            return Ok(());
        }
        let keys: Vec<u64> = self.links.keys().copied().collect();
        if !keys.is_empty() {
            self.unlink_keys(&keys)?;
        }
        self.live = false;
        // The whole allocation (digest item 14), not the linked length.
        self.domain.free_iova(self.alloc.0, self.alloc.1);
        Ok(())
    }
}

impl Drop for IovaLink {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::error!("dma: IOVA link destroy failed (range leaked): {e}");
        }
    }
}
