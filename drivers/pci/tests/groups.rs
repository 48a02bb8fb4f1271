//! Isolation groups over synthetic topologies (`FakeConfigSpace`) and over a configuration space
//! captured from QEMU 7.2, compared with the IOMMU groups Linux 6.1 formed on the same machine.

use std::collections::BTreeMap;

use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::group::{self, acs_enabled, acs_quirk, IsolationGroups, REQUIRED_ACS};
use pci::mcfg;
use pci::regs::{acs, AcsFlags, DevicePortType};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::{enumerate, Bdf, McfgRegion, Topology};
use proptest::prelude::*;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

fn region() -> McfgRegion {
    McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
}

/// QEMU's root port ACS capability: SV TB RR CR UF DT.
const QEMU_ROOT_PORT_ACS: AcsFlags = AcsFlags::from_bits_retain(0x5f);

/// The partition as sets of members, sorted, for comparisons that do not depend on labels.
fn partition(groups: &IsolationGroups) -> Vec<Vec<Bdf>> {
    groups.groups().iter().map(|g| g.members.clone()).collect()
}

fn parts(list: &[&[Bdf]]) -> Vec<Vec<Bdf>> {
    let mut v: Vec<Vec<Bdf>> = list.iter().map(|m| m.to_vec()).collect();
    v.iter_mut().for_each(|m| m.sort());
    v.sort();
    v
}

fn sorted(mut p: Vec<Vec<Bdf>>) -> Vec<Vec<Bdf>> {
    p.sort();
    p
}

fn root_port(fake: &FakeConfigSpace, at: Bdf, secondary: u8, subordinate: u8) {
    fake.add_bridge(at, 0x1b36, 0x000c, at.bus(), secondary, subordinate);
    fake.add_pcie_capability(at, DevicePortType::RootPort);
    fake.add_acs(at, QEMU_ROOT_PORT_ACS);
}

fn edu(fake: &FakeConfigSpace, at: Bdf) {
    fake.add_endpoint(at, 0x1234, 0x11e8, 0x00_ff_00);
}

fn host_bridge(fake: &FakeConfigSpace) {
    fake.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00);
}

fn isolate(fake: &FakeConfigSpace) -> (Topology, IsolationGroups) {
    let topo = enumerate(fake, &[region()]);
    apply_acs_policy(fake, &topo, AcsPolicy::Isolate);
    let groups = group::compute(fake, &topo);
    (topo, groups)
}

/// Structural invariants every result must satisfy.
fn check_invariants(topo: &Topology, groups: &IsolationGroups) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    for (i, g) in groups.groups().iter().enumerate() {
        if g.id.index() != i || g.members.is_empty() {
            return Err(format!("group {i} has id {} / no members", g.id));
        }
        if !g.members.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!("group {i} members not sorted: {:?}", g.members));
        }
        if i > 0 && groups.groups()[i - 1].members[0] >= g.members[0] {
            return Err("groups not ordered by lowest member".into());
        }
        for m in &g.members {
            if seen.insert(*m, i).is_some() {
                return Err(format!("{m} in two groups"));
            }
            if groups.group_of(*m).map(|x| x.id) != Some(g.id) {
                return Err(format!("group_of({m}) disagrees with groups()"));
            }
            for rid in topo.dma_requester_ids(*m).unwrap() {
                if g.requester_ids.binary_search(&rid).is_err() {
                    return Err(format!("{m}: requester ID {rid:#x} missing from its group"));
                }
            }
            // Every alias that is a function lies in the same group.
            for alias in topo.dma_aliases(*m).unwrap() {
                if topo.function(alias).is_some() && !g.contains(alias) {
                    return Err(format!("{m}: alias {alias} in another group"));
                }
            }
        }
        if !g.requester_ids.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!("group {i} requester IDs not sorted/deduped"));
        }
    }
    if seen.len() != topo.functions().len() {
        return Err(format!(
            "{} functions grouped, {} enumerated",
            seen.len(),
            topo.functions().len()
        ));
    }
    // No requester ID is programmed for two groups.
    let mut owner = BTreeMap::new();
    for g in groups.groups() {
        for rid in &g.requester_ids {
            if let Some(other) = owner.insert(*rid, g.id) {
                return Err(format!(
                    "requester ID {rid:#x} in groups {other} and {}",
                    g.id
                ));
            }
        }
    }
    Ok(())
}

