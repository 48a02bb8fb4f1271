//! PCI peer-to-peer through revocable export handles, proven by what the devices did: the edu
//! device writes into another device's BAR (ivshmem's RAM-backed BAR2, nvme's controller memory
//! buffer) through an imported mapping, the bytes appear there (read back by the CPU through
//! volatile accessors), and after a revoke the same DMA is blocked with a VT-d fault and the BAR
//! is unchanged.
//!
//! Expectations set by the scenario from the topology: `expect.maptype=thru|bus`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;

use dma::p2p::MapType;
use dma::{
    Attrs, DeviceConfig, Direction, DmaAddr, DmaError, ExportRange, Importer, Mapping, MoveEvent,
    PhysAddr,
};
use edu::{Edu, Transfer};
use iommu_vtd::AccessKind;
use ivshmem::SharedMemory;
use kernel::cmdline::CommandLine;
use pci::p2p::device_id;
use pci::Bdf;
use spin::Mutex;

use super::common::*;
use crate::devices::dmamem::{self, DeviceDma};
use crate::devices::edu as edu_dev;
use crate::devices::p2p::{reset_function, ProviderDevice};
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::paging::{self, Cache};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "p2p",
    explicit_only: false,
    tests: &[
        Test {
            name: "classification",
            run: classification,
        },
        Test {
            name: "dma_into_bar",
            run: dma_into_bar,
        },
        Test {
            name: "revoke_cuts_off_and_restore_works",
            run: revoke_cuts_off_and_restore_works,
        },
        Test {
            name: "trigger_memory_disable",
            run: trigger_memory_disable,
        },
        Test {
            name: "trigger_bus_reset",
            run: trigger_bus_reset,
        },
        Test {
            name: "trigger_flr",
            run: trigger_flr,
        },
        Test {
            name: "trigger_d3hot",
            run: trigger_d3hot,
        },
        Test {
            name: "trigger_removal",
            run: trigger_removal,
        },
        Test {
            name: "no_iommu_refused",
            run: no_iommu_refused,
        },
    ],
};

const LEN: u64 = 256;
/// Where in the exported range the device writes.
const OFFSET: u64 = 0x100;

/// The importing side: an edu device with its DMA handle, its buffer loaded with a pattern, and
/// a log of the move notifications it received.
struct Importing {
    edu: Edu,
    dma: DeviceDma,
    pattern: Vec<u8>,
    events: Arc<Mutex<Vec<MoveEvent>>>,
    _src: (PhysPages, Mapping),
}

