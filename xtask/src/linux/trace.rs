//! VT-d register accesses per operation, counted from QEMU's own trace: the events
//! `vtd_reg_read` / `vtd_reg_write` (hw/i386/intel_iommu.c) interleaved with `serial_write`
//! (hw/char/serial.c), whose transmit-register bytes rebuild the console lines, so every access
//! falls between two known lines of the guest's output. Pure: reads the trace text QEMU's `log`
//! backend writes (`-D FILE`).

/// QEMU arguments that enable the three events, logged to `file`.
pub fn qemu_args(file: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    for event in ["vtd_reg_read", "vtd_reg_write", "serial_write"] {
        v.push("-trace".to_string());
        v.push(event.to_string());
    }
    v.push("-D".into());
    v.push(file.display().to_string());
    v
}

/// One console line and the VT-d register accesses made since the previous line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The line (without its `\r`).
    pub line: String,
    /// Register reads and writes between the end of the previous line and the end of this one.
    pub accesses: u64,
}

/// The console lines of a trace, each with the register accesses that preceded it.
pub fn segments(trace: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let (mut line, mut accesses) = (Vec::new(), 0u64);
    for l in trace.lines() {
        if l.starts_with("vtd_reg_read ") || l.starts_with("vtd_reg_write ") {
            accesses += 1;
        } else if let Some(rest) = l.strip_prefix("serial_write write addr 0x00 val ") {
            // Offset 0 is the transmit holding register (or, while DLAB is set, the divisor
            // latch: a stray byte in the first line at most).
            let Ok(byte) = u8::from_str_radix(rest.trim().trim_start_matches("0x"), 16) else {
                continue;
            };
            if byte == b'\n' {
                let text = String::from_utf8_lossy(&line);
                out.push(Segment {
                    line: text.trim_end_matches('\r').to_string(),
                    accesses,
                });
                line.clear();
                accesses = 0;
            } else {
                line.push(byte);
            }
        }
    }
    out
}

fn ops_of(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("ops="))
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
}

/// One timed row as the trace saw it: the register accesses from its mark line to its result
/// line, and its operation count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedRow {
    /// The row's name.
    pub name: String,
    /// VT-d register reads and writes between the mark and the result line.
    pub accesses: u64,
    /// Operations the row timed (`ops=`).
    pub ops: u64,
}

impl TracedRow {
    /// Accesses per operation.
    pub fn per_op(&self) -> f64 {
        self.accesses as f64 / self.ops as f64
    }
}

/// The timed rows of either side: `<prefix>_MARK <name>` is printed when a row's clock starts
/// (after its warm-up) and `<prefix> <name> ... ops=N ...` when it stops; the accesses in
/// between are the timed operations' own. `prefix` is `LBENCH` (the Linux module) or `KBENCH`
/// (our kernel). A result line without its mark right before is not counted; a repeated row
/// (the Linux /init's dmesg dump reprints the lines, without accesses) only once. Lines may
/// carry printk timestamps (Linux at `loglevel=7`).
pub fn marked_rows(segs: &[Segment], prefix: &str) -> Vec<TracedRow> {
    let mark = format!("{prefix}_MARK ");
    let result = format!("{prefix} ");
    let mut out: Vec<TracedRow> = Vec::new();
    let mut open: Option<(String, u64)> = None;
    for s in segs {
        let text = s.line.trim_start();
        let text = match text.strip_prefix('[') {
            Some(t) => t.split_once("] ").map_or(text, |(_, rest)| rest),
            None => text,
        };
        if let Some(name) = text.strip_prefix(&mark) {
            open = Some((name.trim().to_string(), 0));
        } else if let Some(rest) = text.strip_prefix(&result) {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if let Some((marked, n)) = open.take() {
                if marked == name && !out.iter().any(|o| o.name == name) {
                    if let Some(ops) = ops_of(rest) {
                        out.push(TracedRow {
                            name: name.to_string(),
                            accesses: n + s.accesses,
                            ops,
                        });
                    }
                }
            }
        } else if let Some((_, n)) = open.as_mut() {
            *n += s.accesses;
        }
    }
    out
}

/// (row, accesses per operation) of [`marked_rows`].
pub fn per_op(rows: &[TracedRow]) -> Vec<(String, f64)> {
    rows.iter().map(|r| (r.name.clone(), r.per_op())).collect()
}

