//! Helpers shared by the DMA test suites: edu binding, pages with patterns, volatile read-back,
//! fault collection and the single-fault assertion.

use alloc::vec::Vec;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use edu::Edu;
use iommu_vtd::{AccessKind, FaultRecord, RequesterId};
use kernel::cmdline::CommandLine;
use kernel::frames::FrameRequest;
use x86_64::instructions::port::Port;

use crate::devices::edu as edu_dev;
use crate::devices::faults;
use crate::devices::iommu::{Domain, Iommu};
use crate::ktest::{Failure, OrFail, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub fn iommu(k: &Kernel) -> Result<&Iommu, Failure> {
    k.iommu
        .as_ref()
        .or_fail("no IOMMU (scenario without intel-iommu?)")
}

pub fn cmd_u64(k: &Kernel, key: &str) -> Option<u64> {
    CommandLine::new(k.boot.cmdline()).number(key)
}

pub fn edus(k: &Kernel) -> Result<Vec<Edu>, Failure> {
    let mask = cmd_u64(k, "edu.dma_mask").unwrap_or(edu::DEFAULT_DMA_MASK);
    // SAFETY: tests run one at a time and every test drops its bindings before it returns.
    let all = unsafe { edu_dev::bind_all(&k.pci, mask) }.or_fail("binding edu")?;
    check!(!all.is_empty(), "no edu device in this topology");
    Ok(all)
}

/// A fresh domain with `edu` attached (under all of its requester IDs).
pub fn domain_for(k: &Kernel, edu: &Edu) -> Result<Domain, Failure> {
    let iommu = iommu(k)?;
    let d = iommu
        .domain_for(&k.pci, edu.bdf())
        .or_fail("creating a domain")?;
    iommu
        .attach(&k.pci, &d, edu.bdf())
        .or_fail("attaching edu")?;
    Ok(d)
}

pub fn map(d: &Domain, iova: u64, pages: &PhysPages, prot: Prot) -> TestResult {
    d.map(
        DmaAddr::new(iova),
        PhysAddr::new(pages.paddr()),
        pages.len() as u64,
        prot,
    )
    .or_fail("map")?;
    d.sync_map(DmaAddr::new(iova), pages.len() as u64)
        .or_fail("sync_map")
}

pub fn unmap(d: &Domain, iova: u64, len: u64) -> TestResult {
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(iova), len, &mut g).or_fail("unmap")?;
    d.flush(g).or_fail("flush")
}

pub fn page(fill: u8) -> Result<PhysPages, Failure> {
    let mut p = PhysPages::alloc(FrameRequest::one()).or_fail("a page")?;
    p.as_mut_slice().fill(fill);
    Ok(p)
}

pub fn pattern(p: &mut PhysPages, seed: u8) {
    for (i, b) in p.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
}

/// The first `len` bytes of `p` (at most its size), read with volatile loads: a device wrote
/// them behind the compiler's back.
pub fn read_back(p: &PhysPages, len: usize) -> Vec<u8> {
    (0..len.min(p.len()))
        // SAFETY: i < p.len(): within the owned, mapped allocation.
        .map(|i| unsafe { p.as_ptr().add(i).read_volatile() })
        .collect()
}

/// The checksum the tests print (FNV-1a).
pub use kernel::fnv1a as checksum;

/// Discards every fault record (collected by the fault-event handler or still in a unit).
pub fn clear_faults(k: &Kernel) -> TestResult {
    for i in 0..iommu(k)?.units.len() {
        faults::discard(i);
    }
    Ok(())
}

/// Every fault since the last call: what the fault-event handler collected and what is still
/// pending in each unit (read and cleared exactly once, `devices::faults::take`).
pub fn faults(k: &Kernel) -> Result<Vec<FaultRecord>, Failure> {
    let mut out = Vec::new();
    for i in 0..iommu(k)?.units.len() {
        let taken = faults::take(i);
        check_eq!(taken.lost, 0);
        for f in &taken.log.records {
            kprintln!("  vt-d fault: {f}");
        }
        out.extend(taken.log.records);
    }
    Ok(out)
}

