//! Invalidation modes: strict, batched, deferred; no IOVA is reused before its flush completed.

use std::vec::Vec;

use super::LOW;
use crate::testing::Fixture;
use crate::{
    Attrs, DeferredPolicy, DeviceConfig, Direction, DmaError, InvalidationMode, PhysAddr,
    UnmapBatch,
};

const TO: Direction = Direction::ToDevice;

fn deferred(max_pending: u32, max_delay_us: u64) -> Fixture {
    let mode = InvalidationMode::Deferred(DeferredPolicy {
        max_pending,
        max_delay_us,
    });
    Fixture::iommu(DeviceConfig::with_mask_bits(39).unwrap().trusted(), mode).unwrap()
}

#[test]
fn strict_unmap_returns_after_flush_completed() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    for _ in 0..10 {
        let m = f
            .dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap();
        m.unmap().unwrap();
        assert_eq!(f.hw().unflushed_bytes(), 0);
    }
    assert_eq!(f.hw().counts().flushes, 10);
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn batched_unmap_issues_one_flush_and_frees_after_it() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let ms: Vec<_> = (0..16)
        .map(|i| {
            f.dev
                .map_phys(PhysAddr::new(LOW + i * 4096), 4096, TO, Attrs::empty())
                .unwrap()
        })
        .collect();
    let raw = f
        .dev
        .map_phys(PhysAddr::new(LOW), 8192, TO, Attrs::empty())
        .unwrap()
        .into_raw();
    f.hw().reset_counts();
    let mut batch = UnmapBatch::new();
    for m in ms {
        m.unmap_in(&mut batch).unwrap();
    }
    f.dev
        .unmap_phys_in(raw, 8192, TO, Attrs::empty(), &mut batch)
        .unwrap();
    assert_eq!(batch.len(), 17);
    assert_eq!(f.hw().counts().unmaps, 17);
    assert_eq!(f.hw().counts().flushes, 0);
    assert_eq!(
        f.domain().iova_stats().live,
        17,
        "IOVAs stay allocated until the flush"
    );
    batch.finish().unwrap();
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.hw().unflushed_bytes(), 0);
    assert_eq!(f.domain().iova_stats().live, 0);
}

#[test]
fn batch_dropped_unfinished_still_flushes() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    {
        let mut batch = UnmapBatch::new();
        m.unmap_in(&mut batch).unwrap();
    }
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.domain().iova_stats().live, 0);
}

#[test]
fn batch_flush_failure_leaks_instead_of_reusing() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    let mut batch = UnmapBatch::new();
    m.unmap_in(&mut batch).unwrap();
    f.hw().fail_next_flush();
    assert_eq!(
        batch.finish().unwrap_err(),
        DmaError::Iommu(crate::iommu::IommuError::InvalidationTimeout)
    );
    assert_eq!(f.domain().iova_stats().live, 1);
}

