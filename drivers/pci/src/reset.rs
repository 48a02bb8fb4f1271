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

use alloc::vec::Vec;
use core::fmt;

use crate::capability::{extended_capabilities, standard_capabilities};
use crate::regs::{
    acs, bridge, header, pcie, AcsFlags, BridgeControl, CapabilityId, Command,
    ExtendedCapabilityId, HeaderLayout,
};
use crate::{Bdf, ConfigSpace, Topology};

/// Register layouts this module needs that [`crate::regs`] does not declare.
pub mod layout {
    /// Type-0/type-1 header registers not in [`crate::regs::header`] (PCI Local Bus 3.0 §6.2.4).
    pub mod header {
        /// Cache Line Size (8 bits).
        pub const CACHE_LINE_SIZE: u16 = 0x0c;
        /// Latency Timer (8 bits).
        pub const LATENCY_TIMER: u16 = 0x0d;
    }

    /// PCI Express capability fields not in [`crate::regs::pcie`] (PCIe Base 4.0 §7.5.3).
    pub mod pcie {
        /// Device Status: Transactions Pending, bit 5 (§7.5.3.5).
        pub const DEVSTA_TRANSACTIONS_PENDING: u16 = 1 << 5;
        /// Link Control 2 register (16 bits, capability version 2).
        pub const LINK_CONTROL_2: u16 = 0x30;
        /// Capability versions from which the "2" registers exist.
        pub const VERSION_WITH_CONTROL_2: u16 = 2;
    }

    /// Power Management capability (PCI Power Management 1.2 §7.2).
    pub mod pm {
        /// Power Management Capabilities register (PMC, 16 bits) offset from the capability.
        pub const PMC: u16 = 0x02;
        /// PMC bits 2:0: version (3 = PCI PM 1.2).
        pub const PMC_VERSION_MASK: u16 = 0x7;
        /// PMC bit 9: D1 supported.
        pub const PMC_D1_SUPPORT: u16 = 1 << 9;
        /// PMC bit 10: D2 supported.
        pub const PMC_D2_SUPPORT: u16 = 1 << 10;
        /// Power Management Control/Status register (PMCSR, 16 bits) offset from the capability.
        pub const PMCSR: u16 = 0x04;
        /// PMCSR bits 1:0: PowerState (0 = D0, 1 = D1, 2 = D2, 3 = D3hot).
        pub const PMCSR_STATE_MASK: u16 = 0x3;
        /// PMCSR bit 3: No_Soft_Reset. When set, a D3hot→D0 transition keeps the function's
        /// configuration (it is *not* a reset); when clear, the function goes through an internal
        /// reset to D0-uninitialized.
        pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
        /// PMCSR bit 8: PME_En.
        pub const PMCSR_PME_ENABLE: u16 = 1 << 8;
        /// PMCSR bit 15: PME_Status (write 1 to clear).
        pub const PMCSR_PME_STATUS: u16 = 1 << 15;
    }

    /// MSI capability (PCI Local Bus 3.0 §6.8.1).
    pub mod msi {
        /// Message Control (16 bits).
        pub const CONTROL: u16 = 0x02;
        /// Message Control: MSI Enable.
        pub const CONTROL_ENABLE: u16 = 1 << 0;
        /// Message Control: 64-bit address capable.
        pub const CONTROL_64BIT: u16 = 1 << 7;
        /// Message Control: per-vector masking capable.
        pub const CONTROL_PER_VECTOR_MASKING: u16 = 1 << 8;
        /// Message Address (low 32 bits).
        pub const ADDRESS_LOW: u16 = 0x04;
        /// Message Upper Address (64-bit capable functions only).
        pub const ADDRESS_HIGH: u16 = 0x08;
        /// Message Data (16 bits) for 32-bit-address functions.
        pub const DATA_32: u16 = 0x08;
        /// Message Data (16 bits) for 64-bit-address functions.
        pub const DATA_64: u16 = 0x0c;
        /// Mask Bits for 32-bit-address functions with per-vector masking.
        pub const MASK_32: u16 = 0x0c;
        /// Mask Bits for 64-bit-address functions with per-vector masking.
        pub const MASK_64: u16 = 0x10;
    }

    /// MSI-X capability (PCI Local Bus 3.0 §6.8.2).
    pub mod msix {
        /// Message Control (16 bits).
        pub const CONTROL: u16 = 0x02;
        /// Message Control: MSI-X Enable, bit 15.
        pub const CONTROL_ENABLE: u16 = 1 << 15;
        /// Message Control: Function Mask, bit 14.
        pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
    }
}

use layout::{msi, msix, pm};

/// Time a function has to complete an FLR before software may touch it (PCIe Base 4.0 §6.6.2:
/// 100 ms).
pub const FLR_COMPLETION_US: u32 = 100_000;
/// How long Secondary Bus Reset is held (PCI-to-PCI Bridge 1.2 §3.2.5.18 asks for at least
/// 1 ms of Trst; Linux holds it 2 ms).
pub const SBR_HOLD_US: u32 = 2_000;
/// Wait after releasing Secondary Bus Reset before the first configuration request (PCIe Base
/// 4.0 §6.6.1: 100 ms after a Conventional Reset on links up to 5 GT/s).
pub const SBR_SETTLE_US: u32 = 100_000;
/// Recovery time of a transition to or from D3hot (PCI PM 1.2 Table 5-6: 10 ms).
pub const D3HOT_DELAY_US: u32 = 10_000;
/// Recovery time of a transition to or from D2 (PCI PM 1.2 Table 5-6: 200 µs).
pub const D2_DELAY_US: u32 = 200;
/// How long a function may take to answer configuration requests after a reset (PCIe Base 4.0
/// §6.6.1: 1.0 s after a Conventional Reset, unless it answers with Request Retry Status).
pub const READY_TIMEOUT_US: u32 = 1_000_000;
/// How long to wait for Transactions Pending to clear before an FLR (Linux waits 100 + 200 +
/// 400 ms, then performs the FLR anyway).
pub const PENDING_TRANSACTIONS_TIMEOUT_US: u32 = 700_000;
/// First polling interval; intervals double up to [`POLL_MAX_US`].
const POLL_START_US: u32 = 1_000;
/// Longest polling interval.
const POLL_MAX_US: u32 = 100_000;

/// Vendor ID a Root Complex returns for a Configuration Request Retry Status completion when
/// CRS Software Visibility is on (PCIe Base 4.0 §2.3.2): "not ready yet".
const VENDOR_ID_CRS: u16 = 0x0001;

/// How a function can be reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetMethod {
    /// Function Level Reset through the PCI Express Device Control register: only this function.
    FunctionLevel,
    /// D3hot→D0 through the PM capability with No_Soft_Reset clear: only this function.
    PowerManagement,
    /// Secondary Bus Reset of the parent bridge: every function below `bridge`.
    SecondaryBus {
        /// The bridge whose secondary bus is reset.
        bridge: Bdf,
    },
}

impl ResetMethod {
    /// Every function a reset of `bdf` by this method hits, upstream bridges before what sits
    /// below them (the order in which they must be restored). For a bus reset this is everything
    /// below the bridge, siblings and their subtrees included: revoke all their exports first.
    pub fn affected(&self, topology: &Topology, bdf: Bdf) -> Vec<Bdf> {
        match *self {
            Self::FunctionLevel | Self::PowerManagement => alloc::vec![bdf],
            Self::SecondaryBus { bridge } => bus_reset_scope(topology, bridge),
        }
    }

