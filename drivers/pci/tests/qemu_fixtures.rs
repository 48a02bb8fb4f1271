//! Enumeration, BARs, aliases and ACS on configuration spaces our kernel captured in QEMU 7.2.
//!
//! Expectations are computed from each fixture's `# qemu-system-x86_64 ...` line (which devices
//! were asked for, on which bus), not pasted from a previous run.

use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::mcfg::{self, McfgError};
use pci::regs::{header, DevicePortType};
use pci::testing::{acpi_table_bytes, FakeConfigSpace, QemuCommandLine, QemuDevice};
use pci::topology::RootBusOrigin;
use pci::{enumerate, BarKind, Bdf, ConfigSpace, Function, McfgRegion, Topology};

const DEFAULT_CFG: &str = include_str!("fixtures/default.cfg");
const COMPLEX_CFG: &str = include_str!("fixtures/complex.cfg");
const ACPI_DUMPS: [&str; 3] = [
    include_str!("../../iommu-vtd/tests/fixtures/default.acpi"),
    include_str!("../../iommu-vtd/tests/fixtures/complex.acpi"),
    include_str!("../../iommu-vtd/tests/fixtures/aw48.acpi"),
];

/// The PCI `-device` drivers of the fixtures' command lines and the IDs they present, from
/// `pci::testing`'s QEMU device catalogue (the one place that knowledge lives).
fn models() -> Vec<(&'static str, u16, u16)> {
    let mut out: Vec<(&'static str, u16, u16)> = Vec::new();
    for cfg in [DEFAULT_CFG, COMPLEX_CFG] {
        let command_line = QemuCommandLine::from_fixture(cfg).unwrap();
        for option in command_line.devices() {
            let Some(d) = QemuDevice::for_option(option, &command_line).unwrap() else {
                continue;
            };
            if !out.iter().any(|m| m.0 == d.driver) {
                out.push((d.driver, d.vendor, d.device));
            }
        }
    }
    out
}

fn model_of(f: &Function) -> Option<&'static str> {
    models()
        .into_iter()
        .find(|m| (m.1, m.2) == (f.vendor_id, f.device_id))
        .map(|m| m.0)
}

fn regions(dump: &str) -> Vec<McfgRegion> {
    mcfg::parse(&acpi_table_bytes(dump, "MCFG")).expect("fixture MCFG parses")
}

fn load(cfg: &str) -> (FakeConfigSpace, Topology) {
    let fake = FakeConfigSpace::from_qemu_fixture(cfg).expect("fixture loads");
    let topology = enumerate(&fake, &regions(ACPI_DUMPS[0]));
    (fake, topology)
}

#[test]
fn mcfg_from_every_fixture() {
    for dump in ACPI_DUMPS {
        let bytes = acpi_table_bytes(dump, "MCFG");
        assert_eq!(bytes.len(), 60);
        let regions = mcfg::parse(&bytes).unwrap();
        assert_eq!(regions.len(), 1);
        let r = regions[0];
        assert_eq!(
            (r.base_address(), r.segment(), r.start_bus(), r.end_bus()),
            (0xb000_0000, 0, 0, 0xff)
        );
        assert_eq!((r.window_base(), r.window_size()), (0xb000_0000, 256 << 20));
    }
}

#[test]
fn truncated_real_mcfg_is_refused() {
    let bytes = acpi_table_bytes(ACPI_DUMPS[0], "MCFG");
    for len in 0..bytes.len() {
        let err = mcfg::parse(&bytes[..len]).unwrap_err();
        assert!(
            matches!(
                err,
                McfgError::Truncated { .. } | McfgError::LengthExceedsBuffer { .. }
            ),
            "{len}: {err}"
        );
    }
    // Trailing bytes after the declared length are ignored.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xaa; 7]);
    assert_eq!(mcfg::parse(&longer).unwrap().len(), 1);
    // A length that lies (one entry more than present).
    let mut lying = longer.clone();
    lying[4] += 16;
    assert!(matches!(
        mcfg::parse(&lying),
        Err(McfgError::LengthExceedsBuffer { .. })
    ));
}

/// Where the command line puts a device: the chain of models above it (nearest first) and the
/// root bus it must hang from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    model: String,
    chain: Vec<String>,
    root: Root,
    device_number: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// `bus=pcie.0`: the q35 root bus, 0.
    Main,
    /// Below a `pxb-pcie` with this `bus_nr`.
    Expander(u8),
    /// No `bus=`: QEMU picks a PCIe bus; any root bus.
    Any,
}

