//! Isolation groups as Linux's `pci_device_group` forms them on the modelled machine, from the
//! catalogue's PCI Express types and ACS capabilities (parent module docs: **Isolation groups**).

use super::machine::{BusKind, Machine};
use super::*;
use pci::testing::QemuExpressType;

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

impl Machine {
    /// The bridge that owns `bus` (`None` for a root bus).
    fn bridge_above(&self, bus: usize) -> Option<usize> {
        (!self.buses[bus].kind.is_root())
            .then(|| self.buses[bus].owner)
            .flatten()
    }

    /// The PCI Express type QEMU 7.2 gives the node (the catalogue's, with PCIe endpoints on a
    /// root bus turned into RC integrated endpoints as QEMU's `pcie_endpoint_cap_common_init`
    /// does), `None` for a conventional PCI function.
    fn express_type(&self, node: usize) -> Option<Express> {
        let n = &self.nodes[node];
        let on_root = self.buses[n.bus].kind.is_root();
        Some(match n.model.express? {
            QemuExpressType::RootPort => Express::RootPort,
            QemuExpressType::UpstreamPort => Express::UpstreamPort,
            QemuExpressType::DownstreamPort => Express::DownstreamPort,
            QemuExpressType::PcieToPciBridge => Express::PcieToPciBridge,
            QemuExpressType::Endpoint if on_root => Express::IntegratedEndpoint,
            QemuExpressType::Endpoint => Express::Endpoint,
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
            // The catalogue's ACS capability (QEMU 7.2: root ports only); controls 0 unless the
            // kernel enabled them, which it does on root ports exactly when `isolated`.
            Some(Express::RootPort) => self.nodes[node].model.acs && isolated,
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
    pub(super) fn groups(&self, isolated: bool) -> Vec<usize> {
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
}
