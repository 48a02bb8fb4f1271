//! Unit tests of peer-to-peer routing and the provider registry (`super`).

//! Synthetic topologies (switch with and without ACS redirect, root ports, root-bus
//! devices, a second host bridge), providers, the allow policy, the cache, and one QEMU
//! fixture. Names: `p2p_*`, `provider_*`, `classify_*`, `cache_*`.

use super::*;
use crate::regs::{AcsFlags, DevicePortType};
use crate::testing::FakeConfigSpace;
use crate::{enumerate, enumerate_with, EnumerationOptions, HostBridgeWindow, McfgRegion};
use dma::testing::Fixture;
use dma::{
    DeviceConfig, Direction, DmaError, ExportRange, ExportRequest, Exporter, Importer,
    InvalidationMode,
};

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn region() -> McfgRegion {
    McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
}

const Q35: (u16, u16) = (0x8086, 0x29c0);

fn q35_policy() -> HostBridgePolicy {
    HostBridgePolicy::linux_default().allow(Q35.0, Q35.1)
}

const A: (u8, u8, u8) = (3, 0, 0); // edu below switch port 02:00.0
const B: (u8, u8, u8) = (4, 0, 0); // edu below switch port 02:01.0
const C: (u8, u8, u8) = (5, 0, 0); // ivshmem below root port 00:02.0
const D: (u8, u8, u8) = (0x41, 0, 0); // edu below a pxb root port
const E: (u8, u8, u8) = (0, 3, 0); // edu on the root bus
const F: (u8, u8, u8) = (0, 4, 0); // ivshmem on the root bus

fn at(x: (u8, u8, u8)) -> Bdf {
    bdf(x.0, x.1, x.2)
}

/// q35 host bridge 00:00.0; root port 00:01.0 (ACS 0x5f) above a switch (01:00.0 upstream,
/// 02:00.0 / 02:01.0 downstream) with endpoints A and B; root port 00:02.0 (ACS) above C;
/// root-bus endpoints E, F; a pxb-pcie (00:07.0) whose root bus 0x40 has a root port
/// 40:00.0 above D.
fn machine() -> FakeConfigSpace {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(0, 0, 0), Q35.0, Q35.1, 0x06_00_00);
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 1, 4);
    fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
    fake.add_acs(bdf(0, 1, 0), AcsFlags::from_bits_retain(0x5f));
    fake.add_bridge(bdf(1, 0, 0), 0x104c, 0x8232, 1, 2, 4);
    fake.add_pcie_capability(bdf(1, 0, 0), DevicePortType::UpstreamPort);
    for (device, bus) in [(0, 3), (1, 4)] {
        fake.add_bridge(bdf(2, device, 0), 0x104c, 0x8233, 2, bus, bus);
        fake.add_pcie_capability(bdf(2, device, 0), DevicePortType::DownstreamPort);
        fake.add_endpoint(bdf(bus, 0, 0), 0x1234, 0x11e8, 0x00_ff_00);
    }
    fake.add_bridge(bdf(0, 2, 0), 0x1b36, 0x000c, 0, 5, 5);
    fake.add_pcie_capability(bdf(0, 2, 0), DevicePortType::RootPort);
    fake.add_acs(bdf(0, 2, 0), AcsFlags::from_bits_retain(0x5f));
    fake.add_endpoint(at(C), 0x1af4, 0x1110, 0x05_00_00);
    fake.add_endpoint(at(E), 0x1234, 0x11e8, 0x00_ff_00);
    fake.add_endpoint(at(F), 0x1af4, 0x1110, 0x05_00_00);
    fake.add_endpoint(bdf(0, 7, 0), 0x1b36, 0x000b, 0x06_00_00); // pxb-pcie
    fake.add_bridge(bdf(0x40, 0, 0), 0x1b36, 0x000c, 0x40, 0x41, 0x41);
    fake.add_pcie_capability(bdf(0x40, 0, 0), DevicePortType::RootPort);
    fake.add_endpoint(at(D), 0x1234, 0x11e8, 0x00_ff_00);
    // ivshmem-like BARs on C: BAR0 MMIO 256 B, BAR2 64-bit prefetchable 1 MiB.
    fake.define_bar(
        at(C),
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x100,
        0xfe80_0000,
    );
    fake.define_bar(
        at(C),
        2,
        BarKind::Memory64 { prefetchable: true },
        1 << 20,
        0x80_0000_0000,
    );
    fake.define_bar(at(C), 4, BarKind::Io, 0x20, 0xc000);
    fake
}

