//! The one error type of the DMA API ([`DmaError`]).
//!
//! Implements SPEC.md "Rules for every public operation": every rejected input has its own
//! variant carrying the values needed to act on it, and a call that returns an error has changed
//! nothing (no partially-applied state). Unknown attribute bits get their own variant
//! ([`DmaError::UnsupportedAttrs`], digest item 3), and so does an MMIO range that would need a
//! bounce buffer ([`DmaError::MmioNeedsBounce`], SPEC.md "MMIO attribute").

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::{MapType, UnsupportedAttrs};
use crate::iommu::IommuError;
use crate::phys::PhysError;
use crate::AddrError;

/// Why a mapping would have needed a bounce buffer (see [`DmaError::MmioNeedsBounce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceReason {
    /// The device's DMA mask cannot reach the range and there is no IOMMU to remap it.
    MaskUnreachable,
    /// The device is untrusted and the range does not start and end on page boundaries, so the
    /// device would see other bytes of the same pages (sub-page isolation).
    SubPage,
}

impl fmt::Display for BounceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MaskUnreachable => "the DMA mask cannot reach it without an IOMMU",
            Self::SubPage => "it is not page aligned and the device is untrusted",
        })
    }
}

/// Every way a DMA API call can fail. A failed call has changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaError {
    /// A length of zero (a mapping, a link, a scatter-gather entry, an allocation).
    ZeroLength,
    /// `addr + len` (or a running total) does not fit in 64 bits.
    Overflow {
        /// The start address (or the running total).
        addr: u64,
        /// What was added.
        len: u64,
    },
    /// A value that must be aligned is not.
    Misaligned {
        /// Which argument (e.g. `"phys"`, `"offset"`, `"iova"`).
        what: &'static str,
        /// Its value.
        value: u64,
        /// The required alignment.
        align: u64,
    },
    /// Attribute bits this version does not define (digest item 3: a distinct error).
    UnsupportedAttrs(u32),
    /// The range is not reachable under the device's DMA mask (and cannot be bounced).
    MaskViolation {
        /// First byte of the range.
        addr: u64,
        /// Its length.
        len: u64,
        /// The device's DMA mask.
        mask: u64,
    },
    /// An MMIO range would need a bounce buffer; MMIO is never bounced, so the mapping is refused.
    MmioNeedsBounce {
        /// The MMIO physical address.
        addr: u64,
        /// Its length.
        len: u64,
        /// Why a bounce would have been needed.
        reason: BounceReason,
    },
    /// Unmap (or sync, or unlink) of an address that is not mapped: never mapped, or already
    /// unmapped (double unmap).
    NotMapped {
        /// The address given.
        addr: u64,
    },
    /// Unmap (or free) of a mapped address with the wrong size.
    SizeMismatch {
        /// The address given.
        addr: u64,
        /// The size it was mapped with.
        mapped: u64,
        /// The size given.
        given: u64,
    },
    /// Unmap of a mapped address (and size) with a different direction than it was mapped with.
    DirectionMismatch {
        /// The address given.
        addr: u64,
    },
    /// Unmap of a mapped address (size and direction right) with different attributes than it
    /// was mapped with.
    AttrsMismatch {
        /// The address given.
        addr: u64,
        /// The attribute bits it was mapped with.
        mapped: u32,
        /// The attribute bits given.
        given: u32,
    },
    /// An IOVA link range whose unlink flush failed: its IOVA may still be reachable through
    /// stale IOTLB entries, so it takes no new link and its allocation is never freed. Destroy it
    /// (the remaining links are still unlinked) and allocate a new one.
    IovaPoisoned {
        /// Device address of offset 0 of the range.
        addr: u64,
    },
    /// A range lies outside the object it refers to (a link outside its IOVA allocation, a
    /// coherent-buffer access past its end, a sync outside its mapping).
    OutOfRange {
        /// Offset (or address) given.
        offset: u64,
        /// Length given.
        len: u64,
        /// Size of the object.
        size: u64,
    },
    /// Part of the range is already linked or mapped.
    AlreadyMapped {
        /// The first address (or offset) found in use.
        addr: u64,
    },
    /// No IOVA range of the requested size is free below the device's limit.
    IovaExhausted {
        /// The size asked for.
        size: u64,
    },
    /// The bounce-buffer pool has no free slot of the requested size.
    BounceExhausted {
        /// The size asked for.
        size: u64,
    },
    /// A bounce buffer is needed but the device has no bounce pool.
    NoBouncePool,
    /// The operation needs an IOMMU domain but the device is direct-mapped (e.g. the IOVA link
    /// API; callers fall back to per-range mappings).
    NoIommu,
    /// The handle was revoked by its exporter (reset, memory disabled, power-down): attach and
    /// map fail until the exporter restores it (Linux: `-ENODEV` while revoked).
    Revoked,
    /// The exporting device is gone: the export was permanently revoked at teardown and the
    /// handle outlived it ("no device").
    DeviceGone,
    /// The importer did not declare that it accepts peer-to-peer memory (Linux:
    /// `-EOPNOTSUPP` from attach).
    ImporterNotP2p,
    /// The classifier says the importer cannot reach the provider this way (NOT_SUPPORTED), or
    /// the memory is not peer memory (NONE): the mapping is refused.
    P2pNotSupported(MapType),
    /// A BAR index names no memory BAR provider (digest item 11).
    Provider(ProviderError),
    /// Flag bits this version does not define, e.g. on an export request (digest item 3: a
    /// distinct "unsupported" error).
    UnsupportedFlags(u32),
    /// Two ranges of one request overlap or are duplicates (offsets of both).
    OverlappingRanges {
        /// Offset of the earlier range.
        first: u64,
        /// Offset of the range that overlaps it.
        second: u64,
    },
    /// A configuration is contradictory (the message says which rule).
    InvalidConfig(&'static str),
    /// An empty list (scatter-gather, link list) was given.
    EmptyList,
    /// An entry count does not fit (checked arithmetic, digest item 7).
    TooManyEntries,
    /// The IOMMU domain refused or failed the operation.
    Iommu(IommuError),
    /// The physical-memory provider failed (out of memory, address outside RAM).
    Phys(PhysError),
    /// A device was created on a domain whose existing devices have the other trust level.
    /// Mixing is refused: a trusted device's mappings are whole pages, which an untrusted
    /// device sharing the page table could reach (see [`crate::DmaDomain`]).
    MixedTrust {
        /// Whether the domain's current members are trusted.
        members_trusted: bool,
        /// How many devices the domain currently has.
        members: usize,
    },
    /// An operation failed and undoing what it had done failed too (a double fault): part of
    /// it is **still mapped** (or, after a failed flush, may still be reachable through stale
    /// IOTLB entries). The device can still reach `still_mapped`, which translates to physical
    /// memory starting at `reaches`; do not free or reuse that memory. The entries and their
    /// IOVA (and bounce slots) are never handed out again. The error that started the unwind is
    /// logged; this one replaces it because it is the one a caller must act on.
    UnwindIncomplete {
        /// The first IOVA range (page granular) that is still mapped.
        still_mapped: (DmaAddr, u64),
        /// The physical page `still_mapped` starts translating to (the caller's memory, or a
        /// bounce slot that is now leaked).
        reaches: PhysAddr,
        /// How many mapped pieces the unwind could not remove (at least 1; the others follow
        /// `still_mapped` in the order they were mapped).
        stuck: usize,
        /// Why the undo failed.
        undo: IommuError,
    },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroLength => f.write_str("length is zero"),
            Self::Overflow { addr, len } => write!(f, "{addr:#x} + {len:#x} overflows 64 bits"),
            Self::Misaligned { what, value, align } => {
                write!(f, "{what} {value:#x} is not aligned to {align:#x}")
            }
            Self::UnsupportedAttrs(bits) => {
                write!(f, "unsupported DMA attribute bits {bits:#x}")
            }
            Self::MaskViolation { addr, len, mask } => {
                write!(f, "range {addr:#x}+{len:#x} is beyond the DMA mask {mask:#x}")
            }
            Self::MmioNeedsBounce { addr, len, reason } => write!(
                f,
                "MMIO range {addr:#x}+{len:#x} would need a bounce buffer ({reason}); MMIO is never bounced"
            ),
            Self::NotMapped { addr } => write!(f, "{addr:#x} is not mapped (or already unmapped)"),
            Self::SizeMismatch { addr, mapped, given } => write!(
                f,
                "{addr:#x} was mapped with size {mapped:#x}, not {given:#x}"
            ),
            Self::DirectionMismatch { addr } => {
                write!(f, "{addr:#x} was mapped with another direction")
            }
            Self::AttrsMismatch {
                addr,
                mapped,
                given,
            } => write!(
                f,
                "{addr:#x} was mapped with attribute bits {mapped:#x}, not {given:#x}"
            ),
            Self::IovaPoisoned { addr } => write!(
                f,
                "IOVA range at {addr:#x} is unusable: an IOTLB flush of it failed (destroy it)"
            ),
            Self::OutOfRange { offset, len, size } => {
                write!(f, "range {offset:#x}+{len:#x} is outside an object of size {size:#x}")
            }
            Self::AlreadyMapped { addr } => write!(f, "{addr:#x} is already mapped or linked"),
            Self::IovaExhausted { size } => write!(f, "no free IOVA range of {size:#x} bytes"),
            Self::BounceExhausted { size } => {
                write!(f, "no free bounce-buffer slot of {size:#x} bytes")
            }
            Self::NoBouncePool => f.write_str("a bounce buffer is needed but the device has none"),
            Self::NoIommu => f.write_str("the device is not behind an IOMMU domain"),
            Self::Revoked => f.write_str("the handle was revoked by its exporter"),
            Self::DeviceGone => f.write_str("no device: the exporting device was torn down"),
            Self::ImporterNotP2p => {
                f.write_str("unsupported: the importer does not accept peer-to-peer memory")
            }
            Self::P2pNotSupported(t) => write!(f, "peer-to-peer map type {t} cannot be mapped"),
            Self::Provider(e) => write!(f, "P2P provider: {e}"),
            Self::UnsupportedFlags(bits) => write!(f, "unsupported flag bits {bits:#x}"),
            Self::OverlappingRanges { first, second } => {
                write!(f, "ranges at offsets {first:#x} and {second:#x} overlap")
            }
            Self::InvalidConfig(why) => write!(f, "invalid DMA configuration: {why}"),
            Self::EmptyList => f.write_str("empty range list"),
            Self::TooManyEntries => f.write_str("entry count overflows"),
            Self::Iommu(e) => write!(f, "IOMMU: {e}"),
            Self::Phys(e) => write!(f, "physical memory: {e}"),
            Self::MixedTrust {
                members_trusted,
                members,
            } => {
                let (have, want) = if members_trusted {
                    ("trusted", "an untrusted")
                } else {
                    ("untrusted", "a trusted")
                };
                write!(
                    f,
                    "{want} device cannot join a domain of {members} {have} device(s): mixed trust is refused"
                )
            }
            Self::UnwindIncomplete {
                still_mapped: (addr, size),
                reaches,
                stuck,
                undo,
            } => write!(
                f,
                "unwind incomplete: IOVA {addr}+{size:#x} (to physical {reaches}) is still mapped, \
                 {stuck} piece(s) in all; the undo failed: {undo}"
            ),
        }
    }
}

