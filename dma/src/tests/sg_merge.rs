//! Scatter-gather merging (issue 12): under an IOMMU, consecutive unbounced entries whose pages
//! are physically contiguous are mapped as one run (one `IommuDomain::map`, as Linux merges
//! contiguous segments), still one segment per entry, and unmapped exactly as mapped. Checked
//! against a model of the runs, with bounced entries (never merged) and failures that must
//! unwind exactly.

use proptest::prelude::*;

use super::{snapshot, LOW};
use crate::iommu::{IommuDomain, IommuError};
use crate::testing::Fixture;
use crate::{
    Attrs, DeviceConfig, Direction, DmaAddr, DmaError, InvalidationMode, PhysAddr, UnmapBatch,
    PAGE_SIZE,
};

const TO: Direction = Direction::ToDevice;

fn fixture(trusted: bool) -> Fixture {
    let cfg = DeviceConfig::with_mask_bits(39).unwrap();
    let cfg = if trusted { cfg.trusted() } else { cfg };
    Fixture::iommu(cfg, InvalidationMode::Strict).unwrap()
}

#[test]
fn sg_contiguous_pages_are_one_run() {
    let f = fixture(true);
    let list: Vec<_> = (0..256)
        .map(|i| (PhysAddr::new(LOW + i * PAGE_SIZE), PAGE_SIZE))
        .collect();
    let before = snapshot(&f);
    let sg = f.dev.map_sg(&list, TO, Attrs::empty()).unwrap();
    assert_eq!(
        f.hw().counts().maps,
        1,
        "one page-table run for the whole list"
    );
    assert_eq!(sg.len(), 256, "still one segment per entry");
    let span = sg.iova_span().unwrap();
    assert_eq!(span.len, 256 * PAGE_SIZE);
    for (i, seg) in sg.segments().enumerate() {
        let (pa, _) = f.hw().translate(seg.addr).unwrap();
        assert_eq!(pa.as_u64(), LOW + i as u64 * PAGE_SIZE);
    }
    sg.unmap().unwrap();
    let c = f.hw().counts();
    assert_eq!((c.unmaps, c.flushes), (1, 1));
    assert_eq!(snapshot(&f), before);
}

#[test]
fn sg_scattered_pages_are_separate_runs() {
    // Negative control of the merge: every other page, nothing is contiguous.
    let f = fixture(true);
    let list: Vec<_> = (0..8)
        .map(|i| (PhysAddr::new(LOW + i * 2 * PAGE_SIZE), PAGE_SIZE))
        .collect();
    let sg = f.dev.map_sg(&list, TO, Attrs::empty()).unwrap();
    assert_eq!(f.hw().counts().maps, 8);
    sg.unmap().unwrap();
    assert_eq!(f.hw().counts().unmaps, 8);
    assert_eq!(f.hw().entries(), 0);
}

#[test]
fn sg_batch_of_scattered_pages_is_one_flush() {
    let f = fixture(true);
    let mut batch = UnmapBatch::with_capacity(64);
    for i in 0..64 {
        let m = f
            .dev
            .map_phys(
                PhysAddr::new(LOW + i * 3 * PAGE_SIZE),
                PAGE_SIZE,
                TO,
                Attrs::empty(),
            )
            .unwrap();
        m.unmap_in(&mut batch).unwrap();
    }
    assert_eq!(f.hw().counts().flushes, 0);
    batch.finish().unwrap();
    assert_eq!(f.hw().counts().flushes, 1, "one flush of the merged span");
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

/// One entry of a generated list.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Continue the previous entry physically (its end, page aligned, or the page after).
    follows: bool,
    page: u64,
    off: u64,
    len: u64,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        prop_oneof![3 => Just(true), 1 => Just(false)],
        0u64..512,
        prop_oneof![3 => Just(0u64), 1 => 1u64..4096],
        prop_oneof![
            3 => Just(PAGE_SIZE),
            1 => Just(3 * PAGE_SIZE),
            1 => 1u64..3 * PAGE_SIZE
        ],
    )
        .prop_map(|(follows, page, off, len)| Entry {
            follows,
            page,
            off,
            len,
        })
}

/// The physical ranges of a generated list.
fn ranges(entries: &[Entry]) -> Vec<(PhysAddr, u64)> {
    let mut out: Vec<(PhysAddr, u64)> = Vec::new();
    for e in entries {
        let phys = match out.last() {
            // Right after the previous entry's last page.
            Some(&(p, l)) if e.follows => (p.as_u64() + l).next_multiple_of(PAGE_SIZE),
            _ => LOW + e.page * PAGE_SIZE + e.off,
        };
        out.push((PhysAddr::new(phys), e.len));
    }
    out
}

/// The model: how many runs (maps) the list needs for this device.
fn model_runs(list: &[(PhysAddr, u64)], trusted: bool) -> u64 {
    let mut runs = 0;
    let mut open: Option<u64> = None; // physical end of a mergeable open run
    for &(phys, len) in list {
        let (p, end) = (phys.as_u64(), phys.as_u64() + len);
        let bounced = !trusted && (p % PAGE_SIZE != 0 || end % PAGE_SIZE != 0);
        let first_page = p - p % PAGE_SIZE;
        let pages_end = end.next_multiple_of(PAGE_SIZE);
        match open {
            Some(e) if !bounced && e == first_page => open = Some(pages_end),
            _ => {
                runs += 1;
                open = (!bounced).then_some(pages_end);
            }
        }
    }
    runs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_sg_merge_matches_the_model(
        entries in proptest::collection::vec(entry(), 1..24),
        trusted in any::<bool>(),
        fail_at in proptest::option::of(0u64..24),
    ) {
        let f = fixture(trusted);
        let list = ranges(&entries);
        let runs = model_runs(&list, trusted);
        let before = snapshot(&f);
        if let Some(k) = fail_at {
            f.hw().fail_map_after(k);
        }
        match f.dev.map_sg(&list, TO, Attrs::empty()) {
            Ok(sg) => {
                prop_assert!(fail_at.is_none_or(|k| k >= runs));
                prop_assert_eq!(f.hw().counts().maps, runs);
                prop_assert_eq!(sg.len(), list.len());
                let (base, _) = sg.iova_allocation().unwrap();
                let mut page = base.as_u64();
                for (seg, &(phys, len)) in sg.segments().zip(&list) {
                    // Back to back page by page, each at its own offset.
                    let off = phys.as_u64() % PAGE_SIZE;
                    prop_assert_eq!(seg.addr, DmaAddr::new(page + off));
                    prop_assert_eq!(seg.len, len);
                    let (pa, _) = f.hw().translate(seg.addr).unwrap();
                    if f.dev.config().trusted {
                        prop_assert_eq!(pa, phys);
                    }
                    let (last, _) = f.hw().translate(DmaAddr::new(seg.addr.as_u64() + len - 1)).unwrap();
                    prop_assert_eq!(last.as_u64() - pa.as_u64(), len - 1);
                    page += (off + len).next_multiple_of(PAGE_SIZE);
                }
                sg.unmap().unwrap();
                prop_assert_eq!(f.hw().counts().unmaps, runs, "each run unmapped whole");
            }
            Err(e) => {
                let k = fail_at.unwrap();
                prop_assert!(k < runs);
                prop_assert_eq!(e, DmaError::Iommu(IommuError::OutOfMemory));
                prop_assert_eq!(f.hw().counts().unmaps, k, "exactly the runs mapped are undone");
            }
        }
        prop_assert_eq!(f.hw().entries(), 0);
        prop_assert_eq!(f.hw().stale_reuses(), 0);
        prop_assert_eq!(snapshot(&f), before);
    }
}
