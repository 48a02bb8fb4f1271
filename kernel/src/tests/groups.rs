//! Isolation groups on hardware: the functions of one group (two edus behind one
//! `pcie-pci-bridge`, whose DMA carries the same alias; or the functions of a multifunction
//! device without ACS) share one domain, both move bytes through it, the pair cannot be split
//! across domains, and detaching one member leaves the group's context entries to the other
//! until the last one leaves.
//!
//! Evidence is what the devices did: bytes in memory, bytes not written, VT-d fault records.
//! The scenarios select this suite only on topologies with a two-function group.

use dma::iommu::{IommuDomain, Prot};
use dma::{DeviceConfig, DmaAddr, PhysAddr};
use edu::{Edu, Transfer};
use iommu_vtd::{AccessKind, VtdError};

use super::common::*;
use crate::devices::dmamem::{self, DeviceDma};
use crate::devices::edu as edu_dev;
use crate::devices::iommu::AttachError;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "groups",
    explicit_only: true,
    tests: &[
        Test {
            name: "pair_is_one_group",
            run: pair_is_one_group,
        },
        Test {
            name: "pair_shares_one_domain",
            run: pair_shares_one_domain,
        },
        Test {
            name: "pair_cannot_be_split",
            run: pair_cannot_be_split,
        },
        Test {
            name: "last_member_detaches",
            run: last_member_detaches,
        },
    ],
};

const LEN: u64 = 256;
/// An IOVA the last test maps by hand in the shared domain (below edu's 28-bit mask; nothing
/// else maps in that domain meanwhile).
const IOVA: u64 = 0x0fe0_0000;

/// The first two edus that share a group.
fn pair(k: &Kernel) -> Result<(Edu, Edu), Failure> {
    let mut all = edus(k)?;
    let groups = k.pci.groups();
    let (i, j) = (0..all.len())
        .flat_map(|i| (i + 1..all.len()).map(move |j| (i, j)))
        .find(|&(i, j)| {
            let g = |n: usize| groups.group_of(all[n].bdf()).map(|g| g.id());
            g(i).is_some() && g(i) == g(j)
        })
        .or_fail("two edus in one isolation group")?;
    let b = all.remove(j);
    let a = all.remove(i);
    Ok((a, b))
}

fn device(k: &Kernel, e: &Edu) -> Result<DeviceDma, Failure> {
    let config = DeviceConfig {
        mask: e.dma_mask(),
        ..DeviceConfig::default()
    }
    .trusted();
    dmamem::setup(&k.pci, k.iommu.as_ref(), e.bdf(), config).or_fail("DMA device setup")
}

/// The group holds both functions and every requester ID either one's DMA can carry.
fn pair_is_one_group(k: &Kernel) -> TestResult {
    let (a, b) = pair(k)?;
    let groups = k.pci.groups();
    let g = groups.group_of(a.bdf()).or_fail("group of a")?;
    check!(g.contains(a.bdf()) && g.contains(b.bdf()));
    for e in [&a, &b] {
        for rid in k
            .pci
            .topology
            .dma_requester_ids(e.bdf())
            .or_fail("aliases")?
        {
            check!(
                g.requester_ids().contains(&rid),
                "alias {rid:#06x} of {} missing from group {}",
                e.bdf(),
                g.id()
            );
        }
    }
    kprintln!(
        "  group {}: members {:?}, requester IDs {:04x?}",
        g.id(),
        g.members(),
        g.requester_ids()
            .iter()
            .map(|r| r.get())
            .collect::<alloc::vec::Vec<u16>>()
    );
    Ok(())
}

