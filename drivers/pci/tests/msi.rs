//! MSI and MSI-X on real capability layouts (the configuration spaces our kernel captured in
//! QEMU 7.2) and MSI-X programming on a recording fake BAR.
//!
//! The expected layouts are derived from the QEMU 7.2 device models' parameters (`hw/misc/edu.c`,
//! `hw/nvme/ctrl.c`, `hw/pci-bridge/gen_pcie_root_port.c`, `hw/net/e1000e.c`), not pasted from
//! a previous run.

use pci::msi::fake::{
    add_msi_capability, add_msix_capability, FakeMsixMemory, MsixEvent, MsixLayout, E1000E_MSIX,
};
use pci::msi::{
    DecodedMessage, MsiCapability, MsiMessage, Msix, MsixCapability, MsixError, MsixMemory,
};
use pci::regs::{msix, MsixControl};
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::{enumerate, mcfg, Bdf, Topology};
use proptest::prelude::*;

const DEFAULT_CFG: &str = include_str!("fixtures/default.cfg");
const COMPLEX_CFG: &str = include_str!("fixtures/complex.cfg");
const DEFAULT_ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/default.acpi");

fn load(cfg: &str) -> (FakeConfigSpace, Topology) {
    let fake = FakeConfigSpace::from_qemu_fixture(cfg).expect("fixture loads");
    let regions = mcfg::parse(&acpi_table_bytes(DEFAULT_ACPI, "MCFG")).expect("MCFG parses");
    let topology = enumerate(&fake, &regions);
    (fake, topology)
}

#[test]
fn edu_has_one_64_bit_vector_without_masking() {
    // edu.c: msi_init(pdev, 0, 1, true, false): the first free offset, 1 vector, 64-bit.
    for cfg in [DEFAULT_CFG, COMPLEX_CFG] {
        let (fake, topology) = load(cfg);
        let mut edus = topology.find(0x1234, 0x11e8).peekable();
        assert!(edus.peek().is_some());
        for edu in edus {
            let cap = MsiCapability::find(&fake, edu.bdf).unwrap();
            assert_eq!(cap.offset, 0x40);
            assert!(cap.is_64bit() && !cap.per_vector_masking());
            assert_eq!((cap.vectors_capable(), cap.vectors_enabled()), (1, 1));
            assert_eq!(cap.to_string(), "MSI: Enable- Count=1/1 Maskable- 64bit+");
            assert_eq!(
                MsixCapability::find(&fake, edu.bdf),
                Err(MsixError::NotPresent)
            );
        }
    }
}

#[test]
fn edu_msi_programming_on_the_fixture() {
    let (fake, topology) = load(DEFAULT_CFG);
    let edu = topology.find(0x1234, 0x11e8).next().unwrap();
    let mut msi = pci::msi::Msi::new(&fake, edu.bdf).unwrap();
    msi.configure(1, MsiMessage::remappable(3, None)).unwrap();
    msi.enable().unwrap();
    let cap = MsiCapability::find(&fake, edu.bdf).unwrap();
    assert!(cap.is_enabled());
    let DecodedMessage::Remappable(r) = msi.message_for(0).unwrap().decode().unwrap() else {
        panic!("remappable message expected");
    };
    assert_eq!(r.interrupt_index(), Some(3));
}

/// `msix_init_exclusive_bar` and nvme's layout, from the devices' parameters.
struct Expected {
    vectors: u16,
    table_offset: u32,
    pba_offset: u32,
    bar_size: u64,
}

fn round_up(value: u32, to: u32) -> u32 {
    value.div_ceil(to) * to
}

fn nvme_expected() -> Expected {
    // ctrl.c defaults: max_ioqpairs 64, msix_qsize 65; registers 4 KiB, then a pair of 4-byte
    // doorbells per queue pair (+ admin); table and PBA each 4 KiB aligned after.
    let vectors = 65u16;
    let doorbells = 2 * (64 + 1) * 4;
    let table_offset = round_up(0x1000 + doorbells, 0x1000);
    let pba_offset = round_up(table_offset + u32::from(vectors) * 16, 0x1000);
    let pba_size = u32::from(vectors).div_ceil(64) * 8;
    let bar_size = u64::from(pba_offset + pba_size).next_power_of_two();
    Expected {
        vectors,
        table_offset,
        pba_offset,
        bar_size,
    }
}

