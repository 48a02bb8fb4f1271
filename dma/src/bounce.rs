//! Bounce buffers (Linux's swiotlb): a pool of RAM below a limit, handed out in page-exclusive,
//! zero-padded slots.
//!
//! Implements SPEC.md "Untrusted devices get sub-page isolation" (a mapping whose start or end is
//! not page aligned is copied into slot pages nobody else uses, the rest of those pages zeroed,
//! so the device never sees another byte of the original pages) and the direct-path fallback for
//! a DMA mask that cannot reach a buffer. MMIO never comes here (SPEC.md "MMIO attribute").
//!
//! The kernel creates one pool below the smallest DMA mask in use and gives it to the devices
//! that may need it. Slots are managed by an [`IovaAllocator`] over the pool's page frames: the
//! same O(log n) buddy with per-size caches, so bouncing does not add an O(n) path.
//!
//! The data sits in its slot at the same offset within the page as in the original buffer, so
//! alignment the device relies on survives the bounce.

use alloc::sync::Arc;
use core::fmt;

use spin::Mutex;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::error::DmaError;
use crate::iova::IovaAllocator;
use crate::phys::PhysMemory;

/// A pool of bounce-buffer pages. Shared (`Arc`) between devices; internally locked.
pub struct BouncePool {
    phys: Arc<dyn PhysMemory>,
    base: PhysAddr,
    pages: u64,
    slots: Mutex<IovaAllocator>,
}

impl fmt::Debug for BouncePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BouncePool")
            .field("base", &self.base)
            .field("pages", &self.pages)
            .finish()
    }
}

/// One bounce slot: whole pages, the data at `data_offset` within the first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BounceSlot {
    /// First page of the slot.
    pub base: PhysAddr,
    /// Pages in the slot.
    pub pages: u64,
    /// Offset of the data from `base` (the original buffer's offset in its page).
    pub data_offset: u64,
    /// Length of the data.
    pub len: u64,
}

impl BounceSlot {
    /// Physical address of the first data byte.
    pub fn data(&self) -> PhysAddr {
        PhysAddr::new(self.base.as_u64() + self.data_offset)
    }
}

impl BouncePool {
    /// Allocates a pool of `size` bytes (rounded up to pages) whose last byte is at most `limit`
    /// (the smallest DMA mask of the devices that will use it).
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroLength`] for `size == 0`; the physical-memory provider's error
    /// ([`DmaError::Phys`]) when it has no `size` bytes below `limit`; the slot allocator's
    /// [`DmaError::InvalidConfig`] for pages it cannot manage (they are freed again).
    pub fn new(phys: Arc<dyn PhysMemory>, size: u64, limit: u64) -> Result<Arc<Self>, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroLength);
        }
        let pages = size.div_ceil(PAGE_SIZE);
        let base = phys.alloc_pages(pages, limit)?;
        let last = base.as_u64() + pages * PAGE_SIZE - 1;
        let slots = match IovaAllocator::new(DmaAddr::new(base.as_u64()), DmaAddr::new(last), &[]) {
            Ok(s) => s,
            Err(e) => {
                phys.free_pages(base, pages);
                return Err(e);
            }
        };
        Ok(Arc::new(Self {
            phys,
            base,
            pages,
            slots: Mutex::new(slots),
        }))
    }

    /// First byte of the pool.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Last byte of the pool (what a device's mask must reach).
    pub fn last_byte(&self) -> u64 {
        self.base.as_u64() + self.pages * PAGE_SIZE - 1
    }

    /// Pages currently free (including cached slots).
    pub fn free_pages(&self) -> u64 {
        let s = self.slots.lock().stats();
        s.free_pages + s.cached_pages
    }

    /// Takes a slot for `len` bytes of `orig`, fills it and zeroes the padding: the pages before
    /// and after the data are zero, the data is a copy of `orig` when `copy_in`, zero otherwise.
    ///
    /// Why copy in even for device-writes-only transfers (Linux does the same since CVE-2022-0854):
    /// the whole data range is copied back at unmap, so bytes the device did not write must come
    /// back unchanged rather than as stale pool content.
    pub(crate) fn alloc_slot(
        &self,
        orig: PhysAddr,
        len: u64,
        copy_in: bool,
    ) -> Result<BounceSlot, DmaError> {
        let data_offset = orig.page_offset();
        let bytes = data_offset
            .checked_add(len)
            .and_then(|b| b.checked_next_multiple_of(PAGE_SIZE))
            .ok_or(DmaError::Overflow {
                addr: orig.as_u64(),
                len,
            })?;
        let base = self
            .slots
            .lock()
            .alloc(bytes, DmaAddr::new(u64::MAX))
            .map_err(|_| DmaError::BounceExhausted { size: len })?;
        let slot = BounceSlot {
            base: PhysAddr::new(base.as_u64()),
            pages: bytes / PAGE_SIZE,
            data_offset,
            len,
        };
        if let Err(e) = self.fill(&slot, orig, copy_in) {
            self.free_slot(slot);
            return Err(e);
        }
        Ok(slot)
    }

    fn fill(&self, slot: &BounceSlot, orig: PhysAddr, copy_in: bool) -> Result<(), DmaError> {
        let end = slot.data_offset + slot.len;
        if slot.data_offset > 0 {
            self.phys.zero(slot.base, slot.data_offset)?;
        }
        let tail = slot.pages * PAGE_SIZE - end;
        if tail > 0 {
            self.phys
                .zero(PhysAddr::new(slot.base.as_u64() + end), tail)?;
        }
        if copy_in {
            self.phys.copy(slot.data(), orig, slot.len)?;
        } else {
            self.phys.zero(slot.data(), slot.len)?;
        }
        Ok(())
    }

    /// Copies `len` bytes at `offset` of the data from the slot to the original buffer.
    pub(crate) fn copy_out(
        &self,
        slot: &BounceSlot,
        orig: PhysAddr,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaError> {
        let src = PhysAddr::new(slot.data().as_u64() + offset);
        Ok(self
            .phys
            .copy(PhysAddr::new(orig.as_u64() + offset), src, len)?)
    }

    /// Copies `len` bytes at `offset` of the data from the original buffer to the slot.
    pub(crate) fn copy_in(
        &self,
        slot: &BounceSlot,
        orig: PhysAddr,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaError> {
        let dst = PhysAddr::new(slot.data().as_u64() + offset);
        Ok(self
            .phys
            .copy(dst, PhysAddr::new(orig.as_u64() + offset), len)?)
    }

    /// Returns a slot to the pool. Only after the device can no longer reach it (flush done).
    pub(crate) fn free_slot(&self, slot: BounceSlot) {
        let r = self
            .slots
            .lock()
            .free(DmaAddr::new(slot.base.as_u64()), slot.pages * PAGE_SIZE);
        if let Err(e) = r {
            log::error!("dma: bounce slot {:?} free failed: {e}", slot.base);
        }
    }
}

impl Drop for BouncePool {
    fn drop(&mut self) {
        self.phys.free_pages(self.base, self.pages);
    }
}
