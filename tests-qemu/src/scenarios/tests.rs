//! Host tests of the scenario list and the judge.

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
    let boot = include_str!("../../../kernel/src/tests/boot.rs");
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

/// The disk check finds what the kernel wrote and nothing else changed; a byte changed outside
/// the written range, a written range that does not hold the pattern, a wrong image size and a
/// malformed line are each refused.
#[test]
fn disk_images_are_checked_against_what_the_kernel_wrote() {
    let disk = DiskImage {
        id: "d",
        seed: 42,
        blocks: 64,
    };
    let mut image = disk.bytes();
    assert_eq!(image.len(), 64 * 512);
    assert!(disk.check("", &image).is_ok());
    // The kernel writes blocks 10..14 with stream 7.
    ::nvme::pattern::fill(7, 10 * 512, &mut image[10 * 512..14 * 512]);
    let log = "x\nNVME-WROTE lba=10 blocks=4 seed=0x7\n";
    let ok = disk.check(log, &image).expect("written range found");
    assert!(ok.contains("2048 written bytes"), "{ok}");
    // Without the line, the same image is a change nobody claimed.
    assert!(disk.check("", &image).is_err());
    // A byte outside the range changed.
    let mut bad = image.clone();
    bad[20 * 512 + 3] ^= 0x40;
    assert!(disk.check(log, &bad).unwrap_err().contains("LBA 20"));
    // A byte inside the range does not hold the written stream.
    let mut bad = image.clone();
    bad[11 * 512] ^= 1;
    assert!(disk.check(log, &bad).unwrap_err().contains("LBA 11"));
    assert!(disk.check(log, &image[..512]).is_err());
    assert!(disk
        .check("NVME-WROTE lba=x blocks=4 seed=7", &image)
        .is_err());
    assert!(disk
        .check("NVME-WROTE lba=62 blocks=4 seed=7", &image)
        .is_err());
}

const QEMU_10: QemuVersion = QemuVersion::new(10, 0, 2);

#[test]
fn table_depth_follows_the_versions_default_width() {
    let levels = |q: QemuVersion, name: &str| {
        let s = all_on(q).into_iter().find(|s| s.name == name).unwrap();
        assert_eq!(s.qemu, q);
        s.cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("expect.levels="))
            .unwrap()
            .to_string()
    };
    assert_eq!(levels(QemuVersion::BOOKWORM, "vtd-default"), "3");
    assert_eq!(levels(QEMU_10, "vtd-default"), "4");
    // An explicit aw-bits wins over the default.
    assert_eq!(levels(QemuVersion::BOOKWORM, "vtd-aw48"), "4");
    assert_eq!(levels(QEMU_10, "vtd-aw48"), "4");
}

/// The log a kernel on `q` prints for the intremap suite, built from the case model: each
/// case's line (blocked: nothing delivered, and the record where `q` records faults, with the
/// device's source-id or QEMU's FFFFh), a limit line for each case `q` cannot block.
fn intremap_log(q: QemuVersion) -> String {
    let mut log = String::from("interrupt remapping enabled\n");
    log.push_str(&format!(
        "IRQ-MSIX-PER-RAISE e1000e={}\n",
        q.e1000e_messages_per_ics()
    ));
    for (i, c) in irq::ir_cases_for_tests(q).into_iter().enumerate() {
        let device = if c.0.starts_with("ioapic") {
            "ff:00.0"
        } else {
            "00:03.0"
        };
        let source = if c.3 { device } else { "ff:1f.7" };
        let record = if c.1 && q.records_interrupt_remapping_faults() {
            format!("reason:{:#x},source:{source},index:{i}", c.2)
        } else {
            "none".into()
        };
        log.push_str(&format!(
            "IRQ-IR-FAULT case={} delivered={} device={device} record={record}\n",
            c.0,
            u8::from(!c.1)
        ));
        if !c.1 {
            log.push_str(&format!("{} {} delivered=1\n", irq::QEMU_LIMIT, c.0));
        }
    }
    log
}

#[test]
fn intremap_evidence_follows_the_version() {
    let on = |q| {
        let mut s = all_on(q)
            .into_iter()
            .find(|s| s.name == "intremap")
            .unwrap();
        s.expect = Expect::Pass { passed: 0 };
        s
    };
    for q in [QemuVersion::BOOKWORM, QEMU_10] {
        let s = on(q);
        let ok = irq::intremap_evidence(&s, &crate::outcome::parse(""), &intremap_log(q));
        assert!(ok.is_ok(), "{q}: {ok:?}");
        // The other version's log is refused: records where none are made, or missing ones;
        // e1000e's count per raise.
        let other = if q == QEMU_10 {
            QemuVersion::BOOKWORM
        } else {
            QEMU_10
        };
        let err = irq::intremap_evidence(&s, &crate::outcome::parse(""), &intremap_log(other));
        assert!(err.is_err(), "{q} accepted {other}'s log");
    }
    let s = on(QEMU_10);
    let good = intremap_log(QEMU_10);
    let judge = |log: &str| irq::intremap_evidence(&s, &crate::outcome::parse(""), log);
    let bad = [
        // The wrong-SID record names another source.
        good.replace("source:00:03.0", "source:00:02.0"),
        // The not-present record has another reason.
        good.replacen("reason:0x22", "reason:0x21", 1),
        // A case missing.
        good.lines()
            .filter(|l| !l.contains("case=ioapic-not-present"))
            .collect::<Vec<_>>()
            .join("\n"),
        // A blocked case delivered.
        good.replace(
            "case=wrong-sid-msi delivered=0",
            "case=wrong-sid-msi delivered=1",
        ),
        // A limit line too few.
        good.lines()
            .filter(|l| !l.contains("forged-compat delivered=1") || l.starts_with("IRQ-IR"))
            .collect::<Vec<_>>()
            .join("\n"),
    ];
    for (i, log) in bad.iter().enumerate() {
        assert_ne!(log, &good, "mutation {i} changed nothing");
        assert!(judge(log).is_err(), "mutation {i} accepted");
    }
}
