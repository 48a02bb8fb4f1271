//! Unit tests of invalidation: PSI chunking and range plans, queue slot accounting, descriptor
//! encode/decode round trips and bit positions.

use super::*;

fn caps(mamv: u8, psi: bool) -> Capabilities {
    let mut c = Capabilities::decode(0x10, 0xd2008c22260206, 0xf00f4a);
    c.cap.mamv = mamv;
    c.cap.psi = psi;
    c
}

#[test]
fn chunks_are_aligned_and_bounded_by_mamv() {
    for (start_page, pages, mamv) in [
        (0u64, 1u64, 18u8),
        (1, 7, 18),
        (3, 1000, 18),
        (5, 1 << 20, 18),
        (0, 1 << 10, 4),
    ] {
        let mut covered = 0;
        let mut expect = start_page << PAGE_SHIFT;
        for (addr, am) in psi_chunks(start_page << PAGE_SHIFT, pages << PAGE_SHIFT, mamv) {
            assert!(am <= mamv, "AM {am} above MAMV {mamv}");
            assert_eq!(
                (addr >> PAGE_SHIFT) % (1 << am),
                0,
                "{addr:#x} not aligned to 2^{am} pages"
            );
            assert_eq!(addr, expect, "chunks are contiguous");
            covered += 1u64 << am;
            expect += (1u64 << am) << PAGE_SHIFT;
        }
        assert_eq!(covered, pages, "exact cover");
    }
}

#[test]
fn unmapping_n_contiguous_pages_costs_log_n_descriptors() {
    for pages in [1u64, 2, 3, 100, 511, 512, 4097, 100_000] {
        for start in [0u64, 1, 7, 511] {
            let n = psi_chunks(start << PAGE_SHIFT, pages << PAGE_SHIFT, 18).count();
            let bound = 2 * (64 - pages.leading_zeros() as usize) + 2;
            assert!(n <= bound, "{pages} pages at {start}: {n} chunks > {bound}");
        }
    }
}

#[test]
fn range_plan_falls_back_to_a_cover_then_domain_selective() {
    let c = caps(18, true);
    assert_eq!(
        *iotlb_range(&c, 3, 0x1000, 0x1000, true),
        [Invalidation::IotlbPage {
            did: 3,
            addr: 0x1000,
            am: 0,
            leaf_only: true,
        }]
    );
    // Pages 1..=16 need five exact chunks (1, 2, 4, 8, 1 pages): one PSI of 32 pages at 0.
    assert_eq!(
        *iotlb_range(&c, 3, 0x1000, 16 * 0x1000, false),
        [Invalidation::IotlbPage {
            did: 3,
            addr: 0,
            am: 5,
            leaf_only: false,
        }]
    );
    // MAMV 0: a large range has no covering PSI -> domain-selective.
    assert_eq!(
        *iotlb_range(&caps(0, true), 3, 0, 1 << 30, false),
        [Invalidation::IotlbDomain { did: 3 }]
    );
    assert_eq!(
        *iotlb_range(&caps(18, false), 3, 0, 0x1000, false),
        [Invalidation::IotlbDomain { did: 3 }]
    );
    assert!(iotlb_range(&c, 3, 0x1000, 0, false).is_empty());
}

/// The pages `[first, last]` a range of `size > 0` bytes at `start` touches.
fn touched(start: u64, size: u64) -> (u64, u64) {
    (
        start >> PAGE_SHIFT,
        start.saturating_add(size - 1) >> PAGE_SHIFT,
    )
}

