//! The kernel heap (`alloc`): a linked-list allocator over one contiguous run of frames.
//!
//! Interrupt-safe: every allocation and free runs with interrupts disabled around the
//! allocator's lock, so an interrupt handler may allocate or free (a handler interrupting a
//! mainline allocation cannot happen, so it can never spin on a lock its own CPU holds).

use core::alloc::{GlobalAlloc, Layout};

use kernel::frames::{FrameRequest, FRAME_SIZE};
use linked_list_allocator::LockedHeap;
use x86_64::instructions::interrupts::without_interrupts;

/// Heap size in bytes.
pub const HEAP_SIZE: usize = 32 << 20;

/// [`LockedHeap`] with its critical sections run with interrupts disabled.
struct IrqSafeHeap(LockedHeap);

// SAFETY: delegates to LockedHeap's GlobalAlloc implementation unchanged; disabling interrupts
// around each call does not change what is allocated.
unsafe impl GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        without_interrupts(|| unsafe { self.0.alloc(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        without_interrupts(|| unsafe { self.0.dealloc(ptr, layout) })
    }
}

#[global_allocator]
static HEAP: IrqSafeHeap = IrqSafeHeap(LockedHeap::empty());

/// Takes `HEAP_SIZE` bytes of frames and hands them to the allocator.
pub fn init() -> Result<u64, super::AllocError> {
    let pages = HEAP_SIZE / FRAME_SIZE as usize;
    let base = super::alloc_frames(FrameRequest::contiguous(pages))
        .ok_or(super::AllocError::OutOfMemory { pages })?;
    // SAFETY: the frames are ours for good (never freed), identity-mapped and writable; init
    // runs once, before any allocation.
    without_interrupts(|| unsafe { HEAP.0.lock().init(base as *mut u8, HEAP_SIZE) });
    Ok(base)
}

/// Bytes currently allocated from the heap.
pub fn used() -> usize {
    without_interrupts(|| HEAP.0.lock().used())
}
