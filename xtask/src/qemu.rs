//! Starting QEMU: installation check, which QEMU ([`Qemu`]: the system's or another binary with
//! its data folders), argument assembly, interactive runs and scenario runs with timeouts.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests_qemu::{AcpiTableFile, DiskImage, Exit, QemuVersion, Scenario, Topology};

const QEMU: &str = "qemu-system-x86_64";
const INSTALL: &str = "apt-get install -y qemu-system-x86";

/// Whether `tool --version` runs (the tool is installed and on PATH).
pub fn tool_present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn have_qemu() -> bool {
    tool_present(QEMU)
}

/// Whether xtask runs as root (allowed to run apt-get install/update).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Makes sure QEMU is available: installs Debian's `qemu-system-x86` when running as root with
/// apt-get, otherwise explains what to run.
pub fn ensure_installed() -> Result<(), String> {
    if have_qemu() {
        return Ok(());
    }
    let apt = Command::new("apt-get")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !(is_root() && apt) {
        return Err(format!(
            "{QEMU} not found. Install it with:\n    sudo {INSTALL}"
        ));
    }
    eprintln!("xtask: {QEMU} not found; installing Debian's qemu-system-x86 ...");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if !install() {
            return Err(format!("installing QEMU failed; try:\n    {INSTALL}"));
        }
    }
    if have_qemu() {
        Ok(())
    } else {
        Err(format!(
            "{QEMU} still not found after installing qemu-system-x86"
        ))
    }
}

/// One QEMU to run: a binary, the firmware/data folders it is given with `-L`, and the version
/// it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// `-L` folders, searched in this order before the binary's built-in one.
    pub data_dirs: Vec<PathBuf>,
    /// What `--version` reported.
    pub version: QemuVersion,
}

impl Qemu {
    /// The system's `qemu-system-x86_64` (on PATH), with its own data folders.
    pub fn system() -> Result<Self, String> {
        Ok(Self {
            binary: PathBuf::from(QEMU),
            data_dirs: Vec::new(),
            version: version_of(Path::new(QEMU))?,
        })
    }

    /// The binary at `binary`. When it sits in an unpacked package tree (`<root>/usr/bin/`, or
    /// any `<prefix>/bin/`) the tree's `share/seabios` and `share/qemu` are passed with `-L`,
    /// SeaBIOS first: QEMU's own data package ships no BIOS, and the system's SeaBIOS would
    /// otherwise be used (bookworm's 1.16.2 stalls QEMU 10 for 32 s on the empty CD-ROM).
    pub fn at(binary: &Path) -> Result<Self, String> {
        if !binary.is_file() {
            return Err(format!("--qemu {}: no such file", binary.display()));
        }
        let binary = binary
            .canonicalize()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let data_dirs = match binary.parent().and_then(Path::parent) {
            Some(prefix) if prefix != Path::new("/usr") => ["seabios", "qemu"]
                .iter()
                .map(|d| prefix.join("share").join(d))
                .filter(|d| d.is_dir())
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            version: version_of(&binary)?,
            binary,
            data_dirs,
        })
    }

    /// A short label for result lines and log folders: `qemu-10.0.2`.
    pub fn label(&self) -> String {
        format!("qemu-{}", self.version)
    }
}

/// Runs `binary --version` and parses it.
fn version_of(binary: &Path) -> Result<QemuVersion, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} --version failed (missing libraries?): {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    QemuVersion::parse(&text).ok_or_else(|| {
        format!(
            "{} --version printed no version: {:?}",
            binary.display(),
            text.trim()
        )
    })
}

/// The full QEMU command for a kernel on a topology, with the system's QEMU.
pub fn command(kernel: &Path, topo: &Topology, cmdline: &str) -> Command {
    let system = Qemu {
        binary: PathBuf::from(QEMU),
        data_dirs: Vec::new(),
        version: QemuVersion::BOOKWORM,
    };
    command_on(&system, kernel, topo, cmdline)
}

