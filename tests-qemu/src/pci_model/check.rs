//! The check of a kernel listing against the model: the same functions with the same IDs,
//! class, kind, parent, secondary bus, BARs, requester IDs and group partition, and sane BAR
//! addresses.

use super::*;

pub(super) fn show_parent(p: Option<Bdf>) -> String {
    p.map_or("root".into(), |b| b.full())
}

pub(super) fn show_secondary(s: Option<u8>) -> String {
    s.map_or("-".into(), |b| format!("{b:02x}"))
}

fn show_list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.iter().map(show).collect::<Vec<_>>().join(",")
    }
}

/// Checks the kernel's `PCIDEV` listing in `log` against the model of `topology`: the same set
/// of functions, and for each the same ID, class, kind, parent, secondary bus, BAR indices,
/// types and sizes, and requester IDs; every BAR address non-zero and aligned to its size, no
/// two BARs of the same space overlapping. `Ok` summarises; `Err` lists the first problems, each
/// naming the function and what was expected against what was listed.
pub fn check_pci_listing(topology: &Topology, log: &str) -> Result<String, String> {
    let expected = expected_functions(topology)
        .map_err(|e| format!("the PCI model cannot predict this topology: {e}"))?;
    let listed = parse_pci_listing(log)?;
    if listed.is_empty() {
        return Err("no PCIDEV lines in the log".into());
    }
    let mut problems = Vec::new();
    let mut by_bdf: BTreeMap<Bdf, &ListedFunction> = BTreeMap::new();
    for f in &listed {
        if by_bdf.insert(f.bdf, f).is_some() {
            problems.push(format!("{} listed twice", f.bdf.full()));
        }
    }
    for e in &expected {
        let Some(got) = by_bdf.get(&e.bdf) else {
            problems.push(format!(
                "{} missing: expected {:04x}:{:04x} {} ({})",
                e.bdf.full(),
                e.vendor,
                e.device,
                e.kind.name(),
                e.origin
            ));
            continue;
        };
        let mut field = |name: &str, want: String, have: String| {
            if want != have {
                problems.push(format!(
                    "{} ({}) {name}: expected {want}, got {have}",
                    e.bdf.full(),
                    e.origin
                ));
            }
        };
        field(
            "id",
            format!("{:04x}:{:04x}", e.vendor, e.device),
            format!("{:04x}:{:04x}", got.vendor, got.device),
        );
        field(
            "class",
            format!("{:06x}", e.class),
            format!("{:06x}", got.class),
        );
        field("kind", e.kind.name().into(), got.kind.name().into());
        field("parent", show_parent(e.parent), show_parent(got.parent));
        field(
            "secondary",
            show_secondary(e.secondary),
            show_secondary(got.secondary),
        );
        field(
            "bars (index:type:size)",
            show_list(&e.bars, Bar::to_string),
            show_list(&got.bars, |b| {
                Bar {
                    index: b.index,
                    ty: b.ty,
                    size: b.size,
                }
                .to_string()
            }),
        );
        field(
            "rids",
            show_list(&e.rids, Bdf::short),
            show_list(&got.rids, Bdf::short),
        );
    }
    for f in &listed {
        if !expected.iter().any(|e| e.bdf == f.bdf) {
            problems.push(format!(
                "{} unexpected: {:04x}:{:04x} {} is not in the topology",
                f.bdf.full(),
                f.vendor,
                f.device,
                f.kind.name()
            ));
        }
    }
    problems.extend(check_bar_addresses(&listed));
    problems.extend(check_groups(&expected, &listed));
    if problems.is_empty() {
        let bars: usize = expected.iter().map(|e| e.bars.len()).sum();
        let groups: std::collections::BTreeSet<usize> = expected.iter().map(|e| e.group).collect();
        return Ok(format!(
            "{} PCI functions match the topology ({bars} BARs placed without overlap, {} \
             isolation groups as the model partitions them)",
            expected.len(),
            groups.len()
        ));
    }
    const SHOWN: usize = 12;
    let mut report = format!(
        "the PCI listing disagrees with the topology ({} problems):",
        problems.len()
    );
    for p in problems.iter().take(SHOWN) {
        report.push_str("\n  ");
        report.push_str(p);
    }
    if problems.len() > SHOWN {
        report.push_str(&format!("\n  ... and {} more", problems.len() - SHOWN));
    }
    Err(report)
}

