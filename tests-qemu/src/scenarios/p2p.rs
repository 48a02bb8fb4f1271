//! Peer-to-peer scenarios: exports, revoke triggers, map types.

use super::*;

/// The map type the kernel must compute between the first ivshmem (provider) and the first edu
/// (client), derived from the topology model: a common upstream bridge with no ACS-capable port
/// (in QEMU 7.2 only root ports, 1b36:000c, have ACS, and our policy enables redirects there)
/// on either path below it means the transfer stays in the switch (`bus`); otherwise it goes
/// through the host bridge (`thru`).
pub(super) fn expected_map_type(t: &Topology) -> &'static str {
    let Ok(functions) = crate::pci_model::expected_functions(t) else {
        return "unknown";
    };
    let find = |v: u16, d: u16| {
        functions
            .iter()
            .filter(|f| (f.vendor, f.device) == (v, d))
            .map(|f| f.bdf)
            .min()
    };
    let (Some(provider), Some(client)) = (find(0x1af4, 0x1110), find(0x1234, 0x11e8)) else {
        return "unknown";
    };
    let path = |mut b: crate::pci_model::Bdf| {
        let mut up = Vec::new();
        while let Some(p) = functions.iter().find(|f| f.bdf == b).and_then(|f| f.parent) {
            up.push(p);
            b = p;
        }
        up
    };
    let (pp, cp) = (path(provider), path(client));
    let Some(common) = pp.iter().find(|b| cp.contains(b)) else {
        return "thru";
    };
    let below = |p: &[crate::pci_model::Bdf]| {
        p.iter()
            .take_while(|b| *b != common)
            .copied()
            .collect::<Vec<_>>()
    };
    let acs_port = |b: &crate::pci_model::Bdf| {
        functions
            .iter()
            .any(|f| f.bdf == *b && (f.vendor, f.device) == (0x1b36, 0x000c))
    };
    if below(&pp).iter().chain(&below(&cp)).any(acs_port) {
        "thru"
    } else {
        "bus"
    }
}

/// P2P scenarios: edu imports ivshmem's BAR2 (and nvme's CMB) through revocable handles.
pub(super) fn p2p_scenarios() -> Vec<Scenario> {
    let run = |name, about, topology: Topology, tests: &[&str]| {
        let cmdline = format!(
            "test={} expect.maptype={}{}",
            tests.join(","),
            expected_map_type(&topology),
            edu_mask_arg(&topology)
        );
        Scenario::passing(name, about, topology, &cmdline, tests.len())
    };
    let shm = |t: Topology| t.object("memory-backend-ram,id=shm,size=1M");
    vec![
        run(
            "p2p-iommu",
            "edu DMAs into ivshmem BAR2 through an exported handle (THRU_HOST_BRIDGE); revoke blocks it with a fault, restore re-enables; memory-disable, bus reset, FLR, D3hot (nvme CMB) and removal each revoke",
            shm(Topology::base())
                .device("edu")
                .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
                .device("ivshmem-plain,memdev=shm,bus=rp1")
                .device("pcie-root-port,id=rp2,chassis=2,bus=pcie.0")
                .device("nvme,serial=deadbeef,cmb_size_mb=2,bus=rp2"),
            &[
                "p2p::classification",
                "p2p::dma_into_bar",
                "p2p::revoke_cuts_off_and_restore_works",
                "p2p::trigger_memory_disable",
                "p2p::trigger_bus_reset",
                "p2p::trigger_flr",
                "p2p::trigger_d3hot",
                "p2p::trigger_removal",
            ],
        ),
        run(
            "p2p-switch",
            "provider and client behind one switch (no ACS on QEMU's switch ports): BUS_ADDR, segment = paddr + bus_offset (edu mask raised to 32 bits to reach the BAR)",
            shm(Topology::base())
                .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
                .device("x3130-upstream,id=up,bus=rp1")
                .device("xio3130-downstream,id=dn1,bus=up,chassis=2,slot=0")
                .device("xio3130-downstream,id=dn2,bus=up,chassis=3,slot=1")
                .device("edu,bus=dn1,dma_mask=0xffffffff")
                .device("ivshmem-plain,memdev=shm,bus=dn2"),
            &["p2p::classification"],
        ),
        run(
            "p2p-no-iommu",
            "without intel-iommu, mapping the ivshmem BAR for edu is refused: its 28-bit mask cannot reach it and MMIO is never bounced",
            shm(Topology::base().without_iommu()).device("edu").device("ivshmem-plain,memdev=shm,bus=pcie.0"),
            &["p2p::no_iommu_refused"],
        ),
    ]
}
