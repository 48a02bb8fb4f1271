//! IOTLB invalidation policy: strict, batched and deferred (SPEC.md "Invalidation modes").
//!
//! - **Strict** (default, [`InvalidationMode::Strict`]): every unmap flushes and returns after
//!   the flush completed; only then is its IOVA (and bounce slot) reusable.
//! - **Batched** ([`crate::UnmapBatch`]): usable in any mode. Unmaps gather into one
//!   [`IotlbGather`] per domain; [`crate::UnmapBatch::finish`] issues one flush per domain and returns
//!   after it completed, then frees the IOVAs. Strict semantics at a lower cost.
//! - **Deferred** ([`InvalidationMode::Deferred`], opt-in per domain, trusted devices only):
//!   unmap removes the page-table entries and returns; the IOVA stays *quarantined* (neither live
//!   nor free) until a flush covering it completed. Flushes happen after at most
//!   [`DeferredPolicy::max_pending`] unmaps, when [`DeferredPolicy::max_delay_us`] has passed
//!   (checked on every map/unmap and by [`crate::DmaDomain::poll`], which a kernel timer should
//!   call), on IOVA exhaustion, and on demand ([`crate::DmaDomain::flush_deferred`]).
//!   **Risk**: until that flush, the device may still reach the unmapped memory through a stale
//!   IOTLB entry; that is why untrusted devices are refused on deferred domains.
//!
//! No mode hands an IOVA out again before its flush completed: IOVAs go back to the allocator
//! only after [`crate::iommu::IommuDomain::flush`] returned `Ok`. When a flush fails, the IOVAs
//! and bounce slots it covered are leaked on purpose (logged): reusing them would be unsafe.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::addr::DmaAddr;
use crate::bounce::{BouncePool, BounceSlot};
use crate::iommu::IotlbGather;

/// A monotonic time source in microseconds (for the deferred-flush deadline).
pub trait Clock: Send + Sync {
    /// Microseconds since an arbitrary fixed point; never decreases.
    fn now_us(&self) -> u64;
}

/// When a deferred domain must flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredPolicy {
    /// Flush once this many unmaps are pending (at least 1).
    pub max_pending: u32,
    /// Flush once the oldest pending unmap is this old (microseconds).
    pub max_delay_us: u64,
}

impl Default for DeferredPolicy {
    /// Linux's flush queue uses 256 entries and 10 ms.
    fn default() -> Self {
        Self {
            max_pending: 256,
            max_delay_us: 10_000,
        }
    }
}

/// How a domain invalidates on unmap. Batching is not a mode: see [`crate::UnmapBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidationMode {
    /// Unmap returns after the invalidation completed.
    #[default]
    Strict,
    /// Unmap returns early; IOVAs are quarantined until flushed (trusted devices only).
    Deferred(DeferredPolicy),
}

/// What becomes reusable once a flush completed.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    /// An IOVA allocation `(start, size)` to free.
    pub iova: Option<(DmaAddr, u64)>,
    /// Bounce slots to return.
    pub slots: Vec<(Arc<BouncePool>, BounceSlot)>,
}

/// A deferred domain's pending invalidations.
#[derive(Debug, Default)]
pub(crate) struct DeferredQueue {
    pub gather: IotlbGather,
    pub retired: Vec<Retired>,
    pub oldest_us: u64,
}