/// A root port (ACS isolated) with a PCIe-to-PCI bridge below it and two conventional endpoints
/// behind that: both issue DMA as (02, 00.0), so they and the bridge are one group, and the root
/// port stays alone.
#[test]
fn two_functions_behind_a_pcie_pci_bridge_are_one_group() {
    let fake = FakeConfigSpace::new();
    host_bridge(&fake);
    root_port(&fake, bdf(0, 1, 0), 1, 2);
    fake.add_bridge(bdf(1, 0, 0), 0x1b36, 0x000e, 1, 2, 2);
    fake.add_pcie_capability(bdf(1, 0, 0), DevicePortType::PcieToPciBridge);
    edu(&fake, bdf(2, 1, 0));
    edu(&fake, bdf(2, 2, 0));
    let (topo, groups) = isolate(&fake);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[
            &[bdf(0, 0, 0)],
            &[bdf(0, 1, 0)],
            &[bdf(1, 0, 0), bdf(2, 1, 0), bdf(2, 2, 0)],
        ])
    );
    let g = groups.group_of(bdf(2, 2, 0)).unwrap();
    let want: Vec<pci::RequesterId> = [bdf(1, 0, 0), bdf(2, 0, 0), bdf(2, 1, 0), bdf(2, 2, 0)]
        .iter()
        .map(|b| b.requester_id())
        .collect();
    assert_eq!(g.requester_ids, want);
    assert_eq!(
        groups.group_of(bdf(2, 1, 0)).map(|g| g.id),
        Some(g.id),
        "same label for both functions"
    );
    assert_ne!(groups.group_of(bdf(0, 1, 0)).map(|g| g.id), Some(g.id));
}

/// A conventional PCI-PCI bridge on the root bus: DMA from below carries the bridge's BDF, so the
/// bridge and everything below it are one group, even a device that sits at (secondary, 00.0).
#[test]
fn functions_behind_a_conventional_pci_bridge_share_the_bridge_group() {
    let fake = FakeConfigSpace::new();
    host_bridge(&fake);
    fake.add_bridge(bdf(0, 4, 0), 0x1b36, 0x0001, 0, 1, 1);
    edu(&fake, bdf(1, 0, 0));
    edu(&fake, bdf(1, 4, 0));
    edu(&fake, bdf(0, 5, 0));
    let (topo, groups) = isolate(&fake);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[
            &[bdf(0, 0, 0)],
            &[bdf(0, 4, 0), bdf(1, 0, 0), bdf(1, 4, 0)],
            &[bdf(0, 5, 0)],
        ])
    );
    assert!(groups
        .group_of(bdf(1, 4, 0))
        .unwrap()
        .requester_ids
        .contains(&bdf(0, 4, 0).requester_id()));
}

/// Functions of one slot: conventional ones (no ACS possible) share a group; PCIe endpoints with
/// ACS fully enabled do not; one that advertises UF but has it disabled does; a capability that
/// does not advertise UF at all counts UF as hard-wired (Linux's rule), so it is isolated.
#[test]
fn multifunction_devices_with_and_without_acs() {
    let all = AcsFlags::SV | AcsFlags::RR | AcsFlags::CR | AcsFlags::UF;
    // (advertised, enabled, expected: functions isolated from each other)
    let cases = [
        (None, AcsFlags::empty(), false),
        (Some(all), all, true),
        (Some(all), AcsFlags::SV | AcsFlags::RR | AcsFlags::CR, false),
        (Some(all), AcsFlags::empty(), false),
        (
            Some(AcsFlags::SV | AcsFlags::RR | AcsFlags::CR),
            AcsFlags::SV | AcsFlags::RR | AcsFlags::CR,
            true,
        ),
    ];
    for (advertised, enabled, isolated) in cases {
        let fake = FakeConfigSpace::new();
        host_bridge(&fake);
        for f in 0..3 {
            let at = bdf(0, 5, f);
            edu(&fake, at);
            fake.set_multifunction(at);
            if let Some(cap) = advertised {
                fake.add_pcie_capability(at, DevicePortType::Endpoint);
                let offset = fake.add_acs(at, cap);
                fake.poke16(at, offset + acs::CONTROL, enabled.bits());
            }
        }
        let topo = enumerate(&fake, &[region()]);
        let groups = group::compute(&fake, &topo);
        check_invariants(&topo, &groups).unwrap();
        let slot: Vec<Bdf> = (0..3).map(|f| bdf(0, 5, f)).collect();
        let expected = if isolated {
            parts(&[&[bdf(0, 0, 0)], &slot[0..1], &slot[1..2], &slot[2..3]])
        } else {
            parts(&[&[bdf(0, 0, 0)], &slot])
        };
        assert_eq!(
            sorted(partition(&groups)),
            expected,
            "advertised {advertised:?} enabled {enabled:?}"
        );
    }
}

