//! The interrupt-remapping glue over QEMU's captured tables and a fake VT-d unit: the source ID
//! of a function's and an I/O APIC's IRTEs, and remapped vectors judged by what the fake unit
//! does with an interrupt request (delivered on which vector, or blocked), never by the glue's
//! own bookkeeping alone.

use std::sync::Arc;

use iommu_vtd::dmar::{drhd_flags, scope_type, PathEntry, ScopeSpec};
use iommu_vtd::fake::{FakeVtd, HostPlatform, InterruptResult};
use iommu_vtd::{
    Destination, Dmar, DmarBuilder, IntRemapError, RequesterId, SourceId, UnitConfig, VtdError,
    VtdUnit,
};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::Bdf;
use vtd_platform::{ioapic_sources, msi_source, IoApicSource, RemapError, RemappedVectors};

const CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");
const ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/complex.acpi");
const DEFAULT_ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/default.acpi");

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn topology() -> pci::Topology {
    let regions = pci::mcfg::parse(&acpi_table_bytes(ACPI, "MCFG")).unwrap();
    let cfg = FakeConfigSpace::from_qemu_fixture(CFG).unwrap();
    pci::enumerate(&cfg, &regions)
}

fn unit(entries: u32) -> Arc<Unit> {
    let platform = Arc::new(HostPlatform::new());
    let u = VtdUnit::new(
        FakeVtd::qemu_default(platform.clone()),
        platform,
        UnitConfig::new(39),
    )
    .unwrap();
    u.enable().unwrap();
    u.enable_interrupt_remapping(entries, false).unwrap();
    Arc::new(u)
}

fn vector_of(r: InterruptResult) -> Option<u8> {
    match r {
        InterruptResult::Delivered { vector, .. } => Some(vector),
        _ => None,
    }
}

#[test]
fn qemu_dmar_names_the_ioapic_at_bus_ff() {
    let bytes = acpi_table_bytes(DEFAULT_ACPI, "DMAR");
    let dmar = Dmar::parse(&bytes).unwrap();
    let regions = pci::mcfg::parse(&acpi_table_bytes(ACPI, "MCFG")).unwrap();
    let topo = pci::enumerate(&FakeConfigSpace::new(), &regions);
    let s = ioapic_sources(&dmar, &topo);
    assert_eq!(
        s,
        vec![IoApicSource {
            ioapic_id: 0,
            unit_base: 0xfed9_0000,
            bdf: bdf(0xff, 0, 0),
        }]
    );
    assert_eq!(
        s[0].source_id(),
        SourceId::Requester(RequesterId::from_parts(0xff, 0))
    );
}

#[test]
fn ioapic_scopes_are_found_by_id_in_their_own_drhd() {
    let a = [PathEntry {
        device: 0x1e,
        function: 1,
    }];
    let b = [PathEntry {
        device: 0,
        function: 0,
    }];
    let ioapic = |id, bus, path| ScopeSpec {
        kind: scope_type::IOAPIC,
        enumeration_id: id,
        ..ScopeSpec::endpoint(bus, path)
    };
    let table = DmarBuilder::new(39)
        .drhd(0, 0, 0, 0xfed9_0000, &[ioapic(2, 0xf0, &a)])
        .drhd(
            drhd_flags::INCLUDE_PCI_ALL,
            0,
            0,
            0xfed9_1000,
            &[ioapic(9, 0xfe, &b)],
        )
        .build();
    let dmar = Dmar::parse(&table).unwrap();
    let s = ioapic_sources(&dmar, &topology());
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].ioapic_id, s[0].unit_base), (2, 0xfed9_0000));
    assert_eq!(s[0].bdf, bdf(0xf0, 0x1e, 1));
    assert_eq!((s[1].ioapic_id, s[1].unit_base), (9, 0xfed9_1000));
    assert_eq!(s[1].bdf, bdf(0xfe, 0, 0));
}

#[test]
fn a_function_behind_a_pcie_to_pci_bridge_is_named_by_the_bridge_alias() {
    let topo = topology();
    // pcie-pci-bridge (1b36:000e) with an edu at addr 3 on its secondary bus.
    let ppb = topo
        .functions()
        .iter()
        .find(|f| (f.vendor_id, f.device_id) == (0x1b36, 0x000e))
        .unwrap();
    let secondary = ppb.bridge.unwrap().secondary;
    let behind = bdf(secondary, 3, 0);
    assert!(topo.function(behind).is_some());
    let alias = RequesterId::from_parts(secondary, 0);
    assert_eq!(msi_source(&topo, behind), Some(SourceId::Requester(alias)));
    assert_ne!(alias, behind.requester_id());
    // An edu under a root port keeps its own requester ID.
    let edu = topo
        .functions()
        .iter()
        .find(|f| (f.vendor_id, f.device_id) == (0x1234, 0x11e8) && f.bdf.bus() == 1)
        .unwrap();
    assert_eq!(
        msi_source(&topo, edu.bdf),
        Some(SourceId::Requester(edu.bdf.requester_id()))
    );
    assert_eq!(msi_source(&topo, bdf(0x99, 0, 0)), None);
}