fn importing(k: &Kernel) -> Result<Importing, Failure> {
    let mut edu = edus(k)?.into_iter().next().or_fail("edu")?;
    let dma = dmamem::setup(
        &k.pci,
        k.iommu.as_ref(),
        edu.bdf(),
        DeviceConfig {
            mask: edu.dma_mask(),
            trusted: true,
            ..DeviceConfig::default()
        },
    )
    .or_fail("edu DMA setup")?;
    let mut src = page(0)?;
    pattern(&mut src, 0x3c);
    let m = dma
        .dev
        .map_phys(
            PhysAddr::new(src.paddr()),
            LEN,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .or_fail("map src")?;
    edu_dev::dma(&mut edu, Transfer::ReadFromMemory, m.dma_addr(), 0, LEN)
        .or_fail("load edu buffer")?;
    let pattern = src.as_slice()[..LEN as usize].to_vec();
    Ok(Importing {
        edu,
        dma,
        pattern,
        events: Arc::new(Mutex::new(Vec::new())),
        _src: (src, m),
    })
}

impl Importing {
    fn importer(&self) -> Importer {
        let events = self.events.clone();
        Importer {
            id: device_id(self.edu.bdf()),
            dev: self.dma.dev.clone(),
            peer_to_peer: true,
            move_notify: Box::new(move |e| events.lock().push(e)),
        }
    }

    /// The edu writes its buffer's first LEN bytes to `addr`.
    fn push(&mut self, addr: DmaAddr) -> TestResult {
        edu_dev::dma(&mut self.edu, Transfer::WriteToMemory, addr, 0, LEN).or_fail("edu write")
    }

    fn events(&self) -> Vec<MoveEvent> {
        self.events.lock().clone()
    }
}

/// A BAR range seen by the CPU through volatile accessors.
pub(super) fn bar_view(k: &Kernel, bdf: Bdf, bar: u8) -> Result<SharedMemory, Failure> {
    let b = k
        .pci
        .topology
        .function(bdf)
        .and_then(|f| f.bar(bar))
        .or_fail("BAR")?;
    let p = paging::map_phys(b.phys_address, b.size, Cache::Uncached).or_fail("map BAR")?;
    // SAFETY: the BAR is mapped uncached for the rest of the run; tests use one view at a time.
    unsafe { SharedMemory::new(NonNull::new(p).or_fail("BAR pointer")?, b.size as usize) }
        .or_fail("BAR view")
}

pub(super) fn ivshmem_bdf(k: &Kernel) -> Result<Bdf, Failure> {
    Ok(k.pci
        .topology
        .find(ivshmem::VENDOR_ID, ivshmem::DEVICE_ID)
        .next()
        .or_fail("no ivshmem device")?
        .bdf)
}

/// Checks the device's bytes arrived at `offset` of the BAR and nothing else of the first page
/// changed (the page was zeroed before).
fn landed(view: &SharedMemory, base: u64, pattern: &[u8]) -> TestResult {
    let mut got = alloc::vec![0u8; 4096];
    view.read_bytes(base as usize, &mut got)
        .or_fail("read BAR")?;
    check_eq!(&got[OFFSET as usize..(OFFSET + LEN) as usize], pattern);
    check!(
        got[..OFFSET as usize]
            .iter()
            .chain(&got[(OFFSET + LEN) as usize..])
            .all(|&b| b == 0),
        "bytes outside the transfer changed"
    );
    Ok(())
}

fn untouched(view: &SharedMemory, base: u64) -> TestResult {
    let mut got = alloc::vec![0u8; 4096];
    view.read_bytes(base as usize, &mut got)
        .or_fail("read BAR")?;
    check!(
        got.iter().all(|&b| b == 0),
        "a revoked mapping still reached the BAR"
    );
    Ok(())
}

fn expected_map_type(k: &Kernel) -> Option<MapType> {
    match CommandLine::new(k.boot.cmdline()).value("expect.maptype")? {
        "thru" => Some(MapType::ThruHostBridge),
        "bus" => Some(MapType::BusAddr),
        _ => None,
    }
}

fn classification(k: &Kernel) -> TestResult {
    let imp = importing(k)?;
    let ivsh = ivshmem_bdf(k)?;
    let route = k.p2p.routing.route(ivsh, imp.edu.bdf());
    kprintln!("  ivshmem {ivsh} -> edu {}: {route}", imp.edu.bdf());
    let want = expected_map_type(k).or_fail("expect.maptype= on the command line")?;
    check_eq!(k.p2p.routing.classify(ivsh, imp.edu.bdf()), want);
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x2000,
            }],
        )
        .or_fail("export")?;
    let att = handle.attach(imp.importer()).or_fail("attach")?;
    check_eq!(att.map_type(), want);
    let m = att.map(Direction::FromDevice).or_fail("map")?;
    let segs = m.segments();
    kprintln!(
        "  segments: {segs:x?} (BAR2 at {})",
        handle.provider().phys()
    );
    check_eq!(segs.len(), 1);
    if want == MapType::BusAddr {
        // No IOVA: the device is given the bus address, paddr + bus_offset.
        check_eq!(
            segs[0].addr.as_u64(),
            handle.provider().bus_addr(handle.ranges()[0].0)
        );
    } else {
        check!(
            k.iommu.is_none() || segs[0].addr.as_u64() != handle.provider().phys().as_u64(),
            "THRU_HOST_BRIDGE under an IOMMU must use an IOVA"
        );
    }
    Ok(())
}

