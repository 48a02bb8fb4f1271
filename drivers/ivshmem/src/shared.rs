//! The shared memory at BAR2: bounds-checked byte access through volatile loads and stores.

use core::fmt;
use core::ptr::NonNull;

use crate::{mmio, IvshmemError};

/// The first byte where [`SharedMemory::compare`] found a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset in the shared memory.
    pub offset: usize,
    /// Byte expected.
    pub expected: u8,
    /// Byte found.
    pub found: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shared memory offset {:#x}: expected {:#04x}, found {:#04x}",
            self.offset, self.expected, self.found
        )
    }
}

/// A CPU mapping of the shared memory (BAR2).
///
/// Every access is checked against the mapping's size first and refused with a typed error
/// (zero length, end past the mapping, `offset + len` overflow) before any byte is touched.
/// Writes take `&mut self` so that the CPU side has one writer; devices (a peer's DMA) may
/// still change the memory at any time, which is why every access is volatile.
pub struct SharedMemory {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is device memory reached only through volatile accesses; the type owns no
// thread-bound state.
unsafe impl Send for SharedMemory {}
// SAFETY: &self methods only read, with volatile loads.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Binds to a mapping of BAR2.
    ///
    /// # Safety
    /// `base..base + size` must be mapped (uncached or write-combining, with memory decoding on)
    /// for the lifetime of the returned object, cover no more than BAR2, and no Rust reference
    /// may cover it. Host tests may pass ordinary memory standing in for the BAR.
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Result<Self, IvshmemError> {
        if size == 0 {
            return Err(IvshmemError::ZeroLength);
        }
        if base.addr().get().checked_add(size).is_none() {
            return Err(IvshmemError::OutOfBounds {
                offset: 0,
                len: size,
                size: usize::MAX - base.addr().get(),
            });
        }
        Ok(Self { base, size })
    }

