//! Fault routing over fake VT-d units and QEMU's captured "complex" machine: a DMA the fake unit
//! blocks raises its fault event, the records serviced from it reach the callback of the domain
//! the faulting device is attached to (found from the context entry the unit walks), a device
//! without a domain goes to the default sink, every record is cleared exactly once, and the log
//! limiter counts with an injected clock.

use std::sync::{Arc, Mutex};

use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Dmar, PagingLevels, RequesterId, UnitConfig, VtdUnit};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::Bdf;
use vtd_platform::{
    context_domain, Fault, FaultRouteError, FaultRouter, Iommu, PciState, RateLimit, RateLimiter,
    UnitEntry, Verdict,
};

const CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");
const ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/complex.acpi");

type Fake = Iommu<FakeVtd, Arc<HostPlatform>>;

/// The fault-event message the tests program (vector 0x41 to APIC 0).
const FEADDR: u64 = 0xfee0_0000;
const FEDATA: u32 = 0x41;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn machine() -> (PciState, Fake) {
    let regions = pci::mcfg::parse(&acpi_table_bytes(ACPI, "MCFG")).unwrap();
    let cfg = FakeConfigSpace::from_qemu_fixture(CFG).unwrap();
    let topology = pci::enumerate(&cfg, &regions);
    apply_acs_policy(&cfg, &topology, AcsPolicy::Isolate);
    let groups = pci::group::compute(&cfg, &topology);
    let pci = PciState { topology, groups };
    let dmar_bytes = acpi_table_bytes(ACPI, "DMAR");
    let dmar = Dmar::parse(&dmar_bytes).unwrap();
    let platform = Arc::new(HostPlatform::new());
    let mut iommu = Fake::new(dmar.host_address_width());
    for drhd in dmar.drhds() {
        let regs = FakeVtd::qemu_default(platform.clone());
        let unit = Arc::new(VtdUnit::new(regs, platform.clone(), UnitConfig::new(39)).unwrap());
        unit.enable().unwrap();
        let (entry, _) = UnitEntry::new(unit, &drhd, &pci.topology, PagingLevels::Three);
        iommu.units.push(entry);
    }
    (pci, iommu)
}

/// A callback that appends what it gets to `into`.
fn recorder(into: &Arc<Mutex<Vec<Fault>>>) -> vtd_platform::FaultCallback {
    let into = into.clone();
    Box::new(move |f: &Fault| into.lock().unwrap().push(*f))
}

/// The fault event's work as a kernel handler does it: service the unit, dispatch what it read.
fn service(iommu: &Fake, router: &mut FaultRouter, now_us: u64) -> vtd_platform::DispatchSummary {
    let unit = &iommu.units[0].unit;
    let log = unit.service_fault_event();
    router.dispatch(0, &log, now_us, |rid| context_domain(unit, rid))
}

const EDU_A: (u8, u8, u8) = (1, 0, 0); // behind the first root port, a group of its own
const DEV_B: (u8, u8, u8) = (4, 0, 0); // another group

#[test]
fn each_fault_reaches_the_owner_of_its_sources_domain_and_no_other() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let regs = unit.registers();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let b = bdf(DEV_B.0, DEV_B.1, DEV_B.2);
    let da = iommu.domain_for(&pci, a).unwrap();
    let db = iommu.domain_for(&pci, b).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    iommu.attach(&pci, &db, b).unwrap();
    assert_ne!(da.did(), db.did());

    let (got_a, got_b, got_default) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut router = FaultRouter::new(RateLimit::default());
    router.register(0, da.did(), recorder(&got_a)).unwrap();
    router.register(0, db.did(), recorder(&got_b)).unwrap();
    router.set_default_sink(recorder(&got_default));
    unit.set_fault_event(FEADDR, FEDATA).unwrap();

    // A's DMA to an unmapped IOVA: one fault event, the record to A's owner only.
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    assert_eq!(regs.fault_events(), vec![(FEADDR, FEDATA)]);
    let s = service(&iommu, &mut router, 0);
    assert_eq!((s.to_owner, s.to_default, s.overflow), (1, 0, false));
    {
        let a_faults = got_a.lock().unwrap();
        assert_eq!(a_faults.len(), 1);
        let f = a_faults[0];
        assert_eq!(f.domain, Some(da.did()));
        assert_eq!(f.record.source, a.requester_id());
        assert_eq!(f.record.address, 0x30_0000);
        assert_eq!(f.record.reason.raw(), 5);
    }
    assert!(got_b.lock().unwrap().is_empty());
    assert!(got_default.lock().unwrap().is_empty());

    // Negative control: B's read fault goes to B's owner, not A's.
    assert!(regs.dma(b.requester_id(), 0x40_0000, false).is_err());
    assert_eq!(regs.fault_events().len(), 2, "a second event");
    service(&iommu, &mut router, 10);
    assert_eq!(got_a.lock().unwrap().len(), 1);
    let b_faults = got_b.lock().unwrap().clone();
    assert_eq!(b_faults.len(), 1);
    assert_eq!(b_faults[0].record.source, b.requester_id());
    assert_eq!(b_faults[0].record.reason.raw(), 6);
    assert_eq!(b_faults[0].domain, Some(db.did()));
}

