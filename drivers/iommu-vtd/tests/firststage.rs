//! Host tests of the first-stage page table on heap memory (spec §3.6, §9.7), mirroring
//! `tests/pagetable.rs` for the second level, plus the first-stage format's own rules: the
//! entry encoding, U/S and A/D on every entry, no write-only, no SNP, the canonical aperture,
//! and QEMU 10's reserved-bit checks (`vtd_flpte_nonzero_rsvd`) on every entry written.

use std::collections::{BTreeMap, BTreeSet};

use dma::iommu::{IommuError, IotlbGather, PageSizes, Prot};
use dma::PhysAddr;
use iommu_vtd::fake::HostPlatform;
use iommu_vtd::firststage::{
    fspte, page_sizes, FirstStageConfig, FirstStageLevels, FirstStageTable, FsPte,
};
use iommu_vtd::Platform;
use proptest::prelude::*;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// QEMU 10's first-stage needs `aw-bits=48`.
const HAW: u8 = 48;

fn cfg(levels: FirstStageLevels) -> FirstStageConfig {
    FirstStageConfig {
        levels,
        input_bits: levels.address_width(),
        output_bits: HAW,
        page_sizes: page_sizes(true),
        coherent: false,
    }
}

fn table(p: &HostPlatform, c: FirstStageConfig) -> FirstStageTable {
    FirstStageTable::new(p, c).unwrap()
}

/// Raw entry of `iova` at `level` (walking the CPU view).
fn raw_entry(p: &HostPlatform, t: &FirstStageTable, iova: u64, level: u8) -> u64 {
    let mut table = t.root().as_u64();
    let mut l = t.levels().count();
    loop {
        let index = (iova >> (12 + 9 * (l as u32 - 1))) & 0x1FF;
        let e = p.read_cpu_u64(table + index * 8).unwrap();
        if l == level {
            return e;
        }
        table = e & fspte::ADDR_MASK;
        l -= 1;
    }
}

/// Every live page's device view equals its CPU view (every write was flushed).
fn all_flushed(p: &HostPlatform) -> bool {
    p.live_page_list().into_iter().all(|pg| p.views_agree(pg))
}

/// QEMU 10's reserved-bit mask for a present first-stage entry (`vtd_fpte_rsvd` /
/// `vtd_fpte_rsvd_large`, built from `VTD_FPTE_*_RSVD_MASK(aw)`), restated from the spec's
/// layout: address bits at or above the address width up to bit 51; PS in a PML4E/PML5E;
/// bits 20:13 of a 2 MiB leaf and 29:13 of a 1 GiB leaf. Bits 63:52 are ignored.
fn qemu_reserved(level: u8, entry: u64, aw: u8) -> u64 {
    let upper_ignored = !0u64 << 52;
    let mut mask = !(((1u64 << aw) - 1) | upper_ignored);
    let ps = entry & fspte::PAGE_SIZE != 0;
    match level {
        4 | 5 => mask |= fspte::PAGE_SIZE,
        2 if ps => mask |= ((1 << 21) - 1) & !((1 << 13) - 1),
        3 if ps => mask |= ((1 << 30) - 1) & !((1 << 13) - 1),
        _ => {}
    }
    mask
}

/// Walks every linked table and checks each present entry the way QEMU 10's
/// `vtd_iova_to_flpte` would on a walk: U/S set, A set (so QEMU never writes the table), no
/// reserved bit, D only on a writable leaf, never XD or G. Returns the first violation.
fn check_entries_as_qemu(p: &HostPlatform, t: &FirstStageTable, aw: u8) -> Result<usize, String> {
    fn walk(
        p: &HostPlatform,
        table: u64,
        level: u8,
        aw: u8,
        seen: &mut usize,
    ) -> Result<(), String> {
        for i in 0..512u64 {
            let e = p.read_device_u64(table + i * 8).unwrap();
            if e == 0 {
                continue;
            }
            let leaf = level == 1 || e & fspte::PAGE_SIZE != 0;
            if e & fspte::PRESENT == 0 {
                // A mapping without rights: only software bits (and the address) may be set.
                if !leaf || e & fspte::SW_MAPPED == 0 {
                    return Err(format!("level {level} [{i}]: non-present non-leaf {e:#x}"));
                }
                continue;
            }
            *seen += 1;
            let rsvd = e & qemu_reserved(level, e, aw);
            if rsvd != 0 {
                return Err(format!(
                    "level {level} [{i}]: reserved bits {rsvd:#x} in {e:#x}"
                ));
            }
            if e & fspte::USER == 0 {
                return Err(format!(
                    "level {level} [{i}]: U/S clear in {e:#x} (fault 0x81)"
                ));
            }
            if e & fspte::ACCESSED == 0 {
                return Err(format!("level {level} [{i}]: A clear in {e:#x}"));
            }
            if e & (fspte::XD | fspte::GLOBAL) != 0 {
                return Err(format!("level {level} [{i}]: XD or G in {e:#x}"));
            }
            if leaf {
                if (e & fspte::DIRTY != 0) != (e & fspte::WRITE != 0) {
                    return Err(format!("level {level} [{i}]: D != R/W in leaf {e:#x}"));
                }
            } else {
                if e & fspte::WRITE == 0 {
                    return Err(format!(
                        "level {level} [{i}]: R/W clear in table entry {e:#x}"
                    ));
                }
                if e & (fspte::DIRTY | fspte::PCD | fspte::PWT | fspte::SW_MAPPED) != 0 {
                    return Err(format!(
                        "level {level} [{i}]: leaf bits in table entry {e:#x}"
                    ));
                }
                walk(p, e & fspte::ADDR_MASK, level - 1, aw, seen)?;
            }
        }
        Ok(())
    }
    let mut seen = 0;
    walk(p, t.root().as_u64(), t.levels().count(), aw, &mut seen)?;
    Ok(seen)
}

