//! NVMe block I/O on QEMU's controller through the DMA API (`nvme` crate's controller on the
//! `dma` crate). The disk image was written by xtask from `nvme::pattern` with the seed the
//! command line gives (`nvme.seed=`, `nvme.blocks=`), so every read is checked byte for byte
//! against the generator; writes are checked twice: read back here, and found in the image
//! file by xtask after QEMU exits (the `NVME-WROTE` lines). `nvme.mode=deferred` runs the
//! controller's group domain with deferred invalidation, `nvme.batch=on` unmaps the completions
//! of each poll as one batch. Evidence is memory contents, the image
//! file and VT-d fault records, never the controller's word alone.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use dma::{
    DeferredPolicy, DeviceConfig, Direction, DmaError, ExportRange, Importer, InvalidationMode,
    MoveEvent, PhysAddr,
};
use iommu_vtd::AccessKind;
use kernel::frames::FrameRequest;
use nvme::controller::{Buffer, Config, ControllerError, Ticket, PAGE_SIZE};
use nvme::pattern;
use nvme::prp::Segment;
use pci::p2p::device_id;
use spin::Mutex;

use super::common::*;
use super::p2p::{bar_view, ivshmem_bdf, nvme_cmb_registers};
use crate::devices::irq as dirq;
use crate::devices::nvme::{self as nvme_dev, Nvme};
use crate::devices::p2p::ProviderDevice;
use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::PhysPages;
use crate::{check, check_eq, kprintln, Kernel};
use kernel::cmdline::CommandLine;

pub const SUITE: Suite = Suite {
    name: "nvme",
    explicit_only: true,
    tests: &[
        Test {
            name: "identify_matches_the_image",
            run: identify_matches_the_image,
        },
        Test {
            name: "sequential_reads_match_the_generator",
            run: sequential_reads_match_the_generator,
        },
        Test {
            name: "scattered_reads_match_the_generator",
            run: scattered_reads_match_the_generator,
        },
        Test {
            name: "queue_depth_32",
            run: queue_depth_32,
        },
        Test {
            name: "untrusted_unaligned_buffer_bounced",
            run: untrusted_unaligned_buffer_bounced,
        },
        Test {
            name: "write_read_back_and_leave_for_xtask",
            run: write_read_back_and_leave_for_xtask,
        },
        Test {
            name: "unmapped_prp_faults",
            run: unmapped_prp_faults,
        },
        Test {
            name: "peer_to_peer_with_ivshmem_bar2_and_revoke",
            run: peer_to_peer_with_ivshmem_bar2_and_revoke,
        },
        Test {
            name: "msix_completions_wake_the_waiter",
            run: msix_completions_wake_the_waiter,
        },
        Test {
            name: "reads_into_its_own_controller_memory_buffer",
            run: reads_into_its_own_controller_memory_buffer,
        },
    ],
};

/// Seed of the pattern the written blocks carry (xtask recomputes it from the NVME-WROTE line).
const WRITE_SEED: u64 = 0x005e_ed0f_b10c;
/// Seed of what the CPU puts into ivshmem's BAR2 for the peer-to-peer write.
const PEER_SEED: u64 = 0x0000_0b42_2b42;

fn seed(k: &Kernel) -> Result<u64, Failure> {
    cmd_u64(k, "nvme.seed").or_fail("nvme.seed= on the command line")
}

fn mode(k: &Kernel) -> InvalidationMode {
    match CommandLine::new(k.boot.cmdline()).value("nvme.mode") {
        Some("deferred") => InvalidationMode::Deferred(DeferredPolicy {
            max_pending: 32,
            max_delay_us: 1000,
        }),
        _ => InvalidationMode::Strict,
    }
}

fn bind_with(k: &Kernel, trusted: bool, mut config: Config) -> Result<Nvme, Failure> {
    // `nvme.batch=on`: completions found by one poll are unmapped under one flush.
    config.batch_unmaps = CommandLine::new(k.boot.cmdline()).value("nvme.batch") == Some("on");
    let dev = DeviceConfig {
        mask: u64::MAX,
        trusted,
        ..DeviceConfig::default()
    };
    // Deferred invalidation is for trusted devices only.
    let mode = if trusted {
        mode(k)
    } else {
        InvalidationMode::Strict
    };
    // SAFETY: each test binds the controller once and drops it before returning.
    let n = unsafe { nvme_dev::bind_first(&k.pci, k.iommu.as_ref(), dev, mode, config) }
        .or_fail("bind nvme")?
        .or_fail("an nvme controller")?;
    Ok(n)
}

