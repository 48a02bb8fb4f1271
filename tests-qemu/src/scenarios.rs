//! The scenario list and the judge.

use crate::outcome::{KernelEnd, Outcome, TestStatus};
use crate::qemu_version::QemuVersion;
use crate::topology::Topology;

mod firmware;
mod irq;
mod nvme;
mod p2p;
mod pci;
mod vm;
mod vtd;

use firmware::*;
use irq::*;
use p2p::*;
use pci::*;
use vtd::*;

/// QEMU's exit status when the kernel wrote `EXIT_SUCCESS` (0x10) to `isa-debug-exit`.
pub const QEMU_SUCCESS: i32 = 0x10 << 1 | 1;
/// QEMU's exit status when the kernel wrote `EXIT_FAILURE` (0x11).
pub const QEMU_FAILURE: i32 = 0x11 << 1 | 1;

/// Lines the `cargo xtask run` demo must print (substring, what it proves).
const DEMO_EVIDENCE: &[(&str, &str)] = &[
    (
        "(match)",
        "edu DMA through its domain with matching checksums",
    ),
    (
        "blocked, sentinel page unchanged: DMA write fault from",
        "the stray DMA blocked, memory unchanged, its write fault decoded",
    ),
    (
        "reads back: \"hello ivshmem",
        "the P2P bytes in ivshmem's BAR2",
    ),
    ("THRU_HOST_BRIDGE", "the P2P classification"),
    ("importer(s) notified", "the revoke"),
    (
        "the same DMA after revoke is blocked: DMA write fault from",
        "the decoded fault after revoke",
    ),
    ("map while revoked:", "a map refused while revoked"),
    ("unchanged (zeros)", "the BAR untouched after revoke"),
    ("message intact", "the DMA landing again after restore"),
    (
        "edu interrupt delivered through its IRTE: handler ran once",
        "edu's MSI through its interrupt remapping entry",
    ),
    (
        "forged interrupt blocked: edu sent a remappable MSI naming e1000e's IRTE",
        "a forged remappable interrupt dropped by the source-id check",
    ),
];

/// What a scenario must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Every selected test passes, exactly `passed` of them, the kernel exits with success.
    Pass {
        /// How many tests the selection runs (guards against a selection that silently ran
        /// nothing, or fewer tests than the scenario claims).
        passed: usize,
    },
    /// Exactly these tests fail, every other passes (exactly `passed` of them), the kernel exits
    /// with failure: proves a failed check fails one test, not the run.
    Failures {
        /// Full names of the tests that must fail.
        failed: &'static [&'static str],
        /// How many tests must pass.
        passed: usize,
    },
    /// The kernel panics with a message containing this text and exits with failure.
    Panic {
        /// Text the panic line must contain.
        contains: &'static str,
    },
    /// A CPU exception with this vector is reported (line containing `detail`), exit failure.
    Exception {
        /// Exception vector.
        vector: u8,
        /// Text the report line must contain (e.g. the faulting address).
        detail: String,
    },
    /// The kernel never ends: xtask must kill it at the timeout.
    Timeout,
    /// The demo runs to its `ready` line and exits with success.
    Demo,
}

/// A scenario-specific check of the parsed outcome and the raw log.
pub type LogCheck = fn(&Scenario, &Outcome, &str) -> Result<String, String>;

/// An ACPI table a scenario adds to the machine's firmware: xtask writes `bytes` (the whole
/// table, header and checksum included) to a file under `target/` before QEMU starts and passes
/// it with `-acpitable file=<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTableFile {
    /// Short name, used in the file name (`<scenario>.<name>.dat`).
    pub name: &'static str,
    /// The table bytes.
    pub bytes: Vec<u8>,
}

/// A raw disk image a scenario attaches (`-drive file=...,if=none,format=raw,id=<id>`): xtask
/// writes it fresh before QEMU starts, filled with [`::nvme::pattern`] stream `seed`, and after
/// QEMU exits checks it against what the kernel reported writing ([`DiskImage::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// Drive ID (what `-device nvme,drive=<id>` names).
    pub id: &'static str,
    /// Seed of the content.
    pub seed: u64,
    /// Size in 512-byte blocks.
    pub blocks: u64,
}

/// Block size of the scenario disks.
pub const DISK_BLOCK: u64 = 512;