#[test]
fn entry_bits_sit_where_the_spec_puts_them() {
    // §9.7: P 0, R/W 1, U/S 2, PWT 3, PCD 4, A 5, D 6, PS 7, G 8, address 51:12, XD 63; our
    // software bits in the ignored bits 52 and 53.
    let single = [
        (fspte::PRESENT, 0),
        (fspte::WRITE, 1),
        (fspte::USER, 2),
        (fspte::PWT, 3),
        (fspte::PCD, 4),
        (fspte::ACCESSED, 5),
        (fspte::DIRTY, 6),
        (fspte::PAGE_SIZE, 7),
        (fspte::GLOBAL, 8),
        (fspte::SW_MAPPED, 52),
        (fspte::SW_MMIO, 53),
        (fspte::XD, 63),
    ];
    for (mask, bit) in single {
        assert_eq!(mask, 1u64 << bit, "bit {bit}");
    }
    let bits_51_12: u64 = (12..=51).map(|b| 1u64 << b).sum();
    assert_eq!(fspte::ADDR_MASK, bits_51_12);
    // No two fields overlap.
    let mut all = fspte::ADDR_MASK;
    for (mask, _) in single {
        assert_eq!(all & mask, 0);
        all |= mask;
    }
    // The address field holds the address itself.
    let e = FsPte::new().with_addr(0x000F_EDCB_A987_6000);
    assert_eq!(e.into_bits(), 0x000F_EDCB_A987_6000);
    assert_eq!(e.addr(), 0x000F_EDCB_A987_6000);
    assert_eq!(FsPte::new().with_addr(!0).addr(), bits_51_12);
    // PASID entry FSPM encodings (§9.6) and widths.
    assert_eq!(FirstStageLevels::Four.fspm(), 0);
    assert_eq!(FirstStageLevels::Five.fspm(), 1);
    assert_eq!(
        (
            FirstStageLevels::Four.count(),
            FirstStageLevels::Four.address_width()
        ),
        (4, 48)
    );
    assert_eq!(
        (
            FirstStageLevels::Five.count(),
            FirstStageLevels::Five.address_width()
        ),
        (5, 57)
    );
    assert_eq!(page_sizes(false), PageSizes::SIZE_4K | PageSizes::SIZE_2M);
    assert_eq!(
        page_sizes(true),
        PageSizes::SIZE_4K | PageSizes::SIZE_2M | PageSizes::SIZE_1G
    );
}

#[test]
fn leaf_and_table_entry_encodings() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, 0x10_0000, 0x5000_0000, K4, Prot::READ).unwrap();
    t.map(&p, 0x10_1000, 0x5000_1000, K4, RW).unwrap();
    t.map(&p, 0x10_2000, 0x5000_2000, K4, Prot::WRITE).unwrap();
    t.map(&p, 0x10_3000, 0x5000_3000, K4, Prot::empty())
        .unwrap();
    t.map(&p, 0x10_4000, 0xFE00_0000, K4, RW | Prot::MMIO)
        .unwrap();
    t.map(&p, 0x10_5000, 0x5000_5000, K4, RW | Prot::CACHE)
        .unwrap();

    let base = fspte::SW_MAPPED | fspte::PRESENT | fspte::USER | fspte::ACCESSED;
    let writable = base | fspte::WRITE | fspte::DIRTY;
    let cases = [
        (0x10_0000, 0x5000_0000, base, Prot::READ),
        (0x10_1000, 0x5000_1000, writable, RW),
        // No write-only in the format: mapped (and reported) read + write.
        (0x10_2000, 0x5000_2000, writable, RW),
        // No rights: not present to hardware, only the software bit.
        (0x10_3000, 0x5000_3000, fspte::SW_MAPPED, Prot::empty()),
        // Device memory: UC through PCD | PWT, and the software bit.
        (
            0x10_4000,
            0xFE00_0000,
            writable | fspte::PCD | fspte::PWT | fspte::SW_MMIO,
            RW | Prot::MMIO,
        ),
        // No SNP bit in the format: CACHE changes nothing and is not reported.
        (0x10_5000, 0x5000_5000, writable, RW),
    ];
    for (iova, pa, bits, prot) in cases {
        let e = raw_entry(&p, &t, iova, 1);
        assert_eq!(
            e & !fspte::ADDR_MASK,
            bits,
            "leaf bits of {iova:#x}: {e:#x}"
        );
        assert_eq!(e & fspte::ADDR_MASK, pa);
        assert_eq!(
            t.translate(&p, iova + 0x123),
            Some((PhysAddr::new(pa + 0x123), prot))
        );
    }
    // Non-leaf entries: exactly P | R/W | U/S | A and the next table.
    for level in [4, 3, 2] {
        let e = raw_entry(&p, &t, 0x10_0000, level);
        assert_eq!(
            e & !fspte::ADDR_MASK,
            fspte::PRESENT | fspte::WRITE | fspte::USER | fspte::ACCESSED,
            "level {level}: {e:#x}"
        );
        assert!(p.is_live(e & fspte::ADDR_MASK));
    }
    assert_eq!(t.translate(&p, 0x10_6000), None);
    assert_eq!(check_entries_as_qemu(&p, &t, HAW), Ok(3 + 5));
    assert!(all_flushed(&p));
}

