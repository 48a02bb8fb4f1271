//! ACPI discovery with the `acpi` crate: RSDP from the PVH start info (BIOS-area scan as
//! fallback), RSDT/XSDT, the table list, and raw access to the tables later layers parse
//! themselves (MCFG for ECAM, DMAR for VT-d), and the interrupt controllers of the MADT (ACPI
//! 6.5 §5.2.12: local APIC address, I/O APICs, ISA interrupt source overrides).
//!
//! Firmware tables live in RAM the memory map marks reserved/ACPI, which the kernel does not map
//! at boot: the handler maps what the crate asks for on demand (write-back) and never unmaps (the
//! tables stay valid for the whole run, so the bytes can be handed out as `&'static [u8]`).

use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use bitfield_struct::bitfield;

use crate::mem::paging::{self, Cache};

/// Maps firmware memory for the `acpi` crate (identity, write-back, never unmapped).
#[derive(Debug, Clone, Copy)]
pub struct FirmwareMapper;

impl AcpiHandler for FirmwareMapper {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        let ptr = match paging::map_phys(phys as u64, size.max(1) as u64, Cache::WriteBack) {
            Ok(p) => p,
            // The crate's handler API has no error path; a table we cannot map is a broken
            // firmware setup on a boot path, reported as a panic with the reason.
            Err(e) => panic!("cannot map ACPI region {phys:#x}+{size:#x}: {e}"),
        };
        // SAFETY: identity mapping: the virtual address equals the (non-zero) physical address
        // just mapped for `size` bytes.
        unsafe { PhysicalMapping::new(phys, NonNull::new_unchecked(ptr.cast()), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// One table as listed at boot.
#[derive(Debug, Clone, Copy)]
pub struct TableInfo {
    /// Four-character signature.
    pub signature: [u8; 4],
    /// Length in bytes.
    pub length: u32,
    /// Revision.
    pub revision: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
}

/// The discovered ACPI tables.
pub struct Acpi {
    tables: AcpiTables<FirmwareMapper>,
    /// Physical address of the RSDP used.
    pub rsdp: u64,
}

/// Why ACPI discovery failed.
#[derive(Debug)]
pub struct AcpiInitError(pub acpi::AcpiError);

impl core::fmt::Display for AcpiInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ACPI discovery failed: {:?}", self.0)
    }
}

/// Finds and validates the tables.
pub fn init(rsdp_hint: Option<u64>) -> Result<Acpi, AcpiInitError> {
    if let Some(rsdp) = rsdp_hint {
        // SAFETY: the address comes from the PVH start info, which QEMU fills with the RSDP
        // address; the crate validates the signature and checksum.
        match unsafe { AcpiTables::from_rsdp(FirmwareMapper, rsdp as usize) } {
            Ok(tables) => return Ok(Acpi { tables, rsdp }),
            Err(e) => {
                log::warn!("RSDP from start info at {rsdp:#x} rejected ({e:?}); scanning BIOS area")
            }
        }
    }
    // SAFETY: the BIOS area (EBDA, 0xE0000-0xFFFFF) is identity-mapped low memory.
    let tables =
        unsafe { AcpiTables::search_for_rsdp_bios(FirmwareMapper) }.map_err(AcpiInitError)?;
    Ok(Acpi { tables, rsdp: 0 })
}

macro_rules! raw_table {
    ($name:ident, $sig:expr) => {
        /// A table located by signature, whose bytes later layers parse themselves.
        #[repr(C, packed)]
        struct $name {
            header: SdtHeader,
        }

        // SAFETY: the type is exactly an SdtHeader and SIGNATURE is the table's signature, so
        // find_table maps the whole `header.length` bytes of that table.
        unsafe impl AcpiTable for $name {
            const SIGNATURE: Signature = $sig;

            fn header(&self) -> &SdtHeader {
                &self.header
            }
        }
    };
}

raw_table!(RawDmar, Signature::DMAR);
raw_table!(RawMcfg, Signature::MCFG);

/// Polarity of an interrupt input (MPS INTI flags bits 1:0, ACPI §5.2.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// Conforms to the bus (ISA: active high).
    Conforming,
    /// Active high.
    ActiveHigh,
    /// Active low.
    ActiveLow,
}

/// Trigger mode of an interrupt input (MPS INTI flags bits 3:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Conforms to the bus (ISA: edge).
    Conforming,
    /// Edge triggered.
    Edge,
    /// Level triggered.
    Level,
}

/// MPS INTI flags, ACPI §5.2.12.5 table 5.50.
#[bitfield(u16)]
struct MpsIntiFlags {
    #[bits(2)]
    polarity: u8,
    #[bits(2)]
    trigger: u8,
    #[bits(12)]
    __: u16,
}

impl MpsIntiFlags {
    fn polarity_mode(self) -> Polarity {
        match self.polarity() {
            1 => Polarity::ActiveHigh,
            3 => Polarity::ActiveLow,
            _ => Polarity::Conforming,
        }
    }

    fn trigger_mode(self) -> Trigger {
        match self.trigger() {
            1 => Trigger::Edge,
            3 => Trigger::Level,
            _ => Trigger::Conforming,
        }
    }
}

