//! Host tests of the second-level page table on heap memory (spec §3.6, §9.8).

use std::collections::{BTreeMap, BTreeSet};

use dma::iommu::{IommuError, IotlbGather, PageSizes, Prot};
use dma::PhysAddr;
use iommu_vtd::fake::HostPlatform;
use iommu_vtd::pagetable::{pte, SecondLevelTable, TableConfig};
use iommu_vtd::{PagingLevels, Platform};
use proptest::prelude::*;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);

fn cfg(levels: PagingLevels) -> TableConfig {
    TableConfig {
        levels,
        input_bits: levels.address_width(),
        output_bits: 39,
        page_sizes: PageSizes::SIZE_4K | PageSizes::SIZE_2M | PageSizes::SIZE_1G,
        snoop_control: false,
        coherent: false,
    }
}

fn table(p: &HostPlatform, c: TableConfig) -> SecondLevelTable {
    SecondLevelTable::new(p, c).unwrap()
}

/// Raw entry of `iova` at `level` (walking the CPU view).
fn raw_entry(p: &HostPlatform, t: &SecondLevelTable, iova: u64, level: u8) -> u64 {
    let mut table = t.root().as_u64();
    let mut l = t.levels().count();
    loop {
        let index = (iova >> (12 + 9 * (l as u32 - 1))) & 0x1FF;
        let e = p.read_cpu_u64(table + index * 8).unwrap();
        if l == level {
            return e;
        }
        table = e & pte::ADDR_MASK;
        l -= 1;
    }
}

/// Every live page's device view equals its CPU view (every write was flushed).
fn all_flushed(p: &HostPlatform) -> bool {
    p.live_page_list().into_iter().all(|pg| p.views_agree(pg))
}

#[test]
fn map_translate_and_leaf_rights() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    t.map(&p, 0x10_0000, 0x5000_0000, K4, Prot::READ).unwrap();
    t.map(&p, 0x10_1000, 0x5000_1000, K4, Prot::WRITE).unwrap();
    t.map(&p, 0x10_2000, 0x5000_2000, K4, Prot::empty())
        .unwrap();
    assert_eq!(
        t.translate(&p, 0x10_0123),
        Some((PhysAddr::new(0x5000_0123), Prot::READ))
    );
    assert_eq!(
        t.translate(&p, 0x10_1000),
        Some((PhysAddr::new(0x5000_1000), Prot::WRITE))
    );
    assert_eq!(
        t.translate(&p, 0x10_2000),
        Some((PhysAddr::new(0x5000_2000), Prot::empty()))
    );
    assert_eq!(t.translate(&p, 0x10_3000), None);
    // Non-leaf entries carry R|W whatever the leaf rights.
    for level in [3, 2] {
        let e = raw_entry(&p, &t, 0x10_0000, level);
        assert_eq!(
            e & (pte::READ | pte::WRITE),
            pte::READ | pte::WRITE,
            "level {level}"
        );
        assert_eq!(e & pte::PAGE_SIZE, 0);
    }
    let leaf = raw_entry(&p, &t, 0x10_0000, 1);
    assert_eq!(leaf & (pte::READ | pte::WRITE), pte::READ);
    assert_eq!(leaf & pte::ADDR_MASK, 0x5000_0000);
    assert!(all_flushed(&p));
}

#[test]
fn superpages_when_aligned_and_allowed() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    t.map(&p, G1, 2 * G1, G1, RW).unwrap();
    assert_ne!(raw_entry(&p, &t, G1, 3) & pte::PAGE_SIZE, 0, "1 GiB leaf");
    t.map(&p, 4 * G1, 0x1234_0000_0000 & 0x3F_FFE0_0000, 2 * M2, RW)
        .unwrap();
    assert_ne!(
        raw_entry(&p, &t, 4 * G1, 2) & pte::PAGE_SIZE,
        0,
        "2 MiB leaf"
    );
    // Misaligned physical address: 4 KiB leaves only.
    t.map(&p, 8 * G1, 0x40_1000, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t, 8 * G1, 2) & pte::PAGE_SIZE, 0);
    assert_eq!(
        t.translate(&p, 8 * G1 + M2 - 1),
        Some((PhysAddr::new(0x40_1000 + M2 - 1), RW))
    );
    // Without SLLPS: only 4 KiB.
    let mut c = cfg(PagingLevels::Three);
    c.page_sizes = PageSizes::SIZE_4K;
    let mut t4 = table(&p, c);
    t4.map(&p, 0, 0, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t4, 0, 2) & pte::PAGE_SIZE, 0);
    assert!(all_flushed(&p));
}