    /// A short name ("FLR", "PM", "bus").
    pub const fn name(&self) -> &'static str {
        match self {
            Self::FunctionLevel => "FLR",
            Self::PowerManagement => "PM D3hot->D0",
            Self::SecondaryBus { .. } => "secondary bus reset",
        }
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecondaryBus { bridge } => write!(f, "secondary bus reset by {bridge}"),
            other => f.write_str(other.name()),
        }
    }
}

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
    const fn recovery_us(self) -> u32 {
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

/// What a reset primitive did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetOutcome {
    /// The method used.
    pub method: ResetMethod,
    /// Microseconds requested from the delay callback.
    pub waited_us: u64,
    /// FLR only: Transactions Pending never cleared and the FLR was issued anyway (as Linux
    /// does). Completions still in flight are lost.
    pub pending_transactions_ignored: bool,
}

/// What [`reset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The reset itself.
    pub outcome: ResetOutcome,
    /// Every function reset and restored, in restore order.
    pub functions: Vec<Bdf>,
}

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

/// Counts the time asked of the caller's delay callback.
struct Clock<'a, D: FnMut(u32)> {
    delay: &'a mut D,
    waited_us: u64,
}

impl<'a, D: FnMut(u32)> Clock<'a, D> {
    fn new(delay: &'a mut D) -> Self {
        Self {
            delay,
            waited_us: 0,
        }
    }

    fn sleep(&mut self, us: u32) {
        if us > 0 {
            (self.delay)(us);
            self.waited_us += u64::from(us);
        }
    }

    /// Polls `done` with doubling intervals until it holds (true) or `timeout_us` of waiting
    /// has been spent (false). `done` is always tried once more after the last wait.
    fn poll(&mut self, timeout_us: u32, mut done: impl FnMut() -> bool) -> bool {
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

fn vendor_device(cfg: &impl ConfigSpace, bdf: Bdf) -> (u16, u16) {
    (
        cfg.read16(bdf, header::VENDOR_ID),
        cfg.read16(bdf, header::DEVICE_ID),
    )
}

fn present(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<(), ResetError> {
    if cfg.read16(bdf, header::VENDOR_ID) == u16::MAX {
        return Err(ResetError::NotPresent { bdf });
    }
    Ok(())
}

fn layout_of(cfg: &impl ConfigSpace, bdf: Bdf) -> HeaderLayout {
    HeaderLayout::from_header_type(cfg.read8(bdf, header::HEADER_TYPE))
}

/// Offset of the first standard capability with this ID.
fn find_capability(cfg: &impl ConfigSpace, bdf: Bdf, id: CapabilityId) -> Option<u16> {
    standard_capabilities(cfg, bdf)
        .entries
        .iter()
        .find(|c| c.id == id)
        .map(|c| u16::from(c.offset))
}

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

/// Every function below `bridge` (its secondary bus and everything further down), upstream
/// bridges first: what a Secondary Bus Reset of `bridge` resets. Empty for an unknown bridge.
pub fn bus_reset_scope(topology: &Topology, bridge: Bdf) -> Vec<Bdf> {
    topology
        .functions()
        .iter()
        .filter(|f| topology.upstream_bridges(f.bdf).any(|b| b.bdf == bridge))
        .map(|f| f.bdf)
        .collect()
}

/// Polls until `bdf` answers configuration requests with a valid vendor ID (not all-ones, not
/// the Request Retry Status value 0x0001, not 0), for at most `timeout_us`. Returns the time
/// waited.
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

/// Function Level Reset (PCIe Base 4.0 §6.6.2): waits up to
/// [`PENDING_TRANSACTIONS_TIMEOUT_US`] for Device Status.Transactions Pending to clear (and
/// issues the FLR anyway if it does not, reporting it), sets Device Control.Initiate FLR, waits
/// [`FLR_COMPLETION_US`], then polls until the function answers with a valid vendor ID (up to
/// [`READY_TIMEOUT_US`]).
///
/// Resets only `bdf`. Its configuration is lost: save it first ([`SavedConfig::save`]) and
/// restore it afterwards, or use [`reset`], which does both.
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
        status == u16::MAX || status & layout::pcie::DEVSTA_TRANSACTIONS_PENDING == 0
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

/// Secondary Bus Reset (PCI-to-PCI Bridge 1.2 §3.2.5.18): sets Bridge Control bit 6, holds it
/// [`SBR_HOLD_US`], clears it and waits [`SBR_SETTLE_US`] before anything may be sent to the
/// secondary bus.
///
/// Every function below `bridge` is reset (Command and BARs zeroed, bus numbers of bridges below
/// cleared). Poll each of them with [`wait_until_ready`] and restore them, parents first, or use
/// [`reset`], which does both. `bridge` itself keeps its configuration.
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

/// The function's power state from PMCSR.
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
pub fn set_memory_decode(cfg: &impl ConfigSpace, bdf: Bdf, on: bool) -> Result<bool, ResetError> {
    set_command_bit(cfg, bdf, Command::MEMORY_SPACE, on)
}

/// Whether the function decodes its memory BARs.
pub fn memory_decode_enabled(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<bool, ResetError> {
    present(cfg, bdf)?;
    Ok(Command::from_bits_retain(cfg.read16(bdf, header::COMMAND)).contains(Command::MEMORY_SPACE))
}

/// Turns bus mastering (the function's right to issue DMA and MSI writes) on or off and returns
/// whether it was on.
pub fn set_bus_master(cfg: &impl ConfigSpace, bdf: Bdf, on: bool) -> Result<bool, ResetError> {
    set_command_bit(cfg, bdf, Command::BUS_MASTER, on)
}

/// Bridge registers a reset clears (PCI-to-PCI Bridge 1.2 §3.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedBridge {
    /// 0x18: primary, secondary, subordinate bus, secondary latency timer.
    bus_numbers: u32,
    /// 0x1c, 0x1d: I/O base and limit (written as bytes: 0x1e is the RW1C Secondary Status).
    io_base: u8,
    io_limit: u8,
    /// 0x20: memory base and limit.
    memory: u32,
    /// 0x24: prefetchable base and limit.
    prefetchable: u32,
    /// 0x28, 0x2c: prefetchable base/limit upper 32 bits.
    prefetchable_base_upper: u32,
    prefetchable_limit_upper: u32,
    /// 0x30: I/O base/limit upper 16 bits.
    io_upper: u32,
    /// 0x3e: Bridge Control, without Secondary Bus Reset.
    control: u16,
}

/// PCI Express capability registers a reset clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedPcie {
    offset: u16,
    device_control: u16,
    link_control: u16,
    /// Device Control 2 and Link Control 2, capability version 2 only.
    control_2: Option<(u16, u16)>,
}

/// Dwords of the largest ACS Egress Control Vector (256 bits).
const ACS_EGRESS_DWORDS_MAX: usize = (acs::EGRESS_CONTROL_VECTOR_MAX_BITS / 32) as usize;

/// ACS extended capability registers a reset clears (PCIe Base 4.0 §7.7.7): the Control
/// register, raw (bits a newer revision defines included), and the Egress Control Vector when
/// P2P Egress Control is advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedAcs {
    offset: u16,
    control: u16,
    egress_vector: [u32; ACS_EGRESS_DWORDS_MAX],
    /// Dwords of `egress_vector` in use (0 without Egress Control).
    egress_dwords: u8,
}

impl SavedAcs {
    fn save(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16) -> Option<Self> {
        // The registers must lie inside configuration space (a header at 0xffc cannot hold them).
        let end = |len: u16| {
            offset
                .checked_add(len)
                .filter(|&e| e <= crate::CONFIG_SPACE_SIZE)
        };
        end(acs::CONTROL + 2)?;
        let capability = cfg.read16(bdf, offset + acs::CAPABILITY);
        let mut saved = Self {
            offset,
            control: cfg.read16(bdf, offset + acs::CONTROL),
            egress_vector: [0; ACS_EGRESS_DWORDS_MAX],
            egress_dwords: 0,
        };
        if AcsFlags::from_bits_truncate(capability).contains(AcsFlags::EC) {
            let bits = match capability >> acs::EGRESS_CONTROL_VECTOR_SIZE_SHIFT {
                0 => acs::EGRESS_CONTROL_VECTOR_MAX_BITS,
                n => n,
            };
            let dwords = bits.div_ceil(32);
            if end(acs::EGRESS_CONTROL_VECTOR + 4 * dwords).is_some() {
                for (i, dword) in (0..dwords).zip(saved.egress_vector.iter_mut()) {
                    *dword = cfg.read32(bdf, offset + acs::EGRESS_CONTROL_VECTOR + 4 * i);
                }
                saved.egress_dwords = dwords as u8;
            }
        }
        Some(saved)
    }

