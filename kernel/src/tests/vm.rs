//! Device assignment as a hypervisor does it (issue 14), on QEMU's q35 + intel-iommu with edu
//! and ivshmem devices. A "VM" is a guest-physical address space ([`GuestDomain`]) whose RAM
//! is host RAM at its own host-physical base (VM1 at 4 GiB, VM2 at 7 GiB: `-m 9G`); there is no
//! running guest (TCG has no VMX, SPEC.md), so the guest's driver is played by this suite: it
//! programs edu with guest-physical addresses.
//!
//! Evidence is what the device did: bytes found at the host-physical backing of a GPA, bytes
//! left unchanged, and the fault records the unit took. Topology (tests-qemu `vm` scenario):
//! edu on the root bus (the importer of the ivshmem export), edu behind its own root port
//! (the assigned device: a secondary-bus reset reaches it and nothing else), ivshmem behind a
//! root port, and two edus behind a PCIe-to-PCI bridge (one isolation group of two).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;

use dma::guest::{count_leaves, plan_chunks, GuestMemoryMap, GuestRegion, LeafCounts, RegionKind};
use dma::iommu::{IommuDomain, Prot};
use dma::{Direction, DmaAddr, ExportRange, MoveEvent};
use edu::{Edu, Transfer};
use iommu_vtd::context::ContextEntry;
use iommu_vtd::{AccessKind, GroupOwner};
use kernel::frames::FrameRequest;
use pci::reset::ResetMethod;
use pci::{Bdf, ConfigSpace};
use vtd_platform::{AssignError, AssignHooks, AssignPolicy, AssignTarget, Assigner};

use super::common::*;
use super::p2p::ivshmem_bdf;
use crate::arch::time;
use crate::devices::edu as edu_dev;
use crate::devices::faults;
use crate::devices::iommu::{Domain, KernelPlatform};
use crate::devices::p2p::ProviderDevice;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

type Guest = vtd_platform::GuestDomain<iommu_vtd::MmioRegisters, KernelPlatform>;
type KAssigner = Assigner<iommu_vtd::MmioRegisters, KernelPlatform>;

pub const SUITE: Suite = Suite {
    name: "vm",
    explicit_only: true,
    tests: &[
        Test {
            name: "guest_memory_mixes_leaf_sizes",
            run: guest_memory_mixes_leaf_sizes,
        },
        Test {
            name: "reassignment_between_guests",
            run: reassignment_between_guests,
        },
        Test {
            name: "reassignment_without_invalidation_is_caught",
            run: reassignment_without_invalidation_is_caught,
        },
        Test {
            name: "quarantined_group_faults",
            run: quarantined_group_faults,
        },
        Test {
            name: "pass_through_reaches_physical_memory",
            run: pass_through_reaches_physical_memory,
        },
        Test {
            name: "partly_owned_group_refused",
            run: partly_owned_group_refused,
        },
        Test {
            name: "assignment_revokes_exports_and_resets",
            run: assignment_revokes_exports_and_resets,
        },
        Test {
            name: "guest_faults_reach_their_vm",
            run: guest_faults_reach_their_vm,
        },
        Test {
            name: "guest_interrupts_follow_the_device",
            run: guest_interrupts_follow_the_device,
        },
    ],
};

const GIB: u64 = 1 << 30;
/// Guest RAM per VM (3 GiB, below the guest's MSI window).
const GUEST_RAM: u64 = 3 * GIB;
/// Bytes each edu transfer moves.
const LEN: u64 = 256;
/// The GPA the guest's "driver" fills and edu reads from (a 4 KiB leaf).
const SRC_GPA: u64 = 0x1000;
/// GPAs edu writes to: in the 4 KiB, 2 MiB and 1 GiB parts of the guest map.
const GPA_4K: u64 = 0x9_0000;
const GPA_2M: u64 = 0x2345_6000;
const GPA_1G: u64 = 0x8765_4000;

/// A PC-like guest memory map over host RAM at `base`: RAM below the legacy hole, the hole,
/// RAM from 1 MiB to 1 GiB, RAM from 1 GiB to 3 GiB. GPA `g` is backed by `base + g`.
fn guest_map(base: u64) -> Result<GuestMemoryMap, Failure> {
    let rw = Prot::READ | Prot::WRITE;
    let ram = |gpa: u64, len: u64| GuestRegion {
        gpa,
        len,
        hpa: base + gpa,
        kind: RegionKind::Ram,
        prot: rw,
    };
    GuestMemoryMap::new(&[
        ram(0, 0xA_0000),
        GuestRegion {
            gpa: 0xA_0000,
            len: 0x6_0000,
            hpa: 0,
            kind: RegionKind::Reserved,
            prot: Prot::empty(),
        },
        ram(0x10_0000, GIB - 0x10_0000),
        ram(GIB, GUEST_RAM - GIB),
    ])
    .or_fail("guest memory map")
}

