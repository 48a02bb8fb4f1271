//! In-memory models of the host platform and of QEMU's VT-d unit, for host tests.
//!
//! [`HostPlatform`] backs table memory with heap pages at made-up physical addresses (never
//! equal to their CPU addresses, never reused after free) and keeps, per page, a *device view*
//! that only `flush_cache_range` updates: a model of a non-coherent walker (ECAP.C = 0), which
//! sees exactly what was written back with clflush. Fresh pages' device view is poison, so a
//! table linked without being written back is caught.
//!
//! [`FakeVtd`] implements [`RegisterIo`] the way QEMU 7.2's `intel-iommu` behaves (VT-d spec
//! §10.4, §6.5, §7.1, §3.6): GSTS follows GCMD, SRTP latches RTADDR, the invalidation queue is
//! processed when IQT is written (wait descriptors write their status word), CCMD/IOTLB
//! registers are ignored once QIE is set (a poller would time out), and a DMA emulator
//! ([`FakeVtd::dma`]) walks root/context/second-level tables through the device view with
//! QEMU's checks (AW in SAGAW, R/W ANDed across levels, SNP reserved without ECAP.SC, output
//! addresses below the HAW, pass-through entries (TT = 10) passing addresses untranslated when
//! ECAP.PT and faulting with reason 3 otherwise), caches context entries and translations
//! until invalidated (translations keyed by source ID and tagged with the DID, looked up
//! before the context entry, as QEMU does; under caching mode, not-present translations too),
//! and records faults in the fault recording registers. Protocol violations (a GCMD write not of the form
//! `(GSTS & 0x96FF_FFFF) | bit`, a register invalidation while QIE is set, a misaligned PSI,
//! ...) are collected in [`FakeVtd::violations`]. Failures can be injected: a unit that stops
//! answering ([`FakeVtd::set_unresponsive`]), a queue whose head stalls
//! ([`FakeVtd::set_queue_fetch_limit`]), descriptors rejected with FSTS.IQE
//! ([`FakeVtd::set_rejected_descriptor`]).
//!
//! The unit model is split by concept: this file holds its state, constructors, failure
//! injection and inspection; `regs` the register file (GCMD/GSTS, reads and writes by offset),
//! `queue` invalidation processing, `walk` the DMA walk, its caches and fault recording, `ir`
//! interrupt remapping. `platform` holds [`HostPlatform`].
//!
//! These models are plain `no_std` + `alloc` code so embedders can test against them too.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use dma::PhysAddr;
use pci_address::RequesterId;
use spin::Mutex;

use crate::caps::Capabilities;
use crate::context::ContextEntry;
use crate::fault::FaultReason;
use crate::invalidation::{desc, Descriptor, Invalidation};
use crate::pagetable::pte;
use crate::platform::{IrqState, Platform, TablePage, TABLE_PAGE_SIZE};

use crate::registers::{
    self, ccmd, frcd, iotlb, iq, Ccmd, FaultStatus, FrcdHi, FrcdLo, Global, IotlbCmd, Iqa, Iva,
    QueueIndex, RegisterIo, RegisterStats, RootEntryLo, Rtaddr, SlPte, WaitDescHi, WaitDescLo,
    GSTS_PERSISTENT_MASK,
};

mod ir;
mod platform;
mod queue;
mod regs;
mod walk;

pub use ir::InterruptResult;
pub use platform::{HostPlatform, IrqReport, MemEvent, TableEvent};

/// How an invalidation reached the fake hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the invalidation queue.
    Queue,
    /// Through CCMD / the IOTLB register.
    Register,
}

/// Something the fake hardware did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwEvent {
    /// A GCMD write (the value written).
    Gcmd(u32),
    /// SRTP latched this root table address.
    RootTableLatched(u64),
    /// An invalidation was processed.
    Invalidation(Via, Invalidation),
    /// A wait descriptor wrote `data` to `addr`.
    WaitStatus {
        /// Status address.
        addr: u64,
        /// Data written.
        data: u32,
    },
    /// A write-buffer flush.
    WriteBufferFlush,
    /// SIRTP latched this IRTA value.
    InterruptTableLatched(u64),
    /// The unit sent its fault-event interrupt (FEUADDR:FEADDR, FEDATA).
    FaultEvent {
        /// The message address.
        address: u64,
        /// The message data.
        data: u32,
    },
}

/// The result of one emulated DMA.
pub type DmaResult = Result<u64, FaultReason>;

