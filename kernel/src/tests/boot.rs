//! Boot smoke tests: start info, CPU setup (SSE, IDT/IST), time, ACPI.

use x86_64::instructions::tables::sidt;

use crate::arch::time;
use crate::ktest::{OrFail, Suite, Test, TestResult};
use crate::pvh::MemoryType;
use crate::{check, check_eq, Kernel};

pub const SUITE: Suite = Suite {
    name: "boot",
    explicit_only: false,
    tests: &[
        Test {
            name: "start_info",
            run: start_info,
        },
        Test {
            name: "sse",
            run: sse,
        },
        Test {
            name: "idt_every_vector_on_ist",
            run: idt_every_vector_on_ist,
        },
        Test {
            name: "tsc_calibrated",
            run: tsc_calibrated,
        },
        Test {
            name: "acpi_tables",
            run: acpi_tables,
        },
    ],
};

fn start_info(k: &Kernel) -> TestResult {
    let ram: u64 = k
        .boot
        .regions()
        .iter()
        .filter(|r| r.kind == MemoryType::Ram)
        .map(|r| r.size)
        .sum();
    check!(
        ram >= 64 << 20,
        "only {ram:#x} bytes of RAM in the memory map"
    );
    check!(
        k.boot.cmdline().contains("test="),
        "command line {:?} lost",
        k.boot.cmdline()
    );
    check!(k.boot.rsdp.is_some(), "no RSDP in the start info");
    Ok(())
}

#[inline(never)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sse(_: &Kernel) -> TestResult {
    let a: [f64; 4] = core::hint::black_box([1.5, 2.0, -3.0, 0.25]);
    let b: [f64; 4] = core::hint::black_box([2.0, 0.5, 1.0, 8.0]);
    check_eq!(dot(&a, &b), 3.0);
    Ok(())
}

fn idt_every_vector_on_ist(_: &Kernel) -> TestResult {
    let ptr = sidt();
    let entries = (usize::from(ptr.limit) + 1) / 16;
    check_eq!(entries, 256);
    let base = ptr.base.as_u64() as *const u128;
    let mut present = 0;
    for v in 0..entries {
        // SAFETY: the IDT loaded by sidt has `entries` 16-byte gates at `base`, kept in a static.
        let gate = unsafe { base.add(v).read() };
        let is_present = (gate >> 47) & 1 == 1;
        let ist = (gate >> 32) & 0x7;
        if is_present {
            present += 1;
            check!(ist != 0, "vector {v} is present without an IST stack");
        } else {
            // Only the architecturally reserved vectors may be absent.
            check!(matches!(v, 15 | 22..=27 | 31), "vector {v} has no gate");
        }
    }
    check_eq!(present, 256 - 8);
    Ok(())
}

fn tsc_calibrated(_: &Kernel) -> TestResult {
    let hz = time::tsc_hz();
    check!(
        (50_000_000..=20_000_000_000).contains(&hz),
        "implausible TSC frequency {hz} Hz"
    );
    let t0 = time::now_us();
    time::delay_us(2000);
    let t1 = time::now_us();
    check!(t1 - t0 >= 2000, "delay_us(2000) took {}us", t1 - t0);
    Ok(())
}

fn acpi_tables(k: &Kernel) -> TestResult {
    let list = k.acpi.list();
    for sig in [b"FACP", b"APIC", b"MCFG"] {
        check!(
            list.iter().any(|t| &t.signature == sig),
            "{} missing",
            core::str::from_utf8(sig).unwrap_or("?")
        );
    }
    let (_, mcfg) = k.acpi.mcfg().or_fail("MCFG bytes")?;
    check_eq!(&mcfg[..4], b"MCFG");
    let sum = mcfg.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    check_eq!(sum, 0);
    Ok(())
}
