//! Streaming mappings: rejected inputs, MMIO, superpages, scatter-gather, unwinding, raw API.

use std::sync::Arc;
use std::vec::Vec;

use super::{snapshot, HIGH, LOW};
use crate::iommu::{IommuDomain, IommuError, Prot};
use crate::testing::{FakeDomain, FakeOp, FakePhysMemory, Fixture};
use crate::{
    Attrs, BounceReason, DeviceConfig, Direction, DmaAddr, DmaDevice, DmaDomain, DmaError,
    DomainConfig, InvalidationMode, PhysAddr, ReservedKind, ReservedRegion, Translation, PAGE_SIZE,
};

fn iommu() -> Fixture {
    Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap()
}

fn direct32() -> Fixture {
    Fixture::direct(DeviceConfig::with_mask_bits(32).unwrap().trusted()).unwrap()
}

const RAM: Attrs = Attrs::empty();
const TO: Direction = Direction::ToDevice;

// ---- Every rejected input of SPEC.md: a typed error, nothing changed ----

#[test]
fn reject_zero_length_map() {
    for f in [iommu(), direct32()] {
        let s = snapshot(&f);
        assert_eq!(
            f.dev.map_phys(PhysAddr::new(LOW), 0, TO, RAM).unwrap_err(),
            DmaError::ZeroLength
        );
        assert_eq!(snapshot(&f), s);
    }
}

#[test]
fn reject_zero_length_sg_entry_before_mapping_anything() {
    // Digest item 8: validity is checked before use; entry 2 is bad, entries 0-1 never mapped.
    let f = iommu();
    let s = snapshot(&f);
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 8192), 4096),
        (PhysAddr::new(LOW), 0),
    ];
    assert_eq!(
        f.dev.map_sg(&ranges, TO, RAM).unwrap_err(),
        DmaError::ZeroLength
    );
    assert_eq!(f.hw().counts().maps, 0);
    assert_eq!(snapshot(&f), s);
}

#[test]
fn reject_empty_sg_list() {
    let f = iommu();
    assert_eq!(f.dev.map_sg(&[], TO, RAM).unwrap_err(), DmaError::EmptyList);
}

#[test]
fn reject_addr_plus_len_overflow() {
    for f in [iommu(), direct32()] {
        let s = snapshot(&f);
        let e = f
            .dev
            .map_phys(PhysAddr::new(u64::MAX - 10), 12, TO, RAM)
            .unwrap_err();
        assert_eq!(
            e,
            DmaError::Overflow {
                addr: u64::MAX - 10,
                len: 11
            }
        );
        let e = f.dev.map_sg(
            &[(PhysAddr::new(LOW), 4096), (PhysAddr::new(u64::MAX), 2)],
            TO,
            RAM,
        );
        assert!(matches!(e.unwrap_err(), DmaError::Overflow { .. }));
        assert_eq!(snapshot(&f), s);
    }
}

#[test]
fn reject_unknown_attribute_bits_distinctly() {
    // Digest item 3: a distinct "unsupported" error, not a generic one.
    for f in [iommu(), direct32()] {
        let s = snapshot(&f);
        let bad = Attrs::from_bits_retain(0x10 | Attrs::MMIO.bits());
        assert_eq!(
            f.dev
                .map_phys(PhysAddr::new(LOW), 4096, TO, bad)
                .unwrap_err(),
            DmaError::UnsupportedAttrs(0x10)
        );
        assert_eq!(
            f.dev
                .map_sg(&[(PhysAddr::new(LOW), 4096)], TO, bad)
                .unwrap_err(),
            DmaError::UnsupportedAttrs(0x10)
        );
        assert_eq!(
            f.dev
                .unmap_phys(DmaAddr::new(LOW), 4096, TO, bad)
                .unwrap_err(),
            DmaError::UnsupportedAttrs(0x10)
        );
        assert_eq!(snapshot(&f), s);
    }
    assert_eq!(
        DmaError::from(Attrs::from_raw(0x20).unwrap_err()),
        DmaError::UnsupportedAttrs(0x20)
    );
}

#[test]
fn reject_dma_mask_violation_direct_without_pool() {
    let phys = Arc::new(FakePhysMemory::standard());
    let dev = DmaDevice::new(
        DeviceConfig::with_mask_bits(32).unwrap().trusted(),
        Translation::Direct,
        phys,
        None,
    )
    .unwrap();
    assert_eq!(
        dev.map_phys(PhysAddr::new(HIGH), 4096, TO, RAM)
            .unwrap_err(),
        DmaError::MaskViolation {
            addr: HIGH,
            len: 4096,
            mask: u32::MAX as u64
        }
    );
    // The last byte counts: a range ending exactly at the mask is fine, one byte more is not.
    assert!(dev
        .map_phys(PhysAddr::new(0xffff_f000), 4096, TO, RAM)
        .is_ok());
    assert!(matches!(
        dev.map_phys(PhysAddr::new(0xffff_f001), 4096, TO, RAM)
            .unwrap_err(),
        DmaError::MaskViolation { .. }
    ));
}

#[test]
fn reject_unmap_not_mapped() {
    for f in [iommu(), direct32()] {
        let s = snapshot(&f);
        assert_eq!(
            f.dev
                .unmap_phys(DmaAddr::new(0x1234_5000), 4096, TO, RAM)
                .unwrap_err(),
            DmaError::NotMapped { addr: 0x1234_5000 }
        );
        assert_eq!(snapshot(&f), s);
    }
}

