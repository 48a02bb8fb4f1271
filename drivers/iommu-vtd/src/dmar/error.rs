//! Why a DMAR table, a structure or a device scope was rejected (§8 framing and content rules).

use super::*;

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