/// Only functions without ACS are joined: with ACS on function 0 alone, functions 1 and 2 share a
/// group and function 0 is alone (Linux skips functions that have ACS on both sides).
#[test]
fn a_function_with_acs_is_not_joined_to_its_siblings() {
    let fake = FakeConfigSpace::new();
    for f in 0..3 {
        let at = bdf(0, 7, f);
        edu(&fake, at);
        fake.set_multifunction(at);
        fake.add_pcie_capability(at, DevicePortType::Endpoint);
    }
    let offset = fake.add_acs(bdf(0, 7, 0), REQUIRED_ACS);
    fake.poke16(bdf(0, 7, 0), offset + acs::CONTROL, REQUIRED_ACS.bits());
    let topo = enumerate(&fake, &[region()]);
    let groups = group::compute(&fake, &topo);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[&[bdf(0, 7, 0)], &[bdf(0, 7, 1), bdf(0, 7, 2)]])
    );
}

/// Root port 00:01.0 → upstream port 01:00.0 → downstream ports 02:00.0 and 02:01.0 → an endpoint
/// below each. `port_acs` gives the switch ports an ACS capability.
fn switch(port_acs: bool) -> FakeConfigSpace {
    let fake = FakeConfigSpace::new();
    host_bridge(&fake);
    root_port(&fake, bdf(0, 1, 0), 1, 4);
    fake.add_bridge(bdf(1, 0, 0), 0x104c, 0x8232, 1, 2, 4);
    fake.add_pcie_capability(bdf(1, 0, 0), DevicePortType::UpstreamPort);
    for (device, bus) in [(0, 3), (1, 4)] {
        fake.add_bridge(bdf(2, device, 0), 0x104c, 0x8233, 2, bus, bus);
        fake.add_pcie_capability(bdf(2, device, 0), DevicePortType::DownstreamPort);
        if port_acs {
            fake.add_acs(bdf(2, device, 0), QEMU_ROOT_PORT_ACS);
        }
        edu(&fake, bdf(bus, 0, 0));
        fake.add_pcie_capability(bdf(bus, 0, 0), DevicePortType::Endpoint);
    }
    fake
}

/// A switch without ACS below an isolating root port: each downstream port shares a group with
/// what is below it (the port has no ACS), while the upstream port (single-function, so needs
/// none) and the root port are alone. This is what Linux 6.1 reports for QEMU's x3130/xio3130
/// (fixture `linux-groups-complex.txt`: 02:00.0 + 03:00.0, 02:01.0 + 04:00.0).
#[test]
fn switch_without_acs_below_an_isolating_root_port() {
    let fake = switch(false);
    let (topo, groups) = isolate(&fake);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[
            &[bdf(0, 0, 0)],
            &[bdf(0, 1, 0)],
            &[bdf(1, 0, 0)],
            &[bdf(2, 0, 0), bdf(3, 0, 0)],
            &[bdf(2, 1, 0), bdf(4, 0, 0)],
        ])
    );
}

/// With ACS isolation on every port, every function is its own group.
#[test]
fn switch_with_acs_on_every_port_isolates_every_function() {
    let fake = switch(true);
    let (topo, groups) = isolate(&fake);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(groups.len(), topo.functions().len());
}

