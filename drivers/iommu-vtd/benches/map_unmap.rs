//! Host microbenchmarks: map+unmap+flush of 4 KiB (strict and batched), 2 MiB superpages, and
//! unmapping N contiguous pages, on the fake unit (cost of the driver logic, not of hardware).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Domain, DomainConfig, GroupRef, RequesterId, UnitConfig, VtdUnit};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);

fn domain() -> Domain<FakeVtd, Arc<HostPlatform>> {
    let p = Arc::new(HostPlatform::new());
    let unit =
        Arc::new(VtdUnit::new(FakeVtd::qemu_default(p.clone()), p, UnitConfig::new(39)).unwrap());
    unit.enable().unwrap();
    let d = unit.create_domain(DomainConfig::default()).unwrap();
    let rid = RequesterId::new(0x18);
    d.attach_device(
        GroupRef {
            key: 0x18,
            requester_ids: &[rid],
        },
        rid,
    )
    .unwrap();
    // Keep the tables populated so a single map/unmap does not allocate/free tables.
    d.map(DmaAddr::new(0), PhysAddr::new(0x1000_0000), K4, RW)
        .unwrap();
    d
}

fn bench(c: &mut Criterion) {
    let d = domain();
    c.bench_function("map+unmap+flush 4K (strict)", |b| {
        b.iter(|| {
            let iova = DmaAddr::new(black_box(K4));
            d.map(iova, PhysAddr::new(0x2000_0000), K4, RW).unwrap();
            let mut g = IotlbGather::new();
            d.unmap(iova, K4, &mut g).unwrap();
            d.flush(g).unwrap();
        })
    });
    c.bench_function("map+unmap 4K x16, one flush (batched)", |b| {
        b.iter(|| {
            let mut g = IotlbGather::new();
            for i in 1..17 {
                let iova = DmaAddr::new(i * K4);
                d.map(iova, PhysAddr::new(0x2000_0000 + i * K4), K4, RW)
                    .unwrap();
                d.unmap(iova, K4, &mut g).unwrap();
            }
            d.flush(g).unwrap();
        })
    });
    c.bench_function("map+unmap+flush 2M superpage", |b| {
        b.iter(|| {
            let iova = DmaAddr::new(black_box(4 * M2));
            d.map(iova, PhysAddr::new(0x4000_0000), M2, RW).unwrap();
            let mut g = IotlbGather::new();
            d.unmap(iova, M2, &mut g).unwrap();
            d.flush(g).unwrap();
        })
    });
    c.bench_function("map+unmap+flush 256 contiguous 4K pages", |b| {
        b.iter(|| {
            let iova = DmaAddr::new(black_box(0x100_0000 + K4));
            d.map(iova, PhysAddr::new(0x5000_1000), 256 * K4, RW)
                .unwrap();
            let mut g = IotlbGather::new();
            d.unmap(iova, 256 * K4, &mut g).unwrap();
            d.flush(g).unwrap();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
