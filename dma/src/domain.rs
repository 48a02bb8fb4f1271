//! [`DmaDomain`]: one IOMMU domain as the DMA layer sees it: the hardware domain
//! ([`IommuDomain`]), its IOVA allocator, its reserved space and its invalidation mode.
//!
//! Implements SPEC.md "Reserved IOVA space is never handed out" (page 0, the interrupt window
//! 0xFEE00000–0xFEEFFFFF and every region the embedder passes: RMRRs, host-bridge windows) and
//! the per-domain part of "Invalidation modes" (the deferred queue). Several devices may share a
//! domain (the functions of one isolation group must); each brings its own DMA mask, applied as
//! the allocation limit.
//!
//! # Trust is per domain: mixing is refused
//!
//! A domain records the trust level of the devices created on it ([`crate::DmaDevice::new`]
//! registers, dropping the device deregisters). All members share one page table, so an
//! untrusted member could reach every whole page a trusted member mapped without bouncing; and a
//! trusted and an untrusted device in one isolation group cannot be isolated from each other
//! anyway (they reach each other peer to peer without the IOMMU seeing it). So a device whose
//! trust differs from the current members' is refused with [`DmaError::MixedTrust`]; once the
//! last member is gone the domain accepts either kind again. The invalidation mode is fixed
//! when the domain is built, and an untrusted device is refused on a deferred domain whatever
//! its members, so a domain with an untrusted member never runs deferred invalidation.
//!
//! Locking: the allocator and the deferred queue each have their own spin lock; neither is held
//! while the other is taken or while the hardware domain is called (see the crate docs). A third
//! lock, the *flush lock*, serialises deferred flushes: it is held from taking the deferred queue
//! until its flush completed and its IOVAs were freed, so that [`DmaDomain::flush_deferred`] is a
//! real barrier (it returns only after every unmap queued before the call was flushed, also when
//! another thread had already taken them) and so that an allocation that hits exhaustion can wait
//! for a flush in flight instead of failing while IOVAs are about to come free. It is taken before
//! the queue and allocator locks (never while one of them is held) and is held across
//! [`IommuDomain::flush`], so its worst-case hold time is one IOTLB invalidation (bounded by the
//! IOMMU's invalidation timeout).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use crate::addr::{DmaAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::invalidation::{Clock, DeferredQueue, InvalidationMode, Retired};
use crate::iommu::{DomainInfo, IommuDomain, IotlbGather};
use crate::iova::{IovaAllocator, IovaStats, ReservedKind, ReservedRegion, MSI_WINDOW};

/// How to build a [`DmaDomain`].
#[derive(Clone, Default)]
pub struct DomainConfig {
    /// IOVA ranges to keep out besides page 0 and the interrupt window (always reserved): RMRR
    /// ranges, PCI host-bridge windows, anything else.
    pub reserved: Vec<ReservedRegion>,
    /// Strict (default) or deferred invalidation.
    pub mode: InvalidationMode,
    /// Time source; required for [`InvalidationMode::Deferred`].
    pub clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for DomainConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainConfig")
            .field("reserved", &self.reserved)
            .field("mode", &self.mode)
            .field("clock", &self.clock.is_some())
            .finish()
    }
}

/// An IOMMU domain plus its IOVA space. Shared by the devices attached to it (`Arc`).
pub struct DmaDomain {
    hw: Arc<dyn IommuDomain>,
    info: DomainInfo,
    mode: InvalidationMode,
    clock: Option<Arc<dyn Clock>>,
    iova: Mutex<IovaAllocator>,
    deferred: Mutex<DeferredQueue>,
    /// Held from taking the deferred queue until its flush completed (module docs).
    flush: Mutex<FlushState>,
    /// Deferred flushes that failed so far (read without the flush lock, see `flush_deferred`).
    flush_failures: AtomicU64,
    /// The devices created on this domain (module docs, "mixing is refused"). A leaf lock,
    /// taken only when a device is created or dropped.
    members: Mutex<Members>,
}

