//! `cargo xtask`: build the kernel, boot it in QEMU, read its serial log, report.
//!
//! - `cargo xtask run [--bare | --topology NAME] [--no-iommu | --iommu OPTS] [--mem SIZE]
//!   [--cmdline STR] [--timeout SECS] [-- QEMU_ARGS...]`
//! - `cargo xtask test [--filter TEXT] [--host-only | --qemu-only] [--jobs N] [--list]`
//!
//! The kernel is built for `x86_64-unknown-linux-gnu` (the only standard library installed) as a
//! freestanding static ELF: codegen flags come from here, link flags from `kernel/build.rs`, and it
//! goes to its own target directory so host and kernel builds never invalidate each other.

mod bench;
mod modgraph;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use tests_qemu::{Exit, Scenario, Topology};

const HELP: &str = "\
cargo xtask <command> [options]

Commands:
  run    Build the kernel and boot it on the default topology (q35 + intel-iommu + edu +
         ivshmem behind a pcie-root-port), streaming the serial console. QEMU's own messages
         are shown prefixed `qemu: `. Exit status: 0 when the kernel reports success, 1 when
         it reports failure, 3 when QEMU ends without a kernel exit (triple fault, QEMU
         error), 124 when --timeout expired.
    --bare              boot q35 (+ intel-iommu) with only the devices given after --
                        (no demo devices: your id=rp1 or chassis=1 cannot collide with ours)
    --topology NAME     boot a scenario's topology (names: cargo xtask test --list),
                        with its generated ACPI tables
    --no-iommu          boot without the intel-iommu device (not with --iommu)
    --iommu OPTS        properties for intel-iommu, e.g. aw-bits=48,caching-mode=on
    --mem SIZE          guest memory, QEMU -m syntax N[K|M|G|T] (default 512M; at least 40M)
    --cmdline STR       kernel command line (e.g. \"test=boot\" to run an in-kernel suite;
                        at most 1024 bytes, the kernel's buffer)
    --timeout SECS      kill QEMU after SECS seconds (SECS > 0; leave it out for no limit)
    -- ARGS...          extra QEMU arguments, e.g. -- -device ivshmem-plain,memdev=m ...

  test   Run the host unit tests of every crate, then every QEMU scenario in tests-qemu/,
         one line per scenario, ending with `N passed, N failed`. Non-zero exit on any failure.
    --filter TEXT       only scenarios whose name contains TEXT (host tests still run)
    --host-only         only the host unit tests
    --qemu-only         only the QEMU scenarios
    --jobs N            QEMU scenarios run in parallel (default: number of CPUs)
    --list              list the scenarios and exit

  bench  Host microbenchmarks (criterion: dma, iommu-vtd) and in-kernel benchmarks (TSC cycles
         on a VT-d domain in QEMU), written to docs/PERFORMANCE.md.
    --host-only | --kernel-only

  lint   cargo fmt --check, clippy -D warnings (host crates with all targets; the kernel binary
         with the kernel's own flags), rustdoc -D warnings and `cargo package --no-verify` of
         the library crates. CI runs it before `test`.

  package  `cargo package` of every library crate, each one built from its package alone
         (path dependencies through cargo's local overlay). CI runs it after `lint`.

Serial logs of every scenario are kept in target/qemu-logs/<scenario>.log.
When qemu-system-x86_64 is missing it is installed with apt-get (as root), or the command to
install it is printed.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("lint") => lint(),
        Some("package") => package(),
        Some("bench") => bench::bench(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(2)
        }
    }
}

/// Codegen flags for the freestanding kernel (link flags come from kernel/build.rs).
const KERNEL_RUSTFLAGS: &str =
    "-C relocation-model=static -C no-redzone -C panic=abort -C force-frame-pointers=yes";

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the kernel ELF and returns its path.
fn build_kernel() -> Result<PathBuf, String> {
    let root = root();
    let target_dir = root.join("target").join("kernel");
    let status = cargo()
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--package",
            "kernel",
            "--bin",
            "kernel",
            "--features",
            "kernel-bin",
            "--release",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            "-C relocation-model=static -C no-redzone -C panic=abort -C force-frame-pointers=yes",
        )
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("kernel build failed".into());
    }
    Ok(target_dir
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("kernel"))
}