fn bind(k: &Kernel) -> Result<Nvme, Failure> {
    bind_with(k, true, Config::default())
}

fn pages(count: usize) -> Result<PhysPages, Failure> {
    PhysPages::alloc(FrameRequest {
        count,
        ..FrameRequest::one()
    })
    .or_fail("pages")
}

/// Checks `len` bytes at `at` against the image's pattern for block `lba` on.
fn check_blocks(at: *const u8, len: usize, seed: u64, lba: u64, bs: u64) -> TestResult {
    // SAFETY: `at` points into pages this test owns; the command that filled them completed
    // (and its mapping was undone), so the device no longer writes them.
    let got = unsafe { core::slice::from_raw_parts(at, len) };
    if let Some(i) = pattern::first_mismatch(seed, lba * bs, got) {
        return Err(Failure::new(alloc::format!(
            "byte {i} of the read at LBA {lba} differs from the image ({:#04x}, expected {:#04x})",
            got[i],
            pattern::byte(seed, lba * bs + i as u64)
        )));
    }
    Ok(())
}

fn identify_matches_the_image(k: &Kernel) -> TestResult {
    let n = bind(k)?;
    let info = n.ctrl.info().or_fail("identify")?;
    kprintln!(
        "  {} {}: model {:?}, serial {:?}, firmware {:?}, {} blocks of {} bytes, MDTS {:?}, {} I/O queue(s), {}",
        n.bdf,
        if n.dma.hw.is_some() { "behind the IOMMU" } else { "direct" },
        info.model.as_str(),
        info.serial.as_str(),
        info.firmware.as_str(),
        info.namespace.blocks,
        info.namespace.block_size,
        info.max_transfer,
        n.ctrl.io_queues(),
        n.ctrl.capabilities()
    );
    check_eq!(info.vendor_id, nvme::VENDOR_ID);
    check_eq!(Some(info.namespace.blocks), cmd_u64(k, "nvme.blocks"));
    check_eq!(info.namespace.block_size, 512);
    check_eq!(info.serial.as_str(), "vtd0nvme");
    Ok(())
}

/// Reads of 1, 8, 9, 16, 24, 255 and 256 blocks (PRP1 only, PRP2 as a page, PRP lists),
/// at page-aligned and mid-page buffer offsets.
fn sequential_reads_match_the_generator(k: &Kernel) -> TestResult {
    let mut n = bind(k)?;
    let seed = seed(k)?;
    let bs = n.ctrl.namespace().or_fail("namespace")?.block_size;
    let buf = pages(40)?;
    let mut total = 0;
    for (lba, blocks, offset) in [
        (0, 1, 0),
        (1, 8, 0),
        (100, 9, 0),
        (333, 16, 512),
        (1000, 24, 2048),
        (2047, 255, 3584),
        (4096, 256, 0),
    ] {
        let len = blocks * bs;
        let at = buf.paddr() + offset;
        n.ctrl
            .read(lba, blocks, Buffer::Phys(PhysAddr::new(at)), len)
            .or_fail("read")?;
        check_blocks(at as *const u8, len as usize, seed, lba, bs)?;
        total += len;
    }
    kprintln!("  {total} bytes in 7 reads match the image");
    Ok(())
}

