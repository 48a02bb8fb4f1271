//! The IOVA ranges a domain must keep out besides page 0 and the interrupt window (which the
//! `dma` crate always reserves) (SPEC.md "Reserved IOVA regions").

use alloc::vec::Vec;

use dma::{ReservedKind, ReservedRegion};
use pci::Topology;

use crate::scope::RmrrInfo;

/// Every RMRR, and every bus range a PCI peer decodes or may decode
/// ([`pci::p2p::peer_decoded_ranges`]: memory BARs, Expansion ROM BARs, BARs refused as
/// misaligned, bridge windows), so an IOVA can never equal a peer's bus address (a DMA to it
/// would be routed to the peer, never reaching the IOMMU). x86 firmware describes the
/// host-bridge apertures only in AML (`_CRS`); the union of what firmware programmed covers
/// every address a peer decodes.
pub fn reserved_regions(rmrrs: &[RmrrInfo], topology: &Topology) -> Vec<ReservedRegion> {
    let mut out: Vec<ReservedRegion> = rmrrs
        .iter()
        .filter_map(|r| {
            let len = r.limit.checked_sub(r.base)?.checked_add(1)?;
            Some(ReservedRegion::new(r.base, len, ReservedKind::Rmrr))
        })
        .collect();
    out.extend(
        pci::p2p::peer_decoded_ranges(topology)
            .into_iter()
            .map(|r| ReservedRegion::new(r.start, r.size, ReservedKind::HostBridgeWindow)),
    );
    out
}