#[test]
fn remapped_vectors_deliver_only_for_their_source() {
    let u = unit(64);
    let dev = RequesterId::from_parts(1, 0);
    let other = RequesterId::from_parts(2, 0);
    let v = RemappedVectors::new(
        &u,
        &[0x41, 0x42, 0x43],
        Destination::XApic(0),
        SourceId::Requester(dev),
    )
    .unwrap();
    assert_eq!(v.len(), 3);
    for i in 0..3 {
        let m = v.msix_message(i).unwrap();
        let want = 0x41 + i as u8;
        assert_eq!(
            vector_of(u.registers().interrupt(dev, m.address, m.data)),
            Some(want)
        );
        assert!(matches!(
            u.registers().interrupt(other, m.address, m.data),
            InterruptResult::Blocked { .. }
        ));
    }
    assert!(v.msix_message(3).is_none());
    // The block has 4 entries; the fourth stays not present.
    let spare = pci::msi::MsiMessage::remappable(v.handle() + 3, None);
    assert!(matches!(
        u.registers().interrupt(dev, spare.address, spare.data),
        InterruptResult::Blocked { .. }
    ));
    // Multi-message MSI: message i is data | i through entry handle + i.
    let msi = v.msi_message();
    assert_eq!(
        vector_of(u.registers().interrupt(dev, msi.address, msi.data | 2)),
        Some(0x43)
    );
}

#[test]
fn retarget_and_set_source_take_effect_on_the_next_interrupt() {
    let u = unit(16);
    let dev = RequesterId::from_parts(0, 3 << 3);
    let other = RequesterId::from_parts(0, 2 << 3);
    let mut v =
        RemappedVectors::new(&u, &[0x50], Destination::XApic(0), SourceId::Requester(dev)).unwrap();
    let m = v.msix_message(0).unwrap();
    assert_eq!(
        vector_of(u.registers().interrupt(dev, m.address, m.data)),
        Some(0x50)
    );
    v.retarget(0, 0x51).unwrap();
    assert_eq!(v.vector(0), Some(0x51));
    assert_eq!(
        vector_of(u.registers().interrupt(dev, m.address, m.data)),
        Some(0x51)
    );
    v.set_source(0, SourceId::Requester(other)).unwrap();
    assert!(matches!(
        u.registers().interrupt(dev, m.address, m.data),
        InterruptResult::Blocked { .. }
    ));
    assert_eq!(
        vector_of(u.registers().interrupt(other, m.address, m.data)),
        Some(0x51)
    );
    // A refused vector leaves the entry as it was.
    assert!(matches!(
        v.retarget(0, 3),
        Err(RemapError::Vtd(VtdError::InterruptRemapping(
            IntRemapError::ReservedVector(3)
        )))
    ));
    assert_eq!(v.vector(0), Some(0x51));
}

#[test]
fn dropping_blocks_the_entries_and_frees_the_block() {
    let u = unit(2);
    let dev = RequesterId::from_parts(0, 8);
    let v = RemappedVectors::new(
        &u,
        &[0x60, 0x61],
        Destination::XApic(0),
        SourceId::Requester(dev),
    )
    .unwrap();
    let (handle, m) = (v.handle(), v.msix_message(1).unwrap());
    // The table is full.
    assert!(matches!(
        RemappedVectors::new(&u, &[0x62], Destination::XApic(0), SourceId::Requester(dev)),
        Err(RemapError::Vtd(VtdError::InterruptRemapping(
            IntRemapError::Exhausted { .. }
        )))
    ));
    drop(v);
    assert!(matches!(
        u.registers().interrupt(dev, m.address, m.data),
        InterruptResult::Blocked { .. }
    ));
    let again =
        RemappedVectors::new(&u, &[0x62], Destination::XApic(0), SourceId::Requester(dev)).unwrap();
    assert_eq!(again.handle(), handle);
    again.release().unwrap();
    assert!(matches!(
        RemappedVectors::new(&u, &[], Destination::XApic(0), SourceId::Requester(dev)),
        Err(RemapError::BadCount(0))
    ));
}

#[test]
fn without_interrupt_remapping_nothing_is_allocated() {
    let platform = Arc::new(HostPlatform::new());
    let u = Arc::new(
        VtdUnit::new(
            FakeVtd::qemu_default(platform.clone()),
            platform,
            UnitConfig::new(39),
        )
        .unwrap(),
    );
    u.enable().unwrap();
    assert!(matches!(
        RemappedVectors::new(
            &u,
            &[0x40],
            Destination::XApic(0),
            SourceId::Requester(RequesterId::from_parts(0, 8))
        ),
        Err(RemapError::Vtd(VtdError::InterruptRemapping(
            IntRemapError::NotEnabled
        )))
    ));
}
