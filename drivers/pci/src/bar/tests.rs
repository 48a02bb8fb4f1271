//! Unit tests of BAR sizing, decoding and assignment (`super`).

use super::*;
use crate::testing::{ConfigWrite, FakeConfigSpace};
use alloc::string::ToString;
use proptest::prelude::*;

fn bdf() -> Bdf {
    Bdf::new(0, 0, 3, 0).unwrap()
}

fn device() -> FakeConfigSpace {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(), 0x1b36, 0x0010, 0x01_08_02);
    fake
}

#[test]
fn sixty_four_bit_bar_uses_two_slots() {
    let fake = device();
    let kind = BarKind::Memory64 { prefetchable: true };
    fake.define_bar(bdf(), 2, kind, 2 << 20, 0x8_0000_0000);
    fake.define_bar(
        bdf(),
        4,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x4000,
        0xfe00_0000,
    );
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert!(probe.errors.is_empty());
    assert_eq!(probe.bars.len(), 2);
    let bar = probe.bars[0];
    assert_eq!((bar.index, bar.kind, bar.size), (2, kind, 2 << 20));
    assert_eq!(
        (bar.bus_address, bar.phys_address, bar.bus_offset),
        (0x8_0000_0000, 0x8_0000_0000, BusOffset(0))
    );
    assert_eq!((probe.bars[1].index, probe.bars[1].size), (4, 0x4000));
}

#[test]
fn io_bar() {
    let fake = device();
    fake.define_bar(bdf(), 0, BarKind::Io, 32, 0xe040);
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert_eq!(probe.bars.len(), 1);
    assert_eq!(
        (
            probe.bars[0].kind,
            probe.bars[0].bus_address,
            probe.bars[0].size
        ),
        (BarKind::Io, 0xe040, 32)
    );
}

#[test]
fn sizing_disables_decode_and_restores_everything() {
    let fake = device();
    fake.define_bar(
        bdf(),
        0,
        BarKind::Memory64 {
            prefetchable: false,
        },
        0x4000,
        0xfe00_0000,
    );
    fake.define_bar(
        bdf(),
        2,
        BarKind::Memory64 { prefetchable: true },
        2 << 20,
        0xfc40_0000,
    );
    fake.define_bar(bdf(), 4, BarKind::Io, 64, 0x700);
    let command = (Command::MEMORY_SPACE | Command::IO_SPACE | Command::BUS_MASTER).bits();
    fake.poke16(bdf(), header::COMMAND, command);
    // A pending RW1C error in Status must survive the probe (no dword write of Command).
    fake.poke16(
        bdf(),
        header::STATUS,
        crate::regs::Status::RECEIVED_MASTER_ABORT.bits(),
    );
    let before: Vec<u32> = (0..6).map(|i| fake.peek32(bdf(), header::bar(i))).collect();
    fake.clear_writes();

    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert_eq!(
        probe.bars.iter().map(|b| b.size).collect::<Vec<_>>(),
        [0x4000, 2 << 20, 64]
    );

    let after: Vec<u32> = (0..6).map(|i| fake.peek32(bdf(), header::bar(i))).collect();
    assert_eq!(before, after);
    assert_eq!(fake.peek16(bdf(), header::COMMAND), command);
    assert_eq!(
        fake.peek16(bdf(), header::STATUS),
        crate::regs::Status::RECEIVED_MASTER_ABORT.bits()
    );
    let writes = fake.writes();
    let bar_writes: Vec<&ConfigWrite> = writes
        .iter()
        .filter(|w| (0x10..0x28).contains(&w.offset))
        .collect();
    // All-ones + restore for each of the 6 registers (slot 5 is probed and found unimplemented).
    assert_eq!(bar_writes.len(), 2 * 6);
    for w in &bar_writes {
        assert_eq!(
            w.command_before & Command::DECODE.bits(),
            0,
            "BAR written with decode on: {w:?}"
        );
    }
    assert!(writes
        .iter()
        .all(|w| w.offset != header::STATUS && !(w.offset == header::COMMAND && w.width == 4)));
    assert_eq!(
        writes.first().map(|w| (w.offset, w.width)),
        Some((header::COMMAND, 2))
    );
    assert_eq!(
        writes.last().map(|w| (w.offset, w.value)),
        Some((header::COMMAND, u32::from(command)))
    );
}

