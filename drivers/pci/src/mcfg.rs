//! The ACPI MCFG table: where each PCI segment group's ECAM window lives (PCI Firmware
//! Specification 3.2 §4.1.2; ECAM layout in PCIe Base 4.0 §7.2.2).
//!
//! The table is an ACPI header (36 bytes), 8 reserved bytes and then one 16-byte *configuration
//! space base address allocation* per ECAM region: base address (u64), PCI segment group (u16),
//! start bus (u8), end bus (u8), reserved (u32). All fields are little-endian.

use alloc::vec::Vec;
use core::fmt;

/// The table signature.
pub const SIGNATURE: [u8; 4] = *b"MCFG";
/// Length of the standard ACPI table header.
pub const ACPI_HEADER_LEN: usize = 36;
/// Offset of the first allocation entry (header + 8 reserved bytes).
pub const ENTRIES_OFFSET: usize = 44;
/// Length of one allocation entry.
pub const ENTRY_LEN: usize = 16;
/// Bytes of ECAM space per bus: 32 devices × 8 functions × 4 KiB.
pub const BUS_WINDOW_SIZE: u64 = 1 << BUS_SHIFT;
/// ECAM address bits 27:20 select the bus (PCIe Base 4.0 §7.2.2).
pub const BUS_SHIFT: u32 = 20;
/// ECAM address bits 19:12 select device and function (the devfn byte).
pub const DEVFN_SHIFT: u32 = 12;

/// One ECAM region: the configuration space of buses `start_bus..=end_bus` of one segment group.
///
/// `base_address` is, as the MCFG defines it, the address that bus **0** would have: the
/// configuration space of `bus` starts at `base_address + (bus << 20)` even when `start_bus` is
/// not 0. [`McfgRegion::window_base`] is where the region really starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct McfgRegion {
    base_address: u64,
    segment: u16,
    start_bus: u8,
    end_bus: u8,
}

/// Why an MCFG table or region was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McfgError {
    /// The buffer is shorter than the ACPI header.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The signature is not `MCFG`.
    BadSignature([u8; 4]),
    /// The header's length field is shorter than header + reserved bytes.
    LengthTooShort(u32),
    /// The header's length field claims more bytes than the buffer holds.
    LengthExceedsBuffer {
        /// The header's length field.
        length: u32,
        /// Bytes available.
        available: usize,
    },
    /// The entries do not fill a whole number of 16-byte allocations.
    PartialEntry {
        /// Bytes left over after the last whole entry.
        trailing: usize,
    },
    /// The table's bytes do not sum to 0 mod 256.
    BadChecksum {
        /// The sum of all bytes mod 256.
        sum: u8,
    },
    /// An entry's start bus is above its end bus.
    BusRange {
        /// Entry index.
        index: usize,
        /// Start bus.
        start_bus: u8,
        /// End bus.
        end_bus: u8,
    },
    /// An entry's window is not 4 KiB aligned or ends beyond the 64-bit address space.
    BadBaseAddress {
        /// Entry index.
        index: usize,
        /// The base address.
        base_address: u64,
    },
    /// Two entries cover the same bus of the same segment group.
    Overlap {
        /// Index of the first entry.
        first: usize,
        /// Index of the second entry.
        second: usize,
    },
}

impl fmt::Display for McfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "MCFG truncated: {available} bytes, at least {needed} needed"
                )
            }
            Self::BadSignature(s) => write!(f, "signature {s:02x?} is not \"MCFG\""),
            Self::LengthTooShort(len) => {
                write!(
                    f,
                    "MCFG length {len} is shorter than its {ENTRIES_OFFSET}-byte header"
                )
            }
            Self::LengthExceedsBuffer { length, available } => {
                write!(
                    f,
                    "MCFG claims {length} bytes but only {available} are available"
                )
            }
            Self::PartialEntry { trailing } => {
                write!(
                    f,
                    "MCFG ends with a partial {trailing}-byte allocation entry"
                )
            }
            Self::BadChecksum { sum } => write!(f, "MCFG checksum fails (byte sum {sum:#04x})"),
            Self::BusRange {
                index,
                start_bus,
                end_bus,
            } => {
                write!(
                    f,
                    "MCFG entry {index}: start bus {start_bus:#04x} > end bus {end_bus:#04x}"
                )
            }
            Self::BadBaseAddress {
                index,
                base_address,
            } => write!(
                f,
                "MCFG entry {index}: base {base_address:#x} is misaligned or its window overflows"
            ),
            Self::Overlap { first, second } => {
                write!(f, "MCFG entries {first} and {second} cover the same buses")
            }
        }
    }
}

