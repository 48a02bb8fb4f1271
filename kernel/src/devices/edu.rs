//! Binding edu devices for the demo and the tests: map BAR0, hand it to the `edu` driver.

use alloc::vec::Vec;
use core::ptr::NonNull;

use edu::{Edu, EduError, Transfer};

use super::pci::PciSystem;
use crate::arch::time::Deadline;
use crate::mem::paging::{self, Cache};

/// How long one edu DMA may take (each takes ~100 ms of virtual time).
pub const DMA_TIMEOUT_US: u64 = 2_000_000;

/// Why an edu device could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// No BAR0, or one smaller than edu's register block.
    NoBar,
    /// BAR0 could not be mapped.
    Map(paging::MapError),
    /// The driver refused the device.
    Edu(EduError),
}

impl core::fmt::Display for BindError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoBar => f.write_str("edu has no BAR0"),
            Self::Map(e) => write!(f, "mapping edu BAR0: {e}"),
            Self::Edu(e) => write!(f, "{e}"),
        }
    }
}

/// Binds every edu function, in BDF order, with the DMA mask QEMU was told
/// (`edu.dma_mask=` on the kernel command line, default 28 bits).
///
/// # Safety
/// At most one binding of each edu device may be alive at a time (two drivers would race on
/// the same DMA registers): drop the previous result before calling again.
pub unsafe fn bind_all(pci: &PciSystem, dma_mask: u64) -> Result<Vec<Edu>, BindError> {
    let mut out = Vec::new();
    let edus = pci
        .topology
        .functions_sorted()
        .filter(|f| (f.vendor_id, f.device_id) == (edu::VENDOR_ID, edu::DEVICE_ID));
    for f in edus {
        let bar = f
            .bar(0)
            .filter(|b| b.size >= edu::BAR0_SIZE)
            .ok_or(BindError::NoBar)?;
        let ptr = paging::map_phys(bar.phys_address, bar.size, Cache::Uncached)
            .map_err(BindError::Map)?;
        let ptr = NonNull::new(ptr).ok_or(BindError::NoBar)?;
        // SAFETY: BAR0 (at least the 1 MiB register block, checked) is mapped uncached for the
        // rest of the run; the caller guarantees no other binding of this device is alive.
        out.push(unsafe { Edu::new(&pci.ecam, f.bdf, ptr, dma_mask) }.map_err(BindError::Edu)?);
    }
    Ok(out)
}

/// One DMA with the standard timeout.
pub fn dma(
    edu: &mut Edu,
    transfer: Transfer,
    addr: dma::DmaAddr,
    offset: u64,
    len: u64,
) -> Result<(), EduError> {
    let deadline = Deadline::after_us(DMA_TIMEOUT_US);
    edu.dma(transfer, addr, offset, len, || deadline.expired())
}
