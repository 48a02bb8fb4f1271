//! Bounce buffers: sub-page isolation for untrusted devices, mask bouncing on the direct path.

use super::{buffer, snapshot, HIGH, LOW};
use crate::iommu::IommuDomain;
use crate::testing::Fixture;
use crate::{Attrs, DeviceConfig, Direction, DmaError, InvalidationMode, PhysAddr, PAGE_SIZE};

fn untrusted() -> Fixture {
    Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().untrusted(),
        InvalidationMode::Strict,
    )
    .unwrap()
}

#[test]
fn untrusted_subpage_mapping_is_bounced_into_exclusive_zeroed_pages() {
    let f = untrusted();
    let buf = buffer(&f, 2, u64::MAX);
    f.phys.fill(buf, 8192, 0xAA); // secrets around the buffer
    f.phys.fill(buf + 0x10, 100, 0x5A); // the data
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 0x10),
            100,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(m.is_bounced());
    assert_eq!(m.dma_addr().page_offset(), 0x10);
    // What the device reaches: only the slot page, data at the same offset, zeros elsewhere.
    let (slot_pa, _) = f.hw().translate(m.dma_addr().page_align_down()).unwrap();
    assert_ne!(slot_pa.as_u64(), buf);
    let page = f.phys.bytes(slot_pa.as_u64(), 4096);
    assert!(page[..0x10].iter().all(|&b| b == 0));
    assert!(page[0x10..0x10 + 100].iter().all(|&b| b == 0x5A));
    assert!(page[0x10 + 100..].iter().all(|&b| b == 0));
    assert_eq!(
        f.hw().entries(),
        1,
        "one slot page mapped, never the original pages"
    );
    assert!(f.hw().translate(m.dma_addr()).unwrap().0.as_u64() != buf + 0x10);
}

#[test]
fn untrusted_unaligned_end_is_bounced_and_aligned_is_not() {
    let f = untrusted();
    let buf = buffer(&f, 2, u64::MAX);
    let aligned = f
        .dev
        .map_phys(
            PhysAddr::new(buf),
            4096,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(!aligned.is_bounced());
    let end = f
        .dev
        .map_phys(
            PhysAddr::new(buf),
            4000,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(end.is_bounced());
    // A trusted device never bounces under an IOMMU.
    let t = Fixture::iommu(
        DeviceConfig::with_mask_bits(39).unwrap().trusted(),
        InvalidationMode::Strict,
    )
    .unwrap();
    let m = t
        .dev
        .map_phys(
            PhysAddr::new(LOW + 1),
            10,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(!m.is_bounced());
}

#[test]
fn bounce_copy_back_from_device_at_unmap_and_sync() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    f.phys.fill(buf, 4096, 0x11);
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 0x100),
            0x200,
            Direction::FromDevice,
            Attrs::empty(),
        )
        .unwrap();
    let (slot, _) = f.hw().translate(m.dma_addr()).unwrap();
    // The device writes the first half.
    f.phys.fill(slot.as_u64(), 0x100, 0x77);
    m.sync_for_cpu().unwrap();
    assert!(f.phys.bytes(buf + 0x100, 0x100).iter().all(|&b| b == 0x77));
    // Bytes the device did not write come back unchanged (copy-in at map, see BouncePool).
    assert!(f.phys.bytes(buf + 0x200, 0x100).iter().all(|&b| b == 0x11));
    f.phys.fill(slot.as_u64() + 0x100, 0x100, 0x99);
    m.unmap().unwrap();
    assert!(f.phys.bytes(buf + 0x200, 0x100).iter().all(|&b| b == 0x99));
    assert!(
        f.phys.bytes(buf, 0x100).iter().all(|&b| b == 0x11),
        "outside the mapping untouched"
    );
}

#[test]
fn bounce_sync_for_device_copies_new_cpu_data() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 8),
            16,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    let (slot, _) = f.hw().translate(m.dma_addr()).unwrap();
    f.phys.fill(buf + 8, 16, 0x42);
    assert!(f.phys.bytes(slot.as_u64(), 16).iter().all(|&b| b == 0));
    m.sync_for_device().unwrap();
    assert!(f.phys.bytes(slot.as_u64(), 16).iter().all(|&b| b == 0x42));
    assert!(matches!(
        m.sync_range_for_device(8, 9),
        Err(DmaError::OutOfRange { .. })
    ));
}

