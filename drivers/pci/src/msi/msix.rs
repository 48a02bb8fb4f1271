//! The MSI-X capability (PCIe Base 4.0 §7.7.2, capability ID 11h): Message Control in
//! configuration space, and a table of up to 2048 entries (address, data, vector control) plus
//! a Pending Bit Array in memory BARs, reached through [`MsixMemory`].
//!
//! Ordering, as the specification and Linux (`msix_capability_init`) do it:
//! - enabling sets Function Mask together with MSI-X Enable, masks every entry, programs the
//!   entries asked for (each masked while its address and data are written), unmasks them and
//!   only then clears Function Mask;
//! - reprogramming one entry masks it for the duration of the three dword writes and restores
//!   its mask bit after;
//! - disabling sets Function Mask before clearing MSI-X Enable.
//!
//! The table and PBA locations come from the device; [`Msix::new`] refuses a table or PBA that
//! does not lie inside the memory it is given (the BAR's size), so a malformed capability is an
//! error, never an access outside the mapping.

use core::fmt;

use super::exclusive::msi_enabled;
use super::memory::MsixMemory;
use super::message::MsiMessage;
use crate::capability::standard_capabilities;
use crate::regs::{msix, CapabilityId, MsixControl, MsixLocation, MsixVectorControl};
use crate::{Bdf, ConfigSpace};

/// Why an MSI-X operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no MSI-X capability.
    NotPresent,
    /// The function reads all-ones: it is absent or not responding.
    NotResponding,
    /// A BAR Indicator of 6 or 7 (reserved).
    ReservedBir {
        /// The BIR read.
        bir: u8,
    },
    /// The table does not fit in the memory given for its BAR.
    TableOutsideBar {
        /// Table offset in the BAR.
        offset: u32,
        /// Table size in bytes.
        size: u32,
        /// Bytes the BAR mapping has.
        bar_size: usize,
    },
    /// The PBA does not fit in the memory given for its BAR.
    PbaOutsideBar {
        /// PBA offset in the BAR.
        offset: u32,
        /// PBA size in bytes.
        size: u32,
        /// Bytes the BAR mapping has.
        bar_size: usize,
    },
    /// Table and PBA share a BAR and overlap.
    TableOverlapsPba,
    /// An entry number at or above the table size.
    EntryOutOfRange {
        /// The entry.
        entry: u16,
        /// Entries in the table.
        table_size: u16,
    },
    /// The message address is not dword aligned (bits 1:0 must be zero).
    MisalignedAddress {
        /// The address.
        address: u64,
    },
    /// MSI is enabled on the function; MSI and MSI-X are mutually exclusive.
    MsiEnabled,
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPresent => write!(f, "the function has no MSI-X capability"),
            Self::NotResponding => write!(f, "the function's MSI-X capability reads all-ones"),
            Self::ReservedBir { bir } => write!(f, "MSI-X BAR indicator {bir} is reserved"),
            Self::TableOutsideBar {
                offset,
                size,
                bar_size,
            } => write!(
                f,
                "MSI-X table at {offset:#x} ({size} bytes) lies outside its {bar_size}-byte BAR"
            ),
            Self::PbaOutsideBar {
                offset,
                size,
                bar_size,
            } => write!(
                f,
                "MSI-X PBA at {offset:#x} ({size} bytes) lies outside its {bar_size}-byte BAR"
            ),
            Self::TableOverlapsPba => write!(f, "MSI-X table and PBA overlap"),
            Self::EntryOutOfRange { entry, table_size } => write!(
                f,
                "MSI-X entry {entry} out of range (the table has {table_size})"
            ),
            Self::MisalignedAddress { address } => {
                write!(f, "message address {address:#x} is not dword aligned")
            }
            Self::MsiEnabled => write!(f, "MSI is enabled: disable it before enabling MSI-X"),
        }
    }
}

impl core::error::Error for MsixError {}

/// Where an MSI-X structure lives: a BAR and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixRegion {
    /// BAR index (0-5).
    pub bir: u8,
    /// Byte offset from the BAR's base (qword aligned).
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl MsixRegion {
    /// One past the last byte, in the BAR.
    fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.size)
    }

    fn fits(&self, bar_size: usize) -> bool {
        u64::try_from(bar_size).is_ok_and(|bar| self.end() <= bar)
    }
}