fn routing(fake: &FakeConfigSpace, policy: HostBridgePolicy) -> (Topology, P2pRouting) {
    let topo = enumerate(fake, &[region()]);
    assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
    let r = P2pRouting::new(fake, &topo, policy);
    (topo, r)
}

/// Enables `flags` in the ACS control of `port`, adding the capability if it has none
/// (QEMU's switch ports have none; real switches do).
fn set_acs(fake: &FakeConfigSpace, port: Bdf, flags: AcsFlags) {
    let offset = fake.add_acs(port, AcsFlags::from_bits_retain(0x7f));
    fake.poke16(port, offset + crate::regs::acs::CONTROL, flags.bits());
}

#[test]
fn classify_same_switch_without_redirect_is_bus_addr() {
    let fake = machine();
    let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
    let route = r.route(at(A), at(B));
    assert_eq!(route.map_type, MapType::BusAddr);
    assert_eq!(route.common_bridge, Some(bdf(1, 0, 0)));
    assert!(route.redirects.is_empty() && route.host_bridges.is_none());
    assert_eq!(r.classify(at(B), at(A)), MapType::BusAddr);
    // The root port above the switch has ACS isolation on: not on the path, no effect.
    let topo = enumerate(&fake, &[region()]);
    crate::acs::apply_acs_policy(&fake, &topo, crate::acs::AcsPolicy::Isolate);
    r.refresh(&fake, &topo);
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    assert_eq!(route.to_string(), "BUS_ADDR via 01:00.0");
}

#[test]
fn classify_same_switch_with_acs_redirect_goes_through_host_bridge() {
    for flag in [AcsFlags::RR, AcsFlags::CR, AcsFlags::EC] {
        let fake = machine();
        // A redirect on the provider's downstream port.
        set_acs(&fake, bdf(2, 0, 0), flag | AcsFlags::SV);
        let (_, r) = routing(&fake, q35_policy());
        let route = r.route(at(A), at(B));
        assert_eq!(route.map_type, MapType::ThruHostBridge, "{flag:?}");
        assert_eq!(route.redirects, [bdf(2, 0, 0)]);
        assert_eq!(route.common_bridge, Some(bdf(1, 0, 0)));
        // The redirect on the client's side counts too.
        assert_eq!(r.classify(at(B), at(A)), MapType::ThruHostBridge);
        // Blocked host bridge: NOT_SUPPORTED.
        r.set_policy(HostBridgePolicy::deny_all());
        assert_eq!(r.classify(at(A), at(B)), MapType::NotSupported);
    }
}

#[test]
fn classify_redirect_on_common_bridge_and_on_provider_itself_count() {
    let fake = machine();
    set_acs(&fake, bdf(1, 0, 0), AcsFlags::RR);
    let (_, r) = routing(&fake, q35_policy());
    assert_eq!(r.route(at(A), at(B)).redirects, [bdf(1, 0, 0)]);
    let fake = machine();
    // A PCIe endpoint with ACS (multi-function devices have it).
    fake.add_pcie_capability(at(A), DevicePortType::Endpoint);
    set_acs(&fake, at(A), AcsFlags::CR);
    let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
    assert_eq!(r.classify(at(A), at(B)), MapType::NotSupported);
    // SV, TB, UF, DT are not redirects.
    let fake = machine();
    set_acs(
        &fake,
        bdf(2, 0, 0),
        AcsFlags::SV | AcsFlags::TB | AcsFlags::UF | AcsFlags::DT,
    );
    let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
}

