//! Hardware-independent parts of the test kernel, built for the kernel and for host unit tests.
//!
//! The bootable binary (`src/main.rs`) holds everything that touches the CPU or devices; the
//! pieces here are pure algorithms it relies on, so they are tested on the host.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod cmdline;
pub mod frames;