    /// Size of the mapping in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Checks an access of `len` bytes at `offset`.
    pub fn check(&self, offset: usize, len: usize) -> Result<(), IvshmemError> {
        if len == 0 {
            return Err(IvshmemError::ZeroLength);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(IvshmemError::OutOfBounds {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn at(&self, offset: usize) -> *mut u8 {
        // SAFETY (for callers): `offset` was checked to be inside the mapping.
        self.base.as_ptr().wrapping_add(offset)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), IvshmemError> {
        self.check(offset, buf.len())?;
        // SAFETY: offset..offset + len lies inside the mapping `new` was given.
        unsafe { mmio::read(self.at(offset), buf) };
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), IvshmemError> {
        self.check(offset, data.len())?;
        // SAFETY: offset..offset + len lies inside the mapping, which no reference covers.
        unsafe { mmio::write(self.at(offset), data) };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result<(), IvshmemError> {
        self.check(offset, len)?;
        // SAFETY: offset..offset + len lies inside the mapping, which no reference covers.
        unsafe { mmio::fill(self.at(offset), len, byte) };
        Ok(())
    }

    /// Compares the bytes at `offset` with `expected`: `None` if equal, else the first
    /// difference.
    pub fn compare(
        &self,
        offset: usize,
        expected: &[u8],
    ) -> Result<Option<Mismatch>, IvshmemError> {
        self.check(offset, expected.len())?;
        // SAFETY: offset..offset + len lies inside the mapping `new` was given.
        let found = unsafe { mmio::compare(self.at(offset), expected) };
        Ok(found.map(|(i, found)| Mismatch {
            offset: offset + i,
            expected: expected[i],
            found,
        }))
    }

    /// Reads the little-endian u64 at `offset` (one volatile 8-byte load when the address is
    /// 8-byte aligned, byte loads otherwise).
    pub fn read_u64(&self, offset: usize) -> Result<u64, IvshmemError> {
        let mut bytes = [0; 8];
        self.read_bytes(offset, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Writes `value` little-endian at `offset` (one volatile 8-byte store when aligned).
    pub fn write_u64(&mut self, offset: usize, value: u64) -> Result<(), IvshmemError> {
        self.write_bytes(offset, &value.to_le_bytes())
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("base", &self.base)
            .field("size", &self.size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight-byte-aligned RAM standing in for the BAR.
    fn buffer(words: usize) -> Vec<u64> {
        vec![0; words]
    }

    fn map(buf: &mut [u64]) -> SharedMemory {
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the buffer outlives the mapping in every test and is not otherwise borrowed
        // while the mapping is used.
        unsafe { SharedMemory::new(base, buf.len() * 8).unwrap() }
    }

    #[test]
    fn accesses_are_bounds_checked_before_touching_memory() {
        let mut buf = buffer(8);
        let mut shm = map(&mut buf);
        assert_eq!(shm.size(), 64);
        let oob = |offset, len| IvshmemError::OutOfBounds {
            offset,
            len,
            size: 64,
        };
        assert_eq!(shm.write_bytes(60, &[1; 5]), Err(oob(60, 5)));
        assert_eq!(shm.write_bytes(64, &[1]), Err(oob(64, 1)));
        assert_eq!(shm.fill(usize::MAX, 2, 0xff), Err(oob(usize::MAX, 2)));
        assert_eq!(shm.fill(1, usize::MAX, 0xff), Err(oob(1, usize::MAX)));
        assert_eq!(shm.read_bytes(0, &mut []), Err(IvshmemError::ZeroLength));
        assert_eq!(shm.fill(0, 0, 1), Err(IvshmemError::ZeroLength));
        assert_eq!(shm.compare(63, &[0, 0]), Err(oob(63, 2)));
        assert_eq!(shm.read_u64(57), Err(oob(57, 8)));
        // Nothing was written by the refused calls.
        assert_eq!(shm.compare(0, &[0; 64]), Ok(None));
        // Ending exactly at the end is fine.
        shm.write_bytes(60, &[1, 2, 3, 4]).unwrap();
        let mut out = [0; 4];
        shm.read_bytes(60, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(buf[7].to_le_bytes()[4..], [1, 2, 3, 4]);
    }

    #[test]
    fn unaligned_copies_fills_and_compares() {
        let mut buf = buffer(8);
        let mut shm = map(&mut buf);
        let data: Vec<u8> = (1..=37).collect();
        shm.write_bytes(3, &data).unwrap();
        let mut out = vec![0; 37];
        shm.read_bytes(3, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(shm.compare(3, &data), Ok(None));
        let mut wrong = data.clone();
        wrong[20] ^= 0xff;
        assert_eq!(
            shm.compare(3, &wrong),
            Ok(Some(Mismatch {
                offset: 23,
                expected: wrong[20],
                found: data[20]
            }))
        );
        shm.fill(5, 20, 0xa5).unwrap();
        let mut out = [0; 24];
        shm.read_bytes(4, &mut out).unwrap();
        assert_eq!(out[0], 2);
        assert!(out[1..21].iter().all(|&b| b == 0xa5));
        assert_eq!(out[21], 23);
        shm.write_u64(16, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(shm.read_u64(16), Ok(0x1122_3344_5566_7788));
        assert!(Mismatch {
            offset: 1,
            expected: 2,
            found: 3
        }
        .to_string()
        .contains("0x1"));
    }

    #[test]
    fn empty_or_wrapping_mappings_are_refused() {
        let mut buf = buffer(1);
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: nothing is accessed: the constructor refuses.
        let err = unsafe { SharedMemory::new(base, 0) }.unwrap_err();
        assert_eq!(err, IvshmemError::ZeroLength);
        // SAFETY: as above.
        let err = unsafe { SharedMemory::new(base, usize::MAX) }.unwrap_err();
        assert!(matches!(err, IvshmemError::OutOfBounds { .. }));
    }
}
