//! The kernel command line (PVH `cmdline_paddr`, set by `qemu -append`).
//!
//! Grammar: whitespace-separated `key=value` words or bare flags. Known keys:
//! `test=<pattern>[,<pattern>...]` selects in-kernel test suites (`suite` or `suite::test`, or
//! `all`); without it the kernel runs its demo. `acs=leave|isolate` and the `vtd.*` options
//! (`vtd.levels=3|4`, `vtd.rmrr=<bdf>@<base>-<limit>`, `vtd.intremap=on|off`,
//! `vtd.fault_irq=on|off`) are checked by [`CommandLine::warnings`]:
//! an unknown `vtd.*` key or a value outside these is reported at boot, never fatal.
//! `timer.period_us=<n>` sets the LAPIC timer's tick ([`TIMER_PERIOD_RANGE_US`], default
//! [`TIMER_PERIOD_DEFAULT_US`]); a value outside the range is reported and the default used.

use core::fmt;

/// Tick periods `timer.period_us=` accepts, in microseconds.
pub const TIMER_PERIOD_RANGE_US: core::ops::RangeInclusive<u64> = 100..=100_000;
/// The tick period without `timer.period_us=`.
pub const TIMER_PERIOD_DEFAULT_US: u64 = 1000;

/// The `vtd.*` keys the kernel reads.
const VTD_KEYS: [&str; 4] = ["vtd.levels", "vtd.rmrr", "vtd.intremap", "vtd.fault_irq"];

/// A command-line word the kernel will not act on as written, reported as a warning at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionWarning<'a> {
    /// A `vtd.*` key the kernel does not know (the whole word).
    UnknownKey(&'a str),
    /// A known key with a value it does not accept.
    BadValue {
        /// The key.
        key: &'a str,
        /// The value given.
        value: &'a str,
        /// What the key accepts, and what the kernel does instead.
        expected: &'static str,
    },
}

impl fmt::Display for OptionWarning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(word) => {
                write!(f, "unknown option {word:?} ignored (vtd.* options:")?;
                for (i, key) in VTD_KEYS.iter().enumerate() {
                    write!(f, "{}{key}", if i == 0 { " " } else { ", " })?;
                }
                write!(f, ")")
            }
            Self::BadValue {
                key,
                value,
                expected,
            } => write!(f, "{key}={value:?} not understood: {expected}"),
        }
    }
}

impl core::error::Error for OptionWarning<'_> {}

/// A parsed view of the command line, borrowing from the original string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLine<'a> {
    raw: &'a str,
}

impl<'a> CommandLine<'a> {
    /// Wraps a command line string.
    pub fn new(raw: &'a str) -> Self {
        Self { raw }
    }

