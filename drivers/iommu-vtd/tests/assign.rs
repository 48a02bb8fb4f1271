//! Device assignment on the fake hardware: the atomic switch of a group between domains (exact
//! order of stores, write-backs and invalidations; DMA before and after with a warmed IOTLB;
//! negative controls for skipped invalidations), quarantine, pass-through, refusals, and the
//! leaf lookup.

use std::sync::Arc;

use dma::iommu::{IommuDomain, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::context::ContextEntry;
use iommu_vtd::fake::{qemu, FakeVtd, HostPlatform, HwEvent, TableEvent, Via};
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::{
    AssignStats, Bdf, DomainConfig, FaultReason, GroupOwner, GroupRef, PagingLevels, Platform,
    RequesterId, UnitConfig, VtdError, VtdUnit,
};
use proptest::prelude::*;

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;
type Dom = iommu_vtd::Domain<FakeVtd, Arc<HostPlatform>>;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// ECAP.PT is bit 6 (§11.4.3).
const ECAP_PT: u64 = 1 << 6;

fn rid(bus: u8, device: u8, function: u8) -> RequesterId {
    Bdf::new(0, bus, device, function).unwrap().requester_id()
}

fn unit_with(cap: u64, ecap: u64) -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::new(p.clone(), qemu::VER, cap, ecap);
    let haw = if cap == qemu::CAP_AW48 { 48 } else { 39 };
    let u = Arc::new(VtdUnit::new(regs, p, UnitConfig::new(haw)).unwrap());
    u.enable().unwrap();
    u
}

fn unit() -> Arc<Unit> {
    unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT)
}

fn hw(u: &Unit) -> &FakeVtd {
    u.registers()
}

/// A two-function group (e.g. a multifunction device without ACS) on bus 2.
fn pair() -> [RequesterId; 2] {
    [rid(2, 0, 0), rid(2, 0, 1)]
}

fn group(key: u32, rids: &[RequesterId]) -> GroupRef<'_> {
    GroupRef {
        key,
        requester_ids: rids,
    }
}

/// A domain mapping `iova` → `phys` (one 4 KiB page, read/write).
fn domain_mapping(u: &Arc<Unit>, iova: u64, phys: u64) -> Dom {
    let d = u.create_domain(DomainConfig::default()).unwrap();
    d.map(DmaAddr::new(iova), PhysAddr::new(phys), K4, RW)
        .unwrap();
    d.sync_map(DmaAddr::new(iova), K4).unwrap();
    d
}

/// Physical address of `rid`'s context entry, found through the root entry (§9.1: CTP in
/// bits 63:12; 16 bytes per entry, indexed by devfn).
fn entry_phys(u: &Unit, rid: RequesterId) -> u64 {
    let root = u.root_table().as_u64();
    let lo = u
        .platform()
        .read_cpu_u64(root + u64::from(rid.bus()) * 16)
        .unwrap();
    assert_eq!(lo & 1, 1, "root entry of bus {} present", rid.bus());
    (lo & !0xFFF) + u64::from(rid.devfn()) * 16
}

/// The raw entries of `rids` as the CPU sees them (`None`: no context table).
fn snapshot(u: &Unit, rids: &[RequesterId]) -> Vec<Option<ContextEntry>> {
    rids.iter().map(|&r| u.context_entry(r)).collect()
}

fn invalidation_count(u: &Unit) -> usize {
    hw(u).invalidations().len()
}

/// Writes `entry` straight into table memory (both halves, then one write-back), as a buggy
/// caller that skips the invalidations would.
fn poke_entry(u: &Unit, rid: RequesterId, entry: ContextEntry) {
    let phys = entry_phys(u, rid);
    let virt = u.platform().phys_to_virt(PhysAddr::new(phys)).cast::<u64>();
    assert!(!virt.is_null());
    // SAFETY: `phys` is the 16-byte-aligned context entry of `rid` in a live context-table
    // page of this platform; the test is single-threaded and nothing else writes the page.
    unsafe {
        virt.write_volatile(entry.lo);
        virt.add(1).write_volatile(entry.hi);
    }
    u.platform().flush_cache_range(virt.cast(), 16);
}

