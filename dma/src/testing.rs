//! In-memory fakes of the seams ([`IommuDomain`], [`PhysMemory`], [`Clock`]) for host tests of
//! this crate and of the crates built on it (compiled under `cfg(test)` or the `testing`
//! feature).
//!
//! [`FakeDomain`] is a strict referee rather than a stub: it enforces the trait's rules (4 KiB
//! granularity, aperture, output limit, all-or-nothing map/unmap, exact unmap that never splits a
//! superpage), picks 2 MiB / 1 GiB leaves when both addresses are aligned, counts every
//! operation, and tracks IOVAs that were unmapped but not yet flushed: mapping one of those again
//! is recorded as a *stale reuse* ([`FakeDomain::stale_reuses`]), which is how the tests prove
//! that no invalidation mode hands out an IOVA before its flush completed. It also counts
//! mappings requested with both `Prot::MMIO` and `Prot::CACHE` (SPEC.md: never).

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::bounce::BouncePool;
use crate::device::{DeviceConfig, DmaDevice, Translation};
use crate::domain::{DmaDomain, DomainConfig};
use crate::error::DmaError;
use crate::invalidation::{Clock, InvalidationMode};
use crate::iommu::{DomainInfo, IommuDomain, IommuError, IotlbGather, PageSizes, Prot};
use crate::iova::IovaAllocator;
use crate::phys::{CacheOp, PhysError, PhysMemory};

/// One leaf entry of the fake page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakePte {
    /// Output address.
    pub paddr: u64,
    /// Leaf size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Rights.
    pub prot: Prot,
}

/// One recorded domain operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeOp {
    /// `map(iova, paddr, size, prot)` that succeeded.
    Map {
        /// IOVA.
        iova: u64,
        /// Physical address.
        paddr: u64,
        /// Size.
        size: u64,
        /// Rights.
        prot: Prot,
    },
    /// `sync_map(iova, size)`.
    SyncMap {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// `unmap(iova, size)` that succeeded.
    Unmap {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
    },
    /// `flush` of the gathered span `(start, size)`.
    Flush {
        /// The span, `None` for an empty gather.
        span: Option<(u64, u64)>,
    },
}

/// Operation counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeCounts {
    /// Successful `map` calls.
    pub maps: u64,
    /// `sync_map` calls.
    pub sync_maps: u64,
    /// Successful `unmap` calls.
    pub unmaps: u64,
    /// Completed `flush` calls (non-empty gathers).
    pub flushes: u64,
    /// Leaf entries of each size created: 4 KiB, 2 MiB, 1 GiB.
    pub leaves: [u64; 3],
}

#[derive(Default)]
struct FakeState {
    ptes: BTreeMap<u64, FakePte>,
    stale: Vec<(u64, u64)>,
    record: bool,
    ops: Vec<FakeOp>,
    counts: FakeCounts,
    fail_map_after: Option<u64>,
    fail_unmap_after: Option<u64>,
    fail_unmaps_at: Option<u64>,
    fail_sync_map: bool,
    fail_flush: bool,
    stale_reuses: u64,
    mmio_cache: u64,
}

/// An in-memory [`IommuDomain`] (see the module documentation).
pub struct FakeDomain {
    info: DomainInfo,
    st: Mutex<FakeState>,
    /// While set, `flush` waits (spinning, no lock held) before doing anything.
    hold_flushes: AtomicBool,
    /// `flush` calls entered (including those waiting at the gate).
    flushes_entered: AtomicU64,
}

impl Default for FakeDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDomain {
    /// A 39-bit (3-level) domain with 4K/2M/1G pages and a 46-bit host address width.
    pub fn new() -> Self {
        Self::with_info(DomainInfo {
            aperture_end: DmaAddr::new((1 << 39) - 1),
            page_sizes: PageSizes::SIZE_4K | PageSizes::SIZE_2M | PageSizes::SIZE_1G,
            output_limit: 1 << 46,
        })
    }

    /// A domain with the given properties.
    pub fn with_info(info: DomainInfo) -> Self {
        Self {
            info,
            st: Mutex::new(FakeState::default()),
            hold_flushes: AtomicBool::new(false),
            flushes_entered: AtomicU64::new(0),
        }
    }

    /// Starts (or stops) recording operations for [`FakeDomain::ops`].
    pub fn record_ops(&self, on: bool) {
        self.st.lock().record = on;
    }

    /// Recorded operations (when recording is on).
    pub fn ops(&self) -> Vec<FakeOp> {
        self.st.lock().ops.clone()
    }

