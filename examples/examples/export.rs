//! A revocable export (the dma-buf role): ivshmem's BAR2 exported, an edu attached as importer
//! and mapped through its IOMMU domain, then revoked (the importer is told, the translation is
//! gone from the warm IOTLB) and restored (the importer maps again). Topology: QEMU's captured
//! "complex" machine; the edu is one behind another root port than ivshmem's, so peer traffic
//! goes up through the host bridge and its IOMMU (classified `ThruHostBridge`), which is what
//! makes a revoke enforceable.
use std::error::Error;
use std::sync::{Arc, Mutex};

use dma::p2p::MapType;
use dma::{BouncePool, DeviceConfig, Direction, DmaDevice, DmaDomain, Translation};
use dma::{ExportRange, ExportRequest, ExportState, Exporter, Importer, MoveEvent, PhysMemory};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::{DomainConfig, GroupRef, UnitConfig, VtdUnit};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::p2p::{memory_decode, provider_table, HostBridgePolicy, P2pRouting};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use vtd_examples::fixtures::{COMPLEX_ACPI, COMPLEX_CFG};

pub fn main() -> Result<(), Box<dyn Error>> {
    let regions = pci::mcfg::parse(&acpi_table_bytes(COMPLEX_ACPI, "MCFG"))?;
    let cfg = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG)?;
    let topology = pci::enumerate(&cfg, &regions);
    apply_acs_policy(&cfg, &topology, AcsPolicy::Isolate);
    let groups = pci::group::compute(&cfg, &topology);
    let ivshmem = topology.find(0x1af4, 0x1110).next().ok_or("no ivshmem")?;
    // An edu under the same host bridge, below another root port than ivshmem.
    let edu = topology
        .find(0x1234, 0x11e8)
        .filter(|f| f.root_bus() == ivshmem.root_bus())
        .find(|f| {
            topology
                .common_upstream_bridge(f.bdf, ivshmem.bdf)
                .is_none()
        })
        .ok_or("no edu on another root port")?
        .bdf;

    // The importer: edu's DMA handle over a domain attached to its group.
    let platform = Arc::new(HostPlatform::new());
    let unit = Arc::new(VtdUnit::new(
        FakeVtd::qemu_default(platform.clone()),
        platform,
        UnitConfig::new(39),
    )?);
    unit.enable()?;
    let group = groups.group_of(edu).ok_or("edu has no group")?;
    let hw = Arc::new(unit.create_domain(DomainConfig::default())?);
    let group_ref = GroupRef {
        key: u32::from(group.members()[0].requester_id().get()),
        requester_ids: group.requester_ids(),
    };
    hw.attach_device(group_ref, edu.requester_id())?;
    let domain = DmaDomain::new(hw.clone(), dma::DomainConfig::default())?;
    let phys: Arc<dyn PhysMemory> = Arc::new(dma::testing::FakePhysMemory::standard());
    let config = DeviceConfig::with_mask_bits(32)?;
    let pool = BouncePool::new(phys.clone(), 1 << 20, config.mask)?;
    let dev = DmaDevice::new(config, Translation::Iommu(domain), phys, Some(pool))?;
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let importer = Importer {
        id: pci::p2p::device_id(edu),
        dev,
        peer_to_peer: true,
        move_notify: Box::new(move |e| seen.lock().unwrap().push(e)),
    };
    let take = || std::mem::take(&mut *events.lock().unwrap());

    // The exporter: ivshmem's providers, classified over the live topology.
    // Linux's list of host bridges that forward peer traffic lacks QEMU's q35 (8086:29c0): allow
    // it, as the kernel does on QEMU, or the classification says `NotSupported`.
    let policy = HostBridgePolicy::linux_default().allow(0x8086, 0x29c0);
    let routing = P2pRouting::new(&cfg, &topology, policy);
    let mut exporter = Exporter::new(Arc::new(provider_table(ivshmem)?), Arc::new(routing));
    let ranges = [ExportRange {
        offset: 0,
        len: 0x2000,
    }];
    let request = ExportRequest {
        bar: 2,
        ranges: &ranges,
        flags: 0,
    };
    let handle = exporter.export(&request, memory_decode(&cfg, ivshmem.bdf))?;
    assert_eq!(handle.state(), ExportState::Live);
    let bar = ivshmem.bar(2).ok_or("no BAR2")?.phys_address;
    assert_eq!(handle.ranges()[0].0.as_u64(), bar);

    // Attach and map: the edu's DMA to the IOVA reaches the BAR through the host bridge.
    let attachment = handle.attach(importer)?;
    assert_eq!(attachment.map_type(), MapType::ThruHostBridge);
    let rid = edu.requester_id();
    let regs = unit.registers();
    let m = attachment.map(Direction::Bidirectional)?;
    let iova = m.segments()[0].addr.as_u64();
    assert_eq!(
        regs.dma(rid, iova + 0x1008, true),
        Ok(bar + 0x1008),
        "warm IOTLB"
    );

    // Revoke (before a reset or memory disable): the importer is told once, the mapping is torn
    // down and the IOTLB flushed before revoke returns, and new maps fail.
    let stats = exporter.revoke()?;
    assert_eq!((stats.notified, stats.unmapped), (1, 1));
    assert_eq!(take(), [MoveEvent::Revoked]);
    assert!(m.is_stale());
    assert!(
        regs.dma(rid, iova + 0x1008, true).is_err(),
        "revoked: DMA faults"
    );
    assert_eq!(
        attachment.map(Direction::Bidirectional).unwrap_err(),
        dma::DmaError::Revoked
    );
    drop(m); // a stale handle unmaps nothing

    // Restore: the importer is told, maps again, and its DMA lands in the BAR again.
    assert_eq!(exporter.restore().notified, 1);
    assert_eq!(take(), [MoveEvent::Restored]);
    let m = attachment.map(Direction::Bidirectional)?;
    let iova = m.segments()[0].addr.as_u64();
    assert_eq!(regs.dma(rid, iova, false), Ok(bar));
    m.unmap()?;
    attachment.detach()?;
    println!(
        "export: {} BAR2 at {bar:#x} mapped for {edu}, revoked and restored",
        ivshmem.bdf
    );
    Ok(())
}
