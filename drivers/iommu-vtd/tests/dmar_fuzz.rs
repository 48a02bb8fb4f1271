//! Bounded mutation fuzzing of the DMAR parser (VT-d §8) over the tables QEMU produced.
//!
//! Fixed seeds, a fixed number of mutants per fixture (well under a second in a debug build):
//! byte flips, random bytes, truncations, edits of the table, structure and scope length fields,
//! insertions and duplicated structures, with the table length and checksum repaired most of the
//! time so the mutant gets past the framing checks. Every table the parser accepts is checked
//! for internal consistency against an independent walk of its raw bytes. The defects earlier
//! fuzzing exposed are kept as named cases in `dmar_refused.rs`.

use iommu_vtd::dmar::{
    RemappingStructure, ScopeKind, MAX_HOST_ADDRESS_WIDTH, MAX_REGISTER_SIZE_LOG2_PAGES,
    MIN_HOST_ADDRESS_WIDTH,
};
use iommu_vtd::{Dmar, DmarError};

const FIXTURES: [&str; 3] = [
    include_str!("fixtures/default.acpi"),
    include_str!("fixtures/complex.acpi"),
    include_str!("fixtures/aw48.acpi"),
];
const MUTANTS_PER_SEED: usize = 4000;
const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 0x0123_4567_89ab_cdef];
const HEADER: usize = 48;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn fixture(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| l.starts_with("DMAR 0"))
        .flat_map(|l| l.split_once(':').map_or("", |(_, b)| b).split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

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

/// Offsets of every structure header and every scope length byte, walked leniently (stopping at
/// the first inconsistency): the places a length edit does the most damage.
fn length_fields(t: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = vec![(4, 4)];
    let mut off = HEADER;
    while off + 4 <= t.len() {
        let kind = u16::from_le_bytes([t[off], t[off + 1]]);
        let len = usize::from(u16::from_le_bytes([t[off + 2], t[off + 3]]));
        fields.push((off + 2, 2));
        if len < 4 || off + len > t.len() {
            break;
        }
        let fixed = match kind {
            0 => 16,
            1 => 24,
            2 | 5 | 6 => 8,
            _ => len,
        };
        let mut s = off + fixed;
        while s + 2 <= off + len {
            fields.push((s + 1, 1));
            let sl = usize::from(t[s + 1]);
            if sl == 0 {
                break;
            }
            s += sl;
        }
        off += len;
    }
    fields
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut t = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            0 => {
                let i = rng.below(t.len());
                t[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(t.len());
                t[i] = rng.next() as u8;
            }
            2 => t.truncate(rng.below(t.len() + 1)),
            3 => {
                let fields = length_fields(&t);
                let (at, width) = fields[rng.below(fields.len())];
                let v = match rng.below(4) {
                    0 => 0,
                    1 => rng.next(),
                    2 => u64::MAX,
                    _ => {
                        let mut cur = 0u64;
                        for k in 0..width {
                            cur |= u64::from(t.get(at + k).copied().unwrap_or(0)) << (8 * k);
                        }
                        cur.wrapping_add(rng.below(17) as u64).wrapping_sub(8)
                    }
                };
                for k in 0..width {
                    if at + k < t.len() {
                        t[at + k] = (v >> (8 * k)) as u8;
                    }
                }
            }
            4 => {
                let at = rng.below(t.len() + 1);
                let n = 1 + rng.below(24);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                t.splice(at..at, bytes);
            }
            5 => {
                // Duplicate a slice at a structure boundary-ish place.
                if t.len() > HEADER {
                    let from = HEADER + rng.below(t.len() - HEADER);
                    let n = 1 + rng.below((t.len() - from).min(48));
                    let chunk = t[from..from + n].to_vec();
                    let at = HEADER + rng.below(t.len() - HEADER + 1);
                    t.splice(at..at, chunk);
                }
            }
            _ => {
                // A field of a DRHD/RMRR: the register base, size byte, RMRR base/limit.
                if t.len() > HEADER + 16 {
                    let at = HEADER + 4 + rng.below(12);
                    t[at] = rng.next() as u8;
                }
            }
        }
        if t.is_empty() {
            break;
        }
    }
    if rng.below(10) != 0 {
        repair(&mut t);
    }
    t
}

