//! Export validation (SPEC.md "PCI peer-to-peer (P2P)", digest items 8 and 11): an
//! [`ExportRequest`] checked against the device's providers, in the digest's order, before
//! anything is created.

use alloc::vec::Vec;

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::p2p::{Provider, ProviderTable};

/// Export flag bits this version defines (none yet); any other bit is refused with
/// [`DmaError::UnsupportedFlags`].
pub const EXPORT_FLAGS_KNOWN: u32 = 0;

/// One range of a BAR to export: `len` bytes at `offset` from the BAR's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExportRange {
    /// Offset from the start of the BAR (page aligned).
    pub offset: u64,
    /// Length in bytes (page aligned, non-zero).
    pub len: u64,
}

/// What an exporter is asked to export (the VFIO `VFIO_DEVICE_FEATURE_DMA_BUF` request).
#[derive(Debug, Clone, Copy)]
pub struct ExportRequest<'a> {
    /// BAR index.
    pub bar: u8,
    /// The ranges, in the order importers see them.
    pub ranges: &'a [ExportRange],
    /// Flags; must be a subset of [`EXPORT_FLAGS_KNOWN`].
    pub flags: u32,
}

/// A request that passed [`validate_export`]: the provider and the CPU physical ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedExport {
    pub(super) provider: Provider,
    pub(super) ranges: Vec<(PhysAddr, u64)>,
    pub(super) size: u64,
}

impl ValidatedExport {
    /// The provider (the BAR).
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The ranges as CPU physical addresses.
    pub fn ranges(&self) -> &[(PhysAddr, u64)] {
        &self.ranges
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Validates an export request against the device's providers, in the digest's order (see the
/// module documentation). Changes nothing.
///
/// # Errors
///
/// In the order checked: [`DmaError::EmptyList`], [`DmaError::UnsupportedFlags`], the BAR's
/// [`crate::ProviderError`] ([`DmaError::Provider`]), a zero-length range ([`DmaError::ZeroLength`]),
/// an offset or length not page aligned ([`DmaError::Misaligned`]), an overflow of an address or
/// the total ([`DmaError::Overflow`]), too many ranges ([`DmaError::TooManyEntries`]), a range
/// outside the BAR ([`DmaError::OutOfRange`]).
pub fn validate_export(
    table: &ProviderTable,
    req: &ExportRequest<'_>,
) -> Result<ValidatedExport, DmaError> {
    // 1. no ranges or unknown flags
    if req.ranges.is_empty() {
        return Err(DmaError::EmptyList);
    }
    let unknown = req.flags & !EXPORT_FLAGS_KNOWN;
    if unknown != 0 {
        return Err(DmaError::UnsupportedFlags(unknown));
    }
    // 2. BAR index out of range or not a memory BAR
    let provider = table.provider(req.bar)?;
    // 3-4. per range: zero length, alignment, running total (Linux's validate_dmabuf_input)
    let mut size: u64 = 0;
    for r in req.ranges {
        if r.len == 0 {
            return Err(DmaError::ZeroLength);
        }
        if !r.offset.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "offset",
                value: r.offset,
                align: PAGE_SIZE,
            });
        }
        if !r.len.is_multiple_of(PAGE_SIZE) {
            return Err(DmaError::Misaligned {
                what: "length",
                value: r.len,
                align: PAGE_SIZE,
            });
        }
        size = size.checked_add(r.len).ok_or(DmaError::Overflow {
            addr: size,
            len: r.len,
        })?;
    }
    // 5-6. per range: BAR start + offset (+ length) overflow, end past the BAR
    // (Linux's vfio_pci_core_fill_phys_vec).
    let start = provider.phys().as_u64();
    let mut ranges = Vec::new();
    ranges
        .try_reserve_exact(req.ranges.len())
        .map_err(|_| DmaError::TooManyEntries)?;
    for r in req.ranges {
        let phys = start.checked_add(r.offset).ok_or(DmaError::Overflow {
            addr: start,
            len: r.offset,
        })?;
        // Last bytes, not one-past-the-end: a BAR may end at the top of the address space and a
        // range ending exactly there is fine. `r.len > 0` was checked in the first pass.
        let last = phys.checked_add(r.len - 1).ok_or(DmaError::Overflow {
            addr: phys,
            len: r.len,
        })?;
        if last > provider.last_byte() {
            return Err(DmaError::OutOfRange {
                offset: r.offset,
                len: r.len,
                size: provider.size(),
            });
        }
        ranges.push((PhysAddr::new(phys), r.len));
    }
    // 7. overlapping or duplicate ranges (Linux accepts them; two importers' views of the same
    // bytes through one handle is never what an exporter meant).
    let mut sorted: Vec<&ExportRange> = req.ranges.iter().collect();
    sorted.sort_by_key(|r| r.offset);
    for pair in sorted.windows(2) {
        // Cannot overflow: offset + len was checked inside the BAR above.
        if pair[0].offset + pair[0].len > pair[1].offset {
            return Err(DmaError::OverlappingRanges {
                first: pair[0].offset,
                second: pair[1].offset,
            });
        }
    }
    Ok(ValidatedExport {
        provider,
        ranges,
        size,
    })
}