/// One read into a scatter list of separately allocated pages (page-contiguous in PRP terms:
/// the first entry starts mid-page, the last ends early), at random LBAs.
fn scattered_reads_match_the_generator(k: &Kernel) -> TestResult {
    let mut n = bind(k)?;
    let seed = seed(k)?;
    let ns = n.ctrl.namespace().or_fail("namespace")?;
    let bs = ns.block_size;
    let chunks: Vec<PhysPages> = (0..6).map(|_| pages(2)).collect::<Result<_, _>>()?;
    let list = [
        (PhysAddr::new(chunks[0].paddr() + 3584), 512),
        (PhysAddr::new(chunks[1].paddr()), PAGE_SIZE),
        (PhysAddr::new(chunks[2].paddr()), 2 * PAGE_SIZE),
        (PhysAddr::new(chunks[3].paddr()), PAGE_SIZE),
        (PhysAddr::new(chunks[4].paddr()), 1536),
    ];
    let len: u64 = list.iter().map(|l| l.1).sum();
    let blocks = len / bs;
    let mut x = seed;
    for _ in 0..8 {
        x = pattern::mix(x);
        let lba = x % (ns.blocks - blocks);
        n.ctrl
            .read(lba, blocks, Buffer::PhysList(&list), len)
            .or_fail("scattered read")?;
        let mut at = lba * bs;
        for &(p, l) in &list {
            check_blocks(p.as_u64() as *const u8, l as usize, seed, at / bs, bs)
                .map_err(|_| Failure::new(alloc::format!("scatter entry at {p} (LBA {lba})")))?;
            at += l;
        }
    }
    kprintln!("  8 reads of {blocks} blocks into 5 scattered entries match the image");
    Ok(())
}

/// 32 reads in flight at once on one queue, completed in any order, then each checked.
fn queue_depth_32(k: &Kernel) -> TestResult {
    let mut n = bind(k)?;
    let seed = seed(k)?;
    let ns = n.ctrl.namespace().or_fail("namespace")?;
    let buf = pages(32)?;
    let mut x = seed ^ 0x32;
    let mut issued: Vec<(u64, u64, Ticket)> = Vec::new();
    for i in 0..32u64 {
        x = pattern::mix(x);
        let lba = x % (ns.blocks - 8);
        let at = buf.paddr() + i * PAGE_SIZE;
        let t = n
            .ctrl
            .submit_io(0, false, lba, 8, Buffer::Phys(PhysAddr::new(at)), 4096)
            .or_fail("submit")?;
        issued.push((lba, at, t));
    }
    let peak = n.ctrl.in_flight(0);
    for (lba, at, t) in issued.into_iter().rev() {
        n.ctrl.wait(t).or_fail("completion")?;
        check_blocks(at as *const u8, 4096, seed, lba, ns.block_size)?;
    }
    check_eq!(n.ctrl.in_flight(0), 0);
    kprintln!("  32 reads submitted before the first was reaped ({peak} in flight), all match");
    check_eq!(peak, 32);
    Ok(())
}

/// An untrusted controller reading into a buffer that starts mid-page: the DMA API bounces it
/// through a page-exclusive slot, so the bytes around the buffer in its page stay as they were.
fn untrusted_unaligned_buffer_bounced(k: &Kernel) -> TestResult {
    if k.iommu.is_none() {
        kprintln!("  no IOMMU: sub-page isolation does not apply; checked on the direct path only");
    }
    let mut n = bind_with(k, k.iommu.is_none(), Config::default())?;
    let seed = seed(k)?;
    let mut page = pages(1)?;
    page.as_mut_slice().fill(0xee);
    let at = page.paddr() + 0x104;
    n.ctrl
        .read(77, 3, Buffer::Phys(PhysAddr::new(at)), 1536)
        .or_fail("read")?;
    check_blocks(at as *const u8, 1536, seed, 77, 512)?;
    let s = page.as_slice();
    check!(
        s[..0x104]
            .iter()
            .chain(&s[0x104 + 1536..])
            .all(|&b| b == 0xee),
        "bytes around the buffer changed"
    );
    Ok(())
}

/// Writes 64 blocks with another seed, reads them back, and prints the line xtask checks the
/// image file against.
fn write_read_back_and_leave_for_xtask(k: &Kernel) -> TestResult {
    let mut n = bind(k)?;
    let ns = n.ctrl.namespace().or_fail("namespace")?;
    let (lba, blocks) = (ns.blocks / 2 + 3, 64);
    let len = blocks * ns.block_size;
    let mut src = pages(8)?;
    pattern::fill(
        WRITE_SEED,
        lba * ns.block_size,
        &mut src.as_mut_slice()[..len as usize],
    );
    n.ctrl
        .write(lba, blocks, Buffer::Phys(PhysAddr::new(src.paddr())), len)
        .or_fail("write")?;
    n.ctrl.flush().or_fail("flush")?;
    let dst = pages(8)?;
    n.ctrl
        .read(lba, blocks, Buffer::Phys(PhysAddr::new(dst.paddr())), len)
        .or_fail("read back")?;
    check_blocks(dst.as_ptr(), len as usize, WRITE_SEED, lba, ns.block_size)?;
    kprintln!("NVME-WROTE lba={lba} blocks={blocks} seed={WRITE_SEED:#x}");
    Ok(())
}

