//! [`GuestSpace`]: the live GPA→HPA mappings of one VM over one IOMMU domain, whose IOVA is the
//! guest-physical address (VT-d spec §3.6: the second-level table of the domain the VM's devices
//! are attached to translates GPA to HPA).
//!
//! Why it is shaped as it is (superpage splits refused, strict invalidation, its lock) is
//! documented on [`GuestSpace`] itself, where the published docs show it.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::Mutex;

use crate::addr::{DmaAddr, PhysAddr};
use crate::iommu::{DomainInfo, IommuDomain, IotlbGather, Prot};

use super::memory_map::GuestMemoryMap;
#[cfg(doc)]
use super::plan::plan_chunks;
use super::plan::{check_range, count_leaves, leaf_at, LeafCounts};
use super::{check_prot, msi_overlap, GuestError};

/// One live mapping of a [`GuestSpace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMapping {
    /// First guest-physical address.
    pub gpa: u64,
    /// Host-physical address of `gpa`.
    pub hpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Rights (as given to the domain).
    pub prot: Prot,
    /// The leaves its plan has ([`count_leaves`] with the domain's page sizes).
    pub leaves: LeafCounts,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    hpa: u64,
    len: u64,
    prot: Prot,
    leaves: LeafCounts,
}

impl Record {
    fn mapping(&self, gpa: u64) -> GuestMapping {
        GuestMapping {
            gpa,
            hpa: self.hpa,
            len: self.len,
            prot: self.prot,
            leaves: self.leaves,
        }
    }
}

#[derive(Default)]
struct State {
    /// Live mappings by first GPA; sorted and non-overlapping.
    maps: BTreeMap<u64, Record>,
    /// Ranges unmapped whose invalidation failed: held back until a flush completes.
    pending: Vec<(u64, u64)>,
    /// Sum of the live mappings' leaves.
    leaves: LeafCounts,
}

impl State {
    /// The lowest live mapping overlapping `[gpa, end)`.
    fn first_overlap(&self, gpa: u64, end: u64) -> Option<u64> {
        if let Some((&s, r)) = self.maps.range(..=gpa).next_back() {
            if s + r.len > gpa {
                return Some(s);
            }
        }
        self.maps.range(gpa..end).next().map(|(&s, _)| s)
    }

    fn insert(&mut self, gpa: u64, rec: Record) {
        self.leaves += rec.leaves;
        self.maps.insert(gpa, rec);
    }

    fn remove(&mut self, gpa: u64) -> Option<Record> {
        let rec = self.maps.remove(&gpa)?;
        self.leaves = self.leaves.minus(rec.leaves);
        Some(rec)
    }
}

/// A guest-physical address space over one IOMMU domain: the domain's IOVA is the guest's GPA.
/// Internally synchronised; `Send + Sync`.
///
/// # Why unmap refuses to split a superpage
///
/// Unmapping part of a 2 MiB or 1 GiB leaf would mean replacing the leaf by a table of smaller
/// leaves. Done in place, that is either a window in which the rest of the superpage is not
/// mapped (a DMA to memory the guest still owns faults) or an atomic swap of the entry for a
/// prepared table plus an invalidation of the old leaf: more machinery than a hypervisor needs,
/// because it knows in advance where it will punch holes (balloon pages, MMIO it will move).
/// So [`GuestSpace::unmap`] accepts any range that starts and ends on leaf boundaries of the
/// mappings it touches (whole superpages, any 4 KiB leaves) and refuses the rest with
/// [`GuestError::SplitsSuperpage`]; where holes will be punched, map with 4 KiB alignment (e.g.
/// an HPA offset that is not 2 MiB aligned relative to the GPA, or separate smaller mappings).
/// The leaf boundaries are those of the mapping's plan ([`plan_chunks`]); a partial unmap leaves
/// the remainders as mappings whose plans are the original plan's leaves (a greedy plan of a
/// prefix or suffix cut at a leaf boundary is the same leaves).
///
/// # Invalidation
///
/// Every unmap is strict: the domain's IOTLB flush has completed before the call returns, so a
/// device can no longer reach the old HPAs. If the flush fails, the GPAs are held back (see
/// [`GuestError::FlushFailed`]) and every later flush retries them.
///
/// # Locking
///
/// The space's state is one `spin::Mutex`, **held across the calls into the domain**, so that the
/// check (overlap, coverage, leaf boundaries) and the change it permits are one step and a
/// failed [`GuestSpace::populate`] can unwind exactly what it did. This is a documented exception
/// to the crate's rule of never holding a lock across [`IommuDomain`] calls (like an export's
/// state lock): the domain's locks are leaves that never call back, and a VM's memory-map
/// changes are rare and serialised anyway. Different spaces never contend.
pub struct GuestSpace {
    domain: Arc<dyn IommuDomain>,
    info: DomainInfo,
    st: Mutex<State>,
}

