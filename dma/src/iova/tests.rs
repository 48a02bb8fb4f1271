//! Unit and property tests of the IOVA allocator, with access to its private state.

use super::*;
use proptest::prelude::*;

const MB2: u64 = 2 << 20;
const GB1: u64 = 1 << 30;

fn space(end_bits: u32, reserved: &[ReservedRegion]) -> IovaAllocator {
    IovaAllocator::new(
        DmaAddr::new(0),
        DmaAddr::new((1u64 << end_bits) - 1),
        reserved,
    )
    .unwrap()
}

#[test]
fn free_keeping_frees_all_but_the_kept_pages() {
    let mut a = space(20, &[]);
    let total = a.total_pages();
    let x = a.alloc(8 * PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    let at = |n: u64| DmaAddr::new(x.as_u64() + n * PAGE_SIZE);
    // Kept: page 2, pages 5-6 (given overlapping and out of order), and a sub-page range
    // inside page 7 (rounded out to the whole page).
    let keep = [
        (at(5), 2 * PAGE_SIZE),
        (at(2), PAGE_SIZE),
        (at(6), PAGE_SIZE),
        (DmaAddr::new(at(7).as_u64() + 0x10), 0x20),
    ];
    // Wrong size or unknown start: an error, nothing changed.
    assert_eq!(
        a.free_keeping(x, PAGE_SIZE, &keep),
        Err(DmaError::SizeMismatch {
            addr: x.as_u64(),
            mapped: 8 * PAGE_SIZE,
            given: PAGE_SIZE
        })
    );
    assert_eq!(
        a.free_keeping(at(1), PAGE_SIZE, &keep),
        Err(DmaError::NotMapped {
            addr: at(1).as_u64()
        })
    );
    a.free_keeping(x, 8 * PAGE_SIZE, &keep).unwrap();
    let st = a.stats();
    // Adjacent kept ranges merge: page 2, and pages 5-7 as one.
    assert_eq!((st.live, st.live_pages), (2, 4));
    assert_eq!(a.lookup(at(2)), Some((at(2), PAGE_SIZE)));
    assert_eq!(a.lookup(at(7)), Some((at(5), 3 * PAGE_SIZE)));
    assert_eq!(a.lookup(at(0)), None);
    assert_eq!(a.total_pages(), total);
    a.check_invariants();
    // Nothing but the kept pages is ever handed out again.
    while let Ok(y) = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)) {
        assert!(![2, 5, 6, 7].iter().any(|&n| y == at(n)));
    }
    a.check_invariants();
}

#[test]
fn freeing_a_buddy_allocation_takes_its_tail_back_only_when_the_tail_is_free() {
    let max = DmaAddr::new(u64::MAX);
    // 64 pages at 0: a 33-page request takes the whole order-6 block and gives back the
    // 31-page tail (pages 33..64) as blocks of 1, 2, 4, 8 and 16 pages.
    let mut a = IovaAllocator::new(DmaAddr::new(0), DmaAddr::new(64 * PAGE_SIZE - 1), &[]).unwrap();
    let x = a.alloc(33 * PAGE_SIZE, max).unwrap();
    assert_eq!(x.as_u64(), 0);
    assert_eq!(a.stats().free_pages, 31);
    // Tail wholly free: taken back, the block freed as one (order 6 at 0, nothing else).
    a.free(x, 33 * PAGE_SIZE).unwrap();
    assert!(a.free[6].contains(0));
    assert!((0..6).all(|o| a.free[o].is_empty()));
    assert_eq!(a.stats().free_pages, 64);
    a.check_invariants();
    // Tail partly allocated (its one-page block, page 33): the range is released piece by
    // piece and page 33 stays allocated.
    let x = a.alloc(33 * PAGE_SIZE, max).unwrap();
    let y = a.alloc(PAGE_SIZE, max).unwrap();
    assert_eq!(y.as_u64(), 33 * PAGE_SIZE);
    a.free(x, 33 * PAGE_SIZE).unwrap();
    a.check_invariants();
    assert_eq!(a.stats().free_pages, 63);
    assert_eq!(a.lookup(y), Some((y, PAGE_SIZE)));
    assert_eq!(
        a.alloc(64 * PAGE_SIZE, max),
        Err(DmaError::IovaExhausted {
            size: 64 * PAGE_SIZE
        })
    );
    assert_eq!(a.alloc(32 * PAGE_SIZE, max).unwrap().as_u64(), 0);
    a.check_invariants();
}