#[test]
fn classify_different_root_ports_need_an_allowed_host_bridge() {
    let fake = machine();
    let (_, r) = routing(&fake, q35_policy());
    let route = r.route(at(A), at(C));
    assert_eq!(route.map_type, MapType::ThruHostBridge);
    assert_eq!(route.common_bridge, None);
    let hb = HostBridge {
        segment: 0,
        root_bus: 0,
        id: Some(Q35),
    };
    assert_eq!(route.host_bridges, Some((hb, hb)));
    assert!(route
        .to_string()
        .contains("through host bridge 0000:00 (8086:29c0)"));
    // Linux's default list does not know q35.
    let (_, r) = routing(&fake, HostBridgePolicy::linux_default());
    assert_eq!(r.classify(at(A), at(C)), MapType::NotSupported);
    // "same host bridge only" is fine here: both are below 00:00.0.
    let (_, r) = routing(
        &fake,
        HostBridgePolicy::deny_all().allow_same_host_bridge_only(Q35.0, Q35.1),
    );
    assert_eq!(r.classify(at(A), at(C)), MapType::ThruHostBridge);
}

#[test]
fn classify_root_bus_devices_go_through_the_host_bridge() {
    let fake = machine();
    let (_, r) = routing(&fake, q35_policy());
    assert_eq!(r.classify(at(E), at(F)), MapType::ThruHostBridge);
    assert_eq!(r.classify(at(E), at(C)), MapType::ThruHostBridge);
    let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
    assert_eq!(r.classify(at(E), at(F)), MapType::NotSupported);
}

#[test]
fn classify_different_host_bridges_pxb() {
    let fake = machine();
    let (_, r) = routing(&fake, q35_policy());
    let route = r.route(at(D), at(C));
    let (hp, hc) = route.host_bridges.unwrap();
    assert_eq!((hp.root_bus, hp.id), (0x40, Some((0x1b36, 0x000c))));
    assert_eq!((hc.root_bus, hc.id), (0, Some(Q35)));
    // The pxb's host bridge (identified by its 00.0) is not allowed.
    assert_eq!(route.map_type, MapType::NotSupported);
    let (_, r) = routing(&fake, q35_policy().allow(0x1b36, 0x000c));
    assert_eq!(r.classify(at(D), at(C)), MapType::ThruHostBridge);
    assert_eq!(r.classify(at(C), at(D)), MapType::ThruHostBridge);
    // Both allowed, but one only within itself: refused across bridges.
    let (_, r) = routing(
        &fake,
        HostBridgePolicy::deny_all()
            .allow_same_host_bridge_only(Q35.0, Q35.1)
            .allow(0x1b36, 0x000c),
    );
    assert_eq!(r.classify(at(D), at(C)), MapType::NotSupported);
    assert_eq!(r.classify(at(A), at(C)), MapType::ThruHostBridge);
}

#[test]
fn classify_same_function_is_bus_addr_like_linux() {
    let fake = machine();
    let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
    let route = r.route(at(C), at(C));
    assert_eq!(route.map_type, MapType::BusAddr);
    assert_eq!(route.common_bridge, Some(at(C)));
}

#[test]
fn classify_unknown_function_is_not_supported() {
    let fake = machine();
    let (_, r) = routing(&fake, q35_policy());
    let route = r.route(at(C), bdf(9, 9, 0));
    assert_eq!(route.map_type, MapType::NotSupported);
    assert_eq!(route.unknown, Some(bdf(9, 9, 0)));
    assert_eq!(r.classify(bdf(9, 9, 0), at(C)), MapType::NotSupported);
}