#[test]
fn bounce_skip_cpu_sync_does_not_copy_but_still_zeroes() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    f.phys.fill(buf, 4096, 0xEE);
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 8),
            16,
            Direction::Bidirectional,
            Attrs::SKIP_CPU_SYNC,
        )
        .unwrap();
    let (slot, _) = f.hw().translate(m.dma_addr()).unwrap();
    assert!(f
        .phys
        .bytes(slot.as_u64() - 8, 4096)
        .iter()
        .all(|&b| b == 0));
    f.phys.fill(slot.as_u64(), 16, 0x33);
    m.unmap().unwrap();
    assert!(f.phys.bytes(buf + 8, 16).iter().all(|&b| b == 0xEE));
}

#[test]
fn direct_mask_violation_bounces_below_mask() {
    let f = Fixture::direct(DeviceConfig::with_mask_bits(32).unwrap().trusted()).unwrap();
    let buf = HIGH + 0x3000;
    f.phys.fill(buf, 64, 0xC3);
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 4),
            32,
            Direction::Bidirectional,
            Attrs::empty(),
        )
        .unwrap();
    assert!(m.is_bounced());
    let dma = m.dma_addr().as_u64();
    assert!(dma + 31 <= u32::MAX as u64);
    assert_eq!(dma % PAGE_SIZE, 4);
    assert!(f.phys.bytes(dma, 32).iter().all(|&b| b == 0xC3));
    f.phys.fill(dma, 32, 0x3C);
    m.unmap().unwrap();
    assert!(f.phys.bytes(buf + 4, 32).iter().all(|&b| b == 0x3C));
    assert!(f.phys.bytes(buf, 4).iter().all(|&b| b == 0xC3));
}

#[test]
fn bounce_slot_freed_only_after_flush() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    let free = f.pool.free_pages();
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 1),
            10,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert_eq!(f.pool.free_pages(), free - 1);
    f.hw().fail_next_flush();
    assert_eq!(
        m.unmap().unwrap_err(),
        DmaError::Iommu(crate::iommu::IommuError::InvalidationTimeout)
    );
    assert_eq!(
        f.pool.free_pages(),
        free - 1,
        "the device may still reach the slot: never reused"
    );
}

#[test]
fn reject_bounce_exhaustion_and_change_nothing() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    let mut live = Vec::new();
    loop {
        match f.dev.map_phys(
            PhysAddr::new(buf + 1),
            10,
            Direction::ToDevice,
            Attrs::empty(),
        ) {
            Ok(m) => live.push(m),
            Err(e) => {
                assert_eq!(e, DmaError::BounceExhausted { size: 10 });
                break;
            }
        }
    }
    assert_eq!(live.len(), 256, "1 MiB pool, one page per slot");
    let s = snapshot(&f);
    assert_eq!(
        f.dev
            .map_phys(
                PhysAddr::new(buf + 1),
                10,
                Direction::ToDevice,
                Attrs::empty()
            )
            .unwrap_err(),
        DmaError::BounceExhausted { size: 10 }
    );
    assert_eq!(snapshot(&f), s);
}

#[test]
fn reject_untrusted_subpage_without_pool() {
    use std::sync::Arc;
    let hw = Arc::new(crate::testing::FakeDomain::new());
    let domain = crate::DmaDomain::new(hw, Default::default()).unwrap();
    let dev = crate::DmaDevice::new(
        DeviceConfig::default().untrusted(),
        crate::Translation::Iommu(domain),
        Arc::new(crate::testing::FakePhysMemory::standard()),
        None,
    )
    .unwrap();
    assert_eq!(
        dev.map_phys(
            PhysAddr::new(LOW + 1),
            10,
            Direction::ToDevice,
            Attrs::empty()
        )
        .unwrap_err(),
        DmaError::NoBouncePool
    );
}