#[test]
fn reject_unmap_wrong_size() {
    for f in [iommu(), direct32()] {
        let dma = f
            .dev
            .map_phys(PhysAddr::new(LOW), 8192, TO, RAM)
            .unwrap()
            .into_raw();
        let s = snapshot(&f);
        assert_eq!(
            f.dev.unmap_phys(dma, 4096, TO, RAM).unwrap_err(),
            DmaError::SizeMismatch {
                addr: dma.as_u64(),
                mapped: 8192,
                given: 4096
            }
        );
        assert_eq!(snapshot(&f), s);
        f.dev.unmap_phys(dma, 8192, TO, RAM).unwrap();
    }
}

#[test]
fn reject_unmap_wrong_direction() {
    let f = iommu();
    let dma = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
        .unwrap()
        .into_raw();
    let s = snapshot(&f);
    assert_eq!(
        f.dev
            .unmap_phys(dma, 4096, Direction::FromDevice, RAM)
            .unwrap_err(),
        DmaError::DirectionMismatch { addr: dma.as_u64() }
    );
    assert_eq!(snapshot(&f), s);
    f.dev.unmap_phys(dma, 4096, TO, RAM).unwrap();
}

#[test]
fn reject_double_unmap() {
    for f in [iommu(), direct32()] {
        let s0 = snapshot(&f);
        let dma = f
            .dev
            .map_phys(PhysAddr::new(LOW + 0x10), 100, TO, RAM)
            .unwrap()
            .into_raw();
        f.dev.unmap_phys(dma, 100, TO, RAM).unwrap();
        let s = snapshot(&f);
        assert_eq!(s, s0);
        assert_eq!(
            f.dev.unmap_phys(dma, 100, TO, RAM).unwrap_err(),
            DmaError::NotMapped { addr: dma.as_u64() }
        );
        assert_eq!(snapshot(&f), s);
    }
}

#[test]
fn reject_iova_exhaustion() {
    // A 16 MiB aperture: page 0 reserved, so 4095 pages; a 16 MiB map cannot fit.
    let hw = Arc::new(FakeDomain::with_info(crate::iommu::DomainInfo {
        aperture_end: DmaAddr::new((16 << 20) - 1),
        ..FakeDomain::new().info()
    }));
    let domain = DmaDomain::new(hw.clone(), DomainConfig::default()).unwrap();
    let dev = DmaDevice::new(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        Translation::Iommu(domain.clone()),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap();
    let before = domain.iova_stats();
    assert_eq!(
        dev.map_phys(PhysAddr::new(LOW), 16 << 20, TO, RAM)
            .unwrap_err(),
        DmaError::IovaExhausted { size: 16 << 20 }
    );
    assert_eq!(domain.iova_stats(), before);
    let mut live = Vec::new();
    loop {
        match dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM) {
            Ok(m) => live.push(m),
            Err(e) => {
                assert_eq!(e, DmaError::IovaExhausted { size: 4096 });
                break;
            }
        }
    }
    assert_eq!(live.len(), 4095);
    assert_eq!(hw.entries(), 4095);
}

