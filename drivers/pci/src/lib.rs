//! PCIe for bare metal (being built: see issue 3).
#![no_std]
