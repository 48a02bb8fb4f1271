//! The scenario list and the judge.

use crate::outcome::{KernelEnd, Outcome, TestStatus};
use crate::topology::Topology;

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

/// DMAR must appear in the boot report's ACPI list exactly when the topology has an IOMMU.
fn dmar_listed_iff_iommu(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    let listed = log.lines().any(|l| l.trim_start().starts_with("DMAR "));
    ensure(listed == s.topology.iommu.is_some(), || {
        format!(
            "DMAR listed: {listed}, IOMMU in topology: {}",
            s.topology.iommu.is_some()
        )
    })?;
    Ok(format!("DMAR {}", if listed { "listed" } else { "absent" }))
}

/// The kernel's `PCIDEV` listing must match the model of the topology QEMU was given.
fn pci_listing_matches(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    crate::pci_model::check_pci_listing(&s.topology, log)
}

/// Ports with an ACS capability in the topology: in QEMU 7.2 exactly the `pcie-root-port`s
/// (1b36:000c), per the model of the topology.
fn acs_ports(t: &Topology) -> usize {
    crate::pci_model::expected_functions(t)
        .map(|f| {
            f.iter()
                .filter(|f| (f.vendor, f.device) == (0x1b36, 0x000c))
                .count()
        })
        .unwrap_or(usize::MAX)
}

/// PCI scenarios: each topology is enumerated by the kernel and compared with the model.
fn pci_scenarios() -> Vec<Scenario> {
    let pci = |name, about, topology: Topology| {
        let cmdline = format!("test=pci expect.acs_ports={}", acs_ports(&topology));
        Scenario {
            check: Some(pci_listing_matches as LogCheck),
            ..Scenario::new(name, about, topology, &cmdline, Expect::Pass { passed: 3 })
        }
    };
    let root_port = |t: Topology, id: &str, chassis: u32| {
        t.device(&format!(
            "pcie-root-port,id={id},chassis={chassis},bus=pcie.0"
        ))
    };
    vec![
        pci("pci-default", "the default run topology enumerates as QEMU built it", Topology::default_run()),
        pci(
            "pci-switch",
            "a PCIe switch (upstream + two downstream ports) with an endpoint on each port",
            root_port(Topology::base(), "rp1", 1)
                .device("x3130-upstream,id=up,bus=rp1")
                .device("xio3130-downstream,id=dn1,bus=up,chassis=2,slot=0")
                .device("xio3130-downstream,id=dn2,bus=up,chassis=3,slot=1")
                .device("edu,bus=dn1")
                .device("edu,bus=dn2"),
        ),
        pci(
            "pci-two-root-ports",
            "two root ports (with ACS, isolated by policy) each with an endpoint",
            root_port(root_port(Topology::base(), "rp1", 1), "rp2", 2)
                .object("memory-backend-ram,id=shm,size=1M")
                .device("edu,bus=rp1")
                .device("ivshmem-plain,memdev=shm,bus=rp2"),
        ),
        pci(
            "pci-two-root-ports-no-iommu",
            "the same without an IOMMU: ACS is left as firmware set it",
            root_port(root_port(Topology::base(), "rp1", 1), "rp2", 2)
                .device("edu,bus=rp1")
                .device("edu,bus=rp2")
                .without_iommu(),
        ),
        pci(
            "pci-pxb",
            "an extra host bridge (pxb-pcie, root bus 0x40) with a root port and an endpoint",
            Topology::base()
                .device("pxb-pcie,id=pxb,bus_nr=64,bus=pcie.0")
                .device("pcie-root-port,id=rp1,bus=pxb,chassis=1")
                .device("edu,bus=rp1"),
        ),
        pci(
            "groups-pcie-pci-bridge",
            "two edus behind one pcie-pci-bridge share its requester-ID alias: one isolation group with the bridge",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=1")
                .device("edu,bus=ppb,addr=2"),
        ),
        pci(
            "groups-multifunction",
            "multifunction edus without ACS (below a root port and on pcie.0) form one group each; root ports with ACS as functions of one slot stay apart",
            root_port(Topology::base(), "rp1", 1)
                .device("edu,bus=rp1,addr=0.0,multifunction=on")
                .device("edu,bus=rp1,addr=0.1")
                .device("edu,addr=5.0,multifunction=on")
                .device("edu,addr=5.1")
                .device("pcie-root-port,id=rp2,chassis=2,bus=pcie.0,addr=6.0,multifunction=on")
                .device("pcie-root-port,id=rp3,chassis=3,bus=pcie.0,addr=6.1")
                .device("edu,bus=rp2")
                .device("edu,bus=rp3"),
        ),
        pci(
            "pci-conventional-bridges",
            "endpoints behind a pcie-pci-bridge and a conventional pci-bridge (requester-ID aliases)",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("pci-bridge,id=pb,chassis_nr=5,bus=pcie.0")
                .device("edu,bus=pb,addr=4"),
        ),
    ]
}