/// A read whose PRP names an IOVA nothing is mapped at: the controller's write is blocked and
/// recorded by VT-d (its requester ID, that page, a write) and a mapped neighbour buffer is
/// untouched (QEMU completes that read with success status: `NVME-QEMU-LIMIT`); a read whose
/// PRP list is at that IOVA completes with Data Transfer Error and a recorded read fault; the
/// next read works.
fn unmapped_prp_faults(k: &Kernel) -> TestResult {
    iommu(k)?;
    let mut n = bind(k)?;
    let seed = seed(k)?;
    clear_faults(k)?;
    let mut canary = pages(1)?;
    canary.as_mut_slice().fill(0x5a);
    let dir = dma::Direction::FromDevice;
    let keep = n
        .dma
        .dev
        .map_phys(
            PhysAddr::new(canary.paddr()),
            PAGE_SIZE,
            dir,
            dma::Attrs::empty(),
        )
        .or_fail("map canary")?;
    // An IOVA that was mapped a moment ago and is not any more (strict unmap: flushed); nothing
    // maps in between, so the controller's write there has no translation.
    let probe = PhysPages::alloc(FrameRequest::one()).or_fail("probe page")?;
    let gone = n
        .dma
        .dev
        .map_phys(
            PhysAddr::new(probe.paddr()),
            PAGE_SIZE,
            dir,
            dma::Attrs::empty(),
        )
        .or_fail("map probe")?;
    let hole = gone.dma_addr().as_u64();
    gone.unmap().or_fail("unmap probe")?;
    // Deferred mode: the unmap is quarantined until flushed; flush so the IOTLB forgets it.
    if let Some(d) = n.dma.dev.domain() {
        d.flush_deferred().or_fail("flush deferred")?;
    }
    let got = n
        .ctrl
        .read(0, 8, Buffer::Dma(&[Segment::new(hole, 4096)]), 4096);
    // QEMU 7.2's controller maps PRPs through a bounce buffer when the IOMMU refuses them and
    // drops the data, so the command completes successfully; a controller that reports the
    // failure must report it as a status, never as anything else.
    match got {
        Ok(()) => kprintln!(
            "NVME-QEMU-LIMIT read into unmapped IOVA {hole:#x} completed with success status (data dropped by QEMU)"
        ),
        Err(ControllerError::Command(e)) => kprintln!("  read into unmapped IOVA {hole:#x}: {e}"),
        Err(e) => return Err(Failure::new(alloc::format!("unexpected error {e}"))),
    }
    check!(
        probe.as_slice().iter().all(|&b| b == 0),
        "the unmapped page was written"
    );
    let f = faults(k)?;
    let rid = k
        .pci
        .topology
        .iommu_source_id(n.bdf)
        .or_fail("source id")?
        .requester_id();
    check!(!f.is_empty(), "no VT-d fault recorded");
    check!(
        f.iter()
            .all(|r| r.source == rid && r.address == hole && r.access == AccessKind::Write),
        "unexpected fault records: {f:?}"
    );
    keep.unmap().or_fail("unmap canary")?;
    check!(
        canary.as_slice().iter().all(|&b| b == 0x5a),
        "canary changed"
    );
    // A read of three pages whose PRP list (PRP2) sits at the unmapped IOVA: the controller
    // cannot fetch the list, VT-d records its read, and the command fails with a status.
    let mut cmd = nvme::command::Command::read_write(false, 1, 0, 24);
    cmd.set_prps(&nvme::prp::Prps {
        prp1: hole,
        prp2: hole,
        list_entries: 2,
        list_pages: 1,
    });
    let t = n.ctrl.submit_command(0, cmd).or_fail("submit")?;
    let got = n.ctrl.wait(t).map(|_| ());
    kprintln!("  read whose PRP list is at unmapped IOVA {hole:#x}: {got:?}");
    check_eq!(
        got,
        Err(ControllerError::Command(
            nvme::status::CommandError::DataTransfer
        ))
    );
    let f = faults(k)?;
    check!(
        f.iter()
            .any(|r| r.source == rid && r.address == hole && r.access == AccessKind::Read),
        "no VT-d read fault for the PRP list: {f:?}"
    );
    check!(
        probe.as_slice().iter().all(|&b| b == 0),
        "the unmapped page was written"
    );
    let buf = pages(1)?;
    n.ctrl
        .read(8, 8, Buffer::Phys(PhysAddr::new(buf.paddr())), 4096)
        .or_fail("read after the fault")?;
    check_blocks(buf.as_ptr(), 4096, seed, 8, 512)?;
    clear_faults(k)
}

