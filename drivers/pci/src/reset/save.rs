//! Configuration save and restore around a reset (PCI Local Bus 3.0 §6.2, PCI-to-PCI Bridge 1.2
//! §3.2, PCIe Base 4.0 §7.5.3, ACS §7.7.7, MSI §6.8.1): what a reset throws away, captured
//! before and written back after, BARs and windows first and the Command register last.

use super::error::ResetError;
use super::ready::{layout_of, present, vendor_device};
use crate::capability::{extended_capabilities, standard_capabilities};
use crate::regs::{
    acs, bridge, header, msi, msix, pcie, AcsFlags, BridgeControl, CapabilityId, Command,
    ExtendedCapabilityId, HeaderLayout,
};
use crate::{Bdf, ConfigSpace};

/// Bridge registers a reset clears (PCI-to-PCI Bridge 1.2 §3.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedBridge {
    /// 0x18: primary, secondary, subordinate bus, secondary latency timer.
    bus_numbers: u32,
    /// 0x1c, 0x1d: I/O base and limit (written as bytes: 0x1e is the RW1C Secondary Status).
    io_base: u8,
    io_limit: u8,
    /// 0x20: memory base and limit.
    memory: u32,
    /// 0x24: prefetchable base and limit.
    prefetchable: u32,
    /// 0x28, 0x2c: prefetchable base/limit upper 32 bits.
    prefetchable_base_upper: u32,
    prefetchable_limit_upper: u32,
    /// 0x30: I/O base/limit upper 16 bits.
    io_upper: u32,
    /// 0x3e: Bridge Control, without Secondary Bus Reset.
    control: u16,
}

/// PCI Express capability registers a reset clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedPcie {
    offset: u16,
    device_control: u16,
    link_control: u16,
    /// Device Control 2 and Link Control 2, capability version 2 only.
    control_2: Option<(u16, u16)>,
}

/// Dwords of the largest ACS Egress Control Vector (256 bits).
const ACS_EGRESS_DWORDS_MAX: usize = (acs::EGRESS_CONTROL_VECTOR_MAX_BITS / 32) as usize;

/// ACS extended capability registers a reset clears (PCIe Base 4.0 §7.7.7): the Control
/// register, raw (bits a newer revision defines included), and the Egress Control Vector when
/// P2P Egress Control is advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedAcs {
    offset: u16,
    control: u16,
    egress_vector: [u32; ACS_EGRESS_DWORDS_MAX],
    /// Dwords of `egress_vector` in use (0 without Egress Control).
    egress_dwords: u8,
}

impl SavedAcs {
    fn save(cfg: &impl ConfigSpace, bdf: Bdf, offset: u16) -> Option<Self> {
        // The registers must lie inside configuration space (a header at 0xffc cannot hold them).
        let end = |len: u16| {
            offset
                .checked_add(len)
                .filter(|&e| e <= crate::CONFIG_SPACE_SIZE)
        };
        end(acs::CONTROL + 2)?;
        let capability = cfg.read16(bdf, offset + acs::CAPABILITY);
        let mut saved = Self {
            offset,
            control: cfg.read16(bdf, offset + acs::CONTROL),
            egress_vector: [0; ACS_EGRESS_DWORDS_MAX],
            egress_dwords: 0,
        };
        if AcsFlags::from_bits_truncate(capability).contains(AcsFlags::EC) {
            let bits = match capability >> acs::EGRESS_CONTROL_VECTOR_SIZE_SHIFT {
                0 => acs::EGRESS_CONTROL_VECTOR_MAX_BITS,
                n => n,
            };
            let dwords = bits.div_ceil(32);
            if end(acs::EGRESS_CONTROL_VECTOR + 4 * dwords).is_some() {
                for (i, dword) in (0..dwords).zip(saved.egress_vector.iter_mut()) {
                    *dword = cfg.read32(bdf, offset + acs::EGRESS_CONTROL_VECTOR + 4 * i);
                }
                saved.egress_dwords = dwords as u8;
            }
        }
        Some(saved)
    }

