//! Device assignment for hypervisors (SPEC.md "Isolation unit", issue 14): a whole isolation
//! group handed to a guest's domain, moved between guests, returned, quarantined or passed
//! through, with the device quiesced and reset in between so nothing one owner queued reaches
//! the next owner's memory.
//!
//! A guest is modelled by a [`GuestDomain`]: a VT-d domain whose IOVA space is the guest's
//! guest-physical space ([`dma::guest::GuestSpace`]), plus the interrupt-remapping entries the
//! guest's devices use. [`Assigner::assign`] moves a group between owners ([`AssignTarget`]):
//!
//! 1. **Checks, before anything changes**: the function has a group and a unit (the guest's
//!    unit); no member is held by a host driver ([`AssignError::GroupInUse`]: a group partly
//!    owned by a host domain is never split); no member is named by an RMRR (firmware keeps
//!    DMAing there, so a guest could not own it: [`AssignError::RmrrMember`]); pass-through only
//!    for groups the caller declares trusted ([`AssignError::Untrusted`]); a reset method exists
//!    for every member unless the policy waives it, and no reset reaches a function outside the
//!    group ([`AssignError::ResetReachesOutside`]).
//! 2. **Quiesce**: Bus Master Enable off for every member endpoint (bridges in a group lend it
//!    their requester ID but are left alone: their Bus Master Enable gates what they forward) (no new DMA, no MSI: an MSI is a
//!    memory write), then every member's peer-to-peer exports revoked through
//!    [`AssignHooks::revoke_exports`] (importers notified, their mappings torn down and flushed).
//! 3. **Interrupts**: the previous guest's remapped vectors for the members are cleared, each
//!    with its interrupt-entry-cache invalidation, so the device cannot raise the old owner's
//!    vectors (the new owner programs its own, [`GuestDomain::remap_interrupts`]).
//! 4. **Reset** ([`pci::reset::reset`]: FLR, PM reset or secondary-bus reset, with the
//!    configuration saved and restored; Bus Master stays off because it was off when saved).
//! 5. **Switch** the group's context entries to the new owner: one 128-bit atomic store per
//!    requester ID, then the context cache and the old domain's IOTLB invalidated
//!    ([`iommu_vtd::VtdUnit::assign_group`]; quarantine clears the entries instead). At every
//!    instant a request translates through the old or the new domain, never a third.
//!
//! The new owner then enables Bus Master itself (the guest's driver does, through its virtual
//! configuration space). Faults of a guest's devices reach that guest by registering a
//! [`crate::FaultRouter`] callback for [`GuestDomain::did`]: the recorded address is the
//! guest-physical address.
//!
//! Quarantine is "no present context entry" rather than an empty quarantine domain: a request
//! is then refused at the context entry (fault reason 2, recorded with the source ID), nothing
//! is walked, and no domain ID or table is spent on it. A group leaving a guest never goes back
//! to "whatever was there": dropping a [`GuestDomain`] that still owns groups leaves them
//! quarantined (the VT-d layer does this when the domain is destroyed).

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;

use dma::guest::GuestSpace;
use dma::iommu::IommuDomain;
use iommu_vtd::{
    AssignStats, Destination, Domain, GroupOwner, GroupRef, Platform, RegisterIo, VtdError,
};
use pci::msi::MsiMessage;
use pci::reset::{self, ResetError, ResetMethod};
use pci::{Bdf, ConfigSpace};
use spin::Mutex;

use crate::attach::{group_key, AttachError};
use crate::interrupts::{msi_source, RemapError, RemappedVectors};
use crate::state::Iommu;
use crate::view::PciView;