#[test]
fn host_bridge_keeps_decode_on() {
    let fake = device();
    fake.define_bar(
        bdf(),
        0,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x1000,
        0xfed0_0000,
    );
    fake.poke16(bdf(), header::COMMAND, Command::MEMORY_SPACE.bits());
    fake.clear_writes();
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], true);
    assert_eq!(probe.bars.len(), 1);
    assert!(fake.writes().iter().all(|w| w.offset != header::COMMAND));
}

#[test]
fn translated_window_gives_a_non_zero_bus_offset() {
    let fake = device();
    fake.define_bar(
        bdf(),
        0,
        BarKind::Memory64 { prefetchable: true },
        1 << 20,
        0x4000_0000,
    );
    fake.define_bar(
        bdf(),
        2,
        BarKind::Memory32 {
            prefetchable: false,
        },
        0x1000,
        0xfe00_0000,
    );
    // CPU 0x10_4000_0000.. appears on the bus at 0x4000_0000..
    let window = HostBridgeWindow {
        segment: 0,
        cpu_address: 0x10_4000_0000,
        bus_address: 0x4000_0000,
        size: 1 << 30,
    };
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[window], false);
    let bar = probe.bars[0];
    assert_eq!(bar.bus_address, 0x4000_0000);
    assert_eq!(bar.phys_address, 0x10_4000_0000);
    assert_eq!(
        bar.bus_offset,
        BusOffset::between(0x4000_0000, 0x10_4000_0000)
    );
    assert_eq!(bar.bus_offset.as_signed(), -0x10_0000_0000);
    assert_eq!(
        bar.bus_offset.to_bus(bar.phys_address + 0x80),
        bar.bus_address + 0x80
    );
    // Outside the window: identity.
    assert_eq!(
        (probe.bars[1].phys_address, probe.bars[1].bus_offset),
        (0xfe00_0000, BusOffset(0))
    );
    // Another segment's window does not apply.
    let other = HostBridgeWindow {
        segment: 1,
        ..window
    };
    assert_eq!(
        probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[other], false).bars[0].bus_offset,
        BusOffset(0)
    );
}

#[test]
fn malformed_bars_are_reported() {
    let fake = device();
    fake.poke32(bdf(), header::bar(0), 0b110); // reserved memory type
    fake.define_bar(
        bdf(),
        5,
        BarKind::Memory64 {
            prefetchable: false,
        },
        0x1000,
        0x1000,
    );
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert_eq!(
        probe.errors,
        [
            BarError::ReservedMemoryType { index: 0 },
            BarError::Memory64InLastSlot { index: 5 }
        ]
    );
    // A bridge has two slots: a 64-bit BAR in slot 1 is in its last slot, and its upper
    // half would be the bus numbers at 0x18, which stay what they were.
    let bridge = Bdf::new(0, 0, 4, 0).unwrap();
    fake.add_bridge(bridge, 0x1b36, 0x000c, 0, 1, 2);
    fake.define_bar(
        bridge,
        1,
        BarKind::Memory64 {
            prefetchable: false,
        },
        0x1000,
        0x1000,
    );
    let probe = probe_bars(&fake, bridge, HeaderLayout::PciBridge, &[], false);
    assert_eq!(probe.errors, [BarError::Memory64InLastSlot { index: 1 }]);
    assert_eq!(
        fake.peek32(bridge, crate::regs::bridge::PRIMARY_BUS),
        0x02_01_00
    );
}

fn mem32() -> BarKind {
    BarKind::Memory32 {
        prefetchable: false,
    }
}