#[test]
fn a_device_without_a_registered_domain_goes_to_the_default_sink() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let b = bdf(DEV_B.0, DEV_B.1, DEV_B.2);
    // A attached to a domain nobody registered, B attached nowhere.
    let da = iommu.domain_for(&pci, a).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    let sink = Arc::new(Mutex::new(Vec::new()));
    let mut router = FaultRouter::new(RateLimit::default());
    // A callback on another domain ID must not catch either.
    let other = Arc::new(Mutex::new(Vec::new()));
    router
        .register(0, da.did().wrapping_add(1), recorder(&other))
        .unwrap();
    router.set_default_sink(recorder(&sink));
    unit.set_fault_event(FEADDR, FEDATA).unwrap();
    let regs = unit.registers();
    // QEMU's unit has one fault recording register: service after each fault.
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    let s = service(&iommu, &mut router, 0);
    assert_eq!((s.to_owner, s.to_default), (0, 1));
    assert!(regs.dma(b.requester_id(), 0x30_0000, true).is_err());
    let s = service(&iommu, &mut router, 0);
    assert_eq!((s.to_owner, s.to_default), (0, 1));
    let mut got: Vec<(RequesterId, Option<u16>, u8)> = sink
        .lock()
        .unwrap()
        .iter()
        .map(|f| (f.record.source, f.domain, f.record.reason.raw()))
        .collect();
    got.sort_by_key(|g| g.0.get());
    // B's bus has no context table yet: reason 1 (root entry not present), no domain.
    assert_eq!(
        got,
        vec![
            (a.requester_id(), Some(da.did()), 5),
            (b.requester_id(), None, 1)
        ]
    );
    assert!(other.lock().unwrap().is_empty());

    // Registering A's domain now routes its next fault to the owner.
    let owner = Arc::new(Mutex::new(Vec::new()));
    router.register(0, da.did(), recorder(&owner)).unwrap();
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    service(&iommu, &mut router, 0);
    assert_eq!(owner.lock().unwrap().len(), 1);
    assert_eq!(sink.lock().unwrap().len(), 2);
    // ... and unregistering sends it back to the sink.
    assert!(router.unregister(0, da.did()).is_some());
    assert!(!router.is_registered(0, da.did()));
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    service(&iommu, &mut router, 0);
    assert_eq!(owner.lock().unwrap().len(), 1);
    assert_eq!(sink.lock().unwrap().len(), 3);
}

#[test]
fn records_are_dispatched_and_cleared_exactly_once() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let regs = unit.registers();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let da = iommu.domain_for(&pci, a).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut router = FaultRouter::new(RateLimit::default());
    router.register(0, da.did(), recorder(&got)).unwrap();
    unit.set_fault_event(FEADDR, FEDATA).unwrap();
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    // Unmasked: the event was sent at once, nothing left pending in FECTL.IP.
    assert_eq!(unit.fault_event_state(), (false, false));
    assert_eq!(regs.fault_events().len(), 1);
    service(&iommu, &mut router, 0);
    assert_eq!(got.lock().unwrap().len(), 1);
    // Nothing is left in the registers, so servicing again dispatches nothing.
    assert!(unit.read_faults().records.is_empty());
    let again = service(&iommu, &mut router, 0);
    assert_eq!((again.to_owner, again.to_default), (0, 0));
    assert_eq!(got.lock().unwrap().len(), 1);
    // The unit raises the next event for the next fault (nothing was left pending).
    assert!(regs.dma(a.requester_id(), 0x31_0000, true).is_err());
    assert_eq!(regs.fault_events().len(), 2);
    service(&iommu, &mut router, 0);
    let addrs: Vec<u64> = got
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.record.address)
        .collect();
    assert_eq!(addrs, vec![0x30_0000, 0x31_0000]);
}

#[test]
fn an_overflow_is_reported_and_cleared_with_the_record_that_was_kept() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let regs = unit.registers();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let b = bdf(DEV_B.0, DEV_B.1, DEV_B.2);
    let da = iommu.domain_for(&pci, a).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut router = FaultRouter::new(RateLimit::default());
    router.register(0, da.did(), recorder(&got)).unwrap();
    unit.set_fault_event(FEADDR, FEDATA).unwrap();
    // The unit's only recording register holds A's fault; B's is lost (PFO).
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    assert!(regs.dma(b.requester_id(), 0x30_0000, true).is_err());
    let s = service(&iommu, &mut router, 0);
    assert_eq!((s.to_owner, s.to_default, s.overflow), (1, 0, true));
    // Both the record and PFO were cleared: the next service sees neither.
    let s = service(&iommu, &mut router, 0);
    assert_eq!((s.to_owner, s.to_default, s.overflow), (0, 0, false));
}

