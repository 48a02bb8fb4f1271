//! VT-d fault events as interrupts (`devices::faults`): a DMA to an unmapped IOVA raises the
//! unit's fault-event interrupt and the decoded fault reaches the callback of the faulting
//! device's domain owner without any polling call; another domain's fault reaches the other
//! owner only; an unowned fault reaches the default sink. Evidence is what the CPU received
//! (the vector's delivery count) and what the callbacks themselves recorded. Under
//! `vtd.fault_irq=off` the same tests check the polling mode instead: FECTL masked, no
//! interrupt, nothing dispatched until `faults::take` runs, then the same records.

use alloc::sync::Arc;
use alloc::vec::Vec;

use dma::DmaAddr;
use edu::{Edu, Transfer};
use iommu_vtd::registers::{self, RegisterIo};
use iommu_vtd::AccessKind;
use kernel::frames::FrameRequest;
use pci::msi::MsiMessage;
use vtd_platform::Fault;

use super::common::*;
use crate::arch::irq::{self, IrqMutex};
use crate::arch::{apic, time};
use crate::devices::edu as edu_dev;
use crate::devices::faults;
use crate::devices::iommu::Domain;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "faultirq",
    explicit_only: true,
    tests: &[
        Test {
            name: "fault_event_programmed",
            run: fault_event_programmed,
        },
        Test {
            name: "fault_reaches_domain_owner",
            run: fault_reaches_domain_owner,
        },
        Test {
            name: "unowned_fault_reaches_default_sink",
            run: unowned_fault_reaches_default_sink,
        },
        Test {
            name: "overflow_reported_once",
            run: overflow_reported_once,
        },
    ],
};

/// How long to wait for a fault event, and how long to watch for a second one.
const WAIT_US: u64 = 1_000_000;
const QUIET_US: u64 = 20_000;

type Seen = Arc<IrqMutex<Vec<Fault>>>;

fn recorder() -> Seen {
    Arc::new(IrqMutex::new(Vec::with_capacity(8)))
}

/// Registers `seen` as the owner callback of `d` (the push stays within the reserved capacity:
/// no allocation in the interrupt).
fn own(d: &Domain, seen: &Seen) -> TestResult {
    let seen = seen.clone();
    faults::register(d, move |f: &Fault| seen.with(|v| v.push(*f))).or_fail("register")
}

fn snapshot(seen: &Seen) -> Vec<Fault> {
    seen.with(|v| v.clone())
}

/// The unit index and the fault-event vector (`None` in polling mode) of `d`'s unit.
fn unit_of(d: &Domain) -> Result<(usize, Option<u8>), Failure> {
    let i = faults::unit_index(d.unit()).or_fail("unit without fault reporting")?;
    Ok((i, faults::vector(i)))
}

/// A page below `e`'s DMA mask filled with 0x5a: an IOVA equal to its address, unmapped, would
/// land on it if translation were bypassed.
fn sentinel(e: &Edu) -> Result<PhysPages, Failure> {
    let mut p = PhysPages::alloc(FrameRequest {
        count: 1,
        align: 1,
        limit: Some(((e.dma_mask() + 1) >> 12) as usize),
        min: 0,
    })
    .or_fail("sentinel below the mask")?;
    p.as_mut_slice().fill(0x5a);
    Ok(p)
}

/// `e` DMAs (`transfer`) at `iova`, which its domain does not map; in interrupt mode waits for
/// exactly one fault event on `vector`, in polling mode checks none arrives.
fn provoke(e: &mut Edu, transfer: Transfer, iova: u64, vector: Option<u8>) -> TestResult {
    let before = vector.map(irq::delivered);
    let serviced = faults::from_interrupt();
    edu_dev::dma(e, transfer, DmaAddr::new(iova), 0, 64).or_fail("edu DMA")?;
    match (vector, before) {
        (Some(v), Some(before)) => {
            irq::wait_delivery(v, before, WAIT_US).or_fail("no fault-event interrupt")?;
            time::delay_us(QUIET_US);
            check_eq!(irq::delivered(v), before + 1);
            // The handler serviced exactly this record.
            check_eq!(faults::from_interrupt(), serviced + 1);
        }
        _ => {
            time::delay_us(QUIET_US);
            check_eq!(faults::from_interrupt(), serviced);
        }
    }
    Ok(())
}

