//! Register access for the queue-running part of the driver: a small trait so the same code
//! drives QEMU's controller through BAR0 and the host tests' fake controller, plus the register
//! offsets and the fields of CC and AQA (NVM Express 1.4 §3.1.5, §3.1.8) and the doorbells
//! (§3.1.24-§3.1.25).

use core::ptr::NonNull;

use bitfield_struct::bitfield;

/// Register offsets in BAR0 (NVMe 1.4 Figure 78).
pub mod offset {
    /// Controller Capabilities.
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: usize = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1c;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue base.
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue base.
    pub const ACQ: usize = 0x30;
    /// First doorbell.
    pub const DOORBELLS: usize = 0x1000;
}

/// Controller Configuration (CC, NVMe 1.4 §3.1.5).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cc {
    /// Enable.
    pub en: bool,
    #[bits(3)]
    __: u8,
    /// I/O Command Set Selected (000b: NVM).
    #[bits(3)]
    pub css: u8,
    /// Memory Page Size: 2^(12 + MPS).
    #[bits(4)]
    pub mps: u8,
    /// Arbitration Mechanism Selected (000b: round robin).
    #[bits(3)]
    pub ams: u8,
    /// Shutdown Notification (01b: normal shutdown).
    #[bits(2)]
    pub shn: u8,
    /// I/O Submission Queue Entry Size: 2^IOSQES bytes.
    #[bits(4)]
    pub iosqes: u8,
    /// I/O Completion Queue Entry Size: 2^IOCQES bytes.
    #[bits(4)]
    pub iocqes: u8,
    #[bits(8)]
    __: u8,
}

/// Admin Queue Attributes (AQA, NVMe 1.4 §3.1.8): both sizes 0's based.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Aqa {
    /// Admin Submission Queue Size (entries - 1).
    #[bits(12)]
    pub asqs: u16,
    #[bits(4)]
    __: u8,
    /// Admin Completion Queue Size (entries - 1).
    #[bits(12)]
    pub acqs: u16,
    #[bits(4)]
    __: u8,
}

/// CSTS.SHST value for "shutdown processing complete".
pub const SHST_COMPLETE: u8 = 0b10;

/// 32- and 64-bit access to a controller's register block.
pub trait Registers: Send {
    /// Reads the dword at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the qword at `offset` as two dwords, low first.
    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | u64::from(self.read32(offset + 4)) << 32
    }
    /// Writes the qword at `offset` as two dwords, low first (NVMe 1.4 §3.1: 64-bit registers
    /// may be written as two 32-bit accesses).
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// BAR0 mapped uncached: volatile dword accesses.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u32>,
    len: usize,
}

// SAFETY: device memory accessed only with volatile operations; the controller owning it
// serialises access (`&mut` on every operation that writes).
unsafe impl Send for Mmio {}

impl Mmio {
    /// BAR0 at `base`, `len` bytes long (registers and doorbells).
    ///
    /// # Safety
    ///
    /// `base` maps the controller's BAR0, uncached, for `len` bytes, for as long as the value
    /// lives, and nothing else drives the controller meanwhile.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base: base.cast(),
            len,
        }
    }

    fn slot(&self, offset: usize) -> Option<*mut u32> {
        (offset.is_multiple_of(4) && offset + 4 <= self.len)
            .then(|| self.base.as_ptr().wrapping_add(offset / 4))
    }
}

impl Registers for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        match self.slot(offset) {
            // SAFETY: in bounds and aligned (checked by `slot`); `new`'s contract makes the
            // mapping valid device memory.
            Some(p) => unsafe { p.read_volatile() },
            None => u32::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.slot(offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }
}
