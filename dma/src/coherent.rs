//! Coherent allocations (Linux's `dma_alloc_coherent`): memory and its device address allocated
//! and freed together, for descriptor rings and other long-lived shared structures.
//!
//! Implements the coherent-memory half of SPEC.md "A physical-address DMA API". The memory is
//! zeroed before the device can see it, mapped read/write, and on drop unmapped with a completed
//! flush *before* the pages go back to the allocator, so a device can never write into memory
//! that has been reused. The CPU reaches it through [`CoherentBuffer::read`] /
//! [`CoherentBuffer::write`] (bounds-checked; the kernel may also use its direct map of
//! [`CoherentBuffer::phys`]).

use alloc::sync::Arc;
use core::fmt;

use crate::addr::{DmaAddr, PhysAddr, PAGE_SIZE};
use crate::attrs::{Attrs, Direction};
use crate::device::{DeviceInner, DmaDevice, Translation};
use crate::engine::prot_for;
use crate::error::DmaError;
use crate::iommu::IotlbGather;

/// Memory shared with a device for its lifetime. Freed (unmapped, flushed, pages returned) on
/// drop; a failure there is logged and the pages are leaked rather than reused.
pub struct CoherentBuffer {
    dev: Arc<DeviceInner>,
    phys: PhysAddr,
    pages: u64,
    size: u64,
    dma: DmaAddr,
    /// IOVA allocation when translated (the IOVA equals `dma`, page aligned).
    iova: bool,
}

impl fmt::Debug for CoherentBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoherentBuffer")
            .field("phys", &self.phys)
            .field("dma", &self.dma)
            .field("size", &self.size)
            .finish()
    }
}

impl DmaDevice {
    /// Allocates `size` bytes (rounded up to pages) of zeroed memory the device can reach, and
    /// maps it read/write. On the direct path the pages come from below the DMA mask.
    ///
    /// # Errors
    ///
    /// Nothing stays allocated or mapped on an error: [`DmaError::ZeroLength`], `Overflow` (`size`
    /// rounded up to pages), the physical-memory provider's error ([`DmaError::Phys`]: no pages
    /// below the mask, zeroing failed), IOVA exhaustion ([`DmaError::IovaExhausted`]), an IOMMU
    /// refusal ([`DmaError::Iommu`]). If undoing a failed mapping fails too,
    /// [`DmaError::UnwindIncomplete`] names what stays mapped (its pages are leaked, never reused).
    pub fn alloc_coherent(&self, size: u64) -> Result<CoherentBuffer, DmaError> {
        let inner = &self.inner;
        if size == 0 {
            return Err(DmaError::ZeroLength);
        }
        let bytes = size
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(DmaError::Overflow { addr: 0, len: size })?;
        let pages = bytes / PAGE_SIZE;
        let limit = match &inner.translation {
            Translation::Direct => inner.cfg.mask,
            Translation::Iommu(d) => d.info().output_limit.saturating_sub(1),
        };
        let phys = inner.phys.alloc_pages(pages, limit)?;
        if let Err(e) = inner.phys.zero(phys, bytes) {
            inner.phys.free_pages(phys, pages);
            return Err(e.into());
        }
        let (dma, iova) = match &inner.translation {
            Translation::Direct => (DmaAddr::new(phys.as_u64()), false),
            Translation::Iommu(domain) => {
                domain.tick();
                let iova = match domain.alloc_iova(bytes, inner.cfg.mask) {
                    Ok(a) => a,
                    Err(e) => {
                        inner.phys.free_pages(phys, pages);
                        return Err(e);
                    }
                };
                let prot = prot_for(inner, Direction::Bidirectional, Attrs::empty());
                if let Err(e) = domain.hw().map(iova, phys, bytes, prot) {
                    domain.free_iova(iova, bytes);
                    inner.phys.free_pages(phys, pages);
                    return Err(e.into());
                }
                if let Err(e) = domain.hw().sync_map(iova, bytes) {
                    let mut buf = CoherentBuffer {
                        dev: inner.clone(),
                        phys,
                        pages,
                        size,
                        dma: iova,
                        iova: true,
                    };
                    // Unmap + flush + free, exactly as a normal free.
                    return Err(match buf.release() {
                        Ok(()) => e.into(),
                        Err(DmaError::Iommu(undo)) => {
                            // Still mapped (or reachable through a stale IOTLB entry): the
                            // pages stay allocated for ever, and the caller is told.
                            buf.pages = 0;
                            log::error!("dma: unwinding a coherent allocation after `{e}` failed");
                            DmaError::UnwindIncomplete {
                                still_mapped: (iova, bytes),
                                reaches: phys,
                                stuck: 1,
                                undo,
                            }
                        }
                        Err(other) => {
                            buf.pages = 0;
                            other
                        }
                    });
                }
                (iova, true)
            }
        };
        Ok(CoherentBuffer {
            dev: inner.clone(),
            phys,
            pages,
            size,
            dma,
            iova,
        })
    }
}

impl CoherentBuffer {
    /// The device address.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// The CPU physical address.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// The size asked for.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check(&self, offset: u64, len: usize) -> Result<PhysAddr, DmaError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(PhysAddr::new(self.phys.as_u64() + offset)),
            Some(_) => Err(DmaError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
            None => Err(DmaError::Overflow { addr: offset, len }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`DmaError::OutOfRange`] when `[offset, offset + buf.len())` leaves the buffer, `Overflow`
    /// when it does not fit in 64 bits, the physical-memory provider's error ([`DmaError::Phys`]).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let at = self.check(offset, buf.len())?;
        Ok(self.dev.phys.read(at, buf)?)
    }

    /// Writes `data` at `offset`.
    ///
    /// # Errors
    ///
    /// [`DmaError::OutOfRange`] when `[offset, offset + data.len())` leaves the buffer, `Overflow`
    /// when it does not fit in 64 bits, the physical-memory provider's error ([`DmaError::Phys`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaError> {
        let at = self.check(offset, data.len())?;
        Ok(self.dev.phys.write(at, data)?)
    }

    fn release(&mut self) -> Result<(), DmaError> {
        if self.pages == 0 {
            return Ok(());
        }
        let bytes = self.pages * PAGE_SIZE;
        if let (true, Translation::Iommu(domain)) = (self.iova, &self.dev.translation) {
            let mut gather = IotlbGather::new();
            let r = domain.hw().unmap(self.dma, bytes, &mut gather);
            // Whatever happened, the memory is only reusable after a completed flush.
            domain.hw().flush(gather)?;
            r?;
            domain.free_iova(self.dma, bytes);
        }
        self.dev.phys.free_pages(self.phys, self.pages);
        self.pages = 0;
        Ok(())
    }

    /// Frees now and reports the result (strict: the device has lost access when this returns).
    ///
    /// # Errors
    ///
    /// The IOMMU's error when the unmap or its IOTLB flush fails ([`DmaError::Iommu`]); the IOVA
    /// and the pages are then not reused.
    pub fn free(mut self) -> Result<(), DmaError> {
        let r = self.release();
        self.pages = 0;
        r
    }
}

impl Drop for CoherentBuffer {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::error!(
                "dma: coherent buffer {:?} not freed (pages leaked): {e}",
                self.phys
            );
        }
        self.pages = 0;
    }
}
