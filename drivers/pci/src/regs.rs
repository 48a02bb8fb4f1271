//! Configuration-space register layouts, declared once and read by name everywhere else.
//!
//! Offsets and bit definitions come from PCI Local Bus 3.0 §6.1-6.2 (type-0 header, Command,
//! Status, BARs), PCI-to-PCI Bridge Architecture 1.2 §3.2 (type-1 header) and PCIe Base 4.0
//! §7.5 (header as PCIe defines it, PCI Express capability) and §7.6-7.7 (extended capabilities,
//! ACS).

use bitflags::bitflags;

/// Registers common to every header layout (PCI Local Bus 3.0 §6.1, PCIe Base 4.0 §7.5.1.1).
pub mod header {
    /// Vendor ID (16 bits); 0xffff means "no function here".
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits), see [`super::Command`].
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits), see [`super::Status`].
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface byte of the class code.
    pub const CLASS_PROG_IF: u16 = 0x09;
    /// Sub-class byte of the class code.
    pub const CLASS_SUBCLASS: u16 = 0x0a;
    /// Base class byte of the class code.
    pub const CLASS_BASE: u16 = 0x0b;
    /// Cache Line Size (8 bits).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Latency Timer (8 bits).
    pub const LATENCY_TIMER: u16 = 0x0d;
    /// Header Type (8 bits), see [`super::HeaderType`].
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First Base Address Register.
    pub const BAR0: u16 = 0x10;
    /// Capabilities Pointer (8 bits, low 2 bits reserved), valid when Status.CAPABILITIES_LIST.
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt Line (8 bits).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt Pin (8 bits).
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// Number of BARs in a type-0 header.
    pub const TYPE0_BAR_COUNT: u8 = 6;
    /// Number of BARs in a type-1 (bridge) header.
    pub const TYPE1_BAR_COUNT: u8 = 2;
    /// Subsystem Vendor ID (type 0 only).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (type 0 only).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Expansion ROM Base Address of a type-0 header (a type-1 header has it at
    /// [`super::bridge::EXPANSION_ROM`]), see [`super::rom_bits`].
    pub const EXPANSION_ROM: u16 = 0x30;
    /// Offset of BAR `index`.
    pub const fn bar(index: u8) -> u16 {
        BAR0 + 4 * index as u16
    }
    /// End of the standard header: capabilities live at or above this offset.
    pub const HEADER_END: u16 = 0x40;
    /// Capability pointers are dword aligned: the low two bits are reserved and masked
    /// (PCI Local Bus 3.0 §6.7).
    pub const CAPABILITY_POINTER_MASK: u8 = 0xfc;
    /// Offset of the Next Capability Pointer within a standard capability header.
    pub const CAPABILITY_NEXT: u16 = 1;
}

/// Type-1 (PCI-to-PCI bridge) header registers (PCI-to-PCI Bridge 1.2 §3.2, PCIe Base 4.0
/// §7.5.1.3).
pub mod bridge {
    /// Primary Bus Number: the bus the bridge sits on.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Secondary Bus Number: the bus directly below the bridge.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Subordinate Bus Number: the highest bus number below the bridge.
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    /// Secondary Latency Timer.
    pub const SECONDARY_LATENCY_TIMER: u16 = 0x1b;
    /// I/O Base (8 bits; bits 7:4 = address bits 15:12, bits 3:0 = 16/32-bit decode).
    pub const IO_BASE: u16 = 0x1c;
    /// I/O Limit (8 bits).
    pub const IO_LIMIT: u16 = 0x1d;
    /// Secondary Status (16 bits, RW1C error bits like Status).
    pub const SECONDARY_STATUS: u16 = 0x1e;
    /// Memory Base (16 bits; bits 15:4 = address bits 31:20).
    pub const MEMORY_BASE: u16 = 0x20;
    /// Memory Limit (16 bits).
    pub const MEMORY_LIMIT: u16 = 0x22;
    /// Prefetchable Memory Base (16 bits; bits 3:0 = 32/64-bit decode).
    pub const PREFETCHABLE_MEMORY_BASE: u16 = 0x24;
    /// Prefetchable Memory Limit (16 bits).
    pub const PREFETCHABLE_MEMORY_LIMIT: u16 = 0x26;
    /// Prefetchable Base Upper 32 Bits.
    pub const PREFETCHABLE_BASE_UPPER: u16 = 0x28;
    /// Prefetchable Limit Upper 32 Bits.
    pub const PREFETCHABLE_LIMIT_UPPER: u16 = 0x2c;
    /// I/O Base Upper 16 Bits.
    pub const IO_BASE_UPPER: u16 = 0x30;
    /// I/O Limit Upper 16 Bits.
    pub const IO_LIMIT_UPPER: u16 = 0x32;
    /// Expansion ROM Base Address of a type-1 header.
    pub const EXPANSION_ROM: u16 = 0x38;
    /// Bridge Control (16 bits), see [`super::BridgeControl`].
    pub const BRIDGE_CONTROL: u16 = 0x3e;
    /// Bits 3:0 of I/O Base/Limit and Prefetchable Base/Limit: 1 = 32/64-bit addressing.
    pub const WINDOW_WIDTH_MASK: u16 = 0xf;
    /// I/O Base/Limit bits 7:4 hold address bits 15:12 (4 KiB granularity).
    pub const IO_WINDOW_ADDRESS_MASK: u8 = 0xf0;
    /// Shift from the I/O Base/Limit register to the address.
    pub const IO_WINDOW_SHIFT: u32 = 8;
    /// Low address bits implied set in an I/O limit.
    pub const IO_WINDOW_GRANULE_MASK: u64 = 0xfff;
    /// Memory Base/Limit bits 15:4 hold address bits 31:20 (1 MiB granularity).
    pub const MEMORY_WINDOW_ADDRESS_MASK: u16 = 0xfff0;
    /// Shift from the Memory Base/Limit register to the address.
    pub const MEMORY_WINDOW_SHIFT: u32 = 16;
    /// Low address bits implied set in a memory limit.
    pub const MEMORY_WINDOW_GRANULE_MASK: u64 = 0xf_ffff;
}