/// Checks our unit's own register counter against QEMU's trace of the same run: for every row
/// both have, the totals must be equal. `unit` holds (row, accesses the unit counted over the
/// row's timed operations). Returns how many rows agreed; fails naming every row that does not,
/// or when the unit counted rows but none of them was traced.
pub fn check_unit_counter(unit: &[(String, u64)], traced: &[TracedRow]) -> Result<usize, String> {
    let mut agreed = 0;
    let mut wrong = Vec::new();
    for (name, counted) in unit {
        let Some(t) = traced.iter().find(|t| &t.name == name) else {
            continue;
        };
        if t.accesses == *counted {
            agreed += 1;
        } else {
            wrong.push(format!(
                "{name}: the unit counted {counted}, QEMU traced {} ({} operations)",
                t.accesses, t.ops
            ));
        }
    }
    if !wrong.is_empty() {
        return Err(format!(
            "the VT-d unit's register counter disagrees with QEMU's trace: {}",
            wrong.join("; ")
        ));
    }
    if agreed == 0 && !unit.is_empty() {
        return Err("the unit counted register accesses, but no traced row matches them".into());
    }
    Ok(agreed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace that prints `text` (serial bytes) with `n` register accesses before each line.
    fn trace(lines: &[(&str, u64)]) -> String {
        let mut t = String::from("serial_write write addr 0x03 val 0x80\n");
        for (text, n) in lines {
            for i in 0..*n {
                if i % 2 == 0 {
                    t.push_str("vtd_reg_read addr 0x34 size 0x4\n");
                } else {
                    t.push_str("vtd_reg_write addr 0x88 size 0x8 val 0x20\n");
                }
            }
            for b in text.bytes().chain(*b"\r\n") {
                t.push_str(&format!("serial_write write addr 0x00 val 0x{b:02x}\n"));
                // Line-status reads and other registers are not console bytes.
                t.push_str("serial_write write addr 0x01 val 0x02\n");
            }
        }
        t
    }

    #[test]
    fn rebuilds_console_lines_with_accesses_between_them() {
        let s = segments(&trace(&[
            ("boot", 7),
            ("KBENCH a ops=10 cycles_per_op=1", 30),
        ]));
        assert_eq!(
            s,
            [
                Segment {
                    line: "boot".into(),
                    accesses: 7
                },
                Segment {
                    line: "KBENCH a ops=10 cycles_per_op=1".into(),
                    accesses: 30
                }
            ]
        );
        // No mark before the result line: not a timed row.
        assert!(marked_rows(&s, "KBENCH").is_empty());
        let s = segments(&trace(&[
            ("boot", 7),
            ("KBENCH_MARK a", 12), // warm-up and set-up: before the mark, not counted
            ("KBENCH a ops=10 cycles_per_op=1", 30),
        ]));
        let rows = marked_rows(&s, "KBENCH");
        assert_eq!(
            rows,
            [TracedRow {
                name: "a".into(),
                accesses: 30,
                ops: 10
            }]
        );
        assert_eq!(per_op(&rows), [("a".to_string(), 3.0)]);
    }

    #[test]
    fn the_unit_counter_must_match_the_trace() {
        let traced = [
            TracedRow {
                name: "a".into(),
                accesses: 2000,
                ops: 2000,
            },
            TracedRow {
                name: "b".into(),
                accesses: 30,
                ops: 1920,
            },
        ];
        let unit = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(n, c)| (n.to_string(), *c))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check_unit_counter(&unit(&[("a", 2000), ("b", 30), ("untraced", 5)]), &traced),
            Ok(2)
        );
        let e = check_unit_counter(&unit(&[("a", 6000), ("b", 30)]), &traced).expect_err("a");
        assert!(
            e.contains("a: the unit counted 6000, QEMU traced 2000"),
            "{e}"
        );
        assert!(!e.contains("b:"), "{e}");
        assert!(check_unit_counter(&unit(&[("untraced", 5)]), &traced).is_err());
        // No counter in the kernel's output: nothing to compare, nothing refused.
        assert_eq!(check_unit_counter(&[], &traced), Ok(0));
    }

    #[test]
    fn linux_rows_count_from_their_mark() {
        let t = trace(&[
            ("[    1.0] LBENCH_MARK map_unmap_4k", 500), // warm-up: not counted
            ("[    1.1] some other kernel line", 40),
            (
                "[    1.2] LBENCH map_unmap_4k ops=2000 ns=1 cycles=1 tsc_khz=1",
                1960,
            ),
            (
                "[    1.3] LBENCH map_unmap_64k ops=10 ns=1 cycles=1 tsc_khz=1",
                99,
            ), // no mark
            // The /init's dmesg dump repeats the lines without accesses: ignored.
            ("LBENCH_MARK map_unmap_4k", 0),
            ("LBENCH map_unmap_4k ops=2000 ns=1 cycles=1 tsc_khz=1", 0),
        ]);
        assert_eq!(
            per_op(&marked_rows(&segments(&t), "LBENCH")),
            [("map_unmap_4k".to_string(), 1.0)]
        );
    }

    #[test]
    fn args_name_the_events_and_the_file() {
        let a = qemu_args(std::path::Path::new("/t/x.log"));
        assert_eq!(a.len(), 8);
        assert_eq!(a[1], "vtd_reg_read");
        assert_eq!(a[7], "/t/x.log");
    }
}
