//! The IOVA link API: digest item 14 and items 1-10, each as a named test.

use std::vec::Vec;

use super::{buffer, snapshot, HIGH, LOW};
use crate::iommu::{IommuDomain, IommuError, Prot};
use crate::testing::{FakeOp, Fixture};
use crate::{Attrs, DeviceConfig, Direction, DmaError, InvalidationMode, PhysAddr, PAGE_SIZE};

const TO: Direction = Direction::ToDevice;
const RAM: Attrs = Attrs::empty();

fn iommu() -> Fixture {
    Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap()
}

fn p(a: u64) -> PhysAddr {
    PhysAddr::new(a)
}

#[test]
fn iova_try_alloc_on_direct_is_no_iommu() {
    let f = Fixture::direct(DeviceConfig::default().trusted()).unwrap();
    assert_eq!(
        f.dev.iova_try_alloc(p(LOW), 4096).unwrap_err(),
        DmaError::NoIommu
    );
}

#[test]
fn reject_zero_length_link_and_alloc() {
    let f = iommu();
    assert_eq!(
        f.dev.iova_try_alloc(p(LOW), 0).unwrap_err(),
        DmaError::ZeroLength
    );
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x4000).unwrap();
    let s = snapshot(&f);
    assert_eq!(
        l.link(p(LOW), 0, 0, TO, RAM).unwrap_err(),
        DmaError::ZeroLength
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn reject_link_overflow_and_out_of_range() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x4000).unwrap();
    let s = snapshot(&f);
    assert!(matches!(
        l.link(p(LOW), u64::MAX, 2, TO, RAM).unwrap_err(),
        DmaError::Overflow { .. }
    ));
    assert!(matches!(
        l.link(p(u64::MAX - 1), 0, 4096, TO, RAM).unwrap_err(),
        DmaError::Overflow { .. }
    ));
    assert_eq!(
        l.link(p(LOW + 0x3000), 0x3000, 0x2000, TO, RAM)
            .unwrap_err(),
        DmaError::OutOfRange {
            offset: 0x3000,
            len: 0x2000,
            size: 0x4000
        }
    );
    assert_eq!(
        l.link(p(LOW), 0, 0x1000, TO, Attrs::from_bits_retain(0x80))
            .unwrap_err(),
        DmaError::UnsupportedAttrs(0x80)
    );
    assert_eq!(snapshot(&f), s);
    assert_eq!(l.link_count(), 0);
}

#[test]
fn link_phys_and_offset_alignment_checked_separately() {
    // Digest item 14: start_pad == 0 does not prove phys and offset are mutually aligned.
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x10000).unwrap();
    let s = snapshot(&f);
    // Offset aligned, phys not: the phys check catches it.
    assert_eq!(
        l.link(p(LOW + 0x10), 0x1000, 0x1000, TO, RAM).unwrap_err(),
        DmaError::Misaligned {
            what: "phys",
            value: LOW + 0x10,
            align: PAGE_SIZE
        }
    );
    // Phys aligned, offset not: the offset check catches it.
    assert_eq!(
        l.link(p(LOW), 0x1010, 0x1000, TO, RAM).unwrap_err(),
        DmaError::Misaligned {
            what: "offset",
            value: 0x1010,
            align: PAGE_SIZE
        }
    );
    // At offset 0, phys must share the page offset given at allocation.
    assert_eq!(
        l.link(p(LOW + 0x20), 0, 0x1000, TO, RAM).unwrap_err(),
        DmaError::Misaligned {
            what: "phys",
            value: LOW + 0x20,
            align: PAGE_SIZE
        }
    );
    assert_eq!(snapshot(&f), s);
    // An allocation for an unaligned start links that start fine.
    let mut u = f.dev.iova_try_alloc(p(LOW + 0x20), 0x100).unwrap();
    let dma = u.link(p(HIGH + 0x20), 0, 0x100, TO, RAM).unwrap();
    assert_eq!(dma.page_offset(), 0x20);
    assert_eq!(f.hw().translate(dma).unwrap().0, p(HIGH + 0x20));
}

