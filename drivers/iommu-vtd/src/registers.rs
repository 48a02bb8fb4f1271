//! The remapping unit's register map, declared once, and the [`RegisterIo`] access seam.
//!
//! Implements the register layout of VT-d spec §10.4 / §11.4 (rev 3.x/4.x): offsets, the bit
//! fields of every register this crate writes or polls, and the encodings of their fields. Every
//! other module reads and writes registers by these names only.
//!
//! [`RegisterIo`] is the seam between the driver logic and the hardware: [`MmioRegisters`] does
//! volatile accesses to the mapped (uncached) register page; `crate::fake::FakeVtd` models
//! QEMU's unit for host tests.

use core::ptr::NonNull;

use bitfield_struct::bitfield;

/// Version register (32-bit), §11.4.1.
pub const VER: usize = 0x00;
/// Capability register (64-bit), §11.4.2.
pub const CAP: usize = 0x08;
/// Extended capability register (64-bit), §11.4.3.
pub const ECAP: usize = 0x10;
/// Global command register (32-bit), §11.4.4.1.
pub const GCMD: usize = 0x18;
/// Global status register (32-bit), §11.4.4.2.
pub const GSTS: usize = 0x1C;
/// Root table address register (64-bit), §11.4.5.
pub const RTADDR: usize = 0x20;
/// Context command register (64-bit), §11.4.6.1.
pub const CCMD: usize = 0x28;
/// Fault status register (32-bit), §11.4.7.1.
pub const FSTS: usize = 0x34;
/// Fault event control register (32-bit), §11.4.7.2.
pub const FECTL: usize = 0x38;
/// Fault event data register (32-bit), §11.4.7.3.
pub const FEDATA: usize = 0x3C;
/// Fault event address register (32-bit), §11.4.7.4.
pub const FEADDR: usize = 0x40;
/// Fault event upper address register (32-bit), §11.4.7.5.
pub const FEUADDR: usize = 0x44;
/// Advanced fault log register (64-bit), §11.4.7.7.
pub const AFLOG: usize = 0x58;
/// Protected memory enable register (32-bit), §11.4.10.1.
pub const PMEN: usize = 0x64;
/// Invalidation queue head register (64-bit), §11.4.9.1.
pub const IQH: usize = 0x80;
/// Invalidation queue tail register (64-bit), §11.4.9.2.
pub const IQT: usize = 0x88;
/// Invalidation queue address register (64-bit), §11.4.9.3.
pub const IQA: usize = 0x90;
/// Invalidation completion status register (32-bit), §11.4.9.4.
pub const ICS: usize = 0x9C;
/// Invalidation queue error record register (64-bit), §11.4.9.9.
pub const IQERCD: usize = 0xB0;
/// Interrupt remapping table address register (64-bit), §11.4.10.
pub const IRTA: usize = 0xB8;

/// ECAP.IRO and CAP.FRO count in units of this many bytes.
pub const REGISTER_OFFSET_UNIT: usize = 16;
/// Offset of the invalidate-address register (IVA) within the IOTLB register pair, §11.4.8.2.
pub const IVA_IN_IOTLB_PAIR: usize = 0x0;
/// Offset of the IOTLB invalidate register within the pair at ECAP.IRO × 16, §11.4.8.1.
pub const IOTLB_IN_IOTLB_PAIR: usize = 0x8;
/// Size of one fault recording register (128-bit), §11.4.14.
pub const FAULT_RECORD_SIZE: usize = 16;
/// Offset of the upper 32 bits (which hold the F bit) within a fault recording register.
pub const FAULT_RECORD_F_DWORD: usize = 12;
/// Offset of the upper 64 bits within a fault recording register.
pub const FAULT_RECORD_HIGH_QWORD: usize = 8;

/// Offset of the IVA register for ECAP.IRO = `iro`.
pub const fn iva_offset(iro: u16) -> usize {
    iro as usize * REGISTER_OFFSET_UNIT + IVA_IN_IOTLB_PAIR
}

/// Offset of the IOTLB invalidate register for ECAP.IRO = `iro`.
pub const fn iotlb_offset(iro: u16) -> usize {
    iro as usize * REGISTER_OFFSET_UNIT + IOTLB_IN_IOTLB_PAIR
}

/// Offset of fault recording register `index` for CAP.FRO = `fro`.
pub const fn fault_record_offset(fro: u16, index: u16) -> usize {
    fro as usize * REGISTER_OFFSET_UNIT + index as usize * FAULT_RECORD_SIZE
}

bitflags::bitflags! {
    /// Global command (GCMD) and global status (GSTS) bits, §11.4.4: each command bit has its
    /// status bit at the same position.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Global: u32 {
        /// Translation enable / status.
        const TE = 1 << 31;
        /// Set root table pointer (one-shot) / root table pointer status.
        const SRTP = 1 << 30;
        /// Set fault log (one-shot) / fault log status.
        const SFL = 1 << 29;
        /// Enable advanced fault logging / status.
        const EAFL = 1 << 28;
        /// Write buffer flush (one-shot) / write buffer flush status (set while in progress).
        const WBF = 1 << 27;
        /// Queued invalidation enable / status.
        const QIE = 1 << 26;
        /// Interrupt remapping enable / status.
        const IRE = 1 << 25;
        /// Set interrupt remapping table pointer (one-shot) / status.
        const SIRTP = 1 << 24;
        /// Compatibility format interrupt / status.
        const CFI = 1 << 23;
    }
}

