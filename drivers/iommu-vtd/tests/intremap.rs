//! Interrupt remapping and fault events on the recording fake: IRTE layout, the enable order,
//! an interrupt-entry-cache invalidation after every IRTE change before use (with a negative
//! control), allocation, source-id validation, compatibility-format blocking, fault events.

use std::sync::Arc;

use iommu_vtd::fake::{qemu, FakeVtd, HostPlatform, HwEvent, InterruptResult, Via};
use iommu_vtd::intremap::{IntRemapError, MAX_ENTRIES};
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::registers::{self, Global, Irta, MsiAddressRemappable, MSI_WINDOW};
use iommu_vtd::{
    DeliveryMode, DestMode, Destination, FaultReason, Irte, RegisterIo, RequesterId, SourceId,
    TriggerMode, UnitConfig, VtdError, VtdUnit,
};
use proptest::prelude::*;

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;

/// QEMU's `edu` at 00:03.0 and an e1000e at 00:02.0.
const EDU: RequesterId = RequesterId::from_parts(0, 3 << 3);
const NIC: RequesterId = RequesterId::from_parts(0, 2 << 3);
const ECAP_NO_QI: u64 = qemu::ECAP_DEFAULT & !(1 << 1);
const ECAP_NO_IR: u64 = qemu::ECAP_DEFAULT & !(1 << 3);
const ECAP_EIM: u64 = qemu::ECAP_DEFAULT | (1 << 4);
/// QEMU's CAP with NFR = 3 (four fault recording registers).
const CAP_FOUR_RECORDS: u64 = qemu::CAP_DEFAULT | (3 << 40);

fn unit_with(cap: u64, ecap: u64) -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::new(p.clone(), qemu::VER, cap, ecap);
    Arc::new(VtdUnit::new(regs, p, UnitConfig::new(39)).unwrap())
}

fn enabled() -> Arc<Unit> {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT);
    u.enable().unwrap();
    u
}

fn remapping(entries: u32) -> Arc<Unit> {
    let u = enabled();
    u.enable_interrupt_remapping(entries, false).unwrap();
    u
}

fn hw(u: &Unit) -> &FakeVtd {
    u.registers()
}

fn no_violations(u: &Unit) {
    assert_eq!(hw(u).violations(), Vec::<String>::new());
}

/// The remappable-format MSI address for `handle` (§5.1.5.2), as the PCI crate encodes it.
fn remappable(handle: u16, shv: bool) -> u64 {
    let a = MsiAddressRemappable::new()
        .with_window(MSI_WINDOW)
        .with_remappable(true)
        .with_shv(shv)
        .with_handle_14_0(handle & 0x7FFF)
        .with_handle_15(handle & 0x8000 != 0);
    u64::from(a.into_bits())
}

/// A compatibility-format MSI to APIC 0 with `vector`.
fn compat(vector: u8) -> (u64, u32) {
    (0xFEE0_0000, u32::from(vector))
}

fn msi(vector: u8, source: RequesterId) -> Irte {
    Irte::msi(vector, Destination::XApic(0), SourceId::Requester(source)).unwrap()
}

fn delivered(vector: u8, index: u16) -> InterruptResult {
    InterruptResult::Delivered {
        vector,
        destination: 0,
        level: false,
        index: Some(index),
    }
}

fn bits(raw: u128, hi: u32, lo: u32) -> u128 {
    (raw >> lo) & ((1u128 << (hi - lo + 1)) - 1)
}