fn take_value(args: &[String], i: &mut usize, flag: &str) -> Result<String, String> {
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// The longest kernel command line the kernel keeps: PVH's `cmdline_paddr` string is copied into
/// a buffer of `MAX_CMDLINE` bytes in `kernel/src/pvh.rs` (a host test checks the two agree).
/// Anything longer would be cut without a word, so `run` refuses it.
const KERNEL_CMDLINE_MAX: usize = 1024;

/// The least guest memory `run` accepts. Measured on the demo topology (QEMU 7.2, q35 +
/// intel-iommu): with 36 MiB the kernel stops with "no memory for the kernel heap" (the 32 MiB
/// heap of `kernel/src/mem/heap.rs` plus the page tables and what firmware reserves do not
/// fit); 37 MiB boots the demo with 0 MiB left, 40 MiB with 3 MiB left, the least that leaves
/// room for the test suites' DMA buffers and bounce pools. Smaller values are refused before
/// QEMU starts.
const MIN_MEMORY: u64 = 40 << 20;

/// Which machine `run` starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunBase {
    /// The demo topology (`Topology::default_run`), the user's devices added to it.
    Demo,
    /// q35 (+ intel-iommu unless `--no-iommu`) and only the user's devices (`--bare`).
    Bare,
    /// A scenario's topology (`--topology NAME`), with its generated ACPI tables.
    Scenario(String),
}

/// `cargo xtask run`'s options, parsed and checked before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunOptions {
    base: RunBase,
    /// `None`: keep the base's IOMMU; `Some(None)`: `--no-iommu`; `Some(Some(p))`: `--iommu p`.
    iommu: Option<Option<String>>,
    /// `--mem`, as given (already checked against [`MIN_MEMORY`]).
    memory: Option<String>,
    cmdline: String,
    /// `None`: no limit.
    timeout: Option<u64>,
    /// QEMU arguments after `--`.
    extra: Vec<String>,
}

/// What the `run` arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunRequest {
    Help,
    Boot(RunOptions),
}

/// Parses a QEMU `-m` size (`N`, `NK`, `NM`, `NG`, `NT`; no suffix means MiB, as QEMU reads it)
/// into bytes. Fractions and QEMU's `size=...,maxmem=...` form are refused: give a plain size.
fn parse_memory(v: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "bad --mem {v:?}: give a whole number with an optional K, M, G or T suffix (no suffix: MiB), e.g. 512M or 1G"
        )
    };
    let (digits, shift) = match v.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&v[..v.len() - 1], 10),
        Some(b'M') => (&v[..v.len() - 1], 20),
        Some(b'G') => (&v[..v.len() - 1], 30),
        Some(b'T') => (&v[..v.len() - 1], 40),
        Some(b'0'..=b'9') => (v, 20),
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Parses and checks `cargo xtask run`'s arguments (everything after `run`).
fn parse_run_args(args: &[String]) -> Result<RunRequest, String> {
    let mut opts = RunOptions {
        base: RunBase::Demo,
        iommu: None,
        memory: None,
        cmdline: String::new(),
        timeout: None,
        extra: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--" {
            opts.extra.extend(args[i + 1..].iter().cloned());
            break;
        }
        if seen.contains(&flag) {
            return Err(format!("{flag} given twice"));
        }
        let conflict = |a: &str, b: &str| -> Result<(), String> {
            if (flag == a && seen.contains(&b)) || (flag == b && seen.contains(&a)) {
                Err(format!("{a} and {b} cannot be used together"))
            } else {
                Ok(())
            }
        };
        conflict("--no-iommu", "--iommu")?;
        conflict("--bare", "--topology")?;
        match flag {
            "--no-iommu" => opts.iommu = Some(None),
            "--iommu" => opts.iommu = Some(Some(take_value(args, &mut i, flag)?)),
            "--bare" => opts.base = RunBase::Bare,
            "--topology" => {
                let name = take_value(args, &mut i, flag)?;
                if !tests_qemu::all().iter().any(|s| s.name == name) {
                    let names: Vec<&str> = tests_qemu::all().iter().map(|s| s.name).collect();
                    return Err(format!(
                        "no scenario named {name:?}; --topology takes one of:\n    {}",
                        names.join("\n    ")
                    ));
                }
                opts.base = RunBase::Scenario(name);
            }
            "--mem" => {
                let v = take_value(args, &mut i, flag)?;
                let bytes = parse_memory(&v)?;
                if bytes < MIN_MEMORY {
                    return Err(format!(
                        "--mem {v} is too small: the kernel needs at least {} MiB (its 32 MiB heap, page tables and DMA buffers)",
                        MIN_MEMORY >> 20
                    ));
                }
                opts.memory = Some(v);
            }
            "--cmdline" => {
                let v = take_value(args, &mut i, flag)?;
                if v.len() > KERNEL_CMDLINE_MAX {
                    return Err(format!(
                        "--cmdline is {} bytes; the kernel keeps at most {KERNEL_CMDLINE_MAX} and would cut the rest",
                        v.len()
                    ));
                }
                opts.cmdline = v;
            }
            "--timeout" => {
                let v = take_value(args, &mut i, flag)?;
                match v.parse::<u64>() {
                    Ok(0) => {
                        return Err(
                            "--timeout 0 is refused: give a positive number of seconds, or leave --timeout out for no limit"
                                .into(),
                        )
                    }
                    Ok(n) => opts.timeout = Some(n),
                    Err(_) => return Err(format!("bad --timeout {v:?}: a whole number of seconds")),
                }
            }
            "--help" | "-h" => return Ok(RunRequest::Help),
            other => return Err(format!("unknown option `{other}` for run (see --help)")),
        }
        seen.push(flag);
        i += 1;
    }
    Ok(RunRequest::Boot(opts))
}

