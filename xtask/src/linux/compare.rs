//! The comparison itself, pure: reading the Linux module's result lines and our kernel's TSC
//! frequency, medians and spreads over rounds, ratios, and the Markdown section of
//! docs/PERFORMANCE.md.

use std::fmt::Write as _;

use super::initramfs::DONE;

/// One operation compared: its label and the row names on each side.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    /// What the row measures.
    pub label: &'static str,
    /// The `KBENCH` row of kernel/src/bench.rs (`None`: we have no such row).
    pub ours: Option<&'static str>,
    /// The `LBENCH` row of xtask/linux-module/dma_bench.c.
    pub linux: &'static str,
    /// Our row whose traced register accesses stand for this operation: the same operation
    /// without an untimed warm-up before it in the console output (see [`super::trace`]).
    pub ours_traced: Option<&'static str>,
}

/// The operations of the table, in order.
pub const OPS: [Op; 6] = [
    Op {
        label: "4 KiB map+unmap",
        ours: Some("map_unmap_4k_strict"),
        linux: "map_unmap_4k",
        ours_traced: Some("map_unmap_4k_with_1_live"),
    },
    Op {
        label: "64 KiB map+unmap",
        ours: Some("map_unmap_64k"),
        linux: "map_unmap_64k",
        ours_traced: Some("map_unmap_64k"),
    },
    Op {
        label: "2 MiB map+unmap",
        ours: Some("map_unmap_2m_superpage"),
        linux: "map_unmap_2m",
        ours_traced: Some("map_unmap_2m_superpage"),
    },
    Op {
        label: "256-entry scatter list map+unmap",
        ours: Some("map_sg_256_entries"),
        linux: "map_sg_256",
        ours_traced: Some("map_sg_256_entries"),
    },
    Op {
        label: "4 KiB, 64 live then all unmapped (per mapping)",
        ours: Some("map_unmap_4k_batched_64"),
        linux: "map_unmap_4k_batched_64",
        ours_traced: Some("map_unmap_4k_batched_64"),
    },
    Op {
        label: "4 KiB, 256 live then all unmapped (per mapping)",
        ours: Some("map_unmap_4k_batched_256"),
        linux: "map_unmap_4k_batched_256",
        ours_traced: Some("map_unmap_4k_batched_256"),
    },
];

/// What one Linux boot reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LinuxRun {
    /// The flush policy the kernel logged (`strict mode` / `lazy mode`).
    pub policy: String,
    /// The IOVA of a probe mapping (below 4 GiB with the 32-bit mask).
    pub first_iova: u64,
    /// (row name, ns per operation, TSC cycles per operation).
    pub rows: Vec<(String, f64, f64)>,
    /// The guest's TSC frequency in kHz as Linux calibrated it.
    pub tsc_khz: u64,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// Reads a Linux console log; fails unless the module loaded, the device was translated by the
/// IOMMU, and the run reached the end.
pub fn parse_linux(log: &str) -> Result<LinuxRun, String> {
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    if !lines.contains(&DONE) {
        return Err("the guest's /init did not finish".into());
    }
    if let Some(l) = lines.iter().find(|l| l.starts_with("LBENCH_ERROR")) {
        return Err(format!("the module failed: {l}"));
    }
    match lines
        .iter()
        .find_map(|l| l.strip_prefix("LINUX-BASELINE insmod rc="))
    {
        Some("0") => {}
        Some(rc) => return Err(format!("insmod failed (rc={rc})")),
        None => return Err("no insmod result".into()),
    }
    let info = lines
        .iter()
        .find(|l| l.starts_with("LBENCH_INFO "))
        .ok_or("no LBENCH_INFO line (did the module bind to edu?)")?;
    if field(info, "iommu_mapped=") != Some("1") {
        return Err(format!("edu is not behind the IOMMU in Linux: {info}"));
    }
    let first_iova = field(info, "first_iova=")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .ok_or_else(|| format!("bad LBENCH_INFO line: {info}"))?;
    let policy = lines
        .iter()
        .find_map(|l| l.strip_prefix("LINUX-BASELINE policy "))
        .ok_or("the kernel logged no IOTLB invalidation policy")?
        .to_string();
    let mut rows = Vec::new();
    let mut tsc_khz = 0;
    for l in &lines {
        let Some(rest) = l.strip_prefix("LBENCH ") else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap_or_default();
        let num = |k: &str| field(rest, k).and_then(|v| v.parse::<u64>().ok());
        let (Some(ops), Some(ns), Some(cycles), Some(khz)) =
            (num("ops="), num("ns="), num("cycles="), num("tsc_khz="))
        else {
            return Err(format!("bad LBENCH line: {l}"));
        };
        if ops == 0 {
            return Err(format!("zero operations: {l}"));
        }
        tsc_khz = khz;
        rows.push((
            name.to_string(),
            ns as f64 / ops as f64,
            cycles as f64 / ops as f64,
        ));
    }
    if rows.is_empty() {
        return Err("no LBENCH lines".into());
    }
    Ok(LinuxRun {
        policy,
        first_iova,
        rows,
        tsc_khz,
    })
}

