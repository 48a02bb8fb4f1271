//! The whole path on the fake hardware: enable, domains, attach, map, DMA, unmap, flush, faults.

use std::sync::Arc;

use dma::iommu::{IommuDomain, IommuError, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{qemu, FakeVtd, HostPlatform, HwEvent, Via};
use iommu_vtd::invalidation::{desc, Invalidation};
use iommu_vtd::registers::{Global, GSTS_PERSISTENT_MASK};
use iommu_vtd::RegisterIo;
use iommu_vtd::{
    AccessKind, Bdf, DomainConfig, FaultReason, GroupRef, PagingLevels, RequesterId, UnitConfig,
    VtdError, VtdUnit,
};

#[path = "support/psi.rs"]
mod psi;
use psi::psi;

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// QEMU's `edu` at 00:03.0.
const EDU: RequesterId = RequesterId::from_parts(0, 3 << 3);

/// The requester ID of segment-0 function `bus:device.function`.
fn rid(bus: u8, device: u8, function: u8) -> RequesterId {
    Bdf::new(0, bus, device, function).unwrap().requester_id()
}

const ECAP_NO_QI: u64 = qemu::ECAP_DEFAULT & !(1 << 1);

fn unit_with(cap: u64, ecap: u64, haw: u8) -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::new(p.clone(), qemu::VER, cap, ecap);
    Arc::new(VtdUnit::new(regs, p, UnitConfig::new(haw)).unwrap())
}

fn enabled(cap: u64, ecap: u64, haw: u8) -> Arc<Unit> {
    let u = unit_with(cap, ecap, haw);
    u.enable().unwrap();
    u
}

type Dom = iommu_vtd::Domain<FakeVtd, Arc<HostPlatform>>;

/// Attaches `rid` as a one-device isolation group keyed by the requester ID.
fn attach(d: &Dom, rid: RequesterId) -> Result<(), VtdError> {
    d.attach_device(
        GroupRef {
            key: u32::from(rid.get()),
            requester_ids: &[rid],
        },
        rid,
    )
}

/// Detaches the one-device group of `rid`.
fn detach(d: &Dom, rid: RequesterId) -> Result<(), VtdError> {
    d.detach_device(u32::from(rid.get()), rid)
}

fn hw(u: &Unit) -> &FakeVtd {
    u.registers()
}

fn no_violations(u: &Unit) {
    assert_eq!(hw(u).violations(), Vec::<String>::new());
}

#[test]
fn enable_follows_the_verified_order() {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    u.enable().unwrap();
    let ev = hw(&u).events();
    let qie = Global::QIE.bits();
    let root = u.root_table().as_u64();
    let status = match ev.iter().find(|e| matches!(e, HwEvent::WaitStatus { .. })) {
        Some(HwEvent::WaitStatus { addr, .. }) => *addr,
        _ => panic!("no wait descriptor: {ev:?}"),
    };
    assert_eq!(
        ev,
        [
            HwEvent::Gcmd(qie),
            HwEvent::Gcmd(qie | Global::SRTP.bits()),
            HwEvent::RootTableLatched(root),
            HwEvent::Invalidation(Via::Queue, Invalidation::ContextGlobal),
            HwEvent::Invalidation(Via::Queue, Invalidation::IotlbGlobal),
            HwEvent::WaitStatus {
                addr: status,
                data: 1
            },
            HwEvent::Gcmd(qie | Global::TE.bits()),
        ]
    );
    // Every GCMD write was (GSTS & 0x96FF_FFFF) | bit: the fake checks and found nothing.
    no_violations(&u);
    assert!(hw(&u)
        .gsts()
        .contains(Global::TE | Global::QIE | Global::SRTP));
    assert!(u.is_enabled() && u.queued_invalidation_active());
    assert_eq!(u.enable(), Err(VtdError::AlreadyEnabled));
    assert_eq!(GSTS_PERSISTENT_MASK, 0x96FF_FFFF);
}

#[test]
fn enable_without_queued_invalidation_uses_registers() {
    let u = enabled(qemu::CAP_DEFAULT, ECAP_NO_QI, 39);
    assert!(!u.queued_invalidation_active());
    let inv = hw(&u).invalidations();
    assert_eq!(
        inv,
        [
            (Via::Register, Invalidation::ContextGlobal),
            (Via::Register, Invalidation::IotlbGlobal)
        ]
    );
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, EDU).unwrap();
    d.map(DmaAddr::new(0x1000), PhysAddr::new(0x9000), K4, RW)
        .unwrap();
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0x1000), K4, &mut g).unwrap();
    d.flush(g).unwrap();
    assert!(hw(&u)
        .invalidations()
        .iter()
        .all(|(via, _)| *via == Via::Register));
    no_violations(&u);
}

#[test]
fn registers_are_never_touched_once_qie_is_set() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, EDU).unwrap();
    for i in 0..20 {
        d.map(
            DmaAddr::new(i * K4),
            PhysAddr::new(0x10_0000 + i * K4),
            K4,
            RW,
        )
        .unwrap();
    }
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0), 20 * K4, &mut g).unwrap();
    d.flush(g).unwrap();
    detach(&d, EDU).unwrap();
    assert!(hw(&u)
        .invalidations()
        .iter()
        .all(|(via, _)| *via == Via::Queue));
    no_violations(&u);
}

