//! Base Address Registers and the Expansion ROM BAR: decoding, size probing and CPU/bus address
//! translation (PCI Local Bus 3.0 §6.2.5.1 and §6.2.5.2, PCIe Base 4.0 §7.5.1.2.1).
//!
//! Input from a device is checked before anything trusts it: a BAR whose range overflows its
//! decoder, or whose bus address (or CPU physical address after host-bridge translation) is
//! not a multiple of its size, is refused: reported in [`BarProbe::errors`] and left out of
//! [`BarProbe::bars`], so no driver, P2P provider or export is ever built from it. (A
//! conforming decoder hardwires the address bits below its size to 0; a BAR that reads back
//! otherwise decodes something nobody can name, and a page-granular mapping of the claimed
//! range would reach the neighbouring page, which may be another device's MMIO.) Sub-page
//! memory BARs are valid and listed, but [`Bar::is_page_granular`] is false for them: the rest
//! of their page is not theirs, so `crate::p2p` never makes them providers.
//!
//! A BAR holds a *bus* address: the address the device decodes on PCI. The CPU reaches it at a
//! *CPU physical* address; the two differ when the host bridge translates its windows (common on
//! arm64 and POWER, never on x86 PCs, where `bus_offset` is 0). The difference, `bus_offset =
//! bus - phys`, is what a peer-to-peer transfer that stays inside a switch must add to a CPU
//! physical address to get the address to program into the initiating device.

use alloc::vec::Vec;
use core::fmt;

use crate::regs::{bar_bits, header, rom_bits, Command, HeaderLayout};
use crate::{Bdf, ConfigSpace};

/// The slot index [`BarError`] uses for the Expansion ROM BAR (Linux's `PCI_ROM_RESOURCE`): one
/// past the last BAR of a type-0 header, so it never names a BAR.
pub const EXPANSION_ROM_INDEX: u8 = header::TYPE0_BAR_COUNT;

/// The granule of every mapping made of a BAR (an IOMMU or CPU page).
pub const PAGE_SIZE: u64 = dma::PAGE_SIZE;

/// `BAR<n>`, or `ROM` for [`EXPANSION_ROM_INDEX`].
struct SlotName(u8);

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == EXPANSION_ROM_INDEX {
            f.write_str("ROM")
        } else {
            write!(f, "BAR{}", self.0)
        }
    }
}

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

    /// Whether the BAR covers whole pages only: at least [`PAGE_SIZE`] bytes, with bus and CPU
    /// physical addresses aligned to its size (so to a page). Only such a BAR can be mapped
    /// page by page without exposing bytes it does not decode; a sub-page BAR (QEMU's 256-byte
    /// SHPC and `ivshmem` register BARs) shares its page with whatever firmware put next to it.
    pub const fn is_page_granular(&self) -> bool {
        self.size >= PAGE_SIZE
            && self.bus_address & (self.size - 1) == 0
            && self.phys_address & (self.size - 1) == 0
    }
}

/// A function's Expansion ROM BAR (PCI Local Bus 3.0 §6.2.5.2): a 32-bit memory decoder,
/// read-only memory, that decodes only while its enable bit and Command.Memory Space are set.
///
/// Why not a [`Bar`] with its own [`BarKind`]: it sits outside the BAR slots (0x30 in a type-0
/// header, 0x38 in a type-1 header), has an enable bit, and is never a P2P provider; code that
/// walks `bars` (drivers, providers, the kernel's listing) must not meet it by accident. What
/// it shares with BARs, reserving its range in IOVA space, code does on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExpansionRom {
    /// Offset of the register in configuration space.
    pub offset: u16,
    /// The address programmed in the register: the bus address.
    pub bus_address: u64,
    /// The CPU physical address the ROM is reached at.
    pub phys_address: u64,
    /// Size in bytes (a power of two, at least 2 KiB).
    pub size: u64,
    /// Expansion ROM Enable (bit 0) at probe time.
    pub enabled: bool,
    /// `bus_address - phys_address`.
    pub bus_offset: BusOffset,
}