/// NVMe ↔ ivshmem BAR2 through an export handle (THRU_HOST_BRIDGE under the IOMMU): a read of
/// 128 blocks lands in the BAR with the disk's bytes; a write from the BAR puts the BAR's bytes
/// on disk (read back here, found in the image by xtask). Then a read is queued and the export
/// revoked at once: after revoke returns (importer notified once) the BAR is zeroed and stays
/// zero when the queued command completes; a command issued with the stale mapping is refused
/// with `Revoked` and reaches nothing; after restore a new mapping's read lands again.
fn peer_to_peer_with_ivshmem_bar2_and_revoke(k: &Kernel) -> TestResult {
    iommu(k)?;
    clear_faults(k)?;
    let mut n = bind(k)?;
    let seed = seed(k)?;
    let ns = n.ctrl.namespace().or_fail("namespace")?;
    let bs = ns.block_size;
    let ivsh = ivshmem_bdf(k)?;
    let mut view = bar_view(k, ivsh, ivshmem::SHARED_MEMORY_BAR)?;
    const SPAN: u64 = 0x10000;
    view.fill(0, SPAN as usize, 0).or_fail("zero BAR")?;
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, ivsh).or_fail("provider")?;
    let handle = prov
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: SPAN,
            }],
        )
        .or_fail("export")?;
    let events: Arc<Mutex<Vec<MoveEvent>>> = Arc::new(Mutex::new(Vec::new()));
    let importer = || {
        let events = events.clone();
        Importer {
            id: device_id(n.bdf),
            dev: n.dma.dev.clone(),
            peer_to_peer: true,
            move_notify: Box::new(move |e| events.lock().push(e)),
        }
    };
    let att = handle.attach(importer()).or_fail("attach")?;
    let m = att.map(Direction::Bidirectional).or_fail("map BAR2")?;
    let bar_bus = m.segments()[0].addr;
    kprintln!(
        "  ivshmem {ivsh} BAR2 for nvme {}: {:?} at {bar_bus}",
        n.bdf,
        att.map_type()
    );

    // Disk -> BAR2.
    let lba = 1234;
    n.ctrl
        .read(
            lba,
            SPAN / bs,
            Buffer::Peer {
                mapping: &m,
                offset: 0,
            },
            SPAN,
        )
        .or_fail("read into BAR2")?;
    let mut got = alloc::vec![0u8; SPAN as usize];
    view.read_bytes(0, &mut got).or_fail("read BAR")?;
    check!(
        pattern::first_mismatch(seed, lba * bs, &got).is_none(),
        "BAR2 does not hold the disk's blocks"
    );

    // BAR2 -> disk.
    let (wlba, wblocks) = (ns.blocks / 2 + 200, 64);
    let wlen = wblocks * bs;
    let mut src = alloc::vec![0u8; wlen as usize];
    pattern::fill(PEER_SEED, wlba * bs, &mut src);
    view.write_bytes(0, &src).or_fail("fill BAR")?;
    let part = [Segment::new(bar_bus.as_u64(), wlen)];
    n.ctrl
        .write(wlba, wblocks, Buffer::Dma(&part), wlen)
        .or_fail("write from BAR2")?;
    let back = pages(8)?;
    n.ctrl
        .read(
            wlba,
            wblocks,
            Buffer::Phys(PhysAddr::new(back.paddr())),
            wlen,
        )
        .or_fail("read back")?;
    check_blocks(back.as_ptr(), wlen as usize, PEER_SEED, wlba, bs)?;
    kprintln!("NVME-WROTE lba={wlba} blocks={wblocks} seed={PEER_SEED:#x}");
    check!(faults(k)?.is_empty(), "unexpected VT-d faults");

    // A read queued (written to the submission queue, the doorbell held back by plugging),
    // then revoke, then the doorbell: the controller runs the command only after revoke
    // returned, so its write must be blocked.
    view.fill(0, SPAN as usize, 0).or_fail("zero BAR")?;
    n.ctrl.plug(0).or_fail("plug")?;
    let queued = n
        .ctrl
        .submit_io(
            0,
            false,
            77,
            8,
            Buffer::Peer {
                mapping: &m,
                offset: 0x1000,
            },
            4096,
        )
        .or_fail("queue a read")?;
    let stats = prov.revoke().or_fail("revoke")?;
    check_eq!(stats.notified, 1);
    check_eq!(*events.lock(), alloc::vec![MoveEvent::Revoked]);
    check!(m.is_stale(), "mapping not stale after revoke");
    n.ctrl.unplug(0).or_fail("unplug")?;
    let r = n.ctrl.wait(queued);
    view.read_bytes(0, &mut got).or_fail("read BAR")?;
    check!(
        got.iter().all(|&b| b == 0),
        "bytes landed in BAR2 after revoke returned"
    );
    match r {
        Ok(_) => kprintln!(
            "NVME-QEMU-LIMIT the read queued before revoke completed with success status; its data was blocked"
        ),
        Err(e) => kprintln!("  the read queued before revoke failed: {e}"),
    }
    let blocked = faults(k)?;
    let iova = m.segments()[0].addr.as_u64() + 0x1000;
    check!(
        blocked
            .iter()
            .any(|f| f.address == iova && f.access == AccessKind::Write),
        "no VT-d fault for the queued read at {iova:#x}: {blocked:?}"
    );
    let before = n.ctrl.in_flight(0);
    check_eq!(
        n.ctrl
            .submit_io(
                0,
                false,
                77,
                8,
                Buffer::Peer {
                    mapping: &m,
                    offset: 0x1000
                },
                4096
            )
            .err(),
        Some(ControllerError::Dma(DmaError::Revoked))
    );
    check_eq!(n.ctrl.in_flight(0), before);
    drop(m);

    // Restore: a new mapping's read lands.
    prov.restore().or_fail("restore")?;
    check_eq!(
        *events.lock(),
        alloc::vec![MoveEvent::Revoked, MoveEvent::Restored]
    );
    let m2 = att
        .map(Direction::FromDevice)
        .or_fail("map after restore")?;
    n.ctrl
        .read(
            77,
            8,
            Buffer::Peer {
                mapping: &m2,
                offset: 0,
            },
            4096,
        )
        .or_fail("read after restore")?;
    view.read_bytes(0, &mut got[..4096]).or_fail("read BAR")?;
    check!(
        pattern::first_mismatch(seed, 77 * bs, &got[..4096]).is_none(),
        "the read after restore did not land"
    );
    kprintln!("  BAR2 held the disk's 64 KiB, the disk got BAR2's 32 KiB; revoke cut the queued read off; restore works");
    clear_faults(k)
}

