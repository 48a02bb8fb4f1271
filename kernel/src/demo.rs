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

/// Device DMA through the IOMMU with the first edu device: its own domain, one page it reads,
/// one it writes; then a write to an IOVA nobody mapped, and the fault it raises.
fn edu_dma_demo(k: &Kernel) -> Result<(), alloc::string::String> {
    use alloc::format;
    use dma::iommu::{IommuDomain, IotlbGather, Prot};
    use dma::{DmaAddr, PhysAddr};
    use edu::Transfer;
    use kernel::frames::FrameRequest;

    use crate::devices::edu as edu_dev;
    use crate::mem::PhysPages;

    let Some(iommu) = &k.iommu else { return Ok(()) };
    let mask = edu::DEFAULT_DMA_MASK;
    let Some(mut e) = edu_dev::bind_all(&k.pci, mask)
        .map_err(|e| format!("{e}"))?
        .into_iter()
        .next()
    else {
        kprintln!("(no edu device: DMA demo skipped)");
        return Ok(());
    };
    let d = iommu
        .domain_for(&k.pci, e.bdf())
        .map_err(|e| format!("{e}"))?;
    let rids = iommu
        .attach(&k.pci, &d, e.bdf())
        .map_err(|e| format!("{e}"))?;
    kprintln!(
        "Domain {} ({}-level table) created for edu {} (requester IDs {rids:04x?})",
        d.did(),
        d.levels().count(),
        e.bdf()
    );
    let page = || PhysPages::alloc(FrameRequest::one()).map_err(|e| format!("{e}"));
    let (mut src, dst) = (page()?, page()?);
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(3);
    }
    let (iova_src, iova_dst, len) = (0x10_0000u64, 0x20_0000u64, 512u64);
    for (iova, p, prot) in [(iova_src, &src, Prot::READ), (iova_dst, &dst, Prot::WRITE)] {
        d.map(DmaAddr::new(iova), PhysAddr::new(p.paddr()), 4096, prot)
            .map_err(|e| format!("{e}"))?;
        d.sync_map(DmaAddr::new(iova), 4096)
            .map_err(|e| format!("{e}"))?;
        kprintln!("  map IOVA {iova:#x} -> phys {:#x} ({prot:?})", p.paddr());
    }
    edu_dev::dma(
        &mut e,
        Transfer::ReadFromMemory,
        DmaAddr::new(iova_src),
        0,
        len,
    )
    .map_err(|e| format!("{e}"))?;
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        DmaAddr::new(iova_dst),
        0,
        len,
    )
    .map_err(|e| format!("{e}"))?;
    let fnv = |b: &[u8]| {
        b.iter().fold(0x811c_9dc5u32, |h, &x| {
            (h ^ u32::from(x)).wrapping_mul(0x0100_0193)
        })
    };
    // SAFETY: dst is owned and mapped; volatile because the device wrote it.
    let got: alloc::vec::Vec<u8> = (0..len as usize)
        .map(|i| unsafe { dst.as_ptr().add(i).read_volatile() })
        .collect();
    kprintln!(
        "  edu read {len} bytes through IOVA {iova_src:#x} and wrote them through IOVA {iova_dst:#x}: source checksum {:#010x}, destination checksum {:#010x} ({})",
        fnv(&src.as_slice()[..len as usize]),
        fnv(&got),
        if got[..] == src.as_slice()[..len as usize] { "match" } else { "MISMATCH" }
    );
    let unit = &iommu.unit_for(&k.pci, e.bdf()).ok_or("no unit")?.unit;
    unit.clear_faults();
    let stray = 0x30_0000u64;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, DmaAddr::new(stray), 0, len)
        .map_err(|e| format!("{e}"))?;
    for f in unit.read_faults().records {
        kprintln!("  blocked: edu wrote to unmapped IOVA {stray:#x}: {f}");
    }
    unit.clear_faults();
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(iova_src), 4096, &mut g)
        .map_err(|e| format!("{e}"))?;
    d.unmap(DmaAddr::new(iova_dst), 4096, &mut g)
        .map_err(|e| format!("{e}"))?;
    d.flush(g).map_err(|e| format!("{e}"))?;
    kprintln!("  unmapped both pages and flushed the IOTLB (one batched invalidation)");
    Ok(())
}

/// The demo run.
pub fn run(k: &Kernel) {
    kprintln!("PCI hierarchy:");
    kprintln!("{}", k.pci.topology);
    match &k.pci.acs {
        Some(report) => kprintln!("ACS policy:\n{report}"),
        None => kprintln!("ACS policy: left as firmware set it"),
    }
    match &k.iommu {
        None => kprintln!("VT-d: no DMAR table, no IOMMU: devices DMA to physical addresses"),
        Some(iommu) => {
            for u in &iommu.units {
                kprintln!(
                    "VT-d unit at {:#x} (segment {}, translation on):",
                    u.base,
                    u.segment
                );
                kprintln!("{}", u.unit.capabilities());
                for b in &u.endpoints {
                    kprintln!("  scope: endpoint {b}");
                }
                for b in &u.bridges {
                    kprintln!("  scope: bridge {b} and everything below it");
                }
            }
        }
    }
    if let Err(e) = edu_dma_demo(k) {
        kprintln!("DMA demo failed: {e}");
    }
    kprintln!(
        "ready: kernel up, {} MiB free",
        crate::mem::frame_stats().free * 4 / 1024
    );
}
