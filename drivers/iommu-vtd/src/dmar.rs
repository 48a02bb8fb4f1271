//! The ACPI DMA Remapping Reporting table (DMAR): parsing, validation and device-scope
//! resolution, plus a builder for tables (virtual firmware, tests).
//!
//! Implements VT-d spec §8 (rev 3.x/4.x): the DMAR header (§8.1), the remapping-structure
//! list walked by its length fields (§8.2), DRHD (§8.3), device scopes and their path
//! resolution (§8.3.1), RMRR (§8.4), ATSR (§8.5), RHSA (§8.6), ANDD (§8.7), SATC (§8.8) and
//! SIDP (§8.9, rev 4.x). Reserved structure types (7 and above) are walked over and exposed as
//! [`RemappingStructure::Other`], as the spec asks software to do.
//!
//! Validation happens at two levels:
//!
//! - **Framing** ([`Dmar::parse`]): signature, length, checksum, the host address width, every
//!   structure length and every scope length and path entry. A table that fails here is a typed
//!   [`DmarError`]; nothing of it is trusted, and the iterators afterwards never meet a malformed
//!   record (no panic, no out-of-bounds read, whatever the bytes).
//! - **Content** (per structure): a DRHD whose register window is at address 0, not page
//!   aligned, or absurdly large, an RMRR whose range is inverted or not 4 KiB aligned, and a
//!   device scope of a reserved type are *refused individually*: they are kept out of
//!   [`Dmar::structures`], [`Dmar::drhds`], [`Dmar::rmrrs`] and the scope iterators, and listed
//!   with their reason by [`Dmar::refused`] so the caller can log them. This is what Linux does
//!   with such records (warn, skip), and it lets a platform with one broken unit keep the others.
//!   A table left without any usable DRHD means "no IOMMU": [`Dmar::require_unit`] says so with
//!   [`DmarError::NoRemappingUnit`].

use alloc::vec::Vec;
use core::fmt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

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

const PAGE_SHIFT: u32 = 12;
const PAGE_MASK: u64 = (1 << PAGE_SHIFT) - 1;

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
const STRUCT_HEADER_LEN: usize = core::mem::size_of::<StructureHeader>();
const SCOPE_FIXED_LEN: usize = core::mem::size_of::<ScopeFixed>();
const PATH_ENTRY_LEN: usize = core::mem::size_of::<PathEntry>();
/// Highest PCI device number.
const MAX_DEVICE: u8 = 31;
/// Highest PCI function number.
const MAX_FUNCTION: u8 = 7;

/// Why a DMAR table was rejected as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarError {
    /// The buffer is shorter than the DMAR header.
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The signature is not "DMAR".
    BadSignature([u8; 4]),
    /// The header's length is shorter than the header or longer than the buffer.
    BadTableLength {
        /// Length in the header.
        header: u32,
        /// Bytes available.
        available: usize,
    },
    /// The byte sum of the table is not zero.
    BadChecksum {
        /// The sum found.
        sum: u8,
    },
    /// The host address width (field + 1) is outside
    /// [`MIN_HOST_ADDRESS_WIDTH`]..=[`MAX_HOST_ADDRESS_WIDTH`].
    BadHostAddressWidth {
        /// The width the table declares, in bits (field + 1).
        width: u16,
    },
    /// A remapping structure's header does not fit in the table.
    TruncatedStructure {
        /// Offset of the structure in the table.
        offset: usize,
    },
    /// A remapping structure's length is zero, shorter than its fixed part, or runs past the
    /// end of the table.
    BadStructureLength {
        /// Offset of the structure in the table.
        offset: usize,
        /// Its type.
        kind: u16,
        /// The length it claims.
        length: u16,
    },
    /// A device scope's length is shorter than a scope with one path entry, odd in its path
    /// part, or runs past the end of its structure.
    BadScopeLength {
        /// Offset of the scope in the table.
        offset: usize,
        /// The length it claims.
        length: u8,
    },
    /// A path entry names a device > 31 or a function > 7.
    BadPathEntry {
        /// Offset of the scope in the table.
        offset: usize,
        /// The entry.
        entry: PathEntry,
    },
    /// The table has no usable DRHD: no DMA remapping unit, so no IOMMU
    /// ([`Dmar::require_unit`]).
    NoRemappingUnit {
        /// DRHD structures present but refused ([`Dmar::refused`] says why).
        refused: usize,
    },
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(f, "DMAR: {len} bytes is shorter than the header"),
            Self::BadSignature(s) => write!(f, "DMAR: bad signature {s:?}"),
            Self::BadTableLength { header, available } => {
                write!(
                    f,
                    "DMAR: table length {header} does not fit ({available} bytes available)"
                )
            }
            Self::BadChecksum { sum } => write!(f, "DMAR: checksum does not add up (sum {sum:#x})"),
            Self::BadHostAddressWidth { width } => write!(
                f,
                "DMAR: host address width {width} is outside \
                 {MIN_HOST_ADDRESS_WIDTH}..={MAX_HOST_ADDRESS_WIDTH} bits"
            ),
            Self::TruncatedStructure { offset } => {
                write!(f, "DMAR: remapping structure at {offset:#x} is truncated")
            }
            Self::BadStructureLength {
                offset,
                kind,
                length,
            } => write!(
                f,
                "DMAR: remapping structure type {kind} at {offset:#x} has invalid length {length}"
            ),
            Self::BadScopeLength { offset, length } => {
                write!(
                    f,
                    "DMAR: device scope at {offset:#x} has invalid length {length}"
                )
            }
            Self::BadPathEntry { offset, entry } => write!(
                f,
                "DMAR: device scope at {offset:#x} has invalid path entry {:02x}.{:x}",
                entry.device, entry.function
            ),
            Self::NoRemappingUnit { refused: 0 } => {
                f.write_str("DMAR has no remapping unit (no DRHD)")
            }
            Self::NoRemappingUnit { refused } => write!(
                f,
                "DMAR has no usable remapping unit ({refused} DRHD(s) refused)"
            ),
        }
    }
}

impl core::error::Error for DmarError {}