impl core::fmt::Debug for GuestSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let st = self.st.lock();
        f.debug_struct("GuestSpace")
            .field("info", &self.info)
            .field("mappings", &st.maps.len())
            .field("leaves", &st.leaves)
            .field("held_back", &st.pending.len())
            .finish()
    }
}

impl GuestSpace {
    /// An empty space over `domain` (which should have no mappings of its own: the space
    /// refuses overlaps only with what it mapped; the domain refuses the rest).
    pub fn new(domain: Arc<dyn IommuDomain>) -> Self {
        let info = domain.info();
        Self {
            domain,
            info,
            st: Mutex::new(State::default()),
        }
    }

    /// The domain (to attach it to the VM's devices).
    pub fn domain(&self) -> &Arc<dyn IommuDomain> {
        &self.domain
    }

    /// Maps `[gpa, gpa + len)` to `[hpa, hpa + len)` with `prot`: one `domain.map` call for the
    /// whole range (the domain picks the leaves, as [`plan_chunks`] predicts), then one
    /// `domain.sync_map`. Returns the mapping with its predicted leaf counts.
    ///
    /// # Errors
    ///
    /// Nothing is changed: [`GuestError::ZeroLength`], [`GuestError::Misaligned`],
    /// [`GuestError::Overflow`], [`GuestError::BadProt`] (no READ/WRITE, unknown bits, MMIO
    /// with CACHE), [`GuestError::MsiWindow`], [`GuestError::OutsideAperture`],
    /// [`GuestError::OutputBeyondLimit`], [`GuestError::Overlap`] (with a live mapping of this
    /// space), [`GuestError::FlushFailed`] (the range is held back after a failed invalidation
    /// and retrying it failed again), [`GuestError::Iommu`] (the domain refused the map, or
    /// `sync_map` failed and the map was undone). [`GuestError::UnwindIncomplete`] when
    /// `sync_map` failed and the undo failed too (the range stays mapped and listed).
    pub fn map(
        &self,
        gpa: u64,
        hpa: u64,
        len: u64,
        prot: Prot,
    ) -> Result<GuestMapping, GuestError> {
        let mut st = self.st.lock();
        self.map_locked(&mut st, gpa, hpa, len, prot)
    }

    fn map_locked(
        &self,
        st: &mut State,
        gpa: u64,
        hpa: u64,
        len: u64,
        prot: Prot,
    ) -> Result<GuestMapping, GuestError> {
        check_range(gpa, hpa, len)?;
        check_prot(prot)?;
        if msi_overlap(gpa, len) {
            return Err(GuestError::MsiWindow { gpa, len });
        }
        let aperture_end = self.info.aperture_end.as_u64();
        if gpa + (len - 1) > aperture_end {
            return Err(GuestError::OutsideAperture {
                gpa,
                len,
                aperture_end,
            });
        }
        let output_limit = self.info.output_limit;
        if hpa + len > output_limit {
            return Err(GuestError::OutputBeyondLimit {
                hpa,
                len,
                output_limit,
            });
        }
        let end = gpa + len;
        if let Some(existing_gpa) = st.first_overlap(gpa, end) {
            return Err(GuestError::Overlap { gpa, existing_gpa });
        }
        if st.pending.iter().any(|&(a, b)| a < end && gpa < b) {
            self.flush(st, IotlbGather::new())?;
        }
        let leaves = count_leaves(gpa, hpa, len, self.info.page_sizes)?;
        self.domain
            .map(DmaAddr::new(gpa), PhysAddr::new(hpa), len, prot)?;
        let rec = Record {
            hpa,
            len,
            prot,
            leaves,
        };
        if let Err(e) = self.domain.sync_map(DmaAddr::new(gpa), len) {
            let mut gather = IotlbGather::new();
            if let Err(cause) = self.domain.unmap(DmaAddr::new(gpa), len, &mut gather) {
                let _ = self.domain.flush(gather);
                st.insert(gpa, rec);
                return Err(GuestError::UnwindIncomplete { gpa, len, cause });
            }
            st.pending.push((gpa, end));
            self.flush(st, gather)?;
            return Err(GuestError::Iommu(e));
        }
        st.insert(gpa, rec);
        Ok(rec.mapping(gpa))
    }