fn root_port_expected() -> Expected {
    // gen_pcie_root_port.c: 1 vector in an exclusive BAR0; msix_init_exclusive_bar sizes the
    // BAR to at least 4 KiB and puts the PBA in its second half.
    let bar_size = 4096u32.max((16 + 8u32).next_power_of_two());
    Expected {
        vectors: 1,
        table_offset: 0,
        pba_offset: bar_size / 2,
        bar_size: u64::from(bar_size),
    }
}

fn check_msix_layout(fake: &FakeConfigSpace, topology: &Topology, bdf: Bdf, e: &Expected) {
    let cap = MsixCapability::find(fake, bdf).unwrap();
    assert_eq!(cap.table_size(), e.vectors, "{bdf}");
    let (table, pba) = (cap.table(), cap.pba());
    assert_eq!((table.bir, table.offset), (0, e.table_offset), "{bdf}");
    assert_eq!((pba.bir, pba.offset), (0, e.pba_offset), "{bdf}");
    assert_eq!(table.size, u32::from(e.vectors) * 16);
    let bar = topology.function(bdf).unwrap().bar(0).unwrap();
    assert_eq!(bar.size, e.bar_size, "{bdf}");
    assert!(!cap.is_enabled() && !cap.is_function_masked());

    // The BAR as sized from configuration space holds both structures; one byte less of the
    // structure that ends last does not.
    let layout = MsixLayout {
        vectors: cap.table_size(),
        bir: 0,
        bar_size: bar.size as usize,
        table_offset: table.offset,
        pba_offset: pba.offset,
    };
    let memory = FakeMsixMemory::new(layout);
    assert!(Msix::with_capability(fake, bdf, cap, &memory, &memory).is_ok());
    let last_end = (table.offset + table.size).max(pba.offset + pba.size) as usize;
    let short = FakeMsixMemory::new(MsixLayout {
        bar_size: last_end - 4,
        ..layout
    });
    assert!(Msix::with_capability(fake, bdf, cap, &short, &short).is_err());
}

#[test]
fn nvme_and_root_port_msix_layouts() {
    let (fake, topology) = load(COMPLEX_CFG);
    let nvme = topology.find(0x1b36, 0x0010).next().unwrap().bdf;
    check_msix_layout(&fake, &topology, nvme, &nvme_expected());
    let ports: Vec<Bdf> = topology.find(0x1b36, 0x000c).map(|f| f.bdf).collect();
    assert!(!ports.is_empty());
    for port in ports {
        check_msix_layout(&fake, &topology, port, &root_port_expected());
    }
    let cap = MsixCapability::find(&fake, nvme).unwrap();
    assert_eq!(
        cap.to_string(),
        "MSI-X: Enable- Count=65 Masked-\n\tVector table: BAR=0 offset=00002000\n\tPBA: BAR=0 offset=00003000"
    );
}

fn e1000e() -> (FakeConfigSpace, Bdf, u8) {
    let fake = FakeConfigSpace::new();
    let bdf = Bdf::new(0, 2, 0, 0).unwrap();
    fake.add_endpoint(bdf, 0x8086, 0x10d3, 0x02_00_00);
    let cap = add_msix_capability(&fake, bdf, &E1000E_MSIX, 0xfebf_0000);
    (fake, bdf, cap)
}

fn msix_control(fake: &FakeConfigSpace, bdf: Bdf, cap: u8) -> MsixControl {
    MsixControl::from_bits(fake.peek16(bdf, u16::from(cap) + msix::CONTROL))
}

#[test]
fn table_size_and_bar_come_from_the_capability() {
    let (fake, bdf, _) = e1000e();
    let cap = MsixCapability::find(&fake, bdf).unwrap();
    assert_eq!(cap.table_size(), 5);
    assert_eq!((cap.table().bir, cap.pba().bir), (3, 3));
    assert_eq!(cap.pba().offset, 0x2000);
    // The BAR the fake declared sizes to what the capability needs.
    let bars = pci::bar::probe_bars(&fake, bdf, pci::regs::HeaderLayout::Endpoint, &[], false).bars;
    let bar3 = bars.iter().find(|b| b.index == 3).unwrap();
    assert_eq!(bar3.size, E1000E_MSIX.bar_size as u64);
}

