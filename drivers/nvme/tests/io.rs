//! The queue-running driver against the fake controller behind a fake IOMMU domain: identify,
//! reads and writes of every buffer shape (single page, PRP lists, scatter lists, bounced
//! sub-page buffers of an untrusted device), queue wrap-around and many commands in flight,
//! typed errors with nothing submitted, a PRP at an unmapped address, and the timeout paths
//! (abort honoured, abort ignored → controller reset, a controller that never becomes ready).
//! Evidence is the fake's memory, its disk and the IOMMU domain's page table.

mod fake;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dma::testing::Fixture;
use dma::{Clock, DeviceConfig, InvalidationMode, PhysAddr, PhysMemory};
use fake::{pattern, FakeNvme};
use nvme::command::nvm;
use nvme::controller::{Buffer, Config, Controller, ControllerError, PAGE_SIZE};
use nvme::prp::{PrpError, Segment};
use nvme::status::CommandError;

/// A clock that moves 50 µs every time it is read, so spinning waits reach their timeouts.
struct TickClock(AtomicU64);
impl Clock for TickClock {
    fn now_us(&self) -> u64 {
        self.0.fetch_add(50, Ordering::Relaxed)
    }
}

const BLOCKS: u64 = 4096;

struct Rig {
    fx: Fixture,
    fake: FakeNvme,
    ctrl: Controller<FakeNvme>,
}

fn rig_with(
    cfg: DeviceConfig,
    config: Config,
    tweak: impl FnOnce(&FakeNvme),
) -> Result<Rig, ControllerError> {
    let fx = Fixture::iommu(cfg, InvalidationMode::Strict).expect("fixture");
    let fake = FakeNvme::new(fx.hw.clone().expect("iommu"), fx.phys.clone(), BLOCKS);
    tweak(&fake);
    let clock: Arc<dyn Clock> = Arc::new(TickClock(AtomicU64::new(0)));
    let ctrl = Controller::new(fake.clone(), fx.dev.clone(), clock, config)?;
    Ok(Rig { fx, fake, ctrl })
}

fn rig() -> Rig {
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask").trusted();
    rig_with(cfg, Config::default(), |_| ()).expect("controller up")
}

fn alloc(fx: &Fixture, bytes: u64) -> PhysAddr {
    fx.phys
        .alloc_pages(bytes.div_ceil(PAGE_SIZE), u64::MAX)
        .expect("fake RAM")
}

fn expected(lba: u64, blocks: u64) -> Vec<u8> {
    (lba * 512..(lba + blocks) * 512).map(pattern).collect()
}

#[test]
fn identify_reports_the_namespace() {
    let r = rig();
    let info = r.ctrl.info().expect("identified");
    assert_eq!(info.vendor_id, 0x1b36);
    assert_eq!(info.serial.as_str(), "FAKE0001");
    assert_eq!(info.model.as_str(), "Fake NVMe");
    assert_eq!(info.max_transfer, Some(32 * 4096));
    assert_eq!(info.namespace.block_size, 512);
    assert_eq!(info.namespace.blocks, BLOCKS);
    assert_eq!(r.ctrl.io_queues(), 1);
}

#[test]
fn reads_of_every_length_land_exactly() {
    let mut r = rig();
    // 1 block (PRP1 only), 8 (one page), 9 and 16 (PRP2 = second page), 24 and 256 (PRP list).
    for (lba, blocks) in [(0, 1), (7, 8), (100, 9), (33, 16), (200, 24), (1000, 256)] {
        let len = blocks * 512;
        let buf = alloc(&r.fx, len);
        r.ctrl
            .read(lba, blocks, Buffer::Phys(buf), len)
            .expect("read");
        assert_eq!(
            r.fx.phys.bytes(buf.as_u64(), len as usize),
            expected(lba, blocks),
            "lba {lba} x{blocks}"
        );
    }
    assert!(r.fake.st.lock().unwrap().faults.is_empty());
}

#[test]
fn data_mappings_end_with_their_commands() {
    let mut r = rig();
    let baseline = r.fx.hw().entries();
    let buf = alloc(&r.fx, 64 * 1024);
    r.ctrl
        .read(0, 128, Buffer::Phys(buf), 64 * 1024)
        .expect("read");
    assert_eq!(
        r.fx.hw().entries(),
        baseline,
        "the data pages are unmapped again"
    );
}

