//! Binding the first NVMe controller for the tests and benchmarks: map BAR0 uncached, turn on
//! memory decoding and bus mastering, give the controller a DMA device of its own (its isolation
//! group's domain under the IOMMU, the direct path without one) and run it with the `nvme`
//! crate's [`Controller`].

use alloc::sync::Arc;
use core::ptr::NonNull;

use dma::{DeviceConfig, InvalidationMode};
use nvme::controller::{Config, Controller, ControllerError};
use nvme::io::Mmio;

use super::dmamem::{self, DeviceDma, KernelClock, SetupError};
use super::iommu::Iommu;
use super::pci::PciSystem;
use crate::mem::paging::{self, Cache};

/// BAR0 bytes the driver uses: registers and the doorbells of up to 64 queue pairs (QEMU's
/// BAR0 is 16 KiB with the default queue counts, the MSI-X table after the doorbells).
const BAR0_USED: u64 = 0x2000;

/// Why the controller could not be brought up.
#[derive(Debug)]
pub enum BindError {
    /// No BAR0, or one smaller than the registers and doorbells.
    NoBar,
    /// BAR0 could not be mapped.
    Map(paging::MapError),
    /// Configuration space refused the Command register change.
    Config(pci::ResetError),
    /// The DMA device could not be set up.
    Dma(SetupError),
    /// The controller did not come up.
    Controller(ControllerError),
}

impl core::fmt::Display for BindError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoBar => f.write_str("nvme has no usable BAR0"),
            Self::Map(e) => write!(f, "mapping nvme BAR0: {e}"),
            Self::Config(e) => write!(f, "nvme command register: {e}"),
            Self::Dma(e) => write!(f, "nvme DMA setup: {e}"),
            Self::Controller(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for BindError {}

/// A running controller and the DMA device it was given.
pub struct Nvme {
    /// The function.
    pub bdf: pci::Bdf,
    /// The controller.
    pub ctrl: Controller<Mmio>,
    /// Its DMA device (and, under the IOMMU, the hardware domain beneath it).
    pub dma: DeviceDma,
}

/// Brings up the first NVMe controller in BDF order with `config` for its DMA device and
/// `mode` for its group's domain; `None` when the machine has none.
///
/// # Safety
/// At most one binding of the controller may be alive at a time: drop the previous one first.
///
/// # Errors
/// [`BindError`].
pub unsafe fn bind_first(
    pci: &PciSystem,
    iommu: Option<&Iommu>,
    config: DeviceConfig,
    mode: InvalidationMode,
    ctrl_config: Config,
) -> Result<Option<Nvme>, BindError> {
    let Some(f) = pci.topology.functions_sorted().find(|f| nvme::matches(f)) else {
        return Ok(None);
    };
    let bar = f
        .bar(nvme::REGISTER_BAR)
        .filter(|b| b.size >= BAR0_USED)
        .ok_or(BindError::NoBar)?;
    let ptr =
        paging::map_phys(bar.phys_address, bar.size, Cache::Uncached).map_err(BindError::Map)?;
    let ptr = NonNull::new(ptr).ok_or(BindError::NoBar)?;
    let dma = dmamem::setup_with(pci, iommu, f.bdf, config, mode).map_err(BindError::Dma)?;
    pci::reset::set_memory_decode(&pci.ecam, f.bdf, true).map_err(BindError::Config)?;
    pci::reset::set_bus_master(&pci.ecam, f.bdf, true).map_err(BindError::Config)?;
    // SAFETY: BAR0 (`bar.size` bytes, at least the registers and doorbells) is mapped uncached
    // for the rest of the run; the caller guarantees no other binding is alive.
    let regs = unsafe { Mmio::new(ptr, bar.size as usize) };
    let ctrl = Controller::new(regs, dma.dev.clone(), Arc::new(KernelClock), ctrl_config)
        .map_err(BindError::Controller)?;
    Ok(Some(Nvme {
        bdf: f.bdf,
        ctrl,
        dma,
    }))
}
