//! The in-kernel test runner: named suites of tests selected by `test=` on the command line.
//!
//! Each test returns a [`TestResult`]; a failed check fails that test only and the runner goes on.
//! A panic or CPU exception is different: the machine state may be unsafe, so the run ends with a
//! decoded report (and xtask reports every test that did not get to run).
//!
//! The serial protocol xtask parses (one line each, nothing else on the line):
//! - `KTEST BEGIN <suite>::<test>`
//! - `KTEST PASS <suite>::<test> <micros>us`
//! - `KTEST FAIL <suite>::<test> <file>:<line>: <message>`
//! - `KTEST UNKNOWN <pattern>` (a selection pattern that matched nothing: the run fails)
//! - `KTEST SUMMARY passed=<n> failed=<n>`

use alloc::format;
use alloc::string::String;
use core::fmt::Display;
use core::panic::Location;

use kernel::cmdline::TestSelection;

use crate::arch::time;
use crate::Kernel;

/// Why a test failed: where, and a message.
#[derive(Debug)]
pub struct Failure {
    /// Source file of the failed check.
    pub file: &'static str,
    /// Line of the failed check.
    pub line: u32,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure at the caller's location.
    #[track_caller]
    pub fn new(message: String) -> Self {
        let loc = Location::caller();
        Self {
            file: loc.file(),
            line: loc.line(),
            message,
        }
    }
}

/// Result of one test.
pub type TestResult = Result<(), Failure>;

/// Turns an error into a test failure with context (`.or_fail("mapping the BAR")?`).
pub trait OrFail<T> {
    /// Fails the test with `what: error` if this is an error.
    #[track_caller]
    fn or_fail(self, what: &str) -> Result<T, Failure>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    #[track_caller]
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(format!("{what}: {e}")))
    }
}

impl<T> OrFail<T> for Option<T> {
    #[track_caller]
    fn or_fail(self, what: &str) -> Result<T, Failure> {
        self.ok_or_else(|| Failure::new(format!("{what}: none")))
    }
}

/// Fails the test unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err($crate::ktest::Failure::new(alloc::format!("check failed: {}", stringify!($cond))));
        }
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::ktest::Failure::new(alloc::format!($($fmt)+)));
        }
    };
}

/// Fails the test unless the two values are equal.
#[macro_export]
macro_rules! check_eq {
    ($a:expr, $b:expr $(,)?) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err($crate::ktest::Failure::new(alloc::format!(
                "{} == {} failed: {:?} != {:?}",
                stringify!($a),
                stringify!($b),
                a,
                b
            )));
        }
    }};
}

/// One test.
pub struct Test {
    /// Name within its suite.
    pub name: &'static str,
    /// The test body.
    pub run: fn(&Kernel) -> TestResult,
}

/// A named group of tests.
pub struct Suite {
    /// Suite name (first part of `suite::test`).
    pub name: &'static str,
    /// Only run when named explicitly (not by `all`): tests that crash or hang on purpose.
    pub explicit_only: bool,
    /// The tests.
    pub tests: &'static [Test],
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed (plus unknown patterns).
    pub failed: usize,
}

fn selected(sel: &TestSelection<'_>, suite: &Suite, test: &Test) -> bool {
    if suite.explicit_only {
        sel.patterns()
            .any(|p| p == suite.name || p == format!("{}::{}", suite.name, test.name))
    } else {
        sel.selects(suite.name, test.name)
    }
}

/// Runs every selected test and prints the protocol lines.
pub fn run(k: &Kernel, sel: TestSelection<'_>, suites: &[Suite]) -> Summary {
    let mut sum = Summary::default();
    for pattern in sel.patterns() {
        let known = pattern == "all"
            || suites.iter().any(|s| {
                s.name == pattern
                    || s.tests
                        .iter()
                        .any(|t| pattern == format!("{}::{}", s.name, t.name))
            });
        if !known {
            crate::kprintln!("KTEST UNKNOWN {pattern}");
            sum.failed += 1;
        }
    }
    for suite in suites {
        for test in suite.tests.iter().filter(|t| selected(&sel, suite, t)) {
            crate::kprintln!("KTEST BEGIN {}::{}", suite.name, test.name);
            let start = time::now_us();
            match (test.run)(k) {
                Ok(()) => {
                    sum.passed += 1;
                    crate::kprintln!(
                        "KTEST PASS {}::{} {}us",
                        suite.name,
                        test.name,
                        time::now_us() - start
                    );
                }
                Err(f) => {
                    sum.failed += 1;
                    crate::kprintln!(
                        "KTEST FAIL {}::{} {}:{}: {}",
                        suite.name,
                        test.name,
                        f.file,
                        f.line,
                        f.message
                    );
                }
            }
        }
    }
    crate::kprintln!("KTEST SUMMARY passed={} failed={}", sum.passed, sum.failed);
    sum
}
