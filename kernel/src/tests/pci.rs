//! PCI tests: the machine-readable listing the scenarios compare against the QEMU topology,
//! ACS isolation, and BAR probing leaving devices decoding.

use pci::regs::{AcsFlags, Command, HeaderLayout};
use pci::ConfigSpace;

use crate::devices::pci::listing_line;
use kernel::cmdline::CommandLine;

use crate::ktest::{OrFail, Suite, Test, TestResult};
use crate::mem::paging::{self, Cache};
use crate::{check, check_eq, kprintln, Kernel};

pub const SUITE: Suite = Suite {
    name: "pci",
    explicit_only: false,
    tests: &[
        Test {
            name: "listing",
            run: listing,
        },
        Test {
            name: "acs_isolation",
            run: acs_isolation,
        },
        Test {
            name: "bars_decode_after_probe",
            run: bars_decode_after_probe,
        },
    ],
};

/// Prints one `PCIDEV` line per function (xtask compares them with the topology it booted) and
/// checks what the kernel can check alone: no enumeration warnings, every function listed once.
fn listing(k: &Kernel) -> TestResult {
    let t = &k.pci.topology;
    let groups = k.pci.groups();
    for f in t.functions_sorted() {
        kprintln!("{}", listing_line(t, &groups, f));
    }
    // Every function in exactly one group, and group_of agrees with the groups' member lists.
    let members: usize = groups.groups().iter().map(|g| g.members.len()).sum();
    check_eq!(members, t.functions().len());
    for g in groups.groups() {
        for m in &g.members {
            check_eq!(groups.group_of(*m).map(|x| x.id), Some(g.id));
        }
    }
    check!(
        t.warnings().is_empty(),
        "enumeration warnings: {:?}",
        t.warnings()
    );
    let mut bdfs: alloc::vec::Vec<_> = t.functions().iter().map(|f| f.bdf).collect();
    bdfs.sort_unstable();
    bdfs.dedup();
    check_eq!(bdfs.len(), t.functions().len());
    Ok(())
}

/// With an IOMMU, every port with an ACS capability has SV, RR, CR and UF enabled (as far as the
/// port advertises them), read back from the hardware, not from the report.
fn acs_isolation(k: &Kernel) -> TestResult {
    let want = AcsFlags::SV | AcsFlags::RR | AcsFlags::CR | AcsFlags::UF;
    let iommu = k.iommu.is_some();
    // How many ports have ACS is decided by the topology (set by the scenario), so a capability
    // walk that missed ACS cannot pass by finding nothing to check.
    let expected = CommandLine::new(k.boot.cmdline())
        .value("expect.acs_ports")
        .and_then(|v| v.parse::<usize>().ok())
        .or_fail("expect.acs_ports= on the command line")?;
    let mut ports = 0;
    for f in k.pci.topology.functions() {
        let Some(off) = f.acs_offset() else { continue };
        ports += 1;
        let cap = AcsFlags::from_bits_truncate(
            k.pci.ecam.read16(f.bdf, off + pci::regs::acs::CAPABILITY),
        );
        let ctl =
            AcsFlags::from_bits_truncate(k.pci.ecam.read16(f.bdf, off + pci::regs::acs::CONTROL));
        if iommu {
            check!(
                !(cap & want).is_empty(),
                "{}: ACS advertises none of SV/RR/CR/UF",
                f.bdf
            );
            check_eq!(ctl & want, cap & want);
        } else {
            check_eq!(ctl, AcsFlags::empty());
        }
    }
    check_eq!(ports, expected);
    if let Some(report) = &k.pci.acs {
        check_eq!(report.ports.len(), ports);
    }
    Ok(())
}

/// BAR sizing disables decode around each probe; afterwards every endpoint's command register is
/// as firmware left it and an edu device (if present) answers on its BAR0 with its ID register.
fn bars_decode_after_probe(k: &Kernel) -> TestResult {
    // Firmware (SeaBIOS) enables decoding for every endpoint it assigned resources to; sizing
    // disabled it around each probe and must have put it back. Read live, compared with what the
    // BARs imply, not with a value read after probing.
    for f in k
        .pci
        .topology
        .functions()
        .iter()
        .filter(|f| f.layout == HeaderLayout::Endpoint)
    {
        let now = Command::from_bits_retain(k.pci.ecam.read16(f.bdf, pci::regs::header::COMMAND));
        let assigned = |io: bool| {
            f.bars
                .iter()
                .any(|b| matches!(b.kind, pci::bar::BarKind::Io) == io && !b.is_unassigned())
        };
        if assigned(false) {
            check!(
                now.contains(Command::MEMORY_SPACE),
                "{}: memory decode off after probing",
                f.bdf
            );
        }
        if assigned(true) {
            check!(
                now.contains(Command::IO_SPACE),
                "{}: I/O decode off after probing",
                f.bdf
            );
        }
    }
    if let Some(edu) = k.pci.topology.find(edu::VENDOR_ID, edu::DEVICE_ID).next() {
        let bar = edu.bar(0).or_fail("edu BAR0")?;
        check_eq!(bar.size, edu::BAR0_SIZE);
        let regs = paging::map_phys(bar.phys_address, bar.size, Cache::Uncached)
            .or_fail("map edu BAR0")?;
        // SAFETY: offset 0 of edu's BAR0 is its read-only identification register, mapped
        // uncached just above.
        let id = unsafe { (regs as *const u32).read_volatile() };
        check_eq!(id, edu::IDENTIFICATION);
    }
    Ok(())
}
