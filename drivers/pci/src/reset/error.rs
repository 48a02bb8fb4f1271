//! Why a reset, power transition, Command-register change or configuration restore failed
//! (the errors of every [`crate::reset`] operation).

use super::state::PowerState;
use core::fmt;

use crate::Bdf;

/// Why a reset, power transition or restore was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetError {
    /// No function answers at this address (vendor ID all-ones).
    NotPresent {
        /// The function.
        bdf: Bdf,
    },
    /// The function is not in the topology the caller passed.
    NotInTopology {
        /// The function.
        bdf: Bdf,
    },
    /// No reset method applies (no FLR, no usable PM reset, and on a root bus).
    NoResetMethod {
        /// The function.
        bdf: Bdf,
    },
    /// The function has no PCI Express capability or its Device Capabilities lack FLR.
    FlrNotSupported {
        /// The function.
        bdf: Bdf,
    },
    /// The function has no Power Management capability.
    NoPowerManagement {
        /// The function.
        bdf: Bdf,
    },
    /// PMCSR.No_Soft_Reset is set: D3hot→D0 keeps the configuration, so it is not a reset.
    NoSoftReset {
        /// The function.
        bdf: Bdf,
    },
    /// A PM reset must start in D0 (the function's context is unknown otherwise).
    NotInD0 {
        /// The function.
        bdf: Bdf,
        /// Its current state.
        state: PowerState,
    },
    /// The function does not support this power state (D1/D2 are optional).
    PowerStateUnsupported {
        /// The function.
        bdf: Bdf,
        /// The state requested.
        state: PowerState,
    },
    /// A transition PCI PM 1.2 §5.4 does not allow (D3hot only goes to D0; sleep only deepens).
    InvalidTransition {
        /// The function.
        bdf: Bdf,
        /// Current state.
        from: PowerState,
        /// State requested.
        to: PowerState,
    },
    /// The function did not reach the requested power state.
    PowerStateNotReached {
        /// The function.
        bdf: Bdf,
        /// State requested.
        requested: PowerState,
        /// State read back.
        found: PowerState,
    },
    /// A bus reset was asked of a function that is not a PCI-to-PCI bridge.
    NotABridge {
        /// The function.
        bdf: Bdf,
    },
    /// A bus reset by `bridge` does not reach `bdf`.
    NotBelowBridge {
        /// The function to reset.
        bdf: Bdf,
        /// The bridge given.
        bridge: Bdf,
    },
    /// The function did not answer configuration requests in time after a reset.
    NotReady {
        /// The function.
        bdf: Bdf,
        /// Microseconds waited.
        waited_us: u64,
    },
    /// Restore found another device at this address than the one saved.
    IdentityChanged {
        /// The function.
        bdf: Bdf,
        /// Vendor:device saved.
        saved: (u16, u16),
        /// Vendor:device found.
        found: (u16, u16),
    },
    /// A register did not read back what restore wrote; decoding was left off.
    RestoreMismatch {
        /// The function.
        bdf: Bdf,
        /// Register offset.
        offset: u16,
        /// Value written.
        expected: u32,
        /// Value read back.
        found: u32,
    },
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotPresent { bdf } => write!(f, "{bdf}: no function answers"),
            Self::NotInTopology { bdf } => write!(f, "{bdf}: not in the enumerated topology"),
            Self::NoResetMethod { bdf } => write!(
                f,
                "{bdf}: no reset method (no FLR, no PM reset, no parent bridge)"
            ),
            Self::FlrNotSupported { bdf } => write!(f, "{bdf}: Function Level Reset not supported"),
            Self::NoPowerManagement { bdf } => {
                write!(f, "{bdf}: no power management capability")
            }
            Self::NoSoftReset { bdf } => write!(
                f,
                "{bdf}: No_Soft_Reset is set, D3hot->D0 does not reset the function"
            ),
            Self::NotInD0 { bdf, state } => {
                write!(f, "{bdf}: PM reset needs D0, function is in {state}")
            }
            Self::PowerStateUnsupported { bdf, state } => {
                write!(f, "{bdf}: power state {state} not supported")
            }
            Self::InvalidTransition { bdf, from, to } => {
                write!(f, "{bdf}: power transition {from} -> {to} not allowed")
            }
            Self::PowerStateNotReached {
                bdf,
                requested,
                found,
            } => write!(f, "{bdf}: asked for {requested}, function is in {found}"),
            Self::NotABridge { bdf } => write!(f, "{bdf}: not a PCI-to-PCI bridge"),
            Self::NotBelowBridge { bdf, bridge } => {
                write!(f, "{bdf}: not below bridge {bridge}")
            }
            Self::NotReady { bdf, waited_us } => write!(
                f,
                "{bdf}: did not answer configuration requests {waited_us} us after reset"
            ),
            Self::IdentityChanged { bdf, saved, found } => write!(
                f,
                "{bdf}: saved {:04x}:{:04x}, found {:04x}:{:04x}",
                saved.0, saved.1, found.0, found.1
            ),
            Self::RestoreMismatch {
                bdf,
                offset,
                expected,
                found,
            } => write!(
                f,
                "{bdf}: register {offset:#x} reads {found:#x} after restoring {expected:#x}"
            ),
        }
    }
}

impl core::error::Error for ResetError {}
