//! The PCI state the glue reads: the enumerated topology and its isolation groups (SPEC.md
//! "Isolation unit"). Groups may be recomputed while the system runs (an ACS change), so they
//! are read through a guard each time.

use core::ops::Deref;

use pci::group::IsolationGroups;
use pci::Topology;

/// A topology and its current isolation groups, as the embedder keeps them.
pub trait PciView {
    /// A read guard (or plain reference) to the current groups.
    type Groups<'a>: Deref<Target = IsolationGroups>
    where
        Self: 'a;

    /// The enumerated topology.
    fn topology(&self) -> &Topology;

    /// The isolation groups, computed after the ACS policy was applied.
    fn groups(&self) -> Self::Groups<'_>;
}

/// A fixed topology and its groups, for embedders whose groups never change after boot.
#[derive(Debug)]
pub struct PciState {
    /// The enumerated topology.
    pub topology: Topology,
    /// Its isolation groups.
    pub groups: IsolationGroups,
}

impl PciView for PciState {
    type Groups<'a> = &'a IsolationGroups;

    fn topology(&self) -> &Topology {
        &self.topology
    }

    fn groups(&self) -> &IsolationGroups {
        &self.groups
    }
}