    fn restore(&self, cfg: &impl ConfigSpace, bdf: Bdf) {
        for (i, &dword) in (0u16..).zip(&self.egress_vector[..usize::from(self.egress_dwords)]) {
            cfg.write32(bdf, self.offset + acs::EGRESS_CONTROL_VECTOR + 4 * i, dword);
        }
        cfg.write16(bdf, self.offset + acs::CONTROL, self.control);
    }
}

/// MSI registers (PCI Local Bus 3.0 §6.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SavedMsi {
    offset: u16,
    control: u16,
    address_low: u32,
    address_high: Option<u32>,
    data: u16,
    mask: Option<u32>,
}

impl SavedMsi {
    fn data_offset(&self) -> u16 {
        if self.control & msi::CONTROL_64BIT != 0 {
            msi::DATA_64
        } else {
            msi::DATA_32
        }
    }

    fn mask_offset(&self) -> u16 {
        if self.control & msi::CONTROL_64BIT != 0 {
            msi::MASK_64
        } else {
            msi::MASK_32
        }
    }
}

/// The configuration a reset destroys, captured from one function by [`SavedConfig::save`](crate::reset::SavedConfig::save).
///
/// Saved: every BAR dword (upper halves of 64-bit BARs included) and the expansion ROM, Command,
/// Cache Line Size, Latency Timer, Interrupt Line; for bridges the bus numbers, I/O, memory and
/// prefetchable windows and Bridge Control; PCI Express Device/Link Control (and the "2"
/// registers); MSI address/data/mask/enable and MSI-X enable/function mask; and of the
/// extended capabilities, ACS: the ACS Control register (every bit, raw) and, with P2P Egress
/// Control advertised, the Egress Control Vector, so an ACS isolation policy survives a reset.
/// Not saved: Status (RW1C), read-only identification, the MSI-X table (in a BAR), and every
/// other extended capability (AER masks and severities, LTR, L1 PM Substates, Resizable BAR,
/// ATS, PASID, PRI, SR-IOV): a function that needs them is reprogrammed by its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConfig {
    bdf: Bdf,
    id: (u16, u16),
    layout: HeaderLayout,
    command: Command,
    cache_line_size: u8,
    latency_timer: u8,
    interrupt_line: u8,
    bars: [u32; 6],
    bar_count: u8,
    expansion_rom: Option<u32>,
    bridge: Option<SavedBridge>,
    pcie: Option<SavedPcie>,
    msi: Option<SavedMsi>,
    msix: Option<(u16, u16)>,
    acs: Option<SavedAcs>,
}

