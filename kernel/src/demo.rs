//! What `cargo xtask run` shows: the boot report (memory map, ACPI tables) and the demos of each
//! layer, ending with the `ready` line.

use crate::pvh::MemoryType;
use crate::{kprintln, Kernel};

/// Prints the memory map and the ACPI table list (every boot, demo or tests).
pub fn print_boot_report(k: &Kernel) {
    kprintln!("Memory map (PVH):");
    for r in k.boot.regions() {
        let kind = match r.kind {
            MemoryType::Ram => "RAM",
            MemoryType::Reserved => "reserved",
            MemoryType::AcpiReclaimable => "ACPI tables",
            MemoryType::AcpiNvs => "ACPI NVS",
            MemoryType::Unusable => "unusable",
            MemoryType::Other(_) => "other",
        };
        kprintln!(
            "  {:#014x}-{:#014x} {:>10} KiB  {kind}",
            r.base,
            r.end().saturating_sub(1),
            r.size / 1024
        );
    }
    kprintln!(
        "ACPI tables (RSDP at {:#x}, revision {}):",
        k.acpi.rsdp,
        k.acpi.tables().revision()
    );
    for t in k.acpi.list() {
        kprintln!(
            "  {}  rev {:>2}  {:>6} bytes  OEM {}",
            core::str::from_utf8(&t.signature).unwrap_or("????"),
            t.revision,
            t.length,
            core::str::from_utf8(&t.oem_id).unwrap_or("?").trim_end()
        );
    }
}

/// Prints the raw bytes of the tables later layers parse (command-line flag `acpidump`), in the
/// `xxd`-like form the host tests' fixtures are captured from.
pub fn dump_tables(k: &Kernel) {
    for (name, table) in [("DMAR", k.acpi.dmar()), ("MCFG", k.acpi.mcfg())] {
        let Some((phys, bytes)) = table else { continue };
        kprintln!("ACPIDUMP {name} @ {phys:#x} ({} bytes)", bytes.len());
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let mut line = alloc::string::String::new();
            for b in chunk {
                let _ = core::fmt::Write::write_fmt(&mut line, format_args!("{b:02x} "));
            }
            kprintln!("ACPIDUMP {name} {:04x}: {}", i * 16, line.trim_end());
        }
    }
}

/// The demo run.
pub fn run(k: &Kernel) {
    kprintln!("PCI hierarchy:");
    kprintln!("{}", k.pci.topology);
    match &k.pci.acs {
        Some(report) => kprintln!("ACS policy:\n{report}"),
        None => kprintln!("ACS policy: left as firmware set it"),
    }
    kprintln!(
        "ready: kernel up, {} MiB free",
        crate::mem::frame_stats().free * 4 / 1024
    );
}