fn dma_into_bar(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut imp = importing(k)?;
    let ivsh = ivshmem_bdf(k)?;
    let mut view = bar_view(k, ivsh, ivshmem::SHARED_MEMORY_BAR)?;
    view.fill(0, 0x2000, 0).or_fail("zero BAR")?;
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x2000,
            }],
        )
        .or_fail("export")?;
    let att = handle.attach(imp.importer()).or_fail("attach")?;
    let m = att.map(Direction::FromDevice).or_fail("map")?;
    let addr = m.segments()[0].addr;
    imp.push(DmaAddr::new(addr.as_u64() + OFFSET))?;
    landed(&view, 0, &imp.pattern)?;
    kprintln!("  edu {} wrote {LEN} bytes into ivshmem {ivsh} BAR2 through {addr} ({:?}): checksum {:#010x}", imp.edu.bdf(), att.map_type(), checksum(&imp.pattern));
    check!(faults(k)?.is_empty(), "unexpected faults");
    Ok(())
}

/// Export, map, DMA (works), revoke: the importer is notified once, its mapping is gone and the
/// IOTLB flushed (the next DMA faults, the BAR is unchanged), map and attach fail; restore:
/// notified once more, map again, DMA works.
fn revoke_cuts_off_and_restore_works(k: &Kernel) -> TestResult {
    clear_faults(k)?;
    let mut imp = importing(k)?;
    let ivsh = ivshmem_bdf(k)?;
    let mut view = bar_view(k, ivsh, ivshmem::SHARED_MEMORY_BAR)?;
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x2000,
            }],
        )
        .or_fail("export")?;
    let att = handle.attach(imp.importer()).or_fail("attach")?;
    let m = att.map(Direction::FromDevice).or_fail("map")?;
    let addr = DmaAddr::new(m.segments()[0].addr.as_u64() + OFFSET);
    view.fill(0, 0x2000, 0).or_fail("zero BAR")?;
    imp.push(addr)?; // also warms the IOTLB
    landed(&view, 0, &imp.pattern)?;

    let stats = prov.revoke().or_fail("revoke")?;
    check_eq!(imp.events(), alloc::vec![MoveEvent::Revoked]);
    check_eq!(stats.notified, 1);
    check!(m.is_stale(), "mapping not marked stale");
    check!(
        matches!(att.map(Direction::FromDevice), Err(DmaError::Revoked)),
        "map while revoked did not fail"
    );
    check!(
        matches!(handle.attach(imp.importer()), Err(DmaError::Revoked)),
        "attach while revoked did not fail"
    );
    // Revoking again is not a state change: no second notification.
    prov.revoke().or_fail("second revoke")?;
    check_eq!(imp.events().len(), 1);
    view.fill(0, 0x2000, 0).or_fail("zero BAR")?;
    imp.push(addr)?;
    untouched(&view, 0)?;
    expect_one_fault(k, &imp.edu, addr.as_u64(), AccessKind::Write, 5)?;

    prov.restore().or_fail("restore")?;
    check_eq!(
        imp.events(),
        alloc::vec![MoveEvent::Revoked, MoveEvent::Restored]
    );
    drop(m);
    let m2 = att
        .map(Direction::FromDevice)
        .or_fail("map after restore")?;
    imp.push(DmaAddr::new(m2.segments()[0].addr.as_u64() + OFFSET))?;
    landed(&view, 0, &imp.pattern)?;
    kprintln!("  revoke: 1 notification, DMA blocked with a fault, BAR unchanged; restore: DMA lands again");
    Ok(())
}

