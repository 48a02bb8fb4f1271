//! Enumeration and topology queries: which functions exist, how they hang off bridges, and what
//! that means for DMA (upstream paths, switches, ACS, requester-ID aliases).
//!
//! Enumeration is a depth-first walk of each root bus (PCI Local Bus 3.0 §6.1 and PCI-to-PCI
//! Bridge 1.2 §3.2.5.3 for bus numbers, PCIe Base 4.0 §7.3 for ECAM-based discovery) that
//! *trusts nothing*: bus numbers are the ones firmware assigned, checked for consistency, and a
//! bridge whose window is inconsistent is reported in [`Topology::warnings`] and not followed.
//! Every bus is scanned at most once, so no register contents can make the walk loop.
//!
//! Extra host bridges (QEMU's `pxb-pcie`, real multi-root-complex chips) have no bus-number
//! register: their root buses are found by probing the MCFG buses that no bridge claims.
//!
//! Not handled: ARI (functions 8-255 of a device below an ARI-forwarding port are not found),
//! CardBus bridges (identified, not followed), SR-IOV virtual functions, and re-assigning bus
//! numbers or BARs (firmware's assignment is used as found).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::acs_state::{self as acs, AcsState};
use crate::bar::{probe_bars, Bar, BarError, ExpansionRom, HostBridgeWindow};
use crate::capability::{Capabilities, CapabilityError};
use crate::regs::{
    bridge, header, BridgeControl, CapabilityId, Command, DevicePortType, ExtendedCapabilityId,
    HeaderLayout, HeaderType,
};
use crate::{Bdf, ConfigSpace, McfgRegion};

/// The three class-code bytes (PCI Code and ID Assignment 1.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassCode {
    /// Base class (e.g. 0x06 bridge).
    pub base: u8,
    /// Sub-class (e.g. 0x04 PCI-to-PCI bridge).
    pub sub: u8,
    /// Programming interface.
    pub prog_if: u8,
}

impl ClassCode {
    /// Base class 0x06, sub-class 0x00: host bridge.
    pub const fn is_host_bridge(self) -> bool {
        self.base == 0x06 && self.sub == 0x00
    }
}

/// What the PCI Express capability says about a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcieInfo {
    /// Offset of the PCI Express capability.
    pub offset: u8,
    /// Capability version.
    pub version: u8,
    /// Device/Port Type.
    pub port_type: DevicePortType,
    /// Slot Implemented (ports only).
    pub slot_implemented: bool,
}

/// An address window a bridge forwards downstream; `limit` is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Last address.
    pub limit: u64,
}

impl Window {
    fn new(base: u64, limit: u64) -> Option<Self> {
        (base <= limit).then_some(Self { base, limit })
    }
}

/// Type-1 header contents of a bridge (PCI-to-PCI Bridge 1.2 §3.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BridgeInfo {
    /// Primary Bus Number.
    pub primary: u8,
    /// Secondary Bus Number.
    pub secondary: u8,
    /// Subordinate Bus Number.
    pub subordinate: u8,
    /// I/O window, if enabled (base <= limit).
    pub io_window: Option<Window>,
    /// Non-prefetchable memory window, if enabled.
    pub memory_window: Option<Window>,
    /// Prefetchable memory window, if enabled.
    pub prefetchable_window: Option<Window>,
    /// Whether the prefetchable window registers are the 64-bit kind (upper 32 bits in the
    /// Prefetchable Base/Limit Upper 32 Bits registers).
    pub prefetchable_64bit: bool,
    /// Bridge Control register.
    pub control: BridgeControl,
}

