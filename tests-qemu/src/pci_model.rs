//! A model of the PCI hierarchy QEMU 7.2 builds for `-machine q35` from a [`Topology`], numbered
//! the way SeaBIOS numbers it, and the check of the kernel's `PCIDEV` listing against it.
//!
//! The model answers "which functions must the kernel find, where, and what must it report about
//! them" from the QEMU arguments alone. Every rule below was checked against QEMU 7.2 (the captured
//! configuration spaces in `drivers/pci/tests/fixtures/*.cfg` and the `info pci` captures in
//! `tests-qemu/tests/fixtures/`):
//!
//! - **Built-ins** on `pcie.0` (bus 0): the host bridge 8086:29c0 at 00.0, the ICH9 LPC, AHCI and
//!   SMBus functions at 1f.0/1f.2/1f.3, then the default VGA (1234:1111, absent with `-vga none`
//!   or `-nodefaults`) and the default NIC (e1000e 8086:10d3, absent with `-nodefaults` or any
//!   `-nic`/`-net`/`-netdev`), each in the first free slot, so 00:01.0 and 00:02.0 normally.
//!   `-display none` does not remove the VGA.
//! - **Placement**: `bus=<name>` names `pcie.0` or the `id=` of a device that provides a bus.
//!   Without `bus=`, QEMU picks the root bus of the most recently created `pxb-pcie` if there is
//!   one, else `pcie.0`. `addr=S` or `addr=S.F` (hexadecimal, as QEMU parses it) places a device;
//!   without it the device takes function 0 of the first slot whose function 0 is free, in
//!   command-line order. Functions other than 0 need function 0 of their slot to be
//!   `multifunction=on`.
//! - **Bus rules**: below a `pcie-root-port` or `xio3130-downstream` only slot 0 is visible (QEMU
//!   accepts other slots, but neither SeaBIOS nor a guest sees them: refused here); the internal
//!   bus of an `x3130-upstream` takes downstream ports in any slot; a `pxb-pcie` root bus takes
//!   only bridges; a conventional bus with a standard hot-plug controller (`pcie-pci-bridge`, or a
//!   `pci-bridge` without `shpc=off`) refuses slot 0 inside a `pxb-pcie` hierarchy, where QEMU's
//!   ACPI hot-plug does not take over from the SHPC.
//! - **Bus numbers** (SeaBIOS `pci_bios_init_bus`): depth-first from bus 0 in slot/function
//!   order, each type-1 bridge gets the next number as its secondary bus; a `pcie-root-port` with
//!   `bus-reserve=N` keeps its subordinate at least secondary + N. Then every `pxb-pcie` root bus,
//!   in ascending `bus_nr` order, is numbered the same way starting from its `bus_nr`, which must
//!   lie above every number used so far.
//! - **BARs** of each emulated device, from QEMU's sources and confirmed with `info pci`.
//! - **Requester IDs** (QEMU's `pci_device_iommu_address_space`, equal to the last alias of
//!   Linux's `pci_for_each_dma_alias`): walking from the device towards its root bus, each
//!   conventional bus replaces the ID with (that bus, 00.0) if the bus belongs to a PCIe-to-PCI
//!   bridge (`pcie-pci-bridge`), or with the bridge's own BDF otherwise (`pci-bridge`). The
//!   listing's `rids` holds the one ID that reaches the IOMMU.
//!
//! The kernel prints one line per function: `PCIDEV ssss:bb:dd.f id=vvvv:dddd class=cccccc
//! kind=endpoint|bridge|host parent=root|ssss:bb:dd.f secondary=-|bb bars=-|i:type:addr:size,...
//! rids=bb:dd.f group=<label>`, where functions with equal labels share an isolation group.
//!
//! - **Isolation groups** (Linux's `pci_device_group`, from the model's own knowledge of the
//!   devices, not from the `pci` crate): in QEMU 7.2 only `pcie-root-port` has an ACS capability
//!   (SV TB RR CR UF DT, control 0 at reset), and the kernel enables SV RR CR UF on it exactly
//!   when the machine has an IOMMU. A function joins (1) every bridge that takes ownership of its
//!   DMA on the way up (each conventional bus's bridge: `pcie-pci-bridge`, `pci-bridge`), and every
//!   function with the same requester ID; (2) from the last of those, the bridge above unless that
//!   bridge and every bridge above it have ACS in Linux's sense (root ports: enabled controls;
//!   switch downstream ports and PCIe-to-PCI bridges: never; switch upstream ports and PCIe
//!   endpoints: when single-function; conventional functions: never); (3) the other functions of
//!   its slot when it is multifunction (function above 0, or `multifunction=on`) and neither side
//!   has ACS. PCIe endpoints on a root bus are root-complex integrated endpoints in QEMU, and
//!   Intel's (`e1000e`) have ACS by Linux's `pci_quirk_rciep_acs`. The listing's `group` labels
//!   are compared as a partition (same label, same group), never as strings. Checked against
//!   Linux 6.1's IOMMU groups on the same machines: `tests-qemu/tests/linux_groups.rs`.
//!
//! Topologies whose layout the model cannot predict (an unknown driver, a property that changes
//! BARs or bus numbers in a way not modelled, a placement QEMU refuses or the guest cannot see)
//! are rejected with an error that says what to change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::topology::Topology;

/// The PCI address the model speaks in: the shared type of every crate (`pci::Bdf`,
/// `iommu_vtd::Bdf`), so an expectation compares directly with what the kernel and the DMAR parser
/// use. The segment is always 0 on q35 (`pxb-pcie` buses included).
pub use pci_address::Bdf;

/// The model's text helpers for [`Bdf`], kept as a trait because the type now lives in
/// `pci-address` (a foreign type takes no inherent methods).
pub trait BdfText: Sized {
    /// Parses `ssss:bb:dd.f` or `bb:dd.f` (hexadecimal); `None` for anything else or for a
    /// device above 31 or a function above 7.
    fn parse(text: &str) -> Option<Self>;

    /// `bb:dd.f`, the form requester IDs are printed in (the segment left out).
    fn short(&self) -> String;

    /// `ssss:bb:dd.f` with the segment always present: the form of the kernel's `PCIDEV`
    /// listing and of the model's messages (`Display` leaves a zero segment out).
    fn full(&self) -> String;
}

impl BdfText for Bdf {
    fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }

    fn short(&self) -> String {
        format!(
            "{:02x}:{:02x}.{:x}",
            self.bus(),
            self.device(),
            self.function()
        )
    }

    fn full(&self) -> String {
        format!("{:04x}:{}", self.segment(), self.short())
    }
}

