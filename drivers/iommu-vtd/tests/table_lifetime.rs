//! Page-table page lifetime (VT-d spec §6.5.1, §6.5.2.3): a table page unlinked by an unmap
//! may still be referenced by the paging-structure caches until an IOTLB invalidation with
//! IH = 0 covering its region (or a domain-selective / global one) has completed. Only then may
//! its memory be reused.
//!
//! The property test drives random interleavings of unmaps into several gathers, merges,
//! remaps, `UnmapBatch`-style "many unmaps, one flush" sequences, gathers dropped unflushed and
//! deferred-style late flushes in random order, against the recording fake. It finds the
//! unlinked tables on its own (by walking the table before and after every unmap, not by asking
//! the code under test) and checks the timeline of completed invalidations and table frees the
//! fake platform records:
//!
//! - no table page is freed unless an IH = 0 page-selective invalidation covering its whole
//!   region (or a domain-selective or global one), completed after its unlink and before the
//!   free;
//! - a flush frees only pages its own gather unlinked (or gathered by merging), and a gather
//!   dropped without a flush never frees its pages;
//! - pages of flushed gathers are freed (nothing leaks on the success path).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{FakeVtd, HostPlatform, MemEvent};
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::pagetable::pte;
use iommu_vtd::{Domain, DomainConfig, UnitConfig, VtdUnit};
use proptest::prelude::*;

type Dom = Domain<FakeVtd, Arc<HostPlatform>>;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// 2 MiB regions of 4 KiB leaves, all under one level-2 table (never unlinked itself).
const SMALL: usize = 6;
const SMALL_BASE: u64 = G1;
/// Pages of a small region the test touches one by one (the rest only as a whole region).
const PAGES: [u64; 4] = [0, 1, 256, 511];
/// 1 GiB regions unmapped only whole: 0 is all 2 MiB superpages (its level-2 table goes),
/// 1 is superpages plus one leaf table (its level-2 table and that level-1 table go).
const GIANT: usize = 2;
const GIANT_BASE: u64 = 2 * G1;
/// Gather slots.
const SLOTS: usize = 4;
/// The slot of the temporary gather of an `UnmapBatch`-like operation.
const BATCH_SLOT: usize = SLOTS;

#[derive(Debug, Clone)]
enum Op {
    UnmapRegion {
        r: usize,
        g: usize,
    },
    UnmapPage {
        r: usize,
        p: usize,
        g: usize,
    },
    UnmapGiant {
        i: usize,
        g: usize,
    },
    /// Several unmaps into one fresh gather, flushed at once (the dma crate's `UnmapBatch`).
    Batch {
        items: Vec<(usize, usize)>,
        whole: Option<usize>,
    },
    Flush {
        g: usize,
    },
    Merge {
        from: usize,
        into: usize,
    },
    DropUnflushed {
        g: usize,
    },
    RemapRegion {
        r: usize,
    },
    RemapPage {
        r: usize,
        p: usize,
    },
    RemapGiant {
        i: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..SMALL;
    let p = 0..PAGES.len();
    let g = 0..SLOTS;
    prop_oneof![
        3 => (r.clone(), g.clone()).prop_map(|(r, g)| Op::UnmapRegion { r, g }),
        4 => (r.clone(), p.clone(), g.clone()).prop_map(|(r, p, g)| Op::UnmapPage { r, p, g }),
        1 => (0..GIANT, g.clone()).prop_map(|(i, g)| Op::UnmapGiant { i, g }),
        2 => (
            proptest::collection::vec((r.clone(), p.clone()), 1..4),
            proptest::option::of(r.clone())
        )
            .prop_map(|(items, whole)| Op::Batch { items, whole }),
        3 => g.clone().prop_map(|g| Op::Flush { g }),
        1 => (g.clone(), g.clone()).prop_map(|(from, into)| Op::Merge { from, into }),
        1 => g.prop_map(|g| Op::DropUnflushed { g }),
        2 => r.clone().prop_map(|r| Op::RemapRegion { r }),
        2 => (r, p).prop_map(|(r, p)| Op::RemapPage { r, p }),
        1 => (0..GIANT).prop_map(|i| Op::RemapGiant { i }),
    ]
}

/// What the model knows about a range: mapped, waiting in a gather slot, free for reuse, or
/// lost with a dropped gather (never reusable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Mapped,
    Pending(usize),
    Free,
    Leaked,
}

fn small_base(r: usize) -> u64 {
    SMALL_BASE + r as u64 * M2
}