impl BridgeInfo {
    fn read(cfg: &impl ConfigSpace, bdf: Bdf) -> Self {
        let width_64 = |reg: u16| reg & bridge::WINDOW_WIDTH_MASK == 1;
        let io_base = cfg.read8(bdf, bridge::IO_BASE);
        let io_limit = cfg.read8(bdf, bridge::IO_LIMIT);
        let (io_base_hi, io_limit_hi) = if width_64(u16::from(io_base)) {
            (
                cfg.read16(bdf, bridge::IO_BASE_UPPER),
                cfg.read16(bdf, bridge::IO_LIMIT_UPPER),
            )
        } else {
            (0, 0)
        };
        let io = |upper: u16, reg: u8| {
            u64::from(upper) << 16
                | u64::from(reg & bridge::IO_WINDOW_ADDRESS_MASK) << bridge::IO_WINDOW_SHIFT
        };
        let io_window = Window::new(
            io(io_base_hi, io_base),
            io(io_limit_hi, io_limit) | bridge::IO_WINDOW_GRANULE_MASK,
        );
        let memory = |upper: u32, reg: u16| {
            u64::from(upper) << 32
                | u64::from(reg & bridge::MEMORY_WINDOW_ADDRESS_MASK) << bridge::MEMORY_WINDOW_SHIFT
        };
        let mem_base = cfg.read16(bdf, bridge::MEMORY_BASE);
        let mem_limit = cfg.read16(bdf, bridge::MEMORY_LIMIT);
        let memory_window = Window::new(
            memory(0, mem_base),
            memory(0, mem_limit) | bridge::MEMORY_WINDOW_GRANULE_MASK,
        );
        let pref_base = cfg.read16(bdf, bridge::PREFETCHABLE_MEMORY_BASE);
        let pref_limit = cfg.read16(bdf, bridge::PREFETCHABLE_MEMORY_LIMIT);
        let (pref_base_hi, pref_limit_hi) = if width_64(pref_base) {
            (
                cfg.read32(bdf, bridge::PREFETCHABLE_BASE_UPPER),
                cfg.read32(bdf, bridge::PREFETCHABLE_LIMIT_UPPER),
            )
        } else {
            (0, 0)
        };
        let prefetchable_window = Window::new(
            memory(pref_base_hi, pref_base),
            memory(pref_limit_hi, pref_limit) | bridge::MEMORY_WINDOW_GRANULE_MASK,
        );
        Self {
            primary: cfg.read8(bdf, bridge::PRIMARY_BUS),
            secondary: cfg.read8(bdf, bridge::SECONDARY_BUS),
            subordinate: cfg.read8(bdf, bridge::SUBORDINATE_BUS),
            io_window,
            memory_window,
            prefetchable_window,
            prefetchable_64bit: width_64(pref_base),
            control: BridgeControl::from_bits_retain(cfg.read16(bdf, bridge::BRIDGE_CONTROL)),
        }
    }
}

/// One function found by enumeration: a snapshot of its identity and resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code.
    pub class: ClassCode,
    /// Header layout.
    pub layout: HeaderLayout,
    /// Header Type bit 7 (read from this function).
    pub multifunction: bool,
    /// Command register at enumeration time.
    pub command: Command,
    /// PCI Express capability, absent for conventional PCI functions.
    pub pcie: Option<PcieInfo>,
    /// Capability lists.
    pub capabilities: Capabilities,
    /// Implemented BARs (empty when enumeration did not probe BARs).
    pub bars: Vec<Bar>,
    /// The Expansion ROM BAR, if implemented (`None` when enumeration did not probe BARs).
    pub expansion_rom: Option<ExpansionRom>,
    /// Bridge registers, for type-1 functions.
    pub bridge: Option<BridgeInfo>,
    /// Index of the upstream bridge in [`Topology::functions`].
    parent: Option<usize>,
    /// The root bus of the hierarchy the function belongs to.
    root_bus: u8,
}

impl Function {
    /// The PCIe Device/Port Type, if the function is PCI Express.
    pub fn port_type(&self) -> Option<DevicePortType> {
        self.pcie.map(|p| p.port_type)
    }

    /// Offset of the ACS extended capability, if present and wholly inside configuration
    /// space (a capability header at 0xffc cannot hold the ACS registers).
    pub fn acs_offset(&self) -> Option<u16> {
        self.capabilities
            .find_extended(ExtendedCapabilityId::ACS)
            .map(|c| c.offset)
            .filter(|&offset| offset + crate::regs::acs::CONTROL + 2 <= crate::CONFIG_SPACE_SIZE)
    }

    /// The BAR in slot `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The root bus of the function's hierarchy.
    pub fn root_bus(&self) -> u8 {
        self.root_bus
    }

    /// A friendly name for known (mostly QEMU) devices.
    pub fn name(&self) -> Option<&'static str> {
        crate::names::device_name(self.vendor_id, self.device_id)
    }
}

