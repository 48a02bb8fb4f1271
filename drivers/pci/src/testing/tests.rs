//! Unit tests of the fake configuration space, the QEMU command-line parser and the catalogue.

use super::*;
use crate::bar::BarKind;
use crate::regs::{bridge, header, BridgeControl, Status};
use crate::{Bdf, ConfigSpace};

fn bdf(bus: u8, device: u8) -> Bdf {
    Bdf::new(0, bus, device, 0).unwrap()
}

#[test]
fn status_is_rw1c_and_sixteen_bit_writes_leave_it_alone() {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(0, 1), 0x1234, 0x11e8, 0);
    let errors = Status::RECEIVED_MASTER_ABORT | Status::DETECTED_PARITY_ERROR;
    fake.poke16(
        bdf(0, 1),
        header::STATUS,
        (errors | Status::CAPABILITIES_LIST).bits(),
    );
    fake.write16(bdf(0, 1), header::COMMAND, 0x0006);
    assert_eq!(
        fake.read16(bdf(0, 1), header::STATUS),
        (errors | Status::CAPABILITIES_LIST).bits()
    );
    // What a dword read-modify-write of Command would do: clear every pending error.
    let dword = fake.read32(bdf(0, 1), header::COMMAND);
    fake.write32(bdf(0, 1), header::COMMAND, dword);
    assert_eq!(
        fake.read16(bdf(0, 1), header::STATUS),
        Status::CAPABILITIES_LIST.bits()
    );
    // Read-only IDs.
    fake.write32(bdf(0, 1), 0, 0);
    assert_eq!(fake.read32(bdf(0, 1), 0), 0x11e8_1234);
}

#[test]
fn bad_accesses_and_absent_functions() {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(0, 1), 0x1234, 0x11e8, 0);
    assert_eq!(fake.read32(bdf(0, 1), 2), u32::MAX);
    assert_eq!(fake.read16(bdf(0, 1), 0x1000), u16::MAX);
    assert_eq!(fake.read32(bdf(0, 2), 0), u32::MAX);
    fake.write32(bdf(0, 2), 0, 0);
    fake.write16(bdf(0, 1), 0x41, 0);
    assert!(fake.writes().is_empty());
}

#[test]
fn secondary_bus_reset_clears_command_and_bars_below() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(0, 1), 0x1b36, 0x000c, 0, 1, 1);
    fake.add_endpoint(bdf(1, 0), 0x1af4, 0x1110, 0x05_00_00);
    let kind = BarKind::Memory64 { prefetchable: true };
    fake.define_bar(bdf(1, 0), 2, kind, 1 << 20, 0xfc00_0000);
    fake.poke16(bdf(1, 0), header::COMMAND, 0x6);
    fake.write16(
        bdf(0, 1),
        bridge::BRIDGE_CONTROL,
        BridgeControl::SECONDARY_BUS_RESET.bits(),
    );
    assert_eq!(fake.read16(bdf(1, 0), header::COMMAND), 0);
    assert_eq!(fake.read32(bdf(1, 0), header::bar(2)), kind.flag_bits());
    assert_eq!(fake.read32(bdf(1, 0), header::bar(3)), 0);
}

#[test]
fn command_line_and_sizes() {
    let line = "# qemu -object memory-backend-ram,id=shm,size=1M -device ivshmem-plain,memdev=shm \
                    -device nvme,serial=x,cmb_size_mb=2,bus=rp4 -device edu";
    let cl = QemuCommandLine::from_fixture(line).unwrap();
    assert_eq!(cl.devices().count(), 3);
    assert_eq!(cl.devices().nth(1).and_then(|d| d.get("bus")), Some("rp4"));
    let devices: Vec<QemuDevice> = cl
        .devices()
        .map(|d| QemuDevice::for_option(d, &cl).unwrap().unwrap())
        .collect();
    assert_eq!(devices[0].bar_size(2), Some(1 << 20));
    assert_eq!(devices[1].bar_size(2), Some(2 << 20));
    assert_eq!(devices[2].bar_size(0), Some(1 << 20));
    assert_eq!(parse_size("64M"), Some(64 << 20));
    assert_eq!(parse_size("x"), None);
}