    /// Clears the recorded operations and counters.
    pub fn reset_counts(&self) {
        let mut st = self.st.lock();
        st.ops.clear();
        st.counts = FakeCounts::default();
    }

    /// Operation counters.
    pub fn counts(&self) -> FakeCounts {
        self.st.lock().counts
    }

    /// Number of leaf entries.
    pub fn entries(&self) -> usize {
        self.st.lock().ptes.len()
    }

    /// Bytes mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.st.lock().ptes.values().map(|p| p.size).sum()
    }

    /// Leaf entries in `[iova, iova + size)`.
    pub fn entries_in(&self, iova: u64, size: u64) -> Vec<(u64, FakePte)> {
        self.st
            .lock()
            .ptes
            .range(iova..iova.saturating_add(size))
            .map(|(&k, &v)| (k, v))
            .collect()
    }

    /// Maps of IOVAs that had been unmapped but not flushed yet (must stay 0).
    pub fn stale_reuses(&self) -> u64 {
        self.st.lock().stale_reuses
    }

    /// Bytes unmapped and not yet flushed.
    pub fn unflushed_bytes(&self) -> u64 {
        self.st.lock().stale.iter().map(|(s, e)| e - s).sum()
    }

    /// Maps requested with both `MMIO` and `CACHE` (must stay 0).
    pub fn mmio_cache_violations(&self) -> u64 {
        self.st.lock().mmio_cache
    }

    /// The next `n` maps succeed, the one after fails with `OutOfMemory` (once).
    pub fn fail_map_after(&self, n: u64) {
        self.st.lock().fail_map_after = Some(n);
    }

    /// The next `n` unmaps succeed, the one after fails with `NotMapped` (once).
    pub fn fail_unmap_after(&self, n: u64) {
        self.st.lock().fail_unmap_after = Some(n);
    }

    /// While set, every unmap of a range containing IOVA `at` fails with `NotMapped` and
    /// changes nothing (a persistent failure, for double faults: the undo fails too).
    pub fn fail_unmaps_at(&self, at: Option<u64>) {
        self.st.lock().fail_unmaps_at = at;
    }

    /// The next `sync_map` fails (once).
    pub fn fail_next_sync_map(&self) {
        self.st.lock().fail_sync_map = true;
    }

    /// While `hold` is true, every `flush` call waits (spinning, holding none of the fake's
    /// locks) before it invalidates anything: a slow invalidation, so that concurrency tests can
    /// observe what other threads do while a flush is in flight
    /// ([`FakeDomain::flushes_entered`] tells when one is).
    pub fn hold_flushes(&self, hold: bool) {
        self.hold_flushes.store(hold, Ordering::SeqCst);
    }

    /// `flush` calls entered so far, including those waiting because of
    /// [`FakeDomain::hold_flushes`] (not reset by [`FakeDomain::reset_counts`]).
    pub fn flushes_entered(&self) -> u64 {
        self.flushes_entered.load(Ordering::SeqCst)
    }

    /// The next flush fails with `InvalidationTimeout` (once); nothing is invalidated.
    pub fn fail_next_flush(&self) {
        self.st.lock().fail_flush = true;
    }

    fn leaf_size(&self, iova: u64, paddr: u64, left: u64) -> u64 {
        for (flag, size) in [
            (PageSizes::SIZE_1G, 1u64 << 30),
            (PageSizes::SIZE_2M, 1 << 21),
        ] {
            if self.info.page_sizes.contains(flag)
                && iova.is_multiple_of(size)
                && paddr.is_multiple_of(size)
                && left >= size
            {
                return size;
            }
        }
        PAGE_SIZE
    }

    fn check_range(&self, iova: u64, paddr: u64, size: u64) -> Result<(), IommuError> {
        if size == 0
            || !iova.is_multiple_of(PAGE_SIZE)
            || !paddr.is_multiple_of(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
        {
            return Err(IommuError::Misaligned { iova, paddr, size });
        }
        match iova.checked_add(size - 1) {
            Some(last) if last <= self.info.aperture_end.as_u64() => Ok(()),
            _ => Err(IommuError::OutsideAperture { iova, size }),
        }
    }
}

fn overlaps(a: u64, b: u64, c: u64, d: u64) -> bool {
    a < d && c < b
}

impl IommuDomain for FakeDomain {
    fn info(&self) -> DomainInfo {
        self.info
    }

