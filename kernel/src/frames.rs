//! Physical frame bookkeeping: one bit per 4 KiB frame, set = free.
//!
//! The kernel feeds it the RAM ranges of the PVH memory map and carves out the image and low
//! memory. Single frames come from a rotating hint (no rescans from zero); contiguous, aligned and
//! address-limited runs (DMA buffers reachable under a device mask, I/O page tables) scan the
//! bitmap a word at a time. Freeing checks that every frame was allocated, so a double free is an
//! error instead of silent corruption.

use core::fmt;

/// Size of a frame in bytes.
pub const FRAME_SIZE: u64 = 4096;

/// Why a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The range reaches past the frames this bitmap covers.
    OutOfRange {
        /// First frame of the offending range.
        frame: usize,
    },
    /// A frame in the range is already free (double free or never allocated).
    NotAllocated {
        /// The first frame found free.
        frame: usize,
    },
    /// Zero frames were given.
    Empty,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { frame } => {
                write!(f, "frame {frame:#x} is outside the managed range")
            }
            Self::NotAllocated { frame } => write!(f, "frame {frame:#x} is not allocated"),
            Self::Empty => f.write_str("empty frame range"),
        }
    }
}

impl core::error::Error for FrameError {}

/// A request for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRequest {
    /// Number of contiguous frames.
    pub count: usize,
    /// Alignment of the first frame, in frames (a power of two; 0 or 1 = none).
    pub align: usize,
    /// Every frame must lie below this frame number (exclusive), e.g. a DMA mask.
    pub limit: Option<usize>,
    /// The first frame must be at or above this frame number (e.g. a buffer a device mask
    /// cannot reach, to exercise bouncing).
    pub min: usize,
}

impl FrameRequest {
    /// One frame, anywhere.
    pub const fn one() -> Self {
        Self {
            count: 1,
            align: 1,
            limit: None,
            min: 0,
        }
    }

    /// `count` contiguous frames, anywhere.
    pub const fn contiguous(count: usize) -> Self {
        Self {
            count,
            align: 1,
            limit: None,
            min: 0,
        }
    }
}

/// The bitmap over frames `0..capacity`.
pub struct FrameBitmap<'a> {
    words: &'a mut [u64],
    free: usize,
    hint: usize,
}

impl<'a> FrameBitmap<'a> {
    /// A bitmap over `words.len() * 64` frames, all initially unavailable.
    pub fn new(words: &'a mut [u64]) -> Self {
        words.fill(0);
        Self {
            words,
            free: 0,
            hint: 0,
        }
    }

    /// Number of frames the bitmap can describe.
    pub fn capacity(&self) -> usize {
        self.words.len() * 64
    }

