//! The model is validated against real QEMU 7.2 data: configuration-space dumps of every
//! function (`drivers/pci/tests/fixtures/*.cfg`) and HMP `info pci` captures
//! (`tests-qemu/tests/fixtures/*-info-pci.txt`, which show BAR sizes), each headed by the
//! exact command line it was taken with.

use super::check::{show_parent, show_secondary};
use super::listing::parse_hex;
use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn bar(index: u8, ty: BarType, size: u64) -> Bar {
    Bar { index, ty, size }
}

const COMPLEX_CFG: &str = include_str!("../../../drivers/pci/tests/fixtures/complex.cfg");
const DEFAULT_CFG: &str = include_str!("../../../drivers/pci/tests/fixtures/default.cfg");
const COMPLEX_INFO: &str = include_str!("../../tests/fixtures/complex-info-pci.txt");
const COMPLEX_LINUX: &str =
    include_str!("../../../drivers/pci/tests/fixtures/linux-groups-complex.txt");
const TWO_PXB_INFO: &str = include_str!("../../tests/fixtures/two-pxb-info-pci.txt");

/// The [`Topology`] of a fixture's `# qemu-system-x86_64 -machine q35 -m 512M ...` line.
fn topology_of(fixture: &str) -> Topology {
    let line = fixture.lines().next().unwrap();
    let mut args = line
        .strip_prefix("# qemu-system-x86_64 -machine q35 -m ")
        .expect("fixture starts with the QEMU command line")
        .split_whitespace();
    let mut t = Topology {
        memory: args.next().unwrap().into(),
        iommu: None,
        devices: Vec::new(),
    };
    while let Some(opt) = args.next() {
        let value = args.next().unwrap();
        match value.strip_prefix("intel-iommu") {
            Some(props) if opt == "-device" => {
                t.iommu = Some(props.trim_start_matches(',').into());
            }
            _ => t.devices.extend([opt.to_string(), value.to_string()]),
        }
    }
    t
}

fn topo(args: &[&str]) -> Topology {
    Topology {
        devices: args.iter().map(|a| a.to_string()).collect(),
        ..Topology::base()
    }
}

fn model(t: &Topology) -> Vec<ExpectedFunction> {
    expected_functions(t).unwrap_or_else(|e| panic!("{e}"))
}

fn bdf(text: &str) -> Bdf {
    Bdf::parse(text).unwrap()
}

// --- Decoding the configuration-space dumps -------------------------------------------

/// What a `.cfg` dump says about one function.
#[derive(Debug)]
struct Dumped {
    bdf: Bdf,
    vendor: u16,
    device: u16,
    class: u32,
    kind: FunctionKind,
    secondary: Option<u8>,
    /// index, type, assigned address.
    bars: Vec<(u8, BarType, u64)>,
}

fn decode_cfg(cfg: &str) -> Vec<Dumped> {
    let mut dwords: BTreeMap<Bdf, BTreeMap<u16, u32>> = BTreeMap::new();
    for line in cfg.lines().filter(|l| !l.starts_with('#')) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let off = u16::from_str_radix(w[1], 16).unwrap();
        let val = u32::from_str_radix(w[2], 16).unwrap();
        dwords.entry(bdf(w[0])).or_default().insert(off, val);
    }
    dwords
        .into_iter()
        .map(|(bdf, d)| {
            let dw = |off: u16| d.get(&off).copied().unwrap_or(0);
            let header_type = (dw(0x00c) >> 16) & 0x7f;
            let class = dw(0x008) >> 8;
            let kind = match header_type {
                1 => FunctionKind::Bridge,
                _ if class >> 8 == 0x0600 => FunctionKind::Host,
                _ => FunctionKind::Endpoint,
            };
            let bar_count = if header_type == 1 { 2 } else { 6 };
            let mut bars = Vec::new();
            let mut i = 0;
            while i < bar_count {
                let v = dw(0x010 + 4 * i as u16);
                let index = i;
                i += 1;
                if v == 0 {
                    continue;
                }
                let (ty, addr) = if v & 1 == 1 {
                    (BarType::Io, u64::from(v & !3))
                } else {
                    let prefetch = v & 8 != 0;
                    let low = u64::from(v & !0xf);
                    if (v >> 1) & 3 == 2 {
                        let high = u64::from(dw(0x010 + 4 * i as u16));
                        i += 1;
                        let ty = if prefetch {
                            BarType::Mem64Prefetch
                        } else {
                            BarType::Mem64
                        };
                        (ty, high << 32 | low)
                    } else if prefetch {
                        (BarType::Mem32Prefetch, low)
                    } else {
                        (BarType::Mem32, low)
                    }
                };
                bars.push((index as u8, ty, addr));
            }
            Dumped {
                bdf,
                vendor: dw(0) as u16,
                device: (dw(0) >> 16) as u16,
                class,
                kind,
                secondary: (header_type == 1).then_some((dw(0x018) >> 8) as u8),
                bars,
            }
        })
        .collect()
}