/// Our kernel's TSC frequency in Hz from its boot line `TSC 2596.097 MHz (...)`.
pub fn parse_tsc_hz(log: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once("TSC ")?;
        let (mhz, _) = rest.split_once(" MHz")?;
        mhz.trim()
            .parse::<f64>()
            .ok()
            .filter(|m| *m > 0.0)
            .map(|m| m * 1e6)
    })
}

/// Median and range of a set of figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest figure.
    pub min: f64,
    /// The largest figure.
    pub max: f64,
}

/// The summary of `xs`, or `None` when empty.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The figures of every round, per side, for one operation (ns per operation; a round without
/// the row leaves it out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Ours, one per round.
    pub ours: Vec<f64>,
    /// Linux with `iommu.strict=1`.
    pub strict: Vec<f64>,
    /// Linux with `iommu.strict=0`.
    pub lazy: Vec<f64>,
    /// Rounds in which both ours and Linux strict ran, and how many of them ours was faster in.
    pub paired: (usize, usize),
}

/// Everything one `--vs-linux` run measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Per round: our kernel's rows (name, cycles per operation) and its TSC Hz.
    pub ours: Vec<(Vec<(String, u64)>, f64)>,
    /// Per round: Linux strict.
    pub strict: Vec<LinuxRun>,
    /// Per round: Linux lazy.
    pub lazy: Vec<LinuxRun>,
    /// VT-d register accesses per operation from one traced run each.
    pub accesses: Option<Accesses>,
}

/// VT-d register accesses per operation, (row name, accesses) on each side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accesses {
    /// Our kernel's rows.
    pub ours: Vec<(String, f64)>,
    /// The Linux module's rows (strict).
    pub linux: Vec<(String, f64)>,
}

impl Measured {
    /// The series of `op`, ours converted from TSC cycles to ns with that round's TSC Hz.
    pub fn series(&self, op: &Op) -> Series {
        let ours: Vec<Option<f64>> = self
            .ours
            .iter()
            .map(|(rows, hz)| {
                let name = op.ours?;
                rows.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| *c as f64 / hz * 1e9)
            })
            .collect();
        let linux = |runs: &[LinuxRun]| -> Vec<Option<f64>> {
            runs.iter()
                .map(|r| {
                    r.rows
                        .iter()
                        .find(|(n, _, _)| n == op.linux)
                        .map(|(_, ns, _)| *ns)
                })
                .collect()
        };
        let strict = linux(&self.strict);
        let lazy = linux(&self.lazy);
        let pairs: Vec<(f64, f64)> = ours
            .iter()
            .zip(&strict)
            .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
            .collect();
        Series {
            ours: ours.into_iter().flatten().collect(),
            strict: strict.into_iter().flatten().collect(),
            lazy: lazy.into_iter().flatten().collect(),
            paired: (pairs.len(), pairs.iter().filter(|(a, b)| a < b).count()),
        }
    }
}

/// `a / b` as `0.62x`, or `-` when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn cell(s: Option<Summary>, missing: &str) -> String {
    match s {
        Some(s) => format!("{:.0} ({:.0}-{:.0})", s.median, s.min, s.max),
        None => format!("- ({missing})"),
    }
}

/// The start and end markers of the section in docs/PERFORMANCE.md.
pub const BEGIN: &str = "<!-- vs-linux:begin (generated by `cargo xtask bench --vs-linux`) -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- vs-linux:end -->";