#[test]
fn cache_per_pair_and_explicit_invalidation_on_acs_change() {
    let fake = machine();
    let (topo, r) = routing(&fake, q35_policy());
    assert_eq!(r.generation(), 0);
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    assert_eq!(r.cached_pairs(), 1);
    // Both BARs of a provider share the entry (keyed by device); the dma seam hits it.
    let table = provider_table(topo.function(at(A)).unwrap()).unwrap();
    assert_eq!(table.providers().count(), 0); // edu in this fake has no BARs
    let p = Provider::new(device_id(at(A)), 0, dma::PhysAddr::new(0x1000), 0x1000, 0).unwrap();
    assert_eq!(r.map_type(&p, device_id(at(B))), MapType::BusAddr);
    assert_eq!(r.cached_pairs(), 1);
    // ACS changes under the snapshot: the cached answer stays until invalidated...
    set_acs(&fake, bdf(2, 1, 0), AcsFlags::RR);
    let topo = enumerate(&fake, &[region()]); // the new capability needs re-enumeration
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    // ...and refresh re-reads, bumps the generation and drops the cache.
    r.refresh(&fake, &topo);
    assert_eq!(r.generation(), 1);
    assert_eq!(r.cached_pairs(), 0);
    assert_eq!(r.classify(at(A), at(B)), MapType::ThruHostBridge);
    // A control cleared (e.g. by a reset): refresh_acs is enough.
    let offset = topo.function(bdf(2, 1, 0)).unwrap().acs_offset().unwrap();
    fake.poke16(bdf(2, 1, 0), offset + crate::regs::acs::CONTROL, 0);
    assert_eq!(r.classify(at(A), at(B)), MapType::ThruHostBridge);
    r.refresh_acs(&fake);
    assert_eq!(r.generation(), 2);
    assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
}

#[test]
fn provider_one_per_memory_bar_with_typed_errors() {
    let fake = machine();
    let topo = enumerate(&fake, &[region()]);
    let t = provider_table(topo.function(at(C)).unwrap()).unwrap();
    assert_eq!(t.owner(), device_id(at(C)));
    assert_eq!(t.providers().count(), 1);
    let bar2 = t.provider(2).unwrap();
    assert_eq!(
        (bar2.phys().as_u64(), bar2.size(), bar2.bus_offset()),
        (0x80_0000_0000, 1 << 20, 0)
    );
    // The 256-byte register BAR shares its page with whatever sits next to it.
    assert_eq!(
        t.provider(0),
        Err(ProviderError::NotPageGranular { index: 0 })
    );
    assert_eq!(
        t.provider(1),
        Err(ProviderError::Unimplemented { index: 1 })
    );
    assert_eq!(t.provider(3), Err(ProviderError::UpperHalf { index: 3 }));
    assert_eq!(t.provider(4), Err(ProviderError::IoBar { index: 4 }));
    assert_eq!(
        t.provider(5),
        Err(ProviderError::Unimplemented { index: 5 })
    );
    assert_eq!(
        t.provider(6),
        Err(ProviderError::IndexOutOfRange { index: 6, count: 6 })
    );
    // A bridge has two slots.
    let rp = provider_table(topo.function(bdf(0, 2, 0)).unwrap()).unwrap();
    assert_eq!(
        rp.provider(2),
        Err(ProviderError::IndexOutOfRange { index: 2, count: 2 })
    );
}

#[test]
fn provider_unassigned_bar_is_refused() {
    let fake = machine();
    fake.define_bar(
        at(F),
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x1000,
        0,
    );
    let topo = enumerate(&fake, &[region()]);
    let t = provider_table(topo.function(at(F)).unwrap()).unwrap();
    assert_eq!(t.provider(0), Err(ProviderError::Unassigned { index: 0 }));
}

