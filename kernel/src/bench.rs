//! In-kernel benchmarks (`bench` on the command line; `cargo xtask bench` boots them): DMA API
//! operations on a real VT-d domain under QEMU, in TSC cycles per operation, plus what the unit
//! counted meanwhile (invalidation requests, completed waits, register accesses), and interrupt
//! latencies (self-IPI and edu's MSI, raise to handler). Under TCG the cycles measure emulated
//! execution: use them as ratios and scaling curves, not absolute hardware costs. Issue 12 and
//! docs/PERFORMANCE.md say what the figures are for.
//!
//! Output: one line per row,
//! `KBENCH <name> ops=<n> cycles_per_op=<c> invalidations_per_op=<i> waits_per_op=<w> registers=<r>`,
//! where `registers` is the row's total of VT-d register accesses by the unit's own counter
//! ([`iommu_vtd::VtdUnit::register_stats`]). Rows timed as a whole are preceded by
//! `KBENCH_MARK <name>`, printed after their warm-up and right before their clock starts, so that
//! `cargo xtask bench --vs-linux` counts QEMU's traced register accesses of exactly the timed
//! operations and checks the unit's counter against them.
//!
//! Rows: strict, batched ([`UnmapBatch`]) and deferred ([`InvalidationMode::Deferred`], the
//! analogue of Linux's lazy flush queue, its cost per mapping including the flushes it
//! eventually makes) map+unmap of 4 KiB, 64 KiB, 2 MiB and a 256-entry scatter list; the
//! `phase_4k_*` rows split a strict 4 KiB map+unmap into its phases, each timed with the TSC
//! around the public call that performs it; scaling with live mappings, contiguous unmaps and
//! importers of a revoked export.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use dma::iommu::{IommuDomain, IotlbGather, Prot};
use dma::{
    Attrs, DeferredPolicy, DeviceConfig, Direction, DmaAddr, DmaDevice, InvalidationMode,
    IovaAllocator, PhysAddr, UnmapBatch, PAGE_SIZE,
};
use kernel::frames::FrameRequest;

use crate::arch::irq;
use crate::arch::time::rdtsc;
use crate::devices::dmamem::{self, DeviceDma};
use crate::devices::iommu::Unit;
use crate::mem::PhysPages;
use crate::{kprintln, Kernel};
use iommu_vtd::{InvalidationStats, PhaseCycles, RegisterStats};

struct Bench<'a> {
    unit: &'a Unit,
}

impl Bench<'_> {
    /// Runs `f` (which performs `ops` operations) and prints the line.
    fn measure(
        &self,
        name: &str,
        ops: u64,
        f: impl FnOnce() -> Result<(), dma::DmaError>,
    ) -> Result<(), dma::DmaError> {
        kprintln!("KBENCH_MARK {name}");
        let before = Snapshot::of(self.unit);
        let t0 = rdtsc();
        f()?;
        let cycles = rdtsc() - t0;
        self.report(name, ops, cycles, before);
        Ok(())
    }

    /// Prints one line: cycles per operation, and what the unit counted since `before`.
    fn report(&self, name: &str, ops: u64, cycles: u64, before: Snapshot) {
        line(name, ops, cycles, Snapshot::of(self.unit).since(&before));
    }
}

/// The unit's own counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    inval: InvalidationStats,
    regs: RegisterStats,
    queue: PhaseCycles,
}

impl Snapshot {
    fn of(unit: &Unit) -> Self {
        Self {
            inval: unit.invalidation_stats(),
            regs: unit.register_stats(),
            queue: unit.phase_stats(),
        }
    }

    /// What the unit did between `earlier` and `self`.
    fn since(&self, earlier: &Snapshot) -> Counts {
        let (q, e) = (&self.queue, &earlier.queue);
        Counts {
            requests: self.inval.requests - earlier.inval.requests,
            waits: self.inval.submissions - earlier.inval.submissions,
            registers: self.regs.since(&earlier.regs).total(),
            queue: PhaseCycles {
                descriptor_write: q.descriptor_write - e.descriptor_write,
                submission: q.submission - e.submission,
                wait: q.wait - e.wait,
                batches: q.batches - e.batches,
            },
        }
    }
}