    /// Flushes `gather` plus every held-back range; on success nothing is held back any more.
    /// On failure the ranges in `st.pending` stay held back (the caller adds its own first).
    fn flush(&self, st: &mut State, mut gather: IotlbGather) -> Result<(), GuestError> {
        for &(a, b) in &st.pending {
            gather.add(DmaAddr::new(a), b - a);
        }
        match self.domain.flush(gather) {
            Ok(()) => {
                st.pending.clear();
                Ok(())
            }
            Err(cause) => {
                // The caller's own range is the last one held back.
                let (a, b) = st.pending.last().copied().unwrap_or((0, 0));
                Err(GuestError::FlushFailed {
                    gpa: a,
                    len: b - a,
                    cause,
                })
            }
        }
    }

    /// Unmaps `[gpa, gpa + len)`, strictly: the IOTLB invalidation has completed when it
    /// returns. The range must be covered by live mappings (one or several adjacent ones) and
    /// start and end on leaf boundaries of their plans; cutting a superpage is refused (see
    /// [`GuestSpace`] for why). A partial unmap leaves the remainders as mappings.
    /// One `domain.unmap` for the whole range, one flush. Returns the leaves removed.
    ///
    /// # Errors
    ///
    /// Nothing is changed: [`GuestError::ZeroLength`], [`GuestError::Misaligned`],
    /// [`GuestError::Overflow`], [`GuestError::NotMapped`] (the first GPA of the range no
    /// mapping covers), [`GuestError::SplitsSuperpage`], [`GuestError::Iommu`] (the domain
    /// refused the unmap). [`GuestError::FlushFailed`] when the range was unmapped but the
    /// invalidation failed (the range is held back).
    pub fn unmap(&self, gpa: u64, len: u64) -> Result<LeafCounts, GuestError> {
        check_range(gpa, 0, len)?;
        let end = gpa + len;
        let mut st = self.st.lock();
        let sizes = self.info.page_sizes;

        // Coverage: adjacent mappings from the one containing `gpa` to the one containing
        // `end - 1`; the cut points must be leaf boundaries.
        let (first, frec) = match st.maps.range(..=gpa).next_back() {
            Some((&s, r)) if s + r.len > gpa => (s, *r),
            _ => return Err(GuestError::NotMapped { gpa }),
        };
        let (mut last, mut lrec) = (first, frec);
        while last + lrec.len < end {
            let next = last + lrec.len;
            match st.maps.get(&next) {
                Some(r) => (last, lrec) = (next, *r),
                None => return Err(GuestError::NotMapped { gpa: next }),
            }
        }
        let cuts = [(first, frec, gpa), (last, lrec, end)];
        for (s, r, cut) in cuts {
            if cut > s && cut < s + r.len {
                let leaf = leaf_at(s, r.hpa, r.len, sizes, cut);
                if leaf.gpa != cut {
                    return Err(GuestError::SplitsSuperpage {
                        gpa: cut,
                        leaf_gpa: leaf.gpa,
                        leaf_size: leaf.size,
                    });
                }
            }
        }

        let mut gather = IotlbGather::new();
        self.domain.unmap(DmaAddr::new(gpa), len, &mut gather)?;

        // The table changed: update the records to match, then invalidate.
        let mut removed = LeafCounts::default();
        let mut cur = first;
        while cur < end {
            let Some(rec) = st.remove(cur) else { break };
            let next = cur + rec.len;
            let mut kept = LeafCounts::default();
            for (s, e) in [(cur, gpa), (end, next)] {
                if s < e {
                    let hpa = rec.hpa + (s - cur);
                    // Cannot fail: a 4 KiB granular piece of a valid range.
                    let leaves = count_leaves(s, hpa, e - s, sizes).unwrap_or_default();
                    kept += leaves;
                    st.insert(
                        s,
                        Record {
                            hpa,
                            len: e - s,
                            leaves,
                            ..rec
                        },
                    );
                }
            }
            removed += rec.leaves.minus(kept);
            cur = next;
        }
        st.pending.push((gpa, end));
        self.flush(&mut st, gather)?;
        Ok(removed)
    }

