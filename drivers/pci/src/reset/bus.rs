//! Secondary Bus Reset of a bridge (PCI-to-PCI Bridge 1.2 §3.2.5.18; a Hot Reset of the link on
//! PCIe, §6.6.1): every function below the bridge is reset.

use super::error::ResetError;
use super::method::{ResetMethod, ResetOutcome};
use super::ready::{layout_of, present, Clock};
use crate::regs::{bridge, BridgeControl, HeaderLayout};
use crate::{Bdf, ConfigSpace};

/// How long Secondary Bus Reset is held (PCI-to-PCI Bridge 1.2 §3.2.5.18 asks for at least
/// 1 ms of Trst; Linux holds it 2 ms).
pub const SBR_HOLD_US: u32 = 2_000;

/// Wait after releasing Secondary Bus Reset before the first configuration request (PCIe Base
/// 4.0 §6.6.1: 100 ms after a Conventional Reset on links up to 5 GT/s).
pub const SBR_SETTLE_US: u32 = 100_000;

/// Secondary Bus Reset (PCI-to-PCI Bridge 1.2 §3.2.5.18): sets Bridge Control bit 6, holds it
/// [`SBR_HOLD_US`], clears it and waits [`SBR_SETTLE_US`] before anything may be sent to the
/// secondary bus.
///
/// Every function below `bridge` is reset (Command and BARs zeroed, bus numbers of bridges below
/// cleared). Poll each of them with [`wait_until_ready`](crate::reset::wait_until_ready) and restore them, parents first, or use
/// [`reset`](crate::reset::reset), which does both. `bridge` itself keeps its configuration.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bridge`, [`ResetError::NotABridge`] when it
/// has no type-1 header.
pub fn secondary_bus_reset(
    cfg: &impl ConfigSpace,
    bridge: Bdf,
    delay: &mut impl FnMut(u32),
) -> Result<ResetOutcome, ResetError> {
    present(cfg, bridge)?;
    if layout_of(cfg, bridge) != HeaderLayout::PciBridge {
        return Err(ResetError::NotABridge { bdf: bridge });
    }
    let mut clock = Clock::new(delay);
    let control = BridgeControl::from_bits_retain(cfg.read16(bridge, bridge::BRIDGE_CONTROL));
    let control = control - BridgeControl::SECONDARY_BUS_RESET;
    cfg.write16(
        bridge,
        bridge::BRIDGE_CONTROL,
        (control | BridgeControl::SECONDARY_BUS_RESET).bits(),
    );
    clock.sleep(SBR_HOLD_US);
    cfg.write16(bridge, bridge::BRIDGE_CONTROL, control.bits());
    clock.sleep(SBR_SETTLE_US);
    Ok(ResetOutcome {
        method: ResetMethod::SecondaryBus { bridge },
        waited_us: clock.waited_us,
        pending_transactions_ignored: false,
    })
}
