//! Mapping a provider's MMIO for an importing device: [`DmaDevice::map_peer`] and its RAII
//! handle [`PeerMapping`] (SPEC.md "PCI peer-to-peer (P2P)", digest items 1-10). The vocabulary
//! it maps with (providers, map types, the classifier seam) is [`crate::p2p`].
//!
//! BUS_ADDR gives `paddr + bus_offset` per range with no IOVA; THRU_HOST_BRIDGE under an IOMMU
//! allocates one IOVA range for the total, links each range with [`Attrs::MMIO`], syncs the
//! IOTLB once and returns one contiguous span; THRU_HOST_BRIDGE without an IOMMU maps each range
//! directly (dma-direct with the device's mask: MMIO the mask cannot reach is refused, never
//! bounced); NOT_SUPPORTED and NONE are refused. Segments are split at `u32::MAX` rounded down
//! to a page (and at the device's `max_segment`), addresses accumulate in 64 bits, a failure at
//! range `k` unwinds exactly the `k` ranges mapped and frees the IOVA. The result carries DMA
//! addresses only: importers never get a CPU view of peer memory.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::{Attrs, Direction, MapType};
use crate::checks::check_range;
use crate::device::DmaDevice;
use crate::engine::UnmapBatch;
use crate::error::DmaError;
use crate::link::IovaLink;
use crate::mapping::Mapping;
use crate::p2p::Provider;
use crate::segment::{split_segments, DmaSegment};

/// The longest segment handed to an importer: the device's `max_segment`, and never more than
/// `u32::MAX` (a 32-bit descriptor length field, Linux's scatterlist); [`split_segments`] rounds
/// it down to a page (digest item 5).
fn segment_limit(dev: &DmaDevice) -> u64 {
    dev.config().max_segment.min(u64::from(u32::MAX))
}

/// What keeps a [`PeerMapping`] alive.
enum Backing {
    /// BUS_ADDR: nothing to undo.
    Bus,
    /// THRU_HOST_BRIDGE under an IOMMU: one IOVA range with every range linked.
    Iommu(IovaLink),
    /// THRU_HOST_BRIDGE on the direct path: one mapping per range.
    Direct(Vec<Mapping>),
}

/// MMIO ranges of one provider mapped for an importing device: DMA segments only (no CPU side).
/// Unmapped on drop; [`PeerMapping::unmap`] reports the result.
#[must_use = "dropping a PeerMapping unmaps it at once"]
pub struct PeerMapping {
    map_type: MapType,
    segments: Vec<DmaSegment>,
    size: u64,
    backing: Option<Backing>,
}

impl fmt::Debug for PeerMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerMapping")
            .field("map_type", &self.map_type)
            .field("size", &self.size)
            .field("segments", &self.segments.len())
            .field("iova", &self.iova_allocation())
            .finish()
    }
}

impl PeerMapping {
    /// How the importer reaches the memory.
    pub fn map_type(&self) -> MapType {
        self.map_type
    }

    /// The device addresses, in range order, each at most `min(max_segment, u32::MAX)` rounded
    /// down to a page. Under an IOMMU they are one contiguous span.
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }

    /// Total bytes mapped (64-bit: never truncated, digest item 6).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The IOVA allocation `(start, size)` (THRU_HOST_BRIDGE under an IOMMU).
    pub fn iova_allocation(&self) -> Option<(DmaAddr, u64)> {
        match &self.backing {
            Some(Backing::Iommu(link)) => Some(link.allocation()),
            _ => None,
        }
    }

    /// Unmaps now: every range exactly as it was mapped, one IOTLB flush, the whole IOVA
    /// allocation freed. Strict even on a deferred-invalidation domain (the link API always
    /// flushes before returning), which is what lets a revoke promise that the flush completed.
    /// On an error the IOVA is leaked, never reused.
    ///
    /// # Errors
    ///
    /// The first unmap or IOTLB flush error ([`DmaError::Iommu`]); the IOVA is then leaked, never
    /// reused.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.release()
    }

    /// Unmaps into `batch`: the entries go now, the IOTLB flush (one per domain for the whole
    /// batch) and the freeing of the IOVA happen in [`UnmapBatch::finish`]. This is how a revoke
    /// with many importers pays one flush per domain instead of one per mapping.
    ///
    /// # Errors
    ///
    /// The first page-table unmap error ([`DmaError::Iommu`]); the ranges unmapped before it are in
    /// the batch.
    pub fn unmap_in(mut self, batch: &mut UnmapBatch) -> Result<(), DmaError> {
        match self.backing.take() {
            None | Some(Backing::Bus) => Ok(()),
            Some(Backing::Iommu(link)) => link.destroy_in(batch),
            Some(Backing::Direct(maps)) => {
                let mut first = Ok(());
                for m in maps {
                    if let Err(e) = m.unmap_in(batch) {
                        first = first.and(Err(e));
                    }
                }
                first
            }
        }
    }

    fn release(&mut self) -> Result<(), DmaError> {
        match self.backing.take() {
            None | Some(Backing::Bus) => Ok(()),
            Some(Backing::Iommu(link)) => link.destroy(),
            Some(Backing::Direct(maps)) => {
                let mut first = Ok(());
                for m in maps {
                    if let Err(e) = m.unmap() {
                        if first.is_ok() {
                            first = Err(e);
                        }
                    }
                }
                first
            }
        }
    }
}