#[test]
fn the_qemu_checker_catches_what_it_should() {
    // Negative controls for `check_entries_as_qemu`: each rule it enforces, broken once in a
    // raw entry, is reported.
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, 0, 0x20_0000, M2, RW).unwrap();
    t.map(&p, G1, 0x10_0000, K4, RW).unwrap();
    assert!(check_entries_as_qemu(&p, &t, HAW).is_ok());
    let leaf_2m = raw_entry(&p, &t, 0, 2);
    assert_ne!(leaf_2m & fspte::PAGE_SIZE, 0);
    let l1 = raw_entry(&p, &t, G1, 2) & fspte::ADDR_MASK;
    let pml4 = t.root().as_u64();
    let pdpt = raw_entry(&p, &t, 0, 4) & fspte::ADDR_MASK;
    let pd = raw_entry(&p, &t, 0, 3) & fspte::ADDR_MASK;
    let leaf_4k = raw_entry(&p, &t, G1, 1);
    let pml4e = raw_entry(&p, &t, 0, 4);
    let broken = [
        (pd, leaf_2m & !fspte::USER),
        (pd, leaf_2m & !fspte::ACCESSED),
        (pd, leaf_2m | (1 << 13)),
        (pd, leaf_2m | (1 << HAW)),
        (pd, leaf_2m | fspte::XD),
        (pd, leaf_2m & !fspte::DIRTY),
        (l1, leaf_4k | fspte::GLOBAL),
        (pml4, pml4e | fspte::PAGE_SIZE),
        (pml4, pml4e & !fspte::WRITE),
        (pml4, pml4e | fspte::DIRTY),
    ];
    let _ = pdpt;
    // Every broken entry sits in slot 0 of its table (IOVAs 0 and 1 GiB).
    for (page, value) in broken {
        let old = p.read_cpu_u64(page).unwrap();
        poke(&p, page, value);
        assert!(
            check_entries_as_qemu(&p, &t, HAW).is_err(),
            "not caught: {value:#x} (was {old:#x})"
        );
        poke(&p, page, old);
        assert!(check_entries_as_qemu(&p, &t, HAW).is_ok());
    }
}

/// Writes one raw entry at `phys` (a live table page of `p`) and writes it back, so both
/// views hold it.
fn poke(p: &HostPlatform, phys: u64, value: u64) {
    let virt = p.phys_to_virt(PhysAddr::new(phys)).cast::<u64>();
    // SAFETY: `phys` is 8-byte aligned inside a live table page of `p`, which the host
    // platform backs with heap memory valid at `phys_to_virt`; no hardware walks it.
    unsafe { virt.write_volatile(value) };
    p.flush_cache_range(virt.cast(), 8);
}

