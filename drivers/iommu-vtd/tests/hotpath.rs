//! The invalidation hot path on the fake hardware: how many register accesses a strict flush
//! costs (counted by the unit and, independently, by the fake unit that receives them), queue
//! space tracked from completed waits, queue errors still detected and recovered.

use std::sync::Arc;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Bdf, DomainConfig, GroupRef, RegisterStats, RequesterId, UnitConfig, VtdUnit};

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;
type Dom = iommu_vtd::Domain<FakeVtd, Arc<HostPlatform>>;

const K4: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);

fn edu() -> RequesterId {
    Bdf::new(0, 0, 3, 0).unwrap().requester_id()
}

fn enabled() -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::qemu_default(p.clone());
    let u = Arc::new(VtdUnit::new(regs, p, UnitConfig::new(39)).unwrap());
    u.enable().unwrap();
    u
}

fn domain(u: &Arc<Unit>) -> Dom {
    let d = u.create_domain(DomainConfig::default()).unwrap();
    let rid = edu();
    d.attach_device(
        GroupRef {
            key: 1,
            requester_ids: &[rid],
        },
        rid,
    )
    .unwrap();
    d
}

/// Both counts of the accesses `op` made: the unit's own, and what reached the fake unit.
fn accesses(u: &Unit, op: impl FnOnce()) -> (RegisterStats, RegisterStats) {
    let (unit0, hw0) = (u.register_stats(), u.registers().accesses());
    op();
    (
        u.register_stats().since(&unit0),
        u.registers().accesses().since(&hw0),
    )
}

/// Maps and strictly unmaps (unmap + flush) one 4 KiB page at `iova`.
fn strict_unmap(d: &Dom, iova: u64) -> RegisterStats {
    d.map(DmaAddr::new(iova), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    d.sync_map(DmaAddr::new(iova), K4).unwrap();
    let (unit, hw) = accesses(d.unit(), || {
        let mut g = IotlbGather::new();
        d.unmap(DmaAddr::new(iova), K4, &mut g).unwrap();
        d.flush(g).unwrap();
    });
    assert_eq!(
        unit, hw,
        "the unit counts exactly what reached the hardware"
    );
    unit
}

#[test]
fn register_stats_count_every_access_of_a_strict_flush() {
    let u = enabled();
    let d = domain(&u);
    let flush = strict_unmap(&d, 0x10_0000);
    // Read IQH (free space), write IQT (doorbell), read FSTS (queue errors).
    assert_eq!(
        flush,
        RegisterStats {
            reads: 2,
            writes: 1
        }
    );
    assert!(
        u.register_stats().total() > flush.total(),
        "enable counted too"
    );
    assert!(u.registers().violations().is_empty());
}
