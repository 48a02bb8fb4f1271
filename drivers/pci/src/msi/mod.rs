//! Message Signalled Interrupts: the MSI capability (PCI Local Bus 3.0 §6.8.1), MSI-X (PCIe
//! Base 4.0 §7.7.2) and the x86 interrupt message both program (Intel SDM vol. 3 §11.11;
//! VT-d spec §5.1.2 for the remappable format).
//!
//! Drivers never write raw addresses: they get vectors from whoever owns interrupts (the
//! platform: a CPU vector, or an interrupt remapping table entry), receive an [`MsiMessage`]
//! built by [`MsiMessage::compatibility`] or [`MsiMessage::remappable`], and hand it to
//! [`Msi::configure`] or [`Msix::configure`] / [`Msix::enable`], which know the register
//! offsets and the ordering rules (a message is only written while the function cannot send
//! it).
//!
//! Inside the module: [`message`] (formats, pure), [`memory`] (the BAR seam) and `exclusive`
//! (MSI and MSI-X are never both enabled) at the bottom, `msi_capability` and `msix` above them; `fake` (feature `testing`) models devices.
//!
//! ```
//! # use pci::msi::{Msix, MsiMessage, fake::{self, FakeMsixMemory, E1000E_MSIX}};
//! # let cfg = pci::testing::FakeConfigSpace::new();
//! # let bdf = pci::Bdf::new(0, 2, 0, 0).unwrap();
//! # cfg.add_endpoint(bdf, 0x8086, 0x10d3, 0x02_00_00);
//! # fake::add_msix_capability(&cfg, bdf, &E1000E_MSIX, 0xfe00_0000);
//! # let bar3 = FakeMsixMemory::new(E1000E_MSIX);
//! // `bar3` maps the BAR the capability names (a `VolatileMmio` in a kernel).
//! let mut msix = Msix::new(&cfg, bdf, &bar3, &bar3)?;
//! let irte_index = 7; // from the interrupt remapping table's allocator
//! msix.enable(&[(0, MsiMessage::remappable(irte_index, None))])?;
//! # Ok::<(), pci::msi::MsixError>(())
//! ```

mod exclusive;
pub mod memory;
pub mod message;
mod msi_capability;
mod msix;

#[cfg(any(test, feature = "testing"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use memory::{MsixMemory, VolatileMmio};
pub use message::{
    CompatibilityMessage, DecodedMessage, DeliveryMode, DestinationMode, MessageError, MsiMessage,
    RemappableMessage, TriggerMode,
};
pub use msi_capability::{Msi, MsiCapability, MsiError};
pub use msix::{Msix, MsixCapability, MsixError, MsixRegion};
