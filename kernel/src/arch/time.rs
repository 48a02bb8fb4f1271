//! Time from the TSC, calibrated once against the PIT (8254 channel 2, 1.193182 MHz).
//!
//! Under QEMU TCG both clocks come from the host clock, so the calibration is as good as the
//! emulation allows. Timestamps in the log and all timeouts (VT-d command waits, DMA polls) use
//! [`now_us`]/[`Deadline`].

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 10 ms.
const CALIBRATION_TICKS: u16 = 11_932;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_BOOT: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC frequency against the PIT and records the boot time stamp.
/// Returns the frequency in Hz.
pub fn calibrate() -> u64 {
    // SAFETY: ports 0x42/0x43/0x61 are the legacy PIT channel 2 and its gate (NMI status and
    // control port); nothing else in this kernel uses channel 2 or the speaker.
    let hz = unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut cmd = Port::<u8>::new(0x43);
        let mut ch2 = Port::<u8>::new(0x42);
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // speaker off, gate on
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write((CALIBRATION_TICKS & 0xff) as u8);
        ch2.write((CALIBRATION_TICKS >> 8) as u8);
        let start = rdtsc();
        let mut spins = 0u64;
        while gate.read() & 0x20 == 0 && spins < 100_000_000 {
            spins += 1;
        }
        let end = rdtsc();
        gate.write(g);
        (end - start) * PIT_HZ / u64::from(CALIBRATION_TICKS)
    };
    TSC_BOOT.store(rdtsc(), Ordering::Relaxed);
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    hz
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