#[test]
fn every_wait_times_out_instead_of_hanging() {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    hw(&u).set_unresponsive(true);
    assert_eq!(u.enable(), Err(VtdError::Timeout { what: "GSTS.QIES" }));
    // A unit that stops answering after enable: flush reports a timeout.
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0), K4, RW).unwrap();
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0), K4, &mut g).unwrap();
    hw(&u).set_unresponsive(true);
    let live = u.platform().live_pages();
    assert_eq!(d.flush(g), Err(IommuError::InvalidationTimeout));
    assert_eq!(
        u.platform().live_pages(),
        live,
        "tables not freed without a completed flush"
    );
    // Register mode too.
    let u = unit_with(qemu::CAP_DEFAULT, ECAP_NO_QI, 39);
    hw(&u).set_unresponsive(true);
    assert!(matches!(
        u.enable(),
        Err(VtdError::Timeout { .. }) | Err(VtdError::Invalidation(_))
    ));
}

#[test]
fn disable_turns_translation_then_the_queue_off() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    u.disable().unwrap();
    assert!(!hw(&u).gsts().intersects(Global::TE | Global::QIE));
    assert!(!u.queued_invalidation_active());
    no_violations(&u);
    // And back on.
    u.enable().unwrap();
    assert!(hw(&u).gsts().contains(Global::TE | Global::QIE));
    no_violations(&u);
}

#[test]
fn attach_programs_context_entries_and_invalidates() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(d.levels(), PagingLevels::Three, "default QEMU: 39-bit only");
    let rids = [EDU, rid(2, 0, 0)];
    assert_eq!(u.context_entry(rids[0]), None, "no context table yet");
    hw(&u).take_events();
    let group = GroupRef {
        key: 100,
        requester_ids: &rids,
    };
    d.attach_device(group, rids[0]).unwrap();
    assert_eq!(d.attached_groups(), [100]);
    for rid in rids {
        let c = u.context_entry(rid).unwrap();
        assert!(c.present());
        assert_eq!(c.translation_type(), 0, "untranslated requests only");
        assert_eq!(c.aw(), 1, "AW = 3-level");
        assert_eq!(c.did(), d.did());
        assert_eq!(Some(c.slptptr()), d.table_root());
    }
    let inv = hw(&u).invalidations();
    assert_eq!(
        inv,
        [
            (
                Via::Queue,
                Invalidation::ContextDevice {
                    did: d.did(),
                    sid: rids[0]
                }
            ),
            (
                Via::Queue,
                Invalidation::ContextDevice {
                    did: d.did(),
                    sid: rids[1]
                }
            ),
            (Via::Queue, Invalidation::IotlbDomain { did: d.did() }),
        ]
    );
    assert!(matches!(
        hw(&u).events().last(),
        Some(HwEvent::WaitStatus { .. })
    ));
    // Attaching again, to this or another domain, is refused and changes nothing.
    let other = u.create_domain(DomainConfig::default()).unwrap();
    let unrelated = rid(0, 4, 0);
    let overlapping = [unrelated, rids[0]];
    assert_eq!(
        other.attach_device(
            GroupRef {
                key: 200,
                requester_ids: &overlapping
            },
            unrelated
        ),
        Err(VtdError::AlreadyAttached {
            rid: rids[0],
            did: d.did()
        })
    );
    assert!(
        !u.context_entry(unrelated).unwrap().present(),
        "validation before any write"
    );
    assert_eq!(
        other.attach_device(
            GroupRef {
                key: 200,
                requester_ids: &[unrelated, unrelated]
            },
            unrelated
        ),
        Err(VtdError::DuplicateRequesterId { rid: unrelated })
    );
    assert_eq!(
        other.attach_device(
            GroupRef {
                key: 200,
                requester_ids: &[]
            },
            unrelated
        ),
        Err(VtdError::EmptyGroup { group: 200 })
    );
    assert_eq!(
        other.detach_device(100, rids[0]),
        Err(VtdError::GroupNotAttached { group: 100 })
    );
    assert_eq!(
        d.detach_device(100, unrelated),
        Err(VtdError::NotAMember {
            group: 100,
            device: unrelated
        })
    );
    assert_eq!(
        d.attached_groups(),
        [100],
        "refused detaches change nothing"
    );
    no_violations(&u);
}

#[test]
fn dma_through_the_domain_and_blocked_dma_faults() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    // A device with no domain cannot DMA anywhere.
    assert_eq!(
        hw(&u).dma(sid, 0x1000, false),
        Err(FaultReason::RootEntryNotPresent)
    );
    let faults = u.read_faults();
    assert_eq!(faults.records.len(), 1);
    let f = faults.records[0];
    assert_eq!(
        (f.source, f.address, f.reason, f.access),
        (
            EDU,
            0x1000,
            FaultReason::RootEntryNotPresent,
            AccessKind::Read
        )
    );
    u.clear_faults();
    assert!(u.read_faults().records.is_empty());

    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(
        DmaAddr::new(0x40_0000),
        PhysAddr::new(0x1234_5000),
        2 * K4,
        Prot::READ,
    )
    .unwrap();
    d.map(
        DmaAddr::new(0x50_0000),
        PhysAddr::new(0x2000_0000),
        K4,
        RW | Prot::CACHE,
    )
    .unwrap();
    d.sync_map(DmaAddr::new(0x40_0000), 2 * K4).unwrap();
    assert_eq!(hw(&u).dma(sid, 0x40_1010, false), Ok(0x1234_6010));
    assert_eq!(
        hw(&u).dma(sid, 0x50_0008, true),
        Ok(0x2000_0008),
        "CACHE with SC=0 sets no reserved bit"
    );
    // Write to a read-only page: reason 5, page-aligned address, T = write.
    assert_eq!(
        hw(&u).dma(sid, 0x40_0010, true),
        Err(FaultReason::WriteNotPermitted)
    );
    let f = u.read_faults().records[0];
    assert_eq!(
        (f.source, f.address, f.reason, f.access),
        (
            EDU,
            0x40_0000,
            FaultReason::WriteNotPermitted,
            AccessKind::Write
        )
    );
    // While F is set, a fault from another source sets PFO; from the same source it is dropped.
    assert!(hw(&u).dma(rid(0, 5, 0), 0, false).is_err());
    assert!(u.read_faults().overflow);
    u.clear_faults();
    let log = u.read_faults();
    assert!(log.records.is_empty() && !log.overflow);
    // Unmapped: reason 6 on read.
    assert_eq!(
        hw(&u).dma(sid, 0x60_0000, false),
        Err(FaultReason::ReadNotPermitted)
    );
    u.clear_faults();
    // Other devices stay isolated.
    assert_eq!(
        hw(&u).dma(rid(0, 4, 0), 0x40_0000, false),
        Err(FaultReason::ContextEntryNotPresent)
    );
    no_violations(&u);
}