/// What the flush lock guards.
#[derive(Debug, Default)]
struct FlushState {
    /// The error of the last deferred flush that failed.
    last_err: Option<DmaError>,
    /// An empty list with the capacity of an earlier queue: it becomes the queue's list when
    /// the queue is taken for a flush, and the flushed list (emptied) becomes the next spare,
    /// so that a steady deferred workload never allocates (issue 12).
    spare: Vec<Retired>,
}

/// Who is using a domain.
#[derive(Debug, Default, Clone, Copy)]
struct Members {
    /// Live devices.
    count: usize,
    /// Their trust level (meaningful when `count > 0`).
    trusted: bool,
}

impl fmt::Debug for DmaDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDomain")
            .field("info", &self.info)
            .field("mode", &self.mode)
            .finish()
    }
}

impl DmaDomain {
    /// Wraps a hardware domain. The IOVA space is `[0, aperture_end]` minus page 0, the
    /// interrupt window and `config.reserved`.
    ///
    /// # Errors
    ///
    /// [`DmaError::InvalidConfig`] when deferred invalidation is asked for without a clock or with
    /// `max_pending == 0`, or when the aperture minus the reserved regions holds no whole page.
    pub fn new(hw: Arc<dyn IommuDomain>, config: DomainConfig) -> Result<Arc<Self>, DmaError> {
        if let InvalidationMode::Deferred(p) = config.mode {
            if config.clock.is_none() {
                return Err(DmaError::InvalidConfig(
                    "deferred invalidation needs a clock",
                ));
            }
            if p.max_pending == 0 {
                return Err(DmaError::InvalidConfig(
                    "deferred invalidation: max_pending is 0",
                ));
            }
        }
        let info = hw.info();
        let mut reserved = Vec::with_capacity(config.reserved.len() + 2);
        reserved.push(ReservedRegion::new(0, PAGE_SIZE, ReservedKind::PageZero));
        reserved.push(MSI_WINDOW);
        reserved.extend(config.reserved.iter().copied().filter(|r| r.size > 0));
        let iova = IovaAllocator::new(DmaAddr::new(0), info.aperture_end, &reserved)?;
        Ok(Arc::new(Self {
            hw,
            info,
            mode: config.mode,
            clock: config.clock,
            iova: Mutex::new(iova),
            deferred: Mutex::new(DeferredQueue::default()),
            flush: Mutex::new(FlushState::default()),
            flush_failures: AtomicU64::new(0),
            members: Mutex::new(Members::default()),
        }))
    }

    /// Registers a device of trust level `trusted` (from [`crate::DmaDevice::new`]). Refused:
    /// an untrusted device on a deferred domain (`InvalidConfig`), a trust level different from
    /// the current members' (`MixedTrust`).
    pub(crate) fn join(&self, trusted: bool) -> Result<(), DmaError> {
        if !trusted && matches!(self.mode, InvalidationMode::Deferred(_)) {
            return Err(DmaError::InvalidConfig(
                "deferred invalidation is for trusted devices only",
            ));
        }
        let mut m = self.members.lock();
        if m.count > 0 && m.trusted != trusted {
            return Err(DmaError::MixedTrust {
                members_trusted: m.trusted,
                members: m.count,
            });
        }
        m.count += 1;
        m.trusted = trusted;
        Ok(())
    }

    /// Deregisters a device (its last handle and mapping are gone).
    pub(crate) fn leave(&self) {
        let mut m = self.members.lock();
        m.count = m.count.saturating_sub(1);
    }

    /// Number of devices created on this domain and still alive.
    pub fn member_count(&self) -> usize {
        self.members.lock().count
    }

    /// Whether the current members are trusted (`None` when the domain has no member).
    pub fn members_trusted(&self) -> Option<bool> {
        let m = self.members.lock();
        (m.count > 0).then_some(m.trusted)
    }

