//! The DMAR wire format (VT-d §8.1–§8.9): the table signature, the limits the parser enforces,
//! the type and flag values, and the little-endian layouts of the fixed parts of every structure.

use super::*;

/// The DMAR table signature.
pub const SIGNATURE: [u8; 4] = *b"DMAR";

/// Narrowest host address width accepted, in bits. Every x86-64 platform with VT-d addresses at
/// least 4 GiB; a smaller value is a corrupt table (Linux refuses widths below a page shift).
pub const MIN_HOST_ADDRESS_WIDTH: u8 = 32;
/// Widest host address width accepted, in bits. The field is N-1 in a byte, so up to 256 can be
/// encoded; 64 and above cannot be an address width of a 64-bit machine (and would overflow
/// `1 << haw`). x86-64 physical addresses stop at 52 bits: a width between 53 and 63 is accepted
/// because it only widens the range an output address is checked against; the hardware still
/// faults an address it cannot reach.
pub const MAX_HOST_ADDRESS_WIDTH: u8 = 63;

/// Largest register window a DRHD may declare, as log2 of 4 KiB pages: 2^8 pages = 1 MiB.
///
/// The Size field (§8.3, bits 3:0) encodes 2^N pages with N up to 15 (128 MiB); bits 7:4 are
/// reserved. Every register the spec defines, including the IOTLB registers at IRO and up to
/// 256 fault-recording registers at FRO, lies within the first 64 KiB (IRO and FRO are 10-bit
/// offsets in 16-byte units), so 1 MiB is a generous bound; anything larger is refused rather
/// than mapped (an unbounded value once made the kernel map 2^267 bytes and stall).
pub const MAX_REGISTER_SIZE_LOG2_PAGES: u8 = 8;

pub(super) const PAGE_SHIFT: u32 = 12;
pub(super) const PAGE_MASK: u64 = (1 << PAGE_SHIFT) - 1;

/// Remapping structure types, §8.2.
pub mod structure_type {
    /// DMA remapping hardware unit definition.
    pub const DRHD: u16 = 0;
    /// Reserved memory region reporting.
    pub const RMRR: u16 = 1;
    /// Root port ATS capability reporting.
    pub const ATSR: u16 = 2;
    /// Remapping hardware static affinity.
    pub const RHSA: u16 = 3;
    /// ACPI name-space device declaration.
    pub const ANDD: u16 = 4;
    /// SoC integrated address translation cache reporting.
    pub const SATC: u16 = 5;
    /// SoC integrated device property reporting (rev 4.x).
    pub const SIDP: u16 = 6;
}

/// Device scope types, §8.3.1. 0 and 6..=255 are reserved.
pub mod scope_type {
    /// A PCI endpoint device.
    pub const PCI_ENDPOINT: u8 = 1;
    /// A PCI-PCI bridge and everything below it.
    pub const PCI_SUB_HIERARCHY: u8 = 2;
    /// An I/O APIC.
    pub const IOAPIC: u8 = 3;
    /// An HPET (MSI-capable timer block).
    pub const HPET: u8 = 4;
    /// An ACPI name-space device.
    pub const ACPI_NAMESPACE: u8 = 5;
}

/// Device scope flags (byte 2 of a scope, rev 3+; reserved before), §8.3.1 and §8.9.
pub mod scope_flags {
    /// Requests without PASID from this device must not use nested translation.
    pub const REQ_WO_PASID_NESTED_NOT_ALLOWED: u8 = 1 << 0;
    /// Requests without PASID must not use page-walk snooping.
    pub const REQ_WO_PASID_PWSNP_NOT_ALLOWED: u8 = 1 << 1;
    /// Requests without PASID must not use page snooping.
    pub const REQ_WO_PASID_PGSNP_NOT_ALLOWED: u8 = 1 << 2;
    /// The device's address translation cache is hardened (trusted to honour invalidations).
    pub const ATC_HARDENED: u8 = 1 << 3;
    /// The device requires its address translation cache to be enabled to work.
    pub const ATC_REQUIRED: u8 = 1 << 4;
}

/// DMAR header flags (byte 37), §8.1.
pub mod dmar_flags {
    /// Interrupt remapping supported.
    pub const INTR_REMAP: u8 = 1 << 0;
    /// Platform opts out of x2APIC mode.
    pub const X2APIC_OPT_OUT: u8 = 1 << 1;
    /// DMA control opt-in.
    pub const DMA_CTRL_PLATFORM_OPT_IN: u8 = 1 << 2;
}

/// DRHD flags, §8.3.
pub mod drhd_flags {
    /// The unit covers every PCI device of its segment not claimed by another DRHD.
    pub const INCLUDE_PCI_ALL: u8 = 1 << 0;
}

