//! The driver against QEMU 7.2's configuration space (captured fixture) and a RAM stand-in for
//! BAR0 holding the register values QEMU 7.2 presents (`hw/nvme/ctrl.c`: `nvme_init_ctrl`,
//! `nvme_init_cmb`, `nvme_cmb_enable_regs`).

use core::ptr::NonNull;

use nvme::{Nvme, NvmeError, ResetCapabilities, REGISTER_BLOCK_SIZE};
use pci::regs::{header, Command};
use pci::testing::FakeConfigSpace;
use pci::{enumerate, BarKind, Bdf, ConfigSpace, McfgRegion, ResetMethod, Topology};

const COMPLEX_CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");

/// CAP of QEMU 7.2 with a CMB: MQES 0x7ff, CQR, TO 15 (7.5 s), CSS NVM | I/O command sets |
/// admin only (0xc1), MPSMIN 0, MPSMAX 4, CMBS.
const QEMU_CAP: u64 = 0x0240_1820_0f01_07ff;
/// VS: NVMe 1.4.0 (`NVME_SPEC_VER`).
const QEMU_VS: u32 = 0x0001_0400;
/// CMBLOC / CMBSZ with `cmb_size_mb=2` once CMBMSC.CRE is set.
const QEMU_CMBLOC: u32 = 0x62;
const QEMU_CMBSZ: u32 = 0x221d;

fn region() -> McfgRegion {
    McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
}

fn fixture() -> (FakeConfigSpace, Topology, Bdf) {
    let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).unwrap();
    let topology = enumerate(&fake, &[region()]);
    let bdf = topology
        .functions()
        .iter()
        .find(|f| nvme::matches(f))
        .expect("the fixture has an nvme")
        .bdf;
    (fake, topology, bdf)
}

/// RAM standing in for BAR0, 8-byte aligned.
struct Bar0(Vec<u64>);

