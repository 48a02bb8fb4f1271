//! Coherent allocations: memory and DMA address together, zeroed, freed after a flush.

use super::snapshot;
use crate::iommu::{IommuDomain, IommuError, Prot};
use crate::testing::Fixture;
use crate::{DeviceConfig, DmaError, InvalidationMode};

#[test]
fn coherent_alloc_is_zeroed_mapped_and_freed_together() {
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(32).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let s = snapshot(&f);
    // Dirty the RAM first so zeroing is observable (the pool at the top of LOW is left alone).
    f.phys.fill(super::LOW, 15 << 20, 0xff);
    f.phys.fill(super::HIGH, 16 << 20, 0xff);
    let buf = f.dev.alloc_coherent(6000).unwrap();
    assert_eq!(buf.size(), 6000);
    let mut bytes = vec![0xffu8; 6000];
    buf.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|&b| b == 0));
    buf.write(100, b"ring").unwrap();
    let (pa, prot) = f.hw().translate(buf.dma_addr()).unwrap();
    assert_eq!(pa, buf.phys());
    assert_eq!(prot, Prot::READ | Prot::WRITE | Prot::CACHE);
    assert!(buf.dma_addr().as_u64() < 1 << 32);
    assert_eq!(f.hw().counts().sync_maps, 1);
    drop(buf);
    assert_eq!(f.hw().unflushed_bytes(), 0);
    assert_eq!(snapshot(&f), s);
}

#[test]
fn coherent_direct_comes_from_below_the_mask() {
    let f = Fixture::direct(DeviceConfig::with_mask_bits(32).unwrap().trusted()).unwrap();
    let buf = f.dev.alloc_coherent(4096).unwrap();
    assert_eq!(buf.dma_addr().as_u64(), buf.phys().as_u64());
    assert!(buf.phys().as_u64() < 1 << 32);
    buf.free().unwrap();
}

#[test]
fn reject_coherent_zero_length_and_out_of_range_access() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let s = snapshot(&f);
    assert_eq!(f.dev.alloc_coherent(0).unwrap_err(), DmaError::ZeroLength);
    assert!(matches!(
        f.dev.alloc_coherent(u64::MAX).unwrap_err(),
        DmaError::Overflow { .. }
    ));
    assert!(matches!(
        f.dev.alloc_coherent(1 << 40).unwrap_err(),
        DmaError::Phys(_)
    ));
    assert_eq!(snapshot(&f), s);
    let buf = f.dev.alloc_coherent(100).unwrap();
    assert_eq!(
        buf.write(99, b"ab").unwrap_err(),
        DmaError::OutOfRange {
            offset: 99,
            len: 2,
            size: 100
        }
    );
    assert!(matches!(
        buf.read(u64::MAX, &mut [0; 2]).unwrap_err(),
        DmaError::Overflow { .. }
    ));
}

#[test]
fn coherent_failure_paths_change_nothing() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let s = snapshot(&f);
    f.hw().fail_map_after(0);
    assert_eq!(
        f.dev.alloc_coherent(4096).unwrap_err(),
        DmaError::Iommu(IommuError::OutOfMemory)
    );
    assert_eq!(snapshot(&f), s);
    f.hw().fail_next_sync_map();
    assert_eq!(
        f.dev.alloc_coherent(4096).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn coherent_flush_failure_leaks_pages() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let before = f.phys.free_pages();
    let buf = f.dev.alloc_coherent(4096).unwrap();
    f.hw().fail_next_flush();
    assert_eq!(
        buf.free().unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(
        f.phys.free_pages(),
        before - 1,
        "the device may still write there: never reused"
    );
}

/// The sync after mapping fails and the unwind cannot unmap: the error names the IOVA still
/// mapped and the pages it reaches (which stay allocated for ever).
#[test]
fn coherent_alloc_double_fault_reports_what_is_still_mapped() {
    let f = Fixture::iommu(
        DeviceConfig::with_mask_bits(32).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let free = f.phys.free_pages();
    f.hw().fail_next_sync_map();
    f.hw().fail_unmap_after(0);
    let e = f.dev.alloc_coherent(8192).unwrap_err();
    let left = f.hw().entries_in(0, 1 << 39);
    assert_eq!(left.len(), 2);
    let (iova, pte) = left[0];
    assert_eq!(
        e,
        DmaError::UnwindIncomplete {
            still_mapped: (crate::DmaAddr::new(iova), 8192),
            reaches: crate::PhysAddr::new(pte.paddr),
            stuck: 1,
            undo: IommuError::NotMapped { iova },
        }
    );
    assert_eq!(
        f.phys.free_pages(),
        free - 2,
        "the reachable pages are never freed"
    );
    // Without the double fault: the sync's error and nothing left.
    f.hw().fail_next_sync_map();
    assert_eq!(
        f.dev.alloc_coherent(4096).unwrap_err(),
        DmaError::Iommu(IommuError::InvalidationTimeout)
    );
    assert_eq!(f.hw().entries(), 2);
}
