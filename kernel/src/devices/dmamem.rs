//! How the kernel plugs into the `dma` crate: physical memory for bounce buffers and coherent
//! allocations ([`KernelPhysMemory`]), the IOVA ranges every domain must keep out (interrupt
//! window, RMRRs, PCI windows), and [`DmaDevice`] construction for a PCI function, with or
//! without the IOMMU.

use alloc::sync::Arc;
use alloc::vec::Vec;

use dma::iommu::IommuDomain;
use dma::{
    BouncePool, Clock, DeviceConfig, DmaDevice, DmaDomain, DmaError, DomainConfig,
    InvalidationMode, PhysAddr, PhysError, PhysMemory, ReservedKind, ReservedRegion, Translation,
};
use kernel::frames::{FrameRequest, FRAME_SIZE};

use super::iommu::{AttachError, Domain, Iommu};
use super::pci::PciSystem;

/// RAM from the frame allocator, reached through the identity mapping.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPhysMemory;

impl KernelPhysMemory {
    /// Checks that `[addr, addr + len)` is ordinary RAM the DMA layer may copy: inside a RAM
    /// region of the memory map, outside the kernel image (code and read-only data must never
    /// be written by a bounce copy-out) and never MMIO (MMIO is only touched with volatile
    /// accessors). A bogus address from a caller becomes an error instead of a fault.
    fn check(addr: PhysAddr, len: u64) -> Result<*mut u8, PhysError> {
        if !crate::mem::is_dma_ram(addr.as_u64(), len) {
            return Err(PhysError::OutOfRange {
                addr: addr.as_u64(),
                len,
            });
        }
        Ok(addr.as_u64() as *mut u8)
    }
}

impl PhysMemory for KernelPhysMemory {
    fn alloc_pages(&self, pages: u64, limit: u64) -> Result<PhysAddr, PhysError> {
        let count = usize::try_from(pages).map_err(|_| PhysError::OutOfMemory { pages })?;
        // `limit` is the highest usable byte; the frame allocator wants an exclusive frame bound.
        let limit_frames = usize::try_from(limit / FRAME_SIZE + 1).unwrap_or(usize::MAX);
        crate::mem::alloc_frames(FrameRequest {
            count,
            align: 1,
            limit: Some(limit_frames),
            min: 0,
        })
        .map(PhysAddr::new)
        .ok_or(PhysError::OutOfMemory { pages })
    }

    fn free_pages(&self, base: PhysAddr, pages: u64) {
        if let Err(e) = crate::mem::free_frames(base.as_u64(), pages as usize) {
            log::error!("dma: freeing {pages} pages at {base}: {e}");
        }
    }

    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), PhysError> {
        let (d, s) = (Self::check(dst, len)?, Self::check(src, len)?);
        // SAFETY: both ranges are mapped kernel memory (checked) and the trait promises they do
        // not overlap; a device may be writing them, which is the caller's synchronisation.
        unsafe { core::ptr::copy_nonoverlapping(s, d, len as usize) };
        Ok(())
    }

    fn zero(&self, dst: PhysAddr, len: u64) -> Result<(), PhysError> {
        let d = Self::check(dst, len)?;
        // SAFETY: mapped kernel memory (checked).
        unsafe { core::ptr::write_bytes(d, 0, len as usize) };
        Ok(())
    }

    fn read(&self, src: PhysAddr, buf: &mut [u8]) -> Result<(), PhysError> {
        let s = Self::check(src, buf.len() as u64)?;
        // SAFETY: mapped kernel memory (checked); buf is a distinct Rust allocation.
        unsafe { core::ptr::copy_nonoverlapping(s, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, dst: PhysAddr, data: &[u8]) -> Result<(), PhysError> {
        let d = Self::check(dst, data.len() as u64)?;
        // SAFETY: mapped kernel memory (checked); data is a distinct Rust allocation.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), d, data.len()) };
        Ok(())
    }
}

/// IOVA ranges no domain may hand out besides page 0 and the interrupt window (which the `dma`
/// crate always reserves): every RMRR, and every bus range a PCI peer decodes or may decode
/// ([`pci::p2p::peer_decoded_ranges`]: memory BARs, Expansion ROM BARs, BARs refused as
/// misaligned, bridge windows), so an IOVA can never equal a peer's bus address. x86 firmware
/// describes the host-bridge apertures only in AML (`_CRS`), which this kernel does not
/// interpret; the union of what firmware programmed covers every address a peer decodes.
pub fn reserved_regions(pci: &PciSystem, iommu: &Iommu) -> Vec<ReservedRegion> {
    let mut out: Vec<ReservedRegion> = iommu
        .rmrrs
        .iter()
        .filter_map(|r| {
            let len = r.limit.checked_sub(r.base)?.checked_add(1)?;
            Some(ReservedRegion::new(r.base, len, ReservedKind::Rmrr))
        })
        .collect();
    out.extend(
        pci::p2p::peer_decoded_ranges(&pci.topology)
            .into_iter()
            .map(|r| ReservedRegion::new(r.start, r.size, ReservedKind::HostBridgeWindow)),
    );
    out
}

/// Why a DMA device could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// Domain creation or attach failed.
    Attach(AttachError),
    /// The `dma` crate refused the configuration.
    Dma(DmaError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Attach(e) => write!(f, "{e}"),
            Self::Dma(e) => write!(f, "{e}"),
        }
    }
}