/// Facts of the run the section's text states.
#[derive(Debug, Clone)]
pub struct Context {
    /// The command that produced the section.
    pub command: String,
    /// The date.
    pub date: String,
    /// `linux-image-... (version)`.
    pub kernel: String,
    /// The QEMU machine arguments.
    pub machine: String,
    /// Rounds run.
    pub rounds: usize,
}

/// The whole section, markers included.
pub fn render(m: &Measured, cx: &Context) -> String {
    let mut d = String::new();
    let _ = writeln!(d, "{BEGIN}");
    let _ = writeln!(d, "## Versus Linux on the same machine\n");
    let _ = writeln!(
        d,
        "Generated by `{}` on {}: {} rounds, each booting ours, then Linux strict, then Linux lazy \
         on one QEMU machine (`{}`, TCG). Linux is Debian's `{}`, booted through its PVH entry \
         with our module `xtask/linux-module/dma_bench.c` (edu, 32-bit DMA mask, the streaming \
         DMA API through iommu-dma and intel-iommu); strict is `iommu.strict=1`, lazy \
         `iommu.strict=0` (flush queue). Linux times with `ktime_get_ns`; ours counts TSC cycles, \
         converted to ns with the TSC frequency our kernel logs at boot. Figures: median \
         (min-max) over the rounds, ns per operation; the ratio is of medians, with the rounds \
         in which ours was faster than Linux strict. A plain `cargo xtask bench` keeps this \
         section as it is; only `--vs-linux` regenerates it.\n",
        cx.command, cx.date, cx.rounds, cx.machine, cx.kernel
    );
    let _ = writeln!(
        d,
        "| operation | ours (ns) | Linux strict (ns) | ours / Linux strict | Linux lazy (ns) |\n\
         |---|---:|---:|---:|---:|"
    );
    for op in &OPS {
        let s = m.series(op);
        let (ours, strict, lazy) = (summarize(&s.ours), summarize(&s.strict), summarize(&s.lazy));
        let ours_missing = if op.ours.is_none() {
            "no such row in kernel/src/bench.rs"
        } else {
            "our kernel printed no such row"
        };
        let linux_missing = "the Linux module printed no such row";
        let won = if s.paired.0 > 0 {
            format!(" ({}/{} rounds faster)", s.paired.1, s.paired.0)
        } else {
            String::new()
        };
        let names = match op.ours {
            Some(o) => format!("`{o}` / `{}`", op.linux),
            None => format!("- / `{}`", op.linux),
        };
        let _ = writeln!(
            d,
            "| {} ({names}) | {} | {} | {}{won} | {} |",
            op.label,
            cell(ours, ours_missing),
            cell(strict, linux_missing),
            ratio(ours.map(|x| x.median), strict.map(|x| x.median)),
            cell(lazy, linux_missing),
        );
    }
    let hz: Vec<f64> = m.ours.iter().map(|(_, hz)| *hz / 1e6).collect();
    let khz: Vec<f64> = m
        .strict
        .iter()
        .chain(&m.lazy)
        .map(|r| r.tsc_khz as f64 / 1e3)
        .collect();
    let _ = writeln!(d);
    if let (Some(a), Some(b)) = (summarize(&hz), summarize(&khz)) {
        let _ = writeln!(
            d,
            "TSC: ours calibrated {:.1}-{:.1} MHz, Linux {:.1}-{:.1} MHz. Linux's logged flush \
             policies: strict runs `{}`, lazy runs `{}`.",
            a.min,
            a.max,
            b.min,
            b.max,
            m.strict.first().map_or("-", |r| r.policy.as_str()),
            m.lazy.first().map_or("-", |r| r.policy.as_str()),
        );
    }
    if let Some(Accesses { ours, linux }) = &m.accesses {
        let find = |rows: &[(String, f64)], name: Option<&str>| {
            name.and_then(|n| rows.iter().find(|(r, _)| r == n).map(|(_, v)| *v))
        };
        let _ = writeln!(
            d,
            "\n### VT-d register accesses per operation (QEMU trace)\n\n\
             One more run of each, untimed, with QEMU's `vtd_reg_read`/`vtd_reg_write` trace \
             events and the console's `serial_write` bytes: the accesses between the line \
             printed when a row's clock starts (Linux: `LBENCH_MARK`; ours: the previous row's \
             line) and the row's result line, divided by its operations. Ours for 4 KiB is \
             `map_unmap_4k_with_1_live` (the strict row's segment also holds its warm-up).\n\n\
             | operation | ours | Linux strict |\n|---|---:|---:|"
        );
        for op in &OPS {
            let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let _ = writeln!(
                d,
                "| {} | {} | {} |",
                op.label,
                show(find(ours, op.ours_traced)),
                show(find(linux, Some(op.linux)))
            );
        }
    }
    let _ = writeln!(
        d,
        "\nRows: `map_unmap_*` are one `dma_map_single`+`dma_unmap_single` pair (ours: `map_phys` + \
         `unmap`, strict); the scatter list is 256 physically contiguous 4 KiB pages (Linux merges \
         them into one IOVA range); the batched rows keep N mappings of one page live and then \
         unmap them all (ours: one `UnmapBatch`, one flush per batch; Linux strict flushes each \
         unmap, lazy defers to its flush queue). Under TCG every register access and every \
         invalidation is emulated: compare ratios, not absolute times."
    );
    let _ = writeln!(d, "{END}");
    d
}

