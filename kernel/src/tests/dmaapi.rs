//! The DMA API (`dma` crate) on real hardware: the edu device moves bytes through mappings made
//! with `DmaDevice`, with and without the IOMMU. Evidence is memory contents and VT-d fault
//! records, never the device's status.

use alloc::vec::Vec;

use dma::iommu::{IommuDomain, IotlbGather};
use dma::{Attrs, DeviceConfig, Direction, DmaAddr, DmaError, Mapping, PhysAddr, UnmapBatch};
use edu::{Edu, Transfer};
use iommu_vtd::AccessKind;
use kernel::frames::FrameRequest;

use super::common::*;
use crate::devices::dmamem::{self, DeviceDma};
use crate::devices::edu as edu_dev;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "dmaapi",
    explicit_only: false,
    tests: &[
        Test {
            name: "map_phys_both_directions",
            run: map_phys_both_directions,
        },
        Test {
            name: "bounce_above_mask",
            run: bounce_above_mask,
        },
        Test {
            name: "untrusted_subpage_isolated",
            run: untrusted_subpage_isolated,
        },
        Test {
            name: "bounce_slot_reused_zero_padded",
            run: bounce_slot_reused_zero_padded,
        },
        Test {
            name: "strict_unmap_then_fault",
            run: strict_unmap_then_fault,
        },
        Test {
            name: "direction_enforced",
            run: direction_enforced,
        },
        Test {
            name: "scatter_list",
            run: scatter_list,
        },
        Test {
            name: "batch_unmap_then_fault",
            run: batch_unmap_then_fault,
        },
        Test {
            name: "batch_without_flush_is_caught",
            run: batch_without_flush_is_caught,
        },
        Test {
            name: "deferred_unmap_quarantines_until_flush",
            run: deferred_unmap_quarantines_until_flush,
        },
        Test {
            name: "mmio_unaligned_small",
            run: mmio_unaligned_small,
        },
        Test {
            name: "mmio_beyond_mask_refused",
            run: mmio_beyond_mask_refused,
        },
    ],
};

const LEN: u64 = 256;

fn device(k: &Kernel, edu: &Edu, trusted: bool) -> Result<DeviceDma, Failure> {
    let config = DeviceConfig {
        mask: edu.dma_mask(),
        trusted,
        ..DeviceConfig::default()
    };
    dmamem::setup(&k.pci, k.iommu.as_ref(), edu.bdf(), config).or_fail("DMA device setup")
}

/// Maps the first `len` bytes of `pages` for the device (no attributes).
fn map(
    d: &DeviceDma,
    pages: &PhysPages,
    len: u64,
    dir: Direction,
    what: &str,
) -> Result<Mapping, Failure> {
    d.dev
        .map_phys(PhysAddr::new(pages.paddr()), len, dir, Attrs::empty())
        .or_fail(what)
}

fn first_edu(k: &Kernel) -> Result<Edu, Failure> {
    edus(k)?.into_iter().next().or_fail("edu")
}

/// A page at or above `min` (bytes), filled.
fn page_above(min: u64, fill: u8) -> Result<PhysPages, Failure> {
    let req = FrameRequest {
        min: (min / 4096) as usize,
        ..FrameRequest::one()
    };
    let mut p = PhysPages::alloc(req).or_fail("page above the mask")?;
    p.as_mut_slice().fill(fill);
    Ok(p)
}

/// RAM → device → RAM through two streaming mappings; works on either path.
fn map_phys_both_directions(k: &Kernel) -> TestResult {
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let mut src = page(0)?;
    pattern(&mut src, 9);
    let dst = page(0)?;
    let ms = map(&d, &src, LEN, Direction::ToDevice, "map src")?;
    let md = map(&d, &dst, LEN, Direction::FromDevice, "map dst")?;
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ms.dma_addr(), 0, LEN).or_fail("edu read")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, md.dma_addr(), 0, LEN).or_fail("edu write")?;
    md.sync_for_cpu().or_fail("sync for cpu")?;
    let got = read_back(&dst, LEN as usize);
    check_eq!(&got[..], &src.as_slice()[..LEN as usize]);
    kprintln!(
        "  {} path: src {:#x} -> dma {}, dst {:#x} -> dma {}, checksum {:#010x}",
        if d.hw.is_some() { "IOMMU" } else { "direct" },
        src.paddr(),
        ms.dma_addr(),
        dst.paddr(),
        md.dma_addr(),
        checksum(&got)
    );
    ms.unmap().or_fail("unmap src")?;
    md.unmap().or_fail("unmap dst")?;
    Ok(())
}