/// One VM: its guest domain and the host RAM backing its guest RAM.
struct Vm {
    guest: Arc<Guest>,
    ram: PhysPages,
    leaves: LeafCounts,
}

impl Vm {
    /// A VM whose RAM lies at or above `min_gib` GiB (1 GiB aligned), on `bdf`'s unit.
    fn new(k: &Kernel, bdf: Bdf, id: u32, min_gib: u64) -> Result<Self, Failure> {
        let frames = |bytes: u64| (bytes / 4096) as usize;
        let ram = PhysPages::alloc_unzeroed(FrameRequest {
            count: frames(GUEST_RAM),
            align: frames(GIB),
            limit: None,
            min: frames(min_gib * GIB),
        })
        .or_fail("guest RAM (the scenario boots with -m 9G)")?;
        let guest = iommu(k)?
            .create_guest(&k.pci, bdf, id)
            .or_fail("guest domain")?;
        let leaves = guest
            .space()
            .populate(&guest_map(ram.paddr())?)
            .or_fail("populate")?;
        Ok(Self { guest, ram, leaves })
    }

    fn hpa(&self, gpa: u64) -> u64 {
        self.ram.paddr() + gpa
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: `gpa + i` < GUEST_RAM: inside the owned, identity-mapped backing.
            unsafe { ((self.hpa(gpa) + i as u64) as *mut u8).write_volatile(b) };
        }
    }

    /// Zeroes `[gpa, gpa + len)` (the backing is not zeroed at allocation: an earlier test's
    /// bytes may be there).
    fn zero(&self, gpa: u64, len: u64) {
        self.write(gpa, &alloc::vec![0u8; len as usize]);
    }

    fn read(&self, gpa: u64, len: u64) -> Vec<u8> {
        (0..len)
            // SAFETY: as in `write`.
            .map(|i| unsafe { ((self.hpa(gpa) + i) as *const u8).read_volatile() })
            .collect()
    }

    fn hw(&self) -> &Domain {
        self.guest.hw()
    }
}

fn pattern_of(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The guest's "driver": edu copies `LEN` bytes from `src` to `dst` (both guest-physical).
fn guest_copy(e: &mut Edu, src: u64, dst: u64) -> TestResult {
    edu_dev::dma(e, Transfer::ReadFromMemory, DmaAddr::new(src), 0, LEN).or_fail("edu read")?;
    edu_dev::dma(e, Transfer::WriteToMemory, DmaAddr::new(dst), 0, LEN).or_fail("edu write")
}

/// The edu behind its own root port (group of one, reset by the port's secondary-bus reset).
fn assigned_edu(k: &Kernel) -> Result<Edu, Failure> {
    let groups = k.pci.groups();
    edus(k)?
        .into_iter()
        .find(|e| {
            k.pci.topology.parent(e.bdf()).is_some()
                && groups
                    .group_of(e.bdf())
                    .is_some_and(|g| g.members().len() == 1)
        })
        .or_fail("an edu behind a root port")
}

/// The test's stand-in for a hypervisor's device layer: revokes the exports of the providers
/// it was given, records what it was asked, waits with the TSC.
struct Hooks<'a> {
    providers: Vec<&'a mut ProviderDevice>,
    revoked: Vec<Bdf>,
}

impl AssignHooks for Hooks<'_> {
    fn revoke_exports(&mut self, bdf: Bdf) -> Result<(), ()> {
        for p in self.providers.iter_mut().filter(|p| p.bdf() == bdf) {
            p.revoke().map_err(|_| ())?;
        }
        self.revoked.push(bdf);
        Ok(())
    }

    fn delay_us(&mut self, us: u32) {
        time::delay_us(u64::from(us));
    }
}

fn hooks<'a>() -> Hooks<'a> {
    Hooks {
        providers: Vec::new(),
        revoked: Vec::new(),
    }
}

fn assign(
    k: &Kernel,
    a: &KAssigner,
    bdf: Bdf,
    target: AssignTarget<'_, iommu_vtd::MmioRegisters, KernelPlatform>,
    policy: AssignPolicy,
) -> Result<vtd_platform::AssignReport, AssignError> {
    let Some(iommu) = k.iommu.as_ref() else {
        return Err(AssignError::NoUnit(bdf));
    };
    a.assign(
        iommu,
        &k.pci,
        &k.pci.ecam,
        bdf,
        target,
        &mut hooks(),
        policy,
    )
}

/// Assigns `bdf`'s group to `guest` (default policy: reset required, untrusted), then plays the
/// guest's driver turning bus mastering on (it is off after every assignment).
fn give(
    k: &Kernel,
    a: &KAssigner,
    bdf: Bdf,
    guest: &Arc<Guest>,
    what: &str,
) -> Result<vtd_platform::AssignReport, Failure> {
    let report = assign(
        k,
        a,
        bdf,
        AssignTarget::Guest(guest),
        AssignPolicy::default(),
    )
    .or_fail(what)?;
    guest_enables_dma(k, bdf)?;
    Ok(report)
}