/// Function 0 of device 0 on `bus` (segment 0), where a PCIe-to-PCI bridge's requester ID and a
/// bridge's first function live.
const fn device0(bus: u8) -> Bdf {
    Bdf::from_devfn(0, bus, 0)
}

/// What a function is, as the listing's `kind=` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    /// A type-0 function that is not a host bridge.
    Endpoint,
    /// A type-1 (PCI-to-PCI) header.
    Bridge,
    /// A type-0 host bridge: q35's 00:00.0 and each `pxb-pcie`.
    Host,
}

impl FunctionKind {
    /// The listing's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Bridge => "bridge",
            Self::Host => "host",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Endpoint, Self::Bridge, Self::Host]
            .into_iter()
            .find(|k| k.name() == text)
    }
}

/// The type of a BAR, as the listing spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarType {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory.
    Mem64,
    /// 32-bit prefetchable memory.
    Mem32Prefetch,
    /// 64-bit prefetchable memory.
    Mem64Prefetch,
    /// I/O space.
    Io,
}

impl BarType {
    /// The listing's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mem32 => "mem32",
            Self::Mem64 => "mem64",
            Self::Mem32Prefetch => "mem32p",
            Self::Mem64Prefetch => "mem64p",
            Self::Io => "io",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        use BarType::*;
        [Mem32, Mem64, Mem32Prefetch, Mem64Prefetch, Io]
            .into_iter()
            .find(|t| t.name() == text)
    }

    /// Memory (as opposed to I/O) space.
    pub fn is_memory(self) -> bool {
        self != Self::Io
    }
}

/// A BAR the model expects: index (64-bit BARs at their low index), type and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR index 0..=5.
    pub index: u8,
    /// Type.
    pub ty: BarType,
    /// Size in bytes (a power of two).
    pub size: u64,
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{:#x}", self.index, self.ty.name(), self.size)
    }
}

/// One function the model says the kernel must find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFunction {
    /// Address after SeaBIOS numbered the buses.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// 24-bit class code (base, sub-class, programming interface).
    pub class: u32,
    /// Header kind.
    pub kind: FunctionKind,
    /// The bridge whose secondary bus holds the function; `None` on a root bus.
    pub parent: Option<Bdf>,
    /// A bridge's secondary bus number.
    pub secondary: Option<u8>,
    /// Implemented BARs, by index.
    pub bars: Vec<Bar>,
    /// Requester IDs the IOMMU sees for the function's DMA.
    pub rids: Vec<Bdf>,
    /// Isolation group: functions with the same number share a group (numbers are the model's
    /// own, only the partition they form is meaningful).
    pub group: usize,
    /// Where the function comes from: `built-in ...` or the `-device` argument.
    pub origin: String,
}

/// A BAR as the kernel listed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedBar {
    /// BAR index.
    pub index: u8,
    /// Type.
    pub ty: BarType,
    /// Assigned address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One `PCIDEV` line of the kernel's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFunction {
    /// Address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Header kind.
    pub kind: FunctionKind,
    /// Parent bridge, `None` for `root`.
    pub parent: Option<Bdf>,
    /// Secondary bus, `None` for `-`.
    pub secondary: Option<u8>,
    /// BARs.
    pub bars: Vec<ListedBar>,
    /// Requester IDs.
    pub rids: Vec<Bdf>,
    /// The label of the function's isolation group (`-` when the kernel has none for it).
    pub group: String,
}

// ---------------------------------------------------------------------------------------------
// The QEMU command line.

/// `key=value` properties of one `-device`/`-object` argument, in order.
#[derive(Debug, Clone, Default)]
struct Props(Vec<(String, String)>);

impl Props {
    /// Splits `driver,k=v,...`; a bare `k` means `k=on`, as in QEMU.
    fn parse(spec: &str) -> (String, Self) {
        let mut parts = spec.split(',');
        let driver = parts.next().unwrap_or("").to_string();
        let props = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), "on".to_string()),
            })
            .collect();
        (driver, Self(props))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some("on" | "true" | "yes") => Ok(true),
            Some("off" | "false" | "no") => Ok(false),
            Some(v) => Err(format!("`{key}={v}` is not a boolean")),
        }
    }
}

/// An integer as QEMU's integer properties take it (`0x` hex, leading `0` octal, else decimal).
fn parse_int(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}

/// A size as QEMU's size properties take it: bytes, or a `K`/`M`/`G`/`T` (binary) suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.chars().last()?.to_ascii_uppercase() {
        'B' => (&text[..text.len() - 1], 0),
        'K' => (&text[..text.len() - 1], 10),
        'M' => (&text[..text.len() - 1], 20),
        'G' => (&text[..text.len() - 1], 30),
        'T' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `addr=` as QEMU parses it: `slot[.function]`, both hexadecimal.
fn parse_addr(text: &str) -> Option<u8> {
    let hex = |s: &str| {
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        u8::from_str_radix(s, 16).ok()
    };
    let (slot, func) = match text.split_once('.') {
        Some((s, f)) => (hex(s)?, hex(f)?),
        None => (hex(text)?, 0),
    };
    (slot < 32 && func < 8).then_some(slot << 3 | func)
}

/// What the model reads from the arguments.
struct CommandLine {
    /// `-device` arguments in order: the text (for messages), driver and properties.
    devices: Vec<(String, String, Props)>,
    /// `-object` properties by `id`.
    objects: HashMap<String, Props>,
    /// The default VGA is created.
    vga: bool,
    /// The default NIC is created.
    default_nic: bool,
}

impl CommandLine {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut cl = Self {
            devices: Vec::new(),
            objects: HashMap::new(),
            vga: true,
            default_nic: true,
        };
        let mut it = args.iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next()
                    .map(String::as_str)
                    .ok_or_else(|| format!("`{opt}` without a value"))
            };
            match opt.as_str() {
                "-machine" | "-M" => {
                    let v = value()?;
                    let (machine, _) = Props::parse(v);
                    if !matches!(machine.as_str(), "q35" | "pc-q35-7.2") && !machine.is_empty() {
                        return Err(format!("only q35 is modelled, not `-machine {v}`"));
                    }
                }
                "-m" | "-smp" | "-cpu" | "-accel" | "-display" => {
                    value()?;
                }
                "-device" => {
                    let spec = value()?;
                    let (driver, props) = Props::parse(spec);
                    cl.devices.push((spec.to_string(), driver, props));
                }
                "-object" => {
                    let (_, props) = Props::parse(value()?);
                    if let Some(id) = props.get("id") {
                        cl.objects.insert(id.to_string(), props.clone());
                    }
                }
                "-vga" => match value()? {
                    "none" => cl.vga = false,
                    "std" => {}
                    v => return Err(format!("`-vga {v}` is not modelled (use std or none)")),
                },
                "-nodefaults" => {
                    cl.vga = false;
                    cl.default_nic = false;
                }
                "-netdev" => {
                    value()?;
                    cl.default_nic = false;
                }
                "-nic" | "-net" => match value()? {
                    "none" => cl.default_nic = false,
                    v => {
                        return Err(format!(
                            "`{opt} {v}` is not modelled: use `-nic none` plus `-device e1000e`"
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "QEMU option `{other}` is not modelled by tests-qemu's pci_model"
                    ))
                }
            }
        }
        Ok(cl)
    }
}

