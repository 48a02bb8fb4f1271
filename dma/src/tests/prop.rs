//! Model-based property tests: thousands of random map / unmap / batch / raw / link / unlink
//! sequences against a simple model. Checked after every step: live device ranges never overlap,
//! never touch reserved IOVA, respect the DMA mask, translate to the right memory; a failed
//! operation changed nothing; no IOVA is reused before its flush; MMIO never gets `CACHE`. At the
//! end, once everything is unmapped and flushed: nothing leaked.

use std::collections::BTreeMap;
use std::vec::Vec;

use proptest::prelude::*;

use super::{HIGH, LOW};
use crate::iommu::IommuDomain;
use crate::testing::Fixture;
use crate::{
    Attrs, BounceReason, DeferredPolicy, DeviceConfig, Direction, DmaAddr, DmaError,
    InvalidationMode, Mapping, PhysAddr, SgMapping, UnmapBatch, PAGE_SIZE,
};

#[derive(Debug, Clone, Copy)]
struct Range {
    high: bool,
    page: u64,
    off: u64,
    len: u64,
}

impl Range {
    fn phys(&self) -> u64 {
        (if self.high { HIGH } else { LOW }) + self.page * PAGE_SIZE + self.off
    }
}

fn range() -> impl Strategy<Value = Range> {
    (
        any::<bool>(),
        0u64..200,
        prop_oneof![Just(0u64), 0u64..4096],
        prop_oneof![
            Just(0u64),
            1u64..100,
            1u64..3 * 4096,
            Just(4096u64),
            Just(8192u64)
        ],
    )
        .prop_map(|(high, page, off, len)| Range {
            high,
            page,
            off,
            len,
        })
}

fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::ToDevice),
        Just(Direction::FromDevice),
        Just(Direction::Bidirectional)
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        r: Range,
        dir: Direction,
        mmio: bool,
        raw: bool,
    },
    Sg {
        rs: Vec<Range>,
        dir: Direction,
        mmio: bool,
    },
    Unmap {
        idx: usize,
    },
    Batch {
        n: usize,
    },
    RawWrongSize {
        idx: usize,
    },
    RawBogus {
        addr: u64,
    },
    Clock {
        us: u64,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (range(), dir(), prop::bool::weighted(0.2), any::<bool>()).prop_map(|(r, dir, mmio, raw)| Op::Map { r, dir, mmio, raw }),
        2 => (prop::collection::vec(range(), 0..5), dir(), prop::bool::weighted(0.2)).prop_map(|(rs, dir, mmio)| Op::Sg { rs, dir, mmio }),
        4 => any::<usize>().prop_map(|idx| Op::Unmap { idx }),
        1 => (1usize..6).prop_map(|n| Op::Batch { n }),
        1 => any::<usize>().prop_map(|idx| Op::RawWrongSize { idx }),
        1 => any::<u64>().prop_map(|addr| Op::RawBogus { addr: addr & 0xffff_ffff_f000 }),
        1 => (0u64..200).prop_map(|us| Op::Clock { us }),
        1 => Just(Op::Flush),
    ]
}

enum Handle {
    One(Mapping),
    Raw {
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: Attrs,
    },
    Sg(SgMapping),
}

#[derive(Debug, Clone, Copy)]
enum Setup {
    Iommu {
        trusted: bool,
        deferred: bool,
        mask_bits: u32,
    },
    Direct,
}

fn setup() -> impl Strategy<Value = Setup> {
    prop_oneof![
        3 => (any::<bool>(), any::<bool>(), prop_oneof![Just(21u32), Just(32), Just(39)]).prop_map(|(trusted, deferred, mask_bits)| Setup::Iommu {
            trusted,
            deferred: deferred && trusted,
            mask_bits
        }),
        1 => Just(Setup::Direct),
    ]
}

/// What a failed operation must not have changed (a deferred domain may legitimately flush its
/// quarantine on the way, so the free/cached split is not part of it).
#[derive(Debug, PartialEq, Eq)]
struct Core {
    entries: usize,
    mapped: u64,
    live: usize,
    live_pages: u64,
    pool_free: u64,
    phys_free: u64,
    raw: usize,
}