bitflags! {
    /// Command register (PCI Local Bus 3.0 §6.2.2, PCIe Base 4.0 §7.5.1.1.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Command: u16 {
        /// I/O Space: the function decodes its I/O BARs.
        const IO_SPACE = 1 << 0;
        /// Memory Space: the function decodes its memory BARs.
        const MEMORY_SPACE = 1 << 1;
        /// Bus Master: the function may issue memory requests (DMA, MSI).
        const BUS_MASTER = 1 << 2;
        /// Special Cycle Enable (conventional PCI only).
        const SPECIAL_CYCLES = 1 << 3;
        /// Memory Write and Invalidate (conventional PCI only).
        const MEMORY_WRITE_AND_INVALIDATE = 1 << 4;
        /// VGA Palette Snoop (conventional PCI only).
        const VGA_PALETTE_SNOOP = 1 << 5;
        /// Parity Error Response.
        const PARITY_ERROR_RESPONSE = 1 << 6;
        /// IDSEL Stepping/Wait Cycle Control (hardwired 0 in PCI 3.0).
        const IDSEL_STEPPING = 1 << 7;
        /// SERR# Enable.
        const SERR_ENABLE = 1 << 8;
        /// Fast Back-to-Back Enable (conventional PCI only).
        const FAST_BACK_TO_BACK = 1 << 9;
        /// Interrupt Disable: the function may not assert INTx.
        const INTERRUPT_DISABLE = 1 << 10;
    }
}

impl Command {
    /// Both address-decode enables; cleared around BAR sizing.
    pub const DECODE: Self = Self::IO_SPACE.union(Self::MEMORY_SPACE);
}

bitflags! {
    /// Status register (PCI Local Bus 3.0 §6.2.3, PCIe Base 4.0 §7.5.1.1.4).
    ///
    /// The error bits are RW1C (write 1 to clear): a write of the whole register with the value
    /// just read clears every error that was pending. Write only the bits you mean to clear.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Status: u16 {
        /// Immediate Readiness (PCIe Base 4.0).
        const IMMEDIATE_READINESS = 1 << 0;
        /// Interrupt Status: an INTx is pending.
        const INTERRUPT_STATUS = 1 << 3;
        /// Capabilities List: the Capabilities Pointer is valid.
        const CAPABILITIES_LIST = 1 << 4;
        /// 66 MHz Capable (conventional PCI only).
        const MHZ_66_CAPABLE = 1 << 5;
        /// Fast Back-to-Back Transactions Capable (conventional PCI only).
        const FAST_BACK_TO_BACK_CAPABLE = 1 << 7;
        /// Master Data Parity Error (RW1C).
        const MASTER_DATA_PARITY_ERROR = 1 << 8;
        /// DEVSEL timing, bit 0 (conventional PCI only).
        const DEVSEL_TIMING_0 = 1 << 9;
        /// DEVSEL timing, bit 1 (conventional PCI only).
        const DEVSEL_TIMING_1 = 1 << 10;
        /// Signaled Target Abort (RW1C).
        const SIGNALED_TARGET_ABORT = 1 << 11;
        /// Received Target Abort (RW1C).
        const RECEIVED_TARGET_ABORT = 1 << 12;
        /// Received Master Abort (RW1C).
        const RECEIVED_MASTER_ABORT = 1 << 13;
        /// Signaled System Error (RW1C).
        const SIGNALED_SYSTEM_ERROR = 1 << 14;
        /// Detected Parity Error (RW1C).
        const DETECTED_PARITY_ERROR = 1 << 15;
    }
}

impl Status {
    /// The write-1-to-clear bits.
    pub const RW1C: Self = Self::MASTER_DATA_PARITY_ERROR
        .union(Self::SIGNALED_TARGET_ABORT)
        .union(Self::RECEIVED_TARGET_ABORT)
        .union(Self::RECEIVED_MASTER_ABORT)
        .union(Self::SIGNALED_SYSTEM_ERROR)
        .union(Self::DETECTED_PARITY_ERROR);
}

/// Header Type register (PCI Local Bus 3.0 §6.2.1, PCIe Base 4.0 §7.5.1.1.9).
pub struct HeaderType;

impl HeaderType {
    /// Bit 7: the device has functions other than 0.
    pub const MULTI_FUNCTION: u8 = 1 << 7;
    /// Bits 6:0: the layout of bytes 0x10-0x3f.
    pub const LAYOUT_MASK: u8 = 0x7f;
}