#[test]
fn irte_encoding_matches_the_spec_layout() {
    // §9.10 remapped format: P 0, FPD 1, DM 2, RH 3, TM 4, DLM 7:5, AVL 11:8, rsvd 14:12,
    // IM 15, V 23:16, rsvd 31:24, DST 63:32 (xAPIC: APIC ID in 47:40), SID 79:64, SQ 81:80,
    // SVT 83:82, rsvd 127:84.
    let e = Irte::remapped(
        0x4A,
        Destination::XApic(0xC3),
        DeliveryMode::LowestPriority,
        DestMode::Logical,
        TriggerMode::Level,
        true,
        SourceId::Requester(RequesterId::from_parts(0x12, 0x1D)),
    )
    .unwrap()
    .with_fault_processing_disabled(true);
    let (lo, hi) = e.encode(false).unwrap();
    let raw = u128::from(lo) | u128::from(hi) << 64;
    assert_eq!(bits(raw, 0, 0), 1, "P");
    assert_eq!(bits(raw, 1, 1), 1, "FPD");
    assert_eq!(bits(raw, 2, 2), 1, "DM logical");
    assert_eq!(bits(raw, 3, 3), 1, "RH");
    assert_eq!(bits(raw, 4, 4), 1, "TM level");
    assert_eq!(bits(raw, 7, 5), 0b001, "DLM lowest priority");
    assert_eq!(bits(raw, 14, 8), 0, "AVL and reserved");
    assert_eq!(bits(raw, 15, 15), 0, "IM remapped");
    assert_eq!(bits(raw, 23, 16), 0x4A, "vector");
    assert_eq!(bits(raw, 31, 24), 0, "reserved");
    assert_eq!(bits(raw, 39, 32), 0, "xAPIC: DST 7:0 reserved");
    assert_eq!(bits(raw, 47, 40), 0xC3, "xAPIC: APIC ID in DST 15:8");
    assert_eq!(bits(raw, 63, 48), 0, "xAPIC: DST 31:16 reserved");
    assert_eq!(bits(raw, 79, 64), 0x121D, "SID");
    assert_eq!(bits(raw, 81, 80), 0, "SQ: all bits compared");
    assert_eq!(bits(raw, 83, 82), 0b01, "SVT requester ID");
    assert_eq!(bits(raw, 127, 84), 0, "reserved");

    // x2APIC destination (EIME), fixed, physical, edge, bus range.
    let e = Irte::remapped(
        0xFE,
        Destination::X2Apic(0x89AB_CDEF),
        DeliveryMode::Fixed,
        DestMode::Physical,
        TriggerMode::Edge,
        false,
        SourceId::Bus { start: 2, end: 5 },
    )
    .unwrap();
    let (lo, hi) = e.encode(true).unwrap();
    let raw = u128::from(lo) | u128::from(hi) << 64;
    assert_eq!(bits(raw, 7, 0), 1, "P only");
    assert_eq!(bits(raw, 23, 16), 0xFE);
    assert_eq!(bits(raw, 63, 32), 0x89AB_CDEF, "x2APIC: 32-bit DST");
    assert_eq!(bits(raw, 79, 72), 2, "bus range start in SID 15:8");
    assert_eq!(bits(raw, 71, 64), 5, "bus range end in SID 7:0");
    assert_eq!(bits(raw, 83, 82), 0b10, "SVT bus range");
    // Delivery modes: §9.10 DLM encodings.
    for (mode, dlm) in [
        (DeliveryMode::Fixed, 0b000),
        (DeliveryMode::LowestPriority, 0b001),
        (DeliveryMode::Smi, 0b010),
        (DeliveryMode::Nmi, 0b100),
        (DeliveryMode::Init, 0b101),
        (DeliveryMode::ExtInt, 0b111),
    ] {
        let e = Irte::remapped(
            0x20,
            Destination::XApic(0),
            mode,
            DestMode::Physical,
            TriggerMode::Edge,
            false,
            SourceId::Requester(EDU),
        )
        .unwrap();
        let (lo, _) = e.encode(false).unwrap();
        assert_eq!(bits(u128::from(lo), 7, 5), dlm, "{mode:?}");
    }
}

