//! Primary fault recording: reading, decoding and clearing the fault recording registers.
//!
//! Implements VT-d spec §7.1 (fault reporting for DMA remapping), §7.1.3 (fault reasons,
//! table of non-recoverable fault reason encodings) and §11.4.14 (fault recording registers).
//! CAP.NFR + 1 records of 16 bytes sit at CAP.FRO × 16. While a record's F bit is set, QEMU
//! drops new faults from the same source-id and sets FSTS.PFO for others, so a test clears F
//! and PFO before each expected fault. Interrupt-remapping faults (reasons 20h-27h) carry the
//! interrupt index in FI bits 63:48 ([`FaultRecord::interrupt_index`]).
//!
//! Scalable mode adds reasons 30h and up (§7.1.3's scalable-mode table). Those QEMU records
//! are named here ([`FaultReason::is_scalable_mode`]); which ones it records differs by
//! version: QEMU 7.2 records only 58h (any bad PASID directory or table entry) and 59h (PASID
//! entry not present), keeping the legacy codes for root/context entries (1h, 2h, 3h) and
//! second-stage entries (5h, 6h, Ch) in scalable mode too; QEMU 10 also records 31h, 50h,
//! 51h, 5Bh and, with first-stage translation, 70h–72h and 80h.
//!
//! FECTL.IM is set at reset: faults are polled ([`read_and_clear_faults`], which clears exactly
//! what it returned). With the fault event unmasked (§7.3, programmed by the unit), the
//! handler runs [`service_faults`]: the hardware sends the next event only when a fault is
//! recorded while none is pending, so the handler loops until nothing is pending.

use alloc::vec::Vec;
use core::fmt;

use crate::caps::Capabilities;
use crate::registers::{self, frcd, FaultStatus, FrcdHi, FrcdLo, FrcdLoIr, Fsts, RegisterIo};
use pci_address::RequesterId;