/// Why an assignment was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignError {
    /// No PCI function at that address (or it has no isolation group).
    NoSuchDevice(Bdf),
    /// No unit translates for the device.
    NoUnit(Bdf),
    /// The guest's domain lives on another unit than the device's.
    WrongUnit(Bdf),
    /// A host driver holds a member of the group (a live membership of a host domain).
    GroupInUse {
        /// The group's key.
        group: u32,
        /// The member a host domain holds.
        member: Bdf,
    },
    /// A member is named by an RMRR: firmware may DMA to that memory at any time, so the
    /// group cannot leave the host.
    RmrrMember(Bdf),
    /// Pass-through was asked for a group the caller did not declare trusted.
    Untrusted(Bdf),
    /// A member has no reset method and the policy requires a reset.
    NoResetMethod(Bdf),
    /// The reset of a member would also reset a function outside the group.
    ResetReachesOutside {
        /// The member being reset.
        member: Bdf,
        /// The function outside the group it would hit.
        outside: Bdf,
    },
    /// Clearing Bus Master Enable failed.
    BusMaster(ResetError),
    /// The embedder's export revocation failed; nothing after it was done.
    Revoke {
        /// The member whose exports could not be revoked.
        member: Bdf,
    },
    /// The reset failed (the device is quiesced, its exports revoked, its old interrupts gone;
    /// its context entries still name the previous owner).
    Reset(ResetError),
    /// The unit refused or its invalidation failed.
    Vtd(VtdError),
    /// A domain could not be created.
    Attach(AttachError),
    /// Interrupt remapping refused.
    Remap(RemapError),
    /// The function's group is not assigned to this guest.
    NotAssignedHere(Bdf),
    /// A guest mapping was refused.
    Guest(dma::guest::GuestError),
    /// The group already belongs to that guest.
    AlreadyOwned {
        /// The group's key.
        group: u32,
    },
}

impl fmt::Display for AssignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice(b) => write!(f, "no PCI function with a group at {b}"),
            Self::NoUnit(b) => write!(f, "no VT-d unit translates for {b}"),
            Self::WrongUnit(b) => write!(f, "the guest's domain is on another unit than {b}"),
            Self::GroupInUse { group, member } => write!(
                f,
                "group {group:#x} is in use: a host driver holds its member {member}"
            ),
            Self::RmrrMember(b) => write!(f, "{b} is named by an RMRR and cannot leave the host"),
            Self::Untrusted(b) => write!(f, "pass-through refused: {b} is not trusted"),
            Self::NoResetMethod(b) => write!(f, "{b} has no reset method"),
            Self::ResetReachesOutside { member, outside } => write!(
                f,
                "resetting {member} would also reset {outside}, outside the group"
            ),
            Self::BusMaster(e) => write!(f, "clearing bus mastering: {e}"),
            Self::Revoke { member } => write!(f, "revoking the exports of {member} failed"),
            Self::Reset(e) => write!(f, "reset: {e}"),
            Self::Vtd(e) => write!(f, "{e}"),
            Self::Attach(e) => write!(f, "{e}"),
            Self::Remap(e) => write!(f, "{e}"),
            Self::NotAssignedHere(b) => write!(f, "the group of {b} is not assigned to this guest"),
            Self::Guest(e) => write!(f, "guest address space: {e}"),
            Self::AlreadyOwned { group } => {
                write!(f, "group {group:#x} already belongs to that guest")
            }
        }
    }
}

impl core::error::Error for AssignError {}

/// Where a group goes.
pub enum AssignTarget<'a, R: RegisterIo + 'static, P: Platform + 'static> {
    /// To a guest: its DMA addresses become the guest's guest-physical addresses.
    Guest(&'a Arc<GuestDomain<R, P>>),
    /// Untranslated (VT-d pass-through, TT = 10): only for groups the caller trusts.
    PassThrough,
    /// Blocked: no present context entry, every request faults.
    Quarantine,
}

/// What the embedder does for [`Assigner::assign`] that only it can do.
pub trait AssignHooks {
    /// Revokes every peer-to-peer export of `bdf`'s BARs (importers notified, their mappings
    /// torn down and flushed) before the device changes hands. `Err(())` stops the assignment.
    #[allow(clippy::result_unit_err)]
    fn revoke_exports(&mut self, bdf: Bdf) -> Result<(), ()>;
    /// Waits `us` microseconds (reset timing).
    fn delay_us(&mut self, us: u32);
}