fn no_faults(u: &Unit) {
    let log = u.read_faults();
    assert!(log.records.is_empty(), "faults: {:?}", log.records);
    assert!(!log.overflow);
}

#[test]
fn a_switch_is_one_16_byte_store_per_rid_then_old_did_invalidations_and_the_wait() {
    let u = unit();
    let rids = pair();
    let a = domain_mapping(&u, 0x10_0000, 0x80_0000);
    let b = domain_mapping(&u, 0x10_0000, 0x90_0000);
    let first = u.assign_group(group(7, &rids), &a).unwrap();
    assert_eq!(
        first.atomic_stores, 0,
        "not present → present needs no atomic store"
    );
    assert_eq!(first.from_did, None);
    hw(&u).take_events();
    u.platform().record_table_events(true);

    let stats = u.assign_group(group(7, &rids), &b).unwrap();

    let new = ContextEntry::translated(b.table_root().unwrap(), b.levels(), b.did());
    let mut expected = Vec::new();
    for &r in &rids {
        let at = entry_phys(&u, r);
        expected.push(TableEvent::WrittenBack {
            phys: at,
            len: 16,
            changed: vec![(at, new.lo), (at + 8, new.hi)],
        });
    }
    for &sid in &rids {
        expected.push(TableEvent::Invalidated(Invalidation::ContextDevice {
            did: a.did(),
            sid,
        }));
    }
    expected.push(TableEvent::Invalidated(Invalidation::IotlbDomain {
        did: a.did(),
    }));
    let events = u.platform().table_events();
    let Some((TableEvent::StatusWritten { .. }, body)) = events.split_last() else {
        panic!("the submission must end with its wait's status write: {events:#x?}");
    };
    assert_eq!(body, expected.as_slice());
    // The hardware saw one submission: the three invalidations, then the wait.
    let hw_events = hw(&u).take_events();
    let kinds: Vec<_> = hw_events
        .iter()
        .map(|e| match e {
            HwEvent::Invalidation(Via::Queue, inv) => Some(*inv),
            HwEvent::WaitStatus { .. } => None,
            other => panic!("unexpected hardware event {other:?}"),
        })
        .collect();
    assert_eq!(kinds.len(), 4);
    assert_eq!(kinds[3], None, "the wait comes last");
    assert_eq!(
        stats,
        AssignStats {
            entries_written: 2,
            atomic_stores: 2,
            invalidations: 3,
            from_did: Some(a.did()),
        }
    );
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Assigned { did: b.did() })
    );
    for &r in &rids {
        assert_eq!(u.context_entry(r), Some(new));
    }
    assert!(hw(&u).violations().is_empty());
}

#[test]
fn a_switch_with_a_warm_iotlb_moves_dma_to_the_new_domain_without_a_fault() {
    let u = unit();
    let rids = pair();
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    let b = domain_mapping(&u, iova, 0x90_0000);
    u.assign_group(group(7, &rids), &a).unwrap();
    for &r in &rids {
        // Warm the context cache and the IOTLB of every requester ID.
        assert_eq!(hw(&u).dma(r, iova + 0x10, true), Ok(0x80_0010));
    }
    u.assign_group(group(7, &rids), &b).unwrap();
    for &r in &rids {
        assert_eq!(hw(&u).dma(r, iova + 0x10, true), Ok(0x90_0010));
        assert_eq!(hw(&u).dma(r, iova + 0x20, false), Ok(0x90_0020));
    }
    // And back (VM2 → VM1), again warm.
    u.assign_group(group(7, &rids), &a).unwrap();
    for &r in &rids {
        assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    }
    no_faults(&u);
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Assigned { did: a.did() })
    );
    assert_eq!(a.attached_groups(), vec![7]);
    assert!(b.attached_groups().is_empty());
}

