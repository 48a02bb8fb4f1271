//! Peer-to-peer (P2P) DMA: map types, providers (one memory BAR of a device with its bus
//! offset), the classification seam, and mapping a provider's MMIO ranges for an importing
//! device ([`DmaDevice::map_peer`]).
//!
//! Implements SPEC.md "PCI peer-to-peer (P2P)" and the mapping rules of the seed-review digest
//! ("Rules the reviewers insisted on" and items 1-10):
//!
//! - a [`Provider`] is {owner, BAR index, CPU physical range, `bus_offset`}, with
//!   `bus_offset = bus address - CPU physical address` stored wrapped (two's complement) so any
//!   pair of 64-bit addresses has an offset; BUS_ADDR translation is `dma = paddr + bus_offset`;
//! - [`MapType`] is Linux's `pci_p2pdma_map_type` without `UNKNOWN`: "not classified yet" is the
//!   absence of a cached answer, never a value a caller can receive;
//! - this crate knows no PCI topology: *which* map type applies between a provider and a client
//!   is asked through the small [`P2pClassifier`] trait, implemented by the `pci` crate from the
//!   topology, the ACS controls and a host-bridge allow policy (and by closures in tests);
//! - [`DmaDevice::map_peer`] maps a list of MMIO ranges of one provider for an importer:
//!   BUS_ADDR gives `paddr + bus_offset` per range with no IOVA; THRU_HOST_BRIDGE under an IOMMU
//!   allocates one IOVA range for the total, links each range with [`Attrs::MMIO`], syncs the
//!   IOTLB once and returns one contiguous span; THRU_HOST_BRIDGE without an IOMMU maps each range
//!   directly (dma-direct with the device's mask: MMIO the mask cannot reach is refused, never
//!   bounced); NOT_SUPPORTED and NONE are refused. Segments are split at `u32::MAX` rounded down
//!   to a page (and at the device's `max_segment`), addresses accumulate in 64 bits, a failure at
//!   range `k` unwinds exactly the `k` ranges mapped and frees the IOVA. The result carries DMA
//!   addresses only: importers never get a CPU view of peer memory.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::{Attrs, Direction};
use crate::device::DmaDevice;
use crate::error::DmaError;
use crate::invalidation::UnmapBatch;
use crate::link::IovaLink;
use crate::mapping::{check_range, Mapping};
use crate::segment::{split_segments, DmaSegment};

/// An opaque identity of a device taking part in P2P: segment group and 16-bit requester ID
/// (bus, device, function) packed as `segment << 16 | requester_id`.
///
/// Why not `pci::Bdf`: this crate knows no PCI; the `pci` crate converts both ways with the
/// functions `pci::p2p::device_id(bdf)` and `pci::p2p::bdf_of(id)`. There is deliberately no
/// `From<Bdf>`: the address type lives in `pci-address` and this type here, so the orphan rule
/// would leave such an impl to this crate, which must not depend on PCI.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DeviceId(u32);

impl DeviceId {
    /// The device `requester_id` (bus << 8 | device << 3 | function) in `segment`.
    pub const fn new(segment: u16, requester_id: u16) -> Self {
        Self((segment as u32) << 16 | requester_id as u32)
    }

    /// From the packed value.
    pub const fn from_raw(raw: u32) -> Self {
        Self(raw)
    }

    /// The packed value.
    pub const fn as_u32(self) -> u32 {
        self.0
    }

