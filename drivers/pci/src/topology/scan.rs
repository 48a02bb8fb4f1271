//! The enumeration walk (PCI-to-PCI Bridge 1.2 §3.2.5.3 bus numbers, PCIe Base 4.0 §7.3 ECAM
//! discovery): root buses, the scanner, and the warnings it reports.

use super::*;

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