impl ExpansionRom {
    /// Whether firmware left the ROM unassigned (address 0).
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
    /// Address + size overflows the decoder (64-bit space, or 4 GiB for a 32-bit BAR), or the
    /// CPU physical range a host-bridge window translates it to overflows 64 bits.
    RangeOverflow {
        /// Slot index ([`EXPANSION_ROM_INDEX`] for the ROM).
        index: u8,
        /// The bus address.
        bus_address: u64,
        /// The probed size.
        size: u64,
    },
    /// The bus address, or the CPU physical address a host-bridge window translates it to, is
    /// not a multiple of the size: a conforming decoder hardwires those bits to 0, so the device
    /// (or the window) is lying, and a mapping of the claimed range would reach past it.
    Misaligned {
        /// Slot index ([`EXPANSION_ROM_INDEX`] for the ROM).
        index: u8,
        /// The bus address read from the register.
        bus_address: u64,
        /// The CPU physical address it translates to.
        phys_address: u64,
        /// The probed size.
        size: u64,
    },
}

impl BarError {
    /// The slot the error is about ([`EXPANSION_ROM_INDEX`] for the ROM).
    pub const fn index(&self) -> u8 {
        match *self {
            Self::ReservedMemoryType { index }
            | Self::Memory64InLastSlot { index }
            | Self::RangeOverflow { index, .. }
            | Self::Misaligned { index, .. } => index,
        }
    }

    /// The range a refused memory decoder may still claim, for reserving it in IOVA space: for
    /// a misaligned BAR, the naturally aligned blocks of its size covering the claimed range
    /// (what a decoder ignoring the stray low bits decodes, and what the register claims).
    /// `None` when nothing can be said (or the range is I/O space: the caller knows the kind).
    pub fn claimed_bus_range(&self) -> Option<(u64, u64)> {
        match *self {
            Self::Misaligned {
                bus_address, size, ..
            } => {
                let start = bus_address & !(size - 1);
                let end = bus_address
                    .checked_add(size)?
                    .checked_next_multiple_of(size)?;
                Some((start, end - start))
            }
            _ => None,
        }
    }
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedMemoryType { index } => {
                write!(f, "{}: reserved memory type", SlotName(*index))
            }
            Self::Memory64InLastSlot { index } => {
                write!(f, "{}: 64-bit BAR in the last slot", SlotName(*index))
            }
            Self::RangeOverflow {
                index,
                bus_address,
                size,
            } => {
                write!(
                    f,
                    "{}: {bus_address:#x} + {size:#x} overflows its decoder",
                    SlotName(*index)
                )
            }
            Self::Misaligned {
                index,
                bus_address,
                phys_address,
                size,
            } => {
                write!(
                    f,
                    "{}: bus {bus_address:#x} (CPU {phys_address:#x}) is not aligned to its size \
                     {size:#x}; refused",
                    SlotName(*index)
                )
            }
        }
    }
}

impl core::error::Error for BarError {}

/// The result of probing a function's BARs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BarProbe {
    /// Implemented BARs, in slot order. Unimplemented slots (size 0) and refused ones (see
    /// [`BarProbe::errors`]) are absent.
    pub bars: Vec<Bar>,
    /// The Expansion ROM BAR, if implemented and not refused.
    pub expansion_rom: Option<ExpansionRom>,
    /// Slots that could not be decoded or were refused.
    pub errors: Vec<BarError>,
}

/// Writes all-ones to a BAR register, reads the mask back and restores the original value.
fn size_mask(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16, original: u32) -> u32 {
    cfg.write32(bdf, offset, u32::MAX);
    let mask = cfg.read32(bdf, offset);
    cfg.write32(bdf, offset, original);
    mask
}

