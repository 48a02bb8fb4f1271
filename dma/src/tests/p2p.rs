//! Mapping a provider's MMIO ranges for an importer ([`DmaDevice::map_peer`]): each map type,
//! segment splitting at the 4 GiB ± 1 and just-over-8-GiB boundaries (digest items 4-7), exact
//! unwinding with no IOVA leaked (items 1, 2, 9, 10), unaligned MMIO (item 13). Test names:
//! `p2p_*`, `digest_item_*`.

use std::vec::Vec;

use proptest::prelude::*;

use super::snapshot;
use crate::iommu::{IommuDomain, Prot};
use crate::p2p::{DeviceId, MapType, Provider, RequesterId};
use crate::testing::{FakeOp, Fixture};
use crate::{
    DeviceConfig, Direction, DmaAddr, DmaError, DmaSegment, InvalidationMode, PhysAddr, PAGE_SIZE,
};

pub(crate) const GIB: u64 = 1 << 30;
/// `u32::MAX` rounded down to a page: the longest segment (digest item 5).
pub(crate) const U32_PAGE: u64 = (u32::MAX as u64) & !(PAGE_SIZE - 1);
/// A 16 GiB BAR at 512 GiB; its bus address is 256 GiB (a negative bus offset).
pub(crate) const BAR: u64 = 0x80_0000_0000;
pub(crate) const BAR_SIZE: u64 = 16 * GIB;
pub(crate) const BUS: u64 = 0x40_0000_0000;

pub(crate) fn provider() -> Provider {
    Provider::new(
        DeviceId::new(0, RequesterId::new(0x0800)),
        2,
        PhysAddr::new(BAR),
        BAR_SIZE,
        BUS.wrapping_sub(BAR),
    )
    .unwrap()
}

fn iommu() -> Fixture {
    Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap()
}

fn direct() -> Fixture {
    Fixture::direct(DeviceConfig::with_mask_bits(64).unwrap().trusted()).unwrap()
}

fn r(offset: u64, len: u64) -> (PhysAddr, u64) {
    (PhysAddr::new(BAR + offset), len)
}

const RW: Direction = Direction::Bidirectional;

/// Segments are contiguous from `start`, sum to `total`, every one but the last is page aligned
/// in address and length, and none is longer than `U32_PAGE`.
pub(crate) fn check_contiguous(segs: &[DmaSegment], start: u64, total: u64) {
    let mut next = start;
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s.addr.as_u64(), next, "segment {i} not contiguous");
        assert!(
            s.len > 0 && s.len <= U32_PAGE,
            "segment {i} length {:#x}",
            s.len
        );
        if i + 1 < segs.len() {
            assert_eq!(s.len % PAGE_SIZE, 0, "segment {i} length not page aligned");
        }
        if i > 0 {
            assert!(
                s.addr.is_aligned(PAGE_SIZE),
                "segment {i} address not aligned"
            );
        }
        next += s.len;
    }
    assert_eq!(next - start, total, "segments do not add up");
}

#[test]
fn p2p_bus_addr_with_nonzero_offset_is_paddr_plus_offset() {
    let f = iommu();
    let p = provider();
    let before = snapshot(&f);
    let ranges = [r(0x3000, 0x2000), r(0x10_0000, 0x1000)];
    let m = f.dev.map_peer(&p, MapType::BusAddr, &ranges, RW).unwrap();
    assert_eq!(m.map_type(), MapType::BusAddr);
    assert_eq!(m.segments().len(), 2);
    for (seg, &(phys, len)) in m.segments().iter().zip(&ranges) {
        assert_eq!(
            seg.addr.as_u64(),
            phys.as_u64().wrapping_add(p.bus_offset())
        );
        assert_eq!(seg.addr.as_u64(), BUS + (phys.as_u64() - BAR));
        assert_eq!(seg.len, len);
    }
    // No IOVA, no page-table entry: the IOMMU never sees a switch-local transfer.
    assert_eq!(m.iova_allocation(), None);
    assert_eq!(snapshot(&f), before);
    m.unmap().unwrap();
    assert_eq!(snapshot(&f), before);
}

