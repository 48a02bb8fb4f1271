//! Function resets and the configuration save/restore around them: Function Level Reset (PCIe
//! Base 4.0 §6.6.2, Device Control "Initiate FLR" §7.5.3.4), the D3hot→D0 soft reset of PCI
//! Power Management 1.2 (§5.4, PMCSR §7.2.2) and the Secondary Bus Reset of a bridge
//! (PCI-to-PCI Bridge 1.2 §3.2.5.18, a Hot Reset on PCIe §6.6.1), plus the Command register
//! controls the kernel uses as revoke triggers.
//!
//! A reset throws away what firmware and the kernel programmed into a function: its BARs, its
//! Command register (decoding and bus mastering), interrupt routing, MSI/MSI-X, PCIe Device
//! Control, and for a bridge its bus numbers and windows. [`SavedConfig`] captures exactly that
//! and [`SavedConfig::restore`] puts it back, BARs and windows first and the Command register
//! last, so the function never decodes a half-restored address.
//!
//! A reset is also a revoke trigger (SPEC.md): every peer-to-peer export of every function the
//! reset touches must be revoked first. The order for a caller is:
//!
//! 1. [`reset_method`] picks how `bdf` can be reset (`None` for a function on a root bus that
//!    has neither FLR nor a usable PM reset: QEMU's `edu` and `ivshmem` on bus 0);
//! 2. [`ResetMethod::affected`] lists every function the reset hits (a bus reset hits everything
//!    below the parent bridge): revoke their exports and stop their drivers;
//! 3. [`reset`] saves them, quiesces them, resets, waits for them to answer and restores them;
//! 4. restore the exports.
//!
//! Every wait goes through a caller-supplied `delay(microseconds)` callback, and every timeout is
//! counted in the time requested from it, so host tests with a callback that returns at once are
//! instant and deterministic, while the kernel passes a real (TSC or PIT) delay.
//!
//! Not implemented: the Advanced Features capability's FLR (conventional PCI, §6.6.2 of its ECN),
//! device-specific resets, and saving MSI-X tables (they live in a BAR, not in configuration
//! space: a reset masks every vector, so re-enabling MSI-X after [`SavedConfig::restore`] is safe
//! and the driver reprograms the table).
//!
//! QEMU 7.2 facts (SPEC.md): `edu` and `ivshmem` have neither FLR nor power management, so
//! behind a bridge only a bus reset reaches them and on bus 0 nothing does; `nvme` has FLR and a
//! PM capability whose PMCSR has No_Soft_Reset set (so its D3hot→D0 transition is not a reset);
//! a Secondary Bus Reset zeroes the Command register and BARs of everything on the bus, and
//! `ivshmem`'s RAM survives it.
//!
//! Layout (a module imports only the ones listed before it, never this one): `state` (power
//! states) and [`method`] (reset methods and what they reach) at the bottom; [`error`]; `ready`
//! (the counted delay and the readiness poll, shared helpers); then one module per operation
//! family: [`command`], [`power`], [`flr`], [`bus`] and [`save`] (configuration save/restore).
//! This module on top chooses a method ([`reset_method`]) and runs the whole save → quiesce →
//! reset → wait → restore sequence ([`reset`]). Every register is declared once, in
//! [`crate::regs`].

pub mod bus;
pub mod command;
pub mod error;
pub mod flr;
pub mod method;
pub mod power;
mod ready;
pub mod save;
mod state;
#[cfg(test)]
mod tests;

pub use bus::{secondary_bus_reset, SBR_HOLD_US, SBR_SETTLE_US};
pub use command::{memory_decode_enabled, set_bus_master, set_memory_decode};
pub use error::ResetError;
pub use flr::{function_level_reset, has_flr, FLR_COMPLETION_US, PENDING_TRANSACTIONS_TIMEOUT_US};
pub use method::{bus_reset_scope, ResetMethod, ResetOutcome};
pub use power::{
    has_pm_reset, pm_capability, power_management_reset, power_state, set_power_state, PowerState,
    PowerTransition, D2_DELAY_US, D3HOT_DELAY_US,
};
pub use ready::{wait_until_ready, READY_TIMEOUT_US};
pub use save::SavedConfig;

use alloc::vec::Vec;

use crate::regs::{header, pm, Command, HeaderLayout};
use crate::{Bdf, ConfigSpace, Topology};
use ready::{layout_of, present};

/// What [`reset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The reset itself.
    pub outcome: ResetOutcome,
    /// Every function reset and restored, in restore order.
    pub functions: Vec<Bdf>,
}