    /// The segment group.
    pub const fn segment(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The requester ID within the segment.
    pub const fn requester_id(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rid = self.requester_id();
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment(),
            rid >> 8,
            (rid >> 3) & 0x1f,
            rid & 7
        )
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// How a client device reaches a provider's memory (Linux's `enum pci_p2pdma_map_type`).
///
/// Linux's `PCI_P2PDMA_MAP_UNKNOWN` ("not computed yet") has no variant: a classifier computes an
/// answer or has none cached, and no public operation ever returns "unknown".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Not a peer-to-peer transfer: the memory is not a PCI BAR. The mapper refuses it (it maps
    /// provider ranges only); a classifier for BAR providers never returns it.
    None,
    /// The transfer would cross a host bridge that is not allowed to route peer-to-peer traffic
    /// (or the devices are unknown). Mapping fails.
    NotSupported,
    /// The devices meet below a PCIe switch with no ACS redirect on the way: the transfer stays
    /// in the switch and the device is programmed with the bus address `paddr + bus_offset`. No
    /// IOVA: the IOMMU never sees the transaction.
    ///
    /// Consequently neither unmapping nor an exporter's revoke
    /// ([`crate::Exporter::revoke`]) can take access away from the importer's device: there is
    /// no translation to remove. For these mappings revoke is advisory; the importer must honour
    /// [`crate::MoveEvent::Revoked`] and stop its DMA (see the [`crate::export`] module docs,
    /// "Revoke is enforced only through an IOMMU").
    BusAddr,
    /// The transfer goes through the root complex (an allowed host bridge): a normal mapping
    /// with the MMIO attribute, IOVA under an IOMMU, CPU physical address under dma-direct.
    ThruHostBridge,
}

impl fmt::Display for MapType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "NONE",
            Self::NotSupported => "NOT_SUPPORTED",
            Self::BusAddr => "BUS_ADDR",
            Self::ThruHostBridge => "THRU_HOST_BRIDGE",
        })
    }
}

/// One memory BAR of a device that peers may DMA to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Provider {
    owner: DeviceId,
    bar: u8,
    phys: PhysAddr,
    size: u64,
    bus_offset: u64,
}

impl Provider {
    /// A provider for BAR `bar` of `owner`, reached by the CPU at `[phys, phys + size)`, whose
    /// bus address is `phys + bus_offset` (wrapping: a negative offset is its two's complement).
    ///
    /// Errors: `size == 0` (`ZeroLength`); `phys + size - 1` or the bus address of the last byte
    /// does not fit in 64 bits (`Overflow`).
    pub fn new(
        owner: DeviceId,
        bar: u8,
        phys: PhysAddr,
        size: u64,
        bus_offset: u64,
    ) -> Result<Self, DmaError> {
        check_range(phys, size)?;
        let bus = phys.as_u64().wrapping_add(bus_offset);
        if bus.checked_add(size - 1).is_none() {
            return Err(DmaError::Overflow {
                addr: bus,
                len: size,
            });
        }
        Ok(Self {
            owner,
            bar,
            phys,
            size,
            bus_offset,
        })
    }

    /// The device owning the BAR.
    pub const fn owner(&self) -> DeviceId {
        self.owner
    }

    /// The BAR index.
    pub const fn bar(&self) -> u8 {
        self.bar
    }

    /// CPU physical address of the BAR's first byte.
    pub const fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// CPU physical address of the BAR's last byte.
    pub const fn last_byte(&self) -> u64 {
        // Cannot overflow: checked in `new`.
        self.phys.as_u64() + (self.size - 1)
    }

    /// `bus address - CPU physical address`, wrapped to 64 bits.
    pub const fn bus_offset(&self) -> u64 {
        self.bus_offset
    }

    /// The bus address of CPU physical address `phys` (`phys + bus_offset`, wrapping).
    pub const fn bus_addr(&self, phys: PhysAddr) -> u64 {
        phys.as_u64().wrapping_add(self.bus_offset)
    }

    /// Whether `[phys, phys + len)` (`len > 0`) lies inside the BAR.
    pub fn contains(&self, phys: PhysAddr, len: u64) -> bool {
        len > 0
            && phys.as_u64() >= self.phys.as_u64()
            && phys
                .as_u64()
                .checked_add(len - 1)
                .is_some_and(|last| last <= self.last_byte())
    }
}

/// What one BAR slot of a device holds, as the provider table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarSlot {
    /// A memory BAR: a provider.
    Memory {
        /// CPU physical address.
        phys: PhysAddr,
        /// Size in bytes.
        size: u64,
        /// `bus - phys`, wrapped.
        bus_offset: u64,
    },
    /// An I/O-space BAR (never a provider).
    Io,
    /// The slot is not implemented (size 0).
    Unimplemented,
    /// The upper half of the 64-bit BAR in the slot before.
    UpperHalf,
    /// A memory BAR that firmware left unassigned (address 0): not usable.
    Unassigned,
    /// A memory BAR that is not page granular (smaller than a page, or not aligned to its
    /// size): a page-granular mapping of it would reach bytes the device does not decode,
    /// which may be another device's MMIO. Never a provider.
    NotPageGranular,
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