/// When the root port does not isolate (ACS left at 0, as without an IOMMU), everything below it
/// shares the root port's group.
#[test]
fn a_root_port_without_acs_isolation_takes_everything_below_it() {
    let fake = switch(false);
    let topo = enumerate(&fake, &[region()]);
    let groups = group::compute(&fake, &topo);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[
            &[bdf(0, 0, 0)],
            &[
                bdf(0, 1, 0),
                bdf(1, 0, 0),
                bdf(2, 0, 0),
                bdf(2, 1, 0),
                bdf(3, 0, 0),
                bdf(4, 0, 0)
            ],
        ])
    );
}

/// Groups follow the ACS controls read at computation time: isolating the root port splits its
/// group, clearing the controls again (as a reset does) joins it back, and re-applying the policy
/// splits it again.
#[test]
fn recomputed_groups_follow_acs_control_changes() {
    let fake = FakeConfigSpace::new();
    host_bridge(&fake);
    root_port(&fake, bdf(0, 1, 0), 1, 1);
    edu(&fake, bdf(1, 0, 0));
    let topo = enumerate(&fake, &[region()]);
    let joined = parts(&[&[bdf(0, 0, 0)], &[bdf(0, 1, 0), bdf(1, 0, 0)]]);
    let split = parts(&[&[bdf(0, 0, 0)], &[bdf(0, 1, 0)], &[bdf(1, 0, 0)]]);
    assert_eq!(sorted(partition(&group::compute(&fake, &topo))), joined);
    apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
    assert_eq!(sorted(partition(&group::compute(&fake, &topo))), split);
    let offset = topo.function(bdf(0, 1, 0)).unwrap().acs_offset().unwrap();
    fake.poke16(bdf(0, 1, 0), offset + acs::CONTROL, 0);
    assert_eq!(sorted(partition(&group::compute(&fake, &topo))), joined);
    apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
    assert_eq!(sorted(partition(&group::compute(&fake, &topo))), split);
    // A policy that leaves out UF does not isolate (UF is advertised, so it is required).
    fake.poke16(bdf(0, 1, 0), offset + acs::CONTROL, 0);
    apply_acs_policy(
        &fake,
        &topo,
        AcsPolicy::Enable(AcsFlags::SV | AcsFlags::RR | AcsFlags::CR),
    );
    assert_eq!(sorted(partition(&group::compute(&fake, &topo))), joined);
}

/// q35's root bus: host bridge, a single-function endpoint, and the ICH9 LPC/AHCI/SMBus functions
/// (conventional, multifunction: one group), as Linux groups them.
#[test]
fn root_bus_devices() {
    let fake = FakeConfigSpace::new();
    host_bridge(&fake);
    edu(&fake, bdf(0, 3, 0));
    for (f, device, class) in [
        (0, 0x2918, 0x06_01_00),
        (2, 0x2922, 0x01_06_01),
        (3, 0x2930, 0x0c_05_00),
    ] {
        fake.add_endpoint(bdf(0, 0x1f, f), 0x8086, device, class);
        fake.set_multifunction(bdf(0, 0x1f, f));
    }
    let (topo, groups) = isolate(&fake);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(
        sorted(partition(&groups)),
        parts(&[
            &[bdf(0, 0, 0)],
            &[bdf(0, 3, 0)],
            &[bdf(0, 0x1f, 0), bdf(0, 0x1f, 2), bdf(0, 0x1f, 3)],
        ])
    );
}

/// Linux's `pci_quirk_rciep_acs`: Intel root-complex integrated endpoints provide SV/RR/CR/UF
/// without an ACS capability, so the functions of a multifunction Intel RCiEP are isolated; the
/// same device with another vendor ID is one group (negative control).
#[test]
fn intel_rciep_quirk() {
    for (vendor, isolated) in [(0x8086, true), (0x1b36, false)] {
        let fake = FakeConfigSpace::new();
        for f in 0..2 {
            let at = bdf(0, 2, f);
            fake.add_endpoint(at, vendor, 0x10d3, 0x02_00_00);
            fake.set_multifunction(at);
            fake.add_pcie_capability(at, DevicePortType::RootComplexIntegratedEndpoint);
        }
        let topo = enumerate(&fake, &[region()]);
        let function = topo.function(bdf(0, 2, 0)).unwrap();
        assert_eq!(acs_quirk(function, REQUIRED_ACS), isolated.then_some(true));
        assert_eq!(acs_enabled(&fake, function, REQUIRED_ACS), isolated);
        let groups = group::compute(&fake, &topo);
        check_invariants(&topo, &groups).unwrap();
        assert_eq!(
            groups.len(),
            if isolated { 2 } else { 1 },
            "vendor {vendor:#x}"
        );
    }
}

