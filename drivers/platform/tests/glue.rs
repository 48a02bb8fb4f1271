//! The glue over QEMU's captured "complex" machine (root ports, a switch, conventional bridges, a
//! pxb; config space and DMAR captured from QEMU 7.2) and fake VT-d units: which unit translates
//! a function, the reserved IOVA regions, group attach with RMRRs, memberships and default
//! domains. Behaviour is judged by what the fake unit does with a DMA (the address it reaches
//! or the fault), never by the glue's own bookkeeping alone.

use std::sync::Arc;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DeviceConfig, DmaAddr, InvalidationMode, PhysAddr, PhysMemory, ReservedKind};
use iommu_vtd::dmar::{drhd_flags, scope_type, PathEntry, ScopeSpec};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Dmar, DmarBuilder, PagingLevels, UnitConfig, VtdUnit};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::Bdf;
use vtd_platform::{
    reserved_regions, setup_device, unit_for, AttachError, DmaResources, Iommu, PciState, PciView,
    RmrrInfo, SetupError, UnitEntry,
};

const CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");
const ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/complex.acpi");

type Fake = Iommu<FakeVtd, Arc<HostPlatform>>;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn pci_state() -> PciState {
    let regions = pci::mcfg::parse(&acpi_table_bytes(ACPI, "MCFG")).unwrap();
    let cfg = FakeConfigSpace::from_qemu_fixture(CFG).unwrap();
    let topology = pci::enumerate(&cfg, &regions);
    apply_acs_policy(&cfg, &topology, AcsPolicy::Isolate);
    let groups = pci::group::compute(&cfg, &topology);
    PciState { topology, groups }
}

/// One fake unit per DRHD of `dmar_bytes`, translation on.
fn iommu(pci: &PciState, dmar_bytes: &[u8]) -> (Fake, usize) {
    iommu_started(pci, dmar_bytes, true)
}

/// One fake unit per DRHD of `dmar_bytes`: enabled, or only prepared (queue, root table,
/// invalidation; no translation yet) when `start` is false.
fn iommu_started(pci: &PciState, dmar_bytes: &[u8], start: bool) -> (Fake, usize) {
    let dmar = Dmar::parse(dmar_bytes).unwrap();
    let platform = Arc::new(HostPlatform::new());
    let mut iommu = Fake::new(dmar.host_address_width());
    let mut unresolved = 0;
    for drhd in dmar.drhds() {
        let regs = FakeVtd::qemu_default(platform.clone());
        let unit = Arc::new(VtdUnit::new(regs, platform.clone(), UnitConfig::new(39)).unwrap());
        if start {
            unit.enable().unwrap();
        } else {
            unit.prepare().unwrap();
        }
        let (entry, missed) = UnitEntry::new(unit, &drhd, &pci.topology, PagingLevels::Three);
        unresolved += missed;
        iommu.units.push(entry);
    }
    iommu
        .rmrrs
        .extend(dmar.rmrrs().map(|r| RmrrInfo::resolve(&r, &pci.topology)));
    (iommu, unresolved)
}

fn qemu() -> (PciState, Fake) {
    let pci = pci_state();
    let (iommu, unresolved) = iommu(&pci, &acpi_table_bytes(ACPI, "DMAR"));
    assert_eq!(unresolved, 0, "every scope of QEMU's DMAR resolves");
    (pci, iommu)
}

fn resources() -> DmaResources {
    let phys: Arc<dyn PhysMemory> = Arc::new(dma::testing::FakePhysMemory::standard());
    DmaResources {
        phys,
        clock: None,
        bounce_pool_size: 1 << 20,
    }
}

/// A DMA read by `bdf` at `iova` through the unit that translates for it.
fn dma_read(iommu: &Fake, pci: &PciState, at: Bdf, iova: u64) -> Result<u64, String> {
    let u = iommu.unit_for(pci, at).ok_or("no unit")?;
    u.unit
        .registers()
        .dma(at.requester_id(), iova, false)
        .map_err(|r| format!("{r:?}"))
}

const EDU_RP1: (u8, u8, u8) = (1, 0, 0); // edu behind the first root port, a group of its own

#[test]
fn unit_for_matches_every_function_through_qemus_endpoint_scopes() {
    let (pci, iommu) = qemu();
    assert_eq!(iommu.units.len(), 1);
    let unit = &iommu.units[0];
    assert!(!unit.include_all, "QEMU names devices in scopes");
    for f in pci.topology.functions() {
        let found = unit_for(&iommu.units, &pci.topology, f.bdf);
        assert!(found.is_some_and(|u| u.base == unit.base), "{}", f.bdf);
    }
    // Negative control: a function the scopes do not name has no unit (no INCLUDE_PCI_ALL).
    assert!(iommu.unit_for(&pci, bdf(0x99, 0, 0)).is_none());
    assert!(matches!(
        iommu.domain_for(&pci, bdf(0x99, 0, 0)),
        Err(AttachError::NoUnit(_))
    ));
}

