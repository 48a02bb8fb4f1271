//! The map/unmap fast path allocates nothing (SPEC.md "Performance"; issue 12: the kernel heap
//! is a linked-list allocator): a counting global allocator, counting per thread so that tests
//! running in parallel do not see each other's allocations, proves 0 heap allocations per
//! strict 4 KiB map+unmap pair after warm-up, per deferred pair (the deferred queue keeps its
//! capacity across flushes) and per push into an [`UnmapBatch::with_capacity`] batch.
//!
//! The domain under the device is [`CountingDomain`], an allocation-free [`IommuDomain`] that
//! checks what it is asked (exact unmap of what was mapped, no map over a live entry, no unmap
//! of a never-mapped range) in a fixed-size table: the figures are the DMA crate's own. The
//! `callgrind_*` tests (ignored) run many pairs through [`pairs`] for
//! `valgrind --tool=callgrind --toggle-collect=*pairs*` (instructions per pair).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;

use dma::iommu::{DomainInfo, IommuDomain, IommuError, IotlbGather, PageSizes, Prot};
use dma::testing::{FakeClock, FakeDomain, FakePhysMemory};
use dma::{
    Attrs, DeferredPolicy, DeviceConfig, Direction, DmaAddr, DmaDevice, DmaDomain, DomainConfig,
    InvalidationMode, PhysAddr, Translation, UnmapBatch, PAGE_SIZE,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a plain
// thread-local cell (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations (and reallocations) made by this thread so far.
fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const SLOTS: usize = 64;

/// An allocation-free [`IommuDomain`]: up to [`SLOTS`] live ranges in a fixed table, with the
/// trait's rules checked (an unmap must match a live map exactly, a map must not overlap one).
struct CountingDomain {
    live: spin::Mutex<[(u64, u64); SLOTS]>,
}

impl CountingDomain {
    fn new() -> Self {
        Self {
            live: spin::Mutex::new([(0, 0); SLOTS]),
        }
    }

    fn live_ranges(&self) -> usize {
        self.live.lock().iter().filter(|r| r.1 != 0).count()
    }
}

impl IommuDomain for CountingDomain {
    fn info(&self) -> DomainInfo {
        DomainInfo {
            aperture_end: DmaAddr::new((1 << 39) - 1),
            page_sizes: PageSizes::SIZE_4K,
            output_limit: 1 << 46,
        }
    }

    fn map(&self, iova: DmaAddr, paddr: PhysAddr, size: u64, _: Prot) -> Result<(), IommuError> {
        let (a, p) = (iova.as_u64(), paddr.as_u64());
        if size == 0 || !(a | p | size).is_multiple_of(PAGE_SIZE) {
            return Err(IommuError::Misaligned {
                iova: a,
                paddr: p,
                size,
            });
        }
        let mut live = self.live.lock();
        if let Some(r) = live
            .iter()
            .find(|r| r.1 != 0 && r.0 < a + size && a < r.0 + r.1)
        {
            return Err(IommuError::AlreadyMapped { iova: r.0.max(a) });
        }
        let free = live
            .iter_mut()
            .find(|r| r.1 == 0)
            .ok_or(IommuError::OutOfMemory)?;
        *free = (a, size);
        Ok(())
    }

    fn sync_map(&self, _: DmaAddr, _: u64) -> Result<(), IommuError> {
        Ok(())
    }

    fn unmap(&self, iova: DmaAddr, size: u64, gather: &mut IotlbGather) -> Result<(), IommuError> {
        let a = iova.as_u64();
        let mut live = self.live.lock();
        let r = live
            .iter_mut()
            .find(|r| r.1 != 0 && r.0 == a && r.1 == size)
            .ok_or(IommuError::NotMapped { iova: a })?;
        *r = (0, 0);
        gather.add(iova, size);
        Ok(())
    }

    fn flush(&self, _: IotlbGather) -> Result<(), IommuError> {
        Ok(())
    }

    fn translate(&self, _: DmaAddr) -> Option<(PhysAddr, Prot)> {
        None
    }
}

fn device_on(hw: Arc<dyn IommuDomain>, mode: InvalidationMode) -> DmaDevice {
    let domain = DmaDomain::new(
        hw,
        DomainConfig {
            mode,
            clock: Some(Arc::new(FakeClock::new())),
            ..DomainConfig::default()
        },
    )
    .unwrap();
    DmaDevice::new(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        Translation::Iommu(domain),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap()
}

const BUF: u64 = 16 << 20;

/// `n` strict (or deferred, per the device's domain) 4 KiB map+unmap pairs.
#[inline(never)]
fn pairs(dev: &DmaDevice, n: u64) {
    for i in 0..n {
        let phys = PhysAddr::new(BUF + (i % 16) * PAGE_SIZE);
        let m = dev
            .map_phys(black_box(phys), 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        black_box(m.dma_addr());
        m.unmap().unwrap();
    }
}

/// Allocations made by `f`.
fn allocs_in(f: impl FnOnce()) -> u64 {
    let before = allocs();
    f();
    allocs() - before
}

#[test]
fn the_counter_sees_an_allocation() {
    // Negative control: the counter is live on this thread.
    let n = allocs_in(|| drop(black_box(Box::new(7u64))));
    assert_eq!(n, 1);
}

#[test]
fn a_strict_pair_allocates_nothing() {
    let hw = Arc::new(CountingDomain::new());
    let dev = device_on(hw.clone(), InvalidationMode::Strict);
    pairs(&dev, 64); // warm-up: the IOVA allocator's caches fill
    assert_eq!(allocs_in(|| pairs(&dev, 1000)), 0);
    assert_eq!(hw.live_ranges(), 0, "every pair unmapped what it mapped");
}

#[test]
fn a_deferred_pair_allocates_nothing() {
    let hw = Arc::new(CountingDomain::new());
    // At most 8 pending: the IOVA allocator's index of live allocations (`iova.rs`, a BTreeMap)
    // allocates a tree node whenever more than 11 allocations are live at once, which a larger
    // queue of quarantined IOVAs reaches on every cycle; that allocator is measured on its own.
    let policy = DeferredPolicy {
        max_pending: 8,
        max_delay_us: u64::MAX,
    };
    let dev = device_on(hw.clone(), InvalidationMode::Deferred(policy));
    pairs(&dev, 64); // warm-up: several flushes, the queue reaches its capacity
    let domain = dev.domain().unwrap().clone();
    let n = allocs_in(|| pairs(&dev, 1000));
    assert_eq!(n, 0, "the deferred queue keeps its capacity across flushes");
    assert!(domain.pending_unmaps() < 8);
    domain.flush_deferred().unwrap();
}

#[test]
fn a_batch_with_capacity_pushes_without_allocating() {
    let hw = Arc::new(CountingDomain::new());
    let dev = device_on(hw.clone(), InvalidationMode::Strict);
    pairs(&dev, 64);
    let maps: Vec<_> = (0..32)
        .map(|i| {
            dev.map_phys(
                PhysAddr::new(BUF + i * PAGE_SIZE),
                4096,
                Direction::ToDevice,
                Attrs::empty(),
            )
            .unwrap()
        })
        .collect();
    let mut batch = UnmapBatch::with_capacity(32);
    let n = allocs_in(|| {
        for m in maps {
            m.unmap_in(&mut batch).unwrap();
        }
    });
    assert_eq!(n, 0, "the batch made its room up front");
    assert_eq!(batch.len(), 32);
    batch.finish().unwrap();
    assert_eq!(hw.live_ranges(), 0);
}

/// For callgrind: strict pairs over the allocation-free domain (the DMA crate alone).
#[test]
#[ignore = "run under valgrind --tool=callgrind"]
fn callgrind_strict_counting_domain() {
    let dev = device_on(Arc::new(CountingDomain::new()), InvalidationMode::Strict);
    pairs(&dev, 64);
    pairs(&dev, 10_000);
}

/// For callgrind: strict pairs over the host fake ([`FakeDomain`], a BTreeMap page table).
#[test]
#[ignore = "run under valgrind --tool=callgrind"]
fn callgrind_strict_fake_domain() {
    let dev = device_on(Arc::new(FakeDomain::new()), InvalidationMode::Strict);
    pairs(&dev, 64);
    pairs(&dev, 10_000);
}
