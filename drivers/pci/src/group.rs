//! Isolation groups: the smallest sets of functions an IOMMU can isolate from each other, computed
//! as Linux computes IOMMU groups for PCI (`pci_device_group()` in `drivers/iommu/iommu.c`, with
//! `pci_acs_enabled()`/`pci_acs_path_enabled()` from `drivers/pci/pci.c`), from the topology and
//! the ACS registers read live from configuration space (PCIe Base 4.0 §6.12 and §7.7.7; DMA
//! aliases per PCIe-to-PCI/PCI-X Bridge 1.0 §2.3).
//!
//! A domain must be attached to a whole group: functions of one group either share requester IDs
//! (the IOMMU cannot tell them apart) or can reach each other peer-to-peer without the IOMMU
//! seeing the transaction. Three rules join functions:
//!
//! 1. **DMA aliases.** A function is joined to every bridge that takes ownership of its requests
//!    on the way up (a PCIe-to-PCI bridge, a PCI-to-PCIe bridge, a conventional PCI bridge; the
//!    rule of [`Topology::dma_aliases`]), and functions whose DMA can carry the same requester ID
//!    are always in one group (a context entry is per requester ID).
//! 2. **Bridge paths without ACS isolation.** From the last alias upwards, a function is joined to
//!    the bridge above it unless that bridge and every bridge above it "have ACS" in Linux's sense
//!    ([`acs_enabled`] for [`REQUIRED_ACS`]); the walk stops at the first bridge whose whole path
//!    to the root bus is isolated. The bridge itself got its group by the same rule, so everything
//!    below a non-isolating bridge shares that bridge's group.
//! 3. **Multifunction devices.** A function of a multifunction device (function number above 0, or
//!    function 0 with the multifunction header bit) that does not have ACS is joined to every
//!    other function of its slot that does not have ACS either.
//!
//! Linux processes devices one by one and reuses the first existing group it finds; computing the
//! same relations as a union over all functions gives the same partition for every topology in
//! which bridges are grouped (as here, where every function is considered). Root-bus devices
//! (host bridges, root-complex integrated endpoints, root ports, conventional devices on the root
//! bus) have no bridge above them, so only rules 1 and 3 apply to them.
//!
//! "Has ACS" follows `pci_acs_enabled()`: a device-specific quirk first (see [`acs_quirk`]), then
//! conventional PCI functions never have it, PCIe-to-PCI/PCI-to-PCIe bridges and root-complex
//! event collectors never have it, root and downstream ports need the ACS capability with every
//! required control the port advertises enabled (a control the capability does not advertise is
//! taken as hard-wired on, as Linux does), and the remaining PCIe types need it only when they are
//! multifunction. Because the controls are read when [`compute`] runs, call it again after the
//! ACS policy changed (or was re-applied after a reset): the groups follow what the hardware has
//! enabled, not what a policy asked for.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::regs::{acs as acs_regs, AcsFlags, DevicePortType};
use crate::topology::Function;
use crate::{Bdf, ConfigSpace, RequesterId, Topology};

/// The ACS controls a port needs for Linux to consider what is below it isolated (`REQ_ACS_FLAGS`
/// in `drivers/iommu/iommu.c`): Source Validation, P2P Request Redirect, P2P Completion Redirect
/// and Upstream Forwarding. Requesters cannot spoof their ID, and no request or completion can turn
/// around below the port.
pub const REQUIRED_ACS: AcsFlags = AcsFlags::SV
    .union(AcsFlags::RR)
    .union(AcsFlags::CR)
    .union(AcsFlags::UF);

/// Intel's vendor ID.
const INTEL: u16 = 0x8086;

