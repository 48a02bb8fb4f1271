//! The emulated configuration space: registers, write semantics and resets (see the parent
//! module for what it emulates).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;

use crate::bar::BarKind;
use crate::config::is_valid_access;
use crate::regs::{
    acs, bar_bits, bridge, header, pcie, rom_bits, AcsFlags, BridgeControl, CapabilityId,
    DevicePortType, ExtendedCapabilityId, HeaderLayout, HeaderType, Status,
};
use crate::regs::{msi, msix, pm};
use crate::{Bdf, ConfigSpace};

/// One write the code under test issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigWrite {
    /// Target function.
    pub bdf: Bdf,
    /// Register offset.
    pub offset: u16,
    /// Access width in bytes.
    pub width: u8,
    /// Value written.
    pub value: u32,
    /// The function's Command register just before the write.
    pub command_before: u16,
}

#[derive(Clone)]
pub(super) struct FakeFunction {
    bytes: Box<[u8; 4096]>,
    /// Bits that ignore writes.
    read_only: Box<[u8; 4096]>,
    /// Bits that are write-1-to-clear.
    rw1c: Box<[u8; 4096]>,
    /// Declared BARs: (kind, size) at the slot of the low dword.
    bars: [Option<(BarKind, u64)>; 6],
    /// Declared Expansion ROM size.
    pub(super) rom: Option<u64>,
    /// Where the next standard / extended capability goes, and the last one added.
    next_capability: u16,
    last_capability: Option<u16>,
    next_extended: u16,
    last_extended: Option<u16>,
    /// Reads that return all-ones after each reset.
    ready_delay: u32,
    /// Reads left before the function answers again.
    not_ready_reads: u32,
    /// Resets the function went through (bus reset, FLR, PM).
    resets: u32,
}

impl FakeFunction {
    pub(super) fn new() -> Self {
        let mut f = Self {
            bytes: Box::new([0; 4096]),
            read_only: Box::new([0; 4096]),
            rw1c: Box::new([0; 4096]),
            bars: [None; 6],
            rom: None,
            next_capability: header::HEADER_END,
            last_capability: None,
            next_extended: 0x100,
            last_extended: None,
            ready_delay: 0,
            not_ready_reads: 0,
            resets: 0,
        };
        for range in [0x00..0x04, 0x08..0x0c, 0x0e..0x0f, 0x34..0x35, 0x3d..0x3e] {
            for i in range {
                f.read_only[i] = 0xff;
            }
        }
        // BARs are read-only until a size is declared (the Expansion ROM register too, see
        // `FakeFunction::write`: where it lives depends on the layout).
        for i in 0x10..0x28 {
            f.read_only[i] = 0xff;
        }
        let status = usize::from(header::STATUS);
        let rw1c = Status::RW1C.bits().to_le_bytes();
        for (k, bits) in rw1c.iter().enumerate() {
            f.rw1c[status + k] = *bits;
            f.read_only[status + k] = !bits;
        }
        f
    }

    fn layout(&self) -> HeaderLayout {
        HeaderLayout::from_header_type(self.bytes[usize::from(header::HEADER_TYPE)])
    }

    fn get(&self, offset: u16, width: usize) -> u32 {
        let o = usize::from(offset);
        (0..width).fold(0, |acc, k| acc | u32::from(self.bytes[o + k]) << (8 * k))
    }

    pub(super) fn put(&mut self, offset: u16, width: usize, value: u32) {
        let o = usize::from(offset);
        for k in 0..width {
            self.bytes[o + k] = (value >> (8 * k)) as u8;
        }
    }

    /// The writable-bit mask of BAR dword `slot`, if the slot belongs to a declared BAR.
    fn bar_mask(&self, slot: usize) -> Option<u32> {
        if let Some((kind, size)) = self.bars[slot] {
            let mask = !(size - 1);
            return Some(match kind {
                BarKind::Io => mask as u32 & bar_bits::IO_ADDRESS_MASK,
                _ => mask as u32 & bar_bits::MEMORY_ADDRESS_MASK,
            });
        }
        if slot > 0 {
            if let Some((BarKind::Memory64 { .. }, size)) = self.bars[slot - 1] {
                return Some((!(size - 1) >> 32) as u32);
            }
        }
        None
    }