#[test]
fn link_mid_range_must_be_granule_aligned() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x10000).unwrap();
    // A link that ends mid-page before the end of the range would share its page with the next.
    assert_eq!(
        l.link(p(LOW), 0, 0x1800, TO, RAM).unwrap_err(),
        DmaError::Misaligned {
            what: "len",
            value: 0x1800,
            align: PAGE_SIZE
        }
    );
    // Ending exactly at the end of the range may be unaligned... if the range's end is.
    let mut t = f.dev.iova_try_alloc(p(LOW), 0x1800).unwrap();
    t.link(p(LOW), 0, 0x1000, TO, RAM).unwrap();
    t.link(p(HIGH), 0x1000, 0x800, TO, RAM).unwrap();
    assert_eq!(t.linked_len(), 0x1800);
    l.link(p(LOW), 0, 0x2000, TO, RAM).unwrap();
    l.link(p(HIGH), 0x4000, 0x1000, TO, RAM).unwrap();
}

#[test]
fn link_overlap_rejected() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x10000).unwrap();
    l.link(p(LOW), 0x2000, 0x2000, TO, RAM).unwrap();
    let s = snapshot(&f);
    for (off, len) in [
        (0x2000, 0x1000),
        (0x3000, 0x1000),
        (0x1000, 0x2000),
        (0x0, 0x10000),
    ] {
        assert_eq!(
            l.link(p(HIGH), off, len, TO, RAM).unwrap_err(),
            DmaError::AlreadyMapped { addr: 0x2000 }
        );
    }
    assert_eq!(snapshot(&f), s);
    l.link(p(HIGH), 0x1000, 0x1000, TO, RAM).unwrap();
    l.link(p(HIGH), 0x4000, 0x1000, TO, RAM).unwrap();
}

#[test]
fn link_sync_once_for_span() {
    let f = iommu();
    let ranges: Vec<_> = (0..16).map(|i| (p(HIGH + i * 0x10000), 0x3000)).collect();
    f.hw().reset_counts();
    let l = f.dev.map_linked(&ranges, TO, Attrs::MMIO).unwrap();
    let c = f.hw().counts();
    assert_eq!((c.maps, c.sync_maps), (16, 1));
    let ops = f.hw().ops();
    assert!(ops.is_empty()); // recording was off
    assert_eq!(l.linked_len(), 16 * 0x3000);
    for (i, &(ph, _)) in ranges.iter().enumerate() {
        let (pa, prot) = f
            .hw()
            .translate(crate::DmaAddr::new(l.addr().as_u64() + i as u64 * 0x3000))
            .unwrap();
        assert_eq!(pa, ph);
        assert_eq!(prot, Prot::READ | Prot::MMIO);
    }
}

#[test]
fn link_failure_at_index_0_frees_iova() {
    // Digest item 9: no IOVA leak when the first link fails.
    let f = iommu();
    let s = snapshot(&f);
    f.hw().fail_map_after(0);
    let ranges = [(p(LOW), 0x1000), (p(LOW + 0x2000), 0x1000)];
    assert_eq!(
        f.dev.map_linked(&ranges, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::OutOfMemory)
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn link_failure_at_index_k_unwinds_exactly_k() {
    for k in [1u64, 3, 7] {
        let f = iommu();
        let s = snapshot(&f);
        let ranges: Vec<_> = (0..8).map(|i| (p(LOW + i * 0x10000), 0x2000)).collect();
        f.hw().record_ops(true);
        f.hw().fail_map_after(k);
        assert_eq!(
            f.dev.map_linked(&ranges, TO, RAM).unwrap_err(),
            DmaError::Iommu(IommuError::OutOfMemory)
        );
        let ops = f.hw().ops();
        let maps: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                FakeOp::Map { iova, size, .. } => Some((*iova, *size)),
                _ => None,
            })
            .collect();
        let mut unmaps: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                FakeOp::Unmap { iova, size } => Some((*iova, *size)),
                _ => None,
            })
            .collect();
        unmaps.sort();
        assert_eq!(maps.len() as u64, k);
        assert_eq!(unmaps, maps, "exactly the k links, each with its own size");
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, FakeOp::Flush { .. }))
                .count(),
            1
        );
        assert_eq!(snapshot(&f), s, "no IOVA leaked");
    }
}

#[test]
fn link_ranges_failure_keeps_earlier_links() {
    // link_ranges unwinds only what *it* linked.
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x10000).unwrap();
    l.link(p(LOW), 0, 0x1000, TO, RAM).unwrap();
    let ranges = [
        (p(LOW + 0x1000), 0x1000),
        (p(LOW + 0x2000), 0x1000),
        (p(LOW + 0x3010), 0x1000),
    ];
    assert!(matches!(
        l.link_ranges(0x1000, &ranges, TO, RAM).unwrap_err(),
        DmaError::Misaligned { what: "phys", .. }
    ));
    assert_eq!(l.link_count(), 1);
    assert_eq!(f.hw().entries(), 1);
}