/// The negative controls of the test above: the new entry written without the invalidations
/// (straight into table memory) leaves the fake translating through the old domain, and
/// each of the two invalidations alone is not enough, so a skipped one would be caught.
#[test]
fn skipping_an_invalidation_keeps_the_old_translation() {
    for skip in ["both", "context", "iotlb"] {
        let u = unit();
        let r = rid(2, 0, 0);
        let iova = 0x10_0000;
        let a = domain_mapping(&u, iova, 0x80_0000);
        let b = domain_mapping(&u, iova, 0x90_0000);
        u.assign_group(group(7, &[r]), &a).unwrap();
        assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
        let new = ContextEntry::translated(b.table_root().unwrap(), b.levels(), b.did());
        poke_entry(&u, r, new);
        // In the window: still the old domain, no fault.
        assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000), "{skip}");
        let ctx = Invalidation::ContextDevice {
            did: a.did(),
            sid: r,
        };
        let iotlb = Invalidation::IotlbDomain { did: a.did() };
        let issued: &[Invalidation] = match skip {
            "both" => &[],
            "context" => &[iotlb],
            _ => &[ctx],
        };
        u.invalidate(issued).unwrap();
        assert_eq!(
            hw(&u).dma(r, iova, true),
            Ok(0x80_0000),
            "skipping {skip}: the old domain still translates"
        );
        // Completing the sequence reaches the new domain.
        u.invalidate(&[ctx, iotlb]).unwrap();
        assert_eq!(hw(&u).dma(r, iova, true), Ok(0x90_0000), "{skip}");
        no_faults(&u);
    }
}

#[test]
fn the_atomic_store_probe_changes_nothing_the_walker_sees() {
    // Every x86_64 host this runs on has CMPXCHG16B, so the `NoAtomicStore` refusal cannot
    // be provoked here; what can be checked is that the probe a switch makes first (storing
    // root entry 0 back onto itself) changes nothing. Bus 0 has a context table, so root
    // entry 0 is live.
    let u = unit();
    let r = rid(0, 3, 0);
    let a = domain_mapping(&u, 0x10_0000, 0x80_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    let root = u.root_table().as_u64();
    let before: Vec<_> = (0..2)
        .map(|i| u.platform().read_device_u64(root + i * 8))
        .collect();
    let b = domain_mapping(&u, 0x10_0000, 0x90_0000);
    u.assign_group(group(7, &[r]), &b).unwrap();
    let after: Vec<_> = (0..2)
        .map(|i| u.platform().read_device_u64(root + i * 8))
        .collect();
    assert_eq!(before, after);
    assert!(u.platform().views_agree(root));
}

#[test]
fn quarantine_clears_p_first_then_zeroes_then_invalidates_the_old_domain() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    let at = entry_phys(&u, r);
    u.platform().record_table_events(true);
    let stats = u.quarantine_group(group(7, &[r])).unwrap();
    let events = u.platform().table_events();
    let expected = [
        TableEvent::WrittenBack {
            phys: at,
            len: 8,
            changed: vec![(at, 0)],
        },
        TableEvent::WrittenBack {
            phys: at + 8,
            len: 8,
            changed: vec![(at + 8, 0)],
        },
        TableEvent::Invalidated(Invalidation::ContextDevice {
            did: a.did(),
            sid: r,
        }),
        TableEvent::Invalidated(Invalidation::IotlbDomain { did: a.did() }),
    ];
    assert_eq!(&events[..expected.len()], &expected);
    assert!(matches!(
        events[expected.len()..],
        [TableEvent::StatusWritten { .. }]
    ));
    assert_eq!(
        stats,
        AssignStats {
            entries_written: 1,
            atomic_stores: 0,
            invalidations: 2,
            from_did: Some(a.did()),
        }
    );
    assert_eq!(u.context_entry(r), Some(ContextEntry { lo: 0, hi: 0 }));
}