/// Why one structure (or one device scope) of a well-framed table was refused and left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructureError {
    /// A DRHD's register base is 0.
    RegisterBaseZero,
    /// A DRHD's register base is not 4 KiB aligned.
    RegisterBaseMisaligned {
        /// The base.
        base: u64,
    },
    /// A DRHD's Size byte has reserved bits 7:4 set.
    RegisterSizeReserved {
        /// The raw Size byte.
        raw: u8,
    },
    /// A DRHD's register window (2^N pages) is larger than
    /// [`MAX_REGISTER_SIZE_LOG2_PAGES`] allows.
    RegisterSizeTooLarge {
        /// N (log2 of the number of 4 KiB pages).
        log2_pages: u8,
    },
    /// A DRHD's register window runs past the end of the 64-bit address space.
    RegisterWindowOverflow {
        /// The base.
        base: u64,
    },
    /// An RMRR's base is not 4 KiB aligned, or its limit is not the last byte of a page.
    RmrrMisaligned {
        /// First byte.
        base: u64,
        /// Last byte.
        limit: u64,
    },
    /// An RMRR's base is above its limit.
    RmrrBaseAboveLimit {
        /// First byte.
        base: u64,
        /// Last byte.
        limit: u64,
    },
    /// A device scope has a reserved type (0, or 6 and above); the scope is skipped.
    ReservedScopeType {
        /// The type byte.
        kind: u8,
    },
}

impl fmt::Display for StructureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::RegisterBaseZero => f.write_str("register base is 0"),
            Self::RegisterBaseMisaligned { base } => {
                write!(f, "register base {base:#x} is not page aligned")
            }
            Self::RegisterSizeReserved { raw } => {
                write!(f, "register size byte {raw:#04x} has reserved bits 7:4 set")
            }
            Self::RegisterSizeTooLarge { log2_pages } => write!(
                f,
                "register window of 2^{log2_pages} pages exceeds the limit of \
                 2^{MAX_REGISTER_SIZE_LOG2_PAGES} pages"
            ),
            Self::RegisterWindowOverflow { base } => {
                write!(
                    f,
                    "register window at {base:#x} overflows the address space"
                )
            }
            Self::RmrrMisaligned { base, limit } => {
                write!(f, "RMRR {base:#x}..={limit:#x} is not 4 KiB aligned")
            }
            Self::RmrrBaseAboveLimit { base, limit } => {
                write!(f, "RMRR base {base:#x} is above its limit {limit:#x}")
            }
            Self::ReservedScopeType { kind } => write!(f, "device scope type {kind} is reserved"),
        }
    }
}

impl core::error::Error for StructureError {}

/// A structure or scope [`Dmar::refused`] left out, where it was and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Offset in the table of the structure (or of the scope, for a scope).
    pub offset: usize,
    /// Type of the structure ([`structure_type`]) it is, or belongs to.
    pub structure: u16,
    /// Why.
    pub error: StructureError,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.error {
            StructureError::ReservedScopeType { .. } => "device scope",
            _ => "structure",
        };
        write!(
            f,
            "DMAR {what} at {:#x} ({}) ignored: {}",
            self.offset,
            structure_name(self.structure),
            self.error
        )
    }
}

/// The spec's short name of a structure type.
pub fn structure_name(kind: u16) -> &'static str {
    match kind {
        structure_type::DRHD => "DRHD",
        structure_type::RMRR => "RMRR",
        structure_type::ATSR => "ATSR",
        structure_type::RHSA => "RHSA",
        structure_type::ANDD => "ANDD",
        structure_type::SATC => "SATC",
        structure_type::SIDP => "SIDP",
        _ => "reserved type",
    }
}

/// The shared PCI function address (crate `pci-address`): a device scope resolves to one, in the
/// segment of the structure that holds the scope.
pub use pci_address::Bdf;

/// Why a device scope's path could not be resolved to a BDF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeError {
    /// An intermediate path entry is not a bridge, or the bridge has no secondary bus.
    NoSecondaryBus {
        /// The device that should have been a bridge.
        bridge: Bdf,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSecondaryBus { bridge } => {
                write!(
                    f,
                    "device scope path walks through {bridge}, which is not a bridge"
                )
            }
        }
    }
}

impl core::error::Error for ScopeError {}

/// A parsed, validated DMAR table.
#[derive(Clone, Copy)]
pub struct Dmar<'a> {
    header: DmarHeader,
    structures: &'a [u8],
}

impl fmt::Debug for Dmar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dmar")
            .field("host_address_width", &self.host_address_width())
            .field("flags", &self.flags())
            .field("structures", &self.structures().count())
            .field("refused", &self.refused().count())
            .finish()
    }
}