/// The GSTS bits that reflect persistent enables; the one-shot command bits (SRTP, SFL, WBF,
/// SIRTP) are cleared. A GCMD write is always `(GSTS & GSTS_PERSISTENT_MASK) | bit` (§10.4.4.1
/// example): writing a one-shot status bit back would re-trigger it.
pub const GSTS_PERSISTENT_MASK: u32 = 0x96FF_FFFF;

// Typed fields. Every multi-bit field of a register or an in-memory structure this crate
// writes or decodes is declared here with `bitfield-struct`: fields are listed from bit 0 up,
// `__` is reserved/ignored space. Address fields hold the address itself (the conversion
// functions below move it into its bit position), so no caller shifts or masks.

/// Field conversion for an address in bits 63:12 (4 KiB aligned): the field holds bits 63:12
/// of the address; the low 12 bits of an address written are dropped.
const fn addr_4k_into(addr: u64) -> u64 {
    addr >> 12
}

/// Inverse of [`addr_4k_into`].
const fn addr_4k_from(field: u64) -> u64 {
    field << 12
}

/// Field conversion for an address in bits 63:2 (4-byte aligned), as [`addr_4k_into`].
const fn addr_4b_into(addr: u64) -> u64 {
    addr >> 2
}

/// Inverse of [`addr_4b_into`].
const fn addr_4b_from(field: u64) -> u64 {
    field << 2
}

/// Field conversion for an address mask (AM) written to a 6-bit field: values above 63 (no
/// such invalidation exists) saturate to 63, never narrowing what is invalidated.
const fn am_into(am: u8) -> u8 {
    if am > MAX_AM {
        MAX_AM
    } else {
        am
    }
}

/// Inverse of [`am_into`].
const fn am_from(field: u8) -> u8 {
    field
}

/// The largest address mask a 6-bit AM field holds.
pub const MAX_AM: u8 = 63;

/// Version register (VER), §11.4.1.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Ver {
    /// Minor version (bits 3:0).
    #[bits(4)]
    pub min: u8,
    /// Major version (bits 7:4).
    #[bits(4)]
    pub max: u8,
    #[bits(24)]
    __: u32,
}

/// Capability register (CAP), §11.4.2: the fields this crate decodes.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CapReg {
    /// Number of domains supported (ND, bits 2:0): `2^(4 + 2 * ND)`.
    #[bits(3)]
    pub nd: u8,
    /// Advanced fault logging (bit 3).
    pub afl: bool,
    /// Required write-buffer flushing (bit 4).
    pub rwbf: bool,
    /// Protected low-memory region (bit 5).
    pub plmr: bool,
    /// Protected high-memory region (bit 6).
    pub phmr: bool,
    /// Caching mode (bit 7).
    pub cm: bool,
    /// Supported adjusted guest address widths (SAGAW, bits 12:8): bit 1 = 39-bit, bit 2 =
    /// 48-bit, bit 3 = 57-bit.
    #[bits(5)]
    pub sagaw: u8,
    #[bits(3)]
    __: u8,
    /// Maximum guest address width minus one (MGAW, bits 21:16).
    #[bits(6)]
    pub mgaw: u8,
    /// Zero-length read (bit 22).
    pub zlr: bool,
    #[bits(1)]
    __: u8,
    /// Fault-recording register offset in 16-byte units (FRO, bits 33:24).
    #[bits(10)]
    pub fro: u16,
    /// Second-level large page support (SLLPS, bits 37:34): bit 0 = 2 MiB, bit 1 = 1 GiB.
    #[bits(4)]
    pub sllps: u8,
    #[bits(1)]
    __: u8,
    /// Page-selective invalidation (bit 39).
    pub psi: bool,
    /// Number of fault-recording registers minus one (NFR, bits 47:40).
    pub nfr: u8,
    /// Maximum address mask value (MAMV, bits 53:48).
    #[bits(6)]
    pub mamv: u8,
    /// Write draining (bit 54).
    pub dwd: bool,
    /// Read draining (bit 55).
    pub drd: bool,
    /// First-level 1 GiB pages (bit 56).
    pub fl1gp: bool,
    #[bits(2)]
    __: u8,
    /// Posted interrupts (bit 59).
    pub pi: bool,
    /// First-level 5-level paging (bit 60).
    pub fl5lp: bool,
    #[bits(3)]
    __: u8,
}

