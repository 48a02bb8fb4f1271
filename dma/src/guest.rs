//! Guest address spaces: an IOMMU domain whose IOVA space is a virtual machine's
//! guest-physical address (GPA) space, for hypervisors that assign devices to VMs (issue 14;
//! VT-d spec §3.6 second-level translation, §3.15 / §5.1 the interrupt address range).
//!
//! A device assigned to a VM is programmed by the guest with guest-physical addresses, so the
//! domain that translates its DMA must map each GPA to the host-physical address (HPA) that backs
//! it. Unlike the DMA API above it (which allocates IOVAs for buffers), the addresses here are
//! dictated by the VM's memory layout: a [`GuestSpace`] maps exactly the GPA→HPA ranges it is
//! given, with the largest leaves alignment allows, and refuses anything that would overlap,
//! reach the interrupt window [`MSI_WINDOW`] or cut a superpage.
//!
//! - [`plan_chunks`] / [`count_leaves`] (module `plan`): which 4 KiB, 2 MiB and 1 GiB leaves a
//!   range becomes; the same rule as `iommu-vtd`'s second-level table and the test fake, so the
//!   plan predicts the table. Mapping 4 GiB of 1 GiB-aligned guest RAM writes 4 leaves.
//! - [`GuestMemoryMap`] (module `memory_map`): a validated E820-like layout (RAM, MMIO,
//!   holes) that [`GuestSpace::populate`] maps all-or-nothing.
//! - [`GuestSpace`] (module `space`): the live mappings over one [`IommuDomain`].
//!
//! Errors are [`GuestError`]s: a refused call has changed nothing, with two named exceptions
//! for a failing domain ([`GuestError::FlushFailed`], [`GuestError::UnwindIncomplete`]).
//!
//! # Leaf planning
//!
//! **The rule.** At position `(g, h)` with `r` bytes left, the next leaf is the largest size `s`
//! of the allowed set with `g % s == 0`, `h % s == 0` and `s <= r`. 4 KiB is always allowed (the
//! base granule; CAP.SLLPS only adds the larger ones). This is exactly the rule both domains
//! apply: `iommu-vtd`'s `SecondLevelTable::map` places a leaf at level L when the level's size is
//! allowed, the segment being mapped covers the whole slot (so `g` is aligned and `r >= s`) and the
//! output address is aligned, and descends otherwise, which picks the same sizes as the greedy
//! walk; `testing::FakeDomain::map` is the greedy walk itself. So a plan predicts the table a map
//! creates in a fresh region. (One documented difference on VT-d: a leaf table an earlier
//! *partial* unmap left empty stays linked and is reused, so a later map there gets 4 KiB leaves
//! where the plan says 2 MiB: never larger leaves than planned, so every leaf boundary the plan
//! has is one the table has too.)
//!
//! **Closed form.** Both addresses advance together, so a size can ever be used only if
//! `g ≡ h (mod s)`; with that set `S = s_0 < s_1 < …` fixed, the greedy walk rises (pieces of
//! `s_i` up to the first `s_{i+1}` boundary, while it lies within the range) and then falls
//! (as many pieces of the current size as fit, then the next smaller one). That is at most
//! `2·|S| - 1` runs of equal leaves, so [`count_leaves`] costs O(|S|) whatever the length:
//! 16 GiB of 4 KiB leaves is counted as fast as one page.
//!
//! [`IommuDomain`]: crate::iommu::IommuDomain

use core::fmt;
use core::ops::Range;

use crate::iommu::{IommuError, Prot};
use crate::iova;

mod memory_map;
mod plan;
mod space;

pub use memory_map::{GuestMemoryMap, GuestRegion, RegionKind};
pub use plan::{count_leaves, plan_chunks, Chunk, LeafCounts};
pub use space::{GuestMapping, GuestSpace};

/// The x86 interrupt window `0xFEE0_0000..0xFEF0_0000` (VT-d spec §3.15 / §5.1): a DMA write
/// there is an interrupt request, so it is never guest RAM and never mapped. The same window as
/// [`iova::MSI_WINDOW`], as a plain range of guest-physical addresses.
pub const MSI_WINDOW: Range<u64> =
    iova::MSI_WINDOW.start.as_u64()..iova::MSI_WINDOW.start.as_u64() + iova::MSI_WINDOW.size;

