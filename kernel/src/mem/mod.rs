//! Kernel memory: the physical frame allocator fed from the PVH memory map, the kernel page
//! tables (identity mapping of RAM, MMIO mapped uncached on demand), and the heap.
//!
//! Virtual address = physical address everywhere in this kernel: there is one address space and
//! no user mode, so identity mapping keeps DMA code honest (the address a driver computes is the
//! one the device sees before the IOMMU) while page protections still catch null pointers
//! (page 0 is never mapped), writes to code, and execution of data.

pub mod heap;
pub mod paging;

use core::fmt;

use kernel::frames::{FrameBitmap, FrameRequest, FRAME_SIZE};
use spin::Mutex;

use crate::pvh::{BootInfo, MemoryType};

/// Highest physical address the frame bitmap covers (64 GiB); RAM above is ignored with a warning.
pub const MAX_PHYS: u64 = 64 << 30;
const BITMAP_WORDS: usize = (MAX_PHYS / FRAME_SIZE / 64) as usize;

static mut BITMAP_STORAGE: [u64; BITMAP_WORDS] = [0; BITMAP_WORDS];
static FRAMES: Mutex<Option<FrameBitmap<'static>>> = Mutex::new(None);

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
    static __text_end: u8;
    static __data_start: u8;
}

/// Physical extent of the kernel image.
#[derive(Debug, Clone, Copy)]
pub struct ImageLayout {
    /// First byte of the image (text).
    pub start: u64,
    /// End of text (start of read-only data).
    pub text_end: u64,
    /// Start of writable data.
    pub data_start: u64,
    /// End of the image (after bss).
    pub end: u64,
}

/// The image layout from the linker symbols.
pub fn image() -> ImageLayout {
    ImageLayout {
        start: core::ptr::addr_of!(__kernel_start) as u64,
        text_end: core::ptr::addr_of!(__text_end) as u64,
        data_start: core::ptr::addr_of!(__data_start) as u64,
        end: core::ptr::addr_of!(__kernel_end) as u64,
    }
}

/// Summary of what the frame allocator manages.
#[derive(Debug, Clone, Copy)]
pub struct FrameStats {
    /// Free frames.
    pub free: usize,
    /// Frames handed to the allocator at boot.
    pub total: usize,
}

static TOTAL_FRAMES: spin::Once<usize> = spin::Once::new();

/// Most RAM regions remembered for [`is_dma_ram`].
const MAX_RAM_REGIONS: usize = 32;
/// RAM regions of the memory map (base, end), clipped to the managed range, set once at boot.
static RAM_REGIONS: spin::Once<([(u64, u64); MAX_RAM_REGIONS], usize)> = spin::Once::new();

/// Whether `[addr, addr + len)` lies entirely in one RAM region of the memory map, above 1 MiB
/// and outside the kernel image: memory the DMA layer may copy to and from. Zero length is
/// never RAM.
pub fn is_dma_ram(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len).filter(|_| len > 0) else {
        return false;
    };
    let img = image();
    if addr < 1 << 20 || (addr < img.end && end > img.start) {
        return false;
    }
    RAM_REGIONS
        .get()
        .is_some_and(|(r, n)| r[..*n].iter().any(|&(b, e)| addr >= b && end <= e))
}

/// Builds the frame allocator from the memory map: RAM regions above 1 MiB minus the image.
pub fn init_frames(info: &BootInfo) {
    // SAFETY: the storage is used only through this one FrameBitmap, created once here.
    let words: &'static mut [u64; BITMAP_WORDS] =
        unsafe { &mut *core::ptr::addr_of_mut!(BITMAP_STORAGE) };
    let mut bitmap = FrameBitmap::new(words);
    let mut total = 0;
    for r in info.regions().iter().filter(|r| r.kind == MemoryType::Ram) {
        let start = r.base.max(1 << 20).next_multiple_of(FRAME_SIZE);
        let end = r.end() & !(FRAME_SIZE - 1);
        if end <= start {
            continue;
        }
        let count = ((end - start) / FRAME_SIZE) as usize;
        let added = bitmap.add_free((start / FRAME_SIZE) as usize, count);
        if added < count {
            log::warn!(
                "RAM above {:#x} is not managed ({} frames ignored)",
                MAX_PHYS,
                count - added
            );
        }
        total += added;
    }
    RAM_REGIONS.call_once(|| {
        let mut out = [(0, 0); MAX_RAM_REGIONS];
        let mut n = 0;
        for r in info
            .regions()
            .iter()
            .filter(|r| r.kind == MemoryType::Ram)
            .take(MAX_RAM_REGIONS)
        {
            out[n] = (r.base, r.end().min(MAX_PHYS));
            n += 1;
        }
        (out, n)
    });
    let img = image();
    let first = (img.start / FRAME_SIZE) as usize;
    let last = img.end.div_ceil(FRAME_SIZE) as usize;
    bitmap.reserve(first, last - first);
    total -= total.min(last - first);
    TOTAL_FRAMES.call_once(|| total);
    *FRAMES.lock() = Some(bitmap);
}