/// The layout of bytes 0x10-0x3f, from Header Type bits 6:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderLayout {
    /// Type 0: an endpoint (or a host bridge, or QEMU's `pxb-pcie`), six BARs.
    Endpoint,
    /// Type 1: a PCI-to-PCI bridge (also every PCIe port), two BARs and bus numbers.
    PciBridge,
    /// Type 2: a CardBus bridge (not supported beyond identification).
    CardBusBridge,
    /// A reserved layout value.
    Reserved(u8),
}

impl HeaderLayout {
    /// Decodes Header Type bits 6:0.
    pub const fn from_header_type(header_type: u8) -> Self {
        match header_type & HeaderType::LAYOUT_MASK {
            0 => Self::Endpoint,
            1 => Self::PciBridge,
            2 => Self::CardBusBridge,
            other => Self::Reserved(other),
        }
    }

    /// How many BAR slots the layout has.
    pub const fn bar_count(self) -> u8 {
        match self {
            Self::Endpoint => header::TYPE0_BAR_COUNT,
            Self::PciBridge => header::TYPE1_BAR_COUNT,
            Self::CardBusBridge | Self::Reserved(_) => 0,
        }
    }

    /// Offset of the Expansion ROM Base Address register: 0x30 in a type-0 header, 0x38 in a
    /// type-1 header (PCI-to-PCI Bridge 1.2 §3.2.5.16), none for the other layouts.
    pub const fn expansion_rom_offset(self) -> Option<u16> {
        match self {
            Self::Endpoint => Some(header::EXPANSION_ROM),
            Self::PciBridge => Some(bridge::EXPANSION_ROM),
            Self::CardBusBridge | Self::Reserved(_) => None,
        }
    }
}

bitflags! {
    /// Bridge Control register (PCI-to-PCI Bridge 1.2 §3.2.5.18, PCIe Base 4.0 §7.5.1.3.13).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct BridgeControl: u16 {
        /// Parity Error Response Enable.
        const PARITY_ERROR_RESPONSE = 1 << 0;
        /// SERR# Enable.
        const SERR_ENABLE = 1 << 1;
        /// ISA Enable.
        const ISA_ENABLE = 1 << 2;
        /// VGA Enable.
        const VGA_ENABLE = 1 << 3;
        /// VGA 16-bit decode.
        const VGA_16BIT_DECODE = 1 << 4;
        /// Master Abort Mode.
        const MASTER_ABORT_MODE = 1 << 5;
        /// Secondary Bus Reset: while set, the secondary interface is held in reset (hot reset
        /// for PCIe). Everything below loses its Command register and BARs.
        const SECONDARY_BUS_RESET = 1 << 6;
        /// Fast Back-to-Back Enable.
        const FAST_BACK_TO_BACK = 1 << 7;
    }
}

/// Base Address Register bits (PCI Local Bus 3.0 §6.2.5.1).
pub mod bar_bits {
    /// Bit 0: 1 = I/O space BAR, 0 = memory space BAR.
    pub const IO_SPACE: u32 = 1 << 0;
    /// Bits 2:1 of a memory BAR: the decoder width.
    pub const MEMORY_TYPE_MASK: u32 = 0b11 << 1;
    /// Memory type 00: 32-bit decoder anywhere below 4 GiB.
    pub const MEMORY_TYPE_32: u32 = 0b00 << 1;
    /// Memory type 01: below 1 MiB (reserved since PCI 3.0).
    pub const MEMORY_TYPE_BELOW_1M: u32 = 0b01 << 1;
    /// Memory type 10: 64-bit decoder, the next BAR holds the upper 32 bits.
    pub const MEMORY_TYPE_64: u32 = 0b10 << 1;
    /// Bit 3 of a memory BAR: prefetchable.
    pub const PREFETCHABLE: u32 = 1 << 3;
    /// Address bits of a memory BAR.
    pub const MEMORY_ADDRESS_MASK: u32 = !0xf;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
}

/// Expansion ROM Base Address Register bits (PCI Local Bus 3.0 §6.2.5.2): a 32-bit memory
/// decoder of at least 2 KiB, sized like a BAR with the enable bit clear.
pub mod rom_bits {
    /// Bit 0: Expansion ROM Enable (the ROM decodes only with this and Command.Memory Space).
    pub const ENABLE: u32 = 1 << 0;
    /// Bits 31:11: the ROM's address (bits 10:1 are reserved).
    pub const ADDRESS_MASK: u32 = 0xffff_f800;
}

/// A standard capability ID (PCI Code and ID Assignment 1.11 §2, listed in PCI Local Bus 3.0
/// §6.7 and PCIe Base 4.0 §7.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapabilityId(pub u8);