#[test]
fn unmap_then_flush_cuts_off_a_warmed_translation() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0x8000), PhysAddr::new(0x30_0000), K4, RW)
        .unwrap();
    assert_eq!(
        hw(&u).dma(sid, 0x8000, true),
        Ok(0x30_0000),
        "warm the IOTLB"
    );
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0x8000), K4, &mut g).unwrap();
    // Negative control: without the flush the stale translation still works.
    assert_eq!(hw(&u).dma(sid, 0x8000, true), Ok(0x30_0000));
    d.flush(g).unwrap();
    assert_eq!(
        hw(&u).dma(sid, 0x8000, true),
        Err(FaultReason::WriteNotPermitted)
    );
    no_violations(&u);
}

#[test]
fn detach_cuts_off_a_warmed_device() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0x30_0000), K4, RW)
        .unwrap();
    assert!(hw(&u).dma(sid, 0, false).is_ok());
    detach(&d, sid).unwrap();
    assert!(!u.context_entry(sid).unwrap().present());
    assert_eq!(
        hw(&u).dma(sid, 0, false),
        Err(FaultReason::ContextEntryNotPresent)
    );
    assert!(d.attached().is_empty());
    no_violations(&u);
}

#[test]
fn unmapping_n_pages_issues_few_aligned_psi_covering_them() {
    for pages in [1u64, 3, 1000] {
        let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
        let d = u.create_domain(DomainConfig::default()).unwrap();
        attach(&d, EDU).unwrap();
        let base = 0x1_0000_3000u64;
        // Unaligned physical address: 4 KiB leaves only.
        d.map(
            DmaAddr::new(base),
            PhysAddr::new(0x1000_1000),
            pages * K4,
            RW,
        )
        .unwrap();
        // Warm the fake's IOTLB for every page.
        for p in 0..pages {
            assert!(hw(&u).dma(EDU, base + p * K4, false).is_ok());
        }
        hw(&u).take_events();
        let before = u.invalidation_stats();
        let mut g = IotlbGather::new();
        d.unmap(DmaAddr::new(base), pages * K4, &mut g).unwrap();
        d.flush(g).unwrap();
        let after = u.invalidation_stats();
        assert_eq!(
            after.submissions - before.submissions,
            1,
            "one flush, one wait"
        );
        let counted = after.requests - before.requests;
        let psi: Vec<_> = hw(&u)
            .invalidations()
            .into_iter()
            .map(|(_, i)| match i {
                Invalidation::IotlbPage {
                    addr,
                    am,
                    leaf_only,
                    ..
                } => (addr, am, leaf_only),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(
            !psi.is_empty() && psi.len() <= iommu_vtd::invalidation::PSI_DESCRIPTOR_LIMIT,
            "{} descriptors for {pages} pages",
            psi.len()
        );
        assert_eq!(
            counted,
            psi.len() as u64,
            "the unit's counter sees every request"
        );
        for &(addr, am, leaf_only) in &psi {
            assert!(am <= 18 && (addr >> 12) % (1 << am) == 0);
            assert!(
                leaf_only,
                "no table's whole region was unmapped: none freed, IH = 1"
            );
        }
        // Every page is invalidated: the warmed translations are gone.
        for p in 0..pages {
            let iova = base + p * K4;
            assert!(
                psi.iter()
                    .any(|&(addr, am, _)| iova >= addr && iova < addr + (K4 << am)),
                "{iova:#x} not covered by {psi:?}"
            );
            assert!(
                hw(&u).dma(EDU, iova, false).is_err(),
                "{iova:#x} still cached"
            );
        }
        no_violations(&u);
    }
}

#[test]
fn psi_without_cap_psi_falls_back_to_domain_selective() {
    let cap = qemu::CAP_DEFAULT & !(1 << 39);
    let u = enabled(cap, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0), K4, RW).unwrap();
    hw(&u).take_events();
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0), K4, &mut g).unwrap();
    d.flush(g).unwrap();
    assert_eq!(
        hw(&u).invalidations(),
        [(Via::Queue, Invalidation::IotlbDomain { did: d.did() })]
    );
}

