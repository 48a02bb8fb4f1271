//! DMAR content that must be refused (VT-d §8), one small hand-built table per defect the
//! adversarial review found, plus the structures that used to be opaque (RHSA, ANDD, SATC,
//! SIDP) and the builder checked against a table QEMU produced.

use iommu_vtd::dmar::{
    scope_flags, scope_type, structure_type, PathEntry, RemappingStructure, ScopeKind, ScopeSpec,
    MAX_REGISTER_SIZE_LOG2_PAGES,
};
use iommu_vtd::{Dmar, DmarBuilder, DmarError, Refused, StructureError};

const QEMU_DRHD_BASE: u64 = 0xFED9_0000;
const EDU: [PathEntry; 1] = [PathEntry {
    device: 3,
    function: 0,
}];
/// Offset of the first structure (after the 48-byte header).
const FIRST: usize = 48;

fn edu_scope() -> ScopeSpec<'static> {
    ScopeSpec::endpoint(0, &EDU)
}

/// A table with one DRHD of raw Size byte `size` at `base`.
fn one_drhd(size: u8, base: u64) -> Vec<u8> {
    DmarBuilder::new(39)
        .drhd(0, size, 0, base, &[edu_scope()])
        .build()
}

fn refused(bytes: &[u8]) -> Vec<Refused> {
    Dmar::parse(bytes).unwrap().refused().collect()
}

#[test]
fn drhd_register_size_2_pow_267_is_refused() {
    // The review's table: Size byte 0xff, once read as 2^(255+12) bytes and mapped for 25 s.
    let bytes = one_drhd(0xff, QEMU_DRHD_BASE);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.drhds().count(), 0);
    assert_eq!(
        refused(&bytes),
        [Refused {
            offset: FIRST,
            structure: structure_type::DRHD,
            error: StructureError::RegisterSizeReserved { raw: 0xff }
        }]
    );
    assert_eq!(
        dmar.require_unit(),
        Err(DmarError::NoRemappingUnit { refused: 1 })
    );
}

#[test]
fn drhd_register_size_is_bounded_at_one_mib() {
    for n in 0..=15u8 {
        let bytes = one_drhd(n, QEMU_DRHD_BASE);
        let dmar = Dmar::parse(&bytes).unwrap();
        if n <= MAX_REGISTER_SIZE_LOG2_PAGES {
            let d = dmar.drhds().next().expect("bounded size accepted");
            // 2^N pages of 4 KiB (§8.3).
            assert_eq!(d.register_size(), 4096u64 << n, "N = {n}");
            assert!(d.register_size() <= 1 << 20);
            assert!(dmar.refused().next().is_none());
        } else {
            assert_eq!(dmar.drhds().count(), 0, "N = {n}");
            assert_eq!(
                refused(&bytes)[0].error,
                StructureError::RegisterSizeTooLarge { log2_pages: n }
            );
        }
    }
    // Reserved bits 7:4 set with a small N: refused, not masked into something plausible.
    assert_eq!(
        refused(&one_drhd(0x10, QEMU_DRHD_BASE))[0].error,
        StructureError::RegisterSizeReserved { raw: 0x10 }
    );
}

#[test]
fn drhd_register_base_zero_is_refused() {
    assert_eq!(
        refused(&one_drhd(0, 0))[0].error,
        StructureError::RegisterBaseZero
    );
}

#[test]
fn drhd_register_base_not_page_aligned_is_refused() {
    for base in [QEMU_DRHD_BASE + 0x800, QEMU_DRHD_BASE | 1, 0xFFF] {
        assert_eq!(
            refused(&one_drhd(0, base))[0].error,
            StructureError::RegisterBaseMisaligned { base },
            "{base:#x}"
        );
    }
}

#[test]
fn drhd_register_window_past_the_address_space_is_refused() {
    let base = !0xfffu64;
    assert!(Dmar::parse(&one_drhd(0, base))
        .unwrap()
        .drhds()
        .next()
        .is_some());
    assert_eq!(
        refused(&one_drhd(1, base))[0].error,
        StructureError::RegisterWindowOverflow { base }
    );
}

#[test]
fn host_address_width_out_of_range_is_refused() {
    for width in [0u8, 1, 12, 31, 64, 65, 200, 255] {
        let bytes = DmarBuilder::new(width)
            .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
            .build();
        let want = if width == 0 { 256 } else { u16::from(width) };
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::BadHostAddressWidth { width: want },
            "{width}"
        );
    }
    for width in [32u8, 39, 48, 52, 63] {
        let bytes = DmarBuilder::new(width)
            .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
            .build();
        assert_eq!(Dmar::parse(&bytes).unwrap().host_address_width(), width);
    }
}