/// Interrupts per MSI-X table entry of the controller (0: admin, 1: I/O queue 1), and the vector
/// the last I/O completion interrupt arrived on.
static NVME_HITS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static NVME_VECTOR: AtomicU8 = AtomicU8::new(0);

fn admin_irq(_: u8) {
    NVME_HITS[0].fetch_add(1, Ordering::AcqRel);
}

fn io_irq(v: u8) {
    NVME_VECTOR.store(v, Ordering::Relaxed);
    NVME_HITS[1].fetch_add(1, Ordering::AcqRel);
}

/// Sleeps until the next interrupt (interrupts are on in test context).
fn halt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// I/O completion queues created with interrupts on MSI-X entry 1 (remapped through an IRTE
/// naming the controller when the unit remaps): a read waited for with `hlt` between polls is
/// woken by the completion's interrupt, on the programmed vector; 32 reads in flight raise at
/// least one and at most 32; the data is the disk's. Control: the same MSI-X programming with
/// the queues created without interrupts receives none.
fn msix_completions_wake_the_waiter(k: &Kernel) -> TestResult {
    let seed = seed(k)?;
    let config = Config {
        interrupts: true,
        ..Config::default()
    };
    // MSI-X is enabled before the controller creates its completion queues: a controller may
    // refuse an interrupt vector while MSI-X is off (QEMU does: Invalid Interrupt Vector).
    let bdf = k
        .pci
        .topology
        .functions_sorted()
        .find(|f| nvme::matches(f))
        .or_fail("an nvme controller")?
        .bdf;
    let m = dirq::request_msix(&k.pci, k.iommu.as_ref(), bdf, &[admin_irq, io_irq])
        .or_fail("request_msix")?;
    let mut n = bind_with(k, true, config)?;
    let vector = m.vector(1).or_fail("I/O vector")?;
    kprintln!(
        "  nvme {} MSI-X entry 1 -> vector {vector:#x} ({})",
        n.bdf,
        if m.vectors().remapped().is_some() {
            "remapped through its IRTE"
        } else {
            "compatibility format"
        }
    );
    let buf = pages(32)?;
    let before = NVME_HITS[1].load(Ordering::Acquire);
    let t = n
        .ctrl
        .submit_io(
            0,
            false,
            5,
            8,
            Buffer::Phys(PhysAddr::new(buf.paddr())),
            4096,
        )
        .or_fail("submit")?;
    n.ctrl.wait_with(t, halt).or_fail("read")?;
    check!(
        NVME_HITS[1].load(Ordering::Acquire) > before,
        "the completion raised no interrupt"
    );
    check_eq!(NVME_VECTOR.load(Ordering::Relaxed), vector);
    check_blocks(buf.as_ptr(), 4096, seed, 5, 512)?;
    let before = NVME_HITS[1].load(Ordering::Acquire);
    let mut tickets = Vec::new();
    for i in 0..32u64 {
        let at = PhysAddr::new(buf.paddr() + i * PAGE_SIZE);
        tickets.push(
            n.ctrl
                .submit_io(0, false, i * 8, 8, Buffer::Phys(at), 4096)
                .or_fail("submit")?,
        );
    }
    for t in tickets {
        n.ctrl.wait_with(t, halt).or_fail("read")?;
    }
    let hits = NVME_HITS[1].load(Ordering::Acquire) - before;
    kprintln!("  32 reads in flight: {hits} completion interrupts");
    check!(
        (1..=32).contains(&hits),
        "{hits} interrupts for 32 completions"
    );
    for i in 0..32u64 {
        check_blocks(
            (buf.paddr() + i * PAGE_SIZE) as *const u8,
            4096,
            seed,
            i * 8,
            512,
        )?;
    }
    drop(n);
    drop(m);

    // Control: interrupts not enabled on the queues.
    let m = dirq::request_msix(&k.pci, k.iommu.as_ref(), bdf, &[admin_irq, io_irq])
        .or_fail("request_msix")?;
    let mut n = bind_with(k, true, Config::default())?;
    let before = NVME_HITS[1].load(Ordering::Acquire);
    n.ctrl
        .read(9, 8, Buffer::Phys(PhysAddr::new(buf.paddr())), 4096)
        .or_fail("polled read")?;
    crate::arch::time::delay_us(20_000);
    check_eq!(NVME_HITS[1].load(Ordering::Acquire), before);
    drop(n);
    drop(m);
    Ok(())
}