/// The section of `doc` between [`BEGIN`] and [`END`] (markers included), if any.
pub fn extract_section(doc: &str) -> Option<&str> {
    let start = doc.find(BEGIN)?;
    let end = doc[start..].find(END)? + start + END.len();
    Some(&doc[start..end])
}

/// `doc` with its section replaced by `section`, or `section` appended when it has none.
pub fn splice_section(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    match (doc.find(BEGIN), extract_section(doc)) {
        (Some(start), Some(old)) => {
            format!("{}{section}{}", &doc[..start], &doc[start + old.len()..])
        }
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_log(policy: &str, ns_4k: u64) -> String {
        format!(
            "[    0.000000] Linux version 6.1\r\n\
             LINUX-BASELINE insmod rc=0\r\n\
             LBENCH_INFO iommu_mapped=1 first_iova=0xfffff000 mask_bits=32\r\n\
             LBENCH map_unmap_4k ops=2000 ns={} cycles={} tsc_khz=2596000\r\n\
             LBENCH map_sg_256 ops=50 ns=5000000 cycles=12980000 tsc_khz=2596000\r\n\
             LINUX-BASELINE policy {policy}\r\n\
             {DONE}\r\n",
            ns_4k * 2000,
            ns_4k * 2000 * 2596 / 1000
        )
    }

    #[test]
    fn parses_linux_runs_and_refuses_incomplete_ones() {
        let r = parse_linux(&linux_log("strict mode", 5000)).expect("parsed");
        assert_eq!(r.policy, "strict mode");
        assert_eq!(r.first_iova, 0xffff_f000);
        assert_eq!(r.tsc_khz, 2_596_000);
        assert_eq!(r.rows[0].0, "map_unmap_4k");
        assert_eq!(r.rows[0].1, 5000.0);
        assert_eq!(r.rows[0].2, 12980.0);
        assert_eq!(r.rows[1], ("map_sg_256".into(), 100_000.0, 259_600.0));

        let log = linux_log("strict mode", 5000);
        assert!(parse_linux(&log.replace(DONE, "")).is_err());
        assert!(parse_linux(&log.replace("rc=0", "rc=1"))
            .expect_err("insmod")
            .contains("rc=1"));
        assert!(
            parse_linux(&log.replace("iommu_mapped=1", "iommu_mapped=0"))
                .expect_err("bypass")
                .contains("not behind the IOMMU")
        );
        assert!(parse_linux(&log.replace("LINUX-BASELINE policy strict mode", "")).is_err());
        assert!(parse_linux(&log.replace("ops=2000", "ops=0")).is_err());
    }

    #[test]
    fn reads_our_tsc_frequency() {
        let log = "[   0.001221] INFO  kernel: TSC 2596.097 MHz (calibrated against the PIT)\n";
        assert_eq!(parse_tsc_hz(log), Some(2_596_097_000.0));
        assert_eq!(parse_tsc_hz("no such line"), None);
    }

    #[test]
    fn median_and_range() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[5.0, 1.0, 3.0]).expect("odd");
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        let s = summarize(&[4.0, 1.0, 3.0, 10.0]).expect("even");
        assert_eq!((s.median, s.min, s.max), (3.5, 1.0, 10.0));
        assert_eq!(ratio(Some(3.0), Some(4.0)), "0.75x");
        assert_eq!(ratio(Some(3.0), None), "-");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "-");
    }

    fn measured() -> Measured {
        let hz = 2e9; // 2 cycles per ns
        let ours = |c: u64| {
            (
                vec![
                    ("map_unmap_4k_strict".to_string(), c),
                    ("map_unmap_64k".to_string(), 3 * c),
                ],
                hz,
            )
        };
        let run = |policy: &str, ns: u64| parse_linux(&linux_log(policy, ns)).expect("log");
        Measured {
            // ours: 4000, 6000, 5000 ns for 4 KiB; Linux strict 5000, 5000, 4000.
            ours: vec![ours(8000), ours(12000), ours(10000)],
            strict: vec![
                run("strict mode", 5000),
                run("strict mode", 5000),
                run("strict mode", 4000),
            ],
            lazy: vec![run("lazy mode", 3000), run("lazy mode", 2000)],
            accesses: Some(Accesses {
                ours: vec![("map_unmap_4k_with_1_live".into(), 3.0)],
                linux: vec![("map_unmap_4k".into(), 1.0)],
            }),
        }
    }

    #[test]
    fn series_convert_cycles_and_pair_rounds() {
        let m = measured();
        let s = m.series(&OPS[0]);
        assert_eq!(s.ours, [4000.0, 6000.0, 5000.0]);
        assert_eq!(s.strict, [5000.0, 5000.0, 4000.0]);
        assert_eq!(s.lazy, [3000.0, 2000.0]);
        // Round 1: 4000 < 5000 (faster); round 2: 6000 > 5000; round 3: 5000 > 4000.
        assert_eq!(s.paired, (3, 1));
        // 64 KiB: ours only.
        let s = m.series(&OPS[1]);
        assert_eq!(s.ours, [12000.0, 18000.0, 15000.0]);
        assert!(s.strict.is_empty());
        assert_eq!(s.paired, (0, 0));
    }

    #[test]
    fn renders_the_table_with_medians_ratios_and_reasons() {
        let cx = Context {
            command: "cargo xtask bench --vs-linux --rounds 3".into(),
            date: "2026-01-01".into(),
            kernel: "linux-image-6.1.0-48-amd64 (6.1.172-1)".into(),
            machine: "-machine q35".into(),
            rounds: 3,
        };
        let doc = render(&measured(), &cx);
        assert!(doc.starts_with(BEGIN) && doc.trim_end().ends_with(END));
        // 4 KiB: ours median 5000 (4000-6000), strict 5000 (4000-5000), ratio 1.00, lazy 2500.
        assert!(
            doc.contains(
                "| 4 KiB map+unmap (`map_unmap_4k_strict` / `map_unmap_4k`) | 5000 (4000-6000) \
                 | 5000 (4000-5000) | 1.00x (1/3 rounds faster) | 2500 (2000-3000) |"
            ),
            "{doc}"
        );
        // 64 KiB: no Linux figure, and the cell says why.
        assert!(
            doc.contains("| 15000 (12000-18000) | - (the Linux module printed no such row) | - |")
        );
        assert!(doc.contains("strict runs `strict mode`, lazy runs `lazy mode`"));
        assert!(doc.contains("| 4 KiB map+unmap | 3.00 | 1.00 |"), "{doc}");
        assert!(doc.contains("| 64 KiB map+unmap | - | - |"));
    }

    #[test]
    fn the_section_is_replaced_or_appended_and_survives() {
        let section = format!("{BEGIN}\nnew\n{END}\n");
        let doc = "# Performance\n\nbody\n";
        let once = splice_section(doc, &section);
        assert_eq!(
            once,
            format!("# Performance\n\nbody\n\n{BEGIN}\nnew\n{END}\n")
        );
        let again = splice_section(
            &once.replace("new", "old"),
            &format!("{BEGIN}\nnewer\n{END}"),
        );
        assert_eq!(
            again,
            format!("# Performance\n\nbody\n\n{BEGIN}\nnewer\n{END}\n")
        );
        assert_eq!(
            extract_section(&again),
            Some(format!("{BEGIN}\nnewer\n{END}").as_str())
        );
        assert_eq!(extract_section(doc), None);
    }
}
