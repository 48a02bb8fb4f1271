//! Kernel page tables, built with the `x86_64` crate's `OffsetPageTable` at offset 0 (identity).
//!
//! At boot the PVH entry code maps the first 1 GiB with 2 MiB pages. [`init`] builds the real
//! tables while still running on those (so every table frame it allocates lies below 1 GiB and
//! is reachable), then switches CR3:
//! - page 0 unmapped (null pointers fault), the rest of low memory RW/NX;
//! - the image: text RX, read-only data R/NX, data and bss RW/NX (4 KiB pages);
//! - all other RAM RW/NX, with 2 MiB pages where aligned;
//! - nothing else: firmware tables and MMIO are mapped on demand by [`map_phys`], MMIO uncached
//!   (PCD|PWT, UC with the reset PAT).

use core::fmt;

use kernel::frames::FrameRequest;
use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{MapToError, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as F,
    PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::pvh::{BootInfo, MemoryType};

const BOOT_MAPPED_LIMIT: u64 = 1 << 30;

static MAPPER: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// Cache attribute for an on-demand mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Normal write-back memory (firmware tables in RAM).
    WriteBack,
    /// Uncached (device registers, PCI BARs).
    Uncached,
}

/// Why [`map_phys`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Paging is not initialised yet.
    NotReady,
    /// Zero length or `phys + len` overflows.
    BadRange,
    /// A page is already mapped with another cache attribute (e.g. MMIO requested over RAM).
    ConflictingMapping {
        /// The page's address.
        page: u64,
    },
    /// No frame was available for a page table.
    OutOfMemory,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotReady => f.write_str("kernel paging is not initialised"),
            Self::BadRange => f.write_str("empty or overflowing physical range"),
            Self::ConflictingMapping { page } => {
                write!(
                    f,
                    "page {page:#x} is already mapped with other cache attributes"
                )
            }
            Self::OutOfMemory => f.write_str("out of frames for page tables"),
        }
    }
}

impl core::error::Error for MapError {}

struct TableFrames {
    limit: Option<u64>,
}

// SAFETY: every frame returned comes from the frame allocator, is unused and 4 KiB aligned.
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let limit = self.limit.map(|l| (l / Size4KiB::SIZE) as usize);
        let paddr = super::alloc_frames(FrameRequest {
            count: 1,
            align: 1,
            limit,
            min: 0,
        })?;
        Some(PhysFrame::containing_address(PhysAddr::new(paddr)))
    }
}

fn map_range(
    m: &mut OffsetPageTable<'static>,
    start: u64,
    end: u64,
    flags: F,
    fa: &mut TableFrames,
) {
    let mut addr = start & !(Size4KiB::SIZE - 1);
    while addr < end {
        let huge = addr.is_multiple_of(Size2MiB::SIZE) && addr + Size2MiB::SIZE <= end;
        let result = if huge {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(addr));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
            // SAFETY: identity mapping of RAM or firmware memory; the tables are not live yet.
            unsafe { m.map_to(page, frame, flags | F::HUGE_PAGE, fa) }
                .map(|f| f.ignore())
                .map_err(|e| map_err_name(&e))
        } else {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
            let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(addr));
            // SAFETY: as above.
            unsafe { m.map_to(page, frame, flags, fa) }
                .map(|f| f.ignore())
                .map_err(|e| map_err_name(&e))
        };
        if let Err(e) = result {
            log::warn!("identity map of {addr:#x}: {e}");
        }
        addr += if huge { Size2MiB::SIZE } else { Size4KiB::SIZE };
    }
}

fn map_err_name<S: PageSize>(e: &MapToError<S>) -> &'static str {
    match e {
        MapToError::FrameAllocationFailed => "frame allocation failed",
        MapToError::ParentEntryHugePage => "parent entry is a huge page",
        MapToError::PageAlreadyMapped(_) => "page already mapped",
    }
}

/// Builds the kernel page tables and switches to them.
pub fn init(info: &BootInfo) {
    let mut fa = TableFrames {
        limit: Some(BOOT_MAPPED_LIMIT),
    };
    let pml4_frame = fa
        .allocate_frame()
        .expect("no frame below 1 GiB for the PML4");
    let pml4_ptr = pml4_frame.start_address().as_u64() as *mut PageTable;
    // SAFETY: the frame is freshly allocated, below 1 GiB (mapped by the boot tables) and owned by
    // the kernel page tables for the rest of the run.
    let pml4 = unsafe {
        pml4_ptr.write(PageTable::new());
        &mut *pml4_ptr
    };
    // SAFETY: offset 0 is correct: all table frames are identity-mapped (below 1 GiB now, and all
    // RAM once the new tables are live).
    let mut m = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(0)) };

    let rw = F::PRESENT | F::WRITABLE | F::NO_EXECUTE;
    map_range(&mut m, 0x1000, 0x10_0000, rw, &mut fa);

    let img = super::image();
    for r in info.regions().iter().filter(|r| r.kind == MemoryType::Ram) {
        let (start, end) = (r.base.max(0x10_0000), r.end().min(super::MAX_PHYS));
        if start >= end {
            continue;
        }
        if start < img.start {
            map_range(&mut m, start, end.min(img.start), rw, &mut fa);
        }
        if end > img.end {
            map_range(&mut m, start.max(img.end), end, rw, &mut fa);
        }
    }
    map_range(&mut m, img.start, img.text_end, F::PRESENT, &mut fa);
    map_range(
        &mut m,
        img.text_end,
        img.data_start,
        F::PRESENT | F::NO_EXECUTE,
        &mut fa,
    );
    map_range(&mut m, img.data_start, img.end, rw, &mut fa);

    // SAFETY: the new tables map everything the kernel is currently using (image, stacks in bss,
    // low memory, all RAM) at the same addresses, so execution continues seamlessly.
    unsafe {
        Cr3::write(pml4_frame, Cr3Flags::empty());
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
    }
    *MAPPER.lock() = Some(m);
}