#[test]
fn p2p_bus_addr_positive_offset_and_mask_violation() {
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(32).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    // BAR at 0xe000_0000, bus address 0xf000_0000 (positive offset).
    let p = Provider::new(
        DeviceId::new(0, RequesterId::new(8)),
        0,
        PhysAddr::new(0xe000_0000),
        0x1000_0000,
        0x1000_0000,
    )
    .unwrap();
    let m = f
        .dev
        .map_peer(
            &p,
            MapType::BusAddr,
            &[(PhysAddr::new(0xe000_1000), 0x1000)],
            RW,
        )
        .unwrap();
    assert_eq!(m.segments()[0].addr.as_u64(), 0xf000_1000);
    // The last page's bus address is below 4 GiB, one more byte is not: the mask decides.
    let err = f
        .dev
        .map_peer(
            &p,
            MapType::BusAddr,
            &[(PhysAddr::new(0xefff_f000), 0x1000)],
            RW,
        )
        .map(|_| ());
    assert_eq!(err, Ok(()));
    let p2 = Provider::new(
        DeviceId::new(0, RequesterId::new(8)),
        0,
        PhysAddr::new(0xe000_0000),
        0x1000_0000,
        0x2000_0000,
    )
    .unwrap();
    assert_eq!(
        f.dev
            .map_peer(
                &p2,
                MapType::BusAddr,
                &[(PhysAddr::new(0xe000_0000), 0x1000)],
                RW
            )
            .unwrap_err(),
        DmaError::MaskViolation {
            addr: 0x1_0000_0000,
            len: 0x1000,
            mask: u32::MAX as u64
        }
    );
}

#[test]
fn p2p_not_supported_and_none_are_refused() {
    let f = iommu();
    let before = snapshot(&f);
    for t in [MapType::NotSupported, MapType::None] {
        assert_eq!(
            f.dev
                .map_peer(&provider(), t, &[r(0, 0x1000)], RW)
                .unwrap_err(),
            DmaError::P2pNotSupported(t)
        );
    }
    assert_eq!(snapshot(&f), before);
    assert_eq!(f.hw().counts().maps, 0);
}

#[test]
fn p2p_reject_bad_ranges_before_mapping_anything() {
    let f = iommu();
    let p = provider();
    let before = snapshot(&f);
    let t = MapType::ThruHostBridge;
    assert_eq!(
        f.dev.map_peer(&p, t, &[], RW).unwrap_err(),
        DmaError::EmptyList
    );
    assert_eq!(
        f.dev
            .map_peer(&p, t, &[r(0, 0x1000), r(0x1000, 0)], RW)
            .unwrap_err(),
        DmaError::ZeroLength
    );
    // Outside the BAR (before it, and past its end).
    assert!(matches!(
        f.dev
            .map_peer(&p, t, &[(PhysAddr::new(BAR - 0x1000), 0x1000)], RW),
        Err(DmaError::OutOfRange { .. })
    ));
    assert_eq!(
        f.dev
            .map_peer(&p, t, &[r(0, 0x1000), r(BAR_SIZE - 0x1000, 0x2000)], RW)
            .unwrap_err(),
        DmaError::OutOfRange {
            offset: BAR_SIZE - 0x1000,
            len: 0x2000,
            size: BAR_SIZE
        }
    );
    assert!(matches!(
        f.dev
            .map_peer(&p, t, &[(PhysAddr::new(u64::MAX), 2)], RW)
            .unwrap_err(),
        DmaError::Overflow { .. }
    ));
    assert_eq!(snapshot(&f), before);
    assert_eq!(f.hw().counts().maps, 0, "validated before mapping (item 8)");
}

