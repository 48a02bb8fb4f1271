//! PCI Express for bare metal: configuration access, enumeration, BARs, capabilities, topology
//! queries and ACS policy, hardware-independent except for the ECAM accessor.
//!
//! The crate implements the parts of the *PCI Local Bus Specification 3.0* (configuration header,
//! BARs, capability list), the *PCI-to-PCI Bridge Architecture Specification 1.2* (type-1 header,
//! bus numbers), the *PCI Express Base Specification 4.0* (ECAM §7.2.2, PCI Express capability
//! §7.5.3, extended capabilities §7.6, ACS §7.7.7) and the *PCI Firmware Specification 3.2*
//! (MCFG §4.1.2) that a kernel needs to find devices and to reason about DMA isolation.
//!
//! Isolation groups ([`group`]) partition the functions the way Linux forms IOMMU groups: DMA
//! aliases, multifunction devices without ACS and bridge paths without ACS isolation.
//!
//! Layers (a module imports only modules of the layers below it, never one above):
//!
//! 1. `pci-address` ([`Bdf`], [`RequesterId`]), [`regs`] (every register layout, declared once),
//!    [`names`], [`mcfg`];
//! 2. the [`ConfigSpace`] seam and [`Ecam`], its hardware implementation;
//! 3. readers of one function: [`capability`], [`bar`], the ACS readers (`acs_state`, re-exported by [`acs`]),
//!    [`msi`] (MSI, MSI-X and interrupt messages; uses [`capability`]);
//! 4. [`topology`] (enumeration);
//! 5. users of a topology: [`acs`] (the policy), [`group`], [`reset`], [`p2p`], then `listing`
//!    (which prints groups).
//!
//! Everything above the [`ConfigSpace`] seam is pure logic and runs in host tests against
//! `testing::FakeConfigSpace` (feature `testing`); only [`Ecam`] touches hardware.
//!
//! Typical use in a kernel:
//!
//! ```no_run
//! # fn map_uncached(_phys: u64, _size: u64) -> core::ptr::NonNull<u8> { core::ptr::NonNull::dangling() }
//! # let mcfg_bytes: &[u8] = &[];
//! let regions = pci::mcfg::parse(mcfg_bytes)?;
//! let mappings = regions.iter().map(|r| (*r, map_uncached(r.window_base(), r.window_size())));
//! // SAFETY: each pointer maps its region's ECAM window uncached for the kernel's lifetime.
//! let ecam = unsafe { pci::Ecam::new(mappings)? };
//! let topology = pci::enumerate(&ecam, &regions);
//! let report = pci::acs::apply_acs_policy(&ecam, &topology, pci::acs::AcsPolicy::Isolate);
//! // After the policy: groups follow the ACS controls actually enabled.
//! let groups = pci::group::compute(&ecam, &topology);
//! println!("{}", topology.listing(Some(&groups)));
//! # Ok::<(), Box<dyn core::error::Error>>(())
//! ```

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod acs;
mod acs_state;
pub mod bar;
pub mod capability;
mod config;
mod ecam;
pub mod group;
mod listing;
pub mod mcfg;
pub mod msi;
pub mod names;
pub mod p2p;
pub mod regs;
pub mod reset;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topology;

pub use bar::{Bar, BarKind, BusOffset, HostBridgeWindow};
pub use config::{is_valid_access, ConfigSpace, CONFIG_SPACE_SIZE};
pub use ecam::{Ecam, EcamError};
pub use group::{Group, GroupId, IsolationGroups};
pub use listing::Listing;
pub use mcfg::{McfgError, McfgRegion};
pub use p2p::{HostBridgePolicy, P2pRouting, ProviderRegistry};
pub use pci_address::{Bdf, BdfError, RequesterId};
pub use reset::{PowerState, ResetError, ResetMethod, SavedConfig};
pub use topology::{enumerate, enumerate_with, EnumerationOptions, Function, Topology};
