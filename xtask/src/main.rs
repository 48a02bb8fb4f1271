//! `cargo xtask`: build the kernel, boot it in QEMU, read its serial log, report.
//!
//! - `cargo xtask run [--qemu PATH] [--bare | --topology NAME] [--no-iommu | --iommu OPTS]
//!   [--mem SIZE] [--cmdline STR] [--timeout SECS] [-- QEMU_ARGS...]`
//! - `cargo xtask test [--filter TEXT] [--host-only | --qemu-only] [--qemu PATH]... [--jobs N]
//!   [--list]`
//! - `cargo xtask fetch-qemu`: QEMU 10 from bookworm-backports into `target/qemu10/`
//!
//! The kernel is built for `x86_64-unknown-linux-gnu` (the only standard library installed) as a
//! freestanding static ELF: codegen flags come from here, link flags from `kernel/build.rs`, and it
//! goes to its own target directory so host and kernel builds never invalidate each other.

mod bench;
mod bench_allocator;
mod bench_nvme;
mod linux;
mod modgraph;
mod qemu;
mod qemu10;
mod run;
mod section;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use tests_qemu::Scenario;

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
    --qemu PATH         this qemu-system-x86_64 instead of the system's (an unpacked package
                        tree's share/seabios and share/qemu are passed with -L), e.g.
                        --qemu target/qemu10/root/usr/bin/qemu-system-x86_64 (fetch-qemu)
    -- ARGS...          extra QEMU arguments, e.g. -- -device ivshmem-plain,memdev=m ...

  test   Run the host unit tests of every crate, then every QEMU scenario in tests-qemu/ on
         the system's QEMU (7.2 on bookworm) AND on QEMU 10 (target/qemu10/, fetched first
         when absent; a failed fetch fails the run), one line per scenario and QEMU version,
         ending with `N passed, N failed`. Non-zero exit on any failure.
    --filter TEXT       only scenarios whose name contains TEXT (host tests still run)
    --host-only         only the host unit tests
    --qemu-only         only the QEMU scenarios
    --qemu PATH         only on this qemu-system-x86_64 (repeatable; `system` names the
                        system's, `10` the fetched QEMU 10)
    --jobs N            QEMU scenarios run in parallel (default: number of CPUs)
    --list              list the scenarios and exit
    --linux-smoke       also boot Debian's Linux once with our DMA bench module (the
                        `bench --vs-linux` baseline; fetched with apt-get on first use) and
                        check that it loads and reports; not run by default

  bench  Host microbenchmarks (criterion: dma, iommu-vtd) and in-kernel benchmarks (TSC cycles
         on a VT-d domain in QEMU), written to docs/PERFORMANCE.md. The \"Versus Linux\" section
         of the file is kept as it is.
    --host-only | --kernel-only
    --vs-linux          instead: the same operations side by side with Debian's stock Linux
                        kernel on the same QEMU machine (fetched with apt-get download into
                        target/linux-baseline/, our module xtask/linux-module/ built against its
                        headers), alternating ours, Linux strict, Linux lazy per round; rewrites
                        only the \"Versus Linux\" section of docs/PERFORMANCE.md
    --rounds N          rounds for --vs-linux (default 5)
    --allocator-only    instead: only the IOVA allocator vs rust-vmm vm-allocator criterion
                        benchmark; rewrites only its section (plain `bench` also regenerates it)

  fetch-qemu  Download QEMU 10 (qemu-system-x86, -common, -data and seabios >= 1.16.3) from
         bookworm-backports with a private apt configuration (its source line derived from
         the system's apt sources, its lists and cache under target/qemu10/apt/) and unpack
         them with dpkg-deb into target/qemu10/root/. Changes nothing on the system and needs
         no root; a second run does nothing.

  lint   cargo fmt --check, clippy -D warnings (host crates with all targets; the kernel binary
         with the kernel's own flags), rustdoc -D warnings and `cargo package --no-verify` of
         the library crates. CI runs it before `test`.

  package  `cargo package` of every library crate, each one built from its package alone
         (path dependencies through cargo's local overlay). CI runs it after `lint`.

Serial logs of every scenario are kept in target/qemu-logs/qemu-<version>/<scenario>.log.
When qemu-system-x86_64 is missing it is installed with apt-get (as root), or the command to
install it is printed.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run::run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("lint") => lint(),
        Some("package") => package(),
        Some("bench") => bench::bench(&args[1..]),
        Some("fetch-qemu") => qemu10::fetch(&root()),
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

/// The QEMUs `test` runs the scenarios on: the `--qemu` ones (`system`, `10` or a path), or by
/// default the system's and the fetched QEMU 10. A QEMU 10 that cannot be fetched is an error:
/// CI must run both.
fn test_qemus(wanted: &[String]) -> Result<Vec<qemu::Qemu>, String> {
    let fetched = || {
        qemu10::ensure(&qemu10::dir(&root())).map_err(|e| {
            format!(
                "\n\n*** QEMU 10 is not available, so the scenarios cannot run on it ***\n{e}\n\n\
                 (`cargo xtask fetch-qemu` fetches it; `--qemu system` runs on the system's QEMU only)"
            )
        })
    };
    let system = || qemu::ensure_installed().and_then(|()| qemu::Qemu::system());
    if wanted.is_empty() {
        return Ok(vec![system()?, fetched()?]);
    }
    wanted
        .iter()
        .map(|w| match w.as_str() {
            "system" => system(),
            "10" => fetched(),
            path => qemu::Qemu::at(Path::new(path)),
        })
        .collect()
}

fn test(args: &[String]) -> Result<ExitCode, String> {
    let mut filter = None;
    let mut qemus: Vec<String> = Vec::new();
    let (mut host, mut qemu_scenarios, mut list) = (true, true, false);
    let mut linux_smoke = false;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--filter" => filter = Some(take_value(args, &mut i, "--filter")?),
            "--qemu" => qemus.push(take_value(args, &mut i, "--qemu")?),
            "--host-only" => qemu_scenarios = false,
            "--qemu-only" => host = false,
            "--list" => list = true,
            "--linux-smoke" => linux_smoke = true,
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
        let qemus = test_qemus(&qemus)?;
        let kernel = build_kernel()?;
        let logs = root().join("target").join("qemu-logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
        let runs: Vec<(qemu::Qemu, Vec<Scenario>)> = qemus
            .into_iter()
            .map(|q| {
                let on: Vec<Scenario> = tests_qemu::all_on(q.version)
                    .into_iter()
                    .filter(|s| scenarios.iter().any(|x| x.name == s.name))
                    .collect();
                println!(
                    "qemu scenarios on QEMU {} ({}): {}",
                    q.version,
                    q.binary.display(),
                    on.len()
                );
                (q, on)
            })
            .collect();
        let t = Instant::now();
        let c = qemu::run_scenarios(&kernel, &runs, jobs, &logs);
        println!(
            "qemu scenarios: {} passed, {} failed ({:.1}s)",
            c.0,
            c.1,
            t.elapsed().as_secs_f64()
        );
        total.passed += c.0;
        total.failed += c.1;
    }
    if linux_smoke {
        match linux::smoke() {
            Ok(summary) => {
                total.passed += 1;
                println!("PASS {:28} {summary}", "linux-baseline-smoke");
            }
            Err(why) => {
                total.failed += 1;
                println!("FAIL {:28} {why}", "linux-baseline-smoke");
            }
        }
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
