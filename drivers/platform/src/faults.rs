//! Fault routing (VT-d spec §7.3 "fault event" handling, SPEC.md "Isolation unit"): each decoded
//! fault record a unit reports goes to the owner of the domain the faulting device is attached
//! to, through a callback that owner registered; a record from a device with no registered
//! domain goes to a default sink; what is logged is rate-limited per source.
//!
//! [`FaultRouter`] is hardware-independent. The embedder collects records (from its fault-event
//! interrupt handler, [`iommu_vtd::VtdUnit::service_fault_event`], or by polling) and calls
//! [`FaultRouter::dispatch`] with the unit's index, the [`FaultLog`], the time and a resolver
//! that names the domain ID a requester ID is attached to. How the resolver finds it is the
//! embedder's choice because only the embedder knows what is safe in its handler:
//! [`context_domain`] asks the unit (it takes the unit's tables lock, so it is for polling and
//! tests, not for an interrupt that may have interrupted an attach); a kernel's handler can read
//! the context entry the hardware walked without that lock.
//!
//! # Interrupt context
//!
//! [`FaultRouter`] is plain data with `&mut self` methods and no lock of its own. An embedder
//! that dispatches from an interrupt handler keeps it behind a lock whose critical sections
//! all run with that interrupt masked (our kernel's `IrqMutex`), so the handler can never find
//! it held by the code it interrupted, and mainline calls ([`FaultRouter::register`],
//! [`FaultRouter::unregister`], polling) take the same lock. Callbacks therefore run with the
//! fault interrupt masked and the router borrowed: a callback must not block, must not wait for
//! any lock mainline holds with interrupts enabled, must not allocate unless the heap is
//! interrupt-safe, and cannot re-enter the router (it records what it needs and returns).
//! Registering a callback allocates; dispatching does not, except for the first record of a
//! source the rate limiter has not seen (a bounded table, [`RATE_SOURCES`] entries). Reading
//! the records in the handler is safe: `VtdUnit::service_fault_event` holds the unit's faults
//! lock with interrupts disabled (`iommu_vtd::Platform::irq_save`).
//!
//! # Rate-limited logging
//!
//! Every record reaches its callback; only the `log` lines are limited: per (unit, source), the
//! first [`RateLimit::burst`] records of each [`RateLimit::window_us`] window are logged and the
//! rest counted, and the next line logged for that source says how many were suppressed. The
//! clock is the `now_us` argument, so the limiter is tested with an injected time.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use iommu_vtd::{FaultLog, FaultRecord, Platform, RegisterIo, RequesterId, VtdUnit};

/// One decoded fault as the router hands it to a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The index of the unit that recorded it (the embedder's numbering, e.g. DMAR order).
    pub unit: usize,
    /// The domain ID the source was attached to when the fault was dispatched (`None`: no
    /// present context entry).
    pub domain: Option<u16>,
    /// The record.
    pub record: FaultRecord,
}

/// A domain owner's fault callback. Runs in interrupt context (see the module docs): it must
/// not block or allocate and must not call back into the router.
pub type FaultCallback = Box<dyn FnMut(&Fault) + Send>;

/// Why a callback could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultRouteError {
    /// That unit's domain already has a callback (unregister it first).
    AlreadyRegistered {
        /// The unit index.
        unit: usize,
        /// The domain ID.
        domain: u16,
    },
}

impl fmt::Display for FaultRouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyRegistered { unit, domain } => write!(
                f,
                "domain {domain} of VT-d unit {unit} already has a fault callback"
            ),
        }
    }
}

impl core::error::Error for FaultRouteError {}

/// How many records per source are logged per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Records logged per source per window.
    pub burst: u32,
    /// The window, in microseconds.
    pub window_us: u64,
}

impl Default for RateLimit {
    /// Ten lines per source per second.
    fn default() -> Self {
        Self {
            burst: 10,
            window_us: 1_000_000,
        }
    }
}

/// Sources the rate limiter tracks at once; the stalest entry is reused beyond that.
pub const RATE_SOURCES: usize = 64;