#[test]
fn a_quarantined_group_faults_refuses_attach_until_released() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    u.quarantine_group(group(7, &[r])).unwrap();
    assert_eq!(u.group_owner(7), Some(GroupOwner::Quarantined));
    assert_eq!(u.group_domain(7), None);
    assert!(a.attached_groups().is_empty());
    // The warmed translation is gone: the DMA faults on the not-present context entry.
    assert_eq!(
        hw(&u).dma(r, iova, true),
        Err(FaultReason::ContextEntryNotPresent)
    );
    let f = u.read_faults().records[0];
    assert_eq!(
        (f.source, f.reason),
        (r, FaultReason::ContextEntryNotPresent)
    );
    u.clear_faults();
    let host = domain_mapping(&u, iova, 0xA0_0000);
    let before = snapshot(&u, &[r]);
    assert_eq!(
        host.attach_device(group(7, &[r]), r),
        Err(VtdError::GroupQuarantined { group: 7 })
    );
    // Under another key, the same requester ID is still refused.
    assert_eq!(
        host.attach_device(group(8, &[r]), r),
        Err(VtdError::GroupQuarantined { group: 7 })
    );
    assert_eq!(snapshot(&u, &[r]), before);
    // Quarantining again is a no-op.
    assert_eq!(
        u.quarantine_group(group(7, &[r])),
        Ok(AssignStats::default())
    );
    u.release_quarantine(7).unwrap();
    assert_eq!(u.group_owner(7), None);
    assert_eq!(
        u.release_quarantine(7),
        Err(VtdError::GroupNotQuarantined { group: 7 })
    );
    host.attach_device(group(7, &[r]), r).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0xA0_0000));
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Members { did: host.did() })
    );
}

#[test]
fn quarantine_then_assign_again_writes_fresh_entries() {
    let u = unit();
    let rids = pair();
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    let b = domain_mapping(&u, iova, 0x90_0000);
    u.assign_group(group(7, &rids), &a).unwrap();
    u.quarantine_group(group(7, &rids)).unwrap();
    let stats = u.assign_group(group(7, &rids), &b).unwrap();
    assert_eq!(stats.atomic_stores, 0);
    assert_eq!(stats.from_did, None);
    for &r in &rids {
        assert_eq!(hw(&u).dma(r, iova, false), Ok(0x90_0000));
    }
    no_faults(&u);
}

#[test]
fn an_unattached_group_can_be_quarantined_with_nothing_to_clear() {
    let u = unit();
    let r = rid(5, 1, 0);
    let n = invalidation_count(&u);
    assert_eq!(
        u.quarantine_group(group(9, &[r])),
        Ok(AssignStats::default())
    );
    assert_eq!(invalidation_count(&u), n);
    assert_eq!(u.group_owner(9), Some(GroupOwner::Quarantined));
    let d = domain_mapping(&u, 0x10_0000, 0x80_0000);
    assert_eq!(
        d.attach_device(group(9, &[r]), r),
        Err(VtdError::GroupQuarantined { group: 9 })
    );
    // Assigning it creates the context table it never had.
    u.assign_group(group(9, &[r]), &d).unwrap();
    assert_eq!(hw(&u).dma(r, 0x10_0000, true), Ok(0x80_0000));
}