/// Both members set up for the DMA API get the group's one default domain, and both move bytes
/// through it.
fn pair_shares_one_domain(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let (mut a, mut b) = pair(k)?;
    let da = device(k, &a)?;
    let db = device(k, &b)?;
    let (ha, hb) = (
        da.hw.as_ref().or_fail("a's domain")?,
        db.hw.as_ref().or_fail("b's domain")?,
    );
    check!(
        alloc::sync::Arc::ptr_eq(ha, hb),
        "the group's members got different domains ({} and {})",
        ha.did(),
        hb.did()
    );
    for (n, (e, d)) in [(&mut a, &da), (&mut b, &db)].into_iter().enumerate() {
        let got = round_trip(e, &d.dev, 0x30 + n as u8, LEN, |_| Ok(()))?;
        kprintln!(
            "  {} through shared domain {}: {LEN} bytes, checksum {:#010x}",
            e.bdf(),
            ha.did(),
            checksum(&got)
        );
    }
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// While one member is attached to the group's default domain, neither member can be attached
/// to another domain (the group would be split): refused with `GroupAttachedElsewhere`, and the
/// refusal changed nothing (the attached member still moves bytes).
fn pair_cannot_be_split(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let iommu = iommu(k)?;
    let (mut a, b) = pair(k)?;
    let da = device(k, &a)?;
    let did = da.hw.as_ref().or_fail("a's domain")?.did();
    let other = iommu.domain_for(&k.pci, b.bdf()).or_fail("second domain")?;
    for e in [&b, &a] {
        match iommu.attach(&k.pci, &other, e.bdf()) {
            Err(AttachError::Vtd(VtdError::GroupAttachedElsewhere { did: held, .. })) => {
                check_eq!(held, did);
                kprintln!(
                    "  attaching {} to domain {}: refused, its group is in domain {held}",
                    e.bdf(),
                    other.did()
                );
            }
            Err(e) => return Err(Failure::new(alloc::format!("wrong refusal: {e}"))),
            Ok(_) => {
                return Err(Failure::new(alloc::format!(
                    "{} attached to a second domain",
                    e.bdf()
                )))
            }
        }
    }
    check!(
        other.attached_groups().is_empty(),
        "the refused attach left state behind"
    );
    round_trip(&mut a, &da.dev, 0x50, LEN, |_| Ok(()))?;
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// Detaching one member keeps the group's context entries (the other member's DMA, which may
/// carry the very same alias, still lands); the last member's detach clears them: the next DMA
/// faults with reason 2 (no context entry) although the IOVA is still mapped in the domain.
/// Both landing writes warmed the context cache and IOTLB first, so a detach that skipped its
/// invalidation would let the last write through.
fn last_member_detaches(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let (mut a, mut b) = pair(k)?;
    let da = device(k, &a)?;
    let db = device(k, &b)?;
    let hw = da.hw.clone().or_fail("domain")?;
    let target = page(0)?;
    hw.map(
        DmaAddr::new(IOVA),
        PhysAddr::new(target.paddr()),
        4096,
        Prot::READ | Prot::WRITE,
    )
    .or_fail("map")?;
    hw.sync_map(DmaAddr::new(IOVA), 4096).or_fail("sync_map")?;
    let mut src = page(0)?;
    let staging = IOVA + 0x10_0000; // still below the mask
                                    // Loads a distinct pattern into the device's buffer from a mapped source page.
    let load = |e: &mut Edu, seed: u8, src: &mut crate::mem::PhysPages| -> TestResult {
        pattern(src, seed);
        hw.map(
            DmaAddr::new(staging),
            PhysAddr::new(src.paddr()),
            4096,
            Prot::READ,
        )
        .or_fail("map source")?;
        hw.sync_map(DmaAddr::new(staging), 4096)
            .or_fail("sync source")?;
        edu_dev::dma(e, Transfer::ReadFromMemory, DmaAddr::new(staging), 0, LEN).or_fail("load")?;
        super::common::unmap(&hw, staging, 4096)
    };
    let write_out = |e: &mut Edu| {
        edu_dev::dma(e, Transfer::WriteToMemory, DmaAddr::new(IOVA), 0, LEN).or_fail("write")
    };
    let expect = |src: &crate::mem::PhysPages| src.as_slice()[..LEN as usize].to_vec();
    load(&mut b, 0x61, &mut src)?;
    write_out(&mut b)?;
    check_eq!(read_back(&target, LEN as usize), expect(&src));
    drop(db);
    load(&mut a, 0x62, &mut src)?;
    write_out(&mut a)?;
    // After one member left, the other's DMA must still land.
    check_eq!(read_back(&target, LEN as usize), expect(&src));
    let before = read_back(&target, LEN as usize);
    // The device now holds bytes that differ from the target's, so a write that got through
    // would show.
    load(&mut a, 0x63, &mut src)?;
    check!(expect(&src) != before);
    check!(
        faults(k)?.is_empty(),
        "unexpected faults before the last detach"
    );
    drop(da);
    write_out(&mut a)?;
    // Memory must be unchanged after the last detach.
    check_eq!(read_back(&target, LEN as usize), before);
    let f = faults(k)?;
    check_eq!(f.len(), 1);
    check_eq!(f[0].source, source_id(k, &a)?);
    check_eq!(f[0].access, AccessKind::Write);
    check_eq!(f[0].reason.raw(), 2);
    clear_faults(k)?;
    kprintln!("  last member detached: the write faulted with reason 2, memory unchanged");
    super::common::unmap(&hw, IOVA, 4096)
}