/// A device whose BAR reads back an address that is not a multiple of its size is refused:
/// reported with both addresses, and absent from `bars`, so nothing maps the page after it.
#[test]
fn misaligned_bar_is_refused() {
    let fake = device();
    // 8 KiB claimed at 0xfe00_1000: a mapping of [0, 4K) would start a page early...
    fake.define_bar(bdf(), 0, mem32(), 0x2000, 0xfe00_1000);
    // ...and a 64-bit one whose upper half is fine but whose low bits are not.
    let kind = BarKind::Memory64 { prefetchable: true };
    fake.define_bar(bdf(), 2, kind, 1 << 20, 0x8_0008_0000);
    fake.define_bar(bdf(), 4, mem32(), 0x1000, 0xfe01_0000);
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert_eq!(
        probe.errors,
        [
            BarError::Misaligned {
                index: 0,
                bus_address: 0xfe00_1000,
                phys_address: 0xfe00_1000,
                size: 0x2000
            },
            BarError::Misaligned {
                index: 2,
                bus_address: 0x8_0008_0000,
                phys_address: 0x8_0008_0000,
                size: 1 << 20
            }
        ]
    );
    assert_eq!(probe.bars.iter().map(|b| b.index).collect::<Vec<_>>(), [4]);
    assert!(probe.errors[0].to_string().contains("not aligned"));
    // What the refused BAR may still claim: both 8 KiB blocks the register touches.
    assert_eq!(
        probe.errors[0].claimed_bus_range(),
        Some((0xfe00_0000, 0x4000))
    );
    assert_eq!(probe.errors[1].index(), 2);
}

/// A host-bridge window whose translation offset is not a multiple of the BAR size gives a
/// CPU range that straddles pages: refused as well, although the bus address is aligned.
#[test]
fn bar_misaligned_after_translation_is_refused() {
    let fake = device();
    fake.define_bar(bdf(), 0, mem32(), 0x4000, 0x4000_0000);
    let window = HostBridgeWindow {
        segment: 0,
        cpu_address: 0x10_0000_0800,
        bus_address: 0x4000_0000,
        size: 1 << 30,
    };
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[window], false);
    assert!(probe.bars.is_empty());
    assert_eq!(
        probe.errors,
        [BarError::Misaligned {
            index: 0,
            bus_address: 0x4000_0000,
            phys_address: 0x10_0000_0800,
            size: 0x4000
        }]
    );
}

#[test]
fn sub_page_bars_are_listed_but_not_page_granular() {
    let fake = device();
    fake.define_bar(bdf(), 0, mem32(), 0x100, 0xfe00_0000);
    fake.define_bar(bdf(), 1, mem32(), 0x1000, 0xfe00_1000);
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert!(probe.errors.is_empty());
    let granular: Vec<(u8, bool)> = probe
        .bars
        .iter()
        .map(|b| (b.index, b.is_page_granular()))
        .collect();
    assert_eq!(granular, [(0, false), (1, true)]);
}

/// The Expansion ROM BAR is sized with its enable bit clear and decode off, restored
/// exactly (enable bit included), and reported apart from the BARs.
#[test]
fn expansion_rom_is_probed_with_enable_clear_and_restored() {
    let fake = device();
    fake.define_bar(bdf(), 0, mem32(), 0x1000, 0xfe00_0000);
    fake.define_expansion_rom(bdf(), 256 << 10, 0xfea8_0000, true);
    fake.poke16(bdf(), header::COMMAND, Command::MEMORY_SPACE.bits());
    let rom_offset = header::EXPANSION_ROM;
    let before = fake.peek32(bdf(), rom_offset);
    fake.clear_writes();
    let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
    assert!(probe.errors.is_empty());
    assert_eq!(probe.bars.len(), 1);
    assert_eq!(
        probe.expansion_rom,
        Some(ExpansionRom {
            offset: rom_offset,
            bus_address: 0xfea8_0000,
            phys_address: 0xfea8_0000,
            size: 256 << 10,
            enabled: true,
            bus_offset: BusOffset(0),
        })
    );
    assert_eq!(fake.peek32(bdf(), rom_offset), before);
    let rom_writes: Vec<ConfigWrite> = fake
        .writes()
        .into_iter()
        .filter(|w| w.offset == rom_offset)
        .collect();
    assert_eq!(rom_writes.len(), 2, "{rom_writes:?}");
    assert_eq!(rom_writes[0].value, rom_bits::ADDRESS_MASK);
    assert_eq!(rom_writes[0].value & rom_bits::ENABLE, 0);
    assert_eq!(rom_writes[1].value, before);
    assert!(rom_writes
        .iter()
        .all(|w| w.command_before & Command::DECODE.bits() == 0));
    // No ROM: nothing reported.
    let plain = Bdf::new(0, 0, 5, 0).unwrap();
    fake.add_endpoint(plain, 0x1234, 0x11e8, 0);
    assert_eq!(
        probe_bars(&fake, plain, HeaderLayout::Endpoint, &[], false).expansion_rom,
        None
    );
}

