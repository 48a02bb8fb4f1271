//! NVMe benchmarks (`nvmebench` on the command line; `cargo xtask bench` boots them on a machine
//! with an NVMe disk): 4 KiB random reads at queue depth 1 and 32 and 128 KiB sequential reads,
//! through the `nvme` controller on the DMA API, with the controller's domain in each
//! invalidation mode the IOMMU offers (strict, strict with batched completion unmaps, deferred)
//! or on the direct path without an IOMMU. Reads are checked against the disk's generator after
//! the timed loop, so a fast wrong answer cannot pass for a fast one.
//!
//! Output: `KBENCH nvme_<op>_<mode> ops=<n> cycles_per_op=<c> bytes_per_op=<b> ...` lines in the
//! format `bench` uses, with the VT-d unit's invalidation counters when there is one.

use alloc::vec::Vec;

use dma::{DeferredPolicy, DeviceConfig, InvalidationMode, PhysAddr};
use kernel::frames::FrameRequest;
use nvme::controller::{Buffer, Config, ControllerError, Ticket};
use nvme::pattern;

use crate::arch::time::rdtsc;
use crate::devices::nvme::{self as nvme_dev, Nvme};
use crate::mem::PhysPages;
use crate::{kprintln, Kernel};
use kernel::cmdline::CommandLine;

fn cmd_u64(k: &Kernel, key: &str) -> Option<u64> {
    CommandLine::new(k.boot.cmdline()).number(key)
}

/// Reads per random-read measurement.
const RANDOM_OPS: u64 = 2000;
/// 128 KiB reads per sequential measurement.
const SEQUENTIAL_OPS: u64 = 200;

struct Mode {
    name: &'static str,
    invalidation: InvalidationMode,
    batch_unmaps: bool,
}

fn modes(k: &Kernel) -> Vec<Mode> {
    if k.iommu.is_none() {
        return alloc::vec![Mode {
            name: "off",
            invalidation: InvalidationMode::Strict,
            batch_unmaps: false,
        }];
    }
    let deferred = InvalidationMode::Deferred(DeferredPolicy {
        max_pending: 256,
        max_delay_us: 10_000,
    });
    alloc::vec![
        Mode {
            name: "strict",
            invalidation: InvalidationMode::Strict,
            batch_unmaps: false,
        },
        Mode {
            name: "batched",
            invalidation: InvalidationMode::Strict,
            batch_unmaps: true,
        },
        Mode {
            name: "deferred",
            invalidation: deferred,
            batch_unmaps: false,
        },
    ]
}

fn bind(k: &Kernel, mode: &Mode) -> Result<Nvme, &'static str> {
    let dev = DeviceConfig {
        mask: u64::MAX,
        trusted: true,
        ..DeviceConfig::default()
    };
    let config = Config {
        io_queue_size: 64,
        batch_unmaps: mode.batch_unmaps,
        ..Config::default()
    };
    // SAFETY: one binding at a time: each measurement drops its binding before the next.
    match unsafe { nvme_dev::bind_first(&k.pci, k.iommu.as_ref(), dev, mode.invalidation, config) }
    {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err("no NVMe controller"),
        Err(e) => {
            kprintln!("nvmebench: {e}");
            Err("bind failed")
        }
    }
}

fn invalidations(k: &Kernel) -> (u64, u64) {
    k.iommu
        .as_ref()
        .and_then(|i| i.units.first())
        .map_or((0, 0), |u| {
            let s = u.unit.invalidation_stats();
            (s.requests, s.submissions)
        })
}

fn report(k: &Kernel, name: &str, ops: u64, bytes: u64, cycles: u64, before: (u64, u64)) {
    let after = invalidations(k);
    let per = |x: u64| x as f64 / ops.max(1) as f64;
    kprintln!(
        "KBENCH {name} ops={ops} cycles_per_op={} bytes_per_op={bytes} invalidations_per_op={:.2} waits_per_op={:.2}",
        cycles / ops.max(1),
        per(after.0 - before.0),
        per(after.1 - before.1)
    );
}