/// The full QEMU command for a kernel on a topology, with `qemu`.
pub fn command_on(qemu: &Qemu, kernel: &Path, topo: &Topology, cmdline: &str) -> Command {
    let mut c = Command::new(&qemu.binary);
    for d in &qemu.data_dirs {
        c.arg("-L").arg(d);
    }
    c.args([
        "-accel",
        "tcg",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .args(topo.qemu_args())
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", cmdline]);
    c
}

fn exit_of(child: &mut Child, deadline: Option<Instant>) -> Result<Exit, String> {
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            return Ok(status.code().map_or(Exit::Signalled, Exit::Status));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Exit::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots with the console on this terminal. QEMU's own messages (its stderr: option errors,
/// warnings) are printed on stderr line by line with a `qemu: ` prefix, so they cannot be taken
/// for the kernel's output.
pub fn run_interactive(
    qemu: &Qemu,
    kernel: &Path,
    topo: &Topology,
    cmdline: &str,
    timeout: Option<u64>,
) -> Result<Exit, String> {
    let mut cmd = command_on(qemu, kernel, topo, cmdline);
    eprintln!(
        "xtask: QEMU {}: {} {}",
        qemu.version,
        qemu.binary.display(),
        describe(&cmd)
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    let stderr = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            for line in BufReader::new(e).split(b'\n').map_while(Result::ok) {
                eprintln!("{}", qemu_line(&line));
            }
        })
    });
    let exit = exit_of(
        &mut child,
        timeout.map(|t| Instant::now() + Duration::from_secs(t)),
    );
    if let Some(t) = stderr {
        let _ = t.join();
    }
    exit
}

/// One line of QEMU's stderr as `run` shows it.
fn qemu_line(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    format!("qemu: {}", text.trim_end_matches('\r'))
}

/// Writes generated ACPI tables to `dir` as `<name>.<table>.dat` and adds `-acpitable file=...`
/// for each to `topo`.
pub fn add_acpi_tables(
    topo: &mut Topology,
    name: &str,
    tables: &[AcpiTableFile],
    dir: &Path,
) -> Result<(), String> {
    for table in tables {
        let path = dir.join(format!("{name}.{}.dat", table.name));
        no_comma(&path, "-acpitable")?;
        std::fs::write(&path, &table.bytes)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        topo.devices.push("-acpitable".into());
        topo.devices.push(format!("file={}", path.display()));
    }
    Ok(())
}

/// An error when `path`, to be passed in a `file=` value of QEMU's `option`, contains a comma:
/// QEMU splits option values at commas.
fn no_comma(path: &Path, option: &str) -> Result<(), String> {
    if path.to_string_lossy().contains(',') {
        return Err(format!(
            "{}: a comma in the path breaks {option}",
            path.display()
        ));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    cmd.get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one scenario; returns its log and how QEMU ended. The scenario's generated ACPI tables
/// are written to `dir` first and passed with `-acpitable file=...`.
fn run_one(qemu: &Qemu, kernel: &Path, s: &Scenario, dir: &Path) -> Result<(String, Exit), String> {
    let mut topology = s.topology.clone();
    add_acpi_tables(&mut topology, s.name, &s.acpi_tables, dir)?;
    let images = add_disks(&mut topology, s.name, &s.disks, dir)?;
    let (log, exit) = run_captured_on(
        qemu,
        kernel,
        &topology,
        &s.cmdline,
        Duration::from_secs(s.timeout_secs),
    )?;
    // What the kernel wrote must be in the image files, and nothing else changed.
    let mut notes = Vec::new();
    for (disk, path) in s.disks.iter().zip(&images) {
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        notes.push(disk.check(&log, &bytes)?);
    }
    let mut log = log;
    for n in notes {
        log.push_str(&format!("{DISK_NOTE}{n}\n"));
    }
    Ok((log, exit))
}

/// Prefix of the lines `run_one` appends to a log after checking the scenario's disk images.
const DISK_NOTE: &str = "xtask disk check: ";

/// Writes each disk image fresh to `dir` as `<name>.<id>.img` and adds its `-drive` to `topo`;
/// returns the paths.
pub fn add_disks(
    topo: &mut Topology,
    name: &str,
    disks: &[DiskImage],
    dir: &Path,
) -> Result<Vec<std::path::PathBuf>, String> {
    let mut paths = Vec::new();
    for disk in disks {
        let path = dir.join(format!("{name}.{}.img", disk.id));
        no_comma(&path, "-drive")?;
        std::fs::write(&path, disk.bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        topo.devices.push("-drive".into());
        topo.devices.push(format!(
            "file={},if=none,format=raw,id={}",
            path.display(),
            disk.id
        ));
        paths.push(path);
    }
    Ok(paths)
}

/// Boots `kernel` on `topo` with `cmdline` on the system's QEMU, capturing the console; kills
/// QEMU after `timeout`.
pub fn run_captured(
    kernel: &Path,
    topo: &Topology,
    cmdline: &str,
    timeout: Duration,
) -> Result<(String, Exit), String> {
    run_child(command(kernel, topo, cmdline), timeout)
}

/// [`run_captured`] on `qemu`.
pub fn run_captured_on(
    qemu: &Qemu,
    kernel: &Path,
    topo: &Topology,
    cmdline: &str,
    timeout: Duration,
) -> Result<(String, Exit), String> {
    run_child(command_on(qemu, kernel, topo, cmdline), timeout)
}

fn run_child(mut cmd: Command, timeout: Duration) -> Result<(String, Exit), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        let log = Arc::clone(&log);
        // Whole lines only: the console and QEMU's stderr share one log, and a QEMU warning
        // must not land in the middle of a kernel line the judge looks for.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    log.lock().expect("log lock").extend_from_slice(&pending);
                    pending = rest;
                }
            }
            log.lock().expect("log lock").extend_from_slice(&pending);
        })
    })
    .collect();
    let exit = exit_of(&mut child, Some(Instant::now() + timeout))?;
    for r in readers {
        let _ = r.join();
    }
    let bytes = log.lock().expect("log lock").clone();
    Ok((String::from_utf8_lossy(&bytes).into_owned(), exit))
}

