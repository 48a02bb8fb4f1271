//! The model's isolation groups against Linux 6.1's IOMMU groups, recorded by
//! `../shared/oracles/linux-guest.sh` on the same QEMU machines (`fixtures/linux-groups/*.txt`).
//!
//! Each fixture is the oracle's raw report, preceded by two lines the recording script wrote: the
//! oracle command and `# scenario-args: <devices>`, the scenario's QEMU arguments after
//! `-device intel-iommu` (the oracle machine is `-nodefaults` with its own intel-iommu, so the
//! default VGA and NIC were given back as `-device VGA,addr=1 -device e1000e,addr=2`, where q35's
//! defaults put them). The partition Linux printed is the ground truth; the model computes its
//! own from the arguments, and the two must be equal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tests_qemu::{expected_functions, expected_partition, Bdf, BdfText, Scenario};

fn fixtures() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linux-groups");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixture directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `-device ...` arguments after the IOMMU, joined as the recording script joined them; `None`
/// without an IOMMU (the oracle always has one).
fn scenario_args(s: &Scenario) -> Option<String> {
    s.topology.iommu.as_ref()?;
    Some(s.topology.devices.join(" "))
}

/// The partition in a report: `pci <bdf> ... iommu_group=N` lines. Every function must have a
/// group (QEMU's DMAR scopes cover every device on these machines).
fn linux_partition(name: &str, report: &str) -> Vec<Vec<Bdf>> {
    let mut by_group: BTreeMap<String, Vec<Bdf>> = BTreeMap::new();
    for line in report.lines().filter(|l| l.starts_with("pci ")) {
        let mut words = line.split_whitespace().skip(1);
        let b = Bdf::parse(words.next().unwrap()).expect("address");
        let g = words
            .find_map(|w| w.strip_prefix("iommu_group="))
            .expect("iommu_group=");
        assert_ne!(g, "-", "{name}: {b} has no IOMMU group");
        by_group.entry(g.to_string()).or_default().push(b);
    }
    let mut p: Vec<Vec<Bdf>> = by_group
        .into_values()
        .map(|mut m| {
            m.sort();
            m
        })
        .collect();
    p.sort();
    p
}

#[test]
fn model_partitions_equal_linux_groups() {
    let scenarios = tests_qemu::all();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 14, "only {} fixtures", fixtures.len());
    for (name, report) in &fixtures {
        let args = report
            .lines()
            .find_map(|l| l.strip_prefix("# scenario-args: "))
            .unwrap_or_else(|| panic!("{name}: no `# scenario-args:` line"))
            .trim();
        let matching: Vec<&Scenario> = scenarios
            .iter()
            .filter(|s| scenario_args(s).as_deref() == Some(args))
            .collect();
        assert!(
            !matching.is_empty(),
            "{name}: no scenario boots `{args}` (fixture out of date?)"
        );
        let linux = linux_partition(name, report);
        assert!(!linux.is_empty(), "{name}: no `pci` lines");
        for s in matching {
            let model = expected_partition(&expected_functions(&s.topology).unwrap());
            assert_eq!(model, linux, "{}: model vs Linux ({name}.txt)", s.name);
        }
    }
}

/// Every scenario that boots with an IOMMU has its topology recorded, so a new topology cannot
/// skip the comparison.
#[test]
fn every_iommu_topology_has_a_linux_fixture() {
    let recorded: Vec<String> = fixtures()
        .iter()
        .filter_map(|(_, r)| {
            r.lines()
                .find_map(|l| l.strip_prefix("# scenario-args: "))
                .map(|a| a.trim().to_string())
        })
        .collect();
    for s in tests_qemu::all() {
        if let Some(args) = scenario_args(&s) {
            assert!(
                recorded.contains(&args),
                "{}: no Linux groups fixture for `{args}` (record one with \
                 ../shared/oracles/linux-guest.sh)",
                s.name
            );
        }
    }
}