#[test]
fn snoop_bit_only_with_sc_cache_and_never_mmio() {
    let p = HostPlatform::new();
    let mut sc = cfg(PagingLevels::Three);
    sc.snoop_control = true;
    let mut t = table(&p, sc);
    t.map(&p, 0, 0x10_0000, K4, RW | Prot::CACHE).unwrap();
    t.map(&p, K4, 0x10_1000, K4, RW | Prot::CACHE | Prot::MMIO)
        .unwrap();
    t.map(&p, 2 * K4, 0x10_2000, K4, RW).unwrap();
    assert_ne!(raw_entry(&p, &t, 0, 1) & pte::SNOOP, 0);
    assert_eq!(raw_entry(&p, &t, K4, 1) & pte::SNOOP, 0, "never on MMIO");
    assert_eq!(raw_entry(&p, &t, 2 * K4, 1) & pte::SNOOP, 0);
    assert_eq!(t.translate(&p, K4).unwrap().1, RW | Prot::MMIO);
    // ECAP.SC = 0: the bit is reserved, never set.
    let mut t0 = table(&p, cfg(PagingLevels::Three));
    t0.map(&p, 0, 0x10_0000, K4, RW | Prot::CACHE).unwrap();
    assert_eq!(raw_entry(&p, &t0, 0, 1) & pte::SNOOP, 0);
    // Non-leaf entries never carry SNP.
    assert_eq!(raw_entry(&p, &t, 0, 2) & pte::SNOOP, 0);
}

#[test]
fn bad_input_is_refused_without_change() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    let live = p.live_pages();
    let mis = |iova, paddr, size| IommuError::Misaligned { iova, paddr, size };
    assert_eq!(t.map(&p, 0x1001, 0, K4, RW), Err(mis(0x1001, 0, K4)));
    assert_eq!(t.map(&p, 0, 0x10, K4, RW), Err(mis(0, 0x10, K4)));
    assert_eq!(t.map(&p, 0, 0, 0, RW), Err(mis(0, 0, 0)));
    assert_eq!(t.map(&p, 0, 0, 0x800, RW), Err(mis(0, 0, 0x800)));
    // Aperture: 2^39 for a 3-level table.
    assert_eq!(
        t.map(&p, (1 << 39) - K4, 0, 2 * K4, RW),
        Err(IommuError::OutsideAperture {
            iova: (1 << 39) - K4,
            size: 2 * K4
        })
    );
    assert!(matches!(
        t.map(&p, !0xFFFu64, 0, K4, RW),
        Err(IommuError::OutsideAperture { .. })
    ));
    // Output at or beyond 2^HAW.
    assert_eq!(
        t.map(&p, 0, 1 << 39, K4, RW),
        Err(IommuError::OutputBeyondLimit { paddr: 1 << 39 })
    );
    assert_eq!(
        t.map(&p, 0, (1 << 39) - K4, 2 * K4, RW),
        Err(IommuError::OutputBeyondLimit { paddr: 1 << 39 })
    );
    assert!(matches!(
        t.map(&p, 0, !0xFFFu64, K4, RW),
        Err(IommuError::OutputBeyondLimit { .. })
    ));
    t.map(&p, 0, (1 << 39) - K4, K4, RW).unwrap();
    assert_eq!(p.live_pages(), live + 2);
    let mut g = IotlbGather::new();
    assert_eq!(t.unmap(&p, 0x10, K4, &mut g), Err(mis(0x10, 0, K4)));
    assert_eq!(t.unmap(&p, 0, 0, &mut g), Err(mis(0, 0, 0)));
    assert!(g.is_empty());
}

#[test]
fn overlapping_maps_are_refused_exactly() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    t.map(&p, 0x40_3000, 0x100_0000, K4, RW).unwrap();
    let live = p.live_pages();
    assert_eq!(
        t.map(&p, 0x40_0000, 0x200_0000, 8 * K4, RW),
        Err(IommuError::AlreadyMapped { iova: 0x40_3000 })
    );
    // A superpage request over a table that holds a mapping finds the precise address.
    assert_eq!(
        t.map(&p, 0x40_0000, 0x200_0000, M2, RW),
        Err(IommuError::AlreadyMapped { iova: 0x40_3000 })
    );
    // A 4 KiB request inside an existing superpage.
    t.map(&p, G1, G1, G1, RW).unwrap();
    assert_eq!(
        t.map(&p, G1 + 5 * K4, 0, K4, RW),
        Err(IommuError::AlreadyMapped { iova: G1 + 5 * K4 })
    );
    assert_eq!(p.live_pages(), live, "failed maps allocate nothing");
    assert_eq!(
        t.translate(&p, 0x40_0000),
        None,
        "nothing of the failed map stayed"
    );
}

