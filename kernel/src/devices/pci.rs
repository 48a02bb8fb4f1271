//! PCI bring-up: ECAM windows from the ACPI MCFG mapped uncached, the hierarchy enumerated with
//! the `pci` crate, the ACS isolation policy applied when an IOMMU is present, and the isolation
//! groups computed from the ACS controls actually enabled (recomputed whenever the policy is
//! re-applied).

use alloc::string::String;
use core::fmt::{self, Write};
use core::ptr::NonNull;

use pci::acs::{AcsPolicy, AcsReport};
use pci::bar::BarKind;
use pci::regs::HeaderLayout;
use pci::{Bdf, Ecam, Function, IsolationGroups, McfgRegion, Topology};
use spin::{RwLock, RwLockReadGuard};

use crate::acpi::Acpi;
use crate::mem::paging::{self, Cache};

/// The kernel's view of PCI.
pub struct PciSystem {
    /// Configuration access for every MCFG region.
    pub ecam: Ecam,
    /// The enumerated hierarchy.
    pub topology: Topology,
    /// What the ACS policy did (None when the policy was `Leave`).
    pub acs: Option<AcsReport>,
    /// The ACS policy in force, re-applied after resets (which clear ACS control).
    pub acs_policy: AcsPolicy,
    /// The isolation groups for the ACS controls last read (behind a lock because resets, which
    /// only borrow the system, re-apply the policy and recompute them).
    groups: RwLock<IsolationGroups>,
}

impl PciSystem {
    /// The current isolation groups. Hold the guard briefly: [`PciSystem::reapply_acs_policy`]
    /// waits for it.
    pub fn groups(&self) -> RwLockReadGuard<'_, IsolationGroups> {
        self.groups.read()
    }

    /// Re-applies the ACS policy in force (a reset clears ACS Control) and recomputes the
    /// isolation groups from what the hardware now has enabled. Returns the policy's report, or
    /// `None` for [`AcsPolicy::Leave`] (groups are still recomputed: firmware or a reset may
    /// have changed the controls).
    pub fn reapply_acs_policy(&self) -> Option<AcsReport> {
        let report = match self.acs_policy {
            AcsPolicy::Leave => None,
            p => Some(pci::acs::apply_acs_policy(&self.ecam, &self.topology, p)),
        };
        self.refresh_groups();
        report
    }

    /// Recomputes the isolation groups from the ACS controls as they are now.
    ///
    /// A changed partition (ACS that did not come back after a reset) is logged as an error.
    /// Attachments made under the old groups stay as they are, and the VT-d units refuse to
    /// attach a new group any of whose requester IDs an old group still holds, so a changed
    /// partition can make attaches fail but never splits a group across domains.
    pub fn refresh_groups(&self) {
        let groups = pci::group::compute(&self.ecam, &self.topology);
        let mut current = self.groups.write();
        let partition = |g: &IsolationGroups| {
            g.groups()
                .iter()
                .map(|g| g.members().to_vec())
                .collect::<alloc::vec::Vec<_>>()
        };
        if partition(&current) != partition(&groups) {
            log::error!(
                "pci: isolation groups changed (ACS controls differ from before): {} -> {} groups",
                current.len(),
                groups.len()
            );
        }
        *current = groups;
    }
}

/// Why PCI could not be brought up.
#[derive(Debug)]
pub enum PciInitError {
    /// No MCFG table: no ECAM.
    NoMcfg,
    /// The MCFG table is malformed.
    Mcfg(pci::McfgError),
    /// An ECAM window could not be mapped.
    Map(paging::MapError),
    /// The ECAM accessor refused the regions.
    Ecam(pci::EcamError),
}

impl fmt::Display for PciInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMcfg => f.write_str("no MCFG table (no PCIe ECAM)"),
            Self::Mcfg(e) => write!(f, "MCFG: {e}"),
            Self::Map(e) => write!(f, "mapping an ECAM window: {e}"),
            Self::Ecam(e) => write!(f, "ECAM: {e}"),
        }
    }
}

