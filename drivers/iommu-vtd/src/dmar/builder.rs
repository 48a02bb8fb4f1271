//! A builder for DMAR tables (virtual firmware, tests): writes the §8 layouts with a correct
//! length and checksum.

use super::*;

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