#[test]
fn map_is_all_or_nothing_under_memory_pressure() {
    // A range needing several new tables: 4 KiB pages crossing a 1 GiB boundary.
    let (iova, size) = (G1 - 4 * K4, 8 * K4);
    for allowed in 0..3 {
        let p = HostPlatform::new();
        let mut t = table(&p, cfg(PagingLevels::Three));
        let live = p.live_pages();
        p.set_alloc_limit(Some(allowed));
        assert_eq!(
            t.map(&p, iova, 0x80_0000 + 0x1000, size, RW),
            Err(IommuError::OutOfMemory)
        );
        assert_eq!(p.live_pages(), live, "allowed {allowed}: pool returned");
        for i in 0..8 {
            assert_eq!(t.translate(&p, iova + i * K4), None);
        }
        p.set_alloc_limit(None);
        t.map(&p, iova, 0x80_1000, size, RW).unwrap();
        assert_eq!(p.live_pages(), live + 4, "two L2 + two L1 tables");
    }
}

#[test]
fn unmap_exactly_what_was_mapped() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
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
        PhysAddr::new(0x20_0000),
        "and change nothing"
    );
    // 4 KiB granular unmap of 4 KiB leaves is fine.
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
    assert!(t.translate(&p, M2 * 10).is_some());
    t.unmap(&p, M2 * 10, M2, &mut g).unwrap();
    assert!(t.translate(&p, M2 * 10).is_none());
    assert!(all_flushed(&p));
}

#[test]
fn covered_tables_go_to_the_unmaps_gather() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    let live = p.live_pages();
    // 2 MiB of 4 KiB leaves (the physical address rules out a superpage): one L2 + one L1.
    let iova = 0x7000_0000;
    t.map(&p, iova, 0x1000_1000, M2, RW).unwrap();
    assert_eq!(p.live_pages(), live + 2);
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, M2, &mut g).unwrap();
    assert!(g.freed_tables());
    let l1 = raw_entry(&p, &t, iova, 2);
    assert_eq!(l1, 0);
    assert_eq!(
        g.unlinked_tables().len(),
        1,
        "the L1 table (whose whole 2 MiB was unmapped) is unlinked, the L2 (1 GiB) is not"
    );
    let u = g.unlinked_tables()[0];
    assert_eq!(
        (u.iova, u.size),
        (dma::DmaAddr::new(iova), M2),
        "with its region"
    );
    assert!(p.is_live(u.phys.as_u64()));
    assert_eq!(
        p.live_pages(),
        live + 2,
        "but not freed before the invalidation"
    );
    assert_eq!(raw_entry(&p, &t, iova, 2), 0, "unlinked from the L2 table");
    assert_ne!(raw_entry(&p, &t, iova, 3), 0, "the L2 table stays linked");
    assert!(all_flushed(&p));
    // Another gather's unmap elsewhere gets none of them.
    t.map(&p, 0x1000, 0x1000, K4, RW).unwrap();
    let mut other = IotlbGather::new();
    t.unmap(&p, 0x1000, K4, &mut other).unwrap();
    assert!(other.unlinked_tables().is_empty() && !other.freed_tables());
    for u in g.take_unlinked_tables() {
        // SAFETY: unlinked; this host test has no hardware walking it.
        unsafe { p.free_table_page(u.phys) };
    }
    assert_eq!(
        p.live_pages(),
        live + 1 + 2,
        "plus the L2 and L1 tables of the page at 0x1000"
    );

    // A whole 1 GiB region (2 MiB leaves under one L2 table): the L2 table goes too, and so do
    // the L1 tables below it.
    t.map(&p, 3 * G1, 0x20_0000, G1 - M2, RW).unwrap();
    t.map(&p, 4 * G1 - M2, 0x4000_1000, M2, RW).unwrap();
    assert_eq!(p.live_pages(), live + 5);
    let mut g = IotlbGather::new();
    t.unmap(&p, 3 * G1, G1, &mut g).unwrap();
    assert!(g.freed_tables());
    let regions: Vec<_> = g
        .unlinked_tables()
        .iter()
        .map(|u| (u.iova.as_u64(), u.size))
        .collect();
    assert_eq!(
        regions,
        [(4 * G1 - M2, M2), (3 * G1, G1)],
        "the L1 table and the L2 table above it"
    );
    assert_eq!(raw_entry(&p, &t, 3 * G1, 3), 0, "unlinked from the root");
    for u in g.take_unlinked_tables() {
        // SAFETY: unlinked; no hardware.
        unsafe { p.free_table_page(u.phys) };
    }
    assert_eq!(p.live_pages(), live + 3);
    assert!(all_flushed(&p));
}

