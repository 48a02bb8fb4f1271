//! Command register controls (PCI Local Bus 3.0 §6.2.2): memory decode and bus mastering, the
//! toggles the kernel uses to quiesce a function and as revoke triggers.

use super::error::ResetError;
use super::ready::present;
use crate::regs::{header, Command};
use crate::{Bdf, ConfigSpace};

fn set_command_bit(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    bit: Command,
    on: bool,
) -> Result<bool, ResetError> {
    let raw = cfg.read16(bdf, header::COMMAND);
    if raw == u16::MAX && cfg.read16(bdf, header::VENDOR_ID) == u16::MAX {
        return Err(ResetError::NotPresent { bdf });
    }
    let command = Command::from_bits_retain(raw);
    let was = command.contains(bit);
    if was != on {
        let new = if on { command | bit } else { command - bit };
        // A 16-bit access: a dword write would clear the RW1C bits of Status.
        cfg.write16(bdf, header::COMMAND, new.bits());
    }
    Ok(was)
}

/// Turns the function's memory decoding (Command.Memory Space) on or off and returns whether it
/// was on. Turning it off is a revoke trigger: revoke the function's exports before calling.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bdf`.
pub fn set_memory_decode(cfg: &impl ConfigSpace, bdf: Bdf, on: bool) -> Result<bool, ResetError> {
    set_command_bit(cfg, bdf, Command::MEMORY_SPACE, on)
}

/// Whether the function decodes its memory BARs.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bdf`.
pub fn memory_decode_enabled(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<bool, ResetError> {
    present(cfg, bdf)?;
    Ok(Command::from_bits_retain(cfg.read16(bdf, header::COMMAND)).contains(Command::MEMORY_SPACE))
}

/// Turns bus mastering (the function's right to issue DMA and MSI writes) on or off and returns
/// whether it was on.
///
/// # Errors
///
/// [`ResetError::NotPresent`] when nothing answers at `bdf`.
pub fn set_bus_master(cfg: &impl ConfigSpace, bdf: Bdf, on: bool) -> Result<bool, ResetError> {
    set_command_bit(cfg, bdf, Command::BUS_MASTER, on)
}
