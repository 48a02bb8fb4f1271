//! Base Address Registers: decoding, size probing and CPU/bus address translation (PCI Local
//! Bus 3.0 §6.2.5.1, PCIe Base 4.0 §7.5.1.2.1).
//!
//! A BAR holds a *bus* address: the address the device decodes on PCI. The CPU reaches it at a
//! *CPU physical* address; the two differ when the host bridge translates its windows (common on
//! arm64 and POWER, never on x86 PCs, where `bus_offset` is 0). The difference, `bus_offset =
//! bus - phys`, is what a peer-to-peer transfer that stays inside a switch must add to a CPU
//! physical address to get the address to program into the initiating device.

use alloc::vec::Vec;
use core::fmt;

use crate::regs::{bar_bits, header, Command};
use crate::{Bdf, ConfigSpace};

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// I/O space (x86 port I/O).
    Io,
    /// Memory space, 32-bit decoder (also the pre-3.0 "below 1 MiB" type).
    Memory32 {
        /// Prefetchable: reads have no side effects, writes may be merged.
        prefetchable: bool,
    },
    /// Memory space, 64-bit decoder occupying this slot and the next.
    Memory64 {
        /// Prefetchable: reads have no side effects, writes may be merged.
        prefetchable: bool,
    },
}

impl BarKind {
    /// Whether this is a memory BAR (the only kind a peer-to-peer provider can be).
    pub const fn is_memory(self) -> bool {
        !matches!(self, Self::Io)
    }

    /// How many BAR slots the register uses.
    pub const fn slots(self) -> u8 {
        match self {
            Self::Memory64 { .. } => 2,
            _ => 1,
        }
    }

    /// The hardwired low bits of the register for this kind.
    pub const fn flag_bits(self) -> u32 {
        match self {
            Self::Io => bar_bits::IO_SPACE,
            Self::Memory32 { prefetchable } => {
                bar_bits::MEMORY_TYPE_32
                    | if prefetchable {
                        bar_bits::PREFETCHABLE
                    } else {
                        0
                    }
            }
            Self::Memory64 { prefetchable } => {
                bar_bits::MEMORY_TYPE_64
                    | if prefetchable {
                        bar_bits::PREFETCHABLE
                    } else {
                        0
                    }
            }
        }
    }
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, prefetchable) = match self {
            Self::Io => return f.write_str("io"),
            Self::Memory32 { prefetchable } => ("mem32", prefetchable),
            Self::Memory64 { prefetchable } => ("mem64", prefetchable),
        };
        f.write_str(name)?;
        if *prefetchable {
            f.write_str(" pref")?;
        }
        Ok(())
    }
}

/// Bus address minus CPU physical address, as a two's-complement 64-bit value.
///
/// Stored wrapped rather than as `i64` so that any pair of 64-bit addresses has an offset:
/// `phys.wrapping_add(offset)` always gives back the bus address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BusOffset(pub u64);

impl BusOffset {
    /// The offset between `bus` and `phys`.
    pub const fn between(bus: u64, phys: u64) -> Self {
        Self(bus.wrapping_sub(phys))
    }

    /// The bus address of CPU physical address `phys`.
    pub const fn to_bus(self, phys: u64) -> u64 {
        phys.wrapping_add(self.0)
    }

    /// The CPU physical address of bus address `bus`.
    pub const fn to_phys(self, bus: u64) -> u64 {
        bus.wrapping_sub(self.0)
    }

    /// The offset as a signed value (for display; wraps for offsets beyond ±2^63).
    pub const fn as_signed(self) -> i64 {
        self.0 as i64
    }
}

/// A host-bridge aperture that translates addresses: CPU physical `cpu_address..+size` appears
/// on the PCI side of segment `segment` at `bus_address..+size` (an ACPI `_CRS` descriptor with
/// a translation offset, or a device-tree `ranges` entry).
///
/// Windows are matched by segment and bus address. Memory BARs outside every window are
/// identity-mapped (bus_offset 0), which is what x86 firmware describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostBridgeWindow {
    /// The segment group the window belongs to.
    pub segment: u16,
    /// First CPU physical address.
    pub cpu_address: u64,
    /// First bus address.
    pub bus_address: u64,
    /// Size in bytes.
    pub size: u64,
}

