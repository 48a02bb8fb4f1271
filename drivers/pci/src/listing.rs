//! A readable listing of a [`Topology`] in the spirit of `lspci -tv`: one indented tree per root
//! bus, with IDs, class, a friendly name, bus numbers, the bridge windows (I/O, memory,
//! prefetchable and its width, as `lspci -vv` names them), BARs, expansion ROMs and notable
//! capabilities, and (when
//! given) each function's isolation group ([`crate::group`]).

use alloc::vec::Vec;
use core::fmt;

use crate::group::IsolationGroups;
use crate::regs::CapabilityId;
use crate::topology::{BridgeInfo, RootBusOrigin, Topology};
use crate::Function;

/// A size in binary units: `256B`, `4K`, `16M`, `2G`.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 >= 1 << shift && self.0.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

fn write_function(
    f: &mut fmt::Formatter<'_>,
    function: &Function,
    depth: usize,
    groups: Option<&IsolationGroups>,
) -> fmt::Result {
    let indent = depth * 4;
    write!(
        f,
        "{:indent$}{} {:04x}:{:04x} [{:02x}{:02x}] {}",
        "",
        function.bdf,
        function.vendor_id,
        function.device_id,
        function.class.base,
        function.class.sub,
        function
            .name()
            .unwrap_or_else(|| crate::names::class_name(function.class.base, function.class.sub)),
    )?;
    if let Some(pcie) = function.pcie {
        write!(f, " <{}>", pcie.port_type.name())?;
    }
    if let Some(bridge) = function.bridge {
        write!(
            f,
            " buses {:02x}-{:02x}",
            bridge.secondary, bridge.subordinate
        )?;
    }
    if let Some(group) = groups.and_then(|g| g.group_of(function.bdf)) {
        write!(f, " group {}", group.id)?;
    }
    writeln!(f)?;
    let detail = indent + 6;
    for bar in &function.bars {
        write!(
            f,
            "{:detail$}BAR{} {} {:#x} size {}",
            "",
            bar.index,
            bar.kind,
            bar.phys_address,
            Size(bar.size)
        )?;
        if bar.bus_offset.0 != 0 {
            write!(
                f,
                " (bus {:#x}, offset {:+#x})",
                bar.bus_address,
                bar.bus_offset.as_signed()
            )?;
        }
        writeln!(f)?;
    }
    if let Some(bridge) = function.bridge {
        write_windows(f, &bridge, detail)?;
    }
    if let Some(rom) = function.expansion_rom {
        writeln!(
            f,
            "{:detail$}ROM {:#x} size {}{}",
            "",
            rom.phys_address,
            Size(rom.size),
            if rom.enabled { "" } else { " (disabled)" }
        )?;
    }
    let caps = &function.capabilities;
    if !caps.standard.is_empty() || !caps.extended.is_empty() {
        write!(f, "{:detail$}caps:", "")?;
        for cap in &caps.standard {
            match cap.id.name() {
                Some(name) => write!(f, " {name}")?,
                None => write!(f, " {:#04x}", cap.id.0)?,
            }
            if cap.id == CapabilityId::PCI_EXPRESS {
                if let Some(pcie) = function.pcie {
                    write!(f, "v{}", pcie.version)?;
                }
            }
        }
        for cap in &caps.extended {
            match cap.id.name() {
                Some(name) => write!(f, " {name}")?,
                None => write!(f, " ext{:#06x}", cap.id.0)?,
            }
        }
        writeln!(f)?;
    }
    Ok(())
}

/// A bridge's forwarding windows as `lspci -vv` shows them: `I/O behind bridge: base-limit
/// [size=..]`, `Memory behind bridge`, `Prefetchable memory behind bridge` with its register
/// width (`32-bit`/`64-bit`); a window whose base is above its limit is `[disabled]`.
fn write_windows(f: &mut fmt::Formatter<'_>, bridge: &BridgeInfo, indent: usize) -> fmt::Result {
    let windows = [
        ("I/O behind bridge", bridge.io_window, None),
        ("Memory behind bridge", bridge.memory_window, None),
        (
            "Prefetchable memory behind bridge",
            bridge.prefetchable_window,
            Some(if bridge.prefetchable_64bit {
                "64-bit"
            } else {
                "32-bit"
            }),
        ),
    ];
    for (name, window, width) in windows {
        write!(f, "{:indent$}{name}: ", "")?;
        match window {
            Some(w) => write!(
                f,
                "{:#x}-{:#x} [size={}]",
                w.base,
                w.limit,
                Size((w.limit - w.base).saturating_add(1))
            )?,
            None => write!(f, "[disabled]")?,
        }
        match width {
            Some(width) => writeln!(f, " [{width}]")?,
            None => writeln!(f)?,
        }
    }
    Ok(())
}

/// A [`Topology`] listing with each function's isolation group (`group N` after the function),
/// from [`Topology::listing`]. `Display` of a bare [`Topology`] is the same without groups.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    topology: &'a Topology,
    groups: Option<&'a IsolationGroups>,
}