#[test]
fn a_sub_hierarchy_scope_claims_the_bridge_and_everything_below_it() {
    let pci = pci_state();
    // Unit A: the second root port (00:04.0, the switch) as a sub-hierarchy; unit B:
    // INCLUDE_PCI_ALL for the rest of segment 0.
    let path = [PathEntry {
        device: 4,
        function: 0,
    }];
    let sub = ScopeSpec {
        kind: scope_type::PCI_SUB_HIERARCHY,
        ..ScopeSpec::endpoint(0, &path)
    };
    let table = DmarBuilder::new(39)
        .drhd(0, 0, 0, 0xfed9_0000, &[sub])
        .drhd(drhd_flags::INCLUDE_PCI_ALL, 0, 0, 0xfed9_1000, &[])
        .build();
    let (iommu, unresolved) = iommu(&pci, &table);
    assert_eq!(unresolved, 0);
    let port = pci.topology.function(bdf(0, 4, 0)).unwrap();
    let window = port.bridge.as_ref().unwrap();
    let mut below = 0;
    for f in pci.topology.functions() {
        let on_switch = f.bdf == port.bdf
            || (f.bdf.segment() == 0
                && (window.secondary..=window.subordinate).contains(&f.bdf.bus()));
        below += usize::from(on_switch);
        let want = if on_switch { 0xfed9_0000 } else { 0xfed9_1000 };
        assert_eq!(
            iommu.unit_for(&pci, f.bdf).map(|u| u.base),
            Some(want),
            "{}",
            f.bdf
        );
    }
    assert!(below >= 4, "the port, the switch's ports, edu and ivshmem");
}

#[test]
fn reserved_regions_cover_every_bar_rom_and_bridge_window_and_the_rmrrs() {
    let pci = pci_state();
    let rmrr = RmrrInfo {
        base: 0x7000_0000,
        limit: 0x7000_1fff,
        devices: vec![bdf(1, 0, 0)],
    };
    let regions = reserved_regions(std::slice::from_ref(&rmrr), &pci.topology);
    let covered = |start: u64, size: u64| {
        regions
            .iter()
            .any(|r| r.start.as_u64() <= start && start + size <= r.start.as_u64() + r.size)
    };
    assert!(regions.iter().any(|r| r.kind == ReservedKind::Rmrr
        && r.start.as_u64() == 0x7000_0000
        && r.size == 0x2000));
    let (mut bars, mut windows) = (0, 0);
    for f in pci.topology.functions() {
        for bar in f
            .bars
            .iter()
            .filter(|b| b.kind.is_memory() && !b.is_unassigned())
        {
            assert!(
                covered(bar.bus_address, bar.size),
                "{} BAR{}",
                f.bdf,
                bar.index
            );
            bars += 1;
        }
        if let Some(b) = &f.bridge {
            for w in [b.memory_window, b.prefetchable_window]
                .into_iter()
                .flatten()
            {
                assert!(
                    covered(w.base, w.limit - w.base + 1),
                    "{} window {w:?}",
                    f.bdf
                );
                windows += 1;
            }
        }
    }
    assert!(
        bars >= 8 && windows >= 2,
        "the fixture's BARs ({bars}) and windows ({windows})"
    );
}

#[test]
fn an_rmrr_is_identity_mapped_before_its_group_attaches_and_leaves_with_the_last_member() {
    let (pci, mut iommu) = qemu();
    let edu = bdf(EDU_RP1.0, EDU_RP1.1, EDU_RP1.2);
    iommu.rmrrs.push(
        RmrrInfo::parse_override("01:00.0@0x7000_0000-0x7000_1fff".replace('_', "").as_str())
            .unwrap(),
    );
    let hw = Arc::new(iommu.domain_for(&pci, edu).unwrap());
    let member = iommu.attach_member(&pci, &hw, edu).unwrap();
    // The device's DMA to the region reaches the same address; one page beyond faults.
    assert_eq!(dma_read(&iommu, &pci, edu, 0x7000_1ff8), Ok(0x7000_1ff8));
    assert!(dma_read(&iommu, &pci, edu, 0x7000_2000).is_err());
    // Another group's device is not translated by it.
    let other = bdf(4, 0, 0);
    assert!(dma_read(&iommu, &pci, other, 0x7000_0000).is_err());
    // A second guard for the same function and domain is shared; the last drop detaches.
    let again = iommu.attach_member(&pci, &hw, edu).unwrap();
    drop(member);
    assert_eq!(
        dma_read(&iommu, &pci, edu, 0x7000_0000),
        Ok(0x7000_0000),
        "still a member"
    );
    drop(again);
    assert!(
        dma_read(&iommu, &pci, edu, 0x7000_0000).is_err(),
        "detached"
    );
}