    fn bar_flags(&self, slot: usize) -> u32 {
        self.bars[slot].map_or(0, |(kind, _)| kind.flag_bits())
    }

    /// The writable-bit mask of the Expansion ROM register: address bits down to its size and
    /// the enable bit once a size is declared, nothing otherwise.
    fn rom_mask(&self) -> u32 {
        self.rom.map_or(0, |size| {
            (!(size - 1) as u32 & rom_bits::ADDRESS_MASK) | rom_bits::ENABLE
        })
    }

    fn write(&mut self, offset: u16, width: usize, value: u32) {
        let bar_slots = usize::from(self.layout().bar_count());
        let rom = self.layout().expansion_rom_offset().map(usize::from);
        for k in 0..width {
            let o = usize::from(offset) + k;
            let byte = (value >> (8 * k)) as u8;
            if let Some(rom) = rom.filter(|rom| (*rom..*rom + 4).contains(&o)) {
                // Like a BAR: bits that are not writable read 0 after a write.
                self.bytes[o] = byte & (self.rom_mask() >> (8 * (o - rom))) as u8;
                continue;
            }
            if (0x10..0x10 + 4 * bar_slots).contains(&o) {
                let slot = (o - 0x10) / 4;
                if let Some(mask) = self.bar_mask(slot) {
                    let shift = 8 * ((o - 0x10) % 4);
                    let writable = (mask >> shift) as u8;
                    let flags = (self.bar_flags(slot) >> shift) as u8;
                    self.bytes[o] = (byte & writable) | flags;
                }
                continue;
            }
            if let Some(writable) = self.bridge_register_mask(o) {
                self.bytes[o] = (self.bytes[o] & !writable) | (byte & writable);
                continue;
            }
            let (ro, rw1c) = (self.read_only[o], self.rw1c[o]);
            let old = self.bytes[o];
            self.bytes[o] = (old & ro & !rw1c) | (byte & !ro & !rw1c) | (old & rw1c & !byte);
        }
    }

    /// The writable bits of a type-1 header's bus-number and window bytes (0x18-0x1d and
    /// 0x20-0x27; the low nibbles of the window registers are hardwired, PCI-to-PCI Bridge 1.2
    /// §3.2.5), `None` for any other byte or layout.
    fn bridge_register_mask(&self, o: usize) -> Option<u8> {
        if self.layout() != HeaderLayout::PciBridge {
            return None;
        }
        match o {
            0x18..=0x1b => Some(0xff),
            0x1c | 0x1d | 0x20 | 0x22 | 0x24 | 0x26 => Some(0xf0),
            0x21 | 0x23 | 0x25 | 0x27 => Some(0xff),
            _ => None,
        }
    }

    /// What a reset does to the registers SPEC.md says are lost: Command and BARs.
    fn reset(&mut self) {
        self.resets = self.resets.saturating_add(1);
        self.not_ready_reads = self.ready_delay;
        self.put(header::COMMAND, 2, 0);
        for slot in 0..usize::from(self.layout().bar_count()) {
            let flags = if self.bar_mask(slot).is_some() {
                self.bar_flags(slot)
            } else {
                0
            };
            self.put(header::bar(slot as u8), 4, flags);
        }
        if let (Some(_), Some(rom)) = (self.rom, self.layout().expansion_rom_offset()) {
            self.put(rom, 4, 0);
        }
    }