#[test]
fn reserved_scope_types_are_skipped_and_reported() {
    let scope = |kind| ScopeSpec {
        kind,
        ..edu_scope()
    };
    let bytes = DmarBuilder::new(39)
        .drhd(
            0,
            0,
            0,
            QEMU_DRHD_BASE,
            &[
                scope(0),
                scope(scope_type::PCI_ENDPOINT),
                scope(6),
                scope(0xff),
            ],
        )
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    let d = dmar.drhds().next().expect("the unit itself is usable");
    let kinds: Vec<_> = d.scopes().map(|s| s.kind()).collect();
    assert_eq!(kinds, [ScopeKind::PciEndpoint]);
    // The DRHD fixed part is 16 bytes, each scope 8.
    let scope_at = |i: usize| FIRST + 16 + 8 * i;
    assert_eq!(
        refused(&bytes),
        [(scope_at(0), 0), (scope_at(2), 6), (scope_at(3), 0xff)].map(|(offset, kind)| Refused {
            offset,
            structure: structure_type::DRHD,
            error: StructureError::ReservedScopeType { kind }
        })
    );
    // A reserved scope does not count as a refused unit.
    assert_eq!(dmar.require_unit(), Ok(()));
}

#[test]
fn rmrr_base_above_limit_is_refused() {
    let bytes = DmarBuilder::new(39)
        .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
        .rmrr(0, 0x20_0000, 0x1F_FFFF - 0x1000, &[edu_scope()])
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.rmrrs().count(), 0);
    assert_eq!(
        refused(&bytes),
        [Refused {
            offset: FIRST + 24,
            structure: structure_type::RMRR,
            error: StructureError::RmrrBaseAboveLimit {
                base: 0x20_0000,
                limit: 0x1F_EFFF
            }
        }]
    );
}

#[test]
fn rmrr_not_4k_aligned_is_refused() {
    for (base, limit) in [
        (0xE_0800, 0xF_FFFF), // base inside a page
        (0xE_0000, 0xF_FFFE), // limit short of the page's last byte
        (0xE_0000, 0xF_F000), // limit on the first byte of a page
    ] {
        let bytes = DmarBuilder::new(39)
            .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
            .rmrr(0, base, limit, &[edu_scope()])
            .build();
        assert_eq!(Dmar::parse(&bytes).unwrap().rmrrs().count(), 0);
        assert_eq!(
            refused(&bytes)[0].error,
            StructureError::RmrrMisaligned { base, limit }
        );
    }
    // Aligned ones, including one ending at the top of the address space, are kept.
    for (base, limit) in [(0xE_0000, 0xF_FFFF), (!0xfffu64, u64::MAX)] {
        let bytes = DmarBuilder::new(39)
            .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
            .rmrr(0, base, limit, &[edu_scope()])
            .build();
        let dmar = Dmar::parse(&bytes).unwrap();
        let r = dmar.rmrrs().next().expect("aligned RMRR kept");
        assert_eq!((r.base(), r.limit()), (base, limit));
    }
}

#[test]
fn dmar_without_drhd_has_no_remapping_unit() {
    let bytes = DmarBuilder::new(39)
        .rmrr(0, 0xE_0000, 0xF_FFFF, &[edu_scope()])
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(
        dmar.require_unit(),
        Err(DmarError::NoRemappingUnit { refused: 0 })
    );
    assert!(dmar
        .require_unit()
        .unwrap_err()
        .to_string()
        .contains("no DRHD"));
    // The header alone: no structures at all.
    let empty = DmarBuilder::new(39).build();
    assert_eq!(empty.len(), 48);
    assert_eq!(
        Dmar::parse(&empty).unwrap().require_unit(),
        Err(DmarError::NoRemappingUnit { refused: 0 })
    );
}

#[test]
fn one_refused_unit_does_not_hide_a_good_one() {
    let bytes = DmarBuilder::new(39)
        .drhd(0, 0xff, 0, 0x1000_0000, &[edu_scope()])
        .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    let bases: Vec<_> = dmar.drhds().map(|d| d.register_base()).collect();
    assert_eq!(bases, [QEMU_DRHD_BASE]);
    assert_eq!(dmar.require_unit(), Ok(()));
    assert_eq!(dmar.refused().count(), 1);
    let line = dmar.refused().next().unwrap().to_string();
    assert!(
        line.contains("DRHD") && line.contains("ignored") && line.contains("0x30"),
        "{line}"
    );
}

