//! PRP construction against the controller-side walk ([`walk`]) as the model: every alignment
//! and length case around page and list-page boundaries, and random page-contiguous scatter
//! lists; every rule violation refused with nothing written.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const PAGE: u64 = 4096;
const PER_LIST_PAGE: usize = (PAGE / 8) as usize;

/// List pages at 0x7000_0000 + i * page, stored in a map the walk reads back.
struct ListMem {
    pages: usize,
    page_size: u64,
    base: u64,
    entries: BTreeMap<u64, u64>,
    writes: usize,
}

impl ListMem {
    fn new(pages: usize, page_size: u64) -> Self {
        Self {
            pages,
            page_size,
            base: 0x7000_0000,
            entries: BTreeMap::new(),
            writes: 0,
        }
    }
}

impl PrpListMemory for ListMem {
    fn pages(&self) -> usize {
        self.pages
    }
    fn page_addr(&self, page: usize) -> u64 {
        self.base + page as u64 * self.page_size
    }
    fn write(&mut self, page: usize, index: usize, value: u64) {
        assert!(page < self.pages && index < (self.page_size / 8) as usize);
        self.writes += 1;
        self.entries
            .insert(self.page_addr(page) + index as u64 * 8, value);
    }
}

/// Byte ranges merged where adjacent.
fn merged(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, l) in ranges {
        match out.last_mut() {
            Some((pa, pl)) if *pa + *pl == a => *pl += l,
            _ => out.push((a, l)),
        }
    }
    out
}

/// Builds, walks the result like a controller, and checks the walk covers exactly the segments.
fn round_trip(segments: &[Segment], page_size: u64) -> Prps {
    let pages = page_count(segments, page_size).expect("valid segments");
    let mut list = ListMem::new(list_pages_needed(pages, page_size).max(1), page_size);
    let prps = build(segments, page_size, &mut list).expect("built");
    let len: u64 = segments.iter().map(|s| s.len).sum();
    let mut ranges = Vec::new();
    walk(
        prps.prp1,
        prps.prp2,
        len,
        page_size,
        |a| {
            *list
                .entries
                .get(&a)
                .expect("walk read an entry that was never written")
        },
        |a, l| ranges.push((a, l)),
    )
    .expect("walk accepted the PRPs");
    assert_eq!(
        merged(ranges),
        merged(segments.iter().map(|s| (s.addr, s.len))),
        "segments {segments:x?}"
    );
    assert_eq!(list.writes, prps.list_entries);
    prps
}

#[test]
fn one_page_leaves_prp2_zero() {
    for (addr, len) in [
        (0x10_0000, 1),
        (0x10_0000, PAGE),
        (0x10_0ffc, 4),
        (0x10_0800, 0x800),
    ] {
        let p = round_trip(&[Segment::new(addr, len)], PAGE);
        assert_eq!((p.prp1, p.prp2, p.list_pages), (addr, 0, 0));
    }
}

#[test]
fn two_pages_put_the_second_in_prp2() {
    for (addr, len) in [
        (0x10_0000, PAGE + 1),
        (0x10_0000, 2 * PAGE),
        (0x10_0ffc, 8),
        (0x10_0004, 2 * PAGE - 4),
    ] {
        let p = round_trip(&[Segment::new(addr, len)], PAGE);
        assert_eq!(p.prp1, addr);
        assert_eq!(p.prp2, (addr & !(PAGE - 1)) + PAGE);
        assert_eq!(p.list_pages, 0);
    }
}

#[test]
fn three_pages_or_more_use_a_list() {
    let p = round_trip(&[Segment::new(0x10_0000, 2 * PAGE + 1)], PAGE);
    assert_eq!((p.list_pages, p.list_entries, p.prp2), (1, 2, 0x7000_0000));
    // An unaligned start pushes a two-page length onto a third page.
    let p = round_trip(&[Segment::new(0x10_0004, 2 * PAGE)], PAGE);
    assert_eq!((p.list_pages, p.list_entries), (1, 2));
}

#[test]
fn list_page_boundaries() {
    // pages = 1 + entries; one list page holds 512 entries, a chained page 511 + pointer.
    // Entries written = data entries (pages - 1) + one chain pointer per list page but the last.
    for (pages, list_pages, entries) in [
        (PER_LIST_PAGE + 1, 1, PER_LIST_PAGE),
        (PER_LIST_PAGE + 2, 2, PER_LIST_PAGE + 2),
        (2 * PER_LIST_PAGE - 1, 2, 2 * PER_LIST_PAGE - 1),
        (2 * PER_LIST_PAGE, 2, 2 * PER_LIST_PAGE),
        (2 * PER_LIST_PAGE + 1, 3, 2 * PER_LIST_PAGE + 2),
    ] {
        let segs = [Segment::new(0x100_0000, pages as u64 * PAGE)];
        assert_eq!(list_pages_needed(pages, PAGE), list_pages, "{pages} pages");
        let p = round_trip(&segs, PAGE);
        assert_eq!(p.list_pages, list_pages, "{pages} pages");
        assert_eq!(p.list_entries, entries, "{pages} pages");
    }
}