    /// Number of frames currently free.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    fn is_free(&self, frame: usize) -> bool {
        self.words[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(&mut self, frame: usize, free: bool) {
        let bit = 1u64 << (frame % 64);
        let word = &mut self.words[frame / 64];
        if free {
            if *word & bit == 0 {
                *word |= bit;
                self.free += 1;
            }
        } else if *word & bit != 0 {
            *word &= !bit;
            self.free -= 1;
        }
    }

    /// Marks `[start, start + count)` available, clamped to the capacity. Returns how many frames
    /// of the range the bitmap covers.
    pub fn add_free(&mut self, start: usize, count: usize) -> usize {
        let end = start.saturating_add(count).min(self.capacity());
        for f in start.min(end)..end {
            self.set(f, true);
        }
        end.saturating_sub(start)
    }

    /// Marks `[start, start + count)` unavailable (clamped), e.g. the kernel image.
    pub fn reserve(&mut self, start: usize, count: usize) {
        let end = start.saturating_add(count).min(self.capacity());
        for f in start.min(end)..end {
            self.set(f, false);
        }
    }

    /// Allocates frames per `req`; returns the first frame number.
    pub fn alloc(&mut self, req: FrameRequest) -> Option<usize> {
        if req.count == 0 {
            return None;
        }
        let align = req.align.max(1);
        if !align.is_power_of_two() {
            return None;
        }
        let limit = req.limit.unwrap_or(usize::MAX).min(self.capacity());
        if req.count == 1 && align == 1 && req.min == 0 {
            return self.alloc_one(limit);
        }
        let mut start = req.min;
        while start.checked_add(req.count)? <= limit {
            // Skip fully used words quickly.
            if start.is_multiple_of(64) && self.words[start / 64] == 0 {
                start += 64;
                continue;
            }
            if !start.is_multiple_of(align) {
                start = start.next_multiple_of(align);
                continue;
            }
            match (start..start + req.count).find(|&f| !self.is_free(f)) {
                None => {
                    for f in start..start + req.count {
                        self.set(f, false);
                    }
                    return Some(start);
                }
                Some(used) => start = (used + 1).next_multiple_of(align),
            }
        }
        None
    }

    fn alloc_one(&mut self, limit: usize) -> Option<usize> {
        let words = limit.div_ceil(64);
        let first = (self.hint / 64).min(words);
        for w in (first..words).chain(0..first) {
            let bits = self.words[w];
            if bits == 0 {
                continue;
            }
            let frame = w * 64 + bits.trailing_zeros() as usize;
            if frame >= limit {
                continue;
            }
            self.set(frame, false);
            self.hint = frame + 1;
            return Some(frame);
        }
        None
    }

    /// Returns `[start, start + count)` to the pool. Fails, changing nothing, if any frame is
    /// outside the bitmap or not currently allocated.
    pub fn free(&mut self, start: usize, count: usize) -> Result<(), FrameError> {
        if count == 0 {
            return Err(FrameError::Empty);
        }
        let end = start
            .checked_add(count)
            .filter(|&e| e <= self.capacity())
            .ok_or(FrameError::OutOfRange { frame: start })?;
        if let Some(frame) = (start..end).find(|&f| self.is_free(f)) {
            return Err(FrameError::NotAllocated { frame });
        }
        for f in start..end {
            self.set(f, true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(words: &mut [u64]) -> FrameBitmap<'_> {
        let mut b = FrameBitmap::new(words);
        b.add_free(0, b.capacity());
        b
    }

    #[test]
    fn single_frames_are_distinct_and_counted() {
        let mut w = [0u64; 4];
        let mut b = bitmap(&mut w);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..256 {
            assert!(seen.insert(b.alloc(FrameRequest::one()).unwrap()));
        }
        assert_eq!(b.alloc(FrameRequest::one()), None);
        assert_eq!(b.free_frames(), 0);
        b.free(17, 1).unwrap();
        assert_eq!(b.alloc(FrameRequest::one()), Some(17));
    }

    #[test]
    fn contiguous_aligned_and_limited() {
        let mut w = [0u64; 8];
        let mut b = bitmap(&mut w);
        b.reserve(0, 3);
        let a = b
            .alloc(FrameRequest {
                count: 16,
                align: 16,
                limit: None,
                min: 0,
            })
            .unwrap();
        assert_eq!(a % 16, 0);
        assert!(a >= 16);
        let c = b
            .alloc(FrameRequest {
                count: 4,
                align: 1,
                limit: Some(8),
                min: 0,
            })
            .unwrap();
        assert!(c + 4 <= 8 && c >= 3);
        assert_eq!(
            b.alloc(FrameRequest {
                count: 4,
                align: 1,
                limit: Some(8),
                min: 0
            }),
            None
        );
        assert_eq!(
            b.alloc(FrameRequest {
                count: 0,
                align: 1,
                limit: None,
                min: 0
            }),
            None
        );
        assert_eq!(
            b.alloc(FrameRequest {
                count: 1,
                align: 3,
                limit: None,
                min: 0
            }),
            None
        );
    }

    #[test]
    fn min_is_honoured() {
        let mut w = [0u64; 4];
        let mut b = bitmap(&mut w);
        assert_eq!(
            b.alloc(FrameRequest {
                min: 100,
                ..FrameRequest::one()
            }),
            Some(100)
        );
        assert_eq!(
            b.alloc(FrameRequest {
                min: 100,
                count: 3,
                ..FrameRequest::one()
            }),
            Some(101)
        );
        assert_eq!(
            b.alloc(FrameRequest {
                min: 250,
                count: 8,
                ..FrameRequest::one()
            }),
            None
        );
    }

    #[test]
    fn reserved_holes_are_skipped() {
        let mut w = [0u64; 2];
        let mut b = FrameBitmap::new(&mut w);
        b.add_free(10, 5);
        b.add_free(20, 10);
        assert_eq!(b.alloc(FrameRequest::contiguous(6)), Some(20));
        assert_eq!(b.alloc(FrameRequest::contiguous(5)), Some(10));
        assert_eq!(b.alloc(FrameRequest::contiguous(5)), None);
        assert_eq!(b.alloc(FrameRequest::contiguous(4)), Some(26));
    }

    #[test]
    fn bad_frees_change_nothing() {
        let mut w = [0u64; 1];
        let mut b = bitmap(&mut w);
        let a = b.alloc(FrameRequest::contiguous(4)).unwrap();
        let before = b.free_frames();
        assert_eq!(b.free(a, 5), Err(FrameError::NotAllocated { frame: a + 4 }));
        assert_eq!(b.free(60, 10), Err(FrameError::OutOfRange { frame: 60 }));
        assert_eq!(b.free(a, 0), Err(FrameError::Empty));
        assert_eq!(b.free_frames(), before);
        b.free(a, 4).unwrap();
        assert_eq!(b.free(a, 1), Err(FrameError::NotAllocated { frame: a }));
    }

    #[test]
    fn add_free_clamps_to_capacity() {
        let mut w = [0u64; 1];
        let mut b = FrameBitmap::new(&mut w);
        assert_eq!(b.add_free(60, 100), 4);
        assert_eq!(b.add_free(usize::MAX - 1, 5), 0);
        assert_eq!(b.free_frames(), 4);
    }
}