/// The kernel command line for VT-d tests: the selected tests plus the expectations the
/// topology implies, computed from the same values QEMU is given (table depth from `aw-bits`,
/// caching mode, edu's DMA mask).
fn vtd_cmdline(t: &Topology, tests: &[&str]) -> String {
    let props = t.iommu.clone().unwrap_or_default();
    let has = |kv: &str| props.split(',').any(|p| p == kv);
    let levels = if has("aw-bits=48") { 4 } else { 3 };
    let cm = u8::from(has("caching-mode=on"));
    let mut line = format!(
        "test={} expect.levels={levels} expect.cm={cm}",
        tests.join(",")
    );
    line.push_str(&edu_mask_arg(t));
    line
}

/// ` edu.dma_mask=<mask>` when the topology gives edu a `dma_mask` (the kernel must check
/// addresses against the same mask QEMU applies), else nothing.
fn edu_mask_arg(t: &Topology) -> String {
    t.devices
        .iter()
        .filter(|a| a.starts_with("edu"))
        .flat_map(|a| a.split(','))
        .find_map(|p| p.strip_prefix("dma_mask="))
        .map(|m| format!(" edu.dma_mask={m}"))
        .unwrap_or_default()
}

/// VT-d scenarios: DMA by the edu device through the IOMMU, proven by memory contents and
/// fault records.
fn vtd_scenarios() -> Vec<Scenario> {
    let vtd = |name, about, topology: Topology, tests: &[&str]| {
        let cmdline = vtd_cmdline(&topology, tests);
        Scenario {
            cmdline,
            ..Scenario::passing(name, about, topology, "", tests.len())
        }
    };
    let basic = [
        "vtd::capabilities",
        "vtd::dma_both_directions",
        "vtd::unmapped_iova_blocked",
        "vtd::unmap_invalidates_iotlb",
        "vtd::skipped_invalidation_is_caught",
    ];
    let two_edu = Topology::base().device("edu").device("edu");
    vec![
        vtd(
            "vtd-default",
            "3-level tables: DMA both ways, blocked DMA faults, strict unmap and detach each with a negative control, two isolated domains, 2 MiB superpage",
            two_edu.clone(),
            &[&basic[..], &["vtd::detach_blocks_at_once", "vtd::detach_without_invalidation_is_caught", "vtd::domains_isolated", "vtd::superpage_2m"]].concat(),
        ),
        vtd(
            "vtd-aw48",
            "aw-bits=48: 4-level tables chosen and asserted, DMA and faults work",
            Topology { iommu: Some("aw-bits=48".into()), ..Topology::base() }.device("edu"),
            &[&basic[..], &["vtd::superpage_2m"]].concat(),
        ),
        vtd(
            "vtd-caching-mode",
            "caching-mode=on: new mappings are invalidated before use (CM decoded and asserted)",
            Topology { iommu: Some("caching-mode=on".into()), ..Topology::base() }.device("edu").device("edu"),
            &[&basic[..], &["vtd::domains_isolated"]].concat(),
        ),
        vtd(
            "vtd-aliases",
            "edu behind a pcie-pci-bridge and behind a pci-bridge: attached through their requester-ID aliases, faults name the alias, detach clears the alias's context entry",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("pci-bridge,id=pb,chassis_nr=5,bus=pcie.0")
                .device("edu,bus=pb,addr=4"),
            &["vtd::capabilities", "vtd::dma_both_directions", "vtd::unmapped_iova_blocked", "vtd::detach_blocks_at_once"],
        ),
        vtd(
            "vtd-pxb",
            "edu behind a root port on a pxb-pcie extra host bridge: found through the DMAR bridge scope, DMA and faults work",
            Topology::base()
                .device("edu")
                .device("pxb-pcie,id=pxb,bus_nr=64,bus=pcie.0")
                .device("pcie-root-port,id=rp1,bus=pxb,chassis=1")
                .device("edu,bus=rp1"),
            &["vtd::capabilities", "vtd::dma_both_directions", "vtd::unmapped_iova_blocked"],
        ),
        vtd(
            "vtd-superpage-1g",
            "a 1 GiB superpage (3 GiB guest, edu dma_mask raised to 32 bits) carries DMA at both ends",
            Topology { memory: "3G".into(), ..Topology::base() }.device("edu,dma_mask=0xffffffff"),
            &["vtd::superpage_1g"],
        ),
    ]
}