impl CapabilityId {
    /// PCI Power Management.
    pub const POWER_MANAGEMENT: Self = Self(0x01);
    /// AGP.
    pub const AGP: Self = Self(0x02);
    /// Vital Product Data.
    pub const VPD: Self = Self(0x03);
    /// Slot Identification (bridges).
    pub const SLOT_ID: Self = Self(0x04);
    /// Message Signaled Interrupts.
    pub const MSI: Self = Self(0x05);
    /// CompactPCI Hot Swap.
    pub const COMPACT_PCI_HOT_SWAP: Self = Self(0x06);
    /// PCI-X.
    pub const PCI_X: Self = Self(0x07);
    /// HyperTransport.
    pub const HYPERTRANSPORT: Self = Self(0x08);
    /// Vendor Specific.
    pub const VENDOR_SPECIFIC: Self = Self(0x09);
    /// Debug port.
    pub const DEBUG_PORT: Self = Self(0x0a);
    /// CompactPCI central resource control.
    pub const COMPACT_PCI_CRC: Self = Self(0x0b);
    /// PCI Standard Hot-Plug Controller (SHPC).
    pub const HOT_PLUG: Self = Self(0x0c);
    /// Bridge Subsystem Vendor ID.
    pub const BRIDGE_SUBSYSTEM_VENDOR_ID: Self = Self(0x0d);
    /// AGP 8x.
    pub const AGP_8X: Self = Self(0x0e);
    /// Secure Device.
    pub const SECURE_DEVICE: Self = Self(0x0f);
    /// PCI Express (PCIe Base 4.0 §7.5.3).
    pub const PCI_EXPRESS: Self = Self(0x10);
    /// MSI-X.
    pub const MSI_X: Self = Self(0x11);
    /// Serial ATA Data/Index Configuration.
    pub const SATA: Self = Self(0x12);
    /// Advanced Features (conventional PCI FLR).
    pub const ADVANCED_FEATURES: Self = Self(0x13);
    /// Enhanced Allocation.
    pub const ENHANCED_ALLOCATION: Self = Self(0x14);
    /// Flattening Portal Bridge.
    pub const FLATTENING_PORTAL_BRIDGE: Self = Self(0x15);

    /// The short name `lspci` uses, if the ID is known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x01 => "PM",
            0x02 => "AGP",
            0x03 => "VPD",
            0x04 => "SlotID",
            0x05 => "MSI",
            0x06 => "CHSwap",
            0x07 => "PCI-X",
            0x08 => "HT",
            0x09 => "Vendor",
            0x0a => "Debug",
            0x0b => "CCRC",
            0x0c => "SHPC",
            0x0d => "SSVID",
            0x0e => "AGP8x",
            0x0f => "Secure",
            0x10 => "PCIe",
            0x11 => "MSI-X",
            0x12 => "SATA",
            0x13 => "AF",
            0x14 => "EA",
            0x15 => "FPB",
            _ => return None,
        })
    }
}

/// An extended capability ID (PCIe Base 4.0 §7.6.3 and the capability sections it lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExtendedCapabilityId(pub u16);

impl ExtendedCapabilityId {
    /// Advanced Error Reporting (§7.8.4).
    pub const AER: Self = Self(0x0001);
    /// Virtual Channel (§7.9.1).
    pub const VIRTUAL_CHANNEL: Self = Self(0x0002);
    /// Device Serial Number (§7.9.3).
    pub const DEVICE_SERIAL_NUMBER: Self = Self(0x0003);
    /// Power Budgeting (§7.8.1).
    pub const POWER_BUDGETING: Self = Self(0x0004);
    /// Root Complex Link Declaration.
    pub const RC_LINK_DECLARATION: Self = Self(0x0005);
    /// Root Complex Internal Link Control.
    pub const RC_INTERNAL_LINK_CONTROL: Self = Self(0x0006);
    /// Root Complex Event Collector Endpoint Association.
    pub const RC_EVENT_COLLECTOR: Self = Self(0x0007);
    /// Multi-Function Virtual Channel.
    pub const MFVC: Self = Self(0x0008);
    /// Virtual Channel (second ID).
    pub const VIRTUAL_CHANNEL_9: Self = Self(0x0009);
    /// Root Complex Register Block.
    pub const RCRB: Self = Self(0x000a);
    /// Vendor-Specific Extended Capability.
    pub const VENDOR_SPECIFIC: Self = Self(0x000b);
    /// Access Control Services (§7.7.7).
    pub const ACS: Self = Self(0x000d);
    /// Alternative Routing-ID Interpretation (§7.8.7).
    pub const ARI: Self = Self(0x000e);
    /// Address Translation Services (§10.5.1).
    pub const ATS: Self = Self(0x000f);
    /// Single Root I/O Virtualization (§9.3.3).
    pub const SR_IOV: Self = Self(0x0010);
    /// Multi-Root I/O Virtualization.
    pub const MR_IOV: Self = Self(0x0011);
    /// Multicast (§7.9.11).
    pub const MULTICAST: Self = Self(0x0012);
    /// Page Request Interface (§10.5.2).
    pub const PAGE_REQUEST: Self = Self(0x0013);
    /// Resizable BAR (§7.8.6).
    pub const RESIZABLE_BAR: Self = Self(0x0015);
    /// Dynamic Power Allocation.
    pub const DPA: Self = Self(0x0016);
    /// TLP Processing Hints.
    pub const TPH: Self = Self(0x0017);
    /// Latency Tolerance Reporting.
    pub const LTR: Self = Self(0x0018);
    /// Secondary PCI Express.
    pub const SECONDARY_PCIE: Self = Self(0x0019);
    /// Process Address Space ID (§7.8.8).
    pub const PASID: Self = Self(0x001b);
    /// Downstream Port Containment.
    pub const DPC: Self = Self(0x001d);
    /// L1 PM Substates.
    pub const L1_PM_SUBSTATES: Self = Self(0x001e);
    /// Precision Time Measurement.
    pub const PTM: Self = Self(0x001f);
    /// Designated Vendor-Specific Extended Capability.
    pub const DVSEC: Self = Self(0x0023);
    /// Data Link Feature.
    pub const DATA_LINK_FEATURE: Self = Self(0x0025);
    /// Physical Layer 16.0 GT/s.
    pub const PHYSICAL_LAYER_16GT: Self = Self(0x0026);

