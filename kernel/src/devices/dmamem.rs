//! How the kernel plugs into the `dma` crate: physical memory for bounce buffers and coherent
//! allocations ([`KernelPhysMemory`]) and a clock, handed to the `vtd-platform` glue, which
//! computes the IOVA ranges every domain must keep out (interrupt window, RMRRs, PCI windows)
//! and builds the `DmaDevice` of a PCI function, with or without the IOMMU.
//!
//! Deferred-invalidation deadlines from the timer: every domain [`setup_with`] creates or joins
//! in deferred mode is remembered (weakly), and [`start_deadline_polling`] registers a timer
//! callback that runs [`dma::DmaDomain::try_poll`] on each, so a deferred domain flushes within
//! its `max_delay_us` (plus one polling period) even when nothing maps or unmaps. From the
//! interrupt, `try_poll` never waits for a domain lock (a mainline holder is inside a map, unmap
//! or flush of that domain and checks the deadline itself). Its flush then takes the VT-d unit's
//! invalidation lock, a plain spin lock of `iommu-vtd`: a timer tick that interrupts a mainline
//! VT-d invalidation *of another domain on the same unit* and finds this domain due would spin
//! on it. Deferred mode is opt-in for trusted devices; until `iommu-vtd`'s locks are
//! interrupt-safe, use it on one domain per unit or stop the polling around other domains'
//! invalidations ([`set_deadline_polling`]).
//!
//! Single CPU: the registry's weak references are upgraded in the interrupt, and the strong
//! reference that creates is dropped before the interrupt returns; since mainline cannot run
//! meanwhile, the domain's owner still holds its own reference, so the interrupt never drops the
//! last one (which would detach the domain in interrupt context).

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dma::{Clock, DeviceConfig, DmaDomain, InvalidationMode, PhysAddr, PhysError, PhysMemory};
use iommu_vtd::MmioRegisters;
use kernel::frames::{FrameRequest, FRAME_SIZE};
use vtd_platform::DmaResources;
pub use vtd_platform::SetupError;

use super::iommu::{Iommu, KernelPlatform};
use super::pci::PciSystem;
use crate::arch::irq::IrqMutex;
use crate::arch::timer::{self, TimerError};

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

/// A device set up for the DMA API, with the hardware domain kept for tests that look beneath
/// the API (`hw` is None on the direct path; its membership detaches on drop).
pub type DeviceDma = vtd_platform::DeviceDma<MmioRegisters, KernelPlatform>;

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

fn clock() -> Option<Arc<dyn Clock>> {
    Some(Arc::new(KernelClock))
}

/// Builds the [`DmaDevice`](dma::DmaDevice) for PCI function `bdf`: under the IOMMU it joins
/// its isolation group's default domain (strict invalidation, reserved regions), created and
/// attached to the whole group on first use; without one, the direct path with a bounce pool
/// below the device's mask.
pub fn setup(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    bdf: pci::Bdf,
    config: DeviceConfig,
) -> Result<DeviceDma, SetupError> {
    setup_with(pci, iommu, bdf, config, InvalidationMode::Strict)
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
    let resources = DmaResources {
        phys: Arc::new(KernelPhysMemory),
        clock: clock(),
        bounce_pool_size: BOUNCE_POOL_SIZE,
    };
    let dev = vtd_platform::setup_device(pci, iommu, bdf, config, mode, &resources)?;
    if matches!(mode, InvalidationMode::Deferred(_)) {
        if let Some(domain) = dev.dev.domain() {
            remember_deferred(domain);
        }
    }
    Ok(dev)
}

/// Deferred domains the timer polls (dead entries are pruned on every registration).
static DEFERRED: IrqMutex<Vec<Weak<DmaDomain>>> = IrqMutex::new(Vec::new());
/// Whether the timer callback polls (the tests' negative control turns it off).
static POLLING: AtomicBool = AtomicBool::new(true);
/// Flushes the timer callback performed.
static TIMER_FLUSHES: AtomicU64 = AtomicU64::new(0);

fn remember_deferred(domain: &Arc<DmaDomain>) {
    DEFERRED.with(|list| {
        list.retain(|w| w.strong_count() > 0);
        if !list
            .iter()
            .any(|w| core::ptr::eq(w.as_ptr(), Arc::as_ptr(domain)))
        {
            list.push(Arc::downgrade(domain));
        }
    });
}

/// The timer callback: `try_poll` on every deferred domain still alive.
fn poll_deferred_domains() {
    if !POLLING.load(Ordering::Acquire) {
        return;
    }
    DEFERRED.with(|list| {
        for domain in list.iter().filter_map(Weak::upgrade) {
            match domain.try_poll() {
                Ok(true) => {
                    TIMER_FLUSHES.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => log::error!("dma: deferred flush from the timer failed: {e}"),
            }
        }
    });
}

/// How often the timer checks the deferred domains' deadlines.
pub const DEADLINE_POLL_US: u64 = 1000;

/// Registers the deadline-polling timer callback (every [`DEADLINE_POLL_US`]).
///
/// # Errors
///
/// The timer's refusal ([`TimerError`]: not running, no slot).
pub fn start_deadline_polling() -> Result<(), TimerError> {
    timer::every(DEADLINE_POLL_US, poll_deferred_domains).map(|_| ())
}

/// Turns the timer's deadline polling on or off (it starts on).
pub fn set_deadline_polling(on: bool) {
    POLLING.store(on, Ordering::Release);
}

/// Deferred flushes the timer callback has performed.
pub fn timer_flushes() -> u64 {
    TIMER_FLUSHES.load(Ordering::Relaxed)
}

/// Attaches, at boot, every device an RMRR names to its group's default domain (strict), with
/// the RMRR identity-mapped before the group's context entries are written, as Linux installs
/// them at probe: that memory stays reachable from boot whether or not a driver binds, and a
/// driver that binds later joins the same domain. Failures are logged and leave the device
/// blocked.
pub fn attach_rmrr_devices(pci: &PciSystem, iommu: &Iommu) {
    // Each outcome is logged by the glue; a failed device stays blocked.
    let _ = iommu.attach_rmrr_devices(pci, clock());
}
