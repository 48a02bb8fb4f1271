//! The bootable kernel: brings up the CPU, memory, ACPI and devices, then runs either the demo
//! (`cargo xtask run`) or the in-kernel tests selected with `test=` (`cargo xtask test`).

#![no_std]
#![no_main]
#![warn(missing_docs)]

extern crate alloc;

mod acpi;
mod arch;
mod bench;
mod console;
mod demo;
mod devices;
mod ktest;
mod mem;
mod nvme_bench;
mod pvh;
mod rt;
mod tests;

use arch::exit::{exit, Status};
use arch::{gdt, idt, time};
use kernel::cmdline::CommandLine;

/// Everything boot discovered, handed to the demo and to every test.
pub struct Kernel {
    /// What the PVH start info said.
    pub boot: pvh::BootInfo,
    /// The ACPI tables.
    pub acpi: acpi::Acpi,
    /// The PCI hierarchy.
    pub pci: devices::pci::PciSystem,
    /// The VT-d units (None without a DMAR: no IOMMU).
    pub iommu: Option<devices::iommu::Iommu>,
    /// P2P providers and classification.
    pub p2p: devices::p2p::P2pSystem,
}

/// Rust entry point, called by the PVH entry code on the boot stack with the physical address of
/// `hvm_start_info`.
#[no_mangle]
pub extern "C" fn kernel_main(start_info: u32) -> ! {
    console::init(log::LevelFilter::Info, time::now_us);
    gdt::init();
    idt::init();
    // SAFETY: start_info is the %ebx value from QEMU, below 1 GiB and identity-mapped by the
    // boot page tables; nothing has allocated memory yet.
    let boot = match unsafe { pvh::read(start_info) } {
        Ok(b) => b,
        Err(e) => arch::exit::fail_now(match e {
            pvh::StartInfoError::Null => "no PVH start info (not booted through PVH?)",
            pvh::StartInfoError::BadMagic(_) => "PVH start info has a bad magic number",
        }),
    };
    let cmdline = CommandLine::new(boot.cmdline());
    if let Some(level) = cmdline.value("log").and_then(|l| l.parse().ok()) {
        log::set_max_level(level);
    }
    for w in cmdline.warnings() {
        log::warn!("cmdline: {w}");
    }
    let hz = time::calibrate();
    log::info!(
        "booted via PVH (start info v{}), command line {:?}",
        boot.version,
        boot.cmdline()
    );
    log::info!(
        "TSC {}.{:03} MHz (calibrated against the PIT)",
        hz / 1_000_000,
        hz / 1000 % 1000
    );

    mem::init_frames(&boot);
    mem::paging::init(&boot);
    let heap = match mem::heap::init() {
        Ok(base) => base,
        Err(_) => arch::exit::fail_now("no memory for the kernel heap"),
    };
    let frames = mem::frame_stats();
    log::info!(
        "memory: {} MiB managed, heap {} MiB at {heap:#x}, {} MiB free",
        frames.total * 4 / 1024,
        mem::heap::HEAP_SIZE >> 20,
        frames.free * 4 / 1024
    );

    let acpi = match acpi::init(boot.rsdp) {
        Ok(a) => a,
        Err(e) => {
            log::error!("{e}");
            exit(Status::Failure)
        }
    };
    let period_us = cmdline.timer_period_us();
    let irqs = acpi
        .madt()
        .map_err(|e| alloc::string::ToString::to_string(&e))
        .and_then(|madt| arch::init_interrupts(&madt, period_us));
    match irqs {
        Ok(r) => log::info!(
            "interrupts: local APIC {} (xAPIC; x2APIC {}), {} I/O APIC(s) masked, LAPIC timer {} kHz, tick {} us",
            r.apic_id,
            if r.x2apic_supported { "available, unused" } else { "absent" },
            r.io_apics,
            r.timer_hz / 1000,
            r.period_us
        ),
        Err(e) => {
            log::error!("interrupts: {e}");
            exit(Status::Failure)
        }
    }
    // ACS isolation is the default whenever an IOMMU exists (a DMAR with a usable remapping
    // unit); `acs=leave` keeps the firmware's settings (the embedder's choice).
    let cmdline = CommandLine::new(boot.cmdline());
    let policy = match (cmdline.value("acs"), acpi.has_usable_iommu()) {
        (Some("leave"), _) | (None, false) => pci::acs::AcsPolicy::Leave,
        _ => pci::acs::AcsPolicy::Isolate,
    };
    let pci = match devices::pci::init(&acpi, policy) {
        Ok(p) => p,
        Err(e) => {
            log::error!("pci: {e}");
            exit(Status::Failure)
        }
    };
    log::info!(
        "pci: {} functions enumerated",
        pci.topology.functions().len()
    );
    let levels = match cmdline.value("vtd.levels") {
        Some("3") => Some(iommu_vtd::PagingLevels::Three),
        Some("4") => Some(iommu_vtd::PagingLevels::Four),
        _ => None,
    };
    let mut iommu = match devices::iommu::init(&acpi, &pci, levels, cmdline.interrupt_remapping()) {
        Ok(i) => i,
        Err(e) => {
            log::error!("iommu: {e}");
            exit(Status::Failure)
        }
    };
    if let Some(i) = &mut iommu {
        if let Some(spec) = cmdline.value("vtd.rmrr") {
            match devices::iommu::RmrrInfo::parse_override(spec) {
                Some(r) => {
                    log::info!(
                        "vt-d: RMRR {:#x}-{:#x} for {:?} added from the command line",
                        r.base,
                        r.limit,
                        r.devices
                    );
                    i.rmrrs.push(r);
                }
                None => log::warn!("vt-d: ignoring malformed vtd.rmrr={spec:?}"),
            }
        }
        devices::dmamem::attach_rmrr_devices(&pci, i);
        if let Err(e) = i.start_translation() {
            log::error!("iommu: {e}");
            exit(Status::Failure)
        }
        for u in &i.units {
            log::info!(
                "iommu: VT-d unit {:#x} translating, host address width {}, {}-level tables",
                u.base,
                i.host_address_width,
                u.levels.count()
            );
        }
        if let Err(e) = devices::faults::install(i, cmdline.fault_irq()) {
            log::error!("iommu: {e}");
            exit(Status::Failure)
        }
    }
    if let Err(e) = devices::dmamem::start_deadline_polling() {
        log::error!("dma: deferred deadlines not polled from the timer: {e}");
        exit(Status::Failure)
    }
    let p2p = devices::p2p::init(&pci);
    let k = Kernel {
        boot,
        acpi,
        pci,
        iommu,
        p2p,
    };
    demo::print_boot_report(&k);
    if CommandLine::new(k.boot.cmdline()).flag("acpidump") {
        demo::dump_tables(&k);
    }

    if CommandLine::new(k.boot.cmdline()).flag("nvmebench") {
        exit(if nvme_bench::run(&k) {
            Status::Success
        } else {
            Status::Failure
        });
    }
    if CommandLine::new(k.boot.cmdline()).flag("bench") {
        exit(if bench::run(&k) {
            Status::Success
        } else {
            Status::Failure
        });
    }
    match CommandLine::new(k.boot.cmdline()).tests() {
        Some(selection) => {
            let sum = ktest::run(&k, selection, tests::SUITES);
            exit(if sum.failed == 0 && sum.passed > 0 {
                Status::Success
            } else {
                Status::Failure
            })
        }
        None => exit(if demo::run(&k) {
            Status::Success
        } else {
            Status::Failure
        }),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    console::emergency_print(format_args!(
        "KERNEL PANIC at {file}:{line}: {}\n",
        info.message()
    ));
    exit(Status::Failure)
}
