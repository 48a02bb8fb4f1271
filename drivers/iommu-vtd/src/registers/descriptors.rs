//! Invalidation descriptors (§6.5.2): descriptor types and granularities, the context-cache,
//! IOTLB, invalidation-wait and interrupt-entry-cache descriptor layouts, and the scalable-mode
//! PASID-cache (type 7) and PASID-based IOTLB (type 6) descriptors.

use bitfield_struct::bitfield;

use super::{addr_4b_from, addr_4b_into, addr_4k_from, addr_4k_into, am_from, am_into};

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
    /// PASID-based IOTLB invalidate (scalable mode, §6.5.2.4).
    pub const TYPE_PASID_IOTLB: u8 = 0x6;
    /// PASID-cache invalidate (scalable mode, §6.5.2.2).
    pub const TYPE_PASID_CACHE: u8 = 0x7;
    /// PASID-cache granularity 00: every PASID entry of a domain (domain-selective).
    pub const PASID_CACHE_DOMAIN: u8 = 0b00;
    /// PASID-cache granularity 01: one PASID of a domain (PASID-selective).
    pub const PASID_CACHE_PASID: u8 = 0b01;
    /// PASID-cache granularity 11: every PASID-cache entry (global).
    pub const PASID_CACHE_GLOBAL: u8 = 0b11;
    /// PASID-based IOTLB granularity 10: every mapping of one PASID of a domain.
    pub const PASID_IOTLB_PASID: u8 = 0b10;
    /// PASID-based IOTLB granularity 11: 2^AM pages of one PASID of a domain.
    pub const PASID_IOTLB_PAGE: u8 = 0b11;
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

/// PASID-cache invalidate (type 7) and PASID-based IOTLB invalidate (type 6) descriptors,
/// bits 63:0, §6.5.2.2 / §6.5.2.4 (128-bit form; a PASID-cache descriptor's bits 127:64 are
/// reserved).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct PasidDescLo {
    /// Descriptor type (bits 3:0): `desc::TYPE_PASID_CACHE` or `desc::TYPE_PASID_IOTLB`.
    #[bits(4)]
    pub kind: u8,
    /// Granularity (bits 5:4): a `desc::PASID_CACHE_*` or `desc::PASID_IOTLB_*` value.
    #[bits(2)]
    pub granularity: u8,
    #[bits(10)]
    __: u16,
    /// Domain ID (bits 31:16).
    pub did: u16,
    /// PASID (bits 51:32).
    #[bits(20)]
    pub pasid: u32,
    #[bits(12)]
    __: u16,
}

/// PASID-based IOTLB invalidate descriptor, bits 127:64, §6.5.2.4 (the same layout as the
/// IOTLB descriptor's upper half: AM 69:64, IH 70, address 127:76).
pub type PasidIotlbDescHi = IotlbDescHi;