/// Interrupt mode: each unit has a vector, FECTL.IM is clear and FEDATA/FEADDR hold the fixed
/// compatibility-format message to this CPU. Polling mode: no vector and FECTL.IM set.
fn fault_event_programmed(k: &Kernel) -> TestResult {
    let iommu = iommu(k)?;
    for (i, u) in iommu.units.iter().enumerate() {
        let (masked, _) = u.unit.fault_event_state();
        if faults::interrupts_enabled() {
            let v = faults::vector(i).or_fail("no fault-event vector")?;
            check!(!masked, "FECTL.IM still set");
            let regs = u.unit.registers();
            let apic_id = u8::try_from(apic::id()).or_fail("APIC ID above 255")?;
            let want = MsiMessage::fixed(apic_id, v).or_fail("message")?;
            let got = MsiMessage::from_dwords(
                regs.read32(registers::FEADDR),
                regs.read32(registers::FEUADDR),
                regs.read32(registers::FEDATA),
            );
            check_eq!(got, want);
            kprintln!(
                "  unit {:#x}: fault events on vector {v:#x}, FEADDR {:#x} FEDATA {:#x}",
                u.base,
                got.address,
                got.data
            );
        } else {
            check!(faults::vector(i).is_none(), "a vector in polling mode");
            check!(masked, "FECTL.IM clear in polling mode");
            kprintln!("  unit {:#x}: fault events masked (polling)", u.base);
        }
    }
    Ok(())
}

/// Two edus in two domains, each with an owner callback. edu 0 writes to an unmapped IOVA: one
/// interrupt, and owner 0's callback holds the decoded fault (source, page, write, reason 5)
/// before anything polls; owner 1's holds nothing. edu 1 reads an unmapped IOVA: owner 1 gets
/// it (read, reason 6), owner 0 nothing more. Then `take` returns exactly those two records and
/// the callbacks are not called again. In polling mode: no interrupt and no callback until
/// `take`, which dispatches both.
fn fault_reaches_domain_owner(k: &Kernel) -> TestResult {
    let mut es = edus(k)?;
    check!(es.len() >= 2, "needs two edu devices");
    let (mut e0, mut e1) = (es.remove(0), es.remove(0));
    let d0 = domain_for(k, &e0)?;
    let d1 = domain_for(k, &e1)?;
    check!(d0.did() != d1.did(), "one domain for both");
    let (unit, vector) = unit_of(&d0)?;
    check_eq!(unit_of(&d1)?.0, unit);
    let irq_mode = faults::interrupts_enabled();
    check_eq!(vector.is_some(), irq_mode);
    clear_faults(k)?;
    let (seen0, seen1) = (recorder(), recorder());
    own(&d0, &seen0)?;
    own(&d1, &seen1)?;
    let result = owners_see_their_faults(
        k,
        (&mut e0, &mut e1),
        (&d0, &d1),
        unit,
        vector,
        (&seen0, &seen1),
    );
    faults::unregister(&d0);
    faults::unregister(&d1);
    clear_faults(k)?;
    result
}

fn owners_see_their_faults(
    k: &Kernel,
    (e0, e1): (&mut Edu, &mut Edu),
    (d0, d1): (&Domain, &Domain),
    unit: usize,
    vector: Option<u8>,
    (seen0, seen1): (&Seen, &Seen),
) -> TestResult {
    let src0 = source_id(k, e0)?;
    let src1 = source_id(k, e1)?;
    // What the polling path returned (in polling mode after each fault: QEMU's unit has one
    // fault recording register, a second fault before the poll would overflow).
    let mut polled = Vec::new();
    let poll = |polled: &mut Vec<_>| -> TestResult {
        let taken = faults::take(unit);
        check_eq!(taken.lost, 0);
        check!(!taken.log.overflow, "overflow reported");
        polled.extend(taken.log.records);
        Ok(())
    };

    let target0 = sentinel(e0)?;
    let iova0 = target0.paddr() + 0x100;
    provoke(e0, Transfer::WriteToMemory, iova0, vector)?;
    check!(
        read_back(&target0, 4096).iter().all(|&b| b == 0x5a),
        "blocked write reached memory"
    );
    if vector.is_none() {
        check!(
            snapshot(seen0).is_empty(),
            "dispatched without an interrupt or a poll"
        );
        poll(&mut polled)?;
    }
    // In interrupt mode nothing has polled yet: only the handler can have put this here.
    let got = snapshot(seen0);
    check_eq!(got.len(), 1);
    let f = got[0];
    check_eq!(f.unit, unit);
    check_eq!(f.domain, Some(d0.did()));
    check_eq!(f.record.source, src0);
    check_eq!(f.record.address, iova0 & !0xfff);
    check_eq!(f.record.access, AccessKind::Write);
    check_eq!(f.record.reason.raw(), 5);
    check!(snapshot(seen1).is_empty(), "owner 1 got edu 0's fault");
    kprintln!("  owner of domain {}: {}", d0.did(), f.record);

    let iova1 = iova0 + 0x1000;
    provoke(e1, Transfer::ReadFromMemory, iova1, vector)?;
    if vector.is_none() {
        check!(
            snapshot(seen1).is_empty(),
            "dispatched without an interrupt or a poll"
        );
        poll(&mut polled)?;
    }
    let got = snapshot(seen1);
    check_eq!(got.len(), 1);
    check_eq!(got[0].domain, Some(d1.did()));
    check_eq!(got[0].record.source, src1);
    check_eq!(got[0].record.address, iova1 & !0xfff);
    check_eq!(got[0].record.access, AccessKind::Read);
    check_eq!(got[0].record.reason.raw(), 6);
    check_eq!(snapshot(seen0).len(), 1);
    kprintln!("  owner of domain {}: {}", d1.did(), got[0].record);

    // The polling path returns the same records, once; callbacks saw each record once in all.
    poll(&mut polled)?;
    let got: Vec<_> = polled
        .iter()
        .map(|r| (r.source, r.address, r.access))
        .collect();
    check_eq!(
        got,
        alloc::vec![
            (src0, iova0 & !0xfff, AccessKind::Write),
            (src1, iova1 & !0xfff, AccessKind::Read)
        ]
    );
    check!(
        faults::take(unit).log.records.is_empty(),
        "records returned twice"
    );
    let (a, b) = (snapshot(seen0), snapshot(seen1));
    check_eq!((a.len(), b.len()), (1, 1));
    Ok(())
}

