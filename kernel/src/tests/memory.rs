//! Memory tests: frame allocator, kernel page tables, MMIO mapping, heap.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use kernel::frames::{FrameError, FrameRequest};

use x86_64::registers::model_specific::Msr;

use crate::ktest::{Failure, OrFail, Suite, Test, TestResult};
use crate::mem::paging::{self, Cache, MapError};
use crate::mem::{self, heap, PhysPages};
use crate::{check, check_eq, Kernel};

pub const SUITE: Suite = Suite {
    name: "memory",
    explicit_only: false,
    tests: &[
        Test {
            name: "frames_alloc_free",
            run: frames_alloc_free,
        },
        Test {
            name: "frames_double_free_refused",
            run: frames_double_free_refused,
        },
        Test {
            name: "phys_pages_zeroed_and_freed",
            run: phys_pages_zeroed_and_freed,
        },
        Test {
            name: "null_page_unmapped",
            run: null_page_unmapped,
        },
        Test {
            name: "mmio_mapped_uncached",
            run: mmio_mapped_uncached,
        },
        Test {
            name: "map_phys_bad_input",
            run: map_phys_bad_input,
        },
        Test {
            name: "dma_ram_excludes_image_and_mmio",
            run: dma_ram_excludes_image_and_mmio,
        },
        Test {
            name: "heap_smoke",
            run: heap_smoke,
        },
        Test {
            name: "heap_large",
            run: heap_large,
        },
    ],
};

/// 64 MiB in frames: low enough to exclude most of RAM, high enough to lie above the heap.
const LIMIT_FRAMES: usize = 0x4000;

fn frames_alloc_free(_: &Kernel) -> TestResult {
    let before = mem::frame_stats().free;
    let one = mem::alloc_frames(FrameRequest::one()).or_fail("one frame")?;
    let run = mem::alloc_frames(FrameRequest {
        count: 16,
        align: 16,
        limit: None,
        min: 0,
    })
    .or_fail("16 aligned")?;
    let low = mem::alloc_frames(FrameRequest {
        count: 4,
        align: 1,
        limit: Some(LIMIT_FRAMES),
        min: 0,
    })
    .or_fail("below 64 MiB")?;
    check_eq!(run % (16 * 4096), 0);
    check!(
        low + 4 * 4096 <= LIMIT_FRAMES as u64 * 4096,
        "frames at {low:#x} are above the 64 MiB limit"
    );
    check!(one != run && one != low, "overlapping allocations");
    check_eq!(mem::frame_stats().free, before - 21);
    mem::free_frames(one, 1).or_fail("free one")?;
    mem::free_frames(run, 16).or_fail("free run")?;
    mem::free_frames(low, 4).or_fail("free low")?;
    check_eq!(mem::frame_stats().free, before);
    Ok(())
}

fn frames_double_free_refused(_: &Kernel) -> TestResult {
    let f = mem::alloc_frames(FrameRequest::one()).or_fail("one frame")?;
    mem::free_frames(f, 1).or_fail("first free")?;
    let before = mem::frame_stats().free;
    check_eq!(
        mem::free_frames(f, 1),
        Err(FrameError::NotAllocated {
            frame: (f / 4096) as usize
        })
    );
    check_eq!(mem::frame_stats().free, before);
    Ok(())
}

fn phys_pages_zeroed_and_freed(_: &Kernel) -> TestResult {
    let before = mem::frame_stats().free;
    {
        let mut p = PhysPages::alloc(FrameRequest::contiguous(3)).or_fail("3 pages")?;
        check!(p.as_slice().iter().all(|&b| b == 0), "pages not zeroed");
        check_eq!(p.paddr() % 4096, 0);
        check_eq!(p.as_ptr() as u64, p.paddr());
        p.as_mut_slice()[4096 * 3 - 1] = 0xaa;
        check_eq!(p.as_slice()[4096 * 3 - 1], 0xaa);
        check_eq!(mem::frame_stats().free, before - 3);
    }
    check_eq!(mem::frame_stats().free, before);
    Ok(())
}

fn null_page_unmapped(_: &Kernel) -> TestResult {
    check!(!paging::is_mapped(0), "page 0 is mapped");
    check!(paging::is_mapped(0x1000), "low memory is not mapped");
    Ok(())
}

/// The memory type the CPU uses for the page mapping `addr` (0 = UC, 6 = WB, ...): the PAT
/// entry selected by the leaf's PWT, PCD and PAT bits, read from IA32_PAT (Intel SDM vol. 3,
/// §13.12.3).
fn memory_type(addr: u64) -> Result<u8, Failure> {
    let (entry, size) = paging::leaf_entry(addr).or_fail("leaf entry")?;
    let pat_bit = if size == 4096 { 7 } else { 12 };
    let index = ((entry >> 3) & 1) | ((entry >> 4) & 1) << 1 | ((entry >> pat_bit) & 1) << 2;
    // SAFETY: IA32_PAT (0x277) exists on every x86_64 CPU; reading it has no side effects.
    let pat = unsafe { Msr::new(0x277).read() };
    Ok(((pat >> (8 * index)) & 0x7) as u8)
}

