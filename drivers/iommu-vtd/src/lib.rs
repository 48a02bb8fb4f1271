//! Intel VT-d for bare metal: DMAR parsing and the DMA-remapping engine.
//!
//! This crate programs an Intel VT-d remapping hardware unit directly (Intel® Virtualization
//! Technology for Directed I/O Architecture Specification, rev 3.x/4.x; section numbers in the
//! module docs refer to it). It is `no_std` + `alloc` and depends on neither the kernel nor the
//! PCI crate: the host kernel supplies memory, cache maintenance and time through [`Platform`],
//! register access through [`RegisterIo`], and PCI topology through closures.
//!
//! | module | what it implements |
//! |---|---|
//! | [`dmar`] | the ACPI DMAR table (§8): DRHD, RMRR, ATSR, RHSA, ANDD, SATC, SIDP, device scopes and their path resolution, refused structures, a table builder |
//! | [`registers`] | the register map (§11.4), in-memory structures (§9), invalidation descriptors (§6.5.2) and interrupt formats (§5.1, §9.10), declared once in private submodules re-exported as `registers::*`, and the [`RegisterIo`] seam |
//! | [`caps`] | CAP/ECAP decoding (§11.4.2, §11.4.3) |
//! | [`platform`] | what the unit needs from the host kernel |
//! | [`pagetable`] | second-level page tables (§3.6, §9.8) |
//! | [`firststage`] | first-stage page tables for scalable mode (x86 paging format; §3.6, §9.7) |
//! | [`context`] | root and context tables (§3.4, §9.1, §9.3) |
//! | [`invalidation`] | queued and register-based invalidation (§6.5) |
//! | [`fault`] | primary fault recording and fault events (§7.1, §7.3, §11.4.14) |
//! | [`intremap`] | interrupt remapping: IRTEs, the table, allocation per vector (§5.1, §9.10) |
//! | [`unit`](mod@unit) | one remapping unit: the type and invalidation entry points; submodules `enable` (enable/disable, §10.4.4, §10.4.5), `attach` (domain IDs, group attachment), `assign` (device assignment, quarantine, pass-through, atomic switch), `intremap` (interrupt remapping bring-up and IRTE updates), `faults` (fault records, fault-event interrupts), `error` |
//! | [`domain`] | a translation domain implementing [`dma::iommu::IommuDomain`] |
//! | `fake` | in-memory models of the hardware and the platform for host tests (feature `testing`): `platform`, and the unit's `regs`, `queue`, `walk` (DMA) and `ir` parts |
//!
//! # Layering
//!
//! Dependencies flow one way, bottom to top (no module imports one above it):
//!
//! 1. [`registers`] (every register and in-memory layout, declared once; its submodules share
//!    only the field conversions of `registers.rs`), [`platform`] (host services) and [`dmar`]
//!    (firmware tables) depend on nothing else here;
//! 2. [`caps`] decodes registers;
//! 3. the engine pieces, each over the layers below only: [`pagetable`], [`context`],
//!    [`firststage`] (which shares [`pagetable`]'s `Leaf`), [`invalidation`], [`fault`],
//!    [`intremap`];
//! 4. [`unit`](mod@unit): one hardware unit (bring-up, domain IDs, isolation-group attachment,
//!    interrupt remapping, faults); its submodules are `impl VtdUnit` blocks over the type
//!    declared in `unit.rs` and the layers below;
//! 5. [`domain`]: a translation domain over a unit, including [`VtdUnit::create_domain`];
//! 6. `fake` (feature `testing`): models of the hardware and the platform, built on the same
//!    declarations as the driver (its submodules model one part each of the state declared in
//!    `fake.rs`).
//!
//! # Bringing a unit up
//!
//! ```
//! use std::sync::Arc;
//! use dma::iommu::{IommuDomain, IotlbGather, Prot};
//! use dma::{DmaAddr, PhysAddr};
//! use iommu_vtd::fake::{FakeVtd, HostPlatform};
//! use iommu_vtd::{Bdf, DomainConfig, GroupRef, UnitConfig, VtdUnit};
//!
//! // In a kernel: `MmioRegisters::new(base, len)` and the kernel's own `Platform`.
//! let platform = Arc::new(HostPlatform::new());
//! let regs = FakeVtd::qemu_default(platform.clone());
//! let unit = Arc::new(VtdUnit::new(regs, platform, UnitConfig::new(39))?);
//! unit.enable()?;
//! let domain = unit.create_domain(DomainConfig::default())?;
//! let edu = Bdf::new(0, 0, 3, 0)?.requester_id();
//! // A one-device isolation group (the kernel passes the PCI crate's groups).
//! domain.attach_device(GroupRef { key: 1, requester_ids: &[edu] }, edu)?;
//! assert_eq!(unit.group_domain(1), Some(domain.did()));
//! domain.map(DmaAddr::new(0x10_0000), PhysAddr::new(0x20_0000), 0x2000, Prot::READ | Prot::WRITE)?;
//! domain.sync_map(DmaAddr::new(0x10_0000), 0x2000)?;
//! let mut gather = IotlbGather::new();
//! domain.unmap(DmaAddr::new(0x10_0000), 0x2000, &mut gather)?;
//! domain.flush(gather)?;
//! for fault in unit.read_faults().records {
//!     println!("{fault}");
//! }
//! unit.clear_faults();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod caps;
pub mod context;
pub mod dmar;
pub mod domain;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod fault;
pub mod firststage;
pub mod intremap;
pub mod invalidation;
pub mod pagetable;
pub mod platform;
pub mod registers;
pub mod unit;

/// The shared PCI function address and requester ID (crate `pci-address`), re-exported so that
/// callers need no second dependency.
pub use pci_address::{Bdf, RequesterId};

pub use caps::{Cap, Capabilities, Ecap, PagingLevels};
pub use dmar::{Dmar, DmarBuilder, DmarError, Refused, StructureError};
pub use domain::{Domain, DomainConfig};
pub use fault::{AccessKind, FaultLog, FaultReason, FaultRecord};
pub use firststage::{FirstStageConfig, FirstStageLevels, FirstStageTable, FsPte};
pub use intremap::{
    DeliveryMode, DestMode, Destination, IntRemapError, Irte, SourceId, TriggerMode,
};
pub use invalidation::{InvalidationError, PhaseCycles};
pub use pagetable::{Leaf, SecondLevelTable};
pub use platform::{IrqState, Platform, TablePage};
pub use registers::{MmioRegisters, RegisterIo, RegisterStats};
pub use unit::{
    AssignStats, FirmwareState, GroupOwner, GroupRef, InvalidationStats, UnitConfig, VtdError,
    VtdUnit,
};