/// Isolation groups under DMA: two functions that form one group share one domain, both move
/// bytes through it, cannot be split across domains, and the group detaches with its last member.
fn group_dma_scenarios() -> Vec<Scenario> {
    let tests = [
        "groups::pair_is_one_group",
        "groups::pair_shares_one_domain",
        "groups::pair_cannot_be_split",
        "groups::last_member_detaches",
    ];
    let run = |name, about, topology: Topology| Scenario {
        cmdline: vtd_cmdline(&topology, &tests),
        ..Scenario::passing(name, about, topology, "", tests.len())
    };
    let rmrr_tests = [
        "rmrr::identity_mapped_from_boot",
        "rmrr::driver_joins_the_boot_domain",
    ];
    let rmrr_topology = Topology::base().device("edu,bus=pcie.0,addr=6");
    let rmrr = Scenario {
        // QEMU's DMAR has no RMRR: name one for the edu at 00:06.0 in low RAM the kernel never
        // allocates, treated by the kernel exactly like a firmware RMRR.
        cmdline: format!(
            "{} vtd.rmrr=00:06.0@0x70000-0x7ffff",
            vtd_cmdline(&rmrr_topology, &rmrr_tests)
        ),
        ..Scenario::new(
            "vtd-rmrr-from-boot",
            "an RMRR device is attached at boot with its region identity-mapped (DMA works with no driver, outside the region faults); a driver joins that domain and the IOVA space avoids the region",
            rmrr_topology,
            "",
            Expect::Pass {
                passed: rmrr_tests.len(),
            },
        )
    };
    vec![
        rmrr,
        run(
            "groups-bridge-dma",
            "two edus behind one pcie-pci-bridge (one DMA alias) are one group: one domain, both DMA, no split, detach with the last member",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("edu,bus=ppb,addr=4"),
        ),
        run(
            "groups-multifunction-dma",
            "the two functions of a multifunction device without ACS are one group: one domain, both DMA, no split, detach with the last member",
            Topology::base()
                .device("edu,bus=pcie.0,addr=5.0,multifunction=on")
                .device("edu,bus=pcie.0,addr=5.1"),
        ),
    ]
}

/// DMA API scenarios: `DmaDevice` mappings used by the edu device, under the IOMMU and on the
/// direct path.
fn dma_api_scenarios() -> Vec<Scenario> {
    let run = |name, about, topology, tests: &[&str]| {
        let cmdline = format!("test={}", tests.join(","));
        Scenario::passing(name, about, topology, &cmdline, tests.len())
    };
    vec![
        run(
            "dma-api-iommu",
            "map_phys both ways, untrusted sub-page bounce isolation, reused bounce slots zero-padded, strict Mapping::unmap then fault, direction enforced (write into ToDevice faults, with controls), scatter list, batched unmap then fault (with negative control), deferred unmap quarantine until flush, unaligned MMIO",
            Topology::base().device("edu"),
            &[
                "dmaapi::map_phys_both_directions",
                "dmaapi::untrusted_subpage_isolated",
                "dmaapi::bounce_slot_reused_zero_padded",
                "dmaapi::strict_unmap_then_fault",
                "dmaapi::direction_enforced",
                "dmaapi::scatter_list",
                "dmaapi::batch_unmap_then_fault",
                "dmaapi::batch_without_flush_is_caught",
                "dmaapi::deferred_unmap_quarantines_until_flush",
                "dmaapi::mmio_unaligned_small",
            ],
        ),
        run(
            "dma-api-direct",
            "no IOMMU (512 MiB): map_phys both ways, buffers above edu's 28-bit mask bounced and intact, scatter list, MMIO beyond the mask refused",
            Topology::base().without_iommu().device("edu"),
            &[
                "dmaapi::map_phys_both_directions",
                "dmaapi::bounce_above_mask",
                "dmaapi::scatter_list",
                "dmaapi::mmio_beyond_mask_refused",
            ],
        ),
    ]
}