/// The guest's driver turns bus mastering on (it is off after every assignment).
fn guest_enables_dma(k: &Kernel, bdf: Bdf) -> TestResult {
    pci::reset::set_bus_master(&k.pci.ecam, bdf, true)
        .map(|_| ())
        .or_fail("bus master on")
}

/// Back to the host: quarantine, then release.
fn return_to_host(k: &Kernel, a: &KAssigner, bdf: Bdf) -> TestResult {
    assign(k, a, bdf, AssignTarget::Quarantine, AssignPolicy::default()).or_fail("quarantine")?;
    a.release_to_host(iommu(k)?, &k.pci, bdf)
        .or_fail("release to host")
}

/// 3 GiB of guest RAM in a PC-like map: 4 KiB leaves below 2 MiB, 2 MiB leaves to 1 GiB,
/// 1 GiB leaves above. The leaf counts are the plan's (computed, checked against the table for
/// each probed GPA), and a DMA to a GPA in each part lands at that GPA's host-physical backing.
fn guest_memory_mixes_leaf_sizes(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut e = assigned_edu(k)?;
    let vm = Vm::new(k, e.bdf(), 1, 4)?;
    let map = guest_map(vm.ram.paddr())?;
    let mut want = LeafCounts::default();
    for r in map.regions().iter().filter(|r| r.kind == RegionKind::Ram) {
        let c =
            count_leaves(r.gpa, r.hpa, r.len, vm.hw().info().page_sizes).or_fail("count leaves")?;
        want.k4 += c.k4;
        want.m2 += c.m2;
        want.g1 += c.g1;
    }
    kprintln!(
        "  VM1 RAM at {:#x}: {} MiB guest RAM in {} leaves (4K {}, 2M {}, 1G {})",
        vm.ram.paddr(),
        map.ram_bytes() >> 20,
        vm.leaves.total(),
        vm.leaves.k4,
        vm.leaves.m2,
        vm.leaves.g1
    );
    check_eq!(vm.leaves, want);
    check!(
        want.k4 > 0 && want.m2 > 0 && want.g1 > 0,
        "the map should mix all three sizes"
    );
    let a = KAssigner::new();
    give(k, &a, e.bdf(), &vm.guest, "assign to VM1")?;
    let src = pattern_of(0x51);
    vm.write(SRC_GPA, &src);
    for (gpa, size) in [(GPA_4K, 4096u64), (GPA_2M, 2 << 20), (GPA_1G, GIB)] {
        let leaf = vm.hw().leaf(gpa).or_fail("leaf")?;
        let region = map
            .regions()
            .iter()
            .find(|r| r.gpa <= gpa && gpa < r.gpa + r.len)
            .or_fail("region")?;
        let planned = plan_chunks(
            region.gpa,
            region.hpa,
            region.len,
            vm.hw().info().page_sizes,
        )
        .or_fail("plan")?
        .find(|c| c.gpa <= gpa && gpa < c.gpa + c.size)
        .or_fail("planned chunk")?;
        kprintln!(
            "  GPA {gpa:#x}: leaf {} KiB at level {} -> HPA {:#x}",
            leaf.size >> 10,
            leaf.level,
            leaf.phys
        );
        check_eq!(leaf.size, size);
        check_eq!(planned.size, size);
        check_eq!(leaf.phys, vm.hpa(gpa));
        vm.zero(gpa, LEN + 64);
        guest_copy(&mut e, SRC_GPA, gpa)?;
        check_eq!(vm.read(gpa, LEN), src);
        // Nothing before or after the transfer changed.
        check_eq!(vm.read(gpa + LEN, 64), alloc::vec![0u8; 64]);
    }
    check!(faults(k)?.is_empty(), "unexpected faults");
    return_to_host(k, &a, e.bdf())
}

/// VM1 owns edu; a DMA lands in VM1's RAM (and warms the IOTLB and context cache); the group
/// is reassigned to VM2 (quiesce, reset, one 128-bit store per requester ID, context cache and
/// VM1's IOTLB invalidated); the same GPA now lands in VM2's RAM, VM1's is unchanged, and no
/// fault was recorded at any point.
fn reassignment_between_guests(k: &Kernel) -> TestResult {
    reassign(k, true)
}

/// Negative control for the test above: the same switch written straight into the context
/// table with no invalidation lets the second DMA through VM1's cached translation, so the
/// test above would catch a reassignment that skipped its invalidations.
fn reassignment_without_invalidation_is_caught(k: &Kernel) -> TestResult {
    reassign(k, false)
}

