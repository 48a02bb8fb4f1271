//! Scenarios with generated firmware tables the kernel must refuse or survive.

use super::*;

/// Where the injected DMARs put their (refused) remapping units: QEMU's own DRHD address, unused
/// without `intel-iommu`, so a kernel that mapped and probed it anyway would read junk.
pub(super) const FAKE_DRHD_BASE: u64 = 0xFED9_0000;

/// The kernel's line for a DMAR without a usable remapping unit.
pub(super) const NO_USABLE_UNIT: &str = "vt-d: DMAR has no usable remapping unit: no IOMMU";

/// A DMAR with no DRHD at all: an RMRR and nothing that remaps.
pub(super) fn dmar_without_drhd() -> Vec<u8> {
    use iommu_vtd::dmar::{PathEntry, ScopeSpec};
    let edu = [PathEntry {
        device: 1,
        function: 0,
    }];
    iommu_vtd::DmarBuilder::new(39)
        .oem_table_id(*b"NODRHD  ")
        .rmrr(0, 0xE_0000, 0xF_FFFF, &[ScopeSpec::endpoint(0, &edu)])
        .build()
}

/// A DMAR whose only DRHDs have absurd register sizes: Size byte 0xff (reserved bits set; the
/// review's 2^267-byte window) and 0x0f (2^15 pages = 128 MiB, above the 1 MiB bound).
pub(super) fn dmar_with_absurd_register_sizes() -> Vec<u8> {
    use iommu_vtd::dmar::{scope_type, PathEntry, ScopeSpec};
    let ioapic = [PathEntry {
        device: 0,
        function: 0,
    }];
    let scope = ScopeSpec {
        kind: scope_type::IOAPIC,
        flags: 0,
        enumeration_id: 0,
        start_bus: 0xff,
        path: &ioapic,
    };
    iommu_vtd::DmarBuilder::new(39)
        .oem_table_id(*b"HUGEREGS")
        .drhd(0, 0xff, 0, FAKE_DRHD_BASE, &[scope])
        .drhd(0, 0x0f, 0, FAKE_DRHD_BASE + 0x1000, &[scope])
        .build()
}

/// DRHD structures in a generated DMAR (walked by their length fields), to compute how many
/// refusals the kernel must report.
pub(super) fn drhd_count(dmar: &[u8]) -> usize {
    iommu_vtd::Dmar::parse(dmar).map_or(0, |d| {
        d.refused()
            .filter(|r| {
                r.structure == iommu_vtd::dmar::structure_type::DRHD
                    && !matches!(r.error, iommu_vtd::StructureError::ReservedScopeType { .. })
            })
            .count()
            + d.drhds().count()
    })
}

/// A scenario with an injected DMAR and no `intel-iommu`: the DMAR is listed, the kernel says
/// exactly once that there is no usable IOMMU, reports each refused DRHD, never brings a unit
/// up, and the DMA test ran on the direct path.
pub(super) fn no_usable_iommu(s: &Scenario, _: &Outcome, log: &str) -> Result<String, String> {
    ensure(s.topology.iommu.is_none(), || {
        "this check is for machines without intel-iommu".into()
    })?;
    ensure(
        log.lines().any(|l| l.trim_start().starts_with("DMAR ")),
        || "the injected DMAR is not in the ACPI list".into(),
    )?;
    let said = log.matches(NO_USABLE_UNIT).count();
    ensure(said == 1, || {
        format!("{NO_USABLE_UNIT:?} printed {said} times, expected once")
    })?;
    let dmar = s
        .acpi_tables
        .iter()
        .find(|t| t.bytes.starts_with(b"DMAR"))
        .ok_or("no DMAR among the scenario's tables")?;
    let drhds = drhd_count(&dmar.bytes);
    let ignored = log
        .lines()
        .filter(|l| l.contains("DMAR structure at") && l.contains("(DRHD) ignored"))
        .count();
    ensure(ignored == drhds, || {
        format!("{ignored} refused DRHD(s) logged, the table has {drhds}")
    })?;
    ensure(!log.contains("iommu: VT-d unit"), || {
        "a VT-d unit was brought up".into()
    })?;
    ensure(log.contains("direct path:"), || {
        "the DMA test did not run on the direct path".into()
    })?;
    Ok(format!(
        "no usable IOMMU said once, {drhds} DRHD(s) refused, direct DMA"
    ))
}

/// Firmware that must be refused: a DMAR injected with `-acpitable` on a machine without
/// `intel-iommu`, once with no DRHD and once with DRHDs of absurd register size. Both must boot
/// promptly (a kernel mapping a 2^267-byte window once stalled for 25 s, hence the short
/// timeout), say once that there is no usable IOMMU, leave ACS alone (`pci::acs_isolation`
/// checks the hardware against "no IOMMU") and DMA on the direct path.
pub(super) fn firmware_scenarios() -> Vec<Scenario> {
    let tests = [
        "boot::start_info",
        "boot::sse",
        "boot::idt_every_vector_on_ist",
        "boot::tsc_calibrated",
        "boot::acpi_tables",
        "pci::acs_isolation",
        "dmaapi::map_phys_both_directions",
    ];
    let run = |name, about, dmar: Vec<u8>| {
        let topology = Topology::base()
            .without_iommu()
            .device("edu")
            .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0");
        let cmdline = format!(
            "test={} expect.acs_ports={}",
            tests.join(","),
            acs_ports(&topology)
        );
        Scenario {
            timeout_secs: 20,
            check: Some(no_usable_iommu as LogCheck),
            acpi_tables: vec![AcpiTableFile {
                name: "dmar",
                bytes: dmar,
            }],
            ..Scenario::passing(name, about, topology, &cmdline, tests.len())
        }
    };
    vec![
        run(
            "firmware-dmar-no-drhd",
            "a DMAR with no DRHD (injected, no intel-iommu): boots promptly, no IOMMU said once, ACS left alone, direct DMA",
            dmar_without_drhd(),
        ),
        run(
            "firmware-dmar-absurd-register-size",
            "a DMAR whose DRHDs declare 2^267-byte and 128 MiB register windows: refused without mapping them, no IOMMU said once, direct DMA",
            dmar_with_absurd_register_sizes(),
        ),
    ]
}