#[test]
fn enable_order_is_sirtp_then_global_iec_then_ire_and_cfi_stays_clear() {
    let u = enabled();
    hw(&u).take_events();
    u.enable_interrupt_remapping(100, false).unwrap();
    let (base, entries, eime) = u.interrupt_remapping_table().unwrap();
    assert_eq!((entries, eime), (128, false));
    let irta = Irta::from_bits(hw(&u).latched_irta().unwrap());
    assert_eq!(
        (irta.base(), 2u32 << irta.s(), irta.eime()),
        (base.as_u64(), 128, false)
    );
    let events = hw(&u).take_events();
    let pos = |f: &dyn Fn(&HwEvent) -> bool| events.iter().position(f).unwrap();
    let sirtp = pos(&|e| matches!(e, HwEvent::Gcmd(v) if v & Global::SIRTP.bits() != 0));
    let latched = pos(&|e| matches!(e, HwEvent::InterruptTableLatched(_)));
    let iec = pos(&|e| *e == HwEvent::Invalidation(Via::Queue, Invalidation::InterruptEntryGlobal));
    let wait = iec + 1;
    let ire = pos(&|e| matches!(e, HwEvent::Gcmd(v) if v & Global::IRE.bits() != 0));
    assert!(sirtp < latched && latched < iec && iec < ire, "{events:?}");
    assert!(matches!(events[wait], HwEvent::WaitStatus { .. }));
    assert!(wait < ire, "IRE only after the invalidation completed");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, HwEvent::Gcmd(v) if v & Global::CFI.bits() != 0)),
        "CFI never set"
    );
    let gsts = hw(&u).gsts();
    assert!(gsts.contains(Global::IRE) && !gsts.contains(Global::CFI));
    no_violations(&u);
    assert_eq!(
        u.enable_interrupt_remapping(8, false),
        Err(VtdError::InterruptRemapping(IntRemapError::AlreadyEnabled))
    );
}

#[test]
fn firmware_compatibility_format_and_remapping_are_taken_over() {
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT);
    hw(&u).firmware_left(false, false, true, 0);
    hw(&u).firmware_left_compatibility_format();
    u.enable().unwrap();
    assert!(u.firmware_state().unwrap().interrupt_remapping);
    // Firmware's remapping lets compatibility format through (CFI set).
    let (a, d) = compat(0x31);
    assert!(matches!(
        hw(&u).interrupt(EDU, a, d),
        InterruptResult::Delivered { vector: 0x31, .. }
    ));
    u.enable_interrupt_remapping(16, false).unwrap();
    assert!(!hw(&u).gsts().contains(Global::CFI), "CFI cleared");
    assert!(matches!(
        hw(&u).interrupt(EDU, a, d),
        InterruptResult::Blocked {
            reason: FaultReason::CompatibilityInterruptBlocked,
            ..
        }
    ));
    no_violations(&u);
}

#[test]
fn refused_without_queued_invalidation_ir_or_eim() {
    let u = unit_with(qemu::CAP_DEFAULT, ECAP_NO_QI);
    u.enable().unwrap();
    assert_eq!(
        u.enable_interrupt_remapping(16, false),
        Err(VtdError::InterruptRemapping(
            IntRemapError::QueuedInvalidationOff
        ))
    );
    // Before `prepare`, queued invalidation is not on either.
    let u = unit_with(qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT);
    assert_eq!(
        u.enable_interrupt_remapping(16, false),
        Err(VtdError::InterruptRemapping(
            IntRemapError::QueuedInvalidationOff
        ))
    );
    assert!(!hw(&u).gsts().contains(Global::IRE));
    let u = unit_with(qemu::CAP_DEFAULT, ECAP_NO_IR);
    u.enable().unwrap();
    assert_eq!(
        u.enable_interrupt_remapping(16, false),
        Err(VtdError::InterruptRemapping(IntRemapError::NotSupported))
    );
    // QEMU under TCG has no EIM.
    let u = enabled();
    assert_eq!(
        u.enable_interrupt_remapping(16, true),
        Err(VtdError::InterruptRemapping(
            IntRemapError::ExtendedModeUnsupported
        ))
    );
    assert_eq!(
        u.enable_interrupt_remapping(MAX_ENTRIES + 1, false),
        Err(VtdError::InterruptRemapping(IntRemapError::BadTableSize {
            requested: MAX_ENTRIES + 1
        }))
    );
    // Without EIME an x2APIC destination is refused.
    u.enable_interrupt_remapping(16, false).unwrap();
    let h = u.alloc_irtes(1).unwrap();
    let x2 = Irte::msi(0x40, Destination::X2Apic(0x100), SourceId::Requester(EDU)).unwrap();
    assert_eq!(
        u.set_irte(h, &x2),
        Err(VtdError::InterruptRemapping(
            IntRemapError::DestinationNeedsEim(0x100)
        ))
    );
    assert_eq!(u.irte_raw(h), Some((0, 0)), "nothing written");
    no_violations(&u);
}

