//! PCI scenarios: the kernel's listing against the QEMU model, ACS, DMAR presence.

use super::*;

/// DMAR must appear in the boot report's ACPI list exactly when the topology has an IOMMU.
pub(super) fn dmar_listed_iff_iommu(
    s: &Scenario,
    _: &Outcome,
    log: &str,
) -> Result<String, String> {
    let listed = log.lines().any(|l| l.trim_start().starts_with("DMAR "));
    ensure(listed == s.topology.iommu.is_some(), || {
        format!(
            "DMAR listed: {listed}, IOMMU in topology: {}",
            s.topology.iommu.is_some()
        )
    })?;
    Ok(format!("DMAR {}", if listed { "listed" } else { "absent" }))
}

/// The kernel's `PCIDEV` listing must match the model of the topology QEMU was given.
pub(super) fn pci_listing_matches(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    crate::pci_model::check_pci_listing(&s.topology, log)
}

/// Ports with an ACS capability in the topology: in QEMU 7.2 exactly the `pcie-root-port`s
/// (1b36:000c), per the model of the topology.
pub(super) fn acs_ports(t: &Topology) -> usize {
    crate::pci_model::expected_functions(t)
        .map(|f| {
            f.iter()
                .filter(|f| (f.vendor, f.device) == (0x1b36, 0x000c))
                .count()
        })
        .unwrap_or(usize::MAX)
}

/// PCI scenarios: each topology is enumerated by the kernel and compared with the model.
pub(super) fn pci_scenarios() -> Vec<Scenario> {
    let pci = |name, about, topology: Topology| {
        let cmdline = format!("test=pci expect.acs_ports={}", acs_ports(&topology));
        Scenario {
            check: Some(pci_listing_matches as LogCheck),
            ..Scenario::new(name, about, topology, &cmdline, Expect::Pass { passed: 3 })
        }
    };
    let root_port = |t: Topology, id: &str, chassis: u32| {
        t.device(&format!(
            "pcie-root-port,id={id},chassis={chassis},bus=pcie.0"
        ))
    };
    vec![
        pci("pci-default", "the default run topology enumerates as QEMU built it", Topology::default_run()),
        pci(
            "pci-switch",
            "a PCIe switch (upstream + two downstream ports) with an endpoint on each port",
            root_port(Topology::base(), "rp1", 1)
                .device("x3130-upstream,id=up,bus=rp1")
                .device("xio3130-downstream,id=dn1,bus=up,chassis=2,slot=0")
                .device("xio3130-downstream,id=dn2,bus=up,chassis=3,slot=1")
                .device("edu,bus=dn1")
                .device("edu,bus=dn2"),
        ),
        pci(
            "pci-two-root-ports",
            "two root ports (with ACS, isolated by policy) each with an endpoint",
            root_port(root_port(Topology::base(), "rp1", 1), "rp2", 2)
                .object("memory-backend-ram,id=shm,size=1M")
                .device("edu,bus=rp1")
                .device("ivshmem-plain,memdev=shm,bus=rp2"),
        ),
        pci(
            "pci-two-root-ports-no-iommu",
            "the same without an IOMMU: ACS is left as firmware set it",
            root_port(root_port(Topology::base(), "rp1", 1), "rp2", 2)
                .device("edu,bus=rp1")
                .device("edu,bus=rp2")
                .without_iommu(),
        ),
        pci(
            "pci-pxb",
            "an extra host bridge (pxb-pcie, root bus 0x40) with a root port and an endpoint",
            Topology::base()
                .device("pxb-pcie,id=pxb,bus_nr=64,bus=pcie.0")
                .device("pcie-root-port,id=rp1,bus=pxb,chassis=1")
                .device("edu,bus=rp1"),
        ),
        pci(
            "groups-pcie-pci-bridge",
            "two edus behind one pcie-pci-bridge share its requester-ID alias: one isolation group with the bridge",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=1")
                .device("edu,bus=ppb,addr=2"),
        ),
        pci(
            "groups-multifunction",
            "multifunction edus without ACS (below a root port and on pcie.0) form one group each; root ports with ACS as functions of one slot stay apart",
            root_port(Topology::base(), "rp1", 1)
                .device("edu,bus=rp1,addr=0.0,multifunction=on")
                .device("edu,bus=rp1,addr=0.1")
                .device("edu,addr=5.0,multifunction=on")
                .device("edu,addr=5.1")
                .device("pcie-root-port,id=rp2,chassis=2,bus=pcie.0,addr=6.0,multifunction=on")
                .device("pcie-root-port,id=rp3,chassis=3,bus=pcie.0,addr=6.1")
                .device("edu,bus=rp2")
                .device("edu,bus=rp3"),
        ),
        pci(
            "pci-conventional-bridges",
            "endpoints behind a pcie-pci-bridge and a conventional pci-bridge (requester-ID aliases)",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("pci-bridge,id=pb,chassis_nr=5,bus=pcie.0")
                .device("edu,bus=pb,addr=4"),
        ),
    ]
}
