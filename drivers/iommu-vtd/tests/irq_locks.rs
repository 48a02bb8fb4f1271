//! The unit's interrupt-safe locks (issue 11): the fault-event handler and IRTE updates may
//! run in interrupt context, so every lock they share with mainline code (invalidation,
//! faults, interrupt remapping) is held only with interrupts disabled through
//! `Platform::irq_save` / `irq_restore`. The fake platform models the CPU's interrupt flag
//! (`HostPlatform::irq_report`) and counts every register access and table-memory service
//! used while interrupts were enabled: an operation that runs entirely under those locks shows
//! none, saves and restores balanced and innermost first.

use std::sync::Arc;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{DmaAddr, PhysAddr};
use iommu_vtd::fake::{FakeVtd, HostPlatform};
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::{
    Destination, DomainConfig, GroupRef, Irte, Platform, RequesterId, SourceId, UnitConfig, VtdUnit,
};

type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;

const EDU: RequesterId = RequesterId::from_parts(0, 3 << 3);
/// A function no domain is attached to: its DMA faults.
const STRANGER: RequesterId = RequesterId::from_parts(0, 5 << 3);
const K4: u64 = 0x1000;

fn remapping() -> Arc<Unit> {
    let p = Arc::new(HostPlatform::new());
    let regs = FakeVtd::qemu_default(p.clone());
    let u = Arc::new(VtdUnit::new(regs, p, UnitConfig::new(39)).unwrap());
    u.enable().unwrap();
    u.enable_interrupt_remapping(64, false).unwrap();
    u
}

/// Runs `op` and checks that all its hardware and table-memory work happened with interrupts
/// (modelled) disabled, saves and restores balanced; returns the deepest nesting.
fn under_irq_locks(u: &Unit, what: &str, op: impl FnOnce()) -> u64 {
    let p = u.platform();
    p.reset_irq_report();
    op();
    let r = p.irq_report();
    assert_eq!(
        r.with_interrupts_enabled, 0,
        "{what}: work done with interrupts enabled ({r:?})"
    );
    assert!(r.saves > 0, "{what}: no lock taken ({r:?})");
    assert_eq!(r.saves, r.restores, "{what}: unbalanced ({r:?})");
    assert_eq!(r.depth, 0, "{what}: interrupts left disabled");
    assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
    r.max_depth
}

#[test]
fn every_lock_a_handler_can_meet_is_held_with_interrupts_disabled() {
    let u = remapping();
    let d = u.create_domain(DomainConfig::default()).unwrap();
    d.attach_device(
        GroupRef {
            key: 1,
            requester_ids: &[EDU],
        },
        EDU,
    )
    .unwrap();

    // The invalidation lock: a direct submission and a strict unmap's flush.
    under_irq_locks(&u, "invalidate", || {
        u.invalidate(&[Invalidation::IotlbGlobal]).unwrap();
    });
    d.map(DmaAddr::new(0), PhysAddr::new(0x9000_0000), K4, Prot::READ)
        .unwrap();
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(0), K4, &mut g).unwrap();
    under_irq_locks(&u, "flush", || d.flush(g).unwrap());

    // The interrupt-remapping lock, with the invalidation lock nested inside it.
    let mut index = 0;
    under_irq_locks(&u, "alloc_irtes", || index = u.alloc_irtes(1).unwrap());
    let irte = Irte::msi(0x41, Destination::XApic(0), SourceId::Requester(EDU)).unwrap();
    let nested = under_irq_locks(&u, "set_irte", || u.set_irte(index, &irte).unwrap());
    assert_eq!(nested, 2, "the IEC invalidation nests inside the IRTE lock");
    under_irq_locks(&u, "irte", || assert_eq!(u.irte(index), Some(irte)));
    under_irq_locks(&u, "clear_irte", || u.clear_irte(index).unwrap());
    under_irq_locks(&u, "free_irtes", || u.free_irtes(index, 1).unwrap());

    // The faults lock: what the fault-event handler runs.
    assert!(u.registers().dma(STRANGER, 0x1000, false).is_err());
    under_irq_locks(&u, "service_fault_event", || {
        assert_eq!(u.service_fault_event().records.len(), 1);
    });
    assert!(u.registers().dma(STRANGER, 0x2000, true).is_err());
    under_irq_locks(&u, "read_and_clear_faults", || {
        assert_eq!(u.read_and_clear_faults().records.len(), 1);
    });
    assert!(u.registers().violations().is_empty());
}

#[test]
fn the_interrupt_flag_model_sees_work_outside_the_locks() {
    // Negative controls: the checks above would see a lock that bypassed irq_save.
    let u = remapping();
    assert!(u.registers().dma(STRANGER, 0x1000, false).is_err());
    let p = u.platform();
    // `read_faults` takes no lock: its register reads happen with interrupts enabled, and the
    // model counts them.
    p.reset_irq_report();
    assert_eq!(u.read_faults().records.len(), 1);
    let r = p.irq_report();
    assert!(r.with_interrupts_enabled > 0, "{r:?}");
    assert_eq!(r.saves, 0);
    // Restores out of order (outer first) are caught.
    p.reset_irq_report();
    let outer = p.irq_save();
    let inner = p.irq_save();
    p.irq_restore(outer);
    p.irq_restore(inner);
    let r = p.irq_report();
    assert_eq!(r.depth, 0);
    assert!(!r.errors.is_empty(), "{r:?}");
    // A restore without a save too.
    p.reset_irq_report();
    p.irq_restore(outer);
    assert_eq!(p.irq_report().errors.len(), 1);
}