/// How strict an assignment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignPolicy {
    /// Refuse a group with a member that has no reset method (default `true`). With `false`
    /// such a member is only quiesced (Bus Master off): what it queued before may still land
    /// after the switch, in the *new* owner's memory. Only for devices known to keep nothing
    /// queued.
    pub require_reset: bool,
    /// The caller trusts the group's devices (required for [`AssignTarget::PassThrough`]).
    pub trusted: bool,
}

impl Default for AssignPolicy {
    fn default() -> Self {
        Self {
            require_reset: true,
            trusted: false,
        }
    }
}

/// What [`Assigner::assign`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignReport {
    /// The group's key.
    pub group: u32,
    /// Its members.
    pub members: Vec<Bdf>,
    /// Every reset performed: the method and the functions it restored.
    pub resets: Vec<(ResetMethod, Vec<Bdf>)>,
    /// Members whose exports were revoked (every member).
    pub revoked: usize,
    /// Interrupt-remapping blocks of the previous guest cleared.
    pub interrupts_revoked: usize,
    /// What the VT-d layer did.
    pub vtd: AssignStats,
}

/// Who owns a group, as the glue tracks it.
enum Owner<R: RegisterIo + 'static, P: Platform + 'static> {
    Guest(Weak<GuestDomain<R, P>>),
    PassThrough,
    Quarantine,
}

/// One group handed out by [`Assigner::assign`].
struct Assignment<R: RegisterIo + 'static, P: Platform + 'static> {
    group: u32,
    owner: Owner<R, P>,
}

/// The groups handed out to guests, pass-through or quarantine, kept by the embedder beside
/// its [`Iommu`] (one per machine). All assignment goes through it, so it knows which guest
/// owns which group (and whose interrupts to revoke when the group moves on).
pub struct Assigner<R: RegisterIo + 'static, P: Platform + 'static> {
    list: Mutex<Vec<Assignment<R, P>>>,
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Default for Assigner<R, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> fmt::Debug for Assigner<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assigner")
            .field("groups", &self.list.lock().len())
            .finish()
    }
}

/// A guest's view of the IOMMU: a VT-d domain whose IOVA space is the guest's guest-physical
/// space, and the interrupt-remapping entries of the devices assigned to it.
pub struct GuestDomain<R: RegisterIo + 'static, P: Platform + 'static> {
    vm: u32,
    hw: Arc<Domain<R, P>>,
    space: GuestSpace,
    interrupts: Mutex<Vec<(Bdf, RemappedVectors<R, P>)>>,
}