/// The providers of one device: one per memory BAR, indexed by BAR slot.
///
/// Built by the `pci` crate from a probed function (`pci::p2p::ProviderRegistry` makes
/// initialisation idempotent). Immutable once built: a BAR that moves (after a reset that
/// firmware re-assigns) means a new table, and every export of the old one torn down first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTable {
    owner: DeviceId,
    slots: Vec<BarSlot>,
}

impl ProviderTable {
    /// The table of `owner` with one entry per BAR slot (at most 255).
    ///
    /// Errors: too many slots (`TooManyEntries`), a memory slot of size 0 or whose range
    /// overflows (see [`Provider::new`]).
    pub fn new(owner: DeviceId, slots: Vec<BarSlot>) -> Result<Self, DmaError> {
        let count = u8::try_from(slots.len()).map_err(|_| DmaError::TooManyEntries)?;
        for (index, slot) in (0..count).zip(&slots) {
            if let BarSlot::Memory {
                phys,
                size,
                bus_offset,
            } = *slot
            {
                Provider::new(owner, index, phys, size, bus_offset)?;
            }
        }
        Ok(Self { owner, slots })
    }

    /// The device.
    pub fn owner(&self) -> DeviceId {
        self.owner
    }

    /// The slots.
    pub fn slots(&self) -> &[BarSlot] {
        &self.slots
    }

    /// The provider for BAR `bar`, or why there is none.
    pub fn provider(&self, bar: u8) -> Result<Provider, ProviderError> {
        let count = self.slots.len() as u8; // <= 255, checked in `new`
        let index = bar;
        match self.slots.get(usize::from(bar)) {
            None => Err(ProviderError::IndexOutOfRange { index, count }),
            Some(BarSlot::Memory {
                phys,
                size,
                bus_offset,
            }) => Ok(Provider {
                owner: self.owner,
                bar,
                phys: *phys,
                size: *size,
                bus_offset: *bus_offset,
            }),
            Some(BarSlot::Io) => Err(ProviderError::IoBar { index }),
            Some(BarSlot::Unimplemented) => Err(ProviderError::Unimplemented { index }),
            Some(BarSlot::UpperHalf) => Err(ProviderError::UpperHalf { index }),
            Some(BarSlot::Unassigned) => Err(ProviderError::Unassigned { index }),
            Some(BarSlot::NotPageGranular) => Err(ProviderError::NotPageGranular { index }),
        }
    }

    /// Every provider, in BAR order.
    pub fn providers(&self) -> impl Iterator<Item = Provider> + '_ {
        (0..self.slots.len() as u8).filter_map(|i| self.provider(i).ok())
    }
}

/// The classification seam: which [`MapType`] applies when `client` DMAs to `provider`'s memory.
///
/// Implemented by `pci::p2p::P2pRouting` (topology + ACS + host-bridge allow policy, cached per
/// pair), and by any `Fn(&Provider, DeviceId) -> MapType` (embedders that know their routing,
/// tests). Called without any lock of this crate held; implementations must not call back into
/// the export layer.
pub trait P2pClassifier: Send + Sync {
    /// The map type between `provider` and `client`. Never fails: unknown devices are
    /// [`MapType::NotSupported`].
    fn map_type(&self, provider: &Provider, client: DeviceId) -> MapType;
}

impl<F> P2pClassifier for F
where
    F: Fn(&Provider, DeviceId) -> MapType + Send + Sync,
{
    fn map_type(&self, provider: &Provider, client: DeviceId) -> MapType {
        self(provider, client)
    }
}

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
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.release()
    }

    /// Unmaps into `batch`: the entries go now, the IOTLB flush (one per domain for the whole
    /// batch) and the freeing of the IOVA happen in [`UnmapBatch::finish`]. This is how a revoke
    /// with many importers pays one flush per domain instead of one per mapping.
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
    /// Every range is validated before anything is mapped (digest item 8). Errors (nothing
    /// changed): `EmptyList`, `ZeroLength`, `Overflow` (a range, the running total, or a bus
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

/// A classifier that always gives the same answer (embedders whose routing is fixed; tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClassifier(pub MapType);