/// The bridge whose secondary bus is `bus`, in a dump.
fn dumped_parent(all: &[Dumped], bus: u8) -> Option<&Dumped> {
    all.iter().find(|d| d.secondary == Some(bus))
}

/// The requester ID of a dumped function, by the rule as the brief states it (independent
/// of the model's code): behind a pcie-pci-bridge (1b36:000e), (its secondary bus, 00.0);
/// behind a pci-bridge (1b36:0001), the bridge's BDF; outermost alias wins.
fn dumped_rid(all: &[Dumped], f: &Dumped) -> Bdf {
    let mut rid = f.bdf;
    let mut bus = f.bdf.bus();
    while let Some(p) = dumped_parent(all, bus) {
        match (p.vendor, p.device) {
            (0x1b36, 0x000e) => rid = device0(bus),
            (0x1b36, 0x0001) => rid = p.bdf,
            _ => {}
        }
        bus = p.bdf.bus();
    }
    rid
}

fn assert_model_matches_dump(fixture: &str) {
    let expected = model(&topology_of(fixture));
    let dumped = decode_cfg(fixture);
    let mut want: Vec<Bdf> = dumped.iter().map(|d| d.bdf).collect();
    let mut have: Vec<Bdf> = expected.iter().map(|e| e.bdf).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want, "functions present");
    for d in &dumped {
        let e = expected.iter().find(|e| e.bdf == d.bdf).unwrap();
        let ctx = format!("{} ({})", d.bdf.full(), e.origin);
        assert_eq!((e.vendor, e.device), (d.vendor, d.device), "{ctx} id");
        assert_eq!(e.class, d.class, "{ctx} class");
        assert_eq!(e.kind, d.kind, "{ctx} kind");
        assert_eq!(e.secondary, d.secondary, "{ctx} secondary");
        let parent = dumped_parent(&dumped, d.bdf.bus()).map(|p| p.bdf);
        assert_eq!(e.parent, parent, "{ctx} parent");
        let types: Vec<(u8, BarType)> = d.bars.iter().map(|b| (b.0, b.1)).collect();
        let model_types: Vec<(u8, BarType)> = e.bars.iter().map(|b| (b.index, b.ty)).collect();
        assert_eq!(model_types, types, "{ctx} BAR indices and types");
        for (b, (_, _, addr)) in e.bars.iter().zip(&d.bars) {
            assert_eq!(addr % b.size, 0, "{ctx} BAR{} size {:#x}", b.index, b.size);
        }
        assert_eq!(e.rids, [dumped_rid(&dumped, d)], "{ctx} rids");
    }
}

#[test]
fn model_matches_the_default_machine_dump() {
    assert_model_matches_dump(DEFAULT_CFG);
}

#[test]
fn model_matches_the_complex_machine_dump() {
    assert_model_matches_dump(COMPLEX_CFG);
}

// --- `info pci` captures: BAR sizes -------------------------------------------------

/// One function of an HMP `info pci` capture.
struct InfoPci {
    bdf: Bdf,
    vendor: u16,
    device: u16,
    secondary: Option<u8>,
    /// Index, type, address and size.
    bars: Vec<ListedBar>,
}