#[test]
fn destroy_frees_whole_allocation() {
    let f = iommu();
    let s = snapshot(&f);
    let mut l = f.dev.iova_try_alloc(p(LOW), 1 << 20).unwrap();
    assert_eq!(l.allocation().1, 1 << 20);
    l.link(p(LOW), 0, 0x1000, TO, RAM).unwrap();
    l.link(p(LOW), 0x8000, 0x1000, TO, RAM).unwrap();
    l.destroy().unwrap();
    assert_eq!(
        snapshot(&f),
        s,
        "the whole 1 MiB came back, not just the 8 KiB linked"
    );
    // Also when nothing was linked, and on drop.
    let l = f.dev.iova_try_alloc(p(LOW), 1 << 20).unwrap();
    drop(l);
    assert_eq!(snapshot(&f), s);
}

#[test]
fn unlink_uses_each_links_own_attrs() {
    // Digest item 14: one attrs value for a bulk unlink is wrong when links differ.
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().untrusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let buf = buffer(&f, 2, u64::MAX);
    f.phys.fill(buf, 8192, 0x10);
    let mut l = f.dev.iova_try_alloc(p(0x40), 0x2000 - 0x40).unwrap();
    // Link 0: RAM, device writes, unaligned start: bounced.
    let d0 = l
        .link(p(buf + 0x40), 0, 0x1000 - 0x40, Direction::FromDevice, RAM)
        .unwrap();
    // Link 1: MMIO, page aligned, device reads.
    l.link(p(0xfe00_0000), 0x1000 - 0x40, 0x1000, TO, Attrs::MMIO)
        .unwrap();
    let (slot, prot0) = f.hw().translate(d0).unwrap();
    assert_ne!(slot.as_u64(), buf + 0x40, "bounced");
    assert_eq!(prot0, Prot::WRITE | Prot::CACHE);
    let (_, prot1) = f
        .hw()
        .translate(crate::DmaAddr::new(d0.as_u64() - 0x40 + 0x1000))
        .unwrap();
    assert_eq!(prot1, Prot::READ | Prot::MMIO);
    f.phys.fill(slot.as_u64(), 0x1000 - 0x40, 0x66); // the device writes link 0
    f.hw().record_ops(true);
    l.unlink(0, 0x2000 - 0x40).unwrap();
    // Link 0 copied back (FromDevice, RAM); link 1 never touched as memory (MMIO).
    assert!(f
        .phys
        .bytes(buf + 0x40, 0x1000 - 0x40)
        .iter()
        .all(|&b| b == 0x66));
    assert!(f.phys.bytes(buf, 0x40).iter().all(|&b| b == 0x10));
    let ops = f.hw().ops();
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, FakeOp::Unmap { size: 0x1000, .. }))
            .count(),
        2
    );
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, FakeOp::Flush { .. }))
            .count(),
        1
    );
}

#[test]
fn unlink_removes_exactly_the_granules_linked() {
    // Digest item 10: map/unmap granularity is the same.
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(0), 8 << 20).unwrap();
    f.hw().record_ops(true);
    l.link(p(2 << 20), 0, 2 << 20, TO, RAM).unwrap(); // one 2 MiB superpage
    l.link(p(LOW), 2 << 20, 0x3000, TO, RAM).unwrap(); // three 4 KiB pages
    l.unlink(0, 8 << 20).unwrap();
    let ops = f.hw().ops();
    let maps: Vec<_> = ops
        .iter()
        .filter_map(|o| match o {
            FakeOp::Map { iova, size, .. } => Some((*iova, *size)),
            _ => None,
        })
        .collect();
    let unmaps: Vec<_> = ops
        .iter()
        .filter_map(|o| match o {
            FakeOp::Unmap { iova, size } => Some((*iova, *size)),
            _ => None,
        })
        .collect();
    assert_eq!(maps, unmaps);
    assert_eq!(f.hw().counts().leaves, [3, 1, 0]);
}