/// A device set up for the DMA API, with the hardware domain kept for tests that look beneath
/// the API (None on the direct path).
pub struct DeviceDma {
    /// The device handle drivers use.
    pub dev: DmaDevice,
    /// The VT-d domain behind it, if any.
    pub hw: Option<Arc<Domain>>,
}

/// Size of the bounce pool of a direct-mapped device.
pub const BOUNCE_POOL_SIZE: u64 = 1 << 20;

/// The kernel's microsecond clock for deferred invalidation deadlines.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelClock;

impl Clock for KernelClock {
    fn now_us(&self) -> u64 {
        crate::arch::time::now_us()
    }
}

/// Builds the [`DmaDevice`] for PCI function `bdf`: under the IOMMU its own domain (strict
/// invalidation, reserved regions) attached under all its aliases; without one, the direct
/// path with a bounce pool below the device's mask.
pub fn setup(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    bdf: pci::Bdf,
    config: DeviceConfig,
) -> Result<DeviceDma, SetupError> {
    setup_with(pci, iommu, bdf, config, InvalidationMode::Strict)
}

/// [`setup`] with an explicit invalidation mode for the device's domain (deferred is opt-in,
/// for trusted devices only; the `dma` crate refuses it for untrusted ones).
pub fn setup_with(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    bdf: pci::Bdf,
    config: DeviceConfig,
    mode: InvalidationMode,
) -> Result<DeviceDma, SetupError> {
    let phys: Arc<dyn PhysMemory> = Arc::new(KernelPhysMemory);
    match iommu {
        Some(iommu) => {
            let hw = Arc::new(iommu.domain_for(pci, bdf).map_err(SetupError::Attach)?);
            iommu.attach(pci, &hw, bdf).map_err(SetupError::Attach)?;
            let cfg = DomainConfig {
                reserved: reserved_regions(pci, iommu),
                mode,
                clock: Some(Arc::new(KernelClock)),
            };
            let hw_dyn: Arc<dyn IommuDomain> = hw.clone();
            let domain = DmaDomain::new(hw_dyn, cfg).map_err(SetupError::Dma)?;
            let pool = if config.trusted {
                None
            } else {
                Some(
                    BouncePool::new(phys.clone(), BOUNCE_POOL_SIZE, config.mask)
                        .map_err(SetupError::Dma)?,
                )
            };
            let dev = DmaDevice::new(config, Translation::Iommu(domain), phys, pool)
                .map_err(SetupError::Dma)?;
            Ok(DeviceDma { dev, hw: Some(hw) })
        }
        None => {
            let pool = BouncePool::new(phys.clone(), BOUNCE_POOL_SIZE, config.mask)
                .map_err(SetupError::Dma)?;
            let dev = DmaDevice::new(config, Translation::Direct, phys, Some(pool))
                .map_err(SetupError::Dma)?;
            Ok(DeviceDma { dev, hw: None })
        }
    }
}