#[test]
fn reject_output_beyond_iommu_address_width() {
    let f = iommu();
    let s = snapshot(&f);
    let e = f
        .dev
        .map_phys(PhysAddr::new(1 << 46), 4096, TO, RAM)
        .unwrap_err();
    assert_eq!(
        e,
        DmaError::Iommu(IommuError::OutputBeyondLimit { paddr: 1 << 46 })
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn reject_mmio_needing_bounce_direct_mask() {
    let f = direct32();
    let s = snapshot(&f);
    assert_eq!(
        f.dev
            .map_phys(PhysAddr::new(HIGH), 4096, TO, Attrs::MMIO)
            .unwrap_err(),
        DmaError::MmioNeedsBounce {
            addr: HIGH,
            len: 4096,
            reason: BounceReason::MaskUnreachable
        }
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn reject_mmio_needing_bounce_untrusted_subpage() {
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().untrusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let s = snapshot(&f);
    assert_eq!(
        f.dev
            .map_phys(PhysAddr::new(0xfe41_0024), 4, TO, Attrs::MMIO)
            .unwrap_err(),
        DmaError::MmioNeedsBounce {
            addr: 0xfe41_0024,
            len: 4,
            reason: BounceReason::SubPage
        }
    );
    assert_eq!(snapshot(&f), s);
    // Page-aligned MMIO needs no bounce and maps fine for an untrusted device.
    let m = f
        .dev
        .map_phys(PhysAddr::new(0xfe41_0000), 4096, TO, Attrs::MMIO)
        .unwrap();
    assert!(!m.is_bounced());
}

#[test]
fn reject_bad_device_configs() {
    let phys: Arc<dyn crate::PhysMemory> = Arc::new(FakePhysMemory::standard());
    let cfg = DeviceConfig::with_mask_bits(32).unwrap().trusted();
    for bits in [11, 65] {
        assert_eq!(
            DeviceConfig::mask_bits(bits).unwrap_err(),
            DmaError::InvalidConfig("DMA mask width must be 12..=64 bits")
        );
    }
    let bad_mask = DeviceConfig {
        mask: 0x1234_5678,
        ..cfg
    };
    assert!(matches!(
        DmaDevice::new(bad_mask, Translation::Direct, phys.clone(), None),
        Err(DmaError::InvalidConfig(
            "DMA mask must be 2^n - 1 with n >= 12"
        ))
    ));
    assert!(matches!(
        DmaDevice::new(cfg.untrusted(), Translation::Direct, phys.clone(), None),
        Err(DmaError::InvalidConfig(
            "an untrusted device needs an IOMMU domain for isolation"
        ))
    ));
    // A pool above the device's mask is refused at creation, not at first bounce.
    let high: Arc<dyn crate::PhysMemory> = Arc::new(FakePhysMemory::new(&[(HIGH, 1 << 20)]));
    let pool = crate::BouncePool::new(high, 4096, u64::MAX).unwrap();
    assert!(pool.last_byte() > u32::MAX as u64);
    let cfg24 = DeviceConfig::with_mask_bits(24).unwrap().trusted();
    let low_pool = crate::BouncePool::new(phys.clone(), 4096, u32::MAX as u64).unwrap();
    assert!(matches!(
        DmaDevice::new(cfg24, Translation::Direct, phys.clone(), Some(low_pool)),
        Err(DmaError::InvalidConfig(
            "the bounce pool is beyond the device's DMA mask"
        ))
    ));
    assert!(matches!(
        DmaDevice::new(cfg, Translation::Direct, phys, Some(pool)),
        Err(DmaError::InvalidConfig(
            "the bounce pool is beyond the device's DMA mask"
        ))
    ));
}

#[test]
fn reject_deferred_without_clock_and_untrusted_on_deferred_domain() {
    let deferred = InvalidationMode::Deferred(Default::default());
    assert!(matches!(
        DmaDomain::new(
            Arc::new(FakeDomain::new()),
            DomainConfig {
                mode: deferred,
                ..Default::default()
            }
        ),
        Err(DmaError::InvalidConfig(
            "deferred invalidation needs a clock"
        ))
    ));
    assert!(matches!(
        Fixture::iommu(DeviceConfig::default().untrusted(), deferred),
        Err(DmaError::InvalidConfig(
            "deferred invalidation is for trusted devices only"
        ))
    ));
    assert!(Fixture::iommu(DeviceConfig::default().trusted(), deferred).is_ok());
}

// ---- Mapping behaviour ----

#[test]
fn map_under_iommu_translates_with_direction_rights() {
    let f = iommu();
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(LOW + 0x123),
            0x100,
            Direction::FromDevice,
            RAM,
        )
        .unwrap();
    let dma = m.dma_addr();
    assert_eq!(
        dma.page_offset(),
        0x123,
        "the offset within the page is preserved"
    );
    let (pa, prot) = f.hw().translate(dma).unwrap();
    assert_eq!(pa.as_u64(), LOW + 0x123);
    assert_eq!(prot, Prot::WRITE | Prot::CACHE);
    assert!(!f.domain().is_reserved(m.iova_allocation().unwrap().0, 4096));
    assert_eq!(f.hw().counts().sync_maps, 1);
    drop(m);
    assert_eq!(f.hw().entries(), 0);
    assert_eq!(
        f.hw().unflushed_bytes(),
        0,
        "strict: flushed when drop returns"
    );
}

#[test]
fn map_respects_device_mask_under_iommu() {
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(28).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let ms: Vec<_> = (0..64)
        .map(|_| f.dev.map_phys(PhysAddr::new(HIGH), 8192, TO, RAM).unwrap())
        .collect();
    for m in &ms {
        assert!(m.dma_addr().as_u64() + m.len() - 1 < 1 << 28);
    }
}

#[test]
fn map_2m_and_1g_use_superpages() {
    let f = iommu();
    let m = f
        .dev
        .map_phys(PhysAddr::new(2 << 20), 2 << 20, TO, RAM)
        .unwrap();
    assert!(m.dma_addr().is_aligned(2 << 20));
    assert_eq!(f.hw().counts().leaves, [0, 1, 0]);
    let g = f
        .dev
        .map_phys(PhysAddr::new(1 << 30), 1 << 30, TO, RAM)
        .unwrap();
    assert!(g.dma_addr().is_aligned(1 << 30));
    assert_eq!(f.hw().counts().leaves, [0, 1, 1]);
    drop((m, g));
    assert_eq!(f.hw().counts().flushes, 2);
}

#[test]
fn strict_unmap_of_n_contiguous_pages_issues_one_flush() {
    let f = iommu();
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 64 * PAGE_SIZE, TO, RAM)
        .unwrap();
    let iova = m.iova_allocation().unwrap();
    f.hw().record_ops(true);
    m.unmap().unwrap();
    let ops = f.hw().ops();
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, FakeOp::Flush { .. }))
            .count(),
        1
    );
    assert_eq!(
        ops.last(),
        Some(&FakeOp::Flush {
            span: Some((iova.0.as_u64(), 64 * PAGE_SIZE))
        })
    );
    assert_eq!(f.domain().iova_stats().live, 0);
}