#[test]
fn enable_follows_the_function_mask_protocol() {
    let (fake, bdf, cap) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let cfg = bar.recording(&fake);
    let mut msix = Msix::new(&cfg, bdf, &bar, &bar).unwrap();
    let m0 = MsiMessage::remappable(10, None);
    let m2 = MsiMessage::fixed(1, 0x42).unwrap();
    msix.enable(&[(0, m0), (2, m2)]).unwrap();

    let events = bar.events();
    let control_writes: Vec<MsixControl> = events
        .iter()
        .filter_map(|e| match *e {
            MsixEvent::Config { offset, value, .. } if offset == u16::from(cap) + msix::CONTROL => {
                Some(MsixControl::from_bits(value as u16))
            }
            _ => None,
        })
        .collect();
    // First Function Mask + Enable together, last Function Mask cleared with Enable kept.
    let first = control_writes.first().unwrap();
    assert!(first.enable() && first.function_mask());
    let last = control_writes.last().unwrap();
    assert!(last.enable() && !last.function_mask());
    // Every table access happens between the two, every address/data write on a masked
    // entry, and only with 32-bit accesses.
    let first_config = events
        .iter()
        .position(|e| matches!(e, MsixEvent::Config { .. }));
    let last_config = events
        .iter()
        .rposition(|e| matches!(e, MsixEvent::Config { .. }));
    let table_accesses: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| !matches!(e, MsixEvent::Config { .. }))
        .map(|(i, _)| i)
        .collect();
    assert!(table_accesses
        .iter()
        .all(|&i| Some(i) > first_config && Some(i) < last_config));
    let message_writes: Vec<(usize, u32, Option<bool>)> = events
        .iter()
        .filter_map(|e| match *e {
            MsixEvent::Write {
                offset,
                width,
                value,
                entry_masked,
            } if entry_masked.is_some() => {
                assert_eq!(width, 4);
                Some((offset, value, entry_masked))
            }
            _ => None,
        })
        .collect();
    assert_eq!(message_writes.len(), 6, "two entries, three dwords each");
    assert!(message_writes.iter().all(|w| w.2 == Some(true)));

    // The device view: listed entries deliver their messages, the others are held pending.
    assert_eq!(bar.raise(&fake, bdf, cap, 0), Some(m0));
    assert_eq!(bar.raise(&fake, bdf, cap, 2), Some(m2));
    assert_eq!(bar.raise(&fake, bdf, cap, 1), None);
    assert!(msix.is_pending(1).unwrap());
    assert!(!msix.is_pending(0).unwrap());
    for entry in 0..5 {
        assert_eq!(msix.is_masked(entry).unwrap(), ![0, 2].contains(&entry));
    }
    assert_eq!(msix.message(2).unwrap(), m2);
    let control = msix_control(&fake, bdf, cap);
    assert!(control.enable() && !control.function_mask());
}

#[test]
fn enable_masks_entries_left_unmasked_by_a_previous_owner() {
    let (fake, bdf, cap) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    // Firmware (or a previous driver) left entry 3 unmasked with a stale message.
    let entry3 = 3 * msix::ENTRY_SIZE as usize;
    bar.poke32(entry3 + msix::ENTRY_ADDRESS_LOW as usize, 0xfee0_0000);
    bar.poke32(entry3 + msix::ENTRY_DATA as usize, 0x77);
    bar.poke32(entry3 + msix::ENTRY_VECTOR_CONTROL as usize, 0);
    let mut msix = Msix::new(&fake, bdf, &bar, &bar).unwrap();
    msix.enable(&[(0, MsiMessage::fixed(0, 0x40).unwrap())])
        .unwrap();
    assert!(msix.is_masked(3).unwrap());
    assert_eq!(bar.raise(&fake, bdf, cap, 3), None);
}

#[test]
fn msi_and_msix_are_never_both_enabled() {
    // e1000e.c also has MSI (1 vector, 64-bit, no masking).
    let (fake, bdf, _) = e1000e();
    add_msi_capability(&fake, bdf, 0, true, false);
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let mut msi = pci::msi::Msi::new(&fake, bdf).unwrap();
    let mut msix = Msix::new(&fake, bdf, &bar, &bar).unwrap();
    let m = MsiMessage::fixed(0, 0x40).unwrap();
    msi.configure(1, m).unwrap();
    msi.enable().unwrap();
    fake.clear_writes();
    assert_eq!(msix.enable(&[(0, m)]), Err(MsixError::MsiEnabled));
    assert!(fake.writes().is_empty() && bar.events().is_empty());
    msi.disable().unwrap();
    msix.enable(&[(0, m)]).unwrap();
    fake.clear_writes();
    assert_eq!(msi.enable(), Err(pci::msi::MsiError::MsixEnabled));
    assert!(fake.writes().is_empty());
    msix.disable().unwrap();
    msi.enable().unwrap();
}

