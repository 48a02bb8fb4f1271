//! What enumeration records of one function: class code, PCI Express and bridge registers,
//! BARs, Expansion ROM and capabilities.

use super::*;

/// The three class-code bytes (PCI Code and ID Assignment 1.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClassCode {
    /// Base class (e.g. 0x06 bridge).
    pub base: u8,
    /// Sub-class (e.g. 0x04 PCI-to-PCI bridge).
    pub sub: u8,
    /// Programming interface.
    pub prog_if: u8,
}

impl ClassCode {
    /// Base class 0x06, sub-class 0x00: host bridge.
    pub const fn is_host_bridge(self) -> bool {
        self.base == 0x06 && self.sub == 0x00
    }
}

/// What the PCI Express capability says about a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcieInfo {
    /// Offset of the PCI Express capability.
    pub offset: u8,
    /// Capability version.
    pub version: u8,
    /// Device/Port Type.
    pub port_type: DevicePortType,
    /// Slot Implemented (ports only).
    pub slot_implemented: bool,
}

/// An address window a bridge forwards downstream; `limit` is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Last address.
    pub limit: u64,
}

impl Window {
    pub(super) fn new(base: u64, limit: u64) -> Option<Self> {
        (base <= limit).then_some(Self { base, limit })
    }
}

/// Type-1 header contents of a bridge (PCI-to-PCI Bridge 1.2 §3.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BridgeInfo {
    /// Primary Bus Number.
    pub primary: u8,
    /// Secondary Bus Number.
    pub secondary: u8,
    /// Subordinate Bus Number.
    pub subordinate: u8,
    /// I/O window, if enabled (base <= limit).
    pub io_window: Option<Window>,
    /// Non-prefetchable memory window, if enabled.
    pub memory_window: Option<Window>,
    /// Prefetchable memory window, if enabled.
    pub prefetchable_window: Option<Window>,
    /// Whether the prefetchable window registers are the 64-bit kind (upper 32 bits in the
    /// Prefetchable Base/Limit Upper 32 Bits registers).
    pub prefetchable_64bit: bool,
    /// Bridge Control register.
    pub control: BridgeControl,
}

impl BridgeInfo {
    pub(super) fn read(cfg: &impl ConfigSpace, bdf: Bdf) -> Self {
        let width_64 = |reg: u16| reg & bridge::WINDOW_WIDTH_MASK == 1;
        let io_base = cfg.read8(bdf, bridge::IO_BASE);
        let io_limit = cfg.read8(bdf, bridge::IO_LIMIT);
        let (io_base_hi, io_limit_hi) = if width_64(u16::from(io_base)) {
            (
                cfg.read16(bdf, bridge::IO_BASE_UPPER),
                cfg.read16(bdf, bridge::IO_LIMIT_UPPER),
            )
        } else {
            (0, 0)
        };
        let io = |upper: u16, reg: u8| {
            u64::from(upper) << 16
                | u64::from(reg & bridge::IO_WINDOW_ADDRESS_MASK) << bridge::IO_WINDOW_SHIFT
        };
        let io_window = Window::new(
            io(io_base_hi, io_base),
            io(io_limit_hi, io_limit) | bridge::IO_WINDOW_GRANULE_MASK,
        );
        let memory = |upper: u32, reg: u16| {
            u64::from(upper) << 32
                | u64::from(reg & bridge::MEMORY_WINDOW_ADDRESS_MASK) << bridge::MEMORY_WINDOW_SHIFT
        };
        let mem_base = cfg.read16(bdf, bridge::MEMORY_BASE);
        let mem_limit = cfg.read16(bdf, bridge::MEMORY_LIMIT);
        let memory_window = Window::new(
            memory(0, mem_base),
            memory(0, mem_limit) | bridge::MEMORY_WINDOW_GRANULE_MASK,
        );
        let pref_base = cfg.read16(bdf, bridge::PREFETCHABLE_MEMORY_BASE);
        let pref_limit = cfg.read16(bdf, bridge::PREFETCHABLE_MEMORY_LIMIT);
        let (pref_base_hi, pref_limit_hi) = if width_64(pref_base) {
            (
                cfg.read32(bdf, bridge::PREFETCHABLE_BASE_UPPER),
                cfg.read32(bdf, bridge::PREFETCHABLE_LIMIT_UPPER),
            )
        } else {
            (0, 0)
        };
        let prefetchable_window = Window::new(
            memory(pref_base_hi, pref_base),
            memory(pref_limit_hi, pref_limit) | bridge::MEMORY_WINDOW_GRANULE_MASK,
        );
        Self {
            primary: cfg.read8(bdf, bridge::PRIMARY_BUS),
            secondary: cfg.read8(bdf, bridge::SECONDARY_BUS),
            subordinate: cfg.read8(bdf, bridge::SUBORDINATE_BUS),
            io_window,
            memory_window,
            prefetchable_window,
            prefetchable_64bit: width_64(pref_base),
            control: BridgeControl::from_bits_retain(cfg.read16(bdf, bridge::BRIDGE_CONTROL)),
        }
    }
}

/// One function found by enumeration: a snapshot of its identity and resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code.
    pub class: ClassCode,
    /// Header layout.
    pub layout: HeaderLayout,
    /// Header Type bit 7 (read from this function).
    pub multifunction: bool,
    /// Command register at enumeration time.
    pub command: Command,
    /// PCI Express capability, absent for conventional PCI functions.
    pub pcie: Option<PcieInfo>,
    /// Capability lists.
    pub capabilities: Capabilities,
    /// Implemented BARs (empty when enumeration did not probe BARs).
    pub bars: Vec<Bar>,
    /// The Expansion ROM BAR, if implemented (`None` when enumeration did not probe BARs).
    pub expansion_rom: Option<ExpansionRom>,
    /// Bridge registers, for type-1 functions.
    pub bridge: Option<BridgeInfo>,
    /// Index of the upstream bridge in [`Topology::functions`].
    pub(super) parent: Option<usize>,
    /// The root bus of the hierarchy the function belongs to.
    pub(super) root_bus: u8,
}

impl Function {
    /// The PCIe Device/Port Type, if the function is PCI Express.
    pub fn port_type(&self) -> Option<DevicePortType> {
        self.pcie.map(|p| p.port_type)
    }

    /// Offset of the ACS extended capability, if present and wholly inside configuration
    /// space (a capability header at 0xffc cannot hold the ACS registers).
    pub fn acs_offset(&self) -> Option<u16> {
        self.capabilities
            .find_extended(ExtendedCapabilityId::ACS)
            .map(|c| c.offset)
            .filter(|&offset| offset + crate::regs::acs::CONTROL + 2 <= crate::CONFIG_SPACE_SIZE)
    }

    /// The BAR in slot `index`, if implemented.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The root bus of the function's hierarchy.
    pub fn root_bus(&self) -> u8 {
        self.root_bus
    }

    /// A friendly name for known (mostly QEMU) devices.
    pub fn name(&self) -> Option<&'static str> {
        crate::names::device_name(self.vendor_id, self.device_id)
    }
}