/// The identity of one isolation group: its position in [`IsolationGroups::groups`], which are
/// ordered by their lowest member BDF. Equal for functions of one group and different otherwise
/// within one computation; its [`Display`](fmt::Display) form is the label the listings print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl GroupId {
    /// The index of the group in [`IsolationGroups::groups`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One isolation group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its identity.
    pub id: GroupId,
    /// The member functions, sorted by BDF (never empty).
    pub members: Vec<Bdf>,
    /// Every requester ID the members' DMA can carry when it reaches the IOMMU (the union of
    /// [`Topology::dma_requester_ids`] over the members), sorted and without duplicates: what a
    /// domain attached to the group must program, within the members' segment.
    pub requester_ids: Vec<RequesterId>,
}

impl Group {
    /// Its identity.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The member functions, sorted by BDF.
    pub fn members(&self) -> &[Bdf] {
        &self.members
    }

    /// The requester IDs a domain attached to the group must program, sorted.
    pub fn requester_ids(&self) -> &[RequesterId] {
        &self.requester_ids
    }

    /// The PCI segment of the members (a group never spans segments: each segment has its own
    /// root buses).
    pub fn segment(&self) -> u16 {
        self.members.first().map_or(0, |b| b.segment())
    }

    /// Whether `bdf` is a member.
    pub fn contains(&self, bdf: Bdf) -> bool {
        self.members.binary_search(&bdf).is_ok()
    }
}

/// The partition of every enumerated function into isolation groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IsolationGroups {
    /// Ordered by lowest member; `groups[i].id == GroupId(i)`.
    groups: Vec<Group>,
    /// (function, group index), sorted by BDF.
    index: Vec<(Bdf, u32)>,
}

impl IsolationGroups {
    /// Every group, ordered by its lowest member BDF.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group `bdf` belongs to; `None` for a function the topology does not have.
    pub fn group_of(&self, bdf: Bdf) -> Option<&Group> {
        let pos = self.index.binary_search_by_key(&bdf, |&(b, _)| b).ok()?;
        self.groups.get(self.index[pos].1 as usize)
    }

    /// The group with this identity.
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(id.index())
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups (no functions).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

impl fmt::Display for IsolationGroups {
    /// One line per group: `group N: members (requester IDs ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for g in &self.groups {
            write!(f, "group {}:", g.id)?;
            for m in &g.members {
                write!(f, " {m}")?;
            }
            f.write_str(" (requester IDs")?;
            for rid in &g.requester_ids {
                let b = Bdf::from_requester_id(g.segment(), *rid);
                write!(f, " {:02x}:{:02x}.{}", b.bus(), b.device(), b.function())?;
            }
            writeln!(f, ")")?;
        }
        Ok(())
    }
}

/// Linux's notion of a multifunction device (`pci_scan_slot()` marks every function above 0, and
/// function 0 carries the header bit).
fn is_multifunction(f: &Function) -> bool {
    f.multifunction || f.bdf.function() != 0
}

/// The device-specific ACS answer Linux's `pci_dev_specific_acs_enabled()` table gives for the
/// devices QEMU models, or `None` when no quirk applies.
///
/// - `pci_quirk_rciep_acs`: Intel root-complex integrated endpoints (any device ID) may only do
///   peer-to-peer on translated addresses (VT-d 3.1 §3.16), so they provide SV, RR, CR and UF.
///   QEMU turns a PCIe endpoint plugged into `pcie.0` into an RC integrated endpoint, so this
///   covers e.g. `e1000e` (8086:10d3) on the root bus.
///
/// The other entries of Linux's table match no device QEMU 7.2 emulates: the Intel PCH root-port
/// quirks (`pci_quirk_intel_pch_acs`, `pci_quirk_intel_spt_pch_acs`) list root ports of real
/// chipsets (Ibex Peak to Union Point), not QEMU's `ioh3420` (8086:3420) nor `pcie-root-port`
/// (1b36:000c); the multifunction-endpoint quirks (`pci_quirk_mf_endpoint_acs`) list Intel,
/// Solarflare, Broadcom, Cavium, Emulex and Zhaoxin NICs, none of them QEMU's `e1000e`; the AMD
/// south-bridge quirk needs an AMD IOMMU. The ICH9 functions (8086:2918, 2922, 2930), the host
/// bridge (8086:29c0), TI's switch ports (104c:8232/8233) and Red Hat's 1b36 devices have no
/// entry.
pub fn acs_quirk(f: &Function, flags: AcsFlags) -> Option<bool> {
    if f.vendor_id == INTEL && f.port_type() == Some(DevicePortType::RootComplexIntegratedEndpoint)
    {
        return Some(REQUIRED_ACS.contains(flags));
    }
    None
}