fn reassign(k: &Kernel, invalidate: bool) -> TestResult {
    clear_faults(k)?;
    let mut e = assigned_edu(k)?;
    let vm1 = Vm::new(k, e.bdf(), 1, 4)?;
    let vm2 = Vm::new(k, e.bdf(), 2, 7)?;
    let a = KAssigner::new();
    give(k, &a, e.bdf(), &vm1.guest, "assign to VM1")?;
    let (p1, p2) = (pattern_of(0x11), pattern_of(0x77));
    vm1.write(SRC_GPA, &p1);
    vm2.write(SRC_GPA, &p2);
    vm1.zero(GPA_2M, LEN);
    vm2.zero(GPA_2M, LEN);
    guest_copy(&mut e, SRC_GPA, GPA_2M)?;
    check_eq!(vm1.read(GPA_2M, LEN), p1);
    // VM1's copy is cleared, so a DMA reaching it again is seen.
    vm1.write(GPA_2M, &[0; LEN as usize]);
    let unit = iommu(k)?
        .unit_for(&k.pci, e.bdf())
        .or_fail("unit")?
        .unit
        .clone();
    let rid = source_id(k, &e)?;
    if invalidate {
        let t = time::now_us();
        let report = assign(
            k,
            &a,
            e.bdf(),
            AssignTarget::Guest(&vm2.guest),
            AssignPolicy::default(),
        )
        .or_fail("reassign to VM2")?;
        kprintln!(
            "  reassigned VM1 (did {}) -> VM2 (did {}) in {} us: {} atomic store(s), {} invalidation(s), reset {:?}",
            vm1.guest.did(),
            vm2.guest.did(),
            time::now_us() - t,
            report.vtd.atomic_stores,
            report.vtd.invalidations,
            report.resets
        );
        check_eq!(report.vtd.from_did, Some(vm1.guest.did()));
        check!(report.vtd.atomic_stores >= 1, "no atomic store");
        check_eq!(
            unit.group_owner(report.group),
            Some(GroupOwner::Assigned {
                did: vm2.guest.did()
            })
        );
        guest_enables_dma(k, e.bdf())?;
    } else {
        // Deliberately no invalidation: VM2's entry written in memory only.
        let entry = unit.context_entry(rid).or_fail("context entry")?;
        check_eq!(entry.did(), vm1.guest.did());
        let new = ContextEntry::translated(
            vm2.hw().table_root().or_fail("VM2 table")?,
            vm2.hw().levels(),
            vm2.guest.did(),
        );
        write_context_entry(&unit, rid, new)?;
    }
    guest_copy(&mut e, SRC_GPA, GPA_2M)?;
    let in_vm1 = vm1.read(GPA_2M, LEN);
    let in_vm2 = vm2.read(GPA_2M, LEN);
    if invalidate {
        check_eq!(in_vm2, p2);
        check_eq!(in_vm1, alloc::vec![0u8; LEN as usize]);
        check!(faults(k)?.is_empty(), "the switch made a DMA fault");
    } else {
        check!(
            in_vm1 == p1 && in_vm2 != p2,
            "the stale translation was not used: the control proves nothing (VM1 {:x?}.., VM2 {:x?}..)",
            &in_vm1[..8],
            &in_vm2[..8]
        );
        // Finish the switch properly (the tracked owner is still VM1).
        assign(
            k,
            &a,
            e.bdf(),
            AssignTarget::Guest(&vm2.guest),
            AssignPolicy::default(),
        )
        .or_fail("reassign to VM2")?;
        check!(faults(k)?.is_empty(), "unexpected faults");
    }
    return_to_host(k, &a, e.bdf())
}

/// Writes `entry` as `rid`'s context entry straight into the table (for the negative control
/// only: the supported path is the unit's).
fn write_context_entry(
    unit: &crate::devices::iommu::Unit,
    rid: pci::RequesterId,
    entry: ContextEntry,
) -> TestResult {
    let root = unit.root_table().as_u64();
    let bus = u64::from(rid.bus());
    // SAFETY: the root table is a kernel frame owned by the unit (identity-mapped); entry
    // `bus` lies within it.
    let lo = unsafe { ((root + bus * 16) as *const u64).read_volatile() };
    check!(lo & 1 == 1, "no context table for bus {bus:#x}");
    let at = (lo & !0xfff) + u64::from(rid.devfn()) * 16;
    // SAFETY: `at` is rid's 16-byte entry in a context table the unit owns; the control
    // writes the same two halves the unit would (high half first, present low half last).
    unsafe {
        ((at + 8) as *mut u64).write_volatile(entry.hi);
        (at as *mut u64).write_volatile(entry.lo);
    }
    // ECAP.C = 0 on QEMU: write the line back as the unit does.
    // SAFETY: clflush of a mapped kernel address.
    unsafe { core::arch::x86_64::_mm_clflush(at as *const u8) };
    Ok(())
}

