//! The content of the test disks: a byte stream computed from a seed and the byte offset, so
//! the kernel checks what it reads without a copy of the image, and xtask builds the image file
//! and checks what the kernel wrote into it after QEMU exits. Not cryptographic: every 8-byte
//! word is `splitmix64(seed + word index)`, little endian.

/// splitmix64's output function (Steele, Lea, Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014).
pub const fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The byte at `offset` of the stream `seed`.
pub const fn byte(seed: u64, offset: u64) -> u8 {
    (mix(seed.wrapping_add(offset / 8)) >> (8 * (offset % 8))) as u8
}

/// Fills `buf` with the stream `seed` from byte `offset` on.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut at = offset;
    let mut rest = buf;
    while !rest.is_empty() {
        let word = mix(seed.wrapping_add(at / 8)).to_le_bytes();
        let skip = (at % 8) as usize;
        let n = (8 - skip).min(rest.len());
        rest[..n].copy_from_slice(&word[skip..skip + n]);
        rest = &mut rest[n..];
        at += n as u64;
    }
}

/// Whether `buf` holds the stream `seed` from byte `offset` on; the first mismatch otherwise.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .position(|(i, &b)| b != byte(seed, offset + i as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_check_agree_at_any_offset() {
        let mut buf = [0u8; 37];
        fill(7, 1234, &mut buf);
        for (i, &b) in buf.iter().enumerate() {
            assert_eq!(b, byte(7, 1234 + i as u64));
        }
        assert_eq!(first_mismatch(7, 1234, &buf), None);
        assert!(first_mismatch(8, 1234, &buf).is_some());
        assert!(first_mismatch(7, 1235, &buf).is_some());
        buf[20] ^= 1;
        assert_eq!(first_mismatch(7, 1234, &buf), Some(20));
        // splitmix64's published first output for state 0 (after one increment).
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    }
}
