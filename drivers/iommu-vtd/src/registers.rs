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

/// Root table address register fields, §11.4.5.
pub mod rtaddr {
    /// Translation table mode (bits 11:10): 00 = legacy root table.
    pub const TTM_LEGACY: u64 = 0b00 << 10;
}

/// Context command register fields, §11.4.6.1.
pub mod ccmd {
    /// Invalidate context cache (set to request; hardware clears it when done).
    pub const ICC: u64 = 1 << 63;
    /// Shift of the requested granularity (CIRG, bits 62:61).
    pub const CIRG_SHIFT: u32 = 61;
    /// Shift of the actual granularity (CAIG, bits 60:59).
    pub const CAIG_SHIFT: u32 = 59;
    /// Granularity: global.
    pub const GRANULARITY_GLOBAL: u64 = 0b01;
    /// Granularity: domain-selective.
    pub const GRANULARITY_DOMAIN: u64 = 0b10;
    /// Granularity: device-selective.
    pub const GRANULARITY_DEVICE: u64 = 0b11;
    /// Mask of a (requested or actual) granularity field after shifting; actual 00 means the
    /// invalidation was not performed.
    pub const GRANULARITY_MASK: u64 = 0b11;
    /// Shift of the function mask (FM, bits 33:32).
    pub const FM_SHIFT: u32 = 32;
    /// Shift of the source-id (SID, bits 31:16).
    pub const SID_SHIFT: u32 = 16;
    /// Mask of the domain-id (DID, bits 15:0).
    pub const DID_MASK: u64 = 0xFFFF;
}

/// IOTLB invalidate register and IVA register fields, §11.4.8.
pub mod iotlb {
    /// Invalidate IOTLB (set to request; hardware clears it when done).
    pub const IVT: u64 = 1 << 63;
    /// Shift of the requested granularity (IIRG, bits 61:60).
    pub const IIRG_SHIFT: u32 = 60;
    /// Shift of the actual granularity (IAIG, bits 58:57).
    pub const IAIG_SHIFT: u32 = 57;
    /// Granularity: global.
    pub const GRANULARITY_GLOBAL: u64 = 0b01;
    /// Granularity: domain-selective.
    pub const GRANULARITY_DOMAIN: u64 = 0b10;
    /// Granularity: page-selective within a domain.
    pub const GRANULARITY_PAGE: u64 = 0b11;
    /// Mask of a (requested or actual) granularity field after shifting; actual 00 means the
    /// invalidation was not performed.
    pub const GRANULARITY_MASK: u64 = 0b11;
    /// Drain reads.
    pub const DR: u64 = 1 << 49;
    /// Drain writes.
    pub const DW: u64 = 1 << 48;
    /// Shift of the domain-id (DID, bits 47:32).
    pub const DID_SHIFT: u32 = 32;
    /// IVA: invalidation hint (bit 6): only leaf entries changed.
    pub const IVA_IH: u64 = 1 << 6;
    /// IVA: address mask (AM, bits 5:0).
    pub const IVA_AM_MASK: u64 = 0x3F;
}

bitflags::bitflags! {
    /// Fault status register bits, §11.4.7.1 (RW1C except PPF and FRI).
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

/// Fault status register: shift of the fault record index (FRI, bits 15:8).
pub const FSTS_FRI_SHIFT: u32 = 8;
/// Fault status register: mask of FRI after shifting.
pub const FSTS_FRI_MASK: u32 = 0xFF;

/// Fault event control: interrupt mask (set at reset).
pub const FECTL_IM: u32 = 1 << 31;

/// Fault recording register fields, §11.4.14, relative to the two 64-bit halves.
pub mod frcd {
    /// Low qword: fault info (the page-aligned faulting address, bits 63:12).
    pub const FI_MASK: u64 = !0xFFF;
    /// High qword: source-id (bits 15:0).
    pub const SID_MASK: u64 = 0xFFFF;
    /// High qword: shift of the fault reason (FR, bits 39:32).
    pub const FR_SHIFT: u32 = 32;
    /// High qword: mask of FR after shifting.
    pub const FR_MASK: u64 = 0xFF;
    /// High qword: type (T, bit 62): 1 = read request, 0 = write request.
    pub const T: u64 = 1 << 62;
    /// High qword: fault (F, bit 63), RW1C.
    pub const F: u64 = 1 << 63;
    /// The F bit within the upper 32-bit dword of the record.
    pub const F_IN_DWORD: u32 = 1 << 31;
}

/// Invalidation queue register fields, §11.4.9.
pub mod iq {
    /// IQH/IQT: shift of the descriptor index (bits 18:4) for 128-bit descriptors.
    pub const INDEX_SHIFT: u32 = 4;
    /// IQH/IQT: mask of the descriptor index after shifting.
    pub const INDEX_MASK: u64 = 0x7FFF;
    /// IQA: base address mask (bits 63:12).
    pub const IQA_BASE_MASK: u64 = !0xFFF;
    /// IQA: descriptor width (bit 11): 0 = 128-bit descriptors.
    pub const IQA_DW_256: u64 = 1 << 11;
    /// IQA: queue size field (bits 2:0): 2^QS pages; 0 = one 4 KiB page.
    pub const IQA_QS_ONE_PAGE: u64 = 0;
    /// ICS: invalidation wait descriptor complete.
    pub const ICS_IWC: u32 = 1 << 0;
}

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
