//! Bulk CPU access to device memory with volatile loads and stores only.
//!
//! SPEC.md and the seed review forbid `memcpy` on MMIO: the compiler may turn it into any
//! access pattern (wide vector loads, overlapping stores, reads of bytes never asked for).
//! These helpers issue byte accesses up to the first 8-byte boundary, aligned 8-byte accesses
//! in the middle and byte accesses for the tail; every access is `read_volatile` or
//! `write_volatile`, which the compiler neither merges, splits nor elides. The `volatile`
//! crate's slice copies need nightly features, hence raw pointers here.

use core::ptr;

const WORD: usize = core::mem::size_of::<u64>();

/// Bytes to access one at a time before `addr` is 8-byte aligned (at most `len`).
fn head(addr: usize, len: usize) -> usize {
    ((WORD - addr % WORD) % WORD).min(len)
}

/// Copies `dst.len()` bytes of device memory starting at `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` must be mapped, readable device memory (or RAM standing in for it).
pub(crate) unsafe fn read(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    let first = head(src.addr(), len);
    while i < first {
        // SAFETY: i < len, inside the caller's range.
        dst[i] = unsafe { ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while len - i >= WORD {
        // SAFETY: src + i is 8-byte aligned here and i + 8 <= len.
        let word = unsafe { ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + WORD].copy_from_slice(&word.to_ne_bytes());
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len.
        dst[i] = unsafe { ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Copies `src` into device memory starting at `dst`.
///
/// # Safety
/// `dst..dst + src.len()` must be mapped, writable device memory (or RAM standing in for it)
/// that no Rust reference covers.
pub(crate) unsafe fn write(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let mut i = 0;
    let first = head(dst.addr(), len);
    while i < first {
        // SAFETY: i < len, inside the caller's range.
        unsafe { ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
    while len - i >= WORD {
        let mut bytes = [0; WORD];
        bytes.copy_from_slice(&src[i..i + WORD]);
        // SAFETY: dst + i is 8-byte aligned here and i + 8 <= len.
        unsafe { ptr::write_volatile(dst.add(i).cast::<u64>(), u64::from_ne_bytes(bytes)) };
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len.
        unsafe { ptr::write_volatile(dst.add(i), src[i]) };
        i += 1;
    }
}

/// Sets `len` bytes of device memory starting at `dst` to `byte`.
///
/// # Safety
/// As for [`write`], for `dst..dst + len`.
pub(crate) unsafe fn fill(dst: *mut u8, len: usize, byte: u8) {
    let pattern = u64::from_ne_bytes([byte; WORD]);
    let mut i = 0;
    let first = head(dst.addr(), len);
    while i < first {
        // SAFETY: i < len, inside the caller's range.
        unsafe { ptr::write_volatile(dst.add(i), byte) };
        i += 1;
    }
    while len - i >= WORD {
        // SAFETY: dst + i is 8-byte aligned here and i + 8 <= len.
        unsafe { ptr::write_volatile(dst.add(i).cast::<u64>(), pattern) };
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len.
        unsafe { ptr::write_volatile(dst.add(i), byte) };
        i += 1;
    }
}

/// The first index at which device memory from `src` differs from `expected`, with the byte
/// found there.
///
/// # Safety
/// As for [`read`], for `src..src + expected.len()`.
pub(crate) unsafe fn compare(src: *const u8, expected: &[u8]) -> Option<(usize, u8)> {
    let len = expected.len();
    let mut i = 0;
    let first = head(src.addr(), len);
    while i < first {
        // SAFETY: i < len, inside the caller's range.
        let found = unsafe { ptr::read_volatile(src.add(i)) };
        if found != expected[i] {
            return Some((i, found));
        }
        i += 1;
    }
    while len - i >= WORD {
        // SAFETY: src + i is 8-byte aligned here and i + 8 <= len.
        let word = unsafe { ptr::read_volatile(src.add(i).cast::<u64>()) }.to_ne_bytes();
        if let Some(k) = (0..WORD).find(|&k| word[k] != expected[i + k]) {
            return Some((i + k, word[k]));
        }
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len.
        let found = unsafe { ptr::read_volatile(src.add(i)) };
        if found != expected[i] {
            return Some((i, found));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_reaches_alignment() {
        assert_eq!(head(0x1000, 100), 0);
        assert_eq!(head(0x1001, 100), 7);
        assert_eq!(head(0x1007, 100), 1);
        assert_eq!(head(0x1003, 2), 2);
    }
}