/// An offset inside a table or PBA that `Msix::with_capability` found to fit in a mapping of
/// `usize` bytes, so it converts; saturating keeps the impossible case an out-of-range access,
/// which [`MsixMemory`] ignores.
fn in_mapping(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

/// What a function's MSI-X capability advertises and its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    control: MsixControl,
    table: MsixLocation,
    pba: MsixLocation,
}

impl MsixCapability {
    /// Finds and reads the function's MSI-X capability.
    ///
    /// # Errors
    ///
    /// [`MsixError::NotPresent`] without one, [`MsixError::NotResponding`] when it reads
    /// all-ones.
    pub fn find(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<Self, MsixError> {
        let offset = standard_capabilities(cfg, bdf)
            .entries
            .iter()
            .find(|c| c.id == CapabilityId::MSI_X)
            .map(|c| c.offset)
            .ok_or(MsixError::NotPresent)?;
        Self::read(cfg, bdf, offset)
    }

    /// Reads the MSI-X capability at `offset` (from a capability walk).
    ///
    /// # Errors
    ///
    /// [`MsixError::NotResponding`] when its registers read all-ones.
    pub fn read(cfg: &impl ConfigSpace, bdf: Bdf, offset: u8) -> Result<Self, MsixError> {
        let base = u16::from(offset);
        let control = cfg.read16(bdf, base + msix::CONTROL);
        let table = cfg.read32(bdf, base + msix::TABLE);
        let pba = cfg.read32(bdf, base + msix::PBA);
        if control == u16::MAX || table == u32::MAX || pba == u32::MAX {
            return Err(MsixError::NotResponding);
        }
        Ok(Self {
            offset,
            control: MsixControl::from_bits(control),
            table: MsixLocation::from_bits(table),
            pba: MsixLocation::from_bits(pba),
        })
    }

    /// Entries in the table (1-2048).
    pub fn table_size(&self) -> u16 {
        self.control.table_size_minus_one() + 1
    }

    /// Where the table is.
    pub fn table(&self) -> MsixRegion {
        MsixRegion {
            bir: self.table.bir(),
            offset: self.table.offset(),
            size: u32::from(self.table_size()) * msix::ENTRY_SIZE,
        }
    }

    /// Where the Pending Bit Array is (one bit per entry, in qwords).
    pub fn pba(&self) -> MsixRegion {
        let qwords = u32::from(self.table_size()).div_ceil(msix::PBA_BITS_PER_QWORD);
        MsixRegion {
            bir: self.pba.bir(),
            offset: self.pba.offset(),
            size: qwords * msix::PBA_BYTES_PER_QWORD,
        }
    }

    /// Whether MSI-X is enabled.
    pub fn is_enabled(&self) -> bool {
        self.control.enable()
    }

    /// Whether Function Mask is set.
    pub fn is_function_masked(&self) -> bool {
        self.control.function_mask()
    }
}

/// `lspci -vv` style, three lines: `MSI-X: Enable- Count=5 Masked-`, then `Vector table:
/// BAR=3 offset=00000000` and `PBA: BAR=3 offset=00002000`.
impl fmt::Display for MsixCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |b: bool| if b { '+' } else { '-' };
        let (table, pba) = (self.table(), self.pba());
        writeln!(
            f,
            "MSI-X: Enable{} Count={} Masked{}",
            flag(self.is_enabled()),
            self.table_size(),
            flag(self.is_function_masked())
        )?;
        writeln!(
            f,
            "\tVector table: BAR={} offset={:08x}",
            table.bir, table.offset
        )?;
        write!(f, "\tPBA: BAR={} offset={:08x}", pba.bir, pba.offset)
    }
}

/// One function's MSI-X capability with its table and PBA memory.
///
/// `T` maps the BAR [`MsixCapability::table`] names and `P` the one [`MsixCapability::pba`]
/// names, each from the BAR's base; when both are in the same BAR, pass the same mapping
/// twice (by reference).
#[derive(Debug)]
pub struct Msix<C, T, P = T> {
    cfg: C,
    bdf: Bdf,
    cap: MsixCapability,
    table: T,
    pba: P,
}

impl<C: ConfigSpace, T: MsixMemory, P: MsixMemory> Msix<C, T, P> {
    /// Finds the MSI-X capability of `bdf` and checks its table and PBA against the memory
    /// given for their BARs.
    ///
    /// # Errors
    ///
    /// The errors of [`MsixCapability::find`] and [`Msix::with_capability`].
    pub fn new(cfg: C, bdf: Bdf, table: T, pba: P) -> Result<Self, MsixError> {
        let cap = MsixCapability::find(&cfg, bdf)?;
        Self::with_capability(cfg, bdf, cap, table, pba)
    }

