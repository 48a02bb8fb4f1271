//! The register map (§11.4): register offsets, the GCMD/GSTS bits and the typed fields of every
//! register this crate writes or polls (VER, CAP, ECAP, RTADDR, CCMD, IOTLB, FSTS, FECTL,
//! FEADDR, fault recording, invalidation queue).

use bitfield_struct::bitfield;

use super::{addr_4k_from, addr_4k_into, am_from, am_into};

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
    /// RTADDR.TTM 01: scalable-mode root table (§11.4.5; needs ECAP.SMTS).
    pub const TTM_SCALABLE: u8 = 0b01;
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
