//! A translation domain: one second-level table, one domain ID, the isolation groups attached.
//!
//! Implements [`dma::iommu::IommuDomain`] over VT-d (§3.6 translation, §6.5 invalidation):
//! map/unmap edit the page table under the domain's own lock; `sync_map` issues the
//! caching-mode page-selective invalidation (CAP.CM = 1: not-present entries may be cached,
//! §6.1) or the write-buffer flush (CAP.RWBF); `flush` turns a gather into page-selective
//! IOTLB invalidations (O(log N) descriptors for N contiguous pages) or one domain-selective
//! one, and returns only after the hardware completed them. A page-table page an unmap unlinks
//! belongs to that unmap's gather; the gather's flush frees exactly its own pages, after an
//! IH = 0 invalidation covering them completed (a gather never flushed leaks them).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use dma::iommu::{DomainInfo, IommuDomain, IommuError, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr, PAGE_SIZE};
use spin::Mutex;

use crate::caps::PagingLevels;
use crate::dmar::Rmrr;
use crate::invalidation::{self, Invalidation};
use crate::pagetable::{Leaf, SecondLevelTable};
use crate::platform::Platform;
use crate::registers::RegisterIo;
use crate::unit::{AssignStats, GroupRef, VtdError, VtdUnit};
use pci_address::RequesterId;

/// A fresh owner token for a domain's table ([`dma::iommu::UnlinkedTable::owner`]): unique for
/// the life of the program, so a gather flushed through the wrong domain cannot free pages.
fn next_table_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How to build a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConfig {
    /// The IOVA width the domain must at least cover; the shallowest advertised depth that does
    /// is chosen (39 → 3-level where available).
    pub min_address_width: u8,
    /// Force a depth (must be advertised in SAGAW); overrides `min_address_width`.
    pub levels: Option<PagingLevels>,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            min_address_width: PagingLevels::Three.address_width(),
            levels: None,
        }
    }
}

#[derive(Debug)]
struct DomainState {
    /// `None` only after `Drop` took it.
    table: Option<SecondLevelTable>,
}

/// A VT-d translation domain. Dropping it detaches every group still attached (groups
/// assigned to it as a whole become quarantined, [`VtdUnit::quarantine_group`]) and frees its
/// tables.
pub struct Domain<R: RegisterIo, P: Platform> {
    unit: Arc<VtdUnit<R, P>>,
    did: u16,
    info: DomainInfo,
    levels: PagingLevels,
    /// Owner token of the unlinked tables this domain's table hands out.
    table_owner: u64,
    state: Mutex<DomainState>,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for Domain<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("did", &self.did)
            .field("levels", &self.levels)
            .field("info", &self.info)
            .finish()
    }
}

impl<R: RegisterIo, P: Platform> Domain<R, P> {
    pub(crate) fn new(unit: Arc<VtdUnit<R, P>>, did: u16, table: SecondLevelTable) -> Self {
        let info = DomainInfo {
            aperture_end: DmaAddr::new(table.aperture_end()),
            page_sizes: table.config().page_sizes,
            output_limit: table.output_limit(),
        };
        let levels = table.levels();
        Self {
            unit,
            did,
            info,
            levels,
            table_owner: table.owner(),
            state: Mutex::new(DomainState { table: Some(table) }),
        }
    }

    /// The domain ID.
    pub fn did(&self) -> u16 {
        self.did
    }

    /// The page-table depth chosen (the context entries' AW).
    pub fn levels(&self) -> PagingLevels {
        self.levels
    }

    /// The unit the domain lives on.
    pub fn unit(&self) -> &Arc<VtdUnit<R, P>> {
        &self.unit
    }

    /// The requester IDs of every attached group (each has a present context entry for this
    /// domain, or had one whose detach did not complete).
    pub fn attached(&self) -> Vec<RequesterId> {
        self.unit.requester_ids_of(self.did)
    }

    /// The keys of the isolation groups attached to this domain.
    pub fn attached_groups(&self) -> Vec<u32> {
        self.unit.groups_of(self.did)
    }

    /// Physical address of the top-level table.
    pub fn table_root(&self) -> Option<PhysAddr> {
        self.state.lock().table.as_ref().map(|t| t.root())
    }

    /// The leaf that translates `iova`: output address, rights and the leaf's size (4K/2M/1G)
    /// and level, read from the table itself (for tests that prove which level was used).
    /// `None` when `iova` is not mapped.
    pub fn leaf(&self, iova: u64) -> Option<Leaf> {
        let state = self.state.lock();
        state.table.as_ref()?.leaf(self.unit.platform(), iova)
    }

