//! Runnable examples of embedding the crates (issue 10; SPEC.md "Isolation unit", "DMA API",
//! "Peer-to-peer"), run on the host against the crates' fakes. Each file in `examples/` is a
//! program that asserts what it shows and exits non-zero when an assertion fails:
//!
//! | example | shows |
//! |---|---|
//! | `embed` (the README's embedding snippet) | MCFG + config space → enumeration → ACS policy → isolation groups → DMAR → VT-d unit → a domain attached to a group → `DmaDevice` → `map_phys`, checked by the unit's translation |
//! | `mapping` | strict unmap, batched unmap (one flush), a scatter-gather list |
//! | `export` | a revocable export of a BAR, an importer attached and mapped, revoke (importer notified, translation gone) and restore |
//! | `hypervisor` | two VMs' guest-physical spaces (1G/2M/4K leaves), a device group assigned to VM1 (quiesced, reset, switched), moved to VM2 atomically with a warm IOTLB, faults routed per VM, quarantine |
//!
//! This library only holds the captured QEMU fixtures the examples start from, so that an
//! example's body reads like what an embedder writes with real firmware tables.

#![no_std]

/// Configuration spaces and ACPI tables captured from QEMU 7.2 by the kernel (`cargo xtask run
/// --cmdline acpidump`), the same files the crates' own host tests use.
pub mod fixtures {
    /// `q35 + intel-iommu + edu`: config space of every function (`FakeConfigSpace` text).
    pub const DEFAULT_CFG: &str = include_str!("../../drivers/pci/tests/fixtures/default.cfg");
    /// The ACPI tables (DMAR, MCFG) of the same machine, hex-dumped.
    pub const DEFAULT_ACPI: &str =
        include_str!("../../drivers/iommu-vtd/tests/fixtures/default.acpi");
    /// Root ports, a switch with an edu and an ivshmem, conventional bridges, a pxb and an
    /// NVMe: config space.
    pub const COMPLEX_CFG: &str = include_str!("../../drivers/pci/tests/fixtures/complex.cfg");
    /// The ACPI tables of the same machine.
    pub const COMPLEX_ACPI: &str =
        include_str!("../../drivers/iommu-vtd/tests/fixtures/complex.acpi");
}