#[test]
fn a_partly_covered_table_left_empty_stays_linked() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    let live = p.live_pages();
    let iova = 0x7000_0000;
    t.map(&p, iova, 0x1000_0000, 3 * K4, RW).unwrap();
    assert_eq!(p.live_pages(), live + 2);
    let l2 = raw_entry(&p, &t, iova, 3);
    let l1 = raw_entry(&p, &t, iova, 2);
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, K4, &mut g).unwrap();
    t.unmap(&p, iova + K4, 2 * K4, &mut g).unwrap();
    // The L1 table is empty now, but neither unmap covered its 2 MiB: another mapping in that
    // region may be walked through a cached link to it before the flush, so it stays.
    assert!(!g.freed_tables());
    assert!(g.unlinked_tables().is_empty());
    assert_eq!(raw_entry(&p, &t, iova, 3), l2, "L2 still linked");
    assert_eq!(raw_entry(&p, &t, iova, 2), l1, "L1 still linked");
    assert_eq!(t.translate(&p, iova), None);
    // A later map in the region reuses it: no new table, no superpage over it.
    t.map(&p, iova + 5 * K4, 0x2000_0000, K4, RW).unwrap();
    t.map(&p, iova + M2 / 2, 0x3000_0000, M2 / 2, RW).unwrap();
    assert_eq!(p.live_pages(), live + 2, "reused, nothing allocated");
    assert_eq!(raw_entry(&p, &t, iova, 2), l1);
    assert_eq!(
        t.translate(&p, iova + 5 * K4),
        Some((PhysAddr::new(0x2000_0000), RW))
    );
    t.unmap(&p, iova + 5 * K4, K4, &mut g).unwrap();
    t.unmap(&p, iova + M2 / 2, M2 / 2, &mut g).unwrap();
    // A 2 MiB-aligned map over the (empty again) table goes into it as 4 KiB leaves.
    t.map(&p, iova, 0x4000_0000, M2, RW).unwrap();
    assert_eq!(raw_entry(&p, &t, iova, 2), l1, "no leaf over the table");
    assert_eq!(
        t.translate(&p, iova + M2 - K4),
        Some((PhysAddr::new(0x4000_0000 + M2 - K4), RW))
    );
    assert!(!g.freed_tables());
    assert!(all_flushed(&p));
}

#[test]
fn four_level_tables_reach_beyond_39_bits() {
    let p = HostPlatform::new();
    let mut c = cfg(PagingLevels::Four);
    c.output_bits = 48;
    let mut t = table(&p, c);
    assert_eq!(t.aperture_end(), (1 << 48) - 1);
    let iova = (1u64 << 47) + 0x1234_5000;
    t.map(&p, iova, 0x55_0000_0000, K4, RW).unwrap();
    assert_eq!(
        t.translate(&p, iova + 8),
        Some((PhysAddr::new(0x55_0000_0008), RW))
    );
    for level in [4, 3, 2] {
        assert_eq!(raw_entry(&p, &t, iova, level) & 3, 3);
    }
    let mut g = IotlbGather::new();
    t.unmap(&p, iova, K4, &mut g).unwrap();
    assert!(
        g.unlinked_tables().is_empty(),
        "a 4 KiB unmap covers no table's region"
    );
    assert_eq!(t.translate(&p, iova), None);
    assert!(all_flushed(&p));
}

#[test]
fn every_table_write_is_flushed_when_not_coherent() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    p.clear_flush_log();
    t.map(&p, 0x3000_0000, 0x4000_1000, 600 * K4, RW).unwrap();
    assert!(!p.flush_log().is_empty());
    assert!(all_flushed(&p), "device view equals CPU view after map");
    let mut g = IotlbGather::new();
    t.unmap(&p, 0x3000_0000, 300 * K4, &mut g).unwrap();
    assert!(all_flushed(&p), "and after unmap");
}