#[test]
fn dropping_a_domain_leaves_its_assigned_groups_quarantined() {
    let u = unit();
    let rids = pair();
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    u.assign_group(group(7, &rids), &a).unwrap();
    for &r in &rids {
        assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    }
    let did = a.did();
    drop(a);
    assert_eq!(u.group_owner(7), Some(GroupOwner::Quarantined));
    for &r in &rids {
        assert_eq!(u.context_entry(r), Some(ContextEntry { lo: 0, hi: 0 }));
        assert_eq!(
            hw(&u).dma(r, iova, true),
            Err(FaultReason::ContextEntryNotPresent),
            "no stale translation through the dropped domain"
        );
        u.clear_faults();
    }
    let invs = hw(&u).invalidations();
    assert!(invs
        .iter()
        .any(|(_, i)| *i == Invalidation::IotlbDomain { did }));
    // The DID was released (nothing references it) and can be reused.
    let again = u.create_domain(DomainConfig::default()).unwrap();
    assert_eq!(again.did(), did);
    assert_eq!(
        again.attach_device(group(7, &rids), rids[0]),
        Err(VtdError::GroupQuarantined { group: 7 })
    );
    assert!(hw(&u).violations().is_empty());
}

/// Bits of a legacy context entry (§9.3), written out from the spec's layout: lower 64 bits:
/// P (0), FPD (1), TT (3:2), SLPTPTR (63:12); upper: AW (66:64), DID (87:72).
fn decode(e: ContextEntry) -> (u64, u64, u64, u64, u64, u64) {
    (
        e.lo & 1,
        (e.lo >> 1) & 1,
        (e.lo >> 2) & 0b11,
        e.lo >> 12,
        e.hi & 0b111,
        (e.hi >> 8) & 0xFFFF,
    )
}

#[test]
fn pass_through_is_encoded_as_section_9_3_says_and_dma_is_untranslated() {
    for (cap, largest_aw) in [(qemu::CAP_DEFAULT, 1), (qemu::CAP_AW48, 2)] {
        let u = unit_with(cap, qemu::ECAP_DEFAULT);
        let rids = pair();
        let stats = u.assign_group_pass_through(group(3, &rids)).unwrap();
        assert_eq!(stats.from_did, None);
        let did = u.pass_through_did().unwrap();
        assert_eq!(u.group_owner(3), Some(GroupOwner::PassThrough { did }));
        for &r in &rids {
            let e = u.context_entry(r).unwrap();
            let (p, fpd, tt, slptptr, aw, entry_did) = decode(e);
            assert_eq!((p, fpd, tt, slptptr), (1, 0, 0b10, 0), "{e:x?}");
            assert_eq!(aw, largest_aw, "AW = the largest AGAW in SAGAW");
            assert_eq!(entry_did, u64::from(did));
            // Nothing else set: bits 11:4 of the lower half, 127:88 and 71:67 of the upper.
            assert_eq!(e.lo & 0xFF0, 0);
            assert_eq!(e.hi & !0x00FF_FF07, 0);
            assert_eq!(
                e,
                ContextEntry::pass_through(
                    if largest_aw == 1 {
                        PagingLevels::Three
                    } else {
                        PagingLevels::Four
                    },
                    did,
                )
            );
            for addr in [0x1234_5678, 0x7F_FFFF_F000, 0] {
                assert_eq!(hw(&u).dma(r, addr, true), Ok(addr));
                assert_eq!(hw(&u).dma(r, addr, false), Ok(addr));
            }
        }
        // A second pass-through group shares the DID; the same group again is refused.
        u.assign_group_pass_through(group(4, &[rid(3, 0, 0)]))
            .unwrap();
        assert_eq!(u.group_owner(4), Some(GroupOwner::PassThrough { did }));
        assert_eq!(
            u.assign_group_pass_through(group(3, &rids)),
            Err(VtdError::AlreadyAssigned { group: 3, did })
        );
        no_faults(&u);
    }
}

#[test]
fn switches_between_a_domain_and_pass_through_are_atomic_and_fault_free() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    let to_pt = u.assign_group_pass_through(group(7, &[r])).unwrap();
    assert_eq!((to_pt.atomic_stores, to_pt.from_did), (1, Some(a.did())));
    assert_eq!(hw(&u).dma(r, iova, true), Ok(iova));
    let pt = u.pass_through_did().unwrap();
    let back = u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!((back.atomic_stores, back.from_did), (1, Some(pt)));
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    no_faults(&u);
    // Negative control: a pass-through entry written without invalidating keeps the cached
    // domain translation.
    poke_entry(&u, r, ContextEntry::pass_through(PagingLevels::Three, pt));
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
}

