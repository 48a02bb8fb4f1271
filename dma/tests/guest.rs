//! Guest address spaces (issue 14, part 1), through the public API only: leaf planning against
//! its rule (tiling, alignment, greedy maximality, closed-form counts), and [`GuestSpace`] over
//! the recording [`FakeDomain`] against a model of leaves and mappings.

use std::collections::BTreeMap;
use std::sync::Arc;

use dma::guest::MSI_WINDOW;
use dma::iommu::{IommuDomain, IommuError, IotlbGather, PageSizes, Prot};
use dma::testing::{FakeDomain, FakePte};
use dma::{
    count_leaves, plan_chunks, Chunk, DmaAddr, GuestError, GuestMapping, GuestMemoryMap,
    GuestRegion, GuestSpace, LeafCounts, RegionKind,
};
use proptest::prelude::*;

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const ALL: PageSizes = PageSizes::SIZE_4K
    .union(PageSizes::SIZE_2M)
    .union(PageSizes::SIZE_1G);
const RW: Prot = Prot::READ.union(Prot::WRITE);

fn plan(gpa: u64, hpa: u64, len: u64, sizes: PageSizes) -> Vec<Chunk> {
    plan_chunks(gpa, hpa, len, sizes)
        .expect("valid range")
        .collect()
}

fn counts_of(chunks: &[Chunk]) -> LeafCounts {
    let mut c = LeafCounts::default();
    for ch in chunks {
        match ch.size {
            K4 => c.k4 += 1,
            M2 => c.m2 += 1,
            G1 => c.g1 += 1,
            other => panic!("leaf size {other:#x}"),
        }
    }
    c
}

/// The sizes the rule may pick from `sizes` (4 KiB always), in bytes.
fn allowed(sizes: PageSizes) -> Vec<u64> {
    let mut v = vec![K4];
    if sizes.contains(PageSizes::SIZE_2M) {
        v.push(M2);
    }
    if sizes.contains(PageSizes::SIZE_1G) {
        v.push(G1);
    }
    v
}

fn sizes_strategy() -> impl Strategy<Value = PageSizes> {
    prop_oneof![
        Just(ALL),
        Just(PageSizes::SIZE_4K),
        Just(PageSizes::SIZE_4K | PageSizes::SIZE_2M),
        Just(PageSizes::SIZE_4K | PageSizes::SIZE_1G),
        // 4 KiB is implied even when not listed.
        Just(PageSizes::SIZE_2M | PageSizes::SIZE_1G),
        Just(PageSizes::empty()),
    ]
}

