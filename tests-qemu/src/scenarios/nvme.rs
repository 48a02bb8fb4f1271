//! NVMe scenarios: block I/O through the DMA API on QEMU's `nvme` controller, with the disk
//! image generated and checked by xtask ([`DiskImage`]).

use super::*;

/// Blocks of the scenario disk (4 MiB).
const DISK_BLOCKS: u64 = 8192;
/// Seed of the disk content.
const DISK_SEED: u64 = 0xd15c_0001;

fn disk() -> DiskImage {
    DiskImage {
        id: "nvm0",
        seed: DISK_SEED,
        blocks: DISK_BLOCKS,
    }
}

/// The default machine plus an NVMe controller on the root bus backed by the scenario disk,
/// with a 2 MiB controller memory buffer.
pub(super) fn nvme_topology(base: Topology) -> Topology {
    base.device(&format!(
        "nvme,drive={},serial=vtd0nvme,cmb_size_mb=2",
        disk().id
    ))
}

fn nvme_suite() -> usize {
    suite_size(include_str!("../../../kernel/src/tests/nvme.rs"))
}

pub(super) fn nvme_scenarios() -> Vec<Scenario> {
    let args = format!("nvme.seed={DISK_SEED:#x} nvme.blocks={DISK_BLOCKS}");
    let with_disk = |s: Scenario| Scenario {
        disks: vec![disk()],
        ..s
    };
    // Without an IOMMU there is no fault to record and no export to an importer: every test
    // but `unmapped_prp_faults` and the peer-to-peer one.
    let direct: Vec<String> = [
        "identify_matches_the_image",
        "sequential_reads_match_the_generator",
        "scattered_reads_match_the_generator",
        "queue_depth_32",
        "untrusted_unaligned_buffer_bounced",
        "write_read_back_and_leave_for_xtask",
        "msix_completions_wake_the_waiter",
        "reads_into_its_own_controller_memory_buffer",
    ]
    .iter()
    .map(|t| format!("nvme::{t}"))
    .collect();
    vec![
        with_disk(Scenario::passing(
            "nvme-strict",
            "NVMe reads (PRP1, PRP2, PRP lists, scatter lists, a bounced sub-page buffer, 32 in flight) match the generated image, a write lands in the image file, a PRP at an unmapped IOVA faults; IOMMU strict",
            nvme_topology(Topology::default_run()),
            &format!("test=nvme {args}"),
            nvme_suite(),
        )),
        with_disk(Scenario::passing(
            "nvme-deferred",
            "the NVMe suite with the controller's domain in deferred invalidation",
            nvme_topology(Topology::default_run()),
            &format!("test=nvme {args} nvme.mode=deferred"),
            nvme_suite(),
        )),
        with_disk(Scenario::passing(
            "nvme-batched",
            "the NVMe suite with the completions of each poll unmapped as one batch (one flush)",
            nvme_topology(Topology::default_run()),
            &format!("test=nvme {args} nvme.batch=on"),
            nvme_suite(),
        )),
        with_disk(Scenario::passing(
            "nvme-no-iommu",
            "the NVMe suite on the direct path (no IOMMU), but for the fault test",
            nvme_topology(Topology::default_run().without_iommu()),
            &format!("test={} {args}", direct.join(",")),
            direct.len(),
        )),
    ]
}