#[test]
fn pass_through_is_refused_without_ecap_pt() {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT & !ECAP_PT);
    assert!(!u.capabilities().ecap.pass_through);
    let rids = pair();
    let n = invalidation_count(&u);
    assert_eq!(
        u.assign_group_pass_through(group(3, &rids)),
        Err(VtdError::PassThroughUnsupported)
    );
    assert_eq!(snapshot(&u, &rids), vec![None, None]);
    assert_eq!(u.group_owner(3), None);
    assert_eq!(u.pass_through_did(), None);
    assert_eq!(invalidation_count(&u), n);
    // And the fake models QEMU: a TT = 10 entry on such a unit is an invalid context entry.
    let d = domain_mapping(&u, 0x10_0000, 0x80_0000);
    u.assign_group(group(3, &rids), &d).unwrap();
    poke_entry(
        &u,
        rids[0],
        ContextEntry::pass_through(PagingLevels::Three, d.did()),
    );
    u.invalidate(&[Invalidation::ContextGlobal, Invalidation::IotlbGlobal])
        .unwrap();
    assert_eq!(
        hw(&u).dma(rids[0], 0x10_0000, true),
        Err(FaultReason::InvalidContextEntry)
    );
}

#[test]
fn assigning_a_group_host_drivers_use_is_refused_and_changes_nothing() {
    let u = unit();
    let rids = pair();
    let host = domain_mapping(&u, 0x10_0000, 0x80_0000);
    let guest = domain_mapping(&u, 0x10_0000, 0x90_0000);
    host.attach_device(group(7, &rids), rids[0]).unwrap();
    let before = snapshot(&u, &rids);
    let n = invalidation_count(&u);
    let in_use = VtdError::GroupInUse {
        group: 7,
        did: host.did(),
        members: 1,
    };
    assert_eq!(u.assign_group(group(7, &rids), &guest), Err(in_use));
    assert_eq!(u.assign_group_pass_through(group(7, &rids)), Err(in_use));
    assert_eq!(u.quarantine_group(group(7, &rids)), Err(in_use));
    assert_eq!(snapshot(&u, &rids), before);
    assert_eq!(invalidation_count(&u), n);
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Members { did: host.did() })
    );
    assert_eq!(hw(&u).dma(rids[1], 0x10_0000, true), Ok(0x80_0000));
}