/// A bridge's ROM register is at 0x38; 0x30 is its I/O Base Upper and is not touched.
#[test]
fn bridge_expansion_rom_is_at_0x38_and_checked_like_a_bar() {
    let fake = FakeConfigSpace::new();
    let bridge = Bdf::new(0, 0, 4, 0).unwrap();
    fake.add_bridge(bridge, 0x1b36, 0x000c, 0, 1, 1);
    fake.define_expansion_rom(bridge, 0x8000, 0xfe00_0000, false);
    fake.clear_writes();
    let probe = probe_bars(&fake, bridge, HeaderLayout::PciBridge, &[], false);
    let rom = probe.expansion_rom.unwrap();
    assert_eq!(
        (rom.offset, rom.bus_address, rom.size, rom.enabled),
        (
            crate::regs::bridge::EXPANSION_ROM,
            0xfe00_0000,
            0x8000,
            false
        )
    );
    assert!(fake
        .writes()
        .iter()
        .all(|w| w.offset != crate::regs::bridge::IO_BASE_UPPER));
    // A misaligned ROM is refused like a BAR.
    fake.define_expansion_rom(bridge, 0x8000, 0xfe00_4000, false);
    let probe = probe_bars(&fake, bridge, HeaderLayout::PciBridge, &[], false);
    assert_eq!(probe.expansion_rom, None);
    assert_eq!(
        probe.errors,
        [BarError::Misaligned {
            index: EXPANSION_ROM_INDEX,
            bus_address: 0xfe00_4000,
            phys_address: 0xfe00_4000,
            size: 0x8000
        }]
    );
    assert!(probe.errors[0].to_string().starts_with("ROM: "));
    // Other layouts have no ROM register.
    assert_eq!(
        probe_bars(&fake, bridge, HeaderLayout::CardBusBridge, &[], false),
        BarProbe::default()
    );
}

#[test]
fn unimplemented_bars_are_skipped() {
    let fake = device();
    assert_eq!(
        probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false),
        BarProbe::default()
    );
}

/// On the QEMU `default` capture, enumeration finds the ROMs of std VGA (64 KiB) and e1000e
/// (256 KiB) where SeaBIOS programmed them (enable bit clear), and none elsewhere.
#[test]
fn qemu_fixture_expansion_roms() {
    let fake = FakeConfigSpace::from_qemu_fixture(include_str!("../../tests/fixtures/default.cfg"))
        .unwrap();
    let region = crate::McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap();
    let topo = crate::enumerate(&fake, &[region]);
    assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
    let roms: Vec<(u16, u16, u64, u64, bool)> = topo
        .functions()
        .iter()
        .filter_map(|f| {
            let r = f.expansion_rom?;
            Some((f.vendor_id, f.device_id, r.bus_address, r.size, r.enabled))
        })
        .collect();
    let address = |bdf: &str| {
        u64::from(fake.peek32(bdf.parse().unwrap(), header::EXPANSION_ROM) & rom_bits::ADDRESS_MASK)
    };
    assert_eq!(
        roms,
        [
            (0x1234, 0x1111, address("00:01.0"), 64 << 10, false),
            (0x8086, 0x10d3, address("00:02.0"), 256 << 10, false)
        ]
    );
    assert!(roms.iter().all(|r| r.2 != 0));
    assert!(topo.to_string().contains(&alloc::format!(
        "ROM {:#x} size 256K (disabled)",
        address("00:02.0")
    )));
}

