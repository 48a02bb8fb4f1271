//! VT-d tests, proven by what the edu device did: bytes that arrived in memory, bytes that did
//! not, and the fault records the IOMMU wrote. The device's own completion status is never taken
//! as evidence (a blocked DMA still "completes").
//!
//! Expectations the topology decides come from the command line, set by the scenario from the
//! same values it gives QEMU: `edu.dma_mask=`, `expect.levels=`, `expect.cm=`.

use alloc::vec::Vec;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use edu::Transfer;
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::{AccessKind, RequesterId};
use kernel::frames::FrameRequest;

use super::common::*;
use crate::devices::edu as edu_dev;
use crate::devices::iommu::Domain;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "vtd",
    explicit_only: false,
    tests: &[
        Test {
            name: "capabilities",
            run: capabilities,
        },
        Test {
            name: "dma_both_directions",
            run: dma_both_directions,
        },
        Test {
            name: "unmapped_iova_blocked",
            run: unmapped_iova_blocked,
        },
        Test {
            name: "unmap_invalidates_iotlb",
            run: unmap_invalidates_iotlb,
        },
        Test {
            name: "skipped_invalidation_is_caught",
            run: skipped_invalidation_is_caught,
        },
        Test {
            name: "detach_blocks_at_once",
            run: detach_blocks_at_once,
        },
        Test {
            name: "detach_without_invalidation_is_caught",
            run: detach_without_invalidation_is_caught,
        },
        Test {
            name: "domains_isolated",
            run: domains_isolated,
        },
        Test {
            name: "superpage_2m",
            run: superpage_2m,
        },
        Test {
            name: "superpage_1g",
            run: superpage_1g,
        },
    ],
};

const RW: Prot = Prot::READ.union(Prot::WRITE);
/// A transfer length that fits edu's buffer with margin.
const LEN: u64 = 256;
const IOVA_A: u64 = 0x10_0000;
const IOVA_B: u64 = 0x20_0000;

fn capabilities(k: &Kernel) -> TestResult {
    let iommu = iommu(k)?;
    check!(!iommu.units.is_empty());
    let caps = iommu.units[0].unit.capabilities();
    check!(
        iommu.units[0].unit.is_enabled(),
        "translation is not enabled"
    );
    // Both expectations are mandatory: the scenario derives them from the intel-iommu properties.
    let levels = cmd_u64(k, "expect.levels").or_fail("expect.levels= on the command line")?;
    check_eq!(u64::from(iommu.units[0].levels.count()), levels);
    let cm = cmd_u64(k, "expect.cm").or_fail("expect.cm= on the command line")?;
    check_eq!(caps.cap.caching_mode, cm == 1);
    for e in edus(k)? {
        check!(
            iommu.unit_for(&k.pci, e.bdf()).is_some(),
            "no unit translates for {}",
            e.bdf()
        );
    }
    Ok(())
}

