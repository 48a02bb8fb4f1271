//! One DMA-remapping hardware unit: bring-up, domain IDs, context programming, invalidation.
//!
//! Implements VT-d spec §10.4.4 (global command protocol), the enable sequence of §6.5.2 and
//! §10.4.4–§10.4.5 (queued invalidation, root table pointer, translation enable), domain
//! identifiers (§3.4.1, §11.4.2 CAP.ND and CAP.CM) and the context-entry programming rules of
//! §6.5.3.3 / §6.1 (context-cache then IOTLB invalidation after a context entry changes).
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
//! # Isolation groups
//!
//! A domain is attached to whole isolation groups ([`GroupRef`]: a key and the requester IDs
//! the group's DMA can carry). Which group belongs to which domain, and which members use it,
//! lives here under the tables lock, so two domains can never both claim a group or a
//! requester ID; the last member's detach clears the group's context entries.

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use dma::PhysAddr;
use spin::Mutex;

use crate::caps::{Capabilities, PagingLevels};
use crate::context::{ContextEntry, RootTable};
use crate::fault::{self, FaultLog};
use crate::intremap::{IntRemapError, InterruptRemapTable, Irte};
use crate::invalidation::{Invalidation, InvalidationError, InvalidationQueue, Invalidator};
use crate::pagetable::{self, SecondLevelTable, TableConfig, MAX_OUTPUT_BITS};
use crate::platform::{Platform, TablePage};
use crate::registers::{
    self, Feaddr, Fectl, Global, MsiAddress64, MsiAddressCompat, RegisterIo, Rtaddr,
    GSTS_PERSISTENT_MASK, MSI_WINDOW,
};
use pci_address::RequesterId;

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

/// Why a unit or domain-management operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The hardware lacks something this crate needs.
    Unsupported {
        /// What is missing.
        reason: &'static str,
    },
    /// A status bit did not reach its expected value in time.
    Timeout {
        /// What was being waited for.
        what: &'static str,
    },
    /// An invalidation failed.
    Invalidation(InvalidationError),
    /// An interrupt-remapping operation was refused.
    InterruptRemapping(IntRemapError),
    /// No memory for tables.
    OutOfMemory,
    /// This unit's enable already completed (call [`VtdUnit::disable`] first).
    AlreadyEnabled,
    /// Every domain ID the unit supports (CAP.ND) is in use.
    DomainIdsExhausted,
    /// No advertised table depth gives the address width asked for.
    NoSuitableAddressWidth {
        /// The width asked for.
        requested: u8,
    },
    /// The table depth asked for is not advertised in SAGAW.
    LevelsNotSupported(PagingLevels),
    /// The requester ID already has a context entry (in domain `did`); detach it first.
    AlreadyAttached {
        /// The requester ID.
        rid: RequesterId,
        /// The domain it is attached to.
        did: u16,
    },
    /// The same requester ID was given twice.
    DuplicateRequesterId {
        /// The requester ID.
        rid: RequesterId,
    },
    /// The isolation group is attached to another domain (`did`): a group is never split
    /// across domains; detach every member from that domain first.
    GroupAttachedElsewhere {
        /// The group key.
        group: u32,
        /// The domain the group is attached to.
        did: u16,
    },
    /// The group key is known with a different set of requester IDs (a stale or inconsistent
    /// group computation).
    GroupRequesterIdsDiffer {
        /// The group key.
        group: u32,
    },
    /// A group with no requester ID: nothing could be attached.
    EmptyGroup {
        /// The group key.
        group: u32,
    },
    /// The device is already a member of the attached group.
    AlreadyMember {
        /// The group key.
        group: u32,
        /// The member's requester ID.
        device: RequesterId,
    },
    /// The group is not attached to this domain.
    GroupNotAttached {
        /// The group key.
        group: u32,
    },
    /// The group is attached to this domain, but `device` is not one of its members.
    NotAMember {
        /// The group key.
        group: u32,
        /// The requester ID given.
        device: RequesterId,
    },
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported { reason } => write!(f, "VT-d unit unsupported: {reason}"),
            Self::Timeout { what } => write!(f, "VT-d unit timed out waiting for {what}"),
            Self::Invalidation(e) => write!(f, "VT-d invalidation failed: {e}"),
            Self::InterruptRemapping(e) => write!(f, "VT-d interrupt remapping: {e}"),
            Self::OutOfMemory => f.write_str("out of memory for VT-d tables"),
            Self::AlreadyEnabled => f.write_str("VT-d translation is already enabled"),
            Self::DomainIdsExhausted => f.write_str("no free VT-d domain ID"),
            Self::NoSuitableAddressWidth { requested } => {
                write!(
                    f,
                    "no supported page-table depth covers {requested}-bit IOVAs"
                )
            }
            Self::LevelsNotSupported(l) => {
                write!(f, "{}-level tables not advertised in SAGAW", l.count())
            }
            Self::AlreadyAttached { rid, did } => {
                write!(f, "requester {rid} is already attached to domain {did}")
            }
            Self::DuplicateRequesterId { rid } => write!(f, "requester {rid} given twice"),
            Self::GroupAttachedElsewhere { group, did } => {
                write!(f, "isolation group {group} is attached to domain {did}")
            }
            Self::GroupRequesterIdsDiffer { group } => write!(
                f,
                "isolation group {group} is attached with a different set of requester IDs"
            ),
            Self::EmptyGroup { group } => {
                write!(f, "isolation group {group} has no requester ID")
            }
            Self::AlreadyMember { group, device } => {
                write!(f, "{device} is already a member of isolation group {group}")
            }
            Self::GroupNotAttached { group } => {
                write!(f, "isolation group {group} is not attached to this domain")
            }
            Self::NotAMember { group, device } => write!(
                f,
                "{device} is not an attached member of isolation group {group}"
            ),
        }
    }
}