    /// Attaches `device` (the member's own requester ID, which identifies it within the
    /// member set) of isolation group `group` to this domain. A domain is attached to a whole
    /// group (SPEC.md: the isolation unit):
    ///
    /// - the group's first member: every requester ID of the group gets a present context
    ///   entry (TT = 00, AW = depth, this DID, SLPTPTR), then the context cache and the
    ///   domain's IOTLB are invalidated before this returns. All-or-nothing up to the
    ///   invalidation: an ID with a context entry or in another group is refused with
    ///   [`VtdError::AlreadyAttached`] before anything is written;
    /// - another member of a group already attached here: the member is added (refcount), no
    ///   hardware change; the same member twice is [`VtdError::AlreadyMember`];
    /// - a group attached to another domain: [`VtdError::GroupAttachedElsewhere`];
    /// - a known key with a different requester-ID set: [`VtdError::GroupRequesterIdsDiffer`];
    /// - a group owned as a whole ([`VtdUnit::assign_group`], pass-through):
    ///   [`VtdError::GroupAssigned`]; a quarantined group, or one sharing a requester ID with
    ///   it: [`VtdError::GroupQuarantined`].
    ///
    /// If the invalidation fails the entries are written and the group stays tracked (so a
    /// detach or the drop can clear them); the next attach of any member (the same device's retry included) completes it first.
    ///
    /// # Errors
    ///
    /// [`VtdError::EmptyGroup`], [`VtdError::DuplicateRequesterId`], [`VtdError::AlreadyAttached`],
    /// [`VtdError::AlreadyMember`], [`VtdError::GroupAttachedElsewhere`],
    /// [`VtdError::GroupRequesterIdsDiffer`], [`VtdError::GroupAssigned`] and
    /// [`VtdError::GroupQuarantined`] as listed above, [`VtdError::NotAMember`] for a device
    /// whose own ID is not among the group's (nothing written);
    /// [`VtdError::OutOfMemory`] when the domain is being dropped or a context table or
    /// bookkeeping cannot be allocated (nothing written); [`VtdError::Timeout`] (write-buffer
    /// flush) or [`VtdError::Invalidation`] after the entries were written (see above).
    pub fn attach_device(&self, group: GroupRef<'_>, device: RequesterId) -> Result<(), VtdError> {
        let state = self.state.lock();
        let Some(table) = state.table.as_ref() else {
            return Err(VtdError::OutOfMemory);
        };
        self.unit.attach_group(self.did, table, group, device)
    }

    /// Removes member `device` from group `group_key`. While other members remain, nothing
    /// changes in hardware (their DMA keeps translating). When the last member goes, every
    /// context entry of the group is cleared and the context cache and the domain's IOTLB are
    /// invalidated before this returns; its DMA then faults (reason 2).
    ///
    /// The last member stays attached (in [`Domain::attached_groups`]) unless this returns
    /// `Ok`: after a failure a context entry, or a cached copy of one, may still point at the
    /// domain's table, so the domain keeps tracking it; a later `detach_device` or the drop
    /// retries (and a drop that cannot complete it leaks the table and the domain ID rather
    /// than free them).
    ///
    /// # Errors
    ///
    /// [`VtdError::GroupNotAttached`] when the group is not attached to this domain,
    /// [`VtdError::NotAMember`] when `device` is not one of its members (nothing changes);
    /// [`VtdError::OutOfMemory`] or [`VtdError::Invalidation`] for the last member, which then
    /// stays attached (see above).
    pub fn detach_device(&self, group_key: u32, device: RequesterId) -> Result<(), VtdError> {
        let _state = self.state.lock();
        self.unit.detach_group_member(self.did, group_key, device)
    }

    /// Identity-maps `[start, end]` (inclusive, rounded out to pages) read/write, then makes it
    /// visible ([`IommuDomain::sync_map`]).
    ///
    /// # Errors
    ///
    /// [`IommuError::Misaligned`] when `end_inclusive` lies in a page before `start`'s or the
    /// range spans the whole address space; otherwise the errors of [`IommuDomain::map`]
    /// (nothing mapped) and of [`IommuDomain::sync_map`] ([`IommuError::InvalidationTimeout`];
    /// the range stays mapped).
    pub fn map_identity(&self, start: u64, end_inclusive: u64) -> Result<(), IommuError> {
        let base = start & !(PAGE_SIZE - 1);
        let last = end_inclusive | (PAGE_SIZE - 1);
        let size = last
            .checked_sub(base)
            .and_then(|s| s.checked_add(1))
            .ok_or(IommuError::Misaligned {
                iova: start,
                paddr: start,
                size: 0,
            })?;
        self.map(
            DmaAddr::new(base),
            PhysAddr::new(base),
            size,
            Prot::READ | Prot::WRITE,
        )?;
        self.sync_map(DmaAddr::new(base), size)
    }

