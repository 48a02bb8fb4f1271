//! Parsing and validation of the table (§8.1, §8.2) and the typed views of its remapping
//! structures (DRHD §8.3, RMRR §8.4, ATSR §8.5, RHSA §8.6, ANDD §8.7, SATC §8.8, SIDP §8.9).

use super::*;

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
