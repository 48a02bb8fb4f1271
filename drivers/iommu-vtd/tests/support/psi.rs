//! Page-selective invalidation requests for the queue tests (shared by `unit.rs` and
//! `hotpath.rs` through `#[path]`).

use iommu_vtd::invalidation::Invalidation;

/// `n` distinct 4 KiB page-selective requests of domain 1 from page `first`.
pub fn psi(first: u64, n: u64) -> Vec<Invalidation> {
    (first..first + n)
        .map(|page| Invalidation::IotlbPage {
            did: 1,
            addr: page << 12,
            am: 0,
            leaf_only: true,
        })
        .collect()
}
