//! IOVA space allocation for one domain: 4 KiB-granular ranges inside `[start, end]`, below a
//! per-call limit (device DMA mask ∩ domain aperture), never touching reserved space.
//!
//! Implements SPEC.md "Reserved IOVA space is never handed out" (reserved regions are removed
//! from the free space at creation: the interrupt window, RMRRs, PCI host-bridge windows, page 0)
//! and "Costs must not grow with the number of live mappings".
//!
//! # Why a buddy allocator and not Linux's red-black tree
//!
//! Linux keeps allocated ranges in an rbtree and searches for a gap top-down; the search walks
//! nodes (`rb_prev`) and is O(n) in bad cases, which is why it needs its per-CPU range caches to
//! be fast. A `BTreeMap` cannot be augmented with "largest gap below this node", so the same
//! search here would be O(n). Instead free space is kept as naturally aligned power-of-two blocks,
//! one set per order (a fixed-depth radix bitset, the `radix` submodule): finding a block of order
//! `k` below a limit is one at-or-before lookup per non-empty order (at most 53), and splitting
//! and merging cost one set update per order crossed, each of a depth set by the width of the
//! space, not by the number of blocks or allocations. A request of `n` pages takes an
//! aligned `2^ceil(log2 n)` block and gives the unused tail back at once, so no IOVA is wasted;
//! the alignment is what superpages want anyway (a 2 MiB request is 2 MiB aligned, 1 GiB is
//! 1 GiB aligned; Linux size-aligns the same way). Within the smallest order that fits, the
//! highest block is taken (top-down), which keeps low IOVAs for devices with small masks.
//!
//! On top sit per-size caches ("magazines", Bonwick/Linux `iova_rcache`) for requests of up to
//! [`MAGAZINE_MAX_PAGES`] pages: a free pushes the range on its size's stack and the next
//! allocation of that size pops it in O(1) (a bounded look at the top few entries to honour the
//! limit). Cached ranges stay out of the buddy lists; [`IovaAllocator::drain_caches`] returns
//! them, and an allocation that fails drains and retries before reporting exhaustion.
//!
//! Every allocation is recorded (`live`, a radix tree of fixed depth in the `radix` submodule) so
//! that [`IovaAllocator::free`] checks the exact range and reports a double free or a wrong size
//! instead of corrupting the free space. The record's depth depends on the width of the space,
//! not on the number of live allocations, so alloc+free costs the same at 1 and at 1M live (the
//! `iova_vs_vm_allocator` benchmark in docs/PERFORMANCE.md); with a `BTreeMap` here it grew 2.5
//! times over that range.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PAGE_SIZE};
use crate::error::DmaError;

mod radix;
use radix::{RadixMap, RadixSet};

const PAGE_SHIFT: u32 = 12;
/// Number of page-frame bits of a 64-bit address: orders 0..=52.
const MAX_ORDER: u32 = 64 - PAGE_SHIFT;

/// Requests of up to this many pages are cached per size.
pub const MAGAZINE_MAX_PAGES: u64 = 32;
/// Ranges held per size cache.
const MAGAZINE_CAPACITY: usize = 128;
/// How many cached entries an allocation inspects for one below its limit.
const MAGAZINE_PROBE: usize = 8;

/// The MSI/interrupt window every x86 IOMMU domain must leave unmapped (SPEC.md).
pub const MSI_WINDOW: ReservedRegion = ReservedRegion {
    start: DmaAddr::new(0xFEE0_0000),
    size: 0x10_0000,
    kind: ReservedKind::InterruptWindow,
};

/// Why an IOVA range is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// Page 0: a zero DMA address is too easily a bug.
    PageZero,
    /// The interrupt (MSI) window 0xFEE00000–0xFEEFFFFF.
    InterruptWindow,
    /// A firmware RMRR range (identity mapped by the IOMMU driver).
    Rmrr,
    /// A PCI host-bridge window: an IOVA there could equal a peer's bus address.
    HostBridgeWindow,
    /// Anything else the embedder wants kept out.
    Other,
}