#[derive(Debug, Clone, Copy)]
struct CachedTranslation {
    /// The domain ID of the context entry it was walked through (its tag).
    did: u16,
    /// Output page, or `None` for a cached not-present entry (caching mode).
    page: Option<u64>,
    read: bool,
    write: bool,
}

struct FakeState {
    caps: Capabilities,
    haw: u8,
    gsts: u32,
    rtaddr: u64,
    active_root: Option<u64>,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    other: BTreeMap<usize, u64>,
    fault_records: Vec<(u64, u64)>,
    context_cache: BTreeMap<RequesterId, ContextEntry>,
    /// Keyed by source ID and input page, tagged with the DID (as QEMU's IOTLB, which is
    /// looked up before the context entry).
    iotlb: BTreeMap<(RequesterId, u64), CachedTranslation>,
    events: Vec<HwEvent>,
    violations: Vec<String>,
    unresponsive: bool,
    /// Descriptors the queue may still fetch before its head stalls (`None`: unlimited).
    fetch_budget: Option<usize>,
    /// Descriptor type the queue rejects with FSTS.IQE (failure injection).
    rejected_kind: Option<u8>,
    /// Register-based invalidations complete with CAIG/IAIG = 00 ("not performed").
    register_not_performed: bool,
    /// A fault to record when the next fault-record F bit is cleared (a fault arriving between
    /// software's read and its clear).
    fault_on_clear: Option<(RequesterId, u64, bool)>,
    global_invalidated_since_root: bool,
    /// The interrupt-remapping model (fake/ir.rs).
    ir: ir::IrState,
}

/// A model of QEMU 7.2's VT-d unit (see the module docs).
pub struct FakeVtd {
    platform: Arc<HostPlatform>,
    state: Mutex<FakeState>,
    /// Register reads and writes that reached the model (the unit's and the test's own).
    reads: AtomicU64,
    writes: AtomicU64,
}

impl core::fmt::Debug for FakeVtd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeVtd")
            .field("caps", &self.state.lock().caps)
            .finish()
    }
}

/// QEMU 7.2 register values (tests/fixtures/registers.txt).
pub mod qemu {
    /// VER.
    pub const VER: u32 = 0x10;
    /// CAP, default properties.
    pub const CAP_DEFAULT: u64 = 0xd2008c22260206;
    /// CAP with `aw-bits=48`.
    pub const CAP_AW48: u64 = 0xd2008c222f0606;
    /// CAP with `caching-mode=on`.
    pub const CAP_CACHING_MODE: u64 = 0xd2008c22260286;
    /// ECAP, default properties.
    pub const ECAP_DEFAULT: u64 = 0xf00f4a;
}