/// Runs each QEMU's scenarios (every pair in one queue) on `jobs` workers, printing one line
/// each with the QEMU version; logs go to `logs/<qemu label>/<scenario>.log`. Returns (passed,
/// failed).
pub fn run_scenarios(
    kernel: &Path,
    runs: &[(Qemu, Vec<Scenario>)],
    jobs: usize,
    logs: &Path,
) -> (usize, usize) {
    let mut work: Vec<(&Qemu, &Scenario, PathBuf)> = Vec::new();
    for (qemu, scenarios) in runs {
        let dir = logs.join(qemu.label());
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("xtask: creating {}: {e}", dir.display());
        }
        work.extend(scenarios.iter().map(|s| (qemu, s, dir.clone())));
    }
    let scenarios = &work;
    let next = AtomicUsize::new(0);
    let results = Mutex::new((0usize, 0usize));
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(scenarios.len()).max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((qemu, s, logs)) = scenarios.get(i) else {
                    break;
                };
                let start = Instant::now();
                let verdict = run_one(qemu, kernel, s, logs).and_then(|(log, exit)| {
                    let path = logs.join(format!("{}.log", s.name));
                    let _ = std::fs::write(&path, &log);
                    let disks: Vec<&str> = log
                        .lines()
                        .filter_map(|l| l.strip_prefix(DISK_NOTE))
                        .collect();
                    let disks = disks.join("; ");
                    s.judge(&log, exit)
                        .map(|summary| {
                            if disks.is_empty() {
                                summary
                            } else {
                                format!("{summary}; {disks}")
                            }
                        })
                        .map_err(|why| {
                            let tail: Vec<&str> = log.lines().rev().take(25).collect();
                            let tail: Vec<&str> = tail.into_iter().rev().collect();
                            format!(
                                "{why}\n    log: {}\n    | {}",
                                path.display(),
                                tail.join("\n    | ")
                            )
                        })
                });
                let secs = start.elapsed().as_secs_f64();
                let mut r = results.lock().expect("results lock");
                match verdict {
                    Ok(summary) => {
                        r.0 += 1;
                        println!(
                            "PASS {:12} {:28} {summary} ({secs:.1}s)",
                            qemu.label(),
                            s.name
                        );
                    }
                    Err(why) => {
                        r.1 += 1;
                        println!("FAIL {:12} {:28} {why} ({secs:.1}s)", qemu.label(), s.name);
                    }
                }
            });
        }
    });
    results.into_inner().expect("results lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_lines_are_marked() {
        assert_eq!(
            qemu_line(b"qemu-system-x86_64: -device edu,id=rp1: Duplicate ID 'rp1' for device\r"),
            "qemu: qemu-system-x86_64: -device edu,id=rp1: Duplicate ID 'rp1' for device"
        );
        assert_eq!(qemu_line(b"\xff ok"), "qemu: \u{fffd} ok");
    }
}
