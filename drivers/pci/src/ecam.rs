//! ECAM: memory-mapped configuration access (PCIe Base 4.0 §7.2.2), over every MCFG region.
//!
//! Each function's 4 KiB configuration space sits at `window + ((bus - start_bus) << 20 |
//! device << 15 | function << 12)`. Every access is one aligned volatile load or store of the
//! requested width, so a 16-bit write really is a 16-bit write on the bus.

use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use crate::config::is_valid_access;
use crate::{Bdf, ConfigSpace, McfgRegion};

/// Configuration access through the ECAM windows described by the MCFG.
///
/// A function outside every region reads as all-ones and ignores writes, like a master abort;
/// so does an access that is misaligned or beyond 4 KiB.
pub struct Ecam {
    windows: Vec<Window>,
}

struct Window {
    region: McfgRegion,
    /// Virtual address of the configuration space of `region.start_bus()`.
    base: NonNull<u8>,
}

// SAFETY: `Ecam` only holds pointers to device memory that `Ecam::new`'s caller promised stays
// mapped for the object's lifetime; it has no other state. Each configuration access is a single
// aligned MMIO load or store, which the root complex serialises, so concurrent use from several
// CPUs cannot tear an access or corrupt Rust-visible memory.
unsafe impl Send for Ecam {}
// SAFETY: see `Send`: `&self` methods perform independent single MMIO accesses.
unsafe impl Sync for Ecam {}

/// Why an [`Ecam`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcamError {
    /// The mapping of region `index` is not 4 KiB aligned, so accesses would be misaligned.
    MisalignedMapping {
        /// Index of the mapping in the list given to [`Ecam::new`].
        index: usize,
    },
    /// Two regions decode the same bus.
    Overlap {
        /// Segment group.
        segment: u16,
        /// A bus both regions decode.
        bus: u8,
    },
}

impl fmt::Display for EcamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MisalignedMapping { index } => {
                write!(f, "ECAM mapping {index} is not 4 KiB aligned")
            }
            Self::Overlap { segment, bus } => {
                write!(f, "two ECAM regions decode bus {segment:04x}:{bus:02x}")
            }
        }
    }
}

impl core::error::Error for EcamError {}

impl Ecam {
    /// Builds the accessor from each region and the virtual address its window is mapped at.
    ///
    /// # Errors
    ///
    /// [`EcamError::MisalignedMapping`] when a mapping is not 4 KiB aligned,
    /// [`EcamError::Overlap`] when two regions decode the same bus of one segment group.
    ///
    /// # Safety
    ///
    /// For every `(region, base)`: `base` must be the virtual address of a mapping of the
    /// physical range `region.window_base() .. region.window_base() + region.window_size()`
    /// (the configuration space of `start_bus`, not the MCFG's bus-0 base), mapped uncached
    /// (UC, strongly ordered) and valid for reads and writes for as long as the returned object
    /// exists, and not used as ordinary Rust memory by anyone.
    pub unsafe fn new(
        mappings: impl IntoIterator<Item = (McfgRegion, NonNull<u8>)>,
    ) -> Result<Self, EcamError> {
        let mut windows: Vec<Window> = Vec::new();
        for (index, (region, base)) in mappings.into_iter().enumerate() {
            if base.as_ptr() as usize & 0xfff != 0 {
                return Err(EcamError::MisalignedMapping { index });
            }
            if let Some(other) = windows.iter().find(|w| {
                w.region.segment() == region.segment()
                    && w.region.start_bus() <= region.end_bus()
                    && region.start_bus() <= w.region.end_bus()
            }) {
                let bus = other.region.start_bus().max(region.start_bus());
                return Err(EcamError::Overlap {
                    segment: region.segment(),
                    bus,
                });
            }
            windows.push(Window { region, base });
        }
        Ok(Self { windows })
    }

    /// The regions this accessor decodes.
    pub fn regions(&self) -> impl Iterator<Item = McfgRegion> + '_ {
        self.windows.iter().map(|w| w.region)
    }

    /// The address of an access of `width` bytes, or `None` when the access is invalid or the
    /// function lies outside every region.
    fn locate(&self, bdf: Bdf, offset: u16, width: u16) -> Option<NonNull<u8>> {
        if !is_valid_access(offset, width) {
            return None;
        }
        self.windows.iter().find_map(|w| {
            if w.region.segment() != bdf.segment() {
                return None;
            }
            let byte = w.region.window_offset(bdf.bus(), bdf.devfn(), offset)?;
            let byte = usize::try_from(byte).ok()?;
            // `byte < window_size` (window_offset checked the bus range; devfn and offset are
            // below 256 and 4096), so the address stays inside the mapping `new`'s caller
            // promised. Plain arithmetic: nothing is dereferenced here.
            NonNull::new(w.base.as_ptr().wrapping_add(byte))
        })
    }
}