/// A quarantined group (no present context entry) cannot DMA: the write faults at the context
/// entry (reason 2) from the device's requester ID, the guest RAM it reached before stays as
/// it was, and host drivers cannot attach it until it is released.
fn quarantined_group_faults(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut e = assigned_edu(k)?;
    let vm = Vm::new(k, e.bdf(), 1, 4)?;
    let a = KAssigner::new();
    give(k, &a, e.bdf(), &vm.guest, "assign to VM1")?;
    let p = pattern_of(0x23);
    vm.write(SRC_GPA, &p);
    vm.zero(GPA_4K, LEN);
    guest_copy(&mut e, SRC_GPA, GPA_4K)?; // warms the caches
    check_eq!(vm.read(GPA_4K, LEN), p);
    vm.write(GPA_4K, &[0; LEN as usize]);
    assign(
        k,
        &a,
        e.bdf(),
        AssignTarget::Quarantine,
        AssignPolicy::default(),
    )
    .or_fail("quarantine")?;
    let rid = source_id(k, &e)?;
    let unit = iommu(k)?
        .unit_for(&k.pci, e.bdf())
        .or_fail("unit")?
        .unit
        .clone();
    check!(
        !unit.context_entry(rid).is_some_and(|c| c.present()),
        "a quarantined group kept a present context entry"
    );
    guest_enables_dma(k, e.bdf())?;
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(GPA_4K),
        0,
        LEN,
    )
    .or_fail("edu write")?;
    check_eq!(vm.read(GPA_4K, LEN), alloc::vec![0u8; LEN as usize]);
    expect_one_fault(k, &e, GPA_4K, AccessKind::Write, 2)?;
    // Host drivers cannot take it while quarantined.
    let host = iommu(k)?.domain_for(&k.pci, e.bdf()).or_fail("domain")?;
    check!(
        iommu(k)?.attach(&k.pci, &host, e.bdf()).is_err(),
        "a host domain attached a quarantined group"
    );
    a.release_to_host(iommu(k)?, &k.pci, e.bdf())
        .or_fail("release")?;
    iommu(k)?
        .attach(&k.pci, &host, e.bdf())
        .or_fail("attach after release")?;
    iommu(k)?.detach(&k.pci, &host, e.bdf()).or_fail("detach")
}

/// Pass-through is refused for an untrusted group; for a trusted one the device's DMA address
/// is the physical address (TT = 10 where ECAP.PT; QEMU offers it).
fn pass_through_reaches_physical_memory(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut e = assigned_edu(k)?;
    let a = KAssigner::new();
    let refused = assign(
        k,
        &a,
        e.bdf(),
        AssignTarget::PassThrough,
        AssignPolicy::default(),
    );
    check!(
        matches!(refused, Err(AssignError::Untrusted(_))),
        "pass-through of an untrusted group: {refused:?}"
    );
    let trusted = AssignPolicy {
        trusted: true,
        ..AssignPolicy::default()
    };
    let report =
        assign(k, &a, e.bdf(), AssignTarget::PassThrough, trusted).or_fail("pass-through")?;
    let unit = iommu(k)?
        .unit_for(&k.pci, e.bdf())
        .or_fail("unit")?
        .unit
        .clone();
    let entry = unit.context_entry(source_id(k, &e)?).or_fail("entry")?;
    kprintln!(
        "  pass-through: context entry {:#018x}_{:#018x} (TT {}), {} store(s)",
        entry.hi,
        entry.lo,
        entry.translation_type(),
        report.vtd.entries_written
    );
    check_eq!(entry.translation_type(), 2);
    guest_enables_dma(k, e.bdf())?;
    // Physical pages below edu's 32-bit mask.
    let mut src = page(0)?;
    pattern(&mut src, 0x6b);
    let dst = page(0)?;
    check!(dst.paddr() < 1 << 32, "page above the edu mask");
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(src.paddr()),
        0,
        LEN,
    )
    .or_fail("edu read")?;
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(dst.paddr()),
        0,
        LEN,
    )
    .or_fail("edu write")?;
    check_eq!(
        read_back(&dst, LEN as usize),
        &src.as_slice()[..LEN as usize]
    );
    check!(faults(k)?.is_empty(), "unexpected faults");
    return_to_host(k, &a, e.bdf())
}

