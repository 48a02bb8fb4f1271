//! Driver for QEMU's `edu` device (PCI 1234:11e8, `hw/misc/edu.c` in QEMU 7.2).
//!
//! The device has a 4 KiB internal buffer at device address 0x40000 and a DMA engine that copies
//! between it and a bus address. Written only against the public `pci` and `dma` crates, as an
//! embedder would write a driver.
//!
//! QEMU 7.2 facts this driver enforces (SPEC.md):
//! - a transfer with count 0, or whose end reaches 0x41000, makes QEMU abort (its range check is
//!   off by one), so [`Edu::dma`] refuses them: at most 4095 bytes, ending below 0x41000;
//! - DMA addresses are silently ANDed with the device's `dma_mask` property (default 28 bits), so
//!   an address the mask would change is refused instead of letting the DMA land elsewhere;
//! - each transfer takes ~100 ms of virtual time; completion is polled on the RUN bit;
//! - a transfer blocked by the IOMMU still "completes" (a blocked read yields zeros): the device's
//!   status proves nothing about isolation;
//! - SeaBIOS leaves bus mastering off: [`Edu::new`] enables Memory + Bus Master (an MSI is a
//!   bus-master write too: without it QEMU drops it);
//! - interrupts: [`Edu::raise_interrupt`] (0x60) ORs bits into the status (0x24) and sends the
//!   one MSI vector (or INTx) while the status is non-zero, [`Edu::ack_interrupt`] (0x64) clears
//!   bits. The MSI capability itself is programmed by whoever owns interrupts, through
//!   `pci::msi` (drivers never write message addresses).

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

use core::fmt;
use core::ptr::NonNull;

use dma::DmaAddr;
use pci::{Bdf, ConfigSpace};
use volatile::{map_field, VolatilePtr};

/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// Size of BAR0 (the register block).
pub const BAR0_SIZE: u64 = 1 << 20;
/// Device address of the internal buffer.
pub const BUFFER_BASE: u64 = 0x4_0000;
/// Size of the internal buffer.
pub const BUFFER_SIZE: u64 = 0x1000;
/// The DMA mask QEMU applies when no `dma_mask` property is given: 28 bits.
pub const DEFAULT_DMA_MASK: u64 = (1 << 28) - 1;
/// Value of the identification register for the QEMU 7.2 model (major 1, minor 0).
pub const IDENTIFICATION: u32 = 0x0100_00ed;

/// The register block at BAR0 (`hw/misc/edu.c`).
#[repr(C)]
struct Regs {
    /// 0x00: identification, 0xRRrr00edu.
    identification: u32,
    /// 0x04: liveness check: reads back the bitwise inverse of the value written.
    liveness: u32,
    /// 0x08: factorial computation.
    factorial: u32,
    _reserved0: [u32; 5],
    /// 0x20: status (bit 0 computing, bit 7 raise IRQ after factorial).
    status: u32,
    /// 0x24: interrupt status.
    irq_status: u32,
    _reserved1: [u32; 14],
    /// 0x60: interrupt raise.
    irq_raise: u32,
    /// 0x64: interrupt acknowledge.
    irq_ack: u32,
    _reserved2: [u32; 6],
    /// 0x80: DMA source address.
    dma_src: u64,
    /// 0x88: DMA destination address.
    dma_dst: u64,
    /// 0x90: DMA transfer count.
    dma_count: u64,
    /// 0x98: DMA command.
    dma_cmd: u64,
}

const _: () = assert!(core::mem::offset_of!(Regs, status) == 0x20);
const _: () = assert!(core::mem::offset_of!(Regs, irq_raise) == 0x60);
const _: () = assert!(core::mem::offset_of!(Regs, dma_src) == 0x80);
const _: () = assert!(core::mem::offset_of!(Regs, dma_cmd) == 0x98);

/// DMA command register bits.
mod cmd {
    /// Start a transfer; cleared by the device when it is done.
    pub const RUN: u64 = 1 << 0;
    /// Direction: 1 = device buffer → RAM, 0 = RAM → device buffer.
    pub const TO_RAM: u64 = 1 << 1;
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The device reads `len` bytes from the bus address into its buffer.
    ReadFromMemory,
    /// The device writes `len` bytes from its buffer to the bus address.
    WriteToMemory,
}

