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

mod function;
mod scan;
#[cfg(test)]
mod tests;

pub use function::*;
pub use scan::*;

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
    pub fn dma_requester_ids(&self, bdf: Bdf) -> Option<Vec<crate::RequesterId>> {
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
