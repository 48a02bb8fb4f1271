//! The PVH start-of-day block (`struct hvm_start_info`, Xen `arch-x86/hvm/start_info.h`).
//!
//! QEMU passes its physical address in `%ebx`. We copy what we need (command line, memory map,
//! RSDP address) into kernel-owned storage before the frame allocator may reuse any memory.

use core::ptr;

/// `hvm_start_info.magic` ("xEn3" with the high bit of each byte set, as Xen defines it).
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Memory-map entry types from the PVH ABI (the same numbering as E820).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// Usable RAM.
    Ram,
    /// Reserved by the platform.
    Reserved,
    /// ACPI tables (reclaimable after reading).
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Bad memory.
    Unusable,
    /// Anything else.
    Other(u32),
}

impl MemoryType {
    fn from_raw(t: u32) -> Self {
        match t {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            x => Self::Other(x),
        }
    }
}

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// What the firmware says the range is.
    pub kind: MemoryType,
}

impl MemoryRegion {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

#[repr(C)]
struct RawStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
struct RawMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

const MAX_REGIONS: usize = 64;
const MAX_CMDLINE: usize = 1024;

/// What the kernel keeps from the start info.
pub struct BootInfo {
    regions: [MemoryRegion; MAX_REGIONS],
    region_count: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Physical address of the ACPI RSDP, if QEMU gave one.
    pub rsdp: Option<u64>,
    /// Start-info version.
    pub version: u32,
}

impl BootInfo {
    /// The memory map, in firmware order.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    /// The command line (invalid UTF-8 is cut at the first bad byte).
    pub fn cmdline(&self) -> &str {
        let bytes = &self.cmdline[..self.cmdline_len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Why the start info could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// `%ebx` was 0.
    Null,
    /// The magic number is wrong (not booted through PVH).
    BadMagic(u32),
}

/// Copies the start info at `paddr` into a [`BootInfo`].
///
/// # Safety
/// `paddr` must be the value QEMU passed in `%ebx`, identity-mapped, with the structures it points
/// to intact (called before anything else allocates memory).
pub unsafe fn read(paddr: u32) -> Result<BootInfo, StartInfoError> {
    if paddr == 0 {
        return Err(StartInfoError::Null);
    }
    // SAFETY: the caller guarantees paddr points to a mapped hvm_start_info.
    let si = unsafe { ptr::read_unaligned(paddr as usize as *const RawStartInfo) };
    if si.magic != START_INFO_MAGIC {
        return Err(StartInfoError::BadMagic(si.magic));
    }
    let mut info = BootInfo {
        regions: [MemoryRegion {
            base: 0,
            size: 0,
            kind: MemoryType::Other(0),
        }; MAX_REGIONS],
        region_count: 0,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
        rsdp: (si.rsdp_paddr != 0).then_some(si.rsdp_paddr),
        version: si.version,
    };
    if si.version >= 1 && si.memmap_paddr != 0 {
        let n = (si.memmap_entries as usize).min(MAX_REGIONS);
        for i in 0..n {
            // SAFETY: QEMU wrote memmap_entries entries at memmap_paddr (caller contract).
            let e = unsafe {
                ptr::read_unaligned((si.memmap_paddr as usize as *const RawMemmapEntry).add(i))
            };
            info.regions[i] = MemoryRegion {
                base: e.addr,
                size: e.size,
                kind: MemoryType::from_raw(e.kind),
            };
        }
        info.region_count = n;
    }
    if si.cmdline_paddr != 0 {
        let p = si.cmdline_paddr as usize as *const u8;
        let mut n = 0;
        // SAFETY: the command line is a NUL-terminated string (caller contract); we stop at the
        // terminator or at our buffer size.
        while n < MAX_CMDLINE && unsafe { p.add(n).read() } != 0 {
            // SAFETY: as above.
            info.cmdline[n] = unsafe { p.add(n).read() };
            n += 1;
        }
        info.cmdline_len = n;
    }
    Ok(info)
}
