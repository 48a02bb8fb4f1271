//! VT-d units with their DRHD device scopes resolved against the PCI topology, the unit that
//! translates a function, and RMRRs resolved to the functions they name (VT-d spec §8.3
//! "DMA Remapping Hardware Unit Definition", §8.3.1 "Device Scope", §8.4 "Reserved Memory
//! Region Reporting"; SPEC.md "Isolation unit").

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use iommu_vtd::dmar::{DeviceScopes, Drhd, Rmrr, ScopeKind};
use iommu_vtd::{PagingLevels, Platform, RegisterIo, VtdError, VtdUnit};
use pci::{Bdf, Topology};

/// One remapping unit and the PCI functions it translates for.
pub struct UnitEntry<R: RegisterIo, P: Platform> {
    /// The running unit.
    pub unit: Arc<VtdUnit<R, P>>,
    /// Register base from the DRHD.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// INCLUDE_PCI_ALL: every device of the segment not claimed by another unit.
    pub include_all: bool,
    /// Endpoint scopes, resolved.
    pub endpoints: Vec<Bdf>,
    /// Sub-hierarchy scopes (bridges), resolved: everything below them.
    pub bridges: Vec<Bdf>,
    /// Paging depth of this unit's domains.
    pub levels: PagingLevels,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for UnitEntry<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitEntry")
            .field("base", &self.base)
            .field("segment", &self.segment)
            .field("include_all", &self.include_all)
            .field("endpoints", &self.endpoints)
            .field("bridges", &self.bridges)
            .field("levels", &self.levels)
            .finish()
    }
}

/// Resolves every scope path of `scopes` in `segment` against `topology` (each bridge on the
/// path by its secondary bus as enumerated). Returns the endpoint and sub-hierarchy functions,
/// and how many scopes did not resolve (a path through a function that is not a bridge, or
/// absent) and were left out.
fn resolve_scopes(
    scopes: DeviceScopes<'_>,
    segment: u16,
    topology: &Topology,
) -> (Vec<Bdf>, Vec<Bdf>, usize) {
    let secondary = |bus: u8, dev: u8, func: u8| {
        let bdf = Bdf::new(segment, bus, dev, func).ok()?;
        topology.function(bdf)?.bridge.map(|b| b.secondary)
    };
    let (mut endpoints, mut bridges, mut unresolved) = (Vec::new(), Vec::new(), 0);
    for scope in scopes {
        // Scopes resolve to the shared `Bdf`, in their structure's segment.
        let Ok(bdf) = scope.resolve(secondary) else {
            unresolved += 1;
            continue;
        };
        match scope.kind() {
            ScopeKind::PciEndpoint => endpoints.push(bdf),
            ScopeKind::PciSubHierarchy => bridges.push(bdf),
            _ => {}
        }
    }
    (endpoints, bridges, unresolved)
}

impl<R: RegisterIo, P: Platform> UnitEntry<R, P> {
    /// The entry of `unit`, described by `drhd`, with its scopes resolved against `topology`
    /// and domains of `levels`. Also returns how many of its scopes did not resolve (left
    /// out; the embedder should say so).
    pub fn new(
        unit: Arc<VtdUnit<R, P>>,
        drhd: &Drhd<'_>,
        topology: &Topology,
        levels: PagingLevels,
    ) -> (Self, usize) {
        let (endpoints, bridges, unresolved) =
            resolve_scopes(drhd.scopes(), drhd.segment(), topology);
        let entry = Self {
            unit,
            base: drhd.register_base(),
            segment: drhd.segment(),
            include_all: drhd.include_pci_all(),
            endpoints,
            bridges,
            levels,
        };
        (entry, unresolved)
    }

    /// Whether this unit's scopes name `bdf` (an endpoint scope for it, or a sub-hierarchy
    /// scope for it or a bridge above it). INCLUDE_PCI_ALL is not considered here.
    pub fn scopes_contain(&self, topology: &Topology, bdf: Bdf) -> bool {
        self.endpoints.contains(&bdf)
            || self.bridges.contains(&bdf)
            || topology
                .upstream_bridges(bdf)
                .any(|f| self.bridges.contains(&f.bdf))
    }
}

/// The unit translating DMA from `bdf`: one whose scopes name it (an endpoint scope, or a
/// bridge scope above it), else an INCLUDE_PCI_ALL unit of its segment (§8.3: such a unit
/// takes every device no other unit claims).
pub fn unit_for<'a, R: RegisterIo, P: Platform>(
    units: &'a [UnitEntry<R, P>],
    topology: &Topology,
    bdf: Bdf,
) -> Option<&'a UnitEntry<R, P>> {
    units
        .iter()
        .find(|u| u.segment == bdf.segment() && u.scopes_contain(topology, bdf))
        .or_else(|| {
            units
                .iter()
                .find(|u| u.include_all && u.segment == bdf.segment())
        })
}

/// A unit that refused to start, with its register base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    /// The unit's register base.
    pub base: u64,
    /// Why.
    pub error: VtdError,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VT-d unit at {:#x}: {}", self.base, self.error)
    }
}

impl core::error::Error for UnitError {}

/// A reserved-memory region (RMRR): memory a device keeps using across the IOMMU, which must
/// stay identity-mapped in that device's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RmrrInfo {
    /// First byte.
    pub base: u64,
    /// Last byte (inclusive).
    pub limit: u64,
    /// The devices it applies to, resolved.
    pub devices: Vec<Bdf>,
}

impl RmrrInfo {
    /// The region `rmrr` describes, its scopes resolved against `topology` (scopes that do not
    /// resolve are left out). Inverted or misaligned RMRRs were already refused by the DMAR
    /// parser.
    pub fn resolve(rmrr: &Rmrr<'_>, topology: &Topology) -> Self {
        let (mut devices, bridges, _) = resolve_scopes(rmrr.scopes(), rmrr.segment(), topology);
        devices.extend(bridges);
        Self {
            base: rmrr.base(),
            limit: rmrr.limit(),
            devices,
        }
    }

    /// Parses a command-line RMRR, `<bdf>@<base>-<limit>` (BDF as `[segment:]bus:dev.fn`,
    /// addresses in hex with `0x`, `base` 4 KiB aligned, `limit + 1` 4 KiB aligned): a region the
    /// firmware should have listed, to be treated exactly like a firmware RMRR. `None` when the
    /// text is malformed or the bounds are misaligned or inverted.
    pub fn parse_override(spec: &str) -> Option<Self> {
        let (bdf, range) = spec.split_once('@')?;
        let (base, limit) = range.split_once('-')?;
        let hex = |v: &str| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok();
        let (base, limit) = (hex(base)?, hex(limit)?);
        let aligned = base % 4096 == 0 && limit.checked_add(1)? % 4096 == 0 && base <= limit;
        Some(Self {
            base,
            limit,
            devices: alloc::vec![bdf.parse().ok()?],
        })
        .filter(|_| aligned)
    }

    /// The page-rounded identity range `(base, size)` that is mapped for this region.
    pub fn page_range(&self) -> (u64, u64) {
        let base = self.base & !0xfff;
        let last = self.limit | 0xfff;
        (base, last - base + 1)
    }
}
