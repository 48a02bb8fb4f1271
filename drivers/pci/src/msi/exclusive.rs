//! MSI and MSI-X are mutually exclusive: a function must not have both enabled (PCI Local Bus
//! 3.0 §6.8.2, PCIe Base 4.0 §6.1.4), so enabling one checks the other's Enable bit.

use crate::capability::standard_capabilities;
use crate::regs::{msi, msix, CapabilityId, MsiControl, MsixControl};
use crate::{Bdf, ConfigSpace};

/// Message Control of the function's first capability with `id`.
fn control(cfg: &impl ConfigSpace, bdf: Bdf, id: CapabilityId, register: u16) -> Option<u16> {
    standard_capabilities(cfg, bdf)
        .entries
        .iter()
        .find(|c| c.id == id)
        .map(|c| cfg.read16(bdf, u16::from(c.offset) + register))
        .filter(|&raw| raw != u16::MAX)
}

/// Whether the function has MSI enabled.
pub(super) fn msi_enabled(cfg: &impl ConfigSpace, bdf: Bdf) -> bool {
    control(cfg, bdf, CapabilityId::MSI, msi::CONTROL)
        .is_some_and(|raw| MsiControl::from_bits(raw).enable())
}

/// Whether the function has MSI-X enabled.
pub(super) fn msix_enabled(cfg: &impl ConfigSpace, bdf: Bdf) -> bool {
    control(cfg, bdf, CapabilityId::MSI_X, msix::CONTROL)
        .is_some_and(|raw| MsixControl::from_bits(raw).enable())
}