#[test]
fn unlink_terminates_and_rejects_partial_ranges() {
    // Digest item 14: the slow-path unlink loop must advance; a range cutting a link is refused.
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(0), 0x10000).unwrap();
    l.link(p(LOW), 0x1000, 0x2000, TO, RAM).unwrap();
    l.link(p(LOW), 0x8000, 0x1000, TO, RAM).unwrap();
    let s = snapshot(&f);
    assert_eq!(
        l.unlink(0x2000, 0x1000).unwrap_err(),
        DmaError::SizeMismatch {
            addr: 0x1000,
            mapped: 0x2000,
            given: 0x1000
        }
    );
    assert_eq!(
        l.unlink(0x0, 0x2000).unwrap_err(),
        DmaError::SizeMismatch {
            addr: 0x1000,
            mapped: 0x2000,
            given: 0x2000
        }
    );
    assert_eq!(
        l.unlink(0x4000, 0x1000).unwrap_err(),
        DmaError::NotMapped { addr: 0x4000 }
    );
    assert!(matches!(
        l.unlink(0, 0x20000).unwrap_err(),
        DmaError::OutOfRange { .. }
    ));
    assert_eq!(snapshot(&f), s);
    // A range with gaps between whole links is fine.
    l.unlink(0, 0x10000).unwrap();
    assert_eq!(l.link_count(), 0);
    // Double unlink.
    assert_eq!(
        l.unlink(0, 0x10000).unwrap_err(),
        DmaError::NotMapped { addr: 0 }
    );
    // The IOVA stays allocated after unlink: relinking works, destroy frees it.
    l.link(p(HIGH), 0x1000, 0x1000, TO, RAM).unwrap();
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn unlink_failure_restores_links() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(0), 0x10000).unwrap();
    for i in 0..4 {
        l.link(p(LOW + i * 0x1000), i * 0x1000, 0x1000, TO, RAM)
            .unwrap();
    }
    f.hw().fail_unmap_after(2);
    let s = snapshot(&f);
    f.hw().record_ops(true);
    assert_eq!(
        l.unlink(0, 0x4000).unwrap_err(),
        DmaError::Iommu(IommuError::NotMapped {
            iova: l.addr().as_u64() + 0x2000
        })
    );
    assert_eq!(snapshot(&f), s);
    assert_eq!(l.link_count(), 4);
    // The two links taken off and put back were each made visible again (CM=1 / RWBF).
    let ops = f.hw().ops();
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, FakeOp::Map { .. }))
            .count(),
        2
    );
    assert_eq!(super::maps_without_sync(&ops), [], "{ops:?}");
    for i in 0..4 {
        assert!(f
            .hw()
            .translate(crate::DmaAddr::new(l.addr().as_u64() + i * 0x1000))
            .is_some());
    }
}

#[test]
fn link_mmio_untrusted_unaligned_refused() {
    let f = Fixture::iommu(
        DeviceConfig::default().untrusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let mut l = f.dev.iova_try_alloc(p(0xfe41_0024), 4).unwrap();
    assert!(matches!(
        l.link(p(0xfe41_0024), 0, 4, TO, Attrs::MMIO).unwrap_err(),
        DmaError::MmioNeedsBounce { .. }
    ));
    // Trusted: fine (digest item 13 through the link API).
    let t = iommu();
    let mut l = t.dev.iova_try_alloc(p(0xfe41_0024), 4).unwrap();
    let dma = l.link(p(0xfe41_0024), 0, 4, TO, Attrs::MMIO).unwrap();
    assert_eq!(dma.page_offset(), 0x24);
}

#[test]
fn link_ranges_at_4gib_boundaries_segments_contiguous() {
    // Digest test case: 4 GiB ± 1 page and just over 8 GiB; segments contiguous and page aligned.
    for total in [
        (4u64 << 30) - PAGE_SIZE,
        4 << 30,
        (4 << 30) + PAGE_SIZE,
        (8 << 30) + PAGE_SIZE,
    ] {
        let f = iommu();
        let l = f
            .dev
            .map_linked(&[(p(1 << 30), total)], TO, Attrs::MMIO)
            .unwrap();
        assert_eq!(l.linked_len(), total, "no 32-bit truncation");
        let segs = l.segments(0, total).unwrap();
        let mut next = l.addr().as_u64();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.addr.as_u64(), next);
            assert!(s.addr.is_aligned(PAGE_SIZE));
            assert!(s.len <= u32::MAX as u64);
            if i + 1 < segs.len() {
                assert_eq!(s.len % PAGE_SIZE, 0);
            }
            next += s.len;
        }
        assert_eq!(next - l.addr().as_u64(), total);
        assert_eq!(
            segs.len() as u64,
            total.div_ceil((u32::MAX as u64) & !(PAGE_SIZE - 1))
        );
    }
}