#[test]
fn coherent_walks_need_no_flush() {
    let p = HostPlatform::new();
    let mut c = cfg(PagingLevels::Three);
    c.coherent = true;
    let mut t = table(&p, c);
    t.map(&p, 0, 0, 10 * M2, RW).unwrap();
    let mut g = IotlbGather::new();
    t.unmap(&p, 0, 10 * M2, &mut g).unwrap();
    assert!(p.flush_log().is_empty());
}

#[test]
fn destroy_frees_everything() {
    let p = HostPlatform::new();
    let mut t = table(&p, cfg(PagingLevels::Three));
    t.map(&p, 0, 0, 3 * M2 + 5 * K4, RW).unwrap();
    t.map(&p, 5 * G1, 0, K4, RW).unwrap();
    let mut g = IotlbGather::new();
    t.unmap(&p, 5 * G1, K4, &mut g).unwrap();
    // SAFETY: no hardware walks this table.
    unsafe { t.destroy(&p) };
    assert_eq!(p.live_pages(), 0);
}

// --- Model-based property test -------------------------------------------------------------

/// The model: leaves keyed by IOVA, `(size, paddr, prot)`, chosen greedily by alignment as the
/// table does.
type Model = BTreeMap<u64, (u64, u64, Prot)>;

/// The linked tables below the root, as `(region size, region base)`: `(M2, b)` is the leaf
/// table mapping `[b, b + 2 MiB)`, `(G1, b)` the directory mapping `[b, b + 1 GiB)`.
type Tables = BTreeSet<(u64, u64)>;

fn model_leaves(tables: &Tables, iova: u64, paddr: u64, size: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < size {
        let (i, pa, rem) = (iova + off, paddr + off, size - off);
        // Never a superpage over a linked table (it is reused, even when empty).
        let s = [G1, M2, K4]
            .into_iter()
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
    for (i, pa, s) in model_leaves(tables, iova, paddr, size) {
        m.insert(i, (s, pa, prot));
        for region in [M2, G1] {
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
    // Only tables whose whole region was unmapped go.
    tables.retain(|&(region, base)| !(iova <= base && base + region <= iova + size));
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        iova: u64,
        paddr: u64,
        size: u64,
        write: bool,
    },
    Unmap {
        iova: u64,
        size: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // A small window (4 GiB of IOVA) with sizes/alignments that exercise every leaf size.
    let unit = prop_oneof![Just(K4), Just(M2), Just(G1)];
    let map = (
        0u64..4,
        0u64..1024,
        unit.clone(),
        1u64..4,
        0u64..64,
        any::<bool>(),
    )
        .prop_map(|(gb, slot, u, n, pslot, write)| {
            let base = gb * G1 + (slot * K4 * 37) % G1;
            let iova = base / u * u;
            Op::Map {
                iova,
                paddr: pslot * u % (1 << 38),
                size: n * u.min(M2),
                write,
            }
        });
    let unmap = (0u64..4, 0u64..1024, unit, 1u64..4).prop_map(|(gb, slot, u, n)| {
        let base = gb * G1 + (slot * K4 * 37) % G1;
        Op::Unmap {
            iova: base / u * u,
            size: n * u.min(M2),
        }
    });
    prop_oneof![map, unmap]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_map_unmap_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let p = HostPlatform::new();
        let mut t = table(&p, cfg(PagingLevels::Three));
        let mut model = Model::new();
        let mut tables = Tables::new();
        let mut probes = Vec::new();
        // Unlinked tables the test has not freed yet (each unmap's gather hands them over).
        let mut unlinked = Vec::new();
        for op in ops {
            match op {
                Op::Map { iova, paddr, size, write } => {
                    let prot = if write { RW } else { Prot::READ };
                    let live = p.live_pages();
                    let got = t.map(&p, iova, paddr, size, prot);
                    let want = model_map(&mut model, &mut tables, iova, paddr, size, prot);
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
                let want = model_leaf_at(&model, a).map(|(s, _, pa, pr)| (PhysAddr::new(pa + (a - s)), pr));
                prop_assert_eq!(t.translate(&p, a), want);
            }
            prop_assert!(all_flushed(&p));
            // Exactly the modelled tables are linked (plus the root); unlinked ones wait.
            prop_assert_eq!(p.live_pages(), 1 + tables.len() + unlinked.len());
        }
        // Unmap everything left, leaf by leaf: the tables the model keeps stay linked.
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
    }
}
