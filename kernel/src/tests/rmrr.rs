//! RMRR identity maps exist from boot (VT-d §8.4: the OS must keep an RMRR reachable for the
//! devices it names from the moment translation is on, as Linux installs them at probe), not
//! only once a driver sets the device up; a driver that binds later joins the same domain, and
//! no IOVA space ever hands the region out.
//!
//! QEMU's DMAR has no RMRR, so the scenario adds one on the command line (`vtd.rmrr=`), which
//! the kernel treats exactly like a firmware one. Evidence: bytes the device moved through the
//! identity map with no driver set-up, and a fault for an address outside it (the device is in
//! a real domain, not passed through).

use dma::iommu::IommuDomain;
use dma::{DeviceConfig, DmaAddr, PhysAddr};
use edu::{Edu, Transfer};
use iommu_vtd::AccessKind;
use kernel::frames::FrameRequest;

use super::common::*;
use crate::devices::dmamem;
use crate::devices::edu as edu_dev;
use crate::devices::iommu::RmrrInfo;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "rmrr",
    explicit_only: true,
    tests: &[
        Test {
            name: "identity_mapped_from_boot",
            run: identity_mapped_from_boot,
        },
        Test {
            name: "driver_joins_the_boot_domain",
            run: driver_joins_the_boot_domain,
        },
    ],
};

const LEN: u64 = 256;

/// The edu an RMRR names, and that RMRR.
fn rmrr_edu(k: &Kernel) -> Result<(Edu, RmrrInfo), Failure> {
    let iommu = iommu(k)?;
    for e in edus(k)? {
        if let Some(r) = iommu.rmrrs.iter().find(|r| r.devices.contains(&e.bdf())) {
            return Ok((e, r.clone()));
        }
    }
    Err(Failure::new(
        "no RMRR names an edu (vtd.rmrr= missing?)".into(),
    ))
}

/// The RMRR's memory, reached by the CPU through the identity mapping of low memory.
fn rmrr_bytes(r: &RmrrInfo, offset: u64, len: u64) -> Result<&'static mut [u8], Failure> {
    check!(offset + len <= r.limit - r.base + 1, "outside the region");
    // SAFETY: the region is RAM below 1 MiB that the frame allocator never hands out
    // (identity-mapped by the boot page tables); tests run alone, and only this test and the
    // device it drives touch it.
    Ok(unsafe { core::slice::from_raw_parts_mut((r.base + offset) as *mut u8, len as usize) })
}

/// With no driver set-up at all: the device reads a pattern from the region's first half and
/// writes it into the second half through identity IOVAs, and its write to a page outside the
/// region is blocked (reason 5, the page unchanged): a domain with the RMRR mapped has been
/// attached since boot.
fn identity_mapped_from_boot(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let (mut e, r) = rmrr_edu(k)?;
    let half = r.page_range().1 / 2;
    let src = rmrr_bytes(&r, 0, LEN)?;
    for (i, b) in src.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(7);
    }
    let expected = src.to_vec();
    rmrr_bytes(&r, half, LEN)?.fill(0);
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(r.base),
        0,
        LEN,
    )
    .or_fail("edu read")?;
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(r.base + half),
        0,
        LEN,
    )
    .or_fail("edu write")?;
    let got: alloc::vec::Vec<u8> = rmrr_bytes(&r, half, LEN)?
        .iter()
        // SAFETY: reading the bytes the device wrote, volatile (behind the compiler's back).
        .map(|b| unsafe { (b as *const u8).read_volatile() })
        .collect();
    check_eq!(got, expected);
    kprintln!(
        "  {} moved {LEN} bytes {:#x} -> {:#x} through the boot-time RMRR identity map, checksum {:#010x}",
        e.bdf(),
        r.base,
        r.base + half,
        checksum(&got)
    );
    check!(faults(k)?.is_empty(), "unexpected faults");
    // Outside the region nothing is mapped: the device is translated, not passed through.
    let mut sentinel = PhysPages::alloc(FrameRequest {
        limit: Some(((e.dma_mask() + 1) >> 12) as usize),
        ..FrameRequest::one()
    })
    .or_fail("sentinel")?;
    sentinel.as_mut_slice().fill(0xa5);
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(sentinel.paddr()),
        0,
        LEN,
    )
    .or_fail("stray write")?;
    check!(
        read_back(&sentinel, 4096).iter().all(|&b| b == 0xa5),
        "a write outside the RMRR reached memory"
    );
    expect_one_fault(k, &e, sentinel.paddr(), AccessKind::Write, 5)
}

/// A driver set up later joins the group's boot-time domain (same domain ID), whose IOVA space
/// keeps the RMRR out; its mappings work; and when the driver's handle is gone the RMRR is still
/// reachable (the boot attachment keeps the group attached).
fn driver_joins_the_boot_domain(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let iommu = iommu(k)?;
    let (mut e, r) = rmrr_edu(k)?;
    let boot_did = iommu
        .boot_attachments
        .lock()
        .iter()
        .find(|(m, _)| m.bdf() == e.bdf())
        .map(|(m, _)| m.domain().did())
        .or_fail("no boot attachment for the RMRR device")?;
    let config = DeviceConfig {
        mask: e.dma_mask(),
        ..DeviceConfig::default()
    }
    .trusted();
    let d = dmamem::setup(&k.pci, Some(iommu), e.bdf(), config).or_fail("setup")?;
    let hw = d.hw.as_ref().or_fail("domain")?;
    check_eq!(hw.did(), boot_did);
    check_eq!(
        hw.translate(DmaAddr::new(r.base)).map(|(p, _)| p),
        Some(PhysAddr::new(r.base))
    );
    let (region_start, region_end) = (r.base, r.limit + 1);
    let sent = round_trip(&mut e, &d.dev, 0x21, LEN, |dma| {
        let a = dma.as_u64();
        check!(
            a + LEN <= region_start || a >= region_end,
            "IOVA {a:#x} handed out inside the RMRR"
        );
        Ok(())
    })?;
    drop(d);
    // The driver is gone; the RMRR must still be reachable (the device still holds the bytes it
    // just moved in its buffer).
    let half = r.page_range().1 / 2;
    rmrr_bytes(&r, half, LEN)?.fill(0);
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(r.base + half),
        0,
        LEN,
    )
    .or_fail("write into the RMRR")?;
    let got: alloc::vec::Vec<u8> = rmrr_bytes(&r, half, LEN)?
        .iter()
        // SAFETY: as above.
        .map(|b| unsafe { (b as *const u8).read_volatile() })
        .collect();
    check_eq!(got, sent);
    check!(faults(k)?.is_empty(), "unexpected faults");
    kprintln!(
        "  {} joined boot domain {boot_did}; RMRR still reachable after its driver left",
        e.bdf()
    );
    Ok(())
}