#[test]
fn an_rmrr_page_mapped_elsewhere_is_refused_and_the_pages_mapped_for_it_are_undone() {
    let (pci, mut iommu) = qemu();
    let edu = bdf(EDU_RP1.0, EDU_RP1.1, EDU_RP1.2);
    iommu.rmrrs.push(RmrrInfo {
        base: 0x7000_0000,
        limit: 0x7000_2fff,
        devices: vec![edu],
    });
    let hw = iommu.domain_for(&pci, edu).unwrap();
    let rw = Prot::READ.union(Prot::WRITE);
    hw.map(
        DmaAddr::new(0x7000_2000),
        PhysAddr::new(0x5000_0000),
        0x1000,
        rw,
    )
    .unwrap();
    assert_eq!(
        iommu.attach(&pci, &hw, edu),
        Err(AttachError::RmrrConflict {
            iova: 0x7000_2000,
            maps_to: 0x5000_0000
        })
    );
    // The two pages mapped before the conflict are gone again; the caller's mapping stays.
    assert_eq!(hw.translate(DmaAddr::new(0x7000_0000)), None);
    assert_eq!(hw.translate(DmaAddr::new(0x7000_1000)), None);
    assert!(hw.translate(DmaAddr::new(0x7000_2000)).is_some());
    assert!(hw.attached_groups().is_empty());
    assert!(
        dma_read(&iommu, &pci, edu, 0x7000_2000).is_err(),
        "not attached"
    );
    // Removing the conflict lets the same device attach.
    let mut gather = IotlbGather::new();
    hw.unmap(DmaAddr::new(0x7000_2000), 0x1000, &mut gather)
        .unwrap();
    hw.flush(gather).unwrap();
    iommu.attach(&pci, &hw, edu).unwrap();
    assert_eq!(dma_read(&iommu, &pci, edu, 0x7000_2000), Ok(0x7000_2000));
    iommu.detach(&pci, &hw, edu).unwrap();
    assert!(dma_read(&iommu, &pci, edu, 0x7000_2000).is_err());
}

#[test]
fn a_group_default_domain_is_shared_and_keeps_one_invalidation_mode() {
    let (pci, iommu) = qemu();
    let edu = bdf(EDU_RP1.0, EDU_RP1.1, EDU_RP1.2);
    let res = resources();
    let config = DeviceConfig::with_mask_bits(32).unwrap();
    let a = setup_device(
        &pci,
        Some(&iommu),
        edu,
        config,
        InvalidationMode::Strict,
        &res,
    )
    .unwrap();
    let b = setup_device(
        &pci,
        Some(&iommu),
        edu,
        config,
        InvalidationMode::Strict,
        &res,
    )
    .unwrap();
    let (ha, hb) = (a.hw.clone().unwrap(), b.hw.clone().unwrap());
    assert!(Arc::ptr_eq(&ha, &hb), "one default domain per group");
    let deferred = setup_device(
        &pci,
        Some(&iommu),
        edu,
        config.trusted(),
        InvalidationMode::Deferred(Default::default()),
        &res,
    );
    assert!(matches!(
        deferred,
        Err(SetupError::ModeMismatch {
            existing: InvalidationMode::Strict
        })
    ));
    // A mapping through the device reaches its buffer; the domain never hands out a reserved
    // IOVA (the fixture's BARs).
    let buf = PhysAddr::new(0x0100_0000);
    let m = a
        .dev
        .map_phys(buf, 0x1000, dma::Direction::ToDevice, dma::Attrs::empty())
        .unwrap();
    assert_eq!(
        dma_read(&iommu, &pci, edu, m.dma_addr().as_u64()),
        Ok(buf.as_u64())
    );
    let domain = a.dev.domain().unwrap();
    assert!(!domain.is_reserved(m.dma_addr(), 0x1000));
    for r in reserved_regions(&iommu.rmrrs, &pci.topology) {
        assert!(domain.is_reserved(r.start, r.size), "{r:?}");
    }
    drop(m);
    let iova = 0x1000; // never mapped: a member's DMA there faults whatever the state
    assert!(dma_read(&iommu, &pci, edu, iova).is_err());
    drop(a);
    // Warm the IOTLB with a live mapping of the remaining member, then drop it last.
    let m = b
        .dev
        .map_phys(buf, 0x1000, dma::Direction::ToDevice, dma::Attrs::empty())
        .unwrap();
    let last = m.dma_addr().as_u64();
    assert_eq!(
        dma_read(&iommu, &pci, edu, last),
        Ok(buf.as_u64()),
        "b still translates"
    );
    drop(b); // the last member leaves while `m` keeps its domain and page-table entry alive
    drop(ha);
    drop(hb);
    // Every member gone: the group is detached, and the next set-up creates a new domain.
    assert!(
        dma_read(&iommu, &pci, edu, last).is_err(),
        "group detached: a warm IOVA faults"
    );
    drop(m);
    assert!(iommu
        .defaults
        .lock()
        .iter()
        .all(|d| d.dma.strong_count() == 0));
}

