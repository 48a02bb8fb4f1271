//! xorshift64*: a tiny deterministic generator for the fixed-seed mutation fuzzers (shared by
//! `iommu-vtd`'s DMAR fuzz and `pci`'s MCFG/config-space fuzz through `#[path]`).

/// The generator state (any nonzero seed).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 pseudo-random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
