//! Capability lists: the standard list in the first 256 bytes (PCI Local Bus 3.0 §6.7) and the
//! extended list from offset 0x100 (PCIe Base 4.0 §7.6), walked with loop protection.
//!
//! Both lists are linked lists whose pointers come from the device. A malformed or malicious
//! list can point back into itself; each walk remembers every dword it has visited, so it stops
//! at the first revisit and reports [`CapabilityError::Loop`] instead of hanging. The entries
//! found before the error are kept.

use alloc::vec::Vec;
use core::fmt;

use crate::regs::{extended_header, header, CapabilityId, ExtendedCapabilityId, Status};
use crate::{Bdf, ConfigSpace};

/// One entry of the standard capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: CapabilityId,
    /// Offset of the capability header in configuration space.
    pub offset: u8,
}

/// One entry of the extended capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedCapability {
    /// Capability ID.
    pub id: ExtendedCapabilityId,
    /// Capability version (header bits 19:16).
    pub version: u8,
    /// Offset of the capability header in configuration space.
    pub offset: u16,
}

/// Why a capability walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityError {
    /// The list points back to an entry already visited (at `offset`).
    Loop {
        /// The offset visited twice.
        offset: u16,
    },
    /// A pointer leads into the header (below 0x40 for the standard list, below 0x100 for the
    /// extended list) or out of the list's space.
    BadPointer {
        /// The offending pointer value.
        offset: u16,
    },
    /// An entry read as all-ones in the middle of the list: the function stopped responding.
    NotResponding {
        /// The offset read.
        offset: u16,
    },
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loop { offset } => write!(f, "capability list loops back to {offset:#x}"),
            Self::BadPointer { offset } => write!(f, "capability pointer {offset:#x} is invalid"),
            Self::NotResponding { offset } => {
                write!(
                    f,
                    "capability at {offset:#x} reads all-ones (function not responding)"
                )
            }
        }
    }
}

impl core::error::Error for CapabilityError {}

/// The result of a walk: the entries found, and why the walk stopped early if it did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilityWalk<T> {
    /// Entries in list order.
    pub entries: Vec<T>,
    /// Set when the list was malformed; `entries` holds what came before the fault.
    pub error: Option<CapabilityError>,
}

/// One bit per dword of configuration space.
struct Visited([u64; 16]);

impl Visited {
    /// Marks `offset`'s dword; returns false if it was already marked.
    fn insert(&mut self, offset: u16) -> bool {
        let dword = usize::from(offset / 4) % 1024;
        let (word, bit) = (dword / 64, dword % 64);
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }
}

/// Walks the standard capability list (PCI Local Bus 3.0 §6.7).
///
/// Returns an empty list when Status.Capabilities List is clear. Pointers have their reserved
/// low two bits masked, as the specification requires.
pub fn standard_capabilities(cfg: &impl ConfigSpace, bdf: Bdf) -> CapabilityWalk<Capability> {
    let mut walk = CapabilityWalk {
        entries: Vec::new(),
        error: None,
    };
    let status = Status::from_bits_retain(cfg.read16(bdf, header::STATUS));
    if status.bits() == u16::MAX || !status.contains(Status::CAPABILITIES_LIST) {
        return walk;
    }
    let mut visited = Visited([0; 16]);
    let mut pointer =
        cfg.read8(bdf, header::CAPABILITIES_POINTER) & header::CAPABILITY_POINTER_MASK;
    while pointer != 0 {
        let offset = u16::from(pointer);
        if offset < header::HEADER_END {
            walk.error = Some(CapabilityError::BadPointer { offset });
            break;
        }
        if !visited.insert(offset) {
            walk.error = Some(CapabilityError::Loop { offset });
            break;
        }
        let entry = cfg.read8(bdf, offset);
        if entry == u8::MAX {
            walk.error = Some(CapabilityError::NotResponding { offset });
            break;
        }
        walk.entries.push(Capability {
            id: CapabilityId(entry),
            offset: pointer,
        });
        pointer =
            cfg.read8(bdf, offset + header::CAPABILITY_NEXT) & header::CAPABILITY_POINTER_MASK;
    }
    walk
}