// ---------------------------------------------------------------------------------------------
// The devices QEMU 7.2 emulates, as the guest sees them.

/// The bus a device provides, and what that bus allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BusKind {
    /// `pcie.0`.
    Pcie0,
    /// The root bus of a `pxb-pcie`: bridges only, any slot; its number is fixed by `bus_nr`.
    PxbRoot { bus_nr: u8 },
    /// Below a root port or a switch downstream port: a PCIe link, only slot 0 is visible.
    PcieLink,
    /// The internal bus of a switch (below its upstream port): any slot.
    SwitchInternal,
    /// A conventional PCI bus. `shpc`: a standard hot-plug controller manages it. `pcie_to_pci`:
    /// the bridge is a PCIe-to-PCI bridge, which issues DMA as (this bus, 00.0); a conventional
    /// PCI bridge issues it under its own BDF.
    Conventional { shpc: bool, pcie_to_pci: bool },
}

impl BusKind {
    fn is_root(self) -> bool {
        matches!(self, Self::Pcie0 | Self::PxbRoot { .. })
    }
}

/// One emulated PCI function type.
#[derive(Debug, Clone)]
struct DeviceModel {
    vendor: u16,
    device: u16,
    class: u32,
    kind: FunctionKind,
    bars: Vec<Bar>,
    /// The bus the device provides (`bus=<its id>` for children).
    provides: Option<BusKind>,
    /// `bus-reserve=` of a `pcie-root-port`: bus numbers SeaBIOS keeps below it.
    bus_reserve: u8,
}

fn bar(index: u8, ty: BarType, size: u64) -> Bar {
    Bar { index, ty, size }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

impl DeviceModel {
    fn new(vendor: u16, device: u16, class: u32, kind: FunctionKind, bars: Vec<Bar>) -> Self {
        Self {
            vendor,
            device,
            class,
            kind,
            bars,
            provides: None,
            bus_reserve: 0,
        }
    }

    fn bridge(vendor: u16, device: u16, bars: Vec<Bar>, provides: BusKind) -> Self {
        Self {
            provides: Some(provides),
            ..Self::new(vendor, device, 0x06_04_00, FunctionKind::Bridge, bars)
        }
    }

    /// The model of `-device <driver>,<props>`; `Ok(None)` for devices that are not on PCI.
    fn for_device(
        driver: &str,
        props: &Props,
        objects: &HashMap<String, Props>,
    ) -> Result<Option<Self>, String> {
        use BarType::*;
        let refuse = |keys: &[&str]| match keys.iter().find(|k| props.get(k).is_some()) {
            Some(k) => Err(format!(
                "property `{k}` changes {driver}'s layout and is not modelled"
            )),
            None => Ok(()),
        };
        let model = match driver {
            // Not PCI functions.
            "intel-iommu" | "isa-debug-exit" => return Ok(None),
            // hw/misc/edu.c: one 1 MiB MMIO BAR.
            "edu" => Self::new(
                0x1234,
                0x11e8,
                0x00_ff_00,
                FunctionKind::Endpoint,
                vec![bar(0, Mem32, MIB)],
            ),
            // hw/misc/ivshmem.c: 256-byte register BAR0; BAR2 maps the memory backend (no
            // MSI-X BAR1 in the `-plain` variant).
            "ivshmem-plain" => {
                let memdev = props
                    .get("memdev")
                    .ok_or("ivshmem-plain needs memdev=<id of a memory-backend object>")?;
                let size = objects
                    .get(memdev)
                    .and_then(|o| o.get("size"))
                    .and_then(parse_size)
                    .ok_or_else(|| format!("no `-object ...,id={memdev},size=...` for memdev"))?;
                if !size.is_power_of_two() {
                    return Err(format!(
                        "memdev {memdev} size {size:#x} is not a power of two (QEMU aborts)"
                    ));
                }
                Self::new(
                    0x1af4,
                    0x1110,
                    0x05_00_00,
                    FunctionKind::Endpoint,
                    vec![bar(0, Mem32, 256), bar(2, Mem64Prefetch, size)],
                )
            }
            // hw/nvme/ctrl.c: BAR0 holds registers, doorbells and the MSI-X table; with the
            // default 64 I/O queue pairs and 65 vectors it rounds up to 16 KiB. cmb_size_mb adds
            // the controller memory buffer as BAR2 (pci_register_bar asserts a power of two).
            "nvme" => {
                refuse(&["max_ioqpairs", "num_queues", "msix_qsize", "pmrdev"])?;
                let mut bars = vec![bar(0, Mem64, 16 * KIB)];
                if let Some(mb) = props.get("cmb_size_mb") {
                    let mb = parse_int(mb).ok_or("cmb_size_mb is not a number")?;
                    if mb != 0 {
                        if !mb.is_power_of_two() {
                            return Err(format!(
                                "cmb_size_mb={mb} is not a power of two (QEMU 7.2 aborts)"
                            ));
                        }
                        bars.push(bar(2, Mem64Prefetch, mb * MIB));
                    }
                }
                Self::new(0x1b36, 0x0010, 0x01_08_02, FunctionKind::Endpoint, bars)
            }
            // hw/net/e1000e.c: MMIO, flash, I/O and MSI-X BARs.
            "e1000e" => Self::e1000e(),
            // hw/pci-bridge/gen_pcie_root_port.c: an exclusive 4 KiB MSI-X BAR.
            "pcie-root-port" => {
                let mut m = Self::bridge(0x1b36, 0x000c, vec![bar(0, Mem32, 4 * KIB)], {
                    BusKind::PcieLink
                });
                if let Some(r) = props.get("bus-reserve") {
                    let r = parse_int(r).ok_or("bus-reserve is not a number")?;
                    m.bus_reserve = u8::try_from(r).map_err(|_| "bus-reserve above 255")?;
                }
                m
            }
            // hw/pci-bridge/xio3130_{upstream,downstream}.c: no BARs.
            "x3130-upstream" => Self::bridge(0x104c, 0x8232, vec![], BusKind::SwitchInternal),
            "xio3130-downstream" => Self::bridge(0x104c, 0x8233, vec![], BusKind::PcieLink),
            // hw/pci-bridge/pcie_pci_bridge.c: the SHPC's 256-byte 64-bit BAR, always present.
            "pcie-pci-bridge" => Self::bridge(
                0x1b36,
                0x000e,
                vec![bar(0, Mem64, 256)],
                BusKind::Conventional {
                    shpc: true,
                    pcie_to_pci: true,
                },
            ),
            // hw/pci-bridge/pci_bridge_dev.c: the SHPC BAR unless shpc=off.
            "pci-bridge" => {
                refuse(&["bus-reserve"])?;
                let shpc = props.flag("shpc", true)?;
                let bars = if shpc {
                    vec![bar(0, Mem64, 256)]
                } else {
                    vec![]
                };
                Self::bridge(
                    0x1b36,
                    0x0001,
                    bars,
                    BusKind::Conventional {
                        shpc,
                        pcie_to_pci: false,
                    },
                )
            }
            // hw/pci-bridge/pci_expander_bridge.c: a type-0 host bridge on bus 0, no BARs; its
            // root bus gets number bus_nr.
            "pxb-pcie" => {
                let nr = props
                    .get("bus_nr")
                    .and_then(parse_int)
                    .ok_or("pxb-pcie needs bus_nr=<1..255>")?;
                let bus_nr = u8::try_from(nr)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or("pxb-pcie bus_nr must be 1..255")?;
                Self {
                    provides: Some(BusKind::PxbRoot { bus_nr }),
                    ..Self::new(0x1b36, 0x000b, 0x06_00_00, FunctionKind::Host, vec![])
                }
            }
            other => {
                return Err(format!(
                "driver `{other}` is not modelled: add its IDs and BARs to tests-qemu's pci_model"
            ))
            }
        };
        Ok(Some(model))
    }

    fn e1000e() -> Self {
        use BarType::*;
        Self::new(
            0x8086,
            0x10d3,
            0x02_00_00,
            FunctionKind::Endpoint,
            vec![
                bar(0, Mem32, 128 * KIB),
                bar(1, Mem32, 128 * KIB),
                bar(2, Io, 32),
                bar(3, Mem32, 16 * KIB),
            ],
        )
    }
}

/// The PCI Express Device/Port Type of a modelled function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Express {
    RootPort,
    UpstreamPort,
    DownstreamPort,
    PcieToPciBridge,
    Endpoint,
    IntegratedEndpoint,
}