impl core::error::Error for VtdError {}

impl From<InvalidationError> for VtdError {
    fn from(e: InvalidationError) -> Self {
        Self::Invalidation(e)
    }
}

impl From<IntRemapError> for VtdError {
    fn from(e: IntRemapError) -> Self {
        Self::InterruptRemapping(e)
    }
}

/// Allocator of domain IDs within CAP.ND.
#[derive(Debug)]
struct DomainIds {
    bits: Vec<u64>,
    count: u32,
    first: u32,
}

impl DomainIds {
    fn new(count: u32, reserve_zero: bool) -> Option<Self> {
        let words = (count as usize).div_ceil(u64::BITS as usize);
        let mut bits = Vec::new();
        bits.try_reserve_exact(words).ok()?;
        bits.resize(words, 0);
        Some(Self {
            bits,
            count,
            first: u32::from(reserve_zero),
        })
    }

    fn alloc(&mut self) -> Option<u16> {
        let id = (self.first..self.count)
            .find(|&i| self.bits[(i / 64) as usize] & (1 << (i % 64)) == 0)?;
        self.bits[(id / 64) as usize] |= 1 << (id % 64);
        u16::try_from(id).ok()
    }

    fn free(&mut self, id: u16) {
        if let Some(word) = self.bits.get_mut(id as usize / 64) {
            *word &= !(1 << (id % 64));
        }
    }
}

/// The state [`VtdUnit::enable`] found the unit in (what firmware or an earlier owner left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareState {
    /// GSTS.TES was set: translation was on (through someone else's root table).
    pub translation: bool,
    /// GSTS.QIES was set: queued invalidation was on (with someone else's queue).
    pub queued_invalidation: bool,
    /// GSTS.IRES was set: interrupt remapping was on. [`VtdUnit::enable`] leaves it as it is;
    /// [`VtdUnit::enable_interrupt_remapping`] takes it over (our table replaces the
    /// firmware's under IRE, then a global interrupt-entry-cache invalidation).
    pub interrupt_remapping: bool,
}

/// An isolation group as the caller computed it (the PCI crate's groups; this crate does not
/// depend on it): a key naming the group and the union of the requester IDs every member's DMA
/// can carry (own BDFs and DMA aliases). A one-device group is
/// `GroupRef { key, requester_ids: &[rid] }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    /// The group's key, unique per group on this unit.
    pub key: u32,
    /// Every requester ID the group's DMA can arrive with.
    pub requester_ids: &'a [RequesterId],
}

/// A group attached to a domain: its requester IDs (each with a present context entry for
/// `did`) and the members using it.
#[derive(Debug)]
struct GroupAttachment {
    key: u32,
    did: u16,
    rids: Vec<RequesterId>,
    members: Vec<RequesterId>,
    /// The context cache and IOTLB invalidation after writing the entries completed; `false`
    /// after a failed one (retried when the next member attaches).
    synced: bool,
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
    /// Every attached group of this unit. Held under the tables lock, so two domains can never
    /// both claim a group (or a requester ID).
    groups: Vec<GroupAttachment>,
}

fn same_set(a: &[RequesterId], b: &[RequesterId]) -> bool {
    a.len() == b.len() && a.iter().all(|r| b.contains(r))
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
    regs: R,
    platform: P,
    caps: Capabilities,
    config: UnitConfig,
    tables: Mutex<Tables>,
    invalidation: Mutex<InvalidationState>,
    /// The interrupt remapping table while interrupt remapping is on through it.
    intremap: Mutex<Option<InterruptRemapTable>>,
    /// Serialises readers of the fault recording registers, so no record is reported twice.
    faults: Mutex<()>,
    stats: Counters,
}

/// Running totals of invalidation work, for benchmarks and for tests that check how many
/// invalidations an operation cost (e.g. O(log N) page-selective invalidations for N pages).
#[derive(Debug, Default)]
struct Counters {
    submissions: AtomicU64,
    requests: AtomicU64,
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
            tables: Mutex::new(Tables {
                root,
                dids,
                enabled: false,
                prepared: false,
                firmware: None,
                groups: Vec::new(),
            }),
            invalidation: Mutex::new(InvalidationState {
                active: Invalidator::Registers,
                spare,
            }),
            intremap: Mutex::new(None),
            faults: Mutex::new(()),
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

    /// The register access.
    pub fn registers(&self) -> &R {
        &self.regs
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
        matches!(self.invalidation.lock().active, Invalidator::Queued(_))
    }