/// Whether the limiter lets a line through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` lines of this source were dropped since the last one logged.
    Log {
        /// Lines not logged before this one.
        suppressed: u64,
    },
    /// Do not log it (counted).
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct SourceWindow {
    unit: usize,
    source: RequesterId,
    start_us: u64,
    logged: u32,
    suppressed: u64,
}

/// The per-source log limiter ([`RateLimit`]), with the time passed in.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    sources: Vec<SourceWindow>,
}

impl RateLimiter {
    /// A limiter with no history.
    pub const fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            sources: Vec::new(),
        }
    }

    /// The verdict for one more line from `source` of `unit` at `now_us`.
    pub fn check(&mut self, unit: usize, source: RequesterId, now_us: u64) -> Verdict {
        let limit = self.limit;
        let found = self
            .sources
            .iter()
            .position(|s| s.unit == unit && s.source == source);
        let index = match found {
            Some(i) => i,
            None if self.sources.len() < RATE_SOURCES => {
                self.sources.push(SourceWindow {
                    unit,
                    source,
                    start_us: now_us,
                    logged: 0,
                    suppressed: 0,
                });
                self.sources.len() - 1
            }
            None => {
                // The entry whose window started longest ago: its history is the least useful.
                let stalest = self
                    .sources
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.start_us)
                    .map_or(0, |(i, _)| i);
                self.sources[stalest] = SourceWindow {
                    unit,
                    source,
                    start_us: now_us,
                    logged: 0,
                    suppressed: 0,
                };
                stalest
            }
        };
        let s = &mut self.sources[index];
        if now_us.saturating_sub(s.start_us) >= limit.window_us {
            s.start_us = now_us;
            s.logged = 0;
        }
        if s.logged < limit.burst {
            s.logged += 1;
            let suppressed = core::mem::take(&mut s.suppressed);
            Verdict::Log { suppressed }
        } else {
            s.suppressed += 1;
            Verdict::Suppress
        }
    }
}

/// What one [`FaultRouter::dispatch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    /// Records handed to a domain owner's callback.
    pub to_owner: usize,
    /// Records handed to the default sink (no registered owner), or dropped when there is none.
    pub to_default: usize,
    /// Log lines the rate limiter suppressed.
    pub suppressed: usize,
    /// The log reported an overflow (faults the unit could not record).
    pub overflow: bool,
}

struct Owner {
    unit: usize,
    domain: u16,
    callback: FaultCallback,
}

/// Per-domain fault callbacks, a default sink and the log limiter (see the module docs for the
/// locking the embedder provides).
pub struct FaultRouter {
    owners: Vec<Owner>,
    default_sink: Option<FaultCallback>,
    limiter: RateLimiter,
    overflow_limiter: RateLimiter,
}

impl fmt::Debug for FaultRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultRouter")
            .field(
                "owners",
                &self
                    .owners
                    .iter()
                    .map(|o| (o.unit, o.domain))
                    .collect::<Vec<_>>(),
            )
            .field("default_sink", &self.default_sink.is_some())
            .finish_non_exhaustive()
    }
}

/// The source the overflow limiter files overflows under (one line per unit and window).
const OVERFLOW_SOURCE: RequesterId = RequesterId::new(0);

impl FaultRouter {
    /// No callbacks, no default sink, logging limited by `limit`.
    pub const fn new(limit: RateLimit) -> Self {
        Self {
            owners: Vec::new(),
            default_sink: None,
            limiter: RateLimiter::new(limit),
            overflow_limiter: RateLimiter::new(limit),
        }
    }

    /// Registers the owner of domain `domain` of unit `unit`: every fault whose source is
    /// attached to that domain is passed to `callback`.
    ///
    /// # Errors
    /// [`FaultRouteError::AlreadyRegistered`] when the domain has a callback.
    pub fn register(
        &mut self,
        unit: usize,
        domain: u16,
        callback: FaultCallback,
    ) -> Result<(), FaultRouteError> {
        if self
            .owners
            .iter()
            .any(|o| o.unit == unit && o.domain == domain)
        {
            return Err(FaultRouteError::AlreadyRegistered { unit, domain });
        }
        self.owners.push(Owner {
            unit,
            domain,
            callback,
        });
        Ok(())
    }