#[test]
fn superpages_when_aligned_and_allowed() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, G1, 2 * G1, G1, RW).unwrap();
    assert_ne!(raw_entry(&p, &t, G1, 3) & fspte::PAGE_SIZE, 0, "1 GiB leaf");
    assert_eq!(t.leaf(&p, G1 + 5).map(|l| (l.size, l.level)), Some((G1, 3)));
    t.map(&p, 4 * G1, 0x1234_0000_0000 & 0xFF_FFE0_0000, 2 * M2, RW)
        .unwrap();
    assert_ne!(
        raw_entry(&p, &t, 4 * G1, 2) & fspte::PAGE_SIZE,
        0,
        "2 MiB leaf"
    );
    assert_eq!(
        t.leaf(&p, 4 * G1 + M2).map(|l| (l.size, l.level)),
        Some((M2, 2))
    );
    // Misaligned physical address: 4 KiB leaves only.
    t.map(&p, 8 * G1, 0x40_1000, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t, 8 * G1, 2) & fspte::PAGE_SIZE, 0);
    assert_eq!(
        t.translate(&p, 8 * G1 + M2 - 1),
        Some((PhysAddr::new(0x40_1000 + M2 - 1), RW))
    );
    // Without CAP.FS1GP: 2 MiB leaves (always available in first-stage), never 1 GiB.
    let mut c = cfg(FirstStageLevels::Four);
    c.page_sizes = page_sizes(false);
    let mut t2 = table(&p, c);
    t2.map(&p, 0, 0, G1, RW).unwrap();
    assert_eq!(raw_entry(&p, &t2, 0, 3) & fspte::PAGE_SIZE, 0);
    assert_ne!(raw_entry(&p, &t2, 0, 2) & fspte::PAGE_SIZE, 0);
    assert_eq!(t2.leaf(&p, G1 - 1).map(|l| l.size), Some(M2));
    // Only 4 KiB allowed.
    c.page_sizes = PageSizes::SIZE_4K;
    let mut t4 = table(&p, c);
    t4.map(&p, 0, 0, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t4, 0, 2) & fspte::PAGE_SIZE, 0);
    for t in [&t, &t2, &t4] {
        check_entries_as_qemu(&p, t, HAW).unwrap();
    }
    assert!(all_flushed(&p));
}

#[test]
fn bad_input_is_refused_without_change() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    let live = p.live_pages();
    let mis = |iova, paddr, size| IommuError::Misaligned { iova, paddr, size };
    assert_eq!(t.map(&p, 0x1001, 0, K4, RW), Err(mis(0x1001, 0, K4)));
    assert_eq!(t.map(&p, 0, 0x10, K4, RW), Err(mis(0, 0x10, K4)));
    assert_eq!(t.map(&p, 0, 0, 0, RW), Err(mis(0, 0, 0)));
    assert_eq!(t.map(&p, 0, 0, 0x800, RW), Err(mis(0, 0, 0x800)));
    // The lower canonical half of 48 bits: bit 47 set is not canonical without the upper bits.
    assert_eq!(t.aperture_end(), (1 << 47) - 1);
    assert_eq!(
        t.map(&p, 1 << 47, 0, K4, RW),
        Err(IommuError::OutsideAperture {
            iova: 1 << 47,
            size: K4
        })
    );
    assert_eq!(
        t.map(&p, (1 << 47) - K4, 0, 2 * K4, RW),
        Err(IommuError::OutsideAperture {
            iova: (1 << 47) - K4,
            size: 2 * K4
        })
    );
    assert!(matches!(
        t.map(&p, !0xFFFu64, 0, K4, RW),
        Err(IommuError::OutsideAperture { .. })
    ));
    // Output at or beyond 2^HAW.
    assert_eq!(
        t.map(&p, 0, 1 << HAW, K4, RW),
        Err(IommuError::OutputBeyondLimit { paddr: 1 << HAW })
    );
    assert_eq!(
        t.map(&p, 0, (1 << HAW) - K4, 2 * K4, RW),
        Err(IommuError::OutputBeyondLimit { paddr: 1 << HAW })
    );
    assert!(matches!(
        t.map(&p, 0, !0xFFFu64, K4, RW),
        Err(IommuError::OutputBeyondLimit { .. })
    ));
    assert_eq!(p.live_pages(), live, "refused maps allocate nothing");
    // The edges themselves are fine.
    t.map(&p, (1 << 47) - K4, (1 << HAW) - K4, K4, RW).unwrap();
    assert_eq!(p.live_pages(), live + 3);
    check_entries_as_qemu(&p, &t, HAW).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(t.unmap(&p, 0x10, K4, &mut g), Err(mis(0x10, 0, K4)));
    assert_eq!(t.unmap(&p, 0, 0, &mut g), Err(mis(0, 0, 0)));
    assert!(matches!(
        t.unmap(&p, 1 << 47, K4, &mut g),
        Err(IommuError::OutsideAperture { .. })
    ));
    assert!(g.is_empty());
    assert_eq!(t.translate(&p, 1 << 47), None);
    // A narrower input width caps the aperture further.
    let mut c = cfg(FirstStageLevels::Four);
    c.input_bits = 39;
    assert_eq!(table(&p, c).aperture_end(), (1 << 39) - 1);
}