#[test]
fn x2apic_mode_with_eim() {
    let u = unit_with(qemu::CAP_DEFAULT, ECAP_EIM);
    u.enable().unwrap();
    u.enable_interrupt_remapping(4, true).unwrap();
    assert!(Irta::from_bits(hw(&u).latched_irta().unwrap()).eime());
    let h = u.alloc_irtes(1).unwrap();
    let e = Irte::msi(
        0x40,
        Destination::X2Apic(0x1_0002),
        SourceId::Requester(EDU),
    )
    .unwrap();
    u.set_irte(h, &e).unwrap();
    assert_eq!(u.irte(h), Some(e));
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        InterruptResult::Delivered {
            vector: 0x40,
            destination: 0x1_0002,
            level: false,
            index: Some(h)
        }
    );
    no_violations(&u);
}

/// The events of one call end with an index-selective IEC of `index`/`mask` and its wait,
/// and contain no other invalidation.
fn ends_with_iec(events: &[HwEvent], index: u16, mask: u8) {
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert_eq!(
        events[n - 2],
        HwEvent::Invalidation(Via::Queue, Invalidation::InterruptEntries { index, mask }),
        "{events:?}"
    );
    assert!(matches!(events[n - 1], HwEvent::WaitStatus { .. }));
    let invalidations = events
        .iter()
        .filter(|e| matches!(e, HwEvent::Invalidation(..)))
        .count();
    assert_eq!(invalidations, 1, "{events:?}");
}

#[test]
fn every_irte_change_is_invalidated_before_the_call_returns() {
    let u = remapping(64);
    let h = u.alloc_irtes(1).unwrap();
    hw(&u).take_events();
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    ends_with_iec(&hw(&u).take_events(), h, 0);
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x40, h)
    );
    assert_eq!(hw(&u).cached_irtes(), [h], "cached on use");
    // Change the vector: the cached entry is dropped before the call returns.
    u.set_irte(h, &msi(0x41, EDU)).unwrap();
    ends_with_iec(&hw(&u).take_events(), h, 0);
    assert!(hw(&u).cached_irtes().is_empty());
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x41, h)
    );
    // Clear: blocked, not delivered from a cached copy.
    u.clear_irte(h).unwrap();
    ends_with_iec(&hw(&u).take_events(), h, 0);
    assert!(matches!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        InterruptResult::Blocked {
            reason: FaultReason::IrteNotPresent,
            ..
        }
    ));
    // Free a block of four: cleared, one IEC with mask 2, then reusable.
    u.clear_faults();
    let b = u.alloc_irtes(4).unwrap();
    for i in 0..4 {
        u.set_irte(b + i, &msi(0x50 + i as u8, EDU)).unwrap();
        hw(&u).interrupt(EDU, remappable(b, true), u32::from(i));
    }
    assert_eq!(hw(&u).cached_irtes().len(), 4);
    hw(&u).take_events();
    u.free_irtes(b, 4).unwrap();
    ends_with_iec(&hw(&u).take_events(), b, 2);
    assert!(hw(&u).cached_irtes().is_empty());
    assert_eq!(
        (0..4).map(|i| u.irte_raw(b + i)).collect::<Vec<_>>(),
        [Some((0, 0)); 4]
    );
    assert_eq!(
        u.alloc_irtes(4).unwrap(),
        b,
        "the freed block is handed out again"
    );
    no_violations(&u);
}

#[test]
fn a_skipped_invalidation_is_caught_as_a_stale_use() {
    // Negative control: the unit accepts IEC descriptors but drops nothing, as if the driver
    // had not issued them. The stale cached entry is used, delivering the old vector, and the
    // fake reports it.
    let u = remapping(16);
    let h = u.alloc_irtes(1).unwrap();
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x40, h)
    );
    hw(&u).set_iec_ignored(true);
    u.set_irte(h, &msi(0x41, EDU)).unwrap();
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x40, h),
        "the stale entry is what the hardware uses"
    );
    let v = hw(&u).violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].contains("IRTE 0 used from the interrupt entry cache"),
        "{v:?}"
    );
    // With invalidations working again the next change takes effect.
    hw(&u).set_iec_ignored(false);
    u.set_irte(h, &msi(0x42, EDU)).unwrap();
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x42, h)
    );
    assert_eq!(hw(&u).violations().len(), 1, "no new violation");
}