impl P2pClassifier for FixedClassifier {
    fn map_type(&self, _provider: &Provider, _client: DeviceId) -> MapType {
        self.0
    }
}

/// A shared classifier, as the export layer stores it.
pub type SharedClassifier = Arc<dyn P2pClassifier>;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn device_id_packs_segment_and_requester_id() {
        let id = DeviceId::new(1, 0x0310);
        assert_eq!(id.as_u32(), 0x0001_0310);
        assert_eq!((id.segment(), id.requester_id()), (1, 0x0310));
        assert_eq!(id.to_string(), "0001:03:02.0");
        assert_eq!(DeviceId::from_raw(id.as_u32()), id);
    }

    #[test]
    fn map_type_names_match_linux() {
        assert_eq!(MapType::ThruHostBridge.to_string(), "THRU_HOST_BRIDGE");
        assert_eq!(MapType::NotSupported.to_string(), "NOT_SUPPORTED");
    }

    #[test]
    fn provider_rejects_bad_ranges_and_translates_with_negative_offsets() {
        let owner = DeviceId::new(0, 0x20);
        assert_eq!(
            Provider::new(owner, 0, PhysAddr::new(0x1000), 0, 0),
            Err(DmaError::ZeroLength)
        );
        assert!(matches!(
            Provider::new(owner, 0, PhysAddr::new(u64::MAX), 2, 0),
            Err(DmaError::Overflow { .. })
        ));
        // Bus address of the last byte overflows.
        assert!(matches!(
            Provider::new(owner, 0, PhysAddr::new(0x1000), 0x2000, u64::MAX - 0x1fff),
            Err(DmaError::Overflow { .. })
        ));
        // bus = phys - 0x1000_0000 (negative offset, stored wrapped).
        let off = 0u64.wrapping_sub(0x1000_0000);
        let p = Provider::new(owner, 2, PhysAddr::new(0x8000_0000), 0x10_0000, off).unwrap();
        assert_eq!(p.bus_addr(PhysAddr::new(0x8000_1000)), 0x7000_1000);
        assert!(p.contains(PhysAddr::new(0x800f_f000), 0x1000));
        assert!(!p.contains(PhysAddr::new(0x800f_f000), 0x1001));
        assert!(!p.contains(PhysAddr::new(0x7fff_f000), 0x1000));
        assert!(!p.contains(PhysAddr::new(0x8000_0000), 0));
    }

    #[test]
    fn provider_table_bounds_checks_the_index() {
        let owner = DeviceId::new(0, 0x28);
        let t = ProviderTable::new(
            owner,
            alloc::vec![
                BarSlot::Io,
                BarSlot::Memory {
                    phys: PhysAddr::new(0xfe00_0000),
                    size: 0x1000,
                    bus_offset: 0
                },
                BarSlot::Memory {
                    phys: PhysAddr::new(0x8_0000_0000),
                    size: 1 << 30,
                    bus_offset: 0
                },
                BarSlot::UpperHalf,
                BarSlot::Unimplemented,
                BarSlot::Unassigned,
            ],
        )
        .unwrap();
        assert_eq!(t.provider(1).unwrap().phys(), PhysAddr::new(0xfe00_0000));
        assert_eq!(t.provider(2).unwrap().bar(), 2);
        assert_eq!(t.provider(0), Err(ProviderError::IoBar { index: 0 }));
        assert_eq!(t.provider(3), Err(ProviderError::UpperHalf { index: 3 }));
        assert_eq!(
            t.provider(4),
            Err(ProviderError::Unimplemented { index: 4 })
        );
        assert_eq!(t.provider(5), Err(ProviderError::Unassigned { index: 5 }));
        assert_eq!(
            t.provider(6),
            Err(ProviderError::IndexOutOfRange { index: 6, count: 6 })
        );
        assert_eq!(
            t.provider(255),
            Err(ProviderError::IndexOutOfRange {
                index: 255,
                count: 6
            })
        );
        assert_eq!(t.providers().count(), 2);
        let bad = ProviderTable::new(
            owner,
            alloc::vec![BarSlot::Memory {
                phys: PhysAddr::new(0x1000),
                size: 0,
                bus_offset: 0
            }],
        );
        assert_eq!(bad, Err(DmaError::ZeroLength));
    }
}