/// Port types Linux never trusts for ACS, whatever their registers say.
#[test]
fn bridges_to_and_from_conventional_pci_never_have_acs() {
    let fake = FakeConfigSpace::new();
    for (device, t) in [
        (1, DevicePortType::PcieToPciBridge),
        (2, DevicePortType::PciToPcieBridge),
        (3, DevicePortType::RootComplexEventCollector),
    ] {
        let at = bdf(0, device, 0);
        fake.add_endpoint(at, 0x1b36, 0x000e, 0x06_04_00);
        fake.add_pcie_capability(at, t);
        let offset = fake.add_acs(at, REQUIRED_ACS);
        fake.poke16(at, offset + acs::CONTROL, REQUIRED_ACS.bits());
    }
    let topo = enumerate(&fake, &[region()]);
    for f in topo.functions() {
        assert!(!acs_enabled(&fake, f, REQUIRED_ACS), "{}", f.bdf);
    }
}

// ---------------------------------------------------------------------------------------------
// Linux's algorithm, transcribed step by step (sequential, first group found wins), as a
// reference for the property test.

struct LinuxReference<'a> {
    fake: &'a FakeConfigSpace,
    topo: &'a Topology,
    group: BTreeMap<Bdf, usize>,
    next: usize,
}

impl LinuxReference<'_> {
    fn multifunction(&self, b: Bdf) -> bool {
        let f = self.topo.function(b).unwrap();
        f.multifunction || b.function() != 0
    }

    fn acs(&self, b: Bdf) -> bool {
        acs_enabled(self.fake, self.topo.function(b).unwrap(), REQUIRED_ACS)
    }

    fn path_enabled(&self, b: Bdf) -> bool {
        self.acs(b) && self.topo.parent(b).is_none_or(|p| self.path_enabled(p.bdf))
    }

    /// `get_pci_alias_group`: no explicit DMA-alias quirks exist on these devices, so only the
    /// device's own group.
    fn alias_group(&self, b: Bdf, seen: &mut Vec<Bdf>) -> Option<usize> {
        if seen.contains(&b) {
            return None;
        }
        seen.push(b);
        self.group.get(&b).copied()
    }

    fn function_alias_group(&self, b: Bdf, seen: &mut Vec<Bdf>) -> Option<usize> {
        if !self.multifunction(b) || self.acs(b) {
            return None;
        }
        let slot: Vec<Bdf> = self
            .topo
            .functions()
            .iter()
            .map(|f| f.bdf)
            .filter(|o| *o != b && o.bus() == b.bus() && o.device() == b.device())
            .collect();
        slot.into_iter()
            .filter(|o| !self.acs(*o))
            .find_map(|o| self.alias_group(o, seen))
    }

    fn device_group(&mut self, d: Bdf) -> usize {
        // pci_for_each_dma_alias with get_pci_alias_or_group.
        let mut last = d;
        if let Some(g) = self.group.get(&d) {
            return *g;
        }
        for bridge in self.topo.upstream_bridges(d) {
            let aliases = matches!(
                bridge.port_type(),
                None | Some(DevicePortType::PcieToPciBridge | DevicePortType::PciToPcieBridge)
            );
            if aliases {
                last = bridge.bdf;
                if let Some(g) = self.group.get(&bridge.bdf) {
                    return *g;
                }
            }
        }
        let mut pdev = last;
        let mut bus_owner = self.topo.parent(pdev).map(|p| p.bdf);
        while let Some(bridge) = bus_owner {
            if self.path_enabled(bridge) {
                break;
            }
            pdev = bridge;
            if let Some(g) = self.group.get(&pdev) {
                return *g;
            }
            bus_owner = self.topo.parent(pdev).map(|p| p.bdf);
        }
        let mut seen = Vec::new();
        if let Some(g) = self.alias_group(pdev, &mut seen) {
            return g;
        }
        if let Some(g) = self.function_alias_group(pdev, &mut seen) {
            return g;
        }
        self.next += 1;
        self.next - 1
    }

    fn run(fake: &FakeConfigSpace, topo: &Topology) -> Vec<Vec<Bdf>> {
        let mut r = LinuxReference {
            fake,
            topo,
            group: BTreeMap::new(),
            next: 0,
        };
        // Linux probes in device-list order: each bus's devices, bridges before their buses.
        for f in topo.functions() {
            let g = r.device_group(f.bdf);
            r.group.insert(f.bdf, g);
        }
        let mut by_group: BTreeMap<usize, Vec<Bdf>> = BTreeMap::new();
        for (b, g) in &r.group {
            by_group.entry(*g).or_default().push(*b);
        }
        sorted(by_group.into_values().collect())
    }
}

