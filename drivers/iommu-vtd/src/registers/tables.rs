//! In-memory translation structures (§9.1, §9.3, §9.8): root entries, context entries and
//! second-level paging entries.

use bitfield_struct::bitfield;

use super::{addr_4k_from, addr_4k_into};

/// Root entry, lower 64 bits, §9.1 (the upper 64 bits are reserved).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct RootEntryLo {
    /// Present (bit 0).
    pub present: bool,
    #[bits(11)]
    __: u16,
    /// Context-table pointer (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub ctp: u64,
}

/// Context entry, lower 64 bits, §9.3.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ContextEntryLo {
    /// Present (bit 0).
    pub present: bool,
    /// Fault processing disable (bit 1).
    pub fpd: bool,
    /// Translation type (bits 3:2): [`ContextEntryLo::TT_UNTRANSLATED_ONLY`].
    #[bits(2)]
    pub tt: u8,
    #[bits(8)]
    __: u8,
    /// Second-level page-translation pointer (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub slptptr: u64,
}

impl ContextEntryLo {
    /// Translation type 00: untranslated requests are translated through the second-level
    /// table; translated requests (ATS) are blocked.
    pub const TT_UNTRANSLATED_ONLY: u8 = 0b00;
}

/// Context entry, upper 64 bits (bits 127:64), §9.3.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct ContextEntryHi {
    /// Address width (AW, bits 66:64): the table depth (`PagingLevels::context_aw`).
    #[bits(3)]
    pub aw: u8,
    #[bits(5)]
    __: u8,
    /// Domain identifier (bits 87:72).
    pub did: u16,
    #[bits(40)]
    __: u64,
}

/// Field conversion for an output address in bits 51:12 of a second-level entry: the field
/// holds bits 51:12 of the address. Callers keep addresses below `2^52`
/// (`pagetable::MAX_OUTPUT_BITS`); higher bits are dropped, never spilled into other fields.
const fn addr_51_12_into(addr: u64) -> u64 {
    (addr >> 12) & ((1 << 40) - 1)
}

/// Inverse of [`addr_51_12_into`].
const fn addr_51_12_from(field: u64) -> u64 {
    field << 12
}

/// Second-level paging entry, §9.8 (page-table, page-directory and leaf entries alike).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SlPte {
    /// Read permission (bit 0).
    pub r: bool,
    /// Write permission (bit 1).
    pub w: bool,
    #[bits(5)]
    __: u8,
    /// Page size (bit 7): this level-2/3 entry is a leaf (2 MiB / 1 GiB page).
    pub ps: bool,
    #[bits(3)]
    __: u8,
    /// Snoop behaviour (bit 11; only when ECAP.SC = 1, reserved otherwise).
    pub snp: bool,
    /// Address (bits 51:12): the next table or the leaf's page.
    #[bits(40, from = addr_51_12_from, into = addr_51_12_into)]
    pub addr: u64,
    /// Software bit 52 (bits 61:52 are ignored by hardware): a leaf written by this crate,
    /// so a mapping with no access rights can exist (R = W = 0 is "not present" to hardware).
    pub sw_mapped: bool,
    /// Software bit 53: the leaf maps device memory (`dma::iommu::Prot::MMIO`).
    pub sw_mmio: bool,
    #[bits(10)]
    __: u16,
}

/// The single bits and the address field of [`SlPte`] as raw masks, for code and tests that
/// look at raw entries.
pub mod pte {
    use super::SlPte;

    /// Read permission.
    pub const READ: u64 = SlPte::new().with_r(true).into_bits();
    /// Write permission.
    pub const WRITE: u64 = SlPte::new().with_w(true).into_bits();
    /// Page size: this level-2/3 entry is a leaf (2 MiB / 1 GiB page).
    pub const PAGE_SIZE: u64 = SlPte::new().with_ps(true).into_bits();
    /// Snoop behaviour (only when ECAP.SC = 1; reserved otherwise).
    pub const SNOOP: u64 = SlPte::new().with_snp(true).into_bits();
    /// Address bits 51:12.
    pub const ADDR_MASK: u64 = SlPte::new().with_addr(u64::MAX).into_bits();
    /// Software bit: a leaf written by this crate ([`SlPte::sw_mapped`]).
    pub const SW_MAPPED: u64 = SlPte::new().with_sw_mapped(true).into_bits();
    /// Software bit: the leaf maps device memory ([`SlPte::sw_mmio`]).
    pub const SW_MMIO: u64 = SlPte::new().with_sw_mmio(true).into_bits();
}
