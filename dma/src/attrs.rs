//! Mapping attributes and transfer direction.
//!
//! [`Attrs`] follows Linux's `DMA_ATTR_*` idea with Rust types: a bitflags set whose unknown bits
//! are rejected with their own error ([`UnsupportedAttrs`]) instead of being ignored (seed review,
//! digest item 3).

use core::fmt;

bitflags::bitflags! {
    /// Attributes of one mapping.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Attrs: u32 {
        /// The range is device memory (a PCI BAR), not RAM: never bounced, never CPU-cache
        /// synced, never mapped with the snoop/cacheable bit; a configuration that would need a
        /// bounce buffer is refused instead.
        const MMIO = 1 << 0;
        /// The caller takes care of CPU cache maintenance / bounce copies for this mapping.
        const SKIP_CPU_SYNC = 1 << 1;
    }
}

/// Raw attribute bits that this version does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedAttrs(pub u32);

impl fmt::Display for UnsupportedAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported DMA attribute bits {:#x}", self.0)
    }
}

impl core::error::Error for UnsupportedAttrs {}

impl Attrs {
    /// Converts raw bits, rejecting any bit this version does not define.
    ///
    /// # Errors
    ///
    /// [`UnsupportedAttrs`] carrying the undefined bits, when `bits` holds any.
    pub fn from_raw(bits: u32) -> Result<Self, UnsupportedAttrs> {
        Self::from_bits(bits).ok_or(UnsupportedAttrs(bits & !Self::all().bits()))
    }
}

/// Direction of a streaming transfer, from the device's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The device reads the buffer (CPU → device).
    ToDevice,
    /// The device writes the buffer (device → CPU).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    /// Whether the device may read the memory.
    pub const fn device_reads(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }

    /// Whether the device may write the memory.
    pub const fn device_writes(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_bits_are_rejected_distinctly() {
        assert_eq!(Attrs::from_raw(0), Ok(Attrs::empty()));
        assert_eq!(Attrs::from_raw(3), Ok(Attrs::MMIO | Attrs::SKIP_CPU_SYNC));
        assert_eq!(Attrs::from_raw(0x11), Err(UnsupportedAttrs(0x10)));
    }

    #[test]
    fn direction_permissions() {
        assert!(Direction::ToDevice.device_reads() && !Direction::ToDevice.device_writes());
        assert!(!Direction::FromDevice.device_reads() && Direction::FromDevice.device_writes());
        assert!(
            Direction::Bidirectional.device_reads() && Direction::Bidirectional.device_writes()
        );
    }
}