/// Direct path, buffers above edu's 28-bit mask: both are bounced below the mask and the bytes
/// still arrive intact in the original buffer.
fn bounce_above_mask(k: &Kernel) -> TestResult {
    check!(
        k.iommu.is_none(),
        "this test needs the direct path (no intel-iommu)"
    );
    let mut e = first_edu(k)?;
    let mask = e.dma_mask();
    let d = device(k, &e, true)?;
    let mut src = page_above(mask + 1, 0)?;
    pattern(&mut src, 0x21);
    let dst = page_above(mask + 1, 0)?;
    check!(
        src.paddr() > mask && dst.paddr() > mask,
        "buffers are not above the mask"
    );
    let ms = map(&d, &src, LEN, Direction::ToDevice, "map src")?;
    let md = map(&d, &dst, LEN, Direction::FromDevice, "map dst")?;
    check!(ms.is_bounced() && md.is_bounced(), "not bounced");
    check!(
        ms.dma_addr().as_u64() + LEN - 1 <= mask && md.dma_addr().as_u64() + LEN - 1 <= mask,
        "bounce slot beyond the mask"
    );
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ms.dma_addr(), 0, LEN).or_fail("edu read")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, md.dma_addr(), 0, LEN).or_fail("edu write")?;
    md.unmap().or_fail("unmap dst (copies back)")?;
    ms.unmap().or_fail("unmap src")?;
    check_eq!(
        read_back(&dst, LEN as usize),
        src.as_slice()[..LEN as usize].to_vec()
    );
    kprintln!(
        "  {:#x} and {:#x} bounced below {mask:#x}; {LEN} bytes arrived intact",
        src.paddr(),
        dst.paddr()
    );
    Ok(())
}

/// An untrusted device gets a sub-page buffer (100 bytes at offset 0x80 of a page full of
/// secrets): the device reads 2 KiB from the start of the IOVA page and sees the 100 bytes and
/// zeros, never a byte of the rest of the original page.
fn untrusted_subpage_isolated(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    let mut e = first_edu(k)?;
    let d = device(k, &e, false)?;
    let mut secret = page(0xee)?;
    // 1..=100: no byte equals the 0xee secret, so any 0xee the device sees leaked.
    let data: Vec<u8> = (1..=100u8).collect();
    secret.as_mut_slice()[0x80..0x80 + 100].copy_from_slice(&data);
    let m = d
        .dev
        .map_phys(
            PhysAddr::new(secret.paddr() + 0x80),
            100,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .or_fail("map")?;
    check!(
        m.is_bounced(),
        "an untrusted sub-page mapping was not bounced"
    );
    check_eq!(m.dma_addr().page_offset(), 0x80);
    let dst = page(0x5a)?;
    let md = map(&d, &dst, 4096, Direction::FromDevice, "map dst")?;
    check!(!md.is_bounced(), "a page-aligned mapping was bounced");
    let span = 0x800;
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        m.dma_addr().page_align_down(),
        0,
        span,
    )
    .or_fail("edu read")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, md.dma_addr(), 0, span).or_fail("edu write")?;
    let got = read_back(&dst, span as usize);
    check!(
        !got.contains(&0xee),
        "the device saw a byte of the rest of the page"
    );
    check_eq!(&got[0x80..0x80 + 100], &data[..]);
    check!(
        got[..0x80]
            .iter()
            .chain(&got[0x80 + 100..])
            .all(|&b| b == 0),
        "slot not zero-padded"
    );
    check!(faults(k)?.is_empty(), "unexpected faults");
    m.unmap().or_fail("unmap")?;
    md.unmap().or_fail("unmap dst")?;
    Ok(())
}

/// The physical page a mapping's first IOVA page translates to (the bounce slot when bounced).
fn slot_page(d: &DeviceDma, m: &Mapping) -> Result<u64, Failure> {
    let hw = d.hw.as_ref().or_fail("hardware domain")?;
    let (pa, _) = hw
        .translate(m.dma_addr().page_align_down())
        .or_fail("translation of the mapping")?;
    Ok(pa.as_u64())
}