proptest::proptest! {
    /// Whatever the range and capabilities, the plan invalidates every page the range touches,
    /// in at most PSI_DESCRIPTOR_LIMIT requests, each one a request the hardware accepts; it
    /// is exact when the exact chunks fit, and a covering PSI is the smallest one.
    #[test]
    fn range_plans_cover_the_range_within_the_limit(
        start in 0u64..(1 << 52),
        size in proptest::prop_oneof![1u64..0x4_0000, 1u64..(1 << 36)],
        mamv in 0u8..=20,
        psi in proptest::bool::weighted(0.9),
        leaf in proptest::bool::ANY,
    ) {
        let c = caps(mamv, psi);
        let plan = iotlb_range(&c, 7, start, size, leaf);
        proptest::prop_assert!(!plan.is_empty() && plan.len() <= PSI_DESCRIPTOR_LIMIT);
        let (first, last) = touched(start, size);
        if let [Invalidation::IotlbDomain { did }] = *plan {
            proptest::prop_assert_eq!(did, 7);
            // Only when no page-selective plan exists.
            proptest::prop_assert!(!psi || psi_cover(start, size, mamv).is_none());
            return Ok(());
        }
        proptest::prop_assert!(psi);
        // The union of the page-selective blocks, in order, contains [first, last].
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        for req in plan.iter() {
            let Invalidation::IotlbPage { did, addr, am, leaf_only } = *req else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("{req:?}")));
            };
            proptest::prop_assert_eq!((did, leaf_only), (7, leaf));
            proptest::prop_assert!(am <= mamv, "AM {} above MAMV {}", am, mamv);
            let page = addr >> PAGE_SHIFT;
            proptest::prop_assert_eq!(page % (1u64 << am), 0, "unaligned {:#x}/{}", addr, am);
            blocks.push((page, page + (1u64 << am)));
        }
        blocks.sort_unstable();
        let mut covered_to = first;
        for (lo, hi) in blocks {
            if lo <= covered_to {
                covered_to = covered_to.max(hi);
            }
        }
        proptest::prop_assert!(covered_to > last, "pages {}..={} not covered", first, last);
        let exact: Vec<_> = psi_chunks(start, size, mamv).take(PSI_DESCRIPTOR_LIMIT + 1).collect();
        if exact.len() <= PSI_DESCRIPTOR_LIMIT {
            proptest::prop_assert_eq!(plan.len(), exact.len(), "exact chunks fit: no widening");
        } else if let [Invalidation::IotlbPage { addr, am, .. }] = *plan {
            // The smallest cover: half of it would miss an end.
            if am > 0 {
                let half = am - 1;
                proptest::prop_assert_ne!(first >> half, last >> half);
            }
            proptest::prop_assert_eq!(Some((addr, am)), psi_cover(start, size, mamv));
        } else {
            proptest::prop_assert!(false, "past the limit but {} requests", plan.len());
        }
    }
}

#[test]
fn free_slots_keep_one_slot_empty() {
    let n = QUEUE_ENTRIES;
    assert_eq!(free_slots(0, 0), n - 1, "empty ring");
    assert_eq!(free_slots(5, 5), n - 1);
    assert_eq!(free_slots(5, 4), 0, "full: tail just behind head");
    assert_eq!(free_slots(0, n - 1), 0);
    assert_eq!(free_slots(3, 205), 53);
    assert_eq!(free_slots(63, 205), 113, "head past the wrap point");
    assert!(BATCH < n - 1, "a batch and its wait fit an empty ring");
}

