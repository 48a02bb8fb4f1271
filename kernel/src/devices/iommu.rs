//! VT-d bring-up: every DRHD of the ACPI DMAR becomes a running [`VtdUnit`] (registers mapped
//! uncached, tables in kernel frames, translation enabled), and PCI functions are matched to
//! their unit through the DRHD device scopes resolved against the PCI enumeration.
//!
//! From the moment a unit is enabled, a device behind it has no context entry and cannot DMA
//! anywhere: isolation by default. Devices get a domain only when a driver asks for one.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use dma::iommu::{IommuDomain, IotlbGather};
use dma::{DmaAddr, DmaDomain, PhysAddr};
use iommu_vtd::dmar::ScopeKind;
use iommu_vtd::{
    Dmar, DomainConfig, GroupRef, MmioRegisters, PagingLevels, Platform, TablePage, UnitConfig,
    VtdError, VtdUnit,
};
use kernel::frames::FrameRequest;
use spin::Mutex;

use super::pci::PciSystem;
use crate::acpi::Acpi;
use crate::arch::time;
use crate::mem::paging::{self, Cache};

/// Table memory, cache maintenance and time for the VT-d driver, from the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlatform;

/// Cache-line size used for `clflush` loops.
const CACHE_LINE: usize = 64;

// SAFETY: pages come from the frame allocator (zeroed, 4 KiB aligned, exclusively owned until
// freed), phys_to_virt is the identity mapping every RAM frame has, and the cache flush writes
// back every line of the range before returning (clflush, then mfence).
unsafe impl Platform for KernelPlatform {
    fn alloc_table_page(&self) -> Option<TablePage> {
        let phys = crate::mem::alloc_frames(FrameRequest::one())?;
        let virt = NonNull::new(phys as *mut u8)?;
        // SAFETY: the frame was just allocated to us and is identity-mapped writable RAM.
        unsafe { core::ptr::write_bytes(virt.as_ptr(), 0, 4096) };
        Some(TablePage {
            phys: PhysAddr::new(phys),
            virt,
        })
    }

    unsafe fn free_table_page(&self, phys: PhysAddr) {
        if let Err(e) = crate::mem::free_frames(phys.as_u64(), 1) {
            log::error!("vt-d: freeing table page {phys}: {e}");
        }
    }

    fn phys_to_virt(&self, phys: PhysAddr) -> *mut u8 {
        phys.as_u64() as *mut u8
    }

    fn flush_cache_range(&self, virt: *const u8, len: usize) {
        let start = virt as usize & !(CACHE_LINE - 1);
        let end = virt as usize + len;
        for line in (start..end).step_by(CACHE_LINE) {
            // SAFETY: clflush of a mapped address has no effect beyond writing the line back.
            unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
        }
        // SAFETY: a full fence orders the flushes before any later register write.
        unsafe { core::arch::x86_64::_mm_mfence() };
    }

    fn memory_fence(&self) {
        // SAFETY: mfence has no preconditions.
        unsafe { core::arch::x86_64::_mm_mfence() };
    }

    fn now_us(&self) -> u64 {
        time::now_us()
    }
}

/// A unit as the kernel runs it.
pub type Unit = VtdUnit<MmioRegisters, KernelPlatform>;
/// A domain of such a unit.
pub type Domain = iommu_vtd::Domain<MmioRegisters, KernelPlatform>;

/// One remapping unit and the PCI functions it translates for.
pub struct UnitEntry {
    /// The running unit.
    pub unit: Arc<Unit>,
    /// Register base from the DRHD.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// INCLUDE_PCI_ALL: every device of the segment not claimed by another unit.
    pub include_all: bool,
    /// Endpoint scopes, resolved.
    pub endpoints: Vec<pci::Bdf>,
    /// Sub-hierarchy scopes (bridges), resolved: everything below them.
    pub bridges: Vec<pci::Bdf>,
    /// Paging depth of this unit's domains (the deepest its SAGAW offers, unless the command
    /// line picks one the unit supports).
    pub levels: PagingLevels,
}

/// A reserved-memory region (RMRR): memory a device keeps using across the IOMMU, which must
/// stay identity-mapped in that device's domain.
#[derive(Debug, Clone)]
pub struct RmrrInfo {
    /// First byte.
    pub base: u64,
    /// Last byte (inclusive).
    pub limit: u64,
    /// The devices it applies to, resolved.
    pub devices: Vec<pci::Bdf>,
}