    /// The string as given.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The value of the first `key=value` word with this key.
    pub fn value(&self, key: &str) -> Option<&'a str> {
        self.raw.split_ascii_whitespace().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// The value of `key=` as a number, decimal or `0x` hexadecimal.
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = self.value(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// Whether a bare flag (a word without `=`) is present.
    pub fn flag(&self, name: &str) -> bool {
        self.raw.split_ascii_whitespace().any(|w| w == name)
    }

    /// The `acs=` and `vtd.*` words the kernel will not act on as written, in order. The
    /// `vtd.rmrr=` value's syntax is checked where it is parsed (`devices::iommu`).
    pub fn warnings(&self) -> impl Iterator<Item = OptionWarning<'a>> + 'a {
        self.raw.split_ascii_whitespace().filter_map(|word| {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            match key {
                "acs" if !matches!(value, "leave" | "isolate") => Some(OptionWarning::BadValue {
                    key,
                    value,
                    expected: "acs=leave or acs=isolate; isolating as by default",
                }),
                "vtd.levels" if !matches!(value, "3" | "4") => Some(OptionWarning::BadValue {
                    key,
                    value,
                    expected: "vtd.levels=3 or vtd.levels=4; using the unit's deepest",
                }),
                "vtd.intremap" if !matches!(value, "on" | "off") => Some(OptionWarning::BadValue {
                    key,
                    value,
                    expected:
                        "vtd.intremap=on or vtd.intremap=off; remapping interrupts as by default",
                }),
                "vtd.fault_irq" if !matches!(value, "on" | "off") => {
                    Some(OptionWarning::BadValue {
                        key,
                        value,
                        expected:
                            "vtd.fault_irq=on or vtd.fault_irq=off; fault events stay interrupts",
                    })
                }
                "timer.period_us"
                    if !value
                        .parse::<u64>()
                        .is_ok_and(|us| TIMER_PERIOD_RANGE_US.contains(&us)) =>
                {
                    Some(OptionWarning::BadValue {
                        key,
                        value,
                        expected: "timer.period_us=100..=100000 (microseconds); using 1000",
                    })
                }
                k if k.starts_with("vtd.") && !VTD_KEYS.contains(&k) => {
                    Some(OptionWarning::UnknownKey(word))
                }
                _ => None,
            }
        })
    }

    /// The LAPIC timer's tick period: `timer.period_us=` when inside [`TIMER_PERIOD_RANGE_US`],
    /// [`TIMER_PERIOD_DEFAULT_US`] otherwise.
    pub fn timer_period_us(&self) -> u64 {
        self.value("timer.period_us")
            .and_then(|v| v.parse().ok())
            .filter(|us| TIMER_PERIOD_RANGE_US.contains(us))
            .unwrap_or(TIMER_PERIOD_DEFAULT_US)
    }

    /// Whether interrupt remapping is wanted: on unless `vtd.intremap=off` (any other value is
    /// reported by [`CommandLine::warnings`] and remapping stays on).
    pub fn interrupt_remapping(&self) -> bool {
        self.value("vtd.intremap") != Some("off")
    }

    /// Whether VT-d fault events are interrupts: true unless `vtd.fault_irq=off` (polling
    /// only: FECTL stays masked).
    pub fn fault_irq(&self) -> bool {
        self.value("vtd.fault_irq") != Some("off")
    }

    /// The test selection, if any (`test=` present, even if empty).
    pub fn tests(&self) -> Option<TestSelection<'a>> {
        self.value("test").map(TestSelection)
    }
}

/// A comma-separated list of test patterns from `test=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSelection<'a>(&'a str);

impl<'a> TestSelection<'a> {
    /// Whether `suite::test` is selected: by `all`, by the suite name or by the full name.
    pub fn selects(&self, suite: &str, test: &str) -> bool {
        self.patterns().any(|p| {
            p == "all"
                || p == suite
                || p.split_once("::")
                    .is_some_and(|(s, t)| s == suite && t == test)
        })
    }

    /// Whether any pattern names this suite (alone or with a test).
    pub fn mentions_suite(&self, suite: &str) -> bool {
        self.patterns().any(|p| {
            p == "all" || p == suite || p.split_once("::").is_some_and(|(s, _)| s == suite)
        })
    }

    /// The individual patterns.
    pub fn patterns(&self) -> impl Iterator<Item = &'a str> {
        self.0.split(',').filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_decimal_and_hex() {
        let c = CommandLine::new("a=12 b=0x1f c=x d=0xzz");
        assert_eq!((c.number("a"), c.number("b")), (Some(12), Some(0x1f)));
        assert_eq!(
            (c.number("c"), c.number("d"), c.number("e")),
            (None, None, None)
        );
    }

    #[test]
    fn values_and_flags() {
        let c = CommandLine::new("  test=boot,mem::heap  verbose  iommu=off ");
        assert_eq!(c.value("test"), Some("boot,mem::heap"));
        assert_eq!(c.value("iommu"), Some("off"));
        assert_eq!(c.value("nope"), None);
        assert!(c.flag("verbose"));
        assert!(!c.flag("iommu"));
    }

    #[test]
    fn selection_matches_suites_and_tests() {
        let c = CommandLine::new("test=boot,mem::heap");
        let s = c.tests().unwrap();
        assert!(s.selects("boot", "anything"));
        assert!(s.selects("mem", "heap"));
        assert!(!s.selects("mem", "frames"));
        assert!(!s.selects("crash", "panic"));
        assert!(s.mentions_suite("mem"));
        assert!(!s.mentions_suite("crash"));
    }

