//! Decoding of the capability (CAP) and extended capability (ECAP) registers.
//!
//! Implements VT-d spec §11.4.2 (CAP) and §11.4.3 (ECAP): every field this crate relies on is
//! decoded once into a named value; [`Capabilities`] prints them readably for the boot log.

use core::fmt;

use crate::registers::{self, CapReg, EcapReg, RegisterIo, Ver};

/// ND encodes `2^(ND_BASE + ND_STEP * ND)` domain IDs.
const ND_BASE: u32 = 4;
const ND_STEP: u32 = 2;
/// Highest defined ND encoding (65536 domains).
const ND_MAX: u32 = 6;

/// SAGAW bit for 3-level (39-bit) tables.
const SAGAW_39: u64 = 1 << 1;
/// SAGAW bit for 4-level (48-bit) tables.
const SAGAW_48: u64 = 1 << 2;
/// SAGAW bit for 5-level (57-bit) tables.
const SAGAW_57: u64 = 1 << 3;

/// SLLPS bit: 2 MiB second-level pages.
const SLLPS_2M: u64 = 1 << 0;
/// SLLPS bit: 1 GiB second-level pages.
const SLLPS_1G: u64 = 1 << 1;

/// Depth of a second-level page table, as advertised by SAGAW and programmed as a context
/// entry's AW field (which must equal the depth: otherwise QEMU faults with reason 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PagingLevels {
    /// 3-level table, 39-bit input addresses (AW = 1).
    Three,
    /// 4-level table, 48-bit input addresses (AW = 2).
    Four,
}

impl PagingLevels {
    /// Number of table levels.
    pub const fn count(self) -> u8 {
        match self {
            Self::Three => 3,
            Self::Four => 4,
        }
    }

    /// Input address width in bits (the AGAW).
    pub const fn address_width(self) -> u8 {
        match self {
            Self::Three => 39,
            Self::Four => 48,
        }
    }

    /// The context entry's AW encoding, §9.3.
    pub const fn context_aw(self) -> u8 {
        match self {
            Self::Three => 1,
            Self::Four => 2,
        }
    }

    const fn sagaw_bit(self) -> u64 {
        match self {
            Self::Three => SAGAW_39,
            Self::Four => SAGAW_48,
        }
    }
}

/// The decoded capability register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The raw value.
    pub raw: u64,
    /// Number of domain IDs supported (from ND).
    pub domain_ids: u32,
    /// Advanced fault logging.
    pub afl: bool,
    /// Required write-buffer flushing.
    pub rwbf: bool,
    /// Protected low-memory region.
    pub plmr: bool,
    /// Protected high-memory region.
    pub phmr: bool,
    /// Caching mode: not-present and erroneous entries may be cached.
    pub caching_mode: bool,
    /// Supported adjusted guest address widths (raw SAGAW bits).
    pub sagaw: u8,
    /// Maximum guest address width in bits (MGAW + 1).
    pub mgaw: u8,
    /// Zero-length reads.
    pub zlr: bool,
    /// Fault recording register offset in 16-byte units.
    pub fro: u16,
    /// Second-level large page support (raw SLLPS bits: 0 = 2 MiB, 1 = 1 GiB).
    pub sllps: u8,
    /// Page-selective invalidation.
    pub psi: bool,
    /// Number of fault recording registers (NFR + 1).
    pub fault_records: u16,
    /// Maximum address mask value for page-selective invalidation.
    pub mamv: u8,
    /// Write draining.
    pub dwd: bool,
    /// Read draining.
    pub drd: bool,
    /// First-level 1 GiB pages.
    pub fl1gp: bool,
    /// Posted interrupts.
    pub pi: bool,
    /// First-level 5-level paging.
    pub fl5lp: bool,
}

impl Cap {
    /// Decodes a raw CAP value.
    pub const fn decode(raw: u64) -> Self {
        let f = CapReg::from_bits(raw);
        let nd = f.nd() as u32;
        let nd = if nd > ND_MAX { ND_MAX } else { nd };
        Self {
            raw,
            domain_ids: 1u32 << (ND_BASE + ND_STEP * nd),
            afl: f.afl(),
            rwbf: f.rwbf(),
            plmr: f.plmr(),
            phmr: f.phmr(),
            caching_mode: f.cm(),
            sagaw: f.sagaw(),
            mgaw: f.mgaw() + 1,
            zlr: f.zlr(),
            fro: f.fro(),
            sllps: f.sllps(),
            psi: f.psi(),
            fault_records: f.nfr() as u16 + 1,
            mamv: f.mamv(),
            dwd: f.dwd(),
            drd: f.drd(),
            fl1gp: f.fl1gp(),
            pi: f.pi(),
            fl5lp: f.fl5lp(),
        }
    }

    /// Whether SAGAW advertises `levels`.
    pub const fn supports_levels(&self, levels: PagingLevels) -> bool {
        self.sagaw as u64 & levels.sagaw_bit() != 0
    }

    /// Whether 2 MiB second-level pages are supported.
    pub const fn superpage_2m(&self) -> bool {
        self.sllps as u64 & SLLPS_2M != 0
    }