impl core::error::Error for McfgError {}

impl McfgRegion {
    /// Builds a region, checking `start_bus <= end_bus`, that the window is 4 KiB aligned and
    /// that it ends inside the 64-bit address space. Errors report entry index 0.
    pub const fn new(
        base_address: u64,
        segment: u16,
        start_bus: u8,
        end_bus: u8,
    ) -> Result<Self, McfgError> {
        Self::checked(0, base_address, segment, start_bus, end_bus)
    }

    const fn checked(
        index: usize,
        base_address: u64,
        segment: u16,
        start_bus: u8,
        end_bus: u8,
    ) -> Result<Self, McfgError> {
        if start_bus > end_bus {
            return Err(McfgError::BusRange {
                index,
                start_bus,
                end_bus,
            });
        }
        // The last byte of the window: base + (end_bus + 1) * 1 MiB - 1 must not overflow.
        let end = (end_bus as u64 + 1) * BUS_WINDOW_SIZE - 1;
        if base_address & 0xfff != 0 || base_address.checked_add(end).is_none() {
            return Err(McfgError::BadBaseAddress {
                index,
                base_address,
            });
        }
        Ok(Self {
            base_address,
            segment,
            start_bus,
            end_bus,
        })
    }

    /// The MCFG base address (the address bus 0 would have).
    pub const fn base_address(&self) -> u64 {
        self.base_address
    }

    /// The PCI segment group.
    pub const fn segment(&self) -> u16 {
        self.segment
    }

    /// First bus decoded.
    pub const fn start_bus(&self) -> u8 {
        self.start_bus
    }

    /// Last bus decoded.
    pub const fn end_bus(&self) -> u8 {
        self.end_bus
    }

    /// Whether the region decodes `bus` of `segment`.
    pub const fn contains(&self, segment: u16, bus: u8) -> bool {
        self.segment == segment && self.start_bus <= bus && bus <= self.end_bus
    }

    /// Physical address of the configuration space of `start_bus`: what the caller must map.
    pub const fn window_base(&self) -> u64 {
        // Cannot overflow: checked at construction.
        self.base_address + ((self.start_bus as u64) << BUS_SHIFT)
    }

    /// Size of the window in bytes: 1 MiB per bus.
    pub const fn window_size(&self) -> u64 {
        (self.end_bus as u64 - self.start_bus as u64 + 1) * BUS_WINDOW_SIZE
    }

    /// Byte offset of `(bus, devfn, offset)` inside the window, or `None` outside it.
    pub(crate) const fn window_offset(&self, bus: u8, devfn: u8, offset: u16) -> Option<u64> {
        if bus < self.start_bus || bus > self.end_bus {
            return None;
        }
        Some(
            ((bus - self.start_bus) as u64) << BUS_SHIFT
                | (devfn as u64) << DEVFN_SHIFT
                | offset as u64,
        )
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.segment == other.segment
            && self.start_bus <= other.end_bus
            && other.start_bus <= self.end_bus
    }
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from(le_u32(bytes, at)) | u64::from(le_u32(bytes, at + 4)) << 32
}

