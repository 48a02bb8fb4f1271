//! Embedding the whole stack (this file is the README's embedding snippet, checked by a test).
//! With real hardware, replace the fakes: `pci::Ecam` over the mapped ECAM windows,
//! `iommu_vtd::MmioRegisters` over the mapped DRHD page, your own `iommu_vtd::Platform` and
//! `dma::PhysMemory`.
use std::error::Error;
use std::sync::Arc;

use dma::{Attrs, BouncePool, DeviceConfig, Direction, DmaDevice, DmaDomain, PhysAddr};
use dma::{PhysMemory, Translation};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{Dmar, DomainConfig, GroupRef, UnitConfig, VtdUnit};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use vtd_examples::fixtures::{DEFAULT_ACPI, DEFAULT_CFG};
use vtd_platform::UnitEntry;

pub fn main() -> Result<(), Box<dyn Error>> {
    // PCI: MCFG → config space → enumeration → ACS policy → isolation groups.
    let regions = pci::mcfg::parse(&acpi_table_bytes(DEFAULT_ACPI, "MCFG"))?;
    let ecam = FakeConfigSpace::from_qemu_fixture(DEFAULT_CFG)?; // real: pci::Ecam::new(..)
    let topology = pci::enumerate(&ecam, &regions);
    apply_acs_policy(&ecam, &topology, AcsPolicy::Isolate);
    let groups = pci::group::compute(&ecam, &topology); // after the ACS policy
    let edu = topology.find(0x1234, 0x11e8).next().ok_or("no edu")?.bdf;
    let group = groups.group_of(edu).ok_or("edu has no group")?;

    // VT-d: one unit per DRHD (QEMU has one). `vtd-platform` resolves its device scopes
    // against the topology and says which unit translates a function.
    let dmar_bytes = acpi_table_bytes(DEFAULT_ACPI, "DMAR");
    let dmar = Dmar::parse(&dmar_bytes)?;
    let drhd = dmar.drhds().next().ok_or("no DRHD")?;
    let platform = Arc::new(HostPlatform::new()); // real: your iommu_vtd::Platform
    let regs = FakeVtd::qemu_default(platform.clone()); // real: MmioRegisters::new(page, size)
    let unit = Arc::new(VtdUnit::new(
        regs,
        platform,
        UnitConfig::new(dmar.host_address_width()),
    )?);
    unit.enable()?; // QI, root table, global invalidation, TE
    let levels = unit
        .capabilities()
        .cap
        .usable_levels()
        .last()
        .ok_or("no depth")?;
    let (entry, unresolved) = UnitEntry::new(unit.clone(), &drhd, &topology, levels);
    assert_eq!(unresolved, 0, "every scope names an enumerated function");
    let units = [entry];
    let ours = vtd_platform::unit_for(&units, &topology, edu).ok_or("no unit for edu")?;
    assert!(Arc::ptr_eq(&ours.unit, &unit));
    let levels = Some(ours.levels); // the widest IOVA space the unit offers
    let hw = Arc::new(unit.create_domain(DomainConfig {
        levels,
        ..Default::default()
    })?);
    let key = u32::from(group.members()[0].requester_id().get()); // any stable key per group
    let group_ref = GroupRef {
        key,
        requester_ids: group.requester_ids(),
    };
    hw.attach_device(group_ref, edu.requester_id())?; // every requester ID of the group

    // DMA API: an IOVA space that never hands out a peer's bus address, an untrusted device.
    // (`Iommu::attach` / `setup_device` in vtd-platform do this and the rest with RMRRs.)
    let reserved = vtd_platform::reserved_regions(&[], &topology); // QEMU lists no RMRR
    let domain = DmaDomain::new(
        hw.clone(),
        dma::DomainConfig {
            reserved,
            ..Default::default()
        },
    )?;
    let phys: Arc<dyn PhysMemory> = Arc::new(dma::testing::FakePhysMemory::standard());
    let config = DeviceConfig::with_mask_bits(32)?; // untrusted: sub-page maps bounce
    let pool = BouncePool::new(phys.clone(), 1 << 20, config.mask)?;
    let dev = DmaDevice::new(config, Translation::Iommu(domain.clone()), phys, Some(pool))?;
    let buf = PhysAddr::new(0x0100_0000); // two whole pages of RAM: no bounce
    let m = dev.map_phys(buf, 0x2000, Direction::ToDevice, Attrs::empty())?;
    let iova = m.dma_addr().as_u64(); // program this into the device

    // What the device sees: its DMA to the IOVA lands in the buffer, not elsewhere.
    let rid = edu.requester_id();
    assert_eq!(
        unit.registers().dma(rid, iova + 0x1234, false),
        Ok(buf.as_u64() + 0x1234)
    );
    assert!(!domain.is_reserved(m.dma_addr(), 0x2000));
    let other = topology
        .functions()
        .iter()
        .find(|f| !group.contains(f.bdf))
        .ok_or("alone")?;
    assert!(unit
        .registers()
        .dma(other.bdf.requester_id(), iova, false)
        .is_err());
    m.unmap()?; // strict: the IOTLB flush has completed here
    assert!(
        unit.registers().dma(rid, iova, false).is_err(),
        "unmapped: the DMA faults"
    );
    println!("embed: {edu} DMA at {iova:#x} reached {buf}; after unmap it faults");
    Ok(())
}
