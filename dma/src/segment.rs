//! DMA segments and splitting them for devices with a maximum segment length.
//!
//! Implements digest items 4-7 (seed 003, L1500-1566): chunk addresses are computed by
//! accumulation in 64 bits (never `addr + i * u32::MAX` in 32 bits), chunks are split at the
//! maximum rounded down to the page size (so every chunk but the last of a segment stays page
//! aligned), lengths and totals are `u64` (no truncation at 4 GiB), and the entry count is summed
//! with checked arithmetic before anything is allocated.

use alloc::vec::Vec;

use crate::addr::{DmaAddr, PAGE_SIZE};
use crate::error::DmaError;

/// One contiguous range as the device addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaSegment {
    /// First device address.
    pub addr: DmaAddr,
    /// Length in bytes.
    pub len: u64,
}

/// Splits `segments` so that no piece is longer than `max_len` rounded down to a page.
///
/// # Errors
///
/// `max_len` below one page (`InvalidConfig`), a zero-length segment, a segment whose
/// end overflows, a total or entry count that overflows (`TooManyEntries`).
pub fn split_segments(segments: &[DmaSegment], max_len: u64) -> Result<Vec<DmaSegment>, DmaError> {
    let chunk = max_len & !(PAGE_SIZE - 1);
    if chunk == 0 {
        return Err(DmaError::InvalidConfig(
            "maximum segment length is below one page",
        ));
    }
    // Validate and count first (digest item 8: check before use), with checked arithmetic.
    let mut count: usize = 0;
    let mut total: u64 = 0;
    for s in segments {
        if s.len == 0 {
            return Err(DmaError::ZeroLength);
        }
        s.addr.checked_add(s.len - 1)?;
        total = total.checked_add(s.len).ok_or(DmaError::TooManyEntries)?;
        let n = usize::try_from(s.len.div_ceil(chunk)).map_err(|_| DmaError::TooManyEntries)?;
        count = count.checked_add(n).ok_or(DmaError::TooManyEntries)?;
    }
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| DmaError::TooManyEntries)?;
    for s in segments {
        let mut addr = s.addr.as_u64();
        let mut left = s.len;
        while left > 0 {
            let len = left.min(chunk);
            out.push(DmaSegment {
                addr: DmaAddr::new(addr),
                len,
            });
            left -= len;
            // Cannot overflow: `s.addr + s.len - 1` was checked above and `left > 0` after this.
            if left > 0 {
                addr += len;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U32_PAGE: u64 = (u32::MAX as u64) & !(PAGE_SIZE - 1);

    fn seg(addr: u64, len: u64) -> DmaSegment {
        DmaSegment {
            addr: DmaAddr::new(addr),
            len,
        }
    }

    fn check_contiguous(start: u64, len: u64, out: &[DmaSegment]) {
        let mut next = start;
        let mut total = 0u64;
        for (i, s) in out.iter().enumerate() {
            assert_eq!(s.addr.as_u64(), next, "chunk {i} not contiguous");
            if i + 1 < out.len() {
                assert_eq!(
                    s.len % PAGE_SIZE,
                    0,
                    "inner chunk {i} length not page aligned"
                );
                assert!(s.addr.is_aligned(PAGE_SIZE));
            }
            next += s.len;
            total += s.len;
        }
        assert_eq!(total, len);
    }

    #[test]
    fn chunk_addresses_accumulate_in_64_bits() {
        // Just over 8 GiB starting above 4 GiB: a 32-bit `i * u32::MAX` would wrap.
        let start = 0x1_0000_0000;
        let len = (8 << 30) + PAGE_SIZE;
        let out = split_segments(&[seg(start, len)], u32::MAX as u64).unwrap();
        assert_eq!(out.len(), 3);
        check_contiguous(start, len, &out);
        assert_eq!(out[2].addr.as_u64(), start + 2 * U32_PAGE);
    }

    #[test]
    fn chunks_split_at_u32_max_rounded_down_to_page() {
        for len in [(4u64 << 30) - 1, 4 << 30, (4 << 30) + 1] {
            let len = len.next_multiple_of(1);
            let out = split_segments(&[seg(0x4000_0000, len)], u32::MAX as u64).unwrap();
            assert!(out.iter().all(|s| s.len <= U32_PAGE));
            assert_eq!(out[0].len, U32_PAGE.min(len));
            check_contiguous(0x4000_0000, len, &out);
        }
    }

    #[test]
    fn total_length_is_not_truncated_above_4_gib() {
        let out =
            split_segments(&[seg(0, 5 << 30), seg(0x10_0000_0000, 3 << 30)], 1 << 40).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out.iter().map(|s| s.len).sum::<u64>(), 8 << 30);
    }

    #[test]
    fn entry_count_overflow_fails_cleanly() {
        let huge = [seg(0, u64::MAX), seg(0, u64::MAX)];
        assert_eq!(
            split_segments(&huge, PAGE_SIZE),
            Err(DmaError::TooManyEntries)
        );
    }

    #[test]
    fn split_rejects_bad_input() {
        assert_eq!(
            split_segments(&[seg(0, 0)], 1 << 20),
            Err(DmaError::ZeroLength)
        );
        assert!(matches!(
            split_segments(&[seg(u64::MAX, 2)], 1 << 20),
            Err(DmaError::Overflow { .. })
        ));
        assert!(matches!(
            split_segments(&[seg(0, 1)], 100),
            Err(DmaError::InvalidConfig(_))
        ));
        // A segment ending exactly at the top of the address space is fine.
        let out = split_segments(&[seg(u64::MAX - 0x1fff, 0x2000)], PAGE_SIZE).unwrap();
        assert_eq!(out.len(), 2);
    }
}