    /// The hardware domain.
    pub fn hw(&self) -> &Arc<dyn IommuDomain> {
        &self.hw
    }

    /// The hardware domain's fixed properties.
    pub fn info(&self) -> DomainInfo {
        self.info
    }

    /// The invalidation mode.
    pub fn mode(&self) -> InvalidationMode {
        self.mode
    }

    /// Every reserved region (page 0 and the interrupt window first).
    pub fn reserved(&self) -> Vec<ReservedRegion> {
        self.iova.lock().reserved().to_vec()
    }

    /// Whether any byte of `[addr, addr + len)` is reserved (or outside the aperture).
    pub fn is_reserved(&self, addr: DmaAddr, len: u64) -> bool {
        self.iova.lock().is_reserved(addr, len)
    }

    /// IOVA allocator counters.
    pub fn iova_stats(&self) -> IovaStats {
        self.iova.lock().stats()
    }

    /// Unmaps waiting for a deferred flush (their IOVAs are quarantined). Unmaps whose flush is
    /// in flight on another thread are no longer counted.
    pub fn pending_unmaps(&self) -> usize {
        self.deferred.lock().retired.len()
    }

    /// Flushes every pending deferred unmap now and frees their IOVAs once it completed.
    ///
    /// A barrier: when this returns `Ok`, every unmap queued before the call has been flushed,
    /// including those whose flush another thread had already started (this waits for it). If
    /// such a flush failed while this call waited, its error is returned (those IOVAs stay
    /// quarantined for ever).
    ///
    /// # Errors
    ///
    /// The IOMMU's flush error ([`DmaError::Iommu`]), this call's or that of a flush another thread
    /// had started and this call waited for; the IOVAs and bounce slots that flush covered stay
    /// quarantined for ever.
    pub fn flush_deferred(&self) -> Result<(), DmaError> {
        let failures = self.flush_failures.load(Ordering::Acquire);
        let mut fs = self.flush.lock();
        let q = Self::take_queue(&mut self.deferred.lock(), &mut fs);
        let r = self.flush_queue(q, &mut fs);
        match fs.last_err {
            Some(e) if r.is_ok() && self.flush_failures.load(Ordering::Acquire) != failures => {
                Err(e)
            }
            _ => r,
        }
    }

    /// Flushes if the oldest deferred unmap is older than the policy's delay. A kernel calls this
    /// from a timer so the deadline holds even when no map/unmap happens.
    ///
    /// # Errors
    ///
    /// The IOMMU's flush error ([`DmaError::Iommu`]) when a due flush fails (see
    /// [`DmaDomain::flush_deferred`]).
    pub fn poll(&self) -> Result<(), DmaError> {
        let InvalidationMode::Deferred(policy) = self.mode else {
            return Ok(());
        };
        let now = self.now();
        let due = |q: &DeferredQueue| {
            !q.retired.is_empty() && now.saturating_sub(q.oldest_us) >= policy.max_delay_us
        };
        // Cheap check first: the hot path (every map) does not touch the flush lock.
        if !due(&self.deferred.lock()) {
            return Ok(());
        }
        let mut fs = self.flush.lock();
        let q = {
            let mut q = self.deferred.lock();
            if !due(&q) {
                return Ok(()); // another thread flushed meanwhile
            }
            Self::take_queue(&mut q, &mut fs)
        };
        self.flush_queue(q, &mut fs)
    }

