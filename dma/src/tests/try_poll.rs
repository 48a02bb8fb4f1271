//! `DmaDomain::try_poll`, the deadline check a timer interrupt runs: it flushes a due deferred
//! queue like `poll`, and never waits for a lock another context holds.

use super::LOW;
use crate::testing::Fixture;
use crate::{Attrs, DeferredPolicy, DeviceConfig, Direction, DmaError, InvalidationMode, PhysAddr};

const TO: Direction = Direction::ToDevice;

fn deferred(max_delay_us: u64) -> Fixture {
    let mode = InvalidationMode::Deferred(DeferredPolicy {
        max_pending: 1000,
        max_delay_us,
    });
    Fixture::iommu(DeviceConfig::with_mask_bits(39).unwrap().trusted(), mode).unwrap()
}

fn map_unmap(f: &Fixture, addr: u64) {
    f.dev
        .map_phys(PhysAddr::new(addr), 4096, TO, Attrs::empty())
        .unwrap()
        .unmap()
        .unwrap();
}

#[test]
fn deferred_try_poll_flushes_at_the_deadline_and_frees_the_iova() {
    let f = deferred(500);
    map_unmap(&f, LOW);
    assert_eq!(f.domain().iova_stats().live, 1, "quarantined");
    f.clock.advance(499);
    assert!(
        !f.domain().try_poll().unwrap(),
        "flushed before the deadline"
    );
    assert_eq!(f.hw().counts().flushes, 0);
    assert_eq!(f.domain().pending_unmaps(), 1);
    f.clock.advance(1);
    assert!(f.domain().try_poll().unwrap(), "due queue not flushed");
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.hw().unflushed_bytes(), 0);
    assert_eq!(f.domain().pending_unmaps(), 0);
    assert_eq!(f.domain().iova_stats().live, 0, "IOVA not released");
    // Nothing left: the next call has nothing to do.
    f.clock.advance(10_000);
    assert!(!f.domain().try_poll().unwrap());
    assert_eq!(f.hw().counts().flushes, 1);
    assert_eq!(f.hw().stale_reuses(), 0);
}

#[test]
fn try_poll_on_a_strict_domain_or_empty_queue_does_nothing() {
    let f = Fixture::iommu(DeviceConfig::default().trusted(), InvalidationMode::Strict).unwrap();
    map_unmap(&f, LOW);
    let flushes = f.hw().counts().flushes;
    assert!(!f.domain().try_poll().unwrap());
    assert_eq!(f.hw().counts().flushes, flushes);
    let d = deferred(0);
    assert!(!d.domain().try_poll().unwrap(), "empty queue flushed");
    assert_eq!(d.hw().counts().flushes, 0);
}

#[test]
fn deferred_try_poll_failure_keeps_the_quarantine_and_is_reported() {
    let f = deferred(10);
    map_unmap(&f, LOW);
    f.clock.advance(10);
    f.hw().fail_next_flush();
    assert_eq!(
        f.domain().try_poll().unwrap_err(),
        DmaError::Iommu(crate::iommu::IommuError::InvalidationTimeout)
    );
    // Taken off the queue, never freed: the IOVA stays allocated for ever.
    assert_eq!(f.domain().pending_unmaps(), 0);
    assert_eq!(f.domain().iova_stats().live, 1);
    assert_eq!(f.hw().stale_reuses(), 0);
}

/// Lets held flushes go when dropped (a failing assertion must not leave a thread spinning).
struct ReleaseFlushes<'a>(&'a crate::testing::FakeDomain);

impl Drop for ReleaseFlushes<'_> {
    fn drop(&mut self) {
        self.0.hold_flushes(false);
    }
}

#[test]
fn deferred_try_poll_returns_at_once_while_a_flush_holds_the_lock() {
    // Thread 1 is inside a deferred flush (held in flight by the fake), holding the domain's
    // flush lock, as mainline code would be when a timer interrupt arrives. A due unmap is
    // queued meanwhile: `poll` would wait for the lock; `try_poll` must return without
    // flushing, and the queue stays for the holder or the next tick.
    let f = deferred(100);
    map_unmap(&f, LOW);
    f.clock.advance(100);
    f.hw().hold_flushes(true);
    std::thread::scope(|s| {
        let _release = ReleaseFlushes(f.hw());
        let t1 = s.spawn(|| f.domain().flush_deferred().unwrap());
        let t0 = std::time::Instant::now();
        while f.hw().flushes_entered() != 1 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "timed out"
            );
            std::thread::yield_now();
        }
        map_unmap(&f, LOW + 0x1000);
        f.clock.advance(100);
        assert_eq!(f.domain().pending_unmaps(), 1, "second unmap not queued");
        assert!(
            !f.domain().try_poll().unwrap(),
            "flushed while another flush held the lock"
        );
        assert_eq!(f.hw().flushes_entered(), 1, "a second flush was started");
        f.hw().hold_flushes(false);
        t1.join().unwrap();
    });
    // Once the holder is gone the next tick flushes the rest.
    assert!(f.domain().try_poll().unwrap());
    assert_eq!(f.domain().pending_unmaps(), 0);
    assert_eq!(f.domain().iova_stats().live, 0);
    assert_eq!(f.hw().stale_reuses(), 0);
}