fn expected_placements(command_line: &QemuCommandLine) -> Vec<Placement> {
    let mut placements = Vec::new();
    for device in command_line.devices() {
        if !models().iter().any(|m| m.0 == device.driver) {
            continue;
        }
        let mut chain = Vec::new();
        let mut bus = device.get("bus");
        let root = loop {
            match bus {
                None => break Root::Any,
                Some("pcie.0") => break Root::Main,
                Some(id) => {
                    let parent = command_line
                        .device_by_id(id)
                        .expect("bus= names a device id");
                    if parent.driver == "pxb-pcie" {
                        break Root::Expander(parent.get("bus_nr").unwrap().parse().unwrap());
                    }
                    chain.push(parent.driver.clone());
                    bus = parent.get("bus");
                }
            }
        };
        let device_number = device
            .get("addr")
            .map(|a| u8::from_str_radix(a.trim_start_matches("0x"), 16).unwrap());
        placements.push(Placement {
            model: device.driver.clone(),
            chain,
            root,
            device_number,
        });
    }
    placements
}

fn found_placement(topology: &Topology, f: &Function) -> Option<(Placement, u8)> {
    let model = model_of(f)?;
    let chain = topology
        .upstream_bridges(f.bdf)
        .map(|b| {
            model_of(b).map_or_else(
                || format!("{:04x}:{:04x}", b.vendor_id, b.device_id),
                String::from,
            )
        })
        .collect();
    let root = topology.root_bus(f.bdf).unwrap().bus;
    let placement = Placement {
        model: model.into(),
        chain,
        root: Root::Any,
        device_number: None,
    };
    Some((placement, root))
}

/// Every device the command line asks for is found once, with the parent chain its `bus=`
/// options imply, on the right root bus; nothing else of those models is found.
fn check_topology_matches_command_line(cfg: &str) -> (FakeConfigSpace, Topology) {
    let command_line = QemuCommandLine::from_fixture(cfg).unwrap();
    let (fake, topology) = load(cfg);
    let mut expected = expected_placements(&command_line);
    for f in topology.functions_sorted() {
        let Some((found, root_bus)) = found_placement(&topology, f) else {
            continue;
        };
        let position = expected.iter().position(|e| {
            e.model == found.model
                && e.chain == found.chain
                && e.device_number.is_none_or(|d| d == f.bdf.device())
                && match e.root {
                    Root::Main => root_bus == 0,
                    Root::Expander(bus) => root_bus == bus,
                    Root::Any => true,
                }
        });
        let Some(position) = position else {
            panic!("{} {:?} on root bus {root_bus:02x} is not on the command line (left: {expected:?})", f.bdf, found);
        };
        expected.remove(position);
    }
    assert!(expected.is_empty(), "not found: {expected:?}\n{topology}");
    let edus = command_line.devices().filter(|d| d.driver == "edu").count();
    assert_eq!(topology.find(0x1234, 0x11e8).count(), edus);
    assert!(topology.warnings().is_empty(), "{:?}", topology.warnings());
    (fake, topology)
}

#[test]
fn default_fixture_matches_its_command_line() {
    let (_, topology) = check_topology_matches_command_line(DEFAULT_CFG);
    assert_eq!(topology.roots().len(), 1);
    let edu = topology.find(0x1234, 0x11e8).next().unwrap();
    assert!(topology.parent(edu.bdf).is_none());
    let bar = edu.bar(0).unwrap();
    assert_eq!(
        (bar.kind, bar.size),
        (
            BarKind::Memory32 {
                prefetchable: false
            },
            1 << 20
        )
    );
    assert_eq!(topology.dma_aliases(edu.bdf), Some(vec![edu.bdf]));
    // The q35 host bridge keeps its place at 00:00.0 and has no extended capabilities.
    let host = topology.function(Bdf::new(0, 0, 0, 0).unwrap()).unwrap();
    assert!(host.class.is_host_bridge() && host.capabilities.extended.is_empty());
}