/// Two edus behind a PCIe-to-PCI bridge share one group (their DMA carries the bridge's
/// requester ID). With a host driver holding one, assigning the other is refused and nothing
/// changes; once the host lets go, the whole group is assigned, and one secondary-bus reset of
/// the bridge resets both.
fn partly_owned_group_refused(k: &Kernel) -> TestResult {
    let all = edus(k)?;
    let pair: Vec<Edu> = {
        let groups = k.pci.groups();
        let shares = |a: &Edu| {
            all.iter().any(|b| {
                b.bdf() != a.bdf()
                    && groups
                        .group_of(a.bdf())
                        .is_some_and(|g| g.contains(b.bdf()))
            })
        };
        let keep: Vec<Bdf> = all.iter().filter(|e| shares(e)).map(|e| e.bdf()).collect();
        drop(groups);
        all.into_iter()
            .filter(|e| keep.contains(&e.bdf()))
            .collect()
    };
    check_eq!(pair.len(), 2);
    let (host_bdf, guest_bdf) = (pair[0].bdf(), pair[1].bdf());
    let iommu = iommu(k)?;
    let vm = Vm::new(k, guest_bdf, 1, 4)?;
    let rid = k
        .pci
        .topology
        .iommu_source_id(guest_bdf)
        .or_fail("source id")?
        .requester_id();
    let unit = iommu
        .unit_for(&k.pci, guest_bdf)
        .or_fail("unit")?
        .unit
        .clone();
    let host = Arc::new(iommu.domain_for(&k.pci, host_bdf).or_fail("host domain")?);
    let member = iommu
        .attach_member(&k.pci, &host, host_bdf)
        .or_fail("host driver attach")?;
    let before = unit.context_entry(rid);
    let a = KAssigner::new();
    let refused = assign(
        k,
        &a,
        guest_bdf,
        AssignTarget::Guest(&vm.guest),
        AssignPolicy::default(),
    );
    kprintln!("  assigning {guest_bdf} while {host_bdf} is a host member: {refused:?}");
    check!(
        matches!(refused, Err(AssignError::GroupInUse { member, .. }) if member == host_bdf),
        "assignment of a partly host-owned group was not refused"
    );
    check_eq!(unit.context_entry(rid), before);
    drop(member);
    let report = assign(
        k,
        &a,
        guest_bdf,
        AssignTarget::Guest(&vm.guest),
        AssignPolicy::default(),
    )
    .or_fail("assign the whole group")?;
    kprintln!("  then assigned: resets {:?}", report.resets);
    check!(
        report.members.contains(&host_bdf) && report.members.contains(&guest_bdf),
        "the whole group moves: {:?}",
        report.members
    );
    check!(
        matches!(report.resets.as_slice(), [(ResetMethod::SecondaryBus { .. }, f)]
            if f.contains(&host_bdf) && f.contains(&guest_bdf)),
        "one bus reset of both members expected"
    );
    return_to_host(k, &a, guest_bdf)
}

/// A configuration space that records every write, so the order of quiesce, revoke and reset
/// can be checked.
struct Recording<'a, C: ConfigSpace> {
    inner: &'a C,
    log: RefCell<Vec<(Bdf, u16, u32)>>,
}

impl<C: ConfigSpace> ConfigSpace for Recording<'_, C> {
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.inner.read8(bdf, offset)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.inner.read16(bdf, offset)
    }
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.inner.read32(bdf, offset)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.log.borrow_mut().push((bdf, offset, value.into()));
        self.inner.write8(bdf, offset, value);
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.log.borrow_mut().push((bdf, offset, value.into()));
        self.inner.write16(bdf, offset, value);
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.log.borrow_mut().push((bdf, offset, value));
        self.inner.write32(bdf, offset, value);
    }
}

/// ivshmem behind a root port exports BAR2 to the root-bus edu; assigning ivshmem's group to
/// a guest first turns its bus mastering off, revokes the export (the importer is notified
/// once and its stale IOVA then faults), resets it by the port's secondary-bus reset (seen in
/// the recorded configuration writes, after the revoke), restores its BARs, and only then
/// switches its context entry.
fn assignment_revokes_exports_and_resets(k: &Kernel) -> TestResult {
    use alloc::boxed::Box;
    clear_faults(k)?;
    let ivsh = ivshmem_bdf(k)?;
    let mut importer = edus(k)?
        .into_iter()
        .find(|e| k.pci.topology.parent(e.bdf()).is_none())
        .or_fail("an edu on the root bus")?;
    let dev = crate::devices::dmamem::setup(
        &k.pci,
        k.iommu.as_ref(),
        importer.bdf(),
        dma::DeviceConfig {
            mask: importer.dma_mask(),
            trusted: true,
            ..dma::DeviceConfig::default()
        },
    )
    .or_fail("importer DMA")?;
    let events = Arc::new(spin::Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x2000,
            }],
        )
        .or_fail("export")?;
    let att = handle
        .attach(dma::Importer {
            id: pci::p2p::device_id(importer.bdf()),
            dev: dev.dev.clone(),
            peer_to_peer: true,
            move_notify: Box::new(move |e| ev.lock().push(e)),
        })
        .or_fail("attach")?;
    let m = att.map(Direction::FromDevice).or_fail("map")?;
    let iova = m.segments()[0].addr.as_u64();
    edu_dev::dma(
        &mut importer,
        Transfer::WriteToMemory,
        DmaAddr::new(iova),
        0,
        LEN,
    )
    .or_fail("importer write (warms)")?;
    let vm = Vm::new(k, ivsh, 1, 4)?;
    let rec = Recording {
        inner: &k.pci.ecam,
        log: RefCell::new(Vec::new()),
    };
    let a = KAssigner::new();
    let mut h = Hooks {
        providers: alloc::vec![&mut prov],
        revoked: Vec::new(),
    };
    let report = a
        .assign(
            iommu(k)?,
            &k.pci,
            &rec,
            ivsh,
            AssignTarget::Guest(&vm.guest),
            &mut h,
            AssignPolicy::default(),
        )
        .or_fail("assign ivshmem")?;
    let revoked = h.revoked.clone();
    drop(h);
    kprintln!(
        "  ivshmem {ivsh} -> VM1: revoked {revoked:?}, resets {:?}, importer saw {:?}",
        report.resets,
        events.lock()
    );
    check_eq!(revoked, alloc::vec![ivsh]);
    check_eq!(events.lock().clone(), alloc::vec![MoveEvent::Revoked]);
    check!(m.is_stale(), "the importer's mapping is not stale");
    let bridge = match report.resets.as_slice() {
        [(ResetMethod::SecondaryBus { bridge }, f)] if f == &alloc::vec![ivsh] => *bridge,
        other => return Err(Failure::new(alloc::format!("resets: {other:?}"))),
    };
    // Order in the recorded writes: ivshmem's Command (bus master off) before the bridge's
    // Bridge Control with SBR set, and BAR restores after it.
    let log = rec.log.borrow();
    let bm_off = log
        .iter()
        .position(|&(b, off, v)| b == ivsh && off == 0x04 && v & 0x4 == 0)
        .or_fail("bus master off")?;
    let sbr = log
        .iter()
        .position(|&(b, off, v)| b == bridge && off == 0x3e && v & 0x40 != 0)
        .or_fail("secondary bus reset")?;
    let bar_restore = log
        .iter()
        .rposition(|&(b, off, _)| b == ivsh && (0x10..0x28).contains(&off))
        .or_fail("BAR restore")?;
    check!(bm_off < sbr && sbr < bar_restore, "order: {log:x?}");
    drop(log);
    // The importer's stale IOVA no longer reaches the BAR.
    clear_faults(k)?;
    edu_dev::dma(
        &mut importer,
        Transfer::WriteToMemory,
        DmaAddr::new(iova),
        0,
        LEN,
    )
    .or_fail("importer write after assign")?;
    expect_one_fault(k, &importer, iova, AccessKind::Write, 5)?;
    drop(m);
    drop(att);
    return_to_host(k, &a, ivsh)
}