#[test]
fn masked_fault_events_are_still_routed_when_polled() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let regs = unit.registers();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let da = iommu.domain_for(&pci, a).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut router = FaultRouter::new(RateLimit::default());
    router.register(0, da.did(), recorder(&got)).unwrap();
    // Polling mode: FECTL stays masked, no event is sent, the poll still finds the record.
    unit.mask_fault_event();
    assert!(regs.dma(a.requester_id(), 0x30_0000, true).is_err());
    assert!(regs.fault_events().is_empty());
    service(&iommu, &mut router, 0);
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[test]
fn registering_a_domain_twice_is_refused() {
    let mut router = FaultRouter::new(RateLimit::default());
    router.register(0, 7, Box::new(|_| {})).unwrap();
    router.register(1, 7, Box::new(|_| {})).unwrap();
    assert_eq!(
        router.register(0, 7, Box::new(|_| {})),
        Err(FaultRouteError::AlreadyRegistered { unit: 0, domain: 7 })
    );
    assert!(router.unregister(0, 8).is_none());
}

#[test]
fn the_limiter_logs_a_burst_per_window_per_source_and_counts_the_rest() {
    let limit = RateLimit {
        burst: 3,
        window_us: 1000,
    };
    let mut l = RateLimiter::new(limit);
    let a = RequesterId::new(0x100);
    let b = RequesterId::new(0x200);
    let mut verdicts = Vec::new();
    for t in 0..5 {
        verdicts.push(l.check(0, a, t * 10));
    }
    assert_eq!(
        verdicts,
        vec![
            Verdict::Log { suppressed: 0 },
            Verdict::Log { suppressed: 0 },
            Verdict::Log { suppressed: 0 },
            Verdict::Suppress,
            Verdict::Suppress,
        ]
    );
    // Another source, and the same source on another unit, have their own budgets.
    assert_eq!(l.check(0, b, 50), Verdict::Log { suppressed: 0 });
    assert_eq!(l.check(1, a, 50), Verdict::Log { suppressed: 0 });
    // Still inside a's window (started at 0): suppressed.
    assert_eq!(l.check(0, a, 999), Verdict::Suppress);
    // The next window: logged, with the count of what was not.
    assert_eq!(l.check(0, a, 1000), Verdict::Log { suppressed: 3 });
    assert_eq!(l.check(0, a, 1001), Verdict::Log { suppressed: 0 });
}

#[test]
fn the_router_suppresses_log_lines_but_never_callbacks() {
    let (pci, iommu) = machine();
    let unit = iommu.units[0].unit.clone();
    let regs = unit.registers();
    let a = bdf(EDU_A.0, EDU_A.1, EDU_A.2);
    let da = iommu.domain_for(&pci, a).unwrap();
    iommu.attach(&pci, &da, a).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut router = FaultRouter::new(RateLimit {
        burst: 2,
        window_us: 1_000_000,
    });
    router.register(0, da.did(), recorder(&got)).unwrap();
    let mut suppressed = Vec::new();
    for i in 0..5u64 {
        assert!(regs
            .dma(a.requester_id(), 0x30_0000 + i * 4096, true)
            .is_err());
        suppressed.push(service(&iommu, &mut router, i).suppressed);
    }
    assert_eq!(suppressed, vec![0, 0, 1, 1, 1]);
    assert_eq!(
        got.lock().unwrap().len(),
        5,
        "every record reached the owner"
    );
    // A window later the source is logged again.
    assert!(regs.dma(a.requester_id(), 0x40_0000, true).is_err());
    assert_eq!(service(&iommu, &mut router, 1_000_010).suppressed, 0);
}

#[test]
fn the_limiter_reuses_the_stalest_entry_beyond_its_table() {
    let mut l = RateLimiter::new(RateLimit {
        burst: 1,
        window_us: 1000,
    });
    for s in 0..vtd_platform::faults::RATE_SOURCES as u16 {
        assert_eq!(
            l.check(0, RequesterId::new(s), 10 + u64::from(s)),
            Verdict::Log { suppressed: 0 }
        );
    }
    // Source 0 is over its burst...
    assert_eq!(l.check(0, RequesterId::new(0), 100), Verdict::Suppress);
    // ...a new source evicts the stalest entry (source 0, window started at 10)...
    let new = RequesterId::new(0xffff);
    assert_eq!(l.check(0, new, 200), Verdict::Log { suppressed: 0 });
    // ...while source 1 (kept, window started at 11) is still limited.
    assert_eq!(l.check(0, RequesterId::new(1), 201), Verdict::Suppress);
}
