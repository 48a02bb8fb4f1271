//! Parsing the kernel's serial log (the protocol is documented in `kernel/src/ktest.rs`).

/// How one in-kernel test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStatus {
    /// `KTEST PASS`.
    Passed,
    /// `KTEST FAIL` with its location and message.
    Failed(String),
    /// `KTEST BEGIN` without an end: the run died inside this test.
    Unfinished,
}

/// How the kernel ended, from its last words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEnd {
    /// `KERNEL EXIT success`.
    Success,
    /// `KERNEL EXIT failure` after no panic or exception.
    Failure,
    /// `KERNEL PANIC ...` (the line's text after the prefix).
    Panic(String),
    /// `KERNEL EXCEPTION ...` (the line's text after the prefix).
    Exception(String),
    /// `KERNEL FATAL ...`.
    Fatal(String),
    /// No exit line at all (hang, triple fault, QEMU error).
    Silent,
}

/// Everything the judge needs from one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Tests in the order they began.
    pub tests: Vec<(String, TestStatus)>,
    /// `KTEST SUMMARY` counts, if printed.
    pub summary: Option<(usize, usize)>,
    /// Selection patterns the kernel did not know.
    pub unknown: Vec<String>,
    /// How the kernel ended.
    pub end: KernelEnd,
}

impl Outcome {
    /// Status of a test by full name.
    pub fn test(&self, name: &str) -> Option<&TestStatus> {
        self.tests.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// Number of passed tests.
    pub fn passed(&self) -> usize {
        self.tests
            .iter()
            .filter(|(_, s)| *s == TestStatus::Passed)
            .count()
    }

    /// Names of tests that did not pass.
    pub fn not_passed(&self) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|(_, s)| *s != TestStatus::Passed)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// Parses a serial log. Tolerates noise (firmware output, partial lines) around protocol lines.
pub fn parse(log: &str) -> Outcome {
    let mut out = Outcome {
        tests: Vec::new(),
        summary: None,
        unknown: Vec::new(),
        end: KernelEnd::Silent,
    };
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(rest) = line.strip_prefix("KTEST ") {
            let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = args.split(' ').next().unwrap_or("").to_string();
            match verb {
                "BEGIN" => out.tests.push((name, TestStatus::Unfinished)),
                "PASS" | "FAIL" => {
                    let status = if verb == "PASS" {
                        TestStatus::Passed
                    } else {
                        TestStatus::Failed(args[name.len()..].trim().to_string())
                    };
                    match out.tests.iter_mut().rev().find(|(n, _)| *n == name) {
                        Some(entry) => entry.1 = status,
                        None => out.tests.push((name, status)),
                    }
                }
                "UNKNOWN" => out.unknown.push(name),
                "SUMMARY" => {
                    let num = |key: &str| {
                        args.split(' ')
                            .find_map(|kv| kv.strip_prefix(key))
                            .and_then(|v| v.parse::<usize>().ok())
                    };
                    if let (Some(p), Some(f)) = (num("passed="), num("failed=")) {
                        out.summary = Some((p, f));
                    }
                }
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("KERNEL ") {
            let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let args = args.to_string();
            match verb {
                // A panic or exception report is followed by `KERNEL EXIT failure`; keep the cause.
                "PANIC" => out.end = KernelEnd::Panic(args),
                "EXCEPTION" => out.end = KernelEnd::Exception(args),
                "FATAL" => out.end = KernelEnd::Fatal(args),
                "EXIT" if matches!(out.end, KernelEnd::Silent) => {
                    out.end = if args == "success" {
                        KernelEnd::Success
                    } else {
                        KernelEnd::Failure
                    };
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str =
        "SeaBIOS noise\n[ 0.1] INFO kernel: hi\nKTEST BEGIN a::x\nKTEST PASS a::x 12us\n\
        KTEST BEGIN a::y\nKTEST FAIL a::y f.rs:3: 1 != 2\nKTEST BEGIN b::z\nKTEST PASS b::z 1us\n\
        KTEST SUMMARY passed=2 failed=1\nKERNEL EXIT failure\n";

    #[test]
    fn parses_tests_summary_and_end() {
        let o = parse(LOG);
        assert_eq!(o.tests.len(), 3);
        assert_eq!(o.test("a::x"), Some(&TestStatus::Passed));
        assert_eq!(
            o.test("a::y"),
            Some(&TestStatus::Failed("f.rs:3: 1 != 2".into()))
        );
        assert_eq!(o.summary, Some((2, 1)));
        assert_eq!(o.end, KernelEnd::Failure);
        assert_eq!(o.not_passed(), ["a::y"]);
    }

    #[test]
    fn panic_inside_a_test_leaves_it_unfinished() {
        let o =
            parse("KTEST BEGIN c::p\r\nKERNEL PANIC at x.rs:1: boom\r\nKERNEL EXIT failure\r\n");
        assert_eq!(o.test("c::p"), Some(&TestStatus::Unfinished));
        assert_eq!(o.end, KernelEnd::Panic("at x.rs:1: boom".into()));
        assert_eq!(o.summary, None);
    }

    #[test]
    fn exception_and_silence() {
        let o =
            parse("KERNEL EXCEPTION vector=14 (#PF page fault) error=0x0\nKERNEL EXIT failure\n");
        assert!(matches!(o.end, KernelEnd::Exception(ref s) if s.starts_with("vector=14")));
        assert_eq!(parse("KTEST BEGIN x::y\n").end, KernelEnd::Silent);
        assert_eq!(parse("KTEST UNKNOWN nope\n").unknown, ["nope"]);
    }
}