#[test]
fn the_recording_sees_an_unmasked_write() {
    // Negative control for the check above: a write to an unmasked entry is flagged.
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    bar.poke32(msix::ENTRY_VECTOR_CONTROL as usize, 0);
    bar.write32(msix::ENTRY_DATA as usize, 0x41);
    assert!(matches!(
        bar.events()[..],
        [MsixEvent::Write {
            entry_masked: Some(false),
            ..
        }]
    ));
}

#[test]
fn configure_masks_a_live_entry_and_restores_it() {
    let (fake, bdf, cap) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let mut msix = Msix::new(&fake, bdf, &bar, &bar).unwrap();
    msix.enable(&[(4, MsiMessage::fixed(0, 0x30).unwrap())])
        .unwrap();
    bar.clear_events();
    let retarget = MsiMessage::fixed(3, 0x31).unwrap();
    msix.configure(4, retarget).unwrap();
    let writes: Vec<Option<bool>> = bar
        .events()
        .iter()
        .filter_map(|e| match *e {
            MsixEvent::Write { entry_masked, .. } => Some(entry_masked),
            _ => None,
        })
        .collect();
    // mask, three message dwords while masked, unmask.
    assert_eq!(writes, [None, Some(true), Some(true), Some(true), None]);
    assert!(!msix.is_masked(4).unwrap());
    assert_eq!(bar.raise(&fake, bdf, cap, 4), Some(retarget));

    // A masked entry stays masked after configure.
    msix.configure(1, retarget).unwrap();
    assert!(msix.is_masked(1).unwrap());
    assert_eq!(bar.raise(&fake, bdf, cap, 1), None);
    msix.unmask(1).unwrap();
    assert_eq!(bar.raise(&fake, bdf, cap, 1), Some(retarget));
}

#[test]
fn function_mask_holds_every_vector_and_disable_masks_first() {
    let (fake, bdf, cap) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let mut msix = Msix::new(&fake, bdf, &bar, &bar).unwrap();
    let m = MsiMessage::fixed(0, 0x40).unwrap();
    msix.enable(&[(0, m)]).unwrap();
    msix.set_function_mask(true).unwrap();
    assert_eq!(bar.raise(&fake, bdf, cap, 0), None);
    assert!(msix.is_pending(0).unwrap());
    msix.set_function_mask(false).unwrap();
    assert_eq!(bar.raise(&fake, bdf, cap, 0), Some(m));

    fake.clear_writes();
    msix.disable().unwrap();
    let control: Vec<MsixControl> = fake
        .writes()
        .iter()
        .filter(|w| w.offset == u16::from(cap) + msix::CONTROL)
        .map(|w| MsixControl::from_bits(w.value as u16))
        .collect();
    assert_eq!(control.len(), 2);
    assert!(control[0].enable() && control[0].function_mask());
    assert!(!control[1].enable());
    assert_eq!(bar.raise(&fake, bdf, cap, 0), None);
}

#[test]
fn bad_entries_are_refused_before_any_access() {
    let (fake, bdf, _) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let cfg = bar.recording(&fake);
    let mut msix = Msix::new(&cfg, bdf, &bar, &bar).unwrap();
    let m = MsiMessage::fixed(0, 0x40).unwrap();
    let out = Err(MsixError::EntryOutOfRange {
        entry: 5,
        table_size: 5,
    });
    assert_eq!(msix.enable(&[(0, m), (5, m)]), out);
    assert_eq!(msix.configure(5, m), out);
    assert_eq!(msix.mask(5), out);
    assert_eq!(msix.is_pending(5).map(|_| ()), out);
    let misaligned = MsiMessage {
        address: 0xfee0_0001,
        ..m
    };
    assert!(matches!(
        msix.enable(&[(0, misaligned)]),
        Err(MsixError::MisalignedAddress { .. })
    ));
    assert!(bar.events().is_empty());
}