/// Frame allocator statistics.
pub fn frame_stats() -> FrameStats {
    let free = x86_64::instructions::interrupts::without_interrupts(|| {
        FRAMES.lock().as_ref().map_or(0, |b| b.free_frames())
    });
    FrameStats {
        free,
        total: TOTAL_FRAMES.get().copied().unwrap_or(0),
    }
}

/// Allocates physical frames; returns the physical address of the first.
pub fn alloc_frames(req: FrameRequest) -> Option<u64> {
    // Interrupts off around the lock: a handler may free frames (`arch::irq` rules).
    x86_64::instructions::interrupts::without_interrupts(|| {
        FRAMES
            .lock()
            .as_mut()?
            .alloc(req)
            .map(|f| f as u64 * FRAME_SIZE)
    })
}

/// Returns frames to the allocator.
pub fn free_frames(paddr: u64, count: usize) -> Result<(), kernel::frames::FrameError> {
    x86_64::instructions::interrupts::without_interrupts(|| free_frames_locked(paddr, count))
}

fn free_frames_locked(paddr: u64, count: usize) -> Result<(), kernel::frames::FrameError> {
    match FRAMES.lock().as_mut() {
        Some(b) => b.free((paddr / FRAME_SIZE) as usize, count),
        None => Err(kernel::frames::FrameError::OutOfRange {
            frame: (paddr / FRAME_SIZE) as usize,
        }),
    }
}

/// Why physical pages could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No run of free frames satisfies the request.
    OutOfMemory {
        /// Pages asked for.
        pages: usize,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { pages } => write!(f, "no {pages} contiguous free pages"),
        }
    }
}

impl core::error::Error for AllocError {}

/// Physically contiguous pages owned by the holder (zeroed unless allocated with
/// [`PhysPages::alloc_unzeroed`]), freed on drop.
///
/// Identity mapping makes the physical address also a valid pointer.
pub struct PhysPages {
    paddr: u64,
    pages: usize,
}

impl PhysPages {
    /// Allocates `req.count` zeroed pages.
    pub fn alloc(req: FrameRequest) -> Result<Self, AllocError> {
        let paddr = alloc_frames(req).ok_or(AllocError::OutOfMemory { pages: req.count })?;
        let p = Self {
            paddr,
            pages: req.count,
        };
        // SAFETY: the frames were just allocated to us, are RAM and identity-mapped writable.
        unsafe { core::ptr::write_bytes(p.paddr as *mut u8, 0, p.len()) };
        Ok(p)
    }

    /// Allocates `req.count` pages *without* zeroing them: for memory whose contents belong to
    /// someone else (a guest's RAM backing, gigabytes that zeroing under emulation would spend
    /// seconds on). The bytes are whatever the RAM held.
    pub fn alloc_unzeroed(req: FrameRequest) -> Result<Self, AllocError> {
        let paddr = alloc_frames(req).ok_or(AllocError::OutOfMemory { pages: req.count })?;
        Ok(Self {
            paddr,
            pages: req.count,
        })
    }

    /// Physical (= virtual) address of the first byte.
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.pages * FRAME_SIZE as usize
    }

    /// Raw pointer to the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.paddr as *mut u8
    }

    /// The contents (device DMA may change them behind the CPU's back: read them with volatile
    /// accesses or after the DMA is known complete).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: owned, mapped RAM of len() bytes; every bit pattern is a valid u8 (zeroed at
        // allocation, or whatever the RAM held for `alloc_unzeroed`).
        unsafe { core::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The contents, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self gives exclusive CPU access.
        unsafe { core::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }
}

impl Drop for PhysPages {
    fn drop(&mut self) {
        if let Err(e) = free_frames(self.paddr, self.pages) {
            log::error!("freeing {:#x}+{} pages: {e}", self.paddr, self.pages);
        }
    }
}
