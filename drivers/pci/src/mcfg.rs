//! The ACPI MCFG table: where each PCI segment group's ECAM window lives (PCI Firmware
//! Specification 3.2 §4.1.2; ECAM layout in PCIe Base 4.0 §7.2.2).
//!
//! The table is an ACPI header (36 bytes), 8 reserved bytes and then one 16-byte *configuration
//! space base address allocation* per ECAM region: base address (u64), PCI segment group (u16),
//! start bus (u8), end bus (u8), reserved (u32). All fields are little-endian.
//!
//! Firmware input is refused with a typed [`McfgError`] when it cannot describe real ECAM: a
//! base address of 0 or not aligned to the 1 MiB a bus occupies, a window past the end of the
//! address space, an inverted bus range, or two entries claiming the same bus of one segment.
//! The overlap check sorts the entries (O(n log n)), so even a table at the 4 GiB length limit
//! is judged in bounded time.

use alloc::collections::BTreeMap;
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
    /// An entry's base address is 0 (no ECAM there; firmware left the entry unfilled).
    ZeroBaseAddress {
        /// Entry index.
        index: usize,
    },
    /// An entry's base address is not aligned to the 1 MiB of configuration space one bus
    /// occupies (PCIe Base 4.0 §7.2.2: ECAM address bits 19:0 select device, function and
    /// register).
    MisalignedBaseAddress {
        /// Entry index.
        index: usize,
        /// The base address.
        base_address: u64,
    },
    /// An entry's window ends beyond the 64-bit address space.
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
            Self::ZeroBaseAddress { index } => write!(f, "MCFG entry {index}: base address is 0"),
            Self::MisalignedBaseAddress {
                index,
                base_address,
            } => write!(
                f,
                "MCFG entry {index}: base {base_address:#x} is not 1 MiB aligned"
            ),
            Self::BadBaseAddress {
                index,
                base_address,
            } => write!(
                f,
                "MCFG entry {index}: the window of base {base_address:#x} overflows the address space"
            ),
            Self::Overlap { first, second } => {
                write!(f, "MCFG entries {first} and {second} cover the same buses")
            }
        }
    }
}

impl core::error::Error for McfgError {}

