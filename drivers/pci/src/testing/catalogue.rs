//! The catalogue of the PCI functions QEMU 7.2 emulates on q35, as the guest sees them: IDs,
//! class, header kind, BARs (sizes and types as functions of the device's properties), Expansion
//! ROM, the bus a bridge provides, the PCI Express type and ACS.
//!
//! Every entry comes from QEMU 7.2's device models under `hw/` (named at each entry) and was
//! confirmed with `info pci` and the configuration spaces our kernel captured. It is the one
//! place this knowledge lives: [`FakeConfigSpace::from_qemu_fixture`](super::FakeConfigSpace::from_qemu_fixture)
//! sizes a fixture's BARs from it, and tests-qemu's model of the q35 hierarchy builds from it.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use super::qemu::{parse_size, QemuCommandLine, QemuError, QemuOption};
use crate::bar::BarKind;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// What kind of header a function has, as the guest classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuFunctionKind {
    /// A type-0 function that is not a host bridge.
    Endpoint,
    /// A type-1 (PCI-to-PCI) header.
    Bridge,
    /// A type-0 host bridge: q35's 00:00.0 and each `pxb-pcie`.
    Host,
}

/// The bus a device provides to the devices that name it with `bus=`, and what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvidedBus {
    /// The root bus of a `pxb-pcie`: bridges only, any slot; its number is fixed by `bus_nr`.
    PxbRoot {
        /// `bus_nr=`.
        bus_nr: u8,
    },
    /// Below a root port or a switch downstream port: a PCIe link, only slot 0 is visible.
    PcieLink,
    /// The internal bus of a switch (below its upstream port): any slot.
    SwitchInternal,
    /// A conventional PCI bus. `shpc`: a standard hot-plug controller manages it. `pcie_to_pci`:
    /// the bridge is a PCIe-to-PCI bridge, which issues DMA as (this bus, 00.0); a conventional
    /// PCI bridge issues it under its own BDF.
    Conventional {
        /// A standard hot-plug controller manages the bus.
        shpc: bool,
        /// The bridge is a PCIe-to-PCI bridge.
        pcie_to_pci: bool,
    },
}

/// The PCI Express Device/Port Type QEMU gives a function wherever it sits. PCIe endpoints on a
/// root bus become root-complex integrated endpoints (`pcie_endpoint_cap_common_init`): that
/// depends on the placement, so it is the caller's to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuExpressType {
    /// `pcie-root-port`.
    RootPort,
    /// `x3130-upstream`.
    UpstreamPort,
    /// `xio3130-downstream`.
    DownstreamPort,
    /// `pcie-pci-bridge`.
    PcieToPciBridge,
    /// A PCIe endpoint (`nvme`, `e1000e`).
    Endpoint,
}

/// One BAR of a catalogued function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuBar {
    /// BAR index 0..=5 (a 64-bit BAR at its low index).
    pub index: u8,
    /// Type.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
}

const fn bar(index: u8, kind: BarKind, size: u64) -> QemuBar {
    QemuBar { index, kind, size }
}

const MEM32: BarKind = BarKind::Memory32 {
    prefetchable: false,
};
const MEM32_PREFETCH: BarKind = BarKind::Memory32 { prefetchable: true };
const MEM64: BarKind = BarKind::Memory64 {
    prefetchable: false,
};
const MEM64_PREFETCH: BarKind = BarKind::Memory64 { prefetchable: true };

/// One emulated PCI function type, with the properties of one instance applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDevice {
    /// QEMU's driver name (`-device <driver>`; for the built-ins, the name QEMU gives them).
    pub driver: &'static str,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// 24-bit class code (base, sub-class, programming interface).
    pub class: u32,
    /// Header kind.
    pub kind: QemuFunctionKind,
    /// Implemented BARs, by index.
    pub bars: Vec<QemuBar>,
    /// Expansion ROM size: the `romfile` rounded up to a power of two (`pci_add_option_rom`),
    /// measured with `info pci` on Debian's QEMU 7.2.
    pub rom: Option<u64>,
    /// The bus the device provides (`bus=<its id>` for children).
    pub provides: Option<ProvidedBus>,
    /// `bus-reserve=` of a `pcie-root-port`: bus numbers SeaBIOS keeps below it.
    pub bus_reserve: u8,
    /// PCI Express type, `None` for a conventional PCI function.
    pub express: Option<QemuExpressType>,
    /// Has an ACS extended capability (in QEMU 7.2 only `pcie-root-port`: SV TB RR CR UF DT,
    /// control 0 at reset).
    pub acs: bool,
}