#[test]
fn every_refusal_changes_nothing() {
    let u = unit();
    let other_unit = unit();
    let rids = pair();
    let lone = rid(4, 0, 0);
    let a = domain_mapping(&u, 0x10_0000, 0x80_0000);
    let b = domain_mapping(&u, 0x10_0000, 0x90_0000);
    let foreign = domain_mapping(&other_unit, 0x10_0000, 0x90_0000);
    u.assign_group(group(7, &rids), &a).unwrap();
    let all = [rids[0], rids[1], lone];
    let before = snapshot(&u, &all);
    let n = invalidation_count(&u);
    let cases: Vec<(Result<AssignStats, VtdError>, VtdError)> = vec![
        (
            u.assign_group(group(7, &rids), &a),
            VtdError::AlreadyAssigned {
                group: 7,
                did: a.did(),
            },
        ),
        (
            u.assign_group(group(7, &rids[..1]), &b),
            VtdError::GroupRequesterIdsDiffer { group: 7 },
        ),
        (
            u.assign_group(group(8, &[]), &b),
            VtdError::EmptyGroup { group: 8 },
        ),
        (
            u.assign_group(group(8, &[lone, lone]), &b),
            VtdError::DuplicateRequesterId { rid: lone },
        ),
        (
            u.assign_group(group(8, &[lone, rids[1]]), &b),
            VtdError::AlreadyAttached {
                rid: rids[1],
                did: a.did(),
            },
        ),
        (
            u.assign_group(group(8, &[lone]), &foreign),
            VtdError::DomainOfAnotherUnit { did: foreign.did() },
        ),
        (
            u.quarantine_group(group(8, &[rids[0]])),
            VtdError::AlreadyAttached {
                rid: rids[0],
                did: a.did(),
            },
        ),
        (
            u.quarantine_group(group(7, &[rids[1], lone])),
            VtdError::GroupRequesterIdsDiffer { group: 7 },
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
    }
    assert_eq!(
        b.attach_device(group(7, &rids), rids[0]),
        Err(VtdError::GroupAssigned {
            group: 7,
            did: a.did(),
        })
    );
    assert_eq!(
        a.attach_device(group(7, &rids), rids[0]),
        Err(VtdError::GroupAssigned {
            group: 7,
            did: a.did(),
        })
    );
    assert_eq!(
        a.detach_device(7, rids[0]),
        Err(VtdError::GroupNotAttached { group: 7 })
    );
    assert_eq!(
        u.release_quarantine(7),
        Err(VtdError::GroupNotQuarantined { group: 7 })
    );
    assert_eq!(snapshot(&u, &all), before);
    assert_eq!(invalidation_count(&u), n);
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Assigned { did: a.did() })
    );
    assert_eq!(u.group_owner(8), None);
}

#[test]
fn a_failed_switch_leaves_the_group_with_the_new_owner_unsynced_and_a_retry_finishes_it() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    let b = domain_mapping(&u, iova, 0x90_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    hw(&u).set_rejected_descriptor(Some(iommu_vtd::invalidation::desc::TYPE_CONTEXT));
    assert!(matches!(
        u.assign_group(group(7, &[r]), &b),
        Err(VtdError::Invalidation(_))
    ));
    hw(&u).set_rejected_descriptor(None);
    // Still in the window: the cached old translation serves, no fault.
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    no_faults(&u);
    // The entry is the new domain's; the group is recorded as its owner.
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Assigned { did: b.did() })
    );
    assert_eq!(
        u.context_entry(r),
        Some(ContextEntry::translated(
            b.table_root().unwrap(),
            b.levels(),
            b.did()
        ))
    );
    // Retrying the same assignment finishes the invalidation (globally).
    let retry = u.assign_group(group(7, &[r]), &b).unwrap();
    assert_eq!(retry.invalidations, 2);
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x90_0000));
    assert_eq!(
        u.assign_group(group(7, &[r]), &b),
        Err(VtdError::AlreadyAssigned {
            group: 7,
            did: b.did()
        })
    );
}

#[test]
fn leaf_reports_the_level_and_size_the_table_uses() {
    let u = unit();
    let d = u.create_domain(DomainConfig::default()).unwrap();
    let cases = [
        (G1, 3 * G1, G1, 3u8),
        (2 * G1 + 4 * M2, 5 * M2, M2, 2),
        (0x1000, 0x7000, K4, 1),
    ];
    for &(iova, phys, size, _) in &cases {
        d.map(DmaAddr::new(iova), PhysAddr::new(phys), size, RW)
            .unwrap();
    }
    for &(iova, phys, size, level) in &cases {
        for offset in [0, 0x123, size - 1] {
            let leaf = d.leaf(iova + offset).unwrap();
            assert_eq!(
                (leaf.phys, leaf.size, leaf.level, leaf.prot),
                (phys + offset, size, level, RW)
            );
        }
        assert_eq!(d.leaf(iova + size), None);
    }
    assert_eq!(d.leaf(1 << 39), None, "outside the aperture");
}