#[test]
fn scatter_lists_and_writes_round_trip() {
    let mut r = rig();
    let pages: Vec<PhysAddr> = (0..5).map(|_| alloc(&r.fx, 2 * PAGE_SIZE)).collect();
    // Page-contiguous in PRP terms: the first starts mid-page, the middle ones are whole pages,
    // the last ends early.
    let list = [
        (PhysAddr::new(pages[0].as_u64() + 3584), 512),
        (pages[1], PAGE_SIZE),
        (pages[2], 2 * PAGE_SIZE),
        (pages[3], 3 * 512),
    ];
    let len: u64 = list.iter().map(|l| l.1).sum();
    let blocks = len / 512;
    for (i, &(p, l)) in list.iter().enumerate() {
        r.fx.phys.fill(p.as_u64(), l as usize, 0x40 + i as u8);
    }
    r.ctrl
        .write(50, blocks, Buffer::PhysList(&list), len)
        .expect("write");
    let disk = r.fake.st.lock().unwrap().disk[50 * 512..(50 + blocks as usize) * 512].to_vec();
    let mut want = Vec::new();
    for (i, &(_, l)) in list.iter().enumerate() {
        want.extend(std::iter::repeat_n(0x40 + i as u8, l as usize));
    }
    assert_eq!(disk, want);
    // And back into a single buffer.
    let back = alloc(&r.fx, len);
    r.ctrl
        .read(50, blocks, Buffer::Phys(back), len)
        .expect("read");
    assert_eq!(r.fx.phys.bytes(back.as_u64(), len as usize), want);
    r.ctrl.flush().expect("flush");
}

#[test]
fn an_untrusted_device_reads_a_sub_page_buffer_through_a_bounce_slot() {
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask");
    let mut r = rig_with(cfg, Config::default(), |_| ()).expect("controller");
    let page = alloc(&r.fx, PAGE_SIZE);
    r.fx.phys.fill(page.as_u64(), PAGE_SIZE as usize, 0xee);
    let buf = PhysAddr::new(page.as_u64() + 0x104);
    r.ctrl.read(3, 2, Buffer::Phys(buf), 1024).expect("read");
    let got = r.fx.phys.bytes(page.as_u64(), PAGE_SIZE as usize);
    assert_eq!(&got[0x104..0x504], expected(3, 2).as_slice());
    assert!(
        got[..0x104].iter().chain(&got[0x504..]).all(|&b| b == 0xee),
        "bytes around the buffer untouched"
    );
    // The controller wrote into a bounce slot, never into the caller's page itself.
    assert!(r.fake.st.lock().unwrap().faults.is_empty());
}

#[test]
fn many_commands_in_flight_and_the_rings_wrap() {
    let config = Config {
        io_queue_size: 16,
        ..Config::default()
    };
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask").trusted();
    let mut r = rig_with(cfg, config, |_| ()).expect("controller");
    let bufs: Vec<PhysAddr> = (0..15).map(|_| alloc(&r.fx, 4096)).collect();
    for round in 0..40u64 {
        let mut tickets = Vec::new();
        for (i, &b) in bufs.iter().enumerate() {
            let lba = (round * 15 + i as u64) % (BLOCKS - 8);
            tickets.push((
                lba,
                b,
                r.ctrl
                    .submit_io(0, false, lba, 8, Buffer::Phys(b), 4096)
                    .expect("submit"),
            ));
        }
        assert_eq!(r.ctrl.in_flight(0), 15);
        // The 16-entry ring holds 15: one more is refused, nothing submitted.
        assert!(matches!(
            r.ctrl.submit_io(0, false, 0, 1, Buffer::Phys(bufs[0]), 512),
            Err(ControllerError::Queue(_))
        ));
        for (lba, b, t) in tickets.into_iter().rev() {
            r.ctrl.wait(t).expect("completed");
            assert_eq!(r.fx.phys.bytes(b.as_u64(), 4096), expected(lba, 8));
        }
        assert_eq!(r.ctrl.in_flight(0), 0);
    }
}

#[test]
fn bad_requests_are_refused_with_nothing_submitted() {
    let mut r = rig();
    let buf = alloc(&r.fx, 1 << 20);
    let before = r.fake.st.lock().unwrap().commands.len();
    let entries = r.fx.hw().entries();
    let cases = [(BLOCKS - 1, 2, 1024), (0, 0, 0), (u64::MAX, 1, 512)];
    for (lba, blocks, len) in cases {
        assert!(matches!(
            r.ctrl.read(lba, blocks, Buffer::Phys(buf), len),
            Err(ControllerError::OutOfRange { .. })
        ));
    }
    assert_eq!(
        r.ctrl.read(0, 2, Buffer::Phys(buf), 512),
        Err(ControllerError::BadLength {
            len: 512,
            expected: 1024
        })
    );
    assert!(matches!(
        r.ctrl.read(0, 512, Buffer::Phys(buf), 512 * 512),
        Err(ControllerError::TooLarge { max: 131072, .. })
    ));
    let gap = [
        Segment::new(0x1000_0000, 512),
        Segment::new(0x2000_0000, 512),
    ];
    assert!(matches!(
        r.ctrl.read(0, 2, Buffer::Dma(&gap), 1024),
        Err(ControllerError::Prp(PrpError::GapAfter { index: 0, .. }))
    ));
    assert_eq!(
        r.fake.st.lock().unwrap().commands.len(),
        before,
        "nothing reached the controller"
    );
    assert_eq!(r.fx.hw().entries(), entries, "nothing stayed mapped");
    assert_eq!(r.ctrl.in_flight(0), 0);
}