/// A built-in function of q35 (`pc_q35_init`), created without a `-device` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltIn {
    /// Where `pc_q35_init` puts it on bus 0 (devfn), `None` for the first free slot.
    pub devfn: Option<u8>,
    /// Function 0 of a multifunction slot.
    pub multifunction: bool,
    /// The function.
    pub device: QemuDevice,
}

impl QemuDevice {
    fn new(driver: &'static str, vendor: u16, device: u16, class: u32) -> Self {
        Self {
            driver,
            vendor,
            device,
            class,
            kind: QemuFunctionKind::Endpoint,
            bars: Vec::new(),
            rom: None,
            provides: None,
            bus_reserve: 0,
            express: None,
            acs: false,
        }
    }

    fn with_bars(self, bars: Vec<QemuBar>) -> Self {
        Self { bars, ..self }
    }

    fn bridge(
        driver: &'static str,
        vendor: u16,
        device: u16,
        bars: Vec<QemuBar>,
        provides: ProvidedBus,
        express: Option<QemuExpressType>,
    ) -> Self {
        Self {
            kind: QemuFunctionKind::Bridge,
            provides: Some(provides),
            express,
            ..Self::new(driver, vendor, device, 0x06_04_00).with_bars(bars)
        }
    }

    /// hw/net/e1000e.c: MMIO, flash, I/O and MSI-X BARs; ROM `efi-e1000e.rom` (256 KiB).
    fn e1000e() -> Self {
        Self {
            rom: Some(256 * KIB),
            express: Some(QemuExpressType::Endpoint),
            ..Self::new("e1000e", 0x8086, 0x10d3, 0x02_00_00).with_bars(vec![
                bar(0, MEM32, 128 * KIB),
                bar(1, MEM32, 128 * KIB),
                bar(2, BarKind::Io, 32),
                bar(3, MEM32, 16 * KIB),
            ])
        }
    }

    /// hw/display/vga-pci.c: 16 MiB VRAM, 4 KiB MMIO; ROM `vgabios-stdvga.bin` (64 KiB).
    fn std_vga() -> Self {
        Self {
            rom: Some(64 * KIB),
            ..Self::new("VGA", 0x1234, 0x1111, 0x03_00_00).with_bars(vec![
                bar(0, MEM32_PREFETCH, 16 * MIB),
                bar(2, MEM32, 4 * KIB),
            ])
        }
    }

    /// The functions q35 creates by itself, in creation order: the host bridge (`mch`) at 00.0,
    /// the ICH9 LPC, AHCI and SMBus functions at 1f.0/1f.2/1f.3 (hw/isa/lpc_ich9.c,
    /// hw/ide/ich.c, hw/i2c/smbus_ich9.c), then the default VGA and NIC (e1000e) in the first
    /// free slots when `command_line` leaves them in.
    pub fn built_ins(command_line: &QemuCommandLine) -> Vec<BuiltIn> {
        let fixed = |devfn: u8, multifunction: bool, device: Self| BuiltIn {
            devfn: Some(devfn),
            multifunction,
            device,
        };
        let mut out = vec![
            fixed(
                0x00,
                false,
                Self {
                    kind: QemuFunctionKind::Host,
                    ..Self::new("mch", 0x8086, 0x29c0, 0x06_00_00)
                },
            ),
            fixed(
                0xf8,
                true,
                Self::new("ICH9-LPC", 0x8086, 0x2918, 0x06_01_00),
            ),
            fixed(
                0xfa,
                false,
                Self::new("ich9-ahci", 0x8086, 0x2922, 0x01_06_01)
                    .with_bars(vec![bar(4, BarKind::Io, 32), bar(5, MEM32, 4 * KIB)]),
            ),
            fixed(
                0xfb,
                false,
                Self::new("ICH9-SMB", 0x8086, 0x2930, 0x0c_05_00).with_bars(vec![bar(
                    4,
                    BarKind::Io,
                    64,
                )]),
            ),
        ];
        let free = |device: Self| BuiltIn {
            devfn: None,
            multifunction: false,
            device,
        };
        if command_line.vga {
            out.push(free(Self::std_vga()));
        }
        if command_line.default_nic {
            out.push(free(Self::e1000e()));
        }
        out
    }