    /// Physical address of the root table.
    pub fn root_table(&self) -> PhysAddr {
        self.tables.lock().root.phys()
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

    /// Flushes the write buffer (GCMD.WBF, wait for GSTS.WBFS to clear), §6.8. A no-op unless
    /// CAP.RWBF.
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.WBFS does not clear in time.
    pub fn flush_write_buffer(&self) -> Result<(), VtdError> {
        if !self.caps.cap.rwbf {
            return Ok(());
        }
        // Serialise with other GCMD users (enable/disable hold the tables lock).
        let _tables = self.tables.lock();
        self.write_gcmd(Global::WBF, true);
        self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))
    }

    /// Runs the enable sequence (see the module docs), taking the unit over from whatever
    /// state firmware left it in ([`FirmwareState`], kept in [`VtdUnit::firmware_state`]):
    ///
    /// - queued invalidation left on: the firmware's queue is drained (IQH = IQT) and queued
    ///   invalidation turned off (GCMD.QIE = 0, wait for QIES to clear) before IQA/IQT are
    ///   reprogrammed (§6.5.2); a queue that does not drain is [`VtdError::Timeout`];
    /// - translation left on: it stays on. Our root table (no present entry yet) replaces the
    ///   firmware's (SRTP while TE = 1) and the global context-cache and IOTLB invalidation
    ///   makes the switch effective, so from then on every device is blocked until attached.
    ///   Turning translation off first would open a window in which DMA is not translated at
    ///   all. (RMRR identity maps are installed by the embedder's attach, as for any device.)
    /// - interrupt remapping left on: left as it is (every GCMD write keeps IRE/CFI, being
    ///   `(GSTS & 0x96FF_FFFF) | bit`); the interrupt-remapping owner reprograms it.
    ///
    /// Fails with [`VtdError::AlreadyEnabled`] if this unit's own enable already completed.
    ///
    /// `enable` is [`VtdUnit::prepare`] followed by [`VtdUnit::start_translation`]; an embedder
    /// that must attach devices before translation starts (RMRR users, which must never lose
    /// their memory once translation is on) calls the two with its attaches in between.
    ///
    /// # Errors
    ///
    /// [`VtdError::AlreadyEnabled`] (see above); [`VtdError::Timeout`] when a status bit (or the
    /// firmware's queue drain) does not settle in time; [`VtdError::Invalidation`] when the global
    /// invalidation fails.
    pub fn enable(&self) -> Result<(), VtdError> {
        self.prepare()?;
        self.start_translation()
    }

    /// Steps 1-3 of the enable sequence (queued invalidation, root table, global invalidation;
    /// a firmware queue drained and stopped first). Afterwards domains can be attached: their
    /// context entries are written and invalidated through the queue, and take effect when
    /// [`VtdUnit::start_translation`] sets TE. (If firmware left translation on, our root table
    /// is already live here: every device is blocked until attached, never untranslated.)
    ///
    /// # Errors
    /// As [`VtdUnit::enable`]; a second call is [`VtdError::AlreadyEnabled`].
    pub fn prepare(&self) -> Result<(), VtdError> {
        let mut tables = self.tables.lock();
        if tables.enabled || tables.prepared {
            return Err(VtdError::AlreadyEnabled);
        }
        let found = self.gsts();
        let firmware = FirmwareState {
            translation: found.contains(Global::TE),
            queued_invalidation: found.contains(Global::QIE),
            interrupt_remapping: found.contains(Global::IRE),
        };
        tables.firmware = Some(firmware);
        let mut inval = self.invalidation.lock();
        // 0. A queue someone else left running (firmware; not ours): drain it, then stop it.
        if firmware.queued_invalidation && !matches!(inval.active, Invalidator::Queued(_)) {
            let start = self.platform.now_us();
            while self.regs.read64(registers::IQH) != self.regs.read64(registers::IQT) {
                if self.platform.now_us().saturating_sub(start) > self.config.timeout_us {
                    return Err(VtdError::Timeout {
                        what: "the firmware's invalidation queue to drain",
                    });
                }
                core::hint::spin_loop();
            }
            self.write_gcmd(Global::QIE, false);
            self.wait_status("GSTS.QIES to clear", |g| !g.contains(Global::QIE))?;
        }
        // 1. Queued invalidation.
        if let Some(mut queue) = inval.spare.take() {
            self.regs.write64(registers::IQT, 0);
            queue.reset();
            self.regs.write64(registers::IQA, queue.iqa());
            self.write_gcmd(Global::QIE, true);
            if let Err(e) = self.wait_status("GSTS.QIES", |g| g.contains(Global::QIE)) {
                inval.spare = Some(queue);
                return Err(e);
            }
            inval.active = Invalidator::Queued(queue);
        }
        // 2. Root table.
        let rtaddr = Rtaddr::new()
            .with_rta(tables.root.phys().as_u64())
            .with_ttm(Rtaddr::TTM_LEGACY);
        self.regs.write64(registers::RTADDR, rtaddr.into_bits());
        self.write_gcmd(Global::SRTP, true);
        self.wait_status("GSTS.RTPS", |g| g.contains(Global::SRTP))?;
        if self.caps.cap.rwbf {
            self.write_gcmd(Global::WBF, true);
            self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))?;
        }
        // 3. Global invalidation, closed by a wait descriptor in queued mode.
        inval.active.run(
            &self.regs,
            &self.platform,
            &self.caps,
            &[Invalidation::ContextGlobal, Invalidation::IotlbGlobal],
            self.config.timeout_us,
        )?;
        drop(inval);
        tables.prepared = true;
        Ok(())
    }

    /// Step 4 of the enable sequence: GCMD.TE, wait for GSTS.TES. From here on every device
    /// without a context entry is blocked.
    ///
    /// # Errors
    /// [`VtdError::AlreadyEnabled`] if translation was started already,
    /// [`VtdError::Unsupported`] before [`VtdUnit::prepare`], [`VtdError::Timeout`].
    pub fn start_translation(&self) -> Result<(), VtdError> {
        let mut tables = self.tables.lock();
        if tables.enabled {
            return Err(VtdError::AlreadyEnabled);
        }
        if !tables.prepared {
            return Err(VtdError::Unsupported {
                reason: "start_translation before prepare",
            });
        }
        // 4. Translation (already on if firmware left it on: the switch in prepare took effect).
        if self.gsts().contains(Global::TE) {
            log::warn!("VT-d: translation was left on by firmware; now through our root table");
        } else {
            self.write_gcmd(Global::TE, true);
            self.wait_status("GSTS.TES", |g| g.contains(Global::TE))?;
        }
        tables.enabled = true;
        log::info!(
            "VT-d: translation enabled (root table {})",
            tables.root.phys()
        );
        Ok(())
    }

    /// Turns interrupt remapping off if this unit enabled it
    /// ([`VtdUnit::disable_interrupt_remapping`]: it needs the queue), then translation (wait
    /// for TES to clear), then queued invalidation (after draining the queue), returning to
    /// register-based invalidation.
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.IRES, GSTS.TES or GSTS.QIES does not clear in time;
    /// [`VtdError::Invalidation`] when the queue does not drain.
    pub fn disable(&self) -> Result<(), VtdError> {
        self.disable_interrupt_remapping()?;
        let mut tables = self.tables.lock();
        if self.gsts().contains(Global::TE) {
            self.write_gcmd(Global::TE, false);
            self.wait_status("GSTS.TES to clear", |g| !g.contains(Global::TE))?;
        }
        tables.enabled = false;
        tables.prepared = false;
        let mut inval = self.invalidation.lock();
        if let Invalidator::Queued(queue) = &mut inval.active {
            queue.submit(
                &self.regs,
                &self.platform,
                &self.caps,
                &[],
                self.config.timeout_us,
            )?;
            self.write_gcmd(Global::QIE, false);
            self.wait_status("GSTS.QIES to clear", |g| !g.contains(Global::QIE))?;
            if let Invalidator::Queued(queue) =
                core::mem::replace(&mut inval.active, Invalidator::Registers)
            {
                inval.spare = Some(queue);
            }
        }
        Ok(())
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
        let mut inval = self.invalidation.lock();
        inval.active.run(
            &self.regs,
            &self.platform,
            &self.caps,
            requests,
            self.config.timeout_us,
        )
    }

    /// Invalidation work done since the unit was created.
    pub fn invalidation_stats(&self) -> InvalidationStats {
        InvalidationStats {
            submissions: self.stats.submissions.load(Ordering::Relaxed),
            requests: self.stats.requests.load(Ordering::Relaxed),
        }
    }

    /// Allocates a domain ID and an empty second-level table of depth `levels` (which must be
    /// advertised in SAGAW) with unlinked-table owner token `owner`, for
    /// [`VtdUnit::create_domain`].
    pub(crate) fn alloc_domain(
        &self,
        levels: PagingLevels,
        owner: u64,
    ) -> Result<(u16, SecondLevelTable), VtdError> {
        let table_cfg = TableConfig {
            levels,
            input_bits: levels.address_width().min(self.caps.cap.mgaw),
            output_bits: self.config.host_address_width,
            page_sizes: pagetable::page_sizes(
                self.caps.cap.superpage_2m(),
                self.caps.cap.superpage_1g(),
            ),
            snoop_control: self.caps.ecap.snoop_control,
            coherent: self.caps.ecap.coherent,
        };
        let did = self
            .tables
            .lock()
            .dids
            .alloc()
            .ok_or(VtdError::DomainIdsExhausted)?;
        match SecondLevelTable::with_owner(&self.platform, table_cfg, owner) {
            Ok(table) => Ok((did, table)),
            Err(_) => {
                self.tables.lock().dids.free(did);
                Err(VtdError::OutOfMemory)
            }
        }
    }

    /// Returns a domain ID (only when no context entry or cached translation uses it).
    pub(crate) fn release_did(&self, did: u16) {
        self.tables.lock().dids.free(did);
    }

    /// The context entry of `rid` as the hardware would read it (`None`: no context table).
    pub fn context_entry(&self, rid: RequesterId) -> Option<ContextEntry> {
        self.tables.lock().root.context(&self.platform, rid)
    }

    /// Which domain ID holds the isolation group `key` (`None`: not attached).
    pub fn group_domain(&self, key: u32) -> Option<u16> {
        self.tables
            .lock()
            .groups
            .iter()
            .find(|g| g.key == key)
            .map(|g| g.did)
    }

    /// The keys of the groups attached to domain `did`.
    pub(crate) fn groups_of(&self, did: u16) -> Vec<u32> {
        self.tables
            .lock()
            .groups
            .iter()
            .filter(|g| g.did == did)
            .map(|g| g.key)
            .collect()
    }

    /// The requester IDs of the groups attached to domain `did`.
    pub(crate) fn requester_ids_of(&self, did: u16) -> Vec<RequesterId> {
        self.tables
            .lock()
            .groups
            .iter()
            .filter(|g| g.did == did)
            .flat_map(|g| g.rids.iter().copied())
            .collect()
    }

    /// Attaches member `device` of `group` to domain `did` (see [`Domain::attach_device`](crate::Domain::attach_device)).
    pub(crate) fn attach_group(
        &self,
        did: u16,
        table: &SecondLevelTable,
        group: GroupRef<'_>,
        device: RequesterId,
    ) -> Result<(), VtdError> {
        let key = group.key;
        let rids = group.requester_ids;
        if rids.is_empty() {
            return Err(VtdError::EmptyGroup { group: key });
        }
        for (i, &rid) in rids.iter().enumerate() {
            if rids[..i].contains(&rid) {
                return Err(VtdError::DuplicateRequesterId { rid });
            }
        }
        if !rids.contains(&device) {
            // A member's own requester ID is among the group's (its first DMA alias).
            return Err(VtdError::NotAMember { group: key, device });
        }
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        if let Some(g) = tables.groups.iter_mut().find(|g| g.key == key) {
            if g.did != did {
                return Err(VtdError::GroupAttachedElsewhere {
                    group: key,
                    did: g.did,
                });
            }
            if !same_set(&g.rids, rids) {
                return Err(VtdError::GroupRequesterIdsDiffer { group: key });
            }
            if g.members.contains(&device) {
                return Err(VtdError::AlreadyMember { group: key, device });
            }
            g.members
                .try_reserve(1)
                .map_err(|_| VtdError::OutOfMemory)?;
            if !g.synced {
                // The first member's invalidation failed: finish it before another member
                // relies on the entries.
                let requests = self.context_requests(did, &g.rids, self.cached_did(did))?;
                self.sync_context_writes()?;
                self.invalidate(&requests)?;
                g.synced = true;
            }
            g.members.push(device);
            return Ok(());
        }
        // A new group: every ID must be free (no other group, no present entry).
        let mut missing_buses: Vec<u8> = Vec::new();
        for &rid in rids {
            if let Some(other) = tables.groups.iter().find(|g| g.rids.contains(&rid)) {
                return Err(VtdError::AlreadyAttached {
                    rid,
                    did: other.did,
                });
            }
            match tables.root.context(&self.platform, rid) {
                Some(entry) if entry.present() => {
                    return Err(VtdError::AlreadyAttached {
                        rid,
                        did: entry.did(),
                    });
                }
                Some(_) => {}
                None => {
                    let bus = rid.bus();
                    if !missing_buses.contains(&bus) {
                        missing_buses
                            .try_reserve(1)
                            .map_err(|_| VtdError::OutOfMemory)?;
                        missing_buses.push(bus);
                    }
                }
            }
        }
        // Every heap reservation happens before the first table page is allocated, so a
        // failure after it can only be a page allocation, which frees what this call took.
        let oom = |_| VtdError::OutOfMemory;
        let requests = self.context_requests(did, rids, self.cached_did(did))?;
        let mut record = GroupAttachment {
            key,
            did,
            rids: Vec::new(),
            members: Vec::new(),
            synced: false,
        };
        record.rids.try_reserve_exact(rids.len()).map_err(oom)?;
        record.rids.extend_from_slice(rids);
        record.members.try_reserve(1).map_err(oom)?;
        record.members.push(device);
        tables.groups.try_reserve(1).map_err(oom)?;
        let mut pages: Vec<TablePage> = Vec::new();
        pages.try_reserve_exact(missing_buses.len()).map_err(oom)?;
        for _ in &missing_buses {
            match self.platform.alloc_table_page() {
                Some(p) => pages.push(p),
                None => {
                    for p in pages {
                        // SAFETY: just allocated, never linked.
                        unsafe { self.platform.free_table_page(p.phys) };
                    }
                    return Err(VtdError::OutOfMemory);
                }
            }
        }
        // Nothing can fail from here up to the invalidation.
        for (bus, page) in missing_buses.iter().zip(pages) {
            tables.root.link_context_table(&self.platform, *bus, page);
        }
        let entry = ContextEntry::translated(table.root(), table.levels(), did);
        for &rid in rids {
            tables.root.set_context(&self.platform, rid, entry);
        }
        // Tracked from now on, so a failed invalidation leaves something detach can clear.
        tables.groups.push(record);
        let synced = self
            .sync_context_writes()
            .and_then(|()| self.invalidate(&requests).map_err(VtdError::from));
        if let Some(g) = tables.groups.last_mut() {
            match synced {
                Ok(()) => g.synced = true,
                // The entries are written but maybe not yet visible: the group stays tracked
                // (owned by this domain, unsynced) with no member, so the caller, which gets
                // the error, holds nothing; any member's next attach (this device's retry
                // included) finishes the invalidation first, and the domain's drop clears it.
                Err(_) => g.members.clear(),
            }
        }
        synced
    }

    /// Removes member `device` of group `key` from domain `did` (see
    /// [`Domain::detach_device`](crate::Domain::detach_device)); the last member clears the group's context entries.
    pub(crate) fn detach_group_member(
        &self,
        did: u16,
        key: u32,
        device: RequesterId,
    ) -> Result<(), VtdError> {
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let Some(index) = tables
            .groups
            .iter()
            .position(|g| g.key == key && g.did == did)
        else {
            return Err(VtdError::GroupNotAttached { group: key });
        };
        let g = &mut tables.groups[index];
        let Some(member) = g.members.iter().position(|&m| m == device) else {
            return Err(VtdError::NotAMember { group: key, device });
        };
        if g.members.len() > 1 {
            // Another member still uses the entries: nothing changes in hardware.
            g.members.swap_remove(member);
            return Ok(());
        }
        let requests = self.context_requests(did, &g.rids, did)?;
        Self::clear_entries(
            &self.platform,
            &mut tables.root,
            did,
            &tables.groups[index].rids,
        );
        // Forget the group only once the entries are cleared *and* the invalidation completed.
        self.invalidate(&requests)?;
        tables.groups.swap_remove(index);
        Ok(())
    }

    /// Detaches every group of domain `did` (the domain is going away). On failure every group
    /// stays tracked (a context entry or a cached copy may still point at the domain's table).
    pub(crate) fn detach_domain(&self, did: u16) -> Result<(), VtdError> {
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let mut rids: Vec<RequesterId> = Vec::new();
        for g in tables.groups.iter().filter(|g| g.did == did) {
            rids.try_reserve(g.rids.len())
                .map_err(|_| VtdError::OutOfMemory)?;
            rids.extend_from_slice(&g.rids);
        }
        let requests = self.context_requests(did, &rids, did)?;
        Self::clear_entries(&self.platform, &mut tables.root, did, &rids);
        self.invalidate(&requests)?;
        tables.groups.retain(|g| g.did != did);
        Ok(())
    }

    /// The domain ID a cached copy of a *not-present* entry may carry: 0 under caching mode.
    fn cached_did(&self, did: u16) -> u16 {
        if self.caps.cap.caching_mode {
            0
        } else {
            did
        }
    }

    /// Device-selective context-cache invalidations of `rids` (tagged `cached_did`), then the
    /// domain's IOTLB.
    fn context_requests(
        &self,
        did: u16,
        rids: &[RequesterId],
        cached_did: u16,
    ) -> Result<Vec<Invalidation>, VtdError> {
        let mut requests: Vec<Invalidation> = Vec::new();
        requests
            .try_reserve_exact(rids.len() + 1)
            .map_err(|_| VtdError::OutOfMemory)?;
        requests.extend(rids.iter().map(|&sid| Invalidation::ContextDevice {
            did: cached_did,
            sid,
        }));
        requests.push(Invalidation::IotlbDomain { did });
        Ok(requests)
    }

    /// Makes context-entry writes visible where the unit buffers writes (CAP.RWBF without
    /// caching mode, §6.8).
    fn sync_context_writes(&self) -> Result<(), VtdError> {
        if self.caps.cap.rwbf && !self.caps.cap.caching_mode {
            self.write_gcmd(Global::WBF, true);
            self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))?;
        }
        Ok(())
    }

    /// Clears the context entries of `rids` that still belong to `did`. An entry that no
    /// longer does (cleared by an earlier detach whose invalidation failed, then attached
    /// elsewhere) is left alone; its cached copy tagged `did` is still invalidated by the
    /// caller.
    fn clear_entries(platform: &P, root: &mut RootTable, did: u16, rids: &[RequesterId]) {
        for &rid in rids {
            let ours = root
                .context(platform, rid)
                .is_some_and(|e| e.present() && e.did() == did);
            if ours {
                root.clear_context(platform, rid);
            }
        }
    }

    /// Reads every pending fault record (and FSTS.PFO).
    pub fn read_faults(&self) -> FaultLog {
        fault::read_faults(&self.regs, &self.caps)
    }

    /// Reads every pending fault record and clears exactly the records returned (and FSTS.PFO
    /// only if the log reports it), so a fault arriving in between is never lost.
    pub fn read_and_clear_faults(&self) -> FaultLog {
        let _faults = self.faults.lock();
        fault::read_and_clear_faults(&self.regs, &self.caps)
    }

    /// Clears every fault record's F bit and FSTS.PFO, read or not (see
    /// [`VtdUnit::read_and_clear_faults`] to consume faults).
    pub fn clear_faults(&self) {
        fault::clear_faults(&self.regs, &self.caps)
    }
}

