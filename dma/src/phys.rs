//! The seam to physical memory: contiguous page allocation below a limit, and byte access to
//! physical ranges, for bounce buffers (SPEC.md "sub-page isolation", "MMIO that would need
//! bouncing") and coherent allocations (descriptor rings).
//!
//! The kernel implements [`PhysMemory`] over its frame allocator and direct map; host tests use
//! `testing::FakePhysMemory` (feature `testing`), a `Vec` pretending to be RAM. Copies go physical to
//! physical ([`PhysMemory::copy`]) so a bounce never needs an intermediate buffer. MMIO is never
//! reached through this trait: BARs are accessed with volatile accessors only (digest, "MMIO must
//! be accessed by the CPU only through volatile register accessors").

use core::fmt;

use crate::addr::PhysAddr;
use crate::attrs::Direction;

/// Why a physical-memory operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhysError {
    /// No contiguous run of the requested pages below the limit.
    OutOfMemory {
        /// Pages requested.
        pages: u64,
    },
    /// The range is not RAM this provider manages.
    OutOfRange {
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

impl fmt::Display for PhysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfMemory { pages } => write!(f, "no {pages} contiguous free pages"),
            Self::OutOfRange { addr, len } => {
                write!(f, "{addr:#x}+{len:#x} is not managed RAM")
            }
        }
    }
}

impl core::error::Error for PhysError {}

/// CPU cache maintenance around a DMA transfer for a non-coherent device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOp {
    /// Before the device accesses the range (write back dirty lines; for device writes, also
    /// invalidate so no dirty line is evicted over the device's data).
    ForDevice(Direction),
    /// After the device accessed the range, before the CPU reads it (invalidate stale lines).
    ForCpu(Direction),
}

/// Physical memory as the DMA layer needs it.
///
/// Implementations are internally synchronised; each method is called without any lock of this
/// crate held except where a method documents otherwise.
pub trait PhysMemory: Send + Sync {
    /// Allocates `pages` contiguous 4 KiB pages, page aligned, whose last byte is at most
    /// `limit`. The content is unspecified (callers zero what the device may see).
    ///
    /// # Errors
    ///
    /// [`PhysError::OutOfMemory`] when no such run of pages is free below `limit`.
    fn alloc_pages(&self, pages: u64, limit: u64) -> Result<PhysAddr, PhysError>;

    /// Frees pages returned by [`PhysMemory::alloc_pages`] (same `base` and `pages`).
    fn free_pages(&self, base: PhysAddr, pages: u64);

    /// Copies `len` bytes from `src` to `dst` (the ranges do not overlap).
    ///
    /// # Errors
    ///
    /// [`PhysError::OutOfRange`] when a range is not memory the implementation can reach.
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), PhysError>;

    /// Sets `len` bytes at `dst` to zero.
    ///
    /// # Errors
    ///
    /// [`PhysError::OutOfRange`] when the range is not memory the implementation can reach.
    fn zero(&self, dst: PhysAddr, len: u64) -> Result<(), PhysError>;

    /// Reads `buf.len()` bytes at `src`.
    ///
    /// # Errors
    ///
    /// [`PhysError::OutOfRange`] when the range is not memory the implementation can reach.
    fn read(&self, src: PhysAddr, buf: &mut [u8]) -> Result<(), PhysError>;

    /// Writes `data` at `dst`.
    ///
    /// # Errors
    ///
    /// [`PhysError::OutOfRange`] when the range is not memory the implementation can reach.
    fn write(&self, dst: PhysAddr, data: &[u8]) -> Result<(), PhysError>;

    /// Cache maintenance for a non-coherent device. Never called for MMIO. The default does
    /// nothing, which is right for x86, where DMA snoops the CPU caches.
    fn cache_sync(&self, _range: PhysAddr, _len: u64, _op: CacheOp) {}
}
