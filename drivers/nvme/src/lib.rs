//! Minimal function driver for QEMU's NVMe controller (PCI 1b36:0010, `hw/nvme/ctrl.c` in QEMU
//! 7.2) implementing the controller registers of NVM Express 1.4 §3.1: identification, CAP and
//! VS, the controller memory buffer (CMB) as a peer-to-peer provider, and the function's reset
//! capabilities; and, in [`controller`], the controller run through its queues: admin and I/O
//! queue pairs, Identify, Read/Write/Flush with PRP lists built from DMA segments ([`prp`]),
//! completions by polling, typed status ([`status`]), timeouts with Abort and reset.
//!
//! QEMU 7.2 facts this driver relies on (read from `hw/nvme/ctrl.c`):
//! - BAR0 is a 64-bit memory BAR with the registers, doorbells and the MSI-X table/PBA (16 KiB
//!   with the default queue counts);
//! - with `cmb_size_mb=N` the CMB is BAR2, a 64-bit prefetchable BAR of N MiB backed by a
//!   buffer QEMU allocates (reads and writes of any size 1-8 land in it), CAP.CMBS is set, and
//!   the controller follows the NVMe 1.4 scheme: CMBLOC and CMBSZ read **0** until the host
//!   sets CMBMSC.CRE (unless `legacy-cmb=on`). [`Nvme::controller_memory_buffer`] sets CRE
//!   first, as Linux's `nvme_map_cmb` does, then decodes CMBLOC (BIR 2, offset 0) and CMBSZ
//!   (SZU 2 = MiB, SZ = N);
//! - CMBMSC.CMSE (the controller itself treating CBA..CBA+size as its CMB) is only needed when
//!   the controller's own commands point into the CMB; a peer writing into BAR2 needs only
//!   memory decoding. [`Nvme::enable_cmb_controller_space`] sets it when wanted;
//! - the PCI Express capability advertises FLR, and the PM capability (at 0x60) has
//!   No_Soft_Reset set, so a D3hot→D0 transition is not a reset ([`reset_capabilities`]).
//!
//! Written only against the public `pci` crate, as an embedder would write a driver.

#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod cmb;
pub mod command;
pub mod controller;
pub mod io;
pub mod pattern;
pub mod prp;
pub mod queue;
mod registers;
pub mod status;

use core::fmt;
use core::ptr::NonNull;

use pci::regs::header;
use pci::{reset, Bdf, ConfigSpace, Function, ResetError};
use volatile::{map_field, VolatilePtr};

pub use cmb::{CmbRange, ControllerMemoryBuffer};
pub use registers::{
    cmbmsc, cmbsts, Capabilities, CmbLocation, CmbSize, ControllerStatus, Version, CC_ENABLE,
    REGISTER_BLOCK_SIZE,
};

use registers::Regs;

/// PCI vendor ID (Red Hat, QEMU's default for `nvme`; `use-intel-id=on` gives 8086:5845).
pub const VENDOR_ID: u16 = 0x1b36;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x0010;
/// Class code: mass storage, non-volatile memory, NVM Express (01h 08h 02h).
pub const CLASS: u32 = 0x01_08_02;
/// BAR holding the controller registers.
pub const REGISTER_BAR: u8 = 0;
/// BAR QEMU puts the CMB in (`NVME_CMB_BIR`); the driver reads the real one from CMBLOC.BIR.
pub const QEMU_CMB_BAR: u8 = 2;