impl DiskImage {
    /// The image's initial bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0; (self.blocks * DISK_BLOCK) as usize];
        ::nvme::pattern::fill(self.seed, 0, &mut v);
        v
    }

    /// Checks the image after the run: every range an `NVME-WROTE lba=<l> blocks=<n>
    /// seed=<s>` line of `log` names holds stream `s` (at the range's own byte offsets), and
    /// every other byte is still the initial content.
    pub fn check(&self, log: &str, image: &[u8]) -> Result<String, String> {
        if image.len() as u64 != self.blocks * DISK_BLOCK {
            return Err(format!(
                "disk {}: image is {} bytes, expected {}",
                self.id,
                image.len(),
                self.blocks * DISK_BLOCK
            ));
        }
        let mut written: Vec<(u64, u64, u64)> = Vec::new();
        for line in log
            .lines()
            .filter_map(|l| l.trim().strip_prefix("NVME-WROTE "))
        {
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| match v.strip_prefix("0x") {
                        Some(h) => u64::from_str_radix(h, 16).ok(),
                        None => v.parse().ok(),
                    })
                    .ok_or_else(|| format!("bad NVME-WROTE line {line:?}"))
            };
            written.push((field("lba=")?, field("blocks=")?, field("seed=")?));
        }
        let mut checked = 0u64;
        for &(lba, blocks, seed) in &written {
            let (start, len) = (lba * DISK_BLOCK, blocks * DISK_BLOCK);
            let range = image
                .get(start as usize..(start + len) as usize)
                .ok_or_else(|| format!("NVME-WROTE range {lba}+{blocks} outside the image"))?;
            if let Some(i) = ::nvme::pattern::first_mismatch(seed, start, range) {
                return Err(format!(
                    "disk {}: byte {} (LBA {}) does not hold what the kernel wrote",
                    self.id,
                    start + i as u64,
                    (start + i as u64) / DISK_BLOCK
                ));
            }
            checked += len;
        }
        let inside = |o: u64| {
            written
                .iter()
                .any(|&(l, b, _)| (l * DISK_BLOCK..(l + b) * DISK_BLOCK).contains(&o))
        };
        let mut offset = 0u64;
        for chunk in image.chunks(1 << 16) {
            // Fast path: the chunk is untouched. Else byte by byte, skipping written ranges.
            if let Some(i) = ::nvme::pattern::first_mismatch(self.seed, offset, chunk) {
                for (j, &b) in chunk.iter().enumerate().skip(i) {
                    let o = offset + j as u64;
                    if !inside(o) && b != ::nvme::pattern::byte(self.seed, o) {
                        return Err(format!(
                            "disk {}: byte {o} (LBA {}) changed though nothing was written there",
                            self.id,
                            o / DISK_BLOCK
                        ));
                    }
                }
            }
            offset += chunk.len() as u64;
        }
        Ok(format!(
            "disk {}: {} written bytes found in the image, the other {} unchanged",
            self.id,
            checked,
            image.len() as u64 - checked
        ))
    }
}

/// One QEMU run and what it must show.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Unique name (`cargo xtask test --filter` matches on it).
    pub name: &'static str,
    /// One sentence: what the scenario proves.
    pub about: &'static str,
    /// The machine.
    pub topology: Topology,
    /// Kernel command line.
    pub cmdline: String,
    /// Expected outcome.
    pub expect: Expect,
    /// Wall-clock limit for the QEMU process.
    pub timeout_secs: u64,
    /// Extra check on the log, computed from the topology.
    pub check: Option<LogCheck>,
    /// ACPI tables added with `-acpitable` (generated, never captured bytes).
    pub acpi_tables: Vec<AcpiTableFile>,
    /// Disk images attached with `-drive` (generated, checked after the run).
    pub disks: Vec<DiskImage>,
    /// The QEMU it runs on ([`all_on`]); checks whose expectations differ by version read it.
    pub qemu: QemuVersion,
}

/// How a QEMU process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status.
    Status(i32),
    /// Killed by a signal (no status).
    Signalled,
    /// Killed by xtask at the timeout.
    TimedOut,
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

impl Scenario {
    /// A scenario whose selected tests must all pass, exactly `passed` of them.
    fn passing(
        name: &'static str,
        about: &'static str,
        topology: Topology,
        cmdline: &str,
        passed: usize,
    ) -> Self {
        Self::new(name, about, topology, cmdline, Expect::Pass { passed })
    }