fn core(f: &Fixture) -> Core {
    let st = f
        .domain
        .as_ref()
        .map(|d| d.iova_stats())
        .unwrap_or_default();
    Core {
        entries: f.hw.as_ref().map_or(0, |h| h.entries()),
        mapped: f.hw.as_ref().map_or(0, |h| h.mapped_bytes()),
        live: st.live,
        live_pages: st.live_pages,
        pool_free: f.pool.free_pages(),
        phys_free: f.phys.free_pages(),
        raw: f.dev.raw_mappings(),
    }
}

fn segments(h: &Handle) -> Vec<(u64, u64)> {
    match h {
        Handle::One(m) => vec![(m.dma_addr().as_u64(), m.len())],
        Handle::Raw { dma, len, .. } => vec![(dma.as_u64(), *len)],
        Handle::Sg(s) => s.segments().map(|s| (s.addr.as_u64(), s.len)).collect(),
    }
}

fn must_refuse(setup: Setup, r: &Range, mmio: bool) -> Option<DmaError> {
    if r.len == 0 {
        return Some(DmaError::ZeroLength);
    }
    let sub_page = r.off != 0 || !(r.off + r.len).is_multiple_of(PAGE_SIZE);
    match setup {
        Setup::Iommu { trusted: false, .. } if mmio && sub_page => {
            Some(DmaError::MmioNeedsBounce {
                addr: r.phys(),
                len: r.len,
                reason: BounceReason::SubPage,
            })
        }
        Setup::Direct if mmio && r.high => Some(DmaError::MmioNeedsBounce {
            addr: r.phys(),
            len: r.len,
            reason: BounceReason::MaskUnreachable,
        }),
        _ => None,
    }
}