/// Common shape of the trigger tests: export `len` bytes at `offset` of `bar` of `bdf`, prove
/// DMA lands, run `trigger` (which must revoke), prove the old mapping faults and the memory is
/// unchanged, run `recover` (if any), map again and prove DMA lands again.
fn trigger_test(
    k: &Kernel,
    bdf: Bdf,
    bar: u8,
    offset: u64,
    trigger: &mut dyn FnMut(&mut ProviderDevice) -> TestResult,
    recover: Option<&mut dyn FnMut(&mut ProviderDevice) -> TestResult>,
    expect_events: &[MoveEvent],
) -> TestResult {
    clear_faults(k)?;
    let mut imp = importing(k)?;
    let mut view = bar_view(k, bdf, bar)?;
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, bdf).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            bar,
            &[ExportRange {
                offset,
                len: 0x1000,
            }],
        )
        .or_fail("export")?;
    let att = handle.attach(imp.importer()).or_fail("attach")?;
    let m = att.map(Direction::FromDevice).or_fail("map")?;
    let addr = DmaAddr::new(m.segments()[0].addr.as_u64() + OFFSET);
    view.fill(offset as usize, 0x1000, 0).or_fail("zero")?;
    imp.push(addr)?;
    landed(&view, offset, &imp.pattern)?;
    // Zero the range again, so a DMA that got through after the trigger would show.
    view.fill(offset as usize, 0x1000, 0).or_fail("zero")?;

    trigger(&mut prov)?;
    // Revoked (or Gone, for removal) arrives before the trigger returns.
    let first = imp.events().first().copied();
    check_eq!(first.as_ref(), expect_events.first());
    check!(m.is_stale(), "mapping survived the trigger");
    // The old IOVA is gone: the next DMA faults. (Memory is only checked where the CPU can
    // still reach it: not while decoding is off or the device is in reset.)
    imp.push(addr)?;
    expect_one_fault(k, &imp.edu, addr.as_u64(), AccessKind::Write, 5)?;
    match recover {
        Some(recover) => {
            recover(&mut prov)?;
            check_eq!(&imp.events()[..], expect_events);
            // The DMA attempted while revoked left the memory as it was.
            untouched(&view, offset)?;
            let m2 = att
                .map(Direction::FromDevice)
                .or_fail("map after restore")?;
            imp.push(DmaAddr::new(m2.segments()[0].addr.as_u64() + OFFSET))?;
            landed(&view, offset, &imp.pattern)?;
        }
        None => {
            check_eq!(&imp.events()[..], expect_events);
            check!(
                matches!(att.map(Direction::FromDevice), Err(DmaError::DeviceGone)),
                "map after removal"
            );
            check!(
                matches!(handle.attach(imp.importer()), Err(DmaError::DeviceGone)),
                "attach after removal"
            );
            untouched(&view, offset)?;
        }
    }
    Ok(())
}

fn trigger_memory_disable(k: &Kernel) -> TestResult {
    let bdf = ivshmem_bdf(k)?;
    trigger_test(
        k,
        bdf,
        ivshmem::SHARED_MEMORY_BAR,
        0,
        &mut |p| {
            p.disable_memory(&k.pci)
                .map(|_| ())
                .or_fail("disable memory")
        },
        Some(&mut |p| p.enable_memory(&k.pci).map(|_| ()).or_fail("enable memory")),
        &[MoveEvent::Revoked, MoveEvent::Restored],
    )
}

/// ivshmem behind a root port: its only reset is a secondary-bus reset through the port, which
/// zeroes its BARs; the device layer revokes, resets, restores BARs and command, restores.
fn trigger_bus_reset(k: &Kernel) -> TestResult {
    let bdf = ivshmem_bdf(k)?;
    trigger_test(
        k,
        bdf,
        ivshmem::SHARED_MEMORY_BAR,
        0,
        &mut |p| {
            let done = reset_function(&k.p2p, &k.pci, &mut [p], bdf).or_fail("bus reset")?;
            kprintln!(
                "  reset {bdf} by {} (affected {:?}), {} provider(s) revoked and restored",
                done.method.name(),
                done.affected,
                done.revoked
            );
            check!(
                matches!(done.method, pci::reset::ResetMethod::SecondaryBus { .. }),
                "expected a bus reset"
            );
            Ok(())
        },
        Some(&mut |_| Ok(())),
        &[MoveEvent::Revoked, MoveEvent::Restored],
    )
}