/// What sits in one slot of a generated bus.
#[derive(Debug, Clone)]
enum Slot {
    /// `functions` functions; `pcie`: PCIe endpoint (else conventional); ACS (advertised,
    /// enabled) per function.
    Endpoint {
        functions: u8,
        pcie: bool,
        acs: Vec<Option<(u16, u16)>>,
    },
    /// A bridge of a port type (None: conventional PCI bridge) with optional ACS and the slots of
    /// its secondary bus.
    Bridge {
        port: Option<DevicePortType>,
        acs: Option<(u16, u16)>,
        below: Vec<Slot>,
    },
}

fn acs_strategy() -> impl Strategy<Value = Option<(u16, u16)>> {
    proptest::option::of((0u16..0x80, 0u16..0x80))
}

fn endpoint_strategy() -> impl Strategy<Value = Slot> {
    (
        1u8..4,
        any::<bool>(),
        proptest::collection::vec(acs_strategy(), 3),
    )
        .prop_map(|(functions, pcie, acs)| Slot::Endpoint {
            functions,
            pcie,
            acs,
        })
}

fn port_strategy() -> impl Strategy<Value = Option<DevicePortType>> {
    prop_oneof![
        Just(None),
        Just(Some(DevicePortType::RootPort)),
        Just(Some(DevicePortType::UpstreamPort)),
        Just(Some(DevicePortType::DownstreamPort)),
        Just(Some(DevicePortType::PcieToPciBridge)),
        Just(Some(DevicePortType::PciToPcieBridge)),
    ]
}

fn slot_strategy() -> impl Strategy<Value = Slot> {
    endpoint_strategy().prop_recursive(2, 12, 3, |inner| {
        (
            port_strategy(),
            acs_strategy(),
            proptest::collection::vec(inner, 0..3),
        )
            .prop_map(|(port, acs, below)| Slot::Bridge { port, acs, below })
    })
}

/// Builds the slots of `bus` (device numbers 1, 2, ...; below single-device ports only slot 0
/// is scanned, so those buses start at 0) and returns the last bus number used.
fn build(fake: &FakeConfigSpace, bus: u8, slots: &[Slot], mut last: u8, first_device: u8) -> u8 {
    let set_acs = |at: Bdf, acs: Option<(u16, u16)>| {
        if let Some((cap, ctl)) = acs {
            let offset = fake.add_acs(at, AcsFlags::from_bits_retain(cap));
            fake.poke16(at, offset + acs::CONTROL, ctl & cap);
        }
    };
    for (i, slot) in slots.iter().enumerate() {
        let device = first_device + i as u8;
        match slot {
            Slot::Endpoint {
                functions,
                pcie,
                acs,
            } => {
                for f in 0..*functions {
                    let at = bdf(bus, device, f);
                    edu(fake, at);
                    if *functions > 1 && f == 0 {
                        fake.set_multifunction(at);
                    }
                    if *pcie {
                        fake.add_pcie_capability(at, DevicePortType::Endpoint);
                        set_acs(at, acs[usize::from(f)]);
                    }
                }
            }
            Slot::Bridge { port, acs, below } => {
                let at = bdf(bus, device, 0);
                let secondary = last + 1;
                fake.add_bridge(at, 0x1b36, 0x0001, bus, secondary, secondary);
                if let Some(t) = port {
                    fake.add_pcie_capability(at, *t);
                    set_acs(at, *acs);
                }
                let single = port.is_some_and(|t| t.has_single_device_link());
                let below = if single {
                    &below[..below.len().min(1)]
                } else {
                    below
                };
                let first = if single { 0 } else { 1 };
                last = build(fake, secondary, below, secondary, first);
                fake.poke8(at, pci::regs::bridge::SUBORDINATE_BUS, last);
            }
        }
        if device >= 31 {
            break;
        }
    }
    last
}

