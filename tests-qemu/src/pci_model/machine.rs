//! The q35 machine QEMU 7.2 builds from the command line: the built-ins, the placement of every
//! `-device` on its bus with the bus rules the guest needs to see it, and the functions the
//! kernel must enumerate (parent module docs: **Built-ins**, **Placement**, **Bus rules**).

use super::*;

use pci::testing::parse_addr;

use pci::testing::{ProvidedBus, QemuCommandLine, QemuDevice, QemuFunctionKind};

/// A bus of the machine, and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BusKind {
    /// `pcie.0`.
    Pcie0,
    /// The root bus of a `pxb-pcie`: bridges only, any slot; its number is fixed by `bus_nr`.
    PxbRoot { bus_nr: u8 },
    /// Below a root port or a switch downstream port: a PCIe link, only slot 0 is visible.
    PcieLink,
    /// The internal bus of a switch (below its upstream port): any slot.
    SwitchInternal,
    /// A conventional PCI bus (see [`ProvidedBus::Conventional`]).
    Conventional { shpc: bool, pcie_to_pci: bool },
}

impl BusKind {
    pub(super) fn is_root(self) -> bool {
        matches!(self, Self::Pcie0 | Self::PxbRoot { .. })
    }
}

impl From<ProvidedBus> for BusKind {
    fn from(bus: ProvidedBus) -> Self {
        match bus {
            ProvidedBus::PxbRoot { bus_nr } => Self::PxbRoot { bus_nr },
            ProvidedBus::PcieLink => Self::PcieLink,
            ProvidedBus::SwitchInternal => Self::SwitchInternal,
            ProvidedBus::Conventional { shpc, pcie_to_pci } => {
                Self::Conventional { shpc, pcie_to_pci }
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Bus {
    /// The name `bus=` refers to.
    pub(super) name: Option<String>,
    pub(super) kind: BusKind,
    /// The device that provides the bus (a bridge, or the pxb-pcie of a root bus).
    pub(super) owner: Option<usize>,
    /// Inside a pxb-pcie hierarchy.
    pub(super) under_pxb: bool,
    /// devfn -> node.
    pub(super) slots: BTreeMap<u8, usize>,
    /// Assigned by [`Machine::number_buses`].
    pub(super) number: Option<u8>,
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) origin: String,
    /// The catalogue's entry for the function.
    pub(super) model: QemuDevice,
    pub(super) bus: usize,
    pub(super) devfn: u8,
    pub(super) multifunction: bool,
    /// The bus this device provides.
    pub(super) provides: Option<usize>,
}

pub(super) struct Machine {
    pub(super) buses: Vec<Bus>,
    pub(super) nodes: Vec<Node>,
}

impl Machine {
    pub(super) fn build(cl: &QemuCommandLine) -> Result<Self, String> {
        let mut m = Self {
            buses: vec![Bus {
                name: Some("pcie.0".into()),
                kind: BusKind::Pcie0,
                owner: None,
                under_pxb: false,
                slots: BTreeMap::new(),
                number: Some(0),
            }],
            nodes: Vec::new(),
        };
        // pc_q35_init: the host bridge and the ICH9 functions at fixed addresses, then the
        // default VGA and NIC in the first free slots.
        for built_in in QemuDevice::built_ins(cl) {
            let d = &built_in.device;
            let origin = match built_in.devfn {
                Some(_) => format!("built-in {:04x}:{:04x}", d.vendor, d.device),
                None if d.driver == "VGA" => "built-in VGA".into(),
                None => "built-in NIC".into(),
            };
            m.attach(
                origin,
                None,
                built_in.device,
                0,
                built_in.devfn,
                built_in.multifunction,
            )?;
        }

        for option in cl.devices() {
            let spec = option.spec();
            let fail = |e: String| format!("`-device {spec}`: {e}");
            let Some(model) =
                QemuDevice::for_option(option, cl).map_err(|e| fail(e.to_string()))?
            else {
                continue;
            };
            let bus = match option.get("bus") {
                Some(name) => m
                    .buses
                    .iter()
                    .position(|b| b.name.as_deref() == Some(name))
                    .ok_or_else(|| fail(format!("no bus named `{name}` defined before it")))?,
                // qbus_find_recursive visits the newest sysbus device first: the last pxb-pcie's
                // root bus wins over pcie.0.
                None => m
                    .buses
                    .iter()
                    .rposition(|b| matches!(b.kind, BusKind::PxbRoot { .. }))
                    .unwrap_or(0),
            };
            let devfn = match option.get("addr") {
                Some(a) => Some(
                    parse_addr(a)
                        .ok_or_else(|| fail(format!("addr={a} is not slot[.function]")))?,
                ),
                None => None,
            };
            let mf = option
                .flag("multifunction", false)
                .map_err(|e| fail(e.to_string()))?;
            m.attach(
                spec.clone(),
                option.get("id").map(str::to_string),
                model,
                bus,
                devfn,
                mf,
            )
            .map_err(fail)?;
        }
        m.check_functions()?;
        Ok(m)
    }

    /// Places one device as QEMU's `do_pci_register_device` does, with the bus rules the guest
    /// needs to see it.
    fn attach(
        &mut self,
        origin: String,
        id: Option<String>,
        model: QemuDevice,
        bus: usize,
        devfn: Option<u8>,
        multifunction: bool,
    ) -> Result<(), String> {
        let kind = self.buses[bus].kind;
        let bus_name = self.buses[bus].name.clone().unwrap_or_default();
        let devfn = match devfn {
            Some(d) => d,
            None => (0..32u8)
                .map(|slot| slot << 3)
                .find(|d| !self.buses[bus].slots.contains_key(d))
                .ok_or_else(|| format!("bus {bus_name} is full"))?,
        };
        if let Some(&other) = self.buses[bus].slots.get(&devfn) {
            return Err(format!(
                "{}.{} on bus {bus_name} is already used by {}",
                devfn >> 3,
                devfn & 7,
                self.nodes[other].origin
            ));
        }
        let slot = devfn >> 3;
        match kind {
            BusKind::PcieLink if slot != 0 => {
                return Err(format!(
                    "slot {slot} below PCIe port {bus_name} is invisible to the guest (only \
                     slot 0 is): drop addr= or use a switch"
                ))
            }
            BusKind::PxbRoot { .. } if model.kind != QemuFunctionKind::Bridge => {
                return Err(format!(
                    "QEMU only plugs bridges into pxb-pcie bus {bus_name}: put a pcie-root-port \
                     there and the device below it (and give bus= explicitly)"
                ))
            }
            BusKind::Conventional { shpc: true, .. } if self.buses[bus].under_pxb && slot == 0 => {
                return Err(format!(
                    "QEMU refuses slot 0 of the hot-plug controller of {bus_name} inside a \
                     pxb-pcie hierarchy: give addr=1 or above"
                ))
            }
            _ => {}
        }
        if matches!(model.provides, Some(ProvidedBus::PxbRoot { .. })) && kind != BusKind::Pcie0 {
            return Err("pxb-pcie must sit on pcie.0: add bus=pcie.0".into());
        }
        let node = self.nodes.len();
        let provides = model.provides.map(BusKind::from).map(|kind| {
            let number = match kind {
                BusKind::PxbRoot { bus_nr } => Some(bus_nr),
                _ => None,
            };
            self.buses.push(Bus {
                name: id,
                kind,
                owner: Some(node),
                under_pxb: self.buses[bus].under_pxb || matches!(kind, BusKind::PxbRoot { .. }),
                slots: BTreeMap::new(),
                number,
            });
            self.buses.len() - 1
        });
        self.buses[bus].slots.insert(devfn, node);
        self.nodes.push(Node {
            origin,
            model,
            bus,
            devfn,
            multifunction,
            provides,
        });
        Ok(())
    }

    /// Functions other than 0 need a `multifunction=on` function 0 in their slot (QEMU refuses
    /// the opposite order, and firmware and guests never look past a missing function 0).
    fn check_functions(&self) -> Result<(), String> {
        for bus in &self.buses {
            for (&devfn, &n) in &bus.slots {
                if devfn & 7 == 0 {
                    continue;
                }
                match bus.slots.get(&(devfn & !7)).map(|&f0| &self.nodes[f0]) {
                    Some(f0) if f0.multifunction => {}
                    Some(f0) => {
                        return Err(format!(
                            "`{}` needs multifunction=on for `{}` in the same slot",
                            f0.origin, self.nodes[n].origin
                        ))
                    }
                    None => {
                        return Err(format!(
                            "`{}` has no function 0 in its slot: the guest cannot see it",
                            self.nodes[n].origin
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}
