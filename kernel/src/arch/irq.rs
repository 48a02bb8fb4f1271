//! External interrupts: the per-vector dispatch table drivers register with, vector allocation,
//! delivery counters, and the rules every handler follows.
//!
//! Vectors (SDM §6.2, §11.8.3, priority class = vector / 16):
//! - 0x00-0x1f: CPU exceptions (fatal, `idt`);
//! - 0x20-0x2f: the remapped 8259 PICs (masked; one arriving is counted as unregistered);
//! - [`FIRST_DYNAMIC`]..=[`LAST_DYNAMIC`]: handed out by [`alloc_vector`] (I/O APIC lines, MSIs,
//!   tests);
//! - [`crate::arch::timer::TIMER_VECTOR`] (0xf0) for the LAPIC timer, then the APIC's error
//!   (0xfe) and spurious (0xff) vectors.
//!
//! [`dispatch`] (called by `idt::trap_dispatch` for vectors >= 32) counts the delivery, runs the
//! registered handler, or counts the vector as unregistered (logged, not fatal), then EOIs the
//! local APIC after the handler. The spurious vector is counted and not EOId (§11.9).
//!
//! # Rules for handlers (and every lock a handler can meet)
//!
//! Handlers run on the IST interrupt stack with interrupts disabled and must leave them
//! disabled (all external vectors share that stack: a nested interrupt would overwrite it).
//! They must not allocate unless the heap is interrupt-safe, and must take no lock that mainline
//! code holds with interrupts enabled: on one CPU the interrupted holder never gets to release
//! it. This kernel's rule is that every lock a handler can meet runs its critical section with
//! interrupts disabled ([`IrqMutex`] here, the console and the `log` backend, the heap, the
//! frame allocator), so a handler may log, allocate and free. The VT-d unit's invalidation,
//! faults and interrupt-remapping locks are too: the unit disables interrupts around them
//! through `Platform::irq_save` ([`save_and_disable`] / [`restore`] in the kernel's platform),
//! so a handler may service fault events and update IRTEs. Other locks of other crates (the DMA
//! domains', the unit's tables) are not: handlers reach a DMA domain only through
//! `DmaDomain::try_poll`, which never waits (see `devices::dmamem`).

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use spin::Mutex;
use x86_64::instructions::interrupts;

use super::{apic, time};

/// First vector [`alloc_vector`] hands out.
pub const FIRST_DYNAMIC: u8 = 0x30;
/// Last vector [`alloc_vector`] hands out.
pub const LAST_DYNAMIC: u8 = 0xef;

/// A handler: called with the vector it was registered for, interrupts disabled.
pub type Handler = fn(u8);

/// A spin lock whose critical sections run with interrupts disabled, so a handler taking it
/// cannot deadlock against the code it interrupted (which cannot hold it: it had interrupts
/// off while it did).
pub struct IrqMutex<T>(Mutex<T>);

impl<T> core::fmt::Debug for IrqMutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IrqMutex")
    }
}

impl<T> IrqMutex<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    /// Runs `f` on the data with interrupts disabled and the lock held.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        interrupts::without_interrupts(|| f(&mut self.0.lock()))
    }
}

/// Why a vector operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqError {
    /// Every dynamic vector is allocated.
    Exhausted,
    /// The vector is outside [`FIRST_DYNAMIC`]..=[`LAST_DYNAMIC`] or was not allocated.
    NotAllocated(u8),
    /// The vector already has a handler.
    Busy(u8),
    /// No interrupt arrived within the wait.
    Timeout(u8),
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Exhausted => f.write_str("no free interrupt vector"),
            Self::NotAllocated(v) => write!(f, "vector {v:#x} is not allocated"),
            Self::Busy(v) => write!(f, "vector {v:#x} already has a handler"),
            Self::Timeout(v) => write!(f, "no interrupt on vector {v:#x} in time"),
        }
    }
}

impl core::error::Error for IrqError {}

struct Table {
    allocated: [bool; 256],
    handlers: [Option<Handler>; 256],
}

static TABLE: IrqMutex<Table> = IrqMutex::new(Table {
    allocated: [false; 256],
    handlers: [None; 256],
});

/// Deliveries per vector (every vector >= 32 that reached [`dispatch`]).
static DELIVERED: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// TSC at [`dispatch`] entry of each vector's latest delivery (latency measurements).
static ENTRY_TSC: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Deliveries on vectors without a handler.
static UNREGISTERED: AtomicU64 = AtomicU64::new(0);
/// The last vector that arrived without a handler.
static LAST_UNREGISTERED: AtomicU8 = AtomicU8::new(0);

fn dynamic(vector: u8) -> bool {
    (FIRST_DYNAMIC..=LAST_DYNAMIC).contains(&vector)
}

/// Allocates a free vector in [`FIRST_DYNAMIC`]..=[`LAST_DYNAMIC`] (lowest first).
///
/// # Errors
///
/// [`IrqError::Exhausted`] when all are taken.
pub fn alloc_vector() -> Result<u8, IrqError> {
    TABLE.with(|t| {
        let v = (FIRST_DYNAMIC..=LAST_DYNAMIC)
            .find(|&v| !t.allocated[usize::from(v)])
            .ok_or(IrqError::Exhausted)?;
        t.allocated[usize::from(v)] = true;
        Ok(v)
    })
}

/// Frees an allocated vector and drops its handler.
///
/// # Errors
///
/// [`IrqError::NotAllocated`] for a vector [`alloc_vector`] did not hand out.
pub fn free_vector(vector: u8) -> Result<(), IrqError> {
    TABLE.with(|t| {
        let i = usize::from(vector);
        if !dynamic(vector) || !t.allocated[i] {
            return Err(IrqError::NotAllocated(vector));
        }
        t.allocated[i] = false;
        t.handlers[i] = None;
        Ok(())
    })
}

