//! One DMA-remapping hardware unit: bring-up, domain IDs, context programming, invalidation.
//!
//! Implements VT-d spec §10.4.4 (global command protocol), the enable sequence of §6.5.2 and
//! §10.4.4–§10.4.5 (queued invalidation, root table pointer, translation enable), domain
//! identifiers (§3.4.1, §11.4.2 CAP.ND and CAP.CM) and the context-entry programming rules of
//! §6.5.3.3 / §6.1 (context-cache then IOTLB invalidation after a context entry changes).
//!
//! The type, its configuration and shared helpers live here; the operations are grouped by
//! concept in submodules: `enable` (bring-up and disable), `attach` (domain IDs and group
//! attachment), `intremap` (interrupt remapping), `faults` (fault records and the fault-event
//! interrupt) and `error` ([`VtdError`]).
//!
//! # Enable order (verified against QEMU 7.2)
//!
//! 1. queued invalidation: IQT = 0, IQA, GCMD.QIE, wait for GSTS.QIES;
//! 2. root table: RTADDR, GCMD.SRTP, wait for GSTS.RTPS;
//! 3. global context-cache and IOTLB invalidation, closed by a wait descriptor;
//! 4. GCMD.TE, wait for GSTS.TES.
//!
//! Before step 1, a queue firmware left on is drained and turned off (§6.5.2); translation left
//! on stays on and step 2 swaps the root table under it (see [`VtdUnit::enable`]).
//!
//! Every GCMD write is `(GSTS & 0x96FF_FFFF) | bit` ([`registers::GSTS_PERSISTENT_MASK`]) and
//! every wait has a timeout ([`UnitConfig::timeout_us`]) that turns into [`VtdError::Timeout`].
//!
//! # Interrupt remapping (§5.1, §10.4.4, §11.4.10)
//!
//! [`VtdUnit::enable_interrupt_remapping`] runs after the queue is on: CFI cleared if set, IRTA,
//! GCMD.SIRTP (wait for IRTPS), a global interrupt-entry-cache invalidation closed by a wait
//! descriptor, GCMD.IRE (wait for IRES). Every IRTE change ([`VtdUnit::set_irte`],
//! [`VtdUnit::clear_irte`], [`VtdUnit::free_irtes`]) is one 128-bit store, written back from the
//! CPU cache when ECAP.C = 0, then an index-selective invalidation waited for before the call
//! returns. Fault events ([`VtdUnit::set_fault_event`], [`VtdUnit::service_fault_event`]) are
//! the unit's own compatibility-format MSI, which is never remapped.
//!
//! # Locking
//!
//! A [`VtdUnit`] is `Send + Sync` and internally locked. Lock order (never taken in reverse):
//! the unit's *interrupt-remapping* lock (the table) → a domain's state lock → the unit's
//! *tables* lock (root/context tables, domain IDs, attached isolation groups; also serialises
//! GCMD writes) → the unit's *invalidation* lock (the queue). A separate *faults* lock
//! serialises readers of the fault recording registers and is taken alone. Map/unmap take only their
//! domain's lock, so different domains never contend; `flush` takes the domain's lock only
//! around table edits, never while invalidating, then the invalidation lock.
//!
//! ## Interrupt context
//!
//! The fault-event handler ([`VtdUnit::service_fault_event`]) and IRTE updates
//! ([`VtdUnit::set_irte`], [`VtdUnit::clear_irte`], [`VtdUnit::free_irtes`], with their
//! interrupt-entry-cache invalidations) may run in an interrupt handler, which on one CPU can
//! interrupt mainline code holding the same lock: a spin lock would then never be released.
//! So the three locks those paths take, *invalidation*, *faults* and *interrupt-remapping*,
//! are held only with interrupts disabled: [`Platform::irq_save`] before acquiring,
//! [`Platform::irq_restore`] after releasing (nested acquisitions restore innermost first, so
//! only the outermost re-enables interrupts). Every flush, IEC invalidation and fault read is
//! therefore a short interrupts-off section. The *tables* lock and the domains' locks are
//! plain spin locks: no handler path takes them (a handler looks context entries up with
//! [`VtdUnit::context_entry_unlocked`]). With the default (no-op) `irq_save`, an embedder
//! must not call the unit from interrupt handlers.
//!
//! # Isolation groups
//!
//! A domain is attached to whole isolation groups ([`GroupRef`]: a key and the requester IDs
//! the group's DMA can carry). Which group belongs to which domain, and which members use it,
//! lives here under the tables lock, so two domains can never both claim a group or a
//! requester ID; the last member's detach clears the group's context entries.
//!
//! A group is owned in one of four ways ([`GroupOwner`]): attached for host drivers (with
//! members, `attach`), assigned as a whole to one (guest) domain, pass-through, or
//! quarantined (tracked, no present context entry). `assign` implements the last three and
//! the atomic switch between owners; its module docs give the sequence against the spec.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dma::PhysAddr;
use spin::Mutex;