/// The nvme controller memory buffer as provider (BAR and offset from CMBLOC/CMBSZ).
/// The first nvme's CMB registers (a view of its BAR0 that the CMB calls use) and its decoded
/// CMB, made readable (CMBMSC.CRE).
pub(super) fn nvme_cmb_registers(
    k: &Kernel,
) -> Result<(Bdf, nvme::Nvme, nvme::ControllerMemoryBuffer), Failure> {
    let f = k
        .pci
        .topology
        .find(nvme::VENDOR_ID, nvme::DEVICE_ID)
        .next()
        .or_fail("no nvme device")?;
    let bar0 = f.bar(0).or_fail("nvme BAR0")?;
    let regs =
        paging::map_phys(bar0.phys_address, bar0.size, Cache::Uncached).or_fail("map BAR0")?;
    // SAFETY: BAR0 is mapped uncached for the rest of the run. Through this view the tests touch
    // only the CMB registers (CMBLOC, CMBSZ, CMBMSC, CMBSTS), which no queue driver reads or
    // writes.
    let mut n = unsafe { nvme::Nvme::new(&k.pci.ecam, f.bdf, NonNull::new(regs).or_fail("BAR0")?) }
        .or_fail("nvme")?;
    let cmb = n
        .controller_memory_buffer()
        .or_fail("CMB")?
        .or_fail("no CMB (cmb_size_mb)")?;
    Ok((f.bdf, n, cmb))
}

fn nvme_cmb(k: &Kernel) -> Result<(Bdf, u8, u64), Failure> {
    let (bdf, _, cmb) = nvme_cmb_registers(k)?;
    Ok((bdf, cmb.bar, cmb.offset))
}

fn trigger_flr(k: &Kernel) -> TestResult {
    let (bdf, bar, offset) = nvme_cmb(k)?;
    trigger_test(
        k,
        bdf,
        bar,
        offset,
        &mut |p| {
            let done = reset_function(&k.p2p, &k.pci, &mut [p], bdf).or_fail("FLR")?;
            check!(
                matches!(done.method, pci::reset::ResetMethod::FunctionLevel),
                "expected FLR, got {}",
                done.method.name()
            );
            Ok(())
        },
        Some(&mut |_| nvme_cmb(k).map(|_| ())),
        &[MoveEvent::Revoked, MoveEvent::Restored],
    )
}

fn trigger_d3hot(k: &Kernel) -> TestResult {
    let (bdf, bar, offset) = nvme_cmb(k)?;
    trigger_test(
        k,
        bdf,
        bar,
        offset,
        &mut |p| p.enter_d3hot(&k.pci).map(|_| ()).or_fail("D3hot"),
        Some(&mut |p| {
            p.enter_d0(&k.pci).or_fail("D0")?;
            nvme_cmb(k).map(|_| ())
        }),
        &[MoveEvent::Revoked, MoveEvent::Restored],
    )
}

/// Removal is permanent: importers get `Gone`, the handle and attachment fail cleanly after.
fn trigger_removal(k: &Kernel) -> TestResult {
    let bdf = ivshmem_bdf(k)?;
    trigger_test(
        k,
        bdf,
        ivshmem::SHARED_MEMORY_BAR,
        0,
        &mut |p| {
            p.remove(&k.p2p).or_fail("remove")?;
            check!(
                matches!(p.revoke(), Err(crate::devices::p2p::DeviceError::Removed)),
                "removed provider still usable"
            );
            Ok(())
        },
        None,
        &[MoveEvent::Gone],
    )
}

/// Without an IOMMU the ivshmem BAR is beyond edu's 28-bit mask, and MMIO is never bounced:
/// mapping it for edu is refused.
fn no_iommu_refused(k: &Kernel) -> TestResult {
    check!(
        k.iommu.is_none(),
        "this test needs the direct path (no intel-iommu)"
    );
    let imp = importing(k)?;
    let ivsh = ivshmem_bdf(k)?;
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x1000,
            }],
        )
        .or_fail("export")?;
    let att = handle.attach(imp.importer()).or_fail("attach")?;
    let r = att.map(Direction::FromDevice);
    check!(
        matches!(r, Err(DmaError::MmioNeedsBounce { .. })),
        "got {:?}",
        r.map(|m| m.segments().to_vec())
    );
    check_eq!(att.live_mappings(), 0);
    Ok(())
}