/// Checks a probed decoder range and translates it: refuses (`Err`) a range that overflows its
/// decoder or 64-bit CPU space, and one whose bus or CPU physical address is not a multiple of
/// its size.
fn decoded_range(
    bdf: Bdf,
    index: u8,
    bus_address: u64,
    size: u64,
    limit: u64,
    translated: bool,
    windows: &[HostBridgeWindow],
) -> Result<(u64, BusOffset), BarError> {
    let overflow = BarError::RangeOverflow {
        index,
        bus_address,
        size,
    };
    if bus_address > limit - (size - 1) {
        return Err(overflow);
    }
    let bus_offset = if translated {
        windows
            .iter()
            .find(|w| w.contains_bus_range(bdf.segment(), bus_address, size))
            .map_or(BusOffset(0), HostBridgeWindow::bus_offset)
    } else {
        BusOffset(0)
    };
    let phys_address = bus_offset.to_phys(bus_address);
    if phys_address.checked_add(size - 1).is_none() {
        return Err(overflow);
    }
    if (bus_address | phys_address) & (size - 1) != 0 {
        return Err(BarError::Misaligned {
            index,
            bus_address,
            phys_address,
            size,
        });
    }
    Ok((phys_address, bus_offset))
}

/// Sizes the Expansion ROM BAR at `offset` (PCI Local Bus 3.0 §6.2.5.2): writes the address
/// mask with the enable bit clear (so the ROM never decodes all-ones), reads it back and
/// restores the original value.
fn probe_expansion_rom(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    offset: u16,
    windows: &[HostBridgeWindow],
) -> Result<Option<ExpansionRom>, BarError> {
    let original = cfg.read32(bdf, offset);
    cfg.write32(bdf, offset, rom_bits::ADDRESS_MASK);
    let mask = cfg.read32(bdf, offset) & rom_bits::ADDRESS_MASK;
    cfg.write32(bdf, offset, original);
    if mask == 0 {
        return Ok(None);
    }
    let size = 1u64 << mask.trailing_zeros();
    let bus_address = u64::from(original & rom_bits::ADDRESS_MASK);
    let (phys_address, bus_offset) = decoded_range(
        bdf,
        EXPANSION_ROM_INDEX,
        bus_address,
        size,
        u64::from(u32::MAX),
        true,
        windows,
    )?;
    Ok(Some(ExpansionRom {
        offset,
        bus_address,
        phys_address,
        size,
        enabled: original & rom_bits::ENABLE != 0,
        bus_offset,
    }))
}

/// Size probing of the BARs and the Expansion ROM BAR of one function (PCI Local Bus 3.0
/// §6.2.5.1 and §6.2.5.2).
///
/// `layout` says where they are: six BARs and the ROM at 0x30 for a type-0 header, two BARs
/// and the ROM at 0x38 for a bridge, nothing for the other layouts. Address decoding
/// (Command.IO_SPACE and MEMORY_SPACE) is turned off while a BAR holds all-ones, so the device
/// never decodes a bogus range, and the Command register and every BAR are restored
/// afterwards. With `keep_decode_enabled` the Command register is left alone: Linux does this
/// for host bridges (`mmio_always_on`), where turning decode off can cut the CPU off from
/// memory (the ROM is still sized with its enable bit clear).
///
/// Refused, reported in [`BarProbe::errors`] and left out of the result: reserved memory
/// types, a 64-bit BAR in the last slot, ranges that overflow, and misaligned addresses (see
/// the module documentation).
///
/// Do not probe a function a driver is using: its BARs move to all-ones for a moment.
pub fn probe_bars(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
    layout: HeaderLayout,
    windows: &[HostBridgeWindow],
    keep_decode_enabled: bool,
) -> BarProbe {
    let mut probe = BarProbe::default();
    let slots = layout.bar_count().min(header::TYPE0_BAR_COUNT);
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
        // Port I/O is not translated by memory windows.
        let translated = kind.is_memory();
        match decoded_range(bdf, this, bus_address, size, limit, translated, windows) {
            Ok((phys_address, bus_offset)) => probe.bars.push(Bar {
                index: this,
                kind,
                bus_address,
                phys_address,
                size,
                bus_offset,
            }),
            Err(error) => probe.errors.push(error),
        }
    }
    if let Some(offset) = layout.expansion_rom_offset() {
        match probe_expansion_rom(cfg, bdf, offset, windows) {
            Ok(rom) => probe.expansion_rom = rom,
            Err(error) => probe.errors.push(error),
        }
    }
    if disable {
        cfg.write16(bdf, header::COMMAND, command);
    }
    probe
}

#[cfg(test)]
mod tests;
