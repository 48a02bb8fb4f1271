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
//!
//! # Layers
//!
//! Dependencies between the modules flow one way, downwards (`cargo xtask lint` checks that the
//! module graph has no cycle):
//!
//! 1. **addresses, attributes, errors and the seams**: [`addr`], [`attrs`], [`error`], [`iommu`],
//!    [`phys`], [`segment`], the P2P vocabulary [`p2p`] (and private argument checks);
//! 2. **the allocators**: [`iova`] (IOVA space), [`bounce`] (bounce slots);
//! 3. **the mapping engine**: [`invalidation`] (policy, deferred queue), [`domain`], the device
//!    state in [`device`], and the private engine (mapping records, map/unwind/unmap, batches);
//! 4. **the device-facing API**: [`mapping`], [`coherent`], [`link`];
//! 5. **peer-to-peer and exports**: [`peer`], [`export`];
//! 6. **guest address spaces** for hypervisors: [`guest`] (on the seams of layer 1 only).
//!
//! # Map of the crate (SPEC.md section → module)
//!
//! | concept | module |
//! |---|---|
//! | typed addresses, attributes, direction, P2P map type | [`addr`], [`attrs`] |
//! | the IOMMU seam (frozen) | [`iommu`] |
//! | errors ("Rules for every public operation") | [`error`] |
//! | IOVA allocation, reserved IOVA space | [`iova`], [`domain`] |
//! | physical memory seam | [`phys`] |
//! | per-device handle (mask, coherent, trusted, translation) | [`device`] |
//! | streaming mappings, scatter-gather, sync, MMIO attribute | [`mapping`] |
//! | batched unmap ([`UnmapBatch`]) | the mapping engine |
//! | bounce buffers, sub-page isolation | [`bounce`] |
//! | coherent allocations | [`coherent`] |
//! | IOVA link API (digest item 14) | [`link`] |
//! | segment splitting (digest items 4-7) | [`segment`] |
//! | invalidation modes: strict, batched, deferred | [`invalidation`] |
//! | PCI peer-to-peer: map types, providers, classification seam | [`p2p`] |
//! | mapping a peer's MMIO for an importer | [`peer`] |
//! | revocable export handles (dma-buf role), export validation, revoke/restore/teardown | [`export`] |
//! | guest address spaces (GPA = IOVA), leaf planning, guest memory maps (issue 14) | [`guest`] |
//! | fakes for host tests | `testing` (feature `testing`) |
//!
//! # Example: a driver maps a buffer under an IOMMU domain
//!
//! ```
//! use std::sync::Arc;
//! use dma::{Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DomainConfig, PhysAddr, Translation};
//! use dma::testing::{FakeDomain, FakePhysMemory};
//!
//! // Kernel side: one domain per isolation group, one DmaDevice per device.
//! let hw = Arc::new(FakeDomain::new()); // iommu-vtd's domain in the kernel
//! let phys = Arc::new(FakePhysMemory::standard()); // the kernel's frame allocator
//! let domain = DmaDomain::new(hw, DomainConfig::default())?; // strict invalidation
//! let dev = DmaDevice::new(
//!     DeviceConfig::with_mask_bits(39)?.trusted(), // untrusted unless said otherwise
//!     Translation::Iommu(domain),
//!     phys,
//!     None, // no bounce pool: a trusted device under an IOMMU never bounces
//! )?;
//!
//! // Driver side.
//! let m = dev.map_phys(PhysAddr::new(0x100_0000), 4096, Direction::ToDevice, Attrs::empty())?;
//! let iova = m.dma_addr(); // program this into the device
//! # assert_ne!(iova.as_u64(), 0);
//! m.unmap()?; // or drop it; strict: the IOTLB flush has completed here
//! # Ok::<(), dma::DmaError>(())
//! ```
//!
//! # Trust: untrusted by default, never mixed in one domain
//!
//! A [`DeviceConfig`] is untrusted unless [`DeviceConfig::trusted`] says otherwise: untrusted
//! devices get sub-page isolation (bounce buffers for mappings that do not cover whole pages) and
//! never use deferred invalidation. A [`DmaDomain`] holds devices of one trust level only: a
//! device whose trust differs from the domain's current members is refused with
//! [`DmaError::MixedTrust`] (its page table would let the untrusted one reach whole pages the
//! trusted one mapped, and devices sharing an isolation group cannot be isolated from each other
//! anyway). See [`domain`].
//!
//! # Failures that leave something mapped
//!
//! A failed call changes nothing, except when undoing its own partial work fails too (a double
//! fault, e.g. an unmap that fails while unwinding a failed scatter-gather mapping). Then the
//! error is [`DmaError::UnwindIncomplete`], which names the IOVA range still mapped and the
//! physical memory it reaches: the caller must not free that memory.
//!
//! # Concurrency and lock order
//!
//! Every shared object ([`DmaDomain`], [`DmaDevice`], [`BouncePool`]) is `Send + Sync` and uses
//! `spin` locks of its own; there is no global lock. The locks are:
//!
//! 1. a device's raw-mapping table (only for [`Mapping::into_raw`] / [`DmaDevice::unmap_phys`]),
//! 2. a domain's deferred queue,
//! 3. a domain's IOVA allocator,
//! 4. a bounce pool's slot allocator,
//! 5. a domain's member list (taken only when a device is created or dropped).
//!
//! The order is trivial by construction: **no lock of this crate is held while another is taken,
//! nor while [`iommu::IommuDomain`] is called**, with two documented exceptions on top of the
//! list. The P2P export layer ([`export`]) holds one export's state lock across the mapping
//! calls of its importers (so a revoke can never return while a mapping is half made or half
//! removed). A deferred-invalidation domain's *flush lock* is held from taking its deferred queue
//! until that queue's flush completed and its IOVAs and slots were freed (so
//! [`DmaDomain::flush_deferred`] is a barrier, see [`domain`]). The order is: export state lock,
//! then flush lock, then locks 1-4; neither is taken while a lock after it is held, and both
//! are held across [`iommu::IommuDomain::flush`], so their worst-case hold time is bounded by
//! the IOMMU's invalidation timeout. The one
//! nesting is lock 1 held across [`phys::PhysMemory`] copies during a raw sync (so the mapping
//! cannot vanish mid-copy); `PhysMemory` implementations must therefore never call back into
//! this crate (their locks are leaves). The map/unmap hot path takes only the domain's
//! allocator lock (twice: allocate, free) plus whatever the hardware domain takes.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::missing_errors_doc)]