/// Why a DMA request was blocked (the fault reason, FR), §7.1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// 1h: the root entry of the bus is not present.
    RootEntryNotPresent,
    /// 2h: the context entry of the device is not present (the device has no domain).
    ContextEntryNotPresent,
    /// 3h: invalid programming of a context entry (e.g. AW not in SAGAW / not the depth).
    InvalidContextEntry,
    /// 4h: the input address is above the domain's address width.
    AddressBeyondWidth,
    /// 5h: write to a not-present or read-only page.
    WriteNotPermitted,
    /// 6h: read from a not-present or write-only page.
    ReadNotPermitted,
    /// 7h: error accessing a second-level paging entry.
    PagingEntryAccess,
    /// 8h: error accessing the root table.
    RootTableAccess,
    /// 9h: error accessing the context table.
    ContextTableAccess,
    /// Ah: reserved field set in a root entry.
    RootEntryReserved,
    /// Bh: reserved field set in a context entry.
    ContextEntryReserved,
    /// Ch: reserved field set in a second-level paging entry (e.g. SNP without ECAP.SC).
    PagingEntryReserved,
    /// Dh: the translation type of the request is blocked by the context entry.
    TranslationTypeBlocked,
    /// 20h: an interrupt request with a reserved field set (e.g. remappable-format data bits
    /// 31:16).
    InterruptRequestReserved,
    /// 21h: the interrupt index is beyond the interrupt remapping table.
    InterruptIndexBeyondTable,
    /// 22h: the IRTE is not present.
    IrteNotPresent,
    /// 23h: error accessing the interrupt remapping table.
    IrtAccess,
    /// 24h: reserved field set in the IRTE (or a posted-format entry without posting).
    IrteReserved,
    /// 25h: a compatibility-format interrupt blocked (IRE set, CFIS clear).
    CompatibilityInterruptBlocked,
    /// 26h: a remappable interrupt blocked by source-id validation (SVT/SQ/SID mismatch).
    InterruptSourceIdMismatch,
    /// 27h: error accessing a posted-interrupt descriptor.
    PostedDescriptorAccess,
    /// 31h: RTADDR.TTM names a translation-table mode the unit does not support (scalable mode; QEMU 10's `VTD_FR_RTADDR_INV_TTM`).
    RootTableModeInvalid,
    /// 50h: error accessing a PASID directory entry (scalable mode; QEMU 10's `VTD_FR_PASID_DIR_ACCESS_ERR`).
    PasidDirectoryAccess,
    /// 51h: the PASID directory entry is not present (scalable mode; QEMU 10's `VTD_FR_PASID_DIR_ENTRY_P`).
    PasidDirectoryEntryNotPresent,
    /// 58h: error accessing a PASID table entry (scalable mode). QEMU 7.2 records 58h (`VTD_FR_PASID_TABLE_INV`) for *every* bad PASID directory or PASID table entry (access error, directory entry not present, invalid PGTT/AW); QEMU 10 only for access errors.
    PasidTableAccess,
    /// 59h: the PASID table entry is not present (scalable mode; QEMU 7.2 and 10: `VTD_FR_PASID_ENTRY_P`).
    PasidEntryNotPresent,
    /// 5Bh: invalid PASID table entry programming, e.g. a PGTT the unit does not support or an AW not in SAGAW (scalable mode; QEMU 10's `VTD_FR_PASID_TABLE_ENTRY_INV`).
    PasidEntryInvalid,
    /// 70h: error accessing a first-stage paging entry (QEMU 10's `VTD_FR_FS_PAGING_ENTRY_INV`).
    FirstStageEntryAccess,
    /// 71h: a first-stage paging entry is not present (QEMU 10's `VTD_FR_FS_PAGING_ENTRY_P`).
    FirstStageEntryNotPresent,
    /// 72h: reserved field set in a present first-stage paging entry (QEMU 10's `VTD_FR_FS_PAGING_ENTRY_RSVD`).
    FirstStageEntryReserved,
    /// 80h: a first-stage input address is not canonical (QEMU 10's `VTD_FR_FS_NON_CANONICAL`).
    FirstStageNonCanonical,
    /// 87h: the output address falls in the interrupt range 0xFEEx_xxxx (scalable mode; QEMU's `VTD_FR_SM_INTERRUPT_ADDR`).
    ScalableInterruptAddress,
    /// Any other encoding.
    Other(u8),
}