/// The fake refuses to define a bridge BAR that does not exist: BAR2 of a type-1 header
/// would be the bus-number register.
#[test]
#[should_panic(expected = "has 2 BAR slot(s), not slot 2")]
fn fake_define_bar_refuses_a_bridge_slot_past_bar1() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(), 0x1b36, 0x000c, 0, 1, 1);
    fake.define_bar(bdf(), 2, mem32(), 0x1000, 0xfe00_0000);
}

/// A 64-bit BAR1 of a bridge has no register for its upper half (offset 0x18 holds the bus
/// numbers): the fake refuses an address that needs one instead of overwriting them.
#[test]
#[should_panic(expected = "no register for its upper half")]
fn fake_define_bar_refuses_a_bridge_bar1_upper_half() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(), 0x1b36, 0x000c, 0, 1, 1);
    let kind = BarKind::Memory64 {
        prefetchable: false,
    };
    fake.define_bar(bdf(), 1, kind, 0x1000, 0x8_0000_0000);
}

/// A 64-bit BAR0 of a bridge uses BAR1 as its upper half, and the bus numbers stay.
#[test]
fn fake_define_bar_bridge_bar0_sixty_four_bit() {
    let fake = FakeConfigSpace::new();
    fake.add_bridge(bdf(), 0x1b36, 0x000c, 0, 1, 3);
    let kind = BarKind::Memory64 { prefetchable: true };
    fake.define_bar(bdf(), 0, kind, 0x4000, 0x8_0000_4000);
    assert_eq!(fake.peek32(bdf(), header::bar(1)), 8);
    assert_eq!(
        fake.peek32(bdf(), crate::regs::bridge::PRIMARY_BUS),
        0x03_01_00
    );
    let probe = probe_bars(&fake, bdf(), HeaderLayout::PciBridge, &[], false);
    assert_eq!(
        probe
            .bars
            .iter()
            .map(|b| (b.index, b.bus_address, b.size))
            .collect::<Vec<_>>(),
        [(0, 0x8_0000_4000, 0x4000)]
    );
    assert_eq!(
        fake.peek32(bdf(), crate::regs::bridge::PRIMARY_BUS),
        0x03_01_00
    );
}

#[test]
#[should_panic(expected = "no function at")]
fn fake_define_bar_refuses_an_absent_function() {
    FakeConfigSpace::new().define_bar(bdf(), 0, mem32(), 0x1000, 0);
}

proptest! {
    #[test]
    fn probe_finds_the_emulated_size(
        log2 in 4u32..40, kind in 0u8..4, slot in 0u8..5, address_bits: u64,
    ) {
        let kind = match kind {
            0 => BarKind::Io,
            1 => BarKind::Memory32 { prefetchable: false },
            2 => BarKind::Memory64 { prefetchable: false },
            _ => BarKind::Memory64 { prefetchable: true },
        };
        let (log2, limit) = match kind {
            BarKind::Io => (log2.min(8), 1u64 << 16),
            BarKind::Memory32 { .. } => (log2.min(31), 1u64 << 32),
            BarKind::Memory64 { .. } => (log2, 1u64 << 48),
        };
        let size = 1u64 << log2;
        let address = (address_bits % limit) & !(size - 1);
        let fake = device();
        fake.define_bar(bdf(), slot, kind, size, address);
        let probe = probe_bars(&fake, bdf(), HeaderLayout::Endpoint, &[], false);
        prop_assert!(probe.errors.is_empty());
        prop_assert_eq!(probe.bars.len(), 1);
        prop_assert_eq!((probe.bars[0].index, probe.bars[0].kind), (slot, kind));
        prop_assert_eq!((probe.bars[0].size, probe.bars[0].bus_address), (size, address));
    }
}
