//! Unit tests of enumeration and the topology queries (`super`).

use super::*;
use crate::regs::{AcsFlags, ExtendedCapabilityId};
use crate::testing::FakeConfigSpace;
use proptest::prelude::*;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn region() -> McfgRegion {
    McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
}

#[test]
fn bridge_with_devices_behind_it() {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00);
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x0001, 0, 1, 1);
    fake.add_endpoint(bdf(1, 2, 0), 0x1234, 0x11e8, 0x00_ff_00);
    fake.add_endpoint(bdf(1, 3, 0), 0x1234, 0x11e8, 0x00_ff_00);
    fake.set_multifunction(bdf(1, 3, 0));
    fake.add_endpoint(bdf(1, 3, 5), 0x1234, 0x11e8, 0x00_ff_00);
    // Not multifunction: function 1 of device 2 must not be scanned.
    fake.add_endpoint(bdf(1, 2, 1), 0xdead, 0xbeef, 0);
    let topo = enumerate(&fake, &[region()]);
    let found: Vec<Bdf> = topo.functions_sorted().map(|f| f.bdf).collect();
    assert_eq!(
        found,
        [
            bdf(0, 0, 0),
            bdf(0, 1, 0),
            bdf(1, 2, 0),
            bdf(1, 3, 0),
            bdf(1, 3, 5)
        ]
    );
    for child in [bdf(1, 2, 0), bdf(1, 3, 0), bdf(1, 3, 5)] {
        assert_eq!(topo.parent(child).map(|p| p.bdf), Some(bdf(0, 1, 0)));
    }
    assert_eq!(topo.children(bdf(0, 1, 0)).count(), 3);
    assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
    assert_eq!(topo.roots().len(), 1);
}

#[test]
fn inconsistent_bridge_windows_are_reported_not_followed() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x0001, 0, 5, 3); // secondary > subordinate
    fake.add_bridge(bdf(0, 2, 0), 0x1b36, 0x0001, 0, 0x10, 0x20);
    fake.add_bridge(bdf(0, 3, 0), 0x1b36, 0x0001, 0, 0x18, 0x28); // overlaps 00:02.0
    fake.add_bridge(bdf(0x10, 0, 0), 0x1b36, 0x0001, 0x10, 0x1f, 0x30); // outside parent
    fake.add_bridge(bdf(0x10, 1, 0), 0x1b36, 0x0001, 0x10, 0x05, 0x06); // points up
    fake.add_bridge(bdf(0, 4, 0), 0x1b36, 0x0001, 0, 0, 0); // unconfigured
    fake.add_bridge(bdf(0, 5, 0), 0x1b36, 0x0001, 7, 0x30, 0x30); // wrong primary
    fake.add_endpoint(bdf(0x18, 0, 0), 0x1234, 0x11e8, 0);
    fake.add_endpoint(bdf(0x1f, 0, 0), 0x1234, 0x11e8, 0);
    fake.add_endpoint(bdf(5, 0, 0), 0x1234, 0x11e8, 0);
    let topo = enumerate(&fake, &[region()]);
    let w = topo.warnings();
    assert!(w.contains(&TopologyWarning::SecondaryAboveSubordinate {
        bridge: bdf(0, 1, 0),
        secondary: 5,
        subordinate: 3
    }));
    assert!(w.contains(&TopologyWarning::OverlappingWindows {
        first: bdf(0, 2, 0),
        second: bdf(0, 3, 0)
    }));
    assert!(w.contains(&TopologyWarning::OutsideParentWindow {
        bridge: bdf(0x10, 0, 0),
        secondary: 0x1f,
        subordinate: 0x30,
        parent_first: 0x10,
        parent_last: 0x20
    }));
    assert!(w.contains(&TopologyWarning::SecondaryNotBelowBridge {
        bridge: bdf(0x10, 1, 0),
        secondary: 5
    }));
    assert!(w.contains(&TopologyWarning::BridgeNotConfigured {
        bridge: bdf(0, 4, 0)
    }));
    assert!(w.contains(&TopologyWarning::PrimaryBusMismatch {
        bridge: bdf(0, 5, 0),
        primary: 7
    }));
    // Buses behind rejected windows are neither scanned nor mistaken for root buses.
    assert!(topo.function(bdf(0x18, 0, 0)).is_none());
    assert!(topo.function(bdf(0x1f, 0, 0)).is_none());
    assert!(topo.function(bdf(5, 0, 0)).is_none());
    assert_eq!(topo.roots().len(), 1);
    // The consistent ones are followed.
    assert_eq!(
        topo.parent(bdf(0x10, 0, 0)).map(|f| f.bdf),
        Some(bdf(0, 2, 0))
    );
}

