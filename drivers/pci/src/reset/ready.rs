//! Waiting for a function after a reset: the caller-supplied delay, counted, and the poll for a
//! valid vendor ID (PCIe Base 4.0 §6.6.1, Request Retry Status §2.3.2), plus the configuration
//! reads every reset step shares.

use super::error::ResetError;
use crate::capability::standard_capabilities;
use crate::regs::{header, CapabilityId, HeaderLayout};
use crate::{Bdf, ConfigSpace};

/// How long a function may take to answer configuration requests after a reset (PCIe Base 4.0
/// §6.6.1: 1.0 s after a Conventional Reset, unless it answers with Request Retry Status).
pub const READY_TIMEOUT_US: u32 = 1_000_000;

/// First polling interval; intervals double up to [`POLL_MAX_US`].
const POLL_START_US: u32 = 1_000;

/// Longest polling interval.
const POLL_MAX_US: u32 = 100_000;

/// Vendor ID a Root Complex returns for a Configuration Request Retry Status completion when
/// CRS Software Visibility is on (PCIe Base 4.0 §2.3.2): "not ready yet".
const VENDOR_ID_CRS: u16 = 0x0001;

/// Counts the time asked of the caller's delay callback.
pub(super) struct Clock<'a, D: FnMut(u32)> {
    pub(super) delay: &'a mut D,
    pub(super) waited_us: u64,
}

impl<'a, D: FnMut(u32)> Clock<'a, D> {
    pub(super) fn new(delay: &'a mut D) -> Self {
        Self {
            delay,
            waited_us: 0,
        }
    }

    pub(super) fn sleep(&mut self, us: u32) {
        if us > 0 {
            (self.delay)(us);
            self.waited_us += u64::from(us);
        }
    }

    /// Polls `done` with doubling intervals until it holds (true) or `timeout_us` of waiting
    /// has been spent (false). `done` is always tried once more after the last wait.
    pub(super) fn poll(&mut self, timeout_us: u32, mut done: impl FnMut() -> bool) -> bool {
        let mut spent: u32 = 0;
        let mut step = POLL_START_US;
        loop {
            if done() {
                return true;
            }
            if spent >= timeout_us {
                return false;
            }
            let s = step.min(timeout_us - spent);
            self.sleep(s);
            spent += s;
            step = step.saturating_mul(2).min(POLL_MAX_US);
        }
    }
}

pub(super) fn vendor_device(cfg: &impl ConfigSpace, bdf: Bdf) -> (u16, u16) {
    (
        cfg.read16(bdf, header::VENDOR_ID),
        cfg.read16(bdf, header::DEVICE_ID),
    )
}

pub(super) fn present(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<(), ResetError> {
    if cfg.read16(bdf, header::VENDOR_ID) == u16::MAX {
        return Err(ResetError::NotPresent { bdf });
    }
    Ok(())
}

pub(super) fn layout_of(cfg: &impl ConfigSpace, bdf: Bdf) -> HeaderLayout {
    HeaderLayout::from_header_type(cfg.read8(bdf, header::HEADER_TYPE))
}

/// Offset of the first standard capability with this ID.
pub(super) fn find_capability(cfg: &impl ConfigSpace, bdf: Bdf, id: CapabilityId) -> Option<u16> {
    standard_capabilities(cfg, bdf)
        .entries
        .iter()
        .find(|c| c.id == id)
        .map(|c| u16::from(c.offset))
}

/// Polls until `bdf` answers configuration requests with a valid vendor ID (not all-ones, not
/// the Request Retry Status value 0x0001, not 0), for at most `timeout_us`. Returns the time
/// waited.
///
/// # Errors
///
/// [`ResetError::NotReady`] (with the time waited) when the function still does not answer with a
/// valid vendor ID after `timeout_us`.
pub fn wait_until_ready(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    timeout_us: u32,
    delay: &mut impl FnMut(u32),
) -> Result<u64, ResetError> {
    let mut clock = Clock::new(delay);
    let ready = clock.poll(timeout_us, || {
        !matches!(
            cfg.read16(bdf, header::VENDOR_ID),
            u16::MAX | VENDOR_ID_CRS | 0
        )
    });
    if ready {
        Ok(clock.waited_us)
    } else {
        Err(ResetError::NotReady {
            bdf,
            waited_us: clock.waited_us,
        })
    }
}
