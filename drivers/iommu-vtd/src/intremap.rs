//! Interrupt remapping: table entries (IRTEs), the interrupt remapping table and its
//! allocation per device vector.
//!
//! Implements VT-d spec §5.1 (interrupt remapping; §5.1.4 source-id validation), §9.10 (the
//! remapped-format IRTE) and the table side of §11.4.10 (IRTA: base, size `2^(S+1)`, EIME).
//! With remapping on, a device's MSI carries only a *handle* (an index into this table, plus
//! a subhandle for multi-message MSI); the IRTE decides the vector and destination and checks
//! that the request comes from the device it was set up for, so a device cannot forge another
//! device's interrupt or pick its own vector.
//!
//! - [`Irte`] is a typed entry: always present, remapped format (IM = 0), with source
//!   validation ([`SourceId`]: the requester ID with SVT = 1 / SQ = 0, or a bus range with
//!   SVT = 2). Vectors below 16 (exceptions) are refused; an x2APIC destination needs
//!   EIME.
//! - [`InterruptRemapTable`] owns the table memory (`2^n` entries, 2 to 65536, physically
//!   contiguous from [`Platform::alloc_table_pages`]) and hands out naturally aligned
//!   power-of-two blocks of entries ([`InterruptRemapTable::alloc`]), as a multi-message MSI
//!   with a subhandle needs. Every entry is written with one 128-bit atomic store and written
//!   back from the CPU cache when the hardware is not coherent (ECAP.C = 0).
//!
//! Enabling the table (IRTA, GCMD.SIRTP, the global interrupt-entry-cache invalidation, IRE) and
//! the invalidation after each entry change belong to the unit
//! ([`VtdUnit::enable_interrupt_remapping`](crate::VtdUnit::enable_interrupt_remapping),
//! [`VtdUnit::set_irte`](crate::VtdUnit::set_irte)), which owns the GCMD protocol and the
//! invalidation queue.
//!
//! ```
//! use std::sync::Arc;
//! use iommu_vtd::fake::{FakeVtd, HostPlatform, InterruptResult};
//! use iommu_vtd::{Destination, Irte, RequesterId, SourceId, UnitConfig, VtdUnit};
//!
//! let platform = Arc::new(HostPlatform::new());
//! let unit = VtdUnit::new(FakeVtd::qemu_default(platform.clone()), platform, UnitConfig::new(39))?;
//! unit.enable()?;
//! unit.enable_interrupt_remapping(64, false)?; // xAPIC mode: QEMU under TCG has no EIM
//! let edu = RequesterId::from_parts(0, 3 << 3);
//! let handle = unit.alloc_irtes(1)?;
//! unit.set_irte(handle, &Irte::msi(0x40, Destination::XApic(0), SourceId::Requester(edu))?)?;
//! // The device is then programmed with the remappable-format MSI for `handle`
//! // (`pci::msi::MsiMessage::remappable(handle, None)` in the PCI crate).
//! # let address = 0xFEE0_0010 | u64::from(handle) << 5;
//! assert!(matches!(
//!     unit.registers().interrupt(edu, address, 0),
//!     InterruptResult::Delivered { vector: 0x40, .. }
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::vec::Vec;
use core::fmt;

use dma::PhysAddr;
use pci_address::RequesterId;

use crate::platform::{Platform, TableMem, TABLE_PAGE_SIZE};
use crate::registers::{irte, Irta, IrteHi, IrteLo, SidBusRange, XApicDst};

/// The largest interrupt remapping table: `2^(15 + 1)` entries (IRTA.S = 15).
pub const MAX_ENTRIES: u32 = 1 << 16;
/// The smallest interrupt remapping table: `2^(0 + 1)` entries (IRTA.S = 0).
pub const MIN_ENTRIES: u32 = 2;
/// Vectors 0-15 are exceptions (and reserved): never the vector of a remapped interrupt.
pub const FIRST_VECTOR: u8 = 16;
/// IRTEs per 4 KiB page.
pub const ENTRIES_PER_PAGE: usize = TABLE_PAGE_SIZE / irte::SIZE;

