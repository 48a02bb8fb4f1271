//! Unit tests of the DMAR parser, builder and scope resolution (`super`).

use super::*;
use alloc::vec::Vec;

/// A segment-0 function (every fixture's DRHDs are in segment 0).
fn at(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

/// Extracts the DMAR bytes from a fixture.
pub(crate) fn fixture(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| l.starts_with("DMAR 0"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|(_, b)| b)
                .unwrap_or("")
                .split_whitespace()
        })
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn fix_checksum(bytes: &mut [u8]) {
    bytes[9] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[9] = 0u8.wrapping_sub(sum);
}

const DEFAULT: &str = include_str!("../../tests/fixtures/default.acpi");
const AW48: &str = include_str!("../../tests/fixtures/aw48.acpi");
const COMPLEX: &str = include_str!("../../tests/fixtures/complex.acpi");

fn endpoints(dmar: &Dmar<'_>, kind: ScopeKind) -> Vec<Bdf> {
    let drhd = dmar.drhds().next().unwrap();
    drhd.scopes()
        .filter(|s| s.kind() == kind)
        .map(|s| s.resolve(|_, _, _| None).unwrap())
        .collect()
}

#[test]
fn default_fixture() {
    let bytes = fixture(DEFAULT);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 39);
    assert!(dmar.interrupt_remapping());
    assert_eq!(dmar.drhds().count(), 1);
    assert_eq!(dmar.rmrrs().count(), 0);
    assert_eq!(dmar.atsrs().count(), 0);
    let drhd = dmar.drhds().next().unwrap();
    assert_eq!(drhd.register_base(), 0xFED9_0000);
    assert_eq!(drhd.segment(), 0);
    assert!(!drhd.include_pci_all(), "QEMU lists explicit scopes");
    let ioapic: Vec<_> = drhd
        .scopes()
        .filter(|s| s.kind() == ScopeKind::IoApic)
        .collect();
    assert_eq!(ioapic.len(), 1);
    assert_eq!(ioapic[0].start_bus(), 0xFF);
    // q35: host bridge 00.0, VGA 01.0, e1000e 02.0, `-device edu` 03.0, ICH9 1f.0/1f.2/1f.3.
    let want = [
        (0, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (0x1f, 0),
        (0x1f, 2),
        (0x1f, 3),
    ]
    .map(|(d, f)| at(0, d, f));
    assert_eq!(endpoints(&dmar, ScopeKind::PciEndpoint), want);
}

#[test]
fn aw48_fixture_reports_48_bit_haw() {
    let bytes = fixture(AW48);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 48);
}

#[test]
fn complex_fixture_lists_bridges_and_the_pxb_bus() {
    let bytes = fixture(COMPLEX);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 39);
    // Root ports rp1 03.0, rp2 04.0, pcie-pci-bridge 05.0, pci-bridge 06.0 on bus 0, and the
    // two root ports on pxb-pcie's bus 64 (bus_nr=64).
    let bridges = endpoints(&dmar, ScopeKind::PciSubHierarchy);
    assert_eq!(
        bridges,
        [
            at(0, 3, 0),
            at(0, 4, 0),
            at(0, 5, 0),
            at(0, 6, 0),
            at(64, 0, 0),
            at(64, 1, 0)
        ]
    );
    // The pxb-pcie host bridge itself (00.7) is a type-0 endpoint.
    assert!(endpoints(&dmar, ScopeKind::PciEndpoint).contains(&at(0, 7, 0)));
}

#[test]
fn path_walks_through_bridges() {
    // One DRHD with a scope 00:1c.0 -> 00.0 -> 02.1 (two bridges).
    let mut bytes = fixture(DEFAULT);
    bytes.truncate(0x40);
    bytes.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0x1c, 0, 0, 0, 2, 1]);
    let len = bytes.len() - 0x30;
    bytes[0x32] = len as u8;
    let total = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&total.to_le_bytes());
    fix_checksum(&mut bytes);
    let dmar = Dmar::parse(&bytes).unwrap();
    let scope = dmar.drhds().next().unwrap().scopes().next().unwrap();
    assert_eq!(scope.path().len(), 3);
    let bdf = scope
        .resolve(|bus, dev, func| match (bus, dev, func) {
            (0, 0x1c, 0) => Some(5),
            (5, 0, 0) => Some(6),
            _ => None,
        })
        .unwrap();
    assert_eq!(bdf, at(6, 2, 1));
    assert_eq!(
        scope.resolve(|_, _, _| None),
        Err(ScopeError::NoSecondaryBus {
            bridge: at(0, 0x1c, 0)
        })
    );
}

#[test]
fn rmrr_and_atsr_are_parsed() {
    let mut bytes = fixture(DEFAULT);
    // RMRR: base 0xE0000, limit 0xFFFFF, scope endpoint 00:1d.0.
    let mut rmrr = vec![1, 0, 32, 0, 0, 0, 0, 0];
    rmrr.extend_from_slice(&0xE0000u64.to_le_bytes());
    rmrr.extend_from_slice(&0xFFFFFu64.to_le_bytes());
    rmrr.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0x1d, 0]);
    bytes.extend_from_slice(&rmrr);
    // ATSR: ALL_PORTS, segment 0, no scopes; then an RHSA (type 3) to skip.
    bytes.extend_from_slice(&[2, 0, 8, 0, 1, 0, 0, 0]);
    let mut rhsa = vec![3, 0, 20, 0];
    rhsa.extend_from_slice(&[0; 16]);
    bytes.extend_from_slice(&rhsa);
    let total = bytes.len() as u32;
    bytes[4..8].copy_from_slice(&total.to_le_bytes());
    fix_checksum(&mut bytes);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.structures().count(), 4);
    let r = dmar.rmrrs().next().unwrap();
    assert_eq!((r.base(), r.limit(), r.segment()), (0xE0000, 0xFFFFF, 0));
    let s: Vec<_> = r
        .scopes()
        .map(|s| s.resolve(|_, _, _| None).unwrap())
        .collect();
    assert_eq!(s, [at(0, 0x1d, 0)]);
    let a = dmar.atsrs().next().unwrap();
    assert!(a.all_ports());
    assert_eq!(a.scopes().count(), 0);
    assert!(matches!(
        dmar.structures().last(),
        Some(RemappingStructure::Rhsa(r)) if r.register_base() == 0 && r.proximity_domain() == 0
    ));
}