/// Decodes an HMP `info pci` capture (bus numbers in decimal, BARs as `[first, last]`).
fn decode_info_pci(text: &str) -> Vec<InfoPci> {
    let mut out: Vec<InfoPci> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let l = line.trim().trim_end_matches('.');
        if let Some(rest) = l.strip_prefix("Bus ") {
            let nums: Vec<u8> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            out.push(InfoPci {
                bdf: Bdf::new(0, nums[0], nums[1], nums[2]).unwrap(),
                vendor: 0,
                device: 0,
                secondary: None,
                bars: vec![],
            });
        } else if let Some((_, id)) = l.split_once("PCI device ") {
            let f = out.last_mut().unwrap();
            f.vendor = u16::from_str_radix(&id[..4], 16).unwrap();
            f.device = u16::from_str_radix(&id[5..9], 16).unwrap();
        } else if let Some(n) = l.strip_prefix("secondary bus ") {
            out.last_mut().unwrap().secondary = Some(n.parse().unwrap());
        } else if let Some(rest) = l.strip_prefix("BAR") {
            let (index, desc) = rest.split_once(": ").unwrap();
            let index: u8 = index.parse().unwrap();
            if index > 5 {
                continue; // expansion ROM
            }
            let ty = match desc.split(" at ").next().unwrap() {
                "I/O" => BarType::Io,
                "32 bit memory" => BarType::Mem32,
                "64 bit memory" => BarType::Mem64,
                "32 bit prefetchable memory" => BarType::Mem32Prefetch,
                "64 bit prefetchable memory" => BarType::Mem64Prefetch,
                other => panic!("unknown BAR type {other}"),
            };
            let (start, end) = desc.split_once(" at ").unwrap().1.split_once(" [").unwrap();
            let start = parse_hex(start).unwrap();
            let end = parse_hex(end.trim_end_matches(']')).unwrap();
            out.last_mut().unwrap().bars.push(ListedBar {
                index,
                ty,
                address: start,
                size: end - start + 1,
            });
        }
    }
    out
}

fn assert_model_matches_info_pci(fixture: &str) {
    let expected = model(&topology_of(fixture));
    let info = decode_info_pci(fixture);
    assert_eq!(expected.len(), info.len(), "number of functions");
    for InfoPci {
        bdf,
        vendor,
        device,
        secondary,
        bars,
    } in &info
    {
        let e = expected
            .iter()
            .find(|e| e.bdf == *bdf)
            .unwrap_or_else(|| panic!("{bdf} not in the model"));
        assert_eq!((e.vendor, e.device), (*vendor, *device), "{bdf} id");
        assert_eq!(e.secondary, *secondary, "{bdf} secondary");
        let sizes: Vec<Bar> = bars.iter().map(|b| bar(b.index, b.ty, b.size)).collect();
        assert_eq!(e.bars, sizes, "{bdf} ({}) BARs", e.origin);
    }
}

#[test]
fn bar_sizes_match_info_pci_of_the_complex_machine() {
    assert_model_matches_info_pci(COMPLEX_INFO);
}

#[test]
fn two_pxbs_reserve_multifunction_and_switch_slots_match_info_pci() {
    // Two pxb-pcie (numbered in bus_nr order, not command-line order), a root port without
    // bus= landing on the newest pxb, bus-reserve, a multifunction root port pair, shpc=off,
    // and a downstream port at a non-zero slot of a switch.
    assert_model_matches_info_pci(TWO_PXB_INFO);
    let e = model(&topology_of(TWO_PXB_INFO));
    let f = |b: &str| e.iter().find(|f| f.bdf == bdf(b)).unwrap();
    assert_eq!(f("10:00.0").origin, "pcie-root-port,id=rpx,chassis=1");
    // edu behind pci-bridge behind pcie-pci-bridge: the outer (PCIe-to-PCI) alias wins.
    assert_eq!(f("14:02.0").rids, [bdf("13:00.0")]);
    assert_eq!(f("13:01.0").rids, [bdf("13:00.0")]);
    // edu behind a pci-bridge with shpc=off on pcie.0: the bridge's BDF.
    assert_eq!(f("01:00.0").rids, [bdf("00:05.0")]);
    assert_eq!(f("00:05.0").bars, []);
    // bus-reserve=2 on 30:00.0 (secondary 0x31) keeps 0x32-0x33: the next port gets 0x34.
    assert_eq!(f("30:05.0").secondary, Some(0x34));
}