#[test]
fn irte_writes_are_written_back_for_a_non_coherent_walker() {
    // QEMU's ECAP.C = 0: the fake reads the table through the written-back (device) view.
    let u = remapping(16);
    let h = u.alloc_irtes(1).unwrap();
    let p = hw(&u).platform().clone();
    p.set_flush_disabled(true);
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    assert!(
        matches!(
            hw(&u).interrupt(EDU, remappable(h, false), 0),
            InterruptResult::Blocked { .. }
        ),
        "without the write-back the unit sees the old (empty) entry"
    );
    p.set_flush_disabled(false);
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x40, h)
    );
}

#[test]
fn allocation_exhaustion_freeing_and_aligned_blocks() {
    let u = remapping(8);
    fn err<T>(e: IntRemapError) -> Result<T, VtdError> {
        Err(VtdError::InterruptRemapping(e))
    }
    assert_eq!(u.alloc_irtes(1), Ok(0));
    assert_eq!(
        u.alloc_irtes(4),
        Ok(4),
        "a block of four is aligned to four"
    );
    assert_eq!(u.alloc_irtes(2), Ok(2));
    assert_eq!(u.alloc_irtes(1), Ok(1));
    assert_eq!(u.alloc_irtes(1), err(IntRemapError::Exhausted { count: 1 }));
    assert_eq!(u.alloc_irtes(3), err(IntRemapError::BadCount(3)));
    assert_eq!(u.alloc_irtes(0), err(IntRemapError::BadCount(0)));
    assert_eq!(u.alloc_irtes(16), err(IntRemapError::BadCount(16)));
    // Only whole blocks as handed out can be freed.
    assert_eq!(
        u.free_irtes(4, 2),
        err(IntRemapError::NotAllocated { index: 4 })
    );
    assert_eq!(
        u.free_irtes(5, 1),
        err(IntRemapError::NotAllocated { index: 5 })
    );
    assert_eq!(
        u.set_irte(9, &msi(0x40, EDU)),
        err(IntRemapError::NotAllocated { index: 9 })
    );
    u.free_irtes(2, 1 << 1).unwrap();
    assert_eq!(u.alloc_irtes(2), Ok(2));
    u.free_irtes(4, 4).unwrap();
    assert_eq!(u.alloc_irtes(2), Ok(4));
    assert_eq!(u.alloc_irtes(2), Ok(6));
    assert_eq!(u.alloc_irtes(1), err(IntRemapError::Exhausted { count: 1 }));
    // A large table needs contiguous pages (65536 entries: 256 pages); the last handle uses
    // address bit 2 (handle bit 15).
    let big = remapping(MAX_ENTRIES);
    assert_eq!(big.interrupt_remapping_table().unwrap().1, MAX_ENTRIES);
    assert_eq!(big.alloc_irtes(1 << 15), Ok(0));
    assert_eq!(big.alloc_irtes(1 << 15), Ok(1 << 15));
    let last = u16::MAX;
    big.set_irte(last, &msi(0x60, EDU)).unwrap();
    assert_eq!(
        hw(&big).interrupt(EDU, remappable(last, false), 0),
        delivered(0x60, last)
    );
    no_violations(&u);
    no_violations(&big);
}

