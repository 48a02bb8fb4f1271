//! The QEMU scenarios `cargo xtask test` runs: for each, a machine topology, the kernel command
//! line (which in-kernel suites run) and the expected outcome, judged from the serial log and
//! QEMU's exit status.
//!
//! This crate is host-only and has no knowledge of how QEMU is started: `xtask` turns a
//! [`Topology`] into arguments, runs it, and hands the log to [`parse`] and [`Scenario::judge`].
//! Scenario-specific checks compute what the kernel must report from the topology itself, never
//! from pasted expected output.

#![warn(missing_docs)]

mod outcome;
mod pci_model;
mod qemu_version;
mod scenarios;
mod topology;

pub use outcome::{parse, KernelEnd, Outcome, TestStatus};
pub use pci_model::{
    check_pci_listing, expected_functions, expected_partition, parse_pci_listing, Bar, BarType,
    Bdf, BdfText, ExpectedFunction, FunctionKind, ListedBar, ListedFunction,
};
pub use qemu_version::{QemuVersion, QEMU_NO_SOURCE_ID};
pub use scenarios::{
    all, all_on, AcpiTableFile, DiskImage, Exit, Expect, Scenario, DISK_BLOCK, QEMU_FAILURE,
    QEMU_SUCCESS,
};
pub use topology::Topology;
