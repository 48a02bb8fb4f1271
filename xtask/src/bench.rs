//! `cargo xtask bench`: host microbenchmarks (criterion, ns/op) and in-kernel benchmarks (TSC
//! cycles/op on a real VT-d domain under QEMU), written to `docs/PERFORMANCE.md` as tables,
//! ratios and scaling curves. Never a pass/fail timing assertion.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use tests_qemu::Topology;

use super::linux::{self, compare};

/// One criterion result.
#[derive(Debug, Clone)]
pub struct HostResult {
    pub name: String,
    pub ns: f64,
    pub spread: f64,
}

/// One in-kernel result.
#[derive(Debug, Clone)]
pub struct KernelResult {
    pub name: String,
    pub ops: u64,
    pub cycles: u64,
    pub invalidations: f64,
    /// Completed invalidation waits per operation (absent in older output).
    pub waits: Option<f64>,
    /// VT-d register accesses over the whole row, by the unit's own counter (`registers=`;
    /// absent when the kernel prints none).
    pub registers: Option<u64>,
    /// The unit's queued-invalidation phases per operation, on rows that timed them.
    pub queue: Option<QueuePhases>,
}

/// Cycles per operation of a unit's queued-invalidation phases (`queue_*=` of a `KBENCH` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePhases {
    /// Finding space and writing the descriptors.
    pub descriptor_write: u64,
    /// The fence and the IQT write.
    pub submission: u64,
    /// Polling the wait descriptor's status word.
    pub wait: u64,
}

impl QueuePhases {
    /// The three together.
    pub fn total(&self) -> u64 {
        self.descriptor_write + self.submission + self.wait
    }
}

impl KernelResult {
    /// Register accesses per operation, when counted.
    pub fn registers_per_op(&self) -> Option<f64> {
        self.registers.map(|r| r as f64 / self.ops.max(1) as f64)
    }
}

fn number(s: &str) -> Option<f64> {
    s.replace(',', "").parse().ok()
}

/// Parses criterion's `--output-format bencher` lines: `test NAME ... bench: N ns/iter (+/- M)`.
pub fn parse_bencher(out: &str) -> Vec<HostResult> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, rest) = rest.split_once(" ... bench:")?;
            let mut words = rest.split_whitespace();
            let ns = number(words.next()?)?;
            let spread = rest
                .split("(+/-")
                .nth(1)
                .and_then(|s| number(s.trim().trim_end_matches(')')));
            Some(HostResult {
                name: name.trim().to_string(),
                ns,
                spread: spread.unwrap_or(0.0),
            })
        })
        .collect()
}

/// Parses the kernel's `KBENCH name ops=N cycles_per_op=C invalidations_per_op=I [waits_per_op=W]
/// [registers=R] [queue_descriptor_write=D queue_submission=S queue_wait=W]` lines.
pub fn parse_kbench(log: &str) -> Vec<KernelResult> {
    log.lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').strip_prefix("KBENCH ")?;
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_string();
            let field = |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key));
            Some(KernelResult {
                name,
                ops: field("ops=")?.parse().ok()?,
                cycles: field("cycles_per_op=")?.parse().ok()?,
                invalidations: field("invalidations_per_op=")?.parse().ok()?,
                waits: field("waits_per_op=").and_then(|w| w.parse().ok()),
                registers: field("registers=").and_then(|r| r.parse().ok()),
                queue: (|| {
                    Some(QueuePhases {
                        descriptor_write: field("queue_descriptor_write=")?.parse().ok()?,
                        submission: field("queue_submission=")?.parse().ok()?,
                        wait: field("queue_wait=")?.parse().ok()?,
                    })
                })(),
            })
        })
        .collect()
}

fn criterion(package: &str, bench: &str) -> Result<Vec<HostResult>, String> {
    let out = cargo_bench(package, bench, &["--output-format", "bencher"])?;
    Ok(parse_bencher(&out))
}

