//! The remapping unit's register map, declared once, and the [`RegisterIo`] access seam.
//!
//! Implements the register layout of VT-d spec §10.4 / §11.4 (rev 3.x/4.x): offsets, the bit
//! fields of every register this crate writes or polls, and the encodings of their fields. Every
//! other module reads and writes registers by these names only.
//!
//! [`RegisterIo`] is the seam between the driver logic and the hardware: [`MmioRegisters`] does
//! volatile accesses to the mapped (uncached) register page; `crate::fake::FakeVtd` models
//! QEMU's unit for host tests.
//!
//! The declarations are grouped by concept in private submodules, all re-exported here so
//! that every name is `crate::registers::Name`: the register map (`mmio`), in-memory
//! translation structures (`tables`), the scalable-mode structures (`scalable`), invalidation descriptors (`descriptors`), interrupt
//! remapping formats (`interrupt`) and the access seam (`io`).

mod descriptors;
mod interrupt;
mod io;
mod mmio;
mod scalable;
mod tables;
#[cfg(test)]
mod tests;

pub use descriptors::*;
pub use interrupt::*;
pub use io::*;
pub use mmio::*;
pub use scalable::*;
pub use tables::*;

// Typed fields. Every multi-bit field of a register or an in-memory structure this crate
// writes or decodes is declared in the submodules with `bitfield-struct`: fields are listed
// from bit 0 up, `__` is reserved/ignored space. Address fields hold the address itself (the
// conversion functions below move it into its bit position), so no caller shifts or masks.

/// Field conversion for an address in bits 63:12 (4 KiB aligned): the field holds bits 63:12
/// of the address; the low 12 bits of an address written are dropped.
const fn addr_4k_into(addr: u64) -> u64 {
    addr >> 12
}

/// Inverse of [`addr_4k_into`].
const fn addr_4k_from(field: u64) -> u64 {
    field << 12
}

/// Field conversion for an address in bits 63:2 (4-byte aligned), as [`addr_4k_into`].
const fn addr_4b_into(addr: u64) -> u64 {
    addr >> 2
}

/// Inverse of [`addr_4b_into`].
const fn addr_4b_from(field: u64) -> u64 {
    field << 2
}

/// Field conversion for an address mask (AM) written to a 6-bit field: values above 63 (no
/// such invalidation exists) saturate to 63, never narrowing what is invalidated.
const fn am_into(am: u8) -> u8 {
    if am > MAX_AM {
        MAX_AM
    } else {
        am
    }
}

/// Inverse of [`am_into`].
const fn am_from(field: u8) -> u8 {
    field
}

/// The largest address mask a 6-bit AM field holds.
pub const MAX_AM: u8 = 63;
