//! The IOVA allocator side by side with rust-vmm's `vm-allocator` (issue 12): the same operation
//! sequence on both, in ns per alloc+free pair, at 1, 100k and 1M live allocations.
//!
//! Both allocators manage the same space, `[4 KiB, 2^39)` minus the interrupt window, hold the
//! same live set and then run the same sequence: batches of [`BATCH`] allocations (sizes from a
//! fixed cycle, each aligned to its size rounded up to a power of two, which is the alignment ours
//! gives) freed oldest first. Two workloads: all 4 KiB, and mixed sizes (1 to 100 pages, both sides
//! of our per-size caches' limit).
//!
//! The live set is placed by our allocator and replayed into `vm-allocator` with
//! `AllocPolicy::ExactMatch` at the same addresses, so both hold identical ranges. (Building 1M
//! live ranges through `vm-allocator`'s own search would take hours: its search walks the interval
//! tree, O(n) per allocation in the worst case, see its `address_allocator.rs`.) Ours takes the
//! smallest free block that fits, so in this space the live set packs the bottom of it.
//! `vm-allocator` is measured with both of its search policies: `FirstMatch` (its default: lowest
//! address first, which is where ours puts ranges here) walks past the live set, O(n);
//! `LastMatch` finds the free space above it at once, its best case. The comparison that counts
//! is against the faster of the two.
//!
//! `cargo xtask bench` runs this and writes the table into docs/PERFORMANCE.md from criterion's
//! `estimates.json` files (xtask's `bench_allocator` module); the criterion IDs below are what it
//! reads.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use dma::{DmaAddr, IovaAllocator, MSI_WINDOW, PAGE_SIZE};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

/// One past the last byte of the managed space.
const SPACE_END: u64 = 1 << 39;
/// Allocations per batch; each is freed in the same batch, oldest first.
const BATCH: usize = 8;
/// Rounds of our allocator's runs (xtask takes the median).
const ROUNDS: usize = 3;
/// Live allocations held while the sequence runs.
const LIVE: [usize; 3] = [1, 100_000, 1_000_000];
/// Page counts of the live set (mixed workload).
const LIVE_MIXED: [u64; 4] = [1, 2, 3, 8];
/// Page counts of the measured sequence (mixed workload): cached sizes (up to 32 pages) and
/// sizes beyond the caches.
const OPS_MIXED: [u64; 8] = [1, 2, 3, 8, 16, 33, 64, 100];

/// A workload: the sizes of the live set and of the measured sequence.
#[derive(Clone, Copy)]
enum Workload {
    /// Every allocation 4 KiB.
    Pages4k,
    /// Mixed sizes.
    Mixed,
}

impl Workload {
    fn group(self) -> &'static str {
        match self {
            Workload::Pages4k => "iova_vs_vm_allocator_4k",
            Workload::Mixed => "iova_vs_vm_allocator_mixed",
        }
    }

    fn live_size(self, i: usize) -> u64 {
        match self {
            Workload::Pages4k => PAGE_SIZE,
            Workload::Mixed => LIVE_MIXED[i % LIVE_MIXED.len()] * PAGE_SIZE,
        }
    }

    fn op_size(self, i: usize) -> u64 {
        match self {
            Workload::Pages4k => PAGE_SIZE,
            Workload::Mixed => OPS_MIXED[i % OPS_MIXED.len()] * PAGE_SIZE,
        }
    }
}

/// The alignment ours gives a range of `size` bytes, asked of `vm-allocator` too.
fn alignment(size: u64) -> u64 {
    size.next_power_of_two()
}

/// What the sequence needs of an allocator.
trait Allocator {
    fn alloc(&mut self, size: u64) -> u64;
    fn free(&mut self, addr: u64, size: u64);
}

impl Allocator for IovaAllocator {
    fn alloc(&mut self, size: u64) -> u64 {
        IovaAllocator::alloc(self, size, DmaAddr::new(u64::MAX))
            .expect("the space has room")
            .as_u64()
    }

    fn free(&mut self, addr: u64, size: u64) {
        IovaAllocator::free(self, DmaAddr::new(addr), size).expect("a live range");
    }
}