/// `depth` reads of `blocks` blocks kept in flight, `ops` in all, at LBAs from `next`.
fn reads(
    n: &mut Nvme,
    buf: &PhysPages,
    depth: usize,
    blocks: u64,
    ops: u64,
    mut next: impl FnMut() -> u64,
) -> Result<(), ControllerError> {
    let len = blocks * 512;
    let slot_addr = |i: usize| PhysAddr::new(buf.paddr() + i as u64 * len);
    let mut inflight: Vec<Option<Ticket>> = (0..depth).map(|_| None).collect();
    let mut issued = 0;
    let mut done = 0;
    let mut slot = 0;
    while done < ops {
        if let Some(t) = inflight[slot].take() {
            n.ctrl.wait(t)?;
            done += 1;
        }
        if issued < ops {
            let lba = next();
            let t = n
                .ctrl
                .submit_io(0, false, lba, blocks, Buffer::Phys(slot_addr(slot)), len)?;
            inflight[slot] = Some(t);
            issued += 1;
        }
        slot = (slot + 1) % depth;
        if issued >= ops && inflight.iter().all(Option::is_none) {
            break;
        }
    }
    Ok(())
}

fn run_mode(k: &Kernel, mode: &Mode, seed: u64) -> Result<(), &'static str> {
    let blocks_total = cmd_u64(k, "nvme.blocks").ok_or("nvme.blocks= on the command line")?;
    let buf = PhysPages::alloc(FrameRequest {
        count: 32 * 32,
        ..FrameRequest::one()
    })
    .map_err(|_| "buffer")?;
    for (depth, blocks, ops, op) in [
        (1usize, 8u64, RANDOM_OPS, "4k_randread_qd1"),
        (32, 8, RANDOM_OPS, "4k_randread_qd32"),
        (4, 256, SEQUENTIAL_OPS, "128k_seqread_qd4"),
    ] {
        let mut n = bind(k, mode)?;
        let mut x = seed ^ depth as u64;
        let mut seq = 0u64;
        // Room for the largest read, and at least 8 blocks to pick from.
        let span = blocks_total
            .checked_sub(blocks)
            .filter(|&s| s >= 8)
            .ok_or("nvme.blocks too small for the benchmark reads")?;
        let mut next = || {
            if blocks == 8 {
                x = pattern::mix(x);
                (x % span) & !7
            } else {
                let l = seq;
                seq = (seq + blocks) % span;
                l
            }
        };
        // Warm-up: one pass at the depth, untimed.
        reads(&mut n, &buf, depth, blocks, depth as u64 * 2, &mut next).map_err(|_| "warm-up")?;
        let before = invalidations(k);
        let t0 = rdtsc();
        reads(&mut n, &buf, depth, blocks, ops, &mut next).map_err(|_| "reads")?;
        let cycles = rdtsc() - t0;
        report(
            k,
            &alloc::format!("nvme_{op}_{}", mode.name),
            ops,
            blocks * 512,
            cycles,
            before,
        );
        // Correctness after the clock stopped: a fresh read per slot, checked.
        for slot in 0..depth.min(4) {
            let lba = next();
            let at = PhysAddr::new(buf.paddr() + slot as u64 * blocks * 512);
            n.ctrl
                .read(lba, blocks, Buffer::Phys(at), blocks * 512)
                .map_err(|_| "check read")?;
            // SAFETY: the read completed and its mapping is gone; the pages are ours.
            let got = unsafe {
                core::slice::from_raw_parts(at.as_u64() as *const u8, (blocks * 512) as usize)
            };
            if pattern::first_mismatch(seed, lba * 512, got).is_some() {
                return Err("a benchmark read does not match the disk");
            }
        }
    }
    Ok(())
}

/// Runs every NVMe benchmark; returns false if one could not run.
pub fn run(k: &Kernel) -> bool {
    let Some(seed) = cmd_u64(k, "nvme.seed") else {
        kprintln!("nvmebench: nvme.seed= missing");
        return false;
    };
    for mode in modes(k) {
        if let Err(e) = run_mode(k, &mode, seed) {
            kprintln!("nvmebench: {}: {e}", mode.name);
            return false;
        }
    }
    true
}
