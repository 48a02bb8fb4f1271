//! IOTLB invalidation policy: strict, batched and deferred (SPEC.md "Invalidation modes").
//!
//! - **Strict** (default, [`InvalidationMode::Strict`]): every unmap flushes and returns after
//!   the flush completed; only then is its IOVA (and bounce slot) reusable.
//! - **Batched** ([`UnmapBatch`]): usable in any mode. Unmaps gather into one
//!   [`IotlbGather`] per domain; [`UnmapBatch::finish`] issues one flush per domain and returns
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
use crate::device::DeviceInner;
use crate::domain::DmaDomain;
use crate::iommu::IotlbGather;
use crate::mapping::MapRecord;

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

/// How a domain invalidates on unmap. Batching is not a mode: see [`UnmapBatch`].
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

/// One domain's share of a batch.
pub(crate) struct BatchEntry {
    pub domain: Arc<DmaDomain>,
    pub gather: IotlbGather,
    pub pending: Vec<(Arc<DeviceInner>, MapRecord)>,
}

/// An explicit batch of unmaps: one flush per domain for all of them (SPEC.md "Batched").
///
/// Add mappings with [`crate::Mapping::unmap_in`] (or the scatter-gather/raw equivalents), then
/// call [`UnmapBatch::finish`], which flushes and returns after the flush completed; only then
/// are the IOVAs freed and bounced data copied back. Dropping an unfinished batch finishes it
/// (errors are logged), so a forgotten `finish` costs a late flush, never a reused IOVA.
#[derive(Default)]
pub struct UnmapBatch {
    pub(crate) entries: Vec<BatchEntry>,
    /// Direct-path mappings need no flush but their bounce copy-out waits for `finish` too, so
    /// a batch behaves the same whatever the path.
    pub(crate) direct: Vec<(Arc<DeviceInner>, MapRecord)>,
}

impl core::fmt::Debug for UnmapBatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UnmapBatch")
            .field("domains", &self.entries.len())
            .field("mappings", &self.len())
            .finish()
    }
}

impl UnmapBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mappings added so far.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|e| e.pending.len()).sum::<usize>() + self.direct.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn entry(&mut self, domain: &Arc<DmaDomain>) -> &mut BatchEntry {
        let i = match self
            .entries
            .iter()
            .position(|e| Arc::ptr_eq(&e.domain, domain))
        {
            Some(i) => i,
            None => {
                self.entries.push(BatchEntry {
                    domain: domain.clone(),
                    gather: IotlbGather::new(),
                    pending: Vec::new(),
                });
                self.entries.len() - 1
            }
        };
        &mut self.entries[i]
    }
}
