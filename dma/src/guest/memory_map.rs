//! A guest's memory map: which guest-physical ranges are RAM, device memory or holes, and
//! where RAM and device memory live in host-physical space (the E820-like table a hypervisor
//! builds before it creates the VM).
//!
//! Validated once, in [`GuestMemoryMap::new`], so that [`GuestSpace::populate`] only has to
//! map: sorted, non-overlapping, 4 KiB granular regions, no RAM or MMIO in the x86 interrupt
//! window [`MSI_WINDOW`] (VT-d spec §3.15 / §5.1: DMA writes there are interrupt requests, never
//! memory), and rights that make sense for the kind (MMIO is never mapped cacheable, SPEC.md
//! "MMIO attribute").
//!
//! [`GuestSpace::populate`]: super::GuestSpace::populate

use alloc::vec::Vec;

use crate::iommu::Prot;

use super::plan::check_range;
#[cfg(any(doc, test))]
use super::MSI_WINDOW;
use super::{check_prot, msi_overlap, GuestError};

/// What a region of guest-physical space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Guest RAM, backed by host RAM at the region's `hpa`.
    Ram,
    /// Device memory (e.g. a passed-through BAR) at `hpa`: mapped with [`Prot::MMIO`], never
    /// [`Prot::CACHE`].
    Mmio,
    /// A hole: nothing is mapped (`hpa` and `prot` are ignored). The only kind that may cover
    /// [`MSI_WINDOW`].
    Reserved,
}

/// One region of a [`GuestMemoryMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    /// First guest-physical address (4 KiB aligned).
    pub gpa: u64,
    /// Length in bytes (a non-zero 4 KiB multiple).
    pub len: u64,
    /// Host-physical address of `gpa` (4 KiB aligned; ignored for [`RegionKind::Reserved`]).
    pub hpa: u64,
    /// What the region is.
    pub kind: RegionKind,
    /// The device's rights: at least one of [`Prot::READ`] / [`Prot::WRITE`]; [`Prot::CACHE`]
    /// only for RAM. [`Prot::MMIO`] is implied by [`RegionKind::Mmio`] (and refused on RAM).
    /// Ignored for [`RegionKind::Reserved`].
    pub prot: Prot,
}

impl GuestRegion {
    /// The rights the region is mapped with (`None` for a hole).
    pub fn map_prot(&self) -> Option<Prot> {
        match self.kind {
            RegionKind::Ram => Some(self.prot),
            RegionKind::Mmio => Some(self.prot | Prot::MMIO),
            RegionKind::Reserved => None,
        }
    }
}

/// A guest's memory map: sorted, non-overlapping, 4 KiB granular regions; no RAM or MMIO
/// region intersects [`MSI_WINDOW`](super::MSI_WINDOW); MMIO is mapped with [`Prot::MMIO`] and
/// never [`Prot::CACHE`]. Validated once, by [`GuestMemoryMap::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMemoryMap {
    regions: Vec<GuestRegion>,
}

impl GuestMemoryMap {
    /// Validates `regions` and keeps a copy.
    ///
    /// # Errors
    ///
    /// [`GuestError::EmptyRegion`] (zero length), [`GuestError::Misaligned`] and
    /// [`GuestError::Overflow`] (of a region's gpa/hpa/len), [`GuestError::UnsortedRegions`]
    /// (a region starts below its predecessor), [`GuestError::RegionsOverlap`],
    /// [`GuestError::MsiWindow`] (RAM or MMIO touching [`MSI_WINDOW`]), [`GuestError::BadProt`]
    /// (no READ/WRITE, unknown bits, CACHE on MMIO, MMIO on RAM), [`GuestError::OutOfMemory`].
    pub fn new(regions: &[GuestRegion]) -> Result<Self, GuestError> {
        let mut prev: Option<&GuestRegion> = None;
        for (index, r) in regions.iter().enumerate() {
            if r.len == 0 {
                return Err(GuestError::EmptyRegion { index });
            }
            let hpa = if r.kind == RegionKind::Reserved {
                0
            } else {
                r.hpa
            };
            check_range(r.gpa, hpa, r.len)?;
            if let Some(p) = prev {
                if r.gpa < p.gpa {
                    return Err(GuestError::UnsortedRegions { index });
                }
                if r.gpa < p.gpa + p.len {
                    return Err(GuestError::RegionsOverlap {
                        index,
                        gpa: r.gpa,
                        previous_gpa: p.gpa,
                    });
                }
            }
            if let Some(prot) = r.map_prot() {
                if msi_overlap(r.gpa, r.len) {
                    return Err(GuestError::MsiWindow {
                        gpa: r.gpa,
                        len: r.len,
                    });
                }
                if r.kind == RegionKind::Ram && r.prot.contains(Prot::MMIO) {
                    return Err(GuestError::BadProt { prot: r.prot });
                }
                check_prot(prot)?;
            }
            prev = Some(r);
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(regions.len())
            .map_err(|_| GuestError::OutOfMemory)?;
        copy.extend_from_slice(regions);
        Ok(Self { regions: copy })
    }

    /// The regions, sorted by `gpa`.
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// Bytes of guest RAM ([`RegionKind::Ram`] regions).
    pub fn ram_bytes(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.kind == RegionKind::Ram)
            .map(|r| r.len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(gpa: u64, len: u64) -> GuestRegion {
        GuestRegion {
            gpa,
            len,
            hpa: gpa + (1 << 32),
            kind: RegionKind::Ram,
            prot: Prot::READ | Prot::WRITE,
        }
    }

    #[test]
    fn reserved_may_cover_the_msi_window_ram_may_not() {
        let hole = GuestRegion {
            kind: RegionKind::Reserved,
            ..ram(MSI_WINDOW.start, MSI_WINDOW.end - MSI_WINDOW.start)
        };
        assert!(GuestMemoryMap::new(&[hole]).is_ok());
        let bad = ram(MSI_WINDOW.end - 0x1000, 0x2000);
        assert_eq!(
            GuestMemoryMap::new(&[bad]),
            Err(GuestError::MsiWindow {
                gpa: bad.gpa,
                len: bad.len
            })
        );
        // Touching the window from below (ending at its start) is fine.
        assert!(GuestMemoryMap::new(&[ram(MSI_WINDOW.start - 0x1000, 0x1000)]).is_ok());
    }
}