#[test]
fn overlapping_maps_are_refused_exactly() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, 0x40_3000, 0x100_0000, K4, RW).unwrap();
    let live = p.live_pages();
    assert_eq!(
        t.map(&p, 0x40_0000, 0x200_0000, 8 * K4, RW),
        Err(IommuError::AlreadyMapped { iova: 0x40_3000 })
    );
    assert_eq!(
        t.map(&p, 0x40_0000, 0x200_0000, M2, RW),
        Err(IommuError::AlreadyMapped { iova: 0x40_3000 })
    );
    // A no-rights mapping is a mapping too.
    t.map(&p, 0x80_0000, 0x300_0000, K4, Prot::empty()).unwrap();
    let live2 = p.live_pages();
    assert_eq!(
        t.map(&p, 0x80_0000, 0x300_0000, K4, RW),
        Err(IommuError::AlreadyMapped { iova: 0x80_0000 })
    );
    t.map(&p, G1, G1, G1, RW).unwrap();
    assert_eq!(
        t.map(&p, G1 + 5 * K4, 0, K4, RW),
        Err(IommuError::AlreadyMapped { iova: G1 + 5 * K4 })
    );
    assert_eq!(
        live2,
        live + 1,
        "a new PT for 0x80_0000, under the existing PD"
    );
    assert_eq!(
        p.live_pages(),
        live2,
        "failed maps and the 1 GiB leaf allocate nothing"
    );
    assert_eq!(
        t.translate(&p, 0x40_0000),
        None,
        "nothing of the failed map stayed"
    );
}

#[test]
fn map_is_all_or_nothing_under_memory_pressure() {
    // 4 KiB pages crossing a 512 GiB boundary: new PDPT, PD and PT on both sides.
    let (iova, size) = ((1u64 << 39) - 4 * K4, 8 * K4);
    for allowed in 0..6 {
        let p = HostPlatform::new();
        let mut t = table(&p, cfg(FirstStageLevels::Four));
        let live = p.live_pages();
        p.set_alloc_limit(Some(allowed));
        assert_eq!(
            t.map(&p, iova, 0x80_1000, size, RW),
            Err(IommuError::OutOfMemory)
        );
        assert_eq!(p.live_pages(), live, "allowed {allowed}: pool returned");
        for i in 0..8 {
            assert_eq!(t.translate(&p, iova + i * K4), None);
        }
        assert!(p.read_cpu_u64(t.root().as_u64()).is_some());
        assert!((0..512).all(|i| p.read_cpu_u64(t.root().as_u64() + i * 8) == Some(0)));
        p.set_alloc_limit(None);
        t.map(&p, iova, 0x80_1000, size, RW).unwrap();
        assert_eq!(p.live_pages(), live + 6, "two PDPTs, two PDs, two PTs");
        check_entries_as_qemu(&p, &t, HAW).unwrap();
    }
}

#[test]
fn unmap_exactly_what_was_mapped() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, 0x10_0000, 0x20_0000, 4 * K4, RW).unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(
        t.unmap(&p, 0x10_0000, 5 * K4, &mut g),
        Err(IommuError::NotMapped { iova: 0x10_4000 })
    );
    assert_eq!(
        t.unmap(&p, 0x0F_F000, 2 * K4, &mut g),
        Err(IommuError::NotMapped { iova: 0x0F_F000 })
    );
    assert!(g.is_empty(), "failed unmaps gather nothing");
    assert_eq!(
        t.translate(&p, 0x10_0000).unwrap().0,
        PhysAddr::new(0x20_0000)
    );
    t.unmap(&p, 0x10_1000, K4, &mut g).unwrap();
    assert_eq!(g.span(), Some((dma::DmaAddr::new(0x10_1000), K4)));
    assert!(!g.freed_tables());
    assert_eq!(
        t.unmap(&p, 0x10_1000, K4, &mut g),
        Err(IommuError::NotMapped { iova: 0x10_1000 }),
        "double unmap"
    );
    // Superpages: whole or not at all.
    t.map(&p, M2 * 10, M2 * 20, M2, RW).unwrap();
    assert_eq!(
        t.unmap(&p, M2 * 10, K4, &mut g),
        Err(IommuError::PartialSuperpage {
            iova: M2 * 10,
            size: M2
        })
    );
    assert_eq!(
        t.unmap(&p, M2 * 10 + K4, M2 - K4, &mut g),
        Err(IommuError::PartialSuperpage {
            iova: M2 * 10,
            size: M2
        })
    );
    t.map(&p, 3 * G1, 0, G1, Prot::READ).unwrap();
    assert_eq!(
        t.unmap(&p, 3 * G1, G1 - M2, &mut g),
        Err(IommuError::PartialSuperpage {
            iova: 3 * G1,
            size: G1
        })
    );
    assert!(t.translate(&p, M2 * 10).is_some());
    assert!(t.translate(&p, 3 * G1).is_some());
    t.unmap(&p, M2 * 10, M2, &mut g).unwrap();
    t.unmap(&p, 3 * G1, G1, &mut g).unwrap();
    assert!(t.translate(&p, M2 * 10).is_none());
    assert!(t.translate(&p, 3 * G1).is_none());
    // A no-rights page unmaps like any other.
    t.map(&p, 0x90_0000, 0x90_0000, K4, Prot::empty()).unwrap();
    t.unmap(&p, 0x90_0000, K4, &mut g).unwrap();
    assert_eq!(t.translate(&p, 0x90_0000), None);
    assert!(all_flushed(&p));
}