/// Whether `[gpa, gpa + len)` (not overflowing) intersects [`MSI_WINDOW`].
pub(crate) fn msi_overlap(gpa: u64, len: u64) -> bool {
    gpa < MSI_WINDOW.end && MSI_WINDOW.start < gpa + len
}

/// Refuses rights a mapping cannot have: unknown bits, neither READ nor WRITE, or MMIO with
/// CACHE (device memory is never snooped, SPEC.md "MMIO attribute").
pub(crate) fn check_prot(prot: Prot) -> Result<(), GuestError> {
    let unknown = Prot::from_bits(prot.bits()).is_none();
    let no_access = !prot.intersects(Prot::READ | Prot::WRITE);
    let cached_mmio = prot.contains(Prot::MMIO | Prot::CACHE);
    if unknown || no_access || cached_mmio {
        return Err(GuestError::BadProt { prot });
    }
    Ok(())
}

/// Why a guest-address-space operation failed. Unless the variant says otherwise, nothing was
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuestError {
    /// A length of zero.
    ZeroLength,
    /// An address or length is not a multiple of 4 KiB.
    Misaligned {
        /// Which value: `"gpa"`, `"hpa"` or `"len"`.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// `addr + len` does not fit in 64 bits.
    Overflow {
        /// Which address: `"gpa"` or `"hpa"`.
        what: &'static str,
        /// The address.
        addr: u64,
        /// The length added to it.
        len: u64,
    },
    /// The range overlaps a live mapping of this space.
    Overlap {
        /// First GPA of the refused range.
        gpa: u64,
        /// First GPA of the (lowest) existing mapping it overlaps.
        existing_gpa: u64,
    },
    /// The range intersects the interrupt window [`MSI_WINDOW`].
    MsiWindow {
        /// First GPA of the range.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// The GPA range reaches past the domain's aperture.
    OutsideAperture {
        /// First GPA of the range.
        gpa: u64,
        /// Its length.
        len: u64,
        /// The domain's highest translatable address (inclusive).
        aperture_end: u64,
    },
    /// The HPA range reaches the IOMMU's output limit (host address width).
    OutputBeyondLimit {
        /// First HPA of the range.
        hpa: u64,
        /// Its length.
        len: u64,
        /// Output addresses must be below this.
        output_limit: u64,
    },
    /// Rights a mapping cannot have: neither READ nor WRITE, unknown bits, MMIO together with
    /// CACHE, or (in a [`GuestMemoryMap`]) MMIO on a RAM region.
    BadProt {
        /// The rights given.
        prot: Prot,
    },
    /// Part of the range is not mapped in this space.
    NotMapped {
        /// The first GPA of the range that is not mapped.
        gpa: u64,
    },
    /// The unmap would cut a superpage: its range starts or ends inside a 2 MiB / 1 GiB leaf.
    /// Refused rather than performed, see [`GuestSpace::unmap`].
    SplitsSuperpage {
        /// The GPA where the range cuts the leaf (its start or end).
        gpa: u64,
        /// First GPA of the leaf.
        leaf_gpa: u64,
        /// Size of the leaf.
        leaf_size: u64,
    },
    /// A region of a memory map has length zero.
    EmptyRegion {
        /// Its index in the slice given.
        index: usize,
    },
    /// A region of a memory map starts below the one before it.
    UnsortedRegions {
        /// Its index in the slice given.
        index: usize,
    },
    /// A region of a memory map overlaps the one before it.
    RegionsOverlap {
        /// Its index in the slice given.
        index: usize,
        /// Its first GPA.
        gpa: u64,
        /// First GPA of the region before it.
        previous_gpa: u64,
    },
    /// The domain refused the operation (the domain changes nothing when it refuses).
    Iommu(IommuError),
    /// **Something changed**: the range was removed from the page table but the IOTLB
    /// invalidation did not complete, so a device may still reach its old HPAs. The space no
    /// longer lists the range; it holds the GPAs back (a map over them first retries the flush,
    /// and fails with this error again while it cannot complete) and every later flush of the
    /// space retries the invalidation.
    FlushFailed {
        /// First GPA of the range unmapped but not yet invalidated.
        gpa: u64,
        /// Its length.
        len: u64,
        /// Why the flush failed.
        cause: IommuError,
    },
    /// **Something changed**: a failed call could not undo its own partial work (the domain
    /// refused the undoing unmap). The range is still mapped and still listed by
    /// [`GuestSpace::mappings`], so the caller can retry [`GuestSpace::unmap`].
    UnwindIncomplete {
        /// First GPA of the range left mapped.
        gpa: u64,
        /// Its length.
        len: u64,
        /// Why the undo failed.
        cause: IommuError,
    },
    /// No memory for the space's own bookkeeping.
    OutOfMemory,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroLength => f.write_str("zero length"),
            Self::Misaligned { what, value } => {
                write!(f, "{what} {value:#x} is not a multiple of 4 KiB")
            }
            Self::Overflow { what, addr, len } => {
                write!(f, "{what} {addr:#x} + {len:#x} overflows 64 bits")
            }
            Self::Overlap { gpa, existing_gpa } => write!(
                f,
                "the range at GPA {gpa:#x} overlaps the mapping at GPA {existing_gpa:#x}"
            ),
            Self::MsiWindow { gpa, len } => write!(
                f,
                "GPA range {gpa:#x}+{len:#x} intersects the interrupt window {:#x}..{:#x}",
                MSI_WINDOW.start, MSI_WINDOW.end
            ),
            Self::OutsideAperture {
                gpa,
                len,
                aperture_end,
            } => write!(
                f,
                "GPA range {gpa:#x}+{len:#x} reaches past the domain's aperture end {aperture_end:#x}"
            ),
            Self::OutputBeyondLimit {
                hpa,
                len,
                output_limit,
            } => write!(
                f,
                "HPA range {hpa:#x}+{len:#x} reaches the IOMMU's output limit {output_limit:#x}"
            ),
            Self::BadProt { prot } => write!(
                f,
                "rights {prot:?} are not mappable (need READ or WRITE, known bits only, never \
                 MMIO with CACHE, MMIO only on MMIO regions)"
            ),
            Self::NotMapped { gpa } => write!(f, "GPA {gpa:#x} is not mapped"),
            Self::SplitsSuperpage {
                gpa,
                leaf_gpa,
                leaf_size,
            } => write!(
                f,
                "GPA {gpa:#x} cuts the {leaf_size:#x}-byte leaf at {leaf_gpa:#x} (unmap whole \
                 superpages, or map with 4 KiB pages where holes will be punched)"
            ),
            Self::EmptyRegion { index } => write!(f, "memory map region {index} is empty"),
            Self::UnsortedRegions { index } => write!(
                f,
                "memory map region {index} starts below the region before it"
            ),
            Self::RegionsOverlap {
                index,
                gpa,
                previous_gpa,
            } => write!(
                f,
                "memory map region {index} at GPA {gpa:#x} overlaps the region at {previous_gpa:#x}"
            ),
            Self::Iommu(e) => write!(f, "the IOMMU domain refused: {e}"),
            Self::FlushFailed { gpa, len, cause } => write!(
                f,
                "GPA range {gpa:#x}+{len:#x} was unmapped but its invalidation failed ({cause}); \
                 the range is held back"
            ),
            Self::UnwindIncomplete { gpa, len, cause } => write!(
                f,
                "GPA range {gpa:#x}+{len:#x} is still mapped: undoing it failed ({cause})"
            ),
            Self::OutOfMemory => f.write_str("out of memory for the guest space's records"),
        }
    }
}

impl core::error::Error for GuestError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Iommu(e)
            | Self::FlushFailed { cause: e, .. }
            | Self::UnwindIncomplete { cause: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<IommuError> for GuestError {
    fn from(e: IommuError) -> Self {
        Self::Iommu(e)
    }
}
