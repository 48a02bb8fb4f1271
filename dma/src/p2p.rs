//! Peer-to-peer (P2P) DMA vocabulary: map types, providers (one memory BAR of a device with its
//! bus offset) and the classification seam. Mapping a provider's MMIO ranges for an importing
//! device ([`crate::DmaDevice::map_peer`]) is [`crate::peer`]; [`MapType`] is declared with the
//! other mapping attributes in [`crate::attrs`], [`ProviderError`] with the errors in
//! [`crate::error`], and both are re-exported here.
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
//! - [`crate::DmaDevice::map_peer`] maps a list of MMIO ranges of one provider for an importer
//!   (see [`crate::peer`] for the rules per map type).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::PhysAddr;
use crate::checks::check_range;
use crate::error::DmaError;

pub use crate::attrs::MapType;
pub use crate::error::ProviderError;
/// The PCI function address and requester ID a [`DeviceId`] is made of (from `pci-address`,
/// re-exported so an embedder of this crate alone can name a device).
pub use pci_address::{Bdf, RequesterId};

/// The identity of a device taking part in P2P: its PCI function address (segment group and
/// requester ID), the workspace's one [`Bdf`] from `pci-address`.
///
/// This crate knows no PCI *topology* (which map type applies is asked through
/// [`P2pClassifier`]), but it does name devices, and a second encoding of "segment + requester
/// ID" here would be a second concept to keep in step with the one the `pci` and `iommu-vtd`
/// crates use. So `dma` depends on `pci-address`, which has no dependencies, no `unsafe` and no
/// hardware access, and `DeviceId` wraps a [`Bdf`]: `From` converts both ways, and the packed
/// form (`segment << 16 | requester_id`) is only [`DeviceId::from_raw`]/[`DeviceId::as_u32`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(Bdf);

impl DeviceId {
    /// The device `requester_id` in `segment`.
    pub const fn new(segment: u16, requester_id: RequesterId) -> Self {
        Self(Bdf::from_requester_id(segment, requester_id))
    }

    /// From the packed value `segment << 16 | requester_id`.
    pub const fn from_raw(raw: u32) -> Self {
        Self::new((raw >> 16) as u16, RequesterId::new(raw as u16))
    }

    /// The packed value `segment << 16 | requester_id`.
    pub const fn as_u32(self) -> u32 {
        (self.segment() as u32) << 16 | self.requester_id().get() as u32
    }

    /// The PCI function.
    pub const fn bdf(self) -> Bdf {
        self.0
    }

    /// The segment group.
    pub const fn segment(self) -> u16 {
        self.0.segment()
    }

    /// The requester ID within the segment.
    pub const fn requester_id(self) -> RequesterId {
        self.0.requester_id()
    }
}

/// Function 00:00.0 of segment 0 (the packed value 0).
impl Default for DeviceId {
    fn default() -> Self {
        Self::from_raw(0)
    }
}

impl From<Bdf> for DeviceId {
    fn from(bdf: Bdf) -> Self {
        Self(bdf)
    }
}

impl From<DeviceId> for Bdf {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

/// `ssss:bb:dd.f`: the segment is always printed (unlike [`Bdf`]'s `Display`).
impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bdf = self.0;
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            bdf.segment(),
            bdf.bus(),
            bdf.device(),
            bdf.function()
        )
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
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
    /// # Errors
    ///
    /// `size == 0` (`ZeroLength`); `phys + size - 1` or the bus address of the last byte
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
    /// # Errors
    ///
    /// too many slots (`TooManyEntries`), a memory slot of size 0 or whose range
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
    ///
    /// # Errors
    ///
    /// The [`ProviderError`] saying why BAR `bar` is no provider: beyond the slots, an I/O BAR,
    /// unimplemented, the upper half of a 64-bit BAR, unassigned, or not page granular.
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
        let id = DeviceId::new(1, RequesterId::new(0x0310));
        assert_eq!(id.as_u32(), 0x0001_0310);
        assert_eq!((id.segment(), id.requester_id().get()), (1, 0x0310));
        assert_eq!(id.to_string(), "0001:03:02.0");
        assert_eq!(DeviceId::from_raw(id.as_u32()), id);
        assert_eq!(Bdf::from(id), id.bdf());
        assert_eq!(DeviceId::from(id.bdf()), id);
        assert_eq!(DeviceId::default().as_u32(), 0);
    }

    #[test]
    fn map_type_names_match_linux() {
        assert_eq!(MapType::ThruHostBridge.to_string(), "THRU_HOST_BRIDGE");
        assert_eq!(MapType::NotSupported.to_string(), "NOT_SUPPORTED");
    }

    #[test]
    fn provider_rejects_bad_ranges_and_translates_with_negative_offsets() {
        let owner = DeviceId::new(0, RequesterId::new(0x20));
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
        let owner = DeviceId::new(0, RequesterId::new(0x28));
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