/// Extended capability register (ECAP), §11.4.3: the fields this crate decodes.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct EcapReg {
    /// Page-walk coherency (C, bit 0).
    pub c: bool,
    /// Queued invalidation (QI, bit 1).
    pub qi: bool,
    /// Device-TLB (DT, bit 2).
    pub dt: bool,
    /// Interrupt remapping (IR, bit 3).
    pub ir: bool,
    /// Extended interrupt mode (EIM, bit 4).
    pub eim: bool,
    #[bits(1)]
    __: u8,
    /// Pass-through (PT, bit 6).
    pub pt: bool,
    /// Snoop control (SC, bit 7).
    pub sc: bool,
    /// IOTLB register offset in 16-byte units (IRO, bits 17:8).
    #[bits(10)]
    pub iro: u16,
    #[bits(2)]
    __: u8,
    /// Maximum handle mask value (MHMV, bits 23:20).
    #[bits(4)]
    pub mhmv: u8,
    #[bits(2)]
    __: u8,
    /// Nested translation (NEST, bit 26).
    pub nest: bool,
    #[bits(2)]
    __: u8,
    /// Page requests (PRS, bit 29).
    pub prs: bool,
    #[bits(10)]
    __: u16,
    /// PASID support (bit 40).
    pub pasid: bool,
    #[bits(2)]
    __: u8,
    /// Scalable-mode translation (SMTS, bit 43).
    pub smts: bool,
    #[bits(2)]
    __: u8,
    /// Second-level translation (SLTS, bit 46).
    pub slts: bool,
    /// First-level translation (FLTS, bit 47).
    pub flts: bool,
    #[bits(16)]
    __: u16,
}

/// Root table address register (RTADDR), §11.4.5.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Rtaddr {
    #[bits(10)]
    __: u16,
    /// Translation table mode (bits 11:10): [`Rtaddr::TTM_LEGACY`] = legacy root table.
    #[bits(2)]
    pub ttm: u8,
    /// Root table address (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub rta: u64,
}

impl Rtaddr {
    /// RTADDR.TTM 00: legacy-mode root table.
    pub const TTM_LEGACY: u8 = 0b00;
}

/// Context command register (CCMD), §11.4.6.1.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Ccmd {
    /// Domain-id (bits 15:0).
    pub did: u16,
    /// Source-id (bits 31:16).
    pub sid: u16,
    /// Function mask (bits 33:32).
    #[bits(2)]
    pub fm: u8,
    #[bits(25)]
    __: u32,
    /// Actual granularity (CAIG, bits 60:59), written by hardware; 0 = not performed.
    #[bits(2)]
    pub caig: u8,
    /// Requested granularity (CIRG, bits 62:61): a `ccmd::GRANULARITY_*` value.
    #[bits(2)]
    pub cirg: u8,
    /// Invalidate context cache (bit 63): set to request; hardware clears it when done.
    pub icc: bool,
}

/// Context command register granularities, §11.4.6.1 (the values of [`Ccmd::cirg`] and
/// [`Ccmd::caig`]).
pub mod ccmd {
    /// Granularity: global.
    pub const GRANULARITY_GLOBAL: u8 = 0b01;
    /// Granularity: domain-selective.
    pub const GRANULARITY_DOMAIN: u8 = 0b10;
    /// Granularity: device-selective.
    pub const GRANULARITY_DEVICE: u8 = 0b11;
}

/// IOTLB invalidate register, §11.4.8.1 (at ECAP.IRO × 16 + 8).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IotlbCmd {
    #[bits(32)]
    __: u32,
    /// Domain-id (bits 47:32).
    pub did: u16,
    /// Drain writes (bit 48).
    pub dw: bool,
    /// Drain reads (bit 49).
    pub dr: bool,
    #[bits(7)]
    __: u8,
    /// Actual granularity (IAIG, bits 58:57), written by hardware; 0 = not performed.
    #[bits(2)]
    pub iaig: u8,
    #[bits(1)]
    __: u8,
    /// Requested granularity (IIRG, bits 61:60): an `iotlb::GRANULARITY_*` value.
    #[bits(2)]
    pub iirg: u8,
    #[bits(1)]
    __: u8,
    /// Invalidate IOTLB (bit 63): set to request; hardware clears it when done.
    pub ivt: bool,
}

/// Invalidate address register (IVA), §11.4.8.2 (at ECAP.IRO × 16).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iva {
    /// Address mask (AM, bits 5:0): log2 of the number of 4 KiB pages.
    #[bits(6, from = am_from, into = am_into)]
    pub am: u8,
    /// Invalidation hint (bit 6): only leaf entries changed.
    pub ih: bool,
    #[bits(5)]
    __: u8,
    /// Address (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub addr: u64,
}

/// IOTLB register granularities, §11.4.8.1 (the values of [`IotlbCmd::iirg`] and
/// [`IotlbCmd::iaig`]).
pub mod iotlb {
    /// Granularity: global.
    pub const GRANULARITY_GLOBAL: u8 = 0b01;
    /// Granularity: domain-selective.
    pub const GRANULARITY_DOMAIN: u8 = 0b10;
    /// Granularity: page-selective within a domain.
    pub const GRANULARITY_PAGE: u8 = 0b11;
}

bitflags::bitflags! {
    /// Fault status register bits, §11.4.7.1 (RW1C except PPF and FRI); the multi-bit FRI
    /// field is [`Fsts::fri`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FaultStatus: u32 {
        /// Primary fault overflow.
        const PFO = 1 << 0;
        /// Primary pending fault (read-only: some record has F set).
        const PPF = 1 << 1;
        /// Advanced fault overflow.
        const AFO = 1 << 2;
        /// Advanced pending fault.
        const APF = 1 << 3;
        /// Invalidation queue error.
        const IQE = 1 << 4;
        /// Invalidation completion error.
        const ICE = 1 << 5;
        /// Invalidation time-out error.
        const ITE = 1 << 6;
    }
}