    /// The first standard capability with this ID, walked over the raw bytes.
    fn find_capability(&self, id: CapabilityId) -> Option<u16> {
        if self.get(header::STATUS, 2) & u32::from(Status::CAPABILITIES_LIST.bits()) == 0 {
            return None;
        }
        let mut pointer = self.bytes[usize::from(header::CAPABILITIES_POINTER)] & 0xfc;
        for _ in 0..48 {
            if u16::from(pointer) < header::HEADER_END {
                return None;
            }
            if self.bytes[usize::from(pointer)] == id.0 {
                return Some(u16::from(pointer));
            }
            pointer = self.bytes[usize::from(pointer) + 1] & 0xfc;
        }
        None
    }

    /// The first extended capability with this ID, walked over the raw bytes.
    fn find_extended_capability(&self, id: ExtendedCapabilityId) -> Option<u16> {
        let mut offset = 0x100u16;
        for _ in 0..(4096 / 4) {
            let entry = self.get(offset, 4);
            if entry == 0 || entry == u32::MAX {
                return None;
            }
            if entry & 0xffff == u32::from(id.0) {
                return Some(offset);
            }
            let next = (entry >> 20) as u16 & 0xffc;
            if next < 0x100 {
                return None;
            }
            offset = next;
        }
        None
    }

    /// What a Function Level Reset or a D3hot→D0 soft reset does: [`FakeFunction::reset`] plus
    /// the other registers software programs.
    fn function_reset(&mut self) {
        self.reset();
        self.put(header::CACHE_LINE_SIZE, 1, 0);
        self.put(header::LATENCY_TIMER, 1, 0);
        self.put(header::INTERRUPT_LINE, 1, 0);
        let status = self.get(header::STATUS, 2) & !u32::from(Status::RW1C.bits());
        self.put(header::STATUS, 2, status);
        if let Some(p) = self.find_capability(CapabilityId::PCI_EXPRESS) {
            self.put(p + pcie::DEVICE_CONTROL, 2, 0);
            self.put(p + pcie::DEVICE_CONTROL_2, 2, 0);
        }
        if let Some(p) = self.find_capability(CapabilityId::MSI) {
            let control = self.get(p + msi::CONTROL, 2) & !u32::from(msi::CONTROL_ENABLE);
            self.put(p + msi::CONTROL, 2, control);
        }
        if let Some(p) = self.find_capability(CapabilityId::MSI_X) {
            let bits = msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK;
            let control = self.get(p + msix::CONTROL, 2) & !u32::from(bits);
            self.put(p + msix::CONTROL, 2, control);
        }
        if let Some(a) = self.find_extended_capability(ExtendedCapabilityId::ACS) {
            // ACS Control is not sticky; neither is the Egress Control Vector.
            self.put(a + acs::CONTROL, 2, 0);
            let capability = self.get(a + acs::CAPABILITY, 2) as u16;
            if capability & AcsFlags::EC.bits() != 0 {
                let bits = match capability >> acs::EGRESS_CONTROL_VECTOR_SIZE_SHIFT {
                    0 => acs::EGRESS_CONTROL_VECTOR_MAX_BITS,
                    n => n,
                };
                for i in 0..bits.div_ceil(32) {
                    let o = a + acs::EGRESS_CONTROL_VECTOR + 4 * i;
                    if usize::from(o) + 4 <= self.bytes.len() {
                        self.put(o, 4, 0);
                    }
                }
            }
        }
        if let Some(p) = self.find_capability(CapabilityId::POWER_MANAGEMENT) {
            let keep = pm::PMCSR_NO_SOFT_RESET;
            let pmcsr = self.get(p + pm::PMCSR, 2) & u32::from(keep);
            self.put(p + pm::PMCSR, 2, pmcsr);
        }
        if self.layout() == HeaderLayout::PciBridge {
            self.put(bridge::PRIMARY_BUS, 4, 0);
            self.put(bridge::IO_BASE, 2, 0);
            for offset in [
                bridge::MEMORY_BASE,
                bridge::PREFETCHABLE_MEMORY_BASE,
                bridge::PREFETCHABLE_BASE_UPPER,
                bridge::PREFETCHABLE_LIMIT_UPPER,
                bridge::IO_BASE_UPPER,
            ] {
                self.put(offset, 4, 0);
            }
            self.put(bridge::BRIDGE_CONTROL, 2, 0);
        }
    }