#[test]
fn fixture_errors_name_the_line() {
    let err = FakeConfigSpace::from_fixture("# x\n00:00.0 000\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(FakeConfigSpace::from_fixture("00:00.0 002 0\n").is_err());
    assert!(FakeConfigSpace::from_fixture("00:20.0 000 0\n").is_err());
}

#[test]
fn command_line_refuses_what_it_cannot_model() {
    let parse = |args: &[&str]| QemuCommandLine::parse_args(args.iter().copied());
    assert!(matches!(
        parse(&["-machine", "pc"]),
        Err(QemuError::UnmodelledMachine { .. })
    ));
    assert!(matches!(
        parse(&["-usb"]),
        Err(QemuError::UnmodelledOption { .. })
    ));
    assert!(matches!(
        parse(&["-device"]),
        Err(QemuError::MissingValue { .. })
    ));
    assert!(matches!(
        parse(&["-nic", "user"]),
        Err(QemuError::UnmodelledNic { .. })
    ));
    // Bare keys mean `on`, the last value of a key wins.
    let cl = parse(&["-device", "edu,multifunction,addr=1,addr=2"]).unwrap();
    let edu = cl.devices().next().unwrap();
    assert_eq!(edu.flag("multifunction", false), Ok(true));
    assert_eq!(edu.get("addr"), Some("2"));
    assert_eq!(parse_addr("1f.3"), Some(0xfb));
    assert_eq!(parse_int("0x10"), Some(16));
    assert_eq!(parse_int("010"), Some(8));
    // Defaults: the VGA and NIC go with -nodefaults, the NIC with -nic none.
    let built_ins = |args: &[&str]| QemuDevice::built_ins(&parse(args).unwrap()).len();
    assert_eq!(built_ins(&[]), 6);
    assert_eq!(built_ins(&["-nic", "none"]), 5);
    assert_eq!(built_ins(&["-vga", "none", "-netdev", "user,id=n"]), 4);
    assert_eq!(built_ins(&["-nodefaults"]), 4);
    let cl = parse(&["-device", "virtio-net-pci"]).unwrap();
    let err = QemuDevice::all(&cl).unwrap_err();
    assert!(err.to_string().contains("not modelled"), "{err}");
}

#[test]
fn catalogue_ids_and_classes_match_the_captured_fixture() {
    let cfg = include_str!("../../tests/fixtures/complex.cfg");
    let fake = FakeConfigSpace::from_fixture(cfg).unwrap();
    let devices = QemuDevice::all(&QemuCommandLine::from_fixture(cfg).unwrap()).unwrap();
    assert!(devices.len() > 10);
    for d in &devices {
        let found = (0..=255u8).any(|bus| {
            (0..32u8).any(|dev| {
                (0..8u8).any(|func| {
                    let bdf = Bdf::new(0, bus, dev, func).unwrap();
                    fake.peek16(bdf, 0) == d.vendor
                        && fake.peek16(bdf, 2) == d.device
                        && fake.read32(bdf, 8) >> 8 == d.class
                })
            })
        });
        assert!(
            found,
            "{} {:04x}:{:04x} not captured",
            d.driver, d.vendor, d.device
        );
    }
}

#[test]
fn qemu_fixture_refuses_two_sizes_for_one_model() {
    let text = "# qemu-system-x86_64 -object memory-backend-ram,id=a,size=1M \
                    -object memory-backend-ram,id=b,size=2M -device ivshmem-plain,memdev=a \
                    -device ivshmem-plain,memdev=b\n00:01.0 000 11101af4\n";
    let err = FakeConfigSpace::from_qemu_fixture(text).unwrap_err();
    assert_eq!(err.line, 1);
    assert!(err.message.contains("sizes differ"), "{err}");
    // One size: BAR2 of the function is sized from the memdev.
    let one = "# qemu -object memory-backend-ram,id=a,size=1M -device ivshmem-plain,memdev=a\n\
                   00:01.0 000 11101af4\n00:01.0 018 0000000c\n";
    let fake = FakeConfigSpace::from_qemu_fixture(one).unwrap();
    let bdf = bdf(0, 1);
    fake.write32(bdf, header::bar(2), u32::MAX);
    fake.write32(bdf, header::bar(3), u32::MAX);
    assert_eq!(fake.read32(bdf, header::bar(3)), u32::MAX);
    assert_eq!(fake.read32(bdf, header::bar(2)) & !0xf, !((1u32 << 20) - 1));
}
