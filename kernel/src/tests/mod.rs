//! The in-kernel test suites (see `ktest` for the runner and `tests-qemu` for the scenarios that
//! select them).

mod boot;
mod common;
mod crash;
mod dmaapi;
mod faultirq;
mod groups;
mod intremap;
mod irq;
mod memory;
mod nvme;
mod p2p;
mod pci;
mod rmrr;
mod vm;
mod vtd;

use crate::ktest::Suite;

/// Every suite, in run order.
pub static SUITES: &[Suite] = &[
    boot::SUITE,
    memory::SUITE,
    pci::SUITE,
    vtd::SUITE,
    dmaapi::SUITE,
    groups::SUITE,
    rmrr::SUITE,
    p2p::SUITE,
    irq::SUITE,
    intremap::SUITE,
    faultirq::SUITE,
    nvme::SUITE,
    vm::SUITE,
    crash::SUITE,
];