/// ATSR flags, §8.5.
pub mod atsr_flags {
    /// Every root port of the segment supports ATS.
    pub const ALL_PORTS: u8 = 1 << 0;
}

/// SATC flags, §8.8.
pub mod satc_flags {
    /// The listed devices require their ATC to be enabled (ATC_REQUIRED).
    pub const ATC_REQUIRED: u8 = 1 << 0;
}

/// The DMAR table header: the ACPI SDT header plus the DMAR fields, §8.1.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DmarHeader {
    /// "DMAR".
    pub signature: [u8; 4],
    /// Length of the whole table in bytes.
    pub length: U32,
    /// Table revision.
    pub revision: u8,
    /// Byte sum of the whole table is zero.
    pub checksum: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: U32,
    /// Creator ID.
    pub creator_id: U32,
    /// Creator revision.
    pub creator_revision: U32,
    /// Host address width minus one.
    pub host_address_width: u8,
    /// Flags ([`dmar_flags`]).
    pub flags: u8,
    /// Reserved.
    pub reserved: [u8; 10],
}

/// The common head of every remapping structure, §8.2.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct StructureHeader {
    /// Structure type ([`structure_type`]).
    pub kind: U16,
    /// Length in bytes, including this header.
    pub length: U16,
}

/// The fixed part of a DRHD, §8.3.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DrhdFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Flags ([`drhd_flags`]).
    pub flags: u8,
    /// Register set size: bits 3:0 = N for 2^N 4 KiB pages, bits 7:4 reserved (0 in tables
    /// older than rev 3, which means one page).
    pub size: u8,
    /// PCI segment number.
    pub segment: U16,
    /// Register base address.
    pub register_base: U64,
}

/// The fixed part of an RMRR, §8.4.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RmrrFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Reserved.
    pub reserved: U16,
    /// PCI segment number.
    pub segment: U16,
    /// Base address (4 KiB aligned).
    pub base: U64,
    /// Limit address (inclusive; last byte).
    pub limit: U64,
}

/// The fixed part of an ATSR, §8.5.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AtsrFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Flags ([`atsr_flags`]).
    pub flags: u8,
    /// Reserved.
    pub reserved: u8,
    /// PCI segment number.
    pub segment: U16,
}

/// An RHSA, §8.6 (fixed length, no scopes).
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RhsaFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Reserved.
    pub reserved: U32,
    /// Register base of the DRHD this affinity is for.
    pub register_base: U64,
    /// The NUMA proximity domain (as in the SRAT) the unit belongs to.
    pub proximity_domain: U32,
}

/// The fixed part of an ANDD, §8.7; the ACPI object name follows.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnddFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Reserved.
    pub reserved: [u8; 3],
    /// The ACPI device number that ACPI name-space device scopes refer to.
    pub device_number: u8,
}

/// The fixed part of a SATC, §8.8; device scopes follow.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SatcFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Flags ([`satc_flags`]).
    pub flags: u8,
    /// Reserved.
    pub reserved: u8,
    /// PCI segment number.
    pub segment: U16,
}

/// The fixed part of a SIDP, §8.9; device scopes (whose flags carry the properties) follow.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SidpFixed {
    /// Common header.
    pub header: StructureHeader,
    /// Reserved.
    pub reserved: U16,
    /// PCI segment number.
    pub segment: U16,
}

/// The fixed part of a device scope, §8.3.1.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ScopeFixed {
    /// Scope type ([`scope_type`]).
    pub kind: u8,
    /// Length in bytes, including the path.
    pub length: u8,
    /// Flags ([`scope_flags`], rev 3+), else reserved.
    pub flags: u8,
    /// Reserved.
    pub reserved: u8,
    /// Enumeration ID (I/O APIC ID, HPET number, ACPI device number).
    pub enumeration_id: u8,
    /// Bus number where the path starts.
    pub start_bus: u8,
}

/// One path entry of a device scope: a device and function on the current bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PathEntry {
    /// Device number (0..=31).
    pub device: u8,
    /// Function number (0..=7).
    pub function: u8,
}

/// Length of the DMAR header.
pub const HEADER_LEN: usize = core::mem::size_of::<DmarHeader>();
pub(super) const STRUCT_HEADER_LEN: usize = core::mem::size_of::<StructureHeader>();
pub(super) const SCOPE_FIXED_LEN: usize = core::mem::size_of::<ScopeFixed>();
pub(super) const PATH_ENTRY_LEN: usize = core::mem::size_of::<PathEntry>();
/// Highest PCI device number.
pub(super) const MAX_DEVICE: u8 = 31;
/// Highest PCI function number.
pub(super) const MAX_FUNCTION: u8 = 7;
