//! The serial console (COM1, 16550 UART) and the `log` backend that writes to it.
//!
//! Log lines are `[seconds.micros] LEVEL target: message`. Exception and panic reports go through
//! [`emergency_print`], which takes the console even if the faulting code held its lock.
//!
//! Interrupt-safe: [`print`] (and so the `log` backend and the `kprint!`/`kprintln!` macros) runs
//! its critical section with interrupts disabled, so an interrupt handler may log while mainline
//! code prints: the handler cannot arrive while the lock is held on this CPU. The log line's
//! time stamp is read before the lock, from a lock-free clock.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550Tty};

const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

/// The clock log lines are stamped with, in microseconds. Handed in by [`init`] rather than
/// read from `arch::time` directly: `arch` prints its exception and exit reports through this
/// console, so the console must not depend on `arch` (one-way module dependencies).
static CLOCK: spin::Once<fn() -> u64> = spin::Once::new();

/// Initialises COM1 and installs the logger at `level`, stamping lines with `clock_us`.
pub fn init(level: log::LevelFilter, clock_us: fn() -> u64) {
    CLOCK.call_once(|| clock_us);
    // SAFETY: 0x3f8..0x400 is COM1 on every PC-compatible machine QEMU emulates, and this kernel
    // touches it only through CONSOLE.
    let uart = unsafe { Uart16550Tty::new_port(COM1, Config::default()) };
    *CONSOLE.lock() = uart.ok();
    // Ignore "already set": init runs once per boot.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes formatted text to the console.
pub fn print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(c) = CONSOLE.lock().as_mut() {
            let _ = c.write_fmt(args);
        }
    });
}

/// Writes formatted text even if the console lock is held (by code that faulted while printing).
pub fn emergency_print(args: fmt::Arguments<'_>) {
    if CONSOLE.is_locked() {
        // SAFETY: called only on fatal paths (exception, panic, exit) on the single CPU; the
        // holder of the lock was interrupted and will never resume, so breaking it is safe.
        unsafe { CONSOLE.force_unlock() };
    }
    print(args);
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = CLOCK.get().map_or(0, |clock| clock());
        print(format_args!(
            "[{:4}.{:06}] {:5} {}: {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