impl core::error::Error for DmaError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Iommu(e) => Some(e),
            Self::Phys(e) => Some(e),
            Self::Provider(e) => Some(e),
            Self::UnwindIncomplete { undo, .. } => Some(undo),
            _ => None,
        }
    }
}

impl From<IommuError> for DmaError {
    fn from(e: IommuError) -> Self {
        Self::Iommu(e)
    }
}

impl From<ProviderError> for DmaError {
    fn from(e: ProviderError) -> Self {
        Self::Provider(e)
    }
}

impl From<PhysError> for DmaError {
    fn from(e: PhysError) -> Self {
        Self::Phys(e)
    }
}

impl From<AddrError> for DmaError {
    fn from(e: AddrError) -> Self {
        match e {
            AddrError::Overflow { addr, len } => Self::Overflow { addr, len },
        }
    }
}

impl From<UnsupportedAttrs> for DmaError {
    fn from(e: UnsupportedAttrs) -> Self {
        Self::UnsupportedAttrs(e.0)
    }
}

/// Why a BAR index names no provider (digest item 11: the index is always checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderError {
    /// The index is beyond the device's BAR slots.
    IndexOutOfRange {
        /// The index given.
        index: u8,
        /// Number of slots (6 for a type-0 header, 2 for a bridge).
        count: u8,
    },
    /// The BAR is an I/O BAR.
    IoBar {
        /// The index given.
        index: u8,
    },
    /// The slot is not implemented.
    Unimplemented {
        /// The index given.
        index: u8,
    },
    /// The slot is the upper half of a 64-bit BAR (use the index before it).
    UpperHalf {
        /// The index given.
        index: u8,
    },
    /// The memory BAR has no address assigned.
    Unassigned {
        /// The index given.
        index: u8,
    },
    /// The memory BAR is smaller than a page or not aligned to its size: exporting it would
    /// expose the rest of its pages.
    NotPageGranular {
        /// The index given.
        index: u8,
    },
}

