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

use super::iommu::{AttachError, DefaultDomain, Domain, Iommu, Membership};
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
    /// The group's default domain is alive with another invalidation mode.
    ModeMismatch {
        /// The mode of the existing default domain.
        existing: InvalidationMode,
    },
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Attach(e) => write!(f, "{e}"),
            Self::Dma(e) => write!(f, "{e}"),
            Self::ModeMismatch { existing } => write!(
                f,
                "the group's default domain already uses {existing:?} invalidation"
            ),
        }
    }
}

/// A device set up for the DMA API, with the hardware domain kept for tests that look beneath
/// the API (None on the direct path). Fields drop in order: the device first, then its group
/// membership (which detaches the group when this was its last member).
pub struct DeviceDma {
    /// The device handle drivers use.
    pub dev: DmaDevice,
    /// The VT-d domain behind it (its group's default domain), if any.
    pub hw: Option<Arc<Domain>>,
    /// Its membership of the group's attachment to `hw`, held for its `Drop` (the detach).
    _member: Option<Membership>,
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

/// Builds the [`DmaDevice`] for PCI function `bdf`: under the IOMMU it joins its isolation
/// group's default domain (strict invalidation, reserved regions), created and attached to the
/// whole group on first use; without one, the direct path with a bounce pool below the device's
/// mask.
pub fn setup(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    bdf: pci::Bdf,
    config: DeviceConfig,
) -> Result<DeviceDma, SetupError> {
    setup_with(pci, iommu, bdf, config, InvalidationMode::Strict)
}

/// The default domain of `bdf`'s group, created with `mode` if the group has none alive. A live
/// default domain with another invalidation mode is refused ([`SetupError::ModeMismatch`]): the
/// members of a group share one domain and so one mode.
pub fn group_domain(
    pci: &PciSystem,
    iommu: &Iommu,
    bdf: pci::Bdf,
    mode: InvalidationMode,
) -> Result<(Arc<Domain>, Arc<DmaDomain>), SetupError> {
    let group = pci
        .groups()
        .group_of(bdf)
        .map(super::iommu::group_key)
        .ok_or(SetupError::Attach(AttachError::NoSuchDevice(bdf)))?;
    let mut defaults = iommu.defaults.lock();
    defaults.retain(|d| d.dma.strong_count() > 0);
    if let Some(d) = defaults.iter().find(|d| d.group == group) {
        if let (Some(hw), Some(dma)) = (d.hw.upgrade(), d.dma.upgrade()) {
            if dma.mode() != mode {
                return Err(SetupError::ModeMismatch {
                    existing: dma.mode(),
                });
            }
            return Ok((hw, dma));
        }
    }
    let hw = Arc::new(iommu.domain_for(pci, bdf).map_err(SetupError::Attach)?);
    let cfg = DomainConfig {
        reserved: reserved_regions(pci, iommu),
        mode,
        clock: Some(Arc::new(KernelClock)),
    };
    let hw_dyn: Arc<dyn IommuDomain> = hw.clone();
    let dma = DmaDomain::new(hw_dyn, cfg).map_err(SetupError::Dma)?;
    defaults.retain(|d| d.group != group);
    defaults.push(DefaultDomain {
        group,
        hw: Arc::downgrade(&hw),
        dma: Arc::downgrade(&dma),
    });
    Ok((hw, dma))
}

/// [`setup`] with an explicit invalidation mode for the group's default domain (deferred is
/// opt-in, for trusted devices only; the `dma` crate refuses it for untrusted ones).
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
            let (hw, domain) = group_domain(pci, iommu, bdf, mode)?;
            let member = iommu
                .attach_member(pci, &hw, bdf)
                .map_err(SetupError::Attach)?;
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
            Ok(DeviceDma {
                dev,
                hw: Some(hw),
                _member: Some(member),
            })
        }
        None => {
            let pool = BouncePool::new(phys.clone(), BOUNCE_POOL_SIZE, config.mask)
                .map_err(SetupError::Dma)?;
            let dev = DmaDevice::new(config, Translation::Direct, phys, Some(pool))
                .map_err(SetupError::Dma)?;
            Ok(DeviceDma {
                dev,
                hw: None,
                _member: None,
            })
        }
    }
}

/// Attaches, at boot, every device an RMRR names to its group's default domain (strict), with
/// the RMRR identity-mapped before the group's context entries are written, as Linux installs
/// them at probe: that memory stays reachable from boot whether or not a driver binds, and a
/// driver that binds later joins the same domain. Failures are logged and leave the device
/// blocked.
pub fn attach_rmrr_devices(pci: &PciSystem, iommu: &Iommu) {
    let mut devices: Vec<pci::Bdf> = Vec::new();
    for r in &iommu.rmrrs {
        for &d in &r.devices {
            if pci.topology.function(d).is_some() && !devices.contains(&d) {
                devices.push(d);
            }
        }
    }
    for bdf in devices {
        let attached =
            group_domain(pci, iommu, bdf, InvalidationMode::Strict).and_then(|(hw, dma)| {
                iommu
                    .attach_member(pci, &hw, bdf)
                    .map(|m| (m, dma))
                    .map_err(SetupError::Attach)
            });
        match attached {
            Ok((member, dma)) => {
                log::info!(
                    "vt-d: {bdf} named by an RMRR: attached at boot to domain {} with its RMRR identity-mapped",
                    member.domain().did()
                );
                iommu.boot_attachments.lock().push((member, dma));
            }
            Err(e) => log::error!("vt-d: attaching RMRR device {bdf} at boot: {e}"),
        }
    }
}