/// The map type the kernel must compute between the first ivshmem (provider) and the first edu
/// (client), derived from the topology model: a common upstream bridge with no ACS-capable port
/// (in QEMU 7.2 only root ports, 1b36:000c, have ACS, and our policy enables redirects there)
/// on either path below it means the transfer stays in the switch (`bus`); otherwise it goes
/// through the host bridge (`thru`).
fn expected_map_type(t: &Topology) -> &'static str {
    let Ok(functions) = crate::pci_model::expected_functions(t) else {
        return "unknown";
    };
    let find = |v: u16, d: u16| {
        functions
            .iter()
            .filter(|f| (f.vendor, f.device) == (v, d))
            .map(|f| f.bdf)
            .min()
    };
    let (Some(provider), Some(client)) = (find(0x1af4, 0x1110), find(0x1234, 0x11e8)) else {
        return "unknown";
    };
    let path = |mut b: crate::pci_model::Bdf| {
        let mut up = Vec::new();
        while let Some(p) = functions.iter().find(|f| f.bdf == b).and_then(|f| f.parent) {
            up.push(p);
            b = p;
        }
        up
    };
    let (pp, cp) = (path(provider), path(client));
    let Some(common) = pp.iter().find(|b| cp.contains(b)) else {
        return "thru";
    };
    let below = |p: &[crate::pci_model::Bdf]| {
        p.iter()
            .take_while(|b| *b != common)
            .copied()
            .collect::<Vec<_>>()
    };
    let acs_port = |b: &crate::pci_model::Bdf| {
        functions
            .iter()
            .any(|f| f.bdf == *b && (f.vendor, f.device) == (0x1b36, 0x000c))
    };
    if below(&pp).iter().chain(&below(&cp)).any(acs_port) {
        "thru"
    } else {
        "bus"
    }
}

/// P2P scenarios: edu imports ivshmem's BAR2 (and nvme's CMB) through revocable handles.
fn p2p_scenarios() -> Vec<Scenario> {
    let run = |name, about, topology: Topology, tests: &[&str]| {
        let cmdline = format!(
            "test={} expect.maptype={}{}",
            tests.join(","),
            expected_map_type(&topology),
            edu_mask_arg(&topology)
        );
        Scenario::passing(name, about, topology, &cmdline, tests.len())
    };
    let shm = |t: Topology| t.object("memory-backend-ram,id=shm,size=1M");
    vec![
        run(
            "p2p-iommu",
            "edu DMAs into ivshmem BAR2 through an exported handle (THRU_HOST_BRIDGE); revoke blocks it with a fault, restore re-enables; memory-disable, bus reset, FLR, D3hot (nvme CMB) and removal each revoke",
            shm(Topology::base())
                .device("edu")
                .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
                .device("ivshmem-plain,memdev=shm,bus=rp1")
                .device("pcie-root-port,id=rp2,chassis=2,bus=pcie.0")
                .device("nvme,serial=deadbeef,cmb_size_mb=2,bus=rp2"),
            &[
                "p2p::classification",
                "p2p::dma_into_bar",
                "p2p::revoke_cuts_off_and_restore_works",
                "p2p::trigger_memory_disable",
                "p2p::trigger_bus_reset",
                "p2p::trigger_flr",
                "p2p::trigger_d3hot",
                "p2p::trigger_removal",
            ],
        ),
        run(
            "p2p-switch",
            "provider and client behind one switch (no ACS on QEMU's switch ports): BUS_ADDR, segment = paddr + bus_offset (edu mask raised to 32 bits to reach the BAR)",
            shm(Topology::base())
                .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
                .device("x3130-upstream,id=up,bus=rp1")
                .device("xio3130-downstream,id=dn1,bus=up,chassis=2,slot=0")
                .device("xio3130-downstream,id=dn2,bus=up,chassis=3,slot=1")
                .device("edu,bus=dn1,dma_mask=0xffffffff")
                .device("ivshmem-plain,memdev=shm,bus=dn2"),
            &["p2p::classification"],
        ),
        run(
            "p2p-no-iommu",
            "without intel-iommu, mapping the ivshmem BAR for edu is refused: its 28-bit mask cannot reach it and MMIO is never bounced",
            shm(Topology::base().without_iommu()).device("edu").device("ivshmem-plain,memdev=shm,bus=pcie.0"),
            &["p2p::no_iommu_refused"],
        ),
    ]
}