    /// As [`Msix::new`] for a capability already read.
    ///
    /// # Errors
    ///
    /// [`MsixError::ReservedBir`], [`MsixError::TableOutsideBar`],
    /// [`MsixError::PbaOutsideBar`] or [`MsixError::TableOverlapsPba`] for a layout the memory
    /// cannot hold.
    pub fn with_capability(
        cfg: C,
        bdf: Bdf,
        cap: MsixCapability,
        table: T,
        pba: P,
    ) -> Result<Self, MsixError> {
        let (t, p) = (cap.table(), cap.pba());
        for bir in [t.bir, p.bir] {
            if bir >= crate::regs::header::TYPE0_BAR_COUNT {
                return Err(MsixError::ReservedBir { bir });
            }
        }
        if !t.fits(table.len()) {
            return Err(MsixError::TableOutsideBar {
                offset: t.offset,
                size: t.size,
                bar_size: table.len(),
            });
        }
        if !p.fits(pba.len()) {
            return Err(MsixError::PbaOutsideBar {
                offset: p.offset,
                size: p.size,
                bar_size: pba.len(),
            });
        }
        let disjoint = t.end() <= u64::from(p.offset) || p.end() <= u64::from(t.offset);
        if t.bir == p.bir && !disjoint {
            return Err(MsixError::TableOverlapsPba);
        }
        Ok(Self {
            cfg,
            bdf,
            cap,
            table,
            pba,
        })
    }

    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The capability as last read or written.
    pub fn capability(&self) -> MsixCapability {
        self.cap
    }

    /// Entries in the table.
    pub fn table_size(&self) -> u16 {
        self.cap.table_size()
    }

    fn write_control(&mut self, control: MsixControl) {
        let register = u16::from(self.cap.offset) + msix::CONTROL;
        self.cfg.write16(self.bdf, register, control.into_bits());
        self.cap.control = control;
    }

    fn read_control(&mut self) -> Result<MsixControl, MsixError> {
        let raw = self
            .cfg
            .read16(self.bdf, u16::from(self.cap.offset) + msix::CONTROL);
        if raw == u16::MAX {
            return Err(MsixError::NotResponding);
        }
        self.cap.control = MsixControl::from_bits(raw);
        Ok(self.cap.control)
    }

    /// Byte offset of `entry`'s dword `field` in the table BAR.
    fn entry_offset(&self, entry: u16, field: u32) -> Result<usize, MsixError> {
        let table_size = self.table_size();
        if entry >= table_size {
            return Err(MsixError::EntryOutOfRange { entry, table_size });
        }
        let offset = u64::from(self.cap.table().offset)
            + u64::from(entry) * u64::from(msix::ENTRY_SIZE)
            + u64::from(field);
        Ok(in_mapping(offset))
    }

    fn vector_control(&self, entry: u16) -> Result<(usize, MsixVectorControl), MsixError> {
        let offset = self.entry_offset(entry, msix::ENTRY_VECTOR_CONTROL)?;
        Ok((
            offset,
            MsixVectorControl::from_bits(self.table.read32(offset)),
        ))
    }

    fn set_mask(&mut self, entry: u16, masked: bool) -> Result<(), MsixError> {
        let (offset, control) = self.vector_control(entry)?;
        if control.mask() != masked {
            self.table
                .write32(offset, control.with_mask(masked).into_bits());
        }
        Ok(())
    }

