//! VT-d bring-up: every DRHD of the ACPI DMAR becomes a running [`VtdUnit`] (registers mapped
//! uncached, tables in kernel frames, translation enabled). Matching PCI functions to their unit
//! through the DRHD scopes, RMRRs and group attach are the `vtd-platform` glue, which this kernel
//! runs over MMIO ([`Iommu`] is its state for this machine).
//!
//! From the moment a unit is enabled, a device behind it has no context entry and cannot DMA
//! anywhere: isolation by default. Devices get a domain only when a driver asks for one.

use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;

use dma::PhysAddr;
use iommu_vtd::{
    Dmar, IrqState, MmioRegisters, PagingLevels, Platform, TablePage, UnitConfig, VtdError, VtdUnit,
};
use kernel::frames::FrameRequest;
use spin::{Once, RwLockReadGuard};

pub use vtd_platform::{AttachError, IoApicSource, RmrrInfo};

use super::pci::PciSystem;
use crate::acpi::Acpi;
use crate::arch::{irq, time};
use crate::mem::paging::{self, Cache};

/// Table memory, cache maintenance, time and interrupt masking for the VT-d driver, from the
/// kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlatform;

/// Cache-line size used for `clflush` loops.
const CACHE_LINE: usize = 64;

// SAFETY: pages come from the frame allocator (zeroed, 4 KiB aligned, exclusively owned until
// freed), phys_to_virt is the identity mapping every RAM frame has, and the cache flush writes
// back every line of the range before returning (clflush, then mfence).
unsafe impl Platform for KernelPlatform {
    fn alloc_table_page(&self) -> Option<TablePage> {
        let phys = crate::mem::alloc_frames(FrameRequest::one())?;
        let virt = NonNull::new(phys as *mut u8)?;
        // SAFETY: the frame was just allocated to us and is identity-mapped writable RAM.
        unsafe { core::ptr::write_bytes(virt.as_ptr(), 0, 4096) };
        Some(TablePage {
            phys: PhysAddr::new(phys),
            virt,
        })
    }

    unsafe fn free_table_page(&self, phys: PhysAddr) {
        if let Err(e) = crate::mem::free_frames(phys.as_u64(), 1) {
            log::error!("vt-d: freeing table page {phys}: {e}");
        }
    }

    fn alloc_table_pages(&self, count: usize) -> Option<TablePage> {
        let phys = crate::mem::alloc_frames(FrameRequest::contiguous(count))?;
        let virt = NonNull::new(phys as *mut u8)?;
        // SAFETY: `count` contiguous frames were just allocated to us and are identity-mapped
        // writable RAM.
        unsafe { core::ptr::write_bytes(virt.as_ptr(), 0, count * 4096) };
        Some(TablePage {
            phys: PhysAddr::new(phys),
            virt,
        })
    }

    unsafe fn free_table_pages(&self, phys: PhysAddr, count: usize) {
        if let Err(e) = crate::mem::free_frames(phys.as_u64(), count) {
            log::error!("vt-d: freeing {count} table pages at {phys}: {e}");
        }
    }

    fn phys_to_virt(&self, phys: PhysAddr) -> *mut u8 {
        phys.as_u64() as *mut u8
    }

    fn flush_cache_range(&self, virt: *const u8, len: usize) {
        let start = virt as usize & !(CACHE_LINE - 1);
        let end = virt as usize + len;
        for line in (start..end).step_by(CACHE_LINE) {
            // SAFETY: clflush of a mapped address has no effect beyond writing the line back.
            unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
        }
        // SAFETY: a full fence orders the flushes before any later register write.
        unsafe { core::arch::x86_64::_mm_mfence() };
    }

    fn memory_fence(&self) {
        // SAFETY: mfence has no preconditions.
        unsafe { core::arch::x86_64::_mm_mfence() };
    }

    fn now_us(&self) -> u64 {
        time::now_us()
    }

    /// The TSC, for the unit's opt-in phase timing.
    fn cycles(&self) -> u64 {
        time::rdtsc()
    }

    /// RFLAGS saved, then `cli`: the unit's interrupt-safe locks are held with interrupts off.
    fn irq_save(&self) -> IrqState {
        IrqState::from_raw(irq::save_and_disable())
    }

    /// `sti` only if the saved RFLAGS had IF set.
    fn irq_restore(&self, state: IrqState) {
        irq::restore(state.raw());
    }
}

/// A unit as the kernel runs it.
pub type Unit = VtdUnit<MmioRegisters, KernelPlatform>;
/// A domain of such a unit.
pub type Domain = iommu_vtd::Domain<MmioRegisters, KernelPlatform>;
/// One remapping unit and the PCI functions it translates for.
pub type UnitEntry = vtd_platform::UnitEntry<MmioRegisters, KernelPlatform>;
/// Every unit, the RMRRs, default domains and memberships (methods: `unit_for`, `domain_for`,
/// `attach`, `detach`, `attach_member`, `start_translation`, `group_domain`).
pub type Iommu = vtd_platform::Iommu<MmioRegisters, KernelPlatform>;

impl vtd_platform::PciView for PciSystem {
    type Groups<'a> = RwLockReadGuard<'a, pci::group::IsolationGroups>;

    fn topology(&self) -> &pci::Topology {
        &self.topology
    }

    fn groups(&self) -> Self::Groups<'_> {
        PciSystem::groups(self)
    }
}

/// Why the IOMMU could not be brought up.
#[derive(Debug)]
pub enum IommuInitError {
    /// The DMAR table is malformed.
    Dmar(iommu_vtd::DmarError),
    /// A unit's registers could not be mapped.
    Map(paging::MapError),
    /// A unit refused to start.
    Unit {
        /// Its register base.
        base: u64,
        /// Why.
        error: VtdError,
    },
}

