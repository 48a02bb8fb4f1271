//! Intel VT-d for bare metal (being built: see issue 4).
#![no_std]