    /// Emulates Initiate FLR and PMCSR after a write of `width` bytes at `offset` has been stored.
    /// `old_pmcsr` is PMCSR before the write.
    fn emulate_control_write(&mut self, offset: u16, width: u16, old_pmcsr: Option<u16>) {
        let touches =
            |register: u16, len: u16| offset < register + len && register < offset + width;
        if let Some(p) = self.find_capability(CapabilityId::PCI_EXPRESS) {
            let control = p + pcie::DEVICE_CONTROL;
            if touches(control, 2) {
                let value = self.get(control, 2) as u16;
                if value & pcie::DEVCTL_INITIATE_FLR != 0 {
                    // The bit always reads 0; it acts only when FLR is advertised.
                    self.put(control, 2, u32::from(value & !pcie::DEVCTL_INITIATE_FLR));
                    if self.get(p + pcie::DEVICE_CAPABILITIES, 4) & pcie::DEVCAP_FLR != 0 {
                        self.function_reset();
                    }
                }
            }
        }
        let (Some(p), Some(old)) = (
            self.find_capability(CapabilityId::POWER_MANAGEMENT),
            old_pmcsr,
        ) else {
            return;
        };
        let csr = p + pm::PMCSR;
        if !touches(csr, 2) {
            return;
        }
        let written = self.get(csr, 2) as u16;
        let pmc = self.get(p + pm::PMC, 2) as u16;
        let (from, to) = (old & pm::PMCSR_STATE_MASK, written & pm::PMCSR_STATE_MASK);
        let supported = match to {
            1 => pmc & pm::PMC_D1_SUPPORT != 0,
            2 => pmc & pm::PMC_D2_SUPPORT != 0,
            _ => true,
        };
        let allowed = supported && (from != 3 || to == 0);
        let state = if allowed { to } else { from };
        let mut value = (old & !(pm::PMCSR_STATE_MASK | pm::PMCSR_PME_ENABLE))
            | state
            | (written & pm::PMCSR_PME_ENABLE);
        // PME_Status is RW1C; only a write covering the high byte can clear it.
        if touches(csr + 1, 1) && written & pm::PMCSR_PME_STATUS != 0 {
            value &= !pm::PMCSR_PME_STATUS;
        }
        self.put(csr, 2, u32::from(value));
        if from == 3 && state == 0 && old & pm::PMCSR_NO_SOFT_RESET == 0 {
            self.function_reset();
        }
    }
}

/// An emulated configuration space. See the module documentation for what it emulates.
pub struct FakeConfigSpace {
    pub(super) state: Mutex<State>,
}

pub(super) struct State {
    pub(super) functions: BTreeMap<Bdf, FakeFunction>,
    writes: Vec<ConfigWrite>,
}

impl Default for FakeConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FakeConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("FakeConfigSpace")
            .field("functions", &state.functions.keys())
            .finish()
    }
}