/// Bounce slots are zero-padded on every use, not only when fresh: an untrusted device gets a
/// sub-page mapping, writes almost the whole slot page with non-zero bytes (checked in the slot),
/// the mapping is released; the next sub-page mapping gets the same slot (checked through the
/// translation) and the device, reading almost the whole slot page, sees its 100 data bytes and
/// zeros around them, not the previous mapping's bytes. The dirtied slot is the negative
/// control: without the padding the device would read it back.
fn bounce_slot_reused_zero_padded(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let d = device(k, &e, false)?;
    // Edu's buffer full of 0xc5, loaded through a whole-page (never bounced) mapping.
    let span: u64 = 0xf00;
    let fill = page(0xc5)?;
    let mf = map(&d, &fill, 4096, Direction::ToDevice, "map fill")?;
    check!(!mf.is_bounced(), "a page-aligned mapping was bounced");
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, mf.dma_addr(), 0, span).or_fail("load 0xc5")?;
    // First use of the slot: the device writes 0xc5 over [0, span) of the slot page.
    let first = page(0)?;
    let m1 = d
        .dev
        .map_phys(
            PhysAddr::new(first.paddr() + 0x80),
            100,
            Direction::FromDevice,
            Attrs::empty(),
        )
        .or_fail("first sub-page map")?;
    check!(
        m1.is_bounced(),
        "an untrusted sub-page mapping was not bounced"
    );
    let slot = slot_page(&d, &m1)?;
    check!(slot != first.paddr(), "the slot is the original page");
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        m1.dma_addr().page_align_down(),
        0,
        span,
    )
    .or_fail("dirtying write")?;
    // SAFETY: the slot is a RAM page of the pool (identity-mapped), mapped for the device only
    // while m1 lives; read before m1 is released.
    let dirty =
        (0..span as usize).all(|i| unsafe { (slot as *const u8).add(i).read_volatile() } == 0xc5);
    check!(
        dirty,
        "the device's write did not land in the slot: the control proves nothing"
    );
    m1.unmap().or_fail("unmap first")?;
    // Copy-back is exactly the 100 data bytes.
    let back = read_back(&first, 4096);
    check!(
        back[0x80..0x80 + 100].iter().all(|&b| b == 0xc5),
        "copy-back lost the data"
    );
    check!(
        back[..0x80]
            .iter()
            .chain(&back[0x80 + 100..])
            .all(|&b| b == 0),
        "copy-back wrote outside the mapped bytes"
    );
    // Second use: 100 bytes (1..=100) at 0x80 of a page of 0xee secrets.
    let mut secret = page(0xee)?;
    let data: Vec<u8> = (1..=100u8).collect();
    secret.as_mut_slice()[0x80..0x80 + 100].copy_from_slice(&data);
    let m2 = d
        .dev
        .map_phys(
            PhysAddr::new(secret.paddr() + 0x80),
            100,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .or_fail("second sub-page map")?;
    check!(m2.is_bounced(), "second mapping not bounced");
    check_eq!(slot_page(&d, &m2)?, slot);
    let dst = page(0x5a)?;
    let md = map(&d, &dst, 4096, Direction::FromDevice, "map dst")?;
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        m2.dma_addr().page_align_down(),
        0,
        span,
    )
    .or_fail("edu reads the slot page")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, md.dma_addr(), 0, span).or_fail("edu write")?;
    md.sync_for_cpu().or_fail("sync dst")?;
    let got = read_back(&dst, span as usize);
    check_eq!(&got[0x80..0x80 + 100], &data[..]);
    check!(
        !got.contains(&0xc5),
        "the device saw the previous mapping's bytes in a reused slot"
    );
    check!(
        !got.contains(&0xee),
        "the device saw a byte of the original page"
    );
    check!(
        got[..0x80]
            .iter()
            .chain(&got[0x80 + 100..])
            .all(|&b| b == 0),
        "reused slot not zero-padded"
    );
    check!(faults(k)?.is_empty(), "unexpected faults");
    m2.unmap().or_fail("unmap second")?;
    md.unmap().or_fail("unmap dst")?;
    mf.unmap().or_fail("unmap fill")?;
    Ok(())
}

