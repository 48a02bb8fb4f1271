//! A hypervisor's device assignment (issue 14) over the host fakes: two VMs whose guest RAM is
//! host RAM at different host-physical bases, an edu assigned to VM1, moved to VM2 (one atomic
//! context-entry store), then quarantined. Where a device access to a guest-physical address
//! (GPA) goes is shown by the fake unit's DMA walk (`FakeVtd::dma`), which needs no memory
//! behind the host-physical addresses (HPAs). Real hardware: the same calls over
//! `pci::Ecam`, `iommu_vtd::MmioRegisters` and your `Platform`; the evidence is then bytes in
//! the VM's RAM and the unit's fault records (the kernel's `vm` QEMU suite does exactly that).
use std::error::Error;
use std::sync::{mpsc, Arc};

use dma::guest::{count_leaves, GuestError, GuestMemoryMap, GuestRegion, LeafCounts, RegionKind};
use dma::iommu::{IommuDomain, Prot};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Dmar, FaultReason, GroupOwner, UnitConfig, VtdUnit};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::reset::{set_bus_master, ResetMethod};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::Bdf;
use vtd_examples::fixtures::{COMPLEX_ACPI, COMPLEX_CFG};
use vtd_platform::{context_domain, AssignHooks, AssignPolicy, AssignTarget, Assigner};
use vtd_platform::{Fault, FaultRouter, Iommu, PciState, RateLimit, RmrrInfo, UnitEntry};

const GIB: u64 = 1 << 30;
/// The GPA the guest programs into the device: in the 2 MiB-leaf part of guest RAM.
const X: u64 = 0x2345_6000;
/// A GPA in the legacy hole: never mapped, so a DMA there is the guest's own fault.
const HOLE: u64 = 0xB_8000;

/// A PC-like 3 GiB guest whose GPA `g` is backed by host RAM at `base + g`: low RAM, the legacy
/// hole, RAM to 3 GiB, then the PCI hole (which holds the MSI window, never RAM).
fn guest_map(base: u64) -> Result<GuestMemoryMap, GuestError> {
    let region = |gpa, len, kind| GuestRegion {
        gpa,
        len,
        hpa: base + gpa,
        kind,
        prot: Prot::READ | Prot::WRITE,
    };
    GuestMemoryMap::new(&[
        region(0, 0xA_0000, RegionKind::Ram),
        region(0xA_0000, 0x6_0000, RegionKind::Reserved),
        region(0x10_0000, 3 * GIB - 0x10_0000, RegionKind::Ram),
        region(3 * GIB, GIB, RegionKind::Reserved),
    ])
}

/// The hypervisor's device layer. Nothing is exported here, so a revoke is only recorded.
/// Real hardware: revoke the peer-to-peer exports of the BARs; wait on a calibrated clock.
#[derive(Default)]
struct Hooks(Vec<Bdf>);

impl AssignHooks for Hooks {
    fn revoke_exports(&mut self, bdf: Bdf) -> Result<(), ()> {
        self.0.push(bdf);
        Ok(())
    }
    fn delay_us(&mut self, _us: u32) {}
}

