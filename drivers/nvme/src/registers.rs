//! Controller registers at BAR0 (NVM Express 1.4 §3.1) and their decoding.
//!
//! Only the registers this driver reads are declared; the doorbells (from 0x1000) and the MSI-X
//! table that follow in QEMU's 16 KiB BAR0 are not.

use core::fmt;

/// The controller registers (NVMe 1.4 §3.1, Figure 78).
#[repr(C)]
pub(crate) struct Regs {
    /// 0x00: Controller Capabilities (CAP).
    pub(crate) cap: u64,
    /// 0x08: Version (VS).
    pub(crate) vs: u32,
    /// 0x0c: Interrupt Mask Set.
    pub(crate) intms: u32,
    /// 0x10: Interrupt Mask Clear.
    pub(crate) intmc: u32,
    /// 0x14: Controller Configuration (CC).
    pub(crate) cc: u32,
    _reserved0: u32,
    /// 0x1c: Controller Status (CSTS).
    pub(crate) csts: u32,
    /// 0x20: NVM Subsystem Reset.
    pub(crate) nssr: u32,
    /// 0x24: Admin Queue Attributes.
    pub(crate) aqa: u32,
    /// 0x28: Admin Submission Queue base.
    pub(crate) asq: u64,
    /// 0x30: Admin Completion Queue base.
    pub(crate) acq: u64,
    /// 0x38: Controller Memory Buffer Location (CMBLOC).
    pub(crate) cmbloc: u32,
    /// 0x3c: Controller Memory Buffer Size (CMBSZ).
    pub(crate) cmbsz: u32,
    /// 0x40: Boot Partition Information.
    pub(crate) bpinfo: u32,
    /// 0x44: Boot Partition Read Select.
    pub(crate) bprsel: u32,
    /// 0x48: Boot Partition Memory Buffer Location.
    pub(crate) bpmbl: u64,
    /// 0x50: Controller Memory Buffer Memory Space Control (CMBMSC), low dword: CRE, CMSE and
    /// CBA bits 31:12. Written as two dwords, high first (what Linux's `hi_lo_writeq` does and
    /// what QEMU needs: it acts when the low dword is written).
    pub(crate) cmbmsc_low: u32,
    /// 0x54: CMBMSC high dword: CBA bits 63:32.
    pub(crate) cmbmsc_high: u32,
    /// 0x58: Controller Memory Buffer Status (CMBSTS).
    pub(crate) cmbsts: u32,
}

const _: () = assert!(core::mem::offset_of!(Regs, vs) == 0x08);
const _: () = assert!(core::mem::offset_of!(Regs, cc) == 0x14);
const _: () = assert!(core::mem::offset_of!(Regs, csts) == 0x1c);
const _: () = assert!(core::mem::offset_of!(Regs, asq) == 0x28);
const _: () = assert!(core::mem::offset_of!(Regs, cmbloc) == 0x38);
const _: () = assert!(core::mem::offset_of!(Regs, cmbsz) == 0x3c);
const _: () = assert!(core::mem::offset_of!(Regs, cmbmsc_low) == 0x50);
const _: () = assert!(core::mem::offset_of!(Regs, cmbsts) == 0x58);

/// Size of the declared register block (the host tests' stand-in BAR0 must be at least this).
pub const REGISTER_BLOCK_SIZE: usize = core::mem::size_of::<Regs>();

/// Bits of CMBMSC (NVMe 1.4 §3.1.20).
pub mod cmbmsc {
    /// Capabilities Registers Enabled: CMBLOC and CMBSZ read as implemented (else 0).
    pub const CRE: u32 = 1 << 0;
    /// Controller Memory Space Enable: the controller treats addresses in CBA..CBA+size as its
    /// CMB.
    pub const CMSE: u32 = 1 << 1;
    /// CBA is 4 KiB aligned: bits 11:0 of the address are not stored.
    pub const CBA_ALIGN: u64 = 0xfff;
}

/// Bits of CMBSTS (NVMe 1.4 §3.1.21).
pub mod cmbsts {
    /// Controller Base Address Invalid: the last CBA written would not fit.
    pub const CBAI: u32 = 1 << 0;
}

/// CC.EN (NVMe 1.4 §3.1.5).
pub const CC_ENABLE: u32 = 1 << 0;

/// Controller Capabilities (CAP, NVMe 1.4 §3.1.1), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The raw register.
    pub raw: u64,
}

impl Capabilities {
    /// Maximum Queue Entries Supported (bits 15:0, a 0's based value).
    pub const fn max_queue_entries(&self) -> u32 {
        (self.raw & 0xffff) as u32 + 1
    }

    /// Contiguous Queues Required (bit 16).
    pub const fn contiguous_queues_required(&self) -> bool {
        self.raw & (1 << 16) != 0
    }

    /// Arbitration Mechanism Supported (bits 18:17).
    pub const fn arbitration_mechanisms(&self) -> u8 {
        ((self.raw >> 17) & 0x3) as u8
    }

    /// Timeout (bits 31:24) in milliseconds: worst-case time for CSTS.RDY to follow CC.EN.
    pub const fn timeout_ms(&self) -> u32 {
        ((self.raw >> 24) & 0xff) as u32 * 500
    }

    /// Doorbell Stride (bits 35:32) in bytes: 4 << DSTRD.
    pub const fn doorbell_stride(&self) -> u32 {
        4 << ((self.raw >> 32) & 0xf)
    }

    /// NVM Subsystem Reset Supported (bit 36).
    pub const fn subsystem_reset(&self) -> bool {
        self.raw & (1 << 36) != 0
    }