    /// The short name `lspci` uses, if the ID is known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0001 => "AER",
            0x0002 | 0x0009 => "VC",
            0x0003 => "DSN",
            0x0004 => "PwrBudget",
            0x0005 => "RCLink",
            0x0006 => "RCILink",
            0x0007 => "RCEC",
            0x0008 => "MFVC",
            0x000a => "RCRB",
            0x000b => "Vendor",
            0x000d => "ACS",
            0x000e => "ARI",
            0x000f => "ATS",
            0x0010 => "SR-IOV",
            0x0011 => "MR-IOV",
            0x0012 => "Multicast",
            0x0013 => "PRI",
            0x0015 => "ReBAR",
            0x0016 => "DPA",
            0x0017 => "TPH",
            0x0018 => "LTR",
            0x0019 => "SecPCIe",
            0x001b => "PASID",
            0x001d => "DPC",
            0x001e => "L1PM",
            0x001f => "PTM",
            0x0023 => "DVSEC",
            0x0025 => "DLF",
            0x0026 => "16GT",
            _ => return None,
        })
    }
}

/// Extended capability header layout (PCIe Base 4.0 §7.6.3).
pub mod extended_header {
    /// First extended capability, right after the 256-byte PCI-compatible space.
    pub const FIRST: u16 = 0x100;
    /// Bits 15:0: capability ID.
    pub const ID_MASK: u32 = 0xffff;
    /// Bits 19:16: capability version.
    pub const VERSION_SHIFT: u32 = 16;
    /// Capability version mask (after the shift).
    pub const VERSION_MASK: u32 = 0xf;
    /// Bits 31:20: next capability offset (low 2 bits reserved).
    pub const NEXT_SHIFT: u32 = 20;
    /// Mask applied to the next offset (dword aligned).
    pub const NEXT_MASK: u16 = 0xffc;
}

/// PCI Express capability structure (PCIe Base 4.0 §7.5.3).
pub mod pcie {
    /// PCI Express Capabilities register (16 bits) offset from the capability.
    pub const CAPABILITIES: u16 = 0x02;
    /// Capability Version, bits 3:0.
    pub const CAP_VERSION_MASK: u16 = 0x000f;
    /// Device/Port Type, bits 7:4.
    pub const DEVICE_PORT_TYPE_SHIFT: u16 = 4;
    /// Device/Port Type mask (after the shift).
    pub const DEVICE_PORT_TYPE_MASK: u16 = 0xf;
    /// Slot Implemented, bit 8.
    pub const SLOT_IMPLEMENTED: u16 = 1 << 8;
    /// Device Capabilities register (32 bits).
    pub const DEVICE_CAPABILITIES: u16 = 0x04;
    /// Device Capabilities: Function Level Reset Capability, bit 28.
    pub const DEVCAP_FLR: u32 = 1 << 28;
    /// Device Control register (16 bits).
    pub const DEVICE_CONTROL: u16 = 0x08;
    /// Device Control: Initiate Function Level Reset, bit 15.
    pub const DEVCTL_INITIATE_FLR: u16 = 1 << 15;
    /// Device Status register (16 bits).
    pub const DEVICE_STATUS: u16 = 0x0a;
    /// Link Capabilities register.
    pub const LINK_CAPABILITIES: u16 = 0x0c;
    /// Link Control register.
    pub const LINK_CONTROL: u16 = 0x10;
    /// Link Status register.
    pub const LINK_STATUS: u16 = 0x12;
    /// Device Capabilities 2 register.
    pub const DEVICE_CAPABILITIES_2: u16 = 0x24;
    /// Device Control 2 register.
    pub const DEVICE_CONTROL_2: u16 = 0x28;
    /// Device Status: Transactions Pending, bit 5 (§7.5.3.5).
    pub const DEVSTA_TRANSACTIONS_PENDING: u16 = 1 << 5;
    /// Link Control 2 register (16 bits, capability version 2).
    pub const LINK_CONTROL_2: u16 = 0x30;
    /// Capability versions from which the "2" registers exist.
    pub const VERSION_WITH_CONTROL_2: u16 = 2;
}

