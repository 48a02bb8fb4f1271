//! VT-d fault events as interrupts (VT-d spec §7.3, §11.4.7.2-5), routed to domain owners.
//!
//! [`install`] gives every unit a vector with [`on_fault_event`] as its handler, programs
//! FEDATA/FEADDR with a compatibility-format fixed MSI to this CPU's APIC ID (a unit's fault
//! event is its own interrupt and is never remapped, §5.1.6) and unmasks FECTL. The handler
//! services the unit ([`iommu_vtd::VtdUnit::service_fault_event`]: reads the records, clears
//! exactly those and PFO only when it saw it, until nothing is pending), hands each record to
//! the owner of the faulting device's domain through the [`vtd_platform::FaultRouter`]
//! ([`register`]: a callback per domain; unowned faults are counted, [`unowned`]) and keeps it
//! in a bounded per-unit log ([`LOG_CAPACITY`]) for [`take`]. With `vtd.fault_irq=off` on the
//! command line FECTL stays masked and the same path runs only when someone calls [`take`]:
//! polling.
//!
//! Every kernel reader of fault records goes through [`take`] (or [`discard`]) rather than the
//! unit: the handler consumes the records, so reading the unit directly would miss what it
//! collected, and [`take`] also services anything still pending, so the polling and interrupt
//! paths agree and each record is dispatched and returned exactly once.
//!
//! # Locking in the handler
//!
//! All state is in one [`IrqMutex`]: mainline ([`take`], [`register`]) holds it only with
//! interrupts disabled, so the handler never finds it held by the code it interrupted. Inside
//! it the unit's *faults* lock is taken (by `service_fault_event`/`clear_faults`); no kernel code
//! takes that lock outside this module, so it is never held with interrupts on either. The
//! domain a source belongs to is read with `VtdUnit::context_entry_unlocked`
//! ([`hardware_domain`]), not `VtdUnit::context_entry`, whose tables lock an interrupted attach
//! may hold. Callbacks run in the handler (or in [`take`]) with interrupts disabled and
//! this module's lock held: they must not block, must not call into this module, and may
//! allocate only because this kernel's heap is interrupt-safe.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use iommu_vtd::{FaultLog, FaultRecord, RequesterId, VtdError};
use pci::msi::{MessageError, MsiMessage};
use vtd_platform::{Fault, FaultRouteError, FaultRouter, RateLimit};

use super::iommu::{Domain, Iommu, Unit};
use crate::arch::irq::{self, IrqError, IrqMutex};
use crate::arch::{apic, time};

/// Records kept per unit between [`take`] calls; older ones are dropped (and counted,
/// [`Taken::lost`]) beyond that.
pub const LOG_CAPACITY: usize = 64;

/// Log lines per faulting source per second.
const LOG_LIMIT: RateLimit = RateLimit {
    burst: 10,
    window_us: 1_000_000,
};

struct UnitFaults {
    unit: Arc<Unit>,
    vector: Option<u8>,
    log: VecDeque<FaultRecord>,
    overflow: bool,
    lost: u64,
}

struct State {
    units: Vec<UnitFaults>,
    router: FaultRouter,
}

static STATE: IrqMutex<State> = IrqMutex::new(State {
    units: Vec::new(),
    router: FaultRouter::new(LOG_LIMIT),
});

/// Whether fault events are interrupts (false: polling only).
static INTERRUPTS: AtomicBool = AtomicBool::new(false);
/// Records the handler serviced.
static FROM_INTERRUPT: AtomicU64 = AtomicU64::new(0);
/// Records whose source had no registered domain.
static UNOWNED: AtomicU64 = AtomicU64::new(0);

/// Why fault events could not be set up.
#[derive(Debug)]
pub enum FaultSetupError {
    /// No vector, or the handler could not be registered.
    Vector(IrqError),
    /// This CPU's APIC ID does not fit a compatibility-format MSI.
    Message(MessageError),
    /// The APIC ID is wider than 8 bits.
    ApicId(u32),
    /// The unit refused the message.
    Unit(VtdError),
}