/// How a root bus was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootBusOrigin {
    /// The start bus of an MCFG region.
    McfgStartBus,
    /// A bus inside an MCFG region that no bridge claims but that has devices: the root bus of
    /// an extra host bridge such as QEMU's `pxb-pcie`.
    UnclaimedBus,
}

/// A root bus: the top of one hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootBus {
    /// Segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// How it was found.
    pub origin: RootBusOrigin,
}

/// Something inconsistent that enumeration found and worked around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyWarning {
    /// A bridge has secondary and subordinate bus 0: firmware did not configure it; not
    /// followed.
    BridgeNotConfigured {
        /// The bridge.
        bridge: Bdf,
    },
    /// A bridge's Primary Bus Number is not the bus it was found on (followed anyway: the
    /// primary number does not affect forwarding on PCIe).
    PrimaryBusMismatch {
        /// The bridge.
        bridge: Bdf,
        /// The register's value.
        primary: u8,
    },
    /// Secondary bus above subordinate bus: the window is empty; not followed.
    SecondaryAboveSubordinate {
        /// The bridge.
        bridge: Bdf,
        /// Secondary Bus Number.
        secondary: u8,
        /// Subordinate Bus Number.
        subordinate: u8,
    },
    /// The secondary bus is not above the bridge's own bus (it would point back up the tree);
    /// not followed.
    SecondaryNotBelowBridge {
        /// The bridge.
        bridge: Bdf,
        /// Secondary Bus Number.
        secondary: u8,
    },
    /// The bridge's bus window is not inside its parent's window (or the root's MCFG range);
    /// not followed.
    OutsideParentWindow {
        /// The bridge.
        bridge: Bdf,
        /// Secondary Bus Number.
        secondary: u8,
        /// Subordinate Bus Number.
        subordinate: u8,
        /// First bus of the parent window.
        parent_first: u8,
        /// Last bus of the parent window.
        parent_last: u8,
    },
    /// Two bridges on the same bus claim overlapping bus windows; the second is not followed.
    OverlappingWindows {
        /// The bridge followed.
        first: Bdf,
        /// The bridge not followed.
        second: Bdf,
    },
    /// A bus was reached a second time (a cycle or a duplicate claim); not rescanned.
    BusScannedTwice {
        /// Segment group.
        segment: u16,
        /// Bus number.
        bus: u8,
    },
    /// A capability list is malformed.
    Capability {
        /// The function.
        bdf: Bdf,
        /// The fault.
        error: CapabilityError,
    },
    /// A BAR could not be decoded.
    Bar {
        /// The function.
        bdf: Bdf,
        /// The fault.
        error: BarError,
    },
}

impl fmt::Display for TopologyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BridgeNotConfigured { bridge } => {
                write!(f, "{bridge}: bridge has no bus numbers assigned; not scanned")
            }
            Self::PrimaryBusMismatch { bridge, primary } => {
                write!(f, "{bridge}: primary bus register says {primary:02x}")
            }
            Self::SecondaryAboveSubordinate { bridge, secondary, subordinate } => write!(
                f,
                "{bridge}: secondary bus {secondary:02x} > subordinate {subordinate:02x}; not scanned"
            ),
            Self::SecondaryNotBelowBridge { bridge, secondary } => write!(
                f,
                "{bridge}: secondary bus {secondary:02x} is not below the bridge; not scanned"
            ),
            Self::OutsideParentWindow { bridge, secondary, subordinate, parent_first, parent_last } => {
                write!(
                    f,
                    "{bridge}: buses {secondary:02x}-{subordinate:02x} outside the parent's \
                     {parent_first:02x}-{parent_last:02x}; not scanned"
                )
            }
            Self::OverlappingWindows { first, second } => {
                write!(f, "{second}: bus window overlaps {first}'s; not scanned")
            }
            Self::BusScannedTwice { segment, bus } => {
                write!(f, "bus {segment:04x}:{bus:02x} reached twice; scanned once")
            }
            Self::Capability { bdf, error } => write!(f, "{bdf}: {error}"),
            Self::Bar { bdf, error } => write!(f, "{bdf}: {error}"),
        }
    }
}

/// Enumeration settings.
#[derive(Debug, Clone, Copy)]
pub struct EnumerationOptions<'a> {
    /// Host-bridge windows that translate memory addresses (empty on x86).
    pub windows: &'a [HostBridgeWindow],
    /// Probe BAR sizes (briefly disables decode on each function). Without it `bars` is empty.
    pub probe_bars: bool,
    /// Look for extra root buses among the MCFG buses no bridge claims.
    pub discover_unclaimed_root_buses: bool,
}

