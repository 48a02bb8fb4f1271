//! Device bring-up: the PCI hierarchy (ECAM from MCFG) and, later in boot, the IOMMU and the
//! drivers the demo and the tests use. Everything here goes through the public crates'
//! APIs, as an embedder's kernel would.

pub mod dmamem;
pub mod edu;
pub mod faults;
pub mod iommu;
pub mod irq;
pub mod nic;
pub mod nvme;
pub mod p2p;
pub mod pci;
