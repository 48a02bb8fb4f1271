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

mod check;
mod expected;
mod groups;
mod listing;
mod machine;
mod numbering;
#[cfg(test)]
mod tests;

pub use check::{check_pci_listing, expected_partition};
pub use expected::expected_functions;
pub use listing::parse_pci_listing;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use pci::testing::{QemuBar, QemuFunctionKind};
use pci::BarKind;

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

impl From<QemuFunctionKind> for FunctionKind {
    fn from(kind: QemuFunctionKind) -> Self {
        match kind {
            QemuFunctionKind::Endpoint => Self::Endpoint,
            QemuFunctionKind::Bridge => Self::Bridge,
            QemuFunctionKind::Host => Self::Host,
        }
    }
}

impl From<BarKind> for BarType {
    fn from(kind: BarKind) -> Self {
        match kind {
            BarKind::Memory32 {
                prefetchable: false,
            } => Self::Mem32,
            BarKind::Memory32 { prefetchable: true } => Self::Mem32Prefetch,
            BarKind::Memory64 {
                prefetchable: false,
            } => Self::Mem64,
            BarKind::Memory64 { prefetchable: true } => Self::Mem64Prefetch,
            BarKind::Io => Self::Io,
        }
    }
}

impl From<&QemuBar> for Bar {
    fn from(bar: &QemuBar) -> Self {
        Self {
            index: bar.index,
            ty: bar.kind.into(),
            size: bar.size,
        }
    }
}