/// The controller memory buffer as a provider the controller itself targets: BAR2's CMB is
/// exported, the controller attached to it as an importer (same function: a bus address, as
/// Linux's p2pdma classifies it), CMBMSC told where the CMB sits (CBA, CMSE), and a read whose
/// PRPs name the CMB lands there (the controller keeps such transfers inside itself, never
/// through the IOMMU); a write from the CMB puts its bytes on disk. Revoke: the stale mapping is
/// refused.
fn reads_into_its_own_controller_memory_buffer(k: &Kernel) -> TestResult {
    let seed = seed(k)?;
    let mut n = bind(k)?;
    let ns = n.ctrl.namespace().or_fail("namespace")?;
    let bs = ns.block_size;
    let (bdf, mut cmb_regs, cmb) = nvme_cmb_registers(k)?;
    check_eq!(bdf, n.bdf);
    let mut prov = ProviderDevice::new(&k.p2p, &k.pci, n.bdf).or_fail("provider")?;
    const SPAN: u64 = 0x10000;
    let handle = prov
        .export(
            &k.pci,
            cmb.bar,
            &[ExportRange {
                offset: cmb.offset,
                len: SPAN,
            }],
        )
        .or_fail("export the CMB")?;
    let events: Arc<Mutex<Vec<MoveEvent>>> = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let att = handle
        .attach(Importer {
            id: device_id(n.bdf),
            dev: n.dma.dev.clone(),
            peer_to_peer: true,
            move_notify: Box::new(move |e| ev.lock().push(e)),
        })
        .or_fail("attach the controller to its own CMB")?;
    let m = att.map(Direction::Bidirectional).or_fail("map the CMB")?;
    let bus = m.segments()[0].addr.as_u64();
    kprintln!(
        "  nvme {} CMB: BAR{} + {:#x}, {} KiB, {:?} at bus address {bus:#x}",
        n.bdf,
        cmb.bar,
        cmb.offset,
        cmb.size / 1024,
        att.map_type()
    );
    check_eq!(att.map_type(), dma::p2p::MapType::BusAddr);
    // The controller must know its CMB's bus address to keep those transfers inside.
    cmb_regs
        .enable_cmb_controller_space(bus - cmb.offset)
        .or_fail("CMBMSC")?;
    let mut view = bar_view(k, n.bdf, cmb.bar)?;
    view.fill(cmb.offset as usize, SPAN as usize, 0)
        .or_fail("zero the CMB")?;
    let lba = 640;
    n.ctrl
        .read(
            lba,
            SPAN / bs,
            Buffer::Peer {
                mapping: &m,
                offset: 0,
            },
            SPAN,
        )
        .or_fail("read into the CMB")?;
    let mut got = alloc::vec![0u8; SPAN as usize];
    view.read_bytes(cmb.offset as usize, &mut got)
        .or_fail("read the CMB")?;
    check!(
        pattern::first_mismatch(seed, lba * bs, &got).is_none(),
        "the CMB does not hold the disk's blocks"
    );
    // CMB -> disk.
    let (wlba, wblocks) = (ns.blocks / 2 + 400, 32);
    let wlen = wblocks * bs;
    let mut src = alloc::vec![0u8; wlen as usize];
    pattern::fill(PEER_SEED ^ 1, wlba * bs, &mut src);
    view.write_bytes(cmb.offset as usize, &src)
        .or_fail("fill the CMB")?;
    n.ctrl
        .write(
            wlba,
            wblocks,
            Buffer::Peer {
                mapping: &m,
                offset: 0,
            },
            wlen,
        )
        .or_fail("write from the CMB")?;
    let back = pages(4)?;
    n.ctrl
        .read(
            wlba,
            wblocks,
            Buffer::Phys(PhysAddr::new(back.paddr())),
            wlen,
        )
        .or_fail("read back")?;
    check_blocks(back.as_ptr(), wlen as usize, PEER_SEED ^ 1, wlba, bs)?;
    kprintln!(
        "NVME-WROTE lba={wlba} blocks={wblocks} seed={:#x}",
        PEER_SEED ^ 1
    );
    prov.revoke().or_fail("revoke")?;
    check_eq!(*events.lock(), alloc::vec![MoveEvent::Revoked]);
    check_eq!(
        n.ctrl
            .submit_io(
                0,
                false,
                lba,
                8,
                Buffer::Peer {
                    mapping: &m,
                    offset: 0
                },
                4096
            )
            .err(),
        Some(ControllerError::Dma(DmaError::Revoked))
    );
    kprintln!("  64 KiB read into the controller's own CMB and 16 KiB written from it; revoke refused the stale mapping");
    Ok(())
}