/// The kernel's default DMA domain of one isolation group: created when the first member is set
/// up for the DMA API, shared by every member set up while it is alive (one domain per group, as
/// Linux's default domains), so no function is ever translated by a domain that was not attached
/// to its group. Held weakly: the devices (and boot-time RMRR attachments) keep it alive.
pub struct DefaultDomain {
    /// The group's key ([`group_key`]).
    pub group: u32,
    /// The VT-d domain.
    pub hw: Weak<Domain>,
    /// The IOVA space on top of it.
    pub dma: Weak<DmaDomain>,
}

/// All units.
pub struct Iommu {
    /// RMRRs from the DMAR.
    pub rmrrs: Vec<RmrrInfo>,
    /// Units in DMAR order.
    pub units: Vec<UnitEntry>,
    /// Host address width from the DMAR.
    pub host_address_width: u8,
    /// Default domains of the groups set up for the DMA API (see [`DefaultDomain`]).
    pub defaults: Mutex<Vec<DefaultDomain>>,
    /// Every live [`Membership`], so guards for one function and domain are shared.
    pub memberships: Mutex<Vec<Weak<MemberInner>>>,
    /// Attachments made at boot for the devices an RMRR names (kept for the kernel's
    /// lifetime: that memory must stay reachable whether or not a driver binds).
    pub boot_attachments: Mutex<Vec<(Membership, Arc<DmaDomain>)>>,
}

/// Why the IOMMU could not be brought up.
#[derive(Debug)]
pub enum IommuInitError {
    /// The DMAR table is malformed.
    Dmar(iommu_vtd::DmarError),
    /// A unit's registers could not be mapped.
    Map(paging::MapError),
    /// A unit refused to start.
    Unit {
        /// Its register base.
        base: u64,
        /// Why.
        error: VtdError,
    },
}

impl fmt::Display for IommuInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dmar(e) => write!(f, "DMAR: {e}"),
            Self::Map(e) => write!(f, "mapping VT-d registers: {e}"),
            Self::Unit { base, error } => write!(f, "VT-d unit at {base:#x}: {error}"),
        }
    }
}

/// Why a device could not be attached to a domain.
#[derive(Debug)]
pub enum AttachError {
    /// No PCI function at that address.
    NoSuchDevice(pci::Bdf),
    /// No unit translates for the device.
    NoUnit(pci::Bdf),
    /// The domain belongs to another unit than the device's.
    WrongUnit(pci::Bdf),
    /// The unit refused.
    Vtd(VtdError),
    /// An RMRR could not be identity-mapped.
    Rmrr(dma::iommu::IommuError),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice(b) => write!(f, "no PCI function at {b}"),
            Self::NoUnit(b) => write!(f, "no VT-d unit translates for {b}"),
            Self::WrongUnit(b) => write!(f, "{b} is behind another VT-d unit than the domain"),
            Self::Vtd(e) => write!(f, "{e}"),
            Self::Rmrr(e) => write!(f, "identity-mapping an RMRR: {e}"),
        }
    }
}