/// Runs criterion benchmark `bench` of `package` (short warm-up and measurement, then
/// `criterion_args`) and returns its stdout.
pub fn cargo_bench(package: &str, bench: &str, criterion_args: &[&str]) -> Result<String, String> {
    println!("bench: criterion {package}/{bench} ...");
    let out = super::cargo()
        .current_dir(super::root())
        .args(["bench", "--quiet", "-p", package, "--bench", bench, "--"])
        .args(criterion_args)
        .args(["--warm-up-time", "0.5", "--measurement-time", "2"])
        .output()
        .map_err(|e| format!("running cargo bench: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo bench -p {package} --bench {bench} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs everything and writes docs/PERFORMANCE.md. The kernel part boots the `cargo xtask run`
/// topology (edu + ivshmem behind a root port). The "Versus Linux" section of the previous file
/// is kept; `--vs-linux` regenerates only that section (see [`vs_linux`]).
pub fn bench(args: &[String]) -> Result<std::process::ExitCode, String> {
    if args.iter().any(|a| a == "--vs-linux") {
        return vs_linux(args);
    }
    if args.iter().any(|a| a == "--allocator-only") {
        return super::bench_allocator::only(&performance_md(), &today());
    }
    for a in args {
        if !matches!(a.as_str(), "--host-only" | "--kernel-only") {
            return Err(format!("unknown option `{a}` for bench (see --help)"));
        }
    }
    let host_only = args.iter().any(|a| a == "--host-only");
    let kernel_only = args.iter().any(|a| a == "--kernel-only");
    let mut host = Vec::new();
    if !kernel_only {
        host.extend(criterion("dma", "dma")?.into_iter().map(|r| ("dma", r)));
        host.extend(
            criterion("iommu-vtd", "map_unmap")?
                .into_iter()
                .map(|r| ("iommu-vtd", r)),
        );
    }
    let mut kernel = Vec::new();
    if !host_only {
        super::qemu::ensure_installed()?;
        let image = super::build_kernel()?;
        println!("bench: in-kernel benchmarks under QEMU ...");
        let topo = Topology::default_run();
        let (log, exit) =
            super::qemu::run_captured(&image, &topo, "bench", Duration::from_secs(600))?;
        kernel = parse_kbench(&log);
        // The same device interrupt without remapping: its compatibility-format latency row.
        let (off, off_exit) = super::qemu::run_captured(
            &image,
            &topo,
            "bench vtd.intremap=off",
            Duration::from_secs(600),
        )?;
        let ok = |e| e == tests_qemu::Exit::Status(tests_qemu::QEMU_SUCCESS);
        kernel.extend(
            parse_kbench(&off)
                .into_iter()
                .filter(|r| r.name == "irq_edu_msi_latency_compat"),
        );
        if kernel.is_empty() || !ok(exit) || !ok(off_exit) {
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            return Err(format!(
                "in-kernel benchmarks failed ({exit:?}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    let mut doc = render(&host, &kernel, &cpu_model(), &today(), args);
    let path = performance_md();
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    match host_only {
        false => {
            let image = super::build_kernel()?;
            doc = super::bench_nvme::splice_section(&doc, &super::bench_nvme::measure(&image)?);
        }
        true => {
            if let Some(section) = super::bench_nvme::extract_section(&old) {
                doc = super::bench_nvme::splice_section(&doc, section);
            }
        }
    }
    if let Some(section) = std::fs::read_to_string(&path)
        .ok()
        .as_deref()
        .and_then(compare::extract_section)
    {
        doc = compare::splice_section(&doc, section);
    }
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    doc = super::bench_allocator::update(&doc, &previous, !kernel_only, &today())?;
    std::fs::create_dir_all(path.parent().expect("docs dir")).map_err(|e| e.to_string())?;
    std::fs::write(&path, doc).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!(
        "bench: wrote {} ({} host, {} in-kernel figures)",
        path.display(),
        host.len(),
        kernel.len()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn performance_md() -> std::path::PathBuf {
    super::root().join("docs").join("PERFORMANCE.md")
}

/// Parses `--vs-linux [--rounds N]`.
fn rounds_of(args: &[String]) -> Result<usize, String> {
    let mut rounds = 5;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--vs-linux" => {}
            "--rounds" => {
                let v = super::take_value(args, &mut i, "--rounds")?;
                rounds = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --rounds {v}"))?;
            }
            other => return Err(format!("unknown option `{other}` for bench --vs-linux")),
        }
        i += 1;
    }
    Ok(rounds)
}

/// `cargo xtask bench --vs-linux [--rounds N]`: per round, our in-kernel benchmarks, then Linux
/// with `iommu.strict=1`, then Linux with `iommu.strict=0`, all on [`Topology::default_run`];
/// writes the "Versus Linux" section of docs/PERFORMANCE.md and keeps the rest of the file.
/// Every boot's log is kept in `target/linux-baseline/logs/`.
fn vs_linux(args: &[String]) -> Result<std::process::ExitCode, String> {
    let rounds = rounds_of(args)?;
    super::qemu::ensure_installed()?;
    let base = linux::prepare()?;
    let image = super::build_kernel()?;
    let topo = Topology::default_run();
    let logs = base.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let mut m = compare::Measured::default();
    let mut load = Vec::new();
    for round in 1..=rounds {
        println!("bench: vs-linux round {round}/{rounds}: ours ...");
        load.extend(load_average());
        let (log, exit) =
            super::qemu::run_captured(&image, &topo, "bench", Duration::from_secs(600))?;
        let _ = std::fs::write(logs.join(format!("ours-{round}.log")), &log);
        let rows = parse_kbench(&log);
        let hz = compare::parse_tsc_hz(&log);
        match (hz, rows.is_empty(), exit) {
            (Some(hz), false, tests_qemu::Exit::Status(tests_qemu::QEMU_SUCCESS)) => m
                .ours
                .push((rows.into_iter().map(|r| (r.name, r.cycles)).collect(), hz)),
            _ => {
                return Err(format!(
                    "our in-kernel benchmarks failed in round {round} ({exit:?}); log: {}",
                    logs.join(format!("ours-{round}.log")).display()
                ))
            }
        }
        for (strict, mode) in [(true, "strict"), (false, "lazy")] {
            println!("bench: vs-linux round {round}/{rounds}: Linux {mode} ...");
            load.extend(load_average());
            let path = logs.join(format!("linux-{mode}-{round}.log"));
            let log = linux::boot::run(
                &base.assets.vmlinux,
                &base.initrd,
                &topo,
                strict,
                "",
                &path,
                Duration::from_secs(300),
            )?;
            let run = compare::parse_linux(&log).map_err(|e| {
                format!("Linux {mode}, round {round}: {e} (log: {})", path.display())
            })?;
            let want = if strict { "strict mode" } else { "lazy mode" };
            if !run.policy.starts_with(want) {
                return Err(format!(
                    "Linux {mode}, round {round}: the kernel logged `{}`, not `{want}`",
                    run.policy
                ));
            }
            if strict {
                m.strict.push(run);
            } else {
                m.lazy.push(run);
            }
        }
    }
    m.accesses = Some(traced_runs(&image, &base, &topo, &logs)?);
    let cx = compare::Context {
        command: format!("cargo xtask bench {}", args.join(" ")),
        date: today(),
        kernel: format!("{} ({})", base.assets.package, base.assets.version),
        machine: topo.qemu_args().join(" "),
        rounds,
        load,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    let section = compare::render(&m, &cx);
    let path = performance_md();
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Performance\n".into());
    std::fs::write(&path, compare::splice_section(&old, &section))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    print!("{section}");
    println!("bench: wrote the vs-linux section of {}", path.display());
    Ok(std::process::ExitCode::SUCCESS)
}

/// The host's 1-minute load average (`/proc/loadavg`), if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One untimed run of ours and one of Linux strict with QEMU's VT-d register and serial trace
/// events: register accesses per operation.
fn traced_runs(
    image: &std::path::Path,
    base: &linux::Baseline,
    topo: &Topology,
    logs: &std::path::Path,
) -> Result<compare::Accesses, String> {
    let traced = |file: &std::path::Path| {
        let _ = std::fs::remove_file(file);
        let mut t = topo.clone();
        t.devices.extend(linux::trace::qemu_args(file));
        t
    };
    let read = |file: &std::path::Path| {
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))
    };
    println!("bench: vs-linux: traced run of ours (VT-d register accesses) ...");
    let ours_trace = logs.join("ours-trace.log");
    let (log, exit) = super::qemu::run_captured(
        image,
        &traced(&ours_trace),
        "bench",
        Duration::from_secs(600),
    )?;
    let _ = std::fs::write(logs.join("ours-traced-console.log"), &log);
    if exit != tests_qemu::Exit::Status(tests_qemu::QEMU_SUCCESS) {
        return Err(format!("the traced run of ours failed ({exit:?})"));
    }
    let traced_ours =
        linux::trace::marked_rows(&linux::trace::segments(&read(&ours_trace)?), "KBENCH");
    // The unit's own counter over the same timed operations must agree with QEMU's trace.
    let rows = parse_kbench(&log);
    let unit: Vec<(String, u64)> = rows
        .iter()
        .filter_map(|r| Some((r.name.clone(), r.registers?)))
        .collect();
    let agreed = linux::trace::check_unit_counter(&unit, &traced_ours)
        .map_err(|e| format!("{e} (trace: {})", ours_trace.display()))?;
    println!(
        "bench: vs-linux: the unit's register counter agrees with QEMU's trace on {agreed} rows"
    );
    let ours_unit = rows
        .iter()
        .filter(|r| traced_ours.iter().any(|t| t.name == r.name))
        .filter_map(|r| Some((r.name.clone(), r.registers_per_op()?)))
        .collect();
    println!("bench: vs-linux: traced run of Linux strict ...");
    let linux_trace = logs.join("linux-strict-trace.log");
    linux::boot::run(
        &base.assets.vmlinux,
        &base.initrd,
        &traced(&linux_trace),
        true,
        "loglevel=7",
        &logs.join("linux-strict-traced-console.log"),
        Duration::from_secs(300),
    )?;
    let linux = linux::trace::per_op(&linux::trace::marked_rows(
        &linux::trace::segments(&read(&linux_trace)?),
        "LBENCH",
    ));
    if traced_ours.is_empty() || linux.is_empty() {
        return Err("the traced runs printed no rows".into());
    }
    Ok(compare::Accesses {
        ours: linux::trace::per_op(&traced_ours),
        ours_unit,
        agreed,
        linux,
    })
}

/// The prefix of the kernel's per-phase rows (kernel/src/bench.rs `phases`).
const PHASE: &str = "phase_4k_";

/// The per-phase breakdown of a strict 4 KiB map+unmap, from the `phase_4k_*` rows.
fn phase_table(d: &mut String, kernel: &[KernelResult]) {
    let get = |n: &str| kernel.iter().find(|r| r.name == format!("{PHASE}{n}"));
    let cycles = |n: &str| get(n).map(|r| r.cycles);
    let (Some(map), Some(unmap)) = (cycles("map_phys"), cycles("unmap")) else {
        return;
    };
    let total = map + unmap;
    let _ = writeln!(
        d,
        "\n### Where a strict 4 KiB map+unmap spends its cycles\n\n\
         Each phase timed with the TSC around the public call that performs it, interleaved in \
         the order a map+unmap runs them, over the same iterations as the device's whole \
         `map_phys` and `unmap` (rows `{PHASE}*`); each figure is the median over the \
         iterations, so a host preemption of QEMU inside one phase does not count. The IOVA phase runs on an `IovaAllocator` \
         over the device domain's aperture, the page-table phases and the domain's part of the \
         flush on a scratch domain of the same unit (attached to nothing); the unit's queue \
         phases are its own phase timing (`VtdUnit::set_phase_timing`) during the device's \
         strict unmaps. What they leave of the whole is the `dma` layer's own work (checks, the \
         domain's locks, mapping bookkeeping).\n\n\
         | phase | measured around | cycles/op | share of map+unmap |\n|---|---|---:|---:|"
    );
    let share = |c: i64| {
        if total > 0 {
            format!("{:.0} %", c as f64 * 100.0 / total as f64)
        } else {
            "-".to_string()
        }
    };
    let mut rows: Vec<(&str, &str, u64)> = Vec::new();
    for (what, call, row) in [
        (
            "IOVA allocation + free",
            "`IovaAllocator::alloc` + `free`",
            "iova",
        ),
        (
            "page-table write + cache flush",
            "`IommuDomain::map` + `sync_map`",
            "pt_map",
        ),
        (
            "page-table clear + cache flush",
            "`IommuDomain::unmap`",
            "pt_unmap",
        ),
    ] {
        if let Some(c) = cycles(row) {
            rows.push((what, call, c));
        }
    }
    let flush = get("flush");
    let device_queue = get("unmap").and_then(|r| r.queue);
    match (flush, device_queue) {
        (Some(f), Some(q)) => {
            let own = f.queue.map_or(0, |s| s.total());
            rows.push((
                "invalidation, the domain's part (gather to requests, locks)",
                "`IommuDomain::flush` less the unit's queue phases in it",
                f.cycles.saturating_sub(own),
            ));
            rows.push((
                "invalidation: finding queue space + descriptor write",
                "the unit's phase timing, device `unmap`",
                q.descriptor_write,
            ));
            rows.push((
                "invalidation: submission (fence + IQT write; QEMU runs the queue inside it)",
                "the unit's phase timing, device `unmap`",
                q.submission,
            ));
            rows.push((
                "invalidation: wait for the wait descriptor's status write",
                "the unit's phase timing, device `unmap`",
                q.wait,
            ));
        }
        (Some(f), None) => rows.push((
            "invalidation: descriptor write, submission, wait",
            "`IommuDomain::flush`",
            f.cycles,
        )),
        _ => {}
    }
    let mut sum = 0;
    for (what, call, c) in &rows {
        sum += c;
        let _ = writeln!(d, "| {what} | {call} | {c} | {} |", share(*c as i64));
    }
    let rest = total as i64 - sum as i64;
    let _ = writeln!(
        d,
        "| the `dma` layer's own work (the rest) | - | {rest} | {} |",
        share(rest)
    );
    let _ = writeln!(
        d,
        "| **whole map+unmap** | `DmaDevice::map_phys` ({map}) + `Mapping::unmap` ({unmap}) | {total} | 100 % |"
    );
    if let (Some(s), Some(q)) = (flush.and_then(|f| f.queue), device_queue) {
        let _ = writeln!(
            d,
            "\nThe unit's queue phases in the scratch domain's flush: {} + {} + {} cycles \
             (descriptor write + submission + wait), against {} + {} + {} in the device's unmap.",
            s.descriptor_write, s.submission, s.wait, q.descriptor_write, q.submission, q.wait
        );
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// The document (pure, so it is unit-tested).
pub fn render(
    host: &[(&str, HostResult)],
    kernel: &[KernelResult],
    cpu: &str,
    date: &str,
    args: &[String],
) -> String {
    let mut d = String::new();
    let cmd = if args.is_empty() {
        "cargo xtask bench".to_string()
    } else {
        format!("cargo xtask bench {}", args.join(" "))
    };
    let _ = writeln!(d, "# Performance\n");
    let _ = writeln!(
        d,
        "Generated by `{cmd}` on {date} ({cpu}, 2 cores, QEMU 7.2 under TCG: no KVM)."
    );
    let _ = writeln!(d, "Do not edit by hand: re-run the command. Figures are for comparison between operations and");
    let _ = writeln!(
        d,
        "for scaling; they are not timed assertions and no test depends on them.\n"
    );
    if !host.is_empty() {
        let _ = writeln!(d, "## Host microbenchmarks (criterion, ns per iteration)\n");
        let _ = writeln!(d, "The `dma` crate over its in-memory fake IOMMU domain, and `iommu-vtd` over its model of");
        let _ = writeln!(
            d,
            "QEMU's VT-d (real page-table code, emulated registers and queue).\n"
        );
        let _ = writeln!(
            d,
            "| crate | benchmark | ns/iter | ± |\n|---|---|---:|---:|"
        );
        for (krate, r) in host {
            let _ = writeln!(
                d,
                "| {krate} | `{}` | {:.0} | {:.0} |",
                r.name, r.ns, r.spread
            );
        }
        let live: Vec<_> = host
            .iter()
            .filter(|(_, r)| r.name.starts_with("iova_alloc_free/"))
            .collect();
        if !live.is_empty() {
            let _ = writeln!(
                d,
                "\n### Scaling with live allocations (ratio to 1 live allocation)\n"
            );
            let _ = writeln!(
                d,
                "| path | 1 | 10k | 1M | 1M / 1 |\n|---|---:|---:|---:|---:|"
            );
            let mut paths: Vec<String> = Vec::new();
            for (_, r) in &live {
                if let Some(p) = r.name.split('/').nth(1) {
                    if !paths.iter().any(|q| q == p) {
                        paths.push(p.to_string());
                    }
                }
            }
            for p in paths {
                let at = |n: &str| {
                    live.iter()
                        .find(|(_, r)| r.name == format!("iova_alloc_free/{p}/{n}"))
                        .map(|(_, r)| r.ns)
                };
                if let (Some(a), Some(b), Some(c)) = (at("1"), at("10000"), at("1000000")) {
                    let _ = writeln!(
                        d,
                        "| `{p}` | {a:.0} ns | {b:.0} ns | {c:.0} ns | {} |",
                        ratio(c, a)
                    );
                }
            }
        }
    }
    if !kernel.is_empty() {
        let _ = writeln!(
            d,
            "\n## In-kernel (QEMU q35 + intel-iommu + edu), TSC cycles per operation\n"
        );
        let _ = writeln!(d, "The DMA API on a real (emulated) VT-d unit: strict unmaps wait for the invalidation wait");
        let _ = writeln!(
            d,
            "descriptor. Requests (context/IOTLB invalidation descriptors) and waits (completed"
        );
        let _ = writeln!(
            d,
            "invalidation submissions) are counted by the unit itself.\n"
        );
        let counted = kernel.iter().any(|r| r.registers.is_some());
        let _ = writeln!(
            d,
            "| operation | ops | cycles/op | invalidation requests/op | waits/op |{}\n|---|---:|---:|---:|---:|{}",
            if counted { " VT-d register accesses/op |" } else { "" },
            if counted { "---:|" } else { "" },
        );
        for r in kernel.iter().filter(|r| !r.name.starts_with(PHASE)) {
            let waits = r.waits.map_or("-".to_string(), |w| format!("{w:.2}"));
            let regs = if counted {
                format!(
                    " {} |",
                    r.registers_per_op()
                        .map_or("-".to_string(), |v| format!("{v:.2}"))
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                d,
                "| `{}` | {} | {} | {:.2} | {waits} |{regs}",
                r.name, r.ops, r.cycles, r.invalidations
            );
        }
        if counted {
            let _ = writeln!(
                d,
                "\nVT-d register accesses are counted by the unit itself over each row's timed \
                 operations; `cargo xtask bench --vs-linux` checks them against QEMU's trace."
            );
        }
        let get = |n: &str| kernel.iter().find(|r| r.name == n);
        if let Some(s) = get("map_unmap_4k_strict") {
            let per = |r: &KernelResult| {
                format!(
                    "{:.2} invalidation requests and {} waits per mapping",
                    r.invalidations,
                    r.waits.map_or("-".to_string(), |w| format!("{w:.2}"))
                )
            };
            let _ = writeln!(d);
            for (what, row) in [
                ("Batched (64 unmaps, one flush)", "map_unmap_4k_batched_64"),
                (
                    "Batched (256 unmaps, one flush)",
                    "map_unmap_4k_batched_256",
                ),
                (
                    "Deferred (flush after 256 unmaps or 10 ms, flushes included)",
                    "map_unmap_4k_deferred",
                ),
            ] {
                if let Some(b) = get(row) {
                    let _ = writeln!(
                        d,
                        "- {what} vs strict: {} the cycles per mapping ({}; strict: {}).",
                        ratio(b.cycles as f64, s.cycles as f64),
                        per(b),
                        per(s)
                    );
                }
            }
        }
        phase_table(&mut d, kernel);
        let live: Vec<_> = [1, 100, 10_000]
            .iter()
            .filter_map(|n| get(&format!("map_unmap_4k_with_{n}_live")).map(|r| (n, r)))
            .collect();
        if let Some((_, base)) = live.first() {
            let _ = writeln!(d, "\n### Map+unmap cost vs live mappings in the domain\n\n| live mappings | cycles/op | ratio to 1 live |\n|---:|---:|---:|");
            for (n, r) in &live {
                let _ = writeln!(
                    d,
                    "| {n} | {} | {} |",
                    r.cycles,
                    ratio(r.cycles as f64, base.cycles as f64)
                );
            }
            let _ = writeln!(d, "\nThe cost of a map+unmap does not depend on how many mappings the domain holds: the IOVA");
            let _ = writeln!(d, "allocator is O(log n) with per-size caches, and page tables are only freed when an unmap");
            let _ = writeln!(
                d,
                "covers their whole region, so a lone mapping does not churn table pages."
            );
        }
        let inv: Vec<_> = kernel
            .iter()
            .filter(|r| r.name.starts_with("unmap_") && r.name.ends_with("_contiguous_pages"))
            .collect();
        if !inv.is_empty() {
            let _ = writeln!(d, "\n### Invalidations for unmapping N contiguous 4 KiB pages\n\n| N | invalidation requests | log2 N |\n|---:|---:|---:|");
            for r in inv {
                let n: u64 = r
                    .name
                    .trim_start_matches("unmap_")
                    .trim_end_matches("_contiguous_pages")
                    .parse()
                    .unwrap_or(0);
                let _ = writeln!(
                    d,
                    "| {n} | {:.0} | {:.1} |",
                    r.invalidations,
                    (n.max(1) as f64).log2()
                );
            }
            let _ = writeln!(
                d,
                "\nPage-selective invalidations with address masks: O(log N) requests, one wait."
            );
        }
        let rev: Vec<_> = kernel
            .iter()
            .filter(|r| r.name.starts_with("revoke_with_"))
            .collect();
        if let Some(first) = rev.first() {
            let _ = writeln!(
                d,
                "\n### Revoke latency vs importers (one mapping each)\n\n\
                 | importers | cycles | ratio to 1 importer | invalidation requests | waits |\n|---:|---:|---:|---:|---:|"
            );
            for r in &rev {
                let n = r
                    .name
                    .trim_start_matches("revoke_with_")
                    .trim_end_matches("_importers");
                let _ = writeln!(
                    d,
                    "| {n} | {} | {} | {:.0} | {} |",
                    r.cycles,
                    ratio(r.cycles as f64, first.cycles as f64),
                    r.invalidations,
                    r.waits.map_or("-".to_string(), |w| format!("{w:.0}"))
                );
            }
            let _ = writeln!(
                d,
                "\nRevoke notifies every importer, unmaps every mapping into one batch and completes one \
                 IOTLB invalidation per IOMMU domain before it returns: the page-table work grows with \
                 importers, the number of invalidation waits does not."
            );
        }
        guest_section(&mut d, kernel);
    }
    d
}

/// The guest address space and assignment rows (issue 14): map cost against the leaves the
/// plan wrote, and reassignment latency.
fn guest_section(d: &mut String, kernel: &[KernelResult]) {
    let maps: Vec<_> = kernel
        .iter()
        .filter(|r| r.name.starts_with("guest_map_"))
        .collect();
    if maps.is_empty() {
        return;
    }
    let _ = writeln!(
        d,
        "\n### Guest address spaces (hypervisor embedding)\n\n\
         | guest RAM mapped | leaf entries written | cycles | cycles per entry |\n|---|---:|---:|---:|"
    );
    for r in &maps {
        // `guest_map_<G>GiB_<N>_leaves`
        let rest = r.name.trim_start_matches("guest_map_");
        let (size, leaves) = rest
            .trim_end_matches("_leaves")
            .split_once('_')
            .unwrap_or((rest, "?"));
        let per = leaves
            .parse::<f64>()
            .ok()
            .filter(|n| *n > 0.0)
            .map_or("-".to_string(), |n| format!("{:.0}", r.cycles as f64 / n));
        let _ = writeln!(d, "| {size} | {leaves} | {} | {per} |", r.cycles);
    }
    for (name, what) in [
        (
            "guest_switch_atomic",
            "Atomic switch of a group between two guest domains (128-bit context-entry store, context cache and old IOTLB invalidated)",
        ),
        (
            "guest_reassign_full",
            "Whole reassignment (bus mastering off, previous guest's interrupts, switch; no reset: edu on bus 0 has none)",
        ),
    ] {
        if let Some(r) = kernel.iter().find(|r| r.name == name) {
            let _ = writeln!(
                d,
                "\n{what}: {} cycles, {:.0} invalidation requests, {} waits.",
                r.cycles,
                r.invalidations,
                r.waits.map_or("-".to_string(), |w| format!("{w:.0}"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bencher_and_kbench() {
        let h = parse_bencher("noise\ntest a/b ... bench:      14,323 ns/iter (+/- 2,163)\n\ntest c ... bench: 5 ns/iter (+/- 0)\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, "a/b");
        assert_eq!(h[0].ns, 14323.0);
        assert_eq!(h[0].spread, 2163.0);
        let k = parse_kbench(
            "KBENCH x ops=10 cycles_per_op=42 invalidations_per_op=1.50\r\nKBENCH bad\n",
        );
        assert_eq!(k.len(), 1);
        assert_eq!((k[0].ops, k[0].cycles, k[0].invalidations), (10, 42, 1.5));
    }

    #[test]
    fn vs_linux_rounds_option() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(rounds_of(&a(&["--vs-linux"])), Ok(5));
        assert_eq!(rounds_of(&a(&["--vs-linux", "--rounds", "3"])), Ok(3));
        assert!(rounds_of(&a(&["--vs-linux", "--rounds", "0"])).is_err());
        assert!(rounds_of(&a(&["--vs-linux", "--rounds"])).is_err());
        assert!(rounds_of(&a(&["--vs-linux", "--host-only"])).is_err());
    }

    fn row(name: &str, cycles: u64, invalidations: f64, waits: Option<f64>) -> KernelResult {
        KernelResult {
            name: name.into(),
            ops: 10,
            cycles,
            invalidations,
            waits,
            registers: None,
            queue: None,
        }
    }

    #[test]
    fn renders_ratios_from_the_figures() {
        let k = vec![
            row("map_unmap_4k_strict", 100, 1.0, None),
            row("map_unmap_4k_batched_64", 25, 0.1, None),
            row("map_unmap_4k_deferred", 15, 0.01, Some(0.0)),
            row("unmap_256_contiguous_pages", 9, 8.0, None),
            row("revoke_with_1_importers", 10, 1.0, None),
            row("revoke_with_4_importers", 30, 1.0, Some(1.0)),
        ];
        let doc = render(&[], &k, "cpu", "2026-01-01", &[]);
        assert!(doc.contains("- Batched (64 unmaps, one flush) vs strict: 0.25x"));
        assert!(doc.contains("vs strict: 0.15x the cycles per mapping (0.01 invalidation"));
        assert!(doc.contains("| 256 | 8 | 8.0 |"));
        assert!(doc.contains("| 4 | 30 | 3.00x | 1 | 1 |"), "{doc}");
        // No register counts: no such column.
        assert!(!doc.contains("register accesses/op"));
        assert!(!doc.contains("Where a strict 4 KiB map+unmap spends"));
    }

    #[test]
    fn renders_the_phases_and_the_unit_register_counts() {
        let mut strict = row("map_unmap_4k_strict", 100, 1.0, Some(1.0));
        strict.registers = Some(30);
        let mut flush = row("phase_4k_flush", 40, 1.0, None);
        flush.queue = Some(QueuePhases {
            descriptor_write: 5,
            submission: 10,
            wait: 5,
        });
        let mut unmap = row("phase_4k_unmap", 55, 1.0, None);
        unmap.queue = Some(QueuePhases {
            descriptor_write: 4,
            submission: 12,
            wait: 4,
        });
        let mut k = vec![
            strict,
            row("phase_4k_iova", 10, 0.0, None),
            row("phase_4k_pt_map", 20, 0.0, None),
            row("phase_4k_pt_unmap", 10, 0.0, None),
            flush,
            row("phase_4k_map_phys", 45, 0.0, None),
            unmap,
        ];
        let doc = render(&[], &k, "cpu", "2026-01-01", &[]);
        // 30 accesses over 10 operations; rows without a count show a dash.
        assert!(
            doc.contains("| `map_unmap_4k_strict` | 10 | 100 | 1.00 | 1.00 | 3.00 |"),
            "{doc}"
        );
        // Phase rows are not in the main table but in their own, as shares of 45 + 55 = 100:
        // the domain's part of the flush is 40 - 20 (its own queue phases); the queue phases are
        // the device unmap's 4 + 12 + 4; the rest 100 - (10 + 20 + 10 + 20 + 20) = 20.
        assert!(!doc.contains("| `phase_4k_iova` |"));
        assert!(doc.contains("queue phases in it | 20 | 20 % |"), "{doc}");
        assert!(doc.contains("QEMU runs the queue inside it) | the unit's phase timing, device `unmap` | 12 | 12 % |"), "{doc}");
        assert!(doc.contains("the rest) | - | 20 | 20 % |"), "{doc}");
        assert!(doc.contains("| 100 | 100 % |"));
        assert!(doc.contains("flush: 5 + 10 + 5 cycles (descriptor write + submission + wait), against 4 + 12 + 4"), "{doc}");
        // Medians do not add up exactly; the rest says what they leave.
        // Without the unit's phase timing the flush is one phase: the rest is 100 - 80.
        for r in &mut k {
            r.queue = None;
        }
        let doc = render(&[], &k, "cpu", "2026-01-01", &[]);
        assert!(
            doc.contains("| `IommuDomain::flush` | 40 | 40 % |"),
            "{doc}"
        );
        assert!(doc.contains("the rest) | - | 20 | 20 % |"), "{doc}");
        let k = parse_kbench(
            "KBENCH a ops=4 cycles_per_op=1 invalidations_per_op=0 registers=6 \
             queue_descriptor_write=1 queue_submission=2 queue_wait=3\n",
        );
        assert_eq!(k[0].registers_per_op(), Some(1.5));
        assert_eq!(k[0].queue.map(|q| q.total()), Some(6));
    }
}
