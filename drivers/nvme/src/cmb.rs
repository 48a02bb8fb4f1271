//! The controller memory buffer (CMB, NVMe 1.4 §3.1.11-3.1.12 and §8.7): where it is and how
//! much of it a peer-to-peer provider can export.

use pci::Bar;

use crate::registers::{CmbLocation, CmbSize};
use crate::NvmeError;

/// A decoded controller memory buffer: `size` bytes at `offset` into BAR `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerMemoryBuffer {
    /// The BAR holding it (CMBLOC.BIR). QEMU 7.2 uses BAR2, a 64-bit prefetchable BAR of
    /// `cmb_size_mb` MiB.
    pub bar: u8,
    /// Offset into the BAR in bytes (CMBLOC.OFST × unit).
    pub offset: u64,
    /// Size in bytes (CMBSZ.SZ × unit).
    pub size: u64,
    /// CMBLOC as read.
    pub location: CmbLocation,
    /// CMBSZ as read.
    pub size_register: CmbSize,
}

/// The part of a BAR to export as the CMB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmbRange {
    /// Offset into the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl ControllerMemoryBuffer {
    /// Decodes CMBLOC and CMBSZ. `Ok(None)` when CMBSZ is 0 (no CMB, or its registers are not
    /// enabled: see [`crate::Nvme::controller_memory_buffer`]).
    pub fn decode(cmbloc: u32, cmbsz: u32) -> Result<Option<Self>, NvmeError> {
        if cmbsz == 0 {
            return Ok(None);
        }
        let location = CmbLocation { raw: cmbloc };
        let size_register = CmbSize { raw: cmbsz };
        let unit = size_register
            .unit()
            .ok_or(NvmeError::ReservedSizeUnit(size_register.size_units()))?;
        let bar = location.bir();
        if !matches!(bar, 0 | 2..=5) {
            return Err(NvmeError::ReservedBir(bar));
        }
        if size_register.size_in_units() == 0 {
            return Err(NvmeError::EmptyCmb);
        }
        // SZ and OFST are 20-bit fields and the unit is at most 2^36: no product overflows.
        let size = u64::from(size_register.size_in_units()) * unit;
        let offset = u64::from(location.offset_units()) * unit;
        Ok(Some(Self {
            bar,
            offset,
            size,
            location,
            size_register,
        }))
    }

    /// The range of `bar` (the function's BAR [`ControllerMemoryBuffer::bar`], as enumerated) to
    /// export. A CMB reaching past the end of its BAR is cut to the BAR, as Linux does
    /// (controllers may report more than a bridge window lets through); one starting at or
    /// past the end is refused.
    pub fn provider_range(&self, bar: &Bar) -> Result<CmbRange, NvmeError> {
        if bar.index != self.bar {
            return Err(NvmeError::CmbBarMismatch {
                expected: self.bar,
                found: bar.index,
            });
        }
        if !bar.kind.is_memory() {
            return Err(NvmeError::CmbBarNotMemory { bar: self.bar });
        }
        if bar.is_unassigned() {
            return Err(NvmeError::CmbBarUnassigned { bar: self.bar });
        }
        if self.offset >= bar.size {
            return Err(NvmeError::CmbOutsideBar {
                offset: self.offset,
                bar_size: bar.size,
            });
        }
        Ok(CmbRange {
            offset: self.offset,
            len: self.size.min(bar.size - self.offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::{BarKind, BusOffset};

    /// CMBLOC and CMBSZ of QEMU 7.2 with `cmb_size_mb=2` once CMBMSC.CRE is set
    /// (`nvme_cmb_enable_regs`: CDPCILS, CDPMLS, BIR 2; SQS, LISTS, RDS, WDS, SZU 2 (MiB), SZ 2).
    const QEMU_CMBLOC: u32 = 0x62;
    const QEMU_CMBSZ: u32 = 0x221d;

    fn bar(index: u8, size: u64) -> Bar {
        Bar {
            index,
            kind: BarKind::Memory64 { prefetchable: true },
            bus_address: 0xfc40_0000,
            phys_address: 0xfc40_0000,
            size,
            bus_offset: BusOffset(0),
        }
    }

    #[test]
    fn qemu_cmb_decodes_to_bar2_two_mib() {
        let cmb = ControllerMemoryBuffer::decode(QEMU_CMBLOC, QEMU_CMBSZ)
            .unwrap()
            .unwrap();
        assert_eq!((cmb.bar, cmb.offset, cmb.size), (2, 0, 2 << 20));
        let sz = cmb.size_register;
        assert!(sz.submission_queues() && !sz.completion_queues() && sz.lists());
        assert!(sz.read_data() && sz.write_data());
        assert_eq!(sz.unit(), Some(1 << 20));
        assert!(cmb.location.data_pointer_independent() && cmb.location.data_pointer_mixed());
        assert_eq!(
            cmb.provider_range(&bar(2, 2 << 20)),
            Ok(CmbRange {
                offset: 0,
                len: 2 << 20
            })
        );
    }

    #[test]
    fn reserved_and_empty_encodings_are_refused() {
        assert_eq!(ControllerMemoryBuffer::decode(0x62, 0), Ok(None));
        assert_eq!(
            ControllerMemoryBuffer::decode(0x62, 0x2700),
            Err(NvmeError::ReservedSizeUnit(7))
        );
        assert_eq!(
            ControllerMemoryBuffer::decode(0x61, QEMU_CMBSZ),
            Err(NvmeError::ReservedBir(1))
        );
        assert_eq!(
            ControllerMemoryBuffer::decode(0x66, QEMU_CMBSZ),
            Err(NvmeError::ReservedBir(6))
        );
        assert_eq!(
            ControllerMemoryBuffer::decode(0x62, 0x021d),
            Err(NvmeError::EmptyCmb)
        );
        // The largest encodings do not overflow: 2^20 - 1 units of 64 GiB.
        let cmb = ControllerMemoryBuffer::decode(0xffff_f005, 0xffff_f600)
            .unwrap()
            .unwrap();
        assert_eq!(cmb.size, 0xf_ffff << 36);
        assert_eq!(cmb.offset, 0xf_ffff << 36);
        assert_eq!(cmb.bar, 5);
    }

    #[test]
    fn provider_range_stays_inside_the_bar() {
        // 4 MiB CMB at 1 MiB into a 2 MiB BAR: cut to the last MiB.
        let cmb = ControllerMemoryBuffer::decode(0x1062, 0x421d)
            .unwrap()
            .unwrap();
        assert_eq!((cmb.offset, cmb.size), (1 << 20, 4 << 20));
        assert_eq!(
            cmb.provider_range(&bar(2, 2 << 20)),
            Ok(CmbRange {
                offset: 1 << 20,
                len: 1 << 20
            })
        );
        assert_eq!(
            cmb.provider_range(&bar(2, 1 << 20)),
            Err(NvmeError::CmbOutsideBar {
                offset: 1 << 20,
                bar_size: 1 << 20
            })
        );
        assert_eq!(
            cmb.provider_range(&bar(4, 8 << 20)),
            Err(NvmeError::CmbBarMismatch {
                expected: 2,
                found: 4
            })
        );
        let mut io = bar(2, 8 << 20);
        io.kind = BarKind::Io;
        assert_eq!(
            cmb.provider_range(&io),
            Err(NvmeError::CmbBarNotMemory { bar: 2 })
        );
        let mut unassigned = bar(2, 8 << 20);
        unassigned.bus_address = 0;
        assert_eq!(
            cmb.provider_range(&unassigned),
            Err(NvmeError::CmbBarUnassigned { bar: 2 })
        );
    }
}