    fn new(
        name: &'static str,
        about: &'static str,
        topology: Topology,
        cmdline: &str,
        expect: Expect,
    ) -> Self {
        Self {
            name,
            about,
            topology,
            cmdline: cmdline.into(),
            expect,
            timeout_secs: 60,
            check: None,
            acpi_tables: Vec::new(),
            disks: Vec::new(),
            qemu: QemuVersion::BOOKWORM,
        }
    }

    /// Decides pass/fail from the log and the exit; `Ok` carries a short summary.
    pub fn judge(&self, log: &str, exit: Exit) -> Result<String, String> {
        let o = crate::outcome::parse(log);
        let status_is = |want: i32| -> Result<(), String> {
            ensure(exit == Exit::Status(want), || {
                format!("QEMU ended with {exit:?}, expected status {want}")
            })
        };
        let summary = match &self.expect {
            Expect::Timeout => {
                ensure(exit == Exit::TimedOut, || {
                    format!("expected a hang, QEMU ended with {exit:?}")
                })?;
                ensure(o.end == KernelEnd::Silent, || {
                    format!("expected no exit line, got {:?}", o.end)
                })?;
                // The hang must be the selected test's, not a boot that never got there.
                let last = o.tests.last();
                ensure(
                    last.is_some_and(|(n, st)| {
                        self.cmdline.contains(n.as_str()) && *st == TestStatus::Unfinished
                    }),
                    || {
                        format!("the kernel did not hang inside the selected test (last test: {last:?})")
                    },
                )?;
                format!("killed after {}s as expected", self.timeout_secs)
            }
            Expect::Pass { passed } => {
                ensure(o.end == KernelEnd::Success, || {
                    format!("kernel ended with {:?}", o.end)
                })?;
                status_is(QEMU_SUCCESS)?;
                ensure(o.not_passed().is_empty(), || {
                    format!("tests not passed: {:?}", o.not_passed())
                })?;
                ensure(o.unknown.is_empty(), || {
                    format!("unknown test patterns: {:?}", o.unknown)
                })?;
                ensure(o.passed() == *passed, || {
                    format!("{} tests passed, expected exactly {passed}", o.passed())
                })?;
                ensure(o.summary == Some((o.passed(), 0)), || {
                    format!("summary {:?} disagrees with the log", o.summary)
                })?;
                format!("{} tests passed", o.passed())
            }
            Expect::Failures { failed, passed } => {
                ensure(o.end == KernelEnd::Failure, || {
                    format!("kernel ended with {:?}", o.end)
                })?;
                status_is(QEMU_FAILURE)?;
                let mut not_passed = o.not_passed();
                not_passed.sort_unstable();
                let mut want = failed.to_vec();
                want.sort_unstable();
                ensure(not_passed == want, || {
                    format!("failed tests {not_passed:?}, expected {want:?}")
                })?;
                ensure(
                    failed
                        .iter()
                        .all(|t| matches!(o.test(t), Some(TestStatus::Failed(_)))),
                    || "an expected failure did not report a failed check".into(),
                )?;
                ensure(o.passed() == *passed, || {
                    format!("{} tests passed, expected exactly {passed}", o.passed())
                })?;
                format!("{} failed as expected, {} passed", failed.len(), o.passed())
            }
            Expect::Panic { contains } => {
                ensure(
                    matches!(&o.end, KernelEnd::Panic(m) if m.contains(contains)),
                    || format!("expected a panic containing {contains:?}, got {:?}", o.end),
                )?;
                status_is(QEMU_FAILURE)?;
                "panic reported and turned into a failure".into()
            }
            Expect::Exception { vector, detail } => {
                let prefix = format!("vector={vector} ");
                ensure(
                    matches!(&o.end, KernelEnd::Exception(m) if m.starts_with(&prefix) && m.contains(detail.as_str())),
                    || {
                        format!(
                            "expected exception {vector} with {detail:?}, got {:?}",
                            o.end
                        )
                    },
                )?;
                status_is(QEMU_FAILURE)?;
                format!("exception {vector} reported and turned into a failure")
            }
            Expect::Demo => {
                ensure(o.end == KernelEnd::Success, || {
                    format!("kernel ended with {:?}", o.end)
                })?;
                status_is(QEMU_SUCCESS)?;
                ensure(log.lines().any(|l| l.starts_with("ready:")), || {
                    "no `ready:` line".into()
                })?;
                // What the demo must have shown, by what the devices did.
                for (needle, what) in DEMO_EVIDENCE {
                    ensure(log.contains(needle), || {
                        format!("demo: no evidence of {what} ({needle:?})")
                    })?;
                }
                "demo ran to ready with every piece of evidence".into()
            }
        };
        match self.check {
            Some(check) => Ok(format!("{summary}; {}", check(self, &o, log)?)),
            None => Ok(summary),
        }
    }
}

