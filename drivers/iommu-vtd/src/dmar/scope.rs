//! Device scopes (§8.3.1): iteration over a structure's scope area and the resolution of a
//! scope's path to a BDF through the bridges' secondary bus numbers.

use super::*;

/// Every scope of one structure's scope area, with its table offset (reserved types included).
#[derive(Debug, Clone)]
pub(super) struct RawScopes<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) offset: usize,
    /// The segment of the structure holding the scopes; every scope resolves within it.
    pub(super) segment: u16,
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
    pub(super) inner: RawScopes<'a>,
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
    pub(super) fixed: ScopeFixed,
    pub(super) path: &'a [u8],
    pub(super) segment: u16,
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

/// Checks one scope at the start of `bytes` (which ends where its structure ends).
pub(super) fn split_scope(
    bytes: &[u8],
    abs_offset: usize,
) -> Result<(ScopeFixed, &[u8]), DmarError> {
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

/// The content check of one device scope: its type must be one the spec defines.
pub(super) fn check_scope(fixed: &ScopeFixed) -> Result<(), StructureError> {
    match ScopeKind::from_raw(fixed.kind) {
        ScopeKind::Other(kind) => Err(StructureError::ReservedScopeType { kind }),
        _ => Ok(()),
    }
}