/// Walks the extended capability list (PCIe Base 4.0 §7.6.3).
///
/// A header of 0 at 0x100 means "no extended capabilities"; so does all-ones, which is what a
/// conventional PCI function (no extended configuration space) returns through ECAM.
pub fn extended_capabilities(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
) -> CapabilityWalk<ExtendedCapability> {
    let mut walk = CapabilityWalk {
        entries: Vec::new(),
        error: None,
    };
    let mut visited = Visited([0; 16]);
    let mut offset = extended_header::FIRST;
    loop {
        if !visited.insert(offset) {
            walk.error = Some(CapabilityError::Loop { offset });
            break;
        }
        let entry = cfg.read32(bdf, offset);
        if entry == u32::MAX {
            if offset != extended_header::FIRST {
                walk.error = Some(CapabilityError::NotResponding { offset });
            }
            break;
        }
        if entry == 0 {
            break;
        }
        walk.entries.push(ExtendedCapability {
            id: ExtendedCapabilityId((entry & extended_header::ID_MASK) as u16),
            version: ((entry >> extended_header::VERSION_SHIFT) & extended_header::VERSION_MASK)
                as u8,
            offset,
        });
        let next = (entry >> extended_header::NEXT_SHIFT) as u16 & extended_header::NEXT_MASK;
        if next == 0 {
            break;
        }
        if next < extended_header::FIRST {
            walk.error = Some(CapabilityError::BadPointer { offset: next });
            break;
        }
        offset = next;
    }
    walk
}

/// Both capability lists of one function.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The standard list.
    pub standard: Vec<Capability>,
    /// The extended list (empty for conventional PCI functions).
    pub extended: Vec<ExtendedCapability>,
    /// Faults met while walking either list.
    pub errors: Vec<CapabilityError>,
}

impl Capabilities {
    /// Reads both lists. The extended list is walked only for functions with a PCI Express
    /// capability: only they have extended configuration space (PCIe Base 4.0 §7.2.2).
    pub fn read(cfg: &impl ConfigSpace, bdf: Bdf) -> Self {
        let standard = standard_capabilities(cfg, bdf);
        let mut errors: Vec<CapabilityError> = standard.error.into_iter().collect();
        let is_pcie = standard
            .entries
            .iter()
            .any(|c| c.id == CapabilityId::PCI_EXPRESS);
        let extended = if is_pcie {
            let walk = extended_capabilities(cfg, bdf);
            errors.extend(walk.error);
            walk.entries
        } else {
            Vec::new()
        };
        Self {
            standard: standard.entries,
            extended,
            errors,
        }
    }

    /// The first standard capability with this ID.
    pub fn find(&self, id: CapabilityId) -> Option<Capability> {
        self.standard.iter().copied().find(|c| c.id == id)
    }