#[test]
fn scatter_lists_contiguous_in_pages() {
    let segs = [
        Segment::new(0x20_0800, 0x800),
        Segment::new(0x90_0000, 3 * PAGE),
        Segment::new(0x40_0000, 10),
    ];
    let p = round_trip(&segs, PAGE);
    assert_eq!(p.list_entries, 4);
}

#[test]
fn larger_memory_page_sizes() {
    let page = 64 * 1024;
    round_trip(&[Segment::new(0x100_0000, 5 * page + 3)], page);
    round_trip(&[Segment::new(0x100_0100, page)], page);
}

#[test]
fn refusals_write_nothing() {
    let mut list = ListMem::new(1, PAGE);
    let cases: &[(&[Segment], PrpError)] = &[
        (&[], PrpError::Empty),
        (
            &[Segment::new(0x1000, 0)],
            PrpError::EmptySegment { index: 0 },
        ),
        (
            &[Segment::new(0x1002, 8)],
            PrpError::Misaligned { addr: 0x1002 },
        ),
        (
            &[Segment::new(0x1000, PAGE), Segment::new(0x5004, 8)],
            PrpError::GapBefore {
                index: 1,
                addr: 0x5004,
            },
        ),
        (
            &[Segment::new(0x1000, 8), Segment::new(0x5000, 8)],
            PrpError::GapAfter {
                index: 0,
                end: 0x1008,
            },
        ),
        (
            &[Segment::new(u64::MAX - 7, 16)],
            PrpError::Overflow { index: 0 },
        ),
        (
            &[Segment::new(0x100_0000, (PER_LIST_PAGE as u64 + 2) * PAGE)],
            PrpError::ListTooSmall {
                needed: 2,
                available: 1,
            },
        ),
    ];
    for (segs, err) in cases {
        assert_eq!(build(segs, PAGE, &mut list), Err(*err), "{segs:x?}");
    }
    assert_eq!(
        build(&[Segment::new(0, 8)], 2048, &mut list),
        Err(PrpError::BadPageSize(2048))
    );
    let mut odd = ListMem::new(1, PAGE);
    odd.base = 0x7000_0800;
    assert_eq!(
        build(&[Segment::new(0x100_0000, 3 * PAGE)], PAGE, &mut odd),
        Err(PrpError::ListMisaligned { addr: 0x7000_0800 })
    );
    assert_eq!(list.writes + odd.writes, 0);
}

#[test]
fn the_walk_refuses_what_a_controller_refuses() {
    let nothing = |_| 0;
    assert!(walk(0x1002, 0, 8, PAGE, nothing, |_, _| ()).is_none());
    // Second page with an offset.
    assert!(walk(0x1000, 0x2004, PAGE + 8, PAGE, nothing, |_, _| ()).is_none());
    // A list entry with an offset.
    assert!(walk(0x1000, 0x7000_0000, 3 * PAGE, PAGE, |_| 0x3008, |_, _| ()).is_none());
    // A list pointer that is not qword aligned.
    assert!(walk(0x1000, 0x7000_0004, 3 * PAGE, PAGE, |_| 0x3000, |_, _| ()).is_none());
}

/// Random page-contiguous scatter lists: a first segment at any dword offset, middle segments
/// of whole pages, a last segment of any length.
fn scatter() -> impl Strategy<Value = Vec<Segment>> {
    (
        0u64..1024,
        1u64..(3 * PAGE),
        proptest::collection::vec((1u64..64, 1u64..4), 0..12),
        1u64..(2 * PAGE),
    )
        .prop_map(|(first_off, first_extra, middle, last_len)| {
            let mut segs = Vec::new();
            let first_addr = 0x10_0000 + first_off * 4;
            let first_end = (first_addr + first_extra).next_multiple_of(PAGE);
            segs.push(Segment::new(first_addr, first_end - first_addr));
            for (slot, pages) in middle {
                segs.push(Segment::new(0x4000_0000 + slot * 0x10_0000, pages * PAGE));
            }
            segs.push(Segment::new(0x8000_0000, last_len));
            segs
        })
}

proptest! {
    #[test]
    fn random_scatter_lists_round_trip(segs in scatter()) {
        round_trip(&segs, PAGE);
    }

    #[test]
    fn random_single_buffers_round_trip(off in 0u64..1024, len in 1u64..(PER_LIST_PAGE as u64 * 3 * PAGE)) {
        round_trip(&[Segment::new(0x100_0000 + off * 4, len)], PAGE);
    }
}