macro_rules! ecam_access {
    ($read:ident, $write:ident, $ty:ty) => {
        fn $read(&self, bdf: Bdf, offset: u16) -> $ty {
            match self.locate(bdf, offset, core::mem::size_of::<$ty>() as u16) {
                // SAFETY: `locate` returned an address inside a live uncached ECAM mapping
                // (`Ecam::new`'s contract); it is aligned to the access width because the
                // window base is 4 KiB aligned and `offset` is a multiple of the width.
                Some(ptr) => unsafe { core::ptr::read_volatile(ptr.as_ptr().cast::<$ty>()) },
                None => <$ty>::MAX,
            }
        }

        fn $write(&self, bdf: Bdf, offset: u16, value: $ty) {
            if let Some(ptr) = self.locate(bdf, offset, core::mem::size_of::<$ty>() as u16) {
                // SAFETY: as for the read: an aligned address inside a live ECAM mapping.
                unsafe { core::ptr::write_volatile(ptr.as_ptr().cast::<$ty>(), value) }
            }
        }
    };
}

impl ConfigSpace for Ecam {
    ecam_access!(read8, write8, u8);
    ecam_access!(read16, write16, u16);
    ecam_access!(read32, write32, u32);
}

impl fmt::Debug for Ecam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.windows.iter().map(|w| (w.region, w.base)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec;

    /// One bus worth of ECAM space in ordinary memory, 4 KiB aligned.
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn buses(n: usize) -> Box<[Page]> {
        (0..n * 256)
            .map(|_| Page([0; 4096]))
            .collect::<Vec<_>>()
            .into_boxed_slice()
    }

    fn bdf(s: u16, b: u8, d: u8, f: u8) -> Bdf {
        Bdf::new(s, b, d, f).unwrap()
    }

    #[test]
    fn addresses_follow_the_ecam_layout_in_every_region() {
        let mut seg0 = buses(1);
        let mut seg1 = buses(2);
        let r0 = McfgRegion::new(0xb000_0000, 0, 0, 0).unwrap();
        let r1 = McfgRegion::new(0x8000_0000, 1, 0x20, 0x21).unwrap();
        let p0 = NonNull::new(seg0.as_mut_ptr().cast::<u8>()).unwrap();
        let p1 = NonNull::new(seg1.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: the buffers outlive `ecam` and are not touched while it is alive.
        let ecam = unsafe { Ecam::new(vec![(r0, p0), (r1, p1)]) }.unwrap();

        ecam.write32(bdf(1, 0x21, 3, 2), 0x100, 0xdead_beef);
        ecam.write16(bdf(0, 0, 31, 7), 0xffe, 0x1234);
        ecam.write8(bdf(1, 0x20, 0, 1), 0x3d, 0x5a);
        assert_eq!(ecam.read32(bdf(1, 0x21, 3, 2), 0x100), 0xdead_beef);
        assert_eq!(ecam.read16(bdf(1, 0x21, 3, 2), 0x102), 0xdead);
        assert_eq!(ecam.read8(bdf(1, 0x20, 0, 1), 0x3d), 0x5a);
        // Outside every region: all-ones, writes ignored.
        assert_eq!(ecam.read32(bdf(0, 1, 0, 0), 0), u32::MAX);
        assert_eq!(ecam.read32(bdf(1, 0x1f, 0, 0), 0), u32::MAX);
        assert_eq!(ecam.read32(bdf(2, 0x20, 0, 0), 0), u32::MAX);
        ecam.write32(bdf(1, 0x22, 0, 0), 0, 0);
        // Misaligned or out of range: all-ones, writes ignored.
        assert_eq!(ecam.read32(bdf(1, 0x21, 3, 2), 0x102), u32::MAX);
        assert_eq!(ecam.read16(bdf(1, 0x21, 3, 2), 0x1001), u16::MAX);
        ecam.write16(bdf(0, 0, 31, 7), 0xfff, 0);
        drop(ecam);

        // Bus 0x21 is the second MiB of the segment-1 window; 03.2 is devfn 0x1a.
        let at = |buf: &[Page], off: usize| buf[off / 4096].0[off % 4096];
        let off = (1 << 20) | (0x1a << 12) | 0x100;
        assert_eq!(at(&seg1, off), 0xef);
        assert_eq!(at(&seg1, off + 3), 0xde);
        assert_eq!(at(&seg1, (1 << 12) | 0x3d), 0x5a);
        assert_eq!(at(&seg0, (0xff << 12) | 0xffe), 0x34);
        assert_eq!(at(&seg0, (0xff << 12) | 0xfff), 0x12);
    }

    #[test]
    fn bad_mappings_are_refused() {
        let mut mem = buses(1);
        let base = NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        let r = McfgRegion::new(0xb000_0000, 0, 0, 0).unwrap();
        // SAFETY: construction fails before any access.
        let misaligned =
            unsafe { Ecam::new([(r, NonNull::new(base.as_ptr().wrapping_add(8)).unwrap())]) };
        assert_eq!(
            misaligned.err(),
            Some(EcamError::MisalignedMapping { index: 0 })
        );
        // SAFETY: as above.
        let overlap = unsafe { Ecam::new([(r, base), (r, base)]) };
        assert_eq!(
            overlap.err(),
            Some(EcamError::Overlap { segment: 0, bus: 0 })
        );
    }
}
