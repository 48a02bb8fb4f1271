//! Interrupt scenarios: local APIC, I/O APIC, timer, deadlines, and interrupt remapping.

use super::*;

/// Interrupt scenarios: the whole `irq` suite (local APIC, dispatch, LAPIC timer, I/O APIC,
/// deferred deadlines from the timer) on q35 + intel-iommu with an edu, and again with another
/// tick period (500 us).
pub(super) fn irq_scenarios() -> Vec<Scenario> {
    let irq_suite = suite_size(include_str!("../../../kernel/src/tests/irq.rs"));
    vec![
        Scenario::passing(
            "irq",
            "self-IPI handled exactly once with its vector, unregistered vector counted and EOId, vector exhaustion, APIC error handler reads ESR (with control), LAPIC timer ticks and callbacks vs TSC (+-30%), PIT IRQ0 through the I/O APIC (masked control), deferred domain flushed by the timer within T with a faulting DMA after (timer-off control)",
            Topology::base().device("edu"),
            "test=irq",
            irq_suite,
        ),
        Scenario::passing(
            "irq-fast-tick",
            "the irq suite with timer.period_us=500 (the tolerance checks measure another tick period; the option reaches the timer)",
            Topology::base().device("edu"),
            "test=irq timer.period_us=500",
            irq_suite,
        ),
    ]
}

/// The log line the kernel prints for each forged write QEMU 7.2 cannot block.
pub(super) const QEMU_LIMIT: &str = "IRQ-QEMU-LIMIT";

/// The remapping run must state the three QEMU limits it measured (a remappable forged write, a
/// compatibility-format one, the I/O APIC through a wrong-SID IRTE); the control run (remapping off) must say remapping is off and
/// print none.
pub(super) fn intremap_evidence(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    let limits = log.lines().filter(|l| l.contains(QEMU_LIMIT)).count();
    if s.cmdline.contains("vtd.intremap=off") {
        ensure(log.contains("interrupt remapping off"), || {
            "the boot log does not say interrupt remapping is off".into()
        })?;
        ensure(limits == 0, || {
            format!("{limits} {QEMU_LIMIT} lines with remapping off")
        })?;
        Ok("remapping off; forged writes delivered".into())
    } else {
        ensure(log.contains("interrupt remapping enabled"), || {
            "the boot log does not say interrupt remapping is enabled".into()
        })?;
        ensure(limits == 3, || {
            format!("{limits} {QEMU_LIMIT} lines, expected 3")
        })?;
        Ok(format!("{limits} QEMU limits measured"))
    }
}

/// Interrupt remapping scenarios: edu's MSI and e1000e's MSI-X through IRTEs with their own
/// source IDs, a wrong SID blocked, IRTE changes, forged writes by edu's DMA engine (a 32-bit
/// DMA mask reaches 0xFEEx_xxxx), the PIT through the I/O APIC's IRTE; and the control run
/// with `vtd.intremap=off` where the same forged writes are delivered.
pub(super) fn intremap_scenarios() -> Vec<Scenario> {
    let suite = suite_size(include_str!("../../../kernel/src/tests/intremap.rs"));
    let topology = || Topology::base().device("edu,dma_mask=0xffffffff");
    let mask = edu_mask_arg(&topology());
    vec![
        Scenario {
            check: Some(intremap_evidence as LogCheck),
            ..Scenario::passing(
                "intremap",
                "edu MSI and e1000e MSI-X through IRTEs with their own SID (once per raise, programmed vector), a wrong-SID IRTE not delivered with a right-SID control, a live IRTE retargeted, PIT through the I/O APIC's IRTE (not-present control), forged writes by edu's DMA: not-present IRTE dropped, CFIS=0, QEMU limits measured",
                topology(),
                &format!("test=intremap{mask}"),
                suite,
            )
        },
        Scenario {
            check: Some(intremap_evidence as LogCheck),
            ..Scenario::passing(
                "intremap-off-control",
                "vtd.intremap=off: edu's DMA engine forging e1000e's MSI-X message and a compatibility-format message is delivered exactly once each (the forged-write test can see a delivery)",
                topology(),
                &format!("test=intremap::forged_interrupt_writes vtd.intremap=off{mask}"),
                1,
            )
        },
    ]
}