#[test]
fn provider_bus_offset_from_a_translating_host_bridge_window() {
    let fake = machine();
    // CPU 0x1_8000_0000_0000.. appears on the bus at 0x80_0000_0000.. (an arm64-style window).
    let window = HostBridgeWindow {
        segment: 0,
        cpu_address: 0x1_8000_0000_0000,
        bus_address: 0x80_0000_0000,
        size: 1 << 30,
    };
    let topo = enumerate_with(
        &fake,
        &[region()],
        &EnumerationOptions {
            windows: &[window],
            ..Default::default()
        },
    );
    let t = provider_table(topo.function(at(C)).unwrap()).unwrap();
    let p = t.provider(2).unwrap();
    assert_eq!(p.phys().as_u64(), 0x1_8000_0000_0000);
    assert_eq!(
        p.bus_addr(p.phys()),
        0x80_0000_0000,
        "the BAR register value"
    );
    assert_ne!(p.bus_offset(), 0);
    // BUS_ADDR mapping programs paddr + bus_offset.
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(64).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let m = f
        .dev
        .map_peer(
            &p,
            MapType::BusAddr,
            &[(p.phys(), 0x2000)],
            Direction::ToDevice,
        )
        .unwrap();
    assert_eq!(m.segments()[0].addr.as_u64(), 0x80_0000_0000);
}

#[test]
fn provider_init_is_idempotent_and_remove_waits_for_teardown() {
    let fake = machine();
    let (topo, r) = routing(&fake, q35_policy());
    let reg = ProviderRegistry::new();
    let c = topo.function(at(C)).unwrap();
    let t1 = reg.init(c).unwrap();
    let t2 = reg.init(c).unwrap();
    assert!(
        Arc::ptr_eq(&t1, &t2),
        "init twice returns the same providers"
    );
    assert_eq!(reg.len(), 1);
    assert_eq!(
        reg.provider(at(C), 2).unwrap().unwrap(),
        t1.provider(2).unwrap()
    );
    drop((t1, t2));
    let ex = Exporter::new(reg.get(at(C)).unwrap(), Arc::new(r));
    assert_eq!(
        reg.remove(at(C)),
        Err(RegistryError::InUse {
            bdf: at(C),
            holders: 1
        })
    );
    ex.teardown().unwrap();
    assert_eq!(reg.remove(at(C)), Ok(()));
    assert_eq!(reg.remove(at(C)), Err(RegistryError::NotInitialised(at(C))));
    assert!(reg.is_empty());
}

#[test]
fn p2p_memory_decode_is_read_live() {
    let fake = machine();
    assert_eq!(memory_decode(&fake, at(C)), MemoryDecode::Disabled);
    fake.poke16(at(C), header::COMMAND, Command::MEMORY_SPACE.bits());
    assert_eq!(memory_decode(&fake, at(C)), MemoryDecode::Enabled);
    assert_eq!(memory_decode(&fake, bdf(9, 9, 0)), MemoryDecode::Disabled);
    assert_eq!(bdf_of(device_id(at(C))), at(C));
    let far = Bdf::new(3, 0x41, 2, 5).unwrap();
    let id = device_id(far);
    assert_eq!((id.segment(), id.requester_id()), (3, far.requester_id()));
    assert_eq!(bdf_of(id), far);
}

