//! `cargo xtask run`: its options, parsed and checked before anything is built, and the boot
//! with the console on this terminal.

use std::process::ExitCode;

use tests_qemu::{Exit, Topology};

use super::{build_kernel, qemu, root, take_value, HELP, TIMED_OUT};

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
    /// `--qemu PATH`: another qemu-system-x86_64 (`None`: the system's).
    qemu: Option<String>,
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
        qemu: None,
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
            "--qemu" => opts.qemu = Some(take_value(args, &mut i, flag)?),
            "--help" | "-h" => return Ok(RunRequest::Help),
            other => return Err(format!("unknown option `{other}` for run (see --help)")),
        }
        seen.push(flag);
        i += 1;
    }
    Ok(RunRequest::Boot(opts))
}

impl RunOptions {
    /// The machine to boot, the ACPI tables to inject and the disks to attach.
    fn machine(
        &self,
    ) -> (
        Topology,
        Vec<tests_qemu::AcpiTableFile>,
        Vec<tests_qemu::DiskImage>,
    ) {
        let (mut topo, tables, disks) = match &self.base {
            RunBase::Demo => (Topology::default_run(), Vec::new(), Vec::new()),
            RunBase::Bare => (Topology::base(), Vec::new(), Vec::new()),
            RunBase::Scenario(name) => tests_qemu::all()
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| (s.topology, s.acpi_tables, s.disks))
                .expect("checked by parse_run_args"),
        };
        if let Some(iommu) = &self.iommu {
            topo.iommu = iommu.clone();
        }
        if let Some(m) = &self.memory {
            topo.memory = m.clone();
        }
        topo.devices.extend(self.extra.iter().cloned());
        (topo, tables, disks)
    }
}

pub(crate) fn run(args: &[String]) -> Result<ExitCode, String> {
    let opts = match parse_run_args(args)? {
        RunRequest::Help => {
            print!("{HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        RunRequest::Boot(o) => o,
    };
    let (mut topo, tables, disks) = opts.machine();
    if !tables.is_empty() || !disks.is_empty() {
        let dir = root().join("target").join("qemu-logs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let name = match &opts.base {
            RunBase::Scenario(n) => n.as_str(),
            _ => "run",
        };
        qemu::add_acpi_tables(&mut topo, name, &tables, &dir)?;
        qemu::add_disks(&mut topo, name, &disks, &dir)?;
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
    let qemu = match &opts.qemu {
        Some(path) => qemu::Qemu::at(std::path::Path::new(path))?,
        None => {
            qemu::ensure_installed()?;
            qemu::Qemu::system()?
        }
    };
    let kernel = build_kernel()?;
    let exit = qemu::run_interactive(&qemu, &kernel, &topo, &opts.cmdline, opts.timeout)?;
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
        let (topo, tables, _) = boot(&["--", "-device", "edu"]).machine();
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
        let (topo, _, _) = boot(&args).machine();
        assert_eq!(topo.devices, user);
        assert_eq!(topo.iommu, Topology::base().iommu);
        // The demo's rp1/chassis=1 would collide with the user's: they must be absent.
        assert!(!topo.qemu_args().iter().any(|a| a.contains("ivshmem")));
        let (topo, _, _) = boot(&["--bare", "--no-iommu"]).machine();
        assert_eq!((topo.iommu, topo.devices.len()), (None, 0));
    }

    #[test]
    fn topology_boots_a_scenario_machine_with_its_acpi_tables() {
        for s in tests_qemu::all() {
            let (topo, tables, disks) = boot(&["--topology", s.name]).machine();
            assert_eq!(topo, s.topology, "{}", s.name);
            assert_eq!(tables.len(), s.acpi_tables.len(), "{}", s.name);
            assert_eq!(disks, s.disks, "{}", s.name);
        }
        let with_tables = tests_qemu::all()
            .into_iter()
            .find(|s| !s.acpi_tables.is_empty())
            .expect("a firmware scenario injects tables");
        let (topo, tables, _) = boot(&["--topology", with_tables.name, "--mem", "1G"]).machine();
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
        assert!(refused(&["--qemu"]).contains("needs a value"));
        assert!(refused(&["--qemu", "a", "--qemu", "b"]).contains("twice"));
        assert_eq!(
            boot(&["--qemu", "/q/bin/qemu"]).qemu.as_deref(),
            Some("/q/bin/qemu")
        );
        assert_eq!(boot(&[]).qemu, None);
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