impl<'a> Dmar<'a> {
    /// Parses and validates a DMAR table's framing. `bytes` may be longer than the table (the
    /// header's length decides); everything is checked before anything is returned. Structures
    /// whose content is unusable are not an error here: they are left out of the iterators and
    /// listed by [`Dmar::refused`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DmarError> {
        let (header, _) = DmarHeader::read_from_prefix(bytes)
            .map_err(|_| DmarError::TooShort { len: bytes.len() })?;
        if header.signature != SIGNATURE {
            return Err(DmarError::BadSignature(header.signature));
        }
        let length = header.length.get();
        let table_len = usize::try_from(length).unwrap_or(usize::MAX);
        if table_len < HEADER_LEN || table_len > bytes.len() {
            return Err(DmarError::BadTableLength {
                header: length,
                available: bytes.len(),
            });
        }
        let table = &bytes[..table_len];
        let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        if sum != 0 {
            return Err(DmarError::BadChecksum { sum });
        }
        let width = u16::from(header.host_address_width) + 1;
        if !(u16::from(MIN_HOST_ADDRESS_WIDTH)..=u16::from(MAX_HOST_ADDRESS_WIDTH)).contains(&width)
        {
            return Err(DmarError::BadHostAddressWidth { width });
        }
        let dmar = Self {
            header,
            structures: &table[HEADER_LEN..],
        };
        dmar.validate()?;
        Ok(dmar)
    }

    /// Walks every structure and scope, checking every length.
    fn validate(&self) -> Result<(), DmarError> {
        let mut offset = 0;
        while offset < self.structures.len() {
            let (kind, body) = split_structure(self.structures, offset)?;
            let fixed = fixed_len(kind);
            if body.len() < fixed.max(STRUCT_HEADER_LEN) {
                return Err(DmarError::BadStructureLength {
                    offset: offset + HEADER_LEN,
                    kind,
                    length: body.len() as u16,
                });
            }
            if has_scopes(kind) {
                let mut scope_off = fixed;
                while scope_off < body.len() {
                    let abs = HEADER_LEN + offset + scope_off;
                    split_scope(&body[scope_off..], abs)?;
                    scope_off += body[scope_off + 1] as usize;
                }
            }
            offset += body.len();
        }
        Ok(())
    }

    /// `Ok` when the table has at least one usable DRHD; otherwise
    /// [`DmarError::NoRemappingUnit`]: the platform has no IOMMU to use.
    pub fn require_unit(&self) -> Result<(), DmarError> {
        if self.drhds().next().is_some() {
            return Ok(());
        }
        let refused = self
            .refused()
            .filter(|r| {
                r.structure == structure_type::DRHD
                    && !matches!(r.error, StructureError::ReservedScopeType { .. })
            })
            .count();
        Err(DmarError::NoRemappingUnit { refused })
    }

    /// The header.
    pub fn header(&self) -> &DmarHeader {
        &self.header
    }

    /// Host address width in bits: DMA output addresses must be below `2^haw`. Always within
    /// [`MIN_HOST_ADDRESS_WIDTH`]..=[`MAX_HOST_ADDRESS_WIDTH`] (checked by [`Dmar::parse`]).
    pub fn host_address_width(&self) -> u8 {
        self.header.host_address_width.saturating_add(1)
    }

    /// Header flags ([`dmar_flags`]).
    pub fn flags(&self) -> u8 {
        self.header.flags
    }

    /// Whether the platform supports interrupt remapping.
    pub fn interrupt_remapping(&self) -> bool {
        self.header.flags & dmar_flags::INTR_REMAP != 0
    }

    /// Every usable remapping structure, in table order (refused ones left out).
    pub fn structures(&self) -> Structures<'a> {
        Structures {
            bytes: self.structures,
            offset: 0,
        }
    }

    /// Every structure and device scope that was refused, in table order, with the reason.
    pub fn refused(&self) -> impl Iterator<Item = Refused> + 'a {
        let bytes = self.structures;
        let mut offset = 0;
        let mut pending: Vec<Refused> = Vec::new();
        core::iter::from_fn(move || loop {
            if let Some(r) = pending.pop() {
                return Some(r);
            }
            if offset >= bytes.len() {
                return None;
            }
            let Ok((kind, body)) = split_structure(bytes, offset) else {
                offset = bytes.len();
                return None;
            };
            let abs = HEADER_LEN + offset;
            offset += body.len();
            if let Err(error) = check_structure(kind, body) {
                return Some(Refused {
                    offset: abs,
                    structure: kind,
                    error,
                });
            }
            if has_scopes(kind) {
                let mut scopes = RawScopes {
                    bytes: body.get(fixed_len(kind)..).unwrap_or(&[]),
                    offset: abs + fixed_len(kind),
                    // Only the scopes' validity is checked here; none is resolved.
                    segment: 0,
                };
                // Collected in reverse so `pop` yields them in table order.
                let mut found: Vec<Refused> = Vec::new();
                for (scope_offset, scope) in &mut scopes {
                    if let Err(error) = check_scope(&scope.fixed) {
                        found.push(Refused {
                            offset: scope_offset,
                            structure: kind,
                            error,
                        });
                    }
                }
                found.reverse();
                pending = found;
            }
        })
    }

    /// The usable remapping hardware units.
    pub fn drhds(&self) -> impl Iterator<Item = Drhd<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The usable reserved memory regions.
    pub fn rmrrs(&self) -> impl Iterator<Item = Rmrr<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Rmrr(r) => Some(r),
            _ => None,
        })
    }

    /// The root-port ATS reports.
    pub fn atsrs(&self) -> impl Iterator<Item = Atsr<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Atsr(a) => Some(a),
            _ => None,
        })
    }

    /// The static affinity reports.
    pub fn rhsas(&self) -> impl Iterator<Item = Rhsa> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Rhsa(r) => Some(r),
            _ => None,
        })
    }

    /// The ACPI name-space device declarations.
    pub fn andds(&self) -> impl Iterator<Item = Andd<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Andd(a) => Some(a),
            _ => None,
        })
    }

    /// The SoC integrated ATC reports.
    pub fn satcs(&self) -> impl Iterator<Item = Satc<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Satc(s) => Some(s),
            _ => None,
        })
    }

    /// The SoC integrated device property reports.
    pub fn sidps(&self) -> impl Iterator<Item = Sidp<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Sidp(s) => Some(s),
            _ => None,
        })
    }

    /// The NUMA proximity domain of `drhd`, from the RHSA naming its register base.
    pub fn proximity_domain(&self, drhd: &Drhd<'_>) -> Option<u32> {
        self.rhsas()
            .find(|r| r.register_base() == drhd.register_base())
            .map(|r| r.proximity_domain())
    }
}

/// Splits the structure at `offset` out of `bytes`: its type and its whole body (header
/// included), checked against the end.
fn split_structure(bytes: &[u8], offset: usize) -> Result<(u16, &[u8]), DmarError> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    let (head, _) =
        StructureHeader::read_from_prefix(rest).map_err(|_| DmarError::TruncatedStructure {
            offset: offset + HEADER_LEN,
        })?;
    let (kind, length) = (head.kind.get(), head.length.get());
    if (length as usize) < STRUCT_HEADER_LEN || length as usize > rest.len() {
        return Err(DmarError::BadStructureLength {
            offset: offset + HEADER_LEN,
            kind,
            length,
        });
    }
    Ok((kind, &rest[..length as usize]))
}

/// Checks one scope at the start of `bytes` (which ends where its structure ends).
fn split_scope(bytes: &[u8], abs_offset: usize) -> Result<(ScopeFixed, &[u8]), DmarError> {
    let bad = |length| DmarError::BadScopeLength {
        offset: abs_offset,
        length,
    };
    let (fixed, _) =
        ScopeFixed::read_from_prefix(bytes).map_err(|_| bad(bytes.get(1).copied().unwrap_or(0)))?;
    let length = fixed.length as usize;
    if length < SCOPE_FIXED_LEN + PATH_ENTRY_LEN
        || !(length - SCOPE_FIXED_LEN).is_multiple_of(PATH_ENTRY_LEN)
        || length > bytes.len()
    {
        return Err(bad(fixed.length));
    }
    let path = &bytes[SCOPE_FIXED_LEN..length];
    for entry in path.chunks_exact(PATH_ENTRY_LEN) {
        let entry = PathEntry {
            device: entry[0],
            function: entry[1],
        };
        if entry.device > MAX_DEVICE || entry.function > MAX_FUNCTION {
            return Err(DmarError::BadPathEntry {
                offset: abs_offset,
                entry,
            });
        }
    }
    Ok((fixed, path))
}

