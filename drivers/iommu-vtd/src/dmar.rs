//! The ACPI DMA Remapping Reporting table (DMAR): parsing and device-scope resolution.
//!
//! Implements VT-d spec §8 (rev 3.x/4.x): the DMAR header (§8.1), the remapping-structure
//! list walked by its length fields (§8.2), DRHD (§8.3), device scopes and their path
//! resolution (§8.3.1), RMRR (§8.4) and ATSR (§8.5). Other structure types (RHSA, ANDD, SATC,
//! SIDP) are walked over and exposed as [`RemappingStructure::Other`].
//!
//! [`Dmar::parse`] validates the whole table up front (signature, length, checksum, every
//! structure and every scope length), so the iterators afterwards never meet a malformed
//! record; a length that lies (zero, shorter than the fixed part, past the end) is a typed
//! [`DmarError`], never a panic or an out-of-bounds read.

use core::fmt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// The DMAR table signature.
pub const SIGNATURE: [u8; 4] = *b"DMAR";

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
}

/// Device scope types, §8.3.1.
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
    /// Register set size (rev 3+: 2^(size+12) bytes; 0 in older tables).
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

/// The fixed part of a device scope, §8.3.1.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ScopeFixed {
    /// Scope type ([`scope_type`]).
    pub kind: u8,
    /// Length in bytes, including the path.
    pub length: u8,
    /// Flags (rev 3+), else reserved.
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

const HEADER_LEN: usize = core::mem::size_of::<DmarHeader>();
const STRUCT_HEADER_LEN: usize = core::mem::size_of::<StructureHeader>();
const SCOPE_FIXED_LEN: usize = core::mem::size_of::<ScopeFixed>();
const PATH_ENTRY_LEN: usize = core::mem::size_of::<PathEntry>();
/// Highest PCI device number.
const MAX_DEVICE: u8 = 31;
/// Highest PCI function number.
const MAX_FUNCTION: u8 = 7;

/// Why a DMAR table was rejected.
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
        }
    }
}

impl core::error::Error for DmarError {}

/// A PCI bus/device/function within one segment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..=31).
    pub device: u8,
    /// Function number (0..=7).
    pub function: u8,
}

impl Bdf {
    /// A BDF; `device` and `function` are truncated to 5 and 3 bits.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device: device & MAX_DEVICE,
            function: function & MAX_FUNCTION,
        }
    }

    /// The 16-bit requester ID (source-id) the IOMMU sees: `bus << 8 | dev << 3 | fn`.
    pub const fn requester_id(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    /// The BDF of a requester ID.
    pub const fn from_requester_id(rid: u16) -> Self {
        Self::new((rid >> 8) as u8, (rid >> 3) as u8, rid as u8)
    }

    /// `device << 3 | function`: the index of the context entry within its bus's table.
    pub const fn devfn(self) -> u8 {
        self.device << 3 | self.function
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
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
            .finish()
    }
}

impl<'a> Dmar<'a> {
    /// Parses and validates a DMAR table. `bytes` may be longer than the table (the header's
    /// length decides); everything is checked before anything is returned.
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

    /// The header.
    pub fn header(&self) -> &DmarHeader {
        &self.header
    }

    /// Host address width in bits: DMA output addresses must be below `2^haw`.
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

    /// Every remapping structure, in table order.
    pub fn structures(&self) -> Structures<'a> {
        Structures {
            bytes: self.structures,
            offset: 0,
        }
    }

    /// The remapping hardware units.
    pub fn drhds(&self) -> impl Iterator<Item = Drhd<'a>> {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The reserved memory regions.
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
}

/// Splits the structure at `offset` out of `bytes`: its type and its whole body (header
/// included), checked against the end.
fn split_structure(bytes: &[u8], offset: usize) -> Result<(u16, &[u8]), DmarError> {
    let rest = &bytes[offset..];
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

fn fixed_len(kind: u16) -> usize {
    match kind {
        structure_type::DRHD => core::mem::size_of::<DrhdFixed>(),
        structure_type::RMRR => core::mem::size_of::<RmrrFixed>(),
        structure_type::ATSR => core::mem::size_of::<AtsrFixed>(),
        _ => STRUCT_HEADER_LEN,
    }
}

fn has_scopes(kind: u16) -> bool {
    matches!(
        kind,
        structure_type::DRHD | structure_type::RMRR | structure_type::ATSR
    )
}

/// Iterator over the remapping structures of a validated table.
#[derive(Debug, Clone)]
pub struct Structures<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Structures<'a> {
    type Item = RemappingStructure<'a>;

    fn next(&mut self) -> Option<Self::Item> {
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
        let scopes = |fixed: usize| DeviceScopes {
            bytes: body.get(fixed..).unwrap_or(&[]),
            offset: base_offset + fixed,
        };
        Some(match kind {
            structure_type::DRHD => match DrhdFixed::read_from_prefix(body) {
                Ok((fixed, _)) => RemappingStructure::Drhd(Drhd {
                    fixed,
                    scopes: scopes(fixed_len(kind)),
                }),
                Err(_) => return None,
            },
            structure_type::RMRR => match RmrrFixed::read_from_prefix(body) {
                Ok((fixed, _)) => RemappingStructure::Rmrr(Rmrr {
                    fixed,
                    scopes: scopes(fixed_len(kind)),
                }),
                Err(_) => return None,
            },
            structure_type::ATSR => match AtsrFixed::read_from_prefix(body) {
                Ok((fixed, _)) => RemappingStructure::Atsr(Atsr {
                    fixed,
                    scopes: scopes(fixed_len(kind)),
                }),
                Err(_) => return None,
            },
            _ => RemappingStructure::Other { kind, body },
        })
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
    /// A structure this crate does not interpret (RHSA, ANDD, SATC, ...).
    Other {
        /// Its type.
        kind: u16,
        /// Its bytes, header included.
        body: &'a [u8],
    },
}

/// A DMA remapping hardware unit definition, §8.3.
#[derive(Debug, Clone)]
pub struct Drhd<'a> {
    fixed: DrhdFixed,
    scopes: DeviceScopes<'a>,
}