#[test]
fn bounce_copy_in_failure_unwinds() {
    // The original is not RAM the provider knows: the copy fails, the slot is returned.
    let f = untrusted();
    let s = snapshot(&f);
    let e = f
        .dev
        .map_phys(
            PhysAddr::new(0x7000_0010),
            10,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap_err();
    assert!(matches!(e, DmaError::Phys(_)));
    assert_eq!(snapshot(&f), s);
}

#[test]
fn raw_sync_for_cpu_and_device_copy_when_bounced() {
    let f = untrusted();
    let buf = buffer(&f, 1, u64::MAX);
    let dma = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 0x80),
            0x100,
            Direction::Bidirectional,
            Attrs::empty(),
        )
        .unwrap()
        .into_raw();
    let (slot, _) = f.hw().translate(dma).unwrap();
    f.phys.fill(slot.as_u64() + 0x10, 0x20, 0xAB);
    f.dev
        .sync_for_cpu(crate::DmaAddr::new(dma.as_u64() + 0x10), 0x20)
        .unwrap();
    assert!(f.phys.bytes(buf + 0x90, 0x20).iter().all(|&b| b == 0xAB));
    f.phys.fill(buf + 0x80, 0x10, 0xCD);
    f.dev.sync_for_device(dma, 0x10).unwrap();
    assert!(f.phys.bytes(slot.as_u64(), 0x10).iter().all(|&b| b == 0xCD));
    assert!(matches!(
        f.dev.sync_for_cpu(dma, 0x101).unwrap_err(),
        DmaError::OutOfRange { .. }
    ));
    assert_eq!(
        f.dev
            .sync_for_cpu(crate::DmaAddr::new(dma.as_u64() + 0x100), 1)
            .unwrap_err(),
        DmaError::NotMapped {
            addr: dma.as_u64() + 0x100
        }
    );
    f.dev
        .unmap_phys(dma, 0x100, Direction::Bidirectional, Attrs::empty())
        .unwrap();
    assert_eq!(
        f.dev.sync_for_cpu(dma, 1).unwrap_err(),
        DmaError::NotMapped { addr: dma.as_u64() }
    );
}

/// Bounce padding on reuse: a slot the device dirtied (it wrote its whole page) is reused for
/// another sub-page mapping; every byte of the slot page other than the new data must be zero
/// as the device sees it (through its translation), not what the previous transfer left.
#[test]
fn bounce_slot_reuse_is_zero_padded_every_time() {
    let f = untrusted();
    let buf = buffer(&f, 2, u64::MAX);
    f.phys.fill(buf, 8192, 0x11);
    // 1. A device-writes mapping of 100 bytes at 0x80; the "device" writes the whole page.
    let m = f
        .dev
        .map_phys(
            PhysAddr::new(buf + 0x80),
            100,
            Direction::FromDevice,
            Attrs::empty(),
        )
        .unwrap();
    assert!(m.is_bounced());
    let (slot, prot) = f.hw().translate(m.dma_addr().page_align_down()).unwrap();
    assert!(prot.contains(crate::iommu::Prot::WRITE));
    f.phys.fill(slot.as_u64(), PAGE_SIZE as usize, 0xEE);
    m.unmap().unwrap();
    // 2. Reuse: 50 bytes at 0x300 of another page.
    let data = buf + PAGE_SIZE + 0x300;
    f.phys.fill(data, 50, 0x5A);
    let m = f
        .dev
        .map_phys(PhysAddr::new(data), 50, Direction::ToDevice, Attrs::empty())
        .unwrap();
    let (again, _) = f.hw().translate(m.dma_addr().page_align_down()).unwrap();
    assert_eq!(again, slot, "the dirty slot is the one reused");
    // 3. What the device reads through the mapping: the data, zeros around it.
    let mut seen = Vec::new();
    for off in (0..PAGE_SIZE).step_by(64) {
        let (pa, _) = f
            .hw()
            .translate(crate::DmaAddr::new(
                m.dma_addr().page_align_down().as_u64() + off,
            ))
            .unwrap();
        seen.extend(f.phys.bytes(pa.as_u64(), 64));
    }
    let (lo, hi) = (0x300, 0x300 + 50);
    assert!(seen[lo..hi].iter().all(|&b| b == 0x5A));
    let dirty: Vec<usize> = (0..PAGE_SIZE as usize)
        .filter(|&i| !(lo..hi).contains(&i) && seen[i] != 0)
        .collect();
    assert!(
        dirty.is_empty(),
        "{} padding bytes keep the previous transfer's data, first at {:#x}",
        dirty.len(),
        dirty[0]
    );
}