/// Strict `Mapping::unmap` through the DMA API (not the raw domain): a device write through the
/// mapping lands (so the IOTLB holds a writable entry), `unmap` returns, the same write to the
/// same IOVA is blocked: memory unchanged, a write fault at that IOVA. Negative control:
/// `batch_without_flush_is_caught` shows the same warm entry is used when the flush is skipped.
fn strict_unmap_then_fault(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let mut src = page(0)?;
    pattern(&mut src, 0x91);
    let ms = map(&d, &src, LEN, Direction::ToDevice, "map src")?;
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ms.dma_addr(), 0, LEN).or_fail("load")?;
    let mut target = page(0)?;
    let mt = map(&d, &target, 4096, Direction::FromDevice, "map target")?;
    let iova = mt.dma_addr();
    edu_dev::dma(&mut e, Transfer::WriteToMemory, iova, 0, LEN).or_fail("warming write")?;
    mt.sync_for_cpu().or_fail("sync")?;
    check_eq!(
        read_back(&target, LEN as usize),
        src.as_slice()[..LEN as usize].to_vec()
    );
    mt.unmap().or_fail("strict unmap")?;
    let hw = d.hw.as_ref().or_fail("hardware domain")?;
    check!(
        hw.translate(iova).is_none(),
        "the page table still maps {iova}"
    );
    target.as_mut_slice().fill(0x33);
    edu_dev::dma(&mut e, Transfer::WriteToMemory, iova, 0, LEN).or_fail("write after unmap")?;
    check!(
        read_back(&target, 4096).iter().all(|&b| b == 0x33),
        "DMA reached memory after a strict Mapping::unmap"
    );
    expect_one_fault(k, &e, iova.as_u64(), AccessKind::Write, 5)?;
    ms.unmap().or_fail("unmap src")?;
    Ok(())
}

/// The direction decides the device's rights: a device write into a `ToDevice` (read-only)
/// mapping is blocked (write fault, memory unchanged) and a device read from a `FromDevice`
/// (write-only) mapping is blocked (read fault). Negative control: the same write into a
/// `FromDevice` and a `Bidirectional` mapping of a page filled the same way lands, and the
/// device can read the `ToDevice` page, so the refusals are the direction's doing.
fn direction_enforced(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let mut src = page(0)?;
    pattern(&mut src, 0xa7);
    let ms = map(&d, &src, 4096, Direction::ToDevice, "map src")?;
    // The device can read a ToDevice mapping (this loads its buffer).
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ms.dma_addr(), 0, LEN).or_fail("load")?;
    let want = src.as_slice()[..LEN as usize].to_vec();
    let ro = page(0x33)?;
    let mro = map(&d, &ro, 4096, Direction::ToDevice, "map read-only")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, mro.dma_addr(), 0, LEN)
        .or_fail("write into ToDevice")?;
    check!(
        read_back(&ro, 4096).iter().all(|&b| b == 0x33),
        "a device write reached a ToDevice (read-only) mapping"
    );
    expect_one_fault(k, &e, mro.dma_addr().as_u64(), AccessKind::Write, 5)?;
    for dir in [Direction::FromDevice, Direction::Bidirectional] {
        let p = page(0x33)?;
        let m = map(&d, &p, 4096, dir, "map writable")?;
        edu_dev::dma(&mut e, Transfer::WriteToMemory, m.dma_addr(), 0, LEN)
            .or_fail("write into a writable mapping")?;
        m.sync_for_cpu().or_fail("sync")?;
        check!(
            read_back(&p, LEN as usize) == want,
            "the control write into a {dir:?} mapping did not land"
        );
        m.unmap().or_fail("unmap writable")?;
    }
    let wo = page(0x44)?;
    let mwo = map(&d, &wo, 4096, Direction::FromDevice, "map write-only")?;
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, mwo.dma_addr(), 0, LEN)
        .or_fail("read from FromDevice")?;
    expect_one_fault(k, &e, mwo.dma_addr().as_u64(), AccessKind::Read, 6)?;
    check!(faults(k)?.is_empty(), "unexpected faults");
    mwo.unmap().or_fail("unmap write-only")?;
    mro.unmap().or_fail("unmap read-only")?;
    ms.unmap().or_fail("unmap src")?;
    Ok(())
}

/// A scatter list of three ranges in three pages; each range is used by one DMA, then the
/// device writes everything it read to a fourth mapping.
fn scatter_list(k: &Kernel) -> TestResult {
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let mut pages = Vec::new();
    for seed in [0x10, 0x20, 0x30] {
        let mut p = page(0)?;
        pattern(&mut p, seed);
        pages.push(p);
    }
    let ranges = [
        (PhysAddr::new(pages[0].paddr()), 4096),
        (PhysAddr::new(pages[1].paddr()), 4096),
        (PhysAddr::new(pages[2].paddr()), 0x300),
    ];
    let sg = d
        .dev
        .map_sg(&ranges, Direction::ToDevice, Attrs::empty())
        .or_fail("map_sg")?;
    let segs: Vec<_> = sg.segments().collect();
    check_eq!(segs.len(), 3);
    for (i, s) in segs.iter().enumerate() {
        edu_dev::dma(
            &mut e,
            Transfer::ReadFromMemory,
            s.addr,
            (i as u64) * LEN,
            LEN,
        )
        .or_fail("edu read")?;
    }
    let dst = page(0)?;
    let md = map(&d, &dst, 3 * LEN, Direction::FromDevice, "map dst")?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, md.dma_addr(), 0, 3 * LEN)
        .or_fail("edu write")?;
    md.sync_for_cpu().or_fail("sync")?;
    let got = read_back(&dst, 3 * LEN as usize);
    for (i, p) in pages.iter().enumerate() {
        let want = &p.as_slice()[..LEN as usize];
        check_eq!(&got[i * LEN as usize..(i + 1) * LEN as usize], want);
    }
    kprintln!("  segments: {segs:x?}");
    sg.unmap().or_fail("unmap sg")?;
    md.unmap().or_fail("unmap dst")?;
    Ok(())
}