#[test]
fn multi_message_msi_uses_handle_plus_subhandle() {
    let u = remapping(32);
    let _single = u.alloc_irtes(1).unwrap();
    let h = u.alloc_irtes(8).unwrap();
    assert_eq!(h % 8, 0, "aligned for the subhandle");
    for i in 0..8u16 {
        u.set_irte(h + i, &msi(0x70 + i as u8, NIC)).unwrap();
    }
    for i in 0..8u16 {
        assert_eq!(
            hw(&u).interrupt(NIC, remappable(h, true), u32::from(i)),
            delivered(0x70 + i as u8, h + i)
        );
    }
    // A subhandle past the table is refused; data bits 31:16 are reserved.
    assert!(matches!(
        hw(&u).interrupt(NIC, remappable(h, true), 32),
        InterruptResult::Blocked {
            reason: FaultReason::InterruptIndexBeyondTable,
            ..
        }
    ));
    assert!(matches!(
        hw(&u).interrupt(NIC, remappable(h, true), 0x1_0000),
        InterruptResult::Blocked {
            reason: FaultReason::InterruptRequestReserved,
            ..
        }
    ));
    no_violations(&u);
}

#[test]
fn source_id_mismatch_is_blocked_and_the_right_source_delivered() {
    let u = remapping(16);
    let h = u.alloc_irtes(1).unwrap();
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    // The NIC forging edu's handle: blocked and recorded (reason 26h, index in FI 63:48).
    u.clear_faults();
    assert_eq!(
        hw(&u).interrupt(NIC, remappable(h, false), 0),
        InterruptResult::Blocked {
            reason: FaultReason::InterruptSourceIdMismatch,
            index: Some(h)
        }
    );
    let log = u.read_and_clear_faults();
    assert_eq!(log.records.len(), 1);
    let rec = log.records[0];
    assert_eq!(
        (rec.source, rec.reason, rec.interrupt_index()),
        (NIC, FaultReason::InterruptSourceIdMismatch, Some(h))
    );
    assert!(rec
        .to_string()
        .contains("interrupt remapping fault from 00:02.0 at index 0"));
    // Control: edu itself, same entry.
    assert_eq!(
        hw(&u).interrupt(EDU, remappable(h, false), 0),
        delivered(0x40, h)
    );
    // Only the exact requester ID (SQ = 0): edu's function 1 is another source.
    let edu_fn1 = RequesterId::from_parts(0, (3 << 3) | 1);
    assert!(matches!(
        hw(&u).interrupt(edu_fn1, remappable(h, false), 0),
        InterruptResult::Blocked { .. }
    ));
    // FPD: blocked, not recorded.
    u.clear_faults();
    let quiet = msi(0x40, EDU).with_fault_processing_disabled(true);
    u.set_irte(h, &quiet).unwrap();
    assert!(matches!(
        hw(&u).interrupt(NIC, remappable(h, false), 0),
        InterruptResult::Blocked { .. }
    ));
    assert!(u.read_faults().records.is_empty());
    // SVT = 2: any bus in the range.
    let range = Irte::msi(
        0x45,
        Destination::XApic(0),
        SourceId::Bus { start: 2, end: 4 },
    )
    .unwrap();
    u.set_irte(h, &range).unwrap();
    for (bus, ok) in [(1u8, false), (2, true), (4, true), (5, false)] {
        let r = hw(&u).interrupt(RequesterId::from_parts(bus, 0), remappable(h, false), 0);
        assert_eq!(
            matches!(r, InterruptResult::Delivered { .. }),
            ok,
            "bus {bus}: {r:?}"
        );
    }
    no_violations(&u);
}

#[test]
fn compatibility_format_is_blocked_with_remapping_and_passes_without() {
    let u = enabled();
    let (a, d) = compat(0x33);
    // Control: remapping off, the same write is an interrupt.
    assert_eq!(
        hw(&u).interrupt(EDU, a, d),
        InterruptResult::Delivered {
            vector: 0x33,
            destination: 0,
            level: false,
            index: None
        }
    );
    u.enable_interrupt_remapping(16, false).unwrap();
    u.clear_faults();
    assert_eq!(
        hw(&u).interrupt(EDU, a, d),
        InterruptResult::Blocked {
            reason: FaultReason::CompatibilityInterruptBlocked,
            index: None
        }
    );
    assert_eq!(
        u.read_faults().records[0].reason,
        FaultReason::CompatibilityInterruptBlocked
    );
    // An unallocated, never written entry: not present.
    assert!(matches!(
        hw(&u).interrupt(EDU, remappable(5, false), 0),
        InterruptResult::Blocked {
            reason: FaultReason::IrteNotPresent,
            ..
        }
    ));
    // Not the interrupt window: a DMA, not an interrupt.
    assert_eq!(
        hw(&u).interrupt(EDU, 0x1000, 0),
        InterruptResult::NotAnInterrupt
    );
    // Remapping off again: compatibility format passes.
    u.disable_interrupt_remapping().unwrap();
    assert!(!u.interrupt_remapping_enabled());
    assert!(!hw(&u).gsts().contains(Global::IRE));
    assert!(matches!(
        hw(&u).interrupt(EDU, a, d),
        InterruptResult::Delivered { vector: 0x33, .. }
    ));
    no_violations(&u);
}