/// Fault status register (FSTS) multi-bit fields, §11.4.7.1 (the single bits are
/// [`FaultStatus`]).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Fsts {
    /// PFO, PPF, AFO, APF, IQE, ICE, ITE and a reserved bit ([`FaultStatus`]).
    #[bits(8)]
    pub flags: u8,
    /// Fault record index (FRI, bits 15:8): the record the next fault goes to.
    pub fri: u8,
    #[bits(16)]
    __: u16,
}

/// Fault event control register (FECTL), §11.4.7.2 (§11.4.9 in rev 4.x numbering).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Fectl {
    #[bits(30)]
    __: u32,
    /// Interrupt pending (IP, bit 30, read-only): a fault event is waiting while masked.
    pub ip: bool,
    /// Interrupt mask (IM, bit 31): set at reset; while set no fault event message is sent.
    pub im: bool,
}

/// Fault event control: interrupt mask (set at reset), §11.4.7.2.
pub const FECTL_IM: u32 = Fectl::new().with_im(true).into_bits();

/// Fault event address register (FEADDR), §11.4.7.4: the low 32 bits of the fault event's
/// (compatibility-format) MSI address; bits 1:0 are reserved. The upper 32 bits go to FEUADDR.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Feaddr {
    #[bits(2)]
    __: u8,
    /// Message address bits 31:2 (the field holds the address itself).
    #[bits(30, from = addr_4b_from_u32, into = addr_4b_into_u32)]
    pub addr: u32,
}

/// [`addr_4b_into`] for a 32-bit register.
const fn addr_4b_into_u32(addr: u32) -> u32 {
    addr >> 2
}

/// Inverse of [`addr_4b_into_u32`].
const fn addr_4b_from_u32(field: u32) -> u32 {
    field << 2
}

/// A 64-bit MSI address split into its FEADDR (low) and FEUADDR (high) halves.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct MsiAddress64 {
    /// Bits 31:0 (FEADDR).
    pub lo: u32,
    /// Bits 63:32 (FEUADDR).
    pub hi: u32,
}

/// Fault recording register, lower 64 bits, §11.4.14.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FrcdLo {
    #[bits(12)]
    __: u16,
    /// Fault info (bits 63:12): the page-aligned faulting address.
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub fi: u64,
}

/// Fault recording register, lower 64 bits, for an interrupt-remapping fault (FR 20h-27h),
/// §11.4.14: FI bits 63:48 hold the interrupt index, bits 47:12 are clear.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FrcdLoIr {
    #[bits(48)]
    __: u64,
    /// The interrupt_index computed for the faulting request (bits 63:48).
    pub interrupt_index: u16,
}

/// Fault recording register, upper 64 bits (bits 127:64), §11.4.14.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FrcdHi {
    /// Source-id (bits 79:64).
    pub sid: u16,
    #[bits(16)]
    __: u16,
    /// Fault reason (FR, bits 103:96).
    pub fr: u8,
    #[bits(22)]
    __: u32,
    /// Type (T, bit 126): 1 = read request, 0 = write request.
    pub t: bool,
    /// Fault (F, bit 127), RW1C.
    pub f: bool,
}

/// Fault recording register single bits, §11.4.14.
pub mod frcd {
    /// The F bit (bit 127) within the upper 32-bit dword of the record, for its RW1C write.
    pub const F_IN_DWORD: u32 = 1 << 31;
}

/// Invalidation queue head and tail registers (IQH, IQT), §11.4.9.1–2, for 128-bit
/// descriptors.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct QueueIndex {
    #[bits(4)]
    __: u8,
    /// Descriptor index (bits 18:4).
    #[bits(15)]
    pub index: u16,
    #[bits(45)]
    __: u64,
}

/// Invalidation queue address register (IQA), §11.4.9.3.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Iqa {
    /// Queue size (QS, bits 2:0): 2^QS 4 KiB pages.
    #[bits(3)]
    pub qs: u8,
    #[bits(8)]
    __: u8,
    /// Descriptor width (DW, bit 11): 0 = 128-bit descriptors.
    pub dw_256: bool,
    /// Queue base (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub base: u64,
}

/// Invalidation queue single bits, §11.4.9.
pub mod iq {
    /// ICS: invalidation wait descriptor complete.
    pub const ICS_IWC: u32 = 1 << 0;
}

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

/// Invalidation descriptor types and granularities, §6.5.2.
pub mod desc {
    /// Context-cache invalidate.
    pub const TYPE_CONTEXT: u8 = 0x1;
    /// IOTLB invalidate.
    pub const TYPE_IOTLB: u8 = 0x2;
    /// Device-TLB invalidate.
    pub const TYPE_DEVICE_TLB: u8 = 0x3;
    /// Interrupt entry cache invalidate.
    pub const TYPE_IEC: u8 = 0x4;
    /// Invalidation wait.
    pub const TYPE_WAIT: u8 = 0x5;
    /// Granularity: global.
    pub const GLOBAL: u8 = 0b01;
    /// Granularity: domain-selective.
    pub const DOMAIN: u8 = 0b10;
    /// Granularity: device-selective (context) / page-selective (IOTLB).
    pub const DEVICE_OR_PAGE: u8 = 0b11;
}

