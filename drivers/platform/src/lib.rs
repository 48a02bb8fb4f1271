//! The platform glue between the `pci`, `iommu-vtd` and `dma` crates (`#![no_std]` + `alloc`):
//! what every embedder of VT-d needs once the firmware tables are parsed and the buses
//! enumerated, and what our kernel is the first user of (SPEC.md "Isolation unit", "Requester IDs
//! the IOMMU sees", "Reserved IOVA regions").
//!
//! Layering, bottom up (each module uses only those above it in this list):
//!
//! 1. [`view`]: the PCI state the glue reads ([`PciView`]: a topology and its isolation groups);
//! 2. [`scope`]: a VT-d unit with its DRHD scopes resolved against the topology ([`UnitEntry`])
//!    and the unit that translates a function ([`unit_for`]); RMRRs resolved ([`RmrrInfo`]);
//! 3. [`reserved`]: the IOVA ranges no domain may hand out ([`reserved_regions`]);
//! 4. [`state`]: what the glue keeps per machine ([`Iommu`]: units, RMRRs, default domains,
//!    memberships);
//! 5. [`attach`]: group-to-domain attach with the RMRRs of every member identity-mapped first
//!    ([`Iommu::attach`], [`Iommu::detach`], [`group_key`], the shared [`Membership`] guard);
//! 6. [`setup`]: one default domain per isolation group ([`Iommu::group_domain`]) and a
//!    [`dma::DmaDevice`] for a function ([`setup_device`]), boot-time RMRR attachments;
//! 7. [`interrupts`]: interrupt remapping glue, over the `pci` and `iommu-vtd` crates only: the
//!    source ID for a function's or an I/O APIC's IRTEs ([`msi_source`], [`ioapic_sources`])
//!    and a function's block of remapped vectors ([`RemappedVectors`]).
//! 8. [`assign`]: device assignment for hypervisors: a whole group handed to a guest's domain
//!    ([`GuestDomain`], its guest-physical space and interrupts), moved atomically between
//!    guests, passed through or quarantined, quiesced and reset in between ([`Assigner::assign`]).
//! 9. [`faults`]: decoded faults routed to the owner of the faulting device's domain
//!    ([`FaultRouter`]: a callback per domain, a default sink, rate-limited logging), usable
//!    from a fault-event interrupt handler (uses none of the modules above).
//!
//! Generic over the unit's register access ([`iommu_vtd::RegisterIo`]) and table memory
//! ([`iommu_vtd::Platform`]): the kernel runs it over MMIO, the host tests over
//! `iommu_vtd::fake`.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod assign;
pub mod attach;
pub mod faults;
pub mod interrupts;
pub mod reserved;
pub mod scope;
pub mod setup;
pub mod state;
pub mod view;

pub use assign::{
    AssignError, AssignHooks, AssignPolicy, AssignReport, AssignTarget, Assigner, GuestDomain,
};
pub use attach::{group_key, AttachError};
pub use faults::{
    context_domain, DispatchSummary, Fault, FaultCallback, FaultRouteError, FaultRouter, RateLimit,
    RateLimiter, Verdict,
};
pub use interrupts::{ioapic_sources, msi_source, IoApicSource, RemapError, RemappedVectors};
pub use reserved::reserved_regions;
pub use scope::{unit_for, RmrrInfo, UnitEntry, UnitError};
pub use setup::{setup_device, DeviceDma, DmaResources, SetupError};
pub use state::{BootAttachment, DefaultDomain, GroupDomain, Iommu, MemberInner, Membership};
pub use view::{PciState, PciView};