fn giant_base(i: usize) -> u64 {
    GIANT_BASE + i as u64 * G1
}

fn map_small(d: &Dom, r: usize, offset: u64, size: u64) {
    // Physical address off 2 MiB alignment: 4 KiB leaves only.
    let iova = small_base(r) + offset;
    d.map(
        DmaAddr::new(iova),
        PhysAddr::new(0x1000_1000 + r as u64 * M2 + offset),
        size,
        RW,
    )
    .unwrap();
    d.sync_map(DmaAddr::new(iova), size).unwrap();
}

fn map_giant(d: &Dom, i: usize) {
    let base = giant_base(i);
    let paddr = 0x10_0000_0000 + i as u64 * G1;
    if i == 0 {
        d.map(DmaAddr::new(base), PhysAddr::new(paddr), G1, RW)
            .unwrap();
    } else {
        d.map(DmaAddr::new(base), PhysAddr::new(paddr), G1 - M2, RW)
            .unwrap();
        d.map(
            DmaAddr::new(base + G1 - M2),
            PhysAddr::new(paddr + G1 - M2 + K4),
            M2,
            RW,
        )
        .unwrap();
    }
    d.sync_map(DmaAddr::new(base), G1).unwrap();
}

/// Every table page reachable from the root (the root excluded) and the IOVA region it maps.
fn reachable(p: &HostPlatform, root: u64, levels: u8) -> BTreeMap<u64, (u64, u64)> {
    fn walk(
        p: &HostPlatform,
        table: u64,
        level: u8,
        base: u64,
        out: &mut BTreeMap<u64, (u64, u64)>,
    ) {
        if level == 1 {
            return;
        }
        let slot = 1u64 << (12 + 9 * (u32::from(level) - 1));
        for index in 0..512u64 {
            let e = p.read_cpu_u64(table + index * 8).unwrap();
            if e == 0 || e & pte::PAGE_SIZE != 0 {
                continue;
            }
            let child = e & pte::ADDR_MASK;
            let start = base + index * slot;
            out.insert(child, (start, slot));
            walk(p, child, level - 1, start, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(p, root, levels, 0, &mut out);
    out
}

struct Harness {
    unit: Arc<VtdUnit<FakeVtd, Arc<HostPlatform>>>,
    dom: Option<Dom>,
    did: u16,
    root: u64,
    levels: u8,
    gathers: Vec<Option<IotlbGather>>,
    small: Vec<[St; 512]>,
    giant: [St; GIANT],
    /// Unlinked table page -> (timeline index after its unlink, region start, region size).
    unlinked: BTreeMap<u64, (usize, u64, u64)>,
    /// Unlinked table page -> the gather slot that owns it (moves on merge; `None`: dropped).
    owner: BTreeMap<u64, Option<usize>>,
    /// Every table page ever linked below the root.
    ever_linked: BTreeSet<u64>,
}

impl Harness {
    fn new() -> Self {
        let p = Arc::new(HostPlatform::new());
        let regs = FakeVtd::qemu_default(p.clone());
        let unit = Arc::new(VtdUnit::new(regs, p, UnitConfig::new(39)).unwrap());
        unit.enable().unwrap();
        let dom = unit.create_domain(DomainConfig::default()).unwrap();
        let mut h = Self {
            did: dom.did(),
            root: dom.table_root().unwrap().as_u64(),
            levels: dom.levels().count(),
            dom: Some(dom),
            unit,
            gathers: (0..=SLOTS).map(|_| None).collect(),
            small: vec![[St::Mapped; 512]; SMALL],
            giant: [St::Mapped; GIANT],
            unlinked: BTreeMap::new(),
            owner: BTreeMap::new(),
            ever_linked: BTreeSet::new(),
        };
        for r in 0..SMALL {
            map_small(h.d(), r, 0, M2);
        }
        for i in 0..GIANT {
            map_giant(h.d(), i);
        }
        h.snapshot();
        h
    }

    fn d(&self) -> &Dom {
        self.dom.as_ref().unwrap()
    }

    fn platform(&self) -> &HostPlatform {
        self.unit.platform()
    }

    fn snapshot(&mut self) -> BTreeMap<u64, (u64, u64)> {
        let now = reachable(self.platform(), self.root, self.levels);
        self.ever_linked.extend(now.keys().copied());
        now
    }

    /// Unmaps into slot `g`, recording the tables the unmap unlinked.
    fn unmap(&mut self, iova: u64, size: u64, g: usize) {
        let before = self.snapshot();
        let mut gather = self.gathers[g].take().unwrap_or_default();
        self.d()
            .unmap(DmaAddr::new(iova), size, &mut gather)
            .unwrap();
        self.gathers[g] = Some(gather);
        let after = self.snapshot();
        let t = self.platform().timeline_len();
        for (phys, (start, len)) in before {
            if !after.contains_key(&phys) {
                self.unlinked.insert(phys, (t, start, len));
                self.owner.insert(phys, Some(g));
            }
        }
    }

    fn retag(&mut self, from: usize, to: Option<usize>) {
        for o in self.owner.values_mut() {
            if *o == Some(from) {
                *o = to;
            }
        }
        let new = to.map_or(St::Leaked, St::Pending);
        for st in self
            .small
            .iter_mut()
            .flat_map(|r| r.iter_mut())
            .chain(self.giant.iter_mut())
        {
            if *st == St::Pending(from) {
                *st = new;
            }
        }
    }

    fn flush(&mut self, g: usize) -> Result<(), TestCaseError> {
        let Some(gather) = self.gathers[g].take() else {
            return Ok(());
        };
        let freed_before = self.platform().freed_pages().len();
        self.d().flush(gather).unwrap();
        let freed: Vec<u64> = self.platform().freed_pages()[freed_before..].to_vec();
        for phys in &freed {
            prop_assert_eq!(
                self.owner.get(phys).copied(),
                Some(Some(g)),
                "flush of gather {} freed table {:#x}, which it did not unlink",
                g,
                phys
            );
            self.owner.remove(phys);
        }
        let kept: Vec<u64> = self
            .owner
            .iter()
            .filter(|(_, o)| **o == Some(g))
            .map(|(p, _)| *p)
            .collect();
        prop_assert!(
            kept.is_empty(),
            "flush of gather {} did not free its tables {:x?}",
            g,
            kept
        );
        let free = St::Free;
        for st in self
            .small
            .iter_mut()
            .flat_map(|r| r.iter_mut())
            .chain(self.giant.iter_mut())
        {
            if *st == St::Pending(g) {
                *st = free;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::UnmapRegion { r, g } => {
                if self.small[r].iter().all(|s| *s == St::Mapped) {
                    self.unmap(small_base(r), M2, g);
                    self.small[r] = [St::Pending(g); 512];
                }
            }
            Op::UnmapPage { r, p, g } => {
                let page = PAGES[p] as usize;
                if self.small[r][page] == St::Mapped {
                    self.unmap(small_base(r) + PAGES[p] * K4, K4, g);
                    self.small[r][page] = St::Pending(g);
                }
            }
            Op::UnmapGiant { i, g } => {
                if self.giant[i] == St::Mapped {
                    self.unmap(giant_base(i), G1, g);
                    self.giant[i] = St::Pending(g);
                }
            }
            Op::Batch { ref items, whole } => {
                for &(r, p) in items {
                    let page = PAGES[p] as usize;
                    if self.small[r][page] == St::Mapped {
                        self.unmap(small_base(r) + PAGES[p] * K4, K4, BATCH_SLOT);
                        self.small[r][page] = St::Pending(BATCH_SLOT);
                    }
                }
                if let Some(r) = whole {
                    if self.small[r].iter().all(|s| *s == St::Mapped) {
                        self.unmap(small_base(r), M2, BATCH_SLOT);
                        self.small[r] = [St::Pending(BATCH_SLOT); 512];
                    }
                }
                self.flush(BATCH_SLOT)?;
            }
            Op::Flush { g } => self.flush(g)?,
            Op::Merge { from, into } => {
                if from != into {
                    if let Some(src) = self.gathers[from].take() {
                        let mut dst = self.gathers[into].take().unwrap_or_default();
                        dst.merge(src);
                        self.gathers[into] = Some(dst);
                        self.retag(from, Some(into));
                    }
                }
            }
            Op::DropUnflushed { g } => {
                if let Some(gather) = self.gathers[g].take() {
                    let _leaked = gather;
                    self.retag(g, None);
                }
            }
            Op::RemapRegion { r } => {
                if self.small[r].iter().all(|s| *s == St::Free) {
                    map_small(self.d(), r, 0, M2);
                    self.small[r] = [St::Mapped; 512];
                    self.snapshot();
                }
            }
            Op::RemapPage { r, p } => {
                let page = PAGES[p] as usize;
                if self.small[r][page] == St::Free {
                    map_small(self.d(), r, PAGES[p] * K4, K4);
                    self.small[r][page] = St::Mapped;
                    self.snapshot();
                }
            }
            Op::RemapGiant { i } => {
                if self.giant[i] == St::Free {
                    map_giant(self.d(), i);
                    self.giant[i] = St::Mapped;
                    self.snapshot();
                }
            }
        }
        Ok(())
    }

    /// The invariant over the whole recorded timeline.
    fn check_timeline(&self, dropped_at: usize) -> Result<(), TestCaseError> {
        let timeline = self.platform().timeline();
        let wide = |inv: &Invalidation| match *inv {
            Invalidation::IotlbGlobal => true,
            Invalidation::IotlbDomain { did } => did == self.did,
            _ => false,
        };
        for (tf, ev) in timeline.iter().enumerate() {
            let MemEvent::TableFreed(phys) = *ev else {
                continue;
            };
            let (after, start, size) = match self.unlinked.get(&phys) {
                Some(&u) => u,
                // Freed while still linked: only the domain's destruction may do that, after
                // its detach's domain-selective invalidation.
                None if self.ever_linked.contains(&phys) => {
                    prop_assert!(
                        tf >= dropped_at,
                        "linked table {:#x} freed while the domain lives",
                        phys
                    );
                    (dropped_at, 0, u64::MAX)
                }
                None => continue,
            };
            let window = &timeline[after.min(tf)..tf];
            let invs = window.iter().filter_map(|e| match e {
                MemEvent::Invalidated(inv) => Some(inv),
                MemEvent::TableFreed(_) => None,
            });
            let mut covered: Vec<(u64, u64)> = Vec::new();
            let mut ok = false;
            for inv in invs {
                if wide(inv) {
                    ok = true;
                    break;
                }
                if let Invalidation::IotlbPage {
                    did,
                    addr,
                    am,
                    leaf_only: false,
                } = *inv
                {
                    if did == self.did {
                        covered.push((addr, addr + (K4 << am)));
                    }
                }
            }
            if !ok {
                covered.sort_unstable();
                let mut reach = start;
                for (a, b) in covered {
                    if a <= reach && b > reach {
                        reach = b;
                    }
                }
                ok = reach >= start.saturating_add(size);
            }
            prop_assert!(
                ok,
                "table {:#x} (region {:#x}+{:#x}, unlinked at {}) freed at {} without a \
                 completed IH=0 invalidation covering it in between: {:?}",
                phys,
                start,
                size,
                after,
                tf,
                window
            );
        }
        Ok(())
    }
}

fn run(ops: &[Op], final_order: &[usize]) -> Result<(), TestCaseError> {
    let mut h = Harness::new();
    for op in ops {
        h.apply(op)?;
    }
    // Late flushes of whatever is still pending, in random order.
    for &g in final_order {
        h.flush(g)?;
    }
    let leaked: BTreeSet<u64> = h
        .owner
        .iter()
        .filter(|(_, o)| o.is_none())
        .map(|(p, _)| *p)
        .collect();
    prop_assert!(
        h.owner.values().all(|o| o.is_none()),
        "every flushed gather freed its tables"
    );
    for &phys in &leaked {
        prop_assert!(
            h.platform().is_live(phys),
            "a dropped gather's table {:#x} must leak, not be freed",
            phys
        );
    }
    let dropped_at = h.platform().timeline_len();
    drop(h.dom.take());
    h.check_timeline(dropped_at)?;
    for &phys in &leaked {
        prop_assert!(
            h.platform().is_live(phys),
            "a dropped gather's table {:#x} is not freed by the domain's drop either",
            phys
        );
    }
    prop_assert!(h.unit.registers().violations().is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn no_table_page_is_freed_before_an_invalidation_that_covers_it(
        ops in proptest::collection::vec(op(), 1..40),
        final_order in Just((0..SLOTS).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        run(&ops, &final_order)?;
    }
}

/// The case the review reported, spelled out: a gather that unlinked no table (IH = 1) is
/// flushed while another gather holds a table unlinked inside its span.
#[test]
fn a_leaf_only_flush_does_not_free_another_gathers_table() {
    let ops = [
        // Gather 0 unlinks region 2's leaf table.
        Op::UnmapRegion { r: 2, g: 0 },
        // Gather 1 unmaps single pages in regions 0 and 5: its span covers region 2.
        Op::UnmapPage { r: 0, p: 0, g: 1 },
        Op::UnmapPage { r: 5, p: 3, g: 1 },
        Op::Flush { g: 1 },
    ];
    run(&ops, &[0, 1, 2, 3]).unwrap();
}
