//! Trust: untrusted by default, and one trust level per domain (mixing is refused). Test names:
//! `trust_*`, `mixed_trust_*`.

use std::sync::Arc;

use crate::iommu::IommuDomain;
use crate::testing::{FakeClock, FakeDomain, FakePhysMemory};
use crate::{
    Attrs, BouncePool, DeferredPolicy, DeviceConfig, Direction, DmaDevice, DmaDomain, DmaError,
    DomainConfig, InvalidationMode, PhysAddr, Translation,
};

/// A strict domain over a fake, fake RAM and a bounce pool, with no device yet.
struct Shared {
    hw: Arc<FakeDomain>,
    domain: Arc<DmaDomain>,
    phys: Arc<FakePhysMemory>,
    pool: Arc<BouncePool>,
}

fn shared(mode: InvalidationMode) -> Shared {
    let hw = Arc::new(FakeDomain::new());
    let phys = Arc::new(FakePhysMemory::standard());
    let domain = DmaDomain::new(
        hw.clone(),
        DomainConfig {
            mode,
            clock: Some(Arc::new(FakeClock::new())),
            ..DomainConfig::default()
        },
    )
    .unwrap();
    let pool = BouncePool::new(phys.clone(), 1 << 20, u32::MAX as u64).unwrap();
    Shared {
        hw,
        domain,
        phys,
        pool,
    }
}

impl Shared {
    fn device(&self, cfg: DeviceConfig) -> Result<DmaDevice, DmaError> {
        DmaDevice::new(
            cfg,
            Translation::Iommu(self.domain.clone()),
            self.phys.clone(),
            Some(self.pool.clone()),
        )
    }
}

fn cfg() -> DeviceConfig {
    DeviceConfig::with_mask_bits(39).unwrap()
}