/// Makes `[phys, phys + len)` accessible at the same virtual address with the given cache
/// attribute. Pages already mapped with a compatible attribute are left alone.
pub fn map_phys(phys: u64, len: u64, cache: Cache) -> Result<*mut u8, MapError> {
    let end = phys
        .checked_add(len)
        .filter(|_| len > 0)
        .ok_or(MapError::BadRange)?;
    let mut guard = MAPPER.lock();
    let m = guard.as_mut().ok_or(MapError::NotReady)?;
    let uncached = F::NO_CACHE | F::WRITE_THROUGH;
    let mut flags = F::PRESENT | F::WRITABLE | F::NO_EXECUTE;
    if cache == Cache::Uncached {
        flags |= uncached;
    }
    let mut fa = TableFrames { limit: None };
    let mut addr = phys & !(Size4KiB::SIZE - 1);
    while addr < end {
        // Large windows (ECAM: 256 MiB) use 2 MiB pages where the whole page is in range and
        // nothing in it is mapped yet; map_to refuses a 2 MiB page over an existing table.
        if addr.is_multiple_of(Size2MiB::SIZE) && addr + Size2MiB::SIZE <= end {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(addr));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(addr));
            // SAFETY: identity mapping of a physical range the caller wants to access; map_to
            // only succeeds if the 2 MiB page was entirely unmapped.
            if let Ok(flush) = unsafe { m.map_to(page, frame, flags | F::HUGE_PAGE, &mut fa) } {
                flush.flush();
                addr += Size2MiB::SIZE;
                continue;
            }
        }
        match m.translate(VirtAddr::new(addr)) {
            TranslateResult::Mapped { flags: have, .. } => {
                if have.contains(F::NO_CACHE) != (cache == Cache::Uncached) {
                    return Err(MapError::ConflictingMapping { page: addr });
                }
            }
            _ => {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(addr));
                let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(addr));
                // SAFETY: identity mapping of a physical range the caller wants to access; the
                // range was not mapped before, so no existing reference changes meaning.
                unsafe { m.map_to(page, frame, flags, &mut fa) }
                    .map_err(|e| match e {
                        MapToError::FrameAllocationFailed => MapError::OutOfMemory,
                        _ => MapError::ConflictingMapping { page: addr },
                    })?
                    .flush();
            }
        }
        addr += Size4KiB::SIZE;
    }
    Ok(phys as *mut u8)
}

/// Whether `addr` is mapped in the kernel page tables.
pub fn is_mapped(addr: u64) -> bool {
    MAPPER.lock().as_ref().is_some_and(|m| {
        matches!(
            m.translate(VirtAddr::new(addr)),
            TranslateResult::Mapped { .. }
        )
    })
}

/// The leaf entry that maps `addr` in the kernel page tables: the raw entry (cache-control
/// bits PWT, PCD and PAT included: PAT is bit 7 of a 4 KiB entry, bit 12 of a larger one) and
/// the page size. `None` when unmapped or before [`init`]. Read-only: nothing changes.
pub fn leaf_entry(addr: u64) -> Option<(u64, u64)> {
    let guard = MAPPER.lock();
    guard.as_ref()?;
    let (pml4, _) = Cr3::read();
    let mut table = pml4.start_address().as_u64();
    for level in (1..=4u32).rev() {
        let index = (addr >> (12 + 9 * (level - 1))) & 0x1ff;
        // SAFETY: every table frame is RAM, identity-mapped, owned by the kernel page tables;
        // the mapper lock held above keeps writers out while we read.
        let entry = unsafe { ((table + index * 8) as *const u64).read_volatile() };
        if entry & F::PRESENT.bits() == 0 {
            return None;
        }
        let size = 1u64 << (12 + 9 * (level - 1));
        if level == 1 || (level <= 3 && entry & F::HUGE_PAGE.bits() != 0) {
            return Some((entry, size));
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    None
}
