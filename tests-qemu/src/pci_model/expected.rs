//! What the kernel must enumerate: every modelled function in enumeration order, with its
//! number, parent, BARs, requester ID and group.

use super::machine::{BusKind, Machine};
use super::*;
use pci::testing::{QemuCommandLine, QemuFunctionKind};

impl Machine {
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
                    kind: n.model.kind.into(),
                    parent: (!bus.kind.is_root()).then(|| self.bdf(bus.owner.unwrap())),
                    secondary: n
                        .provides
                        .filter(|_| n.model.kind == QemuFunctionKind::Bridge)
                        .and_then(|b| self.buses[b].number),
                    bars: n.model.bars.iter().map(Bar::from).collect(),
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
    let args = topology.qemu_args();
    let cl = QemuCommandLine::parse_args(args.iter().map(String::as_str))
        .map_err(|e| format!("{e} (tests-qemu's pci_model)"))?;
    let mut machine = Machine::build(&cl)?;
    machine.number_buses()?;
    Ok(machine.functions(topology.iommu.is_some()))
}