#[test]
fn direct_map_returns_phys() {
    let f = direct32();
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW + 0x10), 64, TO, RAM)
        .unwrap();
    assert_eq!(m.dma_addr().as_u64(), LOW + 0x10);
    assert!(!m.is_bounced());
    assert_eq!(m.iova_allocation(), None);
}

#[test]
fn map_failure_frees_iova_and_changes_nothing() {
    let f = iommu();
    let s = snapshot(&f);
    f.hw().fail_map_after(0);
    assert_eq!(
        f.dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
            .unwrap_err(),
        DmaError::Iommu(IommuError::OutOfMemory)
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn sync_map_failure_unwinds_and_errors() {
    // Digest item 2: a failed step after mapping is not a warning; unwind and fail.
    let f = iommu();
    let s = snapshot(&f);
    f.hw().fail_next_sync_map();
    assert_eq!(
        f.dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
            .unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(snapshot(&f), s);
    f.hw().fail_next_sync_map();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x10000), 8192),
    ];
    assert_eq!(
        f.dev.map_sg(&ranges, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(snapshot(&f), s);
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

/// Double fault in `map_phys`: the sync fails, then the unwind's unmap fails. The error names
/// the range the device can still reach, and it really is still mapped.
#[test]
fn unwind_double_fault_in_map_phys_reports_what_is_still_mapped() {
    let f = iommu();
    f.hw().fail_next_sync_map();
    f.hw().fail_unmap_after(0);
    let e = f
        .dev
        .map_phys(
            PhysAddr::new(LOW + 0x3000),
            4096,
            Direction::FromDevice,
            RAM,
        )
        .unwrap_err();
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 1, "the undo failed: the entry is still there");
    let (iova, pte) = left[0];
    assert_eq!(pte.paddr, LOW + 0x3000);
    assert_eq!(
        e,
        DmaError::UnwindIncomplete {
            still_mapped: (DmaAddr::new(iova), 4096),
            reaches: PhysAddr::new(LOW + 0x3000),
            stuck: 1,
            undo: IommuError::NotMapped { iova },
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("still mapped") && text.contains("0x1003000"),
        "{text}"
    );
    // The stuck IOVA stays out of the allocator.
    assert_eq!(f.domain().iova_stats().live, 1);
}

/// The unwind's flush fails: everything it removed may still be reachable through a stale
/// IOTLB entry, and the error says so.
#[test]
fn unwind_flush_failure_in_map_sg_reports_the_unflushed_parts() {
    let f = iommu();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x4000), 8192),
        (PhysAddr::new(LOW + 0x8000), 4096),
    ];
    f.hw().fail_map_after(2);
    f.hw().fail_next_flush();
    let e = f.dev.map_sg(&ranges, TO, RAM).unwrap_err();
    assert_eq!(f.hw().entries(), 0, "the entries were removed");
    assert_eq!(
        f.hw().unflushed_bytes(),
        3 * 4096,
        "but never flushed: both parts are reachable"
    );
    let DmaError::UnwindIncomplete {
        still_mapped,
        reaches,
        stuck,
        undo,
    } = e
    else {
        panic!("expected UnwindIncomplete, got {e:?}");
    };
    assert_eq!(still_mapped.1, 4096);
    assert_eq!(reaches, PhysAddr::new(LOW));
    assert_eq!(stuck, 2);
    assert_eq!(undo, IommuError::InvalidationTimeout);
}

/// Without a double fault the original error is returned unchanged.
#[test]
fn unwind_that_succeeds_returns_the_original_error() {
    let f = iommu();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x4000), 4096),
    ];
    f.hw().fail_map_after(1);
    assert_eq!(
        f.dev.map_sg(&ranges, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::OutOfMemory)
    );
    assert_eq!(f.hw().entries(), 0);
}

#[test]
fn drop_unmap_error_is_logged_not_panic_and_iova_not_reused() {
    let f = iommu();
    let m = f.dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM).unwrap();
    let iova = m.dma_addr();
    f.hw().fail_next_flush();
    drop(m); // must not panic
             // The IOVA was not flushed, so it is never handed out again.
    assert_eq!(f.domain().iova_stats().live, 1);
    for _ in 0..100 {
        let m2 = f.dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM).unwrap();
        assert_ne!(m2.dma_addr(), iova);
    }
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn explicit_unmap_reports_flush_failure() {
    let f = iommu();
    let m = f.dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM).unwrap();
    f.hw().fail_next_flush();
    assert_eq!(
        m.unmap().unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
}

#[test]
fn raw_unmap_failure_keeps_the_mapping() {
    let f = iommu();
    let dma = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
        .unwrap()
        .into_raw();
    f.hw().fail_unmap_after(0);
    let s = snapshot(&f);
    assert_eq!(
        f.dev.unmap_phys(dma, 4096, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::NotMapped { iova: dma.as_u64() })
    );
    assert_eq!(snapshot(&f), s);
    f.dev.unmap_phys(dma, 4096, TO, RAM).unwrap();
}