/// What an accepted table must satisfy, checked against the raw bytes.
fn check_consistent(bytes: &[u8], dmar: &Dmar<'_>) -> Result<(), String> {
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if len < HEADER || len > bytes.len() {
        return Err(format!("accepted table length {len}"));
    }
    let haw = dmar.host_address_width();
    if !(MIN_HOST_ADDRESS_WIDTH..=MAX_HOST_ADDRESS_WIDTH).contains(&haw) {
        return Err(format!("host address width {haw}"));
    }
    // Every structure lies inside the table, and their lengths add up to exactly its end.
    let mut off = HEADER;
    let mut count = 0;
    while off < len {
        if off + 4 > len {
            return Err(format!("structure header at {off:#x} cut by the end"));
        }
        let slen = usize::from(u16::from_le_bytes([bytes[off + 2], bytes[off + 3]]));
        if slen < 4 || off + slen > len {
            return Err(format!("structure at {off:#x} of length {slen}"));
        }
        off += slen;
        count += 1;
    }
    let refused_structures = dmar
        .refused()
        .filter(|r| !matches!(r.error, iommu_vtd::StructureError::ReservedScopeType { .. }))
        .count();
    if dmar.structures().count() + refused_structures != count {
        return Err(format!(
            "{} usable + {refused_structures} refused structures, {count} in the table",
            dmar.structures().count()
        ));
    }
    let check_scopes = |scopes: iommu_vtd::dmar::DeviceScopes<'_>| -> Result<(), String> {
        for s in scopes {
            if matches!(s.kind(), ScopeKind::Other(_)) {
                return Err(format!("reserved scope type yielded: {s:?}"));
            }
            if s.path().len() == 0 {
                return Err("empty scope path".into());
            }
            if s.path().any(|e| e.device > 31 || e.function > 7) {
                return Err(format!("bad path entry in {s:?}"));
            }
            // Resolution terminates and lands on the last path entry.
            let last = s.path().last().unwrap();
            let b = s
                .resolve(|bus, _, _| Some(bus.wrapping_add(1)))
                .map_err(|e| e.to_string())?;
            if (b.device(), b.function()) != (last.device, last.function) {
                return Err(format!("resolved {b} does not end at the last entry"));
            }
        }
        Ok(())
    };
    for s in dmar.structures() {
        match s {
            RemappingStructure::Drhd(d) => {
                let (base, size) = (d.register_base(), d.register_size());
                if base == 0 || base & 0xfff != 0 {
                    return Err(format!("DRHD base {base:#x} accepted"));
                }
                if !size.is_power_of_two()
                    || !(4096..=4096 << MAX_REGISTER_SIZE_LOG2_PAGES).contains(&size)
                {
                    return Err(format!("DRHD register size {size:#x} accepted"));
                }
                if base.checked_add(size - 1).is_none() {
                    return Err(format!("DRHD window {base:#x}+{size:#x} overflows"));
                }
                check_scopes(d.scopes())?;
            }
            RemappingStructure::Rmrr(r) => {
                let (b, l) = (r.base(), r.limit());
                if b > l || b & 0xfff != 0 || l.wrapping_add(1) & 0xfff != 0 {
                    return Err(format!("RMRR {b:#x}..={l:#x} accepted"));
                }
                check_scopes(r.scopes())?;
            }
            RemappingStructure::Atsr(a) => check_scopes(a.scopes())?,
            RemappingStructure::Satc(s) => check_scopes(s.scopes())?,
            RemappingStructure::Sidp(s) => check_scopes(s.scopes())?,
            RemappingStructure::Rhsa(_) | RemappingStructure::Andd(_) => {}
            RemappingStructure::Other { kind, body } => {
                if kind <= 6 || body.len() < 4 {
                    return Err(format!("known type {kind} left opaque"));
                }
            }
        }
    }
    match dmar.require_unit() {
        Ok(()) if dmar.drhds().count() == 0 => return Err("unit required but none".into()),
        Err(DmarError::NoRemappingUnit { .. }) if dmar.drhds().count() > 0 => {
            return Err("units present but reported none".into())
        }
        Err(e) if !matches!(e, DmarError::NoRemappingUnit { .. }) => {
            return Err(format!("require_unit returned {e}"))
        }
        _ => {}
    }
    // Display of every refusal works (the kernel logs them).
    for r in dmar.refused() {
        if r.to_string().is_empty() {
            return Err("empty refusal text".into());
        }
    }
    Ok(())
}

#[test]
fn mutated_qemu_dmars_are_refused_or_consistent() {
    let (mut accepted, mut with_refusals, mut rejected) = (0usize, 0usize, 0usize);
    for (f, text) in FIXTURES.iter().enumerate() {
        let base = fixture(text);
        assert!(Dmar::parse(&base).is_ok());
        for seed in SEEDS {
            let mut rng = Rng(seed ^ (f as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for i in 0..MUTANTS_PER_SEED {
                let t = mutate(&mut rng, &base);
                match Dmar::parse(&t) {
                    Ok(dmar) => {
                        accepted += 1;
                        if dmar.refused().next().is_some() {
                            with_refusals += 1;
                        }
                        if let Err(why) = check_consistent(&t, &dmar) {
                            panic!("fixture {f} seed {seed:#x} mutant {i}: {why}\n{t:02x?}");
                        }
                    }
                    Err(e) => {
                        rejected += 1;
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
    }
    // The mutator must reach both sides of every check, or the test proves nothing.
    let total = FIXTURES.len() * SEEDS.len() * MUTANTS_PER_SEED;
    assert!(accepted > total / 10, "only {accepted}/{total} accepted");
    assert!(rejected > total / 10, "only {rejected}/{total} rejected");
    assert!(
        with_refusals > total / 100,
        "only {with_refusals} accepted tables had refused structures"
    );
}

/// Pure noise after a valid header: never a panic, and accepted tables stay consistent.
#[test]
fn random_structure_areas_are_refused_or_consistent() {
    let base = fixture(FIXTURES[0]);
    let mut rng = Rng(0xfeed_f00d);
    for _ in 0..3000 {
        let n = rng.below(96);
        let mut t = base[..HEADER].to_vec();
        t.extend((0..n).map(|_| rng.next() as u8));
        repair(&mut t);
        if let Ok(dmar) = Dmar::parse(&t) {
            check_consistent(&t, &dmar).unwrap();
        }
    }
}