#[test]
fn deferred_unmap_returns_before_flush_and_quarantines_iova() {
    let f = deferred(1000, u64::MAX);
    let m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    let iova = m.dma_addr();
    m.unmap().unwrap();
    assert_eq!(f.hw().counts().flushes, 0, "unmap returned early");
    assert_eq!(f.hw().unflushed_bytes(), 4096);
    assert_eq!(f.domain().pending_unmaps(), 1);
    // Quarantined: neither live nor free; the next maps get other IOVAs.
    for _ in 0..50 {
        let m2 = f
            .dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap();
        assert_ne!(m2.dma_addr(), iova);
        let _ = m2.into_raw();
    }
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn deferred_flushes_after_n_unmaps() {
    let f = deferred(8, u64::MAX);
    for i in 1..=20u64 {
        f.dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap()
            .unmap()
            .unwrap();
        assert_eq!(f.hw().counts().flushes, i / 8);
    }
    assert_eq!(f.domain().pending_unmaps(), 4);
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn deferred_flushes_after_t_microseconds() {
    let f = deferred(1000, 500);
    f.dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap()
        .unmap()
        .unwrap();
    f.clock.advance(499);
    f.domain().poll().unwrap();
    assert_eq!(f.hw().counts().flushes, 0);
    f.clock.advance(1);
    f.domain().poll().unwrap();
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.domain().pending_unmaps(), 0);
    // The deadline is also checked on the next map, without a timer.
    f.dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap()
        .unmap()
        .unwrap();
    f.clock.advance(600);
    let _m = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    assert_eq!(f.hw().counts().flushes, 2);
}

#[test]
fn deferred_flush_on_demand() {
    let f = deferred(1000, u64::MAX);
    for _ in 0..5 {
        f.dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap()
            .unmap()
            .unwrap();
    }
    // Quarantined IOVAs stay allocated until their flush completed.
    assert_eq!(f.domain().iova_stats().live, 5);
    f.domain().flush_deferred().unwrap();
    assert_eq!(f.domain().iova_stats().live, 0);
    assert_eq!(f.hw().counts().flushes, 1, "one flush for the whole queue");
    assert_eq!(f.domain().pending_unmaps(), 0);
    assert_eq!(f.hw().unflushed_bytes(), 0);
}

#[test]
fn deferred_exhaustion_flushes_quarantine_and_retries() {
    use crate::iommu::{DomainInfo, IommuDomain};
    use crate::testing::{FakeClock, FakeDomain, FakePhysMemory};
    use std::sync::Arc;
    let hw = Arc::new(FakeDomain::with_info(DomainInfo {
        aperture_end: crate::DmaAddr::new(0xffff), // 15 usable pages
        ..FakeDomain::new().info()
    }));
    let clock = Arc::new(FakeClock::new());
    let domain = crate::DmaDomain::new(
        hw.clone(),
        crate::DomainConfig {
            mode: InvalidationMode::Deferred(DeferredPolicy {
                max_pending: 1000,
                max_delay_us: u64::MAX,
            }),
            clock: Some(clock),
            ..Default::default()
        },
    )
    .unwrap();
    let dev = crate::DmaDevice::new(
        DeviceConfig::default().trusted(),
        crate::Translation::Iommu(domain.clone()),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap();
    for _ in 0..100 {
        dev.map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap()
            .unmap()
            .unwrap();
    }
    assert!(hw.counts().flushes >= 6);
    assert_eq!(hw.stale_reuses(), 0);
    // Everything live: exhaustion is reported even after the retry.
    let live: Vec<_> = (0..15)
        .map(|_| {
            dev.map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
                .unwrap()
        })
        .collect();
    assert_eq!(
        dev.map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap_err(),
        DmaError::IovaExhausted { size: 4096 }
    );
    drop(live);
}

#[test]
fn deferred_flush_failure_keeps_quarantine() {
    let f = deferred(1000, u64::MAX);
    let pages = |f: &Fixture| {
        let st = f.domain().iova_stats();
        st.free_pages + st.cached_pages + st.live_pages
    };
    let before = pages(&f);
    f.dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap()
        .unmap()
        .unwrap();
    f.hw().fail_next_flush();
    assert_eq!(
        f.domain().flush_deferred().unwrap_err(),
        DmaError::Iommu(crate::iommu::IommuError::InvalidationTimeout)
    );
    // The IOVA never comes back: it stays allocated for ever.
    assert_eq!(pages(&f), before);
    assert_eq!(f.domain().iova_stats().live, 1);
    assert_eq!(f.domain().pending_unmaps(), 0);
    for _ in 0..100 {
        let _m = f
            .dev
            .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
            .unwrap();
    }
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn no_mode_hands_out_iova_before_flush() {
    // Small aperture so IOVAs are reused quickly; every mode, many cycles.
    let modes = [
        InvalidationMode::Strict,
        InvalidationMode::Deferred(DeferredPolicy {
            max_pending: 3,
            max_delay_us: 50,
        }),
        InvalidationMode::Deferred(DeferredPolicy {
            max_pending: 1,
            max_delay_us: 0,
        }),
    ];
    for mode in modes {
        let f = Fixture::iommu_with(
            DeviceConfig::with_mask_bits(20).unwrap().trusted(),
            crate::DomainConfig {
                mode,
                ..Default::default()
            },
        )
        .unwrap();
        let mut live = Vec::new();
        for i in 0..3000u64 {
            f.clock.advance(7);
            match i % 7 {
                0..=3 => {
                    if let Ok(m) =
                        f.dev
                            .map_phys(PhysAddr::new(LOW), 4096 * (1 + i % 3), TO, Attrs::empty())
                    {
                        live.push(m);
                    }
                }
                4 if !live.is_empty() => drop(live.swap_remove((i as usize * 31) % live.len())),
                5 if live.len() > 2 => {
                    let mut b = UnmapBatch::new();
                    live.pop().unwrap().unmap_in(&mut b).unwrap();
                    live.pop().unwrap().unmap_in(&mut b).unwrap();
                    b.finish().unwrap();
                }
                _ => {}
            }
        }
        drop(live);
        f.domain().flush_deferred().unwrap();
        assert_eq!(f.hw().stale_reuses(), 0, "{mode:?}");
        assert_eq!(f.hw().entries(), 0);
        assert_eq!(f.hw().unflushed_bytes(), 0);
    }
}

// ---- Deferred flushes are serialised: flush_deferred is a barrier, exhaustion waits ----

/// Lets held flushes go when dropped, so a failing assertion cannot leave a thread spinning in
/// a held flush (and the test hanging in the scope's join).
struct ReleaseFlushes<'a>(&'a crate::testing::FakeDomain);

impl Drop for ReleaseFlushes<'_> {
    fn drop(&mut self) {
        self.0.hold_flushes(false);
    }
}

/// Spins (yielding) until `cond` holds; panics after 10 s.
fn wait_until(cond: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "timed out"
        );
        std::thread::yield_now();
    }
}