proptest! {
    /// Random small topologies: the groups partition the functions, every alias lies in its
    /// function's group, group_of agrees with groups(), no requester ID belongs to two groups, and
    /// the partition equals the one Linux's sequential algorithm produces.
    #[test]
    fn groups_partition_and_match_linux(slots in proptest::collection::vec(slot_strategy(), 1..5)) {
        let fake = FakeConfigSpace::new();
        host_bridge(&fake);
        build(&fake, 0, &slots, 0, 1);
        let topo = enumerate(&fake, &[region()]);
        prop_assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
        let groups = group::compute(&fake, &topo);
        if let Err(e) = check_invariants(&topo, &groups) {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(sorted(partition(&groups)), LinuxReference::run(&fake, &topo));
    }
}

// ---------------------------------------------------------------------------------------------
// A configuration space captured from QEMU 7.2, against Linux 6.1's groups on the same machine.

const COMPLEX_CFG: &str = include_str!("fixtures/complex.cfg");
const COMPLEX_LINUX: &str = include_str!("fixtures/linux-groups-complex.txt");
const DEFAULT_ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/default.acpi");

/// The partition in a `linux-guest.sh` report: `pci <bdf> ... iommu_group=N ...` lines.
fn linux_partition(report: &str) -> Vec<Vec<Bdf>> {
    let mut by_group: BTreeMap<String, Vec<Bdf>> = BTreeMap::new();
    for line in report.lines().filter(|l| l.starts_with("pci ")) {
        let mut words = line.split_whitespace().skip(1);
        let address = words.next().expect("address");
        let (seg, rest) = address.split_once(':').expect("segment");
        let (bus, devfn) = rest.split_once(':').expect("bus");
        let (dev, func) = devfn.split_once('.').expect("devfn");
        let b = Bdf::new(
            u16::from_str_radix(seg, 16).unwrap(),
            u8::from_str_radix(bus, 16).unwrap(),
            u8::from_str_radix(dev, 16).unwrap(),
            u8::from_str_radix(func, 16).unwrap(),
        )
        .unwrap();
        let group = words
            .find_map(|w| w.strip_prefix("iommu_group="))
            .expect("iommu_group=");
        assert_ne!(group, "-", "{b} has no IOMMU group in the report");
        by_group.entry(group.to_string()).or_default().push(b);
    }
    sorted(
        by_group
            .into_values()
            .map(|mut m| {
                m.sort();
                m
            })
            .collect(),
    )
}

/// The captured configuration space of a 25-function machine (switch, pxb, both bridge kinds,
/// nvme), with ACS isolation applied as the kernel does: the same partition as Linux's groups on
/// that machine (the oracle booted the fixture's own command line). Without the policy the root
/// ports do not isolate, and the partition differs (negative control).
#[test]
fn captured_qemu_machine_matches_linux_groups() {
    let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).expect("fixture loads");
    let regions = mcfg::parse(&acpi_table_bytes(DEFAULT_ACPI, "MCFG")).unwrap();
    let topo = enumerate(&fake, &regions);
    let command = COMPLEX_CFG.lines().next().unwrap();
    let oracle = COMPLEX_LINUX
        .lines()
        .find_map(|l| l.strip_prefix("# scenario-args: "))
        .expect("oracle fixture names its arguments");
    assert!(
        command.ends_with(oracle),
        "the oracle booted `{oracle}`, the fixture was captured with `{command}`"
    );
    let linux = linux_partition(COMPLEX_LINUX);
    assert_eq!(
        linux.iter().map(Vec::len).sum::<usize>(),
        topo.functions().len()
    );
    let before = group::compute(&fake, &topo);
    assert_ne!(sorted(partition(&before)), linux);
    apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
    let groups = group::compute(&fake, &topo);
    check_invariants(&topo, &groups).unwrap();
    assert_eq!(sorted(partition(&groups)), linux);
}