/// The requester ID the IOMMU sees for this edu (its last DMA alias).
pub fn source_id(k: &Kernel, edu: &Edu) -> Result<RequesterId, Failure> {
    Ok(k.pci
        .topology
        .iommu_source_id(edu.bdf())
        .or_fail("source id")?
        .requester_id())
}

/// Exactly one fault: from `edu`, at the page of `addr`, of this access kind and reason.
pub fn expect_one_fault(
    k: &Kernel,
    edu: &Edu,
    addr: u64,
    access: AccessKind,
    reason: u8,
) -> TestResult {
    let f = faults(k)?;
    check_eq!(f.len(), 1);
    check_eq!(f[0].source, source_id(k, edu)?);
    check_eq!(f[0].address, addr & !0xfff);
    check_eq!(f[0].access, access);
    check_eq!(f[0].reason.raw(), reason);
    // `faults` read and cleared exactly that record: reading again finds nothing.
    let again = faults(k)?;
    check!(
        again.is_empty(),
        "fault records still pending after read-and-clear: {again:?}"
    );
    clear_faults(k)
}

/// `edu` reads a page patterned with `seed` through a `ToDevice` mapping of `dev` and writes the
/// first `len` bytes back through a `FromDevice` mapping; `check` sees each mapping's DMA address
/// first. Returns the bytes that arrived, checked equal to the source.
pub fn round_trip(
    e: &mut Edu,
    dev: &dma::DmaDevice,
    seed: u8,
    len: u64,
    check: impl Fn(DmaAddr) -> TestResult,
) -> Result<Vec<u8>, Failure> {
    use dma::{Attrs, Direction};
    use edu::Transfer;
    let mut src = page(0)?;
    pattern(&mut src, seed);
    let dst = page(0)?;
    let map = |p: &PhysPages, dir, what| {
        dev.map_phys(PhysAddr::new(p.paddr()), len, dir, Attrs::empty())
            .or_fail(what)
    };
    let ms = map(&src, Direction::ToDevice, "map src")?;
    let md = map(&dst, Direction::FromDevice, "map dst")?;
    check(ms.dma_addr())?;
    check(md.dma_addr())?;
    edu_dev::dma(e, Transfer::ReadFromMemory, ms.dma_addr(), 0, len).or_fail("edu read")?;
    edu_dev::dma(e, Transfer::WriteToMemory, md.dma_addr(), 0, len).or_fail("edu write")?;
    md.sync_for_cpu().or_fail("sync")?;
    let got = read_back(&dst, len as usize);
    check_eq!(&got[..], &src.as_slice()[..len as usize]);
    ms.unmap().or_fail("unmap src")?;
    md.unmap().or_fail("unmap dst")?;
    Ok(got)
}

/// PIT channel 0 command: lobyte/hibyte access, mode 0 (interrupt on terminal count), binary.
const PIT_CH0_MODE0: u8 = 0b0011_0000;
const PIT_CMD: u16 = 0x43;
const PIT_CH0: u16 = 0x40;
/// About 2 ms of PIT ticks.
pub const PIT_2MS: u16 = 2386;

/// Arms PIT channel 0 as a one-shot: its output (ISA IRQ 0) rises once after `ticks`
/// (1.193182 MHz).
pub fn pit_one_shot(ticks: u16) {
    let [lo, hi] = ticks.to_le_bytes();
    // SAFETY: ports 0x40/0x43 are PIT channel 0 and the mode register; channel 0 is used by
    // nothing else in this kernel (the TSC calibration uses channel 2); the write sequence is
    // command, low byte, high byte, as programmed.
    unsafe {
        Port::<u8>::new(PIT_CMD).write(PIT_CH0_MODE0);
        Port::<u8>::new(PIT_CH0).write(lo);
        Port::<u8>::new(PIT_CH0).write(hi);
    }
}