/// A failed unmap re-maps what it had already removed; every re-created entry must be synced
/// (CM=1 / RWBF hardware would not see it otherwise, and the owner's mapping would fault).
#[test]
fn unmap_failure_restore_syncs_every_restored_part() {
    let f = iommu();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x4000), 8192),
        (PhysAddr::new(LOW + 0x8000), 4096),
    ];
    let sg = f.dev.map_sg(&ranges, TO, RAM).unwrap();
    let segs: Vec<_> = sg.segments().collect();
    f.hw().reset_counts();
    f.hw().record_ops(true);
    f.hw().fail_unmap_after(2); // parts 0 and 1 come off, part 2 fails
    assert_eq!(
        sg.unmap().unwrap_err(),
        DmaError::Iommu(IommuError::NotMapped {
            iova: segs[2].addr.page_align_down().as_u64()
        })
    );
    let ops = f.hw().ops();
    let restored: Vec<(u64, u64)> = ops
        .iter()
        .filter_map(|op| match *op {
            FakeOp::Map { iova, size, .. } => Some((iova, size)),
            _ => None,
        })
        .collect();
    assert_eq!(
        restored,
        [(segs[0].addr.as_u64(), 4096), (segs[1].addr.as_u64(), 8192)],
        "the two removed parts were re-mapped"
    );
    assert_eq!(super::maps_without_sync(&ops), [], "{ops:?}");
    assert_eq!(f.hw().counts().sync_maps, 2);
    for s in &segs {
        assert!(f.hw().translate(s.addr).is_some());
    }
}

#[test]
fn raw_mappings_of_the_same_buffer_do_not_collide() {
    let f = direct32();
    let a = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
        .unwrap()
        .into_raw();
    let b = f
        .dev
        .map_phys(PhysAddr::new(LOW), 8192, TO, RAM)
        .unwrap()
        .into_raw();
    assert_eq!(a, b);
    assert_eq!(f.dev.raw_mappings(), 2);
    f.dev.unmap_phys(a, 8192, TO, RAM).unwrap();
    f.dev.unmap_phys(a, 4096, TO, RAM).unwrap();
    assert_eq!(f.dev.raw_mappings(), 0);
}

#[test]
fn reserved_host_bridge_window_is_never_handed_out() {
    // A host-bridge window filling most of a small aperture: every IOVA avoids it.
    let hw = Arc::new(FakeDomain::with_info(crate::iommu::DomainInfo {
        aperture_end: DmaAddr::new((1 << 24) - 1),
        ..FakeDomain::new().info()
    }));
    let window = ReservedRegion::new(0x10_0000, 0xe0_0000, ReservedKind::HostBridgeWindow);
    let rmrr = ReservedRegion::new(0xf0_0000, 0x1000, ReservedKind::Rmrr);
    let domain = DmaDomain::new(
        hw,
        DomainConfig {
            reserved: vec![window, rmrr],
            ..Default::default()
        },
    )
    .unwrap();
    let dev = DmaDevice::new(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        Translation::Iommu(domain.clone()),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap();
    let mut live = Vec::new();
    while let Ok(m) = dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM) {
        let a = m.dma_addr().as_u64();
        assert!(
            a != 0 && !window.overlaps(a, 4096) && !rmrr.overlaps(a, 4096),
            "{a:#x}"
        );
        live.push(m);
    }
    // 16 MiB - page 0 - window - RMRR page.
    assert_eq!(
        live.len() as u64,
        (0x100_0000 - 0x1000 - 0xe0_0000 - 0x1000) / 4096
    );
    assert_eq!(domain.reserved().len(), 4);
}

// ---- MMIO attribute ----

#[test]
fn mmio_unaligned_4_bytes_maps() {
    // Digest item 13 (seed 000): a 4-byte MMIO mapping at an unaligned address succeeds.
    let f = iommu();
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(0xfe41_0024),
            4,
            Direction::Bidirectional,
            Attrs::MMIO,
        )
        .unwrap();
    assert_eq!(m.dma_addr().page_offset(), 0x24);
    let (pa, prot) = f.hw().translate(m.dma_addr()).unwrap();
    assert_eq!(pa.as_u64(), 0xfe41_0024);
    assert!(prot.contains(Prot::MMIO) && !prot.contains(Prot::CACHE));
    let d = direct32();
    let m = d
        .dev
        .map_phys(PhysAddr::new(0xfe41_0024), 4, TO, Attrs::MMIO)
        .unwrap();
    assert_eq!(m.dma_addr().as_u64(), 0xfe41_0024);
    assert!(!m.is_bounced());
}

#[test]
fn mmio_never_gets_prot_cache_even_on_coherent_devices() {
    let f = iommu();
    assert!(f.dev.config().coherent);
    let _m = f
        .dev
        .map_phys(PhysAddr::new(0xfe00_0000), 1 << 20, TO, Attrs::MMIO)
        .unwrap();
    let _sg = f
        .dev
        .map_sg(&[(PhysAddr::new(0xfd00_0000), 4096)], TO, Attrs::MMIO)
        .unwrap();
    assert_eq!(f.hw().mmio_cache_violations(), 0);
    for (_, pte) in f.hw().entries_in(0, 1 << 39) {
        assert_eq!(pte.prot, Prot::READ | Prot::MMIO);
    }
    // RAM on a coherent device does get CACHE (the domain decides whether the hardware has it).
    let r = f.dev.map_phys(PhysAddr::new(LOW), 4096, TO, RAM).unwrap();
    assert_eq!(
        f.hw().translate(r.dma_addr()).unwrap().1,
        Prot::READ | Prot::CACHE
    );
}