/// Every edu device, each in its own domain: RAM → device through one IOVA, device → RAM
/// through another; the destination holds exactly the source bytes, nothing past them.
fn dma_both_directions(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    for (n, mut e) in edus(k)?.into_iter().enumerate() {
        let d = domain_for(k, &e)?;
        let mut src = page(0)?;
        pattern(&mut src, n as u8 + 1);
        let dst = page(0)?;
        map(&d, IOVA_A, &src, Prot::READ)?;
        map(&d, IOVA_B, &dst, Prot::WRITE)?;
        edu_dev::dma(
            &mut e,
            Transfer::ReadFromMemory,
            DmaAddr::new(IOVA_A),
            0,
            LEN,
        )
        .or_fail("edu read")?;
        edu_dev::dma(
            &mut e,
            Transfer::WriteToMemory,
            DmaAddr::new(IOVA_B),
            0,
            LEN,
        )
        .or_fail("edu write")?;
        let got = read_back(&dst, dst.len());
        check_eq!(&got[..LEN as usize], &src.as_slice()[..LEN as usize]);
        check!(
            got[LEN as usize..].iter().all(|&b| b == 0),
            "bytes written past the transfer"
        );
        kprintln!(
            "  edu {} via domain {}: {LEN} bytes {:#x} -> device -> {:#x}, checksum {:#010x}",
            e.bdf(),
            d.did(),
            IOVA_A,
            IOVA_B,
            checksum(&got[..LEN as usize])
        );
        unmap(&d, IOVA_A, 4096)?;
        unmap(&d, IOVA_B, 4096)?;
    }
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// A device write to an IOVA that is not mapped (chosen equal to a sentinel page's physical
/// address, so a missing translation would hit it) is blocked: the page is unchanged and the
/// fault names the device's requester ID, the page, a write, reason 5. Same for a read (6).
fn unmapped_iova_blocked(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    for mut e in edus(k)? {
        let d = domain_for(k, &e)?;
        let mut src = page(0)?;
        pattern(&mut src, 0x40);
        map(&d, IOVA_A, &src, Prot::READ)?;
        edu_dev::dma(
            &mut e,
            Transfer::ReadFromMemory,
            DmaAddr::new(IOVA_A),
            0,
            LEN,
        )
        .or_fail("load buffer")?;
        // The sentinel must be reachable under the device mask for the DMA to be attempted.
        let sentinel = PhysPages::alloc(FrameRequest {
            count: 1,
            align: 1,
            limit: Some(((e.dma_mask() + 1) >> 12) as usize),
            min: 0,
        })
        .or_fail("sentinel below the mask")?;
        let mut sentinel = sentinel;
        sentinel.as_mut_slice().fill(0x5a);
        let target = sentinel.paddr() + 0x100;
        edu_dev::dma(
            &mut e,
            Transfer::WriteToMemory,
            DmaAddr::new(target),
            0,
            LEN,
        )
        .or_fail("edu write")?;
        check!(
            read_back(&sentinel, 4096).iter().all(|&b| b == 0x5a),
            "blocked write reached memory"
        );
        expect_one_fault(k, &e, target, AccessKind::Write, 5)?;
        edu_dev::dma(
            &mut e,
            Transfer::ReadFromMemory,
            DmaAddr::new(target),
            0,
            LEN,
        )
        .or_fail("edu read")?;
        expect_one_fault(k, &e, target, AccessKind::Read, 6)?;
        unmap(&d, IOVA_A, 4096)?;
    }
    Ok(())
}

/// Warm the IOTLB with a DMA, unmap (strict: flushed before returning), DMA again: blocked.
fn unmap_invalidates_iotlb(k: &Kernel) -> TestResult {
    stale_translation(k, true)
}

/// Negative control for the test above: the same sequence with the invalidation skipped lets the
/// second DMA through the stale IOTLB entry, so the test above would catch a missing flush.
fn skipped_invalidation_is_caught(k: &Kernel) -> TestResult {
    stale_translation(k, false)
}

fn stale_translation(k: &Kernel, flush: bool) -> TestResult {
    clear_faults(k)?;
    let mut e = edus(k)?.into_iter().next().or_fail("edu")?;
    let d = domain_for(k, &e)?;
    let mut target = page(0)?;
    pattern(&mut target, 0x11);
    map(&d, IOVA_A, &target, RW)?;
    // Warm: the device reads through IOVA_A (caches the translation) into its buffer.
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(IOVA_A),
        0,
        LEN,
    )
    .or_fail("warming read")?;
    let mut gather = IotlbGather::new();
    d.unmap(DmaAddr::new(IOVA_A), 4096, &mut gather)
        .or_fail("unmap")?;
    if flush {
        d.flush(gather).or_fail("flush")?;
    } else {
        // Deliberately skipped invalidation (the point of this negative control).
        drop(gather);
    }
    target.as_mut_slice().fill(0x33);
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_A),
        0,
        LEN,
    )
    .or_fail("second write")?;
    let after = read_back(&target, LEN as usize);
    if flush {
        check!(
            after.iter().all(|&b| b == 0x33),
            "DMA reached memory after a strict unmap"
        );
        expect_one_fault(k, &e, IOVA_A, AccessKind::Write, 5)?;
    } else {
        check!(
            after.iter().any(|&b| b != 0x33),
            "the stale translation was not used: the control proves nothing"
        );
        // Clean up: complete the invalidation the control skipped.
        let mut g = IotlbGather::new();
        g.add(DmaAddr::new(IOVA_A), 4096);
        d.flush(g).or_fail("late flush")?;
        check!(faults(k)?.is_empty(), "unexpected faults");
    }
    Ok(())
}

/// Warm the context cache and the IOTLB with a device write that lands, detach (context entries
/// cleared, context cache and IOTLB invalidated before detach returns), write again through the
/// same IOVA: blocked with a context fault (reason 2, "no context entry") from the device's
/// requester ID, the page unchanged.
fn detach_blocks_at_once(k: &Kernel) -> TestResult {
    stale_context(k, true)
}

/// Negative control for the test above: the same sequence with the context entries cleared in
/// memory but no invalidation issued lets the second write through the cached entries, so the
/// test above would catch a detach that skipped its invalidation.
fn detach_without_invalidation_is_caught(k: &Kernel) -> TestResult {
    stale_context(k, false)
}