impl Drop for PeerMapping {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!("dma: P2P unmap on drop failed: {e}");
        }
    }
}

/// Checks a range list against the provider: non-empty, each range non-empty, no overflow,
/// inside the BAR, total fits in 64 bits. Returns the total.
fn check_peer_ranges(provider: &Provider, ranges: &[(PhysAddr, u64)]) -> Result<u64, DmaError> {
    if ranges.is_empty() {
        return Err(DmaError::EmptyList);
    }
    let mut total: u64 = 0;
    for &(phys, len) in ranges {
        check_range(phys, len)?;
        if !provider.contains(phys, len) {
            return Err(DmaError::OutOfRange {
                offset: phys.as_u64().wrapping_sub(provider.phys().as_u64()),
                len,
                size: provider.size(),
            });
        }
        total = total
            .checked_add(len)
            .ok_or(DmaError::Overflow { addr: total, len })?;
    }
    Ok(total)
}

impl DmaDevice {
    /// Maps MMIO `ranges` (CPU physical) of `provider` for this device, the importer, as
    /// `map_type` says (see the module documentation for each type).
    ///
    /// Every range is validated before anything is mapped (digest item 8).
    ///
    /// # Errors
    ///
    /// Nothing changes on an error: `EmptyList`, `ZeroLength`, `Overflow` (a range, the running total, or a bus
    /// address), `OutOfRange` (a range outside the BAR), `P2pNotSupported` (NOT_SUPPORTED or
    /// NONE), `MaskViolation` (BUS_ADDR: the bus address is beyond the device's mask),
    /// `MmioNeedsBounce` (direct path beyond the mask, or an untrusted device with unaligned
    /// ranges), `Misaligned` (IOMMU path: an inner range boundary not page aligned, which one
    /// contiguous IOVA span cannot express), IOVA exhaustion, IOMMU errors, `TooManyEntries`.
    /// A failure at range `k` unwinds exactly the `k` ranges mapped before it and frees the IOVA
    /// (digest items 1, 2, 9, 10).
    pub fn map_peer(
        &self,
        provider: &Provider,
        map_type: MapType,
        ranges: &[(PhysAddr, u64)],
        dir: Direction,
    ) -> Result<PeerMapping, DmaError> {
        let size = check_peer_ranges(provider, ranges)?;
        let limit = segment_limit(self);
        let (segments, backing) = match map_type {
            MapType::NotSupported | MapType::None => {
                return Err(DmaError::P2pNotSupported(map_type))
            }
            MapType::BusAddr => {
                let mut segs = Vec::new();
                segs.try_reserve_exact(ranges.len())
                    .map_err(|_| DmaError::TooManyEntries)?;
                for &(phys, len) in ranges {
                    let bus = provider.bus_addr(phys);
                    let last = bus
                        .checked_add(len - 1)
                        .ok_or(DmaError::Overflow { addr: bus, len })?;
                    if last > self.mask() {
                        return Err(DmaError::MaskViolation {
                            addr: bus,
                            len,
                            mask: self.mask(),
                        });
                    }
                    segs.push(DmaSegment {
                        addr: DmaAddr::new(bus),
                        len,
                    });
                }
                (split_segments(&segs, limit)?, Backing::Bus)
            }
            MapType::ThruHostBridge if self.domain().is_some() => {
                // One IOVA range for the total, each range linked with the MMIO attribute, one
                // IOTLB sync; any failure drops `link`, which unlinks what was linked and frees
                // the whole allocation.
                let link = self.map_linked(ranges, dir, Attrs::MMIO)?;
                let span = DmaSegment {
                    addr: link.addr(),
                    len: size,
                };
                (split_segments(&[span], limit)?, Backing::Iommu(link))
            }
            MapType::ThruHostBridge => {
                let mut maps: Vec<Mapping> = Vec::new();
                maps.try_reserve_exact(ranges.len())
                    .map_err(|_| DmaError::TooManyEntries)?;
                for &(phys, len) in ranges {
                    // On error `maps` drops: exactly the ranges mapped so far are unmapped.
                    maps.push(self.map_phys(phys, len, dir, Attrs::MMIO)?);
                }
                let segs: Vec<DmaSegment> = maps
                    .iter()
                    .map(|m| DmaSegment {
                        addr: m.dma_addr(),
                        len: m.len(),
                    })
                    .collect();
                (split_segments(&segs, limit)?, Backing::Direct(maps))
            }
        };
        Ok(PeerMapping {
            map_type,
            segments,
            size,
            backing: Some(backing),
        })
    }
}
