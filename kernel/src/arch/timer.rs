//! The LAPIC timer (SDM §11.5.4) as the kernel's periodic tick, calibrated on the TSC, with a
//! small registry of callbacks run every N microseconds from the tick.
//!
//! [`init`] measures the timer's count rate (divide by 16, one-shot from `u32::MAX`, 10 ms of
//! TSC time; QEMU's APIC counts at 1 GHz / divisor), then starts it periodic on
//! [`TIMER_VECTOR`] with the requested period (`timer.period_us=` on the command line, default 1 ms). Each tick increments [`ticks`] and runs the callbacks registered with
//! [`every`] whose period elapsed, in interrupt context (see `irq` for what a handler may do).
//!
//! Callbacks are due by the TSC clock (`time::now_us`), not by counting ticks: under TCG on a
//! loaded host the vCPU can be descheduled for several periods, and the ticks that fell due
//! meanwhile coalesce into one interrupt (the APIC's IRR holds one per vector). A callback still
//! runs at its first tick after its due time; one that fell more than a period behind skips the
//! missed runs instead of bursting.

use core::sync::atomic::{AtomicU64, Ordering};

use super::apic::{self, Lvt, Reg, TimerDivide, TIMER_ONE_SHOT, TIMER_PERIODIC};
use super::irq::{self, IrqMutex};
use super::time;

/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0xf0;
/// Accepted tick periods (`timer.period_us=`).
pub const PERIOD_RANGE_US: core::ops::RangeInclusive<u64> = kernel::cmdline::TIMER_PERIOD_RANGE_US;
/// Callback slots.
const SLOTS: usize = 8;
/// Calibration window.
const CALIBRATION_US: u64 = 10_000;

/// A callback run from the tick.
pub type Callback = fn();

#[derive(Clone, Copy)]
struct Slot {
    callback: Callback,
    period_us: u64,
    next_us: u64,
}

static SLOTS_TABLE: IrqMutex<[Option<Slot>; SLOTS]> = IrqMutex::new([None; SLOTS]);
static TICKS: AtomicU64 = AtomicU64::new(0);
static PERIOD_US: AtomicU64 = AtomicU64::new(0);
static COUNT_HZ: AtomicU64 = AtomicU64::new(0);

/// Why the timer or a callback could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// The period is outside [`PERIOD_RANGE_US`] (tick) or below one tick (callback).
    BadPeriod(u64),
    /// The timer did not count during calibration (no APIC?).
    NotCounting,
    /// Every callback slot is taken.
    NoSlot,
    /// [`init`] has not run.
    NotRunning,
}

impl core::fmt::Display for TimerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadPeriod(us) => write!(f, "unusable timer period {us} us"),
            Self::NotCounting => f.write_str("the LAPIC timer does not count"),
            Self::NoSlot => f.write_str("no free timer callback slot"),
            Self::NotRunning => f.write_str("the LAPIC timer is not running"),
        }
    }
}

impl core::error::Error for TimerError {}

/// A registered callback, for [`cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackId(usize);

/// Calibrates the timer and starts it periodic every `period_us`. Needs `apic::init` and
/// `time::calibrate`; the tick arrives once interrupts are enabled.
///
/// # Errors
///
/// [`TimerError::BadPeriod`] for a period outside [`PERIOD_RANGE_US`],
/// [`TimerError::NotCounting`] when calibration saw no count.
pub fn init(period_us: u64) -> Result<u64, TimerError> {
    if !PERIOD_RANGE_US.contains(&period_us) {
        return Err(TimerError::BadPeriod(period_us));
    }
    apic::write(Reg::TimerDivide, TimerDivide::BY_16.into_bits());
    apic::write(
        Reg::LvtTimer,
        Lvt::new()
            .with_vector(TIMER_VECTOR)
            .with_masked(true)
            .with_timer_mode(TIMER_ONE_SHOT)
            .into_bits(),
    );
    let t0 = time::rdtsc();
    apic::write(Reg::TimerInitial, u32::MAX);
    time::delay_us(CALIBRATION_US);
    let remaining = apic::read(Reg::TimerCurrent);
    let t1 = time::rdtsc();
    apic::write(Reg::TimerInitial, 0);
    let counted = u64::from(u32::MAX - remaining);
    let tsc = t1.saturating_sub(t0).max(1);
    let hz = u128::from(counted) * u128::from(time::tsc_hz()) / u128::from(tsc);
    let hz = u64::try_from(hz).unwrap_or(u64::MAX);
    if counted == 0 || hz == 0 {
        return Err(TimerError::NotCounting);
    }
    let initial = (u128::from(hz) * u128::from(period_us) / 1_000_000).max(1);
    let initial = u32::try_from(initial).map_err(|_| TimerError::BadPeriod(period_us))?;
    COUNT_HZ.store(hz, Ordering::Relaxed);
    PERIOD_US.store(period_us, Ordering::Relaxed);
    irq::install_system(TIMER_VECTOR, tick);
    apic::write(
        Reg::LvtTimer,
        Lvt::new()
            .with_vector(TIMER_VECTOR)
            .with_timer_mode(TIMER_PERIODIC)
            .into_bits(),
    );
    apic::write(Reg::TimerInitial, initial);
    Ok(hz)
}

/// The timer's count rate after the divider, in Hz (0 before [`init`]).
pub fn count_hz() -> u64 {
    COUNT_HZ.load(Ordering::Relaxed)
}

/// The tick period in microseconds (0 before [`init`]).
pub fn period_us() -> u64 {
    PERIOD_US.load(Ordering::Relaxed)
}

/// Ticks since [`init`].
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Acquire)
}

/// Runs `callback` from the tick every `us` microseconds (at the first tick at or after each due
/// time, so at most one tick period late).
///
/// # Errors
///
/// [`TimerError::NotRunning`] before [`init`], [`TimerError::BadPeriod`] for 0,
/// [`TimerError::NoSlot`] when all slots are used.
pub fn every(us: u64, callback: Callback) -> Result<CallbackId, TimerError> {
    if period_us() == 0 {
        return Err(TimerError::NotRunning);
    }
    if us == 0 {
        return Err(TimerError::BadPeriod(us));
    }
    SLOTS_TABLE.with(|slots| {
        let (i, slot) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.is_none())
            .ok_or(TimerError::NoSlot)?;
        *slot = Some(Slot {
            callback,
            period_us: us,
            next_us: time::now_us().saturating_add(us),
        });
        Ok(CallbackId(i))
    })
}

/// Stops a callback registered with [`every`] (no-op if already cancelled).
pub fn cancel(id: CallbackId) {
    SLOTS_TABLE.with(|slots| {
        if let Some(s) = slots.get_mut(id.0) {
            *s = None;
        }
    });
}

/// The tick handler: counts, then runs the due callbacks outside the slot lock (so a callback
/// may register or cancel callbacks).
fn tick(_vector: u8) {
    TICKS.fetch_add(1, Ordering::AcqRel);
    let now = time::now_us();
    let mut due: [Option<Callback>; SLOTS] = [None; SLOTS];
    SLOTS_TABLE.with(|slots| {
        for (slot, d) in slots.iter_mut().zip(due.iter_mut()) {
            if let Some(s) = slot {
                if now >= s.next_us {
                    s.next_us = s.next_us.saturating_add(s.period_us);
                    if s.next_us <= now {
                        s.next_us = now.saturating_add(s.period_us);
                    }
                    *d = Some(s.callback);
                }
            }
        }
    });
    for f in due.into_iter().flatten() {
        f();
    }
}
