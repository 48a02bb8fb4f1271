//! The PCI power states D0-D3hot (PCI PM 1.2 §5.4) as PMCSR encodes them (§7.2.2), with the
//! recovery time of each transition (Table 5-6). Declared below every operation so that errors
//! and the power-state functions can both name a state.

use core::fmt;

use crate::regs::pm;

/// Recovery time of a transition to or from D3hot (PCI PM 1.2 Table 5-6: 10 ms).
pub const D3HOT_DELAY_US: u32 = 10_000;

/// Recovery time of a transition to or from D2 (PCI PM 1.2 Table 5-6: 200 µs).
pub const D2_DELAY_US: u32 = 200;

/// A PCI power state (PCI PM 1.2 §5.4; D3cold is not reachable through PMCSR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Light sleep (optional).
    D1,
    /// Deeper sleep (optional).
    D2,
    /// Software-visible off: only configuration requests are answered.
    D3Hot,
}

impl PowerState {
    /// Decodes PMCSR bits 1:0.
    pub const fn from_pmcsr(pmcsr: u16) -> Self {
        match pmcsr & pm::PMCSR_STATE_MASK {
            0 => Self::D0,
            1 => Self::D1,
            2 => Self::D2,
            _ => Self::D3Hot,
        }
    }

    /// The PMCSR PowerState encoding.
    pub const fn bits(self) -> u16 {
        match self {
            Self::D0 => 0,
            Self::D1 => 1,
            Self::D2 => 2,
            Self::D3Hot => 3,
        }
    }

    /// Recovery delay of a transition into or out of this state (PCI PM 1.2 Table 5-6).
    pub(super) const fn recovery_us(self) -> u32 {
        match self {
            Self::D0 | Self::D1 => 0,
            Self::D2 => D2_DELAY_US,
            Self::D3Hot => D3HOT_DELAY_US,
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::D0 => "D0",
            Self::D1 => "D1",
            Self::D2 => "D2",
            Self::D3Hot => "D3hot",
        })
    }
}
