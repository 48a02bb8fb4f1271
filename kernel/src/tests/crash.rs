//! Tests that fail on purpose, run only when named explicitly: they prove that xtask turns a
//! page fault, a panic, a failed check and a hang into the right failure.

use crate::ktest::{Suite, Test, TestResult};
use crate::{check_eq, Kernel};

pub const SUITE: Suite = Suite {
    name: "crash",
    explicit_only: true,
    tests: &[
        Test {
            name: "page_fault",
            run: page_fault,
        },
        Test {
            name: "panic",
            run: panic,
        },
        Test {
            name: "failing_check",
            run: failing_check,
        },
        Test {
            name: "hang",
            run: hang,
        },
    ],
};

/// Address read by `page_fault` (unmapped: above RAM, below the PCI hole).
pub const FAULT_ADDRESS: u64 = 0x7_dead_b000;

fn page_fault(_: &Kernel) -> TestResult {
    // SAFETY: deliberately reads an unmapped address to raise #PF; the exception handler ends the
    // run, so no value is ever produced.
    let v = unsafe { core::ptr::read_volatile(FAULT_ADDRESS as *const u64) };
    check_eq!(v, 0);
    Ok(())
}

fn panic(_: &Kernel) -> TestResult {
    let n = core::hint::black_box(3u32);
    panic!("deliberate panic with value {n}");
}

fn failing_check(_: &Kernel) -> TestResult {
    check_eq!(core::hint::black_box(1 + 1), 3);
    Ok(())
}

fn hang(_: &Kernel) -> TestResult {
    loop {
        core::hint::spin_loop();
    }
}
