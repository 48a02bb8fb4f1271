//! Hardware-independent parts of the test kernel, built for the kernel and for host unit tests.
//!
//! The bootable binary (`src/main.rs`) holds everything that touches the CPU or devices; the
//! pieces here are pure algorithms it relies on, so they are tested on the host.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod cmdline;
pub mod frames;

/// FNV-1a (32-bit) of `bytes`: the checksum the demo and the tests print so that runs can be
/// compared by eye.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(super::fnv1a(b""), 0x811c_9dc5);
        assert_eq!(super::fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(super::fnv1a(b"foobar"), 0xbf9c_f968);
    }
}