    /// Writes `message` into `entry`, masking the entry while its address and data are written
    /// and restoring its mask bit after (entries are masked after reset, so a new entry stays
    /// masked until [`Msix::unmask`]).
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`], [`MsixError::MisalignedAddress`], before any write.
    pub fn configure(&mut self, entry: u16, message: MsiMessage) -> Result<(), MsixError> {
        let (control_offset, control) = self.vector_control(entry)?;
        if !message.address.is_multiple_of(4) {
            return Err(MsixError::MisalignedAddress {
                address: message.address,
            });
        }
        if !control.mask() {
            self.table
                .write32(control_offset, control.with_mask(true).into_bits());
        }
        let low = self.entry_offset(entry, msix::ENTRY_ADDRESS_LOW)?;
        let high = self.entry_offset(entry, msix::ENTRY_ADDRESS_HIGH)?;
        let data = self.entry_offset(entry, msix::ENTRY_DATA)?;
        self.table.write32(low, message.address_low());
        self.table.write32(high, message.address_high());
        self.table.write32(data, message.data);
        if !control.mask() {
            self.table.write32(control_offset, control.into_bits());
        }
        Ok(())
    }

    /// The message programmed in `entry`.
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`].
    pub fn message(&self, entry: u16) -> Result<MsiMessage, MsixError> {
        let low = self.entry_offset(entry, msix::ENTRY_ADDRESS_LOW)?;
        let high = self.entry_offset(entry, msix::ENTRY_ADDRESS_HIGH)?;
        let data = self.entry_offset(entry, msix::ENTRY_DATA)?;
        Ok(MsiMessage::from_dwords(
            self.table.read32(low),
            self.table.read32(high),
            self.table.read32(data),
        ))
    }

    /// Masks `entry`.
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`].
    pub fn mask(&mut self, entry: u16) -> Result<(), MsixError> {
        self.set_mask(entry, true)
    }

    /// Unmasks `entry`; a pending message is sent then.
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`].
    pub fn unmask(&mut self, entry: u16) -> Result<(), MsixError> {
        self.set_mask(entry, false)
    }

    /// Whether `entry`'s mask bit is set (Function Mask aside).
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`].
    pub fn is_masked(&self, entry: u16) -> Result<bool, MsixError> {
        Ok(self.vector_control(entry)?.1.mask())
    }

    /// Whether `entry` has a message pending in the PBA (raised while masked).
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`].
    pub fn is_pending(&self, entry: u16) -> Result<bool, MsixError> {
        let table_size = self.table_size();
        if entry >= table_size {
            return Err(MsixError::EntryOutOfRange { entry, table_size });
        }
        let dword = u32::from(entry) / msix::PBA_BITS_PER_DWORD;
        let bit = u32::from(entry) % msix::PBA_BITS_PER_DWORD;
        let offset = u64::from(self.cap.pba().offset) + u64::from(dword) * 4;
        Ok(self.pba.read32(in_mapping(offset)) & (1 << bit) != 0)
    }

    /// Enables MSI-X with `entries` live: Function Mask and Enable are set together, every
    /// entry is masked, each listed entry is programmed (masked while written) and unmasked,
    /// then Function Mask is cleared. Entries not listed stay masked.
    ///
    /// # Errors
    ///
    /// [`MsixError::EntryOutOfRange`] or [`MsixError::MisalignedAddress`] for a listed entry,
    /// and [`MsixError::MsiEnabled`] when MSI is enabled, before any write;
    /// [`MsixError::NotResponding`].
    pub fn enable(&mut self, entries: &[(u16, MsiMessage)]) -> Result<(), MsixError> {
        if msi_enabled(&self.cfg, self.bdf) {
            return Err(MsixError::MsiEnabled);
        }
        let table_size = self.table_size();
        for &(entry, message) in entries {
            if entry >= table_size {
                return Err(MsixError::EntryOutOfRange { entry, table_size });
            }
            if !message.address.is_multiple_of(4) {
                return Err(MsixError::MisalignedAddress {
                    address: message.address,
                });
            }
        }
        let control = self.read_control()?;
        self.write_control(control.with_function_mask(true).with_enable(true));
        for entry in 0..table_size {
            self.mask(entry)?;
        }
        for &(entry, message) in entries {
            self.configure(entry, message)?;
            self.unmask(entry)?;
        }
        self.write_control(self.cap.control.with_function_mask(false));
        Ok(())
    }

    /// Sets or clears Function Mask (every vector held while set).
    ///
    /// # Errors
    ///
    /// [`MsixError::NotResponding`].
    pub fn set_function_mask(&mut self, masked: bool) -> Result<(), MsixError> {
        let control = self.read_control()?;
        self.write_control(control.with_function_mask(masked));
        Ok(())
    }

    /// Disables MSI-X: Function Mask first, then Enable (and Function Mask) cleared.
    ///
    /// # Errors
    ///
    /// [`MsixError::NotResponding`].
    pub fn disable(&mut self) -> Result<(), MsixError> {
        let control = self.read_control()?;
        self.write_control(control.with_function_mask(true));
        self.write_control(control.with_function_mask(false).with_enable(false));
        Ok(())
    }
}