#[test]
fn freed_tables_are_released_after_the_flush() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    let before = u.platform().live_pages();
    // 2 MiB of 4 KiB pages: an L2 and an L1 table; unmapping all of it frees the L1 table.
    d.map(DmaAddr::new(0x4000_0000), PhysAddr::new(0x1000), M2, RW)
        .unwrap();
    assert_eq!(u.platform().live_pages(), before + 2);
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0x4000_0000), M2, &mut g).unwrap();
    assert!(g.freed_tables());
    assert_eq!(
        u.platform().live_pages(),
        before + 2,
        "held until the invalidation completed"
    );
    d.flush(g).unwrap();
    assert_eq!(u.platform().live_pages(), before + 1);
}

#[test]
fn caching_mode_reserves_domain_zero_and_invalidates_on_map() {
    let u = enabled(qemu::CAP_CACHING_MODE, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(d.did(), 1, "domain 0 is reserved under CM");
    attach(&d, sid).unwrap();
    // Under CM, a not-present context entry is tagged with domain 0.
    assert!(hw(&u)
        .invalidations()
        .contains(&(Via::Queue, Invalidation::ContextDevice { did: 0, sid })));
    // The device touches an unmapped page: CM hardware caches the not-present entry.
    assert!(hw(&u).dma(sid, 0x7000, false).is_err());
    d.map(DmaAddr::new(0x7000), PhysAddr::new(0x9000), K4, RW)
        .unwrap();
    assert!(
        hw(&u).dma(sid, 0x7000, false).is_err(),
        "negative control: the stale not-present entry"
    );
    hw(&u).take_events();
    d.sync_map(DmaAddr::new(0x7000), K4).unwrap();
    assert_eq!(
        hw(&u).invalidations(),
        [(
            Via::Queue,
            Invalidation::IotlbPage {
                did: 1,
                addr: 0x7000,
                am: 0,
                leaf_only: false
            }
        )]
    );
    assert_eq!(hw(&u).dma(sid, 0x7000, false), Ok(0x9000));
    no_violations(&u);
}

#[test]
fn sync_map_without_cm_or_rwbf_issues_nothing() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(d.did(), 0, "without CM domain 0 is usable");
    d.map(DmaAddr::new(0), PhysAddr::new(0), K4, RW).unwrap();
    hw(&u).take_events();
    d.sync_map(DmaAddr::new(0), K4).unwrap();
    assert!(hw(&u).events().is_empty());
    // With RWBF: a write-buffer flush.
    let u = enabled(qemu::CAP_DEFAULT | 1 << 4, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0), K4, RW).unwrap();
    hw(&u).take_events();
    d.sync_map(DmaAddr::new(0), K4).unwrap();
    assert!(hw(&u).events().contains(&HwEvent::WriteBufferFlush));
    no_violations(&u);
}

#[test]
fn aw48_chooses_the_depth_asked_for() {
    let u = enabled(qemu::CAP_AW48, qemu::ECAP_DEFAULT, 48);
    let d3 = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(d3.levels(), PagingLevels::Three, "4-level only when asked");
    let d4 = u
        .create_domain(DomainConfig {
            min_address_width: 48,
            levels: None,
        })
        .unwrap();
    assert_eq!(d4.levels(), PagingLevels::Four);
    assert_eq!(d4.info().aperture_end, DmaAddr::new((1 << 48) - 1));
    let sid = EDU;
    attach(&d4, sid).unwrap();
    assert_eq!(u.context_entry(sid).unwrap().aw(), 2, "AW = 4-level");
    let iova = 1u64 << 45;
    d4.map(DmaAddr::new(iova), PhysAddr::new(0x80_0000_0000), K4, RW)
        .unwrap();
    assert_eq!(hw(&u).dma(sid, iova + 4, false), Ok(0x80_0000_0004));
    no_violations(&u);
}

#[test]
fn unsupported_depths_are_refused() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    assert_eq!(
        u.create_domain(DomainConfig {
            min_address_width: 48,
            levels: None
        })
        .unwrap_err(),
        VtdError::NoSuitableAddressWidth { requested: 48 }
    );
    assert_eq!(
        u.create_domain(DomainConfig {
            min_address_width: 39,
            levels: Some(PagingLevels::Four)
        })
        .unwrap_err(),
        VtdError::LevelsNotSupported(PagingLevels::Four)
    );
}

#[test]
fn wrong_aw_in_a_context_entry_faults_with_reason_3() {
    // The fake applies QEMU's rule: AW must be advertised in SAGAW. Corrupt AW to 4-level on a
    // 39-bit-only unit, without warming the context cache first.
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    let c = u.context_entry(sid).unwrap();
    assert_eq!(c.aw(), 1);
    let root_lo = u.platform().read_cpu_u64(u.root_table().as_u64()).unwrap();
    let hi_addr = (root_lo & !0xFFF) + u64::from(EDU.devfn()) * 16 + 8;
    assert!(u
        .platform()
        .dma_write_u32(hi_addr, (u32::from(d.did()) << 8) | 2));
    assert_eq!(
        hw(&u).dma(sid, 0, false),
        Err(FaultReason::InvalidContextEntry)
    );
}

#[test]
fn a_queue_error_is_reported_and_the_queue_recovers() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let bad = Invalidation::IotlbPage {
        did: 0,
        addr: 0,
        am: 30,
        leaf_only: false,
    };
    assert!(matches!(
        u.invalidate(&[bad]),
        Err(iommu_vtd::InvalidationError::QueueError { .. })
    ));
    u.invalidate(&[Invalidation::IotlbGlobal]).unwrap();
    assert!(hw(&u)
        .invalidations()
        .ends_with(&[(Via::Queue, Invalidation::IotlbGlobal)]));
}