fn with_structure_length(len: u16) -> Vec<u8> {
    let mut bytes = fixture(DEFAULT);
    bytes[0x32..0x34].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

#[test]
fn lying_structure_lengths_are_rejected() {
    for len in [0u16, 3] {
        assert!(
            matches!(
                Dmar::parse(&with_structure_length(len)),
                Err(DmarError::BadStructureLength {
                    offset: 0x30,
                    kind: 0,
                    ..
                })
            ),
            "length {len}"
        );
    }
    // Shorter than the DRHD's fixed part.
    assert!(matches!(
        Dmar::parse(&with_structure_length(8)),
        Err(DmarError::BadStructureLength {
            offset: 0x30,
            length: 8,
            ..
        })
    ));
    // Past the end of the table.
    assert!(matches!(
        Dmar::parse(&with_structure_length(0x51)),
        Err(DmarError::BadStructureLength { length: 0x51, .. })
    ));
}

#[test]
fn lying_scope_lengths_are_rejected() {
    for (len, what) in [
        (0u8, "zero"),
        (6, "no path"),
        (7, "odd path"),
        (0x60, "past the end"),
    ] {
        let mut bytes = fixture(DEFAULT);
        bytes[0x41] = len;
        fix_checksum(&mut bytes);
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::BadScopeLength {
                offset: 0x40,
                length: len
            },
            "{what}"
        );
    }
    let mut bytes = fixture(DEFAULT);
    bytes[0x4E] = 32;
    fix_checksum(&mut bytes);
    assert!(matches!(
        Dmar::parse(&bytes),
        Err(DmarError::BadPathEntry { offset: 0x48, .. })
    ));
}

#[test]
fn truncated_tables_are_rejected() {
    let bytes = fixture(DEFAULT);
    for cut in [0, 10, 47] {
        assert_eq!(
            Dmar::parse(&bytes[..cut]).unwrap_err(),
            DmarError::TooShort { len: cut }
        );
    }
    // The header says 128 bytes but only 100 are there.
    assert_eq!(
        Dmar::parse(&bytes[..100]).unwrap_err(),
        DmarError::BadTableLength {
            header: 128,
            available: 100
        }
    );
    // A structure header cut in half at the end of the table.
    let mut short = bytes.clone();
    short.extend_from_slice(&[1, 0]);
    short[4] = 130;
    fix_checksum(&mut short);
    assert_eq!(
        Dmar::parse(&short).unwrap_err(),
        DmarError::TruncatedStructure { offset: 128 }
    );
    // Header length below the header size.
    let mut tiny = bytes.clone();
    tiny[4] = 20;
    assert!(matches!(
        Dmar::parse(&tiny),
        Err(DmarError::BadTableLength { header: 20, .. })
    ));
}

#[test]
fn bad_signature_and_checksum() {
    let mut bytes = fixture(DEFAULT);
    bytes[0] = b'X';
    assert!(matches!(
        Dmar::parse(&bytes),
        Err(DmarError::BadSignature(_))
    ));
    let mut bytes = fixture(DEFAULT);
    bytes[0x70] ^= 1;
    assert!(matches!(
        Dmar::parse(&bytes),
        Err(DmarError::BadChecksum { .. })
    ));
}

#[test]
fn trailing_bytes_after_the_table_are_ignored() {
    let mut bytes = fixture(DEFAULT);
    bytes.extend_from_slice(&[0xFF; 7]);
    assert_eq!(Dmar::parse(&bytes).unwrap().drhds().count(), 1);
}

/// A device scope resolves in the segment of the structure holding it: the same path under
/// a DRHD and an RMRR of segment 2 and a DRHD of segment 0 names three different functions.
#[test]
fn scopes_resolve_in_their_structures_segment() {
    let path = [PathEntry {
        device: 0x1f,
        function: 3,
    }];
    let scope = [ScopeSpec::endpoint(0x40, &path)];
    let bytes = DmarBuilder::new(38)
        .drhd(0, 0, 2, 0xfed9_0000, &scope)
        .drhd(0, 0, 0, 0xfed9_1000, &scope)
        .rmrr(2, 0xe0000, 0xeffff, &scope)
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    let resolved: Vec<Bdf> = dmar
        .drhds()
        .flat_map(|d| d.scopes())
        .chain(dmar.rmrrs().flat_map(|r| r.scopes()))
        .map(|s| s.resolve(|_, _, _| None).unwrap())
        .collect();
    let seg2 = Bdf::new(2, 0x40, 0x1f, 3).unwrap();
    assert_eq!(resolved, [seg2, at(0x40, 0x1f, 3), seg2]);
    assert_eq!(resolved[0].requester_id().get(), 0x40fb);
    assert_ne!(resolved[0], resolved[1]);
    assert_eq!(
        dmar.drhds()
            .next()
            .unwrap()
            .scopes()
            .next()
            .unwrap()
            .segment(),
        2
    );
}