#[test]
fn complex_fixture_matches_its_command_line() {
    let command_line = QemuCommandLine::from_fixture(COMPLEX_CFG).unwrap();
    let (_, topology) = check_topology_matches_command_line(COMPLEX_CFG);
    // One extra root bus per pxb-pcie, at its bus_nr, found because no bridge claims it.
    let expanders: Vec<u8> = command_line
        .devices()
        .filter(|d| d.driver == "pxb-pcie")
        .map(|d| d.get("bus_nr").unwrap().parse().unwrap())
        .collect();
    let extra: Vec<u8> = topology
        .roots()
        .iter()
        .filter(|r| r.origin == RootBusOrigin::UnclaimedBus)
        .map(|r| r.bus)
        .collect();
    assert_eq!(extra, expanders);
    // Port types the models imply.
    for f in topology.functions() {
        let expected = match model_of(f) {
            Some("pcie-root-port") => Some(DevicePortType::RootPort),
            Some("x3130-upstream") => Some(DevicePortType::UpstreamPort),
            Some("xio3130-downstream") => Some(DevicePortType::DownstreamPort),
            Some("pcie-pci-bridge") => Some(DevicePortType::PcieToPciBridge),
            Some("pci-bridge") => None,
            _ => continue,
        };
        assert_eq!(f.port_type(), expected, "{}", f.bdf);
    }
}

#[test]
fn complex_fixture_bars() {
    let (_, topology) = load(COMPLEX_CFG);
    let nvme = topology.find(0x1b36, 0x0010).next().unwrap();
    let bar0 = nvme.bar(0).unwrap();
    assert_eq!(
        (bar0.kind, bar0.size),
        (
            BarKind::Memory64 {
                prefetchable: false
            },
            16 << 10
        )
    );
    assert!(nvme.bar(1).is_none(), "upper half of BAR0");
    let cmb = nvme.bar(2).unwrap();
    assert_eq!(
        (cmb.kind, cmb.size),
        (BarKind::Memory64 { prefetchable: true }, 2 << 20)
    );
    let ivshmem = topology.find(0x1af4, 0x1110).next().unwrap();
    assert_eq!(ivshmem.bar(0).map(|b| b.size), Some(256));
    assert_eq!(ivshmem.bar(2).map(|b| b.size), Some(1 << 20));
    for bridge in topology
        .find(0x1b36, 0x000e)
        .chain(topology.find(0x1b36, 0x0001))
    {
        assert_eq!(bridge.bars.len(), 1);
        assert_eq!(
            bridge.bars[0].kind,
            BarKind::Memory64 {
                prefetchable: false
            }
        );
    }
    // I/O BARs of the q35 built-ins (e1000e BAR2, AHCI BAR4, SMBus BAR4).
    let io: Vec<u64> = topology
        .functions_sorted()
        .flat_map(|f| f.bars.iter())
        .filter(|b| b.kind == BarKind::Io)
        .map(|b| b.size)
        .collect();
    assert_eq!(io, [32, 32, 64]);
    for f in topology.functions() {
        for bar in &f.bars {
            assert_eq!(bar.phys_address, bar.bus_address, "x86: no translation");
            assert_eq!(
                bar.bus_address % bar.size,
                0,
                "{} BAR{} misaligned",
                f.bdf,
                bar.index
            );
        }
    }
}

#[test]
fn enumeration_leaves_the_configuration_space_as_found() {
    let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).unwrap();
    let bdfs: Vec<Bdf> = enumerate(&fake, &regions(ACPI_DUMPS[1]))
        .functions()
        .iter()
        .map(|f| f.bdf)
        .collect();
    let snapshot = |fake: &FakeConfigSpace| -> Vec<u32> {
        bdfs.iter()
            .flat_map(|&b| (0..0x40).step_by(4).map(move |o| fake.peek32(b, o)))
            .collect()
    };
    let before = snapshot(&fake);
    fake.clear_writes();
    let topology = enumerate(&fake, &regions(ACPI_DUMPS[1]));
    assert_eq!(snapshot(&fake), before);
    assert!(!fake.writes().is_empty());
    assert!(fake.writes().iter().all(|w| w.offset != header::STATUS));
    assert_eq!(topology.functions().len(), bdfs.len());
}