impl McfgRegion {
    /// Builds a region, checking `start_bus <= end_bus`, that the base is nonzero and 1 MiB
    /// aligned and that the window ends inside the 64-bit address space. Errors report entry
    /// index 0.
    ///
    /// # Errors
    ///
    /// [`McfgError::BusRange`] when `start_bus > end_bus`, [`McfgError::ZeroBaseAddress`] for a
    /// zero base, [`McfgError::MisalignedBaseAddress`] for a base not 1 MiB aligned and
    /// [`McfgError::BadBaseAddress`] when the window would end beyond the 64-bit address space.
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
        if base_address == 0 {
            return Err(McfgError::ZeroBaseAddress { index });
        }
        if base_address & (BUS_WINDOW_SIZE - 1) != 0 {
            return Err(McfgError::MisalignedBaseAddress {
                index,
                base_address,
            });
        }
        // The last byte of the window: base + (end_bus + 1) * 1 MiB - 1 must not overflow.
        let end = (end_bus as u64 + 1) * BUS_WINDOW_SIZE - 1;
        if base_address.checked_add(end).is_none() {
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
}

/// The first pair of entries that claim a common bus of one segment, if any: the pair with the
/// smallest second index (and, for it, the smallest first index), which is what a pairwise
/// check in table order reports first, so the error does not depend on the algorithm.
///
/// One pass in table order keeps, per segment, a 256-bit map of the buses claimed so far: an
/// entry overlaps an earlier one exactly when its bus range meets the map (four word tests).
/// O(n log s) for n entries over s segments; only the conflicting entry's partner is searched
/// linearly, once. (Earlier this was an O(n²) pairwise scan: a 4 MiB table took 20 s.)
fn first_overlap(regions: &[McfgRegion]) -> Option<(usize, usize)> {
    let mut claimed: BTreeMap<u16, [u64; 4]> = BTreeMap::new();
    for (second, r) in regions.iter().enumerate() {
        let bits = claimed.entry(r.segment).or_insert([0; 4]);
        let masks = bus_masks(r.start_bus, r.end_bus);
        if bits.iter().zip(&masks).any(|(b, m)| b & m != 0) {
            let first = regions[..second]
                .iter()
                .position(|o| {
                    o.segment == r.segment && o.start_bus <= r.end_bus && r.start_bus <= o.end_bus
                })
                .unwrap_or(0);
            return Some((first, second));
        }
        for (b, m) in bits.iter_mut().zip(masks) {
            *b |= m;
        }
    }
    None
}

/// The buses `start..=end` (start <= end) as four 64-bit words of a 256-bit map.
fn bus_masks(start: u8, end: u8) -> [u64; 4] {
    let mut masks = [0u64; 4];
    for (word, mask) in masks.iter_mut().enumerate() {
        let lo = (word * 64) as u32;
        let hi = lo + 63;
        let (s, e) = (u32::from(start).max(lo), u32::from(end).min(hi));
        if s <= e {
            // Bits s..=e of this word: (e - s + 1) ones shifted to s - lo.
            let ones = u64::MAX >> (63 - (e - s));
            *mask = ones << (s - lo);
        }
    }
    masks
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
///
/// # Errors
///
/// [`McfgError::Truncated`], [`McfgError::BadSignature`], [`McfgError::LengthTooShort`],
/// [`McfgError::LengthExceedsBuffer`], [`McfgError::PartialEntry`] and
/// [`McfgError::BadChecksum`] for a malformed table; the errors of [`McfgRegion::new`] for a bad
/// entry (with its index); [`McfgError::Overlap`] when two entries cover the same bus.
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
        regions.push(region);
    }
    if let Some((first, second)) = first_overlap(&regions) {
        return Err(McfgError::Overlap { first, second });
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
            parse(&build(&[(!0xf_ffffu64, 0, 0, 1)])),
            Err(McfgError::BadBaseAddress { .. })
        ));
        assert!(matches!(
            parse(&build(&[(0xb000_0800, 0, 0, 0)])),
            Err(McfgError::MisalignedBaseAddress { .. })
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

    #[test]
    fn zero_and_misaligned_bases_are_refused() {
        assert_eq!(
            parse(&build(&[(0xb000_0000, 0, 0, 0xff), (0, 1, 0, 0xff)])),
            Err(McfgError::ZeroBaseAddress { index: 1 })
        );
        // 4 KiB aligned is not enough: bus windows are 1 MiB.
        for base in [0xb000_1000u64, 0xb008_0000, 0xb00f_f000] {
            assert_eq!(
                parse(&build(&[(base, 0, 0, 0)])),
                Err(McfgError::MisalignedBaseAddress {
                    index: 0,
                    base_address: base
                })
            );
        }
        assert_eq!(
            McfgRegion::new(0, 0, 0, 0),
            Err(McfgError::ZeroBaseAddress { index: 0 })
        );
        assert!(parse(&build(&[(0x10_0000, 0, 0, 0)])).is_ok());
    }

    /// A table at the 4 MiB size that took 20 s with the pairwise overlap check: 262 141
    /// single-bus entries over 1 024 segments, all distinct, then the same table with its last
    /// entry moved onto the bus of entry 1000.
    #[test]
    fn four_mib_table_is_judged() {
        let n = (4 << 20) / ENTRY_LEN - 3;
        let entries: Vec<_> = (0..n)
            .map(|i| {
                let base = 0x1_0000_0000u64 + (i as u64) * (256 << 20);
                (base, (i / 256) as u16, (i % 256) as u8, (i % 256) as u8)
            })
            .collect();
        let table = build(&entries);
        assert!(table.len() <= 4 << 20 && table.len() > (4 << 20) - 64);
        let regions = parse(&table).unwrap();
        assert_eq!(regions.len(), n);
        let mut clash = entries.clone();
        let last = clash.len() - 1;
        clash[last].1 = entries[1000].1;
        clash[last].2 = entries[1000].2;
        clash[last].3 = entries[1000].3;
        assert_eq!(
            parse(&build(&clash)),
            Err(McfgError::Overlap {
                first: 1000,
                second: last
            })
        );
    }

    #[test]
    fn bus_masks_cover_exactly_the_range() {
        for (start, end) in [
            (0u8, 0u8),
            (0, 255),
            (63, 64),
            (5, 200),
            (255, 255),
            (64, 127),
        ] {
            let m = bus_masks(start, end);
            for bus in 0..=255u8 {
                let set = m[usize::from(bus / 64)] >> (bus % 64) & 1 == 1;
                assert_eq!(
                    set,
                    (start..=end).contains(&bus),
                    "{start}..={end} bus {bus}"
                );
            }
        }
    }

    /// The pairwise check the sweep replaced: the reference for which pair is reported.
    fn naive_overlap(r: &[McfgRegion]) -> Option<(usize, usize)> {
        (0..r.len()).find_map(|second| {
            (0..second)
                .find(|&first| {
                    r[first].segment == r[second].segment
                        && r[first].start_bus <= r[second].end_bus
                        && r[second].start_bus <= r[first].end_bus
                })
                .map(|first| (first, second))
        })
    }

    proptest! {
        #[test]
        fn overlap_matches_the_pairwise_reference(
            entries in proptest::collection::vec((0u16..3, any::<u8>(), any::<u8>()), 0..12)
        ) {
            let regions: Vec<McfgRegion> = entries
                .iter()
                .map(|&(seg, a, b)| McfgRegion::new(0xb000_0000, seg, a.min(b), a.max(b)).unwrap())
                .collect();
            prop_assert_eq!(first_overlap(&regions), naive_overlap(&regions));
        }

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
                .map(|(i, (base, _, a, b))| ((base + 1) << 20, i as u16, a.min(b), a.max(b)))
                .collect();
            let parsed = parse(&build(&entries)).unwrap();
            prop_assert_eq!(parsed.len(), entries.len());
            for (r, e) in parsed.iter().zip(&entries) {
                prop_assert_eq!((r.base_address(), r.segment(), r.start_bus(), r.end_bus()), *e);
            }
        }
    }
}