impl SavedConfig {
    /// Captures the function's configuration.
    ///
    /// # Errors
    ///
    /// [`ResetError::NotPresent`] when nothing answers at `bdf`.
    pub fn save(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<Self, ResetError> {
        present(cfg, bdf)?;
        let layout = layout_of(cfg, bdf);
        let bar_count = layout.bar_count().min(header::TYPE0_BAR_COUNT);
        let mut bars = [0; 6];
        for (index, bar) in bars.iter_mut().enumerate().take(usize::from(bar_count)) {
            *bar = cfg.read32(bdf, header::bar(index as u8));
        }
        let expansion_rom = layout
            .expansion_rom_offset()
            .map(|offset| cfg.read32(bdf, offset));
        let bridge = (layout == HeaderLayout::PciBridge).then(|| SavedBridge {
            bus_numbers: cfg.read32(bdf, bridge::PRIMARY_BUS),
            io_base: cfg.read8(bdf, bridge::IO_BASE),
            io_limit: cfg.read8(bdf, bridge::IO_LIMIT),
            memory: cfg.read32(bdf, bridge::MEMORY_BASE),
            prefetchable: cfg.read32(bdf, bridge::PREFETCHABLE_MEMORY_BASE),
            prefetchable_base_upper: cfg.read32(bdf, bridge::PREFETCHABLE_BASE_UPPER),
            prefetchable_limit_upper: cfg.read32(bdf, bridge::PREFETCHABLE_LIMIT_UPPER),
            io_upper: cfg.read32(bdf, bridge::IO_BASE_UPPER),
            control: (BridgeControl::from_bits_retain(cfg.read16(bdf, bridge::BRIDGE_CONTROL))
                - BridgeControl::SECONDARY_BUS_RESET)
                .bits(),
        });
        let caps = standard_capabilities(cfg, bdf).entries;
        let find = |id: CapabilityId| {
            caps.iter()
                .find(|c| c.id == id)
                .map(|c| u16::from(c.offset))
        };
        let pcie = find(CapabilityId::PCI_EXPRESS).map(|offset| {
            let version = cfg.read16(bdf, offset + pcie::CAPABILITIES) & pcie::CAP_VERSION_MASK;
            SavedPcie {
                offset,
                device_control: cfg.read16(bdf, offset + pcie::DEVICE_CONTROL)
                    & !pcie::DEVCTL_INITIATE_FLR,
                link_control: cfg.read16(bdf, offset + pcie::LINK_CONTROL),
                control_2: (version >= pcie::VERSION_WITH_CONTROL_2).then(|| {
                    (
                        cfg.read16(bdf, offset + pcie::DEVICE_CONTROL_2),
                        cfg.read16(bdf, offset + pcie::LINK_CONTROL_2),
                    )
                }),
            }
        });
        let msi = find(CapabilityId::MSI).map(|offset| {
            let control = cfg.read16(bdf, offset + msi::CONTROL);
            let mut saved = SavedMsi {
                offset,
                control,
                address_low: cfg.read32(bdf, offset + msi::ADDRESS_LOW),
                address_high: (control & msi::CONTROL_64BIT != 0)
                    .then(|| cfg.read32(bdf, offset + msi::ADDRESS_HIGH)),
                data: 0,
                mask: None,
            };
            saved.data = cfg.read16(bdf, offset + saved.data_offset());
            if control & msi::CONTROL_PER_VECTOR_MASKING != 0 {
                saved.mask = Some(cfg.read32(bdf, offset + saved.mask_offset()));
            }
            saved
        });
        let msix = find(CapabilityId::MSI_X).map(|offset| {
            let control = cfg.read16(bdf, offset + msix::CONTROL);
            (
                offset,
                control & (msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK),
            )
        });
        let acs = extended_capabilities(cfg, bdf)
            .entries
            .iter()
            .find(|c| c.id == ExtendedCapabilityId::ACS)
            .and_then(|c| SavedAcs::save(cfg, bdf, c.offset));
        Ok(Self {
            bdf,
            id: vendor_device(cfg, bdf),
            layout,
            command: Command::from_bits_retain(cfg.read16(bdf, header::COMMAND)),
            cache_line_size: cfg.read8(bdf, header::CACHE_LINE_SIZE),
            latency_timer: cfg.read8(bdf, header::LATENCY_TIMER),
            interrupt_line: cfg.read8(bdf, header::INTERRUPT_LINE),
            bars,
            bar_count,
            expansion_rom,
            bridge,
            pcie,
            msi,
            msix,
            acs,
        })
    }

    /// The ACS Control register saved (raw), if the function has an ACS capability.
    pub fn acs_control(&self) -> Option<u16> {
        self.acs.map(|a| a.control)
    }

    /// The function this was saved from.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The Command register saved.
    pub fn command(&self) -> Command {
        self.command
    }

    /// The raw BAR dwords saved (two for a bridge, six for an endpoint).
    pub fn bars(&self) -> &[u32] {
        &self.bars[..usize::from(self.bar_count)]
    }

    /// Writes the saved configuration back.
    ///
    /// Refuses a function that no longer answers or whose vendor/device ID changed. If decoding
    /// or bus mastering is on, it is turned off first; then PCI Express controls, ACS (Egress
    /// Control Vector, then Control), bridge bus numbers and windows, BARs and ROM, header bytes,
    /// MSI/MSI-X and Bridge Control are written,
    /// the BARs are read back, and the Command register is written last. A BAR that does not
    /// read back what was written fails with [`ResetError::RestoreMismatch`] and the function is
    /// left with decoding and bus mastering off.
    ///
    /// # Errors
    ///
    /// [`ResetError::NotPresent`] when nothing answers at the saved address;
    /// [`ResetError::IdentityChanged`] when another vendor:device answers there (nothing is written);
    /// [`ResetError::RestoreMismatch`] when a register does not read back what was written (decoding
    /// is then left off).
    pub fn restore(&self, cfg: &impl ConfigSpace) -> Result<(), ResetError> {
        let bdf = self.bdf;
        present(cfg, bdf)?;
        let found = vendor_device(cfg, bdf);
        if found != self.id {
            return Err(ResetError::IdentityChanged {
                bdf,
                saved: self.id,
                found,
            });
        }
        let current = Command::from_bits_retain(cfg.read16(bdf, header::COMMAND));
        let active = Command::DECODE | Command::BUS_MASTER;
        if current.intersects(active) {
            cfg.write16(bdf, header::COMMAND, (current - active).bits());
        }
        if let Some(p) = self.pcie {
            cfg.write16(bdf, p.offset + pcie::DEVICE_CONTROL, p.device_control);
            cfg.write16(bdf, p.offset + pcie::LINK_CONTROL, p.link_control);
            if let Some((device_control_2, link_control_2)) = p.control_2 {
                cfg.write16(bdf, p.offset + pcie::DEVICE_CONTROL_2, device_control_2);
                cfg.write16(bdf, p.offset + pcie::LINK_CONTROL_2, link_control_2);
            }
        }
        if let Some(a) = &self.acs {
            a.restore(cfg, bdf);
        }
        if let Some(b) = self.bridge {
            cfg.write32(bdf, bridge::PRIMARY_BUS, b.bus_numbers);
            cfg.write8(bdf, bridge::IO_BASE, b.io_base);
            cfg.write8(bdf, bridge::IO_LIMIT, b.io_limit);
            cfg.write32(bdf, bridge::MEMORY_BASE, b.memory);
            cfg.write32(bdf, bridge::PREFETCHABLE_MEMORY_BASE, b.prefetchable);
            cfg.write32(
                bdf,
                bridge::PREFETCHABLE_BASE_UPPER,
                b.prefetchable_base_upper,
            );
            cfg.write32(
                bdf,
                bridge::PREFETCHABLE_LIMIT_UPPER,
                b.prefetchable_limit_upper,
            );
            cfg.write32(bdf, bridge::IO_BASE_UPPER, b.io_upper);
        }
        for (index, &value) in self.bars().iter().enumerate() {
            cfg.write32(bdf, header::bar(index as u8), value);
        }
        if let (Some(rom), Some(offset)) = (self.expansion_rom, self.layout.expansion_rom_offset())
        {
            cfg.write32(bdf, offset, rom);
        }
        cfg.write8(bdf, header::CACHE_LINE_SIZE, self.cache_line_size);
        cfg.write8(bdf, header::LATENCY_TIMER, self.latency_timer);
        cfg.write8(bdf, header::INTERRUPT_LINE, self.interrupt_line);
        if let Some(m) = self.msi {
            cfg.write32(bdf, m.offset + msi::ADDRESS_LOW, m.address_low);
            if let Some(high) = m.address_high {
                cfg.write32(bdf, m.offset + msi::ADDRESS_HIGH, high);
            }
            cfg.write16(bdf, m.offset + m.data_offset(), m.data);
            if let Some(mask) = m.mask {
                cfg.write32(bdf, m.offset + m.mask_offset(), mask);
            }
            cfg.write16(bdf, m.offset + msi::CONTROL, m.control);
        }
        if let Some((offset, control)) = self.msix {
            let now = cfg.read16(bdf, offset + msix::CONTROL);
            let bits = msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK;
            cfg.write16(bdf, offset + msix::CONTROL, (now & !bits) | control);
        }
        if let Some(b) = self.bridge {
            cfg.write16(bdf, bridge::BRIDGE_CONTROL, b.control);
        }
        for (index, &expected) in self.bars().iter().enumerate() {
            let offset = header::bar(index as u8);
            let found = cfg.read32(bdf, offset);
            if found != expected {
                return Err(ResetError::RestoreMismatch {
                    bdf,
                    offset,
                    expected,
                    found,
                });
            }
        }
        cfg.write16(bdf, header::COMMAND, self.command.bits());
        Ok(())
    }
}
