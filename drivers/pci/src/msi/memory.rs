//! The seam to the memory an MSI-X Table and Pending Bit Array live in: part of a BAR, reached
//! with dword accesses (PCIe Base 4.0 §7.7.2: software accesses table entries with aligned
//! DWORD or QWORD reads and writes; this crate uses DWORDs only).
//!
//! [`MsixMemory`] is what [`super::Msix`] programs; [`VolatileMmio`] implements it over a
//! mapped BAR with volatile accesses, and `fake::FakeMsixMemory` (feature `testing`) over a
//! recording buffer.

use core::ptr::NonNull;

/// Dword access to a mapped BAR (or the part of it that holds an MSI-X structure).
///
/// Offsets are bytes from the start of the mapping. Contract for implementations, the same as
/// [`crate::ConfigSpace`]'s: an access that is not 4-byte aligned or not inside
/// [`MsixMemory::len`] reads all-ones or is ignored, and never panics.
pub trait MsixMemory {
    /// Bytes mapped (the BAR's size when the whole BAR is mapped).
    fn len(&self) -> usize;
    /// Whether nothing is mapped.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads the dword at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the dword at `offset` with one 32-bit access.
    fn write32(&self, offset: usize, value: u32);
}

impl<T: MsixMemory + ?Sized> MsixMemory for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
}

/// Whether a dword access at `offset` is aligned and inside `len` bytes.
const fn is_valid_dword(offset: usize, len: usize) -> bool {
    offset.is_multiple_of(4) && offset < len && len - offset >= 4
}

/// A BAR mapping accessed with volatile dword loads and stores.
#[derive(Debug)]
pub struct VolatileMmio {
    base: NonNull<u32>,
    len: usize,
}

// SAFETY: the mapping is device memory that `new`'s caller guarantees stays mapped while this
// value exists; every access is a single aligned volatile load or store, which the device
// serialises, so sharing the handle between CPUs is as safe as sharing an ECAM window.
unsafe impl Send for VolatileMmio {}
// SAFETY: as for `Send`: `&self` methods only issue independent aligned volatile accesses.
unsafe impl Sync for VolatileMmio {}

impl VolatileMmio {
    /// Wraps `len` bytes of mapped device memory starting at `base`.
    ///
    /// # Safety
    ///
    /// The caller guarantees that `base` is 4-byte aligned and that `base..base + len` is mapped
    /// (uncached, or with the BAR's own memory type) for as long as the returned value and
    /// anything borrowing it exist; that it is MMIO of the function whose MSI-X structures it
    /// holds (or other memory where aligned 32-bit volatile accesses have no side effects
    /// beyond the device's); and that no Rust reference to that memory exists meanwhile.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base: base.cast(),
            len,
        }
    }

    /// The dword pointer for a valid `offset`.
    fn dword(&self, offset: usize) -> Option<*mut u32> {
        is_valid_dword(offset, self.len).then(|| {
            // `offset` is in bounds (checked above), so this stays inside the mapping `new`'s
            // caller vouched for; wrapping_byte_add never dereferences.
            self.base.as_ptr().wrapping_byte_add(offset)
        })
    }
}

impl MsixMemory for VolatileMmio {
    fn len(&self) -> usize {
        self.len
    }

    fn read32(&self, offset: usize) -> u32 {
        match self.dword(offset) {
            // SAFETY: `dword` returned an aligned pointer inside the mapping `new`'s contract
            // keeps valid; a volatile load is one 32-bit MMIO read.
            Some(ptr) => unsafe { ptr.read_volatile() },
            None => u32::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(ptr) = self.dword(offset) {
            // SAFETY: as in `read32`; a volatile store is one 32-bit MMIO write.
            unsafe { ptr.write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_accesses_stay_inside_the_mapping() {
        let mut buffer = [0u32; 4];
        let base = NonNull::from(&mut buffer).cast::<u8>();
        {
            // SAFETY: `buffer` is 16 aligned bytes, outlives `mmio` (this block) and is not
            // otherwise referenced inside it.
            let mmio = unsafe { VolatileMmio::new(base, 16) };
            mmio.write32(0, 0x1111_1111);
            mmio.write32(12, 0xcafe_f00d);
            mmio.write32(16, 0xdead_beef); // out of bounds: ignored
            mmio.write32(2, 0xdead_beef); // misaligned: ignored
            mmio.write32(usize::MAX - 3, 0xdead_beef); // would overflow: ignored
            assert_eq!(mmio.read32(12), 0xcafe_f00d);
            assert_eq!(mmio.read32(16), u32::MAX);
            assert_eq!(mmio.read32(1), u32::MAX);
            assert_eq!(mmio.len(), 16);
        }
        assert_eq!(buffer, [0x1111_1111, 0, 0, 0xcafe_f00d]);
    }
}