/// Where the injected DMARs put their (refused) remapping units: QEMU's own DRHD address, unused
/// without `intel-iommu`, so a kernel that mapped and probed it anyway would read junk.
const FAKE_DRHD_BASE: u64 = 0xFED9_0000;
/// The kernel's line for a DMAR without a usable remapping unit.
const NO_USABLE_UNIT: &str = "vt-d: DMAR has no usable remapping unit: no IOMMU";

/// A DMAR with no DRHD at all: an RMRR and nothing that remaps.
fn dmar_without_drhd() -> Vec<u8> {
    use iommu_vtd::dmar::{PathEntry, ScopeSpec};
    let edu = [PathEntry {
        device: 1,
        function: 0,
    }];
    iommu_vtd::DmarBuilder::new(39)
        .oem_table_id(*b"NODRHD  ")
        .rmrr(0, 0xE_0000, 0xF_FFFF, &[ScopeSpec::endpoint(0, &edu)])
        .build()
}

/// A DMAR whose only DRHDs have absurd register sizes: Size byte 0xff (reserved bits set; the
/// review's 2^267-byte window) and 0x0f (2^15 pages = 128 MiB, above the 1 MiB bound).
fn dmar_with_absurd_register_sizes() -> Vec<u8> {
    use iommu_vtd::dmar::{scope_type, PathEntry, ScopeSpec};
    let ioapic = [PathEntry {
        device: 0,
        function: 0,
    }];
    let scope = ScopeSpec {
        kind: scope_type::IOAPIC,
        flags: 0,
        enumeration_id: 0,
        start_bus: 0xff,
        path: &ioapic,
    };
    iommu_vtd::DmarBuilder::new(39)
        .oem_table_id(*b"HUGEREGS")
        .drhd(0, 0xff, 0, FAKE_DRHD_BASE, &[scope])
        .drhd(0, 0x0f, 0, FAKE_DRHD_BASE + 0x1000, &[scope])
        .build()
}

/// DRHD structures in a generated DMAR (walked by their length fields), to compute how many
/// refusals the kernel must report.
fn drhd_count(dmar: &[u8]) -> usize {
    iommu_vtd::Dmar::parse(dmar).map_or(0, |d| {
        d.refused()
            .filter(|r| {
                r.structure == iommu_vtd::dmar::structure_type::DRHD
                    && !matches!(r.error, iommu_vtd::StructureError::ReservedScopeType { .. })
            })
            .count()
            + d.drhds().count()
    })
}

/// A scenario with an injected DMAR and no `intel-iommu`: the DMAR is listed, the kernel says
/// exactly once that there is no usable IOMMU, reports each refused DRHD, never brings a unit
/// up, and the DMA test ran on the direct path.
fn no_usable_iommu(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    ensure(s.topology.iommu.is_none(), || {
        "this check is for machines without intel-iommu".into()
    })?;
    ensure(
        log.lines().any(|l| l.trim_start().starts_with("DMAR ")),
        || "the injected DMAR is not in the ACPI list".into(),
    )?;
    let said = log.matches(NO_USABLE_UNIT).count();
    ensure(said == 1, || {
        format!("{NO_USABLE_UNIT:?} printed {said} times, expected once")
    })?;
    let dmar = s
        .acpi_tables
        .iter()
        .find(|t| t.bytes.starts_with(b"DMAR"))
        .ok_or("no DMAR among the scenario's tables")?;
    let drhds = drhd_count(&dmar.bytes);
    let ignored = log
        .lines()
        .filter(|l| l.contains("DMAR structure at") && l.contains("(DRHD) ignored"))
        .count();
    ensure(ignored == drhds, || {
        format!("{ignored} refused DRHD(s) logged, the table has {drhds}")
    })?;
    ensure(!log.contains("iommu: VT-d unit"), || {
        "a VT-d unit was brought up".into()
    })?;
    ensure(log.contains("direct path:"), || {
        "the DMA test did not run on the direct path".into()
    })?;
    Ok(format!(
        "no usable IOMMU said once, {drhds} DRHD(s) refused, direct DMA"
    ))
}