#[test]
fn mmio_never_bounced_never_synced() {
    let cfg = DeviceConfig::with_mask_bits(39)
        .unwrap()
        .trusted()
        .non_coherent();
    let f = Fixture::iommu(cfg, InvalidationMode::Strict).unwrap();
    let copies = f.phys.copy_calls();
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(0xfe41_0024),
            4,
            Direction::Bidirectional,
            Attrs::MMIO,
        )
        .unwrap();
    m.sync_for_cpu().unwrap();
    m.sync_for_device().unwrap();
    m.unmap().unwrap();
    assert_eq!(f.phys.copy_calls(), copies);
    assert!(
        f.phys.cache_ops().is_empty(),
        "no cache maintenance on MMIO"
    );
}

#[test]
fn non_coherent_ram_gets_cache_maintenance_and_no_prot_cache() {
    let cfg = DeviceConfig::with_mask_bits(39)
        .unwrap()
        .trusted()
        .non_coherent();
    let f = Fixture::iommu(cfg, InvalidationMode::Strict).unwrap();
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, Direction::FromDevice, RAM)
        .unwrap();
    assert_eq!(f.hw().translate(m.dma_addr()).unwrap().1, Prot::WRITE);
    m.sync_for_cpu().unwrap();
    m.unmap().unwrap();
    let ops = f.phys.cache_ops();
    use crate::CacheOp::*;
    assert_eq!(
        ops,
        vec![
            (LOW, 4096, ForDevice(Direction::FromDevice)),
            (LOW, 4096, ForCpu(Direction::FromDevice)),
            (LOW, 4096, ForCpu(Direction::FromDevice)),
        ]
    );
}

// ---- Scatter-gather ----

#[test]
fn sg_under_iommu_is_one_contiguous_iova_range() {
    let f = iommu();
    let ranges: Vec<_> = (0..8)
        .map(|i| (PhysAddr::new(HIGH + i * 0x10_000), 0x2000))
        .collect();
    let sg = f.dev.map_sg(&ranges, TO, RAM).unwrap();
    let segs: Vec<_> = sg.segments().collect();
    assert_eq!(segs.len(), 8);
    for w in segs.windows(2) {
        assert_eq!(w[0].addr.as_u64() + w[0].len, w[1].addr.as_u64());
    }
    let span = sg.iova_span().unwrap();
    assert_eq!(span.len, 8 * 0x2000);
    assert_eq!(f.domain().iova_stats().live, 1, "one IOVA allocation");
    assert_eq!(f.hw().counts().sync_maps, 1, "one sync for the whole list");
    for (s, &(p, _)) in segs.iter().zip(&ranges) {
        assert_eq!(f.hw().translate(s.addr).unwrap().0, p);
    }
    f.hw().reset_counts();
    sg.unmap().unwrap();
    assert_eq!(
        f.hw().counts().unmaps,
        8,
        "each range unmapped exactly as mapped"
    );
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.hw().entries(), 0);
}

#[test]
fn sg_unaligned_entries_keep_their_offsets() {
    let f = iommu();
    let ranges = [
        (PhysAddr::new(LOW + 0x100), 0x80),
        (PhysAddr::new(LOW + 0x5200), 0x1000),
    ];
    let sg = f.dev.map_sg(&ranges, TO, RAM).unwrap();
    let segs: Vec<_> = sg.segments().collect();
    assert_eq!(segs[0].addr.page_offset(), 0x100);
    assert_eq!(segs[1].addr.page_offset(), 0x200);
    assert_eq!(sg.iova_allocation().unwrap().1, 3 * PAGE_SIZE);
}

#[test]
fn sg_direct_one_segment_per_range() {
    let f = direct32();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x10000), 100),
    ];
    let sg = f.dev.map_sg(&ranges, TO, RAM).unwrap();
    let segs: Vec<_> = sg.segments().collect();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1].addr.as_u64(), LOW + 0x10000);
    assert_eq!(sg.iova_span(), None);
}

#[test]
fn sg_failure_at_entry_k_unwinds_exactly_k() {
    // Digest item 1: unwind exactly the ranges that mapped, never the ones that did not.
    for k in [0u64, 1, 5] {
        let f = iommu();
        let s = snapshot(&f);
        let ranges: Vec<_> = (0..8)
            .map(|i| (PhysAddr::new(LOW + i * 0x4000), 0x3000))
            .collect();
        f.hw().record_ops(true);
        f.hw().fail_map_after(k);
        assert_eq!(
            f.dev.map_sg(&ranges, TO, RAM).unwrap_err(),
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
        let unmaps: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                FakeOp::Unmap { iova, size } => Some((*iova, *size)),
                _ => None,
            })
            .collect();
        assert_eq!(maps.len() as u64, k);
        assert_eq!(unmaps, maps, "exactly the k mapped ranges, each as mapped");
        assert_eq!(snapshot(&f), s, "no IOVA leaked");
        assert_eq!(f.hw().unflushed_bytes(), 0);
    }
}

// ---- Concurrency ----

#[test]
fn shared_objects_are_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<DmaDevice>();
    check::<DmaDomain>();
    check::<crate::BouncePool>();
    check::<crate::Mapping>();
    check::<crate::SgMapping>();
    check::<crate::IovaLink>();
    check::<crate::CoherentBuffer>();
    check::<crate::UnmapBatch>();
}