#[test]
fn an_rmrr_device_is_attached_at_boot_and_a_driver_joins_its_domain() {
    let pci = pci_state();
    let (mut iommu, _) = iommu_started(&pci, &acpi_table_bytes(ACPI, "DMAR"), false);
    let edu = bdf(EDU_RP1.0, EDU_RP1.1, EDU_RP1.2);
    iommu.rmrrs.push(RmrrInfo {
        base: 0x7000_0000,
        limit: 0x7000_0fff,
        devices: vec![edu, bdf(0x99, 0, 0)],
    });
    let outcome = iommu.attach_rmrr_devices(&pci, None);
    assert_eq!(outcome.len(), 1, "absent functions are skipped");
    let did = outcome[0].1.clone().unwrap();
    iommu.start_translation().unwrap();
    assert_eq!(
        dma_read(&iommu, &pci, edu, 0x7000_0010),
        Ok(0x7000_0010),
        "no driver yet"
    );
    let stranger = bdf(4, 0, 0);
    assert!(
        dma_read(&iommu, &pci, stranger, 0x7000_0010).is_err(),
        "blocked: no domain"
    );
    let config = DeviceConfig::with_mask_bits(32).unwrap();
    let d = setup_device(
        &pci,
        Some(&iommu),
        edu,
        config,
        InvalidationMode::Strict,
        &resources(),
    )
    .unwrap();
    assert_eq!(
        d.hw.as_ref().unwrap().did(),
        did,
        "the driver joined the boot domain"
    );
    let m = d
        .dev
        .map_phys(
            PhysAddr::new(0x0100_0000),
            0x1000,
            dma::Direction::ToDevice,
            dma::Attrs::empty(),
        )
        .unwrap();
    assert_ne!(
        m.dma_addr().as_u64() & !0xfff,
        0x7000_0000,
        "IOVAs avoid the RMRR"
    );
    drop(m);
    drop(d);
    assert_eq!(
        dma_read(&iommu, &pci, edu, 0x7000_0010),
        Ok(0x7000_0010),
        "kept from boot"
    );
}

#[test]
fn rmrr_overrides_parse_only_aligned_bounds_and_round_to_pages() {
    let r = RmrrInfo::parse_override("00:03.0@0x7000000-0x7001fff").unwrap();
    assert_eq!(
        (r.base, r.limit, r.devices.clone()),
        (0x700_0000, 0x700_1fff, vec![bdf(0, 3, 0)])
    );
    assert_eq!(r.page_range(), (0x700_0000, 0x2000));
    for bad in [
        "00:03.0@0x7000010-0x7001fff",
        "00:03.0@0x7000000-0x7001ffe",
        "00:03.0@0x7002000-0x7001fff",
        "00:03.0@7000000-0x7001fff",
        "zz@0x7000000-0x7001fff",
        "00:03.0",
    ] {
        assert_eq!(RmrrInfo::parse_override(bad), None, "{bad}");
    }
    let odd = RmrrInfo {
        base: 0x7000_0800,
        limit: 0x7000_17ff,
        devices: vec![],
    };
    assert_eq!(odd.page_range(), (0x7000_0000, 0x2000));
}

/// `PciState` is a `PciView` over its own fields (the kernel implements it for its own state).
#[test]
fn pci_state_views_its_topology_and_groups() {
    let pci = pci_state();
    assert_eq!(
        pci.topology().functions().len(),
        pci.topology.functions().len()
    );
    assert_eq!(PciView::groups(&pci).len(), pci.groups.len());
}