#[test]
fn deferred_flush_deferred_waits_for_a_flush_in_flight() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Thread 1's second unmap makes the queue due and starts its flush (held in flight by the
    // fake). A concurrent flush_deferred must not return before those unmaps are flushed.
    let f = deferred(2, u64::MAX);
    let a = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    let b = f
        .dev
        .map_phys(PhysAddr::new(LOW + 0x1000), 4096, TO, Attrs::empty())
        .unwrap();
    let released = AtomicBool::new(false);
    f.hw().hold_flushes(true);
    std::thread::scope(|s| {
        let _release = ReleaseFlushes(f.hw());
        let t1 = s.spawn(move || {
            a.unmap().unwrap();
            b.unmap().unwrap();
        });
        wait_until(|| f.hw().flushes_entered() == 1);
        assert_eq!(
            f.domain().pending_unmaps(),
            0,
            "taken by the flush in flight"
        );
        let t2 = s.spawn(|| {
            f.domain().flush_deferred().unwrap();
            (released.load(Ordering::SeqCst), f.hw().unflushed_bytes())
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        released.store(true, Ordering::SeqCst);
        f.hw().hold_flushes(false);
        t1.join().unwrap();
        let (after_release, unflushed) = t2.join().unwrap();
        assert!(
            after_release,
            "flush_deferred returned while earlier unmaps were still being flushed"
        );
        assert_eq!(
            unflushed, 0,
            "every unmap queued before the call was flushed"
        );
    });
    assert_eq!(f.domain().iova_stats().live, 0);
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn deferred_exhaustion_waits_for_a_flush_in_flight() {
    use crate::iommu::{DomainInfo, IommuDomain};
    use crate::testing::{FakeClock, FakeDomain, FakePhysMemory};
    use std::sync::Arc;
    // 15 usable pages, all mapped; thread 1 unmaps them and the 15th unmap starts the flush
    // (held in flight). An allocation meanwhile sees no pending unmap, yet must not report
    // exhaustion: it waits for that flush, whose IOVAs then come free.
    let hw = Arc::new(FakeDomain::with_info(DomainInfo {
        aperture_end: crate::DmaAddr::new(0xffff),
        ..FakeDomain::new().info()
    }));
    let domain = crate::DmaDomain::new(
        hw.clone(),
        crate::DomainConfig {
            mode: InvalidationMode::Deferred(DeferredPolicy {
                max_pending: 15,
                max_delay_us: u64::MAX,
            }),
            clock: Some(Arc::new(FakeClock::new())),
            ..Default::default()
        },
    )
    .unwrap();
    let dev = crate::DmaDevice::new(
        DeviceConfig::default().trusted(),
        crate::Translation::Iommu(domain.clone()),
        Arc::new(FakePhysMemory::standard()),
        None,
    )
    .unwrap();
    let live: Vec<_> = (0..15)
        .map(|_| {
            dev.map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
                .unwrap()
        })
        .collect();
    hw.hold_flushes(true);
    std::thread::scope(|s| {
        let _release = ReleaseFlushes(&hw);
        let t1 = s.spawn(move || {
            for m in live {
                m.unmap().unwrap();
            }
        });
        wait_until(|| hw.flushes_entered() == 1);
        assert_eq!(domain.pending_unmaps(), 0);
        let t2 = s.spawn(|| {
            dev.map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
                .map(drop)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        hw.hold_flushes(false);
        t1.join().unwrap();
        assert_eq!(t2.join().unwrap(), Ok(()), "IOVAs were about to be freed");
    });
    domain.flush_deferred().unwrap();
    assert_eq!(hw.stale_reuses(), 0);
    assert_eq!(hw.entries(), 0);
}

#[test]
fn deferred_flush_deferred_reports_a_failed_flush_it_waited_for() {
    // The flush in flight fails: the unmaps queued before the waiting call were not flushed,
    // so the barrier must not report success.
    let f = deferred(2, u64::MAX);
    let a = f
        .dev
        .map_phys(PhysAddr::new(LOW), 4096, TO, Attrs::empty())
        .unwrap();
    let b = f
        .dev
        .map_phys(PhysAddr::new(LOW + 0x1000), 4096, TO, Attrs::empty())
        .unwrap();
    f.hw().fail_next_flush();
    f.hw().hold_flushes(true);
    std::thread::scope(|s| {
        let _release = ReleaseFlushes(f.hw());
        let t1 = s.spawn(move || {
            a.unmap().unwrap();
            b.unmap()
        });
        wait_until(|| f.hw().flushes_entered() == 1);
        let t2 = s.spawn(|| f.domain().flush_deferred());
        std::thread::sleep(std::time::Duration::from_millis(100));
        f.hw().hold_flushes(false);
        let e = t1.join().unwrap().unwrap_err();
        assert_eq!(t2.join().unwrap().unwrap_err(), e);
    });
    // Reported once: the next barrier has nothing failed to report.
    f.domain().flush_deferred().unwrap();
    assert_eq!(f.domain().iova_stats().live, 2, "quarantined for ever");
}