impl FakeVtd {
    /// A unit with the given VER/CAP/ECAP, its memory in `platform`. The host address width is
    /// taken to be the MGAW (as QEMU's `aw-bits` sets both).
    pub fn new(platform: Arc<HostPlatform>, ver: u32, cap: u64, ecap: u64) -> Self {
        let caps = Capabilities::decode(ver, cap, ecap);
        let records = caps.cap.fault_records as usize;
        Self {
            platform,
            state: Mutex::new(FakeState {
                caps,
                haw: caps.cap.mgaw,
                gsts: 0,
                rtaddr: 0,
                active_root: None,
                ccmd: 0,
                iva: 0,
                iotlb_reg: 0,
                fsts: 0,
                fectl: registers::FECTL_IM,
                iqa: 0,
                iqh: 0,
                iqt: 0,
                ics: 0,
                other: BTreeMap::new(),
                fault_records: alloc::vec![(0, 0); records],
                context_cache: BTreeMap::new(),
                iotlb: BTreeMap::new(),
                events: Vec::new(),
                violations: Vec::new(),
                unresponsive: false,
                fetch_budget: None,
                rejected_kind: None,
                register_not_performed: false,
                fault_on_clear: None,
                global_invalidated_since_root: false,
                ir: ir::IrState::default(),
            }),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// QEMU's default `intel-iommu`.
    pub fn qemu_default(platform: Arc<HostPlatform>) -> Self {
        Self::new(platform, qemu::VER, qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT)
    }

    /// QEMU's `intel-iommu,aw-bits=48`.
    pub fn qemu_aw48(platform: Arc<HostPlatform>) -> Self {
        Self::new(platform, qemu::VER, qemu::CAP_AW48, qemu::ECAP_DEFAULT)
    }

    /// QEMU's `intel-iommu,caching-mode=on`.
    pub fn qemu_caching_mode(platform: Arc<HostPlatform>) -> Self {
        Self::new(
            platform,
            qemu::VER,
            qemu::CAP_CACHING_MODE,
            qemu::ECAP_DEFAULT,
        )
    }

    /// The memory model.
    pub fn platform(&self) -> &Arc<HostPlatform> {
        &self.platform
    }

    /// Stops the unit from reacting (status bits stay, the queue is not processed): every wait
    /// must then time out.
    pub fn set_unresponsive(&self, stuck: bool) {
        self.state.lock().unresponsive = stuck;
    }

    /// Lets the invalidation queue fetch only `n` more descriptors, after which IQH stalls (as
    /// on hardware that is slow to fetch) while every other register keeps answering; `None`
    /// lifts the limit. Pending descriptors are fetched at once, up to the new limit.
    pub fn set_queue_fetch_limit(&self, n: Option<usize>) {
        let mut s = self.state.lock();
        s.fetch_budget = n;
        self.resume_queue(&mut s);
    }

    /// Makes the invalidation queue reject every descriptor of type `kind`
    /// ([`desc::TYPE_CONTEXT`], ...) with FSTS.IQE, as hardware does with a descriptor it cannot
    /// process; `None` accepts them again.
    pub fn set_rejected_descriptor(&self, kind: Option<u8>) {
        self.state.lock().rejected_kind = kind;
    }

    /// Puts the unit in a state firmware can leave it in: queued invalidation on (with its own
    /// queue page, drained, or with `pending` descriptors not fetched yet), translation on
    /// (through a firmware root table with no present entry), interrupt remapping on. Call it
    /// before [`crate::VtdUnit::enable`].
    pub fn firmware_left(&self, qi: bool, te: bool, ire: bool, pending: usize) {
        let mut s = self.state.lock();
        if qi {
            let queue = self.platform.alloc_table_page().map(|p| p.phys.as_u64());
            s.iqa = queue.unwrap_or(0);
            s.iqh = QueueIndex::new().with_index(3).into_bits();
            s.iqt = QueueIndex::new()
                .with_index(u16::try_from((3 + pending) % (TABLE_PAGE_SIZE / 16)).unwrap_or(0))
                .into_bits();
            s.gsts |= Global::QIE.bits();
            if pending > 0 {
                // Descriptors the hardware has not fetched yet (it is stalled).
                s.fetch_budget = Some(0);
            }
        }
        if te {
            let root = self.platform.alloc_table_page().map(|p| p.phys.as_u64());
            s.rtaddr = root.unwrap_or(0);
            s.active_root = root;
            s.global_invalidated_since_root = true;
            s.gsts |= Global::SRTP.bits() | Global::TE.bits();
        }
        if ire {
            s.gsts |= Global::IRE.bits();
        }
    }

    /// The root table the unit translates through (latched by the last SRTP).
    pub fn active_root(&self) -> Option<u64> {
        self.state.lock().active_root
    }

    /// Makes register-based invalidations complete without performing anything, reporting
    /// CCMD.CAIG / IOTLB.IAIG = 00 (§11.4.6.1, §11.4.8.1: "not performed").
    pub fn set_register_invalidation_not_performed(&self, on: bool) {
        self.state.lock().register_not_performed = on;
    }

    /// Records a fault from `sid` at `iova` at the moment software next clears a fault
    /// record's F bit: a fault arriving between the read and the clear.
    pub fn inject_fault_on_next_clear(&self, sid: RequesterId, iova: u64, write: bool) {
        self.state.lock().fault_on_clear = Some((sid, iova, write));
    }

    /// Everything the unit did so far.
    pub fn events(&self) -> Vec<HwEvent> {
        self.state.lock().events.clone()
    }

    /// Takes (and clears) the event log.
    pub fn take_events(&self) -> Vec<HwEvent> {
        core::mem::take(&mut self.state.lock().events)
    }

    /// The invalidations processed so far.
    pub fn invalidations(&self) -> Vec<(Via, Invalidation)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HwEvent::Invalidation(via, inv) => Some((via, inv)),
                _ => None,
            })
            .collect()
    }

    /// Protocol violations seen (should stay empty).
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// Every register read and write that reached the model so far, whoever made it (the
    /// hardware's side of [`crate::VtdUnit::register_stats`], as QEMU's `vtd_reg_read` /
    /// `vtd_reg_write` trace events are).
    pub fn accesses(&self) -> RegisterStats {
        RegisterStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// The GSTS value.
    pub fn gsts(&self) -> Global {
        Global::from_bits_retain(self.state.lock().gsts)
    }
}
