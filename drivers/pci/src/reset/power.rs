//! PCI power states through the Power Management capability (PCI PM 1.2 §5.4, PMCSR §7.2.2)
//! and the D3hot→D0 soft reset of a function whose No_Soft_Reset is clear.

use super::error::ResetError;
use super::method::{ResetMethod, ResetOutcome};
use super::ready::{find_capability, present, wait_until_ready, Clock, READY_TIMEOUT_US};
pub use super::state::{PowerState, D2_DELAY_US, D3HOT_DELAY_US};
use crate::regs::{pm, CapabilityId};
use crate::{Bdf, ConfigSpace};

/// A power-state change done by [`set_power_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerTransition {
    /// State before.
    pub from: PowerState,
    /// State after.
    pub to: PowerState,
    /// The function went through D3hot→D0 with No_Soft_Reset clear: its configuration is lost
    /// and must be restored.
    pub context_lost: bool,
}

/// Offset of the Power Management capability.
pub fn pm_capability(cfg: &impl ConfigSpace, bdf: Bdf) -> Option<u16> {
    find_capability(cfg, bdf, CapabilityId::POWER_MANAGEMENT)
}

/// Whether a D3hot→D0 transition resets the function: it has a PM capability and
/// PMCSR.No_Soft_Reset is clear (PCI PM 1.2 §7.2.2). QEMU's `nvme` sets No_Soft_Reset, so for it
/// this is false and its PM capability only saves power.
pub fn has_pm_reset(cfg: &impl ConfigSpace, bdf: Bdf) -> bool {
    pm_capability(cfg, bdf).is_some_and(|offset| {
        let pmcsr = cfg.read16(bdf, offset + pm::PMCSR);
        pmcsr != u16::MAX && pmcsr & pm::PMCSR_NO_SOFT_RESET == 0
    })
}

/// The function's power state from PMCSR.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bdf`, [`ResetError::NoPowerManagement`]
/// when it has no PM capability.
pub fn power_state(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<PowerState, ResetError> {
    present(cfg, bdf)?;
    let cap = pm_capability(cfg, bdf).ok_or(ResetError::NoPowerManagement { bdf })?;
    Ok(PowerState::from_pmcsr(cfg.read16(bdf, cap + pm::PMCSR)))
}

/// Moves the function to `state` through PMCSR (PCI PM 1.2 §5.4, §7.2.2) and waits the
/// transition's recovery time ([`D3HOT_DELAY_US`] for D3hot, [`D2_DELAY_US`] for D2). Going to
/// D0 from D3hot also waits until the function answers configuration requests.
///
/// Allowed: D0 to any supported state, any state to D0, and deeper sleep (D1→D2, D1/D2→D3hot).
/// PME_Status is never written as 1 (that would clear it). In D3hot the function no longer
/// decodes its BARs: it is a revoke trigger like memory disable. When the result says
/// `context_lost`, restore the saved configuration.
///
/// # Errors
///
/// [`ResetError::NotPresent`], [`ResetError::NoPowerManagement`];
/// [`ResetError::PowerStateUnsupported`] for a D1/D2 the function lacks;
/// [`ResetError::InvalidTransition`] for a transition PCI PM 1.2 §5.4 forbids;
/// [`ResetError::NotReady`] when the function does not answer after D3hot→D0;
/// [`ResetError::PowerStateNotReached`] when PMCSR does not read back the state asked for.
pub fn set_power_state(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    state: PowerState,
    delay: &mut impl FnMut(u32),
) -> Result<PowerTransition, ResetError> {
    present(cfg, bdf)?;
    let cap = pm_capability(cfg, bdf).ok_or(ResetError::NoPowerManagement { bdf })?;
    let pmc = cfg.read16(bdf, cap + pm::PMC);
    let supported = match state {
        PowerState::D1 => pmc & pm::PMC_D1_SUPPORT != 0,
        PowerState::D2 => pmc & pm::PMC_D2_SUPPORT != 0,
        PowerState::D0 | PowerState::D3Hot => true,
    };
    if !supported {
        return Err(ResetError::PowerStateUnsupported { bdf, state });
    }
    let pmcsr = cfg.read16(bdf, cap + pm::PMCSR);
    let from = PowerState::from_pmcsr(pmcsr);
    if from == state {
        return Ok(PowerTransition {
            from,
            to: state,
            context_lost: false,
        });
    }
    if state != PowerState::D0 && state < from {
        return Err(ResetError::InvalidTransition {
            bdf,
            from,
            to: state,
        });
    }
    let value = (pmcsr & !(pm::PMCSR_STATE_MASK | pm::PMCSR_PME_STATUS)) | state.bits();
    cfg.write16(bdf, cap + pm::PMCSR, value);
    let mut clock = Clock::new(delay);
    clock.sleep(from.recovery_us().max(state.recovery_us()));
    let context_lost = from == PowerState::D3Hot
        && state == PowerState::D0
        && pmcsr & pm::PMCSR_NO_SOFT_RESET == 0;
    if from == PowerState::D3Hot {
        wait_until_ready(cfg, bdf, READY_TIMEOUT_US, &mut *clock.delay)?;
    }
    let found = PowerState::from_pmcsr(cfg.read16(bdf, cap + pm::PMCSR));
    if found != state {
        return Err(ResetError::PowerStateNotReached {
            bdf,
            requested: state,
            found,
        });
    }
    Ok(PowerTransition {
        from,
        to: state,
        context_lost,
    })
}

/// PM reset (what Linux calls `pci_pm_reset`): D0→D3hot→D0 with No_Soft_Reset clear, waiting
/// [`D3HOT_DELAY_US`] after each step and then for the function to answer. Refused with
/// [`ResetError::NoSoftReset`] when the transition would keep the configuration, and with
/// [`ResetError::NotInD0`] when the function is not in D0.
///
/// # Errors
///
/// [`ResetError::NotPresent`], [`ResetError::NoPowerManagement`]; [`ResetError::NoSoftReset`] when
/// No_Soft_Reset is set (the transition would reset nothing); [`ResetError::NotInD0`] when the
/// function is not in D0; the errors of [`set_power_state`] for either transition.
pub fn power_management_reset(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    delay: &mut impl FnMut(u32),
) -> Result<ResetOutcome, ResetError> {
    present(cfg, bdf)?;
    let cap = pm_capability(cfg, bdf).ok_or(ResetError::NoPowerManagement { bdf })?;
    let pmcsr = cfg.read16(bdf, cap + pm::PMCSR);
    if pmcsr & pm::PMCSR_NO_SOFT_RESET != 0 {
        return Err(ResetError::NoSoftReset { bdf });
    }
    let state = PowerState::from_pmcsr(pmcsr);
    if state != PowerState::D0 {
        return Err(ResetError::NotInD0 { bdf, state });
    }
    let mut waited_us = 0;
    let mut counting = |us: u32| {
        waited_us += u64::from(us);
        delay(us);
    };
    set_power_state(cfg, bdf, PowerState::D3Hot, &mut counting)?;
    set_power_state(cfg, bdf, PowerState::D0, &mut counting)?;
    Ok(ResetOutcome {
        method: ResetMethod::PowerManagement,
        waited_us,
        pending_transactions_ignored: false,
    })
}