    /// The function of `-device <driver>,<props>` (`option`); `Ok(None)` for the devices that
    /// are not PCI functions (`intel-iommu`, `isa-debug-exit`). `command_line` provides the
    /// `-object`s that properties name (`memdev=`).
    ///
    /// # Errors
    ///
    /// A [`QemuError`] for a driver that is not catalogued, a property that changes the layout
    /// in a way not modelled, or a property value QEMU would refuse.
    pub fn for_option(
        option: &QemuOption,
        command_line: &QemuCommandLine,
    ) -> Result<Option<Self>, QemuError> {
        let driver = option.driver.as_str();
        let refuse = |keys: &[&str]| match keys.iter().find(|k| option.get(k).is_some()) {
            Some(k) => Err(QemuError::UnmodelledProperty {
                driver: driver.to_string(),
                key: k.to_string(),
            }),
            None => Ok(()),
        };
        let device = match driver {
            // Not PCI functions.
            "intel-iommu" | "isa-debug-exit" => return Ok(None),
            // hw/misc/edu.c: one 1 MiB MMIO BAR.
            "edu" => {
                Self::new("edu", 0x1234, 0x11e8, 0x00_ff_00).with_bars(vec![bar(0, MEM32, MIB)])
            }
            // hw/misc/ivshmem.c: 256-byte register BAR0; BAR2 maps the memory backend (no
            // MSI-X BAR1 in the `-plain` variant).
            "ivshmem-plain" => {
                let memdev = option.get("memdev").ok_or(QemuError::MissingProperty {
                    driver: driver.to_string(),
                    key: "memdev",
                    expected: "id of a memory-backend object",
                })?;
                let size = command_line
                    .object_by_id(memdev)
                    .and_then(|o| o.get("size"))
                    .and_then(parse_size)
                    .ok_or_else(|| QemuError::MissingObject {
                        id: memdev.to_string(),
                    })?;
                if !size.is_power_of_two() {
                    return Err(QemuError::NotPowerOfTwo {
                        what: alloc::format!("memdev {memdev}"),
                        size,
                    });
                }
                Self::new("ivshmem-plain", 0x1af4, 0x1110, 0x05_00_00)
                    .with_bars(vec![bar(0, MEM32, 256), bar(2, MEM64_PREFETCH, size)])
            }
            // hw/nvme/ctrl.c: BAR0 holds registers, doorbells and the MSI-X table; with the
            // default 64 I/O queue pairs and 65 vectors it rounds up to 16 KiB. cmb_size_mb adds
            // the controller memory buffer as BAR2 (pci_register_bar asserts a power of two).
            "nvme" => {
                refuse(&["max_ioqpairs", "num_queues", "msix_qsize", "pmrdev"])?;
                let mut bars = vec![bar(0, MEM64, 16 * KIB)];
                let mb = option.int("cmb_size_mb")?.unwrap_or(0);
                if mb != 0 {
                    let size = mb.saturating_mul(MIB);
                    if !mb.is_power_of_two() {
                        return Err(QemuError::NotPowerOfTwo {
                            what: alloc::format!("cmb_size_mb={mb}"),
                            size,
                        });
                    }
                    bars.push(bar(2, MEM64_PREFETCH, size));
                }
                Self {
                    express: Some(QemuExpressType::Endpoint),
                    ..Self::new("nvme", 0x1b36, 0x0010, 0x01_08_02).with_bars(bars)
                }
            }
            "e1000e" => Self::e1000e(),
            "VGA" => Self::std_vga(),
            // hw/pci-bridge/gen_pcie_root_port.c: an exclusive 4 KiB MSI-X BAR; the only ACS
            // capability of QEMU 7.2 (hw/pci-bridge/pcie_root_port.c).
            "pcie-root-port" => {
                let reserve = option.int("bus-reserve")?.unwrap_or(0);
                Self {
                    bus_reserve: u8::try_from(reserve).map_err(|_| QemuError::BadValue {
                        key: "bus-reserve".into(),
                        value: reserve.to_string(),
                        expected: "0..=255",
                    })?,
                    acs: true,
                    ..Self::bridge(
                        "pcie-root-port",
                        0x1b36,
                        0x000c,
                        vec![bar(0, MEM32, 4 * KIB)],
                        ProvidedBus::PcieLink,
                        Some(QemuExpressType::RootPort),
                    )
                }
            }
            // hw/pci-bridge/xio3130_{upstream,downstream}.c: no BARs, no ACS.
            "x3130-upstream" => Self::bridge(
                "x3130-upstream",
                0x104c,
                0x8232,
                vec![],
                ProvidedBus::SwitchInternal,
                Some(QemuExpressType::UpstreamPort),
            ),
            "xio3130-downstream" => Self::bridge(
                "xio3130-downstream",
                0x104c,
                0x8233,
                vec![],
                ProvidedBus::PcieLink,
                Some(QemuExpressType::DownstreamPort),
            ),
            // hw/pci-bridge/pcie_pci_bridge.c: the SHPC's 256-byte 64-bit BAR, always present.
            "pcie-pci-bridge" => Self::bridge(
                "pcie-pci-bridge",
                0x1b36,
                0x000e,
                vec![bar(0, MEM64, 256)],
                ProvidedBus::Conventional {
                    shpc: true,
                    pcie_to_pci: true,
                },
                Some(QemuExpressType::PcieToPciBridge),
            ),
            // hw/pci-bridge/pci_bridge_dev.c: the SHPC BAR unless shpc=off; conventional PCI.
            "pci-bridge" => {
                refuse(&["bus-reserve"])?;
                let shpc = option.flag("shpc", true)?;
                let bars = if shpc {
                    vec![bar(0, MEM64, 256)]
                } else {
                    vec![]
                };
                Self::bridge(
                    "pci-bridge",
                    0x1b36,
                    0x0001,
                    bars,
                    ProvidedBus::Conventional {
                        shpc,
                        pcie_to_pci: false,
                    },
                    None,
                )
            }
            // hw/pci-bridge/pci_expander_bridge.c: a type-0 host bridge on bus 0, no BARs; its
            // root bus gets number bus_nr.
            "pxb-pcie" => {
                let missing = QemuError::MissingProperty {
                    driver: driver.to_string(),
                    key: "bus_nr",
                    expected: "1..255",
                };
                let nr = option.int("bus_nr")?.ok_or(missing.clone())?;
                let bus_nr = u8::try_from(nr).ok().filter(|n| *n != 0).ok_or(missing)?;
                Self {
                    kind: QemuFunctionKind::Host,
                    provides: Some(ProvidedBus::PxbRoot { bus_nr }),
                    ..Self::new("pxb-pcie", 0x1b36, 0x000b, 0x06_00_00)
                }
            }
            other => {
                return Err(QemuError::UnmodelledDriver {
                    driver: other.to_string(),
                })
            }
        };
        Ok(Some(device))
    }

    /// Every PCI function `command_line` creates: the built-ins, then each `-device` that is a
    /// PCI function, in command-line order.
    ///
    /// # Errors
    ///
    /// The errors of [`QemuDevice::for_option`].
    pub fn all(command_line: &QemuCommandLine) -> Result<Vec<Self>, QemuError> {
        let mut out: Vec<Self> = Self::built_ins(command_line)
            .into_iter()
            .map(|b| b.device)
            .collect();
        for option in command_line.devices() {
            if let Some(device) = Self::for_option(option, command_line)? {
                out.push(device);
            }
        }
        Ok(out)
    }

    /// The size of BAR `index`, if the function implements it.
    pub fn bar_size(&self, index: u8) -> Option<u64> {
        self.bars.iter().find(|b| b.index == index).map(|b| b.size)
    }
}