/// Consecutive phases timed back to back: each [`Laps::lap`] ends the running phase and starts
/// the next, with the unit's counters read between the two TSC reads so that reading them is
/// in neither phase.
struct Laps<'a> {
    unit: &'a Unit,
    counters: Snapshot,
    tsc: u64,
}

impl<'a> Laps<'a> {
    fn start(unit: &'a Unit) -> Self {
        let counters = Snapshot::of(unit);
        Self {
            unit,
            counters,
            tsc: rdtsc(),
        }
    }

    /// The cycles and counts of the phase that just ended.
    fn lap(&mut self) -> (u64, Counts) {
        let end = rdtsc();
        let counters = Snapshot::of(self.unit);
        let lap = (end - self.tsc, counters.since(&self.counters));
        self.counters = counters;
        self.tsc = rdtsc();
        lap
    }
}

/// Invalidation requests, completed waits (submissions) and register accesses of the unit, and
/// the cycles of its queued-invalidation phases while its phase timing is on.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    waits: u64,
    registers: u64,
    queue: PhaseCycles,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.waits += other.waits;
        self.registers += other.registers;
        let (q, o) = (&mut self.queue, &other.queue);
        q.descriptor_write += o.descriptor_write;
        q.submission += o.submission;
        q.wait += o.wait;
        q.batches += o.batches;
    }
}

/// One `KBENCH` line; `registers=` is the row's total (xtask divides and compares it with
/// QEMU's trace). Rows during which the unit timed its queued-invalidation phases
/// ([`iommu_vtd::VtdUnit::set_phase_timing`]) add those cycles per operation:
/// `queue_descriptor_write=`, `queue_submission=`, `queue_wait=`.
fn line(name: &str, ops: u64, cycles: u64, c: Counts) {
    let ops = ops.max(1);
    let per = |x: u64| x as f64 / ops as f64;
    let q = &c.queue;
    let queue = if q.batches > 0 {
        format!(
            " queue_descriptor_write={} queue_submission={} queue_wait={}",
            q.descriptor_write / ops,
            q.submission / ops,
            q.wait / ops
        )
    } else {
        String::new()
    };
    kprintln!(
        "KBENCH {name} ops={ops} cycles_per_op={} invalidations_per_op={:.2} waits_per_op={:.2} registers={}{queue}",
        cycles / ops,
        per(c.requests),
        per(c.waits),
        c.registers
    );
}

/// Runs every benchmark; returns false if one could not run.
pub fn run(k: &Kernel) -> bool {
    match run_all(k) {
        Ok(()) => true,
        Err(e) => {
            kprintln!("KBENCH error: {e}");
            false
        }
    }
}