/// Firmware that must be refused: a DMAR injected with `-acpitable` on a machine without
/// `intel-iommu`, once with no DRHD and once with DRHDs of absurd register size. Both must boot
/// promptly (a kernel mapping a 2^267-byte window once stalled for 25 s, hence the short
/// timeout), say once that there is no usable IOMMU, leave ACS alone (`pci::acs_isolation`
/// checks the hardware against "no IOMMU") and DMA on the direct path.
fn firmware_scenarios() -> Vec<Scenario> {
    let tests = [
        "boot::start_info",
        "boot::sse",
        "boot::idt_every_vector_on_ist",
        "boot::tsc_calibrated",
        "boot::acpi_tables",
        "pci::acs_isolation",
        "dmaapi::map_phys_both_directions",
    ];
    let run = |name, about, dmar: Vec<u8>| {
        let topology = Topology::base()
            .without_iommu()
            .device("edu")
            .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0");
        let cmdline = format!(
            "test={} expect.acs_ports={}",
            tests.join(","),
            acs_ports(&topology)
        );
        Scenario {
            timeout_secs: 20,
            check: Some(no_usable_iommu as LogCheck),
            acpi_tables: vec![AcpiTableFile {
                name: "dmar",
                bytes: dmar,
            }],
            ..Scenario::passing(name, about, topology, &cmdline, tests.len())
        }
    };
    vec![
        run(
            "firmware-dmar-no-drhd",
            "a DMAR with no DRHD (injected, no intel-iommu): boots promptly, no IOMMU said once, ACS left alone, direct DMA",
            dmar_without_drhd(),
        ),
        run(
            "firmware-dmar-absurd-register-size",
            "a DMAR whose DRHDs declare 2^267-byte and 128 MiB register windows: refused without mapping them, no IOMMU said once, direct DMA",
            dmar_with_absurd_register_sizes(),
        ),
    ]
}

/// Interrupt scenarios: the whole `irq` suite (local APIC, dispatch, LAPIC timer, I/O APIC,
/// deferred deadlines from the timer) on q35 + intel-iommu with an edu, and again with another
/// tick period (500 us).
fn irq_scenarios() -> Vec<Scenario> {
    let irq_suite = suite_size(include_str!("../../kernel/src/tests/irq.rs"));
    vec![
        Scenario::passing(
            "irq",
            "self-IPI handled exactly once with its vector, unregistered vector counted and EOId, vector exhaustion, APIC error handler reads ESR (with control), LAPIC timer ticks and callbacks vs TSC (+-30%), PIT IRQ0 through the I/O APIC (masked control), deferred domain flushed by the timer within T with a faulting DMA after (timer-off control)",
            Topology::base().device("edu"),
            "test=irq",
            irq_suite,
        ),
        Scenario::passing(
            "irq-fast-tick",
            "the irq suite with timer.period_us=500 (the tolerance checks measure another tick period; the option reaches the timer)",
            Topology::base().device("edu"),
            "test=irq timer.period_us=500",
            irq_suite,
        ),
    ]
}

