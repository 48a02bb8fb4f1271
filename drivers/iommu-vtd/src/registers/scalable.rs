//! Scalable-mode translation structures (VT-d spec §9.2 scalable-mode root entry, §9.4
//! scalable-mode context entry, §9.5 scalable-mode PASID directory entry, §9.6 scalable-mode
//! PASID table entry) and the RTADDR translation-table mode that selects them (§11.4.5).
//!
//! In scalable mode a request is translated through: the root entry of its bus (one lower
//! and one upper context-table pointer, for devfn 0–127 and 128–255), the 256-bit context
//! entry of its devfn (a PASID directory pointer, its size PDTS and the RID_PASID used for
//! requests without a PASID), the PASID directory entry of `pasid >> 6`, and the 512-bit PASID
//! table entry of `pasid & 0x3F`, which holds the PASID-granular translation type (PGTT), the
//! second-stage table pointer (SLPTPTR), its depth (AW) and the domain ID (DID).
//!
//! Only the fields this crate writes or decodes are declared; `__` is reserved space. Each
//! 64-bit word of a wider entry is its own type (`…W0`, `…W1`), word `n` covering bits
//! `64n + 63 : 64n` of the entry.

use bitfield_struct::bitfield;

use super::{addr_4k_from, addr_4k_into};

/// Scalable-mode root entry, bits 63:0, §9.2: the lower context table (devfn 0–127).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SmRootEntryLo {
    /// Lower present (LP, bit 0).
    pub present: bool,
    #[bits(11)]
    __: u16,
    /// Lower context-table pointer (LCTP, bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub ctp: u64,
}

/// Scalable-mode root entry, bits 127:64, §9.2: the upper context table (devfn 128–255).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SmRootEntryHi {
    /// Upper present (UP, bit 64).
    pub present: bool,
    #[bits(11)]
    __: u16,
    /// Upper context-table pointer (UCTP, bits 127:76).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub ctp: u64,
}

/// Scalable-mode context entry, bits 63:0, §9.4 (bits 255:128 are reserved).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SmContextW0 {
    /// Present (bit 0).
    pub present: bool,
    /// Fault processing disable (bit 1).
    pub fpd: bool,
    /// Device-TLB enable (DTE, bit 2).
    pub dte: bool,
    /// PASID enable (PASIDE, bit 3): requests with a PASID are allowed.
    pub paside: bool,
    /// Page request enable (PRE, bit 4).
    pub pre: bool,
    #[bits(4)]
    __: u8,
    /// PASID directory size (PDTS, bits 11:9): the directory has `2^(PDTS + 7)` entries.
    #[bits(3)]
    pub pdts: u8,
    /// PASID directory pointer (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub pasid_dir: u64,
}

/// Scalable-mode context entry, bits 127:64, §9.4.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SmContextW1 {
    /// RID_PASID (bits 83:64): the PASID that requests without a PASID are translated with.
    #[bits(20)]
    pub rid_pasid: u32,
    /// RID_PRIV (bit 84): requests without a PASID are supervisor requests.
    pub rid_priv: bool,
    #[bits(43)]
    __: u64,
}

/// Scalable-mode PASID directory entry (64 bits), §9.5.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDirEntry {
    /// Present (bit 0).
    pub present: bool,
    /// Fault processing disable (bit 1).
    pub fpd: bool,
    #[bits(10)]
    __: u16,
    /// Scalable-mode PASID table pointer (SMPTBLPTR, bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub table: u64,
}

/// Scalable-mode PASID table entry, bits 63:0, §9.6 (the entry is 512 bits; words 2–7 hold
/// first-stage fields this crate leaves zero).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryW0 {
    /// Present (bit 0).
    pub present: bool,
    /// Fault processing disable (bit 1).
    pub fpd: bool,
    /// Second-stage address width (AW, bits 4:2): as a legacy context entry's AW, 1 = 3-level
    /// (39-bit), 2 = 4-level (48-bit).
    #[bits(3)]
    pub aw: u8,
    /// Second-stage execute enable (SLEE, bit 5).
    pub slee: bool,
    /// PASID-granular translation type (PGTT, bits 8:6): a `PasidEntryW0::PGTT_*` value.
    #[bits(3)]
    pub pgtt: u8,
    /// Second-stage accessed/dirty enable (SLADE, bit 9).
    pub slade: bool,
    #[bits(2)]
    __: u8,
    /// Second-stage page-table pointer (SLPTPTR, bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub slptptr: u64,
}

impl PasidEntryW0 {
    /// PGTT 001b: first-stage translation only.
    pub const PGTT_FIRST_STAGE: u8 = 0b001;
    /// PGTT 010b: second-stage translation only.
    pub const PGTT_SECOND_STAGE: u8 = 0b010;
    /// PGTT 011b: nested (first stage over second stage).
    pub const PGTT_NESTED: u8 = 0b011;
    /// PGTT 100b: pass-through (output address = input address).
    pub const PGTT_PASS_THROUGH: u8 = 0b100;
}

/// Scalable-mode PASID table entry, bits 127:64, §9.6.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidEntryW1 {
    /// Domain identifier (DID, bits 79:64).
    pub did: u16,
    #[bits(7)]
    __: u8,
    /// Page-walk snoop (PWSNP, bit 87).
    pub pwsnp: bool,
    /// Page snoop (PGSNP, bit 88).
    pub pgsnp: bool,
    #[bits(39)]
    __: u64,
}

/// Entries in one PASID table page (512-bit entries): PASIDs `64 * dir_index ..` of a
/// directory entry.
pub const PASID_ENTRIES_PER_TABLE: usize = 64;
/// 64-bit words per PASID table entry (512 bits).
pub const PASID_ENTRY_WORDS: usize = 8;
/// 64-bit words per scalable-mode context entry (256 bits).
pub const SM_CONTEXT_WORDS: usize = 4;
/// Scalable-mode context entries per context table page (devfn 0–127 or 128–255).
pub const SM_CONTEXT_ENTRIES_PER_TABLE: usize = 128;
