//! The in-kernel test suites (see `ktest` for the runner and `tests-qemu` for the scenarios that
//! select them).

mod boot;
mod crash;
mod memory;

use crate::ktest::Suite;

/// Every suite, in run order.
pub static SUITES: &[Suite] = &[boot::SUITE, memory::SUITE, crash::SUITE];