/// Why an interrupt remapping operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntRemapError {
    /// The unit does not offer interrupt remapping (ECAP.IR = 0).
    NotSupported,
    /// Interrupt remapping needs queued invalidation (the interrupt entry cache has no
    /// register-based invalidation), and it is not active: call `VtdUnit::prepare` first.
    QueuedInvalidationOff,
    /// x2APIC mode (EIME) was asked for but the unit lacks ECAP.EIM.
    ExtendedModeUnsupported,
    /// Interrupt remapping is already enabled through this unit's own table.
    AlreadyEnabled,
    /// Interrupt remapping is not enabled (no table).
    NotEnabled,
    /// More entries than a table holds (65536), or none.
    BadTableSize {
        /// The number asked for.
        requested: u32,
    },
    /// A vector below 16 (an exception vector).
    ReservedVector(u8),
    /// An x2APIC (32-bit) destination in a table without EIME (xAPIC mode).
    DestinationNeedsEim(u32),
    /// An xAPIC destination in a table with EIME (x2APIC mode): use [`Destination::X2Apic`].
    DestinationNeedsXApicMode,
    /// A bus range whose start is above its end.
    BadBusRange {
        /// First bus.
        start: u8,
        /// Last bus.
        end: u8,
    },
    /// An entry count that is zero, not a power of two, or larger than the table.
    BadCount(u32),
    /// No free naturally aligned block of `count` entries is left.
    Exhausted {
        /// The block size asked for.
        count: u32,
    },
    /// The index (or block) is not one this table handed out.
    NotAllocated {
        /// The first index.
        index: u16,
    },
    /// Not a compatibility-format interrupt address (bits 31:20 must be 0xFEE, bit 4 clear).
    NotAnInterruptAddress(u64),
    /// No memory for the table.
    OutOfMemory,
}

impl fmt::Display for IntRemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotSupported => f.write_str("the unit has no interrupt remapping (ECAP.IR = 0)"),
            Self::QueuedInvalidationOff => {
                f.write_str("interrupt remapping needs queued invalidation, which is off")
            }
            Self::ExtendedModeUnsupported => {
                f.write_str("x2APIC mode (EIME) asked for without ECAP.EIM")
            }
            Self::AlreadyEnabled => f.write_str("interrupt remapping is already enabled"),
            Self::NotEnabled => f.write_str("interrupt remapping is not enabled"),
            Self::BadTableSize { requested } => write!(
                f,
                "an interrupt remapping table holds 1 to {MAX_ENTRIES} entries, not {requested}"
            ),
            Self::ReservedVector(v) => write!(f, "vector {v} is an exception vector (below 16)"),
            Self::DestinationNeedsEim(d) => {
                write!(f, "x2APIC destination {d:#x} needs EIME (x2APIC mode)")
            }
            Self::DestinationNeedsXApicMode => {
                f.write_str("xAPIC destination in an x2APIC-mode (EIME) table")
            }
            Self::BadBusRange { start, end } => {
                write!(f, "bus range {start:#04x}..={end:#04x} is empty")
            }
            Self::BadCount(n) => write!(f, "{n} entries: not a power of two within the table"),
            Self::Exhausted { count } => {
                write!(
                    f,
                    "no free aligned block of {count} interrupt remapping entries"
                )
            }
            Self::NotAllocated { index } => {
                write!(f, "interrupt remapping entry {index} is not allocated")
            }
            Self::NotAnInterruptAddress(a) => {
                write!(f, "{a:#x} is not a compatibility-format interrupt address")
            }
            Self::OutOfMemory => f.write_str("out of memory for the interrupt remapping table"),
        }
    }
}

impl core::error::Error for IntRemapError {}

/// Where a remapped interrupt goes (the IRTE's DST field, §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// An 8-bit xAPIC ID (tables without EIME).
    XApic(u8),
    /// A 32-bit x2APIC ID (tables with EIME only).
    X2Apic(u32),
}

/// The IRTE's delivery mode (DLM, §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// Fixed.
    Fixed,
    /// Lowest priority.
    LowestPriority,
    /// SMI.
    Smi,
    /// NMI.
    Nmi,
    /// INIT.
    Init,
    /// ExtINT.
    ExtInt,
}

impl DeliveryMode {
    const fn raw(self) -> u8 {
        match self {
            Self::Fixed => irte::DLM_FIXED,
            Self::LowestPriority => irte::DLM_LOWEST_PRIORITY,
            Self::Smi => irte::DLM_SMI,
            Self::Nmi => irte::DLM_NMI,
            Self::Init => irte::DLM_INIT,
            Self::ExtInt => irte::DLM_EXTINT,
        }
    }