impl fmt::Display for FaultSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vector(e) => write!(f, "fault-event vector: {e}"),
            Self::Message(e) => write!(f, "fault-event message: {e}"),
            Self::ApicId(id) => write!(f, "APIC ID {id} does not fit an xAPIC MSI"),
            Self::Unit(e) => write!(f, "programming the fault event: {e}"),
        }
    }
}

impl core::error::Error for FaultSetupError {}

/// Sets up fault reporting for every unit of `iommu` (in the order of `iommu.units`, which is
/// the unit index callbacks see): with `interrupts`, a vector, [`on_fault_event`] and an
/// unmasked fault event to this CPU; without, FECTL masked (polling through [`take`]). Call it
/// once, after interrupts are initialised.
///
/// # Errors
/// [`FaultSetupError`]: the first unit that could not be set up (earlier ones stay set up).
pub fn install(iommu: &Iommu, interrupts: bool) -> Result<(), FaultSetupError> {
    let apic_id = apic::id();
    let destination = u8::try_from(apic_id).map_err(|_| FaultSetupError::ApicId(apic_id))?;
    INTERRUPTS.store(interrupts, Ordering::Release);
    STATE.with(|s| {
        s.router
            .set_default_sink(alloc::boxed::Box::new(|_: &Fault| {
                UNOWNED.fetch_add(1, Ordering::Relaxed);
            }))
    });
    for entry in &iommu.units {
        let unit = entry.unit.clone();
        unit.mask_fault_event();
        STATE.with(|s| {
            s.units.push(UnitFaults {
                unit: unit.clone(),
                vector: None,
                log: VecDeque::with_capacity(LOG_CAPACITY),
                overflow: false,
                lost: 0,
            })
        });
        if !interrupts {
            continue;
        }
        let vector = irq::alloc_vector().map_err(FaultSetupError::Vector)?;
        let message = MsiMessage::fixed(destination, vector).map_err(FaultSetupError::Message)?;
        STATE.with(|s| {
            if let Some(u) = s.units.last_mut() {
                u.vector = Some(vector);
            }
        });
        irq::register(vector, on_fault_event).map_err(FaultSetupError::Vector)?;
        unit.set_fault_event(message.address, message.data)
            .map_err(FaultSetupError::Unit)?;
        log::info!(
            "vt-d: unit {:#x} fault events on vector {vector:#x} to APIC {apic_id}",
            entry.base
        );
    }
    if !interrupts {
        log::info!("vt-d: fault events masked (vtd.fault_irq=off): faults are polled");
    }
    Ok(())
}

