//! Host tests of resets, power states and configuration save/restore against the emulated
//! configuration space.

use super::ready::find_capability;
use super::*;
use crate::regs::{
    acs, bridge, header, msi, pcie, pm, AcsFlags, BridgeControl, CapabilityId, Command,
    ExtendedCapabilityId,
};
use crate::regs::{DevicePortType, Status};
use crate::testing::FakeConfigSpace;
use crate::{enumerate, BarKind, McfgRegion};
use alloc::vec::Vec;

const COMPLEX_CFG: &str = include_str!("../../tests/fixtures/complex.cfg");
const DEFAULT_CFG: &str = include_str!("../../tests/fixtures/default.cfg");

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
    fake.poke8(ep, header::CACHE_LINE_SIZE, 0x10);
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
    assert_eq!(fake.read8(ep, header::CACHE_LINE_SIZE), 0);
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
        pcie::DEVSTA_TRANSACTIONS_PENDING,
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
