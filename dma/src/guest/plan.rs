//! Leaf planning: how a GPA→HPA range splits into 4 KiB, 2 MiB and 1 GiB leaf entries
//! (VT-d spec §3.6 second-level translation, §9.8 leaf entries with PS = 1).
//!
//! The rule, why it predicts both domains' tables, and the closed form of the counts are
//! documented in [the module `guest`](crate::guest#leaf-planning), where the published docs
//! show them.

use core::ops::{Add, AddAssign};

use crate::addr::PAGE_SIZE;
use crate::iommu::PageSizes;

use super::GuestError;

/// 2 MiB.
pub(crate) const SIZE_2M: u64 = 1 << 21;
/// 1 GiB.
pub(crate) const SIZE_1G: u64 = 1 << 30;

/// One leaf-sized piece of a GPA→HPA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Guest-physical address (the IOVA) of the leaf; aligned to `size`.
    pub gpa: u64,
    /// Host-physical address it translates to; aligned to `size`.
    pub hpa: u64,
    /// Leaf size: 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
}

/// Leaf counts of a plan: how many 4 KiB, 2 MiB and 1 GiB entries it writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeafCounts {
    /// 4 KiB leaves.
    pub k4: u64,
    /// 2 MiB leaves.
    pub m2: u64,
    /// 1 GiB leaves.
    pub g1: u64,
}

impl LeafCounts {
    /// All leaves, whatever their size.
    pub fn total(&self) -> u64 {
        self.k4 + self.m2 + self.g1
    }

    /// Bytes the leaves cover.
    pub fn bytes(&self) -> u64 {
        self.k4 * PAGE_SIZE + self.m2 * SIZE_2M + self.g1 * SIZE_1G
    }

    /// Adds `n` leaves of `size` (one of the three sizes).
    pub(crate) fn add_leaves(&mut self, size: u64, n: u64) {
        match size {
            SIZE_1G => self.g1 += n,
            SIZE_2M => self.m2 += n,
            _ => self.k4 += n,
        }
    }

    /// `self - other`, saturating (callers subtract only what is part of `self`).
    pub(crate) fn minus(self, other: LeafCounts) -> LeafCounts {
        LeafCounts {
            k4: self.k4.saturating_sub(other.k4),
            m2: self.m2.saturating_sub(other.m2),
            g1: self.g1.saturating_sub(other.g1),
        }
    }
}

impl Add for LeafCounts {
    type Output = LeafCounts;

    fn add(self, o: LeafCounts) -> LeafCounts {
        LeafCounts {
            k4: self.k4 + o.k4,
            m2: self.m2 + o.m2,
            g1: self.g1 + o.g1,
        }
    }
}

impl AddAssign for LeafCounts {
    fn add_assign(&mut self, o: LeafCounts) {
        *self = *self + o;
    }
}

/// The allowed leaf sizes, largest first (4 KiB always; unknown bits of `sizes` ignored).
fn allowed(sizes: PageSizes) -> impl Iterator<Item = u64> + Clone {
    [
        (PageSizes::SIZE_1G, SIZE_1G),
        (PageSizes::SIZE_2M, SIZE_2M),
        (PageSizes::SIZE_4K, PAGE_SIZE),
    ]
    .into_iter()
    .filter(move |&(flag, size)| size == PAGE_SIZE || sizes.contains(flag))
    .map(|(_, size)| size)
}

/// Checks a GPA→HPA range: 4 KiB granular, non-empty, neither end overflowing.
pub(crate) fn check_range(gpa: u64, hpa: u64, len: u64) -> Result<(), GuestError> {
    if len == 0 {
        return Err(GuestError::ZeroLength);
    }
    for (what, value) in [("gpa", gpa), ("hpa", hpa), ("len", len)] {
        if !value.is_multiple_of(PAGE_SIZE) {
            return Err(GuestError::Misaligned { what, value });
        }
    }
    for (what, addr) in [("gpa", gpa), ("hpa", hpa)] {
        if addr.checked_add(len).is_none() {
            return Err(GuestError::Overflow { what, addr, len });
        }
    }
    Ok(())
}

/// The greedy walk of [`plan_chunks`].
#[derive(Debug, Clone)]
struct Plan {
    gpa: u64,
    hpa: u64,
    left: u64,
    sizes: PageSizes,
}

impl Iterator for Plan {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.left == 0 {
            return None;
        }
        // 4 KiB always qualifies (the range is 4 KiB granular), so `find` never fails.
        let size = allowed(self.sizes)
            .find(|&s| self.gpa.is_multiple_of(s) && self.hpa.is_multiple_of(s) && s <= self.left)
            .unwrap_or(PAGE_SIZE);
        let chunk = Chunk {
            gpa: self.gpa,
            hpa: self.hpa,
            size,
        };
        // No overflow: `check_range` proved `gpa + len` and `hpa + len` fit.
        self.gpa += size;
        self.hpa += size;
        self.left -= size;
        Some(chunk)
    }
}

impl core::iter::FusedIterator for Plan {}

/// Splits `[gpa, gpa + len)` → `[hpa, hpa + len)` into leaves, greedily the largest size in
/// `sizes` (4 KiB always) whose alignment both addresses share at that point and that fits in
/// what remains: the rule of both domains (see [the module `guest`](crate::guest#leaf-planning)), so the plan
/// predicts the table a map writes. Yields the chunks in address order; they tile the range.
///
/// # Errors
///
/// [`GuestError::ZeroLength`], [`GuestError::Misaligned`] (an address or `len` not a 4 KiB
/// multiple), [`GuestError::Overflow`] (`gpa + len` or `hpa + len` beyond 64 bits).
pub fn plan_chunks(
    gpa: u64,
    hpa: u64,
    len: u64,
    sizes: PageSizes,
) -> Result<impl Iterator<Item = Chunk>, GuestError> {
    check_range(gpa, hpa, len)?;
    Ok(Plan {
        gpa,
        hpa,
        left: len,
        sizes,
    })
}

