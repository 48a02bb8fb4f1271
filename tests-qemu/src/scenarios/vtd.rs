//! VT-d scenarios: DMA by edu through the IOMMU (memory contents and fault records), isolation
//! groups, and the DMA API on real hardware.

use super::*;

/// The kernel command line for VT-d tests: the selected tests plus the expectations the
/// topology implies on `qemu`, computed from the same values QEMU is given (table depth from
/// `aw-bits`, or the version's default width when the topology gives none; caching mode, edu's
/// DMA mask).
pub(super) fn vtd_cmdline(t: &Topology, tests: &[&str], qemu: QemuVersion) -> String {
    let props = t.iommu.clone().unwrap_or_default();
    let has = |kv: &str| props.split(',').any(|p| p == kv);
    let aw_bits = props
        .split(',')
        .find_map(|p| p.strip_prefix("aw-bits="))
        .and_then(|v| v.parse::<u8>().ok())
        .unwrap_or(qemu.default_aw_bits());
    // AGAW of 39 bits walks 3 levels, 48 bits 4 (VT-d §3.6).
    let levels = if aw_bits >= 48 { 4 } else { 3 };
    let cm = u8::from(has("caching-mode=on"));
    let mut line = format!(
        "test={} expect.levels={levels} expect.cm={cm}",
        tests.join(",")
    );
    line.push_str(&edu_mask_arg(t));
    line
}

/// ` edu.dma_mask=<mask>` when the topology gives edu a `dma_mask` (the kernel must check
/// addresses against the same mask QEMU applies), else nothing.
pub(super) fn edu_mask_arg(t: &Topology) -> String {
    t.devices
        .iter()
        .filter(|a| a.starts_with("edu"))
        .flat_map(|a| a.split(','))
        .find_map(|p| p.strip_prefix("dma_mask="))
        .map(|m| format!(" edu.dma_mask={m}"))
        .unwrap_or_default()
}

/// VT-d scenarios: DMA by the edu device through the IOMMU, proven by memory contents and
/// fault records.
pub(super) fn vtd_scenarios(qemu: QemuVersion) -> Vec<Scenario> {
    let vtd = |name, about, topology: Topology, tests: &[&str]| {
        let cmdline = vtd_cmdline(&topology, tests, qemu);
        Scenario {
            cmdline,
            ..Scenario::passing(name, about, topology, "", tests.len())
        }
    };
    let basic = [
        "vtd::capabilities",
        "vtd::dma_both_directions",
        "vtd::unmapped_iova_blocked",
        "vtd::unmap_invalidates_iotlb",
        "vtd::skipped_invalidation_is_caught",
    ];
    let two_edu = Topology::base().device("edu").device("edu");
    vec![
        vtd(
            "vtd-default",
            "3-level tables: DMA both ways, blocked DMA faults, strict unmap and detach each with a negative control, two isolated domains, 2 MiB superpage",
            two_edu.clone(),
            &[&basic[..], &["vtd::detach_blocks_at_once", "vtd::detach_without_invalidation_is_caught", "vtd::domains_isolated", "vtd::superpage_2m"]].concat(),
        ),
        vtd(
            "vtd-aw48",
            "aw-bits=48: 4-level tables chosen and asserted, DMA and faults work",
            Topology { iommu: Some("aw-bits=48".into()), ..Topology::base() }.device("edu"),
            &[&basic[..], &["vtd::superpage_2m"]].concat(),
        ),
        vtd(
            "vtd-caching-mode",
            "caching-mode=on: new mappings are invalidated before use (CM decoded and asserted)",
            Topology { iommu: Some("caching-mode=on".into()), ..Topology::base() }.device("edu").device("edu"),
            &[&basic[..], &["vtd::domains_isolated"]].concat(),
        ),
        vtd(
            "vtd-aliases",
            "edu behind a pcie-pci-bridge and behind a pci-bridge: attached through their requester-ID aliases, faults name the alias, detach clears the alias's context entry",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("pci-bridge,id=pb,chassis_nr=5,bus=pcie.0")
                .device("edu,bus=pb,addr=4"),
            &["vtd::capabilities", "vtd::dma_both_directions", "vtd::unmapped_iova_blocked", "vtd::detach_blocks_at_once"],
        ),
        vtd(
            "vtd-pxb",
            "edu behind a root port on a pxb-pcie extra host bridge: found through the DMAR bridge scope, DMA and faults work",
            Topology::base()
                .device("edu")
                .device("pxb-pcie,id=pxb,bus_nr=64,bus=pcie.0")
                .device("pcie-root-port,id=rp1,bus=pxb,chassis=1")
                .device("edu,bus=rp1"),
            &["vtd::capabilities", "vtd::dma_both_directions", "vtd::unmapped_iova_blocked"],
        ),
        vtd(
            "vtd-superpage-1g",
            "a 1 GiB superpage (3 GiB guest, edu dma_mask raised to 32 bits) carries DMA at both ends",
            Topology { memory: "3G".into(), ..Topology::base() }.device("edu,dma_mask=0xffffffff"),
            &["vtd::superpage_1g"],
        ),
    ]
}