#[test]
fn unclaimed_bus_with_devices_becomes_a_root_bus() {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00);
    fake.add_endpoint(bdf(0, 7, 0), 0x1b36, 0x000b, 0x06_00_00); // pxb-pcie: type 0
    fake.add_bridge(bdf(0x40, 0, 0), 0x1b36, 0x000c, 0x40, 0x41, 0x41);
    fake.add_pcie_capability(bdf(0x40, 0, 0), DevicePortType::RootPort);
    fake.add_endpoint(bdf(0x41, 0, 0), 0x1234, 0x11e8, 0);
    let topo = enumerate(&fake, &[region()]);
    assert_eq!(
        topo.roots(),
        [
            RootBus {
                segment: 0,
                bus: 0,
                origin: RootBusOrigin::McfgStartBus
            },
            RootBus {
                segment: 0,
                bus: 0x40,
                origin: RootBusOrigin::UnclaimedBus
            },
        ]
    );
    assert_eq!(topo.root_bus(bdf(0x41, 0, 0)).map(|r| r.bus), Some(0x40));
    assert_eq!(
        topo.root_port(bdf(0x41, 0, 0)).map(|f| f.bdf),
        Some(bdf(0x40, 0, 0))
    );
    // Bus 0x41 is claimed by the root port, so it is not a root bus of its own.
    assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
    let without = enumerate_with(
        &fake,
        &[region()],
        &EnumerationOptions {
            discover_unclaimed_root_buses: false,
            ..Default::default()
        },
    );
    assert_eq!(without.roots().len(), 1);
    assert!(without.function(bdf(0x41, 0, 0)).is_none());
}

#[test]
fn regions_split_across_one_segment_and_a_second_segment() {
    let fake = FakeConfigSpace::new();
    let low = McfgRegion::new(0xb000_0000, 0, 0, 0x7f).unwrap();
    let high = McfgRegion::new(0xb000_0000, 0, 0x80, 0xff).unwrap();
    let other = McfgRegion::new(0x8000_0000, 1, 0x10, 0x1f).unwrap();
    // A bridge on bus 0 whose window lies in the second region of segment 0.
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x0001, 0, 0x80, 0x81);
    fake.add_endpoint(bdf(0x80, 2, 0), 0x1234, 0x11e8, 0);
    let seg1 = Bdf::new(1, 0x10, 0, 0).unwrap();
    fake.add_endpoint(seg1, 0x1234, 0x11e8, 0);
    let topo = enumerate(&fake, &[low, high, other]);
    assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
    assert_eq!(
        topo.parent(bdf(0x80, 2, 0)).map(|f| f.bdf),
        Some(bdf(0, 1, 0))
    );
    let roots: Vec<(u16, u8)> = topo.roots().iter().map(|r| (r.segment, r.bus)).collect();
    assert_eq!(roots, [(0, 0), (1, 0x10)]);
    assert_eq!(topo.root_bus(seg1).map(|r| r.segment), Some(1));
    assert_eq!(seg1.to_string(), "0001:10:00.0");
}

#[test]
fn only_device_zero_below_a_root_port() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 1, 1);
    fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
    fake.add_endpoint(bdf(1, 0, 0), 0x1234, 0x11e8, 0);
    fake.add_endpoint(bdf(1, 5, 0), 0x1234, 0x11e8, 0); // a phantom
    let topo = enumerate(&fake, &[region()]);
    assert!(topo.function(bdf(1, 0, 0)).is_some());
    assert!(topo.function(bdf(1, 5, 0)).is_none());
}

/// A switch (upstream port + two downstream ports) under a root port, and ACS on the root
/// ports only, as QEMU 7.2 models it.
fn switch_topology() -> FakeConfigSpace {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 1, 4);
    fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
    fake.add_acs(bdf(0, 1, 0), AcsFlags::from_bits_retain(0x5f));
    fake.add_bridge(bdf(1, 0, 0), 0x104c, 0x8232, 1, 2, 4);
    fake.add_pcie_capability(bdf(1, 0, 0), DevicePortType::UpstreamPort);
    for (device, bus) in [(0, 3), (1, 4)] {
        fake.add_bridge(bdf(2, device, 0), 0x104c, 0x8233, 2, bus, bus);
        fake.add_pcie_capability(bdf(2, device, 0), DevicePortType::DownstreamPort);
        fake.add_endpoint(bdf(bus, 0, 0), 0x1234, 0x11e8, 0);
    }
    fake.add_bridge(bdf(0, 2, 0), 0x1b36, 0x000c, 0, 5, 5);
    fake.add_pcie_capability(bdf(0, 2, 0), DevicePortType::RootPort);
    fake.add_acs(bdf(0, 2, 0), AcsFlags::from_bits_retain(0x5f));
    fake.add_endpoint(bdf(5, 0, 0), 0x1af4, 0x1110, 0x05_00_00);
    fake
}