impl FakeConfigSpace {
    /// An empty space: every function reads all-ones.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                functions: BTreeMap::new(),
                writes: Vec::new(),
            }),
        }
    }

    /// Makes capability headers and ACS Capability read-only, and unadvertised ACS Control bits
    /// hardwired to 0, as hardware has them.
    pub(super) fn protect_capabilities(&self, bdf: Bdf) {
        let standard = crate::capability::standard_capabilities(self, bdf);
        let extended = crate::capability::extended_capabilities(self, bdf);
        let mut state = self.state.lock();
        let Some(f) = state.functions.get_mut(&bdf) else {
            return;
        };
        for cap in standard.entries {
            let o = usize::from(cap.offset);
            f.read_only[o] = 0xff;
            f.read_only[o + 1] = 0xff;
        }
        for cap in extended.entries {
            let o = usize::from(cap.offset);
            f.read_only[o..o + 4].fill(0xff);
            if cap.id == ExtendedCapabilityId::ACS {
                let capability = f.get(cap.offset + acs::CAPABILITY, 2) as u16;
                let c = usize::from(cap.offset + acs::CAPABILITY);
                f.read_only[c..c + 2].fill(0xff);
                let ro = (!capability).to_le_bytes();
                let ctl = usize::from(cap.offset + acs::CONTROL);
                f.read_only[ctl] = ro[0];
                f.read_only[ctl + 1] = ro[1];
            }
        }
    }

    pub(super) fn with<R>(&self, bdf: Bdf, op: impl FnOnce(&mut FakeFunction) -> R) -> Option<R> {
        self.state.lock().functions.get_mut(&bdf).map(op)
    }

    /// Creates (or resets) a function with IDs, a 24-bit class code (base << 16 | sub << 8 |
    /// prog-if) and a Header Type.
    pub fn add_function(
        &self,
        bdf: Bdf,
        vendor_id: u16,
        device_id: u16,
        class: u32,
        header_type: u8,
    ) {
        let mut f = FakeFunction::new();
        f.put(header::VENDOR_ID, 2, u32::from(vendor_id));
        f.put(header::DEVICE_ID, 2, u32::from(device_id));
        f.put(header::REVISION_ID, 4, (class & 0xff_ffff) << 8);
        f.put(header::HEADER_TYPE, 1, u32::from(header_type));
        self.state.lock().functions.insert(bdf, f);
    }

    /// Creates a type-0 function.
    pub fn add_endpoint(&self, bdf: Bdf, vendor_id: u16, device_id: u16, class: u32) {
        self.add_function(bdf, vendor_id, device_id, class, 0);
    }

    /// Creates a type-1 function (class 0604) with bus numbers.
    pub fn add_bridge(
        &self,
        bdf: Bdf,
        vendor_id: u16,
        device_id: u16,
        primary: u8,
        secondary: u8,
        subordinate: u8,
    ) {
        self.add_function(bdf, vendor_id, device_id, 0x06_04_00, 1);
        self.poke8(bdf, bridge::PRIMARY_BUS, primary);
        self.poke8(bdf, bridge::SECONDARY_BUS, secondary);
        self.poke8(bdf, bridge::SUBORDINATE_BUS, subordinate);
    }

    /// Removes a function (it reads all-ones afterwards).
    pub fn remove_function(&self, bdf: Bdf) {
        self.state.lock().functions.remove(&bdf);
    }

    /// Sets Header Type bit 7.
    pub fn set_multifunction(&self, bdf: Bdf) {
        self.with(bdf, |f| {
            f.bytes[usize::from(header::HEADER_TYPE)] |= HeaderType::MULTI_FUNCTION
        });
    }

    /// Declares BAR `slot` as `kind` and `size` (a power of two) at bus address `address`.
    ///
    /// Address bits below `size` are stored as given, so a test can model a device whose BAR
    /// reads back misaligned. A 64-bit BAR takes the next slot for its upper half; in the last
    /// slot of the header (5 for a type-0 header, 1 for a bridge) only its low dword is written,
    /// which models the malformed BAR probing must refuse.
    ///
    /// # Panics
    ///
    /// On a mistake in the test that would corrupt other registers instead of defining a BAR:
    /// an absent function, a slot the header does not have (a bridge has only BAR0 and BAR1;
    /// its offset 0x18 holds the bus numbers), a size that is not a power of two, a 32-bit
    /// BAR with an address above 4 GiB, or a 64-bit BAR in the last slot with an address above
    /// 4 GiB (its upper half has no register).
    pub fn define_bar(&self, bdf: Bdf, slot: u8, kind: BarKind, size: u64, address: u64) {
        let s = usize::from(slot);
        let defined = self.with(bdf, |f| {
            let slots = f.layout().bar_count();
            assert!(
                slot < slots,
                "define_bar: {bdf} has {slots} BAR slot(s), not slot {slot}"
            );
            assert!(
                size.is_power_of_two(),
                "define_bar: size {size:#x} is not a power of two"
            );
            let has_upper_half = matches!(kind, BarKind::Memory64 { .. }) && slot + 1 < slots;
            assert!(
                has_upper_half || address <= u64::from(u32::MAX),
                "define_bar: {bdf} BAR{slot} ({kind}) cannot hold address {address:#x}: no \
                 register for its upper half"
            );
            f.bars[s] = Some((kind, size));
            let value = address | u64::from(kind.flag_bits());
            f.put(header::bar(slot), 4, value as u32);
            if has_upper_half {
                f.bars[s + 1] = None;
                f.put(header::bar(slot + 1), 4, (value >> 32) as u32);
            }
        });
        assert!(defined.is_some(), "define_bar: no function at {bdf}");
    }

    /// Declares the Expansion ROM BAR of a type-0 or type-1 function: `size` (a power of two,
    /// at least 2 KiB) at bus address `address`, enabled or not. Address bits below `size` are
    /// stored as given (a misaligned ROM for refusal tests).
    ///
    /// # Panics
    ///
    /// On an absent function, a layout without a ROM register, a size that is not a power of
    /// two of at least 2 KiB, or an address that is not a 32-bit ROM address (bits 10:0 set,
    /// or above 4 GiB).
    pub fn define_expansion_rom(&self, bdf: Bdf, size: u64, address: u64, enabled: bool) {
        let defined = self.with(bdf, |f| {
            let offset = f
                .layout()
                .expansion_rom_offset()
                .unwrap_or_else(|| panic!("define_expansion_rom: {bdf} has no ROM register"));
            let min = u64::from(!rom_bits::ADDRESS_MASK) + 1;
            assert!(
                size.is_power_of_two() && size >= min,
                "define_expansion_rom: size {size:#x} is not a power of two >= {min:#x}"
            );
            let address = u32::try_from(address)
                .ok()
                .filter(|a| a & !rom_bits::ADDRESS_MASK == 0)
                .unwrap_or_else(|| panic!("define_expansion_rom: bad address {address:#x}"));
            f.rom = Some(size);
            let enable = if enabled { rom_bits::ENABLE } else { 0 };
            f.put(offset, 4, address | enable);
        });
        assert!(
            defined.is_some(),
            "define_expansion_rom: no function at {bdf}"
        );
    }

    /// Declares the size of BAR `slot`, taking its kind from the register's current type bits
    /// (how a fixture's BARs are made sizable).
    pub fn set_bar_size(&self, bdf: Bdf, slot: u8, size: u64) {
        let Some(low) = self.with(bdf, |f| f.get(header::bar(slot.min(5)), 4)) else {
            return;
        };
        let prefetchable = low & bar_bits::PREFETCHABLE != 0;
        let kind = if low & bar_bits::IO_SPACE != 0 {
            BarKind::Io
        } else if low & bar_bits::MEMORY_TYPE_MASK == bar_bits::MEMORY_TYPE_64 {
            BarKind::Memory64 { prefetchable }
        } else {
            BarKind::Memory32 { prefetchable }
        };
        self.with(bdf, |f| {
            if usize::from(slot) < 6 && size.is_power_of_two() {
                f.bars[usize::from(slot)] = Some((kind, size));
            }
        });
    }

    /// Appends a standard capability with `len` bytes (header included) to the list, sets
    /// Status.Capabilities List, and returns its offset (0, and nothing added, when the 256-byte
    /// space is full).
    pub fn add_capability(&self, bdf: Bdf, id: CapabilityId, len: u8) -> u8 {
        self.with(bdf, |f| {
            let offset = f.next_capability;
            let end = (offset + u16::from(len.max(4)) + 3) & !3;
            if end > 0x100 {
                return 0;
            }
            f.next_capability = end;
            f.put(offset, 1, u32::from(id.0));
            match f.last_capability {
                Some(last) => f.put(last + 1, 1, u32::from(offset)),
                None => f.put(header::CAPABILITIES_POINTER, 1, u32::from(offset)),
            }
            f.last_capability = Some(offset);
            let status = f.get(header::STATUS, 2) | u32::from(Status::CAPABILITIES_LIST.bits());
            f.put(header::STATUS, 2, status);
            offset as u8
        })
        .unwrap_or(0)
    }

    /// Adds a PCI Express capability (version 2) with this Device/Port Type.
    pub fn add_pcie_capability(&self, bdf: Bdf, port_type: DevicePortType) -> u8 {
        let offset = self.add_capability(bdf, CapabilityId::PCI_EXPRESS, 0x3c);
        let reg = 2 | u16::from(port_type.encoding()) << pcie::DEVICE_PORT_TYPE_SHIFT;
        self.poke16(bdf, u16::from(offset) + pcie::CAPABILITIES, reg);
        offset
    }

    /// Appends an extended capability with `len` bytes (header included) and returns its offset
    /// (0, and nothing added, when the 4 KiB space is full).
    pub fn add_extended_capability(
        &self,
        bdf: Bdf,
        id: ExtendedCapabilityId,
        version: u8,
        len: u16,
    ) -> u16 {
        self.with(bdf, |f| {
            let offset = f.next_extended;
            let end = offset.saturating_add(len.max(4)).saturating_add(3) & !3;
            if end > crate::CONFIG_SPACE_SIZE {
                return 0;
            }
            f.next_extended = end;
            f.put(offset, 4, u32::from(id.0) | u32::from(version & 0xf) << 16);
            if let Some(last) = f.last_extended {
                let header = f.get(last, 4) & 0x000f_ffff;
                f.put(last, 4, header | u32::from(offset) << 20);
            }
            f.last_extended = Some(offset);
            offset
        })
        .unwrap_or(0)
    }

    /// Adds an ACS capability advertising `capability` (control 0), with hardware-like
    /// register behaviour, and returns its offset.
    pub fn add_acs(&self, bdf: Bdf, capability: AcsFlags) -> u16 {
        let offset = self.add_extended_capability(bdf, ExtendedCapabilityId::ACS, 1, 8);
        self.poke16(bdf, offset + acs::CAPABILITY, capability.bits());
        self.protect_capabilities(bdf);
        offset
    }

    /// Stores a byte, bypassing all emulation.
    pub fn poke8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.poke(bdf, offset, 1, u32::from(value));
    }

    /// Stores 16 bits, bypassing all emulation.
    pub fn poke16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.poke(bdf, offset, 2, u32::from(value));
    }

    /// Stores 32 bits, bypassing all emulation.
    pub fn poke32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.poke(bdf, offset, 4, value);
    }

    fn poke(&self, bdf: Bdf, offset: u16, width: u16, value: u32) {
        if is_valid_access(offset, width) {
            self.with(bdf, |f| f.put(offset, usize::from(width), value));
        }
    }

    /// Reads 16 bits without logging (all-ones for an absent function or a bad offset).
    pub fn peek16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.peek(bdf, offset, 2) as u16
    }

    /// Reads 32 bits without logging (all-ones for an absent function or a bad offset).
    pub fn peek32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.peek(bdf, offset, 4)
    }

    fn peek(&self, bdf: Bdf, offset: u16, width: u16) -> u32 {
        if !is_valid_access(offset, width) {
            return u32::MAX;
        }
        self.with(bdf, |f| f.get(offset, usize::from(width)))
            .unwrap_or(u32::MAX)
    }

    /// A read through [`ConfigSpace`]: like [`FakeConfigSpace::peek32`], except that a function
    /// still initialising after a reset reads all-ones.
    fn read(&self, bdf: Bdf, offset: u16, width: u16) -> u32 {
        if !is_valid_access(offset, width) {
            return u32::MAX;
        }
        self.with(bdf, |f| {
            if f.not_ready_reads > 0 {
                f.not_ready_reads -= 1;
                return u32::MAX;
            }
            f.get(offset, usize::from(width))
        })
        .unwrap_or(u32::MAX)
    }

    /// Adds a Power Management capability (PCI PM 1.2, PMC version 3, D0 and D3hot only) with
    /// PMCSR.No_Soft_Reset as given, and returns its offset.
    pub fn add_pm_capability(&self, bdf: Bdf, no_soft_reset: bool) -> u8 {
        let offset = self.add_capability(bdf, CapabilityId::POWER_MANAGEMENT, 8);
        if offset != 0 {
            self.poke16(bdf, u16::from(offset) + pm::PMC, 3);
            let pmcsr = if no_soft_reset {
                pm::PMCSR_NO_SOFT_RESET
            } else {
                0
            };
            self.poke16(bdf, u16::from(offset) + pm::PMCSR, pmcsr);
        }
        offset
    }

    /// Sets or clears Function Level Reset Capability in the Device Capabilities of the
    /// function's PCI Express capability (added with [`FakeConfigSpace::add_pcie_capability`]).
    pub fn set_flr_capable(&self, bdf: Bdf, capable: bool) {
        self.with(bdf, |f| {
            if let Some(p) = f.find_capability(CapabilityId::PCI_EXPRESS) {
                let devcap = f.get(p + pcie::DEVICE_CAPABILITIES, 4) & !pcie::DEVCAP_FLR;
                let flr = if capable { pcie::DEVCAP_FLR } else { 0 };
                f.put(p + pcie::DEVICE_CAPABILITIES, 4, devcap | flr);
            }
        });
    }

    /// After each later reset of the function, its next `reads` configuration reads return
    /// all-ones (`u32::MAX`: it never comes back).
    pub fn set_ready_delay(&self, bdf: Bdf, reads: u32) {
        self.with(bdf, |f| f.ready_delay = reads);
    }

    /// How many resets (bus reset, FLR, D3hot→D0 soft reset) the function went through.
    pub fn reset_count(&self, bdf: Bdf) -> u32 {
        self.with(bdf, |f| f.resets).unwrap_or(0)
    }

    /// The writes issued so far through [`ConfigSpace`], oldest first.
    pub fn writes(&self) -> Vec<ConfigWrite> {
        self.state.lock().writes.clone()
    }

    /// Forgets the write log.
    pub fn clear_writes(&self) {
        self.state.lock().writes.clear();
    }

    fn write(&self, bdf: Bdf, offset: u16, width: u16, value: u32) {
        if !is_valid_access(offset, width) {
            return;
        }
        let mut state = self.state.lock();
        let state = &mut *state;
        let Some(f) = state.functions.get_mut(&bdf) else {
            return;
        };
        let command_before = f.get(header::COMMAND, 2) as u16;
        let old_pmcsr = f
            .find_capability(CapabilityId::POWER_MANAGEMENT)
            .map(|p| f.get(p + pm::PMCSR, 2) as u16);
        f.write(offset, usize::from(width), value);
        f.emulate_control_write(offset, width, old_pmcsr);
        state.writes.push(ConfigWrite {
            bdf,
            offset,
            width: width as u8,
            value,
            command_before,
        });
        let touches_control =
            offset <= bridge::BRIDGE_CONTROL && bridge::BRIDGE_CONTROL < offset + width;
        if f.layout() == HeaderLayout::PciBridge && touches_control {
            let control = BridgeControl::from_bits_retain(f.get(bridge::BRIDGE_CONTROL, 2) as u16);
            if control.contains(BridgeControl::SECONDARY_BUS_RESET) {
                let secondary = f.get(bridge::SECONDARY_BUS, 1) as u8;
                for (child, function) in state.functions.iter_mut() {
                    if child.segment() == bdf.segment() && child.bus() == secondary {
                        function.reset();
                    }
                }
            }
        }
    }
}

impl ConfigSpace for FakeConfigSpace {
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.read(bdf, offset, 1) as u8
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.read(bdf, offset, 2) as u16
    }
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.read(bdf, offset, 4)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.write(bdf, offset, 1, u32::from(value));
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.write(bdf, offset, 2, u32::from(value));
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.write(bdf, offset, 4, value);
    }
}