/// Parses a raw MCFG table (starting at its signature) into its ECAM regions.
///
/// The header's length field is authoritative: bytes after it are ignored, and a length that
/// lies (longer than the buffer, shorter than the header, not header + a multiple of 16) is
/// refused, as are a bad checksum, an inverted bus range, a window that overflows and two
/// regions covering the same bus.
pub fn parse(table: &[u8]) -> Result<Vec<McfgRegion>, McfgError> {
    if table.len() < ACPI_HEADER_LEN {
        return Err(McfgError::Truncated {
            needed: ACPI_HEADER_LEN,
            available: table.len(),
        });
    }
    let signature = [table[0], table[1], table[2], table[3]];
    if signature != SIGNATURE {
        return Err(McfgError::BadSignature(signature));
    }
    let length = le_u32(table, 4);
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if len < ENTRIES_OFFSET {
        return Err(McfgError::LengthTooShort(length));
    }
    if len > table.len() {
        return Err(McfgError::LengthExceedsBuffer {
            length,
            available: table.len(),
        });
    }
    let table = &table[..len];
    let trailing = (len - ENTRIES_OFFSET) % ENTRY_LEN;
    if trailing != 0 {
        return Err(McfgError::PartialEntry { trailing });
    }
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    if sum != 0 {
        return Err(McfgError::BadChecksum { sum });
    }
    let mut regions: Vec<McfgRegion> = Vec::new();
    for (index, entry) in table[ENTRIES_OFFSET..].chunks_exact(ENTRY_LEN).enumerate() {
        let region = McfgRegion::checked(
            index,
            le_u64(entry, 0),
            le_u16(entry, 8),
            entry[10],
            entry[11],
        )?;
        if let Some(first) = regions.iter().position(|r| r.overlaps(&region)) {
            return Err(McfgError::Overlap {
                first,
                second: index,
            });
        }
        regions.push(region);
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    /// Builds a well-formed table with a correct checksum.
    pub(crate) fn build(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let len = ENTRIES_OFFSET + ENTRY_LEN * entries.len();
        let mut t = vec![0u8; len];
        t[..4].copy_from_slice(b"MCFG");
        t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        t[8] = 1;
        for (i, (base, seg, start, end)) in entries.iter().enumerate() {
            let e = &mut t[ENTRIES_OFFSET + i * ENTRY_LEN..][..ENTRY_LEN];
            e[..8].copy_from_slice(&base.to_le_bytes());
            e[8..10].copy_from_slice(&seg.to_le_bytes());
            e[10] = *start;
            e[11] = *end;
        }
        fix_checksum(&mut t);
        t
    }

    fn fix_checksum(t: &mut [u8]) {
        t[9] = 0;
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = sum.wrapping_neg();
    }

    #[test]
    fn two_segments() {
        let t = build(&[(0xb000_0000, 0, 0, 0xff), (0x8000_0000, 1, 0x10, 0x1f)]);
        let r = parse(&t).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].segment(), 1);
        assert_eq!(r[1].window_base(), 0x8000_0000 + (0x10 << 20));
        assert_eq!(r[1].window_size(), 16 << 20);
        assert!(r[1].contains(1, 0x1f) && !r[1].contains(0, 0x1f) && !r[1].contains(1, 0x20));
    }

    #[test]
    fn lying_lengths_are_refused() {
        let good = build(&[(0xb000_0000, 0, 0, 0xff)]);
        // Longer than the buffer.
        let mut t = good.clone();
        t[4..8].copy_from_slice(&(good.len() as u32 + 16).to_le_bytes());
        assert!(matches!(
            parse(&t),
            Err(McfgError::LengthExceedsBuffer { .. })
        ));
        // Shorter than the header.
        let mut t = good.clone();
        t[4..8].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(parse(&t), Err(McfgError::LengthTooShort(40)));
        // A partial entry.
        let mut t = good.clone();
        t[4..8].copy_from_slice(&(good.len() as u32 - 4).to_le_bytes());
        fix_checksum(&mut t[..good.len() - 4]);
        assert_eq!(parse(&t), Err(McfgError::PartialEntry { trailing: 12 }));
        // The buffer cut short.
        assert!(matches!(
            parse(&good[..50]),
            Err(McfgError::LengthExceedsBuffer { .. })
        ));
        assert!(matches!(
            parse(&good[..10]),
            Err(McfgError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(matches!(
            parse(&build(&[(0xb000_0000, 0, 5, 4)])),
            Err(McfgError::BusRange { index: 0, .. })
        ));
        assert!(matches!(
            parse(&build(&[(u64::MAX - 0xfff, 0, 0, 0)])),
            Err(McfgError::BadBaseAddress { .. })
        ));
        assert!(matches!(
            parse(&build(&[(0xb000_0800, 0, 0, 0)])),
            Err(McfgError::BadBaseAddress { .. })
        ));
        assert_eq!(
            parse(&build(&[
                (0xb000_0000, 0, 0, 0x7f),
                (0xc000_0000, 0, 0x7f, 0xff)
            ])),
            Err(McfgError::Overlap {
                first: 0,
                second: 1
            })
        );
        let mut t = build(&[(0xb000_0000, 0, 0, 0xff)]);
        t[20] ^= 1;
        assert!(matches!(parse(&t), Err(McfgError::BadChecksum { .. })));
        t[0] = b'X';
        assert!(matches!(parse(&t), Err(McfgError::BadSignature(_))));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn built_tables_round_trip(
            entries in proptest::collection::vec((0u64..1 << 40, any::<u16>(), any::<u8>(), any::<u8>()), 0..4)
        ) {
            let entries: Vec<_> = entries
                .into_iter()
                .enumerate()
                .map(|(i, (base, _, a, b))| (base << 12, i as u16, a.min(b), a.max(b)))
                .collect();
            let parsed = parse(&build(&entries)).unwrap();
            prop_assert_eq!(parsed.len(), entries.len());
            for (r, e) in parsed.iter().zip(&entries) {
                prop_assert_eq!((r.base_address(), r.segment(), r.start_bus(), r.end_bus()), *e);
            }
        }
    }
}
