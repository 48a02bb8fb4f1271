//! Group-to-domain attach (SPEC.md "Isolation unit"): a domain is attached to a whole isolation
//! group (every requester ID its members' DMA can carry), after the RMRRs naming any member are
//! identity-mapped in it, and detached when the group's last member leaves. [`Membership`] ties
//! a function's membership to a guard's lifetime ([`Iommu::attach_member`]).

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;

use dma::iommu::{IommuDomain, IommuError, IotlbGather};
use dma::DmaAddr;
use iommu_vtd::{Domain, DomainConfig, GroupRef, Platform, RegisterIo, VtdError};
use pci::{Bdf, RequesterId};

use crate::scope::{unit_for, UnitEntry, UnitError};
use crate::state::{Iommu, MemberInner, Membership};
use crate::view::PciView;

const PAGE: u64 = 4096;

/// Why a device could not be attached to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// No PCI function at that address (or it has no isolation group).
    NoSuchDevice(Bdf),
    /// No unit translates for the device.
    NoUnit(Bdf),
    /// The domain belongs to another unit than the device's.
    WrongUnit(Bdf),
    /// The unit refused.
    Vtd(VtdError),
    /// An RMRR could not be identity-mapped.
    Rmrr(IommuError),
    /// A page of an RMRR is already mapped in the domain, to another address.
    RmrrConflict {
        /// The page's IOVA (= its physical address).
        iova: u64,
        /// Where the domain maps it.
        maps_to: u64,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice(b) => write!(f, "no PCI function at {b}"),
            Self::NoUnit(b) => write!(f, "no VT-d unit translates for {b}"),
            Self::WrongUnit(b) => write!(f, "{b} is behind another VT-d unit than the domain"),
            Self::Vtd(e) => write!(f, "{e}"),
            Self::Rmrr(e) => write!(f, "identity-mapping an RMRR: {e}"),
            Self::RmrrConflict { iova, maps_to } => write!(
                f,
                "RMRR page {iova:#x} is already mapped to {maps_to:#x} in the domain"
            ),
        }
    }
}

impl core::error::Error for AttachError {}

/// The key a group is known by to the VT-d units: its segment and lowest member BDF. Unlike
/// the group's index it does not change when the groups are recomputed and the group itself
/// stays the same.
pub fn group_key(group: &pci::Group) -> u32 {
    let lowest = group
        .members()
        .first()
        .map_or(0, |b| b.requester_id().get());
    u32::from(group.segment()) << 16 | u32::from(lowest)
}

