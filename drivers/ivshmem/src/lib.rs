//! Driver for QEMU's `ivshmem-plain` device (PCI 1af4:1110, `hw/misc/ivshmem.c` in QEMU 7.2): a
//! memory BAR backed by RAM, which the kernel exports as a peer-to-peer provider.
//!
//! The device has two BARs:
//! - BAR0 ([`REGISTER_BAR`]): 256 bytes of registers, 32-bit accesses only (interrupt mask,
//!   interrupt status, IVPosition, doorbell). `ivshmem-plain` has no interrupts and no peers,
//!   so nothing here needs them; [`Registers`] exposes the harmless ones.
//! - BAR2 ([`SHARED_MEMORY_BAR`]): the memory backend (`-object memory-backend-ram,size=...`),
//!   a 64-bit prefetchable BAR of the backend's size. It is plain RAM inside QEMU, so another
//!   device's DMA through an IOMMU mapping lands in it (SPEC.md), and it survives a secondary
//!   bus reset.
//!
//! The device has no PCI Express, power-management or FLR capability: on bus 0 it cannot be
//! reset, behind a bridge only the bridge's bus reset reaches it (`pci::reset`).
//!
//! The CPU touches BAR2 only through [`SharedMemory`], whose copies are volatile loads and
//! stores (SPEC.md: MMIO is never `memcpy`'d), bounds-checked against the mapping.
//! Written only against the public `pci` crate, as an embedder would write a driver.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

mod mmio;
mod registers;
mod shared;

use core::fmt;

use pci::regs::header;
use pci::{Bar, Bdf, ConfigSpace, Function, ResetError};

pub use registers::Registers;
pub use shared::{Mismatch, SharedMemory};

/// PCI vendor ID (Red Hat / Qumranet).
pub const VENDOR_ID: u16 = 0x1af4;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x1110;
/// Class code: memory controller, RAM (base 05h, sub-class 00h).
pub const CLASS: u32 = 0x05_00_00;
/// BAR holding the registers.
pub const REGISTER_BAR: u8 = 0;
/// Size of the register BAR.
pub const REGISTER_BAR_SIZE: u64 = 0x100;
/// BAR holding the shared memory: the peer-to-peer provider BAR.
pub const SHARED_MEMORY_BAR: u8 = 2;

/// Why an ivshmem operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvshmemError {
    /// The function is not an `ivshmem` device (or is absent: all-ones).
    NotIvshmem {
        /// Vendor:device found.
        id: (u16, u16),
    },
    /// The function has no BAR2 (enumeration did not probe BARs, or the device has no memory
    /// backend).
    NoSharedMemoryBar,
    /// BAR2 is not a memory BAR.
    NotMemoryBar,
    /// Firmware left BAR2 unassigned (address 0).
    SharedMemoryUnassigned,
    /// A mapping or access of zero bytes.
    ZeroLength,
    /// An access reaching outside the shared memory (or whose end overflows).
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the shared memory.
        size: usize,
    },
    /// A configuration-space operation failed.
    Config(ResetError),
}

impl fmt::Display for IvshmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotIvshmem { id } => {
                write!(f, "{:04x}:{:04x} is not an ivshmem device", id.0, id.1)
            }
            Self::NoSharedMemoryBar => f.write_str("ivshmem has no BAR2 (shared memory)"),
            Self::NotMemoryBar => f.write_str("ivshmem BAR2 is not a memory BAR"),
            Self::SharedMemoryUnassigned => f.write_str("ivshmem BAR2 is unassigned"),
            Self::ZeroLength => f.write_str("zero-length ivshmem access"),
            Self::OutOfBounds { offset, len, size } => write!(
                f,
                "ivshmem access {offset:#x}+{len:#x} is outside the {size:#x}-byte shared memory"
            ),
            Self::Config(e) => write!(f, "ivshmem configuration: {e}"),
        }
    }
}

impl core::error::Error for IvshmemError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ResetError> for IvshmemError {
    fn from(e: ResetError) -> Self {
        Self::Config(e)
    }
}

/// Checks that the function at `bdf` is an ivshmem device.
pub fn identify(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<(), IvshmemError> {
    let id = (
        cfg.read16(bdf, header::VENDOR_ID),
        cfg.read16(bdf, header::DEVICE_ID),
    );
    if id != (VENDOR_ID, DEVICE_ID) {
        return Err(IvshmemError::NotIvshmem { id });
    }
    Ok(())
}

/// Whether an enumerated function is an ivshmem device.
pub fn matches(function: &Function) -> bool {
    (function.vendor_id, function.device_id) == (VENDOR_ID, DEVICE_ID)
}

/// Turns on memory decoding (Command.Memory Space, a 16-bit write) so BAR0 and BAR2 answer, and
/// returns whether it was already on. The device never masters the bus: bus mastering is left
/// as it is.
pub fn enable_memory(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<bool, IvshmemError> {
    identify(cfg, bdf)?;
    Ok(pci::reset::set_memory_decode(cfg, bdf, true)?)
}

/// The shared-memory BAR of an enumerated ivshmem function (BAR2): what the kernel maps for
/// [`SharedMemory::new`] and registers as a peer-to-peer provider.
pub fn shared_memory_bar(function: &Function) -> Result<Bar, IvshmemError> {
    if !matches(function) {
        return Err(IvshmemError::NotIvshmem {
            id: (function.vendor_id, function.device_id),
        });
    }
    let bar = *function
        .bar(SHARED_MEMORY_BAR)
        .ok_or(IvshmemError::NoSharedMemoryBar)?;
    if !bar.kind.is_memory() {
        return Err(IvshmemError::NotMemoryBar);
    }
    if bar.is_unassigned() {
        return Err(IvshmemError::SharedMemoryUnassigned);
    }
    Ok(bar)
}