/// An IOVA range that is never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservedRegion {
    /// First address (rounded down to a page when applied).
    pub start: DmaAddr,
    /// Size in bytes (the end is rounded up to a page when applied).
    pub size: u64,
    /// Why.
    pub kind: ReservedKind,
}

impl ReservedRegion {
    /// A region `[start, start + size)`.
    pub const fn new(start: u64, size: u64, kind: ReservedKind) -> Self {
        Self {
            start: DmaAddr::new(start),
            size,
            kind,
        }
    }

    /// The inclusive page-frame range covered, or `None` when `size == 0`.
    fn pfns(&self) -> Option<(u64, u64)> {
        if self.size == 0 {
            return None;
        }
        let first = self.start.as_u64() >> PAGE_SHIFT;
        let last = self.start.as_u64().saturating_add(self.size - 1) >> PAGE_SHIFT;
        Some((first, last))
    }

    /// Whether `[addr, addr + len)` intersects this region (at page granularity).
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        match (self.pfns(), len) {
            (Some((f, l)), 1..) => {
                let a = addr >> PAGE_SHIFT;
                let b = addr.saturating_add(len - 1) >> PAGE_SHIFT;
                a <= l && f <= b
            }
            _ => false,
        }
    }
}

impl fmt::Display for ReservedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x}+{:#x} ({:?})",
            self.start.as_u64(),
            self.size,
            self.kind
        )
    }
}

/// Counters for tests, benchmarks and the demo output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IovaStats {
    /// Pages in the buddy free lists.
    pub free_pages: u64,
    /// Pages held by the per-size caches.
    pub cached_pages: u64,
    /// Live allocations.
    pub live: usize,
    /// Pages in live allocations.
    pub live_pages: u64,
}

/// A buddy allocator of IOVA pages with per-size caches (see the module documentation).
///
/// Not synchronised: a domain wraps it in its own lock.
pub struct IovaAllocator {
    first_pfn: u64,
    last_pfn: u64,
    reserved: Vec<ReservedRegion>,
    /// `free[k]`: start pfns, shifted right by `k`, of free blocks of `2^k` pages (naturally
    /// aligned).
    free: Vec<RadixSet>,
    /// start pfn → page count of every live allocation.
    live: RadixMap,
    /// `magazines[n - 1]`: cached free ranges of exactly `n` pages (start pfns).
    magazines: Vec<Vec<u64>>,
    free_pages: u64,
    cached_pages: u64,
    live_pages: u64,
}

impl fmt::Debug for IovaAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaAllocator")
            .field("start", &(self.first_pfn << PAGE_SHIFT))
            .field("last_page", &(self.last_pfn << PAGE_SHIFT))
            .field("stats", &self.stats())
            .finish()
    }
}

fn order_of(pages: u64) -> u32 {
    // pages >= 1; ceil(log2(pages)).
    64 - (pages - 1).leading_zeros()
}

impl IovaAllocator {
    /// An allocator for the pages in `[start, end]` (`end` inclusive, e.g. `2^39 - 1`), minus the
    /// pages touched by `reserved`. `start` is rounded up and `end` down to whole pages.
    ///
    /// Nothing is reserved implicitly; [`crate::DmaDomain`] adds page 0 and the interrupt window.
    ///
    /// # Errors
    ///
    /// [`DmaError::InvalidConfig`] when `[start, end]` minus the reserved regions holds no whole
    /// page.
    pub fn new(
        start: DmaAddr,
        end: DmaAddr,
        reserved: &[ReservedRegion],
    ) -> Result<Self, DmaError> {
        let first_pfn = start.as_u64().div_ceil(PAGE_SIZE);
        let last_pfn = match last_whole_pfn(end.as_u64()) {
            Some(p) if p >= first_pfn => p,
            _ => return Err(DmaError::InvalidConfig("IOVA space holds no whole page")),
        };
        let mut holes: Vec<(u64, u64)> = reserved.iter().filter_map(ReservedRegion::pfns).collect();
        holes.sort_unstable();
        let mut a = Self {
            first_pfn,
            last_pfn,
            reserved: reserved.to_vec(),
            free: (0..=MAX_ORDER)
                .map(|k| RadixSet::new(last_pfn >> k))
                .collect(),
            live: RadixMap::new(last_pfn),
            magazines: (0..MAGAZINE_MAX_PAGES).map(|_| Vec::new()).collect(),
            free_pages: 0,
            cached_pages: 0,
            live_pages: 0,
        };
        let mut cursor = first_pfn; // next pfn not yet decided
        for (hf, hl) in holes {
            if hl < cursor {
                continue;
            }
            if hf > cursor {
                a.release(cursor, hf.min(last_pfn + 1) - cursor);
            }
            if hl >= last_pfn {
                cursor = last_pfn + 1;
                break;
            }
            cursor = cursor.max(hl + 1);
        }
        if cursor <= last_pfn {
            a.release(cursor, last_pfn + 1 - cursor);
        }
        Ok(a)
    }