    /// Command Sets Supported (bits 44:37): bit 0 NVM, bit 6 I/O command sets, bit 7 admin only.
    pub const fn command_sets(&self) -> u8 {
        ((self.raw >> 37) & 0xff) as u8
    }

    /// Boot Partition Support (bit 45).
    pub const fn boot_partitions(&self) -> bool {
        self.raw & (1 << 45) != 0
    }

    /// Memory Page Size Minimum (bits 51:48) in bytes: 4 KiB << MPSMIN.
    pub const fn min_page_size(&self) -> u64 {
        4096 << ((self.raw >> 48) & 0xf)
    }

    /// Memory Page Size Maximum (bits 55:52) in bytes: 4 KiB << MPSMAX.
    pub const fn max_page_size(&self) -> u64 {
        4096 << ((self.raw >> 52) & 0xf)
    }

    /// Persistent Memory Region Supported (bit 56).
    pub const fn persistent_memory_region(&self) -> bool {
        self.raw & (1 << 56) != 0
    }

    /// Controller Memory Buffer Supported (bit 57): CMBMSC exists and CMBLOC/CMBSZ read 0 until
    /// CMBMSC.CRE is set (the NVMe 1.4 scheme).
    pub const fn controller_memory_buffer(&self) -> bool {
        self.raw & (1 << 57) != 0
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MQES {} TO {} ms DSTRD {} B CSS {:#04x} MPS {}-{} KiB{}{}",
            self.max_queue_entries(),
            self.timeout_ms(),
            self.doorbell_stride(),
            self.command_sets(),
            self.min_page_size() >> 10,
            self.max_page_size() >> 10,
            if self.controller_memory_buffer() {
                " CMBS"
            } else {
                ""
            },
            if self.persistent_memory_region() {
                " PMRS"
            } else {
                ""
            },
        )
    }
}

/// Version (VS, NVMe 1.4 §3.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version (bits 31:16).
    pub major: u16,
    /// Minor version (bits 15:8).
    pub minor: u8,
    /// Tertiary version (bits 7:0).
    pub tertiary: u8,
}

impl Version {
    /// Decodes the register.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            major: (raw >> 16) as u16,
            minor: (raw >> 8) as u8,
            tertiary: raw as u8,
        }
    }

    /// NVMe 1.4, the version whose CMB scheme needs CMBMSC.CRE.
    pub const V1_4: Self = Self::from_raw(0x0001_0400);
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.tertiary)
    }
}

/// Controller Status (CSTS, NVMe 1.4 §3.1.6), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerStatus {
    /// The raw register.
    pub raw: u32,
}

impl ControllerStatus {
    /// Ready (bit 0).
    pub const fn ready(&self) -> bool {
        self.raw & 1 != 0
    }

    /// Controller Fatal Status (bit 1).
    pub const fn fatal(&self) -> bool {
        self.raw & (1 << 1) != 0
    }

    /// Shutdown Status (bits 3:2): 0 normal, 1 in progress, 2 complete.
    pub const fn shutdown_status(&self) -> u8 {
        ((self.raw >> 2) & 0x3) as u8
    }
}

/// Controller Memory Buffer Location (CMBLOC, NVMe 1.4 §3.1.11), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmbLocation {
    /// The raw register.
    pub raw: u32,
}

impl CmbLocation {
    /// Base Indicator Register (bits 2:0): the BAR holding the CMB (0 or 2-5; 1, 6, 7 reserved).
    pub const fn bir(&self) -> u8 {
        (self.raw & 0x7) as u8
    }

    /// Offset (bits 31:12) in units of [`CmbSize::unit`].
    pub const fn offset_units(&self) -> u32 {
        self.raw >> 12
    }

    /// CMB Data Pointer and Command Independent Locations Support (bit 6).
    pub const fn data_pointer_independent(&self) -> bool {
        self.raw & (1 << 6) != 0
    }

    /// CMB Data Pointer Mixed Locations Support (bit 5).
    pub const fn data_pointer_mixed(&self) -> bool {
        self.raw & (1 << 5) != 0
    }
}

/// Controller Memory Buffer Size (CMBSZ, NVMe 1.4 §3.1.12), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmbSize {
    /// The raw register.
    pub raw: u32,
}

impl CmbSize {
    /// Submission Queue Support (bit 0).
    pub const fn submission_queues(&self) -> bool {
        self.raw & 1 != 0
    }

    /// Completion Queue Support (bit 1).
    pub const fn completion_queues(&self) -> bool {
        self.raw & (1 << 1) != 0
    }

    /// PRP SGL List Support (bit 2).
    pub const fn lists(&self) -> bool {
        self.raw & (1 << 2) != 0
    }

    /// Read Data Support (bit 3): the controller reads write-command data from the CMB.
    pub const fn read_data(&self) -> bool {
        self.raw & (1 << 3) != 0
    }

    /// Write Data Support (bit 4): the controller writes read-command data to the CMB.
    pub const fn write_data(&self) -> bool {
        self.raw & (1 << 4) != 0
    }

    /// Size Units (bits 11:8), raw.
    pub const fn size_units(&self) -> u8 {
        ((self.raw >> 8) & 0xf) as u8
    }

    /// Size (bits 31:12) in units of [`CmbSize::unit`].
    pub const fn size_in_units(&self) -> u32 {
        self.raw >> 12
    }

    /// The unit of SZ and OFST in bytes: 4 KiB × 16^SZU for SZU 0-6 (4 KiB to 64 GiB), `None`
    /// for the reserved encodings 7-15.
    pub const fn unit(&self) -> Option<u64> {
        let szu = self.size_units();
        if szu > 6 {
            return None;
        }
        Some(1 << (12 + 4 * szu as u32))
    }
}