/// A run of equal leaves of a plan: `count` leaves of `size` from `gpa` / `hpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub gpa: u64,
    pub hpa: u64,
    pub size: u64,
    pub count: u64,
}

impl Run {
    fn end(&self) -> u64 {
        self.gpa + self.size * self.count
    }
}

/// At most `2 * 3 - 1` runs (rising through three sizes, falling back through two).
const MAX_RUNS: usize = 5;

/// The runs of a plan, in address order (closed form, see the module documentation). The range
/// must have passed [`check_range`].
fn runs(gpa: u64, hpa: u64, len: u64, sizes: PageSizes) -> ([Run; MAX_RUNS], usize) {
    // The usable sizes, smallest first: a size both addresses can ever be aligned to at once.
    let mut usable = [0u64; 3];
    let mut n = 0;
    for s in allowed(sizes) {
        if (gpa ^ hpa) & (s - 1) == 0 {
            usable[n] = s;
            n += 1;
        }
    }
    usable[..n].reverse();
    let usable = &usable[..n];

    let end = gpa + len;
    let mut out = [Run {
        gpa: 0,
        hpa: 0,
        size: 0,
        count: 0,
    }; MAX_RUNS];
    let mut k = 0;
    let mut push = |p: u64, size: u64, count: u64| {
        if count > 0 {
            out[k] = Run {
                gpa: p,
                hpa: hpa + (p - gpa),
                size,
                count,
            };
            k += 1;
        }
    };
    let mut p = gpa;
    let mut i = 0;
    // Rising: pieces of usable[i] up to the next usable[i + 1] boundary while it is in range.
    while i + 1 < usable.len() {
        let next = usable[i + 1];
        let boundary = p.checked_add((next - p % next) % next);
        match boundary {
            Some(b) if b <= end => {
                push(p, usable[i], (b - p) / usable[i]);
                p = b;
                i += 1;
            }
            _ => break,
        }
    }
    // Falling: as many of the current size as fit, then the next smaller one.
    loop {
        let s = usable[i];
        let count = (end - p) / s;
        push(p, s, count);
        p += count * s;
        if i == 0 {
            break;
        }
        i -= 1;
    }
    debug_assert_eq!(p, end, "4 KiB leaves finish every 4 KiB granular range");
    (out, k)
}

/// Leaf counts of [`plan_chunks`]`(gpa, hpa, len, sizes)`, in O(number of size changes): the
/// closed form of the module documentation, never a walk over the chunks.
///
/// # Errors
///
/// Those of [`plan_chunks`].
pub fn count_leaves(
    gpa: u64,
    hpa: u64,
    len: u64,
    sizes: PageSizes,
) -> Result<LeafCounts, GuestError> {
    check_range(gpa, hpa, len)?;
    let (runs, n) = runs(gpa, hpa, len, sizes);
    let mut counts = LeafCounts::default();
    for r in &runs[..n] {
        counts.add_leaves(r.size, r.count);
    }
    Ok(counts)
}

/// The leaf of the plan of a (valid) range that contains `point` (`gpa <= point < gpa + len`).
pub(crate) fn leaf_at(gpa: u64, hpa: u64, len: u64, sizes: PageSizes, point: u64) -> Chunk {
    let (runs, n) = runs(gpa, hpa, len, sizes);
    let run = runs[..n]
        .iter()
        .find(|r| point < r.end())
        .copied()
        .unwrap_or_else(|| runs[n.saturating_sub(1)]);
    let index = (point.saturating_sub(run.gpa) / run.size).min(run.count - 1);
    Chunk {
        gpa: run.gpa + index * run.size,
        hpa: run.hpa + index * run.size,
        size: run.size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: PageSizes = PageSizes::SIZE_4K
        .union(PageSizes::SIZE_2M)
        .union(PageSizes::SIZE_1G);

    #[test]
    fn runs_rise_and_fall() {
        // 4K up to 2M, 2M up to 1G, 1G, then 2M and 4K at the tail.
        let gpa = SIZE_1G - SIZE_2M - PAGE_SIZE;
        let len = PAGE_SIZE + SIZE_2M + 2 * SIZE_1G + SIZE_2M + 3 * PAGE_SIZE;
        let (r, n) = runs(gpa, gpa, len, ALL);
        let sizes: alloc::vec::Vec<(u64, u64)> = r[..n].iter().map(|r| (r.size, r.count)).collect();
        assert_eq!(
            sizes,
            [
                (PAGE_SIZE, 1),
                (SIZE_2M, 1),
                (SIZE_1G, 2),
                (SIZE_2M, 1),
                (PAGE_SIZE, 3)
            ]
        );
    }

    #[test]
    fn leaf_at_finds_the_containing_leaf() {
        let (g, h, len) = (SIZE_2M - PAGE_SIZE, SIZE_2M - PAGE_SIZE, 3 * SIZE_2M);
        for c in plan_chunks(g, h, len, ALL).unwrap() {
            for p in [c.gpa, c.gpa + c.size / 2, c.gpa + c.size - 1] {
                assert_eq!(leaf_at(g, h, len, ALL, p), c);
            }
        }
    }
}
