//! The "IOVA allocator vs `vm-allocator`" section of docs/PERFORMANCE.md (issue 12): runs the
//! `dma` crate's `iova_vs_vm_allocator` criterion benchmark and writes its figures, read from
//! criterion's `target/criterion/<group>/<function>/<live>/new/estimates.json`, between the
//! section's own markers. `cargo xtask bench` (and `--host-only`) regenerates the section,
//! `--allocator-only` regenerates only it, `--kernel-only` keeps the previous one.

use std::fmt::Write as _;
use std::path::Path;

/// Start of the section (the marker line is followed by a note on how it is generated).
pub const BEGIN: &str = "<!-- allocator:begin";
/// End of the section.
pub const END: &str = "<!-- allocator:end -->";

/// The benchmark's criterion groups, with the workload each measures.
const GROUPS: [(&str, &str); 2] = [
    ("iova_vs_vm_allocator_4k", "4 KiB"),
    ("iova_vs_vm_allocator_mixed", "mixed sizes"),
];
/// Rounds of our allocator's runs in the benchmark (`ours_round0`, ...).
const ROUNDS: usize = 3;
/// Live allocation counts the benchmark runs at.
const LIVE: [u64; 3] = [1, 100_000, 1_000_000];
/// The live count of the issue's speed target.
const TARGET_LIVE: u64 = 100_000;
/// Issue 12: at least this many times faster than `vm-allocator` at [`TARGET_LIVE`].
const TARGET_RATIO: f64 = 10.0;
/// Issue 12: ours at 1M live within this fraction of ours at 1 live.
const TARGET_FLAT: f64 = 0.2;

/// One criterion figure: the median of the samples and its 95 % confidence interval, in ns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub median: f64,
    pub lower: f64,
    pub upper: f64,
}

/// The value after `"key":` in `json` (a number).
fn number_after(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let rest = &json[json.find(&pat)? + pat.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The object that follows `"key":` in `json`, braces included.
fn object_after<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat)? + pat.len();
    let body = &json[start..];
    let open = body.find('{')?;
    let mut depth = 0usize;
    for (i, c) in body[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&body[open..open + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Parses criterion's `estimates.json`: the `median` estimate (robust on a shared machine).
pub fn parse_estimates(json: &str) -> Option<Estimate> {
    let median = object_after(json, "median")?;
    let ci = object_after(median, "confidence_interval")?;
    Some(Estimate {
        median: number_after(median, "point_estimate")?,
        lower: number_after(ci, "lower_bound")?,
        upper: number_after(ci, "upper_bound")?,
    })
}

/// The figures of one workload at one live count.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Ours, each round.
    pub ours_rounds: Vec<Option<Estimate>>,
    /// Ours: the round with the median figure.
    pub ours: Option<Estimate>,
    pub first_match: Option<Estimate>,
    pub last_match: Option<Estimate>,
}

impl Row {
    /// `vm-allocator`'s faster policy here.
    fn vm_best(&self) -> Option<f64> {
        match (self.first_match, self.last_match) {
            (Some(a), Some(b)) => Some(a.median.min(b.median)),
            (a, b) => a.or(b).map(|e| e.median),
        }
    }

    /// How many times faster ours is than `vm-allocator`'s faster policy.
    fn ratio(&self) -> Option<f64> {
        Some(self.vm_best()? / self.ours?.median)
    }
}

/// Reads every figure of the benchmark from `criterion_dir` (`target/criterion`).
pub fn read_rows(criterion_dir: &Path) -> Vec<(&'static str, u64, Row)> {
    let read = |group: &str, function: &str, live: u64| {
        let p = criterion_dir
            .join(group)
            .join(function)
            .join(live.to_string())
            .join("new")
            .join("estimates.json");
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| parse_estimates(&s))
    };
    let mut rows = Vec::new();
    for (group, workload) in GROUPS {
        for live in LIVE {
            let ours_rounds: Vec<_> = (0..ROUNDS)
                .map(|r| read(group, &format!("ours_round{r}"), live))
                .collect();
            rows.push((
                workload,
                live,
                Row {
                    ours: median_round(&ours_rounds),
                    ours_rounds,
                    first_match: read(group, "vm_allocator_first_match", live),
                    last_match: read(group, "vm_allocator_last_match", live),
                },
            ));
        }
    }
    rows
}

/// The estimate with the median figure among the rounds that have one.
pub fn median_round(rounds: &[Option<Estimate>]) -> Option<Estimate> {
    let mut v: Vec<Estimate> = rounds.iter().flatten().copied().collect();
    v.sort_by(|a, b| a.median.total_cmp(&b.median));
    v.get(v.len() / 2).copied()
}

/// The median of `v` (sorted in place), or `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn ns(e: Option<Estimate>) -> String {
    let Some(e) = e else {
        return "missing".into();
    };
    let one = |v: f64| {
        if v >= 1e6 {
            format!("{:.2} ms", v / 1e6)
        } else if v >= 1e4 {
            format!("{:.1} µs", v / 1e3)
        } else {
            format!("{v:.0} ns")
        }
    };
    format!("{} ({}–{})", one(e.median), one(e.lower), one(e.upper))
}