/// The content checks of one well-framed structure (§8.3, §8.4).
fn check_structure(kind: u16, body: &[u8]) -> Result<(), StructureError> {
    match kind {
        structure_type::DRHD => {
            let Ok((d, _)) = DrhdFixed::read_from_prefix(body) else {
                return Ok(());
            };
            let base = d.register_base.get();
            if d.size & 0xf0 != 0 {
                return Err(StructureError::RegisterSizeReserved { raw: d.size });
            }
            if d.size > MAX_REGISTER_SIZE_LOG2_PAGES {
                return Err(StructureError::RegisterSizeTooLarge { log2_pages: d.size });
            }
            if base == 0 {
                return Err(StructureError::RegisterBaseZero);
            }
            if base & PAGE_MASK != 0 {
                return Err(StructureError::RegisterBaseMisaligned { base });
            }
            if base.checked_add(register_size(d.size) - 1).is_none() {
                return Err(StructureError::RegisterWindowOverflow { base });
            }
            Ok(())
        }
        structure_type::RMRR => {
            let Ok((r, _)) = RmrrFixed::read_from_prefix(body) else {
                return Ok(());
            };
            let (base, limit) = (r.base.get(), r.limit.get());
            if base > limit {
                return Err(StructureError::RmrrBaseAboveLimit { base, limit });
            }
            // limit + 1 wraps to 0 for a region ending at the top: aligned.
            if base & PAGE_MASK != 0 || limit.wrapping_add(1) & PAGE_MASK != 0 {
                return Err(StructureError::RmrrMisaligned { base, limit });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The content check of one device scope: its type must be one the spec defines.
fn check_scope(fixed: &ScopeFixed) -> Result<(), StructureError> {
    match ScopeKind::from_raw(fixed.kind) {
        ScopeKind::Other(kind) => Err(StructureError::ReservedScopeType { kind }),
        _ => Ok(()),
    }
}

/// Bytes of a register window of 2^`log2_pages` pages (`log2_pages` already bounded).
const fn register_size(log2_pages: u8) -> u64 {
    1u64 << (log2_pages as u32 + PAGE_SHIFT)
}

fn fixed_len(kind: u16) -> usize {
    match kind {
        structure_type::DRHD => core::mem::size_of::<DrhdFixed>(),
        structure_type::RMRR => core::mem::size_of::<RmrrFixed>(),
        structure_type::ATSR => core::mem::size_of::<AtsrFixed>(),
        structure_type::RHSA => core::mem::size_of::<RhsaFixed>(),
        structure_type::ANDD => core::mem::size_of::<AnddFixed>(),
        structure_type::SATC => core::mem::size_of::<SatcFixed>(),
        structure_type::SIDP => core::mem::size_of::<SidpFixed>(),
        _ => STRUCT_HEADER_LEN,
    }
}

fn has_scopes(kind: u16) -> bool {
    matches!(
        kind,
        structure_type::DRHD
            | structure_type::RMRR
            | structure_type::ATSR
            | structure_type::SATC
            | structure_type::SIDP
    )
}

/// Iterator over the usable remapping structures of a validated table.
#[derive(Debug, Clone)]
pub struct Structures<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Structures<'a> {
    type Item = RemappingStructure<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.offset >= self.bytes.len() {
                return None;
            }
            // The table was validated; on any inconsistency stop rather than panic.
            let Ok((kind, body)) = split_structure(self.bytes, self.offset) else {
                self.offset = self.bytes.len();
                return None;
            };
            let base_offset = HEADER_LEN + self.offset;
            self.offset += body.len();
            if check_structure(kind, body).is_err() {
                continue;
            }
            let scopes = |segment: u16| DeviceScopes {
                inner: RawScopes {
                    bytes: body.get(fixed_len(kind)..).unwrap_or(&[]),
                    offset: base_offset + fixed_len(kind),
                    segment,
                },
            };
            let structure = match kind {
                structure_type::DRHD => DrhdFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Drhd(Drhd {
                        fixed,
                        scopes: scopes(fixed.segment.get()),
                    })
                }),
                structure_type::RMRR => RmrrFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Rmrr(Rmrr {
                        fixed,
                        scopes: scopes(fixed.segment.get()),
                    })
                }),
                structure_type::ATSR => AtsrFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Atsr(Atsr {
                        fixed,
                        scopes: scopes(fixed.segment.get()),
                    })
                }),
                structure_type::RHSA => RhsaFixed::read_from_prefix(body)
                    .ok()
                    .map(|(fixed, _)| RemappingStructure::Rhsa(Rhsa { fixed })),
                structure_type::ANDD => AnddFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Andd(Andd {
                        fixed,
                        name: body.get(fixed_len(kind)..).unwrap_or(&[]),
                    })
                }),
                structure_type::SATC => SatcFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Satc(Satc {
                        fixed,
                        scopes: scopes(fixed.segment.get()),
                    })
                }),
                structure_type::SIDP => SidpFixed::read_from_prefix(body).ok().map(|(fixed, _)| {
                    RemappingStructure::Sidp(Sidp {
                        fixed,
                        scopes: scopes(fixed.segment.get()),
                    })
                }),
                _ => Some(RemappingStructure::Other { kind, body }),
            };
            return structure;
        }
    }
}

/// One remapping structure.
#[derive(Debug, Clone)]
pub enum RemappingStructure<'a> {
    /// A remapping hardware unit.
    Drhd(Drhd<'a>),
    /// A reserved memory region.
    Rmrr(Rmrr<'a>),
    /// A root-port ATS report.
    Atsr(Atsr<'a>),
    /// A remapping unit's NUMA affinity.
    Rhsa(Rhsa),
    /// An ACPI name-space device declaration.
    Andd(Andd<'a>),
    /// SoC integrated devices with an address translation cache.
    Satc(Satc<'a>),
    /// SoC integrated device properties.
    Sidp(Sidp<'a>),
    /// A structure of a reserved type (7 and above), which software must skip.
    Other {
        /// Its type.
        kind: u16,
        /// Its bytes, header included.
        body: &'a [u8],
    },
}

/// A DMA remapping hardware unit definition, §8.3. Only units with a nonzero, page-aligned
/// register base and a bounded register window are ever handed out.
#[derive(Debug, Clone)]
pub struct Drhd<'a> {
    fixed: DrhdFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Drhd<'a> {
    /// Physical address of the unit's register page (nonzero, 4 KiB aligned).
    pub fn register_base(&self) -> u64 {
        self.fixed.register_base.get()
    }

    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.fixed.segment.get()
    }

    /// Raw flags ([`drhd_flags`]).
    pub fn flags(&self) -> u8 {
        self.fixed.flags
    }

    /// Whether the unit covers every device of its segment not claimed by another unit.
    pub fn include_pci_all(&self) -> bool {
        self.fixed.flags & drhd_flags::INCLUDE_PCI_ALL != 0
    }

    /// Size of the register window in bytes: 2^N 4 KiB pages (one page when the Size field is
    /// 0, as in tables older than rev 3), at most 2^[`MAX_REGISTER_SIZE_LOG2_PAGES`] pages.
    pub fn register_size(&self) -> u64 {
        register_size(self.fixed.size & 0x0f)
    }

    /// The device scopes (reserved scope types left out).
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// A reserved memory region that devices use before and after the OS takes over, §8.4: it
/// must stay identity-mapped for the listed devices. Only regions with `base <= limit`, a
/// page-aligned base and a limit on the last byte of a page are ever handed out.
#[derive(Debug, Clone)]
pub struct Rmrr<'a> {
    fixed: RmrrFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Rmrr<'a> {
    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.fixed.segment.get()
    }

    /// First byte of the region (4 KiB aligned).
    pub fn base(&self) -> u64 {
        self.fixed.base.get()
    }

    /// Last byte of the region (inclusive; the last byte of a page).
    pub fn limit(&self) -> u64 {
        self.fixed.limit.get()
    }

    /// The devices that use the region.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// Root-port ATS capability reporting, §8.5.
#[derive(Debug, Clone)]
pub struct Atsr<'a> {
    fixed: AtsrFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Atsr<'a> {
    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.fixed.segment.get()
    }

    /// Whether every root port of the segment supports ATS.
    pub fn all_ports(&self) -> bool {
        self.fixed.flags & atsr_flags::ALL_PORTS != 0
    }

    /// The root ports listed.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// Remapping hardware static affinity, §8.6: which NUMA proximity domain a unit is in.
#[derive(Debug, Clone, Copy)]
pub struct Rhsa {
    fixed: RhsaFixed,
}

impl Rhsa {
    /// Register base of the DRHD this is for.
    pub fn register_base(&self) -> u64 {
        self.fixed.register_base.get()
    }

    /// The proximity domain (as in the SRAT).
    pub fn proximity_domain(&self) -> u32 {
        self.fixed.proximity_domain.get()
    }
}

/// An ACPI name-space device declaration, §8.7: names the ACPI object that ACPI name-space
/// device scopes with this device number refer to.
#[derive(Debug, Clone, Copy)]
pub struct Andd<'a> {
    fixed: AnddFixed,
    name: &'a [u8],
}

impl<'a> Andd<'a> {
    /// The ACPI device number scopes use as their enumeration ID.
    pub fn device_number(&self) -> u8 {
        self.fixed.device_number
    }

    /// The object's fully qualified ACPI name (e.g. `\_SB.PCI0.SDMA`), without the
    /// terminating NUL and anything after it.
    pub fn object_name(&self) -> &'a [u8] {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end]
    }
}