/// The fault-event handler: services every unit that uses `vector` and dispatches what it read.
pub fn on_fault_event(vector: u8) {
    STATE.with(|s| {
        for i in 0..s.units.len() {
            if s.units[i].vector == Some(vector) {
                let n = service(s, i);
                FROM_INTERRUPT.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
}

/// Services unit `i`: reads and clears its pending records, dispatches them and appends them to
/// its log. Returns how many it read.
fn service(s: &mut State, i: usize) -> usize {
    let State { units, router } = s;
    let Some(u) = units.get_mut(i) else {
        return 0;
    };
    let log = u.unit.service_fault_event();
    let unit = &u.unit;
    router.dispatch(i, &log, time::now_us(), |rid| hardware_domain(unit, rid));
    for rec in &log.records {
        if u.log.len() == LOG_CAPACITY {
            u.log.pop_front();
            u.lost += 1;
        }
        u.log.push_back(*rec);
    }
    u.overflow |= log.overflow;
    log.records.len()
}

/// The domain ID of `rid`'s present context entry, read without the unit's tables lock (the
/// handler may have interrupted an attach holding it): a rewrite in progress reads not
/// present and the fault goes to the default sink.
pub fn hardware_domain(unit: &Unit, rid: RequesterId) -> Option<u16> {
    unit.context_entry_unlocked(rid)
        .filter(|e| e.present())
        .map(|e| e.did())
}

/// What [`take`] returns for one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    /// The records collected since the last take, oldest first.
    pub log: FaultLog,
    /// Records dropped from the bounded log since the last take.
    pub lost: u64,
}

/// Everything unit `index` (its position in `Iommu::units`) reported since the last call: the
/// records the handler collected, then whatever is still pending in the unit (serviced and
/// dispatched now, as the handler would). Interrupts are disabled meanwhile. Returns an empty
/// log for an index without a unit.
pub fn take(index: usize) -> Taken {
    STATE.with(|s| {
        service(s, index);
        let Some(u) = s.units.get_mut(index) else {
            return Taken::default();
        };
        Taken {
            log: FaultLog {
                records: u.log.drain(..).collect(),
                overflow: core::mem::take(&mut u.overflow),
            },
            lost: core::mem::take(&mut u.lost),
        }
    })
}

/// Discards everything unit `index` has recorded or collected, read or not (before provoking
/// an expected fault): its log, and every record and PFO in the unit (no callback sees those).
pub fn discard(index: usize) {
    STATE.with(|s| {
        if let Some(u) = s.units.get_mut(index) {
            u.unit.clear_faults();
            u.log.clear();
            u.overflow = false;
            u.lost = 0;
        }
    });
}

/// The index of `unit` in `Iommu::units` (the unit index of [`Fault::unit`]).
pub fn unit_index(unit: &Arc<Unit>) -> Option<usize> {
    STATE.with(|s| s.units.iter().position(|u| Arc::ptr_eq(&u.unit, unit)))
}

/// Why a domain's callback could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The domain's unit is not one [`install`] set up.
    UnknownUnit,
    /// The router refused (the domain has a callback).
    Route(FaultRouteError),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownUnit => write!(f, "the domain's VT-d unit has no fault reporting"),
            Self::Route(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for RegisterError {}

/// Registers the owner of `domain`: every fault whose source is attached to it is passed to
/// `callback`, in interrupt context (see the module docs: no blocking, no call into this
/// module).
///
/// # Errors
/// [`RegisterError::UnknownUnit`] before [`install`]; [`RegisterError::Route`] with
/// [`FaultRouteError::AlreadyRegistered`] when the domain has a callback.
pub fn register(
    domain: &Domain,
    callback: impl FnMut(&Fault) + Send + 'static,
) -> Result<(), RegisterError> {
    let did = domain.did();
    let unit = unit_index(domain.unit()).ok_or(RegisterError::UnknownUnit)?;
    let callback = alloc::boxed::Box::new(callback);
    STATE
        .with(|s| s.router.register(unit, did, callback))
        .map_err(RegisterError::Route)
}

/// Removes `domain`'s callback (call it before the domain is dropped: its ID can be reused).
/// Returns whether there was one.
pub fn unregister(domain: &Domain) -> bool {
    let did = domain.did();
    let Some(unit) = unit_index(domain.unit()) else {
        return false;
    };
    // The callback is dropped after the lock is released.
    let old = STATE.with(|s| s.router.unregister(unit, did));
    old.is_some()
}

/// The vector unit `index`'s fault events use (`None`: polling mode or no such unit).
pub fn vector(index: usize) -> Option<u8> {
    STATE.with(|s| s.units.get(index).and_then(|u| u.vector))
}

/// Whether fault events are interrupts (false with `vtd.fault_irq=off`).
pub fn interrupts_enabled() -> bool {
    INTERRUPTS.load(Ordering::Acquire)
}

/// Records serviced by the interrupt handler so far.
pub fn from_interrupt() -> u64 {
    FROM_INTERRUPT.load(Ordering::Relaxed)
}

/// Records whose source had no registered domain so far.
pub fn unowned() -> u64 {
    UNOWNED.load(Ordering::Relaxed)
}