#[test]
fn a_prp_at_an_unmapped_address_faults_and_fails_the_command() {
    let mut r = rig();
    let seg = [Segment::new(0x7777_0000, 4096)];
    assert_eq!(
        r.ctrl.read(0, 8, Buffer::Dma(&seg), 4096),
        Err(ControllerError::Command(CommandError::DataTransfer))
    );
    assert_eq!(r.fake.st.lock().unwrap().faults, [0x7777_0000]);
    // The queue still works.
    let buf = alloc(&r.fx, 4096);
    r.ctrl
        .read(8, 8, Buffer::Phys(buf), 4096)
        .expect("read after the fault");
    assert_eq!(r.fx.phys.bytes(buf.as_u64(), 4096), expected(8, 8));
}

#[test]
fn a_timed_out_command_is_aborted() {
    let mut r = rig();
    let baseline = r.fx.hw().entries();
    {
        let mut st = r.fake.st.lock().unwrap();
        st.hang_opcode = Some(nvm::READ);
        st.abort_works = true;
    }
    let buf = alloc(&r.fx, 4096);
    let got = r.ctrl.read(0, 8, Buffer::Phys(buf), 4096);
    assert_eq!(
        got,
        Err(ControllerError::Timeout {
            opcode: nvm::READ,
            reset: false
        })
    );
    assert_eq!(r.fake.st.lock().unwrap().aborts, 1);
    assert_eq!(r.ctrl.resets(), 0);
    assert_eq!(
        r.fx.hw().entries(),
        baseline,
        "the aborted command's buffer is unmapped"
    );
}

#[test]
fn a_command_abort_cannot_stop_resets_the_controller() {
    let mut r = rig();
    let baseline = r.fx.hw().entries();
    r.fake.st.lock().unwrap().hang_opcode = Some(nvm::READ);
    let buf = alloc(&r.fx, 4096);
    let t1 = r
        .ctrl
        .submit_io(0, false, 0, 8, Buffer::Phys(buf), 4096)
        .expect("submit");
    let buf2 = alloc(&r.fx, 4096);
    let t2 = r
        .ctrl
        .submit_io(0, false, 8, 8, Buffer::Phys(buf2), 4096)
        .expect("submit");
    assert_eq!(
        r.ctrl.wait(t1),
        Err(ControllerError::Timeout {
            opcode: nvm::READ,
            reset: true
        })
    );
    assert_eq!(r.ctrl.wait(t2), Err(ControllerError::Reset));
    assert_eq!(r.ctrl.resets(), 1);
    assert_eq!(r.fake.st.lock().unwrap().enables, 2);
    assert_eq!(
        r.fx.hw().entries(),
        baseline,
        "nothing in flight stays mapped after the reset"
    );
    // After the reset the queues are back.
    r.fake.st.lock().unwrap().hang_opcode = None;
    r.ctrl
        .read(16, 8, Buffer::Phys(buf), 4096)
        .expect("read after reset");
    assert_eq!(r.fx.phys.bytes(buf.as_u64(), 4096), expected(16, 8));
}

#[test]
fn a_controller_that_never_becomes_ready_is_reported() {
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask").trusted();
    let got = rig_with(cfg, Config::default(), |f| {
        f.st.lock().unwrap().never_ready = true
    });
    assert!(matches!(
        got.err(),
        Some(ControllerError::NotReady {
            what: "CSTS.RDY = 1"
        })
    ));
}

#[test]
fn shutdown_completes() {
    let mut r = rig();
    r.ctrl.shutdown().expect("shutdown");
    assert_eq!(r.fake.st.lock().unwrap().csts & 1, 0);
}

