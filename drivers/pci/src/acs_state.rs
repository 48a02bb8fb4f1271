//! The ACS Capability and Control registers of one function, read as they are (PCIe Base 4.0
//! §7.7.7). Below the topology: enumeration records each function's ACS state with these
//! readers, and the policy in [`crate::acs`] (which walks a topology) writes the controls.

use core::fmt;

use crate::regs::{acs as acs_regs, AcsFlags};
use crate::{Bdf, ConfigSpace};

/// The ACS Capability and Control registers of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcsState {
    /// What the function implements (ACS Capability bits 6:0).
    pub capability: AcsFlags,
    /// What is enabled (ACS Control bits 6:0).
    pub control: AcsFlags,
}

impl AcsState {
    /// Whether peer-to-peer traffic may be redirected upstream here (RR, CR or EC enabled).
    pub fn has_redirect(&self) -> bool {
        self.control.intersects(AcsFlags::REDIRECT)
    }
}

/// Reads the ACS registers of the capability at `offset`. An offset whose registers fall
/// outside configuration space reads as all-ones, like any invalid access.
pub fn read_acs(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16) -> AcsState {
    let read = |register: u16| {
        AcsFlags::from_bits_truncate(cfg.read16(bdf, offset.saturating_add(register)))
    };
    AcsState {
        capability: read(acs_regs::CAPABILITY),
        control: read(acs_regs::CONTROL),
    }
}

/// The ACS Control register of the capability at `offset`, every bit of it (all-ones when the
/// register falls outside configuration space).
pub fn read_control_raw(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16) -> u16 {
    cfg.read16(bdf, offset.saturating_add(acs_regs::CONTROL))
}

impl fmt::Display for AcsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cap [{}] ctl [{}]",
            flag_names(self.capability),
            flag_names(self.control)
        )
    }
}

/// The names of the flags set, space-separated (`-` for none), as the listing and the policy
/// report print them.
pub(super) fn flag_names(flags: AcsFlags) -> impl fmt::Display {
    struct Names(AcsFlags);
    impl fmt::Display for Names {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0.is_empty() {
                return f.write_str("-");
            }
            for (i, (name, _)) in self.0.iter_names().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
            }
            Ok(())
        }
    }
    Names(flags)
}