    fn map(&self, iova: DmaAddr, paddr: PhysAddr, size: u64, prot: Prot) -> Result<(), IommuError> {
        let (iova, paddr) = (iova.as_u64(), paddr.as_u64());
        self.check_range(iova, paddr, size)?;
        if paddr
            .checked_add(size)
            .is_none_or(|e| e > self.info.output_limit)
        {
            return Err(IommuError::OutputBeyondLimit { paddr });
        }
        let mut st = self.st.lock();
        if let Some(n) = st.fail_map_after {
            if n == 0 {
                st.fail_map_after = None;
                return Err(IommuError::OutOfMemory);
            }
            st.fail_map_after = Some(n - 1);
        }
        let end = iova + size;
        if let Some((&s, p)) = st.ptes.range(..end).next_back() {
            if s + p.size > iova {
                return Err(IommuError::AlreadyMapped { iova: s.max(iova) });
            }
        }
        if prot.contains(Prot::MMIO) && prot.contains(Prot::CACHE) {
            st.mmio_cache += 1;
        }
        if st.stale.iter().any(|&(a, b)| overlaps(a, b, iova, end)) {
            st.stale_reuses += 1;
        }
        let mut off = 0;
        while off < size {
            let leaf = self.leaf_size(iova + off, paddr + off, size - off);
            st.ptes.insert(
                iova + off,
                FakePte {
                    paddr: paddr + off,
                    size: leaf,
                    prot,
                },
            );
            let i = match leaf {
                PAGE_SIZE => 0,
                0x20_0000 => 1,
                _ => 2,
            };
            st.counts.leaves[i] += 1;
            off += leaf;
        }
        st.counts.maps += 1;
        if st.record {
            st.ops.push(FakeOp::Map {
                iova,
                paddr,
                size,
                prot,
            });
        }
        Ok(())
    }

    fn sync_map(&self, iova: DmaAddr, size: u64) -> Result<(), IommuError> {
        let mut st = self.st.lock();
        st.counts.sync_maps += 1;
        if st.record {
            st.ops.push(FakeOp::SyncMap {
                iova: iova.as_u64(),
                size,
            });
        }
        if core::mem::take(&mut st.fail_sync_map) {
            return Err(IommuError::InvalidationTimeout);
        }
        Ok(())
    }

    fn unmap(&self, iova: DmaAddr, size: u64, gather: &mut IotlbGather) -> Result<(), IommuError> {
        let iova = iova.as_u64();
        self.check_range(iova, 0, size)?;
        let mut st = self.st.lock();
        if st
            .fail_unmaps_at
            .is_some_and(|a| a >= iova && a - iova < size)
        {
            return Err(IommuError::NotMapped { iova });
        }
        if let Some(n) = st.fail_unmap_after {
            if n == 0 {
                st.fail_unmap_after = None;
                return Err(IommuError::NotMapped { iova });
            }
            st.fail_unmap_after = Some(n - 1);
        }
        let end = iova + size;
        // Check everything first (all-or-nothing), then remove: no list of keys to allocate.
        let mut cur = iova;
        while cur < end {
            match st.ptes.range(..=cur).next_back() {
                Some((&s, p)) if s + p.size > cur => {
                    if s != cur || s + p.size > end {
                        return Err(IommuError::PartialSuperpage {
                            iova: s,
                            size: p.size,
                        });
                    }
                    cur = s + p.size;
                }
                _ => return Err(IommuError::NotMapped { iova: cur }),
            }
        }
        let mut cur = iova;
        while cur < end {
            cur += st.ptes.remove(&cur).map_or(PAGE_SIZE, |p| p.size);
        }
        st.stale.push((iova, end));
        st.counts.unmaps += 1;
        if st.record {
            st.ops.push(FakeOp::Unmap { iova, size });
        }
        gather.add(DmaAddr::new(iova), size);
        Ok(())
    }

    fn flush(&self, gather: IotlbGather) -> Result<(), IommuError> {
        self.flushes_entered.fetch_add(1, Ordering::SeqCst);
        while self.hold_flushes.load(Ordering::SeqCst) {
            core::hint::spin_loop();
        }
        let mut st = self.st.lock();
        if core::mem::take(&mut st.fail_flush) {
            return Err(IommuError::InvalidationTimeout);
        }
        let span = gather.span().map(|(a, s)| (a.as_u64(), s));
        if st.record {
            st.ops.push(FakeOp::Flush { span });
        }
        let Some((a, s)) = span else { return Ok(()) };
        st.counts.flushes += 1;
        let b = a.saturating_add(s);
        // In place (the list keeps its capacity): the pieces left outside the span are appended,
        // then the old entries dropped.
        let old = st.stale.len();
        for i in 0..old {
            let (x, y) = st.stale[i];
            if x < a {
                st.stale.push((x, y.min(a)));
            }
            if y > b {
                st.stale.push((x.max(b), y));
            }
        }
        st.stale.drain(..old);
        Ok(())
    }

