//! The register access seam: [`RegisterIo`], its volatile MMIO implementation
//! [`MmioRegisters`], and the access counter every unit puts around its registers
//! ([`RegisterStats`]).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// Access to one remapping unit's registers by byte offset.
///
/// Implementations must perform each access as a single access of the given width (registers
/// have side effects). Offsets come from this module's declarations.
pub trait RegisterIo: Send + Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
}

impl<T: RegisterIo + ?Sized> RegisterIo for alloc::sync::Arc<T> {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

/// Volatile access to a unit's memory-mapped register page.
///
/// Accesses outside the mapped window (or misaligned for their width) are not performed: reads
/// return all ones (what a bus returns for nothing there) and writes are dropped, so a bad
/// ECAP.IRO/CAP.FRO from the device can never make the CPU touch unmapped memory.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the register window is device memory; every access is a volatile load/store of a
// naturally aligned register, which the hardware serialises. Sharing between CPUs is what the
// unit's own locking is designed for.
unsafe impl Send for MmioRegisters {}
// SAFETY: as above; `&self` methods only perform volatile accesses.
unsafe impl Sync for MmioRegisters {}

impl MmioRegisters {
    /// Wraps a register window.
    ///
    /// # Safety
    ///
    /// `base` must point to the unit's register page (the DRHD register base) mapped uncached
    /// (UC) and readable/writable for `len` bytes, for as long as the value lives, and nothing
    /// else may access these registers meanwhile except through this value.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let size = core::mem::size_of::<T>();
        let in_window = offset.checked_add(size).is_some_and(|end| end <= self.len);
        if !in_window || !offset.is_multiple_of(size) {
            return None;
        }
        // The window is mapped for `len` bytes and `offset + size <= len`.
        Some(self.base.as_ptr().wrapping_add(offset).cast())
    }
}

impl RegisterIo for MmioRegisters {
    fn read32(&self, offset: usize) -> u32 {
        match self.ptr::<u32>(offset) {
            // SAFETY: `ptr` checked the access lies within the mapped window and is aligned;
            // `new`'s contract makes the window valid device memory.
            Some(p) => unsafe { p.read_volatile() },
            None => u32::MAX,
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        match self.ptr::<u64>(offset) {
            // SAFETY: as in `read32`.
            Some(p) => unsafe { p.read_volatile() },
            None => u64::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.ptr::<u32>(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        if let Some(p) = self.ptr::<u64>(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }
}

/// How many register accesses a unit made (see [`crate::VtdUnit::register_stats`]): under
/// emulation each one is a costly exit, so the hot path is designed to make as few as possible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterStats {
    /// 32- and 64-bit register reads.
    pub reads: u64,
    /// 32- and 64-bit register writes.
    pub writes: u64,
}

impl RegisterStats {
    /// Reads plus writes.
    pub const fn total(&self) -> u64 {
        self.reads + self.writes
    }

    /// The accesses made between `earlier` and `self` (two snapshots of one unit).
    pub const fn since(&self, earlier: &RegisterStats) -> RegisterStats {
        RegisterStats {
            reads: self.reads.wrapping_sub(earlier.reads),
            writes: self.writes.wrapping_sub(earlier.writes),
        }
    }
}

/// A [`RegisterIo`] that counts every access it forwards (relaxed atomics: a count, not a
/// synchronisation point).
#[derive(Debug)]
pub(crate) struct CountingRegisters<R> {
    inner: R,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl<R: RegisterIo> CountingRegisters<R> {
    /// Wraps `inner` with both counts at zero.
    pub(crate) const fn new(inner: R) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// The wrapped register access (accesses through it are not counted).
    pub(crate) const fn inner(&self) -> &R {
        &self.inner
    }

    /// The counts so far.
    pub(crate) fn stats(&self) -> RegisterStats {
        RegisterStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

impl<R: RegisterIo> RegisterIo for CountingRegisters<R> {
    fn read32(&self, offset: usize) -> u32 {
        self.read();
        self.inner.read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.read();
        self.inner.read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.wrote();
        self.inner.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.wrote();
        self.inner.write64(offset, value)
    }
}