use crate::caps::{Capabilities, PagingLevels};
use crate::context::{ContextEntry, RootTable};
use crate::fault::{self, FaultLog};
use crate::intremap::{IntRemapError, InterruptRemapTable, Irte};
use crate::invalidation::{
    Invalidation, InvalidationError, InvalidationQueue, Invalidator, PhaseCycles,
};
use crate::pagetable::{self, SecondLevelTable, TableConfig, MAX_OUTPUT_BITS};
use crate::platform::{IrqMutex, Platform, TablePage};
use crate::registers::{
    self, CountingRegisters, Feaddr, Fectl, Global, MsiAddress64, MsiAddressCompat, RegisterIo,
    RegisterStats, Rtaddr, GSTS_PERSISTENT_MASK, MSI_WINDOW,
};
use pci_address::RequesterId;

mod assign;
mod attach;
mod enable;
mod error;
mod faults;
mod intremap;

pub use assign::{AssignStats, GroupOwner};
pub use attach::GroupRef;
use attach::{DomainIds, GroupAttachment, GroupKind};
pub use enable::FirmwareState;
pub use error::VtdError;

/// Default timeout for every hardware wait: 1 s.
pub const DEFAULT_TIMEOUT_US: u64 = 1_000_000;

/// Platform facts the unit cannot read from its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitConfig {
    /// The DMAR's host address width ([`crate::Dmar::host_address_width`]): output addresses
    /// must be below `2^host_address_width`.
    pub host_address_width: u8,
    /// Timeout for every status poll, in microseconds.
    pub timeout_us: u64,
}

impl UnitConfig {
    /// A configuration with the default timeout.
    pub const fn new(host_address_width: u8) -> Self {
        Self {
            host_address_width,
            timeout_us: DEFAULT_TIMEOUT_US,
        }
    }
}
#[derive(Debug)]
struct Tables {
    root: RootTable,
    dids: DomainIds,
    enabled: bool,
    /// [`VtdUnit::prepare`] completed (queue, root table, global invalidation).
    prepared: bool,
    /// What `enable` found (see [`VtdUnit::firmware_state`]).
    firmware: Option<FirmwareState>,
    /// Every tracked group of this unit (attached for host drivers, assigned, pass-through or
    /// quarantined). Held under the tables lock, so two domains can never both claim a group
    /// (or a requester ID).
    groups: Vec<GroupAttachment>,
    /// The domain ID every pass-through context entry of this unit carries, allocated by the
    /// first [`VtdUnit::assign_group_pass_through`] and kept for the unit's life.
    pass_through_did: Option<u16>,
}

#[derive(Debug)]
struct InvalidationState {
    active: Invalidator,
    /// The queue while queued invalidation is off.
    spare: Option<InvalidationQueue>,
}

/// One VT-d remapping hardware unit (one DRHD).
///
/// Generic over register access and host services so the same code drives QEMU's unit and the
/// in-memory fake. Create domains with [`VtdUnit::create_domain`] on an `Arc<VtdUnit>`.
/// Dropping the unit does not disable it and leaks its tables on purpose (the hardware may still
/// walk them); call [`VtdUnit::disable`] first if it must stop.
pub struct VtdUnit<R: RegisterIo, P: Platform> {
    /// Every register access of the unit goes through the counter
    /// ([`VtdUnit::register_stats`]).
    regs: CountingRegisters<R>,
    platform: P,
    caps: Capabilities,
    config: UnitConfig,
    /// The root table's address: allocated in `new`, never replaced or freed while the unit
    /// lives (a copy of `Tables::root`'s, readable without the lock).
    root_phys: PhysAddr,
    tables: Mutex<Tables>,
    /// Interrupt-safe (see the module docs' Locking section).
    invalidation: IrqMutex<InvalidationState>,
    /// The interrupt remapping table while interrupt remapping is on through it.
    /// Interrupt-safe.
    intremap: IrqMutex<Option<InterruptRemapTable>>,
    /// Serialises readers of the fault recording registers, so no record is reported twice.
    /// Interrupt-safe.
    faults: IrqMutex<()>,
    stats: Counters,
}