impl fmt::Display for IommuInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dmar(e) => write!(f, "DMAR: {e}"),
            Self::Map(e) => write!(f, "mapping VT-d registers: {e}"),
            Self::Unit { base, error } => write!(f, "VT-d unit at {base:#x}: {error}"),
        }
    }
}

/// Interrupt remapping table entries per unit: room for every MSI/MSI-X vector of the
/// functions QEMU's topologies hold (a few dozen) and the I/O APIC's 24 pins, many times over.
pub const IRTE_ENTRIES: u32 = 256;

/// The I/O APICs' interrupt sources from the DMAR (empty before [`init`] or without a DMAR).
static IOAPIC_SOURCES: Once<alloc::vec::Vec<IoApicSource>> = Once::new();

/// Where each I/O APIC's interrupt requests come from, per the DMAR's device scopes.
pub fn ioapic_sources() -> &'static [IoApicSource] {
    IOAPIC_SOURCES.get().map_or(&[], |v| v.as_slice())
}

/// Brings every usable DRHD up. `None` when there is no IOMMU: no DMAR, or a DMAR without a
/// usable remapping unit (said once in the log). Structures the DMAR parser refused (a DRHD
/// with register base 0 or an absurd register size, an inverted or misaligned RMRR, a scope of
/// a reserved type) are logged and left out; only validated, bounded register windows are
/// mapped. With `intremap`, interrupt remapping is enabled on every unit offering it
/// (ECAP.IR; [`IRTE_ENTRIES`] entries, xAPIC mode, compatibility format blocked) right after its
/// queue is up; otherwise (`vtd.intremap=off`) interrupts are not remapped, which the boot log
/// says.
pub fn init(
    acpi: &Acpi,
    pci: &PciSystem,
    levels: Option<PagingLevels>,
    intremap: bool,
) -> Result<Option<Iommu>, IommuInitError> {
    let Some((_, bytes)) = acpi.dmar() else {
        return Ok(None);
    };
    let dmar = Dmar::parse(bytes).map_err(IommuInitError::Dmar)?;
    for refused in dmar.refused() {
        log::warn!("vt-d: {refused}");
    }
    if let Err(e) = dmar.require_unit() {
        let why = match e {
            iommu_vtd::DmarError::NoRemappingUnit { refused: 0 } => "the table has no DRHD",
            _ => "every DRHD was refused",
        };
        log::warn!("vt-d: DMAR has no usable remapping unit: no IOMMU ({why})");
        return Ok(None);
    }
    let haw = dmar.host_address_width();
    let mut iommu = Iommu::new(haw);
    for drhd in dmar.drhds() {
        let base = drhd.register_base();
        let size = drhd.register_size();
        let ptr = paging::map_phys(base, size, Cache::Uncached).map_err(IommuInitError::Map)?;
        let ptr = NonNull::new(ptr).ok_or(IommuInitError::Map(paging::MapError::BadRange))?;
        // SAFETY: the DRHD register page was just mapped uncached for `size` bytes, is never
        // unmapped, and only this unit object accesses it.
        let regs = unsafe { MmioRegisters::new(ptr, size as usize) };
        let unit = VtdUnit::new(regs, KernelPlatform, UnitConfig::new(haw))
            .map_err(|error| IommuInitError::Unit { base, error })?;
        // Queue, root table and global invalidation now; translation starts only once the
        // devices an RMRR names are attached ([`Iommu::start_translation`]), so they never lose
        // that memory.
        unit.prepare()
            .map_err(|error| IommuInitError::Unit { base, error })?;
        if !unit.capabilities().ecap.interrupt_remapping {
            log::info!("vt-d: unit {base:#x} has no interrupt remapping (ECAP.IR = 0)");
        } else if intremap {
            // xAPIC mode: QEMU 7.2 under TCG has no x2APIC and refuses EIM (QEMU 10 offers both;
            // this kernel does not use them yet).
            unit.enable_interrupt_remapping(IRTE_ENTRIES, false)
                .map_err(|error| IommuInitError::Unit { base, error })?;
        } else {
            log::warn!(
                "vt-d: interrupt remapping off on unit {base:#x} (vtd.intremap=off): devices can forge interrupts"
            );
        }
        // The deepest usable table (widest IOVA space) unless the command line picks one.
        let deepest = unit
            .capabilities()
            .cap
            .usable_levels()
            .last()
            .unwrap_or(PagingLevels::Three);
        let unit_levels = match levels {
            Some(l) if unit.capabilities().cap.supports_levels(l) => l,
            Some(l) => {
                log::warn!(
                    "vt-d: unit {base:#x} does not offer {}-level tables; using {}",
                    l.count(),
                    deepest.count()
                );
                deepest
            }
            None => deepest,
        };
        let (entry, unresolved) = UnitEntry::new(Arc::new(unit), &drhd, &pci.topology, unit_levels);
        for _ in 0..unresolved {
            log::warn!("vt-d: a device scope of unit {base:#x} does not resolve");
        }
        iommu.units.push(entry);
    }
    // Inverted or misaligned RMRRs were refused (and logged) by the parser.
    iommu
        .rmrrs
        .extend(dmar.rmrrs().map(|r| RmrrInfo::resolve(&r, &pci.topology)));
    let sources = vtd_platform::ioapic_sources(&dmar, &pci.topology);
    for s in &sources {
        log::info!(
            "vt-d: I/O APIC {} interrupts arrive from {} (unit {:#x})",
            s.ioapic_id,
            s.bdf,
            s.unit_base
        );
    }
    IOAPIC_SOURCES.call_once(|| sources);
    Ok(Some(iommu))
}