#[test]
fn output_beyond_haw_is_refused() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(d.info().output_limit, 1 << 39);
    assert_eq!(
        d.map(DmaAddr::new(0), PhysAddr::new(1 << 39), K4, RW),
        Err(IommuError::OutputBeyondLimit { paddr: 1 << 39 })
    );
}

#[test]
fn missing_clflush_would_be_caught() {
    // Negative control for the clflush rule: with write-backs suppressed, the non-coherent
    // walker sees poisoned/stale tables and the DMA fails.
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    u.platform().set_flush_disabled(true);
    d.map(DmaAddr::new(0x2000), PhysAddr::new(0x3000), K4, RW)
        .unwrap();
    assert!(hw(&u).dma(sid, 0x2000, false).is_err());
    u.platform().set_flush_disabled(false);
    // With write-backs, the same works (a fresh domain: the first one's tables stay stale).
    let sid2 = rid(0, 4, 0);
    let d2 = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d2, sid2).unwrap();
    d2.map(DmaAddr::new(0x2000), PhysAddr::new(0x3000), K4, RW)
        .unwrap();
    assert_eq!(hw(&u).dma(sid2, 0x2000, false), Ok(0x3000));
}

#[test]
fn coherent_units_flush_nothing() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT | 1, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0x2000), PhysAddr::new(0x3000), K4, RW)
        .unwrap();
    assert_eq!(hw(&u).dma(sid, 0x2000, false), Ok(0x3000));
    assert!(u.platform().flush_log().is_empty());
}

#[test]
fn snoop_control_units_get_snp_on_ram_only() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT | 1 << 7, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0x3000), K4, RW | Prot::CACHE)
        .unwrap();
    d.map(
        DmaAddr::new(K4),
        PhysAddr::new(0xFE00_0000),
        K4,
        RW | Prot::CACHE | Prot::MMIO,
    )
    .unwrap();
    assert_eq!(d.translate(DmaAddr::new(0)).unwrap().1, RW | Prot::CACHE);
    assert_eq!(d.translate(DmaAddr::new(K4)).unwrap().1, RW | Prot::MMIO);
    assert_eq!(hw(&u).dma(sid, 0, true), Ok(0x3000));
}

#[test]
fn domain_ids_stay_within_nd() {
    // ND = 0: 16 domain IDs; with CM, ID 0 is reserved, so 15.
    let cap = qemu::CAP_CACHING_MODE & !0x7;
    let u = enabled(cap, qemu::ECAP_DEFAULT, 39);
    let domains: Vec<_> = (0..15)
        .map(|_| u.create_domain(DomainConfig::default()).unwrap())
        .collect();
    let mut ids: Vec<_> = domains.iter().map(|d| d.did()).collect();
    ids.sort();
    assert_eq!(ids, (1..16).collect::<Vec<u16>>());
    assert_eq!(
        u.create_domain(DomainConfig::default()).unwrap_err(),
        VtdError::DomainIdsExhausted
    );
    drop(domains);
    assert_eq!(
        u.create_domain(DomainConfig::default()).unwrap().did(),
        1,
        "IDs are reused after drop"
    );
}

#[test]
fn dropping_a_domain_detaches_and_frees_it() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let live = u.platform().live_pages();
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0x3000), 300 * K4, RW)
        .unwrap();
    assert!(hw(&u).dma(sid, 0, false).is_ok());
    drop(d);
    assert!(!u.context_entry(sid).unwrap().present());
    assert_eq!(
        hw(&u).dma(sid, 0, false),
        Err(FaultReason::ContextEntryNotPresent)
    );
    assert_eq!(
        u.platform().live_pages(),
        live + 1,
        "only the new context table stays"
    );
    no_violations(&u);
}

#[test]
fn rmrr_identity_map() {
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map_identity(0xE_0000, 0xF_FFFF).unwrap();
    assert_eq!(hw(&u).dma(sid, 0xE_1234, false), Ok(0xE_1234));
    assert_eq!(hw(&u).dma(sid, 0xF_F000, true), Ok(0xF_F000));
}

#[test]
fn units_and_domains_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Unit>();
    assert_send_sync::<iommu_vtd::Domain<FakeVtd, Arc<HostPlatform>>>();
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let u = u.clone();
            std::thread::spawn(move || {
                let d = u.create_domain(DomainConfig::default()).unwrap();
                attach(&d, rid(1, t as u8, 0)).unwrap();
                for i in 0..64 {
                    let iova = DmaAddr::new(i * K4);
                    d.map(iova, PhysAddr::new((t << 30) | (i * K4)), K4, RW)
                        .unwrap();
                    let mut g = IotlbGather::new();
                    d.unmap(iova, K4, &mut g).unwrap();
                    d.flush(g).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    no_violations(&u);
}

/// A unit whose waits give up after 2 ms of the fake clock (fast failure tests).
fn enabled_quick() -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::qemu_default(p.clone());
    let config = UnitConfig {
        timeout_us: 2_000,
        ..UnitConfig::new(39)
    };
    let u = Arc::new(VtdUnit::new(regs, p, config).unwrap());
    u.enable().unwrap();
    u
}

#[test]
fn a_failed_detach_keeps_the_ids_and_drop_leaks_the_table() {
    let u = enabled_quick();
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0x3000), K4, RW)
        .unwrap();
    let did = d.did();
    let root = d.table_root().unwrap().as_u64();
    let tables = u.platform().live_page_list();
    // The context entry is cleared, but the context-cache invalidation is rejected: a cached
    // copy may still point at the table.
    hw(&u).set_rejected_descriptor(Some(desc::TYPE_CONTEXT));
    assert!(matches!(
        detach(&d, sid),
        Err(VtdError::Invalidation(
            iommu_vtd::InvalidationError::QueueError { .. }
        ))
    ));
    assert_eq!(d.attached(), [sid], "still tracked after the failed detach");
    // Dropping retries the detach, which fails again: nothing may be freed or reused.
    drop(d);
    assert!(u.platform().is_live(root), "the table is leaked, not freed");
    assert!(
        tables.iter().all(|&pg| u.platform().is_live(pg)),
        "no table page freed"
    );
    hw(&u).set_rejected_descriptor(None);
    let other = u.create_domain(DomainConfig::default()).unwrap();
    assert_ne!(other.did(), did, "the domain ID is not released");
}