    const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            irte::DLM_FIXED => Self::Fixed,
            irte::DLM_LOWEST_PRIORITY => Self::LowestPriority,
            irte::DLM_SMI => Self::Smi,
            irte::DLM_NMI => Self::Nmi,
            irte::DLM_INIT => Self::Init,
            irte::DLM_EXTINT => Self::ExtInt,
            _ => return None,
        })
    }
}

/// The IRTE's destination mode (DM, §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestMode {
    /// The destination is an APIC ID.
    Physical,
    /// The destination is a logical APIC ID / cluster.
    Logical,
}

/// The IRTE's trigger mode (TM, §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    /// Edge-triggered (MSI, MSI-X).
    Edge,
    /// Level-triggered (I/O APIC level inputs).
    Level,
}

/// Which requests may use an IRTE (source validation, §5.1.4 / §9.10 SVT, SQ, SID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceId {
    /// Only requests carrying exactly this requester ID (SVT = 1, SQ = 0: all 16 bits
    /// compared): the device's own ID, its isolation group's DMA alias when it sits behind a
    /// bridge, or the I/O APIC's source ID from its DMAR scope.
    Requester(RequesterId),
    /// Requests whose bus lies in `start..=end` (SVT = 2), for devices behind a PCIe-to-PCI
    /// bridge whose interrupts may arrive with any secondary bus number.
    Bus {
        /// First bus.
        start: u8,
        /// Last bus.
        end: u8,
    },
}

/// A present, remapped-format interrupt remapping table entry (§9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Irte {
    vector: u8,
    destination: Destination,
    delivery: DeliveryMode,
    dest_mode: DestMode,
    trigger: TriggerMode,
    redirection_hint: bool,
    source: SourceId,
    fpd: bool,
}

impl Irte {
    /// A present remapped-format entry delivering `vector` to `destination`, usable only by
    /// requests from `source`. Fault processing stays enabled (FPD = 0; see
    /// [`Irte::with_fault_processing_disabled`]).
    ///
    /// # Errors
    ///
    /// [`IntRemapError::ReservedVector`] for a vector below 16;
    /// [`IntRemapError::BadBusRange`] for a bus range with `start > end`.
    pub const fn remapped(
        vector: u8,
        destination: Destination,
        delivery: DeliveryMode,
        dest_mode: DestMode,
        trigger: TriggerMode,
        redirection_hint: bool,
        source: SourceId,
    ) -> Result<Self, IntRemapError> {
        if vector < FIRST_VECTOR {
            return Err(IntRemapError::ReservedVector(vector));
        }
        if let SourceId::Bus { start, end } = source {
            if start > end {
                return Err(IntRemapError::BadBusRange { start, end });
            }
        }
        Ok(Self {
            vector,
            destination,
            delivery,
            dest_mode,
            trigger,
            redirection_hint,
            source,
            fpd: false,
        })
    }

    /// A fixed, physical, edge-triggered entry without redirection hint: the usual MSI/MSI-X
    /// entry.
    ///
    /// # Errors
    ///
    /// As [`Irte::remapped`].
    pub const fn msi(
        vector: u8,
        destination: Destination,
        source: SourceId,
    ) -> Result<Self, IntRemapError> {
        Self::remapped(
            vector,
            destination,
            DeliveryMode::Fixed,
            DestMode::Physical,
            TriggerMode::Edge,
            false,
            source,
        )
    }

    /// The same entry with fault processing disabled (`true`: FPD = 1, faults through it are
    /// not recorded) or enabled.
    pub const fn with_fault_processing_disabled(mut self, disabled: bool) -> Self {
        self.fpd = disabled;
        self
    }

    /// The vector.
    pub const fn vector(&self) -> u8 {
        self.vector
    }

    /// The destination.
    pub const fn destination(&self) -> Destination {
        self.destination
    }

    /// The delivery mode.
    pub const fn delivery(&self) -> DeliveryMode {
        self.delivery
    }

    /// The destination mode.
    pub const fn dest_mode(&self) -> DestMode {
        self.dest_mode
    }

    /// The trigger mode.
    pub const fn trigger(&self) -> TriggerMode {
        self.trigger
    }

    /// The redirection hint.
    pub const fn redirection_hint(&self) -> bool {
        self.redirection_hint
    }

    /// Which requests may use the entry.
    pub const fn source(&self) -> SourceId {
        self.source
    }

