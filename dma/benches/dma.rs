//! Host microbenchmarks of the DMA layer against the in-memory fake domain (SPEC.md
//! "Performance"): map+unmap of 4 KiB (strict and batched), 2 MiB superpage maps, 256-entry
//! scatter lists (scattered pages, and contiguous pages that merge into one run), and IOVA
//! alloc/free with 1, 10k and 1M live allocations (allocator alone and through a device).
//! Figures are ns/op of *this crate plus the fake*; the fake's own BTreeMap page table is part
//! of every number.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use dma::testing::{FakeDomain, FakePhysMemory};
use dma::{
    Attrs, DeviceConfig, Direction, DmaAddr, DmaDevice, DmaDomain, DomainConfig, IovaAllocator,
    PhysAddr, Translation, UnmapBatch, MSI_WINDOW, PAGE_SIZE,
};

fn device() -> DmaDevice {
    let hw = Arc::new(FakeDomain::new());
    let domain = DmaDomain::new(hw, DomainConfig::default()).unwrap();
    DmaDevice::new(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        Translation::Iommu(domain),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap()
}

const BUF: PhysAddr = PhysAddr::new(16 << 20);

fn map_unmap(c: &mut Criterion) {
    let dev = device();
    c.bench_function("map_unmap_4k_strict", |b| {
        b.iter(|| {
            let m = dev
                .map_phys(black_box(BUF), 4096, Direction::ToDevice, Attrs::empty())
                .unwrap();
            m.unmap().unwrap();
        })
    });

    let mut g = c.benchmark_group("map_unmap_4k_batched");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_per_flush", |b| {
        b.iter(|| {
            let mut batch = UnmapBatch::with_capacity(64);
            for i in 0..64 {
                let m = dev
                    .map_phys(
                        PhysAddr::new(BUF.as_u64() + i * PAGE_SIZE),
                        4096,
                        Direction::ToDevice,
                        Attrs::empty(),
                    )
                    .unwrap();
                m.unmap_in(&mut batch).unwrap();
            }
            batch.finish().unwrap();
        })
    });
    g.finish();

    c.bench_function("map_unmap_2m_superpage", |b| {
        b.iter(|| {
            let m = dev
                .map_phys(
                    PhysAddr::new(2 << 20),
                    2 << 20,
                    Direction::Bidirectional,
                    Attrs::empty(),
                )
                .unwrap();
            m.unmap().unwrap();
        })
    });

    let list: Vec<_> = (0..256)
        .map(|i| (PhysAddr::new((16 << 20) + i * 2 * PAGE_SIZE), PAGE_SIZE))
        .collect();
    // Physically contiguous pages: one page-table run (merged as Linux merges segments).
    let contiguous: Vec<_> = (0..256)
        .map(|i| (PhysAddr::new((16 << 20) + i * PAGE_SIZE), PAGE_SIZE))
        .collect();
    let mut g = c.benchmark_group("map_sg");
    g.throughput(Throughput::Elements(256));
    g.bench_function("256_entries", |b| {
        b.iter(|| {
            let sg = dev
                .map_sg(black_box(&list), Direction::ToDevice, Attrs::empty())
                .unwrap();
            sg.unmap().unwrap();
        })
    });
    g.bench_function("256_contiguous_entries", |b| {
        b.iter(|| {
            let sg = dev
                .map_sg(black_box(&contiguous), Direction::ToDevice, Attrs::empty())
                .unwrap();
            sg.unmap().unwrap();
        })
    });
    g.finish();
}

fn iova_live(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova_alloc_free");
    for live in [1usize, 10_000, 1_000_000] {
        g.bench_with_input(BenchmarkId::new("allocator", live), &live, |b, &live| {
            let mut a = IovaAllocator::new(
                DmaAddr::new(PAGE_SIZE),
                DmaAddr::new((1 << 39) - 1),
                &[MSI_WINDOW],
            )
            .unwrap();
            let keep: Vec<_> = (0..live)
                .map(|_| a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap())
                .collect();
            b.iter(|| {
                let x = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
                a.free(black_box(x), PAGE_SIZE).unwrap();
            });
            drop(keep);
        });
        g.bench_with_input(
            BenchmarkId::new("allocator_mixed_sizes", live),
            &live,
            |b, &live| {
                let mut a = IovaAllocator::new(
                    DmaAddr::new(PAGE_SIZE),
                    DmaAddr::new((1 << 39) - 1),
                    &[MSI_WINDOW],
                )
                .unwrap();
                let _keep: Vec<_> = (0..live)
                    .map(|i| {
                        a.alloc(PAGE_SIZE * (1 + i as u64 % 3), DmaAddr::new(u64::MAX))
                            .unwrap()
                    })
                    .collect();
                let mut n = 0u64;
                b.iter(|| {
                    // Sizes beyond the per-size caches: the buddy path.
                    n = n.wrapping_add(1);
                    let size = PAGE_SIZE * (64 + n % 64);
                    let x = a.alloc(size, DmaAddr::new(u64::MAX)).unwrap();
                    a.free(black_box(x), size).unwrap();
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("map_unmap_4k_through_device", live),
            &live,
            |b, &live| {
                let dev = device();
                let _keep: Vec<_> = (0..live)
                    .map(|_| {
                        dev.map_phys(BUF, 4096, Direction::ToDevice, Attrs::empty())
                            .unwrap()
                    })
                    .collect();
                b.iter_batched(
                    || (),
                    |()| {
                        let m = dev
                            .map_phys(BUF, 4096, Direction::ToDevice, Attrs::empty())
                            .unwrap();
                        m.unmap().unwrap();
                    },
                    BatchSize::SmallInput,
                );
            },
        );
    }
    g.finish();
}

criterion_group!(benches, map_unmap, iova_live);
criterion_main!(benches);