#[test]
fn disable_turns_remapping_off_before_the_queue() {
    let u = remapping(16);
    let live = hw(&u).platform().live_pages();
    u.disable().unwrap();
    let gsts = hw(&u).gsts();
    assert!(!gsts.contains(Global::IRE) && !gsts.contains(Global::QIE));
    assert_eq!(
        hw(&u).platform().live_pages(),
        live - 1,
        "the table is freed"
    );
    no_violations(&u);
}

#[test]
fn reserved_irte_bits_and_posted_format_are_blocked() {
    let u = remapping(16);
    let h = u.alloc_irtes(1).unwrap();
    u.set_irte(h, &msi(0x40, EDU)).unwrap();
    let (lo, hi) = u.irte_raw(h).unwrap();
    assert_eq!(Irte::decode(lo, hi, false), Some(msi(0x40, EDU)));
    // Reserved bits, the posted format and SVT = 3 decode to nothing this crate builds.
    assert_eq!(Irte::decode(lo | 1 << 12, hi, false), None);
    assert_eq!(Irte::decode(lo | 1 << 15, hi, false), None);
    assert_eq!(Irte::decode(lo, hi | 0b11 << 18, false), None);
    assert_eq!(Irte::decode(lo, hi | 1 << 20, false), None);
    assert_eq!(Irte::decode(lo & !1, hi, false), None);
}

// Fault events.

fn dma_fault(u: &Unit, sid: RequesterId) {
    assert!(hw(u).dma(sid, 0x1000, false).is_err());
}

#[test]
fn fault_event_is_programmed_and_sent_once_per_pending_episode() {
    let u = enabled();
    assert_eq!(u.fault_event_state(), (true, false), "masked at reset");
    assert_eq!(
        u.set_fault_event(0xFEE0_0010, 0x41),
        Err(VtdError::InterruptRemapping(
            IntRemapError::NotAnInterruptAddress(0xFEE0_0010)
        )),
        "a remappable-format address is refused"
    );
    assert_eq!(
        u.set_fault_event(0x1000, 0x41),
        Err(VtdError::InterruptRemapping(
            IntRemapError::NotAnInterruptAddress(0x1000)
        ))
    );
    u.set_fault_event(0xFEE0_1000, 0x41).unwrap();
    assert_eq!(hw(&u).read32(registers::FEDATA), 0x41);
    assert_eq!(hw(&u).read32(registers::FEADDR), 0xFEE0_1000);
    assert_eq!(hw(&u).read32(registers::FEUADDR), 0);
    assert_eq!(u.fault_event_state(), (false, false));
    dma_fault(&u, EDU);
    assert_eq!(hw(&u).fault_events(), [(0xFEE0_1000, 0x41)]);
    let log = u.service_fault_event();
    assert_eq!(log.records.len(), 1);
    assert_eq!(log.records[0].source, EDU);
    assert!(!log.overflow);
    assert!(u.read_faults().records.is_empty(), "cleared");
    // The next fault raises the next event.
    dma_fault(&u, NIC);
    assert_eq!(hw(&u).fault_events().len(), 2);
    assert_eq!(u.service_fault_event().records.len(), 1);
    assert!(
        u.service_fault_event().records.is_empty(),
        "cleared exactly once"
    );
    // Masked: recorded, IP set, no message; unmasking delivers it.
    u.mask_fault_event();
    dma_fault(&u, EDU);
    assert_eq!(hw(&u).fault_events().len(), 2);
    assert_eq!(u.fault_event_state(), (true, true));
    u.set_fault_event(0xFEE0_1000, 0x42).unwrap();
    assert_eq!(hw(&u).fault_events().len(), 3);
    assert_eq!(hw(&u).fault_events()[2], (0xFEE0_1000, 0x42));
    // Polling still works with the event on.
    assert_eq!(u.read_and_clear_faults().records.len(), 1);
    no_violations(&u);
}