    /// Whether 1 GiB second-level pages are supported.
    pub const fn superpage_1g(&self) -> bool {
        self.sllps as u64 & SLLPS_1G != 0
    }

    /// Byte offset of the first fault recording register.
    pub const fn fault_record_offset(&self) -> usize {
        registers::fault_record_offset(self.fro, 0)
    }

    /// The page-table depths this unit can walk that this crate supports, shallowest first,
    /// limited to those whose width the MGAW makes useful: a deeper table than the MGAW needs
    /// is only chosen when it is the only one advertised.
    pub fn usable_levels(&self) -> impl Iterator<Item = PagingLevels> + '_ {
        let all = [PagingLevels::Three, PagingLevels::Four];
        let supported = move |l: &PagingLevels| self.supports_levels(*l);
        // The shallowest advertised depth whose width covers the MGAW; deeper ones add nothing.
        let cover = all
            .into_iter()
            .filter(supported)
            .find(|l| l.address_width() >= self.mgaw);
        all.into_iter()
            .filter(supported)
            .filter(move |l| cover.is_none_or(|c| *l <= c))
    }
}

/// The decoded extended capability register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ecap {
    /// The raw value.
    pub raw: u64,
    /// Page-walk coherency: hardware snoops the CPU caches when walking remapping structures.
    /// When clear, every table write must be flushed from the CPU cache (clflush).
    pub coherent: bool,
    /// Queued invalidation.
    pub queued_invalidation: bool,
    /// Device-TLB (ATS).
    pub device_tlb: bool,
    /// Interrupt remapping.
    pub interrupt_remapping: bool,
    /// Extended interrupt mode (x2APIC).
    pub eim: bool,
    /// Pass-through translation type.
    pub pass_through: bool,
    /// Snoop control: the SNP bit of second-level leaf entries is honoured (else reserved).
    pub snoop_control: bool,
    /// IOTLB register offset in 16-byte units.
    pub iro: u16,
    /// Maximum handle mask value (interrupt entry cache invalidation).
    pub mhmv: u8,
    /// Nested translation.
    pub nest: bool,
    /// Page requests.
    pub prs: bool,
    /// PASID support.
    pub pasid: bool,
    /// Scalable-mode translation.
    pub smts: bool,
    /// Second-level translation (scalable mode).
    pub slts: bool,
    /// First-level translation (scalable mode).
    pub flts: bool,
}

impl Ecap {
    /// Decodes a raw ECAP value.
    pub const fn decode(raw: u64) -> Self {
        let f = EcapReg::from_bits(raw);
        Self {
            raw,
            coherent: f.c(),
            queued_invalidation: f.qi(),
            device_tlb: f.dt(),
            interrupt_remapping: f.ir(),
            eim: f.eim(),
            pass_through: f.pt(),
            snoop_control: f.sc(),
            iro: f.iro(),
            mhmv: f.mhmv(),
            nest: f.nest(),
            prs: f.prs(),
            pasid: f.pasid(),
            smts: f.smts(),
            slts: f.slts(),
            flts: f.flts(),
        }
    }

    /// Byte offset of the IOTLB invalidate register.
    pub const fn iotlb_offset(&self) -> usize {
        registers::iotlb_offset(self.iro)
    }

    /// Byte offset of the invalidate address register.
    pub const fn iva_offset(&self) -> usize {
        registers::iva_offset(self.iro)
    }
}

/// VER, CAP and ECAP of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Architecture version (major, minor).
    pub version: (u8, u8),
    /// The capability register.
    pub cap: Cap,
    /// The extended capability register.
    pub ecap: Ecap,
}

impl Capabilities {
    /// Decodes raw register values.
    pub const fn decode(ver: u32, cap: u64, ecap: u64) -> Self {
        Self {
            version: (Ver::from_bits(ver).max(), Ver::from_bits(ver).min()),
            cap: Cap::decode(cap),
            ecap: Ecap::decode(ecap),
        }
    }