#[test]
fn drop_after_a_failed_detach_invalidates_the_cached_context() {
    let u = enabled_quick();
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(DmaAddr::new(0), PhysAddr::new(0x3000), K4, RW)
        .unwrap();
    // Warm the context cache, then fail the detach's context-cache invalidation.
    assert_eq!(hw(&u).dma(sid, 0, false), Ok(0x3000));
    hw(&u).set_rejected_descriptor(Some(desc::TYPE_CONTEXT));
    assert!(detach(&d, sid).is_err());
    hw(&u).set_rejected_descriptor(None);
    let did = d.did();
    // The drop detaches `sid` again, so the cached entry goes before the table is freed.
    drop(d);
    assert!(hw(&u).invalidations().ends_with(&[
        (Via::Queue, Invalidation::ContextDevice { did, sid }),
        (Via::Queue, Invalidation::IotlbDomain { did }),
    ]));
    assert_eq!(
        hw(&u).dma(sid, 0, false),
        Err(FaultReason::ContextEntryNotPresent),
        "no walk through a stale context entry into freed memory"
    );
    no_violations(&u);
}

#[test]
fn a_group_whose_detach_failed_cannot_be_taken_by_another_domain() {
    let u = enabled_quick();
    let sid = EDU;
    let a = u.create_domain(DomainConfig::default()).unwrap();
    attach(&a, sid).unwrap();
    hw(&u).set_rejected_descriptor(Some(desc::TYPE_CONTEXT));
    assert!(detach(&a, sid).is_err());
    hw(&u).set_rejected_descriptor(None);
    // The entry is cleared but a cached copy may remain: the group is still a's.
    let b = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(
        attach(&b, sid),
        Err(VtdError::GroupAttachedElsewhere {
            group: u32::from(sid.get()),
            did: a.did()
        })
    );
    assert_eq!(u.group_domain(u32::from(sid.get())), Some(a.did()));
    // a's drop retries the detach and succeeds; then b may take the device.
    drop(a);
    assert_eq!(u.group_domain(u32::from(sid.get())), None);
    attach(&b, sid).unwrap();
    let entry = u.context_entry(sid).unwrap();
    assert!(entry.present());
    assert_eq!(entry.did(), b.did());
    no_violations(&u);
}

#[test]
fn a_stalled_queue_is_never_overwritten() {
    let u = enabled_quick();
    let iqt = || hw(&u).read64(iommu_vtd::registers::IQT);
    // The head stops: each batch times out with its descriptors still unfetched.
    hw(&u).set_queue_fetch_limit(Some(0));
    let (a, b, c) = (psi(0, 100), psi(1000, 100), psi(2000, 100));
    let wait_timeout = iommu_vtd::InvalidationError::Timeout {
        what: "the invalidation wait descriptor",
    };
    assert_eq!(u.invalidate(&a), Err(wait_timeout));
    assert_eq!(u.invalidate(&b), Err(wait_timeout));
    // 3 + 101 + 101 slots used: 101 more do not fit without overwriting `a`.
    let tail = iqt();
    assert_eq!(
        u.invalidate(&c),
        Err(iommu_vtd::InvalidationError::Timeout {
            what: "free invalidation queue slots"
        })
    );
    assert_eq!(iqt(), tail, "nothing written");
    // The hardware fetches 60 descriptors (the ring's head moves past the wrap point of the
    // next batch): now it fits, across the end of the ring.
    hw(&u).set_queue_fetch_limit(Some(60));
    assert_eq!(u.invalidate(&c), Err(wait_timeout));
    assert!(iqt() < tail, "the batch wrapped around");
    // Once the hardware catches up, everything ran exactly once, in order.
    hw(&u).set_queue_fetch_limit(None);
    u.invalidate(&[Invalidation::IotlbGlobal]).unwrap();
    let done: Vec<Invalidation> = hw(&u)
        .invalidations()
        .into_iter()
        .map(|(_, inv)| inv)
        .filter(|inv| matches!(inv, Invalidation::IotlbPage { .. }))
        .collect();
    let want: Vec<Invalidation> = a.iter().chain(&b).chain(&c).copied().collect();
    assert_eq!(done, want);
    no_violations(&u);
}