#[test]
fn servicing_collects_a_fault_that_arrives_while_clearing() {
    // Four records: the fault that arrives while the first is cleared takes another record;
    // the unit will not send another event (something stays pending), so the handler must
    // collect it now.
    let u = unit_with(CAP_FOUR_RECORDS, qemu::ECAP_DEFAULT);
    u.enable().unwrap();
    u.set_fault_event(0xFEE0_0000, 0x40).unwrap();
    dma_fault(&u, EDU);
    hw(&u).inject_fault_on_next_clear(NIC, 0x2000, true);
    let log = u.service_fault_event();
    let sources: Vec<_> = log.records.iter().map(|r| r.source).collect();
    assert_eq!(sources, [EDU, NIC]);
    assert!(u.read_faults().records.is_empty());
    assert_eq!(hw(&u).fault_events().len(), 1, "one episode, one event");
    // Negative control: a single read-and-clear leaves the late record pending.
    dma_fault(&u, EDU);
    hw(&u).inject_fault_on_next_clear(NIC, 0x2000, true);
    assert_eq!(u.read_and_clear_faults().records.len(), 1);
    assert_eq!(
        u.read_faults().records.len(),
        1,
        "left pending, no event will come"
    );
    assert_eq!(u.service_fault_event().records.len(), 1);
    no_violations(&u);
}

#[test]
fn servicing_reports_and_clears_an_overflow() {
    // QEMU has one fault record: a second source's fault overflows.
    let u = enabled();
    u.set_fault_event(0xFEE0_0000, 0x40).unwrap();
    dma_fault(&u, EDU);
    dma_fault(&u, NIC);
    let log = u.service_fault_event();
    assert_eq!(log.records.len(), 1);
    assert!(log.overflow);
    let fsts = hw(&u).read32(registers::FSTS);
    assert_eq!(fsts & 0b11, 0, "PPF and PFO clear");
    assert_eq!(u.service_fault_event(), Default::default());
    no_violations(&u);
}

fn arb_source() -> impl Strategy<Value = SourceId> {
    prop_oneof![
        any::<u16>().prop_map(|r| SourceId::Requester(RequesterId::new(r))),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| SourceId::Bus {
            start: a.min(b),
            end: a.max(b)
        }),
    ]
}

fn arb_delivery() -> impl Strategy<Value = DeliveryMode> {
    prop_oneof![
        Just(DeliveryMode::Fixed),
        Just(DeliveryMode::LowestPriority),
        Just(DeliveryMode::Smi),
        Just(DeliveryMode::Nmi),
        Just(DeliveryMode::Init),
        Just(DeliveryMode::ExtInt),
    ]
}

proptest! {
    #[test]
    fn irte_encode_decode_round_trip(
        vector in 16u8..=255,
        apic in any::<u32>(),
        eime in any::<bool>(),
        delivery in arb_delivery(),
        logical in any::<bool>(),
        level in any::<bool>(),
        rh in any::<bool>(),
        fpd in any::<bool>(),
        source in arb_source(),
    ) {
        let destination = if eime {
            Destination::X2Apic(apic)
        } else {
            Destination::XApic(apic as u8)
        };
        let e = Irte::remapped(
            vector,
            destination,
            delivery,
            if logical { DestMode::Logical } else { DestMode::Physical },
            if level { TriggerMode::Level } else { TriggerMode::Edge },
            rh,
            source,
        )
        .unwrap()
        .with_fault_processing_disabled(fpd);
        let (lo, hi) = e.encode(eime).unwrap();
        prop_assert_eq!(Irte::decode(lo, hi, eime), Some(e));
        prop_assert_eq!(e.vector(), vector);
        prop_assert_eq!(e.source(), source);
    }
}
