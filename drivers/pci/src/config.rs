//! The configuration-space access seam (PCI Local Bus 3.0 §6.1, PCIe Base 4.0 §7.2).
//!
//! Everything in this crate reads and writes configuration registers only through
//! [`ConfigSpace`], so enumeration, BAR sizing, capability walks and ACS policy run unchanged on
//! real ECAM ([`crate::Ecam`]) and on an emulated space in host tests.

use crate::Bdf;

/// Size of a function's configuration space with PCIe extended configuration (4 KiB).
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// Whether an access of `width` bytes (1, 2 or 4) at `offset` is within the 4 KiB configuration
/// space and naturally aligned, the only accesses ECAM defines (PCIe Base 4.0 §7.2.2.2).
pub const fn is_valid_access(offset: u16, width: u16) -> bool {
    matches!(width, 1 | 2 | 4) && offset < CONFIG_SPACE_SIZE && offset & (width - 1) == 0
}

/// Access to the configuration space of every function on the machine.
///
/// Each method is one natively sized configuration access. A 16-bit write must be a 16-bit
/// access on the bus, never a read-modify-write of the containing dword: that would write back
/// the neighbouring register, and for the Status register (RW1C bits) it would clear every
/// error bit that happened to be set.
///
/// Contract for implementations:
/// - `offset` must be below 4096 and a multiple of the access width; any other access returns
///   all-ones (reads) or is ignored (writes), and never panics;
/// - a function that does not exist reads as all-ones (the value a master abort returns, which
///   is how absent functions are detected: vendor ID 0xffff) and ignores writes;
/// - methods take `&self`: implementations are inherently safe to share (ECAM: each access is one
///   aligned MMIO load/store) or synchronise internally.
pub trait ConfigSpace {
    /// Reads the byte at `offset`.
    fn read8(&self, bdf: Bdf, offset: u16) -> u8;
    /// Reads the 16-bit register at `offset` (2-byte aligned).
    fn read16(&self, bdf: Bdf, offset: u16) -> u16;
    /// Reads the 32-bit register at `offset` (4-byte aligned).
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the byte at `offset`.
    fn write8(&self, bdf: Bdf, offset: u16, value: u8);
    /// Writes the 16-bit register at `offset` (2-byte aligned) with one 16-bit access.
    fn write16(&self, bdf: Bdf, offset: u16, value: u16);
    /// Writes the 32-bit register at `offset` (4-byte aligned) with one 32-bit access.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
}

impl<T: ConfigSpace + ?Sized> ConfigSpace for &T {
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        (**self).read8(bdf, offset)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (**self).read16(bdf, offset)
    }
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read32(bdf, offset)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        (**self).write8(bdf, offset, value)
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        (**self).write16(bdf, offset, value)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write32(bdf, offset, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_validity() {
        assert!(is_valid_access(0, 4));
        assert!(is_valid_access(0xffc, 4));
        assert!(is_valid_access(0xfff, 1));
        assert!(is_valid_access(0xffe, 2));
        assert!(!is_valid_access(0x1000, 1));
        assert!(!is_valid_access(2, 4));
        assert!(!is_valid_access(1, 2));
        assert!(!is_valid_access(0, 3));
        assert!(!is_valid_access(0, 8));
    }
}