    #[test]
    fn unknown_vtd_keys_and_bad_values_are_reported() {
        let c = CommandLine::new(
            "acs=leave vtd.levels=4 vtd.rmrr=00:06.0@0x1000-0x1fff test=vtd acs=off vtd.levels=5 vtd.strict vtd.level=3 vtdx=1",
        );
        let w: Vec<_> = c.warnings().collect();
        assert_eq!(
            w,
            [
                OptionWarning::BadValue {
                    key: "acs",
                    value: "off",
                    expected: "acs=leave or acs=isolate; isolating as by default"
                },
                OptionWarning::BadValue {
                    key: "vtd.levels",
                    value: "5",
                    expected: "vtd.levels=3 or vtd.levels=4; using the unit's deepest"
                },
                OptionWarning::UnknownKey("vtd.strict"),
                OptionWarning::UnknownKey("vtd.level=3"),
            ]
        );
        assert!(w[2].to_string().contains("vtd.levels, vtd.rmrr"));
        assert_eq!(
            CommandLine::new("acs=isolate vtd.levels=3")
                .warnings()
                .count(),
            0
        );
        // A bare `acs` or `vtd.levels` has no acceptable value either.
        assert_eq!(CommandLine::new("acs vtd.levels").warnings().count(), 2);
    }

    #[test]
    fn fault_irq_is_on_unless_turned_off() {
        assert!(CommandLine::new("test=vtd").fault_irq());
        assert!(CommandLine::new("vtd.fault_irq=on").fault_irq());
        assert!(!CommandLine::new("test=vtd vtd.fault_irq=off").fault_irq());
        assert_eq!(CommandLine::new("vtd.fault_irq=off").warnings().count(), 0);
        let w: Vec<_> = CommandLine::new("vtd.fault_irq=no").warnings().collect();
        assert_eq!(
            w,
            [OptionWarning::BadValue {
                key: "vtd.fault_irq",
                value: "no",
                expected: "vtd.fault_irq=on or vtd.fault_irq=off; fault events stay interrupts",
            }]
        );
        // A bad value is not "off": interrupts stay on.
        assert!(CommandLine::new("vtd.fault_irq=no").fault_irq());
    }

    #[test]
    fn timer_period_is_parsed_and_bad_values_fall_back() {
        assert_eq!(CommandLine::new("").timer_period_us(), 1000);
        assert_eq!(
            CommandLine::new("timer.period_us=250").timer_period_us(),
            250
        );
        for bad in [
            "timer.period_us=99",
            "timer.period_us=100001",
            "timer.period_us=x",
        ] {
            let c = CommandLine::new(bad);
            assert_eq!(c.timer_period_us(), 1000, "{bad}");
            assert_eq!(c.warnings().count(), 1, "{bad}");
        }
        let edges = CommandLine::new("timer.period_us=100 timer.period_us=100000");
        assert_eq!(edges.warnings().count(), 0);
    }

    #[test]
    fn intremap_is_on_unless_turned_off() {
        assert!(CommandLine::new("").interrupt_remapping());
        assert!(CommandLine::new("vtd.intremap=on").interrupt_remapping());
        assert!(!CommandLine::new("vtd.intremap=off").interrupt_remapping());
        assert_eq!(CommandLine::new("vtd.intremap=off").warnings().count(), 0);
        let bad = CommandLine::new("vtd.intremap=no");
        assert!(bad.interrupt_remapping());
        assert_eq!(bad.warnings().count(), 1);
    }

    #[test]
    fn all_selects_everything_and_empty_selects_nothing() {
        let all = CommandLine::new("test=all").tests().unwrap();
        assert!(all.selects("x", "y"));
        let none = CommandLine::new("test=").tests().unwrap();
        assert!(!none.selects("x", "y"));
        assert_eq!(CommandLine::new("demo").tests(), None);
    }
}