/// Address of `rid`'s 16-byte context entry, read from the unit's root table in memory.
fn context_entry_addr(
    unit: &crate::devices::iommu::Unit,
    rid: RequesterId,
) -> Result<u64, Failure> {
    let root = unit.root_table().as_u64();
    let bus = u64::from(rid.bus());
    // SAFETY: the root table is a kernel frame owned by the unit (identity-mapped); entry `bus`
    // lies within its 4 KiB page.
    let lo = unsafe { ((root + bus * 16) as *const u64).read_volatile() };
    check!(lo & 1 == 1, "no context table for bus {bus:#x}");
    Ok((lo & !0xfff) + u64::from(rid.devfn()) * 16)
}

fn stale_context(k: &Kernel, invalidate: bool) -> TestResult {
    clear_faults(k)?;
    let mut e = edus(k)?.into_iter().next().or_fail("edu")?;
    let unit = iommu(k)?
        .unit_for(&k.pci, e.bdf())
        .or_fail("unit")?
        .unit
        .clone();
    let d = domain_for(k, &e)?;
    let rids = d.attached();
    check!(!rids.is_empty(), "nothing attached");
    let mut src = page(0)?;
    pattern(&mut src, 0x2d);
    let mut target = page(0)?;
    map(&d, IOVA_A, &src, Prot::READ)?;
    map(&d, IOVA_B, &target, RW)?;
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(IOVA_A),
        0,
        LEN,
    )
    .or_fail("load buffer")?;
    // Warm: a write through IOVA_B that lands caches the context entry and a writable IOTLB
    // entry, so a stale cache would let the next write through.
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_B),
        0,
        LEN,
    )
    .or_fail("warming write")?;
    check_eq!(
        read_back(&target, LEN as usize),
        src.as_slice()[..LEN as usize].to_vec()
    );
    target.as_mut_slice().fill(0x33);
    let mut saved = Vec::new();
    if invalidate {
        iommu(k)?.detach(&k.pci, &d, e.bdf()).or_fail("detach")?;
        check!(d.attached().is_empty(), "detach left IDs attached");
        for &rid in &rids {
            check!(
                !unit.context_entry(rid).is_some_and(|c| c.present()),
                "context entry of {rid:#06x} still present after detach"
            );
        }
    } else {
        // Deliberately clear the present bits behind the unit's back, without invalidating (the
        // point of this negative control); restored below.
        for &rid in &rids {
            let at = context_entry_addr(&unit, rid)?;
            // SAFETY: `at` is this device's context entry, in a context-table frame owned by the
            // unit (identity-mapped).
            let lo = unsafe { (at as *const u64).read_volatile() };
            check_eq!(unit.context_entry(rid).map(|c| c.lo), Some(lo));
            saved.push((at, lo));
            // SAFETY: as above; tests run alone, so no other CPU writer races this store.
            // Clearing the present bit only removes a translation; the flush makes the store
            // visible to a non-coherent walker.
            unsafe {
                (at as *mut u64).write_volatile(lo & !1);
                core::arch::x86_64::_mm_clflush(at as *const u8);
            }
        }
    }
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_B),
        0,
        LEN,
    )
    .or_fail("write after detach")?;
    let after = read_back(&target, 4096);
    if invalidate {
        check!(
            after.iter().all(|&b| b == 0x33),
            "DMA reached memory after detach"
        );
        expect_one_fault(k, &e, IOVA_B, AccessKind::Write, 2)?;
    } else {
        check!(
            after[..LEN as usize] == src.as_slice()[..LEN as usize],
            "the cached context entry was not used: the control proves nothing"
        );
        // Clean up: restore the entries and complete the invalidation the control skipped; the
        // domain's drop then detaches for real.
        for (at, lo) in saved {
            // SAFETY: as above, writing back the value read there.
            unsafe {
                (at as *mut u64).write_volatile(lo);
                core::arch::x86_64::_mm_clflush(at as *const u8);
            }
        }
        let mut reqs: Vec<Invalidation> = rids
            .iter()
            .map(|&sid| Invalidation::ContextDevice { did: d.did(), sid })
            .collect();
        reqs.push(Invalidation::IotlbDomain { did: d.did() });
        unit.invalidate(&reqs).or_fail("late invalidation")?;
        check!(faults(k)?.is_empty(), "unexpected faults");
    }
    Ok(())
}