impl Default for EnumerationOptions<'_> {
    fn default() -> Self {
        Self {
            windows: &[],
            probe_bars: true,
            discover_unclaimed_root_buses: true,
        }
    }
}

/// Enumerates every function reachable through `regions` with the default options.
pub fn enumerate(cfg: &impl ConfigSpace, regions: &[McfgRegion]) -> Topology {
    enumerate_with(cfg, regions, &EnumerationOptions::default())
}

/// Enumerates every function reachable through `regions`.
///
/// Each region's start bus is a root bus. With `discover_unclaimed_root_buses`, every other bus
/// of every region that was neither scanned nor named by any bridge's secondary..subordinate
/// range is probed, and one with devices becomes an extra root bus. Bridges are followed only
/// when their bus numbers are consistent; see [`TopologyWarning`].
pub fn enumerate_with(
    cfg: &impl ConfigSpace,
    regions: &[McfgRegion],
    options: &EnumerationOptions<'_>,
) -> Topology {
    let mut scanner = Scanner {
        cfg,
        options,
        functions: Vec::new(),
        roots: Vec::new(),
        warnings: Vec::new(),
        scanned: Vec::new(),
        claimed: Vec::new(),
    };
    for region in regions {
        // A start bus already reached through a bridge of another region is not a root bus.
        if !scanner.is_scanned(region.segment(), region.start_bus()) {
            let last = last_reachable_bus(regions, region);
            scanner.scan_hierarchy(
                region.segment(),
                region.start_bus(),
                last,
                RootBusOrigin::McfgStartBus,
            );
        }
    }
    if options.discover_unclaimed_root_buses {
        for region in regions {
            for bus in region.start_bus()..=region.end_bus() {
                let segment = region.segment();
                if scanner.is_scanned(segment, bus) || scanner.is_claimed(segment, bus) {
                    continue;
                }
                let populated = (0..=Bdf::MAX_DEVICE).any(|device| {
                    Bdf::new(segment, bus, device, 0).is_ok_and(|bdf| is_present(cfg, bdf))
                });
                if populated {
                    let last = last_reachable_bus(regions, region);
                    scanner.scan_hierarchy(segment, bus, last, RootBusOrigin::UnclaimedBus);
                }
            }
        }
    }
    let mut sorted: Vec<usize> = (0..scanner.functions.len()).collect();
    sorted.sort_by_key(|&i| scanner.functions[i].bdf);
    let mut roots = scanner.roots;
    roots.sort_by_key(|r| (r.segment, r.bus));
    Topology {
        functions: scanner.functions,
        sorted,
        roots,
        warnings: scanner.warnings,
        regions: regions.to_vec(),
    }
}

/// The last bus of the run of regions of `region`'s segment that continue it without a gap: the
/// bus numbers below a root bus that ECAM can reach.
fn last_reachable_bus(regions: &[McfgRegion], region: &McfgRegion) -> u8 {
    let mut last = region.end_bus();
    // Each pass extends `last` or stops; at most `regions.len()` passes.
    for _ in 0..regions.len() {
        let next = regions.iter().find(|r| {
            r.segment() == region.segment() && last < u8::MAX && r.start_bus() == last + 1
        });
        match next {
            Some(r) => last = r.end_bus(),
            None => break,
        }
    }
    last
}

/// A function answers when its Vendor ID is neither all-ones (master abort) nor 0 (which some
/// broken slots return).
fn is_present(cfg: &impl ConfigSpace, bdf: Bdf) -> bool {
    !matches!(cfg.read16(bdf, header::VENDOR_ID), 0 | u16::MAX)
}

struct Job {
    bus: u8,
    parent: Option<usize>,
    /// The bus numbers the parent forwards: children's windows must lie inside.
    window: (u8, u8),
    /// Only device 0 can exist (below a Root Port or a Downstream Port).
    single_device: bool,
}

