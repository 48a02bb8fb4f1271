//! Unit tests of interrupt remapping: the two-store IRTE fallback, table sizes, and the
//! checks on vectors, source IDs and destination formats.

use super::*;
use crate::fake::HostPlatform;

#[test]
fn the_two_store_fallback_ends_with_the_entry_and_never_a_mix() {
    let p = HostPlatform::new();
    let t = InterruptRemapTable::new(&p, 512, false, false).unwrap();
    let i = 300;
    let old = Irte::msi(
        0x40,
        Destination::XApic(1),
        SourceId::Requester(RequesterId::new(0x18)),
    )
    .unwrap()
    .encode(false)
    .unwrap();
    let new = Irte::msi(
        0x41,
        Destination::XApic(2),
        SourceId::Requester(RequesterId::new(0x20)),
    )
    .unwrap()
    .encode(false)
    .unwrap();
    // Entry 300 sits in the second page, pair 44.
    let mem = t.page_mem(&p, 1);
    InterruptRemapTable::write_two_stores(&p, &mem, 44, old.0, old.1);
    mem.flush(88, 89);
    assert_eq!(t.read(&p, i), Some(old));
    p.clear_flush_log();
    InterruptRemapTable::write_two_stores(&p, &mem, 44, new.0, new.1);
    // The first write-back is the low half with P clear: until the high half is in
    // place the entry is not present, so no request sees old and new fields mixed.
    let first = p.flush_log()[0];
    let at = t.base().as_u64() + 4096 + 44 * 16;
    assert_eq!(first.0, at);
    let lo_word = p.read_device_u64(at).unwrap();
    assert_eq!(
        lo_word & 1,
        0,
        "low half not present while the high half changes"
    );
    mem.flush(88, 89);
    assert_eq!(t.read(&p, i), Some(new));
    assert_eq!(p.read_device_u64(at + 8), Some(new.1));
}

#[test]
fn table_sizes_are_powers_of_two_within_the_irta_range() {
    assert_eq!(table_entries(1), Ok(2));
    assert_eq!(table_entries(3), Ok(4));
    assert_eq!(table_entries(256), Ok(256));
    assert_eq!(table_entries(257), Ok(512));
    assert_eq!(table_entries(MAX_ENTRIES), Ok(MAX_ENTRIES));
    assert!(table_entries(0).is_err());
    assert!(table_entries(MAX_ENTRIES + 1).is_err());
}

#[test]
fn vectors_below_16_and_empty_bus_ranges_are_refused() {
    let src = SourceId::Requester(RequesterId::new(0x18));
    assert_eq!(
        Irte::msi(15, Destination::XApic(0), src),
        Err(IntRemapError::ReservedVector(15))
    );
    assert!(Irte::msi(16, Destination::XApic(0), src).is_ok());
    assert_eq!(
        Irte::msi(
            0x40,
            Destination::XApic(0),
            SourceId::Bus { start: 3, end: 2 }
        ),
        Err(IntRemapError::BadBusRange { start: 3, end: 2 })
    );
}

#[test]
fn destination_format_must_match_eime() {
    let src = SourceId::Requester(RequesterId::new(0x18));
    let x2 = Irte::msi(0x40, Destination::X2Apic(0x1_0000), src).unwrap();
    assert_eq!(
        x2.encode(false),
        Err(IntRemapError::DestinationNeedsEim(0x1_0000))
    );
    assert!(x2.encode(true).is_ok());
    let x = Irte::msi(0x40, Destination::XApic(1), src).unwrap();
    assert_eq!(
        x.encode(true),
        Err(IntRemapError::DestinationNeedsXApicMode)
    );
}