/// Two mappings warmed by DMA, unmapped in one batch (one flush); a DMA to the freed IOVA is
/// blocked: memory unchanged, fault recorded.
fn batch_unmap_then_fault(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let mut a = page(0)?;
    pattern(&mut a, 0x51);
    let mut b = page(0x52)?;
    let ma = map(&d, &a, 4096, Direction::Bidirectional, "map a")?;
    let mb = map(&d, &b, 4096, Direction::Bidirectional, "map b")?;
    let (ia, ib) = (ma.dma_addr(), mb.dma_addr());
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ia, 0, LEN).or_fail("warm a")?;
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ib, LEN, LEN).or_fail("warm b")?;
    let mut batch = UnmapBatch::new();
    ma.unmap_in(&mut batch).or_fail("unmap a")?;
    mb.unmap_in(&mut batch).or_fail("unmap b")?;
    batch.finish().or_fail("finish batch")?;
    a.as_mut_slice().fill(0x33);
    edu_dev::dma(&mut e, Transfer::WriteToMemory, ia, 0, LEN).or_fail("write to freed IOVA")?;
    check!(
        read_back(&a, 4096).iter().all(|&x| x == 0x33),
        "DMA reached memory after a batched unmap"
    );
    expect_one_fault(k, &e, ia.as_u64(), AccessKind::Write, 5)?;
    // The second mapping of the batch is gone too (the flush covered both ranges).
    b.as_mut_slice().fill(0x44);
    edu_dev::dma(&mut e, Transfer::WriteToMemory, ib, 0, LEN)
        .or_fail("write to the second freed IOVA")?;
    check!(
        read_back(&b, 4096).iter().all(|&x| x == 0x44),
        "DMA reached the second page after the batch"
    );
    expect_one_fault(k, &e, ib.as_u64(), AccessKind::Write, 5)?;
    Ok(())
}

/// Negative control: the same warm + unmap with the invalidation left out lets the DMA through
/// the stale IOTLB entry, so the test above would catch a batch that skipped its flush.
fn batch_without_flush_is_caught(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let hw = d.hw.as_ref().or_fail("hardware domain")?;
    let mut a = page(0)?;
    pattern(&mut a, 0x61);
    let ma = map(&d, &a, 4096, Direction::Bidirectional, "map")?;
    let ia = ma.dma_addr();
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, ia, 0, LEN).or_fail("warm")?;
    // Take the mapping away from the DMA layer and remove it beneath, skipping the flush.
    let ia = ma.into_raw();
    let mut g = IotlbGather::new();
    hw.unmap(ia, 4096, &mut g).or_fail("hardware unmap")?;
    drop(g);
    a.as_mut_slice().fill(0x33);
    edu_dev::dma(&mut e, Transfer::WriteToMemory, ia, 0, LEN).or_fail("write")?;
    check!(
        read_back(&a, LEN as usize).iter().any(|&x| x != 0x33),
        "stale translation unused: the control proves nothing"
    );
    let mut g = IotlbGather::new();
    g.add(DmaAddr::new(ia.as_u64()), 4096);
    hw.flush(g).or_fail("late flush")?;
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// With the MMIO attribute, 4 bytes at an unaligned BAR address map fine (digest item 13) and
/// the IOVA keeps the offset; the translation points at the BAR page.
fn mmio_unaligned_small(k: &Kernel) -> TestResult {
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    let e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let bar = k
        .pci
        .topology
        .function(e.bdf())
        .and_then(|f| f.bar(0))
        .or_fail("edu BAR0")?;
    let addr = bar.phys_address + 0x24;
    let m = d
        .dev
        .map_phys(
            PhysAddr::new(addr),
            4,
            Direction::Bidirectional,
            Attrs::MMIO,
        )
        .or_fail("map MMIO")?;
    check_eq!(m.dma_addr().page_offset(), 0x24);
    check!(!m.is_bounced(), "MMIO was bounced");
    let hw = d.hw.as_ref().or_fail("hardware domain")?;
    let (pa, prot) = hw
        .translate(m.dma_addr().page_align_down())
        .or_fail("translation")?;
    check_eq!(pa.as_u64(), addr & !0xfff);
    check!(
        !prot.contains(dma::iommu::Prot::CACHE),
        "MMIO mapped cacheable"
    );
    m.unmap().or_fail("unmap")?;
    Ok(())
}