/// Why an NVMe operation was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmeError {
    /// The function is not a QEMU NVMe controller (or is absent: all-ones).
    NotNvme {
        /// Vendor:device found.
        id: (u16, u16),
    },
    /// CAP reads all-ones: BAR0 is not mapped there or memory decoding is off.
    RegistersUnreadable,
    /// CAP.CMBS is clear: no controller memory buffer to program.
    CmbNotSupported,
    /// CAP.CMBS is set but CMBSZ still reads 0 after setting CMBMSC.CRE.
    CmbNotReported,
    /// CMBSZ.SZU holds a reserved encoding (7-15).
    ReservedSizeUnit(u8),
    /// CMBLOC.BIR holds a reserved encoding (1, 6 or 7).
    ReservedBir(u8),
    /// CMBSZ.SZ is 0.
    EmptyCmb,
    /// The BAR given is not the one CMBLOC.BIR names.
    CmbBarMismatch {
        /// BIR.
        expected: u8,
        /// BAR index given.
        found: u8,
    },
    /// The CMB's BAR is not a memory BAR.
    CmbBarNotMemory {
        /// BAR index.
        bar: u8,
    },
    /// Firmware left the CMB's BAR unassigned.
    CmbBarUnassigned {
        /// BAR index.
        bar: u8,
    },
    /// The CMB starts at or past the end of its BAR.
    CmbOutsideBar {
        /// CMB offset.
        offset: u64,
        /// BAR size.
        bar_size: u64,
    },
    /// A controller base address that is not 4 KiB aligned.
    MisalignedCba(u64),
    /// The controller refused the base address (CMBSTS.CBAI: the CMB would wrap).
    CbaInvalid(u64),
    /// A configuration-space operation failed.
    Config(ResetError),
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotNvme { id } => {
                write!(f, "{:04x}:{:04x} is not an NVMe controller", id.0, id.1)
            }
            Self::RegistersUnreadable => {
                f.write_str("NVMe CAP reads all-ones (BAR0 not mapped or decoding off)")
            }
            Self::CmbNotSupported => f.write_str("NVMe controller has no CMB (CAP.CMBS clear)"),
            Self::CmbNotReported => f.write_str("NVMe CMBSZ reads 0 after setting CMBMSC.CRE"),
            Self::ReservedSizeUnit(szu) => write!(f, "NVMe CMBSZ.SZU {szu} is reserved"),
            Self::ReservedBir(bir) => write!(f, "NVMe CMBLOC.BIR {bir} is reserved"),
            Self::EmptyCmb => f.write_str("NVMe CMBSZ.SZ is 0"),
            Self::CmbBarMismatch { expected, found } => {
                write!(f, "NVMe CMB is in BAR{expected}, not BAR{found}")
            }
            Self::CmbBarNotMemory { bar } => write!(f, "NVMe CMB BAR{bar} is not a memory BAR"),
            Self::CmbBarUnassigned { bar } => write!(f, "NVMe CMB BAR{bar} is unassigned"),
            Self::CmbOutsideBar { offset, bar_size } => write!(
                f,
                "NVMe CMB offset {offset:#x} is outside its {bar_size:#x}-byte BAR"
            ),
            Self::MisalignedCba(a) => write!(f, "CMB base address {a:#x} is not 4 KiB aligned"),
            Self::CbaInvalid(a) => write!(f, "NVMe controller refused CMB base address {a:#x}"),
            Self::Config(e) => write!(f, "NVMe configuration: {e}"),
        }
    }
}

impl core::error::Error for NvmeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ResetError> for NvmeError {
    fn from(e: ResetError) -> Self {
        Self::Config(e)
    }
}

/// Checks that the function at `bdf` is a QEMU NVMe controller.
pub fn identify(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<(), NvmeError> {
    let id = (
        cfg.read16(bdf, header::VENDOR_ID),
        cfg.read16(bdf, header::DEVICE_ID),
    );
    if id != (VENDOR_ID, DEVICE_ID) {
        return Err(NvmeError::NotNvme { id });
    }
    Ok(())
}

/// Whether an enumerated function is a QEMU NVMe controller.
pub fn matches(function: &Function) -> bool {
    (function.vendor_id, function.device_id) == (VENDOR_ID, DEVICE_ID)
}

/// How the function can be reset, as `pci::reset` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetCapabilities {
    /// Device Capabilities advertise Function Level Reset.
    pub flr: bool,
    /// A Power Management capability is present.
    pub power_management: bool,
    /// D3hot→D0 resets the function (PMCSR.No_Soft_Reset clear). False on QEMU 7.2.
    pub pm_soft_reset: bool,
}

/// The controller's reset capabilities (QEMU 7.2: FLR yes, PM yes, PM soft reset no). Use
/// `pci::reset::reset_method` to pick one and `pci::reset::reset` to perform it.
pub fn reset_capabilities(
    cfg: &impl ConfigSpace,
    bdf: Bdf,
) -> Result<ResetCapabilities, NvmeError> {
    identify(cfg, bdf)?;
    Ok(ResetCapabilities {
        flr: reset::has_flr(cfg, bdf),
        power_management: reset::pm_capability(cfg, bdf).is_some(),
        pm_soft_reset: reset::has_pm_reset(cfg, bdf),
    })
}

/// One NVMe controller, bound to its register block.
pub struct Nvme {
    bdf: Bdf,
    regs: VolatilePtr<'static, Regs>,
}

// SAFETY: the register block is device memory accessed only with volatile operations; writes
// take &mut self.
unsafe impl Send for Nvme {}
// SAFETY: &self methods only read registers without side effects.
unsafe impl Sync for Nvme {}