/// Neither a sub-page BAR nor a misaligned one can be exported, whatever range is asked
/// for: the export of `[0, 4K)` of either would map a page the device does not (wholly)
/// decode. A page-granular BAR of the same device still exports.
#[test]
fn p2p_export_refuses_bars_that_are_not_page_granular() {
    let fake = machine();
    // F: a 4 KiB BAR0 that reads back at 0xfe90_0800, a 512-byte BAR1 and a fine BAR2.
    let mem32 = BarKind::Memory32 {
        prefetchable: false,
    };
    fake.define_bar(at(F), 0, mem32, 0x1000, 0xfe90_0800);
    fake.define_bar(at(F), 1, mem32, 0x200, 0xfe90_2000);
    fake.define_bar(at(F), 2, mem32, 0x4000, 0xfe90_4000);
    let topo = enumerate(&fake, &[region()]);
    assert_eq!(
        topo.warnings(),
        [TopologyWarning::Bar {
            bdf: at(F),
            error: crate::bar::BarError::Misaligned {
                index: 0,
                bus_address: 0xfe90_0800,
                phys_address: 0xfe90_0800,
                size: 0x1000
            }
        }]
    );
    let t = provider_table(topo.function(at(F)).unwrap()).unwrap();
    let (_, r) = routing(&machine(), q35_policy());
    let mut ex = Exporter::new(Arc::new(t), Arc::new(r));
    let page = [ExportRange {
        offset: 0,
        len: 0x1000,
    }];
    let export = |ex: &mut Exporter, bar| {
        ex.export(
            &ExportRequest {
                bar,
                ranges: &page,
                flags: 0,
            },
            MemoryDecode::Enabled,
        )
        .map(|_| ())
    };
    // The misaligned BAR was refused at enumeration: its slot is empty.
    assert_eq!(
        export(&mut ex, 0),
        Err(DmaError::Provider(ProviderError::Unimplemented {
            index: 0
        }))
    );
    assert_eq!(
        export(&mut ex, 1),
        Err(DmaError::Provider(ProviderError::NotPageGranular {
            index: 1
        }))
    );
    assert_eq!(export(&mut ex, 2), Ok(()));
    ex.teardown().unwrap();
    // A misaligned BAR put into a Function by hand is refused by the table too.
    let mut f = topo.function(at(F)).unwrap().clone();
    f.bars[0].bus_address = 0xfe90_4800;
    f.bars[0].phys_address = 0xfe90_4800;
    f.bars[0].index = 2;
    f.bars.retain(|b| b.index == 2);
    assert_eq!(
        provider_table(&f).unwrap().provider(2),
        Err(ProviderError::NotPageGranular { index: 2 })
    );
}

/// Every range a peer decodes is listed for IOVA reservation: memory BARs (not I/O),
/// Expansion ROMs (assigned ones, enabled or not), bridge windows and the blocks a refused
/// misaligned BAR touches.
#[test]
fn peer_decoded_ranges_cover_bars_roms_windows_and_refused_bars() {
    let fake = machine();
    fake.define_expansion_rom(at(C), 0x8_0000, 0xfe88_0000, false);
    fake.define_expansion_rom(at(E), 0x800, 0, false); // unassigned: nothing to reserve
    let mem32 = BarKind::Memory32 {
        prefetchable: false,
    };
    fake.define_bar(at(F), 0, mem32, 0x2000, 0xfe90_1000);
    // Root port 00:02.0 forwards a 1 MiB memory window to bus 5.
    fake.poke16(bdf(0, 2, 0), crate::regs::bridge::MEMORY_BASE, 0xfe80);
    fake.poke16(bdf(0, 2, 0), crate::regs::bridge::MEMORY_LIMIT, 0xfe80);
    let topo = enumerate(&fake, &[region()]);
    let ranges = peer_decoded_ranges(&topo);
    let has = |bdf: Bdf, start: u64, size: u64, by: DecodedBy| {
        ranges.contains(&DecodedRange {
            bdf,
            start,
            size,
            by,
        })
    };
    assert!(
        has(at(C), 0xfe80_0000, 0x100, DecodedBy::Bar(0)),
        "{ranges:?}"
    );
    assert!(has(at(C), 0x80_0000_0000, 1 << 20, DecodedBy::Bar(2)));
    assert!(has(at(C), 0xfe88_0000, 0x8_0000, DecodedBy::ExpansionRom));
    assert!(has(
        bdf(0, 2, 0),
        0xfe80_0000,
        1 << 20,
        DecodedBy::BridgeWindow
    ));
    assert!(has(at(F), 0xfe90_0000, 0x4000, DecodedBy::RefusedBar(0)));
    // Nothing else but windows (the fake's other bridges have zeroed window registers,
    // which decode 0..1M): no I/O BAR (C's BAR4), no unassigned ROM (E).
    let not_windows = ranges
        .iter()
        .filter(|r| r.by != DecodedBy::BridgeWindow)
        .count();
    assert_eq!(not_windows, 4, "{ranges:?}");
}

