//! Interrupt scenarios: local APIC, I/O APIC, timer, deadlines.

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