impl Nvme {
    /// Binds to the controller at `bdf`: checks its IDs, enables Memory decoding and Bus
    /// Mastering (16-bit Command writes), and reads CAP to check the mapping. If CAP reads
    /// all-ones, the Command register is put back as it was and the bind is refused.
    ///
    /// # Safety
    /// `bar0` must point to the function's BAR0, mapped uncached (at least
    /// [`REGISTER_BLOCK_SIZE`] bytes) for the lifetime of the returned object, and nothing else
    /// may drive the controller meanwhile.
    pub unsafe fn new(
        cfg: &impl ConfigSpace,
        bdf: Bdf,
        bar0: NonNull<u8>,
    ) -> Result<Self, NvmeError> {
        identify(cfg, bdf)?;
        let memory = reset::set_memory_decode(cfg, bdf, true)?;
        let master = reset::set_bus_master(cfg, bdf, true)?;
        // SAFETY: the caller guarantees bar0 maps the register block for 'static use.
        let regs = unsafe { VolatilePtr::new(bar0.cast::<Regs>()) };
        let nvme = Self { bdf, regs };
        if nvme.capabilities().raw == u64::MAX {
            // Leave the Command register as it was found.
            reset::set_bus_master(cfg, bdf, master)?;
            reset::set_memory_decode(cfg, bdf, memory)?;
            return Err(NvmeError::RegistersUnreadable);
        }
        Ok(nvme)
    }

    /// The function's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Controller Capabilities (one 64-bit read).
    pub fn capabilities(&self) -> Capabilities {
        let regs = self.regs;
        Capabilities {
            raw: map_field!(regs.cap).read(),
        }
    }

    /// Version.
    pub fn version(&self) -> Version {
        let regs = self.regs;
        Version::from_raw(map_field!(regs.vs).read())
    }

    /// Controller Status.
    pub fn status(&self) -> ControllerStatus {
        let regs = self.regs;
        ControllerStatus {
            raw: map_field!(regs.csts).read(),
        }
    }

    /// Whether CC.EN is set (the controller is enabled; this driver never sets it).
    pub fn is_enabled(&self) -> bool {
        let regs = self.regs;
        map_field!(regs.cc).read() & CC_ENABLE != 0
    }

    /// CMBLOC and CMBSZ as they read now (0 on an NVMe 1.4 controller until CMBMSC.CRE).
    pub fn cmb_registers(&self) -> (CmbLocation, CmbSize) {
        let regs = self.regs;
        (
            CmbLocation {
                raw: map_field!(regs.cmbloc).read(),
            },
            CmbSize {
                raw: map_field!(regs.cmbsz).read(),
            },
        )
    }

    /// Makes the CMB registers readable and decodes them.
    ///
    /// With CAP.CMBS set (NVMe 1.4 scheme, QEMU ≥ 6.0 without `legacy-cmb`), writes
    /// CMBMSC.CRE = 1 (a 32-bit write of the low dword: CMSE stays 0, CBA untouched), then reads
    /// CMBLOC and CMBSZ. `Ok(None)`: the controller has no CMB (CAP.CMBS clear and CMBSZ 0).
    pub fn controller_memory_buffer(
        &mut self,
    ) -> Result<Option<ControllerMemoryBuffer>, NvmeError> {
        let cmbs = self.capabilities().controller_memory_buffer();
        if cmbs {
            let regs = self.regs;
            let low = map_field!(regs.cmbmsc_low).read();
            map_field!(regs.cmbmsc_low).write(low | cmbmsc::CRE);
        }
        let (location, size) = self.cmb_registers();
        match ControllerMemoryBuffer::decode(location.raw, size.raw)? {
            None if cmbs => Err(NvmeError::CmbNotReported),
            other => Ok(other),
        }
    }

    /// Tells the controller where its CMB sits on the bus and enables Controller Memory Space
    /// (CMBMSC = CBA | CMSE | CRE, high dword first): needed only when the controller's own
    /// commands use CMB addresses. `bus_address` is the bus address of the CMB (BAR bus address
    /// + CMB offset), 4 KiB aligned. Refused without CAP.CMBS; CMBSTS.CBAI is reported.
    pub fn enable_cmb_controller_space(&mut self, bus_address: u64) -> Result<(), NvmeError> {
        if !self.capabilities().controller_memory_buffer() {
            return Err(NvmeError::CmbNotSupported);
        }
        if bus_address & cmbmsc::CBA_ALIGN != 0 {
            return Err(NvmeError::MisalignedCba(bus_address));
        }
        let regs = self.regs;
        map_field!(regs.cmbmsc_high).write((bus_address >> 32) as u32);
        map_field!(regs.cmbmsc_low).write(bus_address as u32 | cmbmsc::CMSE | cmbmsc::CRE);
        if map_field!(regs.cmbsts).read() & cmbsts::CBAI != 0 {
            return Err(NvmeError::CbaInvalid(bus_address));
        }
        Ok(())
    }
}

impl fmt::Debug for Nvme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nvme").field("bdf", &self.bdf).finish()
    }
}