impl FaultReason {
    /// Decodes an FR value.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            0x1 => Self::RootEntryNotPresent,
            0x2 => Self::ContextEntryNotPresent,
            0x3 => Self::InvalidContextEntry,
            0x4 => Self::AddressBeyondWidth,
            0x5 => Self::WriteNotPermitted,
            0x6 => Self::ReadNotPermitted,
            0x7 => Self::PagingEntryAccess,
            0x8 => Self::RootTableAccess,
            0x9 => Self::ContextTableAccess,
            0xA => Self::RootEntryReserved,
            0xB => Self::ContextEntryReserved,
            0xC => Self::PagingEntryReserved,
            0xD => Self::TranslationTypeBlocked,
            0x20 => Self::InterruptRequestReserved,
            0x21 => Self::InterruptIndexBeyondTable,
            0x22 => Self::IrteNotPresent,
            0x23 => Self::IrtAccess,
            0x24 => Self::IrteReserved,
            0x25 => Self::CompatibilityInterruptBlocked,
            0x26 => Self::InterruptSourceIdMismatch,
            0x27 => Self::PostedDescriptorAccess,
            0x31 => Self::RootTableModeInvalid,
            0x50 => Self::PasidDirectoryAccess,
            0x51 => Self::PasidDirectoryEntryNotPresent,
            0x58 => Self::PasidTableAccess,
            0x59 => Self::PasidEntryNotPresent,
            0x5B => Self::PasidEntryInvalid,
            0x70 => Self::FirstStageEntryAccess,
            0x71 => Self::FirstStageEntryNotPresent,
            0x72 => Self::FirstStageEntryReserved,
            0x80 => Self::FirstStageNonCanonical,
            0x87 => Self::ScalableInterruptAddress,
            other => Self::Other(other),
        }
    }

    /// The FR value.
    pub const fn raw(self) -> u8 {
        match self {
            Self::RootEntryNotPresent => 0x1,
            Self::ContextEntryNotPresent => 0x2,
            Self::InvalidContextEntry => 0x3,
            Self::AddressBeyondWidth => 0x4,
            Self::WriteNotPermitted => 0x5,
            Self::ReadNotPermitted => 0x6,
            Self::PagingEntryAccess => 0x7,
            Self::RootTableAccess => 0x8,
            Self::ContextTableAccess => 0x9,
            Self::RootEntryReserved => 0xA,
            Self::ContextEntryReserved => 0xB,
            Self::PagingEntryReserved => 0xC,
            Self::TranslationTypeBlocked => 0xD,
            Self::InterruptRequestReserved => 0x20,
            Self::InterruptIndexBeyondTable => 0x21,
            Self::IrteNotPresent => 0x22,
            Self::IrtAccess => 0x23,
            Self::IrteReserved => 0x24,
            Self::CompatibilityInterruptBlocked => 0x25,
            Self::InterruptSourceIdMismatch => 0x26,
            Self::PostedDescriptorAccess => 0x27,
            Self::RootTableModeInvalid => 0x31,
            Self::PasidDirectoryAccess => 0x50,
            Self::PasidDirectoryEntryNotPresent => 0x51,
            Self::PasidTableAccess => 0x58,
            Self::PasidEntryNotPresent => 0x59,
            Self::PasidEntryInvalid => 0x5B,
            Self::FirstStageEntryAccess => 0x70,
            Self::FirstStageEntryNotPresent => 0x71,
            Self::FirstStageEntryReserved => 0x72,
            Self::FirstStageNonCanonical => 0x80,
            Self::ScalableInterruptAddress => 0x87,
            Self::Other(raw) => raw,
        }
    }

    /// A short description.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RootEntryNotPresent => "root entry not present",
            Self::ContextEntryNotPresent => "context entry not present (device has no domain)",
            Self::InvalidContextEntry => "invalid context entry (AW/TT)",
            Self::AddressBeyondWidth => "address beyond the domain's width",
            Self::WriteNotPermitted => "write to a not-present or read-only page",
            Self::ReadNotPermitted => "read from a not-present or write-only page",
            Self::PagingEntryAccess => "error accessing a page-table entry",
            Self::RootTableAccess => "error accessing the root table",
            Self::ContextTableAccess => "error accessing a context table",
            Self::RootEntryReserved => "reserved bit set in a root entry",
            Self::ContextEntryReserved => "reserved bit set in a context entry",
            Self::PagingEntryReserved => "reserved bit set in a page-table entry",
            Self::TranslationTypeBlocked => "translation type blocked",
            Self::InterruptRequestReserved => "reserved field set in an interrupt request",
            Self::InterruptIndexBeyondTable => "interrupt index beyond the remapping table",
            Self::IrteNotPresent => "interrupt remapping entry not present",
            Self::IrtAccess => "error accessing the interrupt remapping table",
            Self::IrteReserved => "reserved field set in an interrupt remapping entry",
            Self::CompatibilityInterruptBlocked => "compatibility-format interrupt blocked",
            Self::InterruptSourceIdMismatch => "interrupt blocked: source-id mismatch",
            Self::PostedDescriptorAccess => "error accessing a posted-interrupt descriptor",
            Self::RootTableModeInvalid => "invalid RTADDR translation-table mode",
            Self::PasidDirectoryAccess => "error accessing a PASID directory entry",
            Self::PasidDirectoryEntryNotPresent => "PASID directory entry not present",
            Self::PasidTableAccess => "error accessing a PASID table entry",
            Self::PasidEntryNotPresent => "PASID table entry not present",
            Self::PasidEntryInvalid => "invalid PASID table entry (PGTT/AW)",
            Self::FirstStageEntryAccess => "error accessing a first-stage paging entry",
            Self::FirstStageEntryNotPresent => "first-stage paging entry not present",
            Self::FirstStageEntryReserved => "reserved bit set in a first-stage paging entry",
            Self::FirstStageNonCanonical => "first-stage address not canonical",
            Self::ScalableInterruptAddress => "output address in the interrupt range",
            Self::Other(_) => "unknown fault reason",
        }
    }

    /// Whether this is an interrupt-remapping fault (20h-27h, §7.1.3): its record carries an
    /// interrupt index instead of an address.
    pub const fn is_interrupt_remapping(self) -> bool {
        matches!(self.raw(), 0x20..=0x27)
    }

    /// Whether this is a scalable-mode fault reason (30h and up, §7.1.3).
    pub const fn is_scalable_mode(self) -> bool {
        self.raw() >= 0x30
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} ({})", self.raw(), self.name())
    }
}

