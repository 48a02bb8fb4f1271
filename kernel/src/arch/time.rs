//! Time from the TSC, calibrated once against the PIT (8254 channel 2, 1.193182 MHz), each end
//! of the window read with a tight TSC bracket (a stalled port access cannot skew it); the
//! `boot::tsc_calibrated` test checks the result against the ACPI PM timer.
//!
//! Under QEMU TCG both clocks come from the host clock, so the calibration is as good as the
//! emulation allows. Timestamps in the log and all timeouts (VT-d command waits, DMA polls) use
//! [`now_us`]/[`Deadline`].

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: about 30 ms of PIT ticks.
const CALIBRATION_TICKS: u16 = 35_796;
/// Samples taken at each end of the window; the one with the tightest TSC bracket is used.
const SAMPLES: usize = 16;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One reading of PIT channel 2's counter, bracketed by time stamps: (count, TSC before, TSC
/// after). A port access is an exit into the emulator that can stall for milliseconds on a
/// loaded host; the bracket shows when that happened.
fn pit_sample(cmd: &mut Port<u8>, ch2: &mut Port<u8>) -> (u16, u64, u64) {
    let before = rdtsc();
    // SAFETY: latch command for channel 2, then its low and high byte (lobyte/hibyte mode as
    // programmed in `calibrate`); channel 2 is used by nothing else.
    let count = unsafe {
        cmd.write(0b1000_0000);
        let lo = ch2.read();
        let hi = ch2.read();
        u16::from_le_bytes([lo, hi])
    };
    (count, before, rdtsc())
}

/// Of `SAMPLES` readings, the one with the tightest bracket: (count, TSC at its middle).
fn best_pit_sample(cmd: &mut Port<u8>, ch2: &mut Port<u8>) -> (u16, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..SAMPLES {
        let (count, before, after) = pit_sample(cmd, ch2);
        if after - before < best.2 {
            best = (count, before + (after - before) / 2, after - before);
        }
    }
    (best.0, best.1)
}

/// Measures the TSC frequency against the PIT and records the boot time stamp.
/// Returns the frequency in Hz.
///
/// Channel 2 counts down from 0xffff (mode 0); the counter is read at both ends of a ~30 ms
/// window, each time bracketed by TSC reads and taking the tightest of several readings, so a
/// stalled port access (seen under TCG on a loaded host, where it inflated the result by up to
/// 3x) cannot skew the ratio.
pub fn calibrate() -> u64 {
    // A vCPU descheduled for longer than the 16-bit counter's period (55 ms) lets it wrap
    // unseen: fewer ticks are counted than elapsed and the frequency comes out too high, never
    // too low. So the lowest of a few runs is the one no stall distorted.
    let hz = (0..CALIBRATION_RUNS)
        .map(|_| calibrate_once())
        .min()
        .unwrap_or(1);
    TSC_BOOT.store(rdtsc(), Ordering::Relaxed);
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    hz
}

/// Calibration runs; see [`calibrate`].
const CALIBRATION_RUNS: usize = 3;

/// One ~30 ms calibration run against PIT channel 2.
fn calibrate_once() -> u64 {
    // SAFETY: ports 0x42/0x43/0x61 are the legacy PIT channel 2 and its gate (NMI status and
    // control port); nothing else in this kernel uses channel 2 or the speaker.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut cmd = Port::<u8>::new(0x43);
        let mut ch2 = Port::<u8>::new(0x42);
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // speaker off, gate on
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(0xff);
        ch2.write(0xff);
        let (c0, t0) = best_pit_sample(&mut cmd, &mut ch2);
        let mut end = (c0, t0);
        let mut spins = 0u64;
        while c0.wrapping_sub(end.0) < CALIBRATION_TICKS && spins < 10_000_000 {
            let (count, before, _) = pit_sample(&mut cmd, &mut ch2);
            end = (count, before);
            spins += 1;
        }
        let (c1, t1) = best_pit_sample(&mut cmd, &mut ch2);
        gate.write(g);
        let ticks = u64::from(c0.wrapping_sub(c1)).max(1);
        (t1 - t0) * PIT_HZ / ticks
    }
}

/// The calibrated TSC frequency in Hz (0 before [`calibrate`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Microseconds since calibration (0 before it).
pub fn now_us() -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    let ticks = rdtsc().saturating_sub(TSC_BOOT.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.expired() {
        core::hint::spin_loop();
    }
}

/// A point in time after which a wait gives up.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Self(now_us().saturating_add(us))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        now_us() >= self.0
    }
}