/// Chooses how `bdf` can be reset, in Linux's order of preference: FLR if Device Capabilities
/// advertise it; else the PM reset if the function has a PM capability with No_Soft_Reset clear
/// (with No_Soft_Reset set, D3hot→D0 keeps the configuration and resets nothing); else a
/// Secondary Bus Reset by the parent bridge. A function on a root bus (no parent bridge) with
/// neither gets `None`: SPEC.md's "devices on bus 0 have no reset method".
///
/// Unlike Linux, a bus reset is offered even when the bus holds other functions: the caller sees
/// them in [`ResetMethod::affected`] and decides (revoking all their exports first).
pub fn reset_method(cfg: &impl ConfigSpace, topology: &Topology, bdf: Bdf) -> Option<ResetMethod> {
    if present(cfg, bdf).is_err() {
        return None;
    }
    if has_flr(cfg, bdf) {
        return Some(ResetMethod::FunctionLevel);
    }
    if has_pm_reset(cfg, bdf) {
        return Some(ResetMethod::PowerManagement);
    }
    let parent = topology.parent(bdf)?;
    parent
        .bridge
        .map(|_| ResetMethod::SecondaryBus { bridge: parent.bdf })
}

/// Resets `bdf` by `method` and brings back every function the reset hits: saves them all,
/// quiesces them (Command = Interrupt Disable only: no decoding, no DMA, as Linux's
/// `pci_dev_save_and_disable`), resets, waits for each to answer and restores it, upstream
/// bridges before what sits below them.
///
/// Revoke every export of [`ResetMethod::affected`] before calling: this function only deals
/// with configuration space. Nothing is touched when saving fails. Once the reset has happened
/// it cannot be undone: if the reset itself fails, restore is still attempted for every function
/// and the reset's error is returned; otherwise every function is restored and the first restore
/// error, if any, is returned.
pub fn reset(
    cfg: &impl ConfigSpace,
    topology: &Topology,
    bdf: Bdf,
    method: ResetMethod,
    delay: &mut impl FnMut(u32),
) -> Result<ResetReport, ResetError> {
    present(cfg, bdf)?;
    if let ResetMethod::SecondaryBus { bridge } = method {
        if topology.function(bridge).is_none() {
            return Err(ResetError::NotInTopology { bdf: bridge });
        }
        if topology.function(bdf).is_none() {
            return Err(ResetError::NotInTopology { bdf });
        }
        if layout_of(cfg, bridge) != HeaderLayout::PciBridge {
            return Err(ResetError::NotABridge { bdf: bridge });
        }
    }
    let functions = method.affected(topology, bdf);
    if !functions.contains(&bdf) {
        let ResetMethod::SecondaryBus { bridge } = method else {
            return Err(ResetError::NotInTopology { bdf });
        };
        return Err(ResetError::NotBelowBridge { bdf, bridge });
    }
    // Preconditions of the chosen method, checked before anything is written.
    match method {
        ResetMethod::FunctionLevel if !has_flr(cfg, bdf) => {
            return Err(ResetError::FlrNotSupported { bdf })
        }
        ResetMethod::PowerManagement => {
            let cap = pm_capability(cfg, bdf).ok_or(ResetError::NoPowerManagement { bdf })?;
            let pmcsr = cfg.read16(bdf, cap + pm::PMCSR);
            if pmcsr & pm::PMCSR_NO_SOFT_RESET != 0 {
                return Err(ResetError::NoSoftReset { bdf });
            }
            let state = PowerState::from_pmcsr(pmcsr);
            if state != PowerState::D0 {
                return Err(ResetError::NotInD0 { bdf, state });
            }
        }
        _ => {}
    }
    let saved = functions
        .iter()
        .map(|&f| SavedConfig::save(cfg, f))
        .collect::<Result<Vec<_>, _>>()?;
    for s in &saved {
        cfg.write16(s.bdf(), header::COMMAND, Command::INTERRUPT_DISABLE.bits());
    }
    let mut waited_us = 0;
    let mut counting = |us: u32| {
        waited_us += u64::from(us);
        delay(us);
    };
    let result = match method {
        ResetMethod::FunctionLevel => function_level_reset(cfg, bdf, &mut counting),
        ResetMethod::PowerManagement => power_management_reset(cfg, bdf, &mut counting),
        ResetMethod::SecondaryBus { bridge } => secondary_bus_reset(cfg, bridge, &mut counting),
    };
    let mut first_error = None;
    for s in &saved {
        let restored = wait_until_ready(cfg, s.bdf(), READY_TIMEOUT_US, &mut counting)
            .and_then(|_| s.restore(cfg));
        if let Err(e) = restored {
            first_error.get_or_insert(e);
        }
    }
    let outcome = result?;
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(ResetReport {
        outcome: ResetOutcome {
            waited_us,
            ..outcome
        },
        functions,
    })
}