/// Isolation groups under DMA: two functions that form one group share one domain, both move
/// bytes through it, cannot be split across domains, and the group detaches with its last member.
pub(super) fn group_dma_scenarios(qemu: QemuVersion) -> Vec<Scenario> {
    let tests = [
        "groups::pair_is_one_group",
        "groups::pair_shares_one_domain",
        "groups::pair_cannot_be_split",
        "groups::last_member_detaches",
    ];
    let run = |name, about, topology: Topology| Scenario {
        cmdline: vtd_cmdline(&topology, &tests, qemu),
        ..Scenario::passing(name, about, topology, "", tests.len())
    };
    let rmrr_tests = [
        "rmrr::identity_mapped_from_boot",
        "rmrr::driver_joins_the_boot_domain",
    ];
    let rmrr_topology = Topology::base().device("edu,bus=pcie.0,addr=6");
    let rmrr = Scenario {
        // QEMU's DMAR has no RMRR: name one for the edu at 00:06.0 in low RAM the kernel never
        // allocates, treated by the kernel exactly like a firmware RMRR.
        cmdline: format!(
            "{} vtd.rmrr=00:06.0@0x70000-0x7ffff",
            vtd_cmdline(&rmrr_topology, &rmrr_tests, qemu)
        ),
        ..Scenario::new(
            "vtd-rmrr-from-boot",
            "an RMRR device is attached at boot with its region identity-mapped (DMA works with no driver, outside the region faults); a driver joins that domain and the IOVA space avoids the region",
            rmrr_topology,
            "",
            Expect::Pass {
                passed: rmrr_tests.len(),
            },
        )
    };
    vec![
        rmrr,
        run(
            "groups-bridge-dma",
            "two edus behind one pcie-pci-bridge (one DMA alias) are one group: one domain, both DMA, no split, detach with the last member",
            Topology::base()
                .device("pcie-pci-bridge,id=ppb,bus=pcie.0")
                .device("edu,bus=ppb,addr=3")
                .device("edu,bus=ppb,addr=4"),
        ),
        run(
            "groups-multifunction-dma",
            "the two functions of a multifunction device without ACS are one group: one domain, both DMA, no split, detach with the last member",
            Topology::base()
                .device("edu,bus=pcie.0,addr=5.0,multifunction=on")
                .device("edu,bus=pcie.0,addr=5.1"),
        ),
    ]
}

/// DMA API scenarios: `DmaDevice` mappings used by the edu device, under the IOMMU and on the
/// direct path.
pub(super) fn dma_api_scenarios() -> Vec<Scenario> {
    let run = |name, about, topology, tests: &[&str]| {
        let cmdline = format!("test={}", tests.join(","));
        Scenario::passing(name, about, topology, &cmdline, tests.len())
    };
    vec![
        run(
            "dma-api-iommu",
            "map_phys both ways, untrusted sub-page bounce isolation, reused bounce slots zero-padded, strict Mapping::unmap then fault, direction enforced (write into ToDevice faults, with controls), scatter list, batched unmap then fault (with negative control), deferred unmap quarantine until flush, unaligned MMIO",
            Topology::base().device("edu"),
            &[
                "dmaapi::map_phys_both_directions",
                "dmaapi::untrusted_subpage_isolated",
                "dmaapi::bounce_slot_reused_zero_padded",
                "dmaapi::strict_unmap_then_fault",
                "dmaapi::direction_enforced",
                "dmaapi::scatter_list",
                "dmaapi::batch_unmap_then_fault",
                "dmaapi::batch_without_flush_is_caught",
                "dmaapi::deferred_unmap_quarantines_until_flush",
                "dmaapi::mmio_unaligned_small",
            ],
        ),
        run(
            "dma-api-direct",
            "no IOMMU (512 MiB): map_phys both ways, buffers above edu's 28-bit mask bounced and intact, scatter list, MMIO beyond the mask refused",
            Topology::base().without_iommu().device("edu"),
            &[
                "dmaapi::map_phys_both_directions",
                "dmaapi::bounce_above_mask",
                "dmaapi::scatter_list",
                "dmaapi::mmio_beyond_mask_refused",
            ],
        ),
    ]
}

/// VT-d fault events as interrupts: the `faultirq` suite (fault event programmed, a blocked DMA
/// raises one interrupt and reaches its domain owner's callback without polling, another
/// domain's owner and the default sink get theirs only, an overflow reported once) with two edus; the same suite and the
/// VT-d fault tests in polling mode (`vtd.fault_irq=off`: FECTL masked, no interrupt, records
/// dispatched and returned by the poll).
pub(super) fn fault_irq_scenarios(qemu: QemuVersion) -> Vec<Scenario> {
    let suite = suite_size(include_str!("../../../kernel/src/tests/faultirq.rs"));
    let two_edu = || Topology::base().device("edu").device("edu");
    let polled = ["vtd::unmapped_iova_blocked", "vtd::unmap_invalidates_iotlb"];
    vec![
        Scenario::passing(
            "vtd-fault-irq",
            "fault events as interrupts: FEADDR/FEDATA hold a fixed MSI to the BSP and FECTL is unmasked; an unmapped-IOVA write raises exactly one interrupt and its decoded fault (source, page, write, reason 5) is in the domain owner's callback before any poll; a second domain's read fault reaches only its owner; an unowned fault reaches the default sink; two faults with interrupts off: one event, the kept record to its owner, the overflow reported once",
            two_edu(),
            "test=faultirq",
            suite,
        ),
        Scenario::passing(
            "vtd-fault-polled",
            "vtd.fault_irq=off: FECTL stays masked, no fault-event interrupt, nothing dispatched until the poll, which dispatches and returns the same records; the VT-d fault tests pass by polling",
            two_edu(),
            &format!(
                "{} vtd.fault_irq=off",
                vtd_cmdline(&two_edu(), &[&["faultirq"][..], &polled[..]].concat(), qemu)
            ),
            suite + polled.len(),
        ),
    ]
}