#[test]
fn iova_alloc_is_size_aligned_for_superpages() {
    let mut a = space(39, &[]);
    let x = a.alloc(MB2, DmaAddr::new(u64::MAX)).unwrap();
    assert!(x.is_aligned(MB2));
    let y = a.alloc(GB1, DmaAddr::new(u64::MAX)).unwrap();
    assert!(y.is_aligned(GB1));
    let z = a.alloc(3 * PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    assert!(z.is_aligned(4 * PAGE_SIZE));
    a.check_invariants();
}

#[test]
fn iova_alloc_is_top_down_and_respects_limit() {
    let mut a = space(39, &[]);
    let x = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    assert_eq!(x.as_u64(), (1 << 39) - PAGE_SIZE);
    let y = a.alloc(PAGE_SIZE, DmaAddr::new(0xffff_ffff)).unwrap();
    assert_eq!(y.as_u64(), 0xffff_f000);
    let z = a.alloc(PAGE_SIZE, DmaAddr::new(0x0fff_ffff)).unwrap();
    assert_eq!(z.as_u64(), 0x0fff_f000);
    // A limit that is not the last byte of a page: that page is not usable.
    let w = a.alloc(PAGE_SIZE, DmaAddr::new(0x1_0000_0800)).unwrap();
    assert_eq!(w.as_u64(), 0xffff_e000);
    a.check_invariants();
}

#[test]
fn reserved_msi_window_is_never_handed_out() {
    let mut a = IovaAllocator::new(
        DmaAddr::new(0xFED0_0000),
        DmaAddr::new(0xFEFF_FFFF),
        &[MSI_WINDOW],
    )
    .unwrap();
    let total = a.stats().free_pages;
    assert_eq!(total, (0x30_0000 - 0x10_0000) / PAGE_SIZE);
    let mut got = Vec::new();
    while let Ok(x) = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)) {
        assert!(!MSI_WINDOW.overlaps(x.as_u64(), PAGE_SIZE), "{x:?}");
        got.push(x);
    }
    assert_eq!(got.len() as u64, total);
    a.check_invariants();
}

#[test]
fn iova_exhaustion_is_an_error_and_changes_nothing() {
    let mut a = IovaAllocator::new(DmaAddr::new(0x1000), DmaAddr::new(0x4fff), &[]).unwrap();
    let before = a.stats();
    assert_eq!(
        a.alloc(8 * PAGE_SIZE, DmaAddr::new(u64::MAX)),
        Err(DmaError::IovaExhausted {
            size: 8 * PAGE_SIZE
        })
    );
    assert_eq!(a.stats(), before);
    // Limit below every page.
    assert_eq!(
        a.alloc(PAGE_SIZE, DmaAddr::new(0xfff)),
        Err(DmaError::IovaExhausted { size: PAGE_SIZE })
    );
    assert_eq!(a.stats(), before);
}