    fn restore(&self, cfg: &impl ConfigSpace, bdf: Bdf) {
        for (i, &dword) in (0u16..).zip(&self.egress_vector[..usize::from(self.egress_dwords)]) {
            cfg.write32(bdf, self.offset + acs::EGRESS_CONTROL_VECTOR + 4 * i, dword);
        }
        cfg.write16(bdf, self.offset + acs::CONTROL, self.control);
    }
}

/// MSI registers (PCI Local Bus 3.0 §6.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedMsi {
    offset: u16,
    control: u16,
    address_low: u32,
    address_high: Option<u32>,
    data: u16,
    mask: Option<u32>,
}

impl SavedMsi {
    fn data_offset(&self) -> u16 {
        if self.control & msi::CONTROL_64BIT != 0 {
            msi::DATA_64
        } else {
            msi::DATA_32
        }
    }

    fn mask_offset(&self) -> u16 {
        if self.control & msi::CONTROL_64BIT != 0 {
            msi::MASK_64
        } else {
            msi::MASK_32
        }
    }
}

/// The configuration a reset destroys, captured from one function by [`SavedConfig::save`].
///
/// Saved: every BAR dword (upper halves of 64-bit BARs included) and the expansion ROM, Command,
/// Cache Line Size, Latency Timer, Interrupt Line; for bridges the bus numbers, I/O, memory and
/// prefetchable windows and Bridge Control; PCI Express Device/Link Control (and the "2"
/// registers); MSI address/data/mask/enable and MSI-X enable/function mask; and of the
/// extended capabilities, ACS: the ACS Control register (every bit, raw) and, with P2P Egress
/// Control advertised, the Egress Control Vector, so an ACS isolation policy survives a reset.
/// Not saved: Status (RW1C), read-only identification, the MSI-X table (in a BAR), and every
/// other extended capability (AER masks and severities, LTR, L1 PM Substates, Resizable BAR,
/// ATS, PASID, PRI, SR-IOV): a function that needs them is reprogrammed by its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConfig {
    bdf: Bdf,
    id: (u16, u16),
    layout: HeaderLayout,
    command: Command,
    cache_line_size: u8,
    latency_timer: u8,
    interrupt_line: u8,
    bars: [u32; 6],
    bar_count: u8,
    expansion_rom: Option<u32>,
    bridge: Option<SavedBridge>,
    pcie: Option<SavedPcie>,
    msi: Option<SavedMsi>,
    msix: Option<(u16, u16)>,
    acs: Option<SavedAcs>,
}