/// Context-cache and IOTLB invalidate descriptors, bits 63:0, §6.5.2.1–2 (and the type field
/// every descriptor shares).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct CacheDescLo {
    /// Descriptor type (bits 3:0): a `desc::TYPE_*` value.
    #[bits(4)]
    pub kind: u8,
    /// Granularity (bits 5:4): a `desc::` granularity.
    #[bits(2)]
    pub granularity: u8,
    /// IOTLB: drain writes (bit 6).
    pub dw: bool,
    /// IOTLB: drain reads (bit 7).
    pub dr: bool,
    #[bits(8)]
    __: u8,
    /// Domain ID (bits 31:16).
    pub did: u16,
    /// Context: source ID (bits 47:32).
    pub sid: u16,
    /// Context: function mask (bits 49:48).
    #[bits(2)]
    pub fm: u8,
    #[bits(14)]
    __: u16,
}

/// IOTLB invalidate descriptor, bits 127:64, §6.5.2.2.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IotlbDescHi {
    /// Address mask (AM, bits 69:64): log2 of the number of pages.
    #[bits(6, from = am_from, into = am_into)]
    pub am: u8,
    /// Invalidation hint (bit 70): only leaf entries changed.
    pub ih: bool,
    #[bits(5)]
    __: u8,
    /// Address (bits 127:76).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub addr: u64,
}

/// Invalidation wait descriptor, bits 63:0, §6.5.2.8.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct WaitDescLo {
    /// Descriptor type (bits 3:0): `desc::TYPE_WAIT`.
    #[bits(4)]
    pub kind: u8,
    /// Interrupt flag (bit 4).
    pub interrupt: bool,
    /// Status write (bit 5).
    pub sw: bool,
    /// Fence (bit 6): later descriptors wait for this one.
    pub fence: bool,
    #[bits(25)]
    __: u32,
    /// Status data (bits 63:32).
    pub data: u32,
}

/// Invalidation wait descriptor, bits 127:64, §6.5.2.8.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct WaitDescHi {
    #[bits(2)]
    __: u8,
    /// Status address (bits 127:66).
    #[bits(62, from = addr_4b_from, into = addr_4b_into)]
    pub addr: u64,
}

/// Interrupt remapping table address register (IRTA), §11.4.10 (§11.4.29 in rev 4.x).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Irta {
    /// Size (S, bits 3:0): the table has `2^(S + 1)` entries.
    #[bits(4)]
    pub s: u8,
    #[bits(7)]
    __: u8,
    /// Extended interrupt mode enable (EIME, bit 11): 32-bit x2APIC destination IDs.
    pub eime: bool,
    /// Table base (bits 63:12).
    #[bits(52, from = addr_4k_from, into = addr_4k_into)]
    pub base: u64,
}

/// Interrupt remapping table entry, bits 63:0, remapped format (IM = 0), §9.10.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteLo {
    /// Present (P, bit 0).
    pub p: bool,
    /// Fault processing disable (FPD, bit 1): faults through this entry are not recorded.
    pub fpd: bool,
    /// Destination mode (DM, bit 2): 0 physical, 1 logical.
    pub dm: bool,
    /// Redirection hint (RH, bit 3).
    pub rh: bool,
    /// Trigger mode (TM, bit 4): 0 edge, 1 level.
    pub tm: bool,
    /// Delivery mode (DLM, bits 7:5): an `irte::DLM_*` value.
    #[bits(3)]
    pub dlm: u8,
    /// Available to software (AVL, bits 11:8).
    #[bits(4)]
    pub avl: u8,
    /// Reserved (bits 14:12), must be 0.
    #[bits(3)]
    pub reserved_14_12: u8,
    /// IRTE mode (IM, bit 15): 0 remapped, 1 posted.
    pub im: bool,
    /// Vector (V, bits 23:16).
    pub vector: u8,
    /// Reserved (bits 31:24), must be 0.
    pub reserved_31_24: u8,
    /// Destination ID (DST, bits 63:32): an [`XApicDst`] when EIME = 0, the 32-bit x2APIC ID
    /// when EIME = 1.
    pub dst: u32,
}

/// The DST field of an IRTE in xAPIC mode (EIME = 0), §9.10: the 8-bit APIC ID sits in bits
/// 15:8; bits 7:0 and 31:16 are reserved.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct XApicDst {
    /// Reserved (DST bits 7:0 = IRTE bits 39:32).
    pub reserved_lo: u8,
    /// The APIC ID (DST bits 15:8 = IRTE bits 47:40).
    pub apic_id: u8,
    /// Reserved (DST bits 31:16 = IRTE bits 63:48).
    pub reserved_hi: u16,
}