// --- The complex topology, spelled out ---------------------------------------------

#[test]
fn complex_topology_in_enumeration_order() {
    let e = model(&topology_of(COMPLEX_CFG));
    let got: Vec<(String, String, String)> = e
        .iter()
        .map(|f| {
            (
                f.bdf.short(),
                format!("{:04x}:{:04x}", f.vendor, f.device),
                f.parent.map_or("root".into(), |p| p.short()),
            )
        })
        .collect();
    let want = [
        ("00:00.0", "8086:29c0", "root"),
        ("00:01.0", "1234:1111", "root"),
        ("00:02.0", "8086:10d3", "root"),
        ("00:03.0", "1b36:000c", "root"),
        ("01:00.0", "1234:11e8", "00:03.0"),
        ("00:04.0", "1b36:000c", "root"),
        ("02:00.0", "104c:8232", "00:04.0"),
        ("03:00.0", "104c:8233", "02:00.0"),
        ("04:00.0", "1234:11e8", "03:00.0"),
        ("03:01.0", "104c:8233", "02:00.0"),
        ("05:00.0", "1af4:1110", "03:01.0"),
        ("00:05.0", "1b36:000e", "root"),
        ("06:03.0", "1234:11e8", "00:05.0"),
        ("00:06.0", "1b36:0001", "root"),
        ("07:04.0", "1234:11e8", "00:06.0"),
        ("00:07.0", "1b36:000b", "root"),
        ("00:1f.0", "8086:2918", "root"),
        ("00:1f.2", "8086:2922", "root"),
        ("00:1f.3", "8086:2930", "root"),
        ("40:00.0", "1b36:000c", "root"),
        ("41:00.0", "1234:11e8", "40:00.0"),
        ("40:01.0", "1b36:000c", "root"),
        ("42:00.0", "1b36:0010", "40:01.0"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(b, i, p)| (b.to_string(), i.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want);
    let f = |b: &str| e.iter().find(|f| f.bdf == bdf(b)).unwrap();
    assert_eq!(
        f("06:03.0").rids,
        [bdf("06:00.0")],
        "behind pcie-pci-bridge"
    );
    assert_eq!(f("07:04.0").rids, [bdf("00:06.0")], "behind pci-bridge");
    assert_eq!(f("41:00.0").rids, [bdf("41:00.0")], "behind a root port");
    assert_eq!(f("00:07.0").kind, FunctionKind::Host);
    assert_eq!(f("00:1f.0").kind, FunctionKind::Endpoint);
    assert_eq!(
        f("42:00.0").bars,
        [
            bar(0, BarType::Mem64, 16 * KIB),
            bar(2, BarType::Mem64Prefetch, 2 * MIB)
        ]
    );
    assert_eq!(
        f("05:00.0").bars,
        [
            bar(0, BarType::Mem32, 256),
            bar(2, BarType::Mem64Prefetch, MIB)
        ]
    );
}

// --- Placement rules and refusals --------------------------------------------------

#[test]
fn addr_is_hexadecimal_and_defaults_can_be_removed() {
    let e = model(&topo(&["-device", "edu,addr=10"]));
    assert!(e
        .iter()
        .any(|f| f.bdf == bdf("00:10.0") && f.device == 0x11e8));
    // -vga none: the NIC moves to slot 1 and edu to slot 2 (checked with QEMU 7.2).
    let e = model(&topo(&["-vga", "none", "-device", "edu"]));
    let ids: Vec<(String, u16)> = e.iter().map(|f| (f.bdf.short(), f.device)).collect();
    assert!(ids.contains(&("00:01.0".into(), 0x10d3)), "{ids:?}");
    assert!(ids.contains(&("00:02.0".into(), 0x11e8)), "{ids:?}");
    let e = model(&topo(&["-nodefaults", "-device", "edu"]));
    assert_eq!(e.len(), 5);
    assert!(e
        .iter()
        .any(|f| f.bdf == bdf("00:01.0") && f.device == 0x11e8));
}

#[test]
fn default_run_topology() {
    let e = model(&Topology::default_run());
    let bdfs: Vec<String> = e.iter().map(|f| f.bdf.short()).collect();
    assert_eq!(
        bdfs,
        [
            "00:00.0", "00:01.0", "00:02.0", "00:03.0", "00:04.0", "01:00.0", "00:1f.0", "00:1f.2",
            "00:1f.3"
        ]
    );
}

fn refused(args: &[&str]) -> String {
    expected_functions(&topo(args)).expect_err("the model must refuse this topology")
}

#[test]
fn topologies_the_guest_cannot_see_or_qemu_refuses_are_rejected() {
    let rp = "pcie-root-port,id=rp,chassis=1";
    let e = refused(&["-device", rp, "-device", "edu,bus=rp,addr=1"]);
    assert!(e.contains("invisible"), "{e}");
    let e = refused(&["-device", "pxb-pcie,id=x,bus_nr=32", "-device", "edu"]);
    assert!(e.contains("only plugs bridges"), "{e}");
    let e = refused(&["-device", "edu,addr=5.1"]);
    assert!(e.contains("no function 0"), "{e}");
    let e = refused(&["-device", "edu,addr=5", "-device", "edu,addr=5.1"]);
    assert!(e.contains("multifunction=on"), "{e}");
    let e = refused(&["-device", "edu,addr=1"]);
    assert!(e.contains("already used by built-in VGA"), "{e}");
    let e = refused(&["-device", rp, "-device", "pxb-pcie,id=x,bus_nr=1"]);
    assert!(e.contains("raise bus_nr"), "{e}");
    let e = refused(&[
        "-device",
        "pxb-pcie,id=x,bus_nr=32",
        "-device",
        "pcie-root-port,id=rp,bus=x,chassis=1",
        "-device",
        "pcie-pci-bridge,id=ppb,bus=rp",
        "-device",
        "edu,bus=ppb",
    ]);
    assert!(e.contains("slot 0"), "{e}");
    let e = refused(&["-device", "virtio-net-pci"]);
    assert!(e.contains("not modelled"), "{e}");
    let e = refused(&["-device", "nvme,serial=x,cmb_size_mb=3"]);
    assert!(e.contains("power of two"), "{e}");
    let e = refused(&["-device", "edu,bus=nope"]);
    assert!(e.contains("no bus named `nope`"), "{e}");
}

// --- The listing parser and the check ---------------------------------------------

#[test]
fn parses_a_pcidev_line_and_ignores_the_rest() {
    let log = "SeaBIOS\r\nPCIDEV 0000:06:03.0 id=1234:11e8 class=00ff00 kind=endpoint \
                   parent=0000:00:05.0 secondary=- bars=0:mem32:0xfe600000:0x100000 \
                   rids=06:00.0 group=5\r\n[ 0.1] INFO other\nPCIDEV 0000:00:03.0 \
                   id=1b36:000c class=060400 kind=bridge parent=root secondary=01 \
                   bars=0:mem32:0xfea95000:0x1000,2:mem64p:0x800000000:0x200000 rids=00:03.0 \
                   group=3\n";
    let l = parse_pci_listing(log).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(
        l[0],
        ListedFunction {
            bdf: bdf("06:03.0"),
            vendor: 0x1234,
            device: 0x11e8,
            class: 0xff00,
            kind: FunctionKind::Endpoint,
            parent: Some(bdf("00:05.0")),
            secondary: None,
            bars: vec![ListedBar {
                index: 0,
                ty: BarType::Mem32,
                address: 0xfe60_0000,
                size: MIB
            }],
            rids: vec![bdf("06:00.0")],
            group: "5".into(),
        }
    );
    assert_eq!(l[1].group, "3");
    assert_eq!(l[1].secondary, Some(1));
    assert_eq!(l[1].bars[1].ty, BarType::Mem64Prefetch);
    assert_eq!(l[1].bars[1].address, 0x8_0000_0000);
}

#[test]
fn malformed_pcidev_lines_are_reported() {
    let good = "PCIDEV 0000:00:00.0 id=8086:29c0 class=060000 kind=host parent=root \
                    secondary=- bars=- rids=00:00.0 group=0";
    assert!(parse_pci_listing(good).is_ok());
    for (bad, why) in [
        (good.replace(" group=0", ""), "no `group=`"),
        (good.replace("group=0", "group="), "bad group"),
        (good.replace(" rids=00:00.0", ""), "no `rids=`"),
        (good.replace("0000:00:00.0", "0000:00:20.0"), "bad address"),
        (good.replace("kind=host", "kind=hostt"), "bad kind"),
        (good.replace("bars=-", "bars=0:mem32:0x1000"), "bad bars"),
        (
            good.replace("bars=-", "bars=0:mem33:0x1000:0x10"),
            "bad bars",
        ),
        (good.replace("class=060000", "class=0600000"), "bad class"),
        (good.replace("id=8086:29c0", "id=8086:29c"), "bad id"),
        (good.replace("secondary=-", "secondary=1"), "bad secondary"),
        (good.replace("rids=00:00.0", "rids=00:00.0,"), "bad rids"),
        (format!("{good} extra=1"), "unknown field"),
    ] {
        let e = parse_pci_listing(&bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

/// `iommu_group=` per function in a Linux oracle report.
fn linux_groups(report: &str) -> HashMap<Bdf, String> {
    report
        .lines()
        .filter(|l| l.starts_with("pci "))
        .map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let b = bdf(w.next().unwrap());
            let g = w.find_map(|x| x.strip_prefix("iommu_group=")).unwrap();
            (b, g.to_string())
        })
        .collect()
}

/// A `PCIDEV` listing of the complex machine built from the captured data alone: addresses,
/// IDs, classes, kinds and bus links from `complex.cfg`, BAR sizes from `info pci`, requester
/// IDs by the brief's rule, group labels from Linux 6.1's IOMMU groups on the same machine.
/// This is what a correct kernel prints.
fn captured_complex_listing() -> String {
    let groups = linux_groups(COMPLEX_LINUX);
    let dumped = decode_cfg(COMPLEX_CFG);
    let info = decode_info_pci(COMPLEX_INFO);
    let mut log = String::from("SeaBIOS (version 1.16.2)\nKTEST BEGIN pci::listing\n");
    for d in &dumped {
        let sizes = &info.iter().find(|i| i.bdf == d.bdf).unwrap().bars;
        let bars: Vec<String> = d
            .bars
            .iter()
            .zip(sizes)
            .map(|((i, ty, addr), s)| format!("{i}:{}:{addr:#x}:{:#x}", ty.name(), s.size))
            .collect();
        log.push_str(&format!(
            "PCIDEV {} id={:04x}:{:04x} class={:06x} kind={} parent={} secondary={} bars={} \
                 rids={} group={}\n",
            d.bdf.full(),
            d.vendor,
            d.device,
            d.class,
            d.kind.name(),
            show_parent(dumped_parent(&dumped, d.bdf.bus()).map(|p| p.bdf)),
            show_secondary(d.secondary),
            if bars.is_empty() {
                "-".into()
            } else {
                bars.join(",")
            },
            dumped_rid(&dumped, d).short(),
            groups[&d.bdf],
        ));
    }
    log
}

fn check_complex(log: &str) -> Result<String, String> {
    check_pci_listing(&topology_of(COMPLEX_CFG), log)
}

/// Rewrites the listing line of `target`.
fn edit(log: &str, target: &str, f: impl Fn(&str) -> String) -> String {
    log.lines()
        .map(|l| {
            if l.starts_with(&format!("PCIDEV 0000:{target} ")) {
                f(l)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_real_listing_passes() {
    let ok = check_complex(&captured_complex_listing()).unwrap();
    assert_eq!(
        ok,
        "23 PCI functions match the topology (24 BARs placed without overlap, 17 isolation \
             groups as the model partitions them)"
    );
}

#[test]
fn wrong_listings_are_rejected_with_the_function_named() {
    let log = captured_complex_listing();
    let cases: Vec<(String, &str)> = vec![
        (
            edit(&log, "06:03.0", |_| String::new()),
            "0000:06:03.0 missing: expected 1234:11e8 endpoint (edu,bus=ppb,addr=3)",
        ),
        (
            edit(&log, "41:00.0", |l| {
                l.replace("parent=0000:40:00.0", "parent=root")
            }),
            "0000:41:00.0 (edu,bus=rp3) parent: expected 0000:40:00.0, got root",
        ),
        (
            edit(&log, "05:00.0", |l| l.replace(":0x100000 ", ":0x200000 ")),
            "0000:05:00.0 (ivshmem-plain,memdev=shm,bus=dn2) bars (index:type:size): \
                 expected 0:mem32:0x100,2:mem64p:0x100000, got 0:mem32:0x100,2:mem64p:0x200000",
        ),
        (
            edit(&log, "01:00.0", |l| l.replace("0xfe800000", "0xfde00000")),
            "overlaps",
        ),
        (
            edit(&log, "07:04.0", |l| {
                l.replace("rids=00:06.0", "rids=07:04.0")
            }),
            "0000:07:04.0 (edu,bus=pb,addr=4) rids: expected 00:06.0, got 07:04.0",
        ),
        (
            edit(&log, "06:03.0", |l| l.replace("0xfe600000", "0xfe680000")),
            "not aligned",
        ),
        (
            edit(&log, "03:01.0", |l| {
                l.replace("secondary=05", "secondary=06")
            }),
            "0000:03:01.0 (xio3130-downstream,id=dn2,bus=up,chassis=4,slot=1) secondary: \
                 expected 05, got 06",
        ),
        (
            format!(
                "{log}PCIDEV 0000:00:08.0 id=1234:11e8 class=00ff00 kind=endpoint \
                     parent=root secondary=- bars=- rids=00:08.0 group=80\n"
            ),
            "0000:00:08.0 unexpected",
        ),
        (
            edit(&log, "00:07.0", |l| l.replace("kind=host", "kind=endpoint")),
            "kind: expected host, got endpoint",
        ),
        // The downstream port and the edu below it split apart.
        (
            edit(&log, "04:00.0", |l| l.replace("group=11", "group=99")),
            "0000:03:00.0 (xio3130-downstream,id=dn1,bus=up,chassis=3,slot=0) and \
                 0000:04:00.0 (edu,bus=dn1): one group in the model, separate groups in the \
                 listing (group=11 / group=99)",
        ),
        // Two isolated endpoints given one label.
        (
            edit(&log, "41:00.0", |l| l.replace("group=15", "group=16")),
            "0000:41:00.0 (edu,bus=rp3) and 0000:42:00.0 (nvme,serial=deadbeef,cmb_size_mb=2,\
                 bus=rp4): separate groups in the model, one group in the listing",
        ),
        (
            edit(&log, "06:03.0", |l| l.replace("group=5", "group=-")),
            "0000:06:03.0 has no group",
        ),
    ];
    for (bad, want) in cases {
        let e = check_complex(&bad).unwrap_err();
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
    assert_eq!(
        check_complex("KERNEL EXIT success\n").unwrap_err(),
        "no PCIDEV lines in the log"
    );
    let dup = format!("{log}{}\n", log.lines().nth(2).unwrap());
    assert!(check_complex(&dup).unwrap_err().contains("listed twice"));
}

#[test]
fn an_unpredictable_topology_fails_the_check_with_the_reason() {
    let e = check_pci_listing(&topo(&["-device", "virtio-net-pci"]), "").unwrap_err();
    assert!(
        e.starts_with("the PCI model cannot predict this topology: `-device virtio-net-pci`"),
        "{e}"
    );
}