/// Each VM registers a fault callback for its own domain: a guest DMA to a GPA its map lacks
/// reaches VM1's callback with that guest-physical address and nothing reaches VM2's; after the
/// device moves to VM2, the same fault reaches VM2's callback.
fn guest_faults_reach_their_vm(k: &Kernel) -> TestResult {
    use core::sync::atomic::{AtomicU64, Ordering};
    static VM1_LAST: AtomicU64 = AtomicU64::new(0);
    static VM1_COUNT: AtomicU64 = AtomicU64::new(0);
    static VM2_LAST: AtomicU64 = AtomicU64::new(0);
    static VM2_COUNT: AtomicU64 = AtomicU64::new(0);
    for s in [&VM1_LAST, &VM1_COUNT, &VM2_LAST, &VM2_COUNT] {
        s.store(0, Ordering::Relaxed);
    }
    clear_faults(k)?;
    let mut e = assigned_edu(k)?;
    let vm1 = Vm::new(k, e.bdf(), 1, 4)?;
    let vm2 = Vm::new(k, e.bdf(), 2, 7)?;
    faults::register(vm1.hw(), |f| {
        VM1_LAST.store(f.record.address, Ordering::Relaxed);
        VM1_COUNT.fetch_add(1, Ordering::AcqRel);
    })
    .or_fail("register VM1")?;
    faults::register(vm2.hw(), |f| {
        VM2_LAST.store(f.record.address, Ordering::Relaxed);
        VM2_COUNT.fetch_add(1, Ordering::AcqRel);
    })
    .or_fail("register VM2")?;
    let result = (|| {
        let a = KAssigner::new();
        // In the legacy hole: never mapped.
        let hole: u64 = 0xB_0000;
        for (vm, target, last, count, other) in [
            (&vm1, &vm1.guest, &VM1_LAST, &VM1_COUNT, &VM2_COUNT),
            (&vm2, &vm2.guest, &VM2_LAST, &VM2_COUNT, &VM1_COUNT),
        ] {
            assign(
                k,
                &a,
                e.bdf(),
                AssignTarget::Guest(target),
                AssignPolicy::default(),
            )
            .or_fail("assign")?;
            guest_enables_dma(k, e.bdf())?;
            check!(
                vm.guest.space().translate(hole).is_none(),
                "the hole is mapped"
            );
            let (c0, o0) = (count.load(Ordering::Acquire), other.load(Ordering::Acquire));
            edu_dev::dma(&mut e, Transfer::WriteToMemory, DmaAddr::new(hole), 0, LEN)
                .or_fail("edu write")?;
            // Polling collects and dispatches what the interrupt handler has not.
            let _ = faults(k)?;
            kprintln!(
                "  VM{}: callback saw {} fault(s), last GPA {:#x}",
                vm.guest.vm(),
                count.load(Ordering::Acquire) - c0,
                last.load(Ordering::Acquire)
            );
            check_eq!(count.load(Ordering::Acquire) - c0, 1);
            check_eq!(last.load(Ordering::Acquire), hole);
            check_eq!(other.load(Ordering::Acquire), o0);
        }
        return_to_host(k, &a, e.bdf())
    })();
    faults::unregister(vm1.hw());
    faults::unregister(vm2.hw());
    result
}

