//! The ACPI DMA Remapping Reporting table (DMAR): parsing, validation and device-scope
//! resolution, plus a builder for tables (virtual firmware, tests).
//!
//! Implements VT-d spec §8 (rev 3.x/4.x): the DMAR header (§8.1), the remapping-structure
//! list walked by its length fields (§8.2), DRHD (§8.3), device scopes and their path
//! resolution (§8.3.1), RMRR (§8.4), ATSR (§8.5), RHSA (§8.6), ANDD (§8.7), SATC (§8.8) and
//! SIDP (§8.9, rev 4.x). Reserved structure types (7 and above) are walked over and exposed as
//! [`RemappingStructure::Other`], as the spec asks software to do.
//!
//! Validation happens at two levels:
//!
//! - **Framing** ([`Dmar::parse`]): signature, length, checksum, the host address width, every
//!   structure length and every scope length and path entry. A table that fails here is a typed
//!   [`DmarError`]; nothing of it is trusted, and the iterators afterwards never meet a malformed
//!   record (no panic, no out-of-bounds read, whatever the bytes).
//! - **Content** (per structure): a DRHD whose register window is at address 0, not page
//!   aligned, or absurdly large, an RMRR whose range is inverted or not 4 KiB aligned, and a
//!   device scope of a reserved type are *refused individually*: they are kept out of
//!   [`Dmar::structures`], [`Dmar::drhds`], [`Dmar::rmrrs`] and the scope iterators, and listed
//!   with their reason by [`Dmar::refused`] so the caller can log them. This is what Linux does
//!   with such records (warn, skip), and it lets a platform with one broken unit keep the others.
//!   A table left without any usable DRHD means "no IOMMU": [`Dmar::require_unit`] says so with
//!   [`DmarError::NoRemappingUnit`].

use alloc::vec::Vec;
use core::fmt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};
mod builder;
mod error;
mod layout;
mod parse;
mod scope;

pub use builder::*;
pub use error::*;
pub use layout::*;
use layout::{
    MAX_DEVICE, MAX_FUNCTION, PAGE_MASK, PAGE_SHIFT, PATH_ENTRY_LEN, SCOPE_FIXED_LEN,
    STRUCT_HEADER_LEN,
};
pub use parse::*;
pub use scope::*;

/// segment of the structure that holds the scope.
pub use pci_address::Bdf;

#[cfg(test)]
mod tests;