extern crate alloc;

pub mod addr;
pub mod attrs;
pub mod bounce;
mod checks;
pub mod coherent;
pub mod device;
pub mod domain;
mod engine;
pub mod error;
pub mod export;
pub mod guest;
mod interval;
pub mod invalidation;
pub mod iommu;
pub mod iova;
pub mod link;
pub mod mapping;
pub mod p2p;
pub mod peer;
pub mod phys;
mod record;
pub mod segment;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use addr::{AddrError, DmaAddr, PhysAddr, PAGE_SIZE};
pub use attrs::{Attrs, Direction, MapType};
pub use bounce::BouncePool;
pub use coherent::CoherentBuffer;
pub use device::{DeviceConfig, DmaDevice, Translation};
pub use domain::{DmaDomain, DomainConfig};
pub use engine::UnmapBatch;
pub use error::{BounceReason, DmaError, ProviderError};
pub use export::{
    validate_export, Attachment, ExportHandle, ExportRange, ExportRequest, ExportState, Exporter,
    Importer, MemoryDecode, MoveEvent, MoveNotify, P2pMapping, TransitionStats,
};
// `guest::MSI_WINDOW` is not re-exported here: `MSI_WINDOW` is `iova::MSI_WINDOW` (the same
// window as a reserved IOVA region).
pub use guest::{
    count_leaves, plan_chunks, Chunk, GuestError, GuestMapping, GuestMemoryMap, GuestRegion,
    GuestSpace, LeafCounts, RegionKind,
};
pub use invalidation::{Clock, DeferredPolicy, InvalidationMode};
pub use iova::{IovaAllocator, IovaStats, ReservedKind, ReservedRegion, MSI_WINDOW};
pub use link::IovaLink;
pub use mapping::{Mapping, SgMapping};
pub use p2p::{BarSlot, DeviceId, P2pClassifier, Provider, ProviderTable};
pub use peer::PeerMapping;
pub use phys::{CacheOp, PhysError, PhysMemory};
pub use segment::{split_segments, DmaSegment};