proptest! {
    /// Against a model: one region mapped with the largest page its alignment allows; every
    /// address inside it reports the size class and level the model predicts.
    #[test]
    fn leaf_matches_the_page_size_the_alignment_allows(
        class in 0usize..3,
        slot in 1u64..8,
        pslot in 1u64..8,
        pages in 1u64..3,
        offset_frac in 0u64..1000,
    ) {
        let (size, level) = [(K4, 1u8), (M2, 2), (G1, 3)][class];
        let u = unit();
        let d = u.create_domain(DomainConfig::default()).unwrap();
        let iova = slot * size;
        let phys = pslot * size;
        let len = pages * size;
        d.map(DmaAddr::new(iova), PhysAddr::new(phys), len, Prot::READ).unwrap();
        let offset = (len - 1) * offset_frac / 999;
        let leaf = d.leaf(iova + offset).unwrap();
        prop_assert_eq!(leaf.size, size);
        prop_assert_eq!(leaf.level, level);
        prop_assert_eq!(leaf.phys, phys + offset);
        prop_assert_eq!(leaf.prot, Prot::READ);
        prop_assert_eq!(
            d.translate(DmaAddr::new(iova + offset)),
            Some((PhysAddr::new(phys + offset), Prot::READ))
        );
    }
}

#[test]
fn a_failed_quarantine_stays_quarantined_and_release_finishes_it_globally() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    hw(&u).set_rejected_descriptor(Some(iommu_vtd::invalidation::desc::TYPE_CONTEXT));
    assert!(matches!(
        u.quarantine_group(group(7, &[r])),
        Err(VtdError::Invalidation(_))
    ));
    hw(&u).set_rejected_descriptor(None);
    // Blocked in the tables, and tracked as such, whatever the caches still hold.
    assert_eq!(u.group_owner(7), Some(GroupOwner::Quarantined));
    assert_eq!(u.context_entry(r), Some(ContextEntry { lo: 0, hi: 0 }));
    let before = hw(&u).invalidations().len();
    u.release_quarantine(7).unwrap();
    let issued: Vec<_> = hw(&u).invalidations()[before..]
        .iter()
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(
        issued,
        vec![Invalidation::ContextGlobal, Invalidation::IotlbGlobal]
    );
    assert_eq!(u.group_owner(7), None);
    assert_eq!(
        hw(&u).dma(r, iova, true),
        Err(FaultReason::ContextEntryNotPresent)
    );
}

#[test]
fn dropping_the_old_domain_after_a_failed_switch_invalidates_globally() {
    let u = unit();
    let r = rid(2, 0, 0);
    let iova = 0x10_0000;
    let a = domain_mapping(&u, iova, 0x80_0000);
    let b = domain_mapping(&u, iova, 0x90_0000);
    u.assign_group(group(7, &[r]), &a).unwrap();
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x80_0000));
    hw(&u).set_rejected_descriptor(Some(iommu_vtd::invalidation::desc::TYPE_CONTEXT));
    assert!(u.assign_group(group(7, &[r]), &b).is_err());
    hw(&u).set_rejected_descriptor(None);
    // The old domain's table is still cached for `r`: its drop must not free it before an
    // invalidation that surely drops every cached copy.
    let before = hw(&u).invalidations().len();
    let a_root = a.table_root().unwrap().as_u64();
    drop(a);
    let issued: Vec<_> = hw(&u).invalidations()[before..]
        .iter()
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(
        issued,
        vec![Invalidation::ContextGlobal, Invalidation::IotlbGlobal]
    );
    assert!(
        !u.platform().is_live(a_root),
        "freed after the invalidation"
    );
    assert_eq!(hw(&u).dma(r, iova, true), Ok(0x90_0000));
    assert_eq!(
        u.group_owner(7),
        Some(GroupOwner::Assigned { did: b.did() })
    );
    // Synced by the global invalidation: assigning again is refused as a repeat.
    assert_eq!(
        u.assign_group(group(7, &[r]), &b),
        Err(VtdError::AlreadyAssigned {
            group: 7,
            did: b.did()
        })
    );
    assert!(hw(&u).violations().is_empty());
}