/// SoC integrated address translation cache reporting, §8.8.
#[derive(Debug, Clone)]
pub struct Satc<'a> {
    fixed: SatcFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Satc<'a> {
    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.fixed.segment.get()
    }

    /// Raw flags ([`satc_flags`]).
    pub fn flags(&self) -> u8 {
        self.fixed.flags
    }

    /// Whether the listed devices need their ATC enabled to work.
    pub fn atc_required(&self) -> bool {
        self.fixed.flags & satc_flags::ATC_REQUIRED != 0
    }

    /// The SoC integrated devices listed.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// SoC integrated device property reporting, §8.9 (rev 4.x): the properties are in each
/// scope's [`DeviceScope::flags`].
#[derive(Debug, Clone)]
pub struct Sidp<'a> {
    fixed: SidpFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Sidp<'a> {
    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.fixed.segment.get()
    }

    /// The devices and their property flags.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// Every scope of one structure's scope area, with its table offset (reserved types included).
#[derive(Debug, Clone)]
struct RawScopes<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// The segment of the structure holding the scopes; every scope resolves within it.
    segment: u16,
}

impl<'a> Iterator for RawScopes<'a> {
    type Item = (usize, DeviceScope<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let Ok((fixed, path)) = split_scope(self.bytes, self.offset) else {
            self.bytes = &[];
            return None;
        };
        let at = self.offset;
        let len = fixed.length as usize;
        self.bytes = self.bytes.get(len..).unwrap_or(&[]);
        self.offset += len;
        Some((
            at,
            DeviceScope {
                fixed,
                path,
                segment: self.segment,
            },
        ))
    }
}

/// Iterator over the device scopes of one structure; scopes of a reserved type are skipped
/// (and listed by [`Dmar::refused`]).
#[derive(Debug, Clone)]
pub struct DeviceScopes<'a> {
    inner: RawScopes<'a>,
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .by_ref()
            .map(|(_, s)| s)
            .find(|s| check_scope(&s.fixed).is_ok())
    }
}

/// The kind of a device scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// A PCI endpoint.
    PciEndpoint,
    /// A PCI bridge and its whole sub-hierarchy.
    PciSubHierarchy,
    /// An I/O APIC.
    IoApic,
    /// An HPET.
    Hpet,
    /// An ACPI name-space device.
    AcpiNamespace,
    /// A reserved type. [`ScopeKind::from_raw`] can return it, but the scope iterators of a
    /// parsed table never yield such a scope.
    Other(u8),
}

impl ScopeKind {
    /// From the raw type byte.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            scope_type::PCI_ENDPOINT => Self::PciEndpoint,
            scope_type::PCI_SUB_HIERARCHY => Self::PciSubHierarchy,
            scope_type::IOAPIC => Self::IoApic,
            scope_type::HPET => Self::Hpet,
            scope_type::ACPI_NAMESPACE => Self::AcpiNamespace,
            other => Self::Other(other),
        }
    }
}

/// One device scope, §8.3.1.
#[derive(Clone, Copy)]
pub struct DeviceScope<'a> {
    fixed: ScopeFixed,
    path: &'a [u8],
    segment: u16,
}

impl fmt::Debug for DeviceScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} id {} bus {:#04x} flags {:#04x} path",
            self.kind(),
            self.enumeration_id(),
            self.start_bus(),
            self.flags()
        )?;
        for e in self.path() {
            write!(f, " {:02x}.{:x}", e.device, e.function)?;
        }
        Ok(())
    }
}

impl<'a> DeviceScope<'a> {
    /// The scope's kind.
    pub fn kind(&self) -> ScopeKind {
        ScopeKind::from_raw(self.fixed.kind)
    }

    /// The flags byte ([`scope_flags`]; reserved, normally 0, in tables older than rev 3).
    pub fn flags(&self) -> u8 {
        self.fixed.flags
    }

    /// Enumeration ID (I/O APIC ID, HPET number).
    pub fn enumeration_id(&self) -> u8 {
        self.fixed.enumeration_id
    }

    /// The PCI segment of the structure holding this scope (§8.3.1: a path is resolved within
    /// its structure's segment).
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The bus where the path starts.
    pub fn start_bus(&self) -> u8 {
        self.fixed.start_bus
    }