    /// The HPA and rights one GPA translates to, as the domain reports them
    /// (`domain.translate`); `None` when it is not mapped.
    pub fn translate(&self, gpa: u64) -> Option<(u64, Prot)> {
        self.domain
            .translate(DmaAddr::new(gpa))
            .map(|(hpa, prot)| (hpa.as_u64(), prot))
    }

    /// Maps every [`RegionKind::Ram`](super::RegionKind::Ram) and
    /// [`RegionKind::Mmio`](super::RegionKind::Mmio) region of `map` (MMIO with
    /// [`Prot::MMIO`]), all-or-nothing: on error everything this call mapped is unmapped again
    /// (one strict flush). Returns the total leaves mapped.
    ///
    /// # Errors
    ///
    /// Those of [`GuestSpace::map`] for the first region that fails (nothing is left mapped).
    /// If undoing fails: [`GuestError::UnwindIncomplete`] (the regions it names and the ones
    /// mapped before it stay mapped and listed) or [`GuestError::FlushFailed`] (unmapped, held
    /// back).
    pub fn populate(&self, map: &GuestMemoryMap) -> Result<LeafCounts, GuestError> {
        let mut st = self.st.lock();
        let mut total = LeafCounts::default();
        for (i, r) in map.regions().iter().enumerate() {
            let Some(prot) = r.map_prot() else { continue };
            match self.map_locked(&mut st, r.gpa, r.hpa, r.len, prot) {
                Ok(m) => total += m.leaves,
                Err(e) => {
                    self.undo_populate(&mut st, map, i)?;
                    return Err(e);
                }
            }
        }
        Ok(total)
    }

    /// Unmaps the mapped regions of `map` before index `failed`, newest first, one flush.
    fn undo_populate(
        &self,
        st: &mut State,
        map: &GuestMemoryMap,
        failed: usize,
    ) -> Result<(), GuestError> {
        let mut gather = IotlbGather::new();
        let mut stuck = None;
        for r in map.regions()[..failed].iter().rev() {
            if r.map_prot().is_none() {
                continue;
            }
            match self.domain.unmap(DmaAddr::new(r.gpa), r.len, &mut gather) {
                Ok(()) => {
                    st.remove(r.gpa);
                    st.pending.push((r.gpa, r.gpa + r.len));
                }
                Err(cause) => {
                    stuck = Some(GuestError::UnwindIncomplete {
                        gpa: r.gpa,
                        len: r.len,
                        cause,
                    });
                    break;
                }
            }
        }
        self.flush(st, gather)?;
        stuck.map_or(Ok(()), Err)
    }

    /// The live mappings, sorted by GPA.
    pub fn mappings(&self) -> Vec<GuestMapping> {
        self.st
            .lock()
            .maps
            .iter()
            .map(|(&gpa, r)| r.mapping(gpa))
            .collect()
    }

    /// The leaves of all live mappings (the entries the domain's table holds for this space,
    /// as planned).
    pub fn leaves(&self) -> LeafCounts {
        self.st.lock().leaves
    }

    /// Unmaps everything (strictly: one flush at the end), e.g. before the VM is destroyed.
    /// Adjacent mappings are unmapped with one `domain.unmap` call. Returns the leaves removed.
    ///
    /// # Errors
    ///
    /// [`GuestError::Iommu`] when the domain refuses an unmap: the calls before it took effect
    /// (and are flushed), so [`GuestSpace::mappings`] then lists exactly what is still mapped and
    /// `clear` can be retried. [`GuestError::FlushFailed`] when the final invalidation failed
    /// (everything was unmapped, the GPAs are held back).
    pub fn clear(&self) -> Result<LeafCounts, GuestError> {
        let mut st = self.st.lock();
        let mut gather = IotlbGather::new();
        let mut removed = LeafCounts::default();
        let mut refused = None;
        while let Some((&start, _)) = st.maps.iter().next() {
            // The run of adjacent mappings from `start`.
            let mut end = start;
            while let Some(r) = st.maps.get(&end) {
                end += r.len;
            }
            if let Err(e) = self
                .domain
                .unmap(DmaAddr::new(start), end - start, &mut gather)
            {
                refused = Some(GuestError::Iommu(e));
                break;
            }
            let mut cur = start;
            while cur < end {
                let Some(rec) = st.remove(cur) else { break };
                removed += rec.leaves;
                cur += rec.len;
            }
            st.pending.push((start, end));
        }
        self.flush(&mut st, gather)?;
        refused.map_or(Ok(removed), Err)
    }
}