/// End to end: ivshmem BAR2 exported, edu importers classified by the topology.
#[test]
fn p2p_export_through_pci_classification() {
    let fake = machine();
    let (topo, r) = routing(&fake, q35_policy());
    let r = Arc::new(r);
    let reg = ProviderRegistry::new();
    let mut ex = Exporter::new(reg.init(topo.function(at(C)).unwrap()).unwrap(), r.clone());
    let ranges = [ExportRange {
        offset: 0,
        len: 0x4000,
    }];
    let h = ex
        .export(
            &ExportRequest {
                bar: 2,
                ranges: &ranges,
                flags: 0,
            },
            memory_decode(&fake, at(C)),
        )
        .unwrap();
    // Memory decoding is off in the fake: the export starts revoked.
    assert_eq!(h.state(), dma::ExportState::Revoked);
    ex.restore();
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let importer = |id: Bdf| Importer {
        id: device_id(id),
        dev: f.dev.clone(),
        peer_to_peer: true,
        move_notify: alloc::boxed::Box::new(|_| {}),
    };
    let a = h.attach(importer(at(A))).unwrap();
    assert_eq!(a.map_type(), MapType::ThruHostBridge);
    let m = a.map(Direction::FromDevice).unwrap();
    assert_eq!(f.hw().entries(), 4);
    // The pxb importer crosses a host bridge the policy does not allow.
    let d = h.attach(importer(at(D))).unwrap();
    assert_eq!(
        d.map(Direction::FromDevice).unwrap_err(),
        DmaError::P2pNotSupported(MapType::NotSupported)
    );
    ex.revoke().unwrap();
    assert!(m.is_stale());
    assert_eq!(f.hw().entries(), 0);
    drop((m, a, d));
    ex.teardown().unwrap();
    assert!(r.cached_pairs() >= 2);
}

/// On the captured QEMU `complex` machine: edu below one switch port and ivshmem below the
/// other are BUS_ADDR (QEMU's switch ports have no ACS), also after the kernel's ACS
/// isolation on root ports; edu below a root port reaches ivshmem through q35.
#[test]
fn p2p_qemu_complex_fixture() {
    let fake = FakeConfigSpace::from_qemu_fixture(include_str!("../../tests/fixtures/complex.cfg"))
        .unwrap();
    let topo = enumerate(&fake, &[region()]);
    crate::acs::apply_acs_policy(&fake, &topo, crate::acs::AcsPolicy::Isolate);
    let r = P2pRouting::new(&fake, &topo, q35_policy());
    let ivshmem = topo.find(0x1af4, 0x1110).next().unwrap().bdf;
    let edus: Vec<Bdf> = topo.find(0x1234, 0x11e8).map(|f| f.bdf).collect();
    let switch_edu = edus
        .iter()
        .copied()
        .find(|&e| topo.below_same_switch(e, ivshmem).is_some())
        .expect("an edu shares the switch with ivshmem");
    assert_eq!(r.classify(ivshmem, switch_edu), MapType::BusAddr);
    let rp_edu = edus
        .iter()
        .copied()
        .find(|&e| {
            topo.parent(e)
                .is_some_and(|p| p.port_type() == Some(DevicePortType::RootPort))
                && topo.root_bus(e).map(|b| b.bus) == Some(0)
        })
        .expect("an edu below a root port");
    assert_eq!(r.classify(ivshmem, rp_edu), MapType::ThruHostBridge);
    let t = provider_table(topo.function(ivshmem).unwrap()).unwrap();
    assert!(t.provider(2).is_ok(), "ivshmem BAR2 is a provider");
}