/// VT-d fault events as interrupts: the `faultirq` suite (fault event programmed, a blocked DMA
/// raises one interrupt and reaches its domain owner's callback without polling, another
/// domain's owner and the default sink get theirs only, an overflow reported once) with two edus; the same suite and the
/// VT-d fault tests in polling mode (`vtd.fault_irq=off`: FECTL masked, no interrupt, records
/// dispatched and returned by the poll).
fn fault_irq_scenarios() -> Vec<Scenario> {
    let suite = suite_size(include_str!("../../kernel/src/tests/faultirq.rs"));
    let two_edu = || Topology::base().device("edu").device("edu");
    let polled = ["vtd::unmapped_iova_blocked", "vtd::unmap_invalidates_iotlb"];
    vec![
        Scenario::passing(
            "vtd-fault-irq",
            "fault events as interrupts: FEADDR/FEDATA hold a fixed MSI to the BSP and FECTL is unmasked; an unmapped-IOVA write raises exactly one interrupt and its decoded fault (source, page, write, reason 5) is in the domain owner's callback before any poll; a second domain's read fault reaches only its owner; an unowned fault reaches the default sink; two faults with interrupts off: one event, the kept record to its owner, the overflow reported once",
            two_edu(),
            "test=faultirq",
            suite,
        ),
        Scenario::passing(
            "vtd-fault-polled",
            "vtd.fault_irq=off: FECTL stays masked, no fault-event interrupt, nothing dispatched until the poll, which dispatches and returns the same records; the VT-d fault tests pass by polling",
            two_edu(),
            &format!(
                "{} vtd.fault_irq=off",
                vtd_cmdline(&two_edu(), &[&["faultirq"][..], &polled[..]].concat())
            ),
            suite + polled.len(),
        ),
    ]
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

/// Every scenario, in the order `cargo xtask test` runs them.
pub fn all() -> Vec<Scenario> {
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
    all.extend(vtd_scenarios());
    all.extend(group_dma_scenarios());
    all.extend(dma_api_scenarios());
    all.extend(p2p_scenarios());
    all.extend(firmware_scenarios());
    all.extend(irq_scenarios());
    all.extend(fault_irq_scenarios());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> Scenario {
        all().into_iter().find(|s| s.name == name).unwrap()
    }

    const PASS_LOG: &str = "  DMAR  rev  1\nKTEST BEGIN a::b\nKTEST PASS a::b 1us\nKTEST SUMMARY passed=1 failed=0\nKERNEL EXIT success\n";

    #[test]
    fn map_type_follows_the_topology() {
        let by_name = |n: &str| all().into_iter().find(|s| s.name == n).unwrap();
        assert!(by_name("p2p-switch").cmdline.contains("expect.maptype=bus"));
        assert!(by_name("p2p-iommu").cmdline.contains("expect.maptype=thru"));
    }

    #[test]
    fn generated_dmars_are_well_framed_and_unusable() {
        for s in all().iter().filter(|s| s.name.starts_with("firmware-dmar")) {
            let dmar = &s.acpi_tables[0].bytes;
            let parsed = iommu_vtd::Dmar::parse(dmar).expect("framing is valid");
            assert!(matches!(
                parsed.require_unit(),
                Err(iommu_vtd::DmarError::NoRemappingUnit { .. })
            ));
        }
        assert_eq!(drhd_count(&dmar_without_drhd()), 0);
        assert_eq!(drhd_count(&dmar_with_absurd_register_sizes()), 2);
    }

    #[test]
    fn no_usable_iommu_check_needs_every_piece() {
        let s = scenario("firmware-dmar-absurd-register-size");
        let good = format!(
            "  DMAR  rev  1\nvt-d: DMAR structure at 0x30 (DRHD) ignored: x\n\
             vt-d: DMAR structure at 0x40 (DRHD) ignored: y\n{NO_USABLE_UNIT} (z)\n  direct path: ok\n"
        );
        let o = crate::outcome::parse(&good);
        assert!(no_usable_iommu(&s, &o, &good).is_ok());
        let twice = format!("{good}{NO_USABLE_UNIT}\n");
        assert!(no_usable_iommu(&s, &o, &twice).is_err());
        let up = format!("{good}iommu: VT-d unit 0xfed90000 translating\n");
        assert!(no_usable_iommu(&s, &o, &up).is_err());
        let one_refusal = good.replacen("(DRHD) ignored", "(RMRR) ignored", 1);
        assert!(no_usable_iommu(&s, &o, &one_refusal).is_err());
        assert!(no_usable_iommu(&s, &o, &good.replace("direct path", "IOMMU path")).is_err());
    }

    #[test]
    fn suite_sizes_come_from_the_kernel_source() {
        assert_eq!(
            suite_size("    Test {\n        name: \"a\",\n    },\n    Test {\n"),
            2
        );
        // Every test function named in the suites is counted (each entry names its `run`).
        let boot = include_str!("../../kernel/src/tests/boot.rs");
        assert_eq!(boot_suite(), boot.matches("run: ").count());
        assert!(boot_suite() >= 5 && memory_suite() >= 9);
        match scenario("boot-smoke").expect {
            Expect::Pass { passed } => assert_eq!(passed, boot_suite() + memory_suite()),
            other => panic!("boot-smoke expects {other:?}"),
        }
    }

    #[test]
    fn pass_count_is_exact() {
        let s = Scenario {
            expect: Expect::Pass { passed: 0 },
            ..scenario("boot-smoke")
        };
        assert!(
            s.judge(PASS_LOG, Exit::Status(QEMU_SUCCESS)).is_err(),
            "one more test than expected must fail"
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = all().iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all().len());
    }

    #[test]
    fn pass_needs_success_status_and_enough_tests() {
        let s = Scenario {
            expect: Expect::Pass { passed: 1 },
            ..scenario("boot-smoke")
        };
        assert!(s.judge(PASS_LOG, Exit::Status(QEMU_SUCCESS)).is_ok());
        assert!(
            s.judge(PASS_LOG, Exit::Status(0)).is_err(),
            "a triple fault must not pass"
        );
        assert!(s.judge(PASS_LOG, Exit::TimedOut).is_err());
        let s2 = Scenario {
            expect: Expect::Pass { passed: 2 },
            ..s.clone()
        };
        assert!(s2.judge(PASS_LOG, Exit::Status(QEMU_SUCCESS)).is_err());
    }

    #[test]
    fn dmar_check_follows_the_topology() {
        let s = scenario("boot-no-iommu");
        let s = Scenario {
            expect: Expect::Pass { passed: 1 },
            ..s
        };
        let err = s.judge(PASS_LOG, Exit::Status(QEMU_SUCCESS)).unwrap_err();
        assert!(err.contains("DMAR listed: true"), "{err}");
    }

    #[test]
    fn expected_failures_must_match_exactly() {
        let s = scenario("failed-check-isolated");
        let s = Scenario {
            expect: Expect::Failures {
                failed: &["a::y"],
                passed: 1,
            },
            ..s
        };
        let log = "KTEST BEGIN a::x\nKTEST PASS a::x 1us\nKTEST BEGIN a::y\nKTEST FAIL a::y f:1: no\nKERNEL EXIT failure\n";
        assert!(s.judge(log, Exit::Status(QEMU_FAILURE)).is_ok());
        let extra = format!("{log}KTEST BEGIN a::z\nKTEST FAIL a::z f:2: no\n");
        assert!(s.judge(&extra, Exit::Status(QEMU_FAILURE)).is_err());
    }

    #[test]
    fn crash_expectations() {
        let pf = scenario("page-fault-reported");
        let log = "KTEST BEGIN crash::page_fault\nKERNEL EXCEPTION vector=14 (#PF page fault) error=0x0 rip=0x1 cr2=0x7deadb000 (x)\nKERNEL EXIT failure\n";
        assert!(pf.judge(log, Exit::Status(QEMU_FAILURE)).is_ok());
        assert!(pf
            .judge(
                &log.replace("vector=14", "vector=13"),
                Exit::Status(QEMU_FAILURE)
            )
            .is_err());
        let hang = scenario("hang-times-out");
        assert!(hang
            .judge("KTEST BEGIN crash::hang\n", Exit::TimedOut)
            .is_ok());
        assert!(
            hang.judge("", Exit::TimedOut).is_err(),
            "a boot hang is not the test's hang"
        );
        let demo = scenario("demo");
        let incomplete = "ready: up\nKERNEL EXIT success\n";
        assert!(demo.judge(incomplete, Exit::Status(QEMU_SUCCESS)).is_err());
        assert!(hang
            .judge("KERNEL EXIT success\n", Exit::Status(QEMU_SUCCESS))
            .is_err());
        let p = scenario("panic-reported");
        assert!(p
            .judge(
                "KERNEL PANIC at a:1: other\nKERNEL EXIT failure\n",
                Exit::Status(QEMU_FAILURE)
            )
            .is_err());
    }
}