    /// The path: one (device, function) per hop, the first on `start_bus`, each further one on
    /// the secondary bus of the bridge before it. Never empty.
    pub fn path(&self) -> impl ExactSizeIterator<Item = PathEntry> + 'a {
        self.path.chunks_exact(PATH_ENTRY_LEN).map(|c| PathEntry {
            device: c[0],
            function: c[1],
        })
    }

    /// Resolves the path to the BDF of the device it names (§8.3.1), in this scope's
    /// [`segment`](Self::segment): every entry except the last is a bridge whose secondary bus
    /// `secondary_bus(bus, device, function)` returns; the kernel supplies it from its PCI
    /// enumeration.
    ///
    /// # Errors
    ///
    /// [`ScopeError::NoSecondaryBus`] when `secondary_bus` has no secondary bus for an
    /// intermediate entry (it is not a bridge, or the bridge has no bus assigned).
    pub fn resolve(
        &self,
        mut secondary_bus: impl FnMut(u8, u8, u8) -> Option<u8>,
    ) -> Result<Bdf, ScopeError> {
        let mut bus = self.start_bus();
        let count = self.path().len();
        let mut last = PathEntry {
            device: 0,
            function: 0,
        };
        for (i, entry) in self.path().enumerate() {
            last = entry;
            if i + 1 < count {
                bus = secondary_bus(bus, entry.device, entry.function).ok_or(
                    ScopeError::NoSecondaryBus {
                        bridge: self.bdf_of(bus, entry),
                    },
                )?;
            }
        }
        Ok(self.bdf_of(bus, last))
    }

    /// The function `entry` names on `bus` of this scope's segment. The parser refused scopes
    /// whose path entries have a device above 31 or a function above 7, so the masks below only
    /// keep a devfn byte well-formed; they never change a number.
    fn bdf_of(&self, bus: u8, entry: PathEntry) -> Bdf {
        let devfn = (entry.device & MAX_DEVICE) << 3 | (entry.function & MAX_FUNCTION);
        Bdf::from_devfn(self.segment, bus, devfn)
    }
}

/// A device scope to write with [`DmarBuilder`].
#[derive(Debug, Clone, Copy)]
pub struct ScopeSpec<'p> {
    /// Raw type ([`scope_type`]; any byte, so reserved types can be written).
    pub kind: u8,
    /// Flags ([`scope_flags`]).
    pub flags: u8,
    /// Enumeration ID.
    pub enumeration_id: u8,
    /// Start bus.
    pub start_bus: u8,
    /// The path (device, function) entries, written as given.
    pub path: &'p [PathEntry],
}

impl<'p> ScopeSpec<'p> {
    /// A PCI endpoint scope at `bus`, reached through `path`.
    pub const fn endpoint(bus: u8, path: &'p [PathEntry]) -> Self {
        Self {
            kind: scope_type::PCI_ENDPOINT,
            flags: 0,
            enumeration_id: 0,
            start_bus: bus,
            path,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        let len = SCOPE_FIXED_LEN + PATH_ENTRY_LEN * self.path.len();
        out.extend_from_slice(&[
            self.kind,
            u8::try_from(len).unwrap_or(u8::MAX),
            self.flags,
            0,
            self.enumeration_id,
            self.start_bus,
        ]);
        for e in self.path {
            out.extend_from_slice(&[e.device, e.function]);
        }
    }
}

/// Builds DMAR tables byte by byte, with the length and checksum filled in: for a hypervisor
/// handing a guest a virtual DMAR, and for tests that need a table firmware would not give
/// them. Field values are written as given, *not* validated, so malformed content (a register
/// base of 0, a reserved size bit) can be produced on purpose; a structure or scope too long
/// for its length field gets the largest value the field holds, which [`Dmar::parse`] refuses.
#[derive(Debug, Clone)]
pub struct DmarBuilder {
    host_address_width_field: u8,
    flags: u8,
    oem_table_id: [u8; 8],
    structures: Vec<u8>,
}

impl DmarBuilder {
    /// An empty table declaring `host_address_width` bits (stored as width - 1, wrapping).
    pub fn new(host_address_width: u8) -> Self {
        Self {
            host_address_width_field: host_address_width.wrapping_sub(1),
            flags: 0,
            oem_table_id: *b"VTDDMA  ",
            structures: Vec::new(),
        }
    }

    /// Sets the header flags ([`dmar_flags`]).
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }

    /// Sets the OEM table ID (to tell generated tables apart in a listing).
    pub fn oem_table_id(mut self, id: [u8; 8]) -> Self {
        self.oem_table_id = id;
        self
    }

    /// Appends a structure of any type: `fixed` is what follows the 4-byte structure header.
    pub fn raw(mut self, kind: u16, fixed: &[u8]) -> Self {
        let len = u16::try_from(STRUCT_HEADER_LEN + fixed.len()).unwrap_or(u16::MAX);
        self.structures.extend_from_slice(&kind.to_le_bytes());
        self.structures.extend_from_slice(&len.to_le_bytes());
        self.structures.extend_from_slice(fixed);
        self
    }