#[test]
fn p2p_thru_host_bridge_iommu_one_iova_one_sync_mmio_attr() {
    let f = iommu();
    f.hw().record_ops(true);
    let p = provider();
    let ranges = [r(0x8000, 0x2000), r(0x40_0000, 0x1000), r(0x1000, 0x3000)];
    let m = f
        .dev
        .map_peer(&p, MapType::ThruHostBridge, &ranges, RW)
        .unwrap();
    let ops = f.hw().ops();
    let maps: Vec<&FakeOp> = ops
        .iter()
        .filter(|o| matches!(o, FakeOp::Map { .. }))
        .collect();
    assert_eq!(maps.len(), 3, "one link per range");
    for o in &maps {
        let FakeOp::Map { prot, .. } = o else {
            unreachable!()
        };
        assert!(prot.contains(Prot::MMIO) && !prot.contains(Prot::CACHE));
    }
    let syncs = ops
        .iter()
        .filter(|o| matches!(o, FakeOp::SyncMap { .. }))
        .count();
    assert_eq!(syncs, 1, "one IOTLB sync for the whole export");
    // One contiguous segment list over one IOVA allocation.
    let (iova, _) = m.iova_allocation().unwrap();
    assert_eq!(m.segments().len(), 1);
    check_contiguous(m.segments(), iova.as_u64(), 0x6000);
    // The IOVA translates to each range in order.
    let mut at = iova.as_u64();
    for &(phys, len) in &ranges {
        for page in (0..len).step_by(PAGE_SIZE as usize) {
            let (pa, _) = f.hw().translate(DmaAddr::new(at + page)).expect("linked");
            assert_eq!(pa.as_u64(), phys.as_u64() + page);
        }
        at += len;
    }
    assert_eq!(f.hw().mmio_cache_violations(), 0);
    let before_unmap = f.hw().counts().flushes;
    m.unmap().unwrap();
    assert_eq!(f.hw().entries(), 0);
    assert_eq!(f.hw().counts().flushes, before_unmap + 1);
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

#[test]
fn p2p_thru_host_bridge_direct_one_mapping_per_range() {
    let f = direct();
    let p = provider();
    let pool_before = f.pool.free_pages();
    let ranges = [r(0x8000, 0x2000), r(0x1000, 0x3000)];
    let m = f
        .dev
        .map_peer(&p, MapType::ThruHostBridge, &ranges, RW)
        .unwrap();
    assert_eq!(m.segments().len(), 2);
    for (seg, &(phys, len)) in m.segments().iter().zip(&ranges) {
        assert_eq!(seg.addr.as_u64(), phys.as_u64(), "dma-direct: CPU physical");
        assert_eq!(seg.len, len);
    }
    assert_eq!(f.pool.free_pages(), pool_before, "never bounced");
    m.unmap().unwrap();
}

#[test]
fn p2p_direct_mmio_beyond_mask_is_refused_never_bounced() {
    let f = Fixture::direct(DeviceConfig::with_mask_bits(32).unwrap().trusted()).unwrap();
    let pool_before = f.pool.free_pages();
    let err = f
        .dev
        .map_peer(&provider(), MapType::ThruHostBridge, &[r(0, 0x1000)], RW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::MmioNeedsBounce {
                reason: crate::BounceReason::MaskUnreachable,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(f.pool.free_pages(), pool_before);
}

#[test]
fn digest_item_13_mmio_unaligned_4_bytes_maps_thru_host_bridge() {
    let f = iommu();
    let p = Provider::new(
        DeviceId::new(0, RequesterId::new(0x18)),
        0,
        PhysAddr::new(0xfe41_0000),
        0x1000,
        0,
    )
    .unwrap();
    let m = f
        .dev
        .map_peer(
            &p,
            MapType::ThruHostBridge,
            &[(PhysAddr::new(0xfe41_0024), 4)],
            RW,
        )
        .unwrap();
    assert_eq!(m.segments().len(), 1);
    assert_eq!(m.segments()[0].len, 4);
    assert_eq!(m.segments()[0].addr.page_offset(), 0x24);
}

/// The boundary sizes: 4 GiB - 1, 4 GiB, 4 GiB + 1 (bytes and pages), just over 8 GiB.
fn boundary_sizes() -> [u64; 7] {
    [
        4 * GIB - PAGE_SIZE,
        4 * GIB - 1,
        4 * GIB,
        4 * GIB + 1,
        4 * GIB + PAGE_SIZE,
        8 * GIB + 1,
        8 * GIB + PAGE_SIZE,
    ]
}

#[test]
fn digest_items_4_5_6_segments_at_4gib_boundaries_bus_addr() {
    let f = iommu();
    let p = provider();
    for len in boundary_sizes() {
        let m = f
            .dev
            .map_peer(&p, MapType::BusAddr, &[r(GIB, len)], RW)
            .unwrap();
        check_contiguous(m.segments(), BUS + GIB, len);
        assert_eq!(m.size(), len, "64-bit total (item 6)");
        assert_eq!(m.segments().len() as u64, len.div_ceil(U32_PAGE));
    }
}

#[test]
fn digest_items_4_5_6_segments_at_4gib_boundaries_iommu() {
    let f = iommu();
    let p = provider();
    let before = snapshot(&f);
    for len in boundary_sizes() {
        let m = f
            .dev
            .map_peer(&p, MapType::ThruHostBridge, &[r(GIB, len)], RW)
            .unwrap();
        let (iova, _) = m.iova_allocation().unwrap();
        check_contiguous(m.segments(), iova.as_u64(), len);
        assert_eq!(m.segments().len() as u64, len.div_ceil(U32_PAGE));
        // The last segment's address went past 4 GiB and 8 GiB of IOVA offsets: 64-bit
        // accumulation (item 4).
        if len > 8 * GIB {
            assert_eq!(m.segments()[2].addr.as_u64(), iova.as_u64() + 2 * U32_PAGE);
        }
        m.unmap().unwrap();
        assert_eq!(snapshot(&f), before);
    }
}

#[test]
fn digest_items_4_5_6_segments_at_4gib_boundaries_direct() {
    let f = direct();
    let p = provider();
    for len in boundary_sizes() {
        let m = f
            .dev
            .map_peer(&p, MapType::ThruHostBridge, &[r(GIB, len)], RW)
            .unwrap();
        check_contiguous(m.segments(), BAR + GIB, len);
    }
}

#[test]
fn digest_item_4_just_over_8gib_in_two_ranges_is_one_contiguous_iova_span() {
    let f = iommu();
    let p = provider();
    let ranges = [r(0, 4 * GIB), r(8 * GIB, 4 * GIB + PAGE_SIZE)];
    let m = f
        .dev
        .map_peer(&p, MapType::ThruHostBridge, &ranges, RW)
        .unwrap();
    let (iova, _) = m.iova_allocation().unwrap();
    let total = 8 * GIB + PAGE_SIZE;
    check_contiguous(m.segments(), iova.as_u64(), total);
    assert_eq!(m.segments().len(), 3);
    assert_eq!(m.segments()[2].len, total - 2 * U32_PAGE);
    // BUS_ADDR of the same ranges: one list per range, each split on its own.
    let b = f.dev.map_peer(&p, MapType::BusAddr, &ranges, RW).unwrap();
    assert_eq!(b.segments().len(), 2 + 2);
    check_contiguous(&b.segments()[..2], BUS, 4 * GIB);
    check_contiguous(&b.segments()[2..], BUS + 8 * GIB, 4 * GIB + PAGE_SIZE);
}

#[test]
fn p2p_max_segment_of_the_device_applies_too() {
    let mut cfg = DeviceConfig::with_mask_bits(39).unwrap().trusted();
    cfg.max_segment = 0x10_0000 + 123; // rounded down to a page
    let f = Fixture::iommu(cfg, InvalidationMode::Strict).unwrap();
    let m = f
        .dev
        .map_peer(&provider(), MapType::BusAddr, &[r(0, 0x30_0000)], RW)
        .unwrap();
    assert_eq!(m.segments().len(), 3);
    assert!(m.segments().iter().all(|s| s.len == 0x10_0000));
}

/// Link failure at range `k` (0 and a middle index): exactly `k` ranges mapped and unmapped,
/// one flush, the IOVA freed (items 1, 2, 9, 10).
fn unwind_at(k: u64) {
    let f = iommu();
    let p = provider();
    let ranges: Vec<(PhysAddr, u64)> = (0..5).map(|i| r(i * 0x10_0000, 0x4000)).collect();
    let before = snapshot(&f);
    f.hw().record_ops(true);
    f.hw().fail_map_after(k);
    let err = f
        .dev
        .map_peer(&p, MapType::ThruHostBridge, &ranges, RW)
        .unwrap_err();
    assert!(matches!(err, DmaError::Iommu(_)), "{err:?}");
    let ops = f.hw().ops();
    let maps = ops
        .iter()
        .filter(|o| matches!(o, FakeOp::Map { .. }))
        .count();
    let unmaps: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|o| match *o {
            FakeOp::Unmap { iova, size } => Some((iova, size)),
            _ => None,
        })
        .collect();
    assert_eq!(maps as u64, k, "ranges mapped before the failure");
    assert_eq!(unmaps.len() as u64, k, "exactly the mapped ranges unwound");
    assert!(unmaps.iter().all(|&(_, size)| size == 0x4000), "item 10");
    assert_eq!(snapshot(&f), before, "no IOVA leaked (item 9)");
    assert_eq!(f.hw().unflushed_bytes(), 0);
    // And the space is usable again without a stale reuse.
    let m = f
        .dev
        .map_peer(&p, MapType::ThruHostBridge, &ranges, RW)
        .unwrap();
    assert_eq!(f.hw().stale_reuses(), 0);
    m.unmap().unwrap();
    assert_eq!(snapshot(&f), before);
}

#[test]
fn digest_items_1_9_link_failure_at_range_0_unwinds_nothing_and_frees_iova() {
    unwind_at(0);
}

#[test]
fn digest_items_1_10_link_failure_at_range_k_unwinds_exactly_k() {
    unwind_at(3);
}

#[test]
fn digest_item_2_sync_failure_after_linking_unwinds_everything() {
    let f = iommu();
    let before = snapshot(&f);
    f.hw().fail_next_sync_map();
    let err = f
        .dev
        .map_peer(
            &provider(),
            MapType::ThruHostBridge,
            &[r(0, 0x2000), r(0x10_0000, 0x2000)],
            RW,
        )
        .unwrap_err();
    assert!(matches!(err, DmaError::Iommu(_)));
    assert_eq!(snapshot(&f), before);
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

#[test]
fn digest_item_1_direct_failure_at_range_k_drops_the_k_mappings() {
    // Range 2 lies beyond a 40-bit mask: refused, never bounced; ranges 0-1 were mapped and are
    // released again.
    let f = Fixture::direct(DeviceConfig::with_mask_bits(40).unwrap().trusted()).unwrap();
    let p = Provider::new(
        DeviceId::new(0, RequesterId::new(8)),
        0,
        PhysAddr::new((1 << 40) - 0x10_0000),
        0x20_0000,
        0,
    )
    .unwrap();
    let base = p.phys().as_u64();
    let err = f
        .dev
        .map_peer(
            &p,
            MapType::ThruHostBridge,
            &[
                (PhysAddr::new(base), 0x1000),
                (PhysAddr::new(base + 0x1000), 0x1000),
                (PhysAddr::new(1 << 40), 0x1000),
            ],
            RW,
        )
        .unwrap_err();
    assert!(matches!(err, DmaError::MmioNeedsBounce { .. }), "{err:?}");
    assert_eq!(f.dev.raw_mappings(), 0);
}

#[test]
fn digest_item_7_entry_count_overflow_is_checked() {
    // A 4 KiB max segment over a 16 GiB BAR: 4M entries fits; the count uses checked
    // arithmetic all the same (exercised in segment.rs with u64::MAX lengths). Here: the
    // total of two ranges that overflow 64 bits is refused before anything is mapped.
    let f = iommu();
    let huge = Provider::new(
        DeviceId::new(0, RequesterId::new(8)),
        0,
        PhysAddr::new(0),
        u64::MAX,
        0,
    )
    .unwrap();
    let err = f
        .dev
        .map_peer(
            &huge,
            MapType::BusAddr,
            &[
                (PhysAddr::new(0), u64::MAX - 1),
                (PhysAddr::new(0), u64::MAX - 1),
            ],
            RW,
        )
        .unwrap_err();
    assert!(matches!(err, DmaError::Overflow { .. }), "{err:?}");
}

#[test]
fn p2p_peer_mapping_drop_unmaps() {
    let f = iommu();
    let before = snapshot(&f);
    {
        let _m = f
            .dev
            .map_peer(&provider(), MapType::ThruHostBridge, &[r(0, 0x2000)], RW)
            .unwrap();
        assert_eq!(f.hw().entries(), 2);
    }
    assert_eq!(snapshot(&f), before);
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any list of page-aligned ranges of the BAR: under an IOMMU one contiguous span of the
    /// total, split at `U32_PAGE`; BUS_ADDR gives `paddr + bus_offset` per range; unmapping
    /// restores every counter.
    #[test]
    fn prop_p2p_segments_are_contiguous_and_exact(
        ranges in proptest::collection::vec((0u64..(BAR_SIZE / PAGE_SIZE) / 2, 1u64..2048), 1..6),
    ) {
        let f = iommu();
        let p = provider();
        let ranges: Vec<(PhysAddr, u64)> = ranges
            .iter()
            .map(|&(page, pages)| r(page * PAGE_SIZE, pages * PAGE_SIZE))
            .collect();
        let total: u64 = ranges.iter().map(|&(_, l)| l).sum();
        let before = snapshot(&f);
        let m = f.dev.map_peer(&p, MapType::ThruHostBridge, &ranges, RW).unwrap();
        let (iova, _) = m.iova_allocation().unwrap();
        check_contiguous(m.segments(), iova.as_u64(), total);
        m.unmap().unwrap();
        prop_assert_eq!(snapshot(&f), before);
        let b = f.dev.map_peer(&p, MapType::BusAddr, &ranges, RW).unwrap();
        let mut segs = b.segments().iter();
        for &(phys, len) in &ranges {
            let mut left = len;
            let mut addr = phys.as_u64().wrapping_add(p.bus_offset());
            while left > 0 {
                let s = segs.next().unwrap();
                prop_assert_eq!(s.addr.as_u64(), addr);
                addr += s.len;
                left -= s.len;
            }
        }
        prop_assert!(segs.next().is_none());
    }
}