fn vm1_vector_handler(_: u8) {}
fn vm2_vector_handler(_: u8) {}

/// A vector standing for a guest's interrupt (a hypervisor would inject it into the VM).
struct HostVector(u8);

impl HostVector {
    fn new(handler: crate::arch::irq::Handler) -> Result<Self, Failure> {
        let v = crate::arch::irq::alloc_vector().or_fail("alloc_vector")?;
        crate::arch::irq::register(v, handler).or_fail("register")?;
        Ok(Self(v))
    }
}

impl Drop for HostVector {
    fn drop(&mut self) {
        let _ = crate::arch::irq::free_vector(self.0);
    }
}

/// Raises edu's interrupt; returns the deliveries on `v` (waits for one when `must_arrive`).
fn raise(e: &Edu, v: u8, must_arrive: bool) -> Result<u64, Failure> {
    use crate::arch::irq;
    let before = irq::delivered(v);
    e.raise_interrupt(1);
    if must_arrive {
        irq::wait_delivery(v, before, 200_000).or_fail("guest interrupt")?;
    }
    time::delay_us(if must_arrive { 5_000 } else { 50_000 });
    e.ack_interrupt(1);
    Ok(irq::delivered(v) - before)
}

/// VM1's vector is remapped for edu (an IRTE checking edu's source ID) and delivered; when edu
/// moves to VM2 that IRTE is cleared with its interrupt-entry-cache invalidation, so the MSI edu
/// still has programmed (restored by the reset) reaches nothing; VM2's own IRTE then delivers
/// on VM2's vector and never on VM1's.
fn guest_interrupts_follow_the_device(k: &Kernel) -> TestResult {
    use iommu_vtd::Destination;
    use pci::msi::Msi;
    let iommu = iommu(k)?;
    check!(
        iommu
            .units
            .iter()
            .all(|u| u.unit.interrupt_remapping_enabled()),
        "the vm scenario runs with interrupt remapping on"
    );
    let e = assigned_edu(k)?;
    let bdf = e.bdf();
    let dest = Destination::XApic(u8::try_from(crate::arch::apic::id()).or_fail("xAPIC id")?);
    let (v1, v2) = (
        HostVector::new(vm1_vector_handler)?,
        HostVector::new(vm2_vector_handler)?,
    );
    let vm1 = Vm::new(k, bdf, 1, 4)?;
    let vm2 = Vm::new(k, bdf, 2, 7)?;
    let a = KAssigner::new();
    // Not assigned to VM1 yet: refused.
    check!(
        matches!(
            vm1.guest.remap_interrupts(&a, &k.pci, bdf, &[v1.0], dest),
            Err(AssignError::NotAssignedHere(_))
        ),
        "remapped interrupts for a device the guest does not own"
    );
    give(k, &a, bdf, &vm1.guest, "assign to VM1")?;
    let m1 = vm1
        .guest
        .remap_interrupts(&a, &k.pci, bdf, &[v1.0], dest)
        .or_fail("VM1's IRTE")?;
    let irte1 = vm1.guest.irte_indices(bdf);
    let mut msi = Msi::new(&k.pci.ecam, bdf).or_fail("msi")?;
    msi.configure(1, m1).or_fail("configure")?;
    msi.enable().or_fail("enable")?;
    check_eq!(raise(&e, v1.0, true)?, 1);
    let report = assign(
        k,
        &a,
        bdf,
        AssignTarget::Guest(&vm2.guest),
        AssignPolicy::default(),
    )
    .or_fail("reassign to VM2")?;
    check_eq!(report.interrupts_revoked, 1);
    check!(vm1.guest.irte_indices(bdf).is_empty(), "VM1 kept its IRTE");
    guest_enables_dma(k, bdf)?;
    // The reset restored MSI with VM1's message: it names a cleared IRTE now.
    let unit = iommu.unit_for(&k.pci, bdf).or_fail("unit")?.unit.clone();
    for &i in &irte1 {
        check!(
            unit.irte_raw(i).is_none_or(|(lo, _)| lo & 1 == 0),
            "VM1's IRTE {i} is still present"
        );
    }
    let stale = raise(&e, v1.0, false)?;
    kprintln!("  after reassignment, VM1's old message delivered {stale} time(s) on VM1's vector");
    check_eq!(stale, 0);
    let m2 = vm2
        .guest
        .remap_interrupts(&a, &k.pci, bdf, &[v2.0], dest)
        .or_fail("VM2's IRTE")?;
    msi.disable().or_fail("disable")?;
    msi.configure(1, m2).or_fail("configure")?;
    msi.enable().or_fail("enable")?;
    check_eq!(raise(&e, v2.0, true)?, 1);
    check_eq!(raise(&e, v1.0, false)?, 0);
    msi.disable().or_fail("disable")?;
    return_to_host(k, &a, bdf)
}