    fn with_scopes(self, kind: u16, mut fixed: Vec<u8>, scopes: &[ScopeSpec<'_>]) -> Self {
        for s in scopes {
            s.write(&mut fixed);
        }
        self.raw(kind, &fixed)
    }

    /// Appends a DRHD with the raw Size byte `size` (2^N pages in bits 3:0).
    pub fn drhd(
        self,
        flags: u8,
        size: u8,
        segment: u16,
        register_base: u64,
        scopes: &[ScopeSpec<'_>],
    ) -> Self {
        let mut fixed = Vec::from([flags, size]);
        fixed.extend_from_slice(&segment.to_le_bytes());
        fixed.extend_from_slice(&register_base.to_le_bytes());
        self.with_scopes(structure_type::DRHD, fixed, scopes)
    }

    /// Appends an RMRR for `base..=limit`.
    pub fn rmrr(self, segment: u16, base: u64, limit: u64, scopes: &[ScopeSpec<'_>]) -> Self {
        let mut fixed = Vec::from([0, 0]);
        fixed.extend_from_slice(&segment.to_le_bytes());
        fixed.extend_from_slice(&base.to_le_bytes());
        fixed.extend_from_slice(&limit.to_le_bytes());
        self.with_scopes(structure_type::RMRR, fixed, scopes)
    }

    /// Appends an ATSR.
    pub fn atsr(self, flags: u8, segment: u16, scopes: &[ScopeSpec<'_>]) -> Self {
        let mut fixed = Vec::from([flags, 0]);
        fixed.extend_from_slice(&segment.to_le_bytes());
        self.with_scopes(structure_type::ATSR, fixed, scopes)
    }

    /// Appends an RHSA.
    pub fn rhsa(self, register_base: u64, proximity_domain: u32) -> Self {
        let mut fixed = Vec::from([0; 4]);
        fixed.extend_from_slice(&register_base.to_le_bytes());
        fixed.extend_from_slice(&proximity_domain.to_le_bytes());
        self.raw(structure_type::RHSA, &fixed)
    }

    /// Appends an ANDD naming `object_name` (a NUL is appended).
    pub fn andd(self, device_number: u8, object_name: &[u8]) -> Self {
        let mut fixed = Vec::from([0, 0, 0, device_number]);
        fixed.extend_from_slice(object_name);
        fixed.push(0);
        self.raw(structure_type::ANDD, &fixed)
    }

    /// Appends a SATC.
    pub fn satc(self, flags: u8, segment: u16, scopes: &[ScopeSpec<'_>]) -> Self {
        let mut fixed = Vec::from([flags, 0]);
        fixed.extend_from_slice(&segment.to_le_bytes());
        self.with_scopes(structure_type::SATC, fixed, scopes)
    }

    /// Appends a SIDP.
    pub fn sidp(self, segment: u16, scopes: &[ScopeSpec<'_>]) -> Self {
        let mut fixed = Vec::from([0, 0]);
        fixed.extend_from_slice(&segment.to_le_bytes());
        self.with_scopes(structure_type::SIDP, fixed, scopes)
    }

    /// The table: header (revision 1, OEM "VTDDMA"), structures, checksum.
    pub fn build(&self) -> Vec<u8> {
        let len = HEADER_LEN + self.structures.len();
        let mut t = Vec::with_capacity(len);
        t.extend_from_slice(&SIGNATURE);
        t.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        t.extend_from_slice(&[1, 0]);
        t.extend_from_slice(b"VTDDMA");
        t.extend_from_slice(&self.oem_table_id);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"VTDD");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.push(self.host_address_width_field);
        t.push(self.flags);
        t.extend_from_slice(&[0; 10]);
        t.extend_from_slice(&self.structures);
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = sum.wrapping_neg();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A segment-0 function (every fixture's DRHDs are in segment 0).
    fn at(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(0, bus, device, function).unwrap()
    }

    /// Extracts the DMAR bytes from a fixture.
    pub(crate) fn fixture(text: &str) -> Vec<u8> {
        text.lines()
            .filter(|l| l.starts_with("DMAR 0"))
            .flat_map(|l| {
                l.split_once(':')
                    .map(|(_, b)| b)
                    .unwrap_or("")
                    .split_whitespace()
            })
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    fn fix_checksum(bytes: &mut [u8]) {
        bytes[9] = 0;
        let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        bytes[9] = 0u8.wrapping_sub(sum);
    }

    const DEFAULT: &str = include_str!("../tests/fixtures/default.acpi");
    const AW48: &str = include_str!("../tests/fixtures/aw48.acpi");
    const COMPLEX: &str = include_str!("../tests/fixtures/complex.acpi");

    fn endpoints(dmar: &Dmar<'_>, kind: ScopeKind) -> Vec<Bdf> {
        let drhd = dmar.drhds().next().unwrap();
        drhd.scopes()
            .filter(|s| s.kind() == kind)
            .map(|s| s.resolve(|_, _, _| None).unwrap())
            .collect()
    }

    #[test]
    fn default_fixture() {
        let bytes = fixture(DEFAULT);
        let dmar = Dmar::parse(&bytes).unwrap();
        assert_eq!(dmar.host_address_width(), 39);
        assert!(dmar.interrupt_remapping());
        assert_eq!(dmar.drhds().count(), 1);
        assert_eq!(dmar.rmrrs().count(), 0);
        assert_eq!(dmar.atsrs().count(), 0);
        let drhd = dmar.drhds().next().unwrap();
        assert_eq!(drhd.register_base(), 0xFED9_0000);
        assert_eq!(drhd.segment(), 0);
        assert!(!drhd.include_pci_all(), "QEMU lists explicit scopes");
        let ioapic: Vec<_> = drhd
            .scopes()
            .filter(|s| s.kind() == ScopeKind::IoApic)
            .collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(ioapic[0].start_bus(), 0xFF);
        // q35: host bridge 00.0, VGA 01.0, e1000e 02.0, `-device edu` 03.0, ICH9 1f.0/1f.2/1f.3.
        let want = [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 0),
            (0x1f, 0),
            (0x1f, 2),
            (0x1f, 3),
        ]
        .map(|(d, f)| at(0, d, f));
        assert_eq!(endpoints(&dmar, ScopeKind::PciEndpoint), want);
    }

    #[test]
    fn aw48_fixture_reports_48_bit_haw() {
        let bytes = fixture(AW48);
        let dmar = Dmar::parse(&bytes).unwrap();
        assert_eq!(dmar.host_address_width(), 48);
    }

    #[test]
    fn complex_fixture_lists_bridges_and_the_pxb_bus() {
        let bytes = fixture(COMPLEX);
        let dmar = Dmar::parse(&bytes).unwrap();
        assert_eq!(dmar.host_address_width(), 39);
        // Root ports rp1 03.0, rp2 04.0, pcie-pci-bridge 05.0, pci-bridge 06.0 on bus 0, and the
        // two root ports on pxb-pcie's bus 64 (bus_nr=64).
        let bridges = endpoints(&dmar, ScopeKind::PciSubHierarchy);
        assert_eq!(
            bridges,
            [
                at(0, 3, 0),
                at(0, 4, 0),
                at(0, 5, 0),
                at(0, 6, 0),
                at(64, 0, 0),
                at(64, 1, 0)
            ]
        );
        // The pxb-pcie host bridge itself (00.7) is a type-0 endpoint.
        assert!(endpoints(&dmar, ScopeKind::PciEndpoint).contains(&at(0, 7, 0)));
    }

    #[test]
    fn path_walks_through_bridges() {
        // One DRHD with a scope 00:1c.0 -> 00.0 -> 02.1 (two bridges).
        let mut bytes = fixture(DEFAULT);
        bytes.truncate(0x40);
        bytes.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0x1c, 0, 0, 0, 2, 1]);
        let len = bytes.len() - 0x30;
        bytes[0x32] = len as u8;
        let total = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&total.to_le_bytes());
        fix_checksum(&mut bytes);
        let dmar = Dmar::parse(&bytes).unwrap();
        let scope = dmar.drhds().next().unwrap().scopes().next().unwrap();
        assert_eq!(scope.path().len(), 3);
        let bdf = scope
            .resolve(|bus, dev, func| match (bus, dev, func) {
                (0, 0x1c, 0) => Some(5),
                (5, 0, 0) => Some(6),
                _ => None,
            })
            .unwrap();
        assert_eq!(bdf, at(6, 2, 1));
        assert_eq!(
            scope.resolve(|_, _, _| None),
            Err(ScopeError::NoSecondaryBus {
                bridge: at(0, 0x1c, 0)
            })
        );
    }

    #[test]
    fn rmrr_and_atsr_are_parsed() {
        let mut bytes = fixture(DEFAULT);
        // RMRR: base 0xE0000, limit 0xFFFFF, scope endpoint 00:1d.0.
        let mut rmrr = vec![1, 0, 32, 0, 0, 0, 0, 0];
        rmrr.extend_from_slice(&0xE0000u64.to_le_bytes());
        rmrr.extend_from_slice(&0xFFFFFu64.to_le_bytes());
        rmrr.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0x1d, 0]);
        bytes.extend_from_slice(&rmrr);
        // ATSR: ALL_PORTS, segment 0, no scopes; then an RHSA (type 3) to skip.
        bytes.extend_from_slice(&[2, 0, 8, 0, 1, 0, 0, 0]);
        let mut rhsa = vec![3, 0, 20, 0];
        rhsa.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&rhsa);
        let total = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&total.to_le_bytes());
        fix_checksum(&mut bytes);
        let dmar = Dmar::parse(&bytes).unwrap();
        assert_eq!(dmar.structures().count(), 4);
        let r = dmar.rmrrs().next().unwrap();
        assert_eq!((r.base(), r.limit(), r.segment()), (0xE0000, 0xFFFFF, 0));
        let s: Vec<_> = r
            .scopes()
            .map(|s| s.resolve(|_, _, _| None).unwrap())
            .collect();
        assert_eq!(s, [at(0, 0x1d, 0)]);
        let a = dmar.atsrs().next().unwrap();
        assert!(a.all_ports());
        assert_eq!(a.scopes().count(), 0);
        assert!(matches!(
            dmar.structures().last(),
            Some(RemappingStructure::Rhsa(r)) if r.register_base() == 0 && r.proximity_domain() == 0
        ));
    }