#[test]
fn concurrent_map_unmap_from_threads() {
    for mode in [
        InvalidationMode::Strict,
        InvalidationMode::Deferred(crate::DeferredPolicy {
            max_pending: 16,
            max_delay_us: 100,
        }),
    ] {
        let f = Fixture::iommu(DeviceConfig::with_mask_bits(32).unwrap().trusted(), mode).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let dev = f.dev.clone();
                s.spawn(move || {
                    for i in 0..500u64 {
                        let len = 4096 * (1 + (i + t) % 5);
                        let m = dev
                            .map_phys(PhysAddr::new(LOW + t * 0x10_0000), len, TO, RAM)
                            .unwrap();
                        assert!(m.dma_addr().as_u64() < 1 << 32);
                        if i % 3 == 0 {
                            let mut b = crate::UnmapBatch::new();
                            m.unmap_in(&mut b).unwrap();
                            b.finish().unwrap();
                        }
                    }
                });
            }
        });
        f.domain().flush_deferred().unwrap();
        assert_eq!(f.hw().entries(), 0);
        assert_eq!(f.hw().stale_reuses(), 0);
        assert_eq!(f.domain().iova_stats().live, 0);
    }
}

// ---- Review fixes: best-effort unwind, top-of-address-space arithmetic, raw unmap precision ----

#[test]
fn sg_unwind_with_failing_unmap_removes_the_rest_and_leaks_only_the_stuck_iova() {
    // Entry 2 fails to map; while unwinding, the unmap of entry 1 fails. Entry 0 must still be
    // removed (never restored: the caller gets an error and owns nothing), the removal flushed,
    // and only entry 1's IOVA page kept out of the allocator for ever.
    let f = iommu();
    let ranges = [
        (PhysAddr::new(LOW), 4096),
        (PhysAddr::new(LOW + 0x4000), 4096),
        (PhysAddr::new(LOW + 0x8000), 4096),
    ];
    f.hw().fail_map_after(2);
    f.hw().fail_unmap_after(1);
    let e = f
        .dev
        .map_sg(&ranges, Direction::FromDevice, RAM)
        .unwrap_err();
    // Only the entry that could not be unmapped is left (not 8 KiB of the caller's buffer).
    assert_eq!(f.hw().mapped_bytes(), 4096);
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.paddr, LOW + 0x4000);
    let stuck_iova = left[0].0;
    // The error says so (not the map failure that started the unwind): the caller must not
    // free entry 1's buffer, which the device can still write.
    assert_eq!(
        e,
        DmaError::UnwindIncomplete {
            still_mapped: (DmaAddr::new(stuck_iova), 4096),
            reaches: PhysAddr::new(LOW + 0x4000),
            stuck: 1,
            undo: IommuError::NotMapped { iova: stuck_iova },
        }
    );
    assert_eq!(f.hw().unflushed_bytes(), 0, "what was removed was flushed");
    let st = f.domain().iova_stats();
    assert_eq!(
        (st.live, st.live_pages),
        (1, 1),
        "only the stuck page is leaked"
    );
    // The rest of the IOVA space is reusable and the stuck page is never handed out again.
    let live: Vec<_> = (0..300)
        .map(|i| {
            f.dev
                .map_phys(PhysAddr::new(LOW + (i % 64) * 0x1000), 4096, TO, RAM)
                .unwrap()
        })
        .collect();
    assert!(live.iter().all(|m| m.dma_addr().as_u64() != stuck_iova));
    drop(live);
    let sg = f.dev.map_sg(&ranges, TO, RAM).unwrap();
    drop(sg);
    assert_eq!(f.hw().stale_reuses(), 0);
    assert_eq!(f.hw().mapped_bytes(), 4096);
}

#[test]
fn untrusted_map_ending_at_the_top_of_the_address_space_does_not_panic() {
    // `phys + len` is 2^64 (not representable) while `phys + len - 1` is: the sub-page check
    // must not compute the end (overflow panic in debug builds).
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().untrusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let s = snapshot(&f);
    let top = PhysAddr::new(u64::MAX - 0xfff);
    assert_eq!(
        f.dev.map_phys(top, 0x1000, TO, RAM).unwrap_err(),
        DmaError::Iommu(IommuError::OutputBeyondLimit {
            paddr: u64::MAX - 0xfff
        })
    );
    let beyond = DmaError::Iommu(IommuError::OutputBeyondLimit {
        paddr: u64::MAX - 0xfff,
    });
    assert_eq!(f.dev.map_sg(&[(top, 0x1000)], TO, RAM).unwrap_err(), beyond);
    let mut l = f.dev.iova_try_alloc(top, 0x1000).unwrap();
    assert_eq!(l.link(top, 0, 0x1000, TO, RAM).unwrap_err(), beyond);
    drop(l);
    // A sub-page range at the top is bounced (the pool cannot read it: an error, no panic).
    assert_eq!(
        f.dev
            .map_phys(PhysAddr::new(u64::MAX - 0xff), 0x100, TO, RAM)
            .unwrap_err(),
        DmaError::Phys(crate::PhysError::OutOfRange {
            addr: u64::MAX - 0xff,
            len: 0x100
        })
    );
    assert_eq!(snapshot(&f), s);
    // Direct path at the top: refused or bounced, never a panic.
    let d = direct32();
    let s = snapshot(&d);
    assert_eq!(
        d.dev.map_phys(top, 0x1000, TO, RAM).unwrap_err(),
        DmaError::Phys(crate::PhysError::OutOfRange {
            addr: u64::MAX - 0xfff,
            len: 0x1000
        })
    );
    assert_eq!(snapshot(&d), s);
}