impl<'a> Drhd<'a> {
    /// Physical address of the unit's register page.
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

    /// Size of the register window in bytes, when the table reports it (rev 3+: `size` field
    /// non-zero); `None` means "at least one 4 KiB page".
    pub fn register_size(&self) -> Option<u64> {
        const PAGE_SHIFT: u32 = 12;
        let size = u32::from(self.fixed.size);
        (size != 0).then(|| 1u64.checked_shl(size + PAGE_SHIFT).unwrap_or(u64::MAX))
    }

    /// The device scopes.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        self.scopes.clone()
    }
}

/// A reserved memory region that devices use before and after the OS takes over, §8.4: it
/// must stay identity-mapped for the listed devices.
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

    /// First byte of the region.
    pub fn base(&self) -> u64 {
        self.fixed.base.get()
    }

    /// Last byte of the region (inclusive).
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

/// Iterator over the device scopes of one structure.
#[derive(Debug, Clone)]
pub struct DeviceScopes<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let Ok((fixed, path)) = split_scope(self.bytes, self.offset) else {
            self.bytes = &[];
            return None;
        };
        let len = fixed.length as usize;
        self.bytes = self.bytes.get(len..).unwrap_or(&[]);
        self.offset += len;
        Some(DeviceScope { fixed, path })
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
    /// A type this crate does not know.
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
}

impl fmt::Debug for DeviceScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} id {} bus {:#04x} path",
            self.kind(),
            self.enumeration_id(),
            self.start_bus()
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

    /// Enumeration ID (I/O APIC ID, HPET number).
    pub fn enumeration_id(&self) -> u8 {
        self.fixed.enumeration_id
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

    /// Resolves the path to the BDF of the device it names (§8.3.1): every entry except the last
    /// is a bridge whose secondary bus `secondary_bus(bus, device, function)` returns; the kernel
    /// supplies it from its PCI enumeration.
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
                        bridge: Bdf::new(bus, entry.device, entry.function),
                    },
                )?;
            }
        }
        Ok(Bdf::new(bus, last.device, last.function))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

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
        .map(|(d, f)| Bdf::new(0, d, f));
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
                Bdf::new(0, 3, 0),
                Bdf::new(0, 4, 0),
                Bdf::new(0, 5, 0),
                Bdf::new(0, 6, 0),
                Bdf::new(64, 0, 0),
                Bdf::new(64, 1, 0)
            ]
        );
        // The pxb-pcie host bridge itself (00.7) is a type-0 endpoint.
        assert!(endpoints(&dmar, ScopeKind::PciEndpoint).contains(&Bdf::new(0, 7, 0)));
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
        assert_eq!(bdf, Bdf::new(6, 2, 1));
        assert_eq!(
            scope.resolve(|_, _, _| None),
            Err(ScopeError::NoSecondaryBus {
                bridge: Bdf::new(0, 0x1c, 0)
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
        assert_eq!(s, [Bdf::new(0, 0x1d, 0)]);
        let a = dmar.atsrs().next().unwrap();
        assert!(a.all_ports());
        assert_eq!(a.scopes().count(), 0);
        assert!(matches!(
            dmar.structures().last(),
            Some(RemappingStructure::Other { kind: 3, .. })
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

    #[test]
    fn bdf_requester_id_round_trip() {
        let b = Bdf::new(0x40, 0x1f, 3);
        assert_eq!(b.requester_id(), 0x40fb);
        assert_eq!(Bdf::from_requester_id(0x40fb), b);
        assert_eq!(b.to_string(), "40:1f.3");
        assert_eq!(b.devfn(), 0xfb);
    }
}