/// Installs `handler` for an allocated vector.
///
/// # Errors
///
/// [`IrqError::NotAllocated`] for a vector not allocated, [`IrqError::Busy`] when it already
/// has a handler.
pub fn register(vector: u8, handler: Handler) -> Result<(), IrqError> {
    TABLE.with(|t| {
        let i = usize::from(vector);
        if !dynamic(vector) || !t.allocated[i] {
            return Err(IrqError::NotAllocated(vector));
        }
        if t.handlers[i].is_some() {
            return Err(IrqError::Busy(vector));
        }
        t.handlers[i] = Some(handler);
        Ok(())
    })
}

/// Removes the handler of an allocated vector (the vector stays allocated).
///
/// # Errors
///
/// [`IrqError::NotAllocated`] for a vector not allocated.
pub fn unregister(vector: u8) -> Result<(), IrqError> {
    TABLE.with(|t| {
        let i = usize::from(vector);
        if !dynamic(vector) || !t.allocated[i] {
            return Err(IrqError::NotAllocated(vector));
        }
        t.handlers[i] = None;
        Ok(())
    })
}

/// Installs the handler of a fixed system vector (timer, APIC error) outside the dynamic range.
pub(super) fn install_system(vector: u8, handler: Handler) {
    TABLE.with(|t| t.handlers[usize::from(vector)] = Some(handler));
}

/// Deliveries of `vector` so far.
pub fn delivered(vector: u8) -> u64 {
    DELIVERED[usize::from(vector)].load(Ordering::Acquire)
}

/// Deliveries on vectors without a handler so far, and the last such vector.
pub fn unregistered() -> (u64, u8) {
    (
        UNREGISTERED.load(Ordering::Acquire),
        LAST_UNREGISTERED.load(Ordering::Relaxed),
    )
}

/// Free dynamic vectors.
pub fn free_vectors() -> usize {
    TABLE.with(|t| {
        (FIRST_DYNAMIC..=LAST_DYNAMIC)
            .filter(|&v| !t.allocated[usize::from(v)])
            .count()
    })
}

/// Routes one interrupt (vectors 32-255); called by `idt::trap_dispatch`.
pub fn dispatch(vector: u8) {
    let i = usize::from(vector);
    ENTRY_TSC[i].store(time::rdtsc(), Ordering::Relaxed);
    DELIVERED[i].fetch_add(1, Ordering::AcqRel);
    if vector == apic::SPURIOUS_VECTOR {
        apic::handle_spurious();
        return;
    }
    match TABLE.with(|t| t.handlers[i]) {
        Some(h) => h(vector),
        None => {
            let n = UNREGISTERED.fetch_add(1, Ordering::AcqRel);
            LAST_UNREGISTERED.store(vector, Ordering::Relaxed);
            if n < 8 {
                log::warn!("interrupt on vector {vector:#x} without a handler");
            }
        }
    }
    apic::eoi();
}

/// RFLAGS.IF: maskable interrupts enabled (SDM vol. 1 §3.4.3.3).
const RFLAGS_IF: u64 = 1 << 9;

/// Saves RFLAGS and disables interrupts on this CPU (`cli`); hand the value to [`restore`].
/// Nests: an inner save finds IF clear and its restore leaves interrupts disabled.
pub fn save_and_disable() -> u64 {
    let rflags = x86_64::registers::rflags::read_raw();
    interrupts::disable();
    rflags
}

/// Undoes one [`save_and_disable`]: sets IF (`sti`) only if it was set in the saved RFLAGS.
pub fn restore(rflags: u64) {
    if rflags & RFLAGS_IF != 0 {
        interrupts::enable();
    }
}

/// Enables interrupts on this CPU (`sti`).
pub fn enable() {
    interrupts::enable();
}

/// Whether interrupts are enabled on this CPU.
pub fn enabled() -> bool {
    interrupts::are_enabled()
}

// ---- Latency measurement (for the benchmarks) ----

/// TSC at [`dispatch`] entry for the latest delivery of `vector` (0 if none yet): with the TSC
/// taken just before raising an interrupt, the difference is its raise-to-handler latency.
pub fn entry_tsc(vector: u8) -> u64 {
    ENTRY_TSC[usize::from(vector)].load(Ordering::Relaxed)
}

/// Spins until `vector` has more than `before` deliveries, up to `timeout_us`; returns the
/// [`entry_tsc`] of that delivery.
///
/// # Errors
///
/// [`IrqError::Timeout`] when none arrived in time.
pub fn wait_delivery(vector: u8, before: u64, timeout_us: u64) -> Result<u64, IrqError> {
    let d = time::Deadline::after_us(timeout_us);
    while delivered(vector) <= before {
        if d.expired() {
            return Err(IrqError::Timeout(vector));
        }
        core::hint::spin_loop();
    }
    Ok(entry_tsc(vector))
}

/// Raises `raise` (which makes `vector` fire, e.g. a self-IPI or a device's MSI) and returns the
/// cycles from just before the raise to the handler's entry.
///
/// # Errors
///
/// [`IrqError::Timeout`] when the interrupt did not arrive within 100 ms.
pub fn measure_latency(vector: u8, raise: impl FnOnce()) -> Result<u64, IrqError> {
    let before = delivered(vector);
    let t0 = time::rdtsc();
    raise();
    let t1 = wait_delivery(vector, before, 100_000)?;
    Ok(t1.saturating_sub(t0))
}

/// Self-IPI latency in TSC cycles on `vector` (allocated, any handler or none).
///
/// # Errors
///
/// As [`measure_latency`].
pub fn self_ipi_latency(vector: u8) -> Result<u64, IrqError> {
    measure_latency(vector, || apic::send_self_ipi(vector))
}