fn check_live(f: &Fixture, setup: Setup, live: &[Handle]) -> Result<(), TestCaseError> {
    let mask = f.dev.mask();
    let mut pages: Vec<(u64, u64)> = Vec::new();
    for h in live {
        for (a, l) in segments(h) {
            prop_assert!(a + l - 1 <= mask, "{a:#x}+{l:#x} beyond mask {mask:#x}");
            if let Setup::Iommu { .. } = setup {
                prop_assert!(!f.domain().is_reserved(DmaAddr::new(a), l));
                prop_assert!(f.hw().translate(DmaAddr::new(a)).is_some());
                pages.push((a & !(PAGE_SIZE - 1), (a + l).next_multiple_of(PAGE_SIZE)));
            }
        }
    }
    pages.sort_unstable();
    for w in pages.windows(2) {
        prop_assert!(
            w[0].1 <= w[1].0,
            "device ranges overlap: {:x?} {:x?}",
            w[0],
            w[1]
        );
    }
    if let Some(hw) = &f.hw {
        prop_assert_eq!(hw.stale_reuses(), 0);
        prop_assert_eq!(hw.mmio_cache_violations(), 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn prop_map_unmap_model_all_modes(setup in setup(), ops in prop::collection::vec(op(), 1..60)) {
        let f = match setup {
            Setup::Iommu { trusted, deferred, mask_bits } => {
                let mut cfg = DeviceConfig::with_mask_bits(mask_bits).unwrap().trusted();
                cfg.trusted = trusted;
                let mode = if deferred {
                    InvalidationMode::Deferred(DeferredPolicy { max_pending: 5, max_delay_us: 300 })
                } else {
                    InvalidationMode::Strict
                };
                Fixture::iommu(cfg, mode).unwrap()
            }
            Setup::Direct => Fixture::direct(DeviceConfig::with_mask_bits(32).unwrap().trusted()).unwrap(),
        };
        let initial_pool = f.pool.free_pages();
        let initial_iova = f.domain.as_ref().map(|d| {
            let s = d.iova_stats();
            s.free_pages + s.cached_pages
        });
        let mut live: Vec<Handle> = Vec::new();
        for op in ops {
            let before = core(&f);
            match op {
                Op::Map { r, dir, mmio, raw } => {
                    let attrs = if mmio { Attrs::MMIO } else { Attrs::empty() };
                    let res = f.dev.map_phys(PhysAddr::new(r.phys()), r.len, dir, attrs);
                    match (res, must_refuse(setup, &r, mmio)) {
                        (Ok(m), None) => {
                            if !m.is_bounced() {
                                if let Setup::Iommu { .. } = setup {
                                    prop_assert_eq!(f.hw().translate(m.dma_addr()).unwrap().0.as_u64(), r.phys());
                                } else {
                                    prop_assert_eq!(m.dma_addr().as_u64(), r.phys());
                                }
                            }
                            prop_assert!(!(mmio && m.is_bounced()));
                            if raw {
                                let len = m.len();
                                live.push(Handle::Raw { dma: m.into_raw(), len, dir, attrs });
                            } else {
                                live.push(Handle::One(m));
                            }
                        }
                        (Ok(_), Some(e)) => prop_assert!(false, "expected {:?}", e),
                        (Err(e), Some(want)) => {
                            prop_assert_eq!(e, want);
                            prop_assert_eq!(core(&f), before);
                        }
                        (Err(e), None) => {
                            prop_assert!(matches!(e, DmaError::IovaExhausted { .. } | DmaError::BounceExhausted { .. }), "{:?}", e);
                            prop_assert_eq!(core(&f), before);
                        }
                    }
                }
                Op::Sg { rs, dir, mmio } => {
                    let attrs = if mmio { Attrs::MMIO } else { Attrs::empty() };
                    let list: Vec<_> = rs.iter().map(|r| (PhysAddr::new(r.phys()), r.len)).collect();
                    let refuse = rs.iter().find_map(|r| must_refuse(setup, r, mmio));
                    match f.dev.map_sg(&list, dir, attrs) {
                        Ok(sg) => {
                            prop_assert!(!rs.is_empty() && refuse.is_none());
                            prop_assert_eq!(sg.len(), rs.len());
                            live.push(Handle::Sg(sg));
                        }
                        Err(e) => {
                            if rs.is_empty() {
                                prop_assert_eq!(e, DmaError::EmptyList);
                            } else if let Some(want) = refuse {
                                prop_assert_eq!(e, want);
                            } else {
                                prop_assert!(matches!(e, DmaError::IovaExhausted { .. } | DmaError::BounceExhausted { .. }), "{:?}", e);
                            }
                            prop_assert_eq!(core(&f), before);
                        }
                    }
                }
                Op::Unmap { idx } if !live.is_empty() => {
                    match live.swap_remove(idx % live.len()) {
                        Handle::One(m) => {
                            if idx % 2 == 0 { m.unmap().unwrap() } else { drop(m) }
                        }
                        Handle::Raw { dma, len, dir, attrs } => f.dev.unmap_phys(dma, len, dir, attrs).unwrap(),
                        Handle::Sg(s) => s.unmap().unwrap(),
                    }
                }
                Op::Batch { n } => {
                    let mut b = UnmapBatch::new();
                    for _ in 0..n.min(live.len()) {
                        match live.pop().unwrap() {
                            Handle::One(m) => m.unmap_in(&mut b).unwrap(),
                            Handle::Raw { dma, len, dir, attrs } => f.dev.unmap_phys_in(dma, len, dir, attrs, &mut b).unwrap(),
                            Handle::Sg(s) => s.unmap_in(&mut b).unwrap(),
                        }
                    }
                    b.finish().unwrap();
                    if let Some(hw) = &f.hw {
                        if let Some(d) = &f.domain {
                            if d.pending_unmaps() == 0 {
                                prop_assert_eq!(hw.unflushed_bytes(), 0);
                            }
                        }
                    }
                }
                Op::RawWrongSize { idx } => {
                    if let Some(Handle::Raw { dma, len, dir, attrs }) = live.iter().filter(|h| matches!(h, Handle::Raw { .. })).nth(idx % live.len().max(1)) {
                        let e = f.dev.unmap_phys(*dma, len + 1, *dir, *attrs).unwrap_err();
                        prop_assert!(matches!(e, DmaError::SizeMismatch { .. }), "{:?}", e);
                        prop_assert_eq!(core(&f), before);
                    }
                }
                Op::RawBogus { addr } => {
                    let is_live = live.iter().any(|h| matches!(h, Handle::Raw { dma, .. } if dma.as_u64() == addr));
                    if !is_live {
                        prop_assert_eq!(
                            f.dev.unmap_phys(DmaAddr::new(addr), 4096, Direction::ToDevice, Attrs::empty()).unwrap_err(),
                            DmaError::NotMapped { addr }
                        );
                        prop_assert_eq!(core(&f), before);
                    }
                }
                Op::Clock { us } => {
                    f.clock.advance(us);
                    if let Some(d) = &f.domain { d.poll().unwrap(); }
                }
                Op::Flush => {
                    if let Some(d) = &f.domain { d.flush_deferred().unwrap(); }
                }
                _ => {}
            }
            check_live(&f, setup, &live)?;
        }
        // Tear down: everything comes back.
        for h in live.drain(..) {
            match h {
                Handle::Raw { dma, len, dir, attrs } => f.dev.unmap_phys(dma, len, dir, attrs).unwrap(),
                other => drop(other),
            }
        }
        if let Some(d) = &f.domain {
            d.flush_deferred().unwrap();
            let s = d.iova_stats();
            prop_assert_eq!(s.live, 0);
            prop_assert_eq!(Some(s.free_pages + s.cached_pages), initial_iova, "IOVA leaked");
            prop_assert_eq!(f.hw().entries(), 0);
            prop_assert_eq!(f.hw().unflushed_bytes(), 0);
            prop_assert_eq!(f.hw().stale_reuses(), 0);
        }
        prop_assert_eq!(f.pool.free_pages(), initial_pool, "bounce slot leaked");
        prop_assert_eq!(f.dev.raw_mappings(), 0);
    }

    /// The link API against a model of page-granular links in one IOVA range.
    #[test]
    fn prop_link_unlink_model(
        size_pages in 1u64..64,
        ops in prop::collection::vec((any::<bool>(), 0u64..70, 0u64..12, any::<bool>(), prop::bool::weighted(0.1)), 1..80),
    ) {
        let f = Fixture::iommu(DeviceConfig::with_mask_bits(39).unwrap().trusted(), InvalidationMode::Strict).unwrap();
        let initial = core(&f);
        let initial_iova = f.domain().iova_stats();
        let size = size_pages * PAGE_SIZE;
        let mut l = f.dev.iova_try_alloc(PhysAddr::new(0), size).unwrap();
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // page offset -> pages
        for (is_link, at, n, high, misalign) in ops {
            let before = core(&f);
            let off = at * PAGE_SIZE;
            let len = n * PAGE_SIZE;
            if is_link {
                let phys = if high { HIGH } else { LOW } + at * PAGE_SIZE + if misalign { 0x10 } else { 0 };
                let overlap = model.iter().any(|(&s, &p)| s < at + n && at < s + p);
                let expect_ok = n > 0 && at + n <= size_pages && !overlap && !misalign;
                let r = l.link(PhysAddr::new(phys), off, len, Direction::ToDevice, Attrs::empty());
                prop_assert_eq!(r.is_ok(), expect_ok, "link {:#x}+{:#x}: {:?}", off, len, r);
                if expect_ok {
                    model.insert(at, n);
                } else {
                    prop_assert_eq!(core(&f), before);
                }
            } else {
                let inside: Vec<u64> = model.range(at..at + n).map(|(&s, _)| s).collect();
                let straddle = model.iter().any(|(&s, &p)| (s < at && s + p > at) || (s < at + n && s + p > at + n));
                let expect_ok = n > 0 && at + n <= size_pages && !straddle && !inside.is_empty();
                let r = l.unlink(off, len);
                prop_assert_eq!(r.is_ok(), expect_ok, "unlink {:#x}+{:#x}: {:?}", off, len, r);
                if expect_ok {
                    for s in inside { model.remove(&s); }
                } else {
                    prop_assert_eq!(core(&f), before);
                }
            }
            prop_assert_eq!(l.link_count(), model.len());
            prop_assert_eq!(f.hw().mapped_bytes(), model.values().sum::<u64>() * PAGE_SIZE);
            prop_assert_eq!(f.hw().stale_reuses(), 0);
            prop_assert_eq!(f.hw().unflushed_bytes(), 0);
        }
        l.destroy().unwrap();
        prop_assert_eq!(core(&f), initial);
        let s = f.domain().iova_stats();
        prop_assert_eq!(s.free_pages + s.cached_pages, initial_iova.free_pages + initial_iova.cached_pages);
    }
}