    /// Removes the callback of `domain` of `unit` and returns it (`None`: there was none). Do
    /// it before the domain ID can be reused by another domain.
    pub fn unregister(&mut self, unit: usize, domain: u16) -> Option<FaultCallback> {
        let i = self
            .owners
            .iter()
            .position(|o| o.unit == unit && o.domain == domain)?;
        Some(self.owners.swap_remove(i).callback)
    }

    /// Whether `domain` of `unit` has a callback.
    pub fn is_registered(&self, unit: usize, domain: u16) -> bool {
        self.owners
            .iter()
            .any(|o| o.unit == unit && o.domain == domain)
    }

    /// Sets the callback for faults whose source has no registered domain (replacing any).
    pub fn set_default_sink(&mut self, callback: FaultCallback) {
        self.default_sink = Some(callback);
    }

    /// Hands every record of `log` (read from unit `unit`) to its owner: `resolve` names the
    /// domain ID the record's source is attached to, the owner registered for that domain gets
    /// it, any other record goes to the default sink. Each record is logged subject to the rate
    /// limit at `now_us`, and an overflow is logged too (also limited).
    pub fn dispatch(
        &mut self,
        unit: usize,
        log: &FaultLog,
        now_us: u64,
        mut resolve: impl FnMut(RequesterId) -> Option<u16>,
    ) -> DispatchSummary {
        let mut summary = DispatchSummary {
            overflow: log.overflow,
            ..DispatchSummary::default()
        };
        for record in &log.records {
            let domain = resolve(record.source);
            let fault = Fault {
                unit,
                domain,
                record: *record,
            };
            match self.limiter.check(unit, record.source, now_us) {
                Verdict::Log { suppressed: 0 } => log_fault(&fault),
                Verdict::Log { suppressed } => {
                    log::warn!(
                        "vt-d: unit {unit}: {suppressed} fault(s) from {} not logged",
                        record.source
                    );
                    log_fault(&fault);
                }
                Verdict::Suppress => summary.suppressed += 1,
            }
            let owner = domain.and_then(|did| {
                self.owners
                    .iter_mut()
                    .find(|o| o.unit == unit && o.domain == did)
            });
            if let Some(owner) = owner {
                (owner.callback)(&fault);
                summary.to_owner += 1;
            } else {
                if let Some(sink) = self.default_sink.as_mut() {
                    sink(&fault);
                }
                summary.to_default += 1;
            }
        }
        if log.overflow {
            match self.overflow_limiter.check(unit, OVERFLOW_SOURCE, now_us) {
                Verdict::Log { suppressed: 0 } => {
                    log::warn!("vt-d: unit {unit}: fault records overflowed, faults were lost");
                }
                Verdict::Log { suppressed } => log::warn!(
                    "vt-d: unit {unit}: fault records overflowed, faults were lost ({suppressed} earlier overflow(s) not logged)"
                ),
                Verdict::Suppress => {}
            }
        }
        summary
    }
}

fn log_fault(fault: &Fault) {
    match fault.domain {
        Some(did) => log::warn!("vt-d: unit {} domain {did}: {}", fault.unit, fault.record),
        None => log::warn!("vt-d: unit {} (no domain): {}", fault.unit, fault.record),
    }
}

/// The domain ID `rid` is attached to on `unit`, from its present context entry. Takes the
/// unit's tables lock: for polling and tests, not for a handler that may interrupt an attach.
pub fn context_domain<R: RegisterIo, P: Platform>(
    unit: &VtdUnit<R, P>,
    rid: RequesterId,
) -> Option<u16> {
    unit.context_entry(rid)
        .filter(|e| e.present())
        .map(|e| e.did())
}
