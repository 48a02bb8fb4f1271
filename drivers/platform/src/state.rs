//! What the glue keeps for a machine (SPEC.md "Isolation unit"): its VT-d units and RMRRs, the
//! default domain of each isolation group, the live group memberships and the boot-time RMRR
//! attachments. The operations on it are in [`crate::attach`] and [`crate::setup`].

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;

use dma::DmaDomain;
use iommu_vtd::{Domain, Platform, RegisterIo};
use pci::Bdf;
use spin::Mutex;

use crate::scope::{RmrrInfo, UnitEntry};

/// A group's VT-d domain and the IOVA space on top of it.
pub type GroupDomain<R, P> = (Arc<Domain<R, P>>, Arc<DmaDomain>);

/// An attachment made at boot for a device an RMRR names: its membership and the IOVA space
/// that keeps the group's default domain alive.
pub type BootAttachment<R, P> = (Membership<R, P>, Arc<DmaDomain>);

/// The default DMA domain of one isolation group: created when the first member is set up for
/// the DMA API, shared by every member set up while it is alive (one domain per group, as
/// Linux's default domains), so no function is ever translated by a domain that was not attached
/// to its group. Held weakly: the devices (and boot-time RMRR attachments) keep it alive.
pub struct DefaultDomain<R: RegisterIo, P: Platform> {
    /// The group's key ([`crate::group_key`]).
    pub group: u32,
    /// The VT-d domain.
    pub hw: Weak<Domain<R, P>>,
    /// The IOVA space on top of it.
    pub dma: Weak<DmaDomain>,
}

/// Every VT-d unit of the machine, the RMRRs, and the attachments the glue keeps.
pub struct Iommu<R: RegisterIo + 'static, P: Platform + 'static> {
    /// RMRRs from the DMAR (and any the embedder adds, treated the same).
    pub rmrrs: Vec<RmrrInfo>,
    /// Units in DMAR order.
    pub units: Vec<UnitEntry<R, P>>,
    /// Host address width from the DMAR.
    pub host_address_width: u8,
    /// Default domains of the groups set up for the DMA API (see [`DefaultDomain`]).
    pub defaults: Mutex<Vec<DefaultDomain<R, P>>>,
    /// Every live [`Membership`], so guards for one function and domain are shared.
    pub memberships: Mutex<Vec<Weak<MemberInner<R, P>>>>,
    /// Attachments made at boot for the devices an RMRR names (kept for the system's
    /// lifetime: that memory must stay reachable whether or not a driver binds).
    pub boot_attachments: Mutex<Vec<BootAttachment<R, P>>>,
}

impl<R: RegisterIo + 'static, P: Platform + 'static> fmt::Debug for Iommu<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommu")
            .field("units", &self.units)
            .field("rmrrs", &self.rmrrs)
            .field("host_address_width", &self.host_address_width)
            .finish_non_exhaustive()
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Iommu<R, P> {
    /// No units and no RMRRs yet, for a DMAR declaring `host_address_width` bits: push the
    /// [`UnitEntry`]s and [`RmrrInfo`]s into the public fields.
    pub fn new(host_address_width: u8) -> Self {
        Self {
            rmrrs: Vec::new(),
            units: Vec::new(),
            host_address_width,
            defaults: Mutex::new(Vec::new()),
            memberships: Mutex::new(Vec::new()),
            boot_attachments: Mutex::new(Vec::new()),
        }
    }
}

/// One function's membership of its group's attachment to a domain, shared by every holder
/// (see [`Iommu::attach_member`]): when the last holder drops it the function is detached
/// ([`Domain::detach_device`]), which clears the group's context entries only when it was the
/// group's last member.
pub struct Membership<R: RegisterIo, P: Platform>(pub(crate) Arc<MemberInner<R, P>>);

/// The shared part of a [`Membership`].
pub struct MemberInner<R: RegisterIo, P: Platform> {
    pub(crate) domain: Arc<Domain<R, P>>,
    pub(crate) group: u32,
    pub(crate) bdf: Bdf,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for Membership<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("bdf", &self.0.bdf)
            .field("group", &self.0.group)
            .field("did", &self.0.domain.did())
            .finish()
    }
}

impl<R: RegisterIo, P: Platform> Membership<R, P> {
    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.0.bdf
    }

    /// The domain.
    pub fn domain(&self) -> &Arc<Domain<R, P>> {
        &self.0.domain
    }
}