/// Why an edu operation was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EduError {
    /// The function at this address is not an edu device.
    NotEdu {
        /// Vendor:device found.
        id: (u16, u16),
    },
    /// The identification register did not read as expected (BAR not mapped, decoding off).
    BadIdentification(u32),
    /// Zero-length transfer (aborts QEMU 7.2).
    ZeroLength,
    /// The transfer would reach the end of the internal buffer (aborts QEMU 7.2).
    BeyondBuffer {
        /// Offset in the buffer.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// The bus address range is not reachable under the device's DMA mask.
    MaskViolation {
        /// First bus address.
        addr: u64,
        /// Length.
        len: u64,
        /// The device's mask.
        mask: u64,
    },
    /// The device did not finish the transfer in time.
    Timeout,
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotEdu { id } => write!(f, "{:04x}:{:04x} is not an edu device", id.0, id.1),
            Self::BadIdentification(v) => write!(f, "edu identification register reads {v:#x}"),
            Self::ZeroLength => f.write_str("zero-length edu transfer"),
            Self::BeyondBuffer { offset, len } => {
                write!(
                    f,
                    "edu buffer offset {offset:#x} + {len:#x} reaches the end of its 4 KiB buffer"
                )
            }
            Self::MaskViolation { addr, len, mask } => {
                write!(
                    f,
                    "bus range {addr:#x}+{len:#x} is outside the edu DMA mask {mask:#x}"
                )
            }
            Self::Timeout => f.write_str("edu DMA did not complete in time"),
        }
    }
}

impl core::error::Error for EduError {}

/// One edu device, bound to its register block.
pub struct Edu {
    bdf: Bdf,
    regs: VolatilePtr<'static, Regs>,
    dma_mask: u64,
}

// SAFETY: the register block is device memory accessed only with volatile operations; the
// device itself serialises register accesses. Callers serialise DMA commands (&mut self).
unsafe impl Send for Edu {}
// SAFETY: &self methods only read registers or write the liveness register, which is harmless.
unsafe impl Sync for Edu {}

/// PCI command register offset and bits (PCI Local Bus 3.0, 6.2.2).
const PCI_COMMAND: u16 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;

impl Edu {
    /// Binds to the edu function at `bdf`, enables Memory decoding and Bus Mastering, and checks
    /// the identification register.
    ///
    /// # Safety
    /// `bar0` must point to the function's BAR0 (1 MiB), mapped uncached for the lifetime of the
    /// returned object, and nothing else may drive this device meanwhile. `dma_mask` must be the
    /// mask QEMU was given (`-device edu,dma_mask=...`), [`DEFAULT_DMA_MASK`] otherwise.
    pub unsafe fn new(
        cfg: &impl ConfigSpace,
        bdf: Bdf,
        bar0: NonNull<u8>,
        dma_mask: u64,
    ) -> Result<Self, EduError> {
        let (vendor, device) = (cfg.read16(bdf, 0x00), cfg.read16(bdf, 0x02));
        if (vendor, device) != (VENDOR_ID, DEVICE_ID) {
            return Err(EduError::NotEdu {
                id: (vendor, device),
            });
        }
        let command = cfg.read16(bdf, PCI_COMMAND);
        cfg.write16(
            bdf,
            PCI_COMMAND,
            command | COMMAND_MEMORY | COMMAND_BUS_MASTER,
        );
        // SAFETY: the caller guarantees bar0 maps the register block for 'static use.
        let regs = unsafe { VolatilePtr::new(bar0.cast::<Regs>()) };
        let edu = Self {
            bdf,
            regs,
            dma_mask,
        };
        let id = edu.identification();
        if id & 0xff != 0xed {
            return Err(EduError::BadIdentification(id));
        }
        Ok(edu)
    }

    /// The function's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The DMA mask addresses are checked against.
    pub fn dma_mask(&self) -> u64 {
        self.dma_mask
    }

    /// The identification register.
    pub fn identification(&self) -> u32 {
        let regs = self.regs;
        map_field!(regs.identification).read()
    }

    /// Writes `value` to the liveness register and returns what it reads back (`!value`).
    pub fn liveness(&self, value: u32) -> u32 {
        let regs = self.regs;
        map_field!(regs.liveness).write(value);
        map_field!(regs.liveness).read()
    }

    /// Raises the device's interrupt with `status` bits (register 0x60): the bits are ORed
    /// into the interrupt status, and while it is non-zero every raise sends the MSI (when MSI
    /// is enabled; the INTx line otherwise). A raise with `status` 0 sends nothing on an idle
    /// device.
    pub fn raise_interrupt(&self, status: u32) {
        let regs = self.regs;
        map_field!(regs.irq_raise).write(status);
    }

    /// Acknowledges `status` bits (register 0x64): they are cleared from the interrupt status
    /// (and INTx is lowered when none remain).
    pub fn ack_interrupt(&self, status: u32) {
        let regs = self.regs;
        map_field!(regs.irq_ack).write(status);
    }

