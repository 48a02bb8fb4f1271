//! Ending the run: QEMU's `isa-debug-exit` device at port 0xf4 (configured by xtask with
//! `iosize=4`). Writing `v` makes QEMU exit with status `(v << 1) | 1`, so success (`0x10` → 33)
//! and failure (`0x11` → 35) are both distinguishable from a triple fault, which makes a
//! `-no-reboot` QEMU exit with status 0.

use x86_64::instructions::port::Port;

/// Port of the `isa-debug-exit` device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Value written for success (QEMU exits with 33).
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written for failure (QEMU exits with 35).
pub const EXIT_FAILURE: u32 = 0x11;

/// Final status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything that ran passed.
    Success,
    /// A test failed, or the kernel hit a fatal error.
    Failure,
}

/// Prints the machine-readable exit line and stops QEMU.
pub fn exit(status: Status) -> ! {
    let (word, code) = match status {
        Status::Success => ("success", EXIT_SUCCESS),
        Status::Failure => ("failure", EXIT_FAILURE),
    };
    crate::console::emergency_print(format_args!("KERNEL EXIT {word}\n"));
    // SAFETY: port 0xf4 is the isa-debug-exit device that xtask always attaches; writing to it
    // ends the VM. Without the device the write is ignored and we halt below.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(code) };
    halt_forever()
}

/// Reports a fatal condition that has no better channel and fails the run.
pub fn fail_now(what: &str) -> ! {
    crate::console::emergency_print(format_args!("KERNEL FATAL {what}\n"));
    exit(Status::Failure)
}

/// Disables interrupts and halts for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
