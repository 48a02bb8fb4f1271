//! Function Level Reset through the PCI Express capability (PCIe Base 4.0 §6.6.2, Device
//! Capabilities §7.5.3.3, Device Control "Initiate FLR" §7.5.3.4).

use super::error::ResetError;
use super::method::{ResetMethod, ResetOutcome};
use super::ready::{find_capability, present, wait_until_ready, Clock, READY_TIMEOUT_US};
use crate::regs::{pcie, CapabilityId};
use crate::{Bdf, ConfigSpace};

/// Time a function has to complete an FLR before software may touch it (PCIe Base 4.0 §6.6.2:
/// 100 ms).
pub const FLR_COMPLETION_US: u32 = 100_000;

/// How long to wait for Transactions Pending to clear before an FLR (Linux waits 100 + 200 +
/// 400 ms, then performs the FLR anyway).
pub const PENDING_TRANSACTIONS_TIMEOUT_US: u32 = 700_000;

/// Offset of the PCI Express capability, if its Device Capabilities advertise FLR.
fn flr_capability(cfg: &impl ConfigSpace, bdf: Bdf) -> Option<u16> {
    let offset = find_capability(cfg, bdf, CapabilityId::PCI_EXPRESS)?;
    let devcap = cfg.read32(bdf, offset + pcie::DEVICE_CAPABILITIES);
    (devcap != u32::MAX && devcap & pcie::DEVCAP_FLR != 0).then_some(offset)
}

/// Whether the function advertises Function Level Reset (PCIe Device Capabilities bit 28).
pub fn has_flr(cfg: &impl ConfigSpace, bdf: Bdf) -> bool {
    flr_capability(cfg, bdf).is_some()
}

/// Function Level Reset (PCIe Base 4.0 §6.6.2): waits up to
/// [`PENDING_TRANSACTIONS_TIMEOUT_US`] for Device Status.Transactions Pending to clear (and
/// issues the FLR anyway if it does not, reporting it), sets Device Control.Initiate FLR, waits
/// [`FLR_COMPLETION_US`], then polls until the function answers with a valid vendor ID (up to
/// [`READY_TIMEOUT_US`]).
///
/// Resets only `bdf`. Its configuration is lost: save it first ([`SavedConfig::save`](crate::reset::SavedConfig::save)) and
/// restore it afterwards, or use [`reset`](crate::reset::reset), which does both.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bdf`, [`ResetError::FlrNotSupported`] when
/// it does not advertise FLR, [`ResetError::NotReady`] when it does not answer within
/// [`READY_TIMEOUT_US`] after the reset (the time counts the whole operation).
pub fn function_level_reset(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    delay: &mut impl FnMut(u32),
) -> Result<ResetOutcome, ResetError> {
    present(cfg, bdf)?;
    let cap = flr_capability(cfg, bdf).ok_or(ResetError::FlrNotSupported { bdf })?;
    let mut clock = Clock::new(delay);
    let idle = clock.poll(PENDING_TRANSACTIONS_TIMEOUT_US, || {
        let status = cfg.read16(bdf, cap + pcie::DEVICE_STATUS);
        status == u16::MAX || status & pcie::DEVSTA_TRANSACTIONS_PENDING == 0
    });
    let control = cfg.read16(bdf, cap + pcie::DEVICE_CONTROL);
    cfg.write16(
        bdf,
        cap + pcie::DEVICE_CONTROL,
        control | pcie::DEVCTL_INITIATE_FLR,
    );
    clock.sleep(FLR_COMPLETION_US);
    let waited = clock.waited_us;
    let ready = wait_until_ready(cfg, bdf, READY_TIMEOUT_US, &mut *clock.delay);
    let waited_us = waited + ready.unwrap_or(0);
    match ready {
        Ok(_) => Ok(ResetOutcome {
            method: ResetMethod::FunctionLevel,
            waited_us,
            pending_transactions_ignored: !idle,
        }),
        Err(ResetError::NotReady { waited_us: w, .. }) => Err(ResetError::NotReady {
            bdf,
            waited_us: waited + w,
        }),
        Err(e) => Err(e),
    }
}