struct Scanner<'a, C> {
    cfg: &'a C,
    options: &'a EnumerationOptions<'a>,
    functions: Vec<Function>,
    roots: Vec<RootBus>,
    warnings: Vec<TopologyWarning>,
    /// One 256-bit set of scanned buses per segment.
    scanned: Vec<(u16, [u64; 4])>,
    /// Bus ranges named by bridges (followed or not), per segment.
    claimed: Vec<(u16, u8, u8)>,
}

impl<C: ConfigSpace> Scanner<'_, C> {
    fn is_scanned(&self, segment: u16, bus: u8) -> bool {
        self.scanned
            .iter()
            .any(|(s, set)| *s == segment && set[usize::from(bus / 64)] & (1 << (bus % 64)) != 0)
    }

    /// Marks `bus` scanned; false if it already was.
    fn mark_scanned(&mut self, segment: u16, bus: u8) -> bool {
        let index = match self.scanned.iter().position(|(s, _)| *s == segment) {
            Some(i) => i,
            None => {
                self.scanned.push((segment, [0; 4]));
                self.scanned.len() - 1
            }
        };
        let set = &mut self.scanned[index].1;
        let (word, bit) = (usize::from(bus / 64), bus % 64);
        let fresh = set[word] & (1 << bit) == 0;
        set[word] |= 1 << bit;
        fresh
    }

    fn is_claimed(&self, segment: u16, bus: u8) -> bool {
        self.claimed
            .iter()
            .any(|&(s, first, last)| s == segment && first <= bus && bus <= last)
    }

    /// Depth-first walk of one hierarchy, with an explicit stack (no recursion: the depth is
    /// bounded by 256 buses, but kernel stacks are small).
    fn scan_hierarchy(&mut self, segment: u16, root_bus: u8, last_bus: u8, origin: RootBusOrigin) {
        self.roots.push(RootBus {
            segment,
            bus: root_bus,
            origin,
        });
        let mut stack = vec![Job {
            bus: root_bus,
            parent: None,
            window: (root_bus, last_bus),
            single_device: false,
        }];
        while let Some(job) = stack.pop() {
            if !self.mark_scanned(segment, job.bus) {
                self.warnings.push(TopologyWarning::BusScannedTwice {
                    segment,
                    bus: job.bus,
                });
                continue;
            }
            let first_new = self.functions.len();
            self.scan_bus(segment, &job, root_bus);
            let mut followed: Vec<(u8, u8, Bdf)> = Vec::new();
            let mut children = Vec::new();
            for index in first_new..self.functions.len() {
                if let Some(child) = self.check_bridge(index, &job, &mut followed) {
                    children.push(child);
                }
            }
            // Reverse so that the lowest-numbered bridge is scanned first.
            stack.extend(children.into_iter().rev());
        }
    }

    fn scan_bus(&mut self, segment: u16, job: &Job, root_bus: u8) {
        let last_device = if job.single_device {
            0
        } else {
            Bdf::MAX_DEVICE
        };
        for device in 0..=last_device {
            let Ok(function0) = Bdf::new(segment, job.bus, device, 0) else {
                continue;
            };
            if !is_present(self.cfg, function0) {
                continue;
            }
            let header_type = self.cfg.read8(function0, header::HEADER_TYPE);
            let functions = if header_type & HeaderType::MULTI_FUNCTION != 0 {
                8
            } else {
                1
            };
            for function in 0..functions {
                let Ok(bdf) = function0.with_function(function) else {
                    continue;
                };
                if function > 0 && !is_present(self.cfg, bdf) {
                    continue;
                }
                let f = self.read_function(bdf, job.parent, root_bus);
                self.functions.push(f);
            }
        }
    }

    fn read_function(&mut self, bdf: Bdf, parent: Option<usize>, root_bus: u8) -> Function {
        let cfg = self.cfg;
        let class_revision = cfg.read32(bdf, header::REVISION_ID);
        let class = ClassCode {
            base: (class_revision >> 24) as u8,
            sub: (class_revision >> 16) as u8,
            prog_if: (class_revision >> 8) as u8,
        };
        let header_type = cfg.read8(bdf, header::HEADER_TYPE);
        let layout = HeaderLayout::from_header_type(header_type);
        let capabilities = Capabilities::read(cfg, bdf);
        for &error in &capabilities.errors {
            self.warnings
                .push(TopologyWarning::Capability { bdf, error });
        }
        let pcie = capabilities.find(CapabilityId::PCI_EXPRESS).map(|cap| {
            let reg = cfg.read16(bdf, u16::from(cap.offset) + crate::regs::pcie::CAPABILITIES);
            PcieInfo {
                offset: cap.offset,
                version: (reg & crate::regs::pcie::CAP_VERSION_MASK) as u8,
                port_type: DevicePortType::from_capabilities(reg),
                slot_implemented: reg & crate::regs::pcie::SLOT_IMPLEMENTED != 0,
            }
        });
        let (bars, expansion_rom) = if self.options.probe_bars {
            let probe = probe_bars(
                cfg,
                bdf,
                layout,
                self.options.windows,
                class.is_host_bridge(),
            );
            for error in probe.errors {
                self.warnings.push(TopologyWarning::Bar { bdf, error });
            }
            (probe.bars, probe.expansion_rom)
        } else {
            (Vec::new(), None)
        };
        Function {
            bdf,
            vendor_id: cfg.read16(bdf, header::VENDOR_ID),
            device_id: cfg.read16(bdf, header::DEVICE_ID),
            revision: class_revision as u8,
            class,
            layout,
            multifunction: header_type & HeaderType::MULTI_FUNCTION != 0,
            command: Command::from_bits_retain(cfg.read16(bdf, header::COMMAND)),
            pcie,
            capabilities,
            bars,
            expansion_rom,
            bridge: (layout == HeaderLayout::PciBridge).then(|| BridgeInfo::read(cfg, bdf)),
            parent,
            root_bus,
        }
    }

    /// Validates a bridge's bus numbers against its bus, its parent's window and its siblings;
    /// returns the job that scans its secondary bus if they are consistent.
    fn check_bridge(
        &mut self,
        index: usize,
        job: &Job,
        followed: &mut Vec<(u8, u8, Bdf)>,
    ) -> Option<Job> {
        let function = &self.functions[index];
        let info = function.bridge?;
        let bridge = function.bdf;
        let single_device = function
            .port_type()
            .is_some_and(|t| t.has_single_device_link());
        let (secondary, subordinate) = (info.secondary, info.subordinate);
        if info.primary != job.bus {
            self.warnings.push(TopologyWarning::PrimaryBusMismatch {
                bridge,
                primary: info.primary,
            });
        }
        if secondary == 0 && subordinate == 0 {
            self.warnings
                .push(TopologyWarning::BridgeNotConfigured { bridge });
            return None;
        }
        if secondary > subordinate {
            self.warnings
                .push(TopologyWarning::SecondaryAboveSubordinate {
                    bridge,
                    secondary,
                    subordinate,
                });
            return None;
        }
        // Named buses are never mistaken for extra root buses, even when not followed.
        self.claimed
            .push((bridge.segment(), secondary, subordinate));
        if secondary <= job.bus {
            self.warnings
                .push(TopologyWarning::SecondaryNotBelowBridge { bridge, secondary });
            return None;
        }
        let (parent_first, parent_last) = job.window;
        if secondary < parent_first || subordinate > parent_last {
            self.warnings.push(TopologyWarning::OutsideParentWindow {
                bridge,
                secondary,
                subordinate,
                parent_first,
                parent_last,
            });
            return None;
        }
        if let Some(&(_, _, first)) = followed
            .iter()
            .find(|&&(s, e, _)| s <= subordinate && secondary <= e)
        {
            self.warnings.push(TopologyWarning::OverlappingWindows {
                first,
                second: bridge,
            });
            return None;
        }
        followed.push((secondary, subordinate, bridge));
        Some(Job {
            bus: secondary,
            parent: Some(index),
            window: (secondary, subordinate),
            single_device,
        })
    }
}