impl HostBridgeWindow {
    /// Whether the bus range `bus..bus+size` lies entirely inside the window.
    pub fn contains_bus_range(&self, segment: u16, bus: u64, size: u64) -> bool {
        let Some(offset) = bus.checked_sub(self.bus_address) else {
            return false;
        };
        segment == self.segment && offset < self.size && size <= self.size - offset
    }

    /// The window's bus offset.
    pub const fn bus_offset(&self) -> BusOffset {
        BusOffset::between(self.bus_address, self.cpu_address)
    }
}

/// One implemented BAR of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bar {
    /// Slot index (0-5; for a 64-bit BAR, the slot holding the low dword).
    pub index: u8,
    /// The BAR's kind.
    pub kind: BarKind,
    /// The address programmed in the register: the bus address.
    pub bus_address: u64,
    /// The CPU physical address the BAR is reached at.
    pub phys_address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// `bus_address - phys_address`.
    pub bus_offset: BusOffset,
}

impl Bar {
    /// Whether firmware left the BAR unassigned (address 0).
    pub const fn is_unassigned(&self) -> bool {
        self.bus_address == 0
    }
}

/// A BAR slot whose contents cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// Memory type 11b, reserved.
    ReservedMemoryType {
        /// Slot index.
        index: u8,
    },
    /// A 64-bit BAR in the last slot has no slot for its upper half.
    Memory64InLastSlot {
        /// Slot index.
        index: u8,
    },
    /// Address + size overflows the decoder (64-bit space, or 4 GiB for a 32-bit BAR).
    RangeOverflow {
        /// Slot index.
        index: u8,
        /// The bus address.
        bus_address: u64,
        /// The probed size.
        size: u64,
    },
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedMemoryType { index } => write!(f, "BAR{index}: reserved memory type"),
            Self::Memory64InLastSlot { index } => {
                write!(f, "BAR{index}: 64-bit BAR in the last slot")
            }
            Self::RangeOverflow {
                index,
                bus_address,
                size,
            } => {
                write!(
                    f,
                    "BAR{index}: {bus_address:#x} + {size:#x} overflows its decoder"
                )
            }
        }
    }
}

impl core::error::Error for BarError {}

/// The result of probing a function's BARs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BarProbe {
    /// Implemented BARs, in slot order. Unimplemented slots (size 0) are absent.
    pub bars: Vec<Bar>,
    /// Slots that could not be decoded.
    pub errors: Vec<BarError>,
}

/// Writes all-ones to a BAR register, reads the mask back and restores the original value.
fn size_mask(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16, original: u32) -> u32 {
    cfg.write32(bdf, offset, u32::MAX);
    let mask = cfg.read32(bdf, offset);
    cfg.write32(bdf, offset, original);
    mask
}