/// Power Management capability (PCI Power Management 1.2 §7.2).
pub mod pm {
    /// Power Management Capabilities register (PMC, 16 bits) offset from the capability.
    pub const PMC: u16 = 0x02;
    /// PMC bits 2:0: version (3 = PCI PM 1.2).
    pub const PMC_VERSION_MASK: u16 = 0x7;
    /// PMC bit 9: D1 supported.
    pub const PMC_D1_SUPPORT: u16 = 1 << 9;
    /// PMC bit 10: D2 supported.
    pub const PMC_D2_SUPPORT: u16 = 1 << 10;
    /// Power Management Control/Status register (PMCSR, 16 bits) offset from the capability.
    pub const PMCSR: u16 = 0x04;
    /// PMCSR bits 1:0: PowerState (0 = D0, 1 = D1, 2 = D2, 3 = D3hot).
    pub const PMCSR_STATE_MASK: u16 = 0x3;
    /// PMCSR bit 3: No_Soft_Reset. When set, a D3hot→D0 transition keeps the function's
    /// configuration (it is *not* a reset); when clear, the function goes through an internal
    /// reset to D0-uninitialized.
    pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
    /// PMCSR bit 8: PME_En.
    pub const PMCSR_PME_ENABLE: u16 = 1 << 8;
    /// PMCSR bit 15: PME_Status (write 1 to clear).
    pub const PMCSR_PME_STATUS: u16 = 1 << 15;
}

/// MSI capability (PCI Local Bus 3.0 §6.8.1): register offsets from the capability header.
/// The fields of Message Control are declared in [`MsiControl`].
pub mod msi {
    use super::MsiControl;

    /// Message Control (16 bits), see [`MsiControl`].
    pub const CONTROL: u16 = 0x02;
    /// Message Control: MSI Enable.
    pub const CONTROL_ENABLE: u16 = MsiControl::new().with_enable(true).into_bits();
    /// Message Control: 64-bit address capable.
    pub const CONTROL_64BIT: u16 = MsiControl::new().with_address_64(true).into_bits();
    /// Message Control: per-vector masking capable.
    pub const CONTROL_PER_VECTOR_MASKING: u16 =
        MsiControl::new().with_per_vector_masking(true).into_bits();
    /// Message Address (low 32 bits, dword aligned).
    pub const ADDRESS_LOW: u16 = 0x04;
    /// Message Upper Address (64-bit capable functions only).
    pub const ADDRESS_HIGH: u16 = 0x08;
    /// Message Data (16 bits) for 32-bit-address functions.
    pub const DATA_32: u16 = 0x08;
    /// Message Data (16 bits) for 64-bit-address functions.
    pub const DATA_64: u16 = 0x0c;
    /// Mask Bits for 32-bit-address functions with per-vector masking.
    pub const MASK_32: u16 = 0x0c;
    /// Mask Bits for 64-bit-address functions with per-vector masking.
    pub const MASK_64: u16 = 0x10;
    /// Pending Bits for 32-bit-address functions with per-vector masking.
    pub const PENDING_32: u16 = 0x10;
    /// Pending Bits for 64-bit-address functions with per-vector masking.
    pub const PENDING_64: u16 = 0x14;
    /// The most vectors a function can request (Multiple Message Capable = 101b).
    pub const MAX_VECTORS: u8 = 32;
}

/// MSI-X capability (PCI Local Bus 3.0 §6.8.2, PCIe Base 4.0 §7.7.2): register offsets from the
/// capability header. The fields are declared in [`MsixControl`] and
/// [`MsixLocation`].
pub mod msix {
    use super::MsixControl;

    /// Message Control (16 bits), see [`MsixControl`].
    pub const CONTROL: u16 = 0x02;
    /// Message Control: MSI-X Enable, bit 15.
    pub const CONTROL_ENABLE: u16 = MsixControl::new().with_enable(true).into_bits();
    /// Message Control: Function Mask, bit 14.
    pub const CONTROL_FUNCTION_MASK: u16 = MsixControl::new().with_function_mask(true).into_bits();
    /// Table Offset/Table BIR (32 bits), see [`super::MsixLocation`].
    pub const TABLE: u16 = 0x04;
    /// PBA Offset/PBA BIR (32 bits), see [`super::MsixLocation`].
    pub const PBA: u16 = 0x08;
    /// Size of one MSI-X Table entry in bytes (PCIe Base 4.0 §7.7.2.6).
    pub const ENTRY_SIZE: u32 = 16;
    /// Entry dword: Message Address (low 32 bits).
    pub const ENTRY_ADDRESS_LOW: u32 = 0x0;
    /// Entry dword: Message Upper Address.
    pub const ENTRY_ADDRESS_HIGH: u32 = 0x4;
    /// Entry dword: Message Data.
    pub const ENTRY_DATA: u32 = 0x8;
    /// Entry dword: Vector Control, see [`super::MsixVectorControl`].
    pub const ENTRY_VECTOR_CONTROL: u32 = 0xc;
    /// The Pending Bit Array holds one bit per entry in qwords (PCIe Base 4.0 §7.7.2.7); this
    /// crate reads it in dwords of this many bits.
    pub const PBA_BITS_PER_DWORD: u32 = 32;
    /// The PBA is sized in qwords.
    pub const PBA_BYTES_PER_QWORD: u32 = 8;
    /// Bits per PBA qword.
    pub const PBA_BITS_PER_QWORD: u32 = 64;
    /// The most entries a table can have (Table Size = 7FFh).
    pub const MAX_ENTRIES: u16 = 2048;
}