    /// Identity-maps a reserved memory region (RMRR), which the devices in its scope must keep
    /// reaching.
    ///
    /// # Errors
    ///
    /// As [`Domain::map_identity`] for the region's bounds.
    pub fn map_rmrr(&self, rmrr: &Rmrr<'_>) -> Result<(), IommuError> {
        self.map_identity(rmrr.base(), rmrr.limit())
    }

    fn invalidate(&self, requests: &[Invalidation]) -> Result<(), IommuError> {
        self.unit
            .invalidate(requests)
            .map_err(|_| IommuError::InvalidationTimeout)
    }
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Creates a domain: a fresh domain ID and an empty second-level table whose depth is the
    /// shallowest advertised one covering `config.min_address_width` (or `config.levels`).
    ///
    /// # Errors
    ///
    /// [`VtdError::LevelsNotSupported`] when `config.levels` is not advertised in SAGAW,
    /// [`VtdError::NoSuitableAddressWidth`] when no advertised depth covers
    /// `config.min_address_width`, [`VtdError::DomainIdsExhausted`] when every domain ID is in
    /// use, [`VtdError::OutOfMemory`] when the top-level table cannot be allocated.
    pub fn create_domain(self: &Arc<Self>, config: DomainConfig) -> Result<Domain<R, P>, VtdError> {
        let cap = &self.capabilities().cap;
        let levels = match config.levels {
            Some(l) if cap.supports_levels(l) => l,
            Some(l) => return Err(VtdError::LevelsNotSupported(l)),
            None => cap
                .usable_levels()
                .find(|l| l.address_width() >= config.min_address_width)
                .ok_or(VtdError::NoSuitableAddressWidth {
                    requested: config.min_address_width,
                })?,
        };
        let (did, table) = self.alloc_domain(levels, next_table_owner())?;
        Ok(Domain::new(self.clone(), did, table))
    }
}

/// Device assignment (see [`crate::unit`]'s module docs, "Assignment"). These entry points
/// live here rather than in `unit::assign` because they take a [`Domain`], and `unit` sits
/// below `domain` in the crate's layering; the work is done by the unit.
impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Gives the whole group to `domain` (a guest domain) as its exclusive owner.
    ///
    /// From: unattached (entries written like [`Domain::attach_device`]'s, then the
    /// context cache and the domain's IOTLB invalidated), quarantined (the same), pass-through
    /// or assigned to another domain (then an *atomic switch*: per requester ID one 16-byte
    /// store of the new entry, written back when ECAP.C = 0, then device-selective
    /// context-cache invalidations tagged with the old DID and a domain-selective IOTLB
    /// invalidation of the old DID, in one submission completed before this returns; a DMA
    /// in between translates through the old or the new domain, never faults).
    ///
    /// # Errors
    ///
    /// Nothing changes on: [`VtdError::GroupInUse`] when host drivers hold members of the
    /// group ([`Domain::attach_device`]), [`VtdError::AlreadyAssigned`] when `domain` already
    /// owns it, [`VtdError::DomainOfAnotherUnit`], [`VtdError::EmptyGroup`],
    /// [`VtdError::DuplicateRequesterId`], [`VtdError::GroupRequesterIdsDiffer`],
    /// [`VtdError::AlreadyAttached`] (an ID of a new group is in another group or has a
    /// present entry), [`VtdError::NoAtomicStore`] (a switch on a CPU without `CMPXCHG16B`),
    /// [`VtdError::OutOfMemory`]. After the entries were written: [`VtdError::Timeout`] or
    /// [`VtdError::Invalidation`]; the group is then owned by `domain` but unsynced, and the
    /// next `assign_group` to the same domain (or its drop) finishes the invalidation.
    pub fn assign_group(
        &self,
        group: GroupRef<'_>,
        domain: &Domain<R, P>,
    ) -> Result<AssignStats, VtdError> {
        if !core::ptr::eq(Arc::as_ptr(&domain.unit), self) {
            return Err(VtdError::DomainOfAnotherUnit { did: domain.did });
        }
        let state = domain.state.lock();
        let Some(table) = state.table.as_ref() else {
            return Err(VtdError::OutOfMemory);
        };
        self.assign_translated(group, domain.did, table.root(), table.levels())
    }
}