/// How many tests a kernel suite defines, counted in its source (one `Test {` entry per test in
/// its `SUITE`), so a scenario that selects whole suites expects exactly the tests they hold.
fn suite_size(source: &str) -> usize {
    source.lines().filter(|l| l.trim() == "Test {").count()
}

/// Tests in the kernel's `boot` suite.
fn boot_suite() -> usize {
    suite_size(include_str!("../../kernel/src/tests/boot.rs"))
}

/// Tests in the kernel's `memory` suite.
fn memory_suite() -> usize {
    suite_size(include_str!("../../kernel/src/tests/memory.rs"))
}

/// Every scenario as it runs on Debian bookworm's QEMU ([`QemuVersion::BOOKWORM`]): names,
/// topologies and command lines, which do not depend on the version.
pub fn all() -> Vec<Scenario> {
    all_on(QemuVersion::BOOKWORM)
}

/// Every scenario, in the order `cargo xtask test` runs them, with the expectations of `qemu`.
pub fn all_on(qemu: QemuVersion) -> Vec<Scenario> {
    let mut all = scenario_list(qemu);
    for s in &mut all {
        s.qemu = qemu;
    }
    all
}

fn scenario_list(qemu: QemuVersion) -> Vec<Scenario> {
    let base = Topology::base;
    let mut all = vec![
        Scenario {
            check: Some(dmar_listed_iff_iommu),
            ..Scenario::new(
                "boot-smoke",
                "boot, CPU setup, frame allocator, page tables, heap and ACPI on q35 + intel-iommu",
                base(),
                "test=boot,memory",
                Expect::Pass {
                    passed: boot_suite() + memory_suite(),
                },
            )
        },
        Scenario {
            check: Some(dmar_listed_iff_iommu),
            ..Scenario::new(
                "boot-no-iommu",
                "the same suites on q35 without an IOMMU (no DMAR table)",
                base().without_iommu(),
                "test=boot,memory",
                Expect::Pass {
                    passed: boot_suite() + memory_suite(),
                },
            )
        },
        Scenario::new(
            "demo",
            "the `cargo xtask run` demo on the default topology reaches its ready line",
            Topology::default_run(),
            "",
            Expect::Demo,
        ),
        Scenario::new(
            "page-fault-reported",
            "a deliberate page fault is decoded (vector, CR2) and fails the run",
            base(),
            "test=crash::page_fault",
            Expect::Exception {
                vector: 14,
                detail: format!("cr2={:#x}", 0x7_dead_b000u64),
            },
        ),
        Scenario::new(
            "panic-reported",
            "a deliberate panic is reported with its message and fails the run",
            base(),
            "test=crash::panic",
            Expect::Panic {
                contains: "deliberate panic with value 3",
            },
        ),
        Scenario::new(
            "failed-check-isolated",
            "a failed check fails its test only; the other selected tests still run and pass",
            base(),
            "test=crash::failing_check,boot",
            Expect::Failures {
                failed: &["crash::failing_check"],
                passed: boot_suite(),
            },
        ),
        Scenario {
            timeout_secs: 5,
            ..Scenario::new(
                "hang-times-out",
                "a hung kernel is killed at the timeout and reported as such",
                base(),
                "test=crash::hang",
                Expect::Timeout,
            )
        },
    ];
    all.extend(pci_scenarios());
    all.extend(vtd_scenarios(qemu));
    all.extend(group_dma_scenarios(qemu));
    all.extend(dma_api_scenarios());
    all.extend(p2p_scenarios());
    all.extend(firmware_scenarios());
    all.extend(irq_scenarios());
    all.extend(intremap_scenarios());
    all.extend(fault_irq_scenarios(qemu));
    all.extend(nvme::nvme_scenarios());
    all.extend(vm::vm_scenarios());
    all
}

#[cfg(test)]
mod tests;
