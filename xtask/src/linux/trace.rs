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

/// Our kernel's rows: accesses between the previous console line and each `KBENCH` line, per
/// operation. Exact for rows with no untimed work before them (a row's warm-up would count).
pub fn ours_per_op(segs: &[Segment]) -> Vec<(String, f64)> {
    segs.iter()
        .filter_map(|s| {
            let rest = s.line.strip_prefix("KBENCH ")?;
            let name = rest.split_whitespace().next()?;
            Some((name.to_string(), s.accesses as f64 / ops_of(rest)? as f64))
        })
        .collect()
}

/// The Linux module's rows: accesses from its `LBENCH_MARK <name>` line (printed when the clock
/// starts) to its `LBENCH <name>` line, per operation. The console must show kernel messages
/// (`loglevel=7`); lines may carry printk timestamps.
pub fn linux_per_op(segs: &[Segment]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut open: Option<(String, u64)> = None;
    for s in segs {
        let text = s.line.trim_start();
        let text = match text.strip_prefix('[') {
            Some(t) => t.split_once("] ").map_or(text, |(_, rest)| rest),
            None => text,
        };
        if let Some(name) = text.strip_prefix("LBENCH_MARK ") {
            open = Some((name.trim().to_string(), 0));
        } else if let Some(rest) = text.strip_prefix("LBENCH ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if let Some((marked, n)) = open.take() {
                if marked == name && !out.iter().any(|(o, _): &(String, f64)| o == name) {
                    if let Some(ops) = ops_of(rest) {
                        out.push((name.to_string(), (n + s.accesses) as f64 / ops as f64));
                    }
                }
            }
        } else if let Some((_, n)) = open.as_mut() {
            *n += s.accesses;
        }
    }
    out
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
        assert_eq!(ours_per_op(&s), [("a".to_string(), 3.0)]);
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
            linux_per_op(&segments(&t)),
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
