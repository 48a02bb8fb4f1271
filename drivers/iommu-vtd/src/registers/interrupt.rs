//! Interrupt remapping formats (§5.1, §9.10, §11.4.10): the IRTA register, interrupt remapping
//! table entries, and the remappable and compatibility MSI address/data formats.

use bitfield_struct::bitfield;

use super::{addr_4k_from, addr_4k_into};

/// Interrupt remapping table address register (IRTA), §11.4.10 (§11.4.29 in rev 4.x).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Irta {
    /// Size (S, bits 3:0): the table has `2^(S + 1)` entries.
    #[bits(4)]
    pub s: u8,
    #[bits(7)]
    __: u8,
    /// Extended interrupt mode enable (EIME, bit 11): 32-bit x2APIC destination IDs.
    pub eime: bool,
    /// Table base (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub base: u64,
}

/// Interrupt remapping table entry, bits 63:0, remapped format (IM = 0), §9.10.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteLo {
    /// Present (P, bit 0).
    pub p: bool,
    /// Fault processing disable (FPD, bit 1): faults through this entry are not recorded.
    pub fpd: bool,
    /// Destination mode (DM, bit 2): 0 physical, 1 logical.
    pub dm: bool,
    /// Redirection hint (RH, bit 3).
    pub rh: bool,
    /// Trigger mode (TM, bit 4): 0 edge, 1 level.
    pub tm: bool,
    /// Delivery mode (DLM, bits 7:5): an `irte::DLM_*` value.
    #[bits(3)]
    pub dlm: u8,
    /// Available to software (AVL, bits 11:8).
    #[bits(4)]
    pub avl: u8,
    /// Reserved (bits 14:12), must be 0.
    #[bits(3)]
    pub reserved_14_12: u8,
    /// IRTE mode (IM, bit 15): 0 remapped, 1 posted.
    pub im: bool,
    /// Vector (V, bits 23:16).
    pub vector: u8,
    /// Reserved (bits 31:24), must be 0.
    pub reserved_31_24: u8,
    /// Destination ID (DST, bits 63:32): an [`XApicDst`] when EIME = 0, the 32-bit x2APIC ID
    /// when EIME = 1.
    pub dst: u32,
}

/// The DST field of an IRTE in xAPIC mode (EIME = 0), §9.10: the 8-bit APIC ID sits in bits
/// 15:8; bits 7:0 and 31:16 are reserved.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct XApicDst {
    /// Reserved (DST bits 7:0 = IRTE bits 39:32).
    pub reserved_lo: u8,
    /// The APIC ID (DST bits 15:8 = IRTE bits 47:40).
    pub apic_id: u8,
    /// Reserved (DST bits 31:16 = IRTE bits 63:48).
    pub reserved_hi: u16,
}

/// Interrupt remapping table entry, bits 127:64, §9.10.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteHi {
    /// Source identifier (SID, bits 79:64): a requester ID (SVT = 1) or a [`SidBusRange`]
    /// (SVT = 2).
    pub sid: u16,
    /// Source-id qualifier (SQ, bits 81:80), for SVT = 1: which low SID bits are ignored.
    #[bits(2)]
    pub sq: u8,
    /// Source validation type (SVT, bits 83:82): an `irte::SVT_*` value.
    #[bits(2)]
    pub svt: u8,
    /// Reserved (bits 127:84), must be 0.
    #[bits(44)]
    pub reserved: u64,
}

/// The SID field of an IRTE with SVT = 2 (bus range), §9.10.
#[bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct SidBusRange {
    /// Last bus of the range (bits 7:0).
    pub end: u8,
    /// First bus of the range (bits 15:8).
    pub start: u8,
}

/// IRTE field values, §9.10.
pub mod irte {
    /// Bytes per entry.
    pub const SIZE: usize = 16;
    /// SVT 00: no source validation.
    pub const SVT_NONE: u8 = 0b00;
    /// SVT 01: the requester ID, qualified by SQ.
    pub const SVT_REQUESTER: u8 = 0b01;
    /// SVT 10: the requester's bus lies in the SID's bus range.
    pub const SVT_BUS_RANGE: u8 = 0b10;
    /// SQ 00: all 16 SID bits are compared.
    pub const SQ_ALL_BITS: u8 = 0b00;
    /// The requester-ID bits each SQ value (the index) leaves out of the comparison: none,
    /// bit 2, bits 2:1, bits 2:0 (§9.10 Table "SQ").
    pub const SQ_IGNORED_BITS: [u16; 4] = [0b000, 0b100, 0b110, 0b111];
    /// Delivery mode: fixed.
    pub const DLM_FIXED: u8 = 0b000;
    /// Delivery mode: lowest priority.
    pub const DLM_LOWEST_PRIORITY: u8 = 0b001;
    /// Delivery mode: SMI.
    pub const DLM_SMI: u8 = 0b010;
    /// Delivery mode: NMI.
    pub const DLM_NMI: u8 = 0b100;
    /// Delivery mode: INIT.
    pub const DLM_INIT: u8 = 0b101;
    /// Delivery mode: ExtINT.
    pub const DLM_EXTINT: u8 = 0b111;
}
/// The address of an MSI in remappable format, §5.1.5.2 (what a device writes to
/// 0xFEEx_xxxx; the PCI crate encodes it, this declaration decodes it in the fake unit).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiAddressRemappable {
    #[bits(2)]
    __: u8,
    /// Handle bit 15 (address bit 2).
    pub handle_15: bool,
    /// Subhandle valid (SHV, bit 3): the data's low 16 bits are added to the handle.
    pub shv: bool,
    /// Interrupt format (bit 4): 1 remappable, 0 compatibility.
    pub remappable: bool,
    /// Handle bits 14:0 (address bits 19:5).
    #[bits(15)]
    pub handle_14_0: u16,
    /// 0xFEE: the interrupt address window (bits 31:20).
    #[bits(12)]
    pub window: u16,
}

/// An interrupt handle split as an MSI address carries it, §5.1.5.2.
#[bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct IrHandle {
    /// Bits 14:0.
    #[bits(15)]
    pub low: u16,
    /// Bit 15.
    pub bit_15: bool,
}

/// The data of an MSI in remappable format, §5.1.5.2.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiDataRemappable {
    /// Subhandle (bits 15:0), used when SHV is set.
    pub subhandle: u16,
    /// Reserved (bits 31:16), must be 0.
    pub reserved: u16,
}

/// The address of an MSI in compatibility format (Intel SDM vol. 3 §11.11.1), as the fake
/// unit decodes it when it passes it through.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiAddressCompat {
    #[bits(2)]
    __: u8,
    /// Destination mode (bit 2).
    pub dm: bool,
    /// Redirection hint (bit 3).
    pub rh: bool,
    /// Interrupt format (bit 4): 0 here.
    pub remappable: bool,
    #[bits(7)]
    __: u8,
    /// Destination APIC ID (bits 19:12).
    pub dest: u8,
    /// 0xFEE (bits 31:20).
    #[bits(12)]
    pub window: u16,
}

/// The data of an MSI in compatibility format (Intel SDM vol. 3 §11.11.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiDataCompat {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Delivery mode (bits 10:8).
    #[bits(3)]
    pub delivery: u8,
    #[bits(3)]
    __: u8,
    /// Level (bit 14).
    pub level: bool,
    /// Trigger mode (bit 15): 1 level.
    pub trigger_level: bool,
    #[bits(16)]
    __: u16,
}

/// The interrupt address window's bits 31:20 (0xFEE), §5.1.
pub const MSI_WINDOW: u16 = 0xFEE;