#[test]
fn covered_tables_go_to_the_unmaps_gather() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    let live = p.live_pages();
    // 2 MiB of 4 KiB leaves (the physical address rules out a superpage): PDPT + PD + PT.
    let iova = 0x7000_0000;
    t.map(&p, iova, 0x1000_1000, M2, RW).unwrap();
    assert_eq!(p.live_pages(), live + 3);
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, M2, &mut g).unwrap();
    assert!(g.freed_tables());
    assert_eq!(g.unlinked_tables().len(), 1, "only the PT covered whole");
    let u = g.unlinked_tables()[0];
    assert_eq!((u.iova, u.size), (dma::DmaAddr::new(iova), M2));
    assert!(
        p.is_live(u.phys.as_u64()),
        "not freed before the invalidation"
    );
    assert_eq!(raw_entry(&p, &t, iova, 2), 0, "unlinked from the PD");
    assert_ne!(raw_entry(&p, &t, iova, 3), 0, "the PD stays linked");
    assert!(all_flushed(&p));
    for u in g.take_unlinked_tables() {
        // SAFETY: unlinked; this host test has no hardware walking it.
        unsafe { p.free_table_page(u.phys) };
    }
    // A whole 1 GiB region of 2 MiB leaves plus one PT: the PD and the PT go.
    t.map(&p, 3 * G1, 0x20_0000, G1 - M2, RW).unwrap();
    t.map(&p, 4 * G1 - M2, 0x4000_1000, M2, RW).unwrap();
    let mut g = IotlbGather::new();
    t.unmap(&p, 3 * G1, G1, &mut g).unwrap();
    let regions: Vec<_> = g
        .unlinked_tables()
        .iter()
        .map(|u| (u.iova.as_u64(), u.size))
        .collect();
    assert_eq!(regions, [(4 * G1 - M2, M2), (3 * G1, G1)]);
    assert_eq!(raw_entry(&p, &t, 3 * G1, 3), 0);
    for u in g.take_unlinked_tables() {
        // SAFETY: unlinked; no hardware.
        unsafe { p.free_table_page(u.phys) };
    }
    // A whole 512 GiB region: the PDPT goes too (owner token carried).
    let mut t2 = FirstStageTable::with_owner(&p, cfg(FirstStageLevels::Four), 7).unwrap();
    t2.map(&p, 1 << 39, 0x1000, K4, RW).unwrap();
    let mut g = IotlbGather::new();
    t2.unmap(&p, 1 << 39, 1 << 39, &mut g).unwrap_err();
    // Output = IOVA - 512 GiB, so the leaves past the first 2 MiB are superpages.
    t2.map(&p, (1 << 39) + K4, K4, (1 << 39) - K4, RW).unwrap();
    t2.unmap(&p, 1 << 39, 1 << 39, &mut g).unwrap();
    assert!(g.unlinked_tables().iter().all(|u| u.owner == 7));
    assert!(g
        .unlinked_tables()
        .iter()
        .any(|u| (u.iova.as_u64(), u.size) == (1 << 39, 1 << 39)));
    assert_eq!(raw_entry(&p, &t2, 1 << 39, 4), 0);
    assert!(all_flushed(&p));
}

#[test]
fn a_partly_covered_table_left_empty_stays_linked() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    let live = p.live_pages();
    let iova = 0x7000_0000;
    t.map(&p, iova, 0x1000_0000, 3 * K4, RW).unwrap();
    assert_eq!(p.live_pages(), live + 3);
    let pt = raw_entry(&p, &t, iova, 2);
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, K4, &mut g).unwrap();
    t.unmap(&p, iova + K4, 2 * K4, &mut g).unwrap();
    assert!(!g.freed_tables());
    assert_eq!(raw_entry(&p, &t, iova, 2), pt, "PT still linked");
    // A 2 MiB-aligned map over the (empty) table goes into it as 4 KiB leaves.
    t.map(&p, iova, 0x4000_0000, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t, iova, 2), pt, "no leaf over the table");
    assert_eq!(p.live_pages(), live + 3, "reused, nothing allocated");
    assert_eq!(
        t.translate(&p, iova + M2 - K4),
        Some((PhysAddr::new(0x4000_0000 + M2 - K4), RW))
    );
    assert!(all_flushed(&p));
}

#[test]
fn five_level_tables_reach_beyond_48_bits() {
    let p = HostPlatform::new();
    let mut c = cfg(FirstStageLevels::Five);
    c.output_bits = 52;
    let mut t = table(&p, c);
    assert_eq!(t.aperture_end(), (1 << 56) - 1);
    let iova = (1u64 << 55) + (1 << 47) + 0x1234_5000;
    t.map(&p, iova, 0x55_0000_0000, K4, RW).unwrap();
    assert_eq!(
        t.translate(&p, iova + 8),
        Some((PhysAddr::new(0x55_0000_0008), RW))
    );
    assert_eq!(p.live_pages(), 5);
    assert_eq!(check_entries_as_qemu(&p, &t, 52), Ok(5));
    assert_eq!(
        t.map(&p, 1 << 56, 0, K4, RW),
        Err(IommuError::OutsideAperture {
            iova: 1 << 56,
            size: K4
        })
    );
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, K4, &mut g).unwrap();
    assert!(g.unlinked_tables().is_empty());
    assert_eq!(t.translate(&p, iova), None);
    assert!(all_flushed(&p));
    // SAFETY: no hardware.
    unsafe { t.destroy(&p) };
    assert_eq!(p.live_pages(), 0);
}