/// Interrupt remapping table entry, bits 127:64, §9.10.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IrteHi {
    /// Source identifier (SID, bits 79:64): a requester ID (SVT = 1) or a [`SidBusRange`]
    /// (SVT = 2).
    pub sid: u16,
    /// Source-id qualifier (SQ, bits 81:80), for SVT = 1: which low SID bits are ignored.
    #[bits(2)]
    pub sq: u8,
    /// Source validation type (SVT, bits 83:82): an `irte::SVT_*` value.
    #[bits(2)]
    pub svt: u8,
    /// Reserved (bits 127:84), must be 0.
    #[bits(44)]
    pub reserved: u64,
}

/// The SID field of an IRTE with SVT = 2 (bus range), §9.10.
#[bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct SidBusRange {
    /// Last bus of the range (bits 7:0).
    pub end: u8,
    /// First bus of the range (bits 15:8).
    pub start: u8,
}

/// IRTE field values, §9.10.
pub mod irte {
    /// Bytes per entry.
    pub const SIZE: usize = 16;
    /// SVT 00: no source validation.
    pub const SVT_NONE: u8 = 0b00;
    /// SVT 01: the requester ID, qualified by SQ.
    pub const SVT_REQUESTER: u8 = 0b01;
    /// SVT 10: the requester's bus lies in the SID's bus range.
    pub const SVT_BUS_RANGE: u8 = 0b10;
    /// SQ 00: all 16 SID bits are compared.
    pub const SQ_ALL_BITS: u8 = 0b00;
    /// The requester-ID bits each SQ value (the index) leaves out of the comparison: none,
    /// bit 2, bits 2:1, bits 2:0 (§9.10 Table "SQ").
    pub const SQ_IGNORED_BITS: [u16; 4] = [0b000, 0b100, 0b110, 0b111];
    /// Delivery mode: fixed.
    pub const DLM_FIXED: u8 = 0b000;
    /// Delivery mode: lowest priority.
    pub const DLM_LOWEST_PRIORITY: u8 = 0b001;
    /// Delivery mode: SMI.
    pub const DLM_SMI: u8 = 0b010;
    /// Delivery mode: NMI.
    pub const DLM_NMI: u8 = 0b100;
    /// Delivery mode: INIT.
    pub const DLM_INIT: u8 = 0b101;
    /// Delivery mode: ExtINT.
    pub const DLM_EXTINT: u8 = 0b111;
}

/// Interrupt entry cache invalidate descriptor, bits 63:0, §6.5.2.7 (bits 127:64 are
/// reserved).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IecDescLo {
    /// Descriptor type (bits 3:0): `desc::TYPE_IEC`.
    #[bits(4)]
    pub kind: u8,
    /// Granularity (G, bit 4): 0 global, 1 index-selective.
    pub index_selective: bool,
    #[bits(22)]
    __: u32,
    /// Index mask (IM, bits 31:27): `2^IM` entries starting at IIDX (aligned to `2^IM`).
    #[bits(5)]
    pub im: u8,
    /// Interrupt index (IIDX, bits 47:32).
    pub iidx: u16,
    #[bits(16)]
    __: u16,
}

/// The address of an MSI in remappable format, §5.1.5.2 (what a device writes to
/// 0xFEEx_xxxx; the PCI crate encodes it, this declaration decodes it in the fake unit).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiAddressRemappable {
    #[bits(2)]
    __: u8,
    /// Handle bit 15 (address bit 2).
    pub handle_15: bool,
    /// Subhandle valid (SHV, bit 3): the data's low 16 bits are added to the handle.
    pub shv: bool,
    /// Interrupt format (bit 4): 1 remappable, 0 compatibility.
    pub remappable: bool,
    /// Handle bits 14:0 (address bits 19:5).
    #[bits(15)]
    pub handle_14_0: u16,
    /// 0xFEE: the interrupt address window (bits 31:20).
    #[bits(12)]
    pub window: u16,
}

/// An interrupt handle split as an MSI address carries it, §5.1.5.2.
#[bitfield(u16)]
#[derive(PartialEq, Eq)]
pub struct IrHandle {
    /// Bits 14:0.
    #[bits(15)]
    pub low: u16,
    /// Bit 15.
    pub bit_15: bool,
}

/// The data of an MSI in remappable format, §5.1.5.2.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiDataRemappable {
    /// Subhandle (bits 15:0), used when SHV is set.
    pub subhandle: u16,
    /// Reserved (bits 31:16), must be 0.
    pub reserved: u16,
}

/// The address of an MSI in compatibility format (Intel SDM vol. 3 §11.11.1), as the fake
/// unit decodes it when it passes it through.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiAddressCompat {
    #[bits(2)]
    __: u8,
    /// Destination mode (bit 2).
    pub dm: bool,
    /// Redirection hint (bit 3).
    pub rh: bool,
    /// Interrupt format (bit 4): 0 here.
    pub remappable: bool,
    #[bits(7)]
    __: u8,
    /// Destination APIC ID (bits 19:12).
    pub dest: u8,
    /// 0xFEE (bits 31:20).
    #[bits(12)]
    pub window: u16,
}