impl ProviderError {
    /// Whether the index exists but is not a (usable) memory BAR.
    pub const fn is_not_memory(&self) -> bool {
        !matches!(self, Self::IndexOutOfRange { .. })
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IndexOutOfRange { index, count } => {
                write!(
                    f,
                    "BAR index {index} is out of range (the device has {count})"
                )
            }
            Self::IoBar { index } => write!(f, "BAR{index} is an I/O BAR, not memory"),
            Self::Unimplemented { index } => write!(f, "BAR{index} is not implemented"),
            Self::UpperHalf { index } => {
                write!(f, "BAR{index} is the upper half of a 64-bit BAR")
            }
            Self::Unassigned { index } => write!(f, "BAR{index} has no address assigned"),
            Self::NotPageGranular { index } => write!(
                f,
                "BAR{index} is smaller than a page or not aligned to its size: a mapping would \
                 expose the rest of its pages"
            ),
        }
    }
}

impl core::error::Error for ProviderError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn every_variant_displays_its_data() {
        let e = DmaError::MmioNeedsBounce {
            addr: 0xfe41_0024,
            len: 4,
            reason: BounceReason::SubPage,
        };
        let s = e.to_string();
        assert!(
            s.contains("0xfe410024") && s.contains("never bounced"),
            "{s}"
        );
        assert!(DmaError::UnsupportedAttrs(0x10)
            .to_string()
            .contains("0x10"));
        assert!(DmaError::from(IommuError::OutOfMemory)
            .to_string()
            .starts_with("IOMMU"));
        let src = core::error::Error::source(&DmaError::Iommu(IommuError::Detached));
        assert!(src.is_some());
    }

    #[test]
    fn attrs_mismatch_and_poisoned_display_their_data() {
        let s = DmaError::AttrsMismatch {
            addr: 0x1234_5000,
            mapped: 0x1,
            given: 0x2,
        }
        .to_string();
        assert!(
            s.contains("0x12345000") && s.contains("0x1") && s.contains("0x2"),
            "{s}"
        );
        assert!(s.contains("attribute"), "{s}");
        let d = DmaError::DirectionMismatch { addr: 0x1000 }.to_string();
        assert!(!d.contains("attributes"), "{d}");
        let p = DmaError::IovaPoisoned { addr: 0xabc000 }.to_string();
        assert!(p.contains("0xabc000") && p.contains("flush"), "{p}");
    }

    #[test]
    fn mixed_trust_and_unwind_incomplete_display_their_data() {
        let m = DmaError::MixedTrust {
            members_trusted: true,
            members: 3,
        }
        .to_string();
        assert!(
            m.contains("an untrusted device") && m.contains("3 trusted"),
            "{m}"
        );
        let e = DmaError::UnwindIncomplete {
            still_mapped: (DmaAddr::new(0x7000), 0x2000),
            reaches: PhysAddr::new(0x1234_5000),
            stuck: 2,
            undo: IommuError::NotMapped { iova: 0x7000 },
        };
        let u = e.to_string();
        assert!(
            u.contains("0x7000+0x2000") && u.contains("0x12345000") && u.contains("2 piece"),
            "{u}"
        );
        let src = core::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(src.as_deref(), Some("iova 0x7000 is not mapped"));
    }
}