/// Interrupt remapping (§5.1, §10.4.4 IRE/SIRTP/CFI, §11.4.10 IRTA) and fault-event
/// interrupts (§7.3, §11.4.7.2-5).
impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Turns interrupt remapping on through a table of this unit's own, sized for `entries`
    /// vectors (the next power of two, 2 to 65536), in x2APIC mode (EIME) if `eim`:
    ///
    /// 1. GCMD.CFI cleared if set (compatibility-format interrupts blocked once IRE is on);
    /// 2. IRTA (base, EIME, size), GCMD.SIRTP, wait for GSTS.IRTPS;
    /// 3. a global interrupt-entry-cache invalidation, closed by a wait descriptor;
    /// 4. GCMD.IRE, wait for GSTS.IRES (already set if firmware left remapping on: step 2
    ///    swapped its table for ours and step 3 made it effective).
    ///
    /// Afterwards every interrupt goes through the table, whose entries are all not present:
    /// no interrupt is delivered until [`VtdUnit::set_irte`] fills an entry. Needs queued
    /// invalidation active ([`VtdUnit::prepare`] or [`VtdUnit::enable`] first).
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotSupported`] (no ECAP.IR),
    /// [`IntRemapError::ExtendedModeUnsupported`] (`eim` without ECAP.EIM),
    /// [`IntRemapError::AlreadyEnabled`], [`IntRemapError::QueuedInvalidationOff`],
    /// [`IntRemapError::BadTableSize`] or [`IntRemapError::OutOfMemory`];
    /// [`VtdError::Timeout`] when a status bit does not settle; [`VtdError::Invalidation`]
    /// when the global invalidation fails. After a failure past step 2 the table is leaked on
    /// purpose (the hardware may read it).
    pub fn enable_interrupt_remapping(&self, entries: u32, eim: bool) -> Result<(), VtdError> {
        if !self.caps.ecap.interrupt_remapping {
            return Err(IntRemapError::NotSupported.into());
        }
        if eim && !self.caps.ecap.eim {
            return Err(IntRemapError::ExtendedModeUnsupported.into());
        }
        let mut ir = self.intremap.lock();
        if ir.is_some() {
            return Err(IntRemapError::AlreadyEnabled.into());
        }
        if !self.queued_invalidation_active() {
            return Err(IntRemapError::QueuedInvalidationOff.into());
        }
        let table =
            InterruptRemapTable::new(&self.platform, entries, eim, self.caps.ecap.coherent)?;
        // Serialise GCMD with the other users (they hold the tables lock).
        let tables = self.tables.lock();
        // 1. Compatibility-format interrupts blocked.
        if self.gsts().contains(Global::CFI) {
            self.write_gcmd(Global::CFI, false);
            if let Err(e) = self.wait_status("GSTS.CFIS to clear", |g| !g.contains(Global::CFI)) {
                // SAFETY: the table was never given to the hardware.
                unsafe { table.destroy(&self.platform) };
                return Err(e);
            }
        }
        // 2. The table pointer.
        self.platform.memory_fence();
        self.regs.write64(registers::IRTA, table.irta());
        self.write_gcmd(Global::SIRTP, true);
        let latched = self.wait_status("GSTS.IRTPS", |g| g.contains(Global::SIRTP));
        let base = table.base();
        let count = table.entries();
        if let Err(e) = latched {
            // The hardware may have latched it after all: never free it.
            core::mem::forget(table);
            return Err(e);
        }
        // 3. Nothing cached from an earlier table survives.
        if let Err(e) = self.invalidate(&[Invalidation::InterruptEntryGlobal]) {
            core::mem::forget(table);
            return Err(e.into());
        }
        // 4. Remapping on.
        if !self.gsts().contains(Global::IRE) {
            self.write_gcmd(Global::IRE, true);
            if let Err(e) = self.wait_status("GSTS.IRES", |g| g.contains(Global::IRE)) {
                core::mem::forget(table);
                return Err(e);
            }
        }
        drop(tables);
        *ir = Some(table);
        log::info!(
            "VT-d: interrupt remapping enabled ({count} entries at {base}, {} mode)",
            if eim { "x2APIC" } else { "xAPIC" }
        );
        Ok(())
    }

    /// Turns interrupt remapping off (GCMD.IRE, wait for IRES to clear), invalidates the
    /// interrupt entry cache and frees the table. Does nothing if this unit did not enable it.
    /// Afterwards interrupts are no longer remapped (compatibility format passes).
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.IRES does not clear; [`VtdError::Invalidation`]. On
    /// failure the table stays in place (and remapping may still be on).
    pub fn disable_interrupt_remapping(&self) -> Result<(), VtdError> {
        let mut ir = self.intremap.lock();
        if ir.is_none() {
            return Ok(());
        }
        {
            let _tables = self.tables.lock();
            if self.gsts().contains(Global::IRE) {
                self.write_gcmd(Global::IRE, false);
                self.wait_status("GSTS.IRES to clear", |g| !g.contains(Global::IRE))?;
            }
        }
        self.invalidate(&[Invalidation::InterruptEntryGlobal])?;
        if let Some(table) = ir.take() {
            // SAFETY: IRE is off and the interrupt entry cache was invalidated since: the
            // hardware no longer reads the table.
            unsafe { table.destroy(&self.platform) };
        }
        Ok(())
    }

    /// Whether interrupt remapping is on through this unit's table.
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.intremap.lock().is_some()
    }

    /// The table's physical address, entry count and mode (EIME) while interrupt remapping is
    /// on through it.
    pub fn interrupt_remapping_table(&self) -> Option<(PhysAddr, u32, bool)> {
        self.intremap
            .lock()
            .as_ref()
            .map(|t| (t.base(), t.entries(), t.eime()))
    }

    /// Allocates a naturally aligned block of `count` IRTEs (a power of two; `count` > 1 for a
    /// multi-message MSI, whose message then carries the returned handle and the subhandle
    /// valid bit) and returns the first index: the *handle* of the remappable-format MSI
    /// address. The entries stay not present until [`VtdUnit::set_irte`].
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`],
    /// [`IntRemapError::BadCount`] or [`IntRemapError::Exhausted`].
    pub fn alloc_irtes(&self, count: u32) -> Result<u16, VtdError> {
        let mut ir = self.intremap.lock();
        let table = ir.as_mut().ok_or(IntRemapError::NotEnabled)?;
        Ok(table.alloc(count)?)
    }

    /// Writes IRTE `index` (one 128-bit atomic store, written back from the CPU cache when
    /// ECAP.C = 0), then invalidates exactly that interrupt-entry-cache entry and waits for
    /// the invalidation to complete: when this returns, the next interrupt through `index`
    /// uses the new entry.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`],
    /// [`IntRemapError::NotAllocated`] or a destination-format error of [`Irte::encode`]
    /// (nothing written); [`VtdError::Invalidation`] (the entry is written but maybe not yet
    /// in use: retry).
    pub fn set_irte(&self, index: u16, entry: &Irte) -> Result<(), VtdError> {
        let ir = self.intremap.lock();
        let table = ir.as_ref().ok_or(IntRemapError::NotEnabled)?;
        table.set(&self.platform, index, entry)?;
        self.invalidate(&[Invalidation::InterruptEntries { index, mask: 0 }])?;
        Ok(())
    }

    /// Makes IRTE `index` not present (interrupts through it are blocked), then invalidates
    /// its interrupt-entry-cache entry and waits, as [`VtdUnit::set_irte`].
    ///
    /// # Errors
    ///
    /// As [`VtdUnit::set_irte`].
    pub fn clear_irte(&self, index: u16) -> Result<(), VtdError> {
        let ir = self.intremap.lock();
        let table = ir.as_ref().ok_or(IntRemapError::NotEnabled)?;
        if !table.is_allocated(index) {
            return Err(IntRemapError::NotAllocated { index }.into());
        }
        table.write_raw(&self.platform, index, 0, 0);
        self.invalidate(&[Invalidation::InterruptEntries { index, mask: 0 }])?;
        Ok(())
    }

    /// Clears the block `index..index + count` (as [`VtdUnit::alloc_irtes`] returned it),
    /// invalidates its interrupt-entry-cache entries (one index-selective invalidation with
    /// mask `log2(count)`), waits, and only then returns the block to the allocator.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`] or
    /// [`IntRemapError::NotAllocated`] (not a block handed out); [`VtdError::Invalidation`]
    /// (the entries are cleared but the block stays allocated, so it is not reused while a
    /// stale copy may be cached: call again).
    pub fn free_irtes(&self, index: u16, count: u32) -> Result<(), VtdError> {
        let mut ir = self.intremap.lock();
        let table = ir.as_mut().ok_or(IntRemapError::NotEnabled)?;
        if table.block_of(index) != Some((index, count)) {
            return Err(IntRemapError::NotAllocated { index }.into());
        }
        for i in 0..count {
            let Ok(i) = u16::try_from(u32::from(index) + i) else {
                break;
            };
            table.write_raw(&self.platform, i, 0, 0);
        }
        let mask = u8::try_from(count.trailing_zeros()).unwrap_or(u8::MAX);
        self.invalidate(&[Invalidation::InterruptEntries { index, mask }])?;
        table.free(index, count)?;
        Ok(())
    }

    /// IRTE `index` as it is in memory (`None`: remapping off, beyond the table, or not a
    /// present remapped-format entry this crate writes).
    pub fn irte(&self, index: u16) -> Option<Irte> {
        self.intremap
            .lock()
            .as_ref()
            .and_then(|t| t.get(&self.platform, index))
    }

    /// The raw IRTE `index` `(bits 63:0, bits 127:64)` as the CPU sees it.
    pub fn irte_raw(&self, index: u16) -> Option<(u64, u64)> {
        self.intremap
            .lock()
            .as_ref()
            .and_then(|t| t.read(&self.platform, index))
    }

    /// Makes faults raise an interrupt: the unit's fault event is a compatibility-format MSI
    /// (remapping hardware does not remap its own interrupts) with `address` (0xFEEx_xxxx,
    /// bit 4 clear; the upper half goes to FEUADDR) and `data`. The event is masked while
    /// FEDATA/FEADDR/FEUADDR are written, then unmasked (FECTL.IM = 0); a fault already
    /// pending (FECTL.IP) is delivered at once. Service it with
    /// [`VtdUnit::service_fault_event`]; polling keeps working.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotAnInterruptAddress`] (nothing
    /// is written).
    pub fn set_fault_event(&self, address: u64, data: u32) -> Result<(), VtdError> {
        let split = MsiAddress64::from_bits(address);
        let low = MsiAddressCompat::from_bits(split.lo());
        if low.window() != MSI_WINDOW || low.remappable() {
            return Err(IntRemapError::NotAnInterruptAddress(address).into());
        }
        let masked = Fectl::new().with_im(true).into_bits();
        self.regs.write32(registers::FECTL, masked);
        self.regs.write32(registers::FEDATA, data);
        self.regs.write32(
            registers::FEADDR,
            Feaddr::new().with_addr(split.lo()).into_bits(),
        );
        self.regs.write32(registers::FEUADDR, split.hi());
        self.platform.memory_fence();
        self.regs
            .write32(registers::FECTL, Fectl::new().with_im(false).into_bits());
        Ok(())
    }

    /// Masks the fault event (FECTL.IM = 1): faults are recorded but raise no interrupt
    /// (FECTL.IP shows one pending); poll with [`VtdUnit::read_and_clear_faults`].
    pub fn mask_fault_event(&self) {
        self.regs
            .write32(registers::FECTL, Fectl::new().with_im(true).into_bits());
    }

    /// Whether the fault event is masked (FECTL.IM) and whether one is pending (FECTL.IP).
    pub fn fault_event_state(&self) -> (bool, bool) {
        let fectl = Fectl::from_bits(self.regs.read32(registers::FECTL));
        (fectl.im(), fectl.ip())
    }

    /// The fault-event interrupt handler's work: reads and clears exactly the records it read
    /// (and PFO only when it saw it), repeating until the unit shows no pending fault, so a
    /// record that arrived while the previous ones were cleared is returned too instead of
    /// sitting unreported (the hardware raises the next event only once nothing is pending).
    /// Safe to call from a poller as well.
    pub fn service_fault_event(&self) -> FaultLog {
        let _faults = self.faults.lock();
        fault::service_faults(&self.regs, &self.caps)
    }
}
