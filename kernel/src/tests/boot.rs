//! Boot smoke tests: start info, CPU setup (SSE, IDT/IST), time, ACPI.

use x86_64::instructions::tables::sidt;

use crate::arch::time;
use alloc::format;
use alloc::vec::Vec;

use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::pvh::MemoryType;
use crate::{check, check_eq, kprintln, Kernel};

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

/// Ticks per second of the ACPI PM timer (ACPI 6.5 §4.8.3.3).
const PM_TIMER_HZ: u64 = 3_579_545;

/// The TSC calibration checked against an independent clock, the ACPI PM timer (its I/O port
/// from the FADT): a 100 ms busy wait measured by the TSC must last 100 ms by the PM timer too
/// (within 20 %: generous for TCG). A wrong calibration stretches or shrinks every TSC interval
/// by the same factor, which the PM timer sees.
fn tsc_calibrated(k: &Kernel) -> TestResult {
    use acpi::address::AddressSpace;
    use x86_64::instructions::port::Port;

    let hz = time::tsc_hz();
    check!(
        (50_000_000..=20_000_000_000).contains(&hz),
        "implausible TSC frequency {hz} Hz"
    );
    let fadt = k
        .acpi
        .tables()
        .find_table::<acpi::fadt::Fadt>()
        .map_err(|e| Failure::new(format!("FADT: {e:?}")))?;
    let block = fadt
        .pm_timer_block()
        .map_err(|e| Failure::new(format!("FADT PM timer block: {e:?}")))?
        .or_fail("PM timer")?;
    check_eq!(block.address_space, AddressSpace::SystemIo);
    let port = u16::try_from(block.address).or_fail("PM timer port")?;
    let flags = fadt.flags;
    let mask: u32 = if flags.pm_timer_is_32_bit() {
        u32::MAX
    } else {
        0xff_ffff
    };
    let read = || {
        // SAFETY: the FADT names this I/O port as the PM timer, a read-only counter; reading it
        // has no side effects.
        unsafe { Port::<u32>::new(port).read() & mask }
    };
    // One PM timer sample bracketed by TSC time stamps; a port read is an exit into QEMU that
    // can stall on a loaded host, so a sample whose bracket is wider than 1 ms is taken again.
    let sample = || -> Result<(u32, u64, u64), Failure> {
        for _ in 0..100 {
            let before = time::now_us();
            let v = read();
            let after = time::now_us();
            if after - before <= 1000 {
                return Ok((v, before, after));
            }
        }
        Err(Failure::new(
            "every PM timer read stalled for over 1 ms".into(),
        ))
    };
    // Nine 10 ms windows; the median ratio is compared, so one window disturbed by the host
    // (a vCPU thread moved between host CPUs whose TSCs differ, seen under load) cannot decide.
    const WAIT_US: u64 = 10_000;
    let mut ratios = Vec::new();
    for _ in 0..9 {
        let (p0, t0_before, t0_after) = sample()?;
        time::delay_us(WAIT_US);
        let (p1, t1_before, t1_after) = sample()?;
        let tsc_us = (t1_before - t0_after + t1_after - t0_before) / 2;
        check!(
            tsc_us >= WAIT_US - 1000,
            "delay_us({WAIT_US}) took {tsc_us}us"
        );
        // A 24-bit counter wraps every 4.7 s: at most once in 10 ms.
        let ticks = u64::from(p1.wrapping_sub(p0) & mask);
        // PM timer microseconds per 1000 TSC microseconds.
        ratios.push(ticks * 1_000_000_000 / PM_TIMER_HZ / tsc_us);
    }
    ratios.sort_unstable();
    let median = ratios[ratios.len() / 2];
    check!(
        (800..=1200).contains(&median),
        "PM timer / TSC time, per mille, over nine 10 ms windows: {ratios:?}"
    );
    kprintln!(
        "  TSC {hz} Hz; ACPI PM timer (port {port:#x}) time per TSC time, per mille: {ratios:?}"
    );
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