/// Brings every usable DRHD up. `None` when there is no IOMMU: no DMAR, or a DMAR without a
/// usable remapping unit (said once in the log). Structures the DMAR parser refused (a DRHD
/// with register base 0 or an absurd register size, an inverted or misaligned RMRR, a scope of
/// a reserved type) are logged and left out; only validated, bounded register windows are
/// mapped.
pub fn init(
    acpi: &Acpi,
    pci: &PciSystem,
    levels: Option<PagingLevels>,
) -> Result<Option<Iommu>, IommuInitError> {
    let Some((_, bytes)) = acpi.dmar() else {
        return Ok(None);
    };
    let dmar = Dmar::parse(bytes).map_err(IommuInitError::Dmar)?;
    for refused in dmar.refused() {
        log::warn!("vt-d: {refused}");
    }
    if let Err(e) = dmar.require_unit() {
        let why = match e {
            iommu_vtd::DmarError::NoRemappingUnit { refused: 0 } => "the table has no DRHD",
            _ => "every DRHD was refused",
        };
        log::warn!("vt-d: DMAR has no usable remapping unit: no IOMMU ({why})");
        return Ok(None);
    }
    let haw = dmar.host_address_width();
    let mut units = Vec::new();
    for drhd in dmar.drhds() {
        let base = drhd.register_base();
        let size = drhd.register_size();
        let ptr = paging::map_phys(base, size, Cache::Uncached).map_err(IommuInitError::Map)?;
        let ptr = NonNull::new(ptr).ok_or(IommuInitError::Map(paging::MapError::BadRange))?;
        // SAFETY: the DRHD register page was just mapped uncached for `size` bytes, is never
        // unmapped, and only this unit object accesses it.
        let regs = unsafe { MmioRegisters::new(ptr, size as usize) };
        let unit = VtdUnit::new(regs, KernelPlatform, UnitConfig::new(haw))
            .map_err(|error| IommuInitError::Unit { base, error })?;
        unit.enable()
            .map_err(|error| IommuInitError::Unit { base, error })?;
        // The deepest usable table (widest IOVA space) unless the command line picks one.
        let deepest = unit
            .capabilities()
            .cap
            .usable_levels()
            .last()
            .unwrap_or(PagingLevels::Three);
        let unit_levels = match levels {
            Some(l) if unit.capabilities().cap.supports_levels(l) => l,
            Some(l) => {
                log::warn!(
                    "vt-d: unit {base:#x} does not offer {}-level tables; using {}",
                    l.count(),
                    deepest.count()
                );
                deepest
            }
            None => deepest,
        };
        let secondary = |bus: u8, dev: u8, func: u8| {
            let bdf = pci::Bdf::new(drhd.segment(), bus, dev, func).ok()?;
            pci.topology.function(bdf)?.bridge.map(|b| b.secondary)
        };
        let (mut endpoints, mut bridges) = (Vec::new(), Vec::new());
        for scope in drhd.scopes() {
            // The scope resolves to the shared `pci::Bdf`, in the DRHD's segment.
            let Ok(bdf) = scope.resolve(secondary) else {
                log::warn!("vt-d: a device scope of unit {base:#x} does not resolve");
                continue;
            };
            match scope.kind() {
                ScopeKind::PciEndpoint => endpoints.push(bdf),
                ScopeKind::PciSubHierarchy => bridges.push(bdf),
                _ => {}
            }
        }
        units.push(UnitEntry {
            unit: Arc::new(unit),
            base,
            segment: drhd.segment(),
            include_all: drhd.include_pci_all(),
            endpoints,
            bridges,
            levels: unit_levels,
        });
    }
    let mut rmrrs = Vec::new();
    for r in dmar.rmrrs() {
        let secondary = |bus: u8, dev: u8, func: u8| {
            let bdf = pci::Bdf::new(r.segment(), bus, dev, func).ok()?;
            pci.topology.function(bdf)?.bridge.map(|b| b.secondary)
        };
        let devices = r
            .scopes()
            .filter_map(|s| s.resolve(secondary).ok())
            .collect();
        // Inverted or misaligned RMRRs were refused (and logged) by the parser.
        rmrrs.push(RmrrInfo {
            base: r.base(),
            limit: r.limit(),
            devices,
        });
    }
    Ok(Some(Iommu {
        units,
        rmrrs,
        host_address_width: haw,
        defaults: Mutex::new(Vec::new()),
        memberships: Mutex::new(Vec::new()),
        boot_attachments: Mutex::new(Vec::new()),
    }))
}

impl Iommu {
    /// The unit translating DMA from `bdf`: an endpoint scope naming it, a bridge scope above
    /// it, or an INCLUDE_PCI_ALL unit of its segment.
    pub fn unit_for(&self, pci: &PciSystem, bdf: pci::Bdf) -> Option<&UnitEntry> {
        let t = &pci.topology;
        let mut path = Vec::from([bdf]);
        path.extend(t.upstream_bridges(bdf).map(|f| f.bdf));
        self.units
            .iter()
            .find(|u| u.endpoints.contains(&bdf) || path.iter().any(|b| u.bridges.contains(b)))
            .or_else(|| {
                self.units
                    .iter()
                    .find(|u| u.include_all && u.segment == bdf.segment())
            })
    }

