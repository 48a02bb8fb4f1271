//! A minimal driver for the Intel 82574 GbE controller (PCI 8086:10d3) as QEMU 7.2 models it
//! (`hw/net/e1000e_core.c`): no networking, only what raising its MSI-X interrupts on demand
//! needs, so it can serve as a second, MSI-X interrupt source next to edu's MSI. Written only
//! against the public `pci` crate; the MSI-X table itself is programmed by whoever owns
//! interrupts (`pci::msi`).
//!
//! Registers used (82574 datasheet §10.2; QEMU offsets in `e1000_regs.h`): ICR 0xC0 (interrupt
//! cause read; write 1 to clear), ICS 0xC8 (cause set), IMS 0xD0 (mask set), IMC 0xD8 (mask
//! clear), IVAR 0xE4 (MSI-X vector of each cause), CTRL_EXT 0x18 (not changed: with its IAME
//! bit clear, reading ICR does not clear it, so the driver acknowledges by writing ICR).
//!
//! QEMU 7.2 facts this driver relies on:
//! - with MSI-X enabled, a cause set in ICR and enabled in IMS sends the MSI-X vector IVAR
//!   gives it (for the OTHER cause, bit 24: IVAR bits 19:16, valid bit 19, vector 18:16), right
//!   away when EITR is 0 (its reset value);
//! - a cause already sent is not sent again until it has been cleared from ICR
//!   (`msi_causes_pending`): acknowledge ([`E1000e::ack`]) between raises.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

use core::fmt;
use core::ptr::NonNull;

use bitfield_struct::bitfield;
use pci::msi::{MsixMemory, VolatileMmio};
use pci::{Bdf, ConfigSpace};

/// PCI vendor ID (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID (82574L).
pub const DEVICE_ID: u16 = 0x10d3;
/// Size of BAR0 (the register block) in QEMU.
pub const BAR0_SIZE: u64 = 128 * 1024;
/// MSI-X vectors the device has (IVAR vector fields are 3 bits, QEMU models 5).
pub const MSIX_VECTORS: u8 = 5;

/// Register offsets in BAR0.
mod reg {
    /// Interrupt Cause Read (write 1 to clear).
    pub const ICR: usize = 0xC0;
    /// Interrupt Cause Set.
    pub const ICS: usize = 0xC8;
    /// Interrupt Mask Set/Read.
    pub const IMS: usize = 0xD0;
    /// Interrupt Mask Clear.
    pub const IMC: usize = 0xD8;
    /// Interrupt Vector Allocation.
    pub const IVAR: usize = 0xE4;
}

/// Interrupt cause bits (ICR, ICS, IMS, IMC share the layout; only those used here are named).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Causes {
    #[bits(24)]
    __: u32,
    /// OTHER: a cause without a queue of its own (link status, ...); raised on demand
    /// through ICS.
    pub other: bool,
    #[bits(7)]
    __: u32,
}

/// One 4-bit IVAR field: the MSI-X vector of a cause and its valid bit.
#[bitfield(u8)]
#[derive(PartialEq, Eq)]
pub struct IvarEntry {
    /// MSI-X table entry.
    #[bits(3)]
    pub vector: u8,
    /// The entry is valid (without it the cause sends nothing under MSI-X).
    pub valid: bool,
    #[bits(4)]
    __: u8,
}

/// The IVAR register (82574 §10.2.4.9): an [`IvarEntry`] per cause.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Ivar {
    /// Receive queue 0.
    #[bits(4)]
    pub rxq0: u8,
    /// Receive queue 1.
    #[bits(4)]
    pub rxq1: u8,
    /// Transmit queue 0.
    #[bits(4)]
    pub txq0: u8,
    /// Transmit queue 1.
    #[bits(4)]
    pub txq1: u8,
    /// OTHER cause.
    #[bits(4)]
    pub other: u8,
    #[bits(11)]
    __: u16,
    /// Send an interrupt on every write-back (unused here).
    pub int_on_all_wb: bool,
}

/// Why the device was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E1000eError {
    /// The function at this address is not an 82574.
    NotE1000e {
        /// Vendor:device found.
        id: (u16, u16),
    },
    /// An MSI-X vector beyond the device's.
    BadVector(u8),
}

impl fmt::Display for E1000eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotE1000e { id } => {
                write!(f, "{:04x}:{:04x} is not an e1000e (8086:10d3)", id.0, id.1)
            }
            Self::BadVector(v) => write!(f, "MSI-X vector {v}: the device has {MSIX_VECTORS}"),
        }
    }
}

impl core::error::Error for E1000eError {}