/// Maps the ECAM windows, enumerates, and applies `policy` to every ACS-capable port.
pub fn init(acpi: &Acpi, policy: AcsPolicy) -> Result<PciSystem, PciInitError> {
    let (_, mcfg) = acpi.mcfg().ok_or(PciInitError::NoMcfg)?;
    let regions = pci::mcfg::parse(mcfg).map_err(PciInitError::Mcfg)?;
    let mut mapped: alloc::vec::Vec<(McfgRegion, NonNull<u8>)> = alloc::vec::Vec::new();
    for r in &regions {
        let ptr = paging::map_phys(r.window_base(), r.window_size(), Cache::Uncached)
            .map_err(PciInitError::Map)?;
        let ptr = NonNull::new(ptr).ok_or(PciInitError::Map(paging::MapError::BadRange))?;
        mapped.push((*r, ptr));
    }
    // SAFETY: each pointer is the identity mapping of its region's ECAM window, mapped uncached
    // just above and never unmapped; ECAM is only accessed through this object.
    let ecam = unsafe { Ecam::new(mapped) }.map_err(PciInitError::Ecam)?;
    let topology = pci::enumerate(&ecam, &regions);
    for w in topology.warnings() {
        log::warn!("pci: {w}");
    }
    let acs = match policy {
        AcsPolicy::Leave => None,
        p => Some(pci::acs::apply_acs_policy(&ecam, &topology, p)),
    };
    let groups = RwLock::new(pci::group::compute(&ecam, &topology));
    Ok(PciSystem {
        ecam,
        topology,
        acs,
        acs_policy: policy,
        groups,
    })
}

fn bar_kind_name(kind: BarKind) -> &'static str {
    match kind {
        BarKind::Io => "io",
        BarKind::Memory32 {
            prefetchable: false,
        } => "mem32",
        BarKind::Memory32 { prefetchable: true } => "mem32p",
        BarKind::Memory64 {
            prefetchable: false,
        } => "mem64",
        BarKind::Memory64 { prefetchable: true } => "mem64p",
    }
}

fn full_bdf(b: Bdf) -> String {
    alloc::format!(
        "{:04x}:{:02x}:{:02x}.{}",
        b.segment(),
        b.bus(),
        b.device(),
        b.function()
    )
}

/// One machine-readable `PCIDEV` line (format documented in `tests-qemu/src/pci_model.rs`);
/// `group=` is the label of the function's isolation group in `groups`.
pub fn listing_line(t: &Topology, groups: &IsolationGroups, f: &Function) -> String {
    let mut s = String::new();
    let kind = match f.layout {
        HeaderLayout::PciBridge => "bridge",
        _ if f.class.is_host_bridge() => "host",
        _ => "endpoint",
    };
    let _ = write!(
        s,
        "PCIDEV {} id={:04x}:{:04x} class={:02x}{:02x}{:02x} kind={kind} parent={}",
        full_bdf(f.bdf),
        f.vendor_id,
        f.device_id,
        f.class.base,
        f.class.sub,
        f.class.prog_if,
        t.parent(f.bdf)
            .map_or(String::from("root"), |p| full_bdf(p.bdf)),
    );
    match &f.bridge {
        Some(b) => {
            let _ = write!(s, " secondary={:02x}", b.secondary);
        }
        None => s.push_str(" secondary=-"),
    }
    s.push_str(" bars=");
    if f.bars.is_empty() {
        s.push('-');
    }
    for (i, b) in f.bars.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            s,
            "{sep}{}:{}:{:#x}:{:#x}",
            b.index,
            bar_kind_name(b.kind),
            b.phys_address,
            b.size
        );
    }
    s.push_str(" rids=");
    match t.iommu_source_id(f.bdf) {
        Some(rid) => {
            let _ = write!(
                s,
                "{:02x}:{:02x}.{}",
                rid.bus(),
                rid.device(),
                rid.function()
            );
        }
        None => s.push('-'),
    }
    s.push_str(" group=");
    match groups.group_of(f.bdf) {
        Some(g) => {
            let _ = write!(s, "{}", g.id);
        }
        None => s.push('-'),
    }
    s
}
