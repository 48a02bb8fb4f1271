//! Bounded mutation fuzzing of the MCFG parser (PCI Firmware 3.2 §4.1.2) and of enumeration
//! over configuration spaces (PCIe Base 4.0 §7.5), starting from what QEMU 7.2 produced.
//!
//! Fixed seeds and counts (a few seconds in a debug build). Every MCFG the parser accepts is
//! checked against its raw bytes and a pairwise overlap reference; every enumeration of a mutated
//! configuration space must terminate with each function once, each one present, parent chains
//! that end, and capability walks that end. Named regression cases for the defects are in the
//! unit tests of `mcfg.rs` (zero and misaligned bases, the 4 MiB table).

use pci::capability::{extended_capabilities, standard_capabilities};
use pci::mcfg::{self, McfgRegion, ENTRIES_OFFSET, ENTRY_LEN};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::{enumerate, Bdf};

const ACPI_DUMP: &str = include_str!("../../iommu-vtd/tests/fixtures/complex.acpi");
const COMPLEX_CFG: &str = include_str!("fixtures/complex.cfg");
const DEFAULT_CFG: &str = include_str!("fixtures/default.cfg");

#[path = "../../iommu-vtd/tests/support/rng.rs"]
mod rng;
use rng::Rng;

fn repair(t: &mut [u8]) {
    if t.len() < 10 {
        return;
    }
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0;
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    t[9] = sum.wrapping_neg();
}

/// QEMU's MCFG plus three more entries of other segments / bus ranges, so that overlaps,
/// alignment and bus ranges all have something to hit.
fn seed_mcfg() -> Vec<u8> {
    let mut t = acpi_table_bytes(ACPI_DUMP, "MCFG");
    for (base, seg, start, end) in [
        (0xc000_0000u64, 1u16, 0u8, 0x3fu8),
        (0xd000_0000, 1, 0x40, 0x7f),
        (0x10_0000_0000, 2, 0x10, 0x10),
    ] {
        let mut e = [0u8; ENTRY_LEN];
        e[..8].copy_from_slice(&base.to_le_bytes());
        e[8..10].copy_from_slice(&seg.to_le_bytes());
        e[10] = start;
        e[11] = end;
        t.extend_from_slice(&e);
    }
    repair(&mut t);
    t
}

fn mutate_mcfg(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut t = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        if t.is_empty() {
            break;
        }
        match rng.below(6) {
            0 => {
                let i = rng.below(t.len());
                t[i] ^= 1 << rng.below(8);
            }
            1 => t.truncate(rng.below(t.len() + 1)),
            2 => {
                // The length field.
                if t.len() >= 8 {
                    let v = (t.len() as u32)
                        .wrapping_add(rng.below(40) as u32)
                        .wrapping_sub(20);
                    t[4..8].copy_from_slice(&v.to_le_bytes());
                }
            }
            3 => {
                // Duplicate or insert a whole entry (possibly overlapping another).
                if t.len() >= ENTRIES_OFFSET + ENTRY_LEN {
                    let n = (t.len() - ENTRIES_OFFSET) / ENTRY_LEN;
                    let from = ENTRIES_OFFSET + rng.below(n) * ENTRY_LEN;
                    let e = t[from..from + ENTRY_LEN].to_vec();
                    let at = ENTRIES_OFFSET + rng.below(n + 1) * ENTRY_LEN;
                    t.splice(at..at, e);
                }
            }
            4 => {
                // An entry field: base bytes, segment, buses.
                if t.len() >= ENTRIES_OFFSET + ENTRY_LEN {
                    let n = (t.len() - ENTRIES_OFFSET) / ENTRY_LEN;
                    let at = ENTRIES_OFFSET + rng.below(n) * ENTRY_LEN + rng.below(12);
                    t[at] = match rng.below(3) {
                        0 => 0,
                        1 => 0xff,
                        _ => rng.next() as u8,
                    };
                }
            }
            _ => {
                let at = rng.below(t.len() + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(20)).map(|_| rng.next() as u8).collect();
                t.splice(at..at, bytes);
            }
        }
    }
    if rng.below(10) != 0 {
        repair(&mut t);
    }
    t
}

fn check_mcfg(t: &[u8], regions: &[McfgRegion]) -> Result<(), String> {
    let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize;
    if len < ENTRIES_OFFSET || len > t.len() || !(len - ENTRIES_OFFSET).is_multiple_of(ENTRY_LEN) {
        return Err(format!("accepted length {len}"));
    }
    if regions.len() != (len - ENTRIES_OFFSET) / ENTRY_LEN {
        return Err(format!("{} regions from {len} bytes", regions.len()));
    }
    for (i, r) in regions.iter().enumerate() {
        let e = &t[ENTRIES_OFFSET + i * ENTRY_LEN..][..ENTRY_LEN];
        let raw_base = u64::from_le_bytes(e[..8].try_into().unwrap());
        let raw = (raw_base, u16::from_le_bytes([e[8], e[9]]), e[10], e[11]);
        if (r.base_address(), r.segment(), r.start_bus(), r.end_bus()) != raw {
            return Err(format!("region {i} {r:?} differs from its bytes {raw:x?}"));
        }
        if r.base_address() == 0 || r.base_address() & 0xf_ffff != 0 {
            return Err(format!("region {i} base {:#x} accepted", r.base_address()));
        }
        if r.start_bus() > r.end_bus() {
            return Err(format!("region {i} inverted buses"));
        }
        let last = (u64::from(r.end_bus()) + 1) << 20;
        if r.base_address().checked_add(last - 1).is_none() {
            return Err(format!("region {i} window overflows"));
        }
        for (j, o) in regions[..i].iter().enumerate() {
            if o.segment() == r.segment()
                && o.start_bus() <= r.end_bus()
                && r.start_bus() <= o.end_bus()
            {
                return Err(format!("regions {j} and {i} overlap"));
            }
        }
    }
    Ok(())
}

