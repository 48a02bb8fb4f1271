//! Bus numbers as SeaBIOS's `pci_bios_init_bus` gives them, and the requester ID each function's
//! DMA carries to the root complex (parent module docs: **Bus numbers**, **Requester IDs**).

use super::machine::{BusKind, Machine};
use super::*;
use pci::testing::QemuFunctionKind;

impl Machine {
    /// SeaBIOS `pci_bios_init_bus`: bus 0 depth-first, then each extra root bus.
    pub(super) fn number_buses(&mut self) -> Result<(), String> {
        let mut last = 0u32;
        self.number_below(0, &mut last)?;
        let mut roots: Vec<(u8, usize)> = self
            .buses
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match b.kind {
                BusKind::PxbRoot { bus_nr } => Some((bus_nr, i)),
                _ => None,
            })
            .collect();
        roots.sort_unstable();
        for (bus_nr, bus) in roots {
            if u32::from(bus_nr) <= last {
                return Err(format!(
                    "pxb-pcie bus_nr={bus_nr} is not above bus {last}, the highest number \
                     SeaBIOS already gave out: raise bus_nr"
                ));
            }
            last = u32::from(bus_nr);
            self.number_below(bus, &mut last)?;
        }
        Ok(())
    }

    /// `pci_bios_init_bus_rec`: every type-1 bridge on `bus`, in devfn order, takes the next
    /// number as its secondary bus, then numbers its own subtree.
    fn number_below(&mut self, bus: usize, last: &mut u32) -> Result<(), String> {
        let bridges: Vec<usize> = self.buses[bus]
            .slots
            .values()
            .copied()
            .filter(|&n| self.nodes[n].model.kind == QemuFunctionKind::Bridge)
            .collect();
        for n in bridges {
            let Some(secondary) = self.nodes[n].provides else {
                continue;
            };
            *last += 1;
            let number = u8::try_from(*last).map_err(|_| "more than 255 buses".to_string())?;
            self.buses[secondary].number = Some(number);
            self.number_below(secondary, last)?;
            // The root port's resource-reserve capability keeps buses free for hot-plug.
            let reserve = u32::from(self.nodes[n].model.bus_reserve);
            *last = (*last).max(u32::from(number) + reserve);
        }
        Ok(())
    }

    /// The requester ID the root complex sees for DMA from `node`.
    pub(super) fn requester_id(&self, node: usize) -> Bdf {
        let mut rid = self.bdf(node);
        let mut bus = self.nodes[node].bus;
        while !self.buses[bus].kind.is_root() {
            let bridge = self.buses[bus].owner.expect("a non-root bus has a bridge");
            if let BusKind::Conventional { pcie_to_pci, .. } = self.buses[bus].kind {
                rid = if pcie_to_pci {
                    device0(self.buses[bus].number.unwrap_or(0))
                } else {
                    self.bdf(bridge)
                };
            }
            bus = self.nodes[bridge].bus;
        }
        rid
    }

    pub(super) fn bdf(&self, node: usize) -> Bdf {
        let n = &self.nodes[node];
        Bdf::from_devfn(0, self.buses[n.bus].number.unwrap_or(0), n.devfn)
    }
}