/// The expected partition as sorted member lists, sorted.
pub fn expected_partition(expected: &[ExpectedFunction]) -> Vec<Vec<Bdf>> {
    let mut by_group: BTreeMap<usize, Vec<Bdf>> = BTreeMap::new();
    for e in expected {
        by_group.entry(e.group).or_default().push(e.bdf);
    }
    sorted_partition(by_group.into_values())
}

fn sorted_partition(classes: impl Iterator<Item = Vec<Bdf>>) -> Vec<Vec<Bdf>> {
    let mut p: Vec<Vec<Bdf>> = classes
        .map(|mut c| {
            c.sort();
            c
        })
        .collect();
    p.sort();
    p
}

/// The listed groups form the model's partition: functions share a label exactly when the model
/// puts them in one group. Labels are compared as classes, never as strings.
fn check_groups(expected: &[ExpectedFunction], listed: &[ListedFunction]) -> Vec<String> {
    let mut problems = Vec::new();
    let label: HashMap<Bdf, &str> = listed.iter().map(|f| (f.bdf, f.group.as_str())).collect();
    for f in listed.iter().filter(|f| f.group == "-") {
        problems.push(format!("{} has no group", f.bdf.full()));
    }
    for (i, a) in expected.iter().enumerate() {
        for b in &expected[i + 1..] {
            let (Some(la), Some(lb)) = (label.get(&a.bdf), label.get(&b.bdf)) else {
                continue;
            };
            let listed_same = la == lb && *la != "-";
            let model_same = a.group == b.group;
            if listed_same != model_same {
                problems.push(format!(
                    "{} ({}) and {} ({}): {} in the model, {} in the listing (group={la} / \
                     group={lb})",
                    a.bdf.full(),
                    a.origin,
                    b.bdf.full(),
                    b.origin,
                    if model_same {
                        "one group"
                    } else {
                        "separate groups"
                    },
                    if listed_same {
                        "one group"
                    } else {
                        "separate groups"
                    },
                ));
            }
        }
    }
    problems
}

/// Address sanity of the listed BARs: non-zero, size a power of two, aligned, and no overlap
/// with another BAR in the same (memory or I/O) space.
fn check_bar_addresses(listed: &[ListedFunction]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ranges: Vec<(bool, u64, u64, String)> = Vec::new();
    for f in listed {
        for b in &f.bars {
            let name = format!("{} BAR{} ({})", f.bdf.full(), b.index, b.ty.name());
            if b.address == 0 {
                problems.push(format!("{name} has address 0 (unassigned)"));
            } else if !b.size.is_power_of_two() {
                problems.push(format!("{name} size {:#x} is not a power of two", b.size));
            } else if b.address % b.size != 0 {
                problems.push(format!(
                    "{name} at {:#x} is not aligned to its size {:#x}",
                    b.address, b.size
                ));
            }
            let end = b.address.saturating_add(b.size);
            ranges.push((b.ty.is_memory(), b.address, end, name));
        }
    }
    // Sweep each space in address order, remembering the range that reaches furthest.
    ranges.sort_by_key(|r| (r.0, r.1));
    let mut reach: Option<&(bool, u64, u64, String)> = None;
    for r in &ranges {
        match reach {
            Some(a) if a.0 == r.0 && r.1 < a.2 => {
                problems.push(format!(
                    "{} [{:#x}, {:#x}) overlaps {} [{:#x}, {:#x})",
                    a.3, a.1, a.2, r.3, r.1, r.2
                ));
                if r.2 > a.2 {
                    reach = Some(r);
                }
            }
            _ => reach = Some(r),
        }
    }
    problems
}