/// Without an IOMMU, an MMIO range beyond the device's mask would need a bounce: refused with
/// its own error, nothing mapped.
fn mmio_beyond_mask_refused(k: &Kernel) -> TestResult {
    check!(
        k.iommu.is_none(),
        "this test needs the direct path (no intel-iommu)"
    );
    let e = first_edu(k)?;
    let d = device(k, &e, true)?;
    let bar = k
        .pci
        .topology
        .function(e.bdf())
        .and_then(|f| f.bar(0))
        .or_fail("edu BAR0")?;
    check!(
        bar.phys_address > e.dma_mask(),
        "BAR below the mask: nothing to prove"
    );
    let r = d.dev.map_phys(
        PhysAddr::new(bar.phys_address),
        4096,
        Direction::ToDevice,
        Attrs::MMIO,
    );
    check!(
        matches!(r, Err(DmaError::MmioNeedsBounce { .. })),
        "got {:?}",
        r.map(|m| m.dma_addr())
    );
    check_eq!(d.dev.raw_mappings(), 0);
    Ok(())
}

/// Deferred invalidation (opt-in, trusted device): the unmap returns before the IOTLB flush, so
/// a device holding a stale translation can still reach the page (the documented risk) and the
/// IOVA stays quarantined: new mappings never get it. After `flush_deferred` the same DMA is
/// blocked with a fault and the IOVA may be handed out again.
fn deferred_unmap_quarantines_until_flush(k: &Kernel) -> TestResult {
    use dma::{DeferredPolicy, InvalidationMode};
    check!(k.iommu.is_some(), "this test needs intel-iommu");
    clear_faults(k)?;
    let mut e = first_edu(k)?;
    let policy = DeferredPolicy {
        max_pending: 1000,
        max_delay_us: 60_000_000,
    };
    let cfg = DeviceConfig {
        mask: e.dma_mask(),
        trusted: true, // deferred invalidation is for trusted devices only
        ..DeviceConfig::default()
    };
    let d = dmamem::setup_with(
        &k.pci,
        k.iommu.as_ref(),
        e.bdf(),
        cfg,
        InvalidationMode::Deferred(policy),
    )
    .or_fail("deferred DMA device")?;
    let domain = d.dev.domain().or_fail("domain")?.clone();
    let mut a = page(0)?;
    pattern(&mut a, 0x71);
    let m = map(&d, &a, 4096, Direction::Bidirectional, "map")?;
    let old = m.dma_addr();
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, old, 0, LEN).or_fail("warm")?;
    m.unmap().or_fail("deferred unmap")?;
    check!(domain.pending_unmaps() > 0, "the unmap was not deferred");
    // Quarantine: a burst of new mappings never reuses the unflushed IOVA.
    let other = page(0)?;
    let fresh: Vec<_> = (0..32)
        .map(|_| {
            d.dev.map_phys(
                PhysAddr::new(other.paddr()),
                4096,
                Direction::ToDevice,
                Attrs::empty(),
            )
        })
        .collect::<Result<_, _>>()
        .or_fail("new maps")?;
    check!(
        fresh
            .iter()
            .all(|f| f.dma_addr().page_align_down() != old.page_align_down()),
        "a quarantined IOVA was handed out"
    );
    drop(fresh);
    domain.flush_deferred().or_fail("flush_deferred")?;
    check_eq!(domain.pending_unmaps(), 0);
    a.as_mut_slice().fill(0x33);
    edu_dev::dma(&mut e, Transfer::WriteToMemory, old, 0, LEN).or_fail("write after flush")?;
    check!(
        read_back(&a, LEN as usize).iter().all(|&x| x == 0x33),
        "DMA reached memory after the deferred flush"
    );
    expect_one_fault(k, &e, old.as_u64(), AccessKind::Write, 5)?;
    Ok(())
}