impl<R: RegisterIo, P: Platform> IommuDomain for Domain<R, P> {
    fn info(&self) -> DomainInfo {
        self.info
    }

    fn map(&self, iova: DmaAddr, paddr: PhysAddr, size: u64, prot: Prot) -> Result<(), IommuError> {
        let mut state = self.state.lock();
        let table = state.table.as_mut().ok_or(IommuError::Detached)?;
        table.map(
            self.unit.platform(),
            iova.as_u64(),
            paddr.as_u64(),
            size,
            prot,
        )
    }

    fn sync_map(&self, iova: DmaAddr, size: u64) -> Result<(), IommuError> {
        let caps = self.unit.capabilities();
        if caps.cap.caching_mode {
            // Not-present entries may be cached: invalidate the new range (IH = 0, since new
            // tables may have been linked too).
            let requests = invalidation::iotlb_range(caps, self.did, iova.as_u64(), size, false);
            self.invalidate(&requests)?;
        } else if caps.cap.rwbf {
            self.unit
                .flush_write_buffer()
                .map_err(|_| IommuError::InvalidationTimeout)?;
        }
        Ok(())
    }

    fn unmap(&self, iova: DmaAddr, size: u64, gather: &mut IotlbGather) -> Result<(), IommuError> {
        let mut state = self.state.lock();
        let table = state.table.as_mut().ok_or(IommuError::Detached)?;
        table.unmap(self.unit.platform(), iova.as_u64(), size, gather)
    }

    fn flush(&self, mut gather: IotlbGather) -> Result<(), IommuError> {
        let Some((start, size)) = gather.span() else {
            return Ok(());
        };
        // The tables this gather's own unmaps unlinked: nothing else is freed here (tables of
        // other gathers wait for *their* flush, whatever this one invalidates).
        let leaf_only = !gather.freed_tables();
        let tables = gather.take_unlinked_tables();
        let caps = self.unit.capabilities();
        // IH = 0 whenever tables were unlinked: the page-selective (or domain-selective)
        // invalidation of the span, which covers each table's whole region, then also drops
        // the paging-structure cache entries that point at them (§6.5.1).
        let requests = invalidation::iotlb_range(caps, self.did, start.as_u64(), size, leaf_only);
        if let Err(e) = self.invalidate(&requests) {
            if !tables.is_empty() {
                log::warn!(
                    "VT-d: domain {}: flush failed; leaking {} unlinked table page(s)",
                    self.did,
                    tables.len()
                );
            }
            return Err(e);
        }
        for t in tables {
            if t.owner != self.table_owner {
                // Unlinked by another domain's table: this flush did not invalidate that
                // domain's caches, so the page may still be walked.
                log::warn!(
                    "VT-d: domain {}: gather holds table {} of another domain; leaking it",
                    self.did,
                    t.phys
                );
                continue;
            }
            // SAFETY: the table was unlinked by an unmap into this gather (its parent entry
            // cleared and written back), and an IH = 0 invalidation covering its whole region
            // in this domain completed after that: no hardware reference is left.
            unsafe { self.unit.platform().free_table_page(t.phys) };
        }
        Ok(())
    }

    fn translate(&self, iova: DmaAddr) -> Option<(PhysAddr, Prot)> {
        let state = self.state.lock();
        state
            .table
            .as_ref()?
            .translate(self.unit.platform(), iova.as_u64())
    }
}

impl<R: RegisterIo, P: Platform> Drop for Domain<R, P> {
    fn drop(&mut self) {
        let table = self.state.get_mut().table.take();
        // Detach every group still attached (including groups whose earlier detach failed);
        // the domain-selective IOTLB invalidation also drops cached paging-structure entries,
        // after which no hardware reference to the tables is left.
        if let Err(e) = self.unit.detach_domain(self.did) {
            // The hardware may still walk the table (a context entry or a cached copy of one
            // points at it): leak the table pages and the domain ID rather than reuse them.
            log::warn!(
                "VT-d: domain {} dropped without a completed detach ({e}); leaking its tables and domain ID",
                self.did
            );
            // Returning without `destroy`: dropping a `SecondLevelTable` frees no page.
            return;
        }
        if let Some(table) = table {
            // SAFETY: no context entry refers to the table any more and the domain's IOTLB and
            // paging-structure caches were invalidated just above.
            unsafe { table.destroy(self.unit.platform()) };
        }
        self.unit.release_did(self.did);
    }
}
