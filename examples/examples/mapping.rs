//! Mapping with the DMA API over a VT-d domain: a strict unmap, a batched unmap (one flush for
//! many mappings) and a scatter-gather list. The fake unit caches translations in an IOTLB like
//! the hardware, so each step warms it first: a translation that is gone after an unmap proves
//! the invalidation happened, not just the page-table write.
use std::error::Error;
use std::sync::Arc;

use dma::{Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, PhysAddr, Translation};
use dma::{PhysMemory, UnmapBatch};
use iommu_vtd::fake::{FakeVtd, HostPlatform, HwEvent};
use iommu_vtd::{Bdf, DomainConfig, GroupRef, UnitConfig, VtdUnit};

const PAGE: u64 = 0x1000;

pub fn main() -> Result<(), Box<dyn Error>> {
    // A unit and a domain attached to the isolation group of one function, 00:03.0.
    let platform = Arc::new(HostPlatform::new());
    let unit = Arc::new(VtdUnit::new(
        FakeVtd::qemu_default(platform.clone()),
        platform,
        UnitConfig::new(39),
    )?);
    unit.enable()?;
    let rid = Bdf::new(0, 0, 3, 0)?.requester_id();
    let hw = Arc::new(unit.create_domain(DomainConfig::default())?);
    let group = GroupRef {
        key: u32::from(rid.get()),
        requester_ids: &[rid],
    };
    hw.attach_device(group, rid)?;
    let domain = DmaDomain::new(hw.clone(), dma::DomainConfig::default())?; // strict
    let phys: Arc<dyn PhysMemory> = Arc::new(dma::testing::FakePhysMemory::standard());
    // Trusted: whole pages only here, so no bounce pool is needed.
    let config = DeviceConfig::with_mask_bits(39)?.trusted();
    let dev = DmaDevice::new(config, Translation::Iommu(domain), phys, None)?;
    let regs = unit.registers();
    let dma = |iova: u64| regs.dma(rid, iova, false);
    // Completion waits issued: one per flush the unit performed.
    let waits = || {
        regs.take_events()
            .iter()
            .filter(|e| matches!(e, HwEvent::WaitStatus { .. }))
            .count()
    };

    // Strict: when `unmap` returns, the IOTLB no longer holds the translation.
    let buf = PhysAddr::new(0x0100_0000);
    let m = dev.map_phys(buf, PAGE, Direction::Bidirectional, Attrs::empty())?;
    let iova = m.dma_addr().as_u64();
    assert_eq!(
        dma(iova + 8),
        Ok(buf.as_u64() + 8),
        "mapped, and now cached"
    );
    waits();
    m.unmap()?;
    assert!(
        dma(iova).is_err(),
        "strict unmap: gone from the table and the IOTLB"
    );
    assert_eq!(waits(), 1, "one completed flush");

    // Batched: three unmaps, one flush at `finish`. Until then the IOTLB may still translate
    // (which is why the IOVAs are not reused and bounce data not copied back before it).
    let bufs = [0x0110_0000, 0x0120_0000, 0x0130_0000].map(PhysAddr::new);
    let mut maps = Vec::new();
    for b in bufs {
        let m = dev.map_phys(b, PAGE, Direction::ToDevice, Attrs::empty())?;
        assert_eq!(dma(m.dma_addr().as_u64()), Ok(b.as_u64()));
        maps.push(m);
    }
    let iovas: Vec<u64> = maps.iter().map(|m| m.dma_addr().as_u64()).collect();
    waits();
    let mut batch = UnmapBatch::new();
    for m in maps {
        m.unmap_in(&mut batch)?;
    }
    assert_eq!(waits(), 0, "nothing flushed before finish");
    assert!(
        iovas.iter().all(|&i| dma(i).is_ok()),
        "stale IOTLB entries until finish"
    );
    batch.finish()?;
    assert_eq!(waits(), 1, "three unmaps, one flush");
    assert!(
        iovas.iter().all(|&i| dma(i).is_err()),
        "all gone after finish"
    );

    // Scatter-gather: three page-aligned ranges, one IOVA allocation, contiguous for the device.
    let ranges = [
        (PhysAddr::new(0x0140_0000), 2 * PAGE),
        (PhysAddr::new(0x0150_0000), PAGE),
        (PhysAddr::new(0x0160_0000), 3 * PAGE),
    ];
    let sg = dev.map_sg(&ranges, Direction::Bidirectional, Attrs::empty())?;
    let span = sg
        .iova_span()
        .ok_or("page-aligned ranges give one contiguous span")?;
    assert_eq!(span.len, 6 * PAGE);
    let mut at = span.addr.as_u64();
    for (p, len) in ranges {
        for off in (0..len).step_by(PAGE as usize) {
            assert_eq!(dma(at + off + 0x10), Ok(p.as_u64() + off + 0x10));
        }
        at += len;
    }
    let start = span.addr.as_u64();
    sg.unmap()?;
    assert!(
        (0..6).all(|i| dma(start + i * PAGE).is_err()),
        "the whole list unmapped"
    );
    println!("mapping: strict, batched (3 unmaps, 1 flush) and a 3-entry list checked");
    Ok(())
}