pub fn main() -> Result<(), Box<dyn Error>> {
    // PCI and VT-d as in `embed`, on QEMU's "complex" machine: its edu behind a root port is a
    // group of one that the port's secondary-bus reset reaches, so assignment resets it. (The
    // default machine's edu sits on bus 0, has no reset method and would need
    // `AssignPolicy { require_reset: false, .. }`: whatever it queued could reach the next VM.)
    let regions = pci::mcfg::parse(&acpi_table_bytes(COMPLEX_ACPI, "MCFG"))?;
    let cfg = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG)?; // real: pci::Ecam
    let topology = pci::enumerate(&cfg, &regions);
    apply_acs_policy(&cfg, &topology, AcsPolicy::Isolate);
    let groups = pci::group::compute(&cfg, &topology);
    // The edu alone in its group (behind a root port): the guests' device.
    let alone = |b: &Bdf| groups.group_of(*b).is_some_and(|g| g.members().len() == 1);
    let edu = topology.find(0x1234, 0x11e8).map(|f| f.bdf).find(alone);
    let edu = edu.ok_or("no edu in a group of its own")?;
    let rids = groups.group_of(edu).map_or(0, |g| g.requester_ids().len());
    let pci = PciState { topology, groups };
    let dmar_bytes = acpi_table_bytes(COMPLEX_ACPI, "DMAR");
    let dmar = Dmar::parse(&dmar_bytes)?;
    let platform = Arc::new(HostPlatform::new()); // real: your iommu_vtd::Platform
    let mut iommu = Iommu::new(dmar.host_address_width());
    for drhd in dmar.drhds() {
        let regs = FakeVtd::qemu_default(platform.clone()); // real: MmioRegisters
        let config = UnitConfig::new(dmar.host_address_width());
        let unit = Arc::new(VtdUnit::new(regs, platform.clone(), config)?);
        unit.enable()?;
        let levels = unit.capabilities().cap.usable_levels().last();
        let entry = UnitEntry::new(unit, &drhd, &pci.topology, levels.ok_or("no depth")?);
        iommu.units.push(entry.0);
    }
    // An RMRR member (firmware DMAs there) can never be assigned; QEMU lists none.
    let rmrrs = dmar.rmrrs().map(|r| RmrrInfo::resolve(&r, &pci.topology));
    iommu.rmrrs.extend(rmrrs);
    let unit = &iommu.unit_for(&pci, edu).ok_or("no unit for edu")?.unit;
    // A DMA write by edu to `gpa`: the HPA it reaches, or the fault the unit recorded.
    // Real hardware: program edu with the GPA and look for the bytes at the HPA.
    let dma = |gpa| unit.registers().dma(edu.requester_id(), gpa, true);

    // Two VMs, guest RAM at host-physical 4 GiB and 7 GiB (1 GiB aligned: 1 GiB leaves fit).
    let (base1, base2) = (4 * GIB, 7 * GIB);
    let mut vms = Vec::new();
    for (id, base) in [(1, base1), (2, base2)] {
        let vm = iommu.create_guest(&pci, edu, id)?;
        let map = guest_map(base)?;
        let leaves = vm.space().populate(&map)?;
        let mut planned = LeafCounts::default(); // the model: each RAM region's leaf plan
        for r in map.regions().iter().filter(|r| r.kind == RegionKind::Ram) {
            planned += count_leaves(r.gpa, r.hpa, r.len, vm.hw().info().page_sizes)?;
        }
        assert_eq!((leaves, leaves.bytes()), (planned, map.ram_bytes()));
        let (did, k4, m2, g1) = (vm.did(), leaves.k4, leaves.m2, leaves.g1);
        println!("VM{id}: did {did}, RAM at HPA {base:#x}: {k4} 4K + {m2} 2M + {g1} 1G leaves");
        vms.push(vm);
    }
    let (vm1, vm2) = (&vms[0], &vms[1]);
    // Faults of a VM's devices go to that VM (real hardware: from the fault-event handler).
    let (tx, seen) = mpsc::channel();
    let mut router = FaultRouter::new(RateLimit::default());
    for vm in &vms {
        let (tx, id) = (tx.clone(), vm.vm());
        let callback = move |f: &Fault| tx.send((id, f.record.address)).unwrap_or(());
        router.register(0, vm.did(), Box::new(callback))?; // 0: the unit, in DMAR order
    }
    assert!(dma(X).is_err(), "no owner yet: isolated by default");
    unit.clear_faults();

    // Every move: quiesce (bus mastering off), revoke exports, reset, switch the entries.
    let assigner = Assigner::new();
    let mut hooks = Hooks::default();
    let policy = AssignPolicy::default(); // untrusted, reset required
    let mut assign = |to: AssignTarget<'_, _, _>| {
        assigner.assign(&iommu, &pci, &cfg, edu, to, &mut hooks, policy)
    };
    let r = assign(AssignTarget::Guest(vm1))?;
    let (method, reset) = r.resets.first().ok_or("edu was not reset")?;
    assert!(matches!(method, ResetMethod::SecondaryBus { .. }) && reset[..] == [edu]);
    assert_eq!(cfg.reset_count(edu), 1);
    // The guest's driver turns bus mastering on (real hardware: via its virtual config space).
    let was_on = set_bus_master(&cfg, edu, true)?;
    assert!(!was_on, "assignment left bus mastering off");
    let leaf = vm1.hw().leaf(X).ok_or("X unmapped")?; // read from the table itself
    let want = (base1 + X, 2 << 20, 2, Ok(base1 + X));
    assert_eq!((leaf.phys, leaf.size, leaf.level, dma(X)), want);
    let (hpa, level) = (leaf.phys, leaf.level);
    println!("{edu} -> VM1 ({method}): GPA {X:#x} -> HPA {hpa:#x}, a level-{level} leaf");

    // VM1 -> VM2 with the IOTLB warm from that DMA: one 128-bit store per requester ID, then
    // the context cache and VM1's IOTLB invalidated. Same GPA, VM2's backing, no fault.
    let s = assign(AssignTarget::Guest(vm2))?.vtd;
    assert_eq!(s.from_did, Some(vm1.did()));
    let owner = unit.group_owner(r.group);
    assert_eq!(owner, Some(GroupOwner::Assigned { did: vm2.did() }));
    set_bus_master(&cfg, edu, true)?;
    assert_eq!(
        dma(X),
        Ok(base2 + X),
        "a stale VM1 translation: {:#x}",
        base1 + X
    );
    assert!(unit.read_faults().records.is_empty(), "the switch faulted");
    let (e, a, i) = (s.entries_written, s.atomic_stores, s.invalidations);
    // Per requester ID of the group: one entry, one atomic store, one context-cache
    // invalidation (tagged with VM1's DID); then one domain-selective IOTLB invalidation.
    let rids = u32::try_from(rids)?;
    assert_eq!((e, a, i), (rids, rids, rids + 1));
    let hpa = base2 + X;
    println!("{edu} VM1 -> VM2: GPA {X:#x} -> HPA {hpa:#x}, no fault");
    println!("  {e} entry written, {a} atomic store, {i} invalidations (context, IOTLB)");

    // A DMA into VM2's hole faults, and the fault (at the GPA) goes to VM2's callback.
    assert_eq!(dma(HOLE), Err(FaultReason::WriteNotPermitted));
    let log = unit.read_and_clear_faults();
    router.dispatch(0, &log, 0, |rid| context_domain(unit, rid));
    assert_eq!(seen.try_iter().collect::<Vec<_>>(), [(2, HOLE)]);
    println!("{edu} DMA to GPA {HOLE:#x} (a hole of VM2): the fault went to VM2");

    // Quarantine: no present context entry, every DMA faults (reason 2) and is recorded.
    assign(AssignTarget::Quarantine)?;
    assert_eq!(dma(X), Err(FaultReason::ContextEntryNotPresent));
    let log = unit.read_and_clear_faults();
    let f = *log.records.first().ok_or("no fault recorded")?;
    let want = (edu.requester_id(), X, FaultReason::ContextEntryNotPresent);
    let got = (f.source, f.address, f.reason);
    assert_eq!((log.records.len(), got), (1, want));
    println!("{edu} quarantined: {f}");
    assert_eq!(hooks.0, [edu; 3], "every move revoked edu's exports first");
    assigner.release_to_host(&iommu, &pci, edu)?; // host drivers may attach it again
    Ok(())
}