#[test]
fn link_in_deferred_domain_unlink_is_still_strict() {
    let mode = InvalidationMode::Deferred(crate::DeferredPolicy {
        max_pending: 1000,
        max_delay_us: u64::MAX,
    });
    let f = Fixture::iommu(DeviceConfig::default().trusted(), mode).unwrap();
    let mut l = f.dev.iova_try_alloc(p(0), 0x4000).unwrap();
    l.link(p(LOW), 0, 0x4000, TO, RAM).unwrap();
    l.unlink(0, 0x4000).unwrap();
    assert_eq!(f.hw().unflushed_bytes(), 0);
    l.link(p(HIGH), 0, 0x4000, TO, RAM).unwrap();
    assert_eq!(f.hw().stale_reuses(), 0);
}

// ---- Review fixes: poisoned ranges, best-effort destroy, original errors ----

fn four_links(f: &Fixture) -> crate::IovaLink {
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x4000).unwrap();
    for i in 0..4 {
        l.link(p(LOW + i * 0x1000), i * 0x1000, 0x1000, TO, RAM)
            .unwrap();
    }
    l
}

#[test]
fn link_unlink_flush_failure_poisons_the_range() {
    let f = iommu();
    let mut l = four_links(&f);
    f.hw().fail_next_flush();
    assert_eq!(
        l.unlink(0, 0x1000).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert!(l.is_poisoned());
    // No new link into a range that may still have stale IOTLB entries.
    assert_eq!(
        l.link(p(LOW), 0, 0x1000, TO, RAM).unwrap_err(),
        DmaError::IovaPoisoned {
            addr: l.addr().as_u64()
        }
    );
    assert_eq!(l.link_count(), 3);
    // Destroy still unlinks and flushes the remaining links (and retries the failed granule),
    // reports the error, and never frees the allocation.
    assert_eq!(
        l.destroy().unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(f.hw().entries(), 0, "the device lost access to every link");
    assert_eq!(f.hw().unflushed_bytes(), 0);
    assert_eq!(
        f.domain().iova_stats().live,
        1,
        "the allocation stays leaked"
    );
    for _ in 0..100 {
        let _m = f.dev.map_phys(p(LOW), 0x4000, TO, RAM).unwrap();
    }
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn link_destroy_in_of_a_poisoned_range_unlinks_into_the_batch_and_reports() {
    let f = iommu();
    let mut l = four_links(&f);
    f.hw().fail_next_flush();
    assert_eq!(
        l.unlink(0x1000, 0x1000).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    let mut b = crate::UnmapBatch::new();
    assert_eq!(
        l.destroy_in(&mut b).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(f.hw().entries(), 0, "entries removed by destroy_in");
    b.finish().unwrap();
    assert_eq!(f.hw().unflushed_bytes(), 0, "flushed by the batch");
    assert_eq!(
        f.domain().iova_stats().live,
        1,
        "the allocation stays leaked"
    );
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn link_destroy_in_unmap_failure_does_not_flush_the_batch_early() {
    // A failed unmap inside destroy_in must not consume the batch's gather: the mapping already
    // in the batch must still be flushed by `finish` before its IOVA is freed.
    let f = iommu();
    let m = f.dev.map_phys(p(HIGH), 0x1000, TO, RAM).unwrap();
    let mut b = crate::UnmapBatch::new();
    m.unmap_in(&mut b).unwrap();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x2000).unwrap();
    l.link(p(LOW), 0, 0x1000, TO, RAM).unwrap();
    l.link(p(LOW + 0x1000), 0x1000, 0x1000, TO, RAM).unwrap();
    f.hw().fail_unmap_after(1);
    f.hw().fail_next_flush();
    // Destroyed the strict way at once; that succeeded, so the unmap's own error is reported.
    let second = l.addr().as_u64() + 0x1000;
    assert_eq!(
        l.destroy_in(&mut b).unwrap_err(),
        DmaError::Iommu(IommuError::NotMapped { iova: second })
    );
    b.finish().unwrap();
    assert_eq!(f.hw().entries(), 0);
    assert_eq!(
        f.hw().unflushed_bytes(),
        0,
        "every unmap was flushed before its IOVA came back"
    );
    assert_eq!(f.domain().iova_stats().live, 0);
}

#[test]
fn link_destroy_with_a_failing_unmap_removes_the_rest_and_leaks_only_that_granule() {
    let f = iommu();
    let l = four_links(&f);
    let second = l.addr().as_u64() + 0x1000;
    f.hw().fail_unmap_after(1);
    assert!(matches!(
        l.destroy().unwrap_err(),
        DmaError::Iommu(IommuError::NotMapped { .. })
    ));
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 1, "only the link that could not be unmapped");
    assert_eq!(left[0].0, second);
    assert_eq!(f.hw().unflushed_bytes(), 0);
    let st = f.domain().iova_stats();
    assert_eq!(
        (st.live, st.live_pages),
        (1, 1),
        "only its granule is leaked"
    );
    for _ in 0..100 {
        let m = f.dev.map_phys(p(LOW), 0x1000, TO, RAM).unwrap();
        assert_ne!(m.dma_addr().as_u64(), second);
    }
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn link_ranges_reports_the_links_still_mapped_when_the_unwind_fails() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x4000).unwrap();
    let ranges = [
        (p(LOW), 0x1000),
        (p(LOW + 0x1000), 0x1000),
        (p(LOW + 0x2000), 0x1000),
    ];
    f.hw().fail_map_after(2);
    f.hw().fail_unmap_after(0);
    // The two links made stay mapped (the unwind restored them): the error says so, naming
    // the first, so that the caller does not free buffers the device can still reach.
    assert_eq!(
        l.link_ranges(0, &ranges, TO, RAM).unwrap_err(),
        DmaError::UnwindIncomplete {
            still_mapped: (l.addr(), 0x1000),
            reaches: p(LOW),
            stuck: 2,
            undo: IommuError::NotMapped {
                iova: l.addr().as_u64()
            },
        }
    );
    assert_eq!(
        f.hw().translate(l.addr()).map(|(pa, _)| pa),
        Some(p(LOW)),
        "still mapped, as reported"
    );
    // What the unwind could not remove is still owned and goes with destroy.
    assert_eq!(l.link_count(), 2);
    l.destroy().unwrap();
    assert_eq!(f.hw().entries(), 0);
    assert_eq!(f.domain().iova_stats().live, 0);
}

/// `map_linked` whose sync fails and whose teardown cannot unlink: the error names the link
/// still mapped; its IOVA page is never handed out again.
#[test]
fn map_linked_double_fault_reports_what_is_still_mapped() {
    let f = iommu();
    let ranges = [(p(LOW), 0x1000), (p(LOW + 0x1000), 0x1000)];
    f.hw().fail_next_sync_map();
    f.hw().fail_unmap_after(0);
    let e = f.dev.map_linked(&ranges, TO, RAM).unwrap_err();
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 1);
    let (iova, pte) = left[0];
    assert_eq!(pte.paddr, LOW);
    assert_eq!(
        e,
        DmaError::UnwindIncomplete {
            still_mapped: (crate::DmaAddr::new(iova), 0x1000),
            reaches: p(LOW),
            stuck: 1,
            undo: IommuError::NotMapped { iova },
        }
    );
    // Without the double fault: the sync's error, nothing left.
    let g = iommu();
    g.hw().fail_next_sync_map();
    assert_eq!(
        g.dev.map_linked(&ranges, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(g.hw().entries(), 0);
    assert_eq!(g.domain().iova_stats().live, 0);
}

/// `destroy_in` whose unmap fails falls back to a strict destroy; when that cannot unlink
/// either, the error names the link still mapped and the batch stays empty.
#[test]
fn destroy_in_double_fault_reports_what_is_still_mapped() {
    let f = iommu();
    let mut l = f.dev.iova_try_alloc(p(LOW), 0x3000).unwrap();
    for i in 0..3 {
        l.link(p(LOW + i * 0x1000), i * 0x1000, 0x1000, TO, RAM)
            .unwrap();
    }
    let stuck = l.addr().as_u64() + 0x1000;
    f.hw().fail_unmaps_at(Some(stuck));
    let mut b = crate::UnmapBatch::new();
    let e = l.destroy_in(&mut b).unwrap_err();
    assert!(b.is_empty());
    assert_eq!(
        e,
        DmaError::UnwindIncomplete {
            still_mapped: (crate::DmaAddr::new(stuck), 0x1000),
            reaches: p(LOW + 0x1000),
            stuck: 1,
            undo: IommuError::NotMapped { iova: stuck },
        }
    );
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, stuck);
    assert_eq!(
        f.hw().unflushed_bytes(),
        0,
        "the others were removed and flushed"
    );
    f.hw().fail_unmaps_at(None);
    b.finish().unwrap();
}
