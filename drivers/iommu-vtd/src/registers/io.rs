//! The register access seam: [`RegisterIo`] and its volatile MMIO implementation
//! [`MmioRegisters`].

use core::ptr::NonNull;

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