/// The data of an MSI in compatibility format (Intel SDM vol. 3 §11.11.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct MsiDataCompat {
    /// Vector (bits 7:0).
    pub vector: u8,
    /// Delivery mode (bits 10:8).
    #[bits(3)]
    pub delivery: u8,
    #[bits(3)]
    __: u8,
    /// Level (bit 14).
    pub level: bool,
    /// Trigger mode (bit 15): 1 level.
    pub trigger_level: bool,
    #[bits(16)]
    __: u16,
}

/// The interrupt address window's bits 31:20 (0xFEE), §5.1.
pub const MSI_WINDOW: u16 = 0xFEE;

/// Access to one remapping unit's registers by byte offset.
///
/// Implementations must perform each access as a single access of the given width (registers
/// have side effects). Offsets come from this module's declarations.
pub trait RegisterIo: Send + Sync {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
}

impl<T: RegisterIo + ?Sized> RegisterIo for alloc::sync::Arc<T> {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

/// Volatile access to a unit's memory-mapped register page.
///
/// Accesses outside the mapped window (or misaligned for their width) are not performed: reads
/// return all ones (what a bus returns for nothing there) and writes are dropped, so a bad
/// ECAP.IRO/CAP.FRO from the device can never make the CPU touch unmapped memory.
#[derive(Debug)]
pub struct MmioRegisters {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the register window is device memory; every access is a volatile load/store of a
// naturally aligned register, which the hardware serialises. Sharing between CPUs is what the
// unit's own locking is designed for.
unsafe impl Send for MmioRegisters {}
// SAFETY: as above; `&self` methods only perform volatile accesses.
unsafe impl Sync for MmioRegisters {}

impl MmioRegisters {
    /// Wraps a register window.
    ///
    /// # Safety
    ///
    /// `base` must point to the unit's register page (the DRHD register base) mapped uncached
    /// (UC) and readable/writable for `len` bytes, for as long as the value lives, and nothing
    /// else may access these registers meanwhile except through this value.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let size = core::mem::size_of::<T>();
        let in_window = offset.checked_add(size).is_some_and(|end| end <= self.len);
        if !in_window || !offset.is_multiple_of(size) {
            return None;
        }
        // The window is mapped for `len` bytes and `offset + size <= len`.
        Some(self.base.as_ptr().wrapping_add(offset).cast())
    }
}

impl RegisterIo for MmioRegisters {
    fn read32(&self, offset: usize) -> u32 {
        match self.ptr::<u32>(offset) {
            // SAFETY: `ptr` checked the access lies within the mapped window and is aligned;
            // `new`'s contract makes the window valid device memory.
            Some(p) => unsafe { p.read_volatile() },
            None => u32::MAX,
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        match self.ptr::<u64>(offset) {
            // SAFETY: as in `read32`.
            Some(p) => unsafe { p.read_volatile() },
            None => u64::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.ptr::<u32>(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        if let Some(p) = self.ptr::<u64>(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_offsets_match_qemu() {
        // QEMU: IRO = 0xF -> IVA at 0xF0, IOTLB at 0xF8; FRO = 0x22 -> fault record at 0x220.
        assert_eq!(iva_offset(0xF), 0xF0);
        assert_eq!(iotlb_offset(0xF), 0xF8);
        assert_eq!(fault_record_offset(0x22, 0), 0x220);
        assert_eq!(fault_record_offset(0x22, 1), 0x230);
    }

    #[test]
    fn typed_fields_sit_at_the_spec_bit_positions() {
        // Each value built through the declarations equals the raw bits the spec section
        // gives, so a wrong width or offset in a declaration fails here.
        let ccmd = Ccmd::new()
            .with_icc(true)
            .with_cirg(ccmd::GRANULARITY_DEVICE)
            .with_sid(0x0318)
            .with_did(7);
        assert_eq!(ccmd.into_bits(), 0xE000_0000_0318_0007);
        assert_eq!(Ccmd::from_bits(1 << 59).caig(), 1);
        let iotlb = IotlbCmd::new()
            .with_ivt(true)
            .with_iirg(iotlb::GRANULARITY_DOMAIN)
            .with_dr(true)
            .with_dw(true)
            .with_did(9);
        assert_eq!(iotlb.into_bits(), 0xA003_0009_0000_0000);
        assert_eq!(IotlbCmd::from_bits(0b11 << 57).iaig(), 0b11);
        let iva = Iva::new()
            .with_addr(0x4_0000_1FFF)
            .with_ih(true)
            .with_am(MAX_AM + 1);
        assert_eq!(iva.into_bits(), 0x4_0000_1000 | 1 << 6 | 63);
        let iqa = Iqa::new().with_base(0x1234_5000).with_qs(1);
        assert_eq!(iqa.into_bits(), 0x1234_5001);
        assert_eq!(QueueIndex::new().with_index(0x7FFF).into_bits(), 0x7_FFF0);
        assert_eq!(Fsts::from_bits(0x0000_2A03).fri(), 0x2A);
        let hi = FrcdHi::from_bits(0x8000_0005_0000_0318);
        assert_eq!(
            (hi.f(), hi.t(), hi.fr(), hi.sid()),
            (true, false, 5, 0x0318)
        );
        assert_eq!(FrcdLo::from_bits(0x30_0ABC).fi(), 0x30_0000);
        let rt = Rtaddr::new()
            .with_rta(0x7F_F000)
            .with_ttm(Rtaddr::TTM_LEGACY);
        assert_eq!(rt.into_bits(), 0x7F_F000);
        let root = RootEntryLo::new().with_present(true).with_ctp(0x8000_2000);
        assert_eq!(root.into_bits(), 0x8000_2001);
        let lo = ContextEntryLo::new()
            .with_present(true)
            .with_fpd(true)
            .with_tt(0b10)
            .with_slptptr(0x9000);
        assert_eq!(lo.into_bits(), 0x9000 | 0b10 << 2 | 0b11);
        let hi = ContextEntryHi::new().with_aw(2).with_did(0xABCD);
        assert_eq!(hi.into_bits(), 0x00AB_CD02);
        let wait = WaitDescHi::new().with_addr(0x1234_5678);
        assert_eq!(wait.into_bits(), 0x1234_5678);
        assert!(WaitDescLo::from_bits(1 << 4).interrupt());
    }

    #[test]
    fn second_level_entry_bits_match_the_spec() {
        // §9.8: R = 0, W = 1, PS = 7, SNP = 11, address 51:12; software bits 52 and 53.
        assert_eq!(
            (pte::READ, pte::WRITE, pte::PAGE_SIZE, pte::SNOOP),
            (1, 2, 0x80, 0x800)
        );
        assert_eq!(pte::ADDR_MASK, 0x000F_FFFF_FFFF_F000);
        assert_eq!((pte::SW_MAPPED, pte::SW_MMIO), (1 << 52, 1 << 53));
        let leaf = SlPte::new().with_addr(0x1F_FFFF_FFFF_FFFF).with_r(true);
        assert_eq!(
            leaf.into_bits(),
            0x000F_FFFF_FFFF_F001,
            "nothing spills past bit 51"
        );
    }

    #[test]
    fn interrupt_remapping_declarations_sit_at_the_spec_bit_positions() {
        // §11.4.10 IRTA: S 3:0, EIME 11, base 63:12.
        let irta = Irta::new().with_base(0x1234_5000).with_eime(true).with_s(7);
        assert_eq!(irta.into_bits(), 0x1234_5000 | 1 << 11 | 7);
        // §11.4.7.2 FECTL: IP 30, IM 31; §11.4.7.4 FEADDR bits 31:2.
        assert_eq!(FECTL_IM, 0x8000_0000);
        assert!(Fectl::from_bits(0x4000_0000).ip());
        assert_eq!(
            Feaddr::new().with_addr(0xFEE0_1003).into_bits(),
            0xFEE0_1000
        );
        // §5.1.5.2: handle 14:0 in address 19:5, handle 15 in bit 2, SHV bit 3, format bit 4.
        let a =
            MsiAddressRemappable::from_bits(0xFEE0_0000 | 0x1234 << 5 | 1 << 4 | 1 << 3 | 1 << 2);
        assert_eq!(
            (
                a.window(),
                a.handle_14_0(),
                a.remappable(),
                a.shv(),
                a.handle_15()
            ),
            (MSI_WINDOW, 0x1234, true, true, true)
        );
        let h = IrHandle::new().with_low(0x1234).with_bit_15(true);
        assert_eq!(h.into_bits(), 0x9234);
        // Compatibility format: destination 19:12, vector 7:0, trigger 15.
        let c = MsiAddressCompat::from_bits(0xFEE0_3000);
        assert_eq!((c.dest(), c.remappable()), (3, false));
        assert_eq!(MsiDataCompat::from_bits(0x8041).vector(), 0x41);
        assert!(MsiDataCompat::from_bits(0x8041).trigger_level());
        // §11.4.14: the interrupt index of an IR fault in FI bits 63:48.
        assert_eq!(FrcdLoIr::from_bits(0xABCD << 48).interrupt_index(), 0xABCD);
        assert_eq!(
            MsiAddress64::new()
                .with_lo(0xFEE0_0000)
                .with_hi(1)
                .into_bits(),
            0x1_FEE0_0000
        );
    }

    #[test]
    fn persistent_mask_clears_exactly_the_one_shot_bits() {
        let one_shot = Global::SRTP | Global::SFL | Global::WBF | Global::SIRTP;
        assert_eq!(!GSTS_PERSISTENT_MASK, one_shot.bits());
    }

    #[test]
    fn mmio_accesses_stay_in_the_window() {
        let mut page = [0u64; 8];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `page` is valid ordinary memory for 64 bytes and outlives `regs`.
        let regs = unsafe { MmioRegisters::new(base, 64) };
        regs.write64(8, 0x1122_3344_5566_7788);
        assert_eq!(regs.read64(8), 0x1122_3344_5566_7788);
        assert_eq!(regs.read32(12), 0x1122_3344);
        regs.write32(0, 7);
        assert_eq!(regs.read32(0), 7);
        assert_eq!(regs.read64(64), u64::MAX);
        assert_eq!(regs.read64(60), u64::MAX);
        assert_eq!(regs.read32(2), u32::MAX);
        regs.write64(usize::MAX - 3, 1);
        regs.write64(64, 1);
        assert_eq!(page[0], 7);
    }
}