/// MSI Message Control register (PCI Local Bus 3.0 §6.8.1.3).
#[bitfield_struct::bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct MsiControl {
    /// MSI Enable (bit 0).
    pub enable: bool,
    /// Multiple Message Capable (bits 3:1, read-only): the function requests `2^value` vectors.
    #[bits(3)]
    pub multiple_message_capable: u8,
    /// Multiple Message Enable (bits 6:4): `2^value` vectors allocated.
    #[bits(3)]
    pub multiple_message_enable: u8,
    /// 64-bit address capable (bit 7, read-only).
    pub address_64: bool,
    /// Per-vector masking capable (bit 8, read-only).
    pub per_vector_masking: bool,
    /// Extended Message Data Capable (bit 9, PCIe 4.0).
    pub extended_data_capable: bool,
    /// Extended Message Data Enable (bit 10, PCIe 4.0).
    pub extended_data_enable: bool,
    #[bits(5)]
    __: u8,
}

/// MSI-X Message Control register (PCIe Base 4.0 §7.7.2.2).
#[bitfield_struct::bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct MsixControl {
    /// Table Size (bits 10:0, read-only), encoded as N - 1.
    #[bits(11)]
    pub table_size_minus_one: u16,
    #[bits(3)]
    __: u8,
    /// Function Mask (bit 14): every vector is masked, whatever its own mask bit.
    pub function_mask: bool,
    /// MSI-X Enable (bit 15).
    pub enable: bool,
}

/// Field conversion for the qword-aligned offset in bits 31:3 of [`MsixLocation`]: the field
/// holds the offset itself; its low three bits (the BIR's position) are dropped.
const fn qword_offset_into(offset: u32) -> u32 {
    offset >> 3
}

/// Inverse of [`qword_offset_into`].
const fn qword_offset_from(field: u32) -> u32 {
    field << 3
}

/// MSI-X Table Offset/Table BIR and PBA Offset/PBA BIR registers (PCIe Base 4.0 §7.7.2.3-4).
#[bitfield_struct::bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsixLocation {
    /// BAR Indicator Register (bits 2:0): which BAR (0-5) holds the structure.
    #[bits(3)]
    pub bir: u8,
    /// Offset of the structure from the BAR's base (bits 31:3, qword aligned).
    #[bits(29, from = qword_offset_from, into = qword_offset_into)]
    pub offset: u32,
}

/// Vector Control dword of an MSI-X Table entry (PCIe Base 4.0 §7.7.2.8). Bits 31:1 are
/// reserved and preserved.
#[bitfield_struct::bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsixVectorControl {
    /// Mask Bit (bit 0): while set the function may not send this entry's message. Set after
    /// reset.
    pub mask: bool,
    #[bits(31)]
    __: u32,
}

/// Device/Port Type of the PCI Express Capabilities register (PCIe Base 4.0 §7.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevicePortType {
    /// 0000b: PCI Express Endpoint.
    Endpoint,
    /// 0001b: Legacy PCI Express Endpoint.
    LegacyEndpoint,
    /// 0100b: Root Port of a PCI Express Root Complex.
    RootPort,
    /// 0101b: Upstream Port of a PCI Express Switch.
    UpstreamPort,
    /// 0110b: Downstream Port of a PCI Express Switch.
    DownstreamPort,
    /// 0111b: PCI Express to PCI/PCI-X Bridge.
    PcieToPciBridge,
    /// 1000b: PCI/PCI-X to PCI Express Bridge.
    PciToPcieBridge,
    /// 1001b: Root Complex Integrated Endpoint.
    RootComplexIntegratedEndpoint,
    /// 1010b: Root Complex Event Collector.
    RootComplexEventCollector,
    /// Any other (reserved) encoding.
    Reserved(u8),
}

impl DevicePortType {
    /// Decodes the PCI Express Capabilities register.
    pub const fn from_capabilities(capabilities: u16) -> Self {
        match (capabilities >> pcie::DEVICE_PORT_TYPE_SHIFT) & pcie::DEVICE_PORT_TYPE_MASK {
            0x0 => Self::Endpoint,
            0x1 => Self::LegacyEndpoint,
            0x4 => Self::RootPort,
            0x5 => Self::UpstreamPort,
            0x6 => Self::DownstreamPort,
            0x7 => Self::PcieToPciBridge,
            0x8 => Self::PciToPcieBridge,
            0x9 => Self::RootComplexIntegratedEndpoint,
            0xa => Self::RootComplexEventCollector,
            other => Self::Reserved(other as u8),
        }
    }

    /// The encoding (bits 7:4 value).
    pub const fn encoding(self) -> u8 {
        match self {
            Self::Endpoint => 0x0,
            Self::LegacyEndpoint => 0x1,
            Self::RootPort => 0x4,
            Self::UpstreamPort => 0x5,
            Self::DownstreamPort => 0x6,
            Self::PcieToPciBridge => 0x7,
            Self::PciToPcieBridge => 0x8,
            Self::RootComplexIntegratedEndpoint => 0x9,
            Self::RootComplexEventCollector => 0xa,
            Self::Reserved(v) => v,
        }
    }

    /// Whether this is a port of a PCIe switch (upstream or downstream).
    pub const fn is_switch_port(self) -> bool {
        matches!(self, Self::UpstreamPort | Self::DownstreamPort)
    }

    /// Whether a link below this port leads to exactly one device (device number 0): Root Ports
    /// and switch Downstream Ports (PCIe Base 4.0 §7.3.1: only Device 0 exists below them).
    pub const fn has_single_device_link(self) -> bool {
        matches!(self, Self::RootPort | Self::DownstreamPort)
    }