    /// Reads and decodes VER, CAP and ECAP.
    pub fn read(regs: &(impl RegisterIo + ?Sized)) -> Self {
        Self::decode(
            regs.read32(registers::VER),
            regs.read64(registers::CAP),
            regs.read64(registers::ECAP),
        )
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CAP {:#x}: {} domain IDs, MGAW {} bits, SAGAW",
            self.raw, self.domain_ids, self.mgaw
        )?;
        let sagaw = self.sagaw as u64;
        for (bit, name) in [
            (SAGAW_39, "39-bit/3-level"),
            (SAGAW_48, "48-bit/4-level"),
            (SAGAW_57, "57-bit/5-level"),
        ] {
            if sagaw & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        f.write_str(", superpages")?;
        if self.sllps == 0 {
            f.write_str(" none")?;
        }
        if self.superpage_2m() {
            f.write_str(" 2M")?;
        }
        if self.superpage_1g() {
            f.write_str(" 1G")?;
        }
        write!(
            f,
            ", PSI {} (MAMV {}), caching mode {}, RWBF {}, {} fault record(s) at {:#x}, DRD {}, DWD {}",
            yes(self.psi),
            self.mamv,
            yes(self.caching_mode),
            yes(self.rwbf),
            self.fault_records,
            self.fault_record_offset(),
            yes(self.drd),
            yes(self.dwd)
        )
    }
}

impl fmt::Display for Ecap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ECAP {:#x}: IOTLB registers at {:#x}, coherent walks (C) {}, queued invalidation {}, \
             interrupt remapping {}, x2APIC {}, pass-through {}, device-TLB {}, snoop control {}, \
             scalable mode {}",
            self.raw,
            self.iva_offset(),
            yes(self.coherent),
            yes(self.queued_invalidation),
            yes(self.interrupt_remapping),
            yes(self.eim),
            yes(self.pass_through),
            yes(self.device_tlb),
            yes(self.snoop_control),
            yes(self.smts)
        )
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "VT-d version {}.{}", self.version.0, self.version.1)?;
        writeln!(f, "  {}", self.cap)?;
        write!(f, "  {}", self.ecap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From tests/fixtures/registers.txt (QEMU 7.2).
    const DEFAULT: (u32, u64, u64) = (0x10, 0xd2008c22260206, 0xf00f4a);
    const AW48: (u32, u64, u64) = (0x10, 0xd2008c222f0606, 0xf00f4a);
    const CM: (u32, u64, u64) = (0x10, 0xd2008c22260286, 0xf00f4a);
    const AW48_CM_NOIR: (u32, u64, u64) = (0x10, 0xd2008c222f0686, 0xf42);

    fn decode((v, c, e): (u32, u64, u64)) -> Capabilities {
        Capabilities::decode(v, c, e)
    }

    #[test]
    fn qemu_default_capabilities() {
        let caps = decode(DEFAULT);
        assert_eq!(caps.version, (1, 0));
        let cap = caps.cap;
        assert_eq!(cap.domain_ids, 65536);
        assert_eq!(cap.sagaw, 0b10, "39-bit only");
        assert!(cap.supports_levels(PagingLevels::Three));
        assert!(!cap.supports_levels(PagingLevels::Four));
        assert_eq!(cap.mgaw, 39);
        assert!(cap.superpage_2m() && cap.superpage_1g());
        assert!(cap.psi);
        assert_eq!(cap.mamv, 18);
        assert!(!cap.caching_mode);
        assert!(!cap.rwbf);
        assert_eq!(cap.fro, 0x22);
        assert_eq!(cap.fault_record_offset(), 0x220);
        assert_eq!(cap.fault_records, 1, "NFR = 0");
        assert!(cap.drd && cap.dwd);
        let ecap = caps.ecap;
        assert!(!ecap.coherent, "ECAP.C = 0");
        assert!(!ecap.snoop_control, "ECAP.SC = 0");
        assert!(ecap.queued_invalidation);
        assert!(ecap.interrupt_remapping);
        assert!(ecap.pass_through);
        assert!(!ecap.device_tlb);
        assert_eq!(ecap.iro, 0xF);
        assert_eq!(ecap.iotlb_offset(), 0xF8);
        assert_eq!(
            cap.usable_levels().collect::<Vec<_>>(),
            [PagingLevels::Three]
        );
    }

    #[test]
    fn aw_bits_48_advertises_39_and_48() {
        let cap = decode(AW48).cap;
        assert_eq!(cap.sagaw, 0b110);
        assert_eq!(cap.mgaw, 48);
        assert!(cap.supports_levels(PagingLevels::Three));
        assert!(cap.supports_levels(PagingLevels::Four));
        assert_eq!(
            cap.usable_levels().collect::<Vec<_>>(),
            [PagingLevels::Three, PagingLevels::Four]
        );
    }

    #[test]
    fn caching_mode_sets_cm() {
        assert!(decode(CM).cap.caching_mode);
        let caps = decode(AW48_CM_NOIR);
        assert!(caps.cap.caching_mode);
        assert!(!caps.ecap.interrupt_remapping);
        assert!(caps.ecap.queued_invalidation);
    }

    #[test]
    fn display_is_readable() {
        let text = decode(DEFAULT).to_string();
        assert!(text.contains("65536 domain IDs"), "{text}");
        assert!(text.contains("SAGAW 39-bit/3-level,"), "{text}");
        assert!(text.contains("superpages 2M 1G"), "{text}");
        assert!(text.contains("MAMV 18"), "{text}");
        assert!(text.contains("1 fault record(s) at 0x220"), "{text}");
        assert!(text.contains("snoop control no"), "{text}");
        assert!(text.contains("coherent walks (C) no"), "{text}");
        assert!(text.contains("IOTLB registers at 0xf0"), "{text}");
    }

    #[test]
    fn nd_encodings() {
        assert_eq!(Cap::decode(0).domain_ids, 16);
        assert_eq!(Cap::decode(2).domain_ids, 256);
        assert_eq!(Cap::decode(7).domain_ids, 65536, "reserved encoding clamps");
    }
}