#[test]
fn descriptor_round_trip() {
    for req in [
        Invalidation::ContextGlobal,
        Invalidation::ContextDevice {
            did: 7,
            sid: RequesterId::new(0x0318),
        },
        Invalidation::IotlbGlobal,
        Invalidation::IotlbDomain { did: 9 },
        Invalidation::IotlbPage {
            did: 9,
            addr: 0x40_0000,
            am: 10,
            leaf_only: true,
        },
    ] {
        let d = Descriptor::encode(&req, true, true);
        assert_eq!(d.decode(), Some(req));
    }
    // Raw bits per §6.5.2 (type 3:0, granularity 5:4, DW 6, DR 7, DID 31:16, SID 47:32;
    // IOTLB upper half: AM 5:0, IH 6, address 63:12), so a wrong declaration is caught.
    let d = Descriptor::encode(&Invalidation::IotlbDomain { did: 1 }, true, false);
    assert_eq!((d.lo, d.hi), (0x0001_00A2, 0));
    let d = Descriptor::encode(
        &Invalidation::ContextDevice {
            did: 7,
            sid: RequesterId::new(0x0318),
        },
        false,
        false,
    );
    assert_eq!((d.lo, d.hi), (0x0000_0318_0007_0031, 0));
    let page = Invalidation::IotlbPage {
        did: 9,
        addr: 0x40_0000,
        am: 10,
        leaf_only: true,
    };
    let d = Descriptor::encode(&page, true, true);
    assert_eq!((d.lo, d.hi), (0x0009_00F2, 0x0040_004A));
    let w = Descriptor::wait(PhysAddr::new(0x1234_5000), 42);
    assert_eq!(w.kind(), desc::TYPE_WAIT);
    // Wait: type 5, SW (bit 5), FN (bit 6), data 63:32; status address 127:66.
    assert_eq!(w.lo, 0x0000_002A_0000_0065);
    assert_eq!(w.hi, 0x1234_5000);
    assert_eq!(w.decode(), None);
}

#[test]
fn iec_descriptor_bits_match_the_spec() {
    // §6.5.2.7: type 3:0 = 4, G bit 4 (1 = index-selective), IM 31:27, IIDX 47:32.
    let d = Descriptor::encode(
        &Invalidation::InterruptEntries {
            index: 0x1234,
            mask: 3,
        },
        true,
        true,
    );
    assert_eq!((d.lo, d.hi), (0x0000_1234_1800_0014, 0));
    let g = Descriptor::encode(&Invalidation::InterruptEntryGlobal, false, false);
    assert_eq!((g.lo, g.hi), (0x4, 0));
    for req in [
        Invalidation::InterruptEntryGlobal,
        Invalidation::InterruptEntries {
            index: 0xFFFF,
            mask: 16,
        },
    ] {
        assert_eq!(Descriptor::encode(&req, false, false).decode(), Some(req));
    }
}

#[test]
fn pasid_descriptors_encode_and_decode() {
    // Raw layouts (§6.5.2.2 type 7, §6.5.2.4 type 6): type 3:0, granularity 5:4, DID 31:16,
    // PASID 51:32; the PASID-based IOTLB's upper half as the IOTLB descriptor's.
    let cases = [
        (Invalidation::PasidCacheGlobal, 0x37, 0),
        (
            Invalidation::PasidCache {
                did: 3,
                pasid: None,
            },
            0x0003_0007,
            0,
        ),
        (
            Invalidation::PasidCache {
                did: 3,
                pasid: Some(0),
            },
            0x0003_0017,
            0,
        ),
        (
            Invalidation::PasidCache {
                did: 0x1234,
                pasid: Some(0xABCDE),
            },
            0x000A_BCDE_1234_0017,
            0,
        ),
        (
            Invalidation::PasidIotlb { did: 7, pasid: 0 },
            0x0007_0026,
            0,
        ),
        (
            Invalidation::PasidIotlbPage {
                did: 7,
                pasid: 2,
                addr: 0x20_0000,
                am: 9,
                leaf_only: true,
            },
            0x2_0007_0036,
            0x20_0000 | 1 << 6 | 9,
        ),
    ];
    for (req, lo, hi) in cases {
        let d = Descriptor::encode(&req, true, true);
        assert_eq!((d.lo, d.hi), (lo, hi), "{req:?}");
        assert_eq!(d.decode(), Some(req));
    }
    // Reserved granularities decode to nothing.
    let bad = Descriptor {
        lo: 0x27, // PASID-cache, granularity 10 (reserved)
        hi: 0,
    };
    assert_eq!(bad.decode(), None);
    let bad = Descriptor { lo: 0x06, hi: 0 };
    assert_eq!(bad.decode(), None);
}