impl Bar0 {
    fn new(cap: u64, vs: u32, cmbloc: u32, cmbsz: u32) -> Self {
        let mut bar = Self(vec![0; REGISTER_BLOCK_SIZE.div_ceil(8)]);
        bar.0[0] = cap;
        bar.set32(0x08, vs);
        bar.set32(0x38, cmbloc);
        bar.set32(0x3c, cmbsz);
        bar
    }
    fn set32(&mut self, offset: usize, value: u32) {
        let word = &mut self.0[offset / 8];
        let shift = 8 * (offset % 8);
        *word = (*word & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }
    fn get32(&self, offset: usize) -> u32 {
        (self.0[offset / 8] >> (8 * (offset % 8))) as u32
    }
    fn ptr(&mut self) -> NonNull<u8> {
        NonNull::new(self.0.as_mut_ptr().cast::<u8>()).unwrap()
    }
}

#[test]
fn fixture_identity_bars_and_reset_capabilities() {
    let (fake, topology, bdf) = fixture();
    nvme::identify(&fake, bdf).unwrap();
    let function = topology.function(bdf).unwrap();
    let bar0 = function.bar(nvme::REGISTER_BAR).unwrap();
    assert_eq!(
        bar0.kind,
        BarKind::Memory64 {
            prefetchable: false
        }
    );
    assert_eq!(bar0.size, 16 << 10);
    // `cmb_size_mb=2` on the fixture's command line.
    let bar2 = function.bar(nvme::QEMU_CMB_BAR).unwrap();
    assert_eq!(bar2.kind, BarKind::Memory64 { prefetchable: true });
    assert_eq!(bar2.size, 2 << 20);
    assert_eq!(
        nvme::reset_capabilities(&fake, bdf),
        Ok(ResetCapabilities {
            flr: true,
            power_management: true,
            pm_soft_reset: false
        })
    );
    assert_eq!(
        pci::reset::reset_method(&fake, &topology, bdf),
        Some(ResetMethod::FunctionLevel)
    );
    let edu = topology.find(0x1234, 0x11e8).next().unwrap().bdf;
    assert_eq!(
        nvme::reset_capabilities(&fake, edu),
        Err(NvmeError::NotNvme {
            id: (0x1234, 0x11e8)
        })
    );
}

#[test]
fn bind_reads_cap_and_vs_and_enables_memory_and_bus_master() {
    let (fake, _, bdf) = fixture();
    fake.write16(bdf, header::COMMAND, 0);
    let mut bar0 = Bar0::new(QEMU_CAP, QEMU_VS, 0, 0);
    // SAFETY: bar0 outlives the controller object and is not touched while it is in use.
    let nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    let command = Command::from_bits_retain(fake.read16(bdf, header::COMMAND));
    assert!(command.contains(Command::MEMORY_SPACE | Command::BUS_MASTER));
    let cap = nvme.capabilities();
    assert_eq!(cap.max_queue_entries(), 2048);
    assert!(cap.contiguous_queues_required());
    assert_eq!(cap.timeout_ms(), 7500);
    assert_eq!(cap.doorbell_stride(), 4);
    assert_eq!(cap.command_sets(), 0xc1);
    assert_eq!((cap.min_page_size(), cap.max_page_size()), (4096, 64 << 10));
    assert!(cap.controller_memory_buffer() && !cap.persistent_memory_region());
    assert!(!cap.subsystem_reset() && !cap.boot_partitions());
    assert_eq!(
        cap.to_string(),
        "MQES 2048 TO 7500 ms DSTRD 4 B CSS 0xc1 MPS 4-64 KiB CMBS"
    );
    assert_eq!(nvme.version(), nvme::Version::V1_4);
    assert_eq!(nvme.version().to_string(), "1.4.0");
    assert!(!nvme.is_enabled());
    assert!(!nvme.status().ready() && !nvme.status().fatal());
    assert_eq!(nvme.bdf(), bdf);
}

#[test]
fn cmb_registers_are_enabled_with_cre_then_decoded() {
    let (fake, topology, bdf) = fixture();
    // QEMU would show CMBLOC/CMBSZ only after CRE; RAM cannot react, so they are preset and
    // the test checks that CRE was written.
    let mut bar0 = Bar0::new(QEMU_CAP, QEMU_VS, QEMU_CMBLOC, QEMU_CMBSZ);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    let cmb = nvme.controller_memory_buffer().unwrap().unwrap();
    assert_eq!(
        bar0.get32(0x50),
        nvme::cmbmsc::CRE,
        "CMBMSC.CRE only, CMSE off"
    );
    assert_eq!((cmb.bar, cmb.offset, cmb.size), (2, 0, 2 << 20));
    let bar = topology.function(bdf).unwrap().bar(cmb.bar).unwrap();
    let range = cmb.provider_range(bar).unwrap();
    assert_eq!((range.offset, range.len), (0, 2 << 20));
}

#[test]
fn cmb_absent_or_unreported() {
    let (fake, _, bdf) = fixture();
    // No CAP.CMBS and CMBSZ 0: no CMB, and CMBMSC is not touched.
    let mut bar0 = Bar0::new(QEMU_CAP & !(1 << 57), QEMU_VS, 0, 0);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    assert_eq!(nvme.controller_memory_buffer(), Ok(None));
    assert_eq!(
        nvme.enable_cmb_controller_space(0xfc40_0000),
        Err(NvmeError::CmbNotSupported)
    );
    assert_eq!(bar0.get32(0x50), 0);
    // CAP.CMBS but CMBSZ stays 0: reported.
    let mut bar0 = Bar0::new(QEMU_CAP, QEMU_VS, 0, 0);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    assert_eq!(
        nvme.controller_memory_buffer(),
        Err(NvmeError::CmbNotReported)
    );
    // A legacy (NVMe 1.3) controller: CMBSZ set without CMBS.
    let mut bar0 = Bar0::new(QEMU_CAP & !(1 << 57), 0x0001_0300, QEMU_CMBLOC, QEMU_CMBSZ);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    assert_eq!(
        nvme.controller_memory_buffer().unwrap().map(|c| c.size),
        Some(2 << 20)
    );
}

#[test]
fn controller_space_programs_cba_high_then_low() {
    let (fake, _, bdf) = fixture();
    let mut bar0 = Bar0::new(QEMU_CAP, QEMU_VS, QEMU_CMBLOC, QEMU_CMBSZ);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    assert_eq!(
        nvme.enable_cmb_controller_space(0x1_fc40_0800),
        Err(NvmeError::MisalignedCba(0x1_fc40_0800))
    );
    nvme.enable_cmb_controller_space(0x1_fc40_0000).unwrap();
    assert_eq!(bar0.get32(0x54), 1);
    assert_eq!(bar0.get32(0x50), 0xfc40_0003);
    // CMBSTS.CBAI reported.
    bar0.set32(0x58, nvme::cmbsts::CBAI);
    // SAFETY: as above.
    let mut nvme = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap();
    assert_eq!(
        nvme.enable_cmb_controller_space(0xffff_ffff_fff0_0000),
        Err(NvmeError::CbaInvalid(0xffff_ffff_fff0_0000))
    );
}

#[test]
fn wrong_device_or_unmapped_registers_are_refused() {
    let (fake, topology, _) = fixture();
    let edu = topology.find(0x1234, 0x11e8).next().unwrap().bdf;
    let mut bar0 = Bar0::new(u64::MAX, u32::MAX, 0, 0);
    // SAFETY: as above.
    let err = unsafe { Nvme::new(&fake, edu, bar0.ptr()) }.unwrap_err();
    assert_eq!(
        err,
        NvmeError::NotNvme {
            id: (0x1234, 0x11e8)
        }
    );
    let (_, _, bdf) = fixture();
    fake.write16(bdf, header::COMMAND, Command::INTERRUPT_DISABLE.bits());
    // SAFETY: as above.
    let err = unsafe { Nvme::new(&fake, bdf, bar0.ptr()) }.unwrap_err();
    assert_eq!(err, NvmeError::RegistersUnreadable);
    assert_eq!(
        fake.read16(bdf, header::COMMAND),
        Command::INTERRUPT_DISABLE.bits(),
        "a refused bind leaves Command as it was"
    );
    assert!(err.to_string().contains("all-ones"));
}

#[test]
fn flr_through_pci_reset_restores_the_controller_function() {
    let (fake, topology, bdf) = fixture();
    let before: Vec<u32> = (0..0x40).step_by(4).map(|o| fake.peek32(bdf, o)).collect();
    let report = pci::reset::reset(
        &fake,
        &topology,
        bdf,
        ResetMethod::FunctionLevel,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(report.functions, [bdf]);
    assert_eq!(fake.reset_count(bdf), 1);
    let after: Vec<u32> = (0..0x40).step_by(4).map(|o| fake.peek32(bdf, o)).collect();
    assert_eq!(before, after);
}