/// The edu whose command-line `bus=` names a device of model `model`.
fn edu_behind<'a>(topology: &'a Topology, model: &str) -> (&'a Function, &'a Function) {
    let edu = topology
        .find(0x1234, 0x11e8)
        .find(|f| topology.parent(f.bdf).and_then(model_of) == Some(model))
        .unwrap_or_else(|| panic!("no edu behind a {model}"));
    (edu, topology.parent(edu.bdf).unwrap())
}

#[test]
fn alias_behind_pcie_to_pci_bridge_is_secondary_bus_device_zero() {
    let (_, topology) = load(COMPLEX_CFG);
    let (edu, bridge) = edu_behind(&topology, "pcie-pci-bridge");
    let secondary = bridge.bridge.unwrap().secondary;
    assert_eq!(edu.bdf.bus(), secondary);
    let alias = Bdf::new(0, secondary, 0, 0).unwrap();
    assert_eq!(topology.dma_aliases(edu.bdf), Some(vec![edu.bdf, alias]));
    assert_eq!(topology.iommu_source_id(edu.bdf), Some(alias));
    assert_eq!(
        topology.dma_requester_ids(edu.bdf),
        Some(vec![
            edu.bdf.requester_id(),
            pci::RequesterId::from_parts(secondary, 0)
        ])
    );
}

#[test]
fn alias_behind_conventional_bridge_is_the_bridge() {
    let (_, topology) = load(COMPLEX_CFG);
    let (edu, bridge) = edu_behind(&topology, "pci-bridge");
    assert!(bridge.pcie.is_none(), "pci-bridge is conventional");
    assert_eq!(
        topology.parent(bridge.bdf).map(|p| p.bdf),
        None,
        "on pcie.0"
    );
    assert_eq!(
        topology.dma_aliases(edu.bdf),
        Some(vec![edu.bdf, bridge.bdf])
    );
    assert_eq!(topology.iommu_source_id(edu.bdf), Some(bridge.bdf));
}

#[test]
fn aliases_through_ports_are_the_device_itself() {
    let (_, topology) = load(COMPLEX_CFG);
    for model in ["pcie-root-port", "xio3130-downstream"] {
        let (edu, _) = edu_behind(&topology, model);
        assert_eq!(topology.dma_aliases(edu.bdf), Some(vec![edu.bdf]));
    }
}

#[test]
fn acs_on_qemu_root_ports_only_and_isolation() {
    let command_line = QemuCommandLine::from_fixture(COMPLEX_CFG).unwrap();
    let (fake, topology) = load(COMPLEX_CFG);
    let root_ports = command_line
        .devices()
        .filter(|d| d.driver == "pcie-root-port")
        .count();
    let with_acs: Vec<&Function> = topology
        .functions_sorted()
        .filter(|f| f.acs_offset().is_some())
        .collect();
    assert_eq!(with_acs.len(), root_ports);
    assert!(with_acs
        .iter()
        .all(|f| f.port_type() == Some(DevicePortType::RootPort)));

    // edu and ivshmem below the same switch: nothing redirects, before or after isolation,
    // because the only ACS is on the root port above the switch.
    let (edu, _) = edu_behind(&topology, "xio3130-downstream");
    let ivshmem = topology.find(0x1af4, 0x1110).next().unwrap();
    let switch = topology.below_same_switch(edu.bdf, ivshmem.bdf).unwrap();
    assert_eq!(model_of(switch), Some("x3130-upstream"));
    assert_eq!(
        topology.acs_redirects_between(&fake, edu.bdf, ivshmem.bdf),
        Some(vec![])
    );

    let before = topology.acs_path(&fake, edu.bdf).unwrap();
    assert_eq!(
        before.last().unwrap().acs.map(|s| s.control.bits()),
        Some(0),
        "control 0 at reset"
    );

    let report = apply_acs_policy(&fake, &topology, AcsPolicy::Isolate);
    assert_eq!(report.ports.len(), root_ports);
    for port in &report.ports {
        assert_eq!(
            port.after,
            AcsPolicy::ISOLATION.intersection(port.capability)
        );
        assert_eq!(
            port.after,
            AcsPolicy::ISOLATION,
            "QEMU's root port advertises all four"
        );
    }
    let after = topology.acs_path(&fake, edu.bdf).unwrap();
    assert_eq!(
        after.last().unwrap().acs.map(|s| s.control),
        Some(AcsPolicy::ISOLATION)
    );
    assert!(after[..after.len() - 1].iter().all(|e| e.acs.is_none()));
    assert_eq!(
        topology.acs_redirects_between(&fake, edu.bdf, ivshmem.bdf),
        Some(vec![])
    );
    // Across root ports the traffic meets only at the host bridge.
    let nvme = topology.find(0x1b36, 0x0010).next().unwrap();
    assert!(topology.common_upstream_bridge(edu.bdf, nvme.bdf).is_none());
    assert!(topology.below_same_switch(edu.bdf, nvme.bdf).is_none());
}