    /// Whether fault processing is disabled (FPD).
    pub const fn fault_processing_disabled(&self) -> bool {
        self.fpd
    }

    /// The raw entry `(bits 63:0, bits 127:64)` for a table in xAPIC mode (`eime` false) or
    /// x2APIC mode (`eime` true).
    ///
    /// # Errors
    ///
    /// [`IntRemapError::DestinationNeedsEim`] for an x2APIC destination without EIME,
    /// [`IntRemapError::DestinationNeedsXApicMode`] for an xAPIC destination with it.
    pub const fn encode(&self, eime: bool) -> Result<(u64, u64), IntRemapError> {
        let dst = match (self.destination, eime) {
            (Destination::XApic(id), false) => XApicDst::new().with_apic_id(id).into_bits(),
            (Destination::X2Apic(id), true) => id,
            (Destination::X2Apic(id), false) => return Err(IntRemapError::DestinationNeedsEim(id)),
            (Destination::XApic(_), true) => return Err(IntRemapError::DestinationNeedsXApicMode),
        };
        let lo = IrteLo::new()
            .with_p(true)
            .with_fpd(self.fpd)
            .with_dm(matches!(self.dest_mode, DestMode::Logical))
            .with_rh(self.redirection_hint)
            .with_tm(matches!(self.trigger, TriggerMode::Level))
            .with_dlm(self.delivery.raw())
            .with_im(false)
            .with_vector(self.vector)
            .with_dst(dst);
        let hi = match self.source {
            SourceId::Requester(rid) => IrteHi::new()
                .with_svt(irte::SVT_REQUESTER)
                .with_sq(irte::SQ_ALL_BITS)
                .with_sid(rid.get()),
            SourceId::Bus { start, end } => IrteHi::new().with_svt(irte::SVT_BUS_RANGE).with_sid(
                SidBusRange::new()
                    .with_start(start)
                    .with_end(end)
                    .into_bits(),
            ),
        };
        Ok((lo.into_bits(), hi.into_bits()))
    }

    /// Decodes a raw entry of a table in xAPIC (`eime` false) or x2APIC mode. `None` for
    /// anything [`Irte::remapped`] cannot build: not present, posted format, reserved bits
    /// set, no source validation (SVT = 0), SQ ≠ 0, an unknown delivery mode or a vector
    /// below 16.
    pub const fn decode(lo: u64, hi: u64, eime: bool) -> Option<Self> {
        let l = IrteLo::from_bits(lo);
        let h = IrteHi::from_bits(hi);
        if !l.p() || l.im() || l.reserved_14_12() != 0 || l.reserved_31_24() != 0 {
            return None;
        }
        if h.reserved() != 0 || l.vector() < FIRST_VECTOR {
            return None;
        }
        let destination = if eime {
            Destination::X2Apic(l.dst())
        } else {
            let d = XApicDst::from_bits(l.dst());
            if d.reserved_lo() != 0 || d.reserved_hi() != 0 {
                return None;
            }
            Destination::XApic(d.apic_id())
        };
        let source = match (h.svt(), h.sq()) {
            (irte::SVT_REQUESTER, irte::SQ_ALL_BITS) => {
                SourceId::Requester(RequesterId::new(h.sid()))
            }
            (irte::SVT_BUS_RANGE, 0) => {
                let r = SidBusRange::from_bits(h.sid());
                if r.start() > r.end() {
                    return None;
                }
                SourceId::Bus {
                    start: r.start(),
                    end: r.end(),
                }
            }
            _ => return None,
        };
        let Some(delivery) = DeliveryMode::from_raw(l.dlm()) else {
            return None;
        };
        Some(Self {
            vector: l.vector(),
            destination,
            delivery,
            dest_mode: if l.dm() {
                DestMode::Logical
            } else {
                DestMode::Physical
            },
            trigger: if l.tm() {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
            redirection_hint: l.rh(),
            source,
            fpd: l.fpd(),
        })
    }
}

/// The table size for `requested` entries: the next power of two, at least [`MIN_ENTRIES`].
///
/// # Errors
///
/// [`IntRemapError::BadTableSize`] for 0 or more than [`MAX_ENTRIES`].
pub const fn table_entries(requested: u32) -> Result<u32, IntRemapError> {
    if requested == 0 || requested > MAX_ENTRIES {
        return Err(IntRemapError::BadTableSize { requested });
    }
    let n = requested.next_power_of_two();
    Ok(if n < MIN_ENTRIES { MIN_ENTRIES } else { n })
}

/// An interrupt remapping table in memory, with its allocation of entries.
#[derive(Debug)]
pub struct InterruptRemapTable {
    base: PhysAddr,
    pages: usize,
    entries: u32,
    eime: bool,
    coherent: bool,
    /// Allocated blocks `(first index, count)`, each naturally aligned.
    blocks: Vec<(u32, u32)>,
}

impl InterruptRemapTable {
    /// Allocates a zeroed (all entries not present) table of [`table_entries`]`(requested)`
    /// entries and writes it back from the CPU cache unless `coherent`.
    ///
    /// # Errors
    ///
    /// [`IntRemapError::BadTableSize`]; [`IntRemapError::OutOfMemory`] when the platform
    /// cannot give that many contiguous pages.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        requested: u32,
        eime: bool,
        coherent: bool,
    ) -> Result<Self, IntRemapError> {
        let entries = table_entries(requested)?;
        let pages = (entries as usize).div_ceil(ENTRIES_PER_PAGE);
        let page = platform
            .alloc_table_pages(pages)
            .ok_or(IntRemapError::OutOfMemory)?;
        let table = Self {
            base: page.phys,
            pages,
            entries,
            eime,
            coherent,
            blocks: Vec::new(),
        };
        for p in 0..pages {
            table.page_mem(platform, p).flush_all();
        }
        Ok(table)
    }