#[test]
fn remaining_structures_are_typed() {
    let atc = [PathEntry {
        device: 2,
        function: 0,
    }];
    let sidp_scope = ScopeSpec {
        flags: scope_flags::ATC_HARDENED | scope_flags::REQ_WO_PASID_NESTED_NOT_ALLOWED,
        ..ScopeSpec::endpoint(0, &atc)
    };
    let bytes = DmarBuilder::new(46)
        .drhd(0, 1, 0, QEMU_DRHD_BASE, &[edu_scope()])
        .rhsa(QEMU_DRHD_BASE, 7)
        .andd(9, b"\\_SB.PCI0.SDMA")
        .satc(1, 0, &[ScopeSpec::endpoint(0, &atc)])
        .sidp(0, &[sidp_scope])
        .raw(42, &[1, 2, 3, 4])
        .build();
    let dmar = Dmar::parse(&bytes).unwrap();
    let kinds: Vec<_> = dmar
        .structures()
        .map(|s| match s {
            RemappingStructure::Drhd(_) => "DRHD",
            RemappingStructure::Rmrr(_) => "RMRR",
            RemappingStructure::Atsr(_) => "ATSR",
            RemappingStructure::Rhsa(_) => "RHSA",
            RemappingStructure::Andd(_) => "ANDD",
            RemappingStructure::Satc(_) => "SATC",
            RemappingStructure::Sidp(_) => "SIDP",
            RemappingStructure::Other { kind: 42, body } if body.len() == 8 => "other",
            RemappingStructure::Other { .. } => "other with wrong bytes",
        })
        .collect();
    assert_eq!(kinds, ["DRHD", "RHSA", "ANDD", "SATC", "SIDP", "other"]);
    let drhd = dmar.drhds().next().unwrap();
    assert_eq!(drhd.register_size(), 0x2000);
    assert_eq!(dmar.proximity_domain(&drhd), Some(7));
    let andd = dmar.andds().next().unwrap();
    assert_eq!(
        (andd.device_number(), andd.object_name()),
        (9, &b"\\_SB.PCI0.SDMA"[..])
    );
    let satc = dmar.satcs().next().unwrap();
    assert!(satc.atc_required());
    assert_eq!(satc.segment(), 0);
    let s = satc.scopes().next().unwrap();
    assert_eq!(s.resolve(|_, _, _| None).unwrap().device(), 2);
    assert_eq!(s.flags(), 0);
    let sidp = dmar.sidps().next().unwrap();
    let flags: Vec<u8> = sidp.scopes().map(|s| s.flags()).collect();
    assert_eq!(
        flags,
        [scope_flags::ATC_HARDENED | scope_flags::REQ_WO_PASID_NESTED_NOT_ALLOWED]
    );
    assert!(dmar.refused().next().is_none());
}

#[test]
fn new_structures_shorter_than_their_fixed_part_are_framing_errors() {
    // RHSA is 20 bytes; ANDD, SATC and SIDP have an 8-byte fixed part.
    for (kind, fixed_len) in [
        (structure_type::RHSA, 20usize),
        (structure_type::ANDD, 8),
        (structure_type::SATC, 8),
        (structure_type::SIDP, 8),
    ] {
        let body = vec![0u8; fixed_len - 4 - 1];
        let bytes = DmarBuilder::new(39)
            .drhd(0, 0, 0, QEMU_DRHD_BASE, &[edu_scope()])
            .raw(kind, &body)
            .build();
        assert_eq!(
            Dmar::parse(&bytes).unwrap_err(),
            DmarError::BadStructureLength {
                offset: FIRST + 24,
                kind,
                length: (fixed_len - 1) as u16
            }
        );
    }
}

/// Extracts the DMAR bytes from a fixture dump.
fn fixture(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| l.starts_with("DMAR 0"))
        .flat_map(|l| l.split_once(':').map_or("", |(_, b)| b).split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Rebuilding QEMU's tables from their parsed fields gives the same structure bytes: the
/// builder writes the layout real firmware uses.
#[test]
fn builder_reproduces_qemu_tables() {
    for text in [
        include_str!("fixtures/default.acpi"),
        include_str!("fixtures/complex.acpi"),
        include_str!("fixtures/aw48.acpi"),
    ] {
        let bytes = fixture(text);
        let dmar = Dmar::parse(&bytes).unwrap();
        let mut b = DmarBuilder::new(dmar.host_address_width()).flags(dmar.flags());
        for d in dmar.drhds() {
            let paths: Vec<Vec<PathEntry>> = d.scopes().map(|s| s.path().collect()).collect();
            let scopes: Vec<ScopeSpec<'_>> = d
                .scopes()
                .zip(&paths)
                .map(|(s, path)| ScopeSpec {
                    kind: match s.kind() {
                        ScopeKind::PciEndpoint => scope_type::PCI_ENDPOINT,
                        ScopeKind::PciSubHierarchy => scope_type::PCI_SUB_HIERARCHY,
                        ScopeKind::IoApic => scope_type::IOAPIC,
                        ScopeKind::Hpet => scope_type::HPET,
                        ScopeKind::AcpiNamespace => scope_type::ACPI_NAMESPACE,
                        ScopeKind::Other(k) => k,
                    },
                    flags: s.flags(),
                    enumeration_id: s.enumeration_id(),
                    start_bus: s.start_bus(),
                    path,
                })
                .collect();
            let size = d.register_size().trailing_zeros() as u8 - 12;
            b = b.drhd(d.flags(), size, d.segment(), d.register_base(), &scopes);
        }
        let rebuilt = b.build();
        assert_eq!(rebuilt.len(), bytes.len());
        assert_eq!(rebuilt[36..], bytes[36..], "structures and DMAR fields");
        assert!(Dmar::parse(&rebuilt).is_ok());
    }
}