#[test]
fn mutated_mcfgs_are_refused_or_consistent() {
    let base = seed_mcfg();
    assert_eq!(mcfg::parse(&base).unwrap().len(), 4);
    let (mut accepted, mut overlaps, mut misaligned, mut total) = (0, 0, 0, 0);
    for seed in [0x6d63_6667u64, 0xa5a5_5a5a_0f0f_f0f0, 7] {
        let mut rng = Rng(seed);
        for i in 0..6000 {
            let t = mutate_mcfg(&mut rng, &base);
            total += 1;
            match mcfg::parse(&t) {
                Ok(regions) => {
                    accepted += 1;
                    if let Err(why) = check_mcfg(&t, &regions) {
                        panic!("seed {seed:#x} mutant {i}: {why}\n{t:02x?}");
                    }
                }
                Err(mcfg::McfgError::Overlap { first, second }) => {
                    assert!(first < second);
                    overlaps += 1;
                }
                Err(
                    mcfg::McfgError::ZeroBaseAddress { .. }
                    | mcfg::McfgError::MisalignedBaseAddress { .. },
                ) => misaligned += 1,
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    assert!(accepted > total / 10, "only {accepted}/{total} accepted");
    assert!(overlaps > total / 100, "only {overlaps} overlaps refused");
    assert!(
        misaligned > total / 100,
        "only {misaligned} bad bases refused"
    );
}

/// The functions a fixture holds, from its `bb:dd.f OFF VALUE` lines.
fn fixture_functions(cfg: &str) -> Vec<Bdf> {
    let mut bdfs: Vec<Bdf> = cfg
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    bdfs.sort_unstable();
    bdfs.dedup();
    bdfs
}

/// Where a mutation does the most damage to enumeration: IDs, header type, status (capability
/// list bit), bus numbers, the capability pointer, the first capability headers and the first
/// extended capability header; otherwise anywhere.
fn pick_offset(rng: &mut Rng) -> u16 {
    const HOT: [u16; 12] = [
        0x00, 0x06, 0x0c, 0x0e, 0x18, 0x19, 0x1a, 0x34, 0x40, 0x41, 0x100, 0x102,
    ];
    if rng.below(4) == 0 {
        (rng.below(0x1000) as u16) & !3
    } else {
        HOT[rng.below(HOT.len())]
    }
}

fn check_enumeration(fake: &FakeConfigSpace, regions: &[McfgRegion]) -> Result<usize, String> {
    let topology = enumerate(fake, regions);
    let functions = topology.functions();
    let mut bdfs: Vec<Bdf> = functions.iter().map(|f| f.bdf).collect();
    bdfs.sort_unstable();
    let n = bdfs.len();
    bdfs.dedup();
    if bdfs.len() != n {
        return Err(format!(
            "{} functions listed more than once",
            n - bdfs.len()
        ));
    }
    for f in functions {
        if fake.peek16(f.bdf, 0) == 0xffff {
            return Err(format!("{} listed but absent", f.bdf));
        }
        if topology.upstream_bridges(f.bdf).count() > n {
            return Err(format!("{}: parent chain does not end", f.bdf));
        }
        if standard_capabilities(fake, f.bdf).entries.len() > 48 {
            return Err(format!("{}: standard capability walk too long", f.bdf));
        }
        if extended_capabilities(fake, f.bdf).entries.len() > 1024 {
            return Err(format!("{}: extended capability walk too long", f.bdf));
        }
    }
    Ok(n)
}

#[test]
fn mutated_config_spaces_enumerate_each_function_once() {
    let regions = mcfg::parse(&acpi_table_bytes(ACPI_DUMP, "MCFG")).unwrap();
    let mut changed_count = 0;
    for (cfg, seed) in [(COMPLEX_CFG, 0xc0f16_u64), (DEFAULT_CFG, 0xdef0_u64)] {
        let present = fixture_functions(cfg);
        let mut rng = Rng(seed);
        let mut fake = FakeConfigSpace::from_qemu_fixture(cfg).unwrap();
        let baseline = check_enumeration(&fake, &regions).unwrap();
        assert_eq!(
            baseline,
            present.len(),
            "the unmutated space enumerates fully"
        );
        for i in 0..150 {
            if i % 50 == 0 {
                fake = FakeConfigSpace::from_qemu_fixture(cfg).unwrap();
            }
            let mut undo = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let bdf = present[rng.below(present.len())];
                let off = pick_offset(&mut rng);
                let dword = off & !3;
                undo.push((bdf, dword, fake.peek32(bdf, dword)));
                match rng.below(3) {
                    0 => fake.poke8(bdf, off, rng.next() as u8),
                    1 => fake.poke16(bdf, off & !1, rng.next() as u16),
                    _ => fake.poke32(bdf, dword, rng.next() as u32),
                }
            }
            match check_enumeration(&fake, &regions) {
                Ok(n) => changed_count += usize::from(n != baseline),
                Err(why) => panic!("seed {seed:#x} iteration {i}: {why} after {undo:x?}"),
            }
            for (bdf, dword, value) in undo.into_iter().rev() {
                fake.poke32(bdf, dword, value);
            }
        }
    }
    // Some mutations must have changed what was found (hidden functions, broken bridges),
    // or the mutator is not reaching the enumeration logic.
    assert!(
        changed_count > 5,
        "only {changed_count} mutants changed the enumeration"
    );
}