/// HPET (QEMU q35 places it at 0xFED00000): mapped uncached, checked in the page tables (the
/// leaf's PWT/PCD/PAT bits select the UC type in IA32_PAT; a RAM page, the control, is WB) and
/// by reading the capability register: a vendor ID and a non-zero counter period prove the
/// access reached the device.
fn mmio_mapped_uncached(_: &Kernel) -> TestResult {
    const HPET: u64 = 0xfed0_0000;
    const UC: u8 = 0;
    const WB: u8 = 6;
    let regs = paging::map_phys(HPET, 0x400, Cache::Uncached).or_fail("map HPET")?;
    check_eq!(memory_type(HPET)?, UC);
    let ram = PhysPages::alloc(FrameRequest::one()).or_fail("a RAM page")?;
    check_eq!(memory_type(ram.paddr())?, WB);
    // SAFETY: the HPET general capabilities register is a read-only 64-bit register at offset 0
    // of the page just mapped uncached.
    let cap = unsafe { (regs as *const u64).read_volatile() };
    let vendor = (cap >> 16) & 0xffff;
    let period_fs = cap >> 32;
    check!(vendor != 0 && vendor != 0xffff, "HPET vendor {vendor:#x}");
    check!(
        (1..=100_000_000).contains(&period_fs),
        "HPET period {period_fs} fs"
    );
    // Mapping the same range again is idempotent and keeps it uncached.
    paging::map_phys(HPET, 0x400, Cache::Uncached).or_fail("map HPET again")?;
    check_eq!(memory_type(HPET)?, UC);
    Ok(())
}

fn map_phys_bad_input(_: &Kernel) -> TestResult {
    check_eq!(
        paging::map_phys(0x20_0000, 0, Cache::Uncached),
        Err(MapError::BadRange)
    );
    check_eq!(
        paging::map_phys(u64::MAX - 10, 100, Cache::Uncached),
        Err(MapError::BadRange)
    );
    let ram = mem::image().data_start;
    check_eq!(
        paging::map_phys(ram, 4096, Cache::Uncached),
        Err(MapError::ConflictingMapping { page: ram & !0xfff })
    );
    Ok(())
}

/// The DMA layer may copy only to and from RAM frames: never the kernel image, low memory,
/// MMIO, or a range running off the end of a RAM region.
fn dma_ram_excludes_image_and_mmio(_: &Kernel) -> TestResult {
    let p = PhysPages::alloc(FrameRequest::one()).or_fail("a page")?;
    check!(
        mem::is_dma_ram(p.paddr(), 4096),
        "an allocated frame is not DMA RAM"
    );
    let img = mem::image();
    check!(!mem::is_dma_ram(img.start, 16), "kernel text accepted");
    check!(!mem::is_dma_ram(img.data_start, 16), "kernel data accepted");
    check!(!mem::is_dma_ram(0x1000, 16), "low memory accepted");
    check!(!mem::is_dma_ram(0xfed0_0000, 8), "HPET MMIO accepted");
    check!(!mem::is_dma_ram(p.paddr(), 0), "zero length accepted");
    check!(!mem::is_dma_ram(u64::MAX - 10, 100), "overflow accepted");
    Ok(())
}

fn heap_smoke(_: &Kernel) -> TestResult {
    let before = heap::used();
    {
        let b = Box::new([7u64; 64]);
        let mut v: Vec<u32> = (0..100_000).collect();
        v.retain(|x| x % 3 == 0);
        let mut m = BTreeMap::new();
        for i in 0..1000u32 {
            m.insert(i.wrapping_mul(2_654_435_761), i);
        }
        check_eq!(b.iter().sum::<u64>(), 7 * 64);
        check_eq!(v.len(), 33_334);
        check_eq!(m.len(), 1000);
        check_eq!(alloc::format!("{:x}", 0xfeed_u32), "feed");
    }
    check_eq!(heap::used(), before);
    Ok(())
}

fn heap_large(_: &Kernel) -> TestResult {
    let n = 8 << 20;
    let mut v = Vec::<u8>::new();
    v.try_reserve_exact(n).or_fail("8 MiB from the heap")?;
    v.resize(n, 0x5a);
    check!(v.iter().all(|&b| b == 0x5a), "8 MiB buffer corrupted");
    Ok(())
}