#[test]
fn iova_free_checks_the_exact_range() {
    let mut a = space(32, &[]);
    let x = a.alloc(2 * PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    let before = a.stats();
    assert_eq!(
        a.free(x, PAGE_SIZE),
        Err(DmaError::SizeMismatch {
            addr: x.as_u64(),
            mapped: 2 * PAGE_SIZE,
            given: PAGE_SIZE
        })
    );
    assert_eq!(
        a.free(DmaAddr::new(x.as_u64() + PAGE_SIZE), PAGE_SIZE),
        Err(DmaError::NotMapped {
            addr: x.as_u64() + PAGE_SIZE
        })
    );
    assert_eq!(
        a.free(DmaAddr::new(x.as_u64() + 1), 2 * PAGE_SIZE),
        Err(DmaError::NotMapped {
            addr: x.as_u64() + 1
        })
    );
    assert_eq!(a.stats(), before);
    a.free(x, 2 * PAGE_SIZE).unwrap();
    // Double free.
    assert_eq!(
        a.free(x, 2 * PAGE_SIZE),
        Err(DmaError::NotMapped { addr: x.as_u64() })
    );
    a.check_invariants();
}

#[test]
fn iova_rejects_zero_and_unaligned_sizes() {
    let mut a = space(32, &[]);
    assert_eq!(
        a.alloc(0, DmaAddr::new(u64::MAX)),
        Err(DmaError::ZeroLength)
    );
    assert!(matches!(
        a.alloc(100, DmaAddr::new(u64::MAX)),
        Err(DmaError::Misaligned { .. })
    ));
}

#[test]
fn magazine_reuses_freed_ranges() {
    let mut a = space(39, &[]);
    let x = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    a.free(x, PAGE_SIZE).unwrap();
    assert_eq!(a.stats().cached_pages, 1);
    assert_eq!(a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap(), x);
    assert_eq!(a.stats().cached_pages, 0);
    // A cached range above the limit is not used for a smaller mask.
    a.free(x, PAGE_SIZE).unwrap();
    let y = a.alloc(PAGE_SIZE, DmaAddr::new(0xffff_ffff)).unwrap();
    assert_ne!(x, y);
    assert!(y.as_u64() < 0x1_0000_0000);
    a.check_invariants();
}

#[test]
fn exhaustion_drains_caches_before_failing() {
    let mut a = IovaAllocator::new(DmaAddr::new(0), DmaAddr::new(0x3fff), &[]).unwrap();
    let p: Vec<_> = (0..4)
        .map(|_| a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap())
        .collect();
    for x in p {
        a.free(x, PAGE_SIZE).unwrap();
    }
    // 4 single pages cached; a 4-page request needs them merged.
    let big = a.alloc(4 * PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    assert_eq!(big.as_u64(), 0);
    a.check_invariants();
}

#[test]
fn reserved_ranges_are_rounded_out_to_pages() {
    let r = ReservedRegion::new(0x1800, 0x1000, ReservedKind::Rmrr); // touches pages 1 and 2
    let mut a = IovaAllocator::new(DmaAddr::new(0), DmaAddr::new(0x3fff), &[r]).unwrap();
    assert_eq!(a.stats().free_pages, 2);
    let x = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    let y = a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap();
    let mut got = [x.as_u64(), y.as_u64()];
    got.sort();
    assert_eq!(got, [0, 0x3000]);
    assert!(a.is_reserved(DmaAddr::new(0x2fff), 1));
}

#[test]
fn empty_space_is_invalid_config() {
    assert!(matches!(
        IovaAllocator::new(DmaAddr::new(0x1000), DmaAddr::new(0x1ffe), &[]),
        Err(DmaError::InvalidConfig(_))
    ));
}

#[test]
fn one_million_live_allocations() {
    let mut a = space(39, &[MSI_WINDOW]);
    let mut v = Vec::with_capacity(1 << 20);
    for _ in 0..(1 << 20) {
        v.push(a.alloc(PAGE_SIZE, DmaAddr::new(u64::MAX)).unwrap());
    }
    assert_eq!(a.stats().live, 1 << 20);
    for x in v.drain(..).rev() {
        a.free(x, PAGE_SIZE).unwrap();
    }
    a.drain_caches();
    assert_eq!(a.stats().free_pages, a.total_pages());
    // Everything merged back: one allocation of half the space works.
    a.alloc(1 << 38, DmaAddr::new(u64::MAX)).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { pages: u64, limit_bits: u32 },
    Free { idx: usize },
    FreeWrongSize { idx: usize },
    FreeBogus { addr: u64 },
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![1u64..=4, 1u64..=40, Just(512u64), 1u64..=2000], 20u32..=33)
            .prop_map(|(pages, limit_bits)| Op::Alloc { pages, limit_bits }),
        3 => any::<usize>().prop_map(|idx| Op::Free { idx }),
        1 => any::<usize>().prop_map(|idx| Op::FreeWrongSize { idx }),
        1 => any::<u64>().prop_map(|addr| Op::FreeBogus { addr }),
        1 => Just(Op::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Model: the set of live ranges. Checks no overlap, no reserved IOVA, limits respected,
    /// failed operations change nothing, and no leak once everything is freed.
    #[test]
    fn iova_model_no_overlap_no_reserved_masks_respected(
        ops in proptest::collection::vec(op(), 1..120),
        holes in proptest::collection::vec((0u64..0x2_0000, 1u64..64), 0..4),
    ) {
        let mut reserved: Vec<ReservedRegion> = holes
            .iter()
            .map(|&(p, n)| ReservedRegion::new(p << 12, n << 12, ReservedKind::HostBridgeWindow))
            .collect();
        reserved.push(MSI_WINDOW);
        reserved.push(ReservedRegion::new(0, PAGE_SIZE, ReservedKind::PageZero));
        let mut a = IovaAllocator::new(DmaAddr::new(0), DmaAddr::new((1 << 33) - 1), &reserved).unwrap();
        let total = a.total_pages();
        let mut model: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            let before = a.stats();
            match op {
                Op::Alloc { pages, limit_bits } => {
                    let limit = (1u64 << limit_bits) - 1;
                    match a.alloc(pages * PAGE_SIZE, DmaAddr::new(limit)) {
                        Ok(x) => {
                            let x = x.as_u64();
                            prop_assert!(x + pages * PAGE_SIZE - 1 <= limit);
                            prop_assert_eq!(x % (pages.next_power_of_two() * PAGE_SIZE), 0);
                            prop_assert!(!reserved.iter().any(|r| r.overlaps(x, pages * PAGE_SIZE)));
                            for &(s, n) in &model {
                                prop_assert!(x + pages * PAGE_SIZE <= s || s + n <= x);
                            }
                            model.push((x, pages * PAGE_SIZE));
                        }
                        Err(e) => {
                            prop_assert_eq!(e, DmaError::IovaExhausted { size: pages * PAGE_SIZE });
                            prop_assert_eq!(a.stats().live, before.live);
                        }
                    }
                }
                Op::Free { idx } if !model.is_empty() => {
                    let (s, n) = model.swap_remove(idx % model.len());
                    prop_assert_eq!(a.free(DmaAddr::new(s), n), Ok(()));
                }
                Op::FreeWrongSize { idx } if !model.is_empty() => {
                    let (s, n) = model[idx % model.len()];
                    prop_assert_eq!(
                        a.free(DmaAddr::new(s), n + PAGE_SIZE),
                        Err(DmaError::SizeMismatch { addr: s, mapped: n, given: n + PAGE_SIZE })
                    );
                    prop_assert_eq!(a.stats(), before);
                }
                Op::FreeBogus { addr }
                    if !model.iter().any(|&(s, _)| s == addr) => {
                        prop_assert_eq!(
                            a.free(DmaAddr::new(addr), PAGE_SIZE),
                            Err(DmaError::NotMapped { addr })
                        );
                        prop_assert_eq!(a.stats(), before);
                    }
                Op::Drain => a.drain_caches(),
                _ => {}
            }
            prop_assert_eq!(a.total_pages(), total);
        }
        a.check_invariants();
        for (s, n) in model.drain(..) {
            a.free(DmaAddr::new(s), n).unwrap();
        }
        a.drain_caches();
        a.check_invariants();
        prop_assert_eq!(a.stats().free_pages, total);
    }
}