#[test]
fn switch_queries() {
    let fake = switch_topology();
    let topo = enumerate(&fake, &[region()]);
    let (a, b, c) = (bdf(3, 0, 0), bdf(4, 0, 0), bdf(5, 0, 0));
    let up: Vec<Bdf> = topo.upstream_bridges(a).map(|f| f.bdf).collect();
    assert_eq!(up, [bdf(2, 0, 0), bdf(1, 0, 0), bdf(0, 1, 0)]);
    assert_eq!(topo.root_port(a).map(|f| f.bdf), Some(bdf(0, 1, 0)));
    assert_eq!(
        topo.below_same_switch(a, b).map(|f| f.bdf),
        Some(bdf(1, 0, 0))
    );
    assert!(topo.below_same_switch(a, c).is_none());
    assert!(topo.below_same_switch(a, a).is_none());
    assert!(topo.common_upstream_bridge(a, c).is_none());
    assert_eq!(
        topo.common_upstream_bridge(a, bdf(2, 0, 0)).map(|f| f.bdf),
        Some(bdf(2, 0, 0))
    );
    // Nothing redirects inside the switch; ACS lives only on the root port above it.
    assert_eq!(topo.acs_redirects_between(&fake, a, b), Some(Vec::new()));
    assert_eq!(topo.acs_redirects_between(&fake, a, c), None);
    let path = topo.acs_path(&fake, a).unwrap();
    assert_eq!(path.len(), 4);
    assert!(path[..3].iter().all(|e| e.acs.is_none()));
    assert_eq!(
        path[3].acs.map(|s| (s.capability.bits(), s.control.bits())),
        Some((0x5f, 0))
    );
    // Alias rules: switch and root ports forward the requester ID unchanged.
    assert_eq!(topo.dma_aliases(a), Some(vec![a]));
    assert_eq!(topo.iommu_source_id(a), Some(a));
    assert_eq!(topo.dma_aliases(bdf(9, 0, 0)), None);
}

#[test]
fn acs_redirect_on_the_switch_path_is_reported() {
    let fake = switch_topology();
    // Pretend the downstream port above 03:00.0 has ACS with RR enabled.
    let offset = fake.add_acs(bdf(2, 0, 0), AcsFlags::RR | AcsFlags::SV);
    fake.poke16(
        bdf(2, 0, 0),
        offset + crate::regs::acs::CONTROL,
        AcsFlags::RR.bits(),
    );
    let topo = enumerate(&fake, &[region()]);
    assert!(topo
        .function(bdf(2, 0, 0))
        .unwrap()
        .capabilities
        .find_extended(ExtendedCapabilityId::ACS)
        .is_some());
    assert_eq!(
        topo.acs_redirects_between(&fake, bdf(3, 0, 0), bdf(4, 0, 0)),
        Some(vec![bdf(2, 0, 0)])
    );
    // SV alone is not a redirect.
    fake.poke16(
        bdf(2, 0, 0),
        offset + crate::regs::acs::CONTROL,
        AcsFlags::SV.bits(),
    );
    assert_eq!(
        topo.acs_redirects_between(&fake, bdf(3, 0, 0), bdf(4, 0, 0)),
        Some(vec![])
    );
}

proptest! {
    /// Arbitrary bridge bus numbers: enumeration terminates, finds each function once,
    /// every followed bridge window nests in its parent's, and every bridge not followed
    /// is reported.
    #[test]
    fn arbitrary_bus_numbers_never_loop(
        bridges in proptest::collection::vec((0u8..8, 0u8..32, any::<u8>(), any::<u8>()), 1..24),
    ) {
        let fake = FakeConfigSpace::new();
        for &(bus, device, secondary, subordinate) in &bridges {
            fake.add_bridge(bdf(bus, device, 0), 0x1b36, 0x0001, bus, secondary, subordinate);
        }
        let topo = enumerate(&fake, &[region()]);
        let mut seen: Vec<Bdf> = topo.functions().iter().map(|f| f.bdf).collect();
        let total = seen.len();
        seen.sort();
        seen.dedup();
        prop_assert_eq!(seen.len(), total);
        for f in topo.functions() {
            if let Some(parent) = topo.parent(f.bdf) {
                let p = parent.bridge.unwrap();
                prop_assert!(p.secondary == f.bdf.bus());
                if let Some(b) = f.bridge {
                    let followed = topo.children(f.bdf).next().is_some();
                    if followed {
                        prop_assert!(p.secondary < b.secondary && b.subordinate <= p.subordinate);
                    }
                }
            }
        }
    }
}
