//! Test support for host tests (feature `testing`): an emulated configuration space, the
//! loading of fixtures our kernel captured in QEMU 7.2, and the one model of QEMU 7.2's command
//! line and emulated PCI devices.
//!
//! - `fake` ([`FakeConfigSpace`]): the emulated configuration space described below;
//! - `fixture`: [`FakeConfigSpace::from_fixture`], [`FakeConfigSpace::from_qemu_fixture`] and
//!   [`acpi_table_bytes`];
//! - `qemu` ([`QemuCommandLine`]): the QEMU command-line parser;
//! - `catalogue` ([`QemuDevice`]): what each QEMU device driver looks like to the guest.
//!
//! Layers inside the module: `qemu`, then `catalogue`, then `fake`, then `fixture`.
//!
//! [`FakeConfigSpace`] behaves like hardware where the code under test depends on it:
//! - natively sized accesses; misaligned or out-of-range ones read all-ones and are ignored;
//! - absent functions read all-ones;
//! - read-only fields (IDs, class, header type, capability pointer, interrupt pin, the Status
//!   bits that are not RW1C) ignore writes;
//! - Status error bits are write-1-to-clear, so a dword read-modify-write of Command would
//!   visibly clear them;
//! - BARs with a declared size emulate size masks (writing all-ones reads back the size mask
//!   and the hardwired type bits); BARs without one are read-only; the same holds for the
//!   Expansion ROM BAR (0x30 in a type-0 header, 0x38 in a type-1 header), whose enable bit is
//!   writable once a size is declared;
//! - ACS Control bits the ACS Capability does not advertise are hardwired to 0;
//! - a bridge's bus numbers and windows are writable (their low type nibbles are not);
//! - setting Secondary Bus Reset in a bridge's Bridge Control clears the Command register and
//!   BARs of every function on its secondary bus (what SPEC.md records QEMU 7.2 doing);
//! - setting Initiate FLR in the PCI Express Device Control register of a function whose Device
//!   Capabilities advertise FLR resets it: Command, BARs, Cache Line Size, Latency Timer,
//!   Interrupt Line, Status errors, Device Control, MSI/MSI-X enables, PMCSR, ACS Control and
//!   Egress Control Vector, and bridge registers go back to 0 (the bit itself always reads 0);
//! - PMCSR behaves as PCI PM 1.2 §7.2.2 says: PowerState and PME_En are writable, No_Soft_Reset
//!   is read-only, PME_Status is write-1-to-clear, writes of unsupported states (D1/D2 not
//!   advertised, or anything but D0 from D3hot) are discarded, and D3hot→D0 with No_Soft_Reset
//!   clear resets the function as FLR does;
//! - a function can be made to read all-ones for a number of reads after each reset
//!   ([`FakeConfigSpace::set_ready_delay`]), like a device still initialising.
//!
//! Every write is logged with the Command register value it found, so tests can check the order
//! of operations (for instance that no BAR was written while decoding was on).

mod catalogue;
mod fake;
mod fixture;
mod qemu;
#[cfg(test)]
mod tests;

pub use catalogue::{BuiltIn, ProvidedBus, QemuBar, QemuDevice, QemuExpressType, QemuFunctionKind};
pub use fake::{ConfigWrite, FakeConfigSpace};
pub use fixture::{acpi_table_bytes, FixtureError};
pub use qemu::{parse_addr, parse_int, parse_size, QemuCommandLine, QemuError, QemuOption};