fn live_name(live: u64) -> String {
    match live {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The section, markers included (pure, so it is unit-tested).
pub fn render(rows: &[(&str, u64, Row)], date: &str) -> String {
    let mut d = String::new();
    let _ = writeln!(
        d,
        "{BEGIN} (generated by `cargo xtask bench` from criterion's estimates.json) -->"
    );
    let _ = writeln!(
        d,
        "## IOVA allocator vs rust-vmm `vm-allocator` (host, criterion)\n"
    );
    let _ = writeln!(
        d,
        "Generated on {date} by `cargo bench -p dma --bench iova_vs_vm_allocator` (see that file's \
         documentation). Both allocators manage `[4 KiB, 2^39)` minus the interrupt window, hold \
         the same live ranges (placed by ours, replayed into `vm-allocator` at the same addresses) \
         and run the same sequence: batches of 8 allocations, each aligned to its size rounded up \
         to a power of two, freed oldest first. 4 KiB: every range one page; mixed: live ranges \
         of 1, 2, 3, 8 pages, the sequence cycling 1, 2, 3, 8, 16, 33, 64, 100 pages (both sides \
         of our per-size caches' 32-page limit). `vm-allocator` runs with both search policies; \
         the ratio is against the faster one. Figures: criterion's median ns per alloc+free pair \
         (95 % confidence interval); ours is the median of {ROUNDS} rounds. The machine is shared, so \
         compare within one run.\n"
    );
    let _ = writeln!(
        d,
        "| workload | live | ours | vm-allocator FirstMatch | vm-allocator LastMatch | \
         vm-allocator (faster) / ours |\n|---|---:|---:|---:|---:|---:|"
    );
    for (workload, live, r) in rows {
        let ratio = r.ratio().map_or("-".into(), |x| format!("{x:.1}x"));
        let _ = writeln!(
            d,
            "| {workload} | {} | {} | {} | {} | {ratio} |",
            live_name(*live),
            ns(r.ours),
            ns(r.first_match),
            ns(r.last_match)
        );
    }
    let _ = writeln!(d);
    let mut workloads: Vec<&str> = Vec::new();
    for (w, _, _) in rows {
        if !workloads.contains(w) {
            workloads.push(w);
        }
    }
    let at = |w: &str, live: u64| rows.iter().find(|(x, l, _)| *x == w && *l == live);
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    for w in workloads {
        let first = at(w, LIVE[0]).map(|(_, _, r)| r.ours_rounds.clone());
        let last = at(w, LIVE[LIVE.len() - 1]).map(|(_, _, r)| r.ours_rounds.clone());
        let target = at(w, TARGET_LIVE).and_then(|(_, _, r)| r.ratio());
        // Per round: 1M live against 1 live, measured seconds apart.
        let mut ratios: Vec<f64> = match (first, last) {
            (Some(a), Some(b)) => a
                .iter()
                .zip(&b)
                .filter_map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) if a.median > 0.0 => Some(b.median / a.median),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let n = ratios.len();
        let flat = match median(&mut ratios) {
            Some(f) => format!(
                "ours at {} live / at 1 live = {f:.2}x (median of {n} rounds, each from runs \
                 seconds apart: {:.2}x–{:.2}x; target within ±{:.0} %: {})",
                live_name(LIVE[LIVE.len() - 1]),
                ratios[0],
                ratios[n - 1],
                TARGET_FLAT * 100.0,
                verdict((f - 1.0).abs() <= TARGET_FLAT)
            ),
            None => "flatness: a figure is missing".into(),
        };
        let speed = match target {
            Some(x) => format!(
                "at {} live ours is {x:.1}x faster than vm-allocator's faster policy (target \
                 at least {TARGET_RATIO:.0}x: {})",
                live_name(TARGET_LIVE),
                verdict(x >= TARGET_RATIO)
            ),
            None => "speed: a figure is missing".into(),
        };
        let _ = writeln!(d, "- {w}: {flat}; {speed}.");
    }
    let _ = writeln!(
        d,
        "\nOurs stays flat because its bookkeeping (the live-allocation record and the buddy free \
         lists) lives in radix trees whose depth is set by the width of the IOVA space, not by the \
         number of allocations, and sizes up to 32 pages come from per-size caches. \
         `vm-allocator` keeps one AVL interval tree of free and allocated ranges and searches it \
         in order without a \"largest free gap\" summary, so a search that has to pass the live \
         ranges (FirstMatch here) costs O(n); where the free space is found at once (LastMatch \
         here), each allocation and free still inserts and deletes boxed tree nodes."
    );
    let _ = writeln!(d, "{END}");
    d
}

/// `doc` with its allocator section replaced by `section`, or `section` appended.
pub fn splice(doc: &str, section: &str) -> String {
    crate::section::splice(doc, BEGIN, END, section)
}

/// The allocator section of `doc`, markers included.
pub fn extract(doc: &str) -> Option<&str> {
    crate::section::extract(doc, BEGIN, END)
}

/// Runs the benchmark and returns `doc` with a fresh section, or (when `measure` is false) with
/// the section of `previous`, if it has one.
pub fn update(doc: &str, previous: &str, measure: bool, date: &str) -> Result<String, String> {
    if !measure {
        return Ok(extract(previous).map_or_else(|| doc.to_string(), |s| splice(doc, s)));
    }
    super::bench::cargo_bench("dma", "iova_vs_vm_allocator", &[])?;
    let root = super::root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let rows = read_rows(&target.join("criterion"));
    if rows.iter().all(|(_, _, r)| r.ours.is_none()) {
        return Err(format!(
            "no estimates.json under {}",
            target.join("criterion").display()
        ));
    }
    Ok(splice(doc, &render(&rows, date)))
}

/// `cargo xtask bench --allocator-only`: runs the benchmark and rewrites only this section of
/// `path`, keeping the rest of the file.
pub fn only(path: &Path, date: &str) -> Result<std::process::ExitCode, String> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Performance\n".into());
    let new = update(&old, &old, true, date)?;
    std::fs::write(path, &new).map_err(|e| format!("writing {}: {e}", path.display()))?;
    if let Some(section) = extract(&new) {
        println!("{section}");
    }
    println!("bench: wrote the allocator section of {}", path.display());
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(median: f64) -> Option<Estimate> {
        Some(Estimate {
            median,
            lower: median * 0.9,
            upper: median * 1.1,
        })
    }

    #[test]
    fn parses_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":81.3,"upper_bound":102.8},"point_estimate":90.0,"standard_error":5.6},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":83.5,"upper_bound":91.6},"point_estimate":86.9,"standard_error":2.0},"slope":null}"#;
        assert_eq!(
            parse_estimates(json),
            Some(Estimate {
                median: 86.9,
                lower: 83.5,
                upper: 91.6
            })
        );
        assert_eq!(parse_estimates(r#"{"mean":{}}"#), None);
    }

    #[test]
    fn renders_ratios_and_flatness_from_the_figures() {
        let row = |ours: f64, first, last| {
            // Three rounds: the median one is `ours`, the others 10 % off either way.
            let rounds = vec![est(ours * 1.1), est(ours), est(ours * 0.9)];
            Row {
                ours: median_round(&rounds),
                ours_rounds: rounds,
                first_match: est(first),
                last_match: est(last),
            }
        };
        let rows = vec![
            ("4 KiB", 1, row(20.0, 700.0, 650.0)),
            ("4 KiB", 100_000, row(22.0, 2.6e6, 440.0)),
            ("4 KiB", 1_000_000, row(23.0, 2.8e7, 2000.0)),
            ("mixed sizes", 1, row(100.0, 1000.0, 900.0)),
            ("mixed sizes", 100_000, row(100.0, 1e6, 900.0)),
            ("mixed sizes", 1_000_000, row(150.0, 1e7, 900.0)),
        ];
        let doc = render(&rows, "2026-01-01");
        assert!(doc.starts_with(BEGIN) && doc.trim_end().ends_with(END));
        // Against the faster policy: 440 / 22 = 20x; 900 / 100 = 9x.
        assert!(
            doc.contains("| 4 KiB | 100k | 22 ns (20 ns–24 ns) | 2.60 ms"),
            "{doc}"
        );
        assert!(doc.contains("| 20.0x |"), "{doc}");
        assert!(doc.contains("4 KiB: ours at 1M live / at 1 live = 1.15x (median of 3 rounds, each from runs seconds apart: 1.15x–1.15x; target within ±20 %: met); at 100k live ours is 20.0x faster"), "{doc}");
        assert!(doc.contains("mixed sizes: ours at 1M live / at 1 live = 1.50x (median of 3 rounds, each from runs seconds apart: 1.50x–1.50x; target within ±20 %: not met); at 100k live ours is 9.0x faster than vm-allocator's faster policy (target at least 10x: not met)"), "{doc}");
    }

    #[test]
    fn splice_replaces_only_its_section() {
        let a = render(&[], "a");
        let b = render(&[], "b");
        let doc = format!("# P\n\nbefore\n\n{a}\nafter\n");
        let new = splice(&doc, &b);
        assert!(new.contains("before") && new.contains("after"));
        assert!(new.contains("Generated on b") && !new.contains("Generated on a"));
        assert_eq!(extract(&new).map(str::trim_end), Some(b.trim_end()));
        // No section yet: appended.
        let appended = splice("# P\n", &a);
        assert!(appended.starts_with("# P\n\n") && extract(&appended).is_some());
        // `--kernel-only`: the previous section is carried over unchanged.
        assert_eq!(update("# P\n", &new, false, "c"), Ok(splice("# P\n", &b)));
    }
}