    /// A short human-readable name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::LegacyEndpoint => "legacy endpoint",
            Self::RootPort => "root port",
            Self::UpstreamPort => "switch upstream port",
            Self::DownstreamPort => "switch downstream port",
            Self::PcieToPciBridge => "PCIe-to-PCI bridge",
            Self::PciToPcieBridge => "PCI-to-PCIe bridge",
            Self::RootComplexIntegratedEndpoint => "RC integrated endpoint",
            Self::RootComplexEventCollector => "RC event collector",
            Self::Reserved(_) => "reserved port type",
        }
    }
}

/// ACS extended capability layout (PCIe Base 4.0 §7.7.7).
pub mod acs {
    /// ACS Capability register (16 bits) offset from the capability header.
    pub const CAPABILITY: u16 = 0x04;
    /// ACS Control register (16 bits) offset from the capability header.
    pub const CONTROL: u16 = 0x06;
    /// ACS Capability bits 15:8: Egress Control Vector Size.
    pub const EGRESS_CONTROL_VECTOR_SIZE_SHIFT: u16 = 8;
    /// Egress Control Vector (32 bits per 32 ports, only with ACS P2P Egress Control
    /// advertised) offset from the capability header (§7.7.7.4).
    pub const EGRESS_CONTROL_VECTOR: u16 = 0x08;
    /// An Egress Control Vector Size field of 0 means 256 bits.
    pub const EGRESS_CONTROL_VECTOR_MAX_BITS: u16 = 256;
}

bitflags! {
    /// ACS capability/control bits (PCIe Base 4.0 §7.7.7.2 and §7.7.7.3): the same bit positions
    /// advertise a feature in the ACS Capability register and enable it in the ACS Control
    /// register. Control bits of features a port does not advertise are hardwired to 0.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct AcsFlags: u16 {
        /// ACS Source Validation: check the requester's bus number against the secondary..
        /// subordinate range.
        const SV = 1 << 0;
        /// ACS Translation Blocking: block requests with AT = translated.
        const TB = 1 << 1;
        /// ACS P2P Request Redirect: send peer-to-peer requests upstream (to the IOMMU).
        const RR = 1 << 2;
        /// ACS P2P Completion Redirect: send peer-to-peer completions upstream.
        const CR = 1 << 3;
        /// ACS Upstream Forwarding: forward upstream-bound requests that target the port's own
        /// downstream side back upstream.
        const UF = 1 << 4;
        /// ACS P2P Egress Control.
        const EC = 1 << 5;
        /// ACS Direct Translated P2P.
        const DT = 1 << 6;
    }
}

impl AcsFlags {
    /// The controls Linux counts as a redirect (`pci_bridge_has_acs_redir`): with any of them
    /// enabled, peer-to-peer traffic may be forced up to the root complex.
    pub const REDIRECT: Self = Self::RR.union(Self::CR).union(Self::EC);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_offsets() {
        assert_eq!(header::bar(0), 0x10);
        assert_eq!(header::bar(5), 0x24);
    }

    #[test]
    fn port_type_round_trips() {
        for encoding in 0..16u16 {
            let t = DevicePortType::from_capabilities(encoding << 4);
            assert_eq!(u16::from(t.encoding()), encoding);
        }
        assert_eq!(
            DevicePortType::from_capabilities(0x0142),
            DevicePortType::RootPort
        );
    }

    #[test]
    fn msi_control_layout() {
        // PCI Local Bus 3.0 §6.8.1.3: enable bit 0, MMC 3:1, MME 6:4, 64-bit 7, PVM 8.
        assert_eq!(msi::CONTROL_ENABLE, 1 << 0);
        assert_eq!(msi::CONTROL_64BIT, 1 << 7);
        assert_eq!(msi::CONTROL_PER_VECTOR_MASKING, 1 << 8);
        let c = MsiControl::from_bits(0b101 << 1 | 0b011 << 4);
        assert_eq!(c.multiple_message_capable(), 5);
        assert_eq!(c.multiple_message_enable(), 3);
    }

    #[test]
    fn msix_layout() {
        // PCIe Base 4.0 §7.7.2.2: table size 10:0, function mask 14, enable 15.
        assert_eq!(msix::CONTROL_ENABLE, 1 << 15);
        assert_eq!(msix::CONTROL_FUNCTION_MASK, 1 << 14);
        assert_eq!(MsixControl::from_bits(0xc004).table_size_minus_one(), 4);
        // §7.7.2.3: BIR 2:0, offset 31:3 (the register value with the BIR cleared).
        let location = MsixLocation::from_bits(0x0000_2003);
        assert_eq!((location.bir(), location.offset()), (3, 0x2000));
        assert_eq!(
            MsixLocation::new()
                .with_bir(5)
                .with_offset(0x3008)
                .into_bits(),
            0x300d
        );
        // Reserved Vector Control bits survive a mask-bit change.
        let vc = MsixVectorControl::from_bits(0xdead_bee0).with_mask(true);
        assert_eq!(vc.into_bits(), 0xdead_bee1);
    }

    #[test]
    fn status_rw1c_bits() {
        assert_eq!(Status::RW1C.bits(), 0xf900);
    }
}