    /// The reserved regions given at creation.
    pub fn reserved(&self) -> &[ReservedRegion] {
        &self.reserved
    }

    /// Whether any byte of `[addr, addr + len)` is reserved or outside the managed space.
    pub fn is_reserved(&self, addr: DmaAddr, len: u64) -> bool {
        let a = addr.as_u64();
        let outside = len == 0
            || a >> PAGE_SHIFT < self.first_pfn
            || a.checked_add(len - 1)
                .is_none_or(|l| l >> PAGE_SHIFT > self.last_pfn);
        outside || self.reserved.iter().any(|r| r.overlaps(a, len))
    }

    /// Allocates `size` bytes (a non-zero multiple of 4 KiB) of IOVA whose last byte is at most
    /// `limit`. The result is aligned to `size` rounded up to a power of two.
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: [`DmaError::ZeroLength`], [`DmaError::Misaligned`] when `size`
    /// is not a multiple of 4 KiB, [`DmaError::IovaExhausted`] when no free range of that size lies
    /// at or below `limit`.
    pub fn alloc(&mut self, size: u64, limit: DmaAddr) -> Result<DmaAddr, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroLength);
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "IOVA size",
                value: size,
                align: PAGE_SIZE,
            });
        }
        let pages = size >> PAGE_SHIFT;
        let exhausted = DmaError::IovaExhausted { size };
        let limit_pfn = match last_whole_pfn(limit.as_u64()) {
            Some(l) => l.min(self.last_pfn),
            None => return Err(exhausted),
        };
        if pages > (1 << MAX_ORDER) {
            return Err(exhausted);
        }
        let pfn = match self.pop_magazine(pages, limit_pfn) {
            Some(p) => p,
            None => match self.alloc_buddy(pages, limit_pfn) {
                Some(p) => p,
                None => {
                    if self.cached_pages == 0 {
                        return Err(exhausted);
                    }
                    self.drain_caches();
                    self.alloc_buddy(pages, limit_pfn).ok_or(exhausted)?
                }
            },
        };
        self.live.insert(pfn, pages);
        self.live_pages += pages;
        Ok(DmaAddr::new(pfn << PAGE_SHIFT))
    }

    /// The first page number of the live allocation `(addr, size)`: `addr` must start a live
    /// allocation and `size` be its size exactly.
    fn check_live(&self, addr: DmaAddr, size: u64) -> Result<u64, DmaError> {
        let a = addr.as_u64();
        let pfn = a >> PAGE_SHIFT;
        match self.live.get(pfn) {
            Some(pages) if a.is_multiple_of(PAGE_SIZE) && pages << PAGE_SHIFT == size => Ok(pfn),
            Some(pages) if a.is_multiple_of(PAGE_SIZE) => Err(DmaError::SizeMismatch {
                addr: a,
                mapped: pages << PAGE_SHIFT,
                given: size,
            }),
            _ => Err(DmaError::NotMapped { addr: a }),
        }
    }

    /// Frees exactly the range `alloc` returned: `addr` must be the start of a live allocation and
    /// `size` its size. A double free or a wrong size is an error and changes nothing.
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: [`DmaError::NotMapped`] when `addr` starts no live allocation
    /// (double free), [`DmaError::SizeMismatch`] when `size` is not its size.
    pub fn free(&mut self, addr: DmaAddr, size: u64) -> Result<(), DmaError> {
        let a = addr.as_u64();
        let pfn = a >> PAGE_SHIFT;
        // One walk of the live record: remove, and put back on a size mismatch (the emptied
        // nodes are kept, so that allocates nothing and the error changes nothing).
        let pages = match self.live.remove(pfn) {
            Some(pages) if a.is_multiple_of(PAGE_SIZE) && pages << PAGE_SHIFT == size => pages,
            Some(pages) => {
                self.live.insert(pfn, pages);
                return Err(self
                    .check_live(addr, size)
                    .err()
                    .unwrap_or(DmaError::NotMapped { addr: a }));
            }
            None => return Err(DmaError::NotMapped { addr: a }),
        };
        self.live_pages -= pages;
        if pages <= MAGAZINE_MAX_PAGES {
            let mag = &mut self.magazines[(pages - 1) as usize];
            if mag.len() < MAGAZINE_CAPACITY {
                mag.push(pfn);
                self.cached_pages += pages;
                return Ok(());
            }
        }
        self.release_allocation(pfn, pages);
        Ok(())
    }

    /// Frees the live allocation `(addr, size)` except the sub-ranges in `keep`, which stay
    /// allocated for ever, each as a live allocation of its own (they are leaked on purpose:
    /// page-table entries that could not be removed still point into them). `keep` entries are
    /// clipped to the allocation and rounded out to whole pages; they may overlap and come in any
    /// order. Errors (nothing changed) as [`IovaAllocator::free`].
    pub(crate) fn free_keeping(
        &mut self,
        addr: DmaAddr,
        size: u64,
        keep: &[(DmaAddr, u64)],
    ) -> Result<(), DmaError> {
        if keep.is_empty() {
            return self.free(addr, size);
        }
        let pfn = self.check_live(addr, size)?;
        let end = pfn + (size >> PAGE_SHIFT);
        // Kept page ranges `[first, end)`, clipped, sorted and merged.
        let mut kept: Vec<(u64, u64)> = keep
            .iter()
            .filter(|&&(_, len)| len > 0)
            .map(|&(k, len)| {
                let k = k.as_u64();
                let first = (k >> PAGE_SHIFT).clamp(pfn, end);
                let last = (k.saturating_add(len - 1) >> PAGE_SHIFT).saturating_add(1);
                (first, last.clamp(pfn, end))
            })
            .filter(|&(s, e)| s < e)
            .collect();
        kept.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(kept.len());
        for (s, e) in kept {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.live.remove(pfn);
        self.live_pages -= end - pfn;
        let mut cursor = pfn;
        for (s, e) in merged {
            if s > cursor {
                self.release(cursor, s - cursor);
            }
            self.live.insert(s, e - s);
            self.live_pages += e - s;
            cursor = e;
        }
        if cursor < end {
            self.release(cursor, end - cursor);
        }
        Ok(())
    }

    /// The live allocation containing `addr`, as `(start, size)`.
    pub fn lookup(&self, addr: DmaAddr) -> Option<(DmaAddr, u64)> {
        let pfn = addr.as_u64() >> PAGE_SHIFT;
        let (s, n) = self.live.at_or_before(pfn)?;
        (pfn < s + n).then(|| (DmaAddr::new(s << PAGE_SHIFT), n << PAGE_SHIFT))
    }

    /// Returns every cached range to the buddy lists (so they can merge), and frees the live
    /// record's emptied nodes (kept until now so that a steady alloc+free cycle does not touch
    /// the heap).
    pub fn drain_caches(&mut self) {
        self.live.prune();
        for set in &mut self.free {
            set.prune();
        }
        for n in 1..=MAGAZINE_MAX_PAGES {
            let mag = core::mem::take(&mut self.magazines[(n - 1) as usize]);
            for pfn in mag {
                self.release(pfn, n);
            }
        }
        self.cached_pages = 0;
    }

    /// Current counters.
    pub fn stats(&self) -> IovaStats {
        IovaStats {
            free_pages: self.free_pages,
            cached_pages: self.cached_pages,
            live: self.live.len(),
            live_pages: self.live_pages,
        }
    }

    /// Total pages managed (free + cached + live), constant over the allocator's life.
    pub fn total_pages(&self) -> u64 {
        self.free_pages + self.cached_pages + self.live_pages
    }

    fn pop_magazine(&mut self, pages: u64, limit_pfn: u64) -> Option<u64> {
        if pages > MAGAZINE_MAX_PAGES {
            return None;
        }
        let mag = &mut self.magazines[(pages - 1) as usize];
        let len = mag.len();
        let lo = len.saturating_sub(MAGAZINE_PROBE);
        let idx = (lo..len).rev().find(|&i| mag[i] + pages - 1 <= limit_pfn)?;
        let pfn = mag.swap_remove(idx);
        self.cached_pages -= pages;
        Some(pfn)
    }

    /// Best fit by order, top-down within the order: the smallest order that has a block able to
    /// hold an aligned `2^k` sub-block at or below `limit_pfn`, and in it the highest position.
    fn alloc_buddy(&mut self, pages: u64, limit_pfn: u64) -> Option<u64> {
        let k = order_of(pages);
        let want = 1u64 << k;
        if limit_pfn.checked_add(1)? < want {
            return None;
        }
        // Highest aligned 2^k position whose last page is <= limit_pfn.
        let top_pos = (limit_pfn + 1 - want) & !(want - 1);
        for j in k..=MAX_ORDER {
            let bsize = 1u64 << j;
            if self.free[j as usize].is_empty() {
                continue;
            }
            // (a) the highest block entirely below the limit.
            let a = if limit_pfn + 1 >= bsize {
                self.free[j as usize]
                    .at_or_before((limit_pfn + 1 - bsize) >> j)
                    .map(|b| b << j)
            } else {
                None
            };
            // (b) the block straddling the limit, if free: use its part below the limit.
            let s = limit_pfn & !(bsize - 1);
            let b = (s + bsize - 1 > limit_pfn
                && top_pos >= s
                && self.free[j as usize].contains(s >> j))
            .then_some(s);
            let choice = match (a, b) {
                (_, Some(s)) => Some((s, top_pos)), // b's position is the highest possible
                (Some(s), None) => Some((s, s + bsize - want)),
                (None, None) => None,
            };
            if let Some((block, pos)) = choice {
                self.free[j as usize].remove(block >> j);
                self.free_pages -= bsize;
                // Split down to order k, keeping the halves that do not contain `pos` free.
                let mut s = block;
                let mut o = j;
                while o > k {
                    o -= 1;
                    let half = 1u64 << o;
                    if pos >= s + half {
                        self.free[o as usize].insert(s >> o);
                        s += half;
                    } else {
                        self.free[o as usize].insert((s + half) >> o);
                    }
                    self.free_pages += half;
                }
                debug_assert_eq!(s, pos);
                if pages < want {
                    self.release_tail(pos + pages, want - pages);
                }
                return Some(pos);
            }
        }
        None
    }

    /// The maximal aligned blocks of `[pfn, pfn + pages)`, lowest first, as `(start, order)`.
    fn blocks(mut pfn: u64, pages: u64) -> impl Iterator<Item = (u64, u32)> + Clone {
        let end = pfn + pages;
        core::iter::from_fn(move || {
            if pfn >= end {
                return None;
            }
            let align = if pfn == 0 {
                MAX_ORDER
            } else {
                pfn.trailing_zeros().min(MAX_ORDER)
            };
            let o = align.min(63 - (end - pfn).leading_zeros());
            let b = (pfn, o);
            pfn += 1 << o;
            Some(b)
        })
    }

    /// Puts the unused tail `[pfn, pfn + pages)` of a block just split for an allocation into
    /// the buddy lists without trying to merge: the buddy of each of its maximal blocks lies in
    /// the same split block, inside the allocation or the tail itself, and two maximal blocks of
    /// one range are never buddies (they differ in size).
    fn release_tail(&mut self, pfn: u64, pages: u64) {
        for (b, o) in Self::blocks(pfn, pages) {
            self.free[o as usize].insert(b >> o);
            self.free_pages += 1 << o;
        }
    }

    /// Frees the buddy-path allocation `[pfn, pfn + pages)`. When the tail its `2^k` block gave
    /// back at allocation is still wholly free, the tail's blocks are taken back and the whole
    /// block is freed at once (one merge cascade instead of inserting pieces that merge again at
    /// once); otherwise the range is released piece by piece.
    fn release_allocation(&mut self, pfn: u64, pages: u64) {
        let want = 1u64 << order_of(pages);
        if pages == want || !pfn.is_multiple_of(want) {
            self.release(pfn, pages);
            return;
        }
        let tail = Self::blocks(pfn + pages, want - pages);
        for (taken, (b, o)) in tail.clone().enumerate() {
            if !self.free[o as usize].remove(b >> o) {
                // Part of the tail is allocated or cached: put back what was taken.
                for (b, o) in tail.take(taken) {
                    self.free[o as usize].insert(b >> o);
                }
                self.release(pfn, pages);
                return;
            }
        }
        self.free_pages -= want - pages;
        self.free_block(pfn, order_of(pages));
    }

    /// Puts `[pfn, pfn + pages)` into the buddy lists as maximal aligned blocks, merging buddies.
    fn release(&mut self, pfn: u64, pages: u64) {
        for (b, o) in Self::blocks(pfn, pages) {
            self.free_block(b, o);
        }
    }

    fn free_block(&mut self, mut pfn: u64, mut o: u32) {
        self.free_pages += 1 << o;
        while o < MAX_ORDER {
            let buddy = pfn ^ (1 << o);
            if !self.free[o as usize].remove(buddy >> o) {
                break;
            }
            pfn = pfn.min(buddy);
            o += 1;
        }
        self.free[o as usize].insert(pfn >> o);
    }

    /// Checks the internal invariants (tests only): free blocks aligned, disjoint, inside the
    /// space, off reserved pages, and the page accounting adds up.
    #[cfg(any(test, feature = "testing"))]
    pub fn check_invariants(&self) {
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        let mut sum = 0;
        for (o, set) in self.free.iter().enumerate() {
            let mut starts = Vec::new();
            set.for_each(|k| starts.push(k << o));
            for s in starts {
                assert_eq!(
                    s & ((1 << o) - 1),
                    0,
                    "free block {s:#x} not aligned to order {o}"
                );
                blocks.push((s, 1 << o));
                sum += 1u64 << o;
            }
        }
        for (n, mag) in self.magazines.iter().enumerate() {
            for &s in mag {
                blocks.push((s, n as u64 + 1));
            }
        }
        self.live.for_each(|s, n| blocks.push((s, n)));
        assert_eq!(sum, self.free_pages);
        blocks.sort_unstable();
        for w in blocks.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {:x?} {:x?}", w[0], w[1]);
        }
        for &(s, n) in &blocks {
            assert!(s >= self.first_pfn && s + n - 1 <= self.last_pfn);
            assert!(!self.is_reserved(DmaAddr::new(s << PAGE_SHIFT), n << PAGE_SHIFT));
        }
    }
}

/// The last pfn whose page lies entirely at or below `limit`.
fn last_whole_pfn(limit: u64) -> Option<u64> {
    if limit & (PAGE_SIZE - 1) == PAGE_SIZE - 1 {
        Some(limit >> PAGE_SHIFT)
    } else {
        (limit >> PAGE_SHIFT).checked_sub(1)
    }
}

#[cfg(test)]
mod tests;