#[test]
fn secondary_bus_reset_then_restore() {
    let (fake, topology) = load(COMPLEX_CFG);
    let (edu, port) = edu_behind(&topology, "pcie-root-port");
    let bar0 = fake.read32(edu.bdf, header::bar(0));
    let control = fake.read16(port.bdf, pci::regs::bridge::BRIDGE_CONTROL);
    let reset = pci::regs::BridgeControl::SECONDARY_BUS_RESET.bits();
    fake.write16(port.bdf, pci::regs::bridge::BRIDGE_CONTROL, control | reset);
    fake.write16(port.bdf, pci::regs::bridge::BRIDGE_CONTROL, control);
    assert_eq!(fake.read32(edu.bdf, header::bar(0)), 0);
    assert_eq!(fake.read16(edu.bdf, header::COMMAND), 0);
    // Restoring from the enumeration snapshot brings the device back.
    fake.write32(edu.bdf, header::bar(0), bar0);
    fake.write16(edu.bdf, header::COMMAND, edu.command.bits());
    let again = enumerate(&fake, topology.regions());
    assert_eq!(
        again.function(edu.bdf).map(|f| f.bars.clone()),
        Some(edu.bars.clone())
    );
}

#[test]
fn listing_is_a_readable_tree() {
    let (_, topology) = load(COMPLEX_CFG);
    let listing = topology.to_string();
    println!("{listing}");
    let (edu, _) = edu_behind(&topology, "xio3130-downstream");
    let line = listing
        .lines()
        .find(|l| l.trim_start().starts_with(&edu.bdf.to_string()))
        .unwrap();
    let depth = line.len() - line.trim_start().len();
    // root port, upstream port, downstream port, edu: four levels below the root bus.
    assert_eq!(depth, 4 * 4);
    assert!(line.contains("1234:11e8") && line.contains("edu"));
    assert!(listing.contains("[0000:40] root bus (extra host bridge"));
    assert!(listing.contains("BAR2 mem64 pref 0xfc400000 size 2M"));
    assert!(listing.contains("q35 host bridge"));
    assert!(!listing.contains("warning"));
}

#[test]
fn fixture_enumeration_is_independent_of_access_path() {
    // A `&FakeConfigSpace` is itself a ConfigSpace: the blanket impl forwards every access.
    let fake = FakeConfigSpace::from_qemu_fixture(DEFAULT_CFG).unwrap();
    let by_ref: &dyn ConfigSpace = &fake;
    let a = enumerate(&by_ref, &regions(ACPI_DUMPS[0]));
    let b = enumerate(&fake, &regions(ACPI_DUMPS[0]));
    assert_eq!(a.functions(), b.functions());
}

#[test]
fn every_bar_lies_inside_its_bridges_windows() {
    for cfg in [DEFAULT_CFG, COMPLEX_CFG] {
        let (_, topology) = load(cfg);
        for f in topology.functions() {
            let Some(parent) = topology.parent(f.bdf) else {
                continue;
            };
            let windows = parent.bridge.unwrap();
            for bar in &f.bars {
                let last = bar.bus_address + bar.size - 1;
                let inside = |w: Option<pci::topology::Window>| {
                    w.is_some_and(|w| w.base <= bar.bus_address && last <= w.limit)
                };
                let ok = match bar.kind {
                    BarKind::Io => inside(windows.io_window),
                    BarKind::Memory32 {
                        prefetchable: false,
                    }
                    | BarKind::Memory64 {
                        prefetchable: false,
                    } => inside(windows.memory_window),
                    _ => inside(windows.prefetchable_window) || inside(windows.memory_window),
                };
                assert!(
                    ok,
                    "{} BAR{} {:#x}+{:#x} outside {}'s windows {:?}",
                    f.bdf, bar.index, bar.bus_address, bar.size, parent.bdf, windows
                );
            }
        }
    }
}