impl RunOptions {
    /// The machine to boot and the ACPI tables to inject.
    fn machine(&self) -> (Topology, Vec<tests_qemu::AcpiTableFile>) {
        let (mut topo, tables) = match &self.base {
            RunBase::Demo => (Topology::default_run(), Vec::new()),
            RunBase::Bare => (Topology::base(), Vec::new()),
            RunBase::Scenario(name) => tests_qemu::all()
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| (s.topology, s.acpi_tables))
                .expect("checked by parse_run_args"),
        };
        if let Some(iommu) = &self.iommu {
            topo.iommu = iommu.clone();
        }
        if let Some(m) = &self.memory {
            topo.memory = m.clone();
        }
        topo.devices.extend(self.extra.iter().cloned());
        (topo, tables)
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let opts = match parse_run_args(args)? {
        RunRequest::Help => {
            print!("{HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        RunRequest::Boot(o) => o,
    };
    let (mut topo, tables) = opts.machine();
    if !tables.is_empty() {
        let dir = root().join("target").join("qemu-logs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let name = match &opts.base {
            RunBase::Scenario(n) => n.as_str(),
            _ => "run",
        };
        qemu::add_acpi_tables(&mut topo, name, &tables, &dir)?;
    }
    if let RunBase::Scenario(name) = &opts.base {
        if opts.cmdline.is_empty() {
            if let Some(s) = tests_qemu::all().into_iter().find(|s| s.name == name) {
                eprintln!(
                    "xtask: booting {name}'s topology with the demo; its tests run with --cmdline {:?}",
                    s.cmdline
                );
            }
        }
    }
    qemu::ensure_installed()?;
    let kernel = build_kernel()?;
    let exit = qemu::run_interactive(&kernel, &topo, &opts.cmdline, opts.timeout)?;
    Ok(match exit {
        Exit::Status(tests_qemu::QEMU_SUCCESS) => ExitCode::SUCCESS,
        Exit::Status(tests_qemu::QEMU_FAILURE) => {
            eprintln!("xtask: the kernel reported failure");
            ExitCode::FAILURE
        }
        Exit::TimedOut => {
            eprintln!(
                "xtask: timed out: no kernel exit within {} s (--timeout); QEMU was killed",
                opts.timeout.unwrap_or(0)
            );
            ExitCode::from(TIMED_OUT)
        }
        Exit::Status(code) => {
            eprintln!("xtask: QEMU exited with status {code} without a kernel exit: triple fault or QEMU error (see the qemu: lines above)");
            if opts.base == RunBase::Demo && !opts.extra.is_empty() {
                eprintln!("xtask: your arguments were added to the demo topology (ids rp1, shm, chassis 1); --bare boots only yours");
            }
            ExitCode::from(3)
        }
        other => {
            eprintln!("xtask: QEMU ended without a kernel exit ({other:?})");
            ExitCode::from(3)
        }
    })
}

/// `run`'s exit status when `--timeout` expired (as `timeout(1)` reports it).
const TIMED_OUT: u8 = 124;

/// Runs one cargo invocation, failing with its description.
fn cargo_step(what: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    println!("lint: {what}");
    let mut c = cargo();
    c.current_dir(root()).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let status = c.status().map_err(|e| format!("running cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed"))
    }
}

/// Formatting, lints (warnings and every `unsafe` block without a `// SAFETY:` comment denied)
/// and docs. The kernel binary is linted on its own: with `--all-targets`
/// the dev-dependencies of other crates would unify `std` features into its dependencies.
fn lint() -> Result<ExitCode, String> {
    modgraph::check(&root())?;
    cargo_step("cargo fmt --check", &["fmt", "--all", "--check"], &[])?;
    cargo_step(
        "clippy (host crates, all targets)",
        &[
            "clippy",
            "--quiet",
            "--workspace",
            "--exclude",
            "kernel",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
            "-D",
            "clippy::undocumented_unsafe_blocks",
        ],
        &[],
    )?;
    cargo_step(
        "clippy (kernel library and its tests)",
        &[
            "clippy",
            "--quiet",
            "-p",
            "kernel",
            "--lib",
            "--tests",
            "--",
            "-D",
            "warnings",
            "-D",
            "clippy::undocumented_unsafe_blocks",
        ],
        &[],
    )?;
    let target_dir = root().join("target").join("kernel");
    let target_dir = target_dir.to_string_lossy();
    cargo_step(
        "clippy (kernel binary, kernel flags)",
        &[
            "clippy",
            "--quiet",
            "-p",
            "kernel",
            "--bin",
            "kernel",
            "--features",
            "kernel-bin",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            &target_dir,
            "--",
            "-D",
            "warnings",
            "-D",
            "clippy::undocumented_unsafe_blocks",
        ],
        &[("RUSTFLAGS", KERNEL_RUSTFLAGS)],
    )?;
    cargo_step(
        "rustdoc",
        &[
            "doc",
            "--quiet",
            "--workspace",
            "--exclude",
            "kernel",
            "--no-deps",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    cargo_step(
        "cargo package (library crates, unverified)",
        &package_args(false),
        &[],
    )?;
    println!("lint: clean");
    Ok(ExitCode::SUCCESS)
}

/// The workspace members that are not published (`publish = false`): `cargo package
/// --workspace` would otherwise try to package them too.
const UNPUBLISHED: [&str; 4] = ["kernel", "tests-qemu", "xtask", "vtd-examples"];

/// `cargo package` for every library crate. With `verify`, each package is unpacked and built
/// on its own, its path dependencies resolved through cargo's local overlay of the packages
/// just made (what a crates.io user would build); without it only manifests and file lists are
/// checked. CI (`.ci/run`) runs the verifying form, `lint` the quick one.
fn package_args(verify: bool) -> Vec<&'static str> {
    let mut args = vec!["package", "--quiet", "--workspace", "--allow-dirty"];
    for p in UNPUBLISHED {
        args.extend(["--exclude", p]);
    }
    if !verify {
        args.push("--no-verify");
    }
    args
}

/// `cargo xtask package`: the verifying `cargo package` of every library crate.
fn package() -> Result<ExitCode, String> {
    forget_overlay_sources();
    // Cargo never re-checks a registry package's sources, so a build directory shared across
    // runs would reuse a sibling compiled from an earlier version of the same number: verify
    // in a directory of its own, emptied first.
    let verify_dir = root().join("target").join("package-verify");
    if verify_dir.exists() {
        std::fs::remove_dir_all(&verify_dir)
            .map_err(|e| format!("removing {}: {e}", verify_dir.display()))?;
    }
    let verify_dir = verify_dir.to_string_lossy().into_owned();
    cargo_step(
        "cargo package (library crates, verified)",
        &package_args(true),
        &[("CARGO_TARGET_DIR", verify_dir.as_str())],
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Verification builds each package against its siblings through a local overlay registry,
/// whose unpacked sources cargo keeps under `$CARGO_HOME/registry/src/-<hash>/<crate>-<version>`
/// and never unpacks again for the same version: a later run would verify against the sources
/// of an earlier one. Those directories (only the overlay's, whose names start with `-`) are
/// removed first; cargo recreates them from the fresh tarballs.
fn forget_overlay_sources() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return;
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        if registry.file_name().to_string_lossy().starts_with('-') {
            if let Err(e) = std::fs::remove_dir_all(registry.path()) {
                eprintln!("xtask: could not remove {}: {e}", registry.path().display());
            }
        }
    }
}

/// Counts from `cargo test` output.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: usize,
    failed: usize,
}

fn host_tests() -> Result<Counts, String> {
    let out = cargo()
        .current_dir(root())
        .args(["test", "--workspace", "--color", "never"])
        .output()
        .map_err(|e| format!("running cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut c = Counts::default();
    for line in stdout
        .lines()
        .filter_map(|l| l.strip_prefix("test result: "))
    {
        let num = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(word)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        c.passed += num(" passed");
        c.failed += num(" failed");
    }
    if !out.status.success() {
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        c.failed = c.failed.max(1);
    }
    Ok(c)
}

fn test(args: &[String]) -> Result<ExitCode, String> {
    let mut filter = None;
    let (mut host, mut qemu_scenarios, mut list) = (true, true, false);
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--filter" => filter = Some(take_value(args, &mut i, "--filter")?),
            "--host-only" => qemu_scenarios = false,
            "--qemu-only" => host = false,
            "--list" => list = true,
            "--jobs" => {
                let v = take_value(args, &mut i, "--jobs")?;
                jobs = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("bad --jobs {v}"))?;
            }
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown option `{other}` for test (see --help)")),
        }
        i += 1;
    }
    let scenarios: Vec<Scenario> = tests_qemu::all()
        .into_iter()
        .filter(|s| filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if list {
        for s in &scenarios {
            println!("{:28} {}", s.name, s.about);
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut total = Counts::default();
    if host {
        let t = Instant::now();
        println!("host unit tests ...");
        let c = host_tests()?;
        println!(
            "host unit tests: {} passed, {} failed ({:.1}s)",
            c.passed,
            c.failed,
            t.elapsed().as_secs_f64()
        );
        total.passed += c.passed;
        total.failed += c.failed;
    }
    if qemu_scenarios {
        qemu::ensure_installed()?;
        let kernel = build_kernel()?;
        let logs = root().join("target").join("qemu-logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
        let t = Instant::now();
        let c = qemu::run_scenarios(&kernel, &scenarios, jobs, &logs);
        println!(
            "qemu scenarios: {} passed, {} failed ({:.1}s)",
            c.0,
            c.1,
            t.elapsed().as_secs_f64()
        );
        total.passed += c.0;
        total.failed += c.1;
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunRequest, String> {
        parse_run_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    fn boot(args: &[&str]) -> RunOptions {
        match parse(args) {
            Ok(RunRequest::Boot(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn refused(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e,
            Ok(r) => panic!("{args:?} accepted: {r:?}"),
        }
    }

    #[test]
    fn default_run_adds_user_devices_to_the_demo_topology() {
        let (topo, tables) = boot(&["--", "-device", "edu"]).machine();
        let mut expected = Topology::default_run();
        expected
            .devices
            .extend(["-device".to_string(), "edu".to_string()]);
        assert_eq!(topo, expected);
        assert!(tables.is_empty());
    }

    #[test]
    fn bare_boots_only_the_user_devices() {
        let user = [
            "-device",
            "pcie-root-port,id=rp1,chassis=1",
            "-device",
            "edu,bus=rp1",
        ];
        let mut args = vec!["--bare", "--"];
        args.extend(user);
        let (topo, _) = boot(&args).machine();
        assert_eq!(topo.devices, user);
        assert_eq!(topo.iommu, Topology::base().iommu);
        // The demo's rp1/chassis=1 would collide with the user's: they must be absent.
        assert!(!topo.qemu_args().iter().any(|a| a.contains("ivshmem")));
        let (topo, _) = boot(&["--bare", "--no-iommu"]).machine();
        assert_eq!((topo.iommu, topo.devices.len()), (None, 0));
    }

    #[test]
    fn topology_boots_a_scenario_machine_with_its_acpi_tables() {
        for s in tests_qemu::all() {
            let (topo, tables) = boot(&["--topology", s.name]).machine();
            assert_eq!(topo, s.topology, "{}", s.name);
            assert_eq!(tables.len(), s.acpi_tables.len(), "{}", s.name);
        }
        let with_tables = tests_qemu::all()
            .into_iter()
            .find(|s| !s.acpi_tables.is_empty())
            .expect("a firmware scenario injects tables");
        let (topo, tables) = boot(&["--topology", with_tables.name, "--mem", "1G"]).machine();
        assert_eq!(topo.memory, "1G");
        assert_eq!(tables[0].bytes, with_tables.acpi_tables[0].bytes);
        let e = refused(&["--topology", "no-such-scenario"]);
        assert!(e.contains("boot-smoke") && e.contains("demo"), "{e}");
    }

    #[test]
    fn conflicting_and_repeated_flags_are_refused() {
        assert!(refused(&["--no-iommu", "--iommu", "aw-bits=48"]).contains("together"));
        assert!(refused(&["--iommu", "aw-bits=48", "--no-iommu"]).contains("together"));
        assert!(refused(&["--bare", "--topology", "demo"]).contains("together"));
        assert!(refused(&["--mem", "1G", "--mem", "2G"]).contains("twice"));
        assert!(refused(&["--frobnicate"]).contains("unknown option"));
        assert!(refused(&["--iommu"]).contains("needs a value"));
        // Flags after `--` belong to QEMU.
        assert_eq!(boot(&["--", "--no-iommu"]).extra, ["--no-iommu"]);
        assert_eq!(parse(&["--help"]), Ok(RunRequest::Help));
    }

    #[test]
    fn timeout_zero_is_refused_and_a_limit_is_kept() {
        assert!(refused(&["--timeout", "0"]).contains("no limit"));
        assert!(refused(&["--timeout", "-1"]).contains("bad --timeout"));
        assert!(refused(&["--timeout", "soon"]).contains("bad --timeout"));
        assert_eq!(boot(&["--timeout", "7"]).timeout, Some(7));
        assert_eq!(boot(&[]).timeout, None);
    }

    #[test]
    fn memory_sizes_are_read_as_qemu_reads_them() {
        assert_eq!(parse_memory("512"), Ok(512 << 20));
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("3g"), Ok(3 << 30));
        assert_eq!(parse_memory("65536K"), Ok(64 << 20));
        assert_eq!(parse_memory("1T"), Ok(1 << 40));
        for bad in [
            "",
            "M",
            "1.5G",
            "1X",
            "size=1G",
            "-1G",
            "99999999999999999999T",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn memory_the_kernel_cannot_boot_with_is_refused() {
        let min = format!("{}M", MIN_MEMORY >> 20);
        let below = format!("{}K", (MIN_MEMORY >> 10) - 4);
        assert_eq!(boot(&["--mem", &min]).memory.as_deref(), Some(min.as_str()));
        let e = refused(&["--mem", &below]);
        assert!(
            e.contains("too small") && e.contains(&(MIN_MEMORY >> 20).to_string()),
            "{e}"
        );
        assert!(refused(&["--mem", "16M"]).contains("too small"));
        // The limit is above the heap alone: a machine of heap size cannot boot.
        let heap = include_str!("../../kernel/src/mem/heap.rs");
        assert!(heap.contains("pub const HEAP_SIZE: usize = 32 << 20;"));
        const { assert!(MIN_MEMORY > 32 << 20) };
    }

    #[test]
    fn command_lines_the_kernel_would_cut_are_refused() {
        // The kernel's buffer, read from its source so the two cannot drift apart.
        let pvh = include_str!("../../kernel/src/pvh.rs");
        let decl = format!("const MAX_CMDLINE: usize = {KERNEL_CMDLINE_MAX};");
        assert!(
            pvh.contains(&decl),
            "kernel/src/pvh.rs no longer has `{decl}`"
        );
        let longest = "x".repeat(KERNEL_CMDLINE_MAX);
        assert_eq!(boot(&["--cmdline", &longest]).cmdline, longest);
        let e = refused(&["--cmdline", &format!("{longest}y")]);
        assert!(e.contains("1025 bytes") && e.contains("1024"), "{e}");
    }
}