// ---------------------------------------------------------------------------------------------
// The machine.

#[derive(Debug)]
struct Bus {
    /// The name `bus=` refers to.
    name: Option<String>,
    kind: BusKind,
    /// The device that provides the bus (a bridge, or the pxb-pcie of a root bus).
    owner: Option<usize>,
    /// Inside a pxb-pcie hierarchy.
    under_pxb: bool,
    /// devfn -> node.
    slots: BTreeMap<u8, usize>,
    /// Assigned by [`Machine::number_buses`].
    number: Option<u8>,
}

#[derive(Debug)]
struct Node {
    origin: String,
    model: DeviceModel,
    bus: usize,
    devfn: u8,
    multifunction: bool,
    /// The bus this device provides.
    provides: Option<usize>,
}

struct Machine {
    buses: Vec<Bus>,
    nodes: Vec<Node>,
}

impl Machine {
    fn build(cl: &CommandLine) -> Result<Self, String> {
        let mut m = Self {
            buses: vec![Bus {
                name: Some("pcie.0".into()),
                kind: BusKind::Pcie0,
                owner: None,
                under_pxb: false,
                slots: BTreeMap::new(),
                number: Some(0),
            }],
            nodes: Vec::new(),
        };
        // pc_q35_init: the host bridge and the ICH9 functions at fixed addresses, then the
        // default VGA and NIC in the first free slots.
        let fixed = [
            (
                0x00,
                false,
                0x8086,
                0x29c0,
                0x06_00_00,
                FunctionKind::Host,
                vec![],
            ),
            (
                0xf8,
                true,
                0x8086,
                0x2918,
                0x06_01_00,
                FunctionKind::Endpoint,
                vec![],
            ),
            (
                0xfa,
                false,
                0x8086,
                0x2922,
                0x01_06_01,
                FunctionKind::Endpoint,
                vec![bar(4, BarType::Io, 32), bar(5, BarType::Mem32, 4 * KIB)],
            ),
            (
                0xfb,
                false,
                0x8086,
                0x2930,
                0x0c_05_00,
                FunctionKind::Endpoint,
                vec![bar(4, BarType::Io, 64)],
            ),
        ];
        for (devfn, mf, vendor, device, class, kind, bars) in fixed {
            let model = DeviceModel::new(vendor, device, class, kind, bars);
            let origin = format!("built-in {vendor:04x}:{device:04x}");
            m.attach(origin, None, model, 0, Some(devfn), mf)?;
        }
        if cl.vga {
            let vga = DeviceModel::new(
                0x1234,
                0x1111,
                0x03_00_00,
                FunctionKind::Endpoint,
                vec![
                    bar(0, BarType::Mem32Prefetch, 16 * MIB),
                    bar(2, BarType::Mem32, 4 * KIB),
                ],
            );
            m.attach("built-in VGA".into(), None, vga, 0, None, false)?;
        }
        if cl.default_nic {
            m.attach(
                "built-in NIC".into(),
                None,
                DeviceModel::e1000e(),
                0,
                None,
                false,
            )?;
        }

        for (spec, driver, props) in &cl.devices {
            let fail = |e: String| format!("`-device {spec}`: {e}");
            let Some(model) = DeviceModel::for_device(driver, props, &cl.objects).map_err(fail)?
            else {
                continue;
            };
            let bus = match props.get("bus") {
                Some(name) => m
                    .buses
                    .iter()
                    .position(|b| b.name.as_deref() == Some(name))
                    .ok_or_else(|| fail(format!("no bus named `{name}` defined before it")))?,
                // qbus_find_recursive visits the newest sysbus device first: the last pxb-pcie's
                // root bus wins over pcie.0.
                None => m
                    .buses
                    .iter()
                    .rposition(|b| matches!(b.kind, BusKind::PxbRoot { .. }))
                    .unwrap_or(0),
            };
            let devfn = match props.get("addr") {
                Some(a) => Some(
                    parse_addr(a)
                        .ok_or_else(|| fail(format!("addr={a} is not slot[.function]")))?,
                ),
                None => None,
            };
            let mf = props.flag("multifunction", false).map_err(fail)?;
            m.attach(
                spec.clone(),
                props.get("id").map(str::to_string),
                model,
                bus,
                devfn,
                mf,
            )
            .map_err(fail)?;
        }
        m.check_functions()?;
        Ok(m)
    }

