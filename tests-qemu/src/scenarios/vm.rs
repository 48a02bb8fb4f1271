//! Device assignment scenarios (issue 14): guest address spaces with mixed leaf sizes, atomic
//! reassignment between two VMs, quarantine, pass-through, group ownership and the reset and
//! revoke that come with an assignment (kernel suite `vm`).

use super::*;

/// The machine of the `vm` suite: 9 GiB (two VMs' 3 GiB of guest RAM live above 4 GiB), edu
/// on the root bus (importer of the ivshmem export), edu behind its own root port (the device
/// handed between VMs), ivshmem behind a root port (the provider whose assignment revokes its
/// export), and two edus behind a PCIe-to-PCI bridge (one isolation group of two). Every edu
/// gets a 32-bit DMA mask so guest-physical addresses up to 3 GiB reach the IOMMU unmasked.
pub(super) fn vm_topology() -> Topology {
    let mut t = Topology::base()
        .object("memory-backend-ram,id=shm,size=1M")
        .device("edu,dma_mask=0xffffffff")
        .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
        .device("ivshmem-plain,memdev=shm,bus=rp1")
        .device("pcie-root-port,id=rp3,chassis=3,bus=pcie.0")
        .device("edu,bus=rp3,dma_mask=0xffffffff")
        .device("pcie-pci-bridge,id=pb,bus=pcie.0")
        .device("edu,bus=pb,addr=1,dma_mask=0xffffffff")
        .device("edu,bus=pb,addr=2,dma_mask=0xffffffff");
    t.memory = "9G".into();
    t
}

fn vm_suite() -> usize {
    suite_size(include_str!("../../../kernel/src/tests/vm.rs"))
}

pub(super) fn vm_scenarios() -> Vec<Scenario> {
    vec![Scenario::passing(
        "vm",
        "two VMs (guest RAM at 4 GiB and 7 GiB host-physical): 1G/2M/4K guest mappings read from the table and proven by DMA, edu reassigned VM1->VM2 atomically with a warm IOTLB (and a negative control), quarantine faults, pass-through, a partly host-owned group refused, assignment revokes ivshmem's export and bus-resets it, faults routed to the owning VM",
        vm_topology(),
        "test=vm edu.dma_mask=0xffffffff",
        vm_suite(),
    )]
}