fn run_all(k: &Kernel) -> Result<(), alloc::string::String> {
    let iommu = k.iommu.as_ref().ok_or("benchmarks need intel-iommu")?;
    let f = k
        .pci
        .topology
        .find(edu::VENDOR_ID, edu::DEVICE_ID)
        .next()
        .ok_or("benchmarks need an edu device")?;
    let bdf = f.bdf;
    let unit = &iommu.unit_for(&k.pci, bdf).ok_or("no unit for edu")?.unit;
    let b = Bench { unit };
    let cfg = DeviceConfig {
        mask: (1 << 39) - 1,
        trusted: true,
        ..DeviceConfig::default()
    };
    // Keep the whole set-up alive: its group membership keeps the domain attached.
    let setup = dmamem::setup(&k.pci, Some(iommu), bdf, cfg).map_err(|e| format!("{e}"))?;
    let DeviceDma { dev, .. } = &setup;
    let e = |e: dma::DmaError| format!("{e}");
    let alloc = |req| PhysPages::alloc(req).map_err(|e| format!("{e}"));
    let page = alloc(FrameRequest::one())?;
    let p = PhysAddr::new(page.paddr());
    let rw = Direction::Bidirectional;

    // Warm-up: first-touch costs (table pages, allocator caches) stay out of the figures.
    map_unmap_4k(dev, p, 500).map_err(e)?;
    let n = 2000;
    b.measure("map_unmap_4k_strict", n, || map_unmap_4k(dev, p, n))
        .map_err(e)?;

    phases(unit, dev, p, 2000)?;

    // Batches of 64 and of 256 live mappings (about 1920 mappings each), one flush per batch.
    for per in [64u64, 256] {
        let rounds = 1920 / per;
        // The driver's own storage for live mappings is kept across rounds (as a driver keeps
        // its ring of in-flight buffers); each batch is sized for its round up front.
        let mut maps = Vec::with_capacity(per as usize);
        b.measure(&format!("map_unmap_4k_batched_{per}"), rounds * per, || {
            for _ in 0..rounds {
                for _ in 0..per {
                    maps.push(dev.map_phys(p, 4096, rw, Attrs::empty())?);
                }
                let mut batch = UnmapBatch::with_capacity(per as usize);
                for m in maps.drain(..) {
                    m.unmap_in(&mut batch)?;
                }
                batch.finish()?;
            }
            Ok(())
        })
        .map_err(e)?;
    }

    let big = alloc(FrameRequest {
        count: 512,
        align: 512,
        ..FrameRequest::one()
    })?;
    let n = 200;
    b.measure("map_unmap_2m_superpage", n, || {
        for _ in 0..n {
            dev.map_phys(PhysAddr::new(big.paddr()), 2 << 20, rw, Attrs::empty())?
                .unmap()?;
        }
        Ok(())
    })
    .map_err(e)?;

    // 64 KiB: sixteen contiguous pages, one mapping (Linux's `dma_map_single` of 64 KiB is the
    // counterpart in `cargo xtask bench --vs-linux`).
    let run16 = alloc(FrameRequest::contiguous(16))?;
    let n = 1000;
    b.measure("map_unmap_64k", n, || {
        for _ in 0..n {
            dev.map_phys(PhysAddr::new(run16.paddr()), 64 << 10, rw, Attrs::empty())?
                .unmap()?;
        }
        Ok(())
    })
    .map_err(e)?;

    let run256 = alloc(FrameRequest::contiguous(256))?;
    let ranges: Vec<(PhysAddr, u64)> = (0..256)
        .map(|i| (PhysAddr::new(run256.paddr() + i * 4096), 4096))
        .collect();
    let n = 50;
    b.measure("map_sg_256_entries", n, || {
        for _ in 0..n {
            dev.map_sg(&ranges, rw, Attrs::empty())?.unmap()?;
        }
        Ok(())
    })
    .map_err(e)?;

    for live in [1usize, 100, 10_000] {
        let held = (0..live)
            .map(|_| dev.map_phys(p, 4096, rw, Attrs::empty()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        let n = 1000;
        b.measure(&format!("map_unmap_4k_with_{live}_live"), n, || {
            map_unmap_4k(dev, p, n)
        })
        .map_err(e)?;
        let mut batch = UnmapBatch::new();
        for m in held {
            m.unmap_in(&mut batch).map_err(e)?;
        }
        batch.finish().map_err(e)?;
    }

    revoke_latency(k, &b, dev)?;

    // Unmapping N contiguous pages: invalidation requests must grow like log N, not N.
    let run4k = alloc(FrameRequest::contiguous(4096))?;
    for pages in [1u64, 16, 256, 4095] {
        // Start one page into the run so physical and IOVA alignment differ: 4 KiB leaves only.
        // One unmap per mapping; the fastest of five rounds is reported (the invalidation counts
        // are the same every round).
        let mut best = u64::MAX;
        let mut before = Snapshot::of(unit);
        for _ in 0..5 {
            let m = dev
                .map_phys(
                    PhysAddr::new(run4k.paddr() + 4096),
                    pages * 4096,
                    rw,
                    Attrs::empty(),
                )
                .map_err(e)?;
            before = Snapshot::of(unit);
            let t0 = rdtsc();
            m.unmap().map_err(e)?;
            best = best.min(rdtsc() - t0);
        }
        b.report(&format!("unmap_{pages}_contiguous_pages"), 1, best, before);
    }

    // Interrupt latency: TSC just before a self-IPI to TSC at dispatch entry (no remapping:
    // an IPI never passes the IOMMU); edu's MSI with and without remapping follows.
    let vector = irq::alloc_vector().map_err(|e| format!("{e}"))?;
    let n = 1000;
    let before = Snapshot::of(unit);
    let mut total = 0;
    for _ in 0..n {
        total += irq::self_ipi_latency(vector).map_err(|e| format!("{e}"))?;
    }
    let _ = irq::free_vector(vector);
    b.report("irq_self_ipi_latency", n, total, before);
    edu_msi_latency(k, &b)?;

    // Deferred mode needs the group's domain rebuilt in that mode: the strict one goes first.
    drop(setup);
    deferred(k, iommu, bdf, cfg, &b, p)?;
    // Assignment needs the group free of host members: after every device set-up is gone.
    guest(k, iommu, bdf, &b)
}

/// Guest address spaces and device assignment (issue 14):
///
/// - `guest_map_<size>_<leaves>_leaves`: [`dma::guest::GuestSpace::map`] of guest RAM whose
///   GPA and HPA are 1 GiB aligned (1 GiB leaves where the unit has them) and, for 1 GiB, of
///   RAM whose HPA is only 4 KiB aligned (every leaf 4 KiB), then the unmap; the leaf count is
///   the plan's, computed by [`dma::guest::count_leaves`]; the GPAs start at 4 GiB (above the
///   interrupt window). The HPAs are beyond RAM but below
///   the unit's host address width: mapping writes entries and never touches the target;
/// - `guest_switch_atomic`: one atomic switch of edu's group between two guest domains
///   ([`iommu_vtd::VtdUnit::assign_group`]: a 128-bit store per requester ID, the context
///   cache and the old domain's IOTLB invalidated), the fastest of 20;
/// - `guest_reassign_full`: the whole [`vtd_platform::Assigner::assign`] (bus mastering off,
///   the previous guest's interrupts, the switch) without a reset (edu on the root bus has no
///   reset method, so the policy waives it), the fastest of 20.
fn guest(
    k: &Kernel,
    iommu: &crate::devices::iommu::Iommu,
    bdf: pci::Bdf,
    b: &Bench<'_>,
) -> Result<(), String> {
    use dma::guest::count_leaves;
    use vtd_platform::{AssignHooks, AssignPolicy, AssignTarget, Assigner};
    let e = |e: &dyn core::fmt::Display| format!("{e}");
    let unit = b.unit;
    let sizes = unit_page_sizes(iommu, k, bdf)?;
    let rw = Prot::READ | Prot::WRITE;
    for (size, hpa) in [
        (1u64 << 30, 64u64 << 30),
        (16 << 30, 64 << 30),
        (1 << 30, (64 << 30) + 4096),
    ] {
        let guest = iommu.create_guest(&k.pci, bdf, 9).map_err(|x| e(&x))?;
        // Guest RAM from 4 GiB up: clear of the interrupt window below it.
        let gpa = 4u64 << 30;
        let leaves = count_leaves(gpa, hpa, size, sizes).map_err(|x| e(&x))?;
        let name = format!("guest_map_{}GiB_{}_leaves", size >> 30, leaves.total());
        let before = Snapshot::of(unit);
        kprintln!("KBENCH_MARK {name}");
        let t0 = rdtsc();
        guest.space().map(gpa, hpa, size, rw).map_err(|x| e(&x))?;
        let cycles = rdtsc() - t0;
        line(&name, 1, cycles, Snapshot::of(unit).since(&before));
        guest.space().clear().map_err(|x| e(&x))?;
    }
    let g1 = iommu.create_guest(&k.pci, bdf, 1).map_err(|x| e(&x))?;
    let g2 = iommu.create_guest(&k.pci, bdf, 2).map_err(|x| e(&x))?;
    let (key, rids) = {
        let groups = k.pci.groups();
        let g = groups.group_of(bdf).ok_or("edu has no group")?;
        (vtd_platform::group_key(g), g.requester_ids().to_vec())
    };
    let group = iommu_vtd::GroupRef {
        key,
        requester_ids: &rids,
    };
    unit.assign_group(group, g1.hw()).map_err(|x| e(&x))?;
    let (mut best, mut counts) = (u64::MAX, Counts::default());
    for i in 0..20 {
        let to = if i % 2 == 0 { &g2 } else { &g1 };
        let before = Snapshot::of(unit);
        let t0 = rdtsc();
        unit.assign_group(group, to.hw()).map_err(|x| e(&x))?;
        let cycles = rdtsc() - t0;
        if cycles < best {
            (best, counts) = (cycles, Snapshot::of(unit).since(&before));
        }
    }
    line("guest_switch_atomic", 1, best, counts);
    unit.quarantine_group(group).map_err(|x| e(&x))?;
    unit.release_quarantine(key).map_err(|x| e(&x))?;

    struct NoHooks;
    impl AssignHooks for NoHooks {
        fn revoke_exports(&mut self, _: pci::Bdf) -> Result<(), ()> {
            Ok(())
        }
        fn delay_us(&mut self, us: u32) {
            crate::arch::time::delay_us(u64::from(us));
        }
    }
    let a = Assigner::new();
    let policy = AssignPolicy {
        require_reset: false,
        ..AssignPolicy::default()
    };
    let (mut best, mut counts) = (u64::MAX, Counts::default());
    for i in 0..21 {
        let to = if i % 2 == 0 { &g1 } else { &g2 };
        let before = Snapshot::of(unit);
        let t0 = rdtsc();
        a.assign(
            iommu,
            &k.pci,
            &k.pci.ecam,
            bdf,
            AssignTarget::Guest(to),
            &mut NoHooks,
            policy,
        )
        .map_err(|x| e(&x))?;
        let cycles = rdtsc() - t0;
        // The first is from the host (entries written, not switched).
        if i > 0 && cycles < best {
            (best, counts) = (cycles, Snapshot::of(unit).since(&before));
        }
    }
    line("guest_reassign_full", 1, best, counts);
    a.assign(
        iommu,
        &k.pci,
        &k.pci.ecam,
        bdf,
        AssignTarget::Quarantine,
        &mut NoHooks,
        policy,
    )
    .map_err(|x| e(&x))?;
    a.release_to_host(iommu, &k.pci, bdf).map_err(|x| e(&x))?;
    // Bus mastering back on for whatever runs next.
    pci::reset::set_bus_master(&k.pci.ecam, bdf, true).map_err(|x| e(&x))?;
    Ok(())
}

/// The leaf sizes a domain on `bdf`'s unit can use.
fn unit_page_sizes(
    iommu: &crate::devices::iommu::Iommu,
    k: &Kernel,
    bdf: pci::Bdf,
) -> Result<dma::iommu::PageSizes, String> {
    let d = iommu.domain_for(&k.pci, bdf).map_err(|e| format!("{e}"))?;
    Ok(d.info().page_sizes)
}

/// One strict 4 KiB map+unmap split into its phases (issue 12), `n` times, the TSC read around
/// the public call that performs each phase, interleaved in the order a map+unmap runs them;
/// each row's `cycles_per_op` is the median over the iterations (its counts are totals):
///
/// - `phase_4k_iova`: IOVA allocation and free on an [`IovaAllocator`] over the device domain's
///   aperture and reserved regions (the domain's own allocator adds its spin lock);
/// - `phase_4k_pt_map`: the page-table write and its cache write-back
///   ([`IommuDomain::map`] + [`IommuDomain::sync_map`]) on a scratch domain of the same unit,
///   attached to no device;
/// - `phase_4k_pt_unmap`: clearing the entry ([`IommuDomain::unmap`] into a gather);
/// - `phase_4k_flush`: the page-selective IOTLB invalidation of that gather, descriptor write,
///   submission and wait ([`IommuDomain::flush`]);
///   With the unit's phase timing on ([`iommu_vtd::VtdUnit::set_phase_timing`]), its line also
///   splits the unit's queue work: descriptor write, submission (fence + IQT write), wait;
/// - `phase_4k_map_phys`, `phase_4k_unmap`: the DMA API's whole `map_phys` and strict `unmap`
///   on the device, so that what the phases above do not cover (the `dma` layer's checks and
///   bookkeeping) is their difference.
fn phases(unit: &Arc<Unit>, dev: &DmaDevice, p: PhysAddr, n: u64) -> Result<(), String> {
    let domain = dev
        .domain()
        .ok_or("phases: the device has no IOMMU domain")?;
    let scratch = unit
        .create_domain(iommu_vtd::DomainConfig::default())
        .map_err(|e| format!("phases: scratch domain: {e}"))?;
    let end = DmaAddr::new(
        scratch
            .info()
            .aperture_end
            .as_u64()
            .min(domain.info().aperture_end.as_u64()),
    );
    let mut iovas = IovaAllocator::new(DmaAddr::new(PAGE_SIZE), end, &domain.reserved())
        .map_err(|e| format!("phases: IOVA allocator: {e}"))?;
    let prot = Prot::READ | Prot::WRITE;
    let rw = Direction::Bidirectional;
    // The unit times its queue phases for these rows only (dropping the guard turns it off).
    let _timing = PhaseTiming::on(unit);
    // Per phase: the unit's counts summed, and every iteration's cycles (with the queue phases
    // of the flush and of the device's unmap): the rows report medians over the iterations,
    // since one host preemption of QEMU (a shared host) inside a lap would otherwise add
    // millions of cycles to whichever phase it fell in.
    let mut sums = [Counts::default(); 6];
    let mut samples: [Vec<u64>; 6] = core::array::from_fn(|_| Vec::with_capacity(n as usize));
    let mut queues: [[Vec<u64>; 3]; 2] =
        core::array::from_fn(|_| core::array::from_fn(|_| Vec::with_capacity(n as usize)));
    let fail = |what: &str, e: &dyn core::fmt::Display| format!("phases: {what}: {e}");
    for round in 0..n + n / 4 {
        let mut clock = Laps::start(unit);
        let iova = iovas
            .alloc(PAGE_SIZE, end)
            .map_err(|e| fail("IOVA alloc", &e))?;
        let alloc = clock.lap();
        scratch
            .map(iova, p, PAGE_SIZE, prot)
            .and_then(|()| scratch.sync_map(iova, PAGE_SIZE))
            .map_err(|e| fail("page-table map", &e))?;
        let pt_map = clock.lap();
        let mut gather = IotlbGather::new();
        scratch
            .unmap(iova, PAGE_SIZE, &mut gather)
            .map_err(|e| fail("page-table unmap", &e))?;
        let pt_unmap = clock.lap();
        scratch.flush(gather).map_err(|e| fail("flush", &e))?;
        let flush = clock.lap();
        iovas
            .free(iova, PAGE_SIZE)
            .map_err(|e| fail("IOVA free", &e))?;
        let free = clock.lap();
        let m = dev
            .map_phys(p, PAGE_SIZE, rw, Attrs::empty())
            .map_err(|e| fail("map_phys", &e))?;
        let map_phys = clock.lap();
        m.unmap().map_err(|e| fail("unmap", &e))?;
        let unmap = clock.lap();
        // The first quarter warms up (table pages, caches) and is not counted.
        if round < n / 4 {
            continue;
        }
        let iova_lap = (alloc.0 + free.0, {
            let mut c = alloc.1;
            c.add(free.1);
            c
        });
        for (i, lap) in [iova_lap, pt_map, pt_unmap, flush, map_phys, unmap]
            .into_iter()
            .enumerate()
        {
            samples[i].push(lap.0);
            sums[i].add(lap.1);
        }
        for (q, lap) in queues.iter_mut().zip([flush, unmap]) {
            q[0].push(lap.1.queue.descriptor_write);
            q[1].push(lap.1.queue.submission);
            q[2].push(lap.1.queue.wait);
        }
    }
    let [flush_queue, unmap_queue] = queues;
    let queue_of = |i: usize| match i {
        3 => Some(&flush_queue),
        5 => Some(&unmap_queue),
        _ => None,
    };
    for (i, name) in [
        "phase_4k_iova",
        "phase_4k_pt_map",
        "phase_4k_pt_unmap",
        "phase_4k_flush",
        "phase_4k_map_phys",
        "phase_4k_unmap",
    ]
    .into_iter()
    .enumerate()
    {
        // `line` divides totals by the operations: medians go in multiplied by them (exact).
        let mut counts = sums[i];
        if let Some([dw, sub, wait]) = queue_of(i) {
            if counts.queue.batches > 0 {
                counts.queue.descriptor_write = median(dw) * n;
                counts.queue.submission = median(sub) * n;
                counts.queue.wait = median(wait) * n;
            }
        }
        line(name, n, median(&samples[i]) * n, counts);
    }
    Ok(())
}

/// The median of `xs` (the upper one of an even count; 0 when empty).
/// `n` pairs of `map_phys` + `unmap` of the 4 KiB page at `p` on `dev`.
fn map_unmap_4k(dev: &DmaDevice, p: PhysAddr, n: u64) -> Result<(), dma::DmaError> {
    for _ in 0..n {
        dev.map_phys(p, 4096, Direction::Bidirectional, Attrs::empty())?
            .unmap()?;
    }
    Ok(())
}

fn median(xs: &[u64]) -> u64 {
    let mut v = xs.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The unit's queued-invalidation phase timing, on while this lives.
struct PhaseTiming<'a>(&'a Unit);

impl<'a> PhaseTiming<'a> {
    fn on(unit: &'a Unit) -> Self {
        unit.set_phase_timing(true);
        Self(unit)
    }
}

impl Drop for PhaseTiming<'_> {
    fn drop(&mut self) {
        self.0.set_phase_timing(false);
    }
}

/// Deferred invalidation ([`InvalidationMode::Deferred`] with the policy of Linux's flush queue:
/// a flush after 256 unmaps or 10 ms): `map_unmap_4k_deferred` times 2000 strict-sized 4 KiB
/// map+unmap pairs *and* the final [`dma::DmaDomain::flush_deferred`], so its cost per mapping
/// includes every flush the pairs caused (waits/op shows how many). The group's domain is
/// rebuilt in deferred mode, so the strict one of the other rows must be gone.
fn deferred(
    k: &Kernel,
    iommu: &crate::devices::iommu::Iommu,
    bdf: pci::Bdf,
    cfg: DeviceConfig,
    b: &Bench<'_>,
    p: PhysAddr,
) -> Result<(), String> {
    let setup = dmamem::setup_with(
        &k.pci,
        Some(iommu),
        bdf,
        cfg,
        InvalidationMode::Deferred(DeferredPolicy::default()),
    )
    .map_err(|e| format!("deferred set-up: {e}"))?;
    let dev = &setup.dev;
    let domain = dev.domain().ok_or("deferred: no IOMMU domain")?.clone();
    let e = |e: dma::DmaError| format!("{e}");
    map_unmap_4k(dev, p, 500).map_err(e)?;
    domain.flush_deferred().map_err(e)?;
    let n = 2000;
    b.measure("map_unmap_4k_deferred", n, || {
        map_unmap_4k(dev, p, n)?;
        domain.flush_deferred()
    })
    .map_err(e)
}

/// edu's MSI raise (register 0x60) to handler entry, through its IRTE when the unit remaps
/// interrupts (`irq_edu_msi_latency_remapped`) or in compatibility format
/// (`irq_edu_msi_latency_compat`, a run with `vtd.intremap=off`); with remapping, the cost of
/// changing a live IRTE's vector (`irte_update`: 128-bit store, index-selective
/// interrupt-entry-cache invalidation, wait).
fn edu_msi_latency(k: &Kernel, b: &Bench<'_>) -> Result<(), alloc::string::String> {
    fn on_msi(_: u8) {}
    // SAFETY: the benchmarks run one after the other; this binding is dropped on return.
    let edus = unsafe { crate::devices::edu::bind_all(&k.pci, edu::DEFAULT_DMA_MASK) }
        .map_err(|e| format!("{e}"))?;
    let e = edus.first().ok_or("no edu")?;
    let mut m = crate::devices::irq::request_msi(&k.pci, k.iommu.as_ref(), e.bdf(), on_msi)
        .map_err(|e| format!("{e}"))?;
    let v = m.vector();
    let remapped = m.vectors().remapped().is_some();
    let n = 300;
    let before = Snapshot::of(b.unit);
    let mut total = 0;
    for _ in 0..n {
        total += irq::measure_latency(v, || e.raise_interrupt(1)).map_err(|e| format!("{e}"))?;
        e.ack_interrupt(1);
    }
    let name = if remapped {
        "irq_edu_msi_latency_remapped"
    } else {
        "irq_edu_msi_latency_compat"
    };
    b.report(name, n, total, before);
    if let Some(r) = m.vectors_mut().remapped_mut() {
        let spare = irq::alloc_vector().map_err(|e| format!("{e}"))?;
        let n = 500;
        let before = Snapshot::of(b.unit);
        let t0 = rdtsc();
        for i in 0..n {
            r.retarget(0, if i % 2 == 0 { spare } else { v })
                .map_err(|e| format!("{e}"))?;
        }
        let cycles = rdtsc() - t0;
        let _ = irq::free_vector(spare);
        b.report("irte_update", n, cycles, before);
    }
    Ok(())
}

/// Revoke latency with N importers of one export (ivshmem BAR2): each importer holds one
/// mapping; revoke notifies all, tears every mapping down and flushes before returning.
fn revoke_latency(
    k: &Kernel,
    b: &Bench<'_>,
    dev: &dma::DmaDevice,
) -> Result<(), alloc::string::String> {
    use alloc::boxed::Box;

    use dma::{ExportRange, Importer};

    use crate::devices::p2p::ProviderDevice;

    let Some(ivsh) = k
        .pci
        .topology
        .find(ivshmem::VENDOR_ID, ivshmem::DEVICE_ID)
        .next()
    else {
        kprintln!("KBENCH note: no ivshmem device, revoke latency skipped");
        return Ok(());
    };
    let Some(edu) = k.pci.topology.find(edu::VENDOR_ID, edu::DEVICE_ID).next() else {
        return Ok(());
    };
    let mut provider = ProviderDevice::new(&k.p2p, &k.pci, ivsh.bdf).map_err(|e| format!("{e}"))?;
    let handle = provider
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x1000,
            }],
        )
        .map_err(|e| format!("{e}"))?;
    // One importer (edu) attached and mapped.
    let import = || -> Result<_, alloc::string::String> {
        let imp = Importer {
            id: pci::p2p::device_id(edu.bdf),
            dev: dev.clone(),
            peer_to_peer: true,
            move_notify: Box::new(|_| {}),
        };
        let att = handle.attach(imp).map_err(|e| format!("{e}"))?;
        let m = att.map(Direction::FromDevice).map_err(|e| format!("{e}"))?;
        Ok((att, m))
    };
    // Warm-up round (first-use allocations stay out of the figures).
    let warm = import()?;
    provider.revoke().map_err(|e| format!("{e}"))?;
    drop(warm);
    provider.restore().map_err(|e| format!("{e}"))?;
    for importers in [1usize, 4, 16, 64] {
        // Fastest of five rounds (one revoke each): single operations are noisy under TCG.
        let (mut best, mut counts) = (u64::MAX, Counts::default());
        for _ in 0..5 {
            let held = (0..importers)
                .map(|_| import())
                .collect::<Result<Vec<_>, _>>()?;
            let before = Snapshot::of(b.unit);
            let t0 = rdtsc();
            provider.revoke().map_err(|e| format!("{e}"))?;
            let cycles = rdtsc() - t0;
            let after = Snapshot::of(b.unit);
            if cycles < best {
                (best, counts) = (cycles, after.since(&before));
            }
            drop(held);
            provider.restore().map_err(|e| format!("{e}"))?;
        }
        line(
            &format!("revoke_with_{importers}_importers"),
            1,
            best,
            counts,
        );
    }
    Ok(())
}