    /// A new empty domain on the unit that translates for `bdf`, with that unit's table depth.
    pub fn domain_for(&self, pci: &PciSystem, bdf: pci::Bdf) -> Result<Domain, AttachError> {
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
    /// already attached to `domain` is a refcounted success; a group attached to another domain
    /// is refused ([`VtdError::GroupAttachedElsewhere`]). Returns the group's requester IDs.
    pub fn attach(
        &self,
        pci: &PciSystem,
        domain: &Domain,
        bdf: pci::Bdf,
    ) -> Result<Vec<u16>, AttachError> {
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
        // A region already identity-mapped in this domain is left as it is; on failure the
        // ranges this call mapped are removed again (with the page-rounded bounds it mapped).
        let mut mapped: Vec<(u64, u64)> = Vec::new();
        let mut result = Ok(());
        if first {
            for r in self
                .rmrrs
                .iter()
                .filter(|r| r.devices.iter().any(|d| group.contains(*d)))
            {
                let (base, size) = r.page_range();
                if domain.translate(DmaAddr::new(base)).is_some() {
                    continue;
                }
                match domain.map_identity(r.base, r.limit) {
                    Ok(()) => mapped.push((base, size)),
                    Err(e) => {
                        result = Err(AttachError::Rmrr(e));
                        break;
                    }
                }
            }
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
        result.map(|()| rids)
    }

    /// Detaches `bdf` (a member of its group) from `domain`. The group's context entries are
    /// cleared, and the context cache and IOTLB invalidated, only when the last member leaves.
    pub fn detach(
        &self,
        pci: &PciSystem,
        domain: &Domain,
        bdf: pci::Bdf,
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
    pub fn attach_member(
        &self,
        pci: &PciSystem,
        domain: &Arc<Domain>,
        bdf: pci::Bdf,
    ) -> Result<Membership, AttachError> {
        let mut live = self.memberships.lock();
        live.retain(|m| m.strong_count() > 0);
        let existing = live
            .iter()
            .filter_map(Weak::upgrade)
            .find(|m| m.bdf == bdf && Arc::ptr_eq(&m.domain, domain));
        if let Some(inner) = existing {
            return Ok(Membership(inner));
        }
        self.attach(pci, domain, bdf)?;
        let key = pci
            .groups()
            .group_of(bdf)
            .map(group_key)
            .ok_or(AttachError::NoSuchDevice(bdf))?;
        let inner = Arc::new(MemberInner {
            domain: domain.clone(),
            group: key,
            bdf,
        });
        live.push(Arc::downgrade(&inner));
        Ok(Membership(inner))
    }
}

/// The key a group is known by to the VT-d units: its segment and lowest member BDF. Unlike
/// the group's index it does not change when the groups are recomputed and the group itself
/// stays the same.
pub fn group_key(group: &pci::Group) -> u32 {
    let lowest = group.members().first().map_or(0, |b| b.requester_id());
    u32::from(group.segment()) << 16 | u32::from(lowest)
}

/// One function's membership of its group's attachment to a domain, shared by every holder
/// (see [`Iommu::attach_member`]): when the last holder drops it the function is detached
/// ([`Domain::detach_device`]), which clears the group's context entries only when it was the
/// group's last member.
pub struct Membership(Arc<MemberInner>);

/// The shared part of a [`Membership`].
pub struct MemberInner {
    domain: Arc<Domain>,
    group: u32,
    bdf: pci::Bdf,
}

impl Membership {
    /// The function.
    pub fn bdf(&self) -> pci::Bdf {
        self.0.bdf
    }

    /// The domain.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.0.domain
    }
}

impl Drop for MemberInner {
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

impl RmrrInfo {
    /// Parses a command-line RMRR, `<bdf>@<base>-<limit>` (BDF as `[segment:]bus:dev.fn`,
    /// addresses in hex with `0x`, `base` 4 KiB aligned, `limit + 1` 4 KiB aligned): a region the
    /// firmware should have listed. It is treated exactly like a firmware RMRR (identity-mapped
    /// for its device from boot, kept out of every IOVA space); the scenarios use it because
    /// QEMU's DMAR has none.
    pub fn parse_override(spec: &str) -> Option<Self> {
        let (bdf, range) = spec.split_once('@')?;
        let (base, limit) = range.split_once('-')?;
        let hex = |v: &str| u64::from_str_radix(v.strip_prefix("0x")?, 16).ok();
        let (base, limit) = (hex(base)?, hex(limit)?);
        let aligned = base % 4096 == 0 && limit.checked_add(1)? % 4096 == 0 && base <= limit;
        Some(Self {
            base,
            limit,
            devices: alloc::vec![bdf.parse().ok()?],
        })
        .filter(|_| aligned)
    }

    /// The page-rounded identity range `(base, size)` that is mapped for this region.
    pub fn page_range(&self) -> (u64, u64) {
        let base = self.base & !0xfff;
        let last = self.limit | 0xfff;
        (base, last - base + 1)
    }
}