    /// The table's physical address.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// The number of entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether the table is in x2APIC mode (EIME).
    pub fn eime(&self) -> bool {
        self.eime
    }

    /// The IRTA value: base, EIME, `S` with `2^(S + 1)` = entries.
    pub fn irta(&self) -> u64 {
        let s = self.entries.trailing_zeros().saturating_sub(1);
        Irta::new()
            .with_base(self.base.as_u64())
            .with_eime(self.eime)
            .with_s(u8::try_from(s).unwrap_or(0))
            .into_bits()
    }

    fn page_mem<'p, P: Platform + ?Sized>(&self, platform: &'p P, page: usize) -> TableMem<'p, P> {
        let phys = PhysAddr::new(self.base.as_u64() + (page * TABLE_PAGE_SIZE) as u64);
        // SAFETY: `page < self.pages`, so `phys` is a page of the block this table allocated
        // and owns until `destroy`; the unit's interrupt-remapping lock serialises writers.
        unsafe { TableMem::new(platform, phys, self.coherent) }
    }

    /// Allocates a naturally aligned block of `count` entries (a power of two: a multi-message
    /// MSI's handle with subhandles `0..count`) and returns its first index (the handle).
    ///
    /// # Errors
    ///
    /// [`IntRemapError::BadCount`] for a count that is 0, not a power of two or larger than
    /// the table; [`IntRemapError::Exhausted`] when no aligned free block is left.
    pub fn alloc(&mut self, count: u32) -> Result<u16, IntRemapError> {
        if count == 0 || !count.is_power_of_two() || count > self.entries {
            return Err(IntRemapError::BadCount(count));
        }
        self.blocks
            .try_reserve(1)
            .map_err(|_| IntRemapError::OutOfMemory)?;
        let free = |start: u32| {
            self.blocks
                .iter()
                .all(|&(s, n)| start + count <= s || s + n <= start)
        };
        let start = (0..self.entries / count)
            .map(|i| i * count)
            .find(|&s| free(s))
            .ok_or(IntRemapError::Exhausted { count })?;
        self.blocks.push((start, count));
        u16::try_from(start).map_err(|_| IntRemapError::Exhausted { count })
    }

    /// Returns the block `index..index + count` (exactly as [`InterruptRemapTable::alloc`]
    /// handed it out) to the allocator. The caller cleared and invalidated its entries.
    ///
    /// # Errors
    ///
    /// [`IntRemapError::NotAllocated`] when no such block is allocated.
    pub fn free(&mut self, index: u16, count: u32) -> Result<(), IntRemapError> {
        let at = self
            .blocks
            .iter()
            .position(|&b| b == (u32::from(index), count))
            .ok_or(IntRemapError::NotAllocated { index })?;
        self.blocks.swap_remove(at);
        Ok(())
    }

    /// The allocated block `index` lies in, as `(first, count)`.
    pub fn block_of(&self, index: u16) -> Option<(u16, u32)> {
        let i = u32::from(index);
        self.blocks
            .iter()
            .find(|&&(s, n)| s <= i && i < s + n)
            .and_then(|&(s, n)| Some((u16::try_from(s).ok()?, n)))
    }

    /// Whether `index` lies in an allocated block.
    pub fn is_allocated(&self, index: u16) -> bool {
        self.block_of(index).is_some()
    }

    /// The raw entry `index` as the CPU sees it (`None`: beyond the table).
    pub fn read<P: Platform + ?Sized>(&self, platform: &P, index: u16) -> Option<(u64, u64)> {
        let (page, pair) = self.locate(index)?;
        let mem = self.page_mem(platform, page);
        Some((mem.read(pair * 2), mem.read(pair * 2 + 1)))
    }

    /// The decoded entry `index` (`None`: beyond the table, or not an entry [`Irte::decode`]
    /// accepts).
    pub fn get<P: Platform + ?Sized>(&self, platform: &P, index: u16) -> Option<Irte> {
        let (lo, hi) = self.read(platform, index)?;
        Irte::decode(lo, hi, self.eime)
    }

    fn locate(&self, index: u16) -> Option<(usize, usize)> {
        let i = usize::from(index);
        (u32::from(index) < self.entries).then_some((i / ENTRIES_PER_PAGE, i % ENTRIES_PER_PAGE))
    }

    /// Writes raw entry `index` so the hardware never sees half of it, then writes it back
    /// from the CPU cache (ECAP.C = 0). With a 16-byte atomic store the entry changes at once;
    /// without one, a present entry is first made not present (its low half with P = 0), then
    /// the high half is written, then the low half with P: a request in between is blocked,
    /// never delivered through a mix of old and new fields. The caller invalidates the
    /// interrupt entry cache afterwards.
    ///
    /// Does nothing for an index beyond the table.
    pub fn write_raw<P: Platform + ?Sized>(&self, platform: &P, index: u16, lo: u64, hi: u64) {
        let Some((page, pair)) = self.locate(index) else {
            return;
        };
        let mem = self.page_mem(platform, page);
        if !mem.write_u128_atomic(pair, lo, hi) {
            Self::write_two_stores(platform, &mem, pair, lo, hi);
        }
        mem.flush(pair * 2, pair * 2 + 1);
    }

    /// The ordering without a 16-byte store: a present entry is made not present first, then
    /// the high half, then the low half (with P) are written, each written back before the
    /// next.
    fn write_two_stores<P: Platform + ?Sized>(
        platform: &P,
        mem: &TableMem<'_, P>,
        pair: usize,
        lo: u64,
        hi: u64,
    ) {
        let old = IrteLo::from_bits(mem.read(pair * 2));
        if old.p() {
            mem.write(pair * 2, old.with_p(false).into_bits());
            mem.flush(pair * 2, pair * 2);
            platform.memory_fence();
        }
        mem.write(pair * 2 + 1, hi);
        mem.flush(pair * 2 + 1, pair * 2 + 1);
        platform.memory_fence();
        mem.write(pair * 2, lo);
    }

    /// Encodes `entry` for this table's mode and writes it at `index` ([`Self::write_raw`]).
    ///
    /// # Errors
    ///
    /// [`IntRemapError::NotAllocated`] for an index not handed out by
    /// [`InterruptRemapTable::alloc`]; the destination-format errors of [`Irte::encode`].
    pub fn set<P: Platform + ?Sized>(
        &self,
        platform: &P,
        index: u16,
        entry: &Irte,
    ) -> Result<(), IntRemapError> {
        if !self.is_allocated(index) {
            return Err(IntRemapError::NotAllocated { index });
        }
        let (lo, hi) = entry.encode(self.eime)?;
        self.write_raw(platform, index, lo, hi);
        Ok(())
    }

    /// Frees the table memory.
    ///
    /// # Safety
    ///
    /// Interrupt remapping must be off (GSTS.IRES clear) or pointed at another table, with
    /// the interrupt entry cache invalidated since, so the hardware no longer reads it.
    pub unsafe fn destroy<P: Platform + ?Sized>(self, platform: &P) {
        // SAFETY: the block is ours (allocated in `new` with this count); the caller
        // guarantees the hardware no longer reads it.
        unsafe { platform.free_table_pages(self.base, self.pages) }
    }
}

#[cfg(test)]
mod tests;
