//! Fakes for MSI and MSI-X host tests (feature `testing`): capabilities added to a
//! [`FakeConfigSpace`] function with the layouts QEMU 7.2's devices use, and
//! [`FakeMsixMemory`], a BAR that records every access in order and models what the function
//! does when it raises a vector.
//!
//! Config-space writes and BAR accesses land in one log when the code under test reaches the
//! configuration space through [`FakeMsixMemory::recording`], so a test can check their
//! interleaving (Function Mask set before any entry is written, cleared after).

use alloc::vec;
use alloc::vec::Vec;

use spin::Mutex;

use super::memory::MsixMemory;
use super::message::MsiMessage;
use crate::bar::BarKind;
use crate::regs::{
    msi, msix, CapabilityId, MsiControl, MsixControl, MsixLocation, MsixVectorControl,
};
use crate::testing::FakeConfigSpace;
use crate::{Bdf, ConfigSpace};

/// Where a function keeps its MSI-X structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Table entries.
    pub vectors: u16,
    /// BAR holding the table and the PBA.
    pub bir: u8,
    /// Size of that BAR.
    pub bar_size: usize,
    /// Table offset in the BAR.
    pub table_offset: u32,
    /// PBA offset in the BAR.
    pub pba_offset: u32,
}

/// QEMU 7.2 `hw/net/e1000e.c`: 5 vectors in BAR3 (16 KiB), table at 0, PBA at 0x2000.
pub const E1000E_MSIX: MsixLayout = MsixLayout {
    vectors: 5,
    bir: 3,
    bar_size: 16 << 10,
    table_offset: 0,
    pba_offset: 0x2000,
};

/// Adds an MSI capability: `2^vectors_log2` vectors, 64-bit address or not, per-vector
/// masking or not. Returns its offset.
pub fn add_msi_capability(
    cfg: &FakeConfigSpace,
    bdf: Bdf,
    vectors_log2: u8,
    address_64: bool,
    per_vector_masking: bool,
) -> u8 {
    let len = match (address_64, per_vector_masking) {
        (false, false) => msi::DATA_32 + 2,
        (true, false) => msi::DATA_64 + 2,
        (false, true) => msi::PENDING_32 + 4,
        (true, true) => msi::PENDING_64 + 4,
    };
    let offset = cfg.add_capability(bdf, CapabilityId::MSI, len as u8);
    let control = MsiControl::new()
        .with_multiple_message_capable(vectors_log2)
        .with_address_64(address_64)
        .with_per_vector_masking(per_vector_masking);
    cfg.poke16(bdf, u16::from(offset) + msi::CONTROL, control.into_bits());
    offset
}

/// Adds an MSI-X capability with `layout` and declares its BAR (32-bit memory at
/// `bar_address`). Returns the capability's offset.
pub fn add_msix_capability(
    cfg: &FakeConfigSpace,
    bdf: Bdf,
    layout: &MsixLayout,
    bar_address: u64,
) -> u8 {
    cfg.define_bar(
        bdf,
        layout.bir,
        BarKind::Memory32 {
            prefetchable: false,
        },
        layout.bar_size as u64,
        bar_address,
    );
    let offset = cfg.add_capability(bdf, CapabilityId::MSI_X, 12);
    let base = u16::from(offset);
    let control = MsixControl::new().with_table_size_minus_one(layout.vectors - 1);
    cfg.poke16(bdf, base + msix::CONTROL, control.into_bits());
    let table = MsixLocation::new()
        .with_bir(layout.bir)
        .with_offset(layout.table_offset);
    let pba = MsixLocation::new()
        .with_bir(layout.bir)
        .with_offset(layout.pba_offset);
    cfg.poke32(bdf, base + msix::TABLE, table.into_bits());
    cfg.poke32(bdf, base + msix::PBA, pba.into_bits());
    offset
}

/// One recorded access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixEvent {
    /// A BAR read.
    Read {
        /// Byte offset in the BAR.
        offset: usize,
        /// Access width in bytes.
        width: u8,
        /// Value returned.
        value: u32,
    },
    /// A BAR write.
    Write {
        /// Byte offset in the BAR.
        offset: usize,
        /// Access width in bytes.
        width: u8,
        /// Value written.
        value: u32,
        /// For a write to a table entry's address or data: whether that entry's mask bit was
        /// set at the time.
        entry_masked: Option<bool>,
    },
    /// A configuration-space write through [`FakeMsixMemory::recording`].
    Config {
        /// Register offset.
        offset: u16,
        /// Access width in bytes.
        width: u8,
        /// Value written.
        value: u32,
    },
}

struct State {
    dwords: Vec<u32>,
    events: Vec<MsixEvent>,
}

/// A BAR holding an MSI-X table and PBA: entries come out of reset masked, the PBA is
/// read-only to software, and every access is logged.
pub struct FakeMsixMemory {
    layout: MsixLayout,
    state: Mutex<State>,
}

impl FakeMsixMemory {
    /// The BAR of `layout`, as after reset: addresses and data zero, every entry masked,
    /// nothing pending.
    pub fn new(layout: MsixLayout) -> Self {
        let mut dwords = vec![0; layout.bar_size / 4];
        for entry in 0..layout.vectors {
            if let Some(i) = Self::index(&layout, entry, msix::ENTRY_VECTOR_CONTROL) {
                dwords[i] = MsixVectorControl::new().with_mask(true).into_bits();
            }
        }
        Self {
            layout,
            state: Mutex::new(State {
                dwords,
                events: Vec::new(),
            }),
        }
    }

    /// Dword index of `entry`'s `field`, if inside the BAR.
    fn index(layout: &MsixLayout, entry: u16, field: u32) -> Option<usize> {
        let offset = layout.table_offset as usize
            + usize::from(entry) * msix::ENTRY_SIZE as usize
            + field as usize;
        (offset + 4 <= layout.bar_size).then_some(offset / 4)
    }