    /// Places one device as QEMU's `do_pci_register_device` does, with the bus rules the guest
    /// needs to see it.
    fn attach(
        &mut self,
        origin: String,
        id: Option<String>,
        model: DeviceModel,
        bus: usize,
        devfn: Option<u8>,
        multifunction: bool,
    ) -> Result<(), String> {
        let kind = self.buses[bus].kind;
        let bus_name = self.buses[bus].name.clone().unwrap_or_default();
        let devfn = match devfn {
            Some(d) => d,
            None => (0..32u8)
                .map(|slot| slot << 3)
                .find(|d| !self.buses[bus].slots.contains_key(d))
                .ok_or_else(|| format!("bus {bus_name} is full"))?,
        };
        if let Some(&other) = self.buses[bus].slots.get(&devfn) {
            return Err(format!(
                "{}.{} on bus {bus_name} is already used by {}",
                devfn >> 3,
                devfn & 7,
                self.nodes[other].origin
            ));
        }
        let slot = devfn >> 3;
        match kind {
            BusKind::PcieLink if slot != 0 => {
                return Err(format!(
                    "slot {slot} below PCIe port {bus_name} is invisible to the guest (only \
                     slot 0 is): drop addr= or use a switch"
                ))
            }
            BusKind::PxbRoot { .. } if model.kind != FunctionKind::Bridge => {
                return Err(format!(
                    "QEMU only plugs bridges into pxb-pcie bus {bus_name}: put a pcie-root-port \
                     there and the device below it (and give bus= explicitly)"
                ))
            }
            BusKind::Conventional { shpc: true, .. } if self.buses[bus].under_pxb && slot == 0 => {
                return Err(format!(
                    "QEMU refuses slot 0 of the hot-plug controller of {bus_name} inside a \
                     pxb-pcie hierarchy: give addr=1 or above"
                ))
            }
            _ => {}
        }
        if matches!(model.provides, Some(BusKind::PxbRoot { .. })) && kind != BusKind::Pcie0 {
            return Err("pxb-pcie must sit on pcie.0: add bus=pcie.0".into());
        }
        let node = self.nodes.len();
        let provides = model.provides.map(|kind| {
            let number = match kind {
                BusKind::PxbRoot { bus_nr } => Some(bus_nr),
                _ => None,
            };
            self.buses.push(Bus {
                name: id,
                kind,
                owner: Some(node),
                under_pxb: self.buses[bus].under_pxb || matches!(kind, BusKind::PxbRoot { .. }),
                slots: BTreeMap::new(),
                number,
            });
            self.buses.len() - 1
        });
        self.buses[bus].slots.insert(devfn, node);
        self.nodes.push(Node {
            origin,
            model,
            bus,
            devfn,
            multifunction,
            provides,
        });
        Ok(())
    }