impl SavedConfig {
    /// Captures the function's configuration.
    pub fn save(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<Self, ResetError> {
        present(cfg, bdf)?;
        let layout = layout_of(cfg, bdf);
        let bar_count = layout.bar_count().min(header::TYPE0_BAR_COUNT);
        let mut bars = [0; 6];
        for (index, bar) in bars.iter_mut().enumerate().take(usize::from(bar_count)) {
            *bar = cfg.read32(bdf, header::bar(index as u8));
        }
        let expansion_rom = layout
            .expansion_rom_offset()
            .map(|offset| cfg.read32(bdf, offset));
        let bridge = (layout == HeaderLayout::PciBridge).then(|| SavedBridge {
            bus_numbers: cfg.read32(bdf, bridge::PRIMARY_BUS),
            io_base: cfg.read8(bdf, bridge::IO_BASE),
            io_limit: cfg.read8(bdf, bridge::IO_LIMIT),
            memory: cfg.read32(bdf, bridge::MEMORY_BASE),
            prefetchable: cfg.read32(bdf, bridge::PREFETCHABLE_MEMORY_BASE),
            prefetchable_base_upper: cfg.read32(bdf, bridge::PREFETCHABLE_BASE_UPPER),
            prefetchable_limit_upper: cfg.read32(bdf, bridge::PREFETCHABLE_LIMIT_UPPER),
            io_upper: cfg.read32(bdf, bridge::IO_BASE_UPPER),
            control: (BridgeControl::from_bits_retain(cfg.read16(bdf, bridge::BRIDGE_CONTROL))
                - BridgeControl::SECONDARY_BUS_RESET)
                .bits(),
        });
        let caps = standard_capabilities(cfg, bdf).entries;
        let find = |id: CapabilityId| {
            caps.iter()
                .find(|c| c.id == id)
                .map(|c| u16::from(c.offset))
        };
        let pcie = find(CapabilityId::PCI_EXPRESS).map(|offset| {
            let version = cfg.read16(bdf, offset + pcie::CAPABILITIES) & pcie::CAP_VERSION_MASK;
            SavedPcie {
                offset,
                device_control: cfg.read16(bdf, offset + pcie::DEVICE_CONTROL)
                    & !pcie::DEVCTL_INITIATE_FLR,
                link_control: cfg.read16(bdf, offset + pcie::LINK_CONTROL),
                control_2: (version >= layout::pcie::VERSION_WITH_CONTROL_2).then(|| {
                    (
                        cfg.read16(bdf, offset + pcie::DEVICE_CONTROL_2),
                        cfg.read16(bdf, offset + layout::pcie::LINK_CONTROL_2),
                    )
                }),
            }
        });
        let msi = find(CapabilityId::MSI).map(|offset| {
            let control = cfg.read16(bdf, offset + msi::CONTROL);
            let mut saved = SavedMsi {
                offset,
                control,
                address_low: cfg.read32(bdf, offset + msi::ADDRESS_LOW),
                address_high: (control & msi::CONTROL_64BIT != 0)
                    .then(|| cfg.read32(bdf, offset + msi::ADDRESS_HIGH)),
                data: 0,
                mask: None,
            };
            saved.data = cfg.read16(bdf, offset + saved.data_offset());
            if control & msi::CONTROL_PER_VECTOR_MASKING != 0 {
                saved.mask = Some(cfg.read32(bdf, offset + saved.mask_offset()));
            }
            saved
        });
        let msix = find(CapabilityId::MSI_X).map(|offset| {
            let control = cfg.read16(bdf, offset + msix::CONTROL);
            (
                offset,
                control & (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK),
            )
        });
        let acs = extended_capabilities(cfg, bdf)
            .entries
            .iter()
            .find(|c| c.id == ExtendedCapabilityId::ACS)
            .and_then(|c| SavedAcs::save(cfg, bdf, c.offset));
        Ok(Self {
            bdf,
            id: vendor_device(cfg, bdf),
            layout,
            command: Command::from_bits_retain(cfg.read16(bdf, header::COMMAND)),
            cache_line_size: cfg.read8(bdf, layout::header::CACHE_LINE_SIZE),
            latency_timer: cfg.read8(bdf, layout::header::LATENCY_TIMER),
            interrupt_line: cfg.read8(bdf, header::INTERRUPT_LINE),
            bars,
            bar_count,
            expansion_rom,
            bridge,
            pcie,
            msi,
            msix,
            acs,
        })
    }

    /// The ACS Control register saved (raw), if the function has an ACS capability.
    pub fn acs_control(&self) -> Option<u16> {
        self.acs.map(|a| a.control)
    }

    /// The function this was saved from.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The Command register saved.
    pub fn command(&self) -> Command {
        self.command
    }

    /// The raw BAR dwords saved (two for a bridge, six for an endpoint).
    pub fn bars(&self) -> &[u32] {
        &self.bars[..usize::from(self.bar_count)]
    }

    /// Writes the saved configuration back.
    ///
    /// Refuses a function that no longer answers or whose vendor/device ID changed. If decoding
    /// or bus mastering is on, it is turned off first; then PCI Express controls, ACS (Egress
    /// Control Vector, then Control), bridge bus numbers and windows, BARs and ROM, header bytes,
    /// MSI/MSI-X and Bridge Control are written,
    /// the BARs are read back, and the Command register is written last. A BAR that does not
    /// read back what was written fails with [`ResetError::RestoreMismatch`] and the function is
    /// left with decoding and bus mastering off.
    pub fn restore(&self, cfg: &impl ConfigSpace) -> Result<(), ResetError> {
        let bdf = self.bdf;
        present(cfg, bdf)?;
        let found = vendor_device(cfg, bdf);
        if found != self.id {
            return Err(ResetError::IdentityChanged {
                bdf,
                saved: self.id,
                found,
            });
        }
        let current = Command::from_bits_retain(cfg.read16(bdf, header::COMMAND));
        let active = Command::DECODE | Command::BUS_MASTER;
        if current.intersects(active) {
            cfg.write16(bdf, header::COMMAND, (current - active).bits());
        }
        if let Some(p) = self.pcie {
            cfg.write16(bdf, p.offset + pcie::DEVICE_CONTROL, p.device_control);
            cfg.write16(bdf, p.offset + pcie::LINK_CONTROL, p.link_control);
            if let Some((device_control_2, link_control_2)) = p.control_2 {
                cfg.write16(bdf, p.offset + pcie::DEVICE_CONTROL_2, device_control_2);
                cfg.write16(bdf, p.offset + layout::pcie::LINK_CONTROL_2, link_control_2);
            }
        }
        if let Some(a) = &self.acs {
            a.restore(cfg, bdf);
        }
        if let Some(b) = self.bridge {
            cfg.write32(bdf, bridge::PRIMARY_BUS, b.bus_numbers);
            cfg.write8(bdf, bridge::IO_BASE, b.io_base);
            cfg.write8(bdf, bridge::IO_LIMIT, b.io_limit);
            cfg.write32(bdf, bridge::MEMORY_BASE, b.memory);
            cfg.write32(bdf, bridge::PREFETCHABLE_MEMORY_BASE, b.prefetchable);
            cfg.write32(
                bdf,
                bridge::PREFETCHABLE_BASE_UPPER,
                b.prefetchable_base_upper,
            );
            cfg.write32(
                bdf,
                bridge::PREFETCHABLE_LIMIT_UPPER,
                b.prefetchable_limit_upper,
            );
            cfg.write32(bdf, bridge::IO_BASE_UPPER, b.io_upper);
        }
        for (index, &value) in self.bars().iter().enumerate() {
            cfg.write32(bdf, header::bar(index as u8), value);
        }
        if let (Some(rom), Some(offset)) = (self.expansion_rom, self.layout.expansion_rom_offset())
        {
            cfg.write32(bdf, offset, rom);
        }
        cfg.write8(bdf, layout::header::CACHE_LINE_SIZE, self.cache_line_size);
        cfg.write8(bdf, layout::header::LATENCY_TIMER, self.latency_timer);
        cfg.write8(bdf, header::INTERRUPT_LINE, self.interrupt_line);
        if let Some(m) = self.msi {
            cfg.write32(bdf, m.offset + msi::ADDRESS_LOW, m.address_low);
            if let Some(high) = m.address_high {
                cfg.write32(bdf, m.offset + msi::ADDRESS_HIGH, high);
            }
            cfg.write16(bdf, m.offset + m.data_offset(), m.data);
            if let Some(mask) = m.mask {
                cfg.write32(bdf, m.offset + m.mask_offset(), mask);
            }
            cfg.write16(bdf, m.offset + msi::CONTROL, m.control);
        }
        if let Some((offset, control)) = self.msix {
            let now = cfg.read16(bdf, offset + msix::CONTROL);
            let bits = msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK;
            cfg.write16(bdf, offset + msix::CONTROL, (now & !bits) | control);
        }
        if let Some(b) = self.bridge {
            cfg.write16(bdf, bridge::BRIDGE_CONTROL, b.control);
        }
        for (index, &expected) in self.bars().iter().enumerate() {
            let offset = header::bar(index as u8);
            let found = cfg.read32(bdf, offset);
            if found != expected {
                return Err(ResetError::RestoreMismatch {
                    bdf,
                    offset,
                    expected,
                    found,
                });
            }
        }
        cfg.write16(bdf, header::COMMAND, self.command.bits());
        Ok(())
    }
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
        cfg.write16(s.bdf, header::COMMAND, Command::INTERRUPT_DISABLE.bits());
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
        let restored = wait_until_ready(cfg, s.bdf, READY_TIMEOUT_US, &mut counting)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::{DevicePortType, Status};
    use crate::testing::FakeConfigSpace;
    use crate::{enumerate, BarKind, McfgRegion};

    const COMPLEX_CFG: &str = include_str!("../tests/fixtures/complex.cfg");
    const DEFAULT_CFG: &str = include_str!("../tests/fixtures/default.cfg");

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(0, bus, device, function).unwrap()
    }

    fn region() -> McfgRegion {
        McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
    }

    /// Records every delay asked for.
    #[derive(Default)]
    struct Delays(Vec<u32>);