/// `pci_acs_flags_enabled()`: the function has an ACS capability and every flag of `flags` that
/// the capability advertises is enabled (Egress Control always counts, as in Linux). A capability
/// that reads all-ones (the function is gone) provides nothing.
fn acs_flags_enabled(cfg: &impl ConfigSpace, f: &Function, flags: AcsFlags) -> bool {
    let Some(offset) = f.acs_offset() else {
        return false;
    };
    let capability = cfg.read16(f.bdf, offset + acs_regs::CAPABILITY);
    let control = cfg.read16(f.bdf, offset + acs_regs::CONTROL);
    if capability == u16::MAX || control == u16::MAX {
        return false;
    }
    let advertised = AcsFlags::from_bits_truncate(capability) | AcsFlags::EC;
    AcsFlags::from_bits_truncate(control).contains(flags & advertised)
}

/// Whether `f` provides the ACS controls `flags`, as Linux's `pci_acs_enabled()` decides, read
/// live from `cfg`.
pub fn acs_enabled(cfg: &impl ConfigSpace, f: &Function, flags: AcsFlags) -> bool {
    if let Some(answer) = acs_quirk(f, flags) {
        return answer;
    }
    // Conventional PCI and PCI-X: a shared bus, anything on it can see everything.
    let Some(port_type) = f.port_type() else {
        return false;
    };
    match port_type {
        // Primary side conventional (PCI-to-PCIe), or excluded by PCIe 3.0 §6.12.1.
        DevicePortType::PciToPcieBridge
        | DevicePortType::PcieToPciBridge
        | DevicePortType::RootComplexEventCollector => false,
        // §6.12.1.1: downstream and root ports implement ACS to say what they isolate.
        DevicePortType::RootPort | DevicePortType::DownstreamPort => {
            acs_flags_enabled(cfg, f, flags)
        }
        // §6.12.1.2: the other types need ACS only as part of a multifunction device.
        DevicePortType::Endpoint
        | DevicePortType::LegacyEndpoint
        | DevicePortType::UpstreamPort
        | DevicePortType::RootComplexIntegratedEndpoint => {
            !is_multifunction(f) || acs_flags_enabled(cfg, f, flags)
        }
        // §6.12.1.3: nothing applies to other single-function types.
        DevicePortType::Reserved(_) => true,
    }
}

/// Whether an upstream bridge takes ownership of requests from below (and so is a DMA alias of
/// everything below it): the rule of [`Topology::dma_aliases`].
fn takes_ownership(bridge: &Function) -> bool {
    matches!(
        bridge.port_type(),
        None | Some(DevicePortType::PcieToPciBridge | DevicePortType::PciToPcieBridge)
    )
}

/// A union-find over function indices (path halving, union by lower root so the representative
/// is deterministic).
struct Partition(Vec<usize>);

impl Partition {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.0[high] = low;
    }
}