    /// The interrupt status (register 0x24): the bits raised and not yet acknowledged.
    pub fn interrupt_status(&self) -> u32 {
        let regs = self.regs;
        map_field!(regs.irq_status).read()
    }

    /// Checks a transfer against the QEMU 7.2 limits and this device's DMA mask.
    pub fn validate(&self, addr: DmaAddr, buffer_offset: u64, len: u64) -> Result<(), EduError> {
        check_transfer(self.dma_mask, addr, buffer_offset, len)
    }

    /// Runs one DMA transfer between bus address `addr` and the internal buffer at
    /// `buffer_offset`, polling for completion until `expired()` returns true.
    ///
    /// Completion says nothing about whether the IOMMU let the transfer through.
    pub fn dma(
        &mut self,
        transfer: Transfer,
        addr: DmaAddr,
        buffer_offset: u64,
        len: u64,
        mut expired: impl FnMut() -> bool,
    ) -> Result<(), EduError> {
        self.validate(addr, buffer_offset, len)?;
        let regs = self.regs;
        let (src, dst, dir) = match transfer {
            Transfer::ReadFromMemory => (addr.as_u64(), BUFFER_BASE + buffer_offset, 0),
            Transfer::WriteToMemory => (BUFFER_BASE + buffer_offset, addr.as_u64(), cmd::TO_RAM),
        };
        map_field!(regs.dma_src).write(src);
        map_field!(regs.dma_dst).write(dst);
        map_field!(regs.dma_count).write(len);
        map_field!(regs.dma_cmd).write(cmd::RUN | dir);
        while map_field!(regs.dma_cmd).read() & cmd::RUN != 0 {
            if expired() {
                return Err(EduError::Timeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}

/// Checks a transfer against the QEMU 7.2 limits and a DMA mask, without a device.
pub fn check_transfer(
    dma_mask: u64,
    addr: DmaAddr,
    buffer_offset: u64,
    len: u64,
) -> Result<(), EduError> {
    if len == 0 {
        return Err(EduError::ZeroLength);
    }
    // The end must stay strictly below BUFFER_BASE + BUFFER_SIZE (QEMU 7.2 aborts otherwise).
    if buffer_offset
        .checked_add(len)
        .is_none_or(|end| end >= BUFFER_SIZE)
    {
        return Err(EduError::BeyondBuffer {
            offset: buffer_offset,
            len,
        });
    }
    let last = addr.as_u64().checked_add(len - 1);
    if last.is_none_or(|last| last & !dma_mask != 0) {
        return Err(EduError::MaskViolation {
            addr: addr.as_u64(),
            len,
            mask: dma_mask,
        });
    }
    Ok(())
}

impl fmt::Debug for Edu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Edu")
            .field("bdf", &self.bdf)
            .field("dma_mask", &self.dma_mask)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = DEFAULT_DMA_MASK;

    #[test]
    fn transfers_that_abort_qemu_are_refused() {
        assert_eq!(
            check_transfer(M, DmaAddr::new(0x1000), 0, 0),
            Err(EduError::ZeroLength)
        );
        assert_eq!(
            check_transfer(M, DmaAddr::new(0x1000), 0, 4096),
            Err(EduError::BeyondBuffer {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            check_transfer(M, DmaAddr::new(0x1000), 0x800, 0x800),
            Err(EduError::BeyondBuffer {
                offset: 0x800,
                len: 0x800
            })
        );
        assert!(matches!(
            check_transfer(M, DmaAddr::new(0x1000), u64::MAX, 2),
            Err(EduError::BeyondBuffer { .. })
        ));
        assert_eq!(check_transfer(M, DmaAddr::new(0x1000), 0, 4095), Ok(()));
        assert_eq!(
            check_transfer(M, DmaAddr::new(0x1000), 0x7ff, 0x800),
            Ok(())
        );
    }

    #[test]
    fn mask_is_checked_on_the_last_byte() {
        assert_eq!(check_transfer(M, DmaAddr::new(M - 15), 0, 16), Ok(()));
        assert_eq!(
            check_transfer(M, DmaAddr::new(M - 15), 0, 17),
            Err(EduError::MaskViolation {
                addr: M - 15,
                len: 17,
                mask: M
            })
        );
        assert!(matches!(
            check_transfer(u64::MAX, DmaAddr::new(u64::MAX), 0, 2),
            Err(EduError::MaskViolation { .. })
        ));
        assert_eq!(
            check_transfer(u64::MAX, DmaAddr::new(1 << 40), 0, 8),
            Ok(())
        );
    }
}