/// Identity-maps `[base, base + size)` in `domain` page by page: pages already identity-mapped
/// stay, a page mapped elsewhere is a conflict, runs of missing pages are mapped (each run
/// pushed to `mapped`, for the caller's unwind).
fn map_rmrr<R: RegisterIo, P: Platform>(
    domain: &Domain<R, P>,
    (base, size): (u64, u64),
    mapped: &mut Vec<(u64, u64)>,
) -> Result<(), AttachError> {
    let end = base + size;
    let mut page = base;
    while page < end {
        match domain.translate(DmaAddr::new(page)) {
            Some((p, _)) if p.as_u64() == page => page += PAGE,
            Some((p, _)) => {
                return Err(AttachError::RmrrConflict {
                    iova: page,
                    maps_to: p.as_u64(),
                })
            }
            None => {
                let mut run_end = page + PAGE;
                while run_end < end && domain.translate(DmaAddr::new(run_end)).is_none() {
                    run_end += PAGE;
                }
                domain
                    .map_identity(page, run_end - 1)
                    .map_err(AttachError::Rmrr)?;
                mapped.push((page, run_end - page));
                page = run_end;
            }
        }
    }
    Ok(())
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Iommu<R, P> {
    /// Starts translation on every unit (GCMD.TE). Call it once the devices an RMRR names are
    /// attached ([`Iommu::attach_rmrr_devices`]): from here on a device without a domain cannot
    /// DMA anywhere.
    ///
    /// # Errors
    /// The first unit that refused, with its register base.
    pub fn start_translation(&self) -> Result<(), UnitError> {
        for u in &self.units {
            u.unit.start_translation().map_err(|error| UnitError {
                base: u.base,
                error,
            })?;
        }
        Ok(())
    }

    /// The unit translating DMA from `bdf` ([`unit_for`]).
    pub fn unit_for(&self, pci: &impl PciView, bdf: Bdf) -> Option<&UnitEntry<R, P>> {
        unit_for(&self.units, pci.topology(), bdf)
    }

    /// A new empty domain on the unit that translates for `bdf`, with that unit's table depth.
    ///
    /// # Errors
    /// [`AttachError::NoUnit`] when no unit translates for `bdf`; [`AttachError::Vtd`] when the
    /// unit refuses (no free domain ID, no table memory).
    pub fn domain_for(&self, pci: &impl PciView, bdf: Bdf) -> Result<Domain<R, P>, AttachError> {
        let entry = self.unit_for(pci, bdf).ok_or(AttachError::NoUnit(bdf))?;
        entry
            .unit
            .create_domain(DomainConfig {
                levels: Some(entry.levels),
                ..DomainConfig::default()
            })
            .map_err(AttachError::Vtd)
    }

    /// Attaches `bdf` to `domain` as a member of its isolation group. The first member of a
    /// group programs every requester ID any member's DMA can carry (the group's DMA aliases),
    /// after identity-mapping the RMRRs that name any member; a further member of a group
    /// already attached to `domain` is a refcounted success. Returns the group's requester IDs.
    ///
    /// # Errors
    /// [`AttachError::NoUnit`], [`AttachError::WrongUnit`] (the domain is another unit's),
    /// [`AttachError::NoSuchDevice`] (no group), [`AttachError::RmrrConflict`] /
    /// [`AttachError::Rmrr`] (an RMRR page mapped elsewhere, or mapping failed: the pages this
    /// call mapped are unmapped again), [`AttachError::Vtd`] (e.g. the group is attached to
    /// another domain, [`VtdError::GroupAttachedElsewhere`]).
    pub fn attach(
        &self,
        pci: &impl PciView,
        domain: &Domain<R, P>,
        bdf: Bdf,
    ) -> Result<Vec<RequesterId>, AttachError> {
        self.attach_keyed(pci, domain, bdf).map(|(_, rids)| rids)
    }

    /// [`Iommu::attach`], also returning the group key it attached under (read once, with the
    /// groups it attached, so a concurrent recomputation cannot make the two disagree).
    ///
    /// # Errors
    /// As [`Iommu::attach`].
    pub fn attach_keyed(
        &self,
        pci: &impl PciView,
        domain: &Domain<R, P>,
        bdf: Bdf,
    ) -> Result<(u32, Vec<RequesterId>), AttachError> {
        let entry = self.unit_for(pci, bdf).ok_or(AttachError::NoUnit(bdf))?;
        if !Arc::ptr_eq(&entry.unit, domain.unit()) {
            return Err(AttachError::WrongUnit(bdf));
        }
        let groups = pci.groups();
        let group = groups.group_of(bdf).ok_or(AttachError::NoSuchDevice(bdf))?;
        let key = group_key(group);
        let rids = group.requester_ids().to_vec();
        let first = !domain.attached_groups().contains(&key);
        // RMRR memory a member keeps using must be reachable before the group is switched over.
        let mut mapped: Vec<(u64, u64)> = Vec::new();
        let mut result = Ok(());
        if first {
            result = self
                .rmrrs
                .iter()
                .filter(|r| r.devices.iter().any(|d| group.contains(*d)))
                .try_for_each(|r| map_rmrr(domain, r.page_range(), &mut mapped));
        }
        if result.is_ok() {
            result = domain
                .attach_device(
                    GroupRef {
                        key,
                        requester_ids: &rids,
                    },
                    bdf.requester_id(),
                )
                .map_err(AttachError::Vtd);
        }
        if result.is_err() && !mapped.is_empty() {
            let mut gather = IotlbGather::new();
            for &(base, size) in &mapped {
                if let Err(e) = domain.unmap(DmaAddr::new(base), size, &mut gather) {
                    log::error!("vt-d: undoing RMRR identity map {base:#x}: {e}");
                }
            }
            if let Err(e) = domain.flush(gather) {
                log::error!("vt-d: flush after undoing RMRR maps: {e}");
            }
        }
        result.map(|()| (key, rids))
    }

    /// Detaches `bdf` (a member of its group) from `domain`. The group's context entries are
    /// cleared, and the context cache and IOTLB invalidated, only when the last member leaves.
    ///
    /// # Errors
    /// [`AttachError::NoSuchDevice`] (no group), [`AttachError::Vtd`] (not a member, or the
    /// invalidation failed).
    pub fn detach(
        &self,
        pci: &impl PciView,
        domain: &Domain<R, P>,
        bdf: Bdf,
    ) -> Result<(), AttachError> {
        let key = pci
            .groups()
            .group_of(bdf)
            .map(group_key)
            .ok_or(AttachError::NoSuchDevice(bdf))?;
        domain
            .detach_device(key, bdf.requester_id())
            .map_err(AttachError::Vtd)
    }

    /// [`Iommu::attach`] whose detach is tied to the returned guard's lifetime. Guards for the
    /// same function and domain are shared (a boot-time RMRR attachment and a driver's set-up
    /// hold one membership): the function is detached when the last guard is dropped.
    ///
    /// # Errors
    /// As [`Iommu::attach`] (only when no guard for this function and domain is alive).
    pub fn attach_member(
        &self,
        pci: &impl PciView,
        domain: &Arc<Domain<R, P>>,
        bdf: Bdf,
    ) -> Result<Membership<R, P>, AttachError> {
        let mut live = self.memberships.lock();
        live.retain(|m| m.strong_count() > 0);
        let existing = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.bdf == bdf && Arc::ptr_eq(&m.domain, domain));
        if let Some(inner) = existing {
            return Ok(Membership(inner));
        }
        let (key, _) = self.attach_keyed(pci, domain, bdf)?;
        let inner = Arc::new(MemberInner {
            domain: domain.clone(),
            group: key,
            bdf,
        });
        live.push(Arc::downgrade(&inner));
        Ok(Membership(inner))
    }
}

impl<R: RegisterIo, P: Platform> Drop for MemberInner<R, P> {
    fn drop(&mut self) {
        if let Err(e) = self
            .domain
            .detach_device(self.group, self.bdf.requester_id())
        {
            log::error!(
                "vt-d: detaching {} from domain {}: {e}",
                self.bdf,
                self.domain.did()
            );
        }
    }
}
