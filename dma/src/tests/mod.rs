//! Crate-level tests: every rejected input of SPEC.md, every digest item as a named test, the
//! invalidation modes, and model-based property tests. Test names are meant to be grepped
//! (`reject_*`, `mmio_*`, `link_*`, `deferred_*`, `prop_*`, digest item names).

mod bounce;
mod coherent;
mod export;
mod invalidation;
mod link;
mod map;
mod p2p;
mod prop;
mod sg_merge;
mod trust;
mod try_poll;

use crate::testing::Fixture;
use crate::{IovaStats, PhysMemory};

pub(crate) const LOW: u64 = 16 << 20; // fake RAM region 1 (below 4 GiB)
pub(crate) const HIGH: u64 = 8 << 30; // fake RAM region 2 (above 4 GiB)

/// Everything observable that a failed operation must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    entries: usize,
    mapped: u64,
    iova: Option<IovaStats>,
    pool_free: u64,
    phys_free: u64,
    raw: usize,
}

pub(crate) fn snapshot(f: &Fixture) -> Snapshot {
    Snapshot {
        entries: f.hw.as_ref().map_or(0, |h| h.entries()),
        mapped: f.hw.as_ref().map_or(0, |h| h.mapped_bytes()),
        iova: f.domain.as_ref().map(|d| {
            let mut s = d.iova_stats();
            // Cached and free pages are interchangeable; only their sum is observable.
            s.free_pages += s.cached_pages;
            s.cached_pages = 0;
            s
        }),
        pool_free: f.pool.free_pages(),
        phys_free: f.phys.free_pages(),
        raw: f.dev.raw_mappings(),
    }
}

/// Allocates `pages` pages of fake RAM at or below `limit`.
pub(crate) fn buffer(f: &Fixture, pages: u64, limit: u64) -> u64 {
    f.phys.alloc_pages(pages, limit).expect("fake RAM").as_u64()
}

/// The `Map` operations in `ops` that no later `SyncMap` covers: entries that hardware caching
/// not-present entries (VT-d caching mode) or buffering writes (RWBF) would never see.
pub(crate) fn maps_without_sync(ops: &[crate::testing::FakeOp]) -> Vec<(u64, u64)> {
    use crate::testing::FakeOp;
    ops.iter()
        .enumerate()
        .filter_map(|(i, op)| match *op {
            FakeOp::Map { iova, size, .. } => {
                let synced = ops[i + 1..].iter().any(|later| {
                    matches!(*later, FakeOp::SyncMap { iova: s, size: n }
                        if s <= iova && iova + size <= s + n)
                });
                (!synced).then_some((iova, size))
            }
            _ => None,
        })
        .collect()
}