/// Computes the isolation groups of every function of `topology`, reading ACS controls from
/// `cfg` now (see the module documentation for the rules).
pub fn compute(cfg: &impl ConfigSpace, topology: &Topology) -> IsolationGroups {
    let functions: Vec<&Function> = topology.functions_sorted().collect();
    let position = |bdf: Bdf| functions.binary_search_by_key(&bdf, |f| f.bdf).ok();
    let n = functions.len();
    let enabled: Vec<bool> = functions
        .iter()
        .map(|f| acs_enabled(cfg, f, REQUIRED_ACS))
        .collect();
    // pci_acs_path_enabled(f, NULL): f and every bridge above it have ACS. Discovery order puts
    // each bridge before what is below it.
    let mut path_isolated = vec![false; n];
    for f in topology.functions() {
        let Some(i) = position(f.bdf) else { continue };
        let above = topology
            .parent(f.bdf)
            .and_then(|p| position(p.bdf))
            .is_none_or(|p| path_isolated[p]);
        path_isolated[i] = enabled[i] && above;
    }

    let mut partition = Partition((0..n).collect());
    for (i, f) in functions.iter().enumerate() {
        // Rule 1: the bridges that alias this function's requests.
        let mut last_alias = i;
        for bridge in topology.upstream_bridges(f.bdf) {
            if takes_ownership(bridge) {
                if let Some(b) = position(bridge.bdf) {
                    partition.union(i, b);
                    last_alias = b;
                }
            }
        }
        // Rule 2: from the last alias up to the first bridge whose path is isolated.
        if let Some(parent) = topology
            .parent(functions[last_alias].bdf)
            .and_then(|p| position(p.bdf))
        {
            if !path_isolated[parent] {
                partition.union(last_alias, parent);
            }
        }
        // Rule 3: the other functions of the slot, when neither side has ACS.
        if is_multifunction(f) && !enabled[i] {
            for (j, other) in functions.iter().enumerate() {
                let same_slot = other.bdf.segment() == f.bdf.segment()
                    && other.bdf.bus() == f.bdf.bus()
                    && other.bdf.device() == f.bdf.device();
                if j != i && same_slot && !enabled[j] {
                    partition.union(i, j);
                }
            }
        }
    }
    // Rule 1, second half: one requester ID, one group (whatever the bridges say).
    let mut seen: Vec<((u16, RequesterId), usize)> = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        for rid in topology.dma_requester_ids(f.bdf).unwrap_or_default() {
            let key = (f.bdf.segment(), rid);
            match seen.binary_search_by_key(&key, |&(k, _)| k) {
                Ok(pos) => partition.union(i, seen[pos].1),
                Err(pos) => seen.insert(pos, (key, i)),
            }
        }
    }

    // Groups in order of their lowest member: functions are sorted, so a root first seen is the
    // lowest member of its group.
    let mut group_of_root: Vec<Option<u32>> = vec![None; n];
    let mut groups: Vec<Group> = Vec::new();
    let mut index = Vec::with_capacity(n);
    for (i, f) in functions.iter().enumerate() {
        let root = partition.find(i);
        let g = *group_of_root[root].get_or_insert_with(|| {
            let id = GroupId(groups.len() as u32);
            groups.push(Group {
                id,
                members: Vec::new(),
                requester_ids: Vec::new(),
            });
            id.0
        });
        let group = &mut groups[g as usize];
        group.members.push(f.bdf);
        group
            .requester_ids
            .extend(topology.dma_requester_ids(f.bdf).unwrap_or_default());
        index.push((f.bdf, g));
    }
    for g in &mut groups {
        g.requester_ids.sort_unstable();
        g.requester_ids.dedup();
    }
    IsolationGroups { groups, index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeConfigSpace;
    use crate::{enumerate, McfgRegion};

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(0, bus, device, function).unwrap()
    }

    #[test]
    fn labels_and_lookup() {
        let fake = FakeConfigSpace::new();
        fake.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00);
        fake.add_endpoint(bdf(0, 3, 0), 0x1234, 0x11e8, 0x00_ff_00);
        let topo = enumerate(&fake, &[McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()]);
        let groups = compute(&fake, &topo);
        assert_eq!(groups.len(), 2);
        let g = groups.group_of(bdf(0, 3, 0)).unwrap();
        assert_eq!(g.id.to_string(), "1");
        assert_eq!(groups.group(g.id), Some(g));
        assert_eq!(g.requester_ids(), [bdf(0, 3, 0).requester_id()]);
        assert!(groups.group_of(bdf(0, 4, 0)).is_none());
        assert!(groups
            .to_string()
            .contains("group 1: 00:03.0 (requester IDs 00:03.0)"));
    }
}