/// Maps 100 bytes at offset 0x10 of a page full of 0xAA and returns what the device reaches
/// through the mapping's page: `(mapping, physical page it translates to, original page)`.
fn map_subpage(s: &Shared, dev: &DmaDevice) -> (crate::Mapping, u64, u64) {
    let page = page(s);
    s.phys.fill(page, 4096, 0xAA);
    let m = dev
        .map_phys(
            PhysAddr::new(page + 0x10),
            100,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    let (pa, _) = s.hw.translate(m.dma_addr().page_align_down()).unwrap();
    (m, pa.as_u64(), page)
}

/// One page of fake RAM below 4 GiB.
fn page(s: &Shared) -> u64 {
    crate::PhysMemory::alloc_pages(&*s.phys, 1, u32::MAX as u64)
        .unwrap()
        .as_u64()
}

#[test]
fn trust_default_and_with_mask_bits_are_untrusted() {
    assert!(!DeviceConfig::default().trusted);
    assert!(!cfg().trusted);
    assert!(cfg().trusted().trusted);
    assert!(!cfg().trusted().untrusted().trusted);
    // Behaviour, not just the flag: a default device's sub-page mapping is bounced, so the page
    // the device reaches is a zero-padded slot, not the page of 0xAA around the buffer.
    let s = shared(InvalidationMode::Strict);
    let dev = s.device(DeviceConfig::default()).unwrap();
    let (m, reached, orig) = map_subpage(&s, &dev);
    assert!(m.is_bounced());
    assert_ne!(reached, orig);
    let bytes = s.phys.bytes(reached, 4096);
    assert!(
        bytes[..0x10].iter().all(|&b| b == 0),
        "{:x?}",
        &bytes[..0x10]
    );
    assert!(bytes[0x10 + 100..].iter().all(|&b| b == 0));
    // ... and the same device, trusted explicitly, maps the original page.
    drop((m, dev));
    let dev = s.device(DeviceConfig::default().trusted()).unwrap();
    let (m, reached, orig) = map_subpage(&s, &dev);
    assert!(!m.is_bounced());
    assert_eq!(reached, orig);
}

#[test]
fn trust_default_device_is_refused_on_deferred_domains_and_the_direct_path() {
    let s = shared(InvalidationMode::Deferred(DeferredPolicy::default()));
    assert_eq!(
        s.device(DeviceConfig::default()).unwrap_err(),
        DmaError::InvalidConfig("deferred invalidation is for trusted devices only")
    );
    assert!(s.device(DeviceConfig::default().trusted()).is_ok());
    let direct = DmaDevice::new(
        DeviceConfig::default(),
        Translation::Direct,
        s.phys.clone(),
        None,
    );
    assert_eq!(
        direct.unwrap_err(),
        DmaError::InvalidConfig("an untrusted device needs an IOMMU domain for isolation")
    );
}

#[test]
fn mixed_trust_trusted_then_untrusted_is_refused() {
    let s = shared(InvalidationMode::Strict);
    let trusted = s.device(cfg().trusted()).unwrap();
    let _clone = trusted.clone(); // clones are one member
    assert_eq!(s.domain.member_count(), 1);
    assert_eq!(s.domain.members_trusted(), Some(true));
    let e = s.device(cfg().untrusted()).unwrap_err();
    assert_eq!(
        e,
        DmaError::MixedTrust {
            members_trusted: true,
            members: 1
        }
    );
    assert!(
        e.to_string().contains("untrusted device cannot join"),
        "{e}"
    );
    // The refusal registered nothing.
    assert_eq!(s.domain.member_count(), 1);
    // More trusted devices are fine.
    let _second = s.device(cfg().trusted()).unwrap();
    assert_eq!(s.domain.member_count(), 2);
}

#[test]
fn mixed_trust_untrusted_then_trusted_is_refused() {
    let s = shared(InvalidationMode::Strict);
    let _untrusted = s.device(cfg()).unwrap();
    let e = s.device(cfg().trusted()).unwrap_err();
    assert_eq!(
        e,
        DmaError::MixedTrust {
            members_trusted: false,
            members: 1
        }
    );
    assert!(
        e.to_string().contains("a trusted device cannot join"),
        "{e}"
    );
    assert_eq!(s.domain.members_trusted(), Some(false));
}

#[test]
fn mixed_trust_other_kind_accepted_once_the_last_member_is_gone() {
    let s = shared(InvalidationMode::Strict);
    let trusted = s.device(cfg().trusted()).unwrap();
    let buf = page(&s);
    let m = trusted
        .map_phys(
            PhysAddr::new(buf),
            4096,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    drop(trusted);
    // A live mapping keeps its device a member: its page is still reachable, whole.
    assert!(matches!(s.device(cfg()), Err(DmaError::MixedTrust { .. })));
    drop(m);
    assert_eq!(s.domain.member_count(), 0);
    assert_eq!(s.domain.members_trusted(), None);
    let untrusted = s.device(cfg()).unwrap();
    assert_eq!(s.domain.members_trusted(), Some(false));
    drop(untrusted);
    // And back again.
    s.device(cfg().trusted()).unwrap();
}

#[test]
fn mixed_trust_two_untrusted_devices_share_a_domain_and_both_bounce() {
    let s = shared(InvalidationMode::Strict);
    let a = s.device(cfg()).unwrap();
    let b = s.device(cfg().untrusted()).unwrap();
    assert_eq!(s.domain.member_count(), 2);
    let (ma, reached_a, orig_a) = map_subpage(&s, &a);
    let (mb, reached_b, orig_b) = map_subpage(&s, &b);
    for (m, reached, orig) in [(&ma, reached_a, orig_a), (&mb, reached_b, orig_b)] {
        assert!(m.is_bounced());
        assert_ne!(reached, orig, "the device reaches the original page");
        let bytes = s.phys.bytes(reached, 4096);
        assert!(bytes[..0x10].iter().all(|&x| x == 0));
        assert!(bytes[0x10..0x10 + 100].iter().all(|&x| x == 0xAA));
        assert!(bytes[0x10 + 100..].iter().all(|&x| x == 0));
    }
    assert_ne!(reached_a, reached_b, "each mapping has its own slot page");
    // Neither device's mapping reaches any byte of the other's original page.
    for m in [&ma, &mb] {
        let (pa, _) = s.hw.translate(m.dma_addr()).unwrap();
        assert!(pa.page_align_down().as_u64() != orig_a && pa.page_align_down().as_u64() != orig_b);
    }
}

#[test]
fn trust_untrusted_never_joins_a_deferred_domain_whatever_its_members() {
    let s = shared(InvalidationMode::Deferred(DeferredPolicy::default()));
    let t1 = s.device(cfg().trusted()).unwrap();
    let t2 = s.device(cfg().trusted()).unwrap();
    // Refused for the deferred mode (checked before the mixing rule) with members ...
    assert_eq!(
        s.device(cfg()).unwrap_err(),
        DmaError::InvalidConfig("deferred invalidation is for trusted devices only")
    );
    drop((t1, t2));
    // ... and without: the mode is fixed, so an empty deferred domain still refuses.
    assert_eq!(s.domain.member_count(), 0);
    assert_eq!(
        s.device(cfg()).unwrap_err(),
        DmaError::InvalidConfig("deferred invalidation is for trusted devices only")
    );
    // A strict domain of untrusted members stays strict (the mode cannot change).
    let strict = shared(InvalidationMode::Strict);
    let _u1 = strict.device(cfg()).unwrap();
    let _u2 = strict.device(cfg()).unwrap();
    assert_eq!(strict.domain.mode(), InvalidationMode::Strict);
}

/// A trusted device dropped while a raw mapping (`Mapping::into_raw`) is still mapped stays a
/// member: its whole, un-bounced page is still reachable in the domain, so an untrusted device
/// must not join until that mapping is gone.
#[test]
fn mixed_trust_raw_mapping_keeps_a_dropped_device_a_member() {
    let s = shared(InvalidationMode::Strict);
    let trusted = s.device(cfg().trusted()).unwrap();
    let buf = page(&s);
    let raw = trusted
        .map_phys(
            PhysAddr::new(buf),
            4096,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap()
        .into_raw();
    drop(trusted);
    assert!(
        s.hw.translate(raw).is_some(),
        "the raw mapping is still live"
    );
    assert_eq!(s.domain.member_count(), 1);
    assert!(matches!(
        s.device(cfg()),
        Err(DmaError::MixedTrust {
            members_trusted: true,
            ..
        })
    ));
}