/// A fault from a device whose domain has no owner callback goes to the default sink (counted),
/// and to no registered owner.
fn unowned_fault_reaches_default_sink(k: &Kernel) -> TestResult {
    let mut es = edus(k)?;
    check!(es.len() >= 2, "needs two edu devices");
    let (mut e0, e1) = (es.remove(0), es.remove(0));
    let d0 = domain_for(k, &e0)?;
    let d1 = domain_for(k, &e1)?;
    let (unit, vector) = unit_of(&d0)?;
    clear_faults(k)?;
    let seen1 = recorder();
    own(&d1, &seen1)?;
    let before = faults::unowned();
    let result = (|| {
        provoke(&mut e0, Transfer::WriteToMemory, 0x30_0000, vector)?;
        if vector.is_none() {
            check_eq!(faults::unowned(), before);
            faults::take(unit);
        }
        check_eq!(faults::unowned(), before + 1);
        check!(
            snapshot(&seen1).is_empty(),
            "another domain's owner got the fault"
        );
        Ok(())
    })();
    faults::unregister(&d1);
    clear_faults(k)?;
    result
}

/// Two faults while interrupts are off: QEMU's unit has one fault recording register, so the
/// second is lost and FSTS.PFO set. When interrupts come back one fault event arrives (polling
/// mode: none), the kept record reaches its owner, the lost one reaches nobody, and the poll
/// reports the overflow once (PFO was cleared with the record it came with).
fn overflow_reported_once(k: &Kernel) -> TestResult {
    let mut es = edus(k)?;
    check!(es.len() >= 2, "needs two edu devices");
    let (mut e0, mut e1) = (es.remove(0), es.remove(0));
    let d0 = domain_for(k, &e0)?;
    let d1 = domain_for(k, &e1)?;
    let (unit, vector) = unit_of(&d0)?;
    clear_faults(k)?;
    let (seen0, seen1) = (recorder(), recorder());
    own(&d0, &seen0)?;
    own(&d1, &seen1)?;
    let result = (|| {
        let before = vector.map(irq::delivered);
        let serviced = faults::from_interrupt();
        x86_64::instructions::interrupts::without_interrupts(|| -> TestResult {
            edu_dev::dma(
                &mut e0,
                Transfer::WriteToMemory,
                DmaAddr::new(0x30_0000),
                0,
                64,
            )
            .or_fail("edu 0 DMA")?;
            edu_dev::dma(
                &mut e1,
                Transfer::WriteToMemory,
                DmaAddr::new(0x30_0000),
                0,
                64,
            )
            .or_fail("edu 1 DMA")
        })?;
        if let (Some(v), Some(before)) = (vector, before) {
            irq::wait_delivery(v, before, WAIT_US).or_fail("no fault-event interrupt")?;
            time::delay_us(QUIET_US);
            check_eq!(irq::delivered(v), before + 1);
            check_eq!(faults::from_interrupt(), serviced + 1);
        } else {
            time::delay_us(QUIET_US);
            check_eq!(faults::from_interrupt(), serviced);
            check!(snapshot(&seen0).is_empty(), "dispatched without a poll");
        }
        let taken = faults::take(unit);
        check!(taken.log.overflow, "overflow not reported");
        check_eq!(taken.log.records.len(), 1);
        check_eq!(taken.log.records[0].source, source_id(k, &e0)?);
        check_eq!(snapshot(&seen0).len(), 1);
        check!(
            snapshot(&seen1).is_empty(),
            "the lost fault reached an owner"
        );
        let again = faults::take(unit);
        check!(
            !again.log.overflow && again.log.records.is_empty(),
            "overflow or record reported twice: {again:?}"
        );
        kprintln!("  one record kept, the second fault lost: overflow reported once");
        Ok(())
    })();
    faults::unregister(&d0);
    faults::unregister(&d1);
    clear_faults(k)?;
    result
}