    impl Delays {
        fn callback(&mut self) -> impl FnMut(u32) + '_ {
            |us| self.0.push(us)
        }
        fn total(&self) -> u64 {
            self.0.iter().map(|&us| u64::from(us)).sum()
        }
    }

    const MEM_BM: u16 = Command::MEMORY_SPACE.bits() | Command::BUS_MASTER.bits();

    /// A root port (00:01.0, bus 1) with an endpoint 01:00.0: PCIe, two BARs, MSI, interrupt
    /// line, Memory + Bus Master on.
    fn endpoint_behind_root_port() -> FakeConfigSpace {
        let fake = FakeConfigSpace::new();
        fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 1, 1);
        fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
        let ep = bdf(1, 0, 0);
        fake.add_endpoint(ep, 0x1b36, 0x0010, 0x01_08_02);
        fake.add_pcie_capability(ep, DevicePortType::Endpoint);
        let msi = fake.add_capability(ep, CapabilityId::MSI, 0x18);
        fake.poke16(
            ep,
            u16::from(msi) + msi::CONTROL,
            msi::CONTROL_64BIT | msi::CONTROL_ENABLE,
        );
        fake.poke32(ep, u16::from(msi) + msi::ADDRESS_LOW, 0xfee0_0000);
        fake.poke16(ep, u16::from(msi) + msi::DATA_64, 0x4041);
        let mem64 = BarKind::Memory64 {
            prefetchable: false,
        };
        fake.define_bar(ep, 0, mem64, 16 << 10, 0x1_fe00_0000);
        let pref = BarKind::Memory64 { prefetchable: true };
        fake.define_bar(ep, 2, pref, 2 << 20, 0xfc40_0000);
        fake.poke8(ep, header::INTERRUPT_LINE, 10);
        fake.poke8(ep, layout::header::CACHE_LINE_SIZE, 0x10);
        fake.poke16(ep, header::COMMAND, MEM_BM);
        fake
    }

    fn pcie_offset(fake: &FakeConfigSpace, bdf: Bdf) -> u16 {
        find_capability(fake, bdf, CapabilityId::PCI_EXPRESS).unwrap()
    }

    #[test]
    fn flr_resets_the_function_and_reset_restores_it_command_last() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.set_flr_capable(ep, true);
        let cap = pcie_offset(&fake, ep);
        fake.poke16(ep, cap + pcie::DEVICE_CONTROL, 0x2810);
        let topo = enumerate(&fake, &[region()]);
        assert_eq!(
            reset_method(&fake, &topo, ep),
            Some(ResetMethod::FunctionLevel)
        );
        assert_eq!(ResetMethod::FunctionLevel.affected(&topo, ep), [ep]);
        let before: Vec<u32> = (0..0x40).step_by(4).map(|o| fake.peek32(ep, o)).collect();
        fake.clear_writes();
        let mut delays = Delays::default();
        let report = reset(
            &fake,
            &topo,
            ep,
            ResetMethod::FunctionLevel,
            &mut delays.callback(),
        )
        .unwrap();
        assert_eq!(report.functions, [ep]);
        assert_eq!(report.outcome.method, ResetMethod::FunctionLevel);
        assert!(!report.outcome.pending_transactions_ignored);
        assert_eq!(report.outcome.waited_us, delays.total());
        assert_eq!(delays.total(), u64::from(FLR_COMPLETION_US));
        assert_eq!(fake.reset_count(ep), 1);
        let after: Vec<u32> = (0..0x40).step_by(4).map(|o| fake.peek32(ep, o)).collect();
        assert_eq!(before, after);
        assert_eq!(fake.peek16(ep, cap + pcie::DEVICE_CONTROL), 0x2810);
        let msi_cap = find_capability(&fake, ep, CapabilityId::MSI).unwrap();
        assert_eq!(
            fake.peek16(ep, msi_cap + msi::CONTROL) & msi::CONTROL_ENABLE,
            msi::CONTROL_ENABLE
        );
        assert_eq!(fake.peek32(ep, msi_cap + msi::ADDRESS_LOW), 0xfee0_0000);
        let writes = fake.writes();
        // Quiesced before the reset, no BAR written while decoding, Command written last.
        assert_eq!(
            (writes[0].offset, writes[0].value),
            (
                header::COMMAND,
                u32::from(Command::INTERRUPT_DISABLE.bits())
            )
        );
        for w in &writes {
            if (0x10..0x28).contains(&w.offset) {
                assert_eq!(w.command_before & Command::DECODE.bits(), 0, "{w:?}");
            }
        }
        let last = writes.last().unwrap();
        assert_eq!(
            (last.offset, last.value),
            (header::COMMAND, u32::from(MEM_BM))
        );
    }

    #[test]
    fn the_fake_flr_clears_what_a_reset_clears() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        let cap = pcie_offset(&fake, ep);
        // Without FLR advertised, Initiate FLR does nothing and reads 0.
        fake.write16(ep, cap + pcie::DEVICE_CONTROL, pcie::DEVCTL_INITIATE_FLR);
        assert_eq!(fake.reset_count(ep), 0);
        assert_eq!(fake.read16(ep, cap + pcie::DEVICE_CONTROL), 0);
        assert_eq!(
            function_level_reset(&fake, ep, &mut |_| {}),
            Err(ResetError::FlrNotSupported { bdf: ep })
        );
        fake.set_flr_capable(ep, true);
        function_level_reset(&fake, ep, &mut |_| {}).unwrap();
        assert_eq!(fake.read16(ep, header::COMMAND), 0);
        assert_eq!(fake.read32(ep, header::bar(0)), 0x4);
        assert_eq!(fake.read32(ep, header::bar(1)), 0);
        assert_eq!(fake.read8(ep, header::INTERRUPT_LINE), 0);
        assert_eq!(fake.read8(ep, layout::header::CACHE_LINE_SIZE), 0);
    }

    /// Gives the endpoint an ACS capability with P2P Egress Control and a 40-port egress vector
    /// (two dwords), controls SV RR CR EC plus bit 7 (defined only by newer revisions), and a
    /// vector with bits in both dwords. Returns the capability offset.
    fn add_acs_with_egress(fake: &FakeConfigSpace, ep: Bdf) -> u16 {
        let offset = fake.add_extended_capability(ep, ExtendedCapabilityId::ACS, 1, 8 + 2 * 4);
        let capability = (40 << acs::EGRESS_CONTROL_VECTOR_SIZE_SHIFT) | 0x00ff;
        fake.poke16(ep, offset + acs::CAPABILITY, capability);
        fake.poke16(ep, offset + acs::CONTROL, 0x80 | 0x2d);
        fake.poke32(ep, offset + acs::EGRESS_CONTROL_VECTOR, 0x8000_0001);
        fake.poke32(ep, offset + acs::EGRESS_CONTROL_VECTOR + 4, 0xa5);
        offset
    }

    /// An FLR clears ACS Control and the Egress Control Vector (they are not sticky); the
    /// reset's save/restore puts every bit back, and writes them before the Command register.
    #[test]
    fn reset_restores_acs_control_and_egress_vector() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.set_flr_capable(ep, true);
        let offset = add_acs_with_egress(&fake, ep);
        let topo = enumerate(&fake, &[region()]);
        // Negative control: the FLR itself clears them.
        let saved = SavedConfig::save(&fake, ep).unwrap();
        assert_eq!(saved.acs_control(), Some(0xad));
        function_level_reset(&fake, ep, &mut |_| {}).unwrap();
        assert_eq!(fake.read16(ep, offset + acs::CONTROL), 0);
        assert_eq!(fake.read32(ep, offset + acs::EGRESS_CONTROL_VECTOR + 4), 0);
        saved.restore(&fake).unwrap();
        // Now through reset(): everything comes back.
        fake.clear_writes();
        reset(&fake, &topo, ep, ResetMethod::FunctionLevel, &mut |_| {}).unwrap();
        assert_eq!(fake.reset_count(ep), 2);
        assert_eq!(fake.read16(ep, offset + acs::CONTROL), 0xad);
        assert_eq!(
            fake.read32(ep, offset + acs::EGRESS_CONTROL_VECTOR),
            0x8000_0001
        );
        assert_eq!(
            fake.read32(ep, offset + acs::EGRESS_CONTROL_VECTOR + 4),
            0xa5
        );
        let writes = fake.writes();
        let position = |o: u16| writes.iter().rposition(|w| w.offset == o).unwrap();
        assert!(position(offset + acs::CONTROL) < position(header::COMMAND));
        // Not past the vector's two dwords.
        assert!(writes
            .iter()
            .all(|w| w.offset != offset + acs::EGRESS_CONTROL_VECTOR + 8));
    }

    /// Without Egress Control advertised only the Control register is saved; a function with
    /// no ACS capability saves none.
    #[test]
    fn acs_without_egress_control_saves_control_only() {
        let fake = endpoint_behind_root_port();
        let port = bdf(0, 1, 0);
        let offset = fake.add_acs(port, AcsFlags::SV | AcsFlags::RR);
        fake.write16(
            port,
            offset + acs::CONTROL,
            (AcsFlags::SV | AcsFlags::RR).bits(),
        );
        let saved = SavedConfig::save(&fake, port).unwrap();
        assert_eq!(saved.acs_control(), Some(0x5));
        fake.poke16(port, offset + acs::CONTROL, 0);
        fake.clear_writes();
        saved.restore(&fake).unwrap();
        assert_eq!(fake.read16(port, offset + acs::CONTROL), 0x5);
        let acs_writes: Vec<u16> = fake
            .writes()
            .iter()
            .map(|w| w.offset)
            .filter(|&o| o >= 0x100)
            .collect();
        assert_eq!(acs_writes, [offset + acs::CONTROL]);
        assert_eq!(
            SavedConfig::save(&fake, bdf(1, 0, 0))
                .unwrap()
                .acs_control(),
            None
        );
    }

    #[test]
    fn flr_waits_for_pending_transactions_then_goes_ahead() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.set_flr_capable(ep, true);
        let cap = pcie_offset(&fake, ep);
        fake.poke16(
            ep,
            cap + pcie::DEVICE_STATUS,
            layout::pcie::DEVSTA_TRANSACTIONS_PENDING,
        );
        let mut delays = Delays::default();
        let outcome = function_level_reset(&fake, ep, &mut delays.callback()).unwrap();
        assert!(outcome.pending_transactions_ignored);
        assert_eq!(
            delays.total(),
            u64::from(PENDING_TRANSACTIONS_TIMEOUT_US + FLR_COMPLETION_US)
        );
        assert_eq!(outcome.waited_us, delays.total());
        assert!(delays.0.iter().all(|&us| us <= FLR_COMPLETION_US));
        assert_eq!(fake.reset_count(ep), 1);
    }

    #[test]
    fn a_function_that_does_not_come_back_times_out() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.set_flr_capable(ep, true);
        fake.set_ready_delay(ep, 3);
        let mut delays = Delays::default();
        let outcome = function_level_reset(&fake, ep, &mut delays.callback()).unwrap();
        // 100 ms, then three polls that read all-ones: 1 + 2 + 4 ms.
        assert_eq!(delays.0, [100_000, 1_000, 2_000, 4_000]);
        assert_eq!(outcome.waited_us, 107_000);

        fake.set_ready_delay(ep, u32::MAX);
        let mut delays = Delays::default();
        let err = function_level_reset(&fake, ep, &mut delays.callback()).unwrap_err();
        let expected = u64::from(FLR_COMPLETION_US + READY_TIMEOUT_US);
        assert_eq!(
            err,
            ResetError::NotReady {
                bdf: ep,
                waited_us: expected
            }
        );
        assert_eq!(delays.total(), expected);
        assert!(err.to_string().contains("did not answer"));
    }

    #[test]
    fn reset_attempts_restore_and_reports_a_dead_function() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.set_flr_capable(ep, true);
        fake.set_ready_delay(ep, u32::MAX);
        let topo = enumerate(&fake, &[region()]);
        let err = reset(&fake, &topo, ep, ResetMethod::FunctionLevel, &mut |_| {}).unwrap_err();
        // The FLR's own wait, then the whole ready timeout (the restore was attempted).
        assert_eq!(
            err,
            ResetError::NotReady {
                bdf: ep,
                waited_us: u64::from(FLR_COMPLETION_US + READY_TIMEOUT_US)
            }
        );
    }

    #[test]
    fn root_bus_functions_without_flr_or_pm_have_no_reset_method() {
        let fake = FakeConfigSpace::from_qemu_fixture(DEFAULT_CFG).unwrap();
        let topo = enumerate(&fake, &[region()]);
        let edu = topo.find(0x1234, 0x11e8).next().unwrap().bdf;
        assert_eq!(edu.bus(), 0);
        assert_eq!(reset_method(&fake, &topo, edu), None);
        // Absent functions have none either.
        assert_eq!(reset_method(&fake, &topo, bdf(0, 0x1e, 0)), None);
    }

    #[test]
    fn qemu_fixture_methods_match_spec() {
        let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).unwrap();
        let topo = enumerate(&fake, &[region()]);
        // nvme: FLR in DevCap; its PM capability has No_Soft_Reset set.
        let nvme = topo.find(0x1b36, 0x0010).next().unwrap().bdf;
        assert!(has_flr(&fake, nvme));
        assert!(pm_capability(&fake, nvme).is_some());
        assert!(!has_pm_reset(&fake, nvme));
        assert_eq!(power_state(&fake, nvme), Ok(PowerState::D0));
        assert_eq!(
            reset_method(&fake, &topo, nvme),
            Some(ResetMethod::FunctionLevel)
        );
        assert_eq!(
            power_management_reset(&fake, nvme, &mut |_| {}),
            Err(ResetError::NoSoftReset { bdf: nvme })
        );
        // ivshmem and edu: no FLR, no PM: the parent bridge's bus reset.
        for (vendor, device) in [(0x1af4, 0x1110), (0x1234, 0x11e8)] {
            for f in topo.find(vendor, device) {
                assert!(!has_flr(&fake, f.bdf));
                assert_eq!(
                    power_state(&fake, f.bdf),
                    Err(ResetError::NoPowerManagement { bdf: f.bdf })
                );
                let parent = topo.parent(f.bdf).unwrap().bdf;
                assert_eq!(
                    reset_method(&fake, &topo, f.bdf),
                    Some(ResetMethod::SecondaryBus { bridge: parent })
                );
            }
        }
    }

    #[test]
    fn qemu_fixture_resets_restore_bars_and_command() {
        let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).unwrap();
        let topo = enumerate(&fake, &[region()]);
        for (vendor, device) in [(0x1b36, 0x0010), (0x1af4, 0x1110)] {
            let target = topo.find(vendor, device).next().unwrap().bdf;
            let method = reset_method(&fake, &topo, target).unwrap();
            let affected = method.affected(&topo, target);
            let before: Vec<Vec<u32>> = affected
                .iter()
                .map(|&f| (0..0x40).step_by(4).map(|o| fake.peek32(f, o)).collect())
                .collect();
            let counts: Vec<u32> = affected.iter().map(|&f| fake.reset_count(f)).collect();
            let report = reset(&fake, &topo, target, method, &mut |_| {}).unwrap();
            assert_eq!(report.functions, affected);
            for ((f, before), count) in affected.iter().zip(&before).zip(counts) {
                let after: Vec<u32> = (0..0x40).step_by(4).map(|o| fake.peek32(*f, o)).collect();
                assert_eq!(&after, before, "{f}");
                assert_eq!(fake.reset_count(*f), count + 1, "{f}");
            }
        }
    }

    /// A root port above a switch: upstream port 02:00.0, downstream ports 03:00.0 (bus 4) and
    /// 03:01.0 (bus 5), endpoints 04:00.0 and 05:00.0.
    fn switch() -> FakeConfigSpace {
        let fake = FakeConfigSpace::new();
        fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 2, 5);
        fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
        fake.add_bridge(bdf(2, 0, 0), 0x104c, 0x8232, 2, 3, 5);
        fake.add_pcie_capability(bdf(2, 0, 0), DevicePortType::UpstreamPort);
        for (device, bus) in [(0, 4), (1, 5)] {
            fake.add_bridge(bdf(3, device, 0), 0x104c, 0x8233, 3, bus, bus);
            fake.add_pcie_capability(bdf(3, device, 0), DevicePortType::DownstreamPort);
            fake.add_endpoint(bdf(bus, 0, 0), 0x1af4, 0x1110, 0x05_00_00);
            let kind = BarKind::Memory64 { prefetchable: true };
            fake.define_bar(
                bdf(bus, 0, 0),
                2,
                kind,
                1 << 20,
                0xfc00_0000 + (u64::from(bus) << 20),
            );
            fake.poke16(bdf(bus, 0, 0), header::COMMAND, MEM_BM);
        }
        fake
    }

    #[test]
    fn bus_reset_scope_is_everything_below_the_bridge_parents_first() {
        let fake = switch();
        let topo = enumerate(&fake, &[region()]);
        let (a, b) = (bdf(4, 0, 0), bdf(5, 0, 0));
        let method = reset_method(&fake, &topo, a).unwrap();
        assert_eq!(
            method,
            ResetMethod::SecondaryBus {
                bridge: bdf(3, 0, 0)
            }
        );
        assert_eq!(method.affected(&topo, a), [a]);
        let port = bdf(3, 1, 0);
        let method = reset_method(&fake, &topo, port).unwrap();
        assert_eq!(
            method,
            ResetMethod::SecondaryBus {
                bridge: bdf(2, 0, 0)
            }
        );
        let scope = method.affected(&topo, port);
        assert_eq!(scope.len(), 4);
        for f in [bdf(3, 0, 0), a, port, b] {
            assert!(scope.contains(&f));
        }
        let position = |f| scope.iter().position(|&x| x == f).unwrap();
        assert!(position(bdf(3, 0, 0)) < position(a));
        assert!(position(port) < position(b));
        assert_eq!(bus_reset_scope(&topo, bdf(0, 1, 0)).len(), 5);
        assert!(bus_reset_scope(&topo, bdf(9, 0, 0)).is_empty());
    }

    #[test]
    fn bus_reset_sequence_and_restore_of_bridges_below() {
        let fake = switch();
        let up = bdf(2, 0, 0);
        // The downstream ports carry windows and error bits that a restore must not clear.
        fake.poke32(bdf(3, 1, 0), bridge::MEMORY_BASE, 0xfe10_fe00);
        fake.poke16(
            bdf(3, 1, 0),
            bridge::SECONDARY_STATUS,
            Status::RECEIVED_MASTER_ABORT.bits(),
        );
        let saved = SavedConfig::save(&fake, bdf(3, 1, 0)).unwrap();
        fake.clear_writes();
        let mut delays = Delays::default();
        let outcome = secondary_bus_reset(&fake, up, &mut delays.callback()).unwrap();
        assert_eq!(delays.0, [SBR_HOLD_US, SBR_SETTLE_US]);
        assert_eq!(outcome.waited_us, delays.total());
        let writes = fake.writes();
        let sbr = u32::from(BridgeControl::SECONDARY_BUS_RESET.bits());
        assert_eq!(writes.len(), 2);
        assert!(writes
            .iter()
            .all(|w| w.bdf == up && w.offset == bridge::BRIDGE_CONTROL && w.width == 2));
        assert_eq!((writes[0].value & sbr, writes[1].value & sbr), (sbr, 0));
        // The fake resets the secondary bus (the downstream ports' Command and BARs).
        assert_eq!(fake.reset_count(bdf(3, 1, 0)), 1);
        fake.poke32(bdf(3, 1, 0), bridge::MEMORY_BASE, 0);
        fake.poke32(bdf(3, 1, 0), bridge::PRIMARY_BUS, 0);
        saved.restore(&fake).unwrap();
        assert_eq!(fake.peek32(bdf(3, 1, 0), bridge::MEMORY_BASE), 0xfe10_fe00);
        assert_eq!(
            fake.peek32(bdf(3, 1, 0), bridge::PRIMARY_BUS) & 0xff_ffff,
            0x05_05_03
        );
        assert_eq!(
            fake.peek16(bdf(3, 1, 0), bridge::SECONDARY_STATUS),
            Status::RECEIVED_MASTER_ABORT.bits()
        );
        assert_eq!(
            secondary_bus_reset(&fake, bdf(4, 0, 0), &mut |_| {}),
            Err(ResetError::NotABridge { bdf: bdf(4, 0, 0) })
        );
        assert_eq!(
            secondary_bus_reset(&fake, bdf(9, 0, 0), &mut |_| {}),
            Err(ResetError::NotPresent { bdf: bdf(9, 0, 0) })
        );
    }

    #[test]
    fn full_bus_reset_restores_every_function_below() {
        let fake = switch();
        let topo = enumerate(&fake, &[region()]);
        let target = bdf(5, 0, 0);
        let method = ResetMethod::SecondaryBus {
            bridge: bdf(2, 0, 0),
        };
        fake.clear_writes();
        assert_eq!(
            reset(
                &fake,
                &topo,
                target,
                ResetMethod::SecondaryBus {
                    bridge: bdf(3, 0, 0)
                },
                &mut |_| {}
            ),
            Err(ResetError::NotBelowBridge {
                bdf: target,
                bridge: bdf(3, 0, 0)
            })
        );
        assert!(fake.writes().is_empty(), "a refused reset writes nothing");
        let bar = fake.peek32(target, header::bar(2));
        let report = reset(&fake, &topo, target, method, &mut |_| {}).unwrap();
        assert_eq!(report.functions.len(), 4);
        assert_eq!(fake.peek32(target, header::bar(2)), bar);
        assert_eq!(fake.peek16(target, header::COMMAND), MEM_BM);
        assert_eq!(fake.peek16(bdf(4, 0, 0), header::COMMAND), MEM_BM);
    }

    #[test]
    fn pm_reset_only_when_no_soft_reset_is_clear() {
        let fake = FakeConfigSpace::new();
        let f = bdf(0, 3, 0);
        fake.add_endpoint(f, 0x8086, 0x1234, 0);
        let pm_cap = u16::from(fake.add_pm_capability(f, false));
        let kind = BarKind::Memory32 {
            prefetchable: false,
        };
        fake.define_bar(f, 0, kind, 4096, 0xfe00_0000);
        fake.poke16(f, header::COMMAND, MEM_BM);
        let topo = enumerate(&fake, &[region()]);
        assert!(has_pm_reset(&fake, f));
        assert_eq!(
            reset_method(&fake, &topo, f),
            Some(ResetMethod::PowerManagement)
        );
        let mut delays = Delays::default();
        let report = reset(
            &fake,
            &topo,
            f,
            ResetMethod::PowerManagement,
            &mut delays.callback(),
        )
        .unwrap();
        assert_eq!(delays.0, [D3HOT_DELAY_US, D3HOT_DELAY_US]);
        assert_eq!(report.outcome.waited_us, u64::from(2 * D3HOT_DELAY_US));
        assert_eq!(fake.reset_count(f), 1);
        assert_eq!(fake.peek32(f, header::bar(0)), 0xfe00_0000);
        assert_eq!(fake.peek16(f, header::COMMAND), MEM_BM);
        // A function not in D0 is refused before anything happens.
        fake.poke16(f, pm_cap + pm::PMCSR, 3);
        fake.clear_writes();
        assert_eq!(
            reset(&fake, &topo, f, ResetMethod::PowerManagement, &mut |_| {}),
            Err(ResetError::NotInD0 {
                bdf: f,
                state: PowerState::D3Hot
            })
        );
        assert!(fake.writes().is_empty());
        // With No_Soft_Reset set, D3hot->D0 keeps the configuration: not a reset method, and
        // on bus 0 there is no other.
        fake.poke16(f, pm_cap + pm::PMCSR, pm::PMCSR_NO_SOFT_RESET);
        assert!(!has_pm_reset(&fake, f));
        assert_eq!(reset_method(&fake, &topo, f), None);
        assert_eq!(
            reset(&fake, &topo, f, ResetMethod::FunctionLevel, &mut |_| {}),
            Err(ResetError::FlrNotSupported { bdf: f })
        );
    }

    /// A configuration space that drops writes to one register.
    struct IgnoreWrites<'a>(&'a FakeConfigSpace, u16);

    impl ConfigSpace for IgnoreWrites<'_> {
        fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
            self.0.read8(bdf, offset)
        }
        fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
            self.0.read16(bdf, offset)
        }
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            self.0.read32(bdf, offset)
        }
        fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
            if offset != self.1 {
                self.0.write8(bdf, offset, value)
            }
        }
        fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
            if offset != self.1 {
                self.0.write16(bdf, offset, value)
            }
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            if offset != self.1 {
                self.0.write32(bdf, offset, value)
            }
        }
    }

    #[test]
    fn power_state_transitions() {
        let fake = FakeConfigSpace::new();
        let f = bdf(0, 3, 0);
        fake.add_endpoint(f, 0x8086, 0x1234, 0);
        assert_eq!(
            set_power_state(&fake, f, PowerState::D3Hot, &mut |_| {}),
            Err(ResetError::NoPowerManagement { bdf: f })
        );
        let cap = u16::from(fake.add_pm_capability(f, true));
        fake.poke16(
            f,
            cap + pm::PMCSR,
            pm::PMCSR_NO_SOFT_RESET | pm::PMCSR_PME_STATUS,
        );
        assert_eq!(
            set_power_state(&fake, f, PowerState::D1, &mut |_| {}),
            Err(ResetError::PowerStateUnsupported {
                bdf: f,
                state: PowerState::D1
            })
        );
        let mut delays = Delays::default();
        let t = set_power_state(&fake, f, PowerState::D3Hot, &mut delays.callback()).unwrap();
        assert_eq!(
            t,
            PowerTransition {
                from: PowerState::D0,
                to: PowerState::D3Hot,
                context_lost: false
            }
        );
        assert_eq!(delays.0, [D3HOT_DELAY_US]);
        assert_eq!(power_state(&fake, f), Ok(PowerState::D3Hot));
        // PME_Status (RW1C) was not cleared by our write.
        assert_ne!(fake.peek16(f, cap + pm::PMCSR) & pm::PMCSR_PME_STATUS, 0);
        fake.poke16(f, cap + pm::PMC, 3 | pm::PMC_D2_SUPPORT);
        assert_eq!(
            set_power_state(&fake, f, PowerState::D2, &mut |_| {}),
            Err(ResetError::InvalidTransition {
                bdf: f,
                from: PowerState::D3Hot,
                to: PowerState::D2
            })
        );
        let t = set_power_state(&fake, f, PowerState::D0, &mut |_| {}).unwrap();
        assert!(!t.context_lost, "No_Soft_Reset keeps the context");
        assert_eq!(fake.reset_count(f), 0);
        // Same state: nothing written.
        fake.clear_writes();
        let t = set_power_state(&fake, f, PowerState::D0, &mut |_| {}).unwrap();
        assert_eq!((t.from, t.to), (PowerState::D0, PowerState::D0));
        assert!(fake.writes().is_empty());
        // D0 -> D2 -> D3hot is allowed, with D2's 200 us.
        let mut delays = Delays::default();
        set_power_state(&fake, f, PowerState::D2, &mut delays.callback()).unwrap();
        set_power_state(&fake, f, PowerState::D3Hot, &mut delays.callback()).unwrap();
        assert_eq!(delays.0, [D2_DELAY_US, D3HOT_DELAY_US]);
        // D3hot -> D0 with No_Soft_Reset clear is a reset: the context is lost.
        let fake = FakeConfigSpace::new();
        fake.add_endpoint(f, 0x8086, 0x1234, 0);
        let cap = u16::from(fake.add_pm_capability(f, false));
        set_power_state(&fake, f, PowerState::D3Hot, &mut |_| {}).unwrap();
        let t = set_power_state(&fake, f, PowerState::D0, &mut |_| {}).unwrap();
        assert!(t.context_lost);
        assert_eq!(fake.reset_count(f), 1);
        // A function that ignores PMCSR writes is reported.
        let deaf = IgnoreWrites(&fake, cap + pm::PMCSR);
        assert_eq!(
            set_power_state(&deaf, f, PowerState::D3Hot, &mut |_| {}),
            Err(ResetError::PowerStateNotReached {
                bdf: f,
                requested: PowerState::D3Hot,
                found: PowerState::D0
            })
        );
    }

    #[test]
    fn restore_refuses_another_device_and_a_bar_that_does_not_stick() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        let saved = SavedConfig::save(&fake, ep).unwrap();
        assert_eq!(saved.bdf(), ep);
        assert_eq!(saved.command().bits(), MEM_BM);
        assert_eq!(saved.bars().len(), 6);
        assert_eq!(saved.bars()[1], 1, "upper half of the 64-bit BAR");
        fake.remove_function(ep);
        assert_eq!(
            saved.restore(&fake),
            Err(ResetError::NotPresent { bdf: ep })
        );
        assert_eq!(
            SavedConfig::save(&fake, ep),
            Err(ResetError::NotPresent { bdf: ep })
        );
        fake.add_endpoint(ep, 0x1234, 0x11e8, 0);
        assert_eq!(
            saved.restore(&fake),
            Err(ResetError::IdentityChanged {
                bdf: ep,
                saved: (0x1b36, 0x0010),
                found: (0x1234, 0x11e8)
            })
        );
        // Same IDs, but BAR 0 is not implemented (read-only 0): the restore is refused and the
        // function is left without decoding.
        fake.add_endpoint(ep, 0x1b36, 0x0010, 0);
        fake.poke16(ep, header::COMMAND, MEM_BM);
        let err = saved.restore(&fake).unwrap_err();
        assert_eq!(
            err,
            ResetError::RestoreMismatch {
                bdf: ep,
                offset: header::bar(0),
                expected: 0xfe00_0004,
                found: 0
            }
        );
        assert_eq!(fake.peek16(ep, header::COMMAND) & MEM_BM, 0);
    }

    #[test]
    fn memory_decode_and_bus_master_controls() {
        let fake = endpoint_behind_root_port();
        let ep = bdf(1, 0, 0);
        fake.poke16(ep, header::STATUS, Status::RECEIVED_MASTER_ABORT.bits());
        fake.clear_writes();
        assert_eq!(set_memory_decode(&fake, ep, false), Ok(true));
        assert_eq!(memory_decode_enabled(&fake, ep), Ok(false));
        assert_eq!(set_memory_decode(&fake, ep, false), Ok(false));
        assert_eq!(set_memory_decode(&fake, ep, true), Ok(false));
        assert_eq!(set_bus_master(&fake, ep, false), Ok(true));
        assert_eq!(
            fake.peek16(ep, header::COMMAND),
            Command::MEMORY_SPACE.bits()
        );
        let writes = fake.writes();
        assert_eq!(writes.len(), 3, "no write when nothing changes");
        assert!(writes
            .iter()
            .all(|w| w.width == 2 && w.offset == header::COMMAND));
        assert_eq!(
            fake.peek16(ep, header::STATUS),
            Status::RECEIVED_MASTER_ABORT.bits(),
            "Status errors untouched"
        );
        let absent = bdf(7, 0, 0);
        assert_eq!(
            set_memory_decode(&fake, absent, true),
            Err(ResetError::NotPresent { bdf: absent })
        );
        assert_eq!(
            memory_decode_enabled(&fake, absent),
            Err(ResetError::NotPresent { bdf: absent })
        );
    }

    #[test]
    fn errors_display() {
        let f = bdf(1, 0, 0);
        for e in [
            ResetError::NoResetMethod { bdf: f },
            ResetError::NotInTopology { bdf: f },
            ResetError::NoSoftReset { bdf: f },
            ResetError::NotABridge { bdf: f },
        ] {
            assert!(e.to_string().starts_with("01:00.0"), "{e}");
        }
        assert_eq!(
            ResetMethod::SecondaryBus {
                bridge: bdf(0, 1, 0)
            }
            .to_string(),
            "secondary bus reset by 00:01.0"
        );
        assert_eq!(PowerState::D3Hot.to_string(), "D3hot");
        assert_eq!(PowerState::from_pmcsr(0x000b), PowerState::D3Hot);
    }
}
