//! The invalidation hot path on the fake hardware: how many register accesses a strict flush
//! costs (counted by the unit and, independently, by the fake unit that receives them), queue
//! space tracked from completed waits, queue errors still detected and recovered.

use std::sync::Arc;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{FakeVtd, HostPlatform, Via};
use iommu_vtd::invalidation::{desc, Invalidation, InvalidationError};
use iommu_vtd::registers::{FaultStatus, FSTS, IQH, IQT};
use iommu_vtd::{
    Bdf, DomainConfig, GroupRef, RegisterIo, RegisterStats, RequesterId, UnitConfig, VtdUnit,
};

#[path = "support/psi.rs"]
mod psi;
use psi::psi;

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;
type Dom = iommu_vtd::Domain<FakeVtd, Arc<HostPlatform>>;

const K4: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// One register access: the IQT write.
const ONLY_IQT: RegisterStats = RegisterStats {
    reads: 0,
    writes: 1,
};

fn edu() -> RequesterId {
    Bdf::new(0, 0, 3, 0).unwrap().requester_id()
}

fn enabled() -> Arc<Unit> {
    enabled_with_timeout(UnitConfig::new(39).timeout_us)
}

/// A unit whose waits give up after `timeout_us` of the fake clock (10 µs per reading).
fn enabled_with_timeout(timeout_us: u64) -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::qemu_default(p.clone());
    let config = UnitConfig {
        timeout_us,
        ..UnitConfig::new(39)
    };
    let u = Arc::new(VtdUnit::new(regs, p, config).unwrap());
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
    // The IQT write and nothing else: free space is tracked from completed waits and FSTS is
    // read only when a wait does not complete.
    assert_eq!(ONLY_IQT, flush);
    // Every later one too (the tracked space refills with each completed wait), also across
    // the end of the ring.
    for i in 0..300u64 {
        assert_eq!(strict_unmap(&d, 0x20_0000 + i * K4), ONLY_IQT, "flush {i}");
    }
    assert!(
        u.register_stats().total() > flush.total(),
        "enable counted too"
    );
    assert!(u.registers().violations().is_empty());
}

#[test]
fn an_injected_queue_error_is_detected_resynchronised_and_the_next_flush_works() {
    let u = enabled();
    let d = domain(&u);
    let hw = u.registers();
    hw.set_rejected_descriptor(Some(desc::TYPE_IOTLB));
    let before = u.register_stats();
    let err = u.invalidate(&psi(0, 1)).unwrap_err();
    let InvalidationError::QueueError { fsts, .. } = err else {
        panic!("expected a queue error, got {err:?}");
    };
    assert!(fsts & FaultStatus::IQE.bits() != 0, "FSTS {fsts:#x}");
    let cost = u.register_stats().since(&before);
    assert!(
        cost.reads >= 2,
        "FSTS and IQH read on the slow path: {cost:?}"
    );
    // Resynchronised: the rejected descriptor and its wait dropped (IQT = IQH), IQE cleared.
    assert_eq!(hw.read64(IQH), hw.read64(IQT));
    assert_eq!(hw.read32(FSTS) & FaultStatus::IQE.bits(), 0);
    hw.set_rejected_descriptor(None);
    // The next submission runs, at the fast path's cost.
    assert_eq!(strict_unmap(&d, 0x40_0000), ONLY_IQT);
    assert!(hw
        .invalidations()
        .iter()
        .any(|(via, inv)| *via == Via::Queue && matches!(inv, Invalidation::IotlbPage { .. })));
    assert!(hw.violations().is_empty());
}

#[test]
fn iqh_is_read_only_when_the_tracked_space_may_be_too_small() {
    let u = enabled_with_timeout(2_000);
    let d = domain(&u);
    let hw = u.registers();
    // The head stalls: the wait times out with its descriptors unfetched.
    hw.set_queue_fetch_limit(Some(0));
    let (unit, _) = accesses(&u, || {
        assert!(matches!(
            u.invalidate(&psi(0, 150)),
            Err(InvalidationError::Timeout { .. })
        ));
    });
    assert!(unit.reads >= 1, "FSTS read before the timeout is reported");
    hw.set_queue_fetch_limit(None);
    // 151 slots are not known fetched: a batch that fits the rest needs no IQH read...
    let (small, _) = accesses(&u, || u.invalidate(&psi(1000, 50)).unwrap());
    assert_eq!(small, ONLY_IQT);
    // ...and its completed wait proves the whole ring fetched again.
    let (large, _) = accesses(&u, || u.invalidate(&psi(2000, 200)).unwrap());
    assert_eq!(large, ONLY_IQT);
    // After another timeout, a batch larger than the tracked space reads IQH (and finds room
    // once the hardware caught up).
    hw.set_queue_fetch_limit(Some(0));
    assert!(u.invalidate(&psi(3000, 150)).is_err());
    hw.set_queue_fetch_limit(None);
    let (refill, hwside) = accesses(&u, || u.invalidate(&psi(4000, 150)).unwrap());
    assert_eq!(refill, hwside);
    assert!(refill.reads >= 1, "IQH read: {refill:?}");
    assert_eq!(refill.writes, 1);
    // Every descriptor ran exactly once, in order.
    let done: Vec<Invalidation> = hw
        .invalidations()
        .into_iter()
        .map(|(_, inv)| inv)
        .filter(|inv| matches!(inv, Invalidation::IotlbPage { did: 1, .. }))
        .collect();
    let want: Vec<Invalidation> = [
        psi(0, 150),
        psi(1000, 50),
        psi(2000, 200),
        psi(3000, 150),
        psi(4000, 150),
    ]
    .concat();
    assert_eq!(done, want);
    assert_eq!(strict_unmap(&d, 0x10_0000), ONLY_IQT);
    assert!(hw.violations().is_empty());
}

#[test]
fn phase_stats_are_off_by_default_and_add_up_each_phase_when_on() {
    let u = enabled();
    let d = domain(&u);
    let p = u.platform().clone();
    // Off: the cycle counter is never read and nothing is recorded.
    let reads = p.cycle_reads();
    strict_unmap(&d, 0x10_0000);
    assert_eq!(p.cycle_reads(), reads, "no cycle reads while timing is off");
    assert_eq!(u.phase_stats(), iommu_vtd::PhaseCycles::default());
    // On: every phase of the flush's one batch is timed (the fake's counter advances one per
    // reading, so each phase spans at least one cycle); the register cost is unchanged.
    u.set_phase_timing(true);
    let before = p.cycle_reads();
    assert_eq!(strict_unmap(&d, 0x20_0000), ONLY_IQT);
    let s = u.phase_stats();
    assert_eq!(s.batches, 1);
    assert!(
        s.descriptor_write > 0 && s.submission > 0 && s.wait > 0,
        "{s:?}"
    );
    assert_eq!(
        s.descriptor_write + s.submission + s.wait,
        p.cycle_reads() - before - 1,
        "the phases tile the batch: first reading to last"
    );
    // A submission of two batches (300 requests; 254 fit the ring beside a wait) times each.
    u.invalidate(&psi(0, 300)).unwrap();
    assert_eq!(u.phase_stats().batches - s.batches, 2);
    // Off again: the totals stay.
    u.set_phase_timing(false);
    let kept = u.phase_stats();
    strict_unmap(&d, 0x30_0000);
    assert_eq!(u.phase_stats(), kept);
}