/// Direction of the faulting request (the T bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// A DMA read (T = 1).
    Read,
    /// A DMA write (T = 0).
    Write,
}

/// One decoded fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Which recording register it came from.
    pub index: u16,
    /// The requester (source-id) as the IOMMU saw it. A fault record carries no segment: the
    /// function is `source.with_segment(segment of the unit that recorded it)`.
    pub source: RequesterId,
    /// The faulting address, page-aligned.
    pub address: u64,
    /// Why it was blocked.
    pub reason: FaultReason,
    /// Read or write.
    pub access: AccessKind,
    /// The raw 128-bit record (low, high).
    pub raw: (u64, u64),
}

impl FaultRecord {
    /// Decodes a raw record; `None` when its F bit is clear.
    pub const fn decode(index: u16, lo: u64, hi: u64) -> Option<Self> {
        let fields = FrcdHi::from_bits(hi);
        if !fields.f() {
            return None;
        }
        Some(Self {
            index,
            source: RequesterId::new(fields.sid()),
            address: FrcdLo::from_bits(lo).fi(),
            reason: FaultReason::from_raw(fields.fr()),
            access: if fields.t() {
                AccessKind::Read
            } else {
                AccessKind::Write
            },
            raw: (lo, hi),
        })
    }
}

impl FaultRecord {
    /// The interrupt index of an interrupt-remapping fault (FI bits 63:48, §11.4.14), `None`
    /// for a DMA-remapping fault.
    pub const fn interrupt_index(&self) -> Option<u16> {
        if self.reason.is_interrupt_remapping() {
            Some(FrcdLoIr::from_bits(self.raw.0).interrupt_index())
        } else {
            None
        }
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.interrupt_index() {
            return write!(
                f,
                "interrupt remapping fault from {} at index {index}: reason {}",
                self.source, self.reason
            );
        }
        let dir = match self.access {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
        };
        write!(
            f,
            "DMA {dir} fault from {} at {:#x}: reason {}",
            self.source, self.address, self.reason
        )
    }
}

/// Everything the fault registers held at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultLog {
    /// Records with F set, starting at FSTS.FRI.
    pub records: Vec<FaultRecord>,
    /// FSTS.PFO: faults were dropped because the records were full.
    pub overflow: bool,
}

/// Reads every fault record with F set, starting at the index FSTS.FRI points to.
pub fn read_faults<R: RegisterIo + ?Sized>(regs: &R, caps: &Capabilities) -> FaultLog {
    let fsts = regs.read32(registers::FSTS);
    let count = caps.cap.fault_records;
    let first = u16::from(Fsts::from_bits(fsts).fri()) % count.max(1);
    let mut records = Vec::new();
    for i in 0..count {
        let index = (first + i) % count;
        let offset = registers::fault_record_offset(caps.cap.fro, index);
        let hi = regs.read64(offset + registers::FAULT_RECORD_HIGH_QWORD);
        if !FrcdHi::from_bits(hi).f() {
            continue;
        }
        let lo = regs.read64(offset);
        if let Some(rec) = FaultRecord::decode(index, lo, hi) {
            records.push(rec);
        }
    }
    FaultLog {
        records,
        overflow: fsts & FaultStatus::PFO.bits() != 0,
    }
}