/// PCI command register offset and bits (PCI Local Bus 3.0, 6.2.2).
const PCI_COMMAND: u16 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// One e1000e, bound to its register block.
pub struct E1000e {
    bdf: Bdf,
    regs: VolatileMmio,
}

impl fmt::Debug for E1000e {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E1000e").field("bdf", &self.bdf).finish()
    }
}

impl E1000e {
    /// Binds to the e1000e at `bdf`, enables Memory decoding and Bus Mastering (an MSI-X
    /// message is a bus-master write) and masks every interrupt cause (IMC).
    ///
    /// # Safety
    ///
    /// `bar0` must point to the function's BAR0 ([`BAR0_SIZE`] bytes), mapped uncached for
    /// the lifetime of the returned object, and nothing else may drive this device meanwhile.
    ///
    /// # Errors
    ///
    /// [`E1000eError::NotE1000e`] when the function is another device.
    pub unsafe fn new(
        cfg: &impl ConfigSpace,
        bdf: Bdf,
        bar0: NonNull<u8>,
    ) -> Result<Self, E1000eError> {
        let id = (cfg.read16(bdf, 0x00), cfg.read16(bdf, 0x02));
        if id != (VENDOR_ID, DEVICE_ID) {
            return Err(E1000eError::NotE1000e { id });
        }
        let command = cfg.read16(bdf, PCI_COMMAND);
        cfg.write16(
            bdf,
            PCI_COMMAND,
            command | COMMAND_MEMORY | COMMAND_BUS_MASTER,
        );
        // SAFETY: the caller guarantees bar0 (page aligned) maps the device's 128 KiB register
        // block uncached for the object's lifetime; the driver keeps no reference to it.
        let regs = unsafe { VolatileMmio::new(bar0, BAR0_SIZE as usize) };
        let dev = Self { bdf, regs };
        dev.write(reg::IMC, u32::MAX);
        Ok(dev)
    }

    fn write(&self, offset: usize, value: u32) {
        self.regs.write32(offset, value);
    }

    fn read(&self, offset: usize) -> u32 {
        self.regs.read32(offset)
    }

    /// The function's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Routes the OTHER cause to MSI-X table entry `vector` (IVAR, other fields unchanged).
    ///
    /// # Errors
    ///
    /// [`E1000eError::BadVector`] for a vector the device does not have.
    pub fn route_other(&self, vector: u8) -> Result<(), E1000eError> {
        if vector >= MSIX_VECTORS {
            return Err(E1000eError::BadVector(vector));
        }
        let entry = IvarEntry::new().with_vector(vector).with_valid(true);
        let ivar = Ivar::from_bits(self.read(reg::IVAR)).with_other(entry.into_bits());
        self.write(reg::IVAR, ivar.into_bits());
        Ok(())
    }

    /// The IVAR register.
    pub fn ivar(&self) -> Ivar {
        Ivar::from_bits(self.read(reg::IVAR))
    }

    /// Enables the OTHER cause (IMS).
    pub fn enable_other(&self) {
        self.write(reg::IMS, Causes::new().with_other(true).into_bits());
    }

    /// Masks every cause (IMC).
    pub fn mask_all(&self) {
        self.write(reg::IMC, u32::MAX);
    }

    /// Raises the OTHER cause (ICS): with it enabled and routed, the device sends its MSI-X
    /// vector, unless the cause is still pending from an earlier raise.
    pub fn raise_other(&self) {
        self.write(reg::ICS, Causes::new().with_other(true).into_bits());
    }

    /// The pending causes (ICR; reading does not clear them, CTRL_EXT.IAME being clear).
    pub fn causes(&self) -> Causes {
        Causes::from_bits(self.read(reg::ICR))
    }

    /// Clears `causes` from ICR (write 1 to clear), so the next raise is sent.
    pub fn ack(&self, causes: Causes) {
        self.write(reg::ICR, causes.into_bits());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ivar_other_field_is_bits_19_to_16() {
        let e = IvarEntry::new().with_vector(2).with_valid(true);
        assert_eq!(e.into_bits(), 0b1010);
        let ivar = Ivar::new().with_other(e.into_bits());
        assert_eq!(ivar.into_bits(), 0x000A_0000);
        // Vector 4, valid: bit 19 + bit 18.
        let e = IvarEntry::new().with_vector(4).with_valid(true);
        assert_eq!(
            Ivar::new().with_other(e.into_bits()).into_bits(),
            0x000C_0000
        );
        assert_eq!(
            Ivar::new().with_int_on_all_wb(true).into_bits(),
            0x8000_0000
        );
    }

    #[test]
    fn other_cause_is_bit_24() {
        assert_eq!(Causes::new().with_other(true).into_bits(), 0x0100_0000);
        assert!(Causes::from_bits(0x8100_0000).other());
    }
}