/// Processor local APIC flags, ACPI §5.2.12.2 table 5.47.
#[bitfield(u32)]
struct LocalApicFlags {
    enabled: bool,
    online_capable: bool,
    #[bits(30)]
    __: u32,
}

/// One I/O APIC of the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicInfo {
    /// Its I/O APIC ID.
    pub id: u8,
    /// Physical address of its register window.
    pub address: u64,
    /// The GSI of its input 0.
    pub gsi_base: u32,
}

/// An ISA interrupt source override: ISA IRQ `irq` arrives on `gsi` with these flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaOverride {
    /// The ISA IRQ.
    pub irq: u8,
    /// The global system interrupt it is wired to.
    pub gsi: u32,
    /// Input polarity.
    pub polarity: Polarity,
    /// Trigger mode.
    pub trigger: Trigger,
}

/// The interrupt controllers the MADT describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadtInfo {
    /// Physical address of the local APIC (the 64-bit override if present).
    pub local_apic_address: u64,
    /// Enabled processor local APICs.
    pub local_apics: usize,
    /// Every I/O APIC.
    pub io_apics: Vec<IoApicInfo>,
    /// ISA interrupt source overrides.
    pub overrides: Vec<IsaOverride>,
    /// Whether the platform also has dual 8259 PICs (PCAT_COMPAT).
    pub has_8259: bool,
}

/// Why the MADT could not be read.
#[derive(Debug)]
pub struct MadtError(pub acpi::AcpiError);

impl core::fmt::Display for MadtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MADT unusable: {:?}", self.0)
    }
}

impl core::error::Error for MadtError {}

impl Acpi {
    /// The MADT's interrupt controllers.
    ///
    /// # Errors
    ///
    /// [`MadtError`] when there is no MADT (or it cannot be mapped).
    pub fn madt(&self) -> Result<MadtInfo, MadtError> {
        let mapping = self.tables.find_table::<Madt>().map_err(MadtError)?;
        let madt = mapping.get();
        let mut info = MadtInfo {
            local_apic_address: u64::from(madt.local_apic_address),
            local_apics: 0,
            io_apics: Vec::new(),
            overrides: Vec::new(),
            has_8259: madt.supports_8259(),
        };
        for entry in madt.entries() {
            match entry {
                MadtEntry::LocalApic(e) if LocalApicFlags::from_bits(e.flags).enabled() => {
                    info.local_apics += 1;
                }
                MadtEntry::IoApic(e) => info.io_apics.push(IoApicInfo {
                    id: e.io_apic_id,
                    address: u64::from(e.io_apic_address),
                    gsi_base: { e.global_system_interrupt_base },
                }),
                MadtEntry::InterruptSourceOverride(e) if e.bus == 0 => {
                    let flags = MpsIntiFlags::from_bits(e.flags);
                    info.overrides.push(IsaOverride {
                        irq: e.irq,
                        gsi: { e.global_system_interrupt },
                        polarity: flags.polarity_mode(),
                        trigger: flags.trigger_mode(),
                    });
                }
                MadtEntry::LocalApicAddressOverride(e) => {
                    info.local_apic_address = e.local_apic_address;
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Every table the RSDT/XSDT lists (headers validated by the crate).
    pub fn list(&self) -> Vec<TableInfo> {
        self.tables
            .headers()
            .map(|h| TableInfo {
                signature: *h
                    .signature
                    .as_str()
                    .as_bytes()
                    .first_chunk()
                    .unwrap_or(b"????"),
                length: h.length,
                revision: h.revision,
                oem_id: h.oem_id,
            })
            .collect()
    }

    /// The DMAR table (header included) and its physical address.
    pub fn dmar(&self) -> Option<(u64, &'static [u8])> {
        self.raw::<RawDmar>()
    }

    /// Whether the firmware describes an IOMMU the kernel can use: a DMAR that parses and has
    /// at least one usable remapping unit ([`iommu_vtd::Dmar::require_unit`]). A DMAR without
    /// one (no DRHD, or only refused ones) means no IOMMU, exactly as no DMAR does.
    pub fn has_usable_iommu(&self) -> bool {
        self.dmar()
            .and_then(|(_, bytes)| iommu_vtd::Dmar::parse(bytes).ok())
            .is_some_and(|dmar| dmar.require_unit().is_ok())
    }

    /// The MCFG table (header included) and its physical address.
    pub fn mcfg(&self) -> Option<(u64, &'static [u8])> {
        self.raw::<RawMcfg>()
    }

    fn raw<T: AcpiTable>(&self) -> Option<(u64, &'static [u8])> {
        let mapping = self.tables.find_table::<T>().ok()?;
        let len = mapping.region_length();
        let phys = mapping.physical_start() as u64;
        // SAFETY: the handler mapped `len` bytes at the identity address and never unmaps them;
        // firmware tables are never modified after boot.
        let bytes = unsafe { core::slice::from_raw_parts(phys as *const u8, len) };
        Some((phys, bytes))
    }

    /// The underlying `acpi` crate view (e.g. for `PciConfigRegions`).
    pub fn tables(&self) -> &AcpiTables<FirmwareMapper> {
        &self.tables
    }
}