    /// Functions other than 0 need a `multifunction=on` function 0 in their slot (QEMU refuses
    /// the opposite order, and firmware and guests never look past a missing function 0).
    fn check_functions(&self) -> Result<(), String> {
        for bus in &self.buses {
            for (&devfn, &n) in &bus.slots {
                if devfn & 7 == 0 {
                    continue;
                }
                match bus.slots.get(&(devfn & !7)).map(|&f0| &self.nodes[f0]) {
                    Some(f0) if f0.multifunction => {}
                    Some(f0) => {
                        return Err(format!(
                            "`{}` needs multifunction=on for `{}` in the same slot",
                            f0.origin, self.nodes[n].origin
                        ))
                    }
                    None => {
                        return Err(format!(
                            "`{}` has no function 0 in its slot: the guest cannot see it",
                            self.nodes[n].origin
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// SeaBIOS `pci_bios_init_bus`: bus 0 depth-first, then each extra root bus.
    fn number_buses(&mut self) -> Result<(), String> {
        let mut last = 0u32;
        self.number_below(0, &mut last)?;
        let mut roots: Vec<(u8, usize)> = self
            .buses
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match b.kind {
                BusKind::PxbRoot { bus_nr } => Some((bus_nr, i)),
                _ => None,
            })
            .collect();
        roots.sort_unstable();
        for (bus_nr, bus) in roots {
            if u32::from(bus_nr) <= last {
                return Err(format!(
                    "pxb-pcie bus_nr={bus_nr} is not above bus {last}, the highest number \
                     SeaBIOS already gave out: raise bus_nr"
                ));
            }
            last = u32::from(bus_nr);
            self.number_below(bus, &mut last)?;
        }
        Ok(())
    }

    /// `pci_bios_init_bus_rec`: every type-1 bridge on `bus`, in devfn order, takes the next
    /// number as its secondary bus, then numbers its own subtree.
    fn number_below(&mut self, bus: usize, last: &mut u32) -> Result<(), String> {
        let bridges: Vec<usize> = self.buses[bus]
            .slots
            .values()
            .copied()
            .filter(|&n| self.nodes[n].model.kind == FunctionKind::Bridge)
            .collect();
        for n in bridges {
            let Some(secondary) = self.nodes[n].provides else {
                continue;
            };
            *last += 1;
            let number = u8::try_from(*last).map_err(|_| "more than 255 buses".to_string())?;
            self.buses[secondary].number = Some(number);
            self.number_below(secondary, last)?;
            // The root port's resource-reserve capability keeps buses free for hot-plug.
            let reserve = u32::from(self.nodes[n].model.bus_reserve);
            *last = (*last).max(u32::from(number) + reserve);
        }
        Ok(())
    }

    fn bdf(&self, node: usize) -> Bdf {
        let n = &self.nodes[node];
        Bdf::from_devfn(0, self.buses[n.bus].number.unwrap_or(0), n.devfn)
    }

    /// The requester ID the root complex sees for DMA from `node`.
    fn requester_id(&self, node: usize) -> Bdf {
        let mut rid = self.bdf(node);
        let mut bus = self.nodes[node].bus;
        while !self.buses[bus].kind.is_root() {
            let bridge = self.buses[bus].owner.expect("a non-root bus has a bridge");
            if let BusKind::Conventional { pcie_to_pci, .. } = self.buses[bus].kind {
                rid = if pcie_to_pci {
                    device0(self.buses[bus].number.unwrap_or(0))
                } else {
                    self.bdf(bridge)
                };
            }
            bus = self.nodes[bridge].bus;
        }
        rid
    }

    /// The bridge that owns `bus` (`None` for a root bus).
    fn bridge_above(&self, bus: usize) -> Option<usize> {
        (!self.buses[bus].kind.is_root())
            .then(|| self.buses[bus].owner)
            .flatten()
    }

    /// The PCI Express type QEMU 7.2 gives the node, `None` for a conventional PCI function.
    fn express_type(&self, node: usize) -> Option<Express> {
        let n = &self.nodes[node];
        let on_root = self.buses[n.bus].kind.is_root();
        Some(match (n.model.vendor, n.model.device) {
            (0x1b36, 0x000c) => Express::RootPort,
            (0x104c, 0x8232) => Express::UpstreamPort,
            (0x104c, 0x8233) => Express::DownstreamPort,
            (0x1b36, 0x000e) => Express::PcieToPciBridge,
            // nvme and e1000e: PCIe endpoints, turned into RC integrated endpoints on a root bus
            // (QEMU's pcie_endpoint_cap_common_init).
            (0x1b36, 0x0010) | (0x8086, 0x10d3) if on_root => Express::IntegratedEndpoint,
            (0x1b36, 0x0010) | (0x8086, 0x10d3) => Express::Endpoint,
            _ => return None,
        })
    }

    /// Linux's multifunction flag: any function above 0, or function 0 with multifunction=on.
    fn is_multifunction(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        n.devfn & 7 != 0 || n.multifunction
    }

    /// Whether the node "has ACS" for SV RR CR UF as Linux's `pci_acs_enabled` decides, given
    /// that the kernel enables those controls on every root port when `isolated` (IOMMU present).
    fn has_acs(&self, node: usize, isolated: bool) -> bool {
        let intel = self.nodes[node].model.vendor == 0x8086;
        match self.express_type(node) {
            // Conventional PCI: a shared bus.
            None => false,
            // The only ACS capability QEMU 7.2 has; controls 0 unless the kernel enabled them.
            Some(Express::RootPort) => isolated,
            // No ACS capability on QEMU's switch downstream ports; never for PCIe-to-PCI.
            Some(Express::DownstreamPort | Express::PcieToPciBridge) => false,
            // pci_quirk_rciep_acs: Intel RC integrated endpoints are isolated.
            Some(Express::IntegratedEndpoint) if intel => true,
            // No ACS capability: fine only when single-function.
            Some(Express::UpstreamPort | Express::Endpoint | Express::IntegratedEndpoint) => {
                !self.is_multifunction(node)
            }
        }
    }

    /// The isolation group of every node (see the module documentation): a representative node
    /// index per node.
    fn groups(&self, isolated: bool) -> Vec<usize> {
        let count = self.nodes.len();
        let mut rep: Vec<usize> = (0..count).collect();
        fn find(rep: &mut [usize], mut i: usize) -> usize {
            while rep[i] != i {
                rep[i] = rep[rep[i]];
                i = rep[i];
            }
            i
        }
        let join = |rep: &mut Vec<usize>, a: usize, b: usize| {
            let (ra, rb) = (find(rep, a), find(rep, b));
            rep[ra.max(rb)] = ra.min(rb);
        };
        // Root port and everything above it have ACS.
        let path_isolated = |mut node: usize| loop {
            if !self.has_acs(node, isolated) {
                break false;
            }
            match self.bridge_above(self.nodes[node].bus) {
                Some(up) => node = up,
                None => break true,
            }
        };
        for node in 0..count {
            // (1) bridges that take ownership of the DMA: the owners of conventional buses.
            let mut last = node;
            let mut bus = self.nodes[node].bus;
            while let Some(bridge) = self.bridge_above(bus) {
                if matches!(self.buses[bus].kind, BusKind::Conventional { .. }) {
                    join(&mut rep, node, bridge);
                    last = bridge;
                }
                bus = self.nodes[bridge].bus;
            }
            // (2) the bridge above the last alias, unless its path is isolated.
            if let Some(up) = self.bridge_above(self.nodes[last].bus) {
                if !path_isolated(up) {
                    join(&mut rep, last, up);
                }
            }
            // (3) non-isolated functions of one slot.
            if self.is_multifunction(node) && !self.has_acs(node, isolated) {
                let n = &self.nodes[node];
                for (other, o) in self.nodes.iter().enumerate() {
                    if other != node
                        && o.bus == n.bus
                        && o.devfn >> 3 == n.devfn >> 3
                        && !self.has_acs(other, isolated)
                    {
                        join(&mut rep, node, other);
                    }
                }
            }
        }
        // (1) one requester ID, one group.
        let mut by_rid: HashMap<Bdf, usize> = HashMap::new();
        for node in 0..count {
            let rid = self.requester_id(node);
            match by_rid.get(&rid) {
                Some(&other) => join(&mut rep, node, other),
                None => {
                    by_rid.insert(rid, node);
                }
            }
        }
        (0..count).map(|n| find(&mut rep, n)).collect()
    }

    /// Functions in enumeration order: bus 0 depth-first, then each pxb-pcie root bus. Groups
    /// assume the kernel's policy: ACS isolation exactly when `isolated` (an IOMMU is present).
    fn functions(&self, isolated: bool) -> Vec<ExpectedFunction> {
        let groups = self.groups(isolated);
        let mut order = Vec::new();
        self.walk(0, &mut order);
        let mut roots: Vec<(u8, usize)> = (0..self.buses.len())
            .filter_map(|i| match self.buses[i].kind {
                BusKind::PxbRoot { bus_nr } => Some((bus_nr, i)),
                _ => None,
            })
            .collect();
        roots.sort_unstable();
        for (_, bus) in roots {
            self.walk(bus, &mut order);
        }
        order
            .into_iter()
            .map(|node| {
                let n = &self.nodes[node];
                let bus = &self.buses[n.bus];
                ExpectedFunction {
                    bdf: self.bdf(node),
                    vendor: n.model.vendor,
                    device: n.model.device,
                    class: n.model.class,
                    kind: n.model.kind,
                    parent: (!bus.kind.is_root()).then(|| self.bdf(bus.owner.unwrap())),
                    secondary: n
                        .provides
                        .filter(|_| n.model.kind == FunctionKind::Bridge)
                        .and_then(|b| self.buses[b].number),
                    bars: n.model.bars.clone(),
                    rids: vec![self.requester_id(node)],
                    group: groups[node],
                    origin: n.origin.clone(),
                }
            })
            .collect()
    }

    fn walk(&self, bus: usize, order: &mut Vec<usize>) {
        for &n in self.buses[bus].slots.values() {
            order.push(n);
            if let Some(b) = self.nodes[n].provides {
                if !self.buses[b].kind.is_root() {
                    self.walk(b, order);
                }
            }
        }
    }
}

/// The functions the kernel must enumerate on `topology`, in enumeration order (bus 0
/// depth-first, then each `pxb-pcie` root bus). `Err` says why the topology cannot be predicted.
pub fn expected_functions(topology: &Topology) -> Result<Vec<ExpectedFunction>, String> {
    let cl = CommandLine::parse(&topology.qemu_args())?;
    let mut machine = Machine::build(&cl)?;
    machine.number_buses()?;
    Ok(machine.functions(topology.iommu.is_some()))
}

// ---------------------------------------------------------------------------------------------
// The kernel's listing.

fn parse_hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// Exactly `digits` hexadecimal digits, as the listing's fixed-width fields are printed.
fn fixed_hex(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

fn parse_line(line: &str) -> Result<ListedFunction, String> {
    let mut words = line.split_whitespace();
    words.next(); // PCIDEV
    let bdf_text = words.next().ok_or("no address")?;
    let bdf = Bdf::parse(bdf_text).ok_or_else(|| format!("bad address `{bdf_text}`"))?;
    let mut fields = HashMap::new();
    for word in words {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        if ![
            "id",
            "class",
            "kind",
            "parent",
            "secondary",
            "bars",
            "rids",
            "group",
        ]
        .contains(&k)
        {
            return Err(format!("unknown field `{k}`"));
        }
        if fields.insert(k, v).is_some() {
            return Err(format!("field `{k}` twice"));
        }
    }
    let field = |k: &str| fields.get(k).copied().ok_or(format!("no `{k}=`"));
    let bad = |k: &str, v: &str| format!("bad {k}=`{v}`");

    let id = field("id")?;
    let (vendor, device) = id
        .split_once(':')
        .and_then(|(v, d)| Some((fixed_hex(v, 4)? as u16, fixed_hex(d, 4)? as u16)))
        .ok_or_else(|| bad("id", id))?;
    let class_text = field("class")?;
    let class = fixed_hex(class_text, 6).ok_or_else(|| bad("class", class_text))?;
    let kind_text = field("kind")?;
    let kind = FunctionKind::parse(kind_text).ok_or_else(|| bad("kind", kind_text))?;
    let parent = match field("parent")? {
        "root" => None,
        p => Some(Bdf::parse(p).ok_or_else(|| bad("parent", p))?),
    };
    let secondary = match field("secondary")? {
        "-" => None,
        s => Some(fixed_hex(s, 2).ok_or_else(|| bad("secondary", s))? as u8),
    };
    let bars = match field("bars")? {
        "-" => Vec::new(),
        list => list
            .split(',')
            .map(|b| {
                let parts: Vec<&str> = b.split(':').collect();
                let [index, ty, address, size] = parts.as_slice() else {
                    return Err(bad("bars", b));
                };
                Ok(ListedBar {
                    index: index
                        .parse()
                        .ok()
                        .filter(|i| *i < 6)
                        .ok_or(bad("bars", b))?,
                    ty: BarType::parse(ty).ok_or(bad("bars", b))?,
                    address: parse_hex(address).ok_or(bad("bars", b))?,
                    size: parse_hex(size).ok_or(bad("bars", b))?,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let rids_text = field("rids")?;
    let rids = rids_text
        .split(',')
        .map(|r| Bdf::parse(r).ok_or_else(|| bad("rids", rids_text)))
        .collect::<Result<_, _>>()?;
    let group = field("group")?;
    if group.is_empty() {
        return Err(bad("group", group));
    }
    Ok(ListedFunction {
        bdf,
        vendor,
        device,
        class,
        kind,
        parent,
        secondary,
        bars,
        rids,
        group: group.to_string(),
    })
}

/// Parses every `PCIDEV` line of a serial log (other lines are ignored; a trailing `\r` is
/// tolerated). `Err` quotes the first malformed line.
pub fn parse_pci_listing(log: &str) -> Result<Vec<ListedFunction>, String> {
    log.lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| l.starts_with("PCIDEV ") || *l == "PCIDEV")
        .map(|l| parse_line(l).map_err(|e| format!("malformed `{l}`: {e}")))
        .collect()
}

fn show_parent(p: Option<Bdf>) -> String {
    p.map_or("root".into(), |b| b.full())
}

fn show_secondary(s: Option<u8>) -> String {
    s.map_or("-".into(), |b| format!("{b:02x}"))
}

fn show_list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(show).collect::<Vec<_>>().join(",")
    }
}

/// Checks the kernel's `PCIDEV` listing in `log` against the model of `topology`: the same set
/// of functions, and for each the same ID, class, kind, parent, secondary bus, BAR indices,
/// types and sizes, and requester IDs; every BAR address non-zero and aligned to its size, no
/// two BARs of the same space overlapping. `Ok` summarises; `Err` lists the first problems, each
/// naming the function and what was expected against what was listed.
pub fn check_pci_listing(topology: &Topology, log: &str) -> Result<String, String> {
    let expected = expected_functions(topology)
        .map_err(|e| format!("the PCI model cannot predict this topology: {e}"))?;
    let listed = parse_pci_listing(log)?;
    if listed.is_empty() {
        return Err("no PCIDEV lines in the log".into());
    }
    let mut problems = Vec::new();
    let mut by_bdf: BTreeMap<Bdf, &ListedFunction> = BTreeMap::new();
    for f in &listed {
        if by_bdf.insert(f.bdf, f).is_some() {
            problems.push(format!("{} listed twice", f.bdf.full()));
        }
    }
    for e in &expected {
        let Some(got) = by_bdf.get(&e.bdf) else {
            problems.push(format!(
                "{} missing: expected {:04x}:{:04x} {} ({})",
                e.bdf.full(),
                e.vendor,
                e.device,
                e.kind.name(),
                e.origin
            ));
            continue;
        };
        let mut field = |name: &str, want: String, have: String| {
            if want != have {
                problems.push(format!(
                    "{} ({}) {name}: expected {want}, got {have}",
                    e.bdf.full(),
                    e.origin
                ));
            }
        };
        field(
            "id",
            format!("{:04x}:{:04x}", e.vendor, e.device),
            format!("{:04x}:{:04x}", got.vendor, got.device),
        );
        field(
            "class",
            format!("{:06x}", e.class),
            format!("{:06x}", got.class),
        );
        field("kind", e.kind.name().into(), got.kind.name().into());
        field("parent", show_parent(e.parent), show_parent(got.parent));
        field(
            "secondary",
            show_secondary(e.secondary),
            show_secondary(got.secondary),
        );
        field(
            "bars (index:type:size)",
            show_list(&e.bars, Bar::to_string),
            show_list(&got.bars, |b| bar(b.index, b.ty, b.size).to_string()),
        );
        field(
            "rids",
            show_list(&e.rids, Bdf::short),
            show_list(&got.rids, Bdf::short),
        );
    }
    for f in &listed {
        if !expected.iter().any(|e| e.bdf == f.bdf) {
            problems.push(format!(
                "{} unexpected: {:04x}:{:04x} {} is not in the topology",
                f.bdf.full(),
                f.vendor,
                f.device,
                f.kind.name()
            ));
        }
    }
    problems.extend(check_bar_addresses(&listed));
    problems.extend(check_groups(&expected, &listed));
    if problems.is_empty() {
        let bars: usize = expected.iter().map(|e| e.bars.len()).sum();
        let groups: std::collections::BTreeSet<usize> = expected.iter().map(|e| e.group).collect();
        return Ok(format!(
            "{} PCI functions match the topology ({bars} BARs placed without overlap, {} \
             isolation groups as the model partitions them)",
            expected.len(),
            groups.len()
        ));
    }
    const SHOWN: usize = 12;
    let mut report = format!(
        "the PCI listing disagrees with the topology ({} problems):",
        problems.len()
    );
    for p in problems.iter().take(SHOWN) {
        report.push_str("\n  ");
        report.push_str(p);
    }
    if problems.len() > SHOWN {
        report.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    Err(report)
}

/// The expected partition as sorted member lists, sorted.
pub fn expected_partition(expected: &[ExpectedFunction]) -> Vec<Vec<Bdf>> {
    let mut by_group: BTreeMap<usize, Vec<Bdf>> = BTreeMap::new();
    for e in expected {
        by_group.entry(e.group).or_default().push(e.bdf);
    }
    sorted_partition(by_group.into_values())
}

fn sorted_partition(classes: impl Iterator<Item = Vec<Bdf>>) -> Vec<Vec<Bdf>> {
    let mut p: Vec<Vec<Bdf>> = classes
        .map(|mut c| {
            c.sort();
            c
        })
        .collect();
    p.sort();
    p
}

/// The listed groups form the model's partition: functions share a label exactly when the model
/// puts them in one group. Labels are compared as classes, never as strings.
fn check_groups(expected: &[ExpectedFunction], listed: &[ListedFunction]) -> Vec<String> {
    let mut problems = Vec::new();
    let label: HashMap<Bdf, &str> = listed.iter().map(|f| (f.bdf, f.group.as_str())).collect();
    for f in listed.iter().filter(|f| f.group == "-") {
        problems.push(format!("{} has no group", f.bdf.full()));
    }
    for (i, a) in expected.iter().enumerate() {
        for b in &expected[i + 1..] {
            let (Some(la), Some(lb)) = (label.get(&a.bdf), label.get(&b.bdf)) else {
                continue;
            };
            let listed_same = la == lb && *la != "-";
            let model_same = a.group == b.group;
            if listed_same != model_same {
                problems.push(format!(
                    "{} ({}) and {} ({}): {} in the model, {} in the listing (group={la} / \
                     group={lb})",
                    a.bdf.full(),
                    a.origin,
                    b.bdf.full(),
                    b.origin,
                    if model_same {
                        "one group"
                    } else {
                        "separate groups"
                    },
                    if listed_same {
                        "one group"
                    } else {
                        "separate groups"
                    },
                ));
            }
        }
    }
    problems
}

/// Address sanity of the listed BARs: non-zero, size a power of two, aligned, and no overlap
/// with another BAR in the same (memory or I/O) space.
fn check_bar_addresses(listed: &[ListedFunction]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ranges: Vec<(bool, u64, u64, String)> = Vec::new();
    for f in listed {
        for b in &f.bars {
            let name = format!("{} BAR{} ({})", f.bdf.full(), b.index, b.ty.name());
            if b.address == 0 {
                problems.push(format!("{name} has address 0 (unassigned)"));
            } else if !b.size.is_power_of_two() {
                problems.push(format!("{name} size {:#x} is not a power of two", b.size));
            } else if b.address % b.size != 0 {
                problems.push(format!(
                    "{name} at {:#x} is not aligned to its size {:#x}",
                    b.address, b.size
                ));
            }
            let end = b.address.saturating_add(b.size);
            ranges.push((b.ty.is_memory(), b.address, end, name));
        }
    }
    // Sweep each space in address order, remembering the range that reaches furthest.
    ranges.sort_by_key(|r| (r.0, r.1));
    let mut reach: Option<&(bool, u64, u64, String)> = None;
    for r in &ranges {
        match reach {
            Some(a) if a.0 == r.0 && r.1 < a.2 => {
                problems.push(format!(
                    "{} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})",
                    a.3, a.1, a.2, r.3, r.1, r.2
                ));
                if r.2 > a.2 {
                    reach = Some(r);
                }
            }
            _ => reach = Some(r),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    //! The model is validated against real QEMU 7.2 data: configuration-space dumps of every
    //! function (`drivers/pci/tests/fixtures/*.cfg`) and HMP `info pci` captures
    //! (`tests-qemu/tests/fixtures/*-info-pci.txt`, which show BAR sizes), each headed by the
    //! exact command line it was taken with.

    use super::*;

    const COMPLEX_CFG: &str = include_str!("../../drivers/pci/tests/fixtures/complex.cfg");
    const DEFAULT_CFG: &str = include_str!("../../drivers/pci/tests/fixtures/default.cfg");
    const COMPLEX_INFO: &str = include_str!("../tests/fixtures/complex-info-pci.txt");
    const COMPLEX_LINUX: &str =
        include_str!("../../drivers/pci/tests/fixtures/linux-groups-complex.txt");
    const TWO_PXB_INFO: &str = include_str!("../tests/fixtures/two-pxb-info-pci.txt");

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
                "00:00.0", "00:01.0", "00:02.0", "00:03.0", "00:04.0", "01:00.0", "00:1f.0",
                "00:1f.2", "00:1f.3"
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
}