/// `(gpa, hpa, len)` with every relative alignment (4 KiB, 2 MiB, 1 GiB), bounded so that a
/// plan has at most a few thousand chunks.
fn triple() -> impl Strategy<Value = (u64, u64, u64)> {
    let addr = (0u64..64, 0u64..512, 0u64..512).prop_map(|(a, b, c)| a * G1 + b * M2 + c * K4);
    let rel = prop_oneof![
        (1u64..64).prop_map(|k| k * G1),
        (1u64..512).prop_map(|k| k * M2),
        (1u64..1 << 18).prop_map(|k| k * K4),
    ];
    (addr, rel, any::<bool>(), 0u64..3, 0u64..600, 1u64..1500).prop_map(
        |(gpa, rel, down, g, m, k)| {
            let hpa = if down && rel <= gpa {
                gpa - rel
            } else {
                gpa + rel
            };
            let fine = (gpa ^ hpa) % M2 != 0;
            // Only 2 MiB-compatible pairs get long ranges (their chunks are large).
            let len = if fine {
                k * K4 + m * K4
            } else {
                g * G1 + m * M2 + k * K4
            };
            (gpa, hpa, len)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The plan tiles the range, every chunk is aligned in both spaces, and each is the
    /// largest allowed size that fits there (the model: no larger allowed size would have).
    #[test]
    fn plan_tiles_aligns_and_is_greedy_maximal(
        (gpa, hpa, len) in triple(),
        sizes in sizes_strategy(),
    ) {
        // Without 2 MiB leaves a long range is mostly 4 KiB chunks: keep those short.
        let len = if sizes.contains(PageSizes::SIZE_2M) { len } else { (len % (16 << 20)).max(K4) };
        let chunks = plan(gpa, hpa, len, sizes);
        let allowed = allowed(sizes);
        let (mut g, mut h) = (gpa, hpa);
        for c in &chunks {
            prop_assert_eq!((c.gpa, c.hpa), (g, h), "contiguous, advancing together");
            prop_assert!(allowed.contains(&c.size), "{:?} uses a size not allowed", c);
            prop_assert_eq!(c.gpa % c.size, 0, "gpa aligned: {:?}", c);
            prop_assert_eq!(c.hpa % c.size, 0, "hpa aligned: {:?}", c);
            let left = gpa + len - c.gpa;
            prop_assert!(c.size <= left, "{:?} overruns the range", c);
            for &bigger in allowed.iter().filter(|&&s| s > c.size) {
                prop_assert!(
                    !(c.gpa % bigger == 0 && c.hpa % bigger == 0 && bigger <= left),
                    "{:?}: a {:#x} leaf would have fit", c, bigger
                );
            }
            g += c.size;
            h += c.size;
        }
        prop_assert_eq!(g, gpa + len, "no gap at the end");
        prop_assert_eq!(count_leaves(gpa, hpa, len, sizes).unwrap(), counts_of(&chunks));
    }

    /// The closed form agrees with the walk on arbitrary 4 KiB granular values too (not only
    /// the structured triples), including ranges near the top of the address space.
    #[test]
    fn count_leaves_matches_the_plan_anywhere(
        gpa_page in prop_oneof![0u64..1 << 30, ((1u64 << 52) - 4096)..(1u64 << 52)],
        hpa_page in prop_oneof![0u64..1 << 30, ((1u64 << 52) - 4096)..(1u64 << 52)],
        pages in 1u64..3000,
        sizes in sizes_strategy(),
    ) {
        let (gpa, hpa, len) = (gpa_page * K4, hpa_page * K4, pages * K4);
        let walked = plan_chunks(gpa, hpa, len, sizes).map(|p| counts_of(&p.collect::<Vec<_>>()));
        prop_assert_eq!(count_leaves(gpa, hpa, len, sizes), walked);
        if gpa.checked_add(len).is_none() || hpa.checked_add(len).is_none() {
            let overflowed = matches!(walked, Err(GuestError::Overflow { .. }));
            prop_assert!(overflowed, "{:?}", walked);
        }
    }
}

#[test]
fn plan_refuses_bad_ranges() {
    let cases = [
        ((0, 0, 0), GuestError::ZeroLength),
        (
            (0x800, 0, K4),
            GuestError::Misaligned {
                what: "gpa",
                value: 0x800,
            },
        ),
        (
            (0, 0x10, K4),
            GuestError::Misaligned {
                what: "hpa",
                value: 0x10,
            },
        ),
        (
            (0, 0, K4 + 1),
            GuestError::Misaligned {
                what: "len",
                value: K4 + 1,
            },
        ),
        (
            (u64::MAX - 0xfff, 0, 2 * K4),
            GuestError::Overflow {
                what: "gpa",
                addr: u64::MAX - 0xfff,
                len: 2 * K4,
            },
        ),
        (
            (0, u64::MAX - 0xfff, 2 * K4),
            GuestError::Overflow {
                what: "hpa",
                addr: u64::MAX - 0xfff,
                len: 2 * K4,
            },
        ),
    ];
    for ((g, h, l), want) in cases {
        assert_eq!(plan_chunks(g, h, l, ALL).err(), Some(want));
        assert_eq!(count_leaves(g, h, l, ALL), Err(want));
    }
}

/// 16 GiB of 4 KiB leaves is counted in closed form: a walk (4 Mi chunks per call, 1000 calls,
/// plus a 2^50-byte range) could never finish inside the generous bound.
#[test]
fn count_leaves_is_closed_form_for_huge_ranges() {
    // No time is asserted: a count that walked the chunks would not finish the 2^50-byte range
    // below (2^38 leaves), so the test would hang instead of passing.
    let len = 16 * G1;
    for i in 0..1000u64 {
        // gpa and hpa differ by 4 KiB: only 4 KiB leaves are possible.
        let gpa = (i + 1) * K4;
        let c = count_leaves(gpa, gpa + K4, len, ALL).unwrap();
        assert_eq!(
            c,
            LeafCounts {
                k4: len / K4,
                m2: 0,
                g1: 0
            }
        );
        // Same alignment: rising and falling runs; bytes always add up.
        let d = count_leaves(gpa, gpa + G1, len, ALL).unwrap();
        assert_eq!(d.bytes(), len);
        assert!(d.g1 >= 14, "{d:?}");
    }
    let huge = count_leaves(K4, 2 * K4, 1 << 50, ALL).unwrap();
    assert_eq!(huge.k4, (1 << 50) / K4);
}

/// The "handful of entries" claim of issue 14.
#[test]
fn four_gib_of_1g_aligned_ram_is_four_leaves() {
    let (gpa, hpa, len) = (4 * G1, 16 * G1, 4 * G1);
    let want = LeafCounts {
        k4: 0,
        m2: 0,
        g1: 4,
    };
    assert_eq!(count_leaves(gpa, hpa, len, ALL), Ok(want));
    assert_eq!(want.total(), 4);
    let fake = Arc::new(FakeDomain::new());
    let space = GuestSpace::new(fake.clone());
    let m = space.map(gpa, hpa, len, RW).unwrap();
    assert_eq!(m.leaves, want);
    assert_eq!(fake.entries(), 4, "the table holds 4 entries");
    assert_eq!(fake.counts().leaves, [0, 0, 4]);
    assert_eq!(fake.counts().maps, 1, "one domain.map for the whole range");
    // Negative control: without 1 GiB pages the same range is 2048 entries.
    let no_1g = PageSizes::SIZE_4K | PageSizes::SIZE_2M;
    assert_eq!(count_leaves(gpa, hpa, len, no_1g).unwrap().total(), 2048);
}

// ---------------------------------------------------------------------------------------------
// GuestSpace over FakeDomain.

fn setup() -> (Arc<FakeDomain>, GuestSpace) {
    let fake = Arc::new(FakeDomain::new());
    fake.record_ops(true);
    let space = GuestSpace::new(fake.clone());
    (fake, space)
}

/// The fake's leaves of the whole aperture.
fn table(fake: &FakeDomain) -> Vec<(u64, FakePte)> {
    fake.entries_in(0, 1 << 39)
}

/// The leaves a set of mappings should have put in the table (their plans).
fn planned(maps: &[GuestMapping]) -> Vec<(u64, FakePte)> {
    maps.iter()
        .flat_map(|m| {
            plan(m.gpa, m.hpa, m.len, ALL).into_iter().map(move |c| {
                (
                    c.gpa,
                    FakePte {
                        paddr: c.hpa,
                        size: c.size,
                        prot: m.prot,
                    },
                )
            })
        })
        .collect()
}

#[test]
fn guest_space_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GuestSpace>();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Maps land where planned: the table holds exactly the plan's leaves, and every GPA inside
    /// translates to `hpa + offset`.
    #[test]
    fn maps_land_at_hpa_plus_offset(
        (gpa, hpa, len) in triple(),
        probes in proptest::collection::vec(any::<u64>(), 16),
    ) {
        prop_assume!(!(gpa < MSI_WINDOW.end && MSI_WINDOW.start < gpa + len));
        let (fake, space) = setup();
        let m = space.map(gpa, hpa, len, RW).unwrap();
        prop_assert_eq!(m, GuestMapping { gpa, hpa, len, prot: RW, leaves: count_leaves(gpa, hpa, len, ALL).unwrap() });
        prop_assert_eq!(table(&fake), planned(&[m]));
        for p in probes {
            let off = p % len;
            prop_assert_eq!(space.translate(gpa + off), Some((hpa + off, RW)));
            prop_assert_eq!(fake.translate(DmaAddr::new(gpa + off)).map(|(a, _)| a.as_u64()), Some(hpa + off));
        }
        prop_assert_eq!(space.translate(gpa + len), None);
        if gpa > 0 {
            prop_assert_eq!(space.translate(gpa - 1), None);
        }
        prop_assert_eq!(space.leaves(), m.leaves);
    }
}

#[test]
fn one_map_call_then_sync_map() {
    let (fake, space) = setup();
    space
        .map(G1 - M2 - K4, 5 * G1 - M2 - K4, G1 + 2 * M2, RW)
        .unwrap();
    let ops = fake.ops();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(matches!(ops[0], dma::testing::FakeOp::Map { size, .. } if size == G1 + 2 * M2));
    assert!(matches!(ops[1], dma::testing::FakeOp::SyncMap { size, .. } if size == G1 + 2 * M2));
}

#[test]
fn overlap_is_refused_and_changes_nothing() {
    let (fake, space) = setup();
    space.map(4 * M2, G1, 2 * M2, RW).unwrap();
    space.map(8 * M2, G1 + 8 * M2, M2, Prot::READ).unwrap();
    let before = (table(&fake), space.mappings(), fake.counts());
    for (gpa, len, existing) in [
        (4 * M2, K4, 4 * M2),          // same start
        (5 * M2 + K4, K4, 4 * M2),     // inside
        (3 * M2, M2 + K4, 4 * M2),     // reaching in from below
        (6 * M2 - K4, 4 * M2, 4 * M2), // spanning both: the lowest is named
        (7 * M2, 2 * M2, 8 * M2),      // reaching the second
        (0, 16 * M2, 4 * M2),          // covering both
    ] {
        assert_eq!(
            space.map(gpa, 3 * G1, len, RW),
            Err(GuestError::Overlap {
                gpa,
                existing_gpa: existing
            }),
            "{gpa:#x}+{len:#x}"
        );
    }
    assert_eq!((table(&fake), space.mappings(), fake.counts()), before);
    // Adjacent is not overlapping.
    space.map(6 * M2, 2 * G1, 2 * M2, RW).unwrap();
}

#[test]
fn msi_window_is_refused() {
    let (fake, space) = setup();
    let w = MSI_WINDOW;
    assert_eq!((w.start, w.end), (0xFEE0_0000, 0xFEF0_0000));
    for (gpa, len) in [
        (w.start, K4),
        (w.end - K4, K4),
        (w.start - K4, 2 * K4),
        (0, 4 * G1), // 4 GiB of RAM from 0 would cover it
    ] {
        assert_eq!(
            space.map(gpa, 8 * G1, len, RW),
            Err(GuestError::MsiWindow { gpa, len })
        );
    }
    assert_eq!(fake.entries(), 0);
    // Right below and right above are fine.
    space.map(w.start - K4, 8 * G1, K4, RW).unwrap();
    space.map(w.end, 9 * G1, K4, RW).unwrap();
}

#[test]
fn bad_arguments_are_refused() {
    let small = FakeDomain::with_info(dma::iommu::DomainInfo {
        aperture_end: DmaAddr::new((1 << 39) - 1),
        page_sizes: ALL,
        output_limit: 1 << 40,
    });
    let fake = Arc::new(small);
    let space = GuestSpace::new(fake.clone());
    let bad_bits = Prot::from_bits_retain(1 << 9) | Prot::READ;
    for (gpa, hpa, len, prot, want) in [
        (0, 0, 0, RW, GuestError::ZeroLength),
        (
            0x10,
            0,
            K4,
            RW,
            GuestError::Misaligned {
                what: "gpa",
                value: 0x10,
            },
        ),
        (
            0,
            0,
            K4,
            Prot::empty(),
            GuestError::BadProt {
                prot: Prot::empty(),
            },
        ),
        (
            0,
            0,
            K4,
            Prot::CACHE,
            GuestError::BadProt { prot: Prot::CACHE },
        ),
        (
            0,
            0,
            K4,
            Prot::READ | Prot::MMIO | Prot::CACHE,
            GuestError::BadProt {
                prot: Prot::READ | Prot::MMIO | Prot::CACHE,
            },
        ),
        (0, 0, K4, bad_bits, GuestError::BadProt { prot: bad_bits }),
        (
            (1 << 39) - K4,
            0,
            2 * K4,
            RW,
            GuestError::OutsideAperture {
                gpa: (1 << 39) - K4,
                len: 2 * K4,
                aperture_end: (1 << 39) - 1,
            },
        ),
        (
            0,
            (1 << 40) - K4,
            2 * K4,
            RW,
            GuestError::OutputBeyondLimit {
                hpa: (1 << 40) - K4,
                len: 2 * K4,
                output_limit: 1 << 40,
            },
        ),
    ] {
        assert_eq!(space.map(gpa, hpa, len, prot), Err(want));
    }
    assert_eq!(fake.counts().maps, 0, "nothing reached the domain");
    // Exactly at the limits is fine.
    space
        .map((1 << 39) - K4, (1 << 40) - K4, K4, Prot::READ | Prot::MMIO)
        .unwrap();
    assert_eq!(space.unmap(0, 0), Err(GuestError::ZeroLength));
    assert_eq!(
        space.unmap(0, 0x800),
        Err(GuestError::Misaligned {
            what: "len",
            value: 0x800
        })
    );
    assert_eq!(space.unmap(0, K4), Err(GuestError::NotMapped { gpa: 0 }));
}

#[test]
fn unmap_at_leaf_boundaries_keeps_the_remainders() {
    let (fake, space) = setup();
    // 4K, 2M x511, 1G, 2M, 4K x2 : a leaf mix with every boundary kind.
    let gpa = G1 - 511 * M2 - K4;
    let len = K4 + 511 * M2 + G1 + M2 + 2 * K4;
    let hpa = 8 * G1 + gpa;
    let m = space.map(gpa, hpa, len, RW).unwrap();
    let chunks = plan(gpa, hpa, len, ALL);
    // Unmap the 1 GiB leaf and the 2 MiB one before it.
    let (a, b) = (G1 - M2, 2 * G1);
    let removed = space.unmap(a, b - a).unwrap();
    assert_eq!(
        removed,
        counts_of(
            &chunks
                .iter()
                .copied()
                .filter(|c| c.gpa >= a && c.gpa < b)
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        removed,
        LeafCounts {
            k4: 0,
            m2: 1,
            g1: 1
        }
    );
    let left = GuestMapping {
        gpa,
        hpa,
        len: a - gpa,
        prot: RW,
        leaves: count_leaves(gpa, hpa, a - gpa, ALL).unwrap(),
    };
    let right_len = gpa + len - b;
    let right = GuestMapping {
        gpa: b,
        hpa: hpa + (b - gpa),
        len: right_len,
        prot: RW,
        leaves: count_leaves(b, hpa + (b - gpa), right_len, ALL).unwrap(),
    };
    assert_eq!(space.mappings(), [left, right]);
    assert_eq!(left.leaves + right.leaves + removed, m.leaves);
    // The remainders are the original plan's leaves, still in the table, still translating.
    let kept: Vec<Chunk> = chunks
        .iter()
        .copied()
        .filter(|c| c.gpa < a || c.gpa >= b)
        .collect();
    assert_eq!(table(&fake), planned(&[left, right]));
    assert_eq!(
        planned(&[left, right])
            .iter()
            .map(|(g, p)| (*g, p.size))
            .collect::<Vec<_>>(),
        kept.iter().map(|c| (c.gpa, c.size)).collect::<Vec<_>>()
    );
    assert_eq!(space.translate(a - K4), Some((hpa + (a - K4 - gpa), RW)));
    assert_eq!(space.translate(a), None);
    assert_eq!(space.translate(b - K4), None);
    assert_eq!(space.translate(b), Some((hpa + (b - gpa), RW)));
    assert_eq!(space.leaves(), left.leaves + right.leaves);
    // A single 4 KiB leaf off the end, then one across both remainders is NotMapped at the hole.
    space.unmap(gpa + len - K4, K4).unwrap();
    assert_eq!(
        space.unmap(gpa, len - K4),
        Err(GuestError::NotMapped { gpa: a })
    );
}

#[test]
fn unmap_across_adjacent_mappings_is_one_call() {
    let (fake, space) = setup();
    space.map(0, G1, M2, RW).unwrap();
    space.map(M2, 3 * G1, M2, Prot::READ).unwrap();
    space.map(2 * M2, 5 * G1 + K4, 4 * K4, RW).unwrap();
    fake.reset_counts();
    let removed = space.unmap(M2 - M2, 2 * M2 + 2 * K4).unwrap();
    assert_eq!(
        removed,
        LeafCounts {
            k4: 2,
            m2: 2,
            g1: 0
        }
    );
    assert_eq!(fake.counts().unmaps, 1);
    assert_eq!(fake.counts().flushes, 1);
    assert_eq!(space.mappings().len(), 1);
    assert_eq!(space.mappings()[0].gpa, 2 * M2 + 2 * K4);
}

#[test]
fn unmap_splitting_a_2m_leaf_is_refused_and_changes_nothing() {
    let (fake, space) = setup();
    space.map(0, G1, 4 * M2, RW).unwrap();
    let before = (table(&fake), space.mappings(), fake.counts());
    for (gpa, len, cut, leaf) in [
        (K4, K4, K4, 0),               // starts inside the first leaf
        (0, M2 + K4, M2 + K4, M2),     // ends inside the second
        (M2 - K4, 2 * K4, M2 - K4, 0), // straddles a boundary
        (3 * M2, M2 - K4, 4 * M2 - K4, 3 * M2),
    ] {
        assert_eq!(
            space.unmap(gpa, len),
            Err(GuestError::SplitsSuperpage {
                gpa: cut,
                leaf_gpa: leaf,
                leaf_size: M2
            }),
            "{gpa:#x}+{len:#x}"
        );
    }
    assert_eq!((table(&fake), space.mappings(), fake.counts()), before);
    // Negative control: the same cut of a 4 KiB-granular mapping (HPA off by 4 KiB) is fine.
    space.map(G1, 2 * G1 + K4, 4 * M2, RW).unwrap();
    assert_eq!(
        space.unmap(G1 + K4, K4),
        Ok(LeafCounts {
            k4: 1,
            m2: 0,
            g1: 0
        })
    );
}

#[test]
fn strict_unmap_is_flushed() {
    let (fake, space) = setup();
    space.map(0, G1, 3 * M2, RW).unwrap();
    space.unmap(M2, M2).unwrap();
    assert_eq!(fake.unflushed_bytes(), 0);
    assert_eq!(fake.counts().flushes, 1);
    let ops = fake.ops();
    assert!(
        matches!(ops[ops.len() - 2..], [dma::testing::FakeOp::Unmap { iova, size }, dma::testing::FakeOp::Flush { span: Some((s, l)) }] if iova == M2 && size == M2 && s <= M2 && s + l >= 2 * M2),
        "{ops:?}"
    );
    // Remapping the freed GPA is no stale reuse.
    space.map(M2, 2 * G1, M2, RW).unwrap();
    assert_eq!(fake.stale_reuses(), 0);
    space.clear().unwrap();
    assert_eq!(fake.unflushed_bytes(), 0);
    assert_eq!(fake.entries(), 0);
    // Negative control: the fake does see an unmap that was not flushed.
    fake.map(DmaAddr::new(0), dma::PhysAddr::new(G1), K4, RW)
        .unwrap();
    let mut g = IotlbGather::new();
    fake.unmap(DmaAddr::new(0), K4, &mut g).unwrap();
    assert_eq!(fake.unflushed_bytes(), K4);
    fake.flush(g).unwrap();
}

#[test]
fn a_failed_flush_holds_the_range_back() {
    let (fake, space) = setup();
    space.map(0, G1, 2 * M2, RW).unwrap();
    fake.fail_next_flush();
    let err = space.unmap(0, M2).unwrap_err();
    assert_eq!(
        err,
        GuestError::FlushFailed {
            gpa: 0,
            len: M2,
            cause: IommuError::InvalidationTimeout
        }
    );
    assert_eq!(
        space.mappings().len(),
        1,
        "the table no longer has it: not listed"
    );
    assert_eq!(fake.unflushed_bytes(), M2);
    // A map over the held-back range first completes the invalidation.
    space.map(0, 3 * G1, M2, RW).unwrap();
    assert_eq!(fake.stale_reuses(), 0);
    assert_eq!(fake.unflushed_bytes(), 0);
    // If that retry fails too, the map is refused and nothing is mapped.
    fake.fail_next_flush();
    assert!(matches!(
        space.unmap(0, M2),
        Err(GuestError::FlushFailed { .. })
    ));
    fake.fail_next_flush();
    assert!(matches!(
        space.map(0, 3 * G1, M2, RW),
        Err(GuestError::FlushFailed {
            gpa: 0,
            len: M2,
            ..
        })
    ));
    assert_eq!(space.translate(0), None);
    assert_eq!(fake.stale_reuses(), 0);
}

#[test]
fn a_failed_sync_map_undoes_the_map() {
    let (fake, space) = setup();
    fake.fail_next_sync_map();
    assert_eq!(
        space.map(0, G1, M2, RW),
        Err(GuestError::Iommu(IommuError::InvalidationTimeout))
    );
    assert_eq!(fake.entries(), 0);
    assert_eq!(fake.unflushed_bytes(), 0);
    assert!(space.mappings().is_empty());
    // When the undo fails too, the range stays mapped and listed.
    fake.fail_next_sync_map();
    fake.fail_unmap_after(0);
    assert_eq!(
        space.map(0, G1, M2, RW),
        Err(GuestError::UnwindIncomplete {
            gpa: 0,
            len: M2,
            cause: IommuError::NotMapped { iova: 0 }
        })
    );
    assert_eq!(space.mappings().len(), 1);
    assert_eq!(space.translate(0), Some((G1, RW)));
    space.unmap(0, M2).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Memory maps and populate.

fn region(gpa: u64, len: u64, hpa: u64, kind: RegionKind, prot: Prot) -> GuestRegion {
    GuestRegion {
        gpa,
        len,
        hpa,
        kind,
        prot,
    }
}

/// A PC-like layout: low RAM, the VGA/BIOS hole, RAM from 1 MiB to 3 GiB, a passed-through
/// BAR, the interrupt window as a hole. Host backing at 64 GiB (+ the GPA), the BAR at 1 TiB.
fn pc_map() -> Vec<GuestRegion> {
    let ram = 64 * G1;
    vec![
        region(0, 0xA0000, ram, RegionKind::Ram, RW | Prot::CACHE),
        region(0xA0000, 0x60000, 0, RegionKind::Reserved, Prot::empty()),
        region(
            0x10_0000,
            3 * G1 - 0x10_0000,
            ram + 0x10_0000,
            RegionKind::Ram,
            RW | Prot::CACHE,
        ),
        region(0xE000_0000, 16 << 20, 1 << 40, RegionKind::Mmio, RW),
        region(
            MSI_WINDOW.start,
            MSI_WINDOW.end - MSI_WINDOW.start,
            0,
            RegionKind::Reserved,
            Prot::empty(),
        ),
    ]
}

#[test]
fn populate_maps_a_pc_like_layout_with_the_planned_mix() {
    let (fake, space) = setup();
    let map = GuestMemoryMap::new(&pc_map()).unwrap();
    assert_eq!(map.ram_bytes(), 0xA0000 + 3 * G1 - 0x10_0000);
    let mut want = LeafCounts::default();
    for r in map
        .regions()
        .iter()
        .filter(|r| r.kind != RegionKind::Reserved)
    {
        want += count_leaves(r.gpa, r.hpa, r.len, ALL).unwrap();
    }
    assert!(
        want.k4 > 0 && want.m2 > 0 && want.g1 > 0,
        "a real mix: {want:?}"
    );
    let got = space.populate(&map).unwrap();
    assert_eq!(got, want);
    assert_eq!(fake.counts().leaves, [want.k4, want.m2, want.g1]);
    assert_eq!(fake.counts().maps, 3, "one map per mapped region");
    assert_eq!(fake.mmio_cache_violations(), 0);
    assert_eq!(table(&fake), planned(&space.mappings()));
    // RAM translates to its backing, the BAR with MMIO, holes and the MSI window not at all.
    assert_eq!(
        space.translate(0x9F000),
        Some((64 * G1 + 0x9F000, RW | Prot::CACHE))
    );
    assert_eq!(space.translate(0xA0000), None);
    assert_eq!(space.translate(0xFFFFF), None);
    assert_eq!(
        space.translate(2 * G1 + 0x1234_5000),
        Some((64 * G1 + 2 * G1 + 0x1234_5000, RW | Prot::CACHE))
    );
    assert_eq!(
        space.translate(0xE000_1000),
        Some(((1 << 40) + 0x1000, RW | Prot::MMIO))
    );
    assert_eq!(space.translate(MSI_WINDOW.start), None);
    assert_eq!(space.clear().unwrap(), want);
    assert_eq!(fake.entries(), 0);
}

#[test]
fn populate_rolls_back_on_a_failed_map() {
    for fail_after in 0..3 {
        let (fake, space) = setup();
        space.map(0x1_0000_0000, 70 * G1, M2, RW).unwrap(); // an earlier mapping survives
        let map = GuestMemoryMap::new(&pc_map()).unwrap();
        let before = table(&fake);
        fake.fail_map_after(fail_after);
        assert_eq!(
            space.populate(&map),
            Err(GuestError::Iommu(IommuError::OutOfMemory)),
            "failing map {fail_after}"
        );
        assert_eq!(table(&fake), before, "everything this call mapped is gone");
        assert_eq!(space.mappings().len(), 1);
        assert_eq!(fake.unflushed_bytes(), 0, "the rollback was flushed");
        assert_eq!(fake.counts().flushes, u64::from(fail_after > 0));
        // And the same map populates fine afterwards.
        space.populate(&map).unwrap();
    }
}

#[test]
fn populate_refuses_an_overlap_with_a_live_mapping() {
    let (fake, space) = setup();
    space.map(2 * G1, 70 * G1, M2, RW).unwrap();
    let map = GuestMemoryMap::new(&pc_map()).unwrap();
    assert_eq!(
        space.populate(&map),
        Err(GuestError::Overlap {
            gpa: 0x10_0000,
            existing_gpa: 2 * G1
        })
    );
    assert_eq!(space.mappings().len(), 1);
    assert_eq!(fake.entries(), 1);
}

#[test]
fn memory_maps_are_validated() {
    let ram = |gpa, len| region(gpa, len, gpa, RegionKind::Ram, RW);
    let cases: Vec<(Vec<GuestRegion>, GuestError)> = vec![
        (vec![ram(0, 0)], GuestError::EmptyRegion { index: 0 }),
        (
            vec![ram(0x800, K4)],
            GuestError::Misaligned {
                what: "gpa",
                value: 0x800,
            },
        ),
        (
            vec![ram(2 * K4, K4), ram(0, K4)],
            GuestError::UnsortedRegions { index: 1 },
        ),
        (
            vec![ram(0, 2 * K4), ram(K4, K4)],
            GuestError::RegionsOverlap {
                index: 1,
                gpa: K4,
                previous_gpa: 0,
            },
        ),
        (
            vec![ram(3 * G1, G1)],
            GuestError::MsiWindow {
                gpa: 3 * G1,
                len: G1,
            },
        ),
        (
            vec![region(0, K4, 0, RegionKind::Mmio, RW | Prot::CACHE)],
            GuestError::BadProt {
                prot: RW | Prot::CACHE | Prot::MMIO,
            },
        ),
        (
            vec![region(0, K4, 0, RegionKind::Ram, RW | Prot::MMIO)],
            GuestError::BadProt {
                prot: RW | Prot::MMIO,
            },
        ),
        (
            vec![region(0, K4, 0, RegionKind::Ram, Prot::empty())],
            GuestError::BadProt {
                prot: Prot::empty(),
            },
        ),
    ];
    for (regions, want) in cases {
        assert_eq!(GuestMemoryMap::new(&regions), Err(want), "{regions:?}");
    }
    // A hole may have any hpa/prot, and the MSI window.
    let ok = GuestMemoryMap::new(&[region(
        3 * G1,
        G1,
        0x123,
        RegionKind::Reserved,
        Prot::empty(),
    )])
    .unwrap();
    assert_eq!(ok.ram_bytes(), 0);
    assert_eq!(ok.regions().len(), 1);
}

#[test]
fn errors_display_and_chain() {
    let e = GuestError::SplitsSuperpage {
        gpa: K4,
        leaf_gpa: 0,
        leaf_size: M2,
    };
    assert!(e.to_string().contains("0x200000"), "{e}");
    let e = GuestError::Iommu(IommuError::OutOfMemory);
    assert!(std::error::Error::source(&e).is_some());
    assert!(!GuestError::ZeroLength.to_string().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Model-based: random map / unmap sequences against a model of mappings and leaves.

#[derive(Debug, Clone)]
enum Op {
    Map {
        gpa: u64,
        len: u64,
        rel: u64,
        prot: Prot,
    },
    /// Unmap relative to live mapping `which` (modulo their number): from leaf `a` (cut into
    /// by `cut_a` pages) to leaf `b` (cut short by `cut_b` pages), extended by `ext` pages.
    UnmapLeaves {
        which: usize,
        a: usize,
        b: usize,
        cut_a: u64,
        cut_b: u64,
        ext: u64,
    },
    Unmap {
        gpa: u64,
        len: u64,
    },
    Clear,
}

fn grid_addr() -> impl Strategy<Value = u64> {
    (
        0u64..4,
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(503),
            Just(510),
            Just(511)
        ],
        prop_oneof![Just(0u64), Just(1), Just(2), Just(511)],
    )
        .prop_map(|(a, b, c)| a * G1 + b * M2 + c * K4)
}

fn op() -> impl Strategy<Value = Op> {
    let prot = prop_oneof![
        4 => Just(RW),
        1 => Just(Prot::READ),
        1 => Just(Prot::WRITE | Prot::CACHE),
        1 => Just(Prot::READ | Prot::MMIO),
        1 => Just(Prot::empty()),
        1 => Just(Prot::READ | Prot::MMIO | Prot::CACHE),
    ];
    // Relative HPA offsets: 1 GiB-, 2 MiB- and 4 KiB-compatible.
    let rel = prop_oneof![
        (1u64..8).prop_map(|k| 8 * G1 + k * G1),
        (1u64..8).prop_map(|k| 8 * G1 + (2 * k + 1) * M2),
        (1u64..8).prop_map(|k| 8 * G1 + (2 * k + 1) * K4),
    ];
    prop_oneof![
        5 => (grid_addr(), 0u64..2, 0u64..3, 0u64..3, rel, prot).prop_map(|(gpa, g, m, k, rel, prot)| {
            let fine = rel % M2 != 0;
            let g = if fine { 0 } else { g };
            let len = (g * G1 + m * M2 + k * K4).max(K4);
            Op::Map { gpa, len, rel, prot }
        }),
        5 => (any::<usize>(), any::<usize>(), any::<usize>(), prop_oneof![3 => Just(0u64), 1 => 0u64..600], prop_oneof![3 => Just(0u64), 1 => 0u64..600], prop_oneof![3 => Just(0u64), 1 => 0u64..1024])
            .prop_map(|(which, a, b, cut_a, cut_b, ext)| Op::UnmapLeaves { which, a, b, cut_a, cut_b, ext }),
        1 => (grid_addr(), 1u64..2048).prop_map(|(gpa, pages)| Op::Unmap { gpa, len: pages * K4 }),
        1 => Just(Op::Clear),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelMap {
    hpa: u64,
    len: u64,
    prot: Prot,
}

#[derive(Default)]
struct Model {
    maps: BTreeMap<u64, ModelMap>,
    leaves: BTreeMap<u64, FakePte>,
}

impl Model {
    fn leaf_containing(&self, gpa: u64) -> Option<(u64, FakePte)> {
        let (&s, p) = self.leaves.range(..=gpa).next_back()?;
        (gpa < s + p.size).then_some((s, *p))
    }

    fn map(&mut self, gpa: u64, hpa: u64, len: u64, prot: Prot) -> Result<LeafCounts, GuestError> {
        let bad =
            prot.is_empty() || !prot.intersects(RW) || prot.contains(Prot::MMIO | Prot::CACHE);
        if bad {
            return Err(GuestError::BadProt { prot });
        }
        if gpa < MSI_WINDOW.end && MSI_WINDOW.start < gpa + len {
            return Err(GuestError::MsiWindow { gpa, len });
        }
        let end = gpa + len;
        if let Some((&s, _)) = self.maps.iter().find(|(&s, m)| s < end && gpa < s + m.len) {
            return Err(GuestError::Overlap {
                gpa,
                existing_gpa: s,
            });
        }
        let chunks = plan(gpa, hpa, len, ALL);
        for c in &chunks {
            self.leaves.insert(
                c.gpa,
                FakePte {
                    paddr: c.hpa,
                    size: c.size,
                    prot,
                },
            );
        }
        self.maps.insert(gpa, ModelMap { hpa, len, prot });
        Ok(counts_of(&chunks))
    }

    fn unmap(&mut self, gpa: u64, len: u64) -> Result<LeafCounts, GuestError> {
        let end = gpa + len;
        let mut cur = gpa;
        while cur < end {
            match self.leaf_containing(cur) {
                Some((s, p)) => cur = s + p.size,
                None => return Err(GuestError::NotMapped { gpa: cur }),
            }
        }
        for cut in [gpa, end] {
            let inside = if cut == gpa {
                self.leaf_containing(cut)
            } else {
                self.leaf_containing(cut - 1)
            };
            if let Some((s, p)) = inside {
                if s != cut && s + p.size != cut {
                    return Err(GuestError::SplitsSuperpage {
                        gpa: cut,
                        leaf_gpa: s,
                        leaf_size: p.size,
                    });
                }
            }
        }
        let gone: Vec<u64> = self.leaves.range(gpa..end).map(|(&g, _)| g).collect();
        let mut removed = LeafCounts::default();
        for g in gone {
            let p = self.leaves.remove(&g).unwrap();
            match p.size {
                K4 => removed.k4 += 1,
                M2 => removed.m2 += 1,
                _ => removed.g1 += 1,
            }
        }
        let touched: Vec<(u64, ModelMap)> = self
            .maps
            .iter()
            .filter(|(&s, m)| s < end && gpa < s + m.len)
            .map(|(&s, m)| (s, *m))
            .collect();
        for (s, m) in touched {
            self.maps.remove(&s);
            if s < gpa {
                self.maps.insert(s, ModelMap { len: gpa - s, ..m });
            }
            if s + m.len > end {
                self.maps.insert(
                    end,
                    ModelMap {
                        hpa: m.hpa + (end - s),
                        len: s + m.len - end,
                        ..m
                    },
                );
            }
        }
        Ok(removed)
    }
}

fn check_against_model(
    fake: &FakeDomain,
    space: &GuestSpace,
    model: &Model,
) -> Result<(), TestCaseError> {
    let maps: Vec<(u64, ModelMap)> = space
        .mappings()
        .iter()
        .map(|m| {
            (
                m.gpa,
                ModelMap {
                    hpa: m.hpa,
                    len: m.len,
                    prot: m.prot,
                },
            )
        })
        .collect();
    let want: Vec<(u64, ModelMap)> = model.maps.iter().map(|(&g, m)| (g, *m)).collect();
    prop_assert_eq!(maps, want, "mappings");
    let leaves: Vec<(u64, FakePte)> = model.leaves.iter().map(|(&g, p)| (g, *p)).collect();
    prop_assert_eq!(table(fake), leaves, "the table's leaves");
    for m in space.mappings() {
        prop_assert_eq!(
            m.leaves,
            counts_of(&plan(m.gpa, m.hpa, m.len, ALL)),
            "{:?}",
            m
        );
    }
    let total = space
        .mappings()
        .iter()
        .fold(LeafCounts::default(), |a, m| a + m.leaves);
    prop_assert_eq!(space.leaves(), total);
    prop_assert_eq!(fake.unflushed_bytes(), 0, "every unmap was flushed");
    prop_assert_eq!(fake.stale_reuses(), 0);
    prop_assert_eq!(fake.mmio_cache_violations(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_map_unmap_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..24)) {
        let (fake, space) = setup();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Map { gpa, len, rel, prot } => {
                    let hpa = gpa + rel;
                    let want = model.map(gpa, hpa, len, prot);
                    let got = space.map(gpa, hpa, len, prot).map(|m| m.leaves);
                    prop_assert_eq!(got, want, "map {:#x}+{:#x} -> {:#x}", gpa, len, hpa);
                }
                Op::UnmapLeaves { which, a, b, cut_a, cut_b, ext } => {
                    let maps = space.mappings();
                    if maps.is_empty() {
                        continue;
                    }
                    let m = maps[which % maps.len()];
                    let chunks = plan(m.gpa, m.hpa, m.len, ALL);
                    let i = a % chunks.len();
                    let j = i + b % (chunks.len() - i);
                    let start = chunks[i].gpa + K4 * (cut_a % (chunks[i].size / K4));
                    let end = chunks[j].gpa + chunks[j].size - K4 * (cut_b % (chunks[j].size / K4)) + ext * K4;
                    if end <= start {
                        continue;
                    }
                    let want = model.unmap(start, end - start);
                    let got = space.unmap(start, end - start);
                    prop_assert_eq!(got, want, "unmap {:#x}..{:#x}", start, end);
                }
                Op::Unmap { gpa, len } => {
                    let want = model.unmap(gpa, len);
                    prop_assert_eq!(space.unmap(gpa, len), want, "unmap {:#x}+{:#x}", gpa, len);
                }
                Op::Clear => {
                    let want = model.unmap_all();
                    prop_assert_eq!(space.clear(), Ok(want));
                }
            }
            check_against_model(&fake, &space, &model)?;
        }
        let want = model.unmap_all();
        prop_assert_eq!(space.clear(), Ok(want));
        check_against_model(&fake, &space, &model)?;
        prop_assert_eq!(fake.entries(), 0);
    }
}

impl Model {
    fn unmap_all(&mut self) -> LeafCounts {
        let mut removed = LeafCounts::default();
        for p in self.leaves.values() {
            match p.size {
                K4 => removed.k4 += 1,
                M2 => removed.m2 += 1,
                _ => removed.g1 += 1,
            }
        }
        self.leaves.clear();
        self.maps.clear();
        removed
    }
}
