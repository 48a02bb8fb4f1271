//! The kernel heap (`alloc`): a linked-list allocator over one contiguous run of frames.

use kernel::frames::{FrameRequest, FRAME_SIZE};
use linked_list_allocator::LockedHeap;

/// Heap size in bytes.
pub const HEAP_SIZE: usize = 32 << 20;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Takes `HEAP_SIZE` bytes of frames and hands them to the allocator.
pub fn init() -> Result<u64, super::AllocError> {
    let pages = HEAP_SIZE / FRAME_SIZE as usize;
    let base = super::alloc_frames(FrameRequest::contiguous(pages))
        .ok_or(super::AllocError::OutOfMemory { pages })?;
    // SAFETY: the frames are ours for good (never freed), identity-mapped and writable; init
    // runs once, before any allocation.
    unsafe { HEAP.lock().init(base as *mut u8, HEAP_SIZE) };
    Ok(base)
}

/// Bytes currently allocated from the heap.
pub fn used() -> usize {
    HEAP.lock().used()
}