/// `vm-allocator` with one search policy.
struct Vm {
    a: AddressAllocator,
    policy: AllocPolicy,
}

impl Vm {
    /// The same space as ours, the interrupt window taken out, and `live` allocated in place.
    fn new(policy: AllocPolicy, live: &[(u64, u64)]) -> Self {
        let mut a = AddressAllocator::new(PAGE_SIZE, SPACE_END - PAGE_SIZE).expect("space");
        let msi = MSI_WINDOW.start.as_u64();
        a.allocate(MSI_WINDOW.size, PAGE_SIZE, AllocPolicy::ExactMatch(msi))
            .expect("the interrupt window is free");
        for &(addr, size) in live {
            a.allocate(size, alignment(size), AllocPolicy::ExactMatch(addr))
                .expect("ours handed out a free range");
        }
        Self { a, policy }
    }
}

impl Allocator for Vm {
    fn alloc(&mut self, size: u64) -> u64 {
        self.a
            .allocate(size, alignment(size), self.policy)
            .expect("the space has room")
            .start()
    }

    fn free(&mut self, addr: u64, size: u64) {
        let r = RangeInclusive::new(addr, addr + size - 1).expect("a range");
        self.a.free(&r).expect("a live range");
    }
}

/// Ours with `n` live allocations of the workload's sizes, and those allocations.
fn ours_with_live(w: Workload, n: usize) -> (IovaAllocator, Vec<(u64, u64)>) {
    let mut a = IovaAllocator::new(
        DmaAddr::new(PAGE_SIZE),
        DmaAddr::new(SPACE_END - 1),
        &[MSI_WINDOW],
    )
    .expect("space");
    let live = (0..n)
        .map(|i| {
            let size = w.live_size(i);
            (Allocator::alloc(&mut a, size), size)
        })
        .collect();
    (a, live)
}

/// One batch of the sequence, starting at step `*step` of the size cycle.
fn batch(a: &mut impl Allocator, w: Workload, step: &mut usize) {
    let mut got = [(0u64, 0u64); BATCH];
    for g in &mut got {
        let size = w.op_size(*step);
        *step = step.wrapping_add(1);
        *g = (black_box(a.alloc(size)), size);
    }
    for &(addr, size) in &got {
        a.free(addr, size);
    }
}

/// Runs the sequence on `a`; criterion's time per iteration is the time per alloc+free pair.
fn measure(b: &mut criterion::Bencher<'_>, a: &mut impl Allocator, w: Workload) {
    let mut step = 0usize;
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            batch(a, w, &mut step);
        }
        start.elapsed() / BATCH as u32
    });
}

fn side_by_side(c: &mut Criterion) {
    for w in [Workload::Pages4k, Workload::Mixed] {
        let mut g = c.benchmark_group(w.group());
        // Ours at every live count, one right after the other, in [ROUNDS] rounds: the flatness
        // figure (1M live against 1 live) is taken within each round, seconds apart, so that a
        // change of load on a shared machine between rounds does not show as a change of cost.
        g.sample_size(100).sampling_mode(SamplingMode::Auto);
        for round in 0..ROUNDS {
            for live in LIVE {
                let (mut ours, _) = ours_with_live(w, live);
                let id = BenchmarkId::new(format!("ours_round{round}"), live);
                g.bench_with_input(id, &live, |b, _| measure(b, &mut ours, w));
            }
        }
        for live in LIVE {
            // The same placement ours made above (it is deterministic).
            let (_, placed) = ours_with_live(w, live);
            for (name, policy) in [
                ("vm_allocator_first_match", AllocPolicy::FirstMatch),
                ("vm_allocator_last_match", AllocPolicy::LastMatch),
            ] {
                // FirstMatch walks the live set: milliseconds per batch at 1M, so few samples.
                if live > 1 && matches!(policy, AllocPolicy::FirstMatch) {
                    g.sample_size(10).sampling_mode(SamplingMode::Flat);
                } else {
                    g.sample_size(100).sampling_mode(SamplingMode::Auto);
                }
                let mut vm = Vm::new(policy, &placed);
                g.bench_with_input(BenchmarkId::new(name, live), &live, |b, _| {
                    measure(b, &mut vm, w)
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500));
    targets = side_by_side
}
criterion_main!(benches);