    /// [`DmaDomain::poll`] that never waits: for a caller that may have interrupted a holder
    /// of this domain's locks on the same CPU (a timer interrupt). Returns `Ok(true)` when it
    /// flushed, `Ok(false)` when nothing was due or it could not take a lock without waiting (the
    /// flush, queue or IOVA lock is held: the holder is a map, unmap or flush of this domain,
    /// which checks the deadline itself), and also `Ok(false)`, without flushing, when the due
    /// queue returns bounce slots (their pool's lock is a blocking one; the next map or
    /// [`DmaDomain::poll`] flushes them).
    ///
    /// The flush itself calls [`IommuDomain::flush`] like [`DmaDomain::poll`] does: a caller in
    /// interrupt context must make sure the IOMMU driver's own locks cannot be held by the code
    /// it interrupted.
    ///
    /// # Errors
    ///
    /// The IOMMU's flush error ([`DmaError::Iommu`]) when the due flush fails; as with
    /// [`DmaDomain::flush_deferred`], those IOVAs stay quarantined for ever.
    pub fn try_poll(&self) -> Result<bool, DmaError> {
        let InvalidationMode::Deferred(policy) = self.mode else {
            return Ok(false);
        };
        let now = self.now();
        let Some(mut fs) = self.flush.try_lock() else {
            return Ok(false);
        };
        let Some(mut iova) = self.iova.try_lock() else {
            return Ok(false);
        };
        let q = {
            let Some(mut q) = self.deferred.try_lock() else {
                return Ok(false);
            };
            let due = !q.retired.is_empty()
                && now.saturating_sub(q.oldest_us) >= policy.max_delay_us
                && q.retired.iter().all(|r| r.slots.is_empty());
            if !due {
                return Ok(false);
            }
            Self::take_queue(&mut q, &mut fs)
        };
        let DeferredQueue {
            gather,
            mut retired,
            ..
        } = q;
        let r = self.hw.flush(gather);
        if let Err(e) = r {
            log::error!(
                "dma: IOTLB flush failed ({e}); {} IOVA ranges stay quarantined for ever",
                retired.len()
            );
        } else {
            Self::free_retired_iovas(&mut iova, &retired);
        }
        retired.clear();
        fs.spare = retired;
        if let Err(e) = r {
            let e = DmaError::from(e);
            fs.last_err = Some(e);
            self.flush_failures.fetch_add(1, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    /// Takes the deferred queue for a flush, leaving it empty with the flush lock's spare list
    /// (no allocation). The caller holds the flush lock (`fs`) and gives the flushed list back
    /// as the next spare.
    fn take_queue(q: &mut DeferredQueue, fs: &mut FlushState) -> DeferredQueue {
        let empty = DeferredQueue {
            gather: IotlbGather::new(),
            retired: core::mem::take(&mut fs.spare),
            oldest_us: 0,
        };
        core::mem::replace(q, empty)
    }

    /// Frees the IOVA ranges of flushed retirements.
    fn free_retired_iovas(iova: &mut IovaAllocator, retired: &[Retired]) {
        for r in retired {
            if let Some((addr, size)) = r.iova {
                if let Err(e) = iova.free(addr, size) {
                    log::error!("dma: IOVA free {addr:?}+{size:#x} failed: {e}");
                }
            }
        }
    }

    fn now(&self) -> u64 {
        self.clock.as_ref().map_or(0, |c| c.now_us())
    }

    /// Allocates IOVA below `limit` (inclusive); on exhaustion in deferred mode, flushes the
    /// quarantine (after waiting for any deferred flush in flight on another thread, whose IOVAs
    /// are about to come free although [`DmaDomain::pending_unmaps`] no longer counts them) and
    /// retries once.
    pub(crate) fn alloc_iova(&self, size: u64, limit: u64) -> Result<DmaAddr, DmaError> {
        let limit = DmaAddr::new(limit.min(self.info.aperture_end.as_u64()));
        match self.iova.lock().alloc(size, limit) {
            Err(DmaError::IovaExhausted { .. })
                if matches!(self.mode, InvalidationMode::Deferred(_)) => {}
            r => return r,
        }
        if let Err(e) = self.flush_deferred() {
            // That quarantine stays leaked; the retry tells whether anything else came free.
            log::error!("dma: deferred flush on IOVA exhaustion failed: {e}");
        }
        self.iova.lock().alloc(size, limit)
    }

    /// Frees an IOVA allocation whose translations are gone and flushed.
    pub(crate) fn free_iova(&self, addr: DmaAddr, size: u64) {
        if let Err(e) = self.iova.lock().free(addr, size) {
            log::error!("dma: IOVA free {addr:?}+{size:#x} failed: {e}");
        }
    }

    /// Frees an IOVA allocation except the sub-ranges in `keep`, which stay allocated for ever
    /// (page-table entries that could not be removed still point into them).
    pub(crate) fn free_iova_keeping(&self, addr: DmaAddr, size: u64, keep: &[(DmaAddr, u64)]) {
        if let Err(e) = self.iova.lock().free_keeping(addr, size, keep) {
            log::error!("dma: IOVA free {addr:?}+{size:#x} failed: {e}");
        }
    }

    /// Deferred unmap: queue the gather and what it retires; flush when the policy says so.
    pub(crate) fn defer(&self, gather: IotlbGather, retired: Retired) -> Result<(), DmaError> {
        let InvalidationMode::Deferred(policy) = self.mode else {
            return self.flush_now(gather, &mut alloc::vec![retired]);
        };
        let now = self.now();
        let due = |q: &DeferredQueue| {
            !q.retired.is_empty()
                && (q.retired.len() >= policy.max_pending as usize
                    || now.saturating_sub(q.oldest_us) >= policy.max_delay_us)
        };
        {
            let mut q = self.deferred.lock();
            if q.retired.is_empty() {
                q.oldest_us = now;
            }
            q.gather.merge(gather);
            q.retired.push(retired);
            if !due(&q) {
                return Ok(());
            }
        }
        let mut fs = self.flush.lock();
        let q = {
            let mut q = self.deferred.lock();
            if !due(&q) {
                return Ok(()); // another thread flushed it (ours included) meanwhile
            }
            Self::take_queue(&mut q, &mut fs)
        };
        self.flush_queue(q, &mut fs)
    }

    /// Flushes a taken deferred queue; the caller holds the flush lock (`fs`) from taking the
    /// queue until this returned. The queue's list, emptied, becomes the next spare.
    fn flush_queue(&self, q: DeferredQueue, fs: &mut FlushState) -> Result<(), DmaError> {
        let DeferredQueue {
            gather,
            mut retired,
            ..
        } = q;
        let r = if retired.is_empty() && gather.is_empty() {
            Ok(())
        } else {
            self.flush_now(gather, &mut retired)
        };
        fs.spare = retired;
        if let Err(e) = r {
            fs.last_err = Some(e);
            self.flush_failures.fetch_add(1, Ordering::Release);
        }
        r
    }

    /// Flushes `gather` and, once that completed, frees what it retires; `retired` is left
    /// empty (its capacity kept). On failure everything stays leaked (never reused) and the
    /// error is returned.
    pub(crate) fn flush_now(
        &self,
        gather: IotlbGather,
        retired: &mut Vec<Retired>,
    ) -> Result<(), DmaError> {
        if let Err(e) = self.hw.flush(gather) {
            log::error!(
                "dma: IOTLB flush failed ({e}); {} IOVA ranges stay quarantined for ever",
                retired.len()
            );
            retired.clear();
            return Err(e.into());
        }
        Self::free_retired_iovas(&mut self.iova.lock(), retired);
        for r in retired.drain(..) {
            for (pool, slot) in r.slots {
                pool.free_slot(slot);
            }
        }
        Ok(())
    }

    /// Checks the deferred deadline (called on every map).
    #[inline]
    pub(crate) fn tick(&self) {
        if matches!(self.mode, InvalidationMode::Deferred(_)) {
            if let Err(e) = self.poll() {
                log::error!("dma: deferred flush failed: {e}");
            }
        }
    }
}