#[test]
fn every_table_write_is_flushed_when_not_coherent() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    p.clear_flush_log();
    t.map(&p, 0x3000_0000, 0x4000_1000, 600 * K4, RW).unwrap();
    assert!(!p.flush_log().is_empty());
    assert!(all_flushed(&p), "device view equals CPU view after map");
    // What the hardware would walk (the device view) translates like the CPU view.
    assert_eq!(
        check_entries_as_qemu(&p, &t, HAW),
        Ok(4 + 600),
        "PML4E, PDPTE, two PDEs and the leaves"
    );
    let mut g = IotlbGather::new();
    t.unmap(&p, 0x3000_0000, 300 * K4, &mut g).unwrap();
    assert!(all_flushed(&p), "and after unmap");
}

#[test]
fn a_missing_write_back_is_visible_negative_control() {
    // With write-back disabled the device view lags: the check above can fail.
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    p.set_flush_disabled(true);
    t.map(&p, 0x3000_0000, 0x4000_0000, K4, RW).unwrap();
    assert!(!all_flushed(&p));
    assert_eq!(
        check_entries_as_qemu(&p, &t, HAW),
        Ok(0),
        "the device sees an empty root"
    );
}

#[test]
fn coherent_walks_need_no_flush() {
    let p = HostPlatform::new();
    let mut c = cfg(FirstStageLevels::Four);
    c.coherent = true;
    let mut t = table(&p, c);
    t.map(&p, 0, 0x1000, 10 * M2, RW).unwrap();
    let mut g = IotlbGather::new();
    t.unmap(&p, 0, 10 * M2, &mut g).unwrap();
    assert!(p.flush_log().is_empty());
}

#[test]
fn destroy_frees_everything() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(FirstStageLevels::Four));
    t.map(&p, 0, 0, 3 * M2 + 5 * K4, RW).unwrap();
    t.map(&p, 5 * G1, 0, K4, RW).unwrap();
    t.map(&p, 1 << 40, 0, G1, RW).unwrap();
    let mut g = IotlbGather::new();
    t.unmap(&p, 5 * G1, K4, &mut g).unwrap();
    // SAFETY: no hardware walks this table.
    unsafe { t.destroy(&p) };
    assert_eq!(p.live_pages(), 0);
}

// --- Model-based property test -------------------------------------------------------------

/// The model: leaves keyed by IOVA, `(size, paddr, prot)` with the rights the hardware grants.
type Model = BTreeMap<u64, (u64, u64, Prot)>;

/// The linked tables below the root, as `(region size, region base)`: `(M2, b)` is the PT
/// mapping `[b, b + 2 MiB)`, `(G1, b)` the PD, `(G512, b)` the PDPT.
type Tables = BTreeSet<(u64, u64)>;

const G512: u64 = 1 << 39;

/// The rights a first-stage leaf grants for a request (no write-only, no CACHE).
fn granted(prot: Prot) -> Prot {
    let mut g = prot & Prot::MMIO;
    if prot.intersects(RW) {
        g |= Prot::READ;
    }
    if prot.contains(Prot::WRITE) {
        g |= Prot::WRITE;
    }
    g
}

fn model_leaves(
    tables: &Tables,
    sizes: &[u64],
    iova: u64,
    paddr: u64,
    size: u64,
) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let (i, pa, rem) = (iova + off, paddr + off, size - off);
        let s = sizes
            .iter()
            .copied()
            .find(|&s| i % s == 0 && pa % s == 0 && rem >= s && !tables.contains(&(s, i)))
            .unwrap();
        out.push((i, pa, s));
        off += s;
    }
    out
}

fn model_leaf_at(m: &Model, iova: u64) -> Option<(u64, u64, u64, Prot)> {
    m.range(..=iova)
        .next_back()
        .filter(|(&s, &(size, _, _))| iova < s + size)
        .map(|(&s, &(size, pa, pr))| (s, size, pa, pr))
}

fn model_map(
    m: &mut Model,
    tables: &mut Tables,
    sizes: &[u64],
    iova: u64,
    paddr: u64,
    size: u64,
    prot: Prot,
) -> Result<(), IommuError> {
    let mut a = iova;
    while a < iova + size {
        if model_leaf_at(m, a).is_some() {
            return Err(IommuError::AlreadyMapped { iova: a });
        }
        a += K4;
    }
    for (i, pa, s) in model_leaves(tables, sizes, iova, paddr, size) {
        m.insert(i, (s, pa, granted(prot)));
        for region in [M2, G1, G512] {
            if s < region {
                tables.insert((region, i / region * region));
            }
        }
    }
    Ok(())
}