    fn with_structure_length(len: u16) -> Vec<u8> {
        let mut bytes = fixture(DEFAULT);
        bytes[0x32..0x34].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut bytes);
        bytes
    }

    #[test]
    fn lying_structure_lengths_are_rejected() {
        for len in [0u16, 3] {
            assert!(
                matches!(
                    Dmar::parse(&with_structure_length(len)),
                    Err(DmarError::BadStructureLength {
                        offset: 0x30,
                        kind: 0,
                        ..
                    })
                ),
                "length {len}"
            );
        }
        // Shorter than the DRHD's fixed part.
        assert!(matches!(
            Dmar::parse(&with_structure_length(8)),
            Err(DmarError::BadStructureLength {
                offset: 0x30,
                length: 8,
                ..
            })
        ));
        // Past the end of the table.
        assert!(matches!(
            Dmar::parse(&with_structure_length(0x51)),
            Err(DmarError::BadStructureLength { length: 0x51, .. })
        ));
    }

    #[test]
    fn lying_scope_lengths_are_rejected() {
        for (len, what) in [
            (0u8, "zero"),
            (6, "no path"),
            (7, "odd path"),
            (0x60, "past the end"),
        ] {
            let mut bytes = fixture(DEFAULT);
            bytes[0x41] = len;
            fix_checksum(&mut bytes);
            assert_eq!(
                Dmar::parse(&bytes).unwrap_err(),
                DmarError::BadScopeLength {
                    offset: 0x40,
                    length: len
                },
                "{what}"
            );
        }
        let mut bytes = fixture(DEFAULT);
        bytes[0x4E] = 32;
        fix_checksum(&mut bytes);
        assert!(matches!(
            Dmar::parse(&bytes),
            Err(DmarError::BadPathEntry { offset: 0x48, .. })
        ));
    }

    #[test]
    fn truncated_tables_are_rejected() {
        let bytes = fixture(DEFAULT);
        for cut in [0, 10, 47] {
            assert_eq!(
                Dmar::parse(&bytes[..cut]).unwrap_err(),
                DmarError::TooShort { len: cut }
            );
        }
        // The header says 128 bytes but only 100 are there.
        assert_eq!(
            Dmar::parse(&bytes[..100]).unwrap_err(),
            DmarError::BadTableLength {
                header: 128,
                available: 100
            }
        );
        // A structure header cut in half at the end of the table.
        let mut short = bytes.clone();
        short.extend_from_slice(&[1, 0]);
        short[4] = 130;
        fix_checksum(&mut short);
        assert_eq!(
            Dmar::parse(&short).unwrap_err(),
            DmarError::TruncatedStructure { offset: 128 }
        );
        // Header length below the header size.
        let mut tiny = bytes.clone();
        tiny[4] = 20;
        assert!(matches!(
            Dmar::parse(&tiny),
            Err(DmarError::BadTableLength { header: 20, .. })
        ));
    }

    #[test]
    fn bad_signature_and_checksum() {
        let mut bytes = fixture(DEFAULT);
        bytes[0] = b'X';
        assert!(matches!(
            Dmar::parse(&bytes),
            Err(DmarError::BadSignature(_))
        ));
        let mut bytes = fixture(DEFAULT);
        bytes[0x70] ^= 1;
        assert!(matches!(
            Dmar::parse(&bytes),
            Err(DmarError::BadChecksum { .. })
        ));
    }

    #[test]
    fn trailing_bytes_after_the_table_are_ignored() {
        let mut bytes = fixture(DEFAULT);
        bytes.extend_from_slice(&[0xFF; 7]);
        assert_eq!(Dmar::parse(&bytes).unwrap().drhds().count(), 1);
    }

    /// A device scope resolves in the segment of the structure holding it: the same path under
    /// a DRHD and an RMRR of segment 2 and a DRHD of segment 0 names three different functions.
    #[test]
    fn scopes_resolve_in_their_structures_segment() {
        let path = [PathEntry {
            device: 0x1f,
            function: 3,
        }];
        let scope = [ScopeSpec::endpoint(0x40, &path)];
        let bytes = DmarBuilder::new(38)
            .drhd(0, 0, 2, 0xfed9_0000, &scope)
            .drhd(0, 0, 0, 0xfed9_1000, &scope)
            .rmrr(2, 0xe0000, 0xeffff, &scope)
            .build();
        let dmar = Dmar::parse(&bytes).unwrap();
        let resolved: Vec<Bdf> = dmar
            .drhds()
            .flat_map(|d| d.scopes())
            .chain(dmar.rmrrs().flat_map(|r| r.scopes()))
            .map(|s| s.resolve(|_, _, _| None).unwrap())
            .collect();
        let seg2 = Bdf::new(2, 0x40, 0x1f, 3).unwrap();
        assert_eq!(resolved, [seg2, at(0x40, 0x1f, 3), seg2]);
        assert_eq!(resolved[0].requester_id().get(), 0x40fb);
        assert_ne!(resolved[0], resolved[1]);
        assert_eq!(
            dmar.drhds()
                .next()
                .unwrap()
                .scopes()
                .next()
                .unwrap()
                .segment(),
            2
        );
    }
}
