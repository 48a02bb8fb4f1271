//! Reset methods and what each one reaches: FLR (PCIe Base 4.0 §6.6.2), the PM soft reset
//! (PCI PM 1.2 §5.4) and a bridge's Secondary Bus Reset (PCI-to-PCI Bridge 1.2 §3.2.5.18), with
//! the functions a Secondary Bus Reset hits.

use alloc::vec::Vec;
use core::fmt;

use crate::{Bdf, Topology};

/// How a function can be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetMethod {
    /// Function Level Reset through the PCI Express Device Control register: only this function.
    FunctionLevel,
    /// D3hot→D0 through the PM capability with No_Soft_Reset clear: only this function.
    PowerManagement,
    /// Secondary Bus Reset of the parent bridge: every function below `bridge`.
    SecondaryBus {
        /// The bridge whose secondary bus is reset.
        bridge: Bdf,
    },
}

impl ResetMethod {
    /// Every function a reset of `bdf` by this method hits, upstream bridges before what sits
    /// below them (the order in which they must be restored). For a bus reset this is everything
    /// below the bridge, siblings and their subtrees included: revoke all their exports first.
    pub fn affected(&self, topology: &Topology, bdf: Bdf) -> Vec<Bdf> {
        match *self {
            Self::FunctionLevel | Self::PowerManagement => alloc::vec![bdf],
            Self::SecondaryBus { bridge } => bus_reset_scope(topology, bridge),
        }
    }

    /// A short name ("FLR", "PM", "bus").
    pub const fn name(&self) -> &'static str {
        match self {
            Self::FunctionLevel => "FLR",
            Self::PowerManagement => "PM D3hot->D0",
            Self::SecondaryBus { .. } => "secondary bus reset",
        }
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecondaryBus { bridge } => write!(f, "secondary bus reset by {bridge}"),
            other => f.write_str(other.name()),
        }
    }
}

/// What a reset primitive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetOutcome {
    /// The method used.
    pub method: ResetMethod,
    /// Microseconds requested from the delay callback.
    pub waited_us: u64,
    /// FLR only: Transactions Pending never cleared and the FLR was issued anyway (as Linux
    /// does). Completions still in flight are lost.
    pub pending_transactions_ignored: bool,
}

/// Every function below `bridge` (its secondary bus and everything further down), upstream
/// bridges first: what a Secondary Bus Reset of `bridge` resets. Empty for an unknown bridge.
pub fn bus_reset_scope(topology: &Topology, bridge: Bdf) -> Vec<Bdf> {
    topology
        .functions()
        .iter()
        .filter(|f| topology.upstream_bridges(f.bdf).any(|b| b.bdf == bridge))
        .map(|f| f.bdf)
        .collect()
}