/// Reads every pending record, then clears exactly those (F of each record returned, and
/// FSTS.PFO only if the returned log reports it): a fault recorded after the read, or an
/// overflow after it, stays pending for the next call instead of being cleared unread.
///
/// Clearing a record only once its contents were read is what §7.1.3 asks of software; a
/// record whose F is cleared is free for hardware to reuse immediately.
pub fn read_and_clear_faults<R: RegisterIo + ?Sized>(regs: &R, caps: &Capabilities) -> FaultLog {
    let log = read_faults(regs, caps);
    for rec in &log.records {
        let offset = registers::fault_record_offset(caps.cap.fro, rec.index);
        regs.write32(offset + registers::FAULT_RECORD_F_DWORD, frcd::F_IN_DWORD);
    }
    if log.overflow {
        regs.write32(registers::FSTS, FaultStatus::PFO.bits());
    }
    log
}

/// [`read_and_clear_faults`] until FSTS shows neither a pending record (PPF) nor an overflow
/// (PFO), merging what each round returned: the fault-event handler's loop (§7.3). The unit
/// raises the next fault event only when a fault is recorded while nothing is pending, so a
/// record that arrived between a round's read and its clear must be collected now, not left
/// for an interrupt that will never come. Bounded by the number of records plus one rounds
/// (a unit that keeps faulting faster is serviced again on its next event).
pub fn service_faults<R: RegisterIo + ?Sized>(regs: &R, caps: &Capabilities) -> FaultLog {
    let mut log = FaultLog::default();
    for _ in 0..=caps.cap.fault_records {
        let round = read_and_clear_faults(regs, caps);
        log.overflow |= round.overflow;
        log.records.extend(round.records);
        let fsts = FaultStatus::from_bits_truncate(regs.read32(registers::FSTS));
        if !fsts.intersects(FaultStatus::PPF | FaultStatus::PFO) {
            break;
        }
    }
    log
}