/// Two edu devices in two domains: the same IOVA reaches each domain's own page, and a device
/// cannot reach an IOVA mapped only in the other domain.
fn domains_isolated(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut all = edus(k)?;
    check!(all.len() >= 2, "needs two edu devices");
    let (mut e1, mut e2) = (all.remove(0), all.remove(0));
    let (d1, d2) = (domain_for(k, &e1)?, domain_for(k, &e2)?);
    let mut src1 = page(0)?;
    pattern(&mut src1, 1);
    let mut src2 = page(0)?;
    pattern(&mut src2, 2);
    let (dst1, dst2) = (page(0)?, page(0)?);
    map(&d1, IOVA_A, &src1, Prot::READ)?;
    map(&d2, IOVA_A, &src2, Prot::READ)?;
    map(&d1, IOVA_B, &dst1, Prot::WRITE)?;
    map(&d2, IOVA_B + 0x1000, &dst2, Prot::WRITE)?;
    edu_dev::dma(
        &mut e1,
        Transfer::ReadFromMemory,
        DmaAddr::new(IOVA_A),
        0,
        LEN,
    )
    .or_fail("e1 read")?;
    edu_dev::dma(
        &mut e2,
        Transfer::ReadFromMemory,
        DmaAddr::new(IOVA_A),
        0,
        LEN,
    )
    .or_fail("e2 read")?;
    edu_dev::dma(
        &mut e1,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_B),
        0,
        LEN,
    )
    .or_fail("e1 write")?;
    check_eq!(
        read_back(&dst1, LEN as usize),
        src1.as_slice()[..LEN as usize].to_vec()
    );
    // e2 writes to IOVA_B, mapped only in d1: blocked, dst1 keeps e1's bytes.
    edu_dev::dma(
        &mut e2,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_B),
        0,
        LEN,
    )
    .or_fail("e2 write")?;
    check_eq!(
        read_back(&dst1, LEN as usize),
        src1.as_slice()[..LEN as usize].to_vec()
    );
    check!(
        read_back(&dst2, 4096).iter().all(|&b| b == 0),
        "e2's own page changed"
    );
    expect_one_fault(k, &e2, IOVA_B, AccessKind::Write, 5)?;
    // e2's own read of IOVA_A went to its own page: writing its buffer back through its own
    // mapping yields src2, not src1.
    edu_dev::dma(
        &mut e2,
        Transfer::WriteToMemory,
        DmaAddr::new(IOVA_B + 0x1000),
        0,
        LEN,
    )
    .or_fail("e2 own write")?;
    check_eq!(
        read_back(&dst2, LEN as usize),
        src2.as_slice()[..LEN as usize].to_vec()
    );
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// Which level holds the leaf for `iova`, read from the table in memory (1 = 4 KiB,
/// 2 = 2 MiB, 3 = 1 GiB): proves a superpage was really used.
fn leaf_level(d: &Domain, iova: u64) -> Option<u8> {
    let mut table = d.table_root()?.as_u64();
    for level in (1..=d.levels().count()).rev() {
        let index = (iova >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
        // SAFETY: table pages are identity-mapped kernel frames owned by the domain.
        let entry = unsafe { ((table + index * 8) as *const u64).read_volatile() };
        if entry & 3 == 0 {
            return None;
        }
        if level == 1 || entry & (1 << 7) != 0 {
            return Some(level);
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    None
}

fn superpage(k: &Kernel, size: u64, iova: u64, level: u8) -> TestResult {
    clear_faults(k)?;
    let mut e = edus(k)?.into_iter().next().or_fail("edu")?;
    check!(
        e.dma_mask() >= iova + size - 1,
        "edu.dma_mask {:#x} cannot reach {iova:#x}+{size:#x}",
        e.dma_mask()
    );
    let frames = (size / 4096) as usize;
    let big = PhysPages::alloc(FrameRequest {
        count: frames,
        align: frames,
        limit: None,
        min: 0,
    })
    .or_fail("aligned run")?;
    let d = domain_for(k, &e)?;
    d.map(DmaAddr::new(iova), PhysAddr::new(big.paddr()), size, RW)
        .or_fail("map")?;
    d.sync_map(DmaAddr::new(iova), size).or_fail("sync")?;
    check_eq!(leaf_level(&d, iova), Some(level));
    let mut src = page(0)?;
    pattern(&mut src, 0x77);
    map(&d, 0x1000, &src, Prot::READ)?;
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(0x1000),
        0,
        LEN,
    )
    .or_fail("load")?;
    // Write near the start and into the last page of the superpage.
    for off in [0x3000, size - 0x1000] {
        edu_dev::dma(
            &mut e,
            Transfer::WriteToMemory,
            DmaAddr::new(iova + off),
            0,
            LEN,
        )
        .or_fail("write")?;
        // SAFETY: off + LEN lies within the owned run.
        let got: Vec<u8> = (0..LEN)
            .map(|i| unsafe { big.as_ptr().add((off + i) as usize).read_volatile() })
            .collect();
        check_eq!(&got[..], &src.as_slice()[..LEN as usize]);
    }
    check!(faults(k)?.is_empty(), "unexpected faults");
    unmap(&d, iova, size)?;
    unmap(&d, 0x1000, 4096)?;
    Ok(())
}

fn superpage_2m(k: &Kernel) -> TestResult {
    superpage(k, 2 << 20, 0x40_0000, 2)
}

fn superpage_1g(k: &Kernel) -> TestResult {
    superpage(k, 1 << 30, 1 << 30, 3)
}