/// One function on an ACS path, with its ACS registers if it has the capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcsPathEntry {
    /// The function.
    pub bdf: Bdf,
    /// Its ACS capability and control, read when the path was queried.
    pub acs: Option<AcsState>,
}

/// The result of enumeration, and the queries the IOMMU and P2P layers need.
#[derive(Debug, Clone)]
pub struct Topology {
    /// In discovery order; a function's parent always precedes it.
    functions: Vec<Function>,
    /// Indices of `functions` sorted by BDF.
    sorted: Vec<usize>,
    roots: Vec<RootBus>,
    warnings: Vec<TopologyWarning>,
    regions: Vec<McfgRegion>,
}

/// Iterator over the upstream bridges of a function, nearest first.
pub struct UpstreamBridges<'a> {
    topology: &'a Topology,
    next: Option<usize>,
}

impl<'a> Iterator for UpstreamBridges<'a> {
    type Item = &'a Function;

    fn next(&mut self) -> Option<&'a Function> {
        let function = self.topology.functions.get(self.next?)?;
        // Parents always have lower indices, so this terminates.
        self.next = function.parent;
        Some(function)
    }
}

impl Topology {
    /// Every function, in discovery order (each upstream bridge before what is below it).
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Every function, sorted by BDF.
    pub fn functions_sorted(&self) -> impl Iterator<Item = &Function> + '_ {
        self.sorted.iter().map(|&i| &self.functions[i])
    }

    /// The root buses, sorted.
    pub fn roots(&self) -> &[RootBus] {
        &self.roots
    }

    /// Inconsistencies found and worked around.
    pub fn warnings(&self) -> &[TopologyWarning] {
        &self.warnings
    }

    /// The MCFG regions enumerated.
    pub fn regions(&self) -> &[McfgRegion] {
        &self.regions
    }

    fn index(&self, bdf: Bdf) -> Option<usize> {
        let pos = self
            .sorted
            .binary_search_by_key(&bdf, |&i| self.functions[i].bdf)
            .ok()?;
        Some(self.sorted[pos])
    }

    /// The function at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<&Function> {
        self.index(bdf).map(|i| &self.functions[i])
    }

    /// Functions with this vendor and device ID, in BDF order.
    pub fn find(&self, vendor_id: u16, device_id: u16) -> impl Iterator<Item = &Function> + '_ {
        self.functions_sorted()
            .filter(move |f| (f.vendor_id, f.device_id) == (vendor_id, device_id))
    }

    /// The functions directly below bridge `bdf`, in BDF order.
    pub fn children(&self, bdf: Bdf) -> impl Iterator<Item = &Function> + '_ {
        let parent = self.index(bdf);
        self.functions_sorted()
            .filter(move |f| parent.is_some() && f.parent == parent)
    }

    /// The bridge directly upstream of `bdf` (`None` on a root bus or for an unknown function).
    pub fn parent(&self, bdf: Bdf) -> Option<&Function> {
        self.function(bdf)?.parent.map(|i| &self.functions[i])
    }

    /// The bridges between `bdf` and its host bridge, nearest first.
    pub fn upstream_bridges(&self, bdf: Bdf) -> UpstreamBridges<'_> {
        UpstreamBridges {
            topology: self,
            next: self.function(bdf).and_then(|f| f.parent),
        }
    }

    /// `bdf` itself followed by its upstream bridges.
    fn path(&self, bdf: Bdf) -> UpstreamBridges<'_> {
        UpstreamBridges {
            topology: self,
            next: self.index(bdf),
        }
    }

    /// The root bus of `bdf`'s hierarchy.
    pub fn root_bus(&self, bdf: Bdf) -> Option<RootBus> {
        let function = self.function(bdf)?;
        self.roots
            .iter()
            .copied()
            .find(|r| r.segment == bdf.segment() && r.bus == function.root_bus)
    }

    /// The Root Port above `bdf`, or `bdf` itself if it is one. `None` for functions on a root
    /// bus that are not root ports (integrated endpoints, conventional devices).
    pub fn root_port(&self, bdf: Bdf) -> Option<&Function> {
        self.path(bdf)
            .find(|f| f.port_type() == Some(DevicePortType::RootPort))
    }

    /// The nearest function that is `a` or upstream of `a`, and `b` or upstream of `b`: where
    /// traffic between them turns around without reaching the host bridge. `None` if they only
    /// meet at the host bridge (or either is unknown).
    pub fn common_upstream_bridge(&self, a: Bdf, b: Bdf) -> Option<&Function> {
        let b_path: Vec<Bdf> = self.path(b).map(|f| f.bdf).collect();
        if b_path.is_empty() {
            return None;
        }
        self.path(a).find(|f| b_path.contains(&f.bdf))
    }

    /// The switch port below which both functions sit, if their common upstream bridge is a
    /// PCIe switch port (Upstream or Downstream Port): peer-to-peer traffic between them can stay
    /// inside the switch (subject to ACS). `None` when they meet at a Root Port, a conventional
    /// bridge or only at the host bridge, and when `a == b`.
    pub fn below_same_switch(&self, a: Bdf, b: Bdf) -> Option<&Function> {
        if a == b {
            return None;
        }
        self.common_upstream_bridge(a, b)
            .filter(|f| f.port_type().is_some_and(DevicePortType::is_switch_port))
    }

    /// The ACS registers of `bdf` and of every bridge above it, nearest first, read live from
    /// `cfg` (so they reflect an [`crate::acs::apply_acs_policy`] done after enumeration).
    pub fn acs_path(&self, cfg: &impl ConfigSpace, bdf: Bdf) -> Option<Vec<AcsPathEntry>> {
        self.function(bdf)?;
        Some(
            self.path(bdf)
                .map(|f| AcsPathEntry {
                    bdf: f.bdf,
                    acs: f
                        .acs_offset()
                        .map(|offset| acs::read_acs(cfg, f.bdf, offset)),
                })
                .collect(),
        )
    }

    /// The functions that would redirect peer-to-peer traffic between `a` and `b` upstream
    /// (ACS RR, CR or EC enabled, Linux's `pci_bridge_has_acs_redir` rule), on both paths up
    /// to and including their common upstream bridge. An empty list means traffic can stay
    /// below that bridge. `None` if either function is unknown or they share no bridge (then
    /// traffic goes through the host bridge anyway).
    pub fn acs_redirects_between(
        &self,
        cfg: &impl ConfigSpace,
        a: Bdf,
        b: Bdf,
    ) -> Option<Vec<Bdf>> {
        let common = self.common_upstream_bridge(a, b)?.bdf;
        let mut redirects = Vec::new();
        for start in [a, b] {
            for f in self.path(start) {
                let redirect = f
                    .acs_offset()
                    .is_some_and(|offset| acs::read_acs(cfg, f.bdf, offset).has_redirect());
                if redirect && !redirects.contains(&f.bdf) {
                    redirects.push(f.bdf);
                }
                if f.bdf == common {
                    break;
                }
            }
        }
        Some(redirects)
    }

    /// Every requester ID `bdf`'s DMA can carry when it reaches the IOMMU, as BDFs: its own
    /// first, then one per bridge that takes ownership of the transaction, the last being what
    /// arrives at the root complex. Give every one the same IOMMU context.
    ///
    /// The rules (Linux's `pci_for_each_dma_alias`; PCIe-to-PCI Bridge 1.0 §2.3): Root Ports and
    /// switch ports forward requester IDs unchanged; a PCIe-to-PCI/PCI-X bridge
    /// (`pcie-pci-bridge`) issues the requests with (its secondary bus, device 0, function 0);
    /// a conventional PCI-PCI bridge (`pci-bridge`) and a PCI-to-PCIe bridge use their own BDF.
    pub fn dma_aliases(&self, bdf: Bdf) -> Option<Vec<Bdf>> {
        self.function(bdf)?;
        let mut aliases = vec![bdf];
        for bridge in self.upstream_bridges(bdf) {
            let alias = match bridge.port_type() {
                Some(DevicePortType::PcieToPciBridge) => bridge
                    .bridge
                    .map(|b| Bdf::from_devfn(bridge.bdf.segment(), b.secondary, 0)),
                Some(DevicePortType::PciToPcieBridge) | None => Some(bridge.bdf),
                Some(_) => None,
            };
            if let Some(alias) = alias.filter(|a| !aliases.contains(a)) {
                aliases.push(alias);
            }
        }
        Some(aliases)
    }

    /// [`Topology::dma_aliases`] as 16-bit requester IDs (within `bdf`'s segment).
    pub fn dma_requester_ids(&self, bdf: Bdf) -> Option<Vec<u16>> {
        Some(
            self.dma_aliases(bdf)?
                .iter()
                .map(|a| a.requester_id())
                .collect(),
        )
    }

    /// The requester ID `bdf`'s DMA carries when it reaches the root complex: the last of
    /// [`Topology::dma_aliases`]. The IOMMU reports faults with this source-id.
    pub fn iommu_source_id(&self, bdf: Bdf) -> Option<Bdf> {
        self.dma_aliases(bdf)?.last().copied()
    }
}

#[cfg(test)]
mod tests;