impl<R: RegisterIo + 'static, P: Platform + 'static> fmt::Debug for GuestDomain<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestDomain")
            .field("vm", &self.vm)
            .field("did", &self.hw.did())
            .finish_non_exhaustive()
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> GuestDomain<R, P> {
    /// The embedder's number for the guest.
    pub fn vm(&self) -> u32 {
        self.vm
    }

    /// The VT-d domain ID (register a [`crate::FaultRouter`] callback for it to receive the
    /// guest's device faults, addressed by guest-physical address).
    pub fn did(&self) -> u16 {
        self.hw.did()
    }

    /// The VT-d domain.
    pub fn hw(&self) -> &Arc<Domain<R, P>> {
        &self.hw
    }

    /// The guest-physical address space: map guest RAM here.
    pub fn space(&self) -> &GuestSpace {
        &self.space
    }

    /// Remaps `vectors` of `bdf` (a member of a group assigned to this guest) to `destination`,
    /// each IRTE checking the function's source ID, replacing any block the function had here.
    /// Returns the MSI capability message to program (remappable format).
    ///
    /// # Errors
    /// [`AssignError::NotAssignedHere`] unless the group is assigned to this guest;
    /// [`AssignError::Remap`] when the unit refuses.
    pub fn remap_interrupts(
        &self,
        assigner: &Assigner<R, P>,
        pci: &impl PciView,
        bdf: Bdf,
        vectors: &[u8],
        destination: Destination,
    ) -> Result<MsiMessage, AssignError> {
        let key = pci
            .groups()
            .group_of(bdf)
            .map(group_key)
            .ok_or(AssignError::NoSuchDevice(bdf))?;
        if !assigner.assigned_to(key, self) {
            return Err(AssignError::NotAssignedHere(bdf));
        }
        let source = msi_source(pci.topology(), bdf).ok_or(AssignError::NoSuchDevice(bdf))?;
        let block = RemappedVectors::new(self.hw.unit(), vectors, destination, source)
            .map_err(AssignError::Remap)?;
        let message = block.msi_message();
        let mut blocks = self.interrupts.lock();
        // The old block (if any) is cleared and freed when dropped.
        blocks.retain(|(b, _)| *b != bdf);
        blocks.push((bdf, block));
        Ok(message)
    }

    /// The IRTE indices this guest holds for `bdf`.
    pub fn irte_indices(&self, bdf: Bdf) -> Vec<u16> {
        self.interrupts
            .lock()
            .iter()
            .filter(|(b, _)| *b == bdf)
            .flat_map(|(_, v)| (0..v.len()).filter_map(|i| v.irte_index(i)))
            .collect()
    }

    /// Clears the interrupt blocks of `members` (each clear followed by its
    /// interrupt-entry-cache invalidation); returns how many blocks.
    fn revoke_interrupts(&self, members: &[Bdf]) -> Result<usize, VtdError> {
        let mut blocks = self.interrupts.lock();
        let mut n = 0;
        let mut first_error = None;
        let mut kept = Vec::new();
        for (bdf, block) in blocks.drain(..) {
            if members.contains(&bdf) {
                n += 1;
                if let Err(e) = block.release() {
                    first_error.get_or_insert(e);
                }
            } else {
                kept.push((bdf, block));
            }
        }
        *blocks = kept;
        first_error.map_or(Ok(n), Err)
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Iommu<R, P> {
    /// A new guest on the unit that translates for `bdf` (the guest's devices must sit behind
    /// that unit): an empty domain whose IOVA space is the guest-physical space. `vm` is the
    /// embedder's number for it.
    ///
    /// # Errors
    /// [`AssignError::Attach`] when no unit translates for `bdf` or the unit refuses a domain.
    pub fn create_guest(
        &self,
        pci: &impl PciView,
        bdf: Bdf,
        vm: u32,
    ) -> Result<Arc<GuestDomain<R, P>>, AssignError> {
        let hw = Arc::new(self.domain_for(pci, bdf).map_err(AssignError::Attach)?);
        let dyn_hw: Arc<dyn IommuDomain> = hw.clone();
        Ok(Arc::new(GuestDomain {
            vm,
            hw,
            space: GuestSpace::new(dyn_hw),
            interrupts: Mutex::new(Vec::new()),
        }))
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Iommu<R, P> {
    /// An identity guest for a trusted group on a unit without pass-through (ECAP.PT = 0,
    /// where [`AssignTarget::PassThrough`] is refused): every `(base, len)` RAM range of
    /// `ram` mapped at its own address (read/write, the largest leaves alignment allows), so
    /// the device's DMA addresses are physical addresses there and fault everywhere else.
    /// Assign it with [`AssignTarget::Guest`].
    ///
    /// # Errors
    /// As [`Iommu::create_guest`]; [`AssignError::Guest`] when a range cannot be mapped
    /// (misaligned, the interrupt window, beyond the unit's widths).
    pub fn create_identity_guest(
        &self,
        pci: &impl PciView,
        bdf: Bdf,
        vm: u32,
        ram: &[(u64, u64)],
    ) -> Result<Arc<GuestDomain<R, P>>, AssignError> {
        let guest = self.create_guest(pci, bdf, vm)?;
        let rw = dma::iommu::Prot::READ | dma::iommu::Prot::WRITE;
        for &(base, len) in ram {
            guest
                .space
                .map(base, base, len, rw)
                .map_err(AssignError::Guest)?;
        }
        Ok(guest)
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Assigner<R, P> {
    /// Nothing assigned yet.
    pub const fn new() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
        }
    }

    /// Whether group `key` is assigned to `guest`.
    fn assigned_to(&self, key: u32, guest: &GuestDomain<R, P>) -> bool {
        self.list.lock().iter().any(|a| {
            a.group == key
                && matches!(&a.owner, Owner::Guest(w)
                    if w.upgrade().is_some_and(|g| core::ptr::eq(&*g, guest)))
        })
    }

    /// The guest group `key` is assigned to, if it is alive.
    pub fn guest_of(&self, key: u32) -> Option<Arc<GuestDomain<R, P>>> {
        self.list.lock().iter().find_map(|a| match &a.owner {
            Owner::Guest(w) if a.group == key => w.upgrade(),
            _ => None,
        })
    }

    /// Moves the isolation group of `bdf` to `target` (see the module docs for the sequence):
    /// host → guest, guest → guest, guest → pass-through or quarantine. A group returns to
    /// host drivers through quarantine and [`Assigner::release_to_host`].
    ///
    /// # Errors
    /// Refusals (nothing changed): [`AssignError::NoSuchDevice`], [`AssignError::NoUnit`],
    /// [`AssignError::WrongUnit`], [`AssignError::GroupInUse`], [`AssignError::RmrrMember`],
    /// [`AssignError::Untrusted`], [`AssignError::NoResetMethod`],
    /// [`AssignError::ResetReachesOutside`]. Failures part-way (the group is quiesced, owned
    /// by whoever the error says): [`AssignError::BusMaster`], [`AssignError::Revoke`],
    /// [`AssignError::Reset`], [`AssignError::Vtd`].
    #[allow(clippy::too_many_arguments)]
    pub fn assign(
        &self,
        iommu: &Iommu<R, P>,
        pci: &impl PciView,
        cfg: &impl ConfigSpace,
        bdf: Bdf,
        target: AssignTarget<'_, R, P>,
        hooks: &mut dyn AssignHooks,
        policy: AssignPolicy,
    ) -> Result<AssignReport, AssignError> {
        let topology = pci.topology();
        let (key, members, rids) = {
            let groups = pci.groups();
            let group = groups.group_of(bdf).ok_or(AssignError::NoSuchDevice(bdf))?;
            (
                group_key(group),
                group.members().to_vec(),
                group.requester_ids().to_vec(),
            )
        };
        let entry = iommu.unit_for(pci, bdf).ok_or(AssignError::NoUnit(bdf))?;
        if let AssignTarget::Guest(g) = &target {
            if !Arc::ptr_eq(&entry.unit, g.hw.unit()) {
                return Err(AssignError::WrongUnit(bdf));
            }
        }
        // 1. Checks.
        if let (AssignTarget::Guest(g), Some(prev)) = (&target, self.guest_of(key)) {
            if Arc::ptr_eq(g, &prev) {
                return Err(AssignError::AlreadyOwned { group: key });
            }
        }
        {
            let mut live = iommu.memberships.lock();
            live.retain(|m| m.strong_count() > 0);
            if let Some(m) = live
                .iter()
                .filter_map(Weak::upgrade)
                .find(|m| m.group == key)
            {
                return Err(AssignError::GroupInUse {
                    group: key,
                    member: m.bdf,
                });
            }
        }
        if let Some(b) = members
            .iter()
            .find(|&&b| iommu.rmrrs.iter().any(|r| r.devices.contains(&b)))
        {
            return Err(AssignError::RmrrMember(*b));
        }
        // A group host drivers attached without a membership guard ([`Iommu::attach`]) is
        // still theirs: the unit knows it.
        if let Some(GroupOwner::Members { .. }) = entry.unit.group_owner(key) {
            return Err(AssignError::GroupInUse {
                group: key,
                member: bdf,
            });
        }
        if matches!(target, AssignTarget::PassThrough) {
            if !policy.trusted {
                return Err(AssignError::Untrusted(bdf));
            }
            if !entry.unit.capabilities().ecap.pass_through {
                return Err(AssignError::Vtd(VtdError::PassThroughUnsupported));
            }
        }
        // Bridges in the group (a PCIe-to-PCI bridge and what sits behind it) lend it their
        // requester ID but do not DMA themselves: they are neither quiesced nor reset (their
        // Bus Master Enable also gates what they forward, and their secondary-bus reset is how
        // the functions below them are reset).
        let endpoints: Vec<Bdf> = members
            .iter()
            .copied()
            .filter(|&b| topology.function(b).is_some_and(|f| f.bridge.is_none()))
            .collect();
        let mut methods: Vec<(Bdf, ResetMethod)> = Vec::new();
        for &m in &endpoints {
            match reset::reset_method(cfg, topology, m) {
                Some(method) => {
                    if let Some(outside) = method
                        .affected(topology, m)
                        .into_iter()
                        .find(|f| !members.contains(f))
                    {
                        return Err(AssignError::ResetReachesOutside { member: m, outside });
                    }
                    // One secondary-bus reset serves every member below the same bridge.
                    if !methods.iter().any(|(_, x)| {
                        matches!((x, &method), (ResetMethod::SecondaryBus { bridge: a },
                            ResetMethod::SecondaryBus { bridge: b }) if a == b)
                    }) {
                        methods.push((m, method));
                    }
                }
                None if policy.require_reset => return Err(AssignError::NoResetMethod(m)),
                None => {}
            }
        }
        // 2. Quiesce: no new DMA or MSI, then no peer can reach the BARs.
        for &m in &endpoints {
            reset::set_bus_master(cfg, m, false).map_err(AssignError::BusMaster)?;
        }
        for &m in &members {
            hooks
                .revoke_exports(m)
                .map_err(|()| AssignError::Revoke { member: m })?;
        }
        // 3. The previous guest's interrupts.
        let mut interrupts_revoked = 0;
        if let Some(prev) = self.guest_of(key) {
            interrupts_revoked = prev.revoke_interrupts(&members).map_err(AssignError::Vtd)?;
        }
        // 4. Reset.
        let mut resets = Vec::new();
        for (m, method) in methods {
            let report = reset::reset(cfg, topology, m, method, &mut |us| hooks.delay_us(us))
                .map_err(AssignError::Reset)?;
            resets.push((method, report.functions));
        }
        // 5. Switch.
        let group = GroupRef {
            key,
            requester_ids: &rids,
        };
        let (vtd, owner) = match target {
            AssignTarget::Guest(g) => (
                entry.unit.assign_group(group, &g.hw),
                Owner::Guest(Arc::downgrade(g)),
            ),
            AssignTarget::PassThrough => (
                entry.unit.assign_group_pass_through(group),
                Owner::PassThrough,
            ),
            AssignTarget::Quarantine => (entry.unit.quarantine_group(group), Owner::Quarantine),
        };
        // A timeout or failed invalidation comes after the entries were written: the unit
        // then holds the group as the new owner's (unsynced, finished by the next operation
        // on it), so the new owner is recorded here too. Any other error is a refusal that
        // changed nothing in the tables.
        let written = matches!(
            vtd,
            Err(VtdError::Timeout { .. } | VtdError::Invalidation(_))
        );
        if vtd.is_ok() || written {
            let mut list = self.list.lock();
            list.retain(|a| a.group != key);
            list.push(Assignment { group: key, owner });
        }
        let vtd = vtd.map_err(AssignError::Vtd)?;
        Ok(AssignReport {
            group: key,
            revoked: members.len(),
            members,
            resets,
            interrupts_revoked,
            vtd,
        })
    }

    /// Returns a quarantined group (the group of `bdf`) to the host: the VT-d unit stops
    /// tracking it, so host drivers may attach it again (through their own domains).
    ///
    /// # Errors
    /// [`AssignError::NoSuchDevice`], [`AssignError::NoUnit`], [`AssignError::Vtd`] (not
    /// quarantined).
    pub fn release_to_host(
        &self,
        iommu: &Iommu<R, P>,
        pci: &impl PciView,
        bdf: Bdf,
    ) -> Result<(), AssignError> {
        let key = pci
            .groups()
            .group_of(bdf)
            .map(group_key)
            .ok_or(AssignError::NoSuchDevice(bdf))?;
        let entry = iommu.unit_for(pci, bdf).ok_or(AssignError::NoUnit(bdf))?;
        entry
            .unit
            .release_quarantine(key)
            .map_err(AssignError::Vtd)?;
        self.list.lock().retain(|a| a.group != key);
        Ok(())
    }
}
