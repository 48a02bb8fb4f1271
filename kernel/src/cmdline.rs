//! The kernel command line (PVH `cmdline_paddr`, set by `qemu -append`).
//!
//! Grammar: whitespace-separated `key=value` words or bare flags. Known keys:
//! `test=<pattern>[,<pattern>...]` selects in-kernel test suites (`suite` or `suite::test`, or
//! `all`); without it the kernel runs its demo. Unknown words are kept and reported, never fatal.

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

    /// Whether a bare flag (a word without `=`) is present.
    pub fn flag(&self, name: &str) -> bool {
        self.raw.split_ascii_whitespace().any(|w| w == name)
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
    fn all_selects_everything_and_empty_selects_nothing() {
        let all = CommandLine::new("test=all").tests().unwrap();
        assert!(all.selects("x", "y"));
        let none = CommandLine::new("test=").tests().unwrap();
        assert!(!none.selects("x", "y"));
        assert_eq!(CommandLine::new("demo").tests(), None);
    }
}