/// Clears F in every record and FSTS.PFO (both write-1-to-clear), read or not: for a caller
/// that discards whatever is pending (e.g. before provoking an expected fault). To consume
/// faults use [`read_and_clear_faults`], which never clears a record it did not return.
pub fn clear_faults<R: RegisterIo + ?Sized>(regs: &R, caps: &Capabilities) {
    for index in 0..caps.cap.fault_records {
        let offset = registers::fault_record_offset(caps.cap.fro, index);
        if FrcdHi::from_bits(regs.read64(offset + registers::FAULT_RECORD_HIGH_QWORD)).f() {
            regs.write32(offset + registers::FAULT_RECORD_F_DWORD, frcd::F_IN_DWORD);
        }
    }
    regs.write32(registers::FSTS, FaultStatus::PFO.bits());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_a_qemu_style_record() {
        // Source 00:03.0, read at 0x12345000, reason 6, as raw bits (F = 63, T = 62, FR =
        // 39:32, SID = 15:0 of the upper half, §11.4.14): checks the declarations too.
        let hi = 0xC000_0006_0000_0018;
        let rec = FaultRecord::decode(0, 0x1234_5000, hi).unwrap();
        assert_eq!(rec.source, RequesterId::from_parts(0, 3 << 3));
        assert!(rec
            .to_string()
            .starts_with("DMA read fault from 00:03.0 at 0x12345000: reason 0x6"));
        assert_eq!(rec.address, 0x1234_5000);
        assert_eq!(rec.reason, FaultReason::ReadNotPermitted);
        assert_eq!(rec.access, AccessKind::Read);
        assert_eq!(
            rec.to_string(),
            "DMA read fault from 00:03.0 at 0x12345000: reason 0x6 (read from a not-present or write-only page)"
        );
        assert_eq!(FaultRecord::decode(0, 0, hi & !(1 << 63)), None);
    }

    #[test]
    fn reason_names_round_trip() {
        for raw in 0..=0xFFu8 {
            assert_eq!(FaultReason::from_raw(raw).raw(), raw);
        }
        assert_eq!(FaultReason::from_raw(1), FaultReason::RootEntryNotPresent);
        assert_eq!(
            FaultReason::from_raw(2),
            FaultReason::ContextEntryNotPresent
        );
        assert_eq!(FaultReason::from_raw(3), FaultReason::InvalidContextEntry);
        assert_eq!(FaultReason::from_raw(5), FaultReason::WriteNotPermitted);
        assert_eq!(FaultReason::from_raw(0xC), FaultReason::PagingEntryReserved);
        assert_eq!(
            FaultReason::from_raw(0x26),
            FaultReason::InterruptSourceIdMismatch
        );
        assert!((0x20..=0x27).all(|r| FaultReason::from_raw(r).is_interrupt_remapping()));
        assert!(!FaultReason::from_raw(0x1F).is_interrupt_remapping());
        assert!(!FaultReason::from_raw(0x28).is_interrupt_remapping());
    }

    #[test]
    fn decode_an_interrupt_remapping_record() {
        // Index 0x0102 in FI bits 63:48, reason 0x26, source 00:03.0 (§11.4.14).
        let hi = 0x8000_0026_0000_0018;
        let rec = FaultRecord::decode(1, 0x0102 << 48, hi).unwrap();
        assert_eq!(rec.interrupt_index(), Some(0x0102));
        assert_eq!(
            rec.to_string(),
            "interrupt remapping fault from 00:03.0 at index 258: reason 0x26 (interrupt blocked: source-id mismatch)"
        );
        let dma = FaultRecord::decode(0, 0x1000, 0x8000_0005_0000_0018).unwrap();
        assert_eq!(dma.interrupt_index(), None);
    }

    #[test]
    fn scalable_mode_reasons_have_names() {
        // The codes QEMU 7.2 and 10 record in scalable mode decode to named reasons (not
        // `Other`), with their spec encodings, and read as scalable-mode reasons.
        let named = [
            (0x31, FaultReason::RootTableModeInvalid),
            (0x50, FaultReason::PasidDirectoryAccess),
            (0x51, FaultReason::PasidDirectoryEntryNotPresent),
            (0x58, FaultReason::PasidTableAccess),
            (0x59, FaultReason::PasidEntryNotPresent),
            (0x5B, FaultReason::PasidEntryInvalid),
            (0x70, FaultReason::FirstStageEntryAccess),
            (0x71, FaultReason::FirstStageEntryNotPresent),
            (0x72, FaultReason::FirstStageEntryReserved),
            (0x80, FaultReason::FirstStageNonCanonical),
            (0x87, FaultReason::ScalableInterruptAddress),
        ];
        for (raw, reason) in named {
            assert_eq!(FaultReason::from_raw(raw), reason);
            assert!(reason.is_scalable_mode());
            assert!(!reason.is_interrupt_remapping());
            assert_ne!(reason.name(), FaultReason::Other(raw).name());
            assert!(reason.to_string().starts_with(&format!("{raw:#x} (")));
        }
        assert!(!FaultReason::ContextEntryNotPresent.is_scalable_mode());
        assert!(!FaultReason::from_raw(0x2F).is_scalable_mode());
        // Every name is distinct, so a record never reads as another reason.
        let names: Vec<_> = (0..=0xFFu8)
            .map(FaultReason::from_raw)
            .filter(|r| !matches!(r, FaultReason::Other(_)))
            .map(FaultReason::name)
            .collect();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "duplicate name {n}");
        }
    }
}
