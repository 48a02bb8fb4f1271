//! Binding the default e1000e (00:02.0 on q35) for the demo and the tests: map BAR0, hand it
//! to the `e1000e` driver (used only as an MSI-X interrupt source).

use core::ptr::NonNull;

use e1000e::{E1000e, E1000eError};

use super::pci::PciSystem;
use crate::mem::paging::{self, Cache};

/// Why the e1000e could not be bound.
#[derive(Debug)]
pub enum BindError {
    /// No BAR0, or one smaller than the register block.
    NoBar,
    /// BAR0 could not be mapped.
    Map(paging::MapError),
    /// The driver refused the device.
    Driver(E1000eError),
}

impl core::fmt::Display for BindError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoBar => f.write_str("e1000e has no BAR0"),
            Self::Map(e) => write!(f, "mapping e1000e BAR0: {e}"),
            Self::Driver(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for BindError {}

/// Binds the first e1000e in BDF order (`None` when the machine has none).
///
/// # Safety
/// At most one binding of the device may be alive at a time: drop the previous one first.
///
/// # Errors
/// [`BindError`] when its BAR0 is missing or cannot be mapped.
pub unsafe fn bind_first(pci: &PciSystem) -> Result<Option<E1000e>, BindError> {
    let Some(f) = pci
        .topology
        .functions_sorted()
        .find(|f| (f.vendor_id, f.device_id) == (e1000e::VENDOR_ID, e1000e::DEVICE_ID))
    else {
        return Ok(None);
    };
    let bar = f
        .bar(0)
        .filter(|b| b.size >= e1000e::BAR0_SIZE)
        .ok_or(BindError::NoBar)?;
    let ptr =
        paging::map_phys(bar.phys_address, bar.size, Cache::Uncached).map_err(BindError::Map)?;
    let ptr = NonNull::new(ptr).ok_or(BindError::NoBar)?;
    // SAFETY: BAR0 (at least the 128 KiB register block, checked) is mapped uncached for the
    // rest of the run; the caller guarantees no other binding is alive.
    unsafe { E1000e::new(&pci.ecam, f.bdf, ptr) }
        .map(Some)
        .map_err(BindError::Driver)
}