#[test]
fn register_invalidation_not_performed_is_an_error() {
    // Register mode (no QI); the unit acknowledges but reports CAIG/IAIG = 00.
    let u = enabled(qemu::CAP_DEFAULT, ECAP_NO_QI, 39);
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, EDU).unwrap();
    d.map(DmaAddr::new(0x1000), PhysAddr::new(0x9000), K4, RW)
        .unwrap();
    assert_eq!(hw(&u).dma(EDU, 0x1000, true), Ok(0x9000));
    hw(&u).set_register_invalidation_not_performed(true);
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0x1000), K4, &mut g).unwrap();
    assert_eq!(d.flush(g), Err(IommuError::InvalidationTimeout));
    assert_eq!(
        u.invalidate(&[Invalidation::IotlbGlobal]),
        Err(iommu_vtd::InvalidationError::NotPerformed {
            what: "IOTLB (IOTLB_REG.IAIG = 00)"
        })
    );
    assert_eq!(
        u.invalidate(&[Invalidation::ContextGlobal]),
        Err(iommu_vtd::InvalidationError::NotPerformed {
            what: "context-cache (CCMD.CAIG = 00)"
        })
    );
    // The stale translation is indeed still there: reporting success would have been a lie.
    assert_eq!(hw(&u).dma(EDU, 0x1000, true), Ok(0x9000));
    hw(&u).set_register_invalidation_not_performed(false);
    u.invalidate(&[Invalidation::IotlbGlobal]).unwrap();
    assert_eq!(
        hw(&u).dma(EDU, 0x1000, true),
        Err(FaultReason::WriteNotPermitted)
    );
}

/// QEMU's CAP with NFR = 1: two fault recording registers.
const CAP_TWO_RECORDS: u64 = qemu::CAP_DEFAULT | 1 << 40;

#[test]
fn read_and_clear_clears_only_what_it_read() {
    let (a, b) = (EDU, rid(0, 4, 0));
    // Two records: a fault from `b` lands in the free record between the read and the clear.
    let u = enabled(CAP_TWO_RECORDS, qemu::ECAP_DEFAULT, 39);
    assert_eq!(u.capabilities().cap.fault_records, 2);
    assert!(hw(&u).dma(a, 0x1000, false).is_err());
    hw(&u).inject_fault_on_next_clear(b, 0x2000, true);
    let first = u.read_and_clear_faults();
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.records[0].source, EDU);
    let second = u.read_and_clear_faults();
    assert_eq!(
        second.records.len(),
        1,
        "the late fault was not cleared unread"
    );
    let f = second.records[0];
    assert_eq!(
        (f.source.bus(), f.source.device(), f.address),
        (0, 4, 0x2000)
    );
    assert!(u.read_and_clear_faults().records.is_empty());
    // Negative control: the old read-then-clear-everything pair loses that fault.
    assert!(hw(&u).dma(a, 0x1000, false).is_err());
    hw(&u).inject_fault_on_next_clear(b, 0x2000, true);
    assert_eq!(u.read_faults().records.len(), 1);
    u.clear_faults();
    assert!(u.read_faults().records.is_empty(), "cleared unread");

    // One record (QEMU's default): the late fault finds it busy and sets PFO; PFO was not seen
    // by the read, so it must survive the clear.
    let u = enabled(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    assert!(hw(&u).dma(a, 0x1000, false).is_err());
    hw(&u).inject_fault_on_next_clear(b, 0x2000, true);
    let first = u.read_and_clear_faults();
    assert_eq!((first.records.len(), first.overflow), (1, false));
    let second = u.read_and_clear_faults();
    assert!(second.records.is_empty());
    assert!(second.overflow, "the overflow after the read is reported");
    let third = u.read_and_clear_faults();
    assert!(!third.overflow, "and cleared once it was seen");
    // Negative control: clear_faults clears PFO unseen.
    assert!(hw(&u).dma(a, 0x1000, false).is_err());
    hw(&u).inject_fault_on_next_clear(b, 0x2000, true);
    assert!(!u.read_faults().overflow);
    u.clear_faults();
    assert!(!u.read_faults().overflow, "the overflow was cleared unread");
}

/// A unit that firmware left in the given state, not yet enabled by us.
fn left_by_firmware(qi: bool, te: bool, ire: bool, pending: usize) -> Arc<Unit> {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT, 39);
    hw(&u).firmware_left(qi, te, ire, pending);
    hw(&u).take_events();
    u
}

/// After a hand-off: our root table is active, translation and our queue are on, an attached
/// device translates and an unattached one is blocked.
fn works_after_handoff(u: &Arc<Unit>) {
    assert!(u.is_enabled() && u.queued_invalidation_active());
    assert!(hw(u).gsts().contains(Global::TE | Global::QIE));
    assert_eq!(hw(u).active_root(), Some(u.root_table().as_u64()));
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, EDU).unwrap();
    d.map(DmaAddr::new(0x1000), PhysAddr::new(0x9000), K4, RW)
        .unwrap();
    assert_eq!(hw(u).dma(EDU, 0x1000, false), Ok(0x9000));
    assert_eq!(
        hw(u).dma(rid(5, 0, 0), 0x1000, false),
        Err(FaultReason::RootEntryNotPresent),
        "the firmware's tables no longer apply"
    );
    no_violations(u);
}

#[test]
fn enable_takes_over_a_queue_firmware_left_on() {
    let u = left_by_firmware(true, false, false, 0);
    u.enable().unwrap();
    let qie = Global::QIE.bits();
    let ev = hw(&u).events();
    // QIE is cleared before anything else (then IQA is reprogrammed: the fake flags an IQA
    // write while QIE is on as a violation).
    assert_eq!(ev.first(), Some(&HwEvent::Gcmd(0)));
    assert!(ev.contains(&HwEvent::Gcmd(qie)));
    assert_eq!(
        u.firmware_state(),
        Some(iommu_vtd::FirmwareState {
            queued_invalidation: true,
            ..Default::default()
        })
    );
    works_after_handoff(&u);
}