    /// The first extended capability with this ID.
    pub fn find_extended(&self, id: ExtendedCapabilityId) -> Option<ExtendedCapability> {
        self.extended.iter().copied().find(|c| c.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeConfigSpace;
    use proptest::prelude::*;

    fn bdf() -> Bdf {
        Bdf::new(0, 1, 0, 0).unwrap()
    }

    fn endpoint() -> FakeConfigSpace {
        let fake = FakeConfigSpace::new();
        fake.add_endpoint(bdf(), 0x1234, 0x11e8, 0x00_ff_00);
        fake
    }

    #[test]
    fn lists_in_order() {
        let fake = endpoint();
        let msi = fake.add_capability(bdf(), CapabilityId::MSI, 0x14);
        let pcie = fake.add_pcie_capability(bdf(), crate::regs::DevicePortType::Endpoint);
        let aer = fake.add_extended_capability(bdf(), ExtendedCapabilityId::AER, 2, 0x48);
        let acs = fake.add_extended_capability(bdf(), ExtendedCapabilityId::ACS, 1, 8);
        let caps = Capabilities::read(&fake, bdf());
        assert_eq!(
            caps.standard,
            [
                Capability {
                    id: CapabilityId::MSI,
                    offset: msi
                },
                Capability {
                    id: CapabilityId::PCI_EXPRESS,
                    offset: pcie
                }
            ]
        );
        assert_eq!(caps.extended.len(), 2);
        assert_eq!(
            caps.extended[0],
            ExtendedCapability {
                id: ExtendedCapabilityId::AER,
                version: 2,
                offset: aer
            }
        );
        assert_eq!(
            caps.find_extended(ExtendedCapabilityId::ACS)
                .map(|c| c.offset),
            Some(acs)
        );
        assert!(caps.errors.is_empty());
    }

    #[test]
    fn standard_loop_terminates_with_an_error() {
        let fake = endpoint();
        let first = fake.add_capability(bdf(), CapabilityId::POWER_MANAGEMENT, 8);
        let second = fake.add_capability(bdf(), CapabilityId::MSI, 0x14);
        // Point the second entry's next pointer back at the first.
        fake.poke8(bdf(), u16::from(second) + 1, first);
        let walk = standard_capabilities(&fake, bdf());
        assert_eq!(walk.entries.len(), 2);
        assert_eq!(
            walk.error,
            Some(CapabilityError::Loop {
                offset: u16::from(first)
            })
        );
        // A capability pointing at itself.
        fake.poke8(bdf(), u16::from(first) + 1, first);
        let walk = standard_capabilities(&fake, bdf());
        assert_eq!(walk.entries.len(), 1);
        assert_eq!(
            walk.error,
            Some(CapabilityError::Loop {
                offset: u16::from(first)
            })
        );
    }

    #[test]
    fn extended_loop_terminates_with_an_error() {
        let fake = endpoint();
        fake.add_pcie_capability(bdf(), crate::regs::DevicePortType::Endpoint);
        let aer = fake.add_extended_capability(bdf(), ExtendedCapabilityId::AER, 2, 0x48);
        let acs = fake.add_extended_capability(bdf(), ExtendedCapabilityId::ACS, 1, 8);
        let header = fake.peek32(bdf(), acs);
        fake.poke32(bdf(), acs, (header & 0x000f_ffff) | u32::from(aer) << 20);
        let caps = Capabilities::read(&fake, bdf());
        assert_eq!(caps.extended.len(), 2);
        assert_eq!(caps.errors, [CapabilityError::Loop { offset: aer }]);
        // A next pointer into the PCI-compatible space.
        fake.poke32(bdf(), acs, (header & 0x000f_ffff) | 0x40 << 20);
        let walk = extended_capabilities(&fake, bdf());
        assert_eq!(
            walk.error,
            Some(CapabilityError::BadPointer { offset: 0x40 })
        );
    }

    #[test]
    fn bad_standard_pointers() {
        let fake = endpoint();
        let cap = fake.add_capability(bdf(), CapabilityId::MSI, 0x14);
        fake.poke8(bdf(), u16::from(cap) + 1, 0x10);
        let walk = standard_capabilities(&fake, bdf());
        assert_eq!(
            walk.error,
            Some(CapabilityError::BadPointer { offset: 0x10 })
        );
        // Reserved low pointer bits are masked, not followed.
        fake.poke8(bdf(), u16::from(cap) + 1, 0x03);
        assert_eq!(standard_capabilities(&fake, bdf()).error, None);
    }

    #[test]
    fn absent_function_has_no_capabilities() {
        let fake = FakeConfigSpace::new();
        let caps = Capabilities::read(&fake, bdf());
        assert!(caps.standard.is_empty() && caps.extended.is_empty() && caps.errors.is_empty());
    }

    proptest! {
        /// Whatever the bytes, both walks terminate, never list an offset twice and never
        /// return more entries than the space holds.
        #[test]
        fn walks_terminate_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u32>(), 1024),
        ) {
            let fake = FakeConfigSpace::new();
            fake.add_endpoint(bdf(), 0x1234, 0x5678, 0);
            for (i, dword) in bytes.iter().enumerate().skip(16) {
                fake.poke32(bdf(), (i * 4) as u16, *dword);
            }
            fake.poke16(bdf(), header::STATUS, Status::CAPABILITIES_LIST.bits());
            fake.poke8(bdf(), header::CAPABILITIES_POINTER, bytes[0] as u8);
            let std = standard_capabilities(&fake, bdf());
            prop_assert!(std.entries.len() <= 48);
            let mut seen: Vec<u8> = std.entries.iter().map(|c| c.offset).collect();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), std.entries.len());
            let ext = extended_capabilities(&fake, bdf());
            prop_assert!(ext.entries.len() <= 960);
            let mut seen: Vec<u16> = ext.entries.iter().map(|c| c.offset).collect();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), ext.entries.len());
        }
    }
}