    /// The table entry and dword field an offset falls in.
    fn entry_field(&self, offset: usize) -> Option<(u16, u32)> {
        let start = self.layout.table_offset as usize;
        let size = usize::from(self.layout.vectors) * msix::ENTRY_SIZE as usize;
        if offset < start || offset >= start + size {
            return None;
        }
        let within = offset - start;
        let entry = u16::try_from(within / msix::ENTRY_SIZE as usize).ok()?;
        Some((entry, (within % msix::ENTRY_SIZE as usize) as u32))
    }

    fn in_pba(&self, offset: usize) -> bool {
        let start = self.layout.pba_offset as usize;
        let bytes = usize::from(self.layout.vectors).div_ceil(64) * 8;
        offset >= start && offset < start + bytes
    }

    /// Everything recorded, in order.
    pub fn events(&self) -> Vec<MsixEvent> {
        self.state.lock().events.clone()
    }

    /// Forgets the recorded events.
    pub fn clear_events(&self) {
        self.state.lock().events.clear();
    }

    /// Reads a dword without logging (all-ones outside the BAR).
    pub fn peek32(&self, offset: usize) -> u32 {
        let state = self.state.lock();
        if !offset.is_multiple_of(4) {
            return u32::MAX;
        }
        state.dwords.get(offset / 4).copied().unwrap_or(u32::MAX)
    }

    /// Stores a dword without logging or emulation.
    pub fn poke32(&self, offset: usize, value: u32) {
        let mut state = self.state.lock();
        if offset.is_multiple_of(4) {
            if let Some(d) = state.dwords.get_mut(offset / 4) {
                *d = value;
            }
        }
    }

    fn entry_dword(&self, entry: u16, field: u32) -> u32 {
        Self::index(&self.layout, entry, field).map_or(u32::MAX, |i| self.peek32(i * 4))
    }

    fn set_pending(&self, entry: u16, pending: bool) {
        let bit = u32::from(entry) % 32;
        let offset = self.layout.pba_offset as usize + usize::from(entry) / 32 * 4;
        let value = self.peek32(offset);
        let value = if pending {
            value | 1 << bit
        } else {
            value & !(1 << bit)
        };
        self.poke32(offset, value);
    }

    /// The function raises `entry`, as the device model would: with MSI-X enabled, Function
    /// Mask clear and the entry unmasked it sends the entry's message (returned); otherwise,
    /// if MSI-X is enabled, it sets the entry's Pending bit and sends nothing.
    pub fn raise(
        &self,
        cfg: &FakeConfigSpace,
        bdf: Bdf,
        capability: u8,
        entry: u16,
    ) -> Option<MsiMessage> {
        if entry >= self.layout.vectors {
            return None;
        }
        let control =
            MsixControl::from_bits(cfg.peek16(bdf, u16::from(capability) + msix::CONTROL));
        if !control.enable() {
            return None;
        }
        let masked =
            MsixVectorControl::from_bits(self.entry_dword(entry, msix::ENTRY_VECTOR_CONTROL))
                .mask();
        if control.function_mask() || masked {
            self.set_pending(entry, true);
            return None;
        }
        self.set_pending(entry, false);
        Some(MsiMessage::from_dwords(
            self.entry_dword(entry, msix::ENTRY_ADDRESS_LOW),
            self.entry_dword(entry, msix::ENTRY_ADDRESS_HIGH),
            self.entry_dword(entry, msix::ENTRY_DATA),
        ))
    }

    /// A [`ConfigSpace`] that forwards to `cfg` and records its writes in this log.
    pub fn recording<'a>(&'a self, cfg: &'a FakeConfigSpace) -> RecordingConfig<'a> {
        RecordingConfig { cfg, memory: self }
    }

    fn record_config(&self, offset: u16, width: u8, value: u32) {
        self.state.lock().events.push(MsixEvent::Config {
            offset,
            width,
            value,
        });
    }
}

impl MsixMemory for FakeMsixMemory {
    fn len(&self) -> usize {
        self.layout.bar_size
    }

    fn read32(&self, offset: usize) -> u32 {
        let value = self.peek32(offset);
        self.state.lock().events.push(MsixEvent::Read {
            offset,
            width: 4,
            value,
        });
        value
    }

    fn write32(&self, offset: usize, value: u32) {
        let entry_masked = self.entry_field(offset).and_then(|(entry, field)| {
            (field != msix::ENTRY_VECTOR_CONTROL).then(|| {
                MsixVectorControl::from_bits(self.entry_dword(entry, msix::ENTRY_VECTOR_CONTROL))
                    .mask()
            })
        });
        // The PBA is read-only to software.
        if !self.in_pba(offset) {
            self.poke32(offset, value);
        }
        self.state.lock().events.push(MsixEvent::Write {
            offset,
            width: 4,
            value,
            entry_masked,
        });
    }
}

/// A [`FakeConfigSpace`] view that logs writes into a [`FakeMsixMemory`]'s event log.
pub struct RecordingConfig<'a> {
    cfg: &'a FakeConfigSpace,
    memory: &'a FakeMsixMemory,
}

impl ConfigSpace for RecordingConfig<'_> {
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.cfg.read8(bdf, offset)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.cfg.read16(bdf, offset)
    }
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.cfg.read32(bdf, offset)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.memory.record_config(offset, 1, u32::from(value));
        self.cfg.write8(bdf, offset, value)
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.memory.record_config(offset, 2, u32::from(value));
        self.cfg.write16(bdf, offset, value)
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.memory.record_config(offset, 4, value);
        self.cfg.write32(bdf, offset, value)
    }
}