/// Size probing of the BARs of one function (PCI Local Bus 3.0 §6.2.5.1).
///
/// `slots` is 6 for a type-0 header and 2 for a bridge. Address decoding (Command.IO_SPACE and
/// MEMORY_SPACE) is turned off while a BAR holds all-ones, so the device never decodes a bogus
/// range, and the Command register and every BAR are restored afterwards. With
/// `keep_decode_enabled` the Command register is left alone: Linux does this for host bridges
/// (`mmio_always_on`), where turning decode off can cut the CPU off from memory.
///
/// Do not probe a function a driver is using: its BARs move to all-ones for a moment.
pub fn probe_bars(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    slots: u8,
    windows: &[HostBridgeWindow],
    keep_decode_enabled: bool,
) -> BarProbe {
    let mut probe = BarProbe::default();
    let slots = slots.min(header::TYPE0_BAR_COUNT);
    let command = cfg.read16(bdf, header::COMMAND);
    let decode = Command::from_bits_retain(command).intersects(Command::DECODE);
    let disable = decode && !keep_decode_enabled;
    if disable {
        cfg.write16(bdf, header::COMMAND, command & !Command::DECODE.bits());
    }
    let mut index = 0;
    while index < slots {
        let offset = header::bar(index);
        let low = cfg.read32(bdf, offset);
        let this = index;
        index += 1;
        let (kind, bus_address, mask) = if low & bar_bits::IO_SPACE != 0 {
            let mask = size_mask(cfg, bdf, offset, low) & bar_bits::IO_ADDRESS_MASK;
            (
                BarKind::Io,
                u64::from(low & bar_bits::IO_ADDRESS_MASK),
                u64::from(mask),
            )
        } else {
            let prefetchable = low & bar_bits::PREFETCHABLE != 0;
            match low & bar_bits::MEMORY_TYPE_MASK {
                bar_bits::MEMORY_TYPE_64 => {
                    if this + 1 >= slots {
                        probe
                            .errors
                            .push(BarError::Memory64InLastSlot { index: this });
                        continue;
                    }
                    index += 1;
                    let high_offset = header::bar(this + 1);
                    let high = cfg.read32(bdf, high_offset);
                    let low_mask = size_mask(cfg, bdf, offset, low);
                    let high_mask = size_mask(cfg, bdf, high_offset, high);
                    let address =
                        u64::from(high) << 32 | u64::from(low & bar_bits::MEMORY_ADDRESS_MASK);
                    let mask = u64::from(high_mask) << 32
                        | u64::from(low_mask & bar_bits::MEMORY_ADDRESS_MASK);
                    (BarKind::Memory64 { prefetchable }, address, mask)
                }
                bar_bits::MEMORY_TYPE_32 | bar_bits::MEMORY_TYPE_BELOW_1M => {
                    let mask = size_mask(cfg, bdf, offset, low) & bar_bits::MEMORY_ADDRESS_MASK;
                    let address = u64::from(low & bar_bits::MEMORY_ADDRESS_MASK);
                    (BarKind::Memory32 { prefetchable }, address, u64::from(mask))
                }
                _ => {
                    probe
                        .errors
                        .push(BarError::ReservedMemoryType { index: this });
                    continue;
                }
            }
        };
        // The size is the lowest address bit that reads back as 1; nothing writable means the
        // BAR is not implemented. (Upper bits may read back 0, e.g. 16-bit I/O decoders.)
        if mask == 0 {
            continue;
        }
        let size = 1u64 << mask.trailing_zeros();
        let limit = match kind {
            BarKind::Memory64 { .. } => u64::MAX,
            _ => u64::from(u32::MAX),
        };
        if bus_address > limit - (size - 1) {
            probe.errors.push(BarError::RangeOverflow {
                index: this,
                bus_address,
                size,
            });
            continue;
        }
        let bus_offset = match kind {
            // Port I/O is not translated by memory windows.
            BarKind::Io => BusOffset(0),
            _ => windows
                .iter()
                .find(|w| w.contains_bus_range(bdf.segment(), bus_address, size))
                .map_or(BusOffset(0), HostBridgeWindow::bus_offset),
        };
        probe.bars.push(Bar {
            index: this,
            kind,
            bus_address,
            phys_address: bus_offset.to_phys(bus_address),
            size,
            bus_offset,
        });
    }
    if disable {
        cfg.write16(bdf, header::COMMAND, command);
    }
    probe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ConfigWrite, FakeConfigSpace};
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
        let probe = probe_bars(&fake, bdf(), 6, &[], false);
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
        let probe = probe_bars(&fake, bdf(), 6, &[], false);
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

        let probe = probe_bars(&fake, bdf(), 6, &[], false);
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
        let probe = probe_bars(&fake, bdf(), 6, &[], true);
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
        let probe = probe_bars(&fake, bdf(), 6, &[window], false);
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
            probe_bars(&fake, bdf(), 6, &[other], false).bars[0].bus_offset,
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
        let probe = probe_bars(&fake, bdf(), 6, &[], false);
        assert_eq!(
            probe.errors,
            [
                BarError::ReservedMemoryType { index: 0 },
                BarError::Memory64InLastSlot { index: 5 }
            ]
        );
        // A bridge has two slots: a 64-bit BAR in slot 1 is in its last slot.
        fake.define_bar(
            bdf(),
            1,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x1000,
            0x1000,
        );
        let probe = probe_bars(&fake, bdf(), 2, &[], false);
        assert!(probe
            .errors
            .contains(&BarError::Memory64InLastSlot { index: 1 }));
    }

    #[test]
    fn unimplemented_bars_are_skipped() {
        let fake = device();
        assert_eq!(probe_bars(&fake, bdf(), 6, &[], false), BarProbe::default());
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
            let probe = probe_bars(&fake, bdf(), 6, &[], false);
            prop_assert!(probe.errors.is_empty());
            prop_assert_eq!(probe.bars.len(), 1);
            prop_assert_eq!((probe.bars[0].index, probe.bars[0].kind), (slot, kind));
            prop_assert_eq!((probe.bars[0].size, probe.bars[0].bus_address), (size, address));
        }
    }
}