    fn translate(&self, iova: DmaAddr) -> Option<(PhysAddr, Prot)> {
        let i = iova.as_u64();
        let st = self.st.lock();
        let (&s, p) = st.ptes.range(..=i).next_back()?;
        (i < s + p.size).then(|| (PhysAddr::new(p.paddr + (i - s)), p.prot))
    }
}

struct Region {
    base: u64,
    mem: Mutex<Vec<u8>>,
    pages: Mutex<IovaAllocator>,
}

/// RAM made of `Vec`s at chosen physical addresses (see [`PhysMemory`]).
pub struct FakePhysMemory {
    regions: Vec<Region>,
    copies: AtomicU64,
    zeroes: AtomicU64,
    cache_ops: Mutex<Vec<(u64, u64, CacheOp)>>,
}

impl FakePhysMemory {
    /// RAM regions `(base, size)`, both page aligned.
    pub fn new(regions: &[(u64, u64)]) -> Self {
        let regions = regions
            .iter()
            .map(|&(base, size)| Region {
                base,
                mem: Mutex::new(vec![0; size as usize]),
                pages: Mutex::new(
                    IovaAllocator::new(DmaAddr::new(base), DmaAddr::new(base + size - 1), &[])
                        .expect("fake RAM region holds a page"),
                ),
            })
            .collect();
        Self {
            regions,
            copies: AtomicU64::new(0),
            zeroes: AtomicU64::new(0),
            cache_ops: Mutex::new(Vec::new()),
        }
    }

    /// 16 MiB at 16 MiB (below every mask) and 16 MiB at 8 GiB (above 32 bits).
    pub fn standard() -> Self {
        Self::new(&[(16 << 20, 16 << 20), (8 << 30, 16 << 20)])
    }

    fn region(&self, addr: u64, len: u64) -> Result<(&Region, usize), PhysError> {
        self.regions
            .iter()
            .find(|r| {
                addr >= r.base
                    && addr
                        .checked_add(len)
                        .is_some_and(|e| e <= r.base + r.mem.lock().len() as u64)
            })
            .map(|r| (r, (addr - r.base) as usize))
            .ok_or(PhysError::OutOfRange { addr, len })
    }

    /// Bytes copied by [`PhysMemory::copy`] calls so far (calls, not bytes).
    pub fn copy_calls(&self) -> u64 {
        self.copies.load(Ordering::Relaxed)
    }

    /// [`PhysMemory::zero`] calls so far.
    pub fn zero_calls(&self) -> u64 {
        self.zeroes.load(Ordering::Relaxed)
    }

    /// Recorded cache-maintenance calls `(addr, len, op)`.
    pub fn cache_ops(&self) -> Vec<(u64, u64, CacheOp)> {
        self.cache_ops.lock().clone()
    }

    /// Pages free across all regions.
    pub fn free_pages(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| {
                let s = r.pages.lock().stats();
                s.free_pages + s.cached_pages
            })
            .sum()
    }

    /// Test helper: the bytes at `addr`.
    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(PhysAddr::new(addr), &mut v)
            .expect("fake RAM read");
        v
    }

    /// Test helper: fills `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.write(PhysAddr::new(addr), &vec![byte; len])
            .expect("fake RAM write");
    }
}

impl PhysMemory for FakePhysMemory {
    fn alloc_pages(&self, pages: u64, limit: u64) -> Result<PhysAddr, PhysError> {
        let size = pages
            .checked_mul(PAGE_SIZE)
            .ok_or(PhysError::OutOfMemory { pages })?;
        for r in &self.regions {
            if let Ok(a) = r.pages.lock().alloc(size, DmaAddr::new(limit)) {
                return Ok(PhysAddr::new(a.as_u64()));
            }
        }
        Err(PhysError::OutOfMemory { pages })
    }