/// Running totals of invalidation work, for benchmarks and for tests that check how many
/// invalidations an operation cost (e.g. at most `PSI_DESCRIPTOR_LIMIT` page-selective
/// requests for a range), and the opt-in phase timing.
#[derive(Debug, Default)]
struct Counters {
    submissions: AtomicU64,
    requests: AtomicU64,
    /// Phase timing on ([`VtdUnit::set_phase_timing`]); off by default.
    phase_timing: AtomicBool,
    descriptor_write: AtomicU64,
    submission: AtomicU64,
    wait: AtomicU64,
    batches: AtomicU64,
}

impl Counters {
    fn add_phases(&self, p: &PhaseCycles) {
        self.descriptor_write
            .fetch_add(p.descriptor_write, Ordering::Relaxed);
        self.submission.fetch_add(p.submission, Ordering::Relaxed);
        self.wait.fetch_add(p.wait, Ordering::Relaxed);
        self.batches.fetch_add(p.batches, Ordering::Relaxed);
    }
}

/// A snapshot of a unit's invalidation counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvalidationStats {
    /// Calls that waited for completion (one wait descriptor, or one register sequence, each).
    pub submissions: u64,
    /// Invalidation requests issued (context-cache, IOTLB global/domain/page-selective).
    pub requests: u64,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for VtdUnit<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdUnit")
            .field("caps", &self.caps)
            .field("config", &self.config)
            .finish()
    }
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Reads the capabilities and allocates the root table (and the invalidation queue when
    /// ECAP.QI). Does not touch any command register.
    ///
    /// # Errors
    ///
    /// [`VtdError::Unsupported`] when SAGAW advertises neither 3- nor 4-level tables or
    /// `config.host_address_width` is 0 or above the largest output width;
    /// [`VtdError::OutOfMemory`] when the domain-ID map, the root table or the queue cannot be
    /// allocated.
    pub fn new(regs: R, platform: P, config: UnitConfig) -> Result<Self, VtdError> {
        let regs = CountingRegisters::new(regs);
        let caps = Capabilities::read(&regs);
        if caps.cap.usable_levels().next().is_none() {
            return Err(VtdError::Unsupported {
                reason: "SAGAW advertises neither 3- nor 4-level tables",
            });
        }
        if config.host_address_width == 0 || config.host_address_width > MAX_OUTPUT_BITS {
            return Err(VtdError::Unsupported {
                reason: "host address width out of range",
            });
        }
        let dids = DomainIds::new(caps.cap.domain_ids, caps.cap.caching_mode)
            .ok_or(VtdError::OutOfMemory)?;
        let root = RootTable::new(&platform, caps.ecap.coherent).ok_or(VtdError::OutOfMemory)?;
        let spare = if caps.ecap.queued_invalidation {
            match InvalidationQueue::new(&platform) {
                Ok(q) => Some(q),
                Err(_) => {
                    // SAFETY: the root table was never given to the hardware.
                    unsafe { root.destroy(&platform) };
                    return Err(VtdError::OutOfMemory);
                }
            }
        } else {
            None
        };
        Ok(Self {
            regs,
            platform,
            caps,
            config,
            root_phys: root.phys(),
            tables: Mutex::new(Tables {
                root,
                dids,
                enabled: false,
                prepared: false,
                firmware: None,
                groups: Vec::new(),
                pass_through_did: None,
            }),
            invalidation: IrqMutex::new(InvalidationState {
                active: Invalidator::Registers,
                spare,
            }),
            intremap: IrqMutex::new(None),
            faults: IrqMutex::new(()),
            stats: Counters::default(),
        })
    }

    /// The decoded capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The configuration.
    pub fn config(&self) -> &UnitConfig {
        &self.config
    }

    /// The register access. (Accesses made through it directly are the caller's own and not
    /// counted in [`VtdUnit::register_stats`].)
    pub fn registers(&self) -> &R {
        self.regs.inner()
    }

    /// Every register read and write this unit made since it was created (capability reads in
    /// [`VtdUnit::new`] included), counted around its [`RegisterIo`]. Under emulation each
    /// access is a VM exit, so this is the figure the hot path minimises: a strict 4 KiB unmap
    /// flush through the queue makes exactly one (the IQT write). Compare with QEMU's
    /// `-trace vtd_reg_read -trace vtd_reg_write`.
    pub fn register_stats(&self) -> RegisterStats {
        self.regs.stats()
    }

    /// The host services.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Whether [`VtdUnit::enable`] completed (and [`VtdUnit::disable`] was not called since).
    pub fn is_enabled(&self) -> bool {
        self.tables.lock().enabled
    }

    /// What the last [`VtdUnit::enable`] found the unit doing when it started (`None` before
    /// the first call).
    pub fn firmware_state(&self) -> Option<FirmwareState> {
        self.tables.lock().firmware
    }

    /// Whether invalidations go through the queue.
    pub fn queued_invalidation_active(&self) -> bool {
        matches!(
            self.invalidation.lock(&self.platform).active,
            Invalidator::Queued(_)
        )
    }

    /// Physical address of the root table.
    pub fn root_table(&self) -> PhysAddr {
        self.root_phys
    }

    fn gsts(&self) -> Global {
        Global::from_bits_retain(self.regs.read32(registers::GSTS))
    }

    fn wait_status(
        &self,
        what: &'static str,
        mut done: impl FnMut(Global) -> bool,
    ) -> Result<(), VtdError> {
        let start = self.platform.now_us();
        loop {
            if done(self.gsts()) {
                return Ok(());
            }
            if self.platform.now_us().saturating_sub(start) > self.config.timeout_us {
                return Err(VtdError::Timeout { what });
            }
            core::hint::spin_loop();
        }
    }

    /// Writes GCMD as `(GSTS & 0x96FF_FFFF)` with `bit` set or cleared.
    fn write_gcmd(&self, bit: Global, set: bool) {
        let persistent = self.regs.read32(registers::GSTS) & GSTS_PERSISTENT_MASK;
        let value = if set {
            persistent | bit.bits()
        } else {
            persistent & !bit.bits()
        };
        self.platform.memory_fence();
        self.regs.write32(registers::GCMD, value);
    }

    /// Issues `requests` through the active invalidation path and returns once the hardware
    /// reported completion.
    ///
    /// # Errors
    ///
    /// The [`InvalidationError`] of the active path ([`crate::invalidation::Invalidator::run`]).
    pub fn invalidate(&self, requests: &[Invalidation]) -> Result<(), InvalidationError> {
        self.stats.submissions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .requests
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let mut inval = self.invalidation.lock(&self.platform);
        if !self.stats.phase_timing.load(Ordering::Relaxed) {
            return inval.active.run(
                &self.regs,
                &self.platform,
                &self.caps,
                requests,
                self.config.timeout_us,
            );
        }
        let mut phases = PhaseCycles::default();
        let result = inval.active.run_timed(
            &self.regs,
            &self.platform,
            &self.caps,
            requests,
            self.config.timeout_us,
            Some(&mut phases),
        );
        drop(inval);
        self.stats.add_phases(&phases);
        result
    }

    /// Turns per-phase cycle accounting of queued invalidation on or off (off by default:
    /// then an invalidation costs one relaxed load for it and never reads the cycle counter).
    /// While on, every batch submitted through [`VtdUnit::invalidate`] (every flush, IEC and
    /// context invalidation) adds [`Platform::cycles`] deltas to [`VtdUnit::phase_stats`].
    pub fn set_phase_timing(&self, on: bool) {
        self.stats.phase_timing.store(on, Ordering::Relaxed);
    }

    /// Cycles spent per phase of queued invalidation (descriptor write, submission = the IQT
    /// write, wait) while phase timing was on ([`VtdUnit::set_phase_timing`]), summed since
    /// the unit was created; divide by `batches` for a per-submission figure.
    pub fn phase_stats(&self) -> PhaseCycles {
        PhaseCycles {
            descriptor_write: self.stats.descriptor_write.load(Ordering::Relaxed),
            submission: self.stats.submission.load(Ordering::Relaxed),
            wait: self.stats.wait.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
        }
    }

    /// Invalidation work done since the unit was created.
    pub fn invalidation_stats(&self) -> InvalidationStats {
        InvalidationStats {
            submissions: self.stats.submissions.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }
}