impl Topology {
    /// The `lspci -tv`-style listing, with the group of each function when `groups` is given
    /// (computed over this topology by [`crate::group::compute`]).
    pub fn listing<'a>(&'a self, groups: Option<&'a IsolationGroups>) -> Listing<'a> {
        Listing {
            topology: self,
            groups,
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.listing(None).fmt(f)
    }
}

impl fmt::Display for Listing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (this, groups) = (self.topology, self.groups);
        for region in this.regions() {
            writeln!(
                f,
                "ECAM segment {:04x} buses {:02x}-{:02x} at {:#x}",
                region.segment(),
                region.start_bus(),
                region.end_bus(),
                region.window_base()
            )?;
        }
        for root in this.roots() {
            let origin = match root.origin {
                RootBusOrigin::McfgStartBus => "",
                RootBusOrigin::UnclaimedBus => " (extra host bridge: bus claimed by no bridge)",
            };
            writeln!(
                f,
                "[{:04x}:{:02x}] root bus{origin}",
                root.segment, root.bus
            )?;
            // Depth-first with an explicit stack of (function, depth), children in BDF order.
            let mut stack: Vec<(&Function, usize)> = this
                .functions_sorted()
                .filter(|x| {
                    x.bdf.segment() == root.segment
                        && x.bdf.bus() == root.bus
                        && this.parent(x.bdf).is_none()
                })
                .map(|x| (x, 1))
                .collect();
            stack.reverse();
            while let Some((function, depth)) = stack.pop() {
                write_function(f, function, depth, groups)?;
                let children: Vec<&Function> = this.children(function.bdf).collect();
                stack.extend(children.into_iter().rev().map(|c| (c, depth + 1)));
            }
        }
        for warning in this.warnings() {
            writeln!(f, "warning: {warning}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcfg::McfgRegion;
    use crate::regs::bridge;
    use crate::testing::FakeConfigSpace;
    use crate::{enumerate, Bdf};
    use alloc::string::{String, ToString};

    fn bdf(bus: u8, device: u8) -> Bdf {
        Bdf::new(0, bus, device, 0).unwrap()
    }

    /// The listing lines of one function's detail block that start with `prefix`.
    fn lines_with<'a>(listing: &'a str, prefix: &str) -> alloc::vec::Vec<&'a str> {
        listing
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    #[test]
    fn bridge_windows_are_listed_from_the_registers() {
        let fake = FakeConfigSpace::new();
        fake.add_endpoint(bdf(0, 0), 0x8086, 0x29c0, 0x06_00_00);
        // Root port 00:01.0: I/O 0x1000-0x1fff (16-bit), memory 0xfe800000-0xfe9fffff,
        // prefetchable 64-bit 0x8_0000_0000-0x8_001f_ffff.
        fake.add_bridge(bdf(0, 1), 0x1b36, 0x000c, 0, 1, 1);
        let rp = bdf(0, 1);
        fake.poke8(rp, bridge::IO_BASE, 0x10);
        fake.poke8(rp, bridge::IO_LIMIT, 0x10);
        fake.poke16(rp, bridge::MEMORY_BASE, 0xfe80);
        fake.poke16(rp, bridge::MEMORY_LIMIT, 0xfe90);
        fake.poke16(rp, bridge::PREFETCHABLE_MEMORY_BASE, 0x0001);
        fake.poke16(rp, bridge::PREFETCHABLE_MEMORY_LIMIT, 0x0011);
        fake.poke32(rp, bridge::PREFETCHABLE_BASE_UPPER, 0x8);
        fake.poke32(rp, bridge::PREFETCHABLE_LIMIT_UPPER, 0x8);
        // Bridge 00:02.0 with every window closed (base above limit), 32-bit prefetchable.
        fake.add_bridge(bdf(0, 2), 0x1b36, 0x0001, 0, 2, 2);
        let closed = bdf(0, 2);
        fake.poke8(closed, bridge::IO_BASE, 0xf0);
        fake.poke16(closed, bridge::MEMORY_BASE, 0xfff0);
        fake.poke16(closed, bridge::PREFETCHABLE_MEMORY_BASE, 0xfff0);
        let region = McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap();
        let listing: String = enumerate(&fake, &[region]).to_string();
        assert_eq!(
            lines_with(&listing, "I/O behind bridge"),
            [
                "I/O behind bridge: 0x1000-0x1fff [size=4K]",
                "I/O behind bridge: [disabled]"
            ]
        );
        assert_eq!(
            lines_with(&listing, "Memory behind bridge"),
            [
                "Memory behind bridge: 0xfe800000-0xfe9fffff [size=2M]",
                "Memory behind bridge: [disabled]"
            ]
        );
        assert_eq!(
            lines_with(&listing, "Prefetchable memory behind bridge"),
            [
                "Prefetchable memory behind bridge: 0x800000000-0x8001fffff [size=2M] [64-bit]",
                "Prefetchable memory behind bridge: [disabled] [32-bit]"
            ]
        );
        // Endpoints have no windows: exactly one line of each kind per bridge.
        assert_eq!(listing.matches("behind bridge").count(), 6);
    }

    #[test]
    fn sizes() {
        assert_eq!(Size(256).to_string(), "256B");
        assert_eq!(Size(4096).to_string(), "4K");
        assert_eq!(Size(16 << 20).to_string(), "16M");
        assert_eq!(Size(3 << 30).to_string(), "3G");
        assert_eq!(Size(0x1800).to_string(), "6K");
    }
}