#[test]
fn reject_unmap_wrong_attrs_distinctly() {
    let f = iommu();
    let dma = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
        .unwrap()
        .into_raw();
    let s = snapshot(&f);
    assert_eq!(
        f.dev
            .unmap_phys(dma, 4096, TO, Attrs::SKIP_CPU_SYNC)
            .unwrap_err(),
        DmaError::AttrsMismatch {
            addr: dma.as_u64(),
            mapped: 0,
            given: Attrs::SKIP_CPU_SYNC.bits()
        }
    );
    // Direction and attrs both wrong: the direction is reported.
    assert_eq!(
        f.dev
            .unmap_phys(dma, 4096, Direction::FromDevice, Attrs::SKIP_CPU_SYNC)
            .unwrap_err(),
        DmaError::DirectionMismatch { addr: dma.as_u64() }
    );
    assert_eq!(snapshot(&f), s);
    f.dev.unmap_phys(dma, 4096, TO, RAM).unwrap();
}

#[test]
fn raw_unmap_finds_the_matching_mapping_among_same_length_ones() {
    // The same buffer mapped twice, same length, different direction (and attributes): each
    // unmap must find its own record, not stop at the first one of that length.
    let f = direct32();
    let a = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, RAM)
        .unwrap()
        .into_raw();
    let b = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, Direction::FromDevice, RAM)
        .unwrap()
        .into_raw();
    let c = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::SKIP_CPU_SYNC)
        .unwrap()
        .into_raw();
    assert!(a == b && b == c);
    assert_eq!(f.dev.raw_mappings(), 3);
    f.dev.unmap_phys(a, 4096, TO, Attrs::SKIP_CPU_SYNC).unwrap();
    f.dev
        .unmap_phys(a, 4096, Direction::FromDevice, RAM)
        .unwrap();
    // Only the TO/RAM one is left: a mismatch is reported against it.
    assert!(matches!(
        f.dev
            .unmap_phys(a, 4096, Direction::FromDevice, RAM)
            .unwrap_err(),
        DmaError::DirectionMismatch { .. }
    ));
    f.dev.unmap_phys(a, 4096, TO, RAM).unwrap();
    assert_eq!(f.dev.raw_mappings(), 0);
}

/// Raw sync on the direct path with many live, overlapping raw mappings: a large buffer is
/// mapped, then more than 64 small mappings inside it (some at its very start). A sync of an
/// address in the large buffer past all of them must find it (it used to look back only 64
/// entries and report `NotMapped`), and the cache maintenance must cover that range with that
/// mapping's direction.
#[test]
fn raw_sync_finds_a_mapping_behind_more_than_64_later_starts() {
    let cfg = DeviceConfig::with_mask_bits(32)
        .unwrap()
        .trusted()
        .non_coherent();
    let f = Fixture::direct(cfg).unwrap();
    let big = f
        .dev
        .map_phys(PhysAddr::new(LOW), 0x10000, Direction::FromDevice, RAM)
        .unwrap()
        .into_raw();
    let mut small = Vec::new();
    for _ in 0..40 {
        // Same start as the big one ...
        small.push((
            f.dev
                .map_phys(PhysAddr::new(LOW), 16, TO, RAM)
                .unwrap()
                .into_raw(),
            16,
        ));
    }
    for i in 0..100u64 {
        // ... and starts between it and the address synced.
        let a = PhysAddr::new(LOW + 0x100 + i * 0x40);
        small.push((f.dev.map_phys(a, 32, TO, RAM).unwrap().into_raw(), 32));
    }
    assert_eq!(f.dev.raw_mappings(), 141);
    let at = DmaAddr::new(LOW + 0x8000);
    let before = f.phys.cache_ops().len();
    f.dev.sync_for_cpu(at, 0x200).unwrap();
    assert_eq!(
        &f.phys.cache_ops()[before..],
        [(
            LOW + 0x8000,
            0x200,
            crate::CacheOp::ForCpu(Direction::FromDevice)
        )]
    );
    // Past the end of every mapping: no mapping holds the range.
    assert_eq!(
        f.dev.sync_for_cpu(DmaAddr::new(LOW + 0xff00), 0x200),
        Err(DmaError::OutOfRange {
            offset: 0xff00,
            len: 0x200,
            size: 0x10000
        })
    );
    assert_eq!(
        f.dev.sync_for_device(DmaAddr::new(LOW + 0x10000), 1),
        Err(DmaError::NotMapped {
            addr: LOW + 0x10000
        })
    );
    // Once the big mapping is gone, the same address is not mapped any more.
    f.dev
        .unmap_phys(big, 0x10000, Direction::FromDevice, RAM)
        .unwrap();
    assert_eq!(
        f.dev.sync_for_cpu(at, 0x200),
        Err(DmaError::NotMapped { addr: at.as_u64() })
    );
    for (dma, len) in small {
        f.dev.unmap_phys(dma, len, TO, RAM).unwrap();
    }
    assert_eq!(f.dev.raw_mappings(), 0);
}
