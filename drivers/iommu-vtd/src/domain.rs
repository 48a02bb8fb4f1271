//! A translation domain: one second-level table, one domain ID, the requester IDs attached.
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
use crate::pagetable::SecondLevelTable;
use crate::platform::Platform;
use crate::registers::RegisterIo;
use crate::unit::{VtdError, VtdUnit};

/// A fresh owner token for a domain's table ([`dma::iommu::UnlinkedTable::owner`]): unique for
/// the life of the program, so a gather flushed through the wrong domain cannot free pages.
pub(crate) fn next_table_owner() -> u64 {
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
    attached: Vec<u16>,
}

/// A VT-d translation domain. Dropping it detaches every requester ID and frees its tables.
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
            state: Mutex::new(DomainState {
                table: Some(table),
                attached: Vec::new(),
            }),
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

    /// The requester IDs attached.
    pub fn attached(&self) -> Vec<u16> {
        self.state.lock().attached.clone()
    }

    /// Physical address of the top-level table.
    pub fn table_root(&self) -> Option<PhysAddr> {
        self.state.lock().table.as_ref().map(|t| t.root())
    }

    /// Attaches requester IDs (the kernel passes a device's whole alias set: its own BDF, a
    /// bridge's, `(secondary bus, 00.0)` behind a PCIe-to-PCI bridge). Each gets a present
    /// context entry (TT = 00, AW = depth, this DID, SLPTPTR); the context cache and the
    /// domain's IOTLB are invalidated before this returns. Nothing changes on a validation
    /// error (already attached anywhere, duplicate, out of memory).
    pub fn attach(&self, rids: &[u16]) -> Result<(), VtdError> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(table) = state.table.as_ref() else {
            return Err(VtdError::OutOfMemory);
        };
        state
            .attached
            .try_reserve(rids.len())
            .map_err(|_| VtdError::OutOfMemory)?;
        let result = self.unit.attach(self.did, table, rids);
        if matches!(
            result,
            Ok(()) | Err(VtdError::Invalidation(_) | VtdError::Timeout { .. })
        ) {
            // The entries were written; record them so detach can clear them (an ID may still
            // be tracked after a failed detach: record it once).
            for &rid in rids {
                if !state.attached.contains(&rid) {
                    state.attached.push(rid);
                }
            }
        }
        result
    }

    /// Detaches requester IDs: clears their context entries and invalidates the context cache
    /// and the domain's IOTLB before returning. A detached device has no valid context entry
    /// (its DMA faults with reason 2).
    ///
    /// The IDs stay attached (in [`Domain::attached`]) unless this returns `Ok`: after a failure
    /// a context entry, or a cached copy of one, may still point at the domain's table, so the
    /// domain keeps tracking them; a later `detach` or the drop retries (and a drop that cannot
    /// complete it leaks the table and the domain ID rather than free them).
    pub fn detach(&self, rids: &[u16]) -> Result<(), VtdError> {
        let mut state = self.state.lock();
        for (i, &rid) in rids.iter().enumerate() {
            if rids[..i].contains(&rid) {
                return Err(VtdError::DuplicateRequesterId { rid });
            }
            if !state.attached.contains(&rid) {
                return Err(VtdError::NotAttached { rid });
            }
        }
        // Forget the IDs only once the entries are cleared *and* the invalidation completed.
        self.unit.detach(self.did, rids)?;
        state.attached.retain(|r| !rids.contains(r));
        Ok(())
    }

    /// Identity-maps `[start, end]` (inclusive, rounded out to pages) read/write, then makes it
    /// visible ([`IommuDomain::sync_map`]).
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
    pub fn map_rmrr(&self, rmrr: &Rmrr<'_>) -> Result<(), IommuError> {
        self.map_identity(rmrr.base(), rmrr.limit())
    }

    fn invalidate(&self, requests: &[Invalidation]) -> Result<(), IommuError> {
        self.unit
            .invalidate(requests)
            .map_err(|_| IommuError::InvalidationTimeout)
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
        let state = self.state.get_mut();
        let rids = core::mem::take(&mut state.attached);
        let table = state.table.take();
        // Detach everything still attached (including IDs whose earlier detach failed); the
        // domain-selective IOTLB invalidation also drops cached paging-structure entries, after
        // which no hardware reference to the tables is left.
        if let Err(e) = self.unit.detach(self.did, &rids) {
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
