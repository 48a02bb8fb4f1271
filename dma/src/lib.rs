//! The hardware-independent DMA API (`#![no_std]` + `alloc`).
//!
//! Drivers hand over a physical address and a length ([`PhysAddr`]), and get back the address
//! the device must use ([`DmaAddr`]). Between the two sits either an IOMMU domain (reached through
//! the small [`iommu::IommuDomain`] trait, implemented by `iommu-vtd` and by the in-memory fakes
//! of the host tests) or the direct path. Nothing in this crate touches hardware.
//!
//! Address spaces get distinct types so a CPU physical address can never be programmed into a
//! device by accident: [`PhysAddr`] (what the CPU's physical address bus carries) and [`DmaAddr`]
//! (what the device puts on the bus: an IOVA under an IOMMU, a physical or bus address without).

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod addr;
pub mod attrs;
pub mod iommu;

pub use addr::{AddrError, DmaAddr, PhysAddr, PAGE_SIZE};
pub use attrs::{Attrs, Direction};