#[test]
fn a_firmware_queue_that_never_drains_times_out() {
    let u = {
        // A stalled firmware queue with two unfetched descriptors, and a quick timeout.
        let p = Arc::new(HostPlatform::new());
        let regs = FakeVtd::qemu_default(p.clone());
        regs.firmware_left(true, false, false, 2);
        let config = UnitConfig {
            timeout_us: 2_000,
            ..UnitConfig::new(39)
        };
        Arc::new(VtdUnit::new(regs, p, config).unwrap())
    };
    assert_eq!(
        u.enable(),
        Err(VtdError::Timeout {
            what: "the firmware's invalidation queue to drain"
        })
    );
    assert!(
        hw(&u).gsts().contains(Global::QIE),
        "a queue still holding work is not switched off"
    );
    no_violations(&u);
}

#[test]
fn enable_takes_over_translation_firmware_left_on() {
    let u = left_by_firmware(false, true, false, 0);
    let firmware_root = hw(&u).active_root();
    assert!(firmware_root.is_some());
    u.enable().unwrap();
    assert_ne!(hw(&u).active_root(), firmware_root);
    // TE was never turned off (no window without translation): no GCMD write without TE.
    let te = Global::TE.bits();
    assert!(hw(&u)
        .events()
        .iter()
        .all(|e| !matches!(e, HwEvent::Gcmd(v) if v & te == 0)));
    assert_eq!(u.firmware_state().map(|f| f.translation), Some(true));
    works_after_handoff(&u);
}

#[test]
fn enable_takes_over_queue_translation_and_keeps_interrupt_remapping() {
    let u = left_by_firmware(true, true, true, 0);
    u.enable().unwrap();
    assert!(
        hw(&u).gsts().contains(Global::IRE),
        "interrupt remapping left as it was"
    );
    assert_eq!(
        u.firmware_state(),
        Some(iommu_vtd::FirmwareState {
            translation: true,
            queued_invalidation: true,
            interrupt_remapping: true,
        })
    );
    works_after_handoff(&u);
}

/// A first attach whose invalidation fails leaves the group tracked for its domain with no
/// member (the caller got the error and holds nothing); the same device's retry completes the
/// invalidation and succeeds, and another domain still cannot take the group meanwhile.
#[test]
fn a_failed_first_attach_can_be_retried_by_the_same_device() {
    let u = enabled_quick();
    let sid = EDU;
    let a = u.create_domain(DomainConfig::default()).unwrap();
    hw(&u).set_rejected_descriptor(Some(desc::TYPE_CONTEXT));
    assert!(matches!(attach(&a, sid), Err(VtdError::Invalidation(_))));
    hw(&u).set_rejected_descriptor(None);
    assert_eq!(u.group_domain(u32::from(sid.get())), Some(a.did()));
    let b = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(
        attach(&b, sid),
        Err(VtdError::GroupAttachedElsewhere {
            group: u32::from(sid.get()),
            did: a.did()
        })
    );
    attach(&a, sid).unwrap();
    assert!(u.context_entry(sid).unwrap().present());
    // Now really a member: a second attach of the same device is refused as such.
    assert_eq!(
        attach(&a, sid),
        Err(VtdError::AlreadyMember {
            group: u32::from(sid.get()),
            device: sid
        })
    );
    no_violations(&u);
}

/// A device whose own requester ID is not among the group's is not a member: refused before
/// anything is written.
#[test]
fn a_device_outside_the_group_is_refused() {
    let u = enabled_quick();
    let sid = EDU;
    let a = u.create_domain(DomainConfig::default()).unwrap();
    let group = GroupRef {
        key: 7,
        requester_ids: &[sid],
    };
    assert_eq!(
        a.attach_device(group, RequesterId::new(sid.get() + 1)),
        Err(VtdError::NotAMember {
            group: 7,
            device: RequesterId::new(sid.get() + 1)
        })
    );
    assert_eq!(u.group_domain(7), None);
    assert!(!u.context_entry(sid).is_some_and(|c| c.present()));
    no_violations(&u);
}

/// `prepare` sets up the queue and root table without translating; devices attached then are
/// translated from the instant `start_translation` sets TE (an RMRR user never loses its
/// memory); `start_translation` before `prepare` is refused, and `enable` after both is
/// `AlreadyEnabled`.
#[test]
fn prepare_attach_then_start_translation() {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::qemu_default(p.clone());
    let u = Arc::new(VtdUnit::new(regs, p, UnitConfig::new(39)).unwrap());
    assert!(matches!(
        u.start_translation(),
        Err(VtdError::Unsupported { .. })
    ));
    u.prepare().unwrap();
    assert!(!hw(&u).gsts().contains(Global::TE));
    assert!(!u.is_enabled());
    let sid = EDU;
    let d = u.create_domain(DomainConfig::default()).unwrap();
    attach(&d, sid).unwrap();
    d.map(
        DmaAddr::new(0x7_0000),
        PhysAddr::new(0x7_0000),
        0x1000,
        Prot::READ | Prot::WRITE,
    )
    .unwrap();
    d.sync_map(DmaAddr::new(0x7_0000), 0x1000).unwrap();
    u.start_translation().unwrap();
    assert!(hw(&u).gsts().contains(Global::TE));
    assert!(u.is_enabled());
    // The first DMA after TE already translates through the domain; others are blocked.
    assert_eq!(hw(&u).dma(sid, 0x7_0000, true), Ok(0x7_0000));
    assert!(hw(&u)
        .dma(RequesterId::new(sid.get() + 1), 0x7_0000, true)
        .is_err());
    assert_eq!(u.enable(), Err(VtdError::AlreadyEnabled));
    assert_eq!(u.start_translation(), Err(VtdError::AlreadyEnabled));
    no_violations(&u);
}