#[test]
fn a_plugged_queue_rings_once_for_the_batch() {
    let mut r = rig();
    let bufs: Vec<PhysAddr> = (0..8).map(|_| alloc(&r.fx, 4096)).collect();
    r.ctrl.plug(0).expect("queue");
    let before = r.fake.st.lock().unwrap().commands.len();
    let tickets: Vec<_> = bufs
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            r.ctrl
                .submit_io(0, false, i as u64 * 8, 8, Buffer::Phys(b), 4096)
                .expect("submit")
        })
        .collect();
    assert_eq!(
        r.fake.st.lock().unwrap().commands.len(),
        before,
        "nothing announced while plugged"
    );
    r.ctrl.unplug(0).expect("queue");
    assert_eq!(r.fake.st.lock().unwrap().commands.len(), before + 8);
    for (i, t) in tickets.into_iter().enumerate() {
        r.ctrl.wait(t).expect("done");
        assert_eq!(
            r.fx.phys.bytes(bufs[i].as_u64(), 4096),
            expected(i as u64 * 8, 8)
        );
    }
    // Waiting on a plugged command announces it.
    r.ctrl.plug(0).expect("queue");
    let t = r
        .ctrl
        .submit_io(0, false, 0, 8, Buffer::Phys(bufs[0]), 4096)
        .expect("submit");
    r.ctrl.wait(t).expect("waiting rings the doorbell");
    assert_eq!(r.ctrl.plug(5), Err(ControllerError::NoQueue(5)));
}

#[test]
fn batched_unmaps_flush_once_per_poll() {
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask").trusted();
    let config = Config {
        batch_unmaps: true,
        ..Config::default()
    };
    let mut r = rig_with(cfg, config, |_| ()).expect("controller");
    let baseline = r.fx.hw().entries();
    let bufs: Vec<PhysAddr> = (0..16).map(|_| alloc(&r.fx, 4096)).collect();
    r.ctrl.plug(0).expect("queue");
    let tickets: Vec<_> = bufs
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            r.ctrl
                .submit_io(0, false, i as u64 * 8, 8, Buffer::Phys(b), 4096)
                .expect("submit")
        })
        .collect();
    r.ctrl.unplug(0).expect("queue");
    let flushes = r.fx.hw().counts().flushes;
    for (i, t) in tickets.into_iter().enumerate() {
        r.ctrl.wait(t).expect("done");
        assert_eq!(
            r.fx.phys.bytes(bufs[i].as_u64(), 4096),
            expected(i as u64 * 8, 8)
        );
    }
    // The first wait reaped all 16 completions and unmapped them with one flush.
    assert_eq!(r.fx.hw().counts().flushes - flushes, 1);
    assert_eq!(r.fx.hw().entries(), baseline);

    // Control: without batching, the same 16 completions cost 16 flushes.
    let mut r = rig();
    let bufs: Vec<PhysAddr> = (0..16).map(|_| alloc(&r.fx, 4096)).collect();
    r.ctrl.plug(0).expect("queue");
    let tickets: Vec<_> = bufs
        .iter()
        .map(|&b| {
            r.ctrl
                .submit_io(0, false, 0, 8, Buffer::Phys(b), 4096)
                .expect("submit")
        })
        .collect();
    r.ctrl.unplug(0).expect("queue");
    let flushes = r.fx.hw().counts().flushes;
    for t in tickets {
        r.ctrl.wait(t).expect("done");
    }
    assert_eq!(r.fx.hw().counts().flushes - flushes, 16);
}

#[test]
fn a_result_collected_late_is_not_a_timeout() {
    let cfg = DeviceConfig::with_mask_bits(39).expect("mask").trusted();
    let config = Config {
        command_timeout_us: 1000,
        ..Config::default()
    };
    let mut r = rig_with(cfg, config, |_| ()).expect("controller");
    let buf = alloc(&r.fx, 4096);
    let other = alloc(&r.fx, 4096);
    // Completed at once by the fake, but collected only after many timeouts have passed.
    let early = r
        .ctrl
        .submit_io(0, false, 0, 8, Buffer::Phys(buf), 4096)
        .expect("submit");
    for i in 0..100u64 {
        r.ctrl
            .read(i, 8, Buffer::Phys(other), 4096)
            .expect("other reads meanwhile");
    }
    assert_eq!(
        r.fake.st.lock().unwrap().aborts,
        0,
        "a finished command was aborted"
    );
    assert_eq!(r.ctrl.resets(), 0);
    // A command that hangs now is still found and aborted, though the uncollected early one has
    // the earlier deadline.
    {
        let mut st = r.fake.st.lock().unwrap();
        st.hang_opcode = Some(nvm::READ);
        st.abort_works = true;
    }
    assert_eq!(
        r.ctrl.read(9, 8, Buffer::Phys(other), 4096),
        Err(ControllerError::Timeout {
            opcode: nvm::READ,
            reset: false
        })
    );
    assert_eq!(r.fake.st.lock().unwrap().aborts, 1);
    r.ctrl.wait(early).expect("the early read's result");
    assert_eq!(r.fx.phys.bytes(buf.as_u64(), 4096), expected(0, 8));
}