fn model_unmap(m: &mut Model, tables: &mut Tables, iova: u64, size: u64) -> Result<(), IommuError> {
    let mut a = iova;
    let mut leaves = Vec::new();
    while a < iova + size {
        match model_leaf_at(m, a) {
            None => return Err(IommuError::NotMapped { iova: a }),
            Some((s, sz, _, _)) if s < iova || s + sz > iova + size => {
                return Err(IommuError::PartialSuperpage { iova: s, size: sz })
            }
            Some((s, sz, _, _)) => {
                leaves.push(s);
                a = s + sz;
            }
        }
    }
    for s in leaves {
        m.remove(&s);
    }
    tables.retain(|&(region, base)| !(iova <= base && base + region <= iova + size));
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        iova: u64,
        paddr: u64,
        size: u64,
        prot: Prot,
    },
    Unmap {
        iova: u64,
        size: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Two 512 GiB regions, 4 GiB of IOVA in each, sizes/alignments that exercise every leaf.
    let unit = prop_oneof![Just(K4), Just(M2), Just(G1)];
    let base = (0u64..2, 0u64..4, 0u64..1024)
        .prop_map(|(r, gb, slot)| r * G512 + gb * G1 + (slot * K4 * 37) % G1);
    let prot = (0u32..16).prop_map(Prot::from_bits_truncate);
    let map = (base.clone(), unit.clone(), 1u64..4, 0u64..64, prot).prop_map(
        |(base, u, n, pslot, prot)| Op::Map {
            iova: base / u * u,
            paddr: pslot * u % (1 << 40),
            size: n * u.min(M2),
            prot,
        },
    );
    let unmap = (base, unit, 1u64..4).prop_map(|(base, u, n)| Op::Unmap {
        iova: base / u * u,
        size: n * u.min(M2),
    });
    prop_oneof![map, unmap]
}

fn run_model(ops: Vec<Op>, fs1gp: bool) -> Result<(), TestCaseError> {
    let p = HostPlatform::new();
    let mut c = cfg(FirstStageLevels::Four);
    c.page_sizes = page_sizes(fs1gp);
    let sizes: &[u64] = if fs1gp { &[G1, M2, K4] } else { &[M2, K4] };
    let mut t = table(&p, c);
    let mut model = Model::new();
    let mut tables = Tables::new();
    let mut probes = Vec::new();
    let mut unlinked = Vec::new();
    for op in ops {
        match op {
            Op::Map {
                iova,
                paddr,
                size,
                prot,
            } => {
                let live = p.live_pages();
                let got = t.map(&p, iova, paddr, size, prot);
                let want = model_map(&mut model, &mut tables, sizes, iova, paddr, size, prot);
                prop_assert_eq!(got, want);
                if got.is_err() {
                    prop_assert_eq!(p.live_pages(), live);
                }
                probes.extend([iova, iova + size - K4, iova + size / 2]);
            }
            Op::Unmap { iova, size } => {
                let mut g = IotlbGather::new();
                let got = t.unmap(&p, iova, size, &mut g);
                let want = model_unmap(&mut model, &mut tables, iova, size);
                prop_assert_eq!(got, want);
                prop_assert_eq!(g.is_empty(), got.is_err());
                unlinked.extend(g.take_unlinked_tables());
                probes.extend([iova, iova + size - K4]);
            }
        }
        for &a in &probes {
            let want =
                model_leaf_at(&model, a).map(|(s, _, pa, pr)| (PhysAddr::new(pa + (a - s)), pr));
            prop_assert_eq!(t.translate(&p, a), want);
            if let (Some(leaf), Some((_, size, _, _))) = (t.leaf(&p, a), model_leaf_at(&model, a)) {
                prop_assert_eq!(leaf.size, size);
            }
        }
        prop_assert!(all_flushed(&p));
        if let Err(e) = check_entries_as_qemu(&p, &t, HAW) {
            return Err(TestCaseError::fail(e));
        }
        prop_assert_eq!(p.live_pages(), 1 + tables.len() + unlinked.len());
    }
    let leaves: Vec<_> = model.iter().map(|(&i, &(s, _, _))| (i, s)).collect();
    let mut g = IotlbGather::new();
    for (i, s) in leaves {
        t.unmap(&p, i, s, &mut g).unwrap();
        model_unmap(&mut model, &mut tables, i, s).unwrap();
    }
    unlinked.extend(g.take_unlinked_tables());
    for u in unlinked {
        // SAFETY: unlinked, no hardware.
        unsafe { p.free_table_page(u.phys) };
    }
    prop_assert_eq!(p.live_pages(), 1 + tables.len());
    // SAFETY: no hardware walks this table.
    unsafe { t.destroy(&p) };
    prop_assert_eq!(p.live_pages(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_map_unmap_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run_model(ops, true)?;
    }

    #[test]
    fn random_map_unmap_matches_the_model_without_fs1gp(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run_model(ops, false)?;
    }
}