    fn free_pages(&self, base: PhysAddr, pages: u64) {
        if let Ok((r, _)) = self.region(base.as_u64(), pages * PAGE_SIZE) {
            let _ = r
                .pages
                .lock()
                .free(DmaAddr::new(base.as_u64()), pages * PAGE_SIZE);
        }
    }

    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), PhysError> {
        self.copies.fetch_add(1, Ordering::Relaxed);
        let mut tmp = vec![0; len as usize];
        self.read(src, &mut tmp)?;
        self.write(dst, &tmp)
    }

    fn zero(&self, dst: PhysAddr, len: u64) -> Result<(), PhysError> {
        self.zeroes.fetch_add(1, Ordering::Relaxed);
        let (r, off) = self.region(dst.as_u64(), len)?;
        r.mem.lock()[off..off + len as usize].fill(0);
        Ok(())
    }

    fn read(&self, src: PhysAddr, buf: &mut [u8]) -> Result<(), PhysError> {
        let (r, off) = self.region(src.as_u64(), buf.len() as u64)?;
        buf.copy_from_slice(&r.mem.lock()[off..off + buf.len()]);
        Ok(())
    }

    fn write(&self, dst: PhysAddr, data: &[u8]) -> Result<(), PhysError> {
        let (r, off) = self.region(dst.as_u64(), data.len() as u64)?;
        r.mem.lock()[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn cache_sync(&self, range: PhysAddr, len: u64, op: CacheOp) {
        self.cache_ops.lock().push((range.as_u64(), len, op));
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// A clock at 0 µs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, us: u64) {
        self.0.fetch_add(us, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything a test needs around one device.
pub struct Fixture {
    /// The fake hardware domain (`None` on the direct path).
    pub hw: Option<Arc<FakeDomain>>,
    /// The DMA domain (`None` on the direct path).
    pub domain: Option<Arc<DmaDomain>>,
    /// Fake RAM ([`FakePhysMemory::standard`]).
    pub phys: Arc<FakePhysMemory>,
    /// The clock given to the domain.
    pub clock: Arc<FakeClock>,
    /// A 1 MiB bounce pool in the low region.
    pub pool: Arc<BouncePool>,
    /// The device.
    pub dev: DmaDevice,
}

impl Fixture {
    /// A device behind a fresh fake IOMMU domain.
    ///
    /// # Errors
    ///
    /// The errors of [`Fixture::iommu_with`].
    pub fn iommu(cfg: DeviceConfig, mode: InvalidationMode) -> Result<Self, DmaError> {
        Self::iommu_with(
            cfg,
            DomainConfig {
                mode,
                ..DomainConfig::default()
            },
        )
    }

    /// A device behind a fresh fake IOMMU domain built from `config` (a clock is added).
    ///
    /// # Errors
    ///
    /// The errors of [`DmaDomain::new`], [`BouncePool::new`] and [`DmaDevice::new`] for this
    /// configuration.
    pub fn iommu_with(cfg: DeviceConfig, mut config: DomainConfig) -> Result<Self, DmaError> {
        let hw = Arc::new(FakeDomain::new());
        let phys = Arc::new(FakePhysMemory::standard());
        let clock = Arc::new(FakeClock::new());
        config.clock = Some(clock.clone());
        let domain = DmaDomain::new(hw.clone(), config)?;
        let pool = BouncePool::new(phys.clone(), 1 << 20, u32::MAX as u64)?;
        let dev = DmaDevice::new(
            cfg,
            Translation::Iommu(domain.clone()),
            phys.clone(),
            Some(pool.clone()),
        )?;
        Ok(Self {
            hw: Some(hw),
            domain: Some(domain),
            phys,
            clock,
            pool,
            dev,
        })
    }

    /// A direct-mapped device.
    ///
    /// # Errors
    ///
    /// The errors of [`BouncePool::new`] and [`DmaDevice::new`] (an untrusted `cfg` is refused on
    /// the direct path).
    pub fn direct(cfg: DeviceConfig) -> Result<Self, DmaError> {
        let phys = Arc::new(FakePhysMemory::standard());
        let pool = BouncePool::new(phys.clone(), 1 << 20, cfg.mask.min(u32::MAX as u64))?;
        let dev = DmaDevice::new(cfg, Translation::Direct, phys.clone(), Some(pool.clone()))?;
        Ok(Self {
            hw: None,
            domain: None,
            phys,
            clock: Arc::new(FakeClock::new()),
            pool,
            dev,
        })
    }

    /// The fake hardware domain (panics on the direct path: test helper).
    pub fn hw(&self) -> &FakeDomain {
        self.hw.as_deref().expect("fixture has an IOMMU")
    }

    /// The DMA domain (panics on the direct path: test helper).
    pub fn domain(&self) -> &DmaDomain {
        self.domain.as_deref().expect("fixture has an IOMMU")
    }
}