#[test]
fn tables_outside_their_bar_are_errors() {
    let (fake, bdf, cap) = e1000e();
    let bar = FakeMsixMemory::new(E1000E_MSIX);
    let table_reg = u16::from(cap) + msix::TABLE;
    let pba_reg = u16::from(cap) + msix::PBA;
    // Table 5 * 16 bytes at 0x3fc0 ends past 16 KiB.
    fake.poke32(bdf, table_reg, 0x3fc0 | 3);
    assert_eq!(
        Msix::new(&fake, bdf, &bar, &bar).map(|_| ()),
        Err(MsixError::TableOutsideBar {
            offset: 0x3fc0,
            size: 80,
            bar_size: 16 << 10
        })
    );
    // The last offset that fits.
    fake.poke32(bdf, table_reg, 0x3fb0 | 3);
    fake.poke32(bdf, pba_reg, 3);
    assert!(Msix::new(&fake, bdf, &bar, &bar).is_ok());
    fake.poke32(bdf, table_reg, 3);
    fake.poke32(bdf, pba_reg, 0x4000 | 3);
    assert!(matches!(
        Msix::new(&fake, bdf, &bar, &bar),
        Err(MsixError::PbaOutsideBar { .. })
    ));
    fake.poke32(bdf, pba_reg, 0x40 | 3);
    assert_eq!(
        Msix::new(&fake, bdf, &bar, &bar).map(|_| ()),
        Err(MsixError::TableOverlapsPba)
    );
    fake.poke32(bdf, table_reg, 7);
    assert_eq!(
        Msix::new(&fake, bdf, &bar, &bar).map(|_| ()),
        Err(MsixError::ReservedBir { bir: 7 })
    );
}

/// A BAR larger than 4 GiB that records the offsets it is accessed at.
struct HugeBar(std::sync::Mutex<Vec<usize>>);

impl MsixMemory for HugeBar {
    fn len(&self) -> usize {
        1 << 40
    }
    fn read32(&self, offset: usize) -> u32 {
        self.0.lock().unwrap().push(offset);
        0
    }
    fn write32(&self, offset: usize, _: u32) {
        self.0.lock().unwrap().push(offset);
    }
}

#[test]
fn entry_offsets_past_4_gib_do_not_wrap() {
    let (fake, bdf, cap) = e1000e();
    // The largest table offset the register can hold; entry 4 lies above 4 GiB.
    let top: u32 = !7;
    fake.poke32(bdf, u16::from(cap) + msix::TABLE, top | 3);
    fake.poke32(bdf, u16::from(cap) + msix::PBA, (top - 0x1000) | 3);
    let bar = HugeBar(Default::default());
    let mut msix = Msix::new(&fake, bdf, &bar, &bar).unwrap();
    msix.configure(4, MsiMessage::remappable(1, None)).unwrap();
    let offsets = bar.0.lock().unwrap().clone();
    let entry4 = u64::from(top) + 4 * 16;
    assert!(!offsets.is_empty());
    assert!(offsets
        .iter()
        .all(|&o| (entry4..entry4 + 16).contains(&(o as u64))));
}

proptest! {
    /// Whatever the device claims, `Msix::new` accepts exactly the layouts that fit the BAR,
    /// and then every access of every entry stays inside it.
    #[test]
    fn arbitrary_layouts_never_escape_the_bar(
        size_minus_one in 0u16..2048,
        table in any::<u32>(),
        pba in any::<u32>(),
        bar_log2 in 4u32..16,
    ) {
        let (fake, bdf, cap) = e1000e();
        let base = u16::from(cap);
        fake.poke16(bdf, base + msix::CONTROL, size_minus_one);
        fake.poke32(bdf, base + msix::TABLE, table);
        fake.poke32(bdf, base + msix::PBA, pba);
        let layout = MsixLayout { bar_size: 1 << bar_log2, ..E1000E_MSIX };
        let bar = FakeMsixMemory::new(layout);
        let capability = MsixCapability::find(&fake, bdf).unwrap();
        let (t, p) = (capability.table(), capability.pba());
        let fits = |r: pci::msi::MsixRegion| u64::from(r.offset) + u64::from(r.size) <= 1 << bar_log2;
        let end = |r: pci::msi::MsixRegion| u64::from(r.offset) + u64::from(r.size);
        let disjoint = end(t) <= u64::from(p.offset) || end(p) <= u64::from(t.offset);
        let valid = t.bir < 6 && p.bir < 6 && fits(t) && fits(p) && (t.bir != p.bir || disjoint);
        match Msix::new(&fake, bdf, &bar, &bar) {
            Ok(mut msix) => {
                prop_assert!(valid);
                let m = MsiMessage::remappable(1, None);
                for entry in [0, size_minus_one] {
                    msix.configure(entry, m).unwrap();
                    msix.is_pending(entry).unwrap();
                }
                for event in bar.events() {
                    if let MsixEvent::Read { offset, .. } | MsixEvent::Write { offset, .. } = event {
                        prop_assert!(offset + 4 <= layout.bar_size);
                    }
                }
            }
            Err(_) => prop_assert!(!valid),
        }
    }
}
