//! One default DMA domain per isolation group, a [`DmaDevice`] for a PCI function, and the
//! boot-time attachments of the devices an RMRR names (SPEC.md "Isolation unit", "DMA API").

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use dma::iommu::IommuDomain;
use dma::{
    BouncePool, Clock, DeviceConfig, DmaDevice, DmaDomain, DmaError, DomainConfig,
    InvalidationMode, PhysMemory, Translation,
};
use iommu_vtd::{Domain, Platform, RegisterIo};
use pci::Bdf;

use crate::attach::{group_key, AttachError};
use crate::reserved::reserved_regions;
use crate::state::{DefaultDomain, GroupDomain, Iommu, Membership};
use crate::view::PciView;

/// Why a DMA device could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// Domain creation or attach failed.
    Attach(AttachError),
    /// The `dma` crate refused the configuration.
    Dma(DmaError),
    /// The group's default domain is alive with another invalidation mode.
    ModeMismatch {
        /// The mode of the existing default domain.
        existing: InvalidationMode,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attach(e) => write!(f, "{e}"),
            Self::Dma(e) => write!(f, "{e}"),
            Self::ModeMismatch { existing } => write!(
                f,
                "the group's default domain already uses {existing:?} invalidation"
            ),
        }
    }
}

impl core::error::Error for SetupError {}

/// A device set up for the DMA API, with the hardware domain kept for code that looks beneath
/// the API (None on the direct path). Fields drop in order: the device first, then its group
/// membership (which detaches the group when this was its last member).
pub struct DeviceDma<R: RegisterIo, P: Platform> {
    /// The device handle drivers use.
    pub dev: DmaDevice,
    /// The VT-d domain behind it (its group's default domain), if any.
    pub hw: Option<Arc<Domain<R, P>>>,
    /// Its membership of the group's attachment to `hw`, held for its `Drop` (the detach).
    _member: Option<Membership<R, P>>,
}

impl<R: RegisterIo, P: Platform> fmt::Debug for DeviceDma<R, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceDma")
            .field("dev", &self.dev)
            .field("did", &self.hw.as_ref().map(|d| d.did()))
            .finish()
    }
}

impl<R: RegisterIo + 'static, P: Platform + 'static> Iommu<R, P> {
    /// The default domain of `bdf`'s group, created with `mode` (and `clock` for deferred
    /// deadlines) if the group has none alive, with the reserved regions of
    /// [`reserved_regions`]. The domain is not attached here ([`Iommu::attach_member`] does).
    ///
    /// # Errors
    /// [`SetupError::ModeMismatch`] when the group's live default domain has another mode (the
    /// members of a group share one domain and so one mode); [`SetupError::Attach`] when `bdf`
    /// has no group or no unit, or the unit refuses a domain; [`SetupError::Dma`] when the
    /// IOVA space cannot be built.
    pub fn group_domain(
        &self,
        pci: &impl PciView,
        bdf: Bdf,
        mode: InvalidationMode,
        clock: Option<Arc<dyn Clock>>,
    ) -> Result<GroupDomain<R, P>, SetupError> {
        let group = pci
            .groups()
            .group_of(bdf)
            .map(group_key)
            .ok_or(SetupError::Attach(AttachError::NoSuchDevice(bdf)))?;
        let mut defaults = self.defaults.lock();
        defaults.retain(|d| d.dma.strong_count() > 0);
        if let Some(d) = defaults.iter().find(|d| d.group == group) {
            if let (Some(hw), Some(dma)) = (d.hw.upgrade(), d.dma.upgrade()) {
                if dma.mode() != mode {
                    return Err(SetupError::ModeMismatch {
                        existing: dma.mode(),
                    });
                }
                return Ok((hw, dma));
            }
        }
        let hw = Arc::new(self.domain_for(pci, bdf).map_err(SetupError::Attach)?);
        let cfg = DomainConfig {
            reserved: reserved_regions(&self.rmrrs, pci.topology()),
            mode,
            clock,
        };
        let hw_dyn: Arc<dyn IommuDomain> = hw.clone();
        let dma = DmaDomain::new(hw_dyn, cfg).map_err(SetupError::Dma)?;
        defaults.retain(|d| d.group != group);
        defaults.push(DefaultDomain {
            group,
            hw: Arc::downgrade(&hw),
            dma: Arc::downgrade(&dma),
        });
        Ok((hw, dma))
    }

    /// Attaches every device an RMRR names to its group's default domain (strict), with the
    /// RMRR identity-mapped before the group's context entries are written, as Linux does at
    /// probe: that memory stays reachable whether or not a driver binds, and a driver that
    /// binds later joins the same domain. Call it before [`Iommu::start_translation`]. The
    /// attachments are kept in [`Iommu::boot_attachments`]; each device's outcome is returned
    /// (and logged), a failed one stays blocked.
    pub fn attach_rmrr_devices(
        &self,
        pci: &impl PciView,
        clock: Option<Arc<dyn Clock>>,
    ) -> Vec<(Bdf, Result<u16, SetupError>)> {
        let mut devices: Vec<Bdf> = Vec::new();
        for r in &self.rmrrs {
            for &d in &r.devices {
                if pci.topology().function(d).is_some() && !devices.contains(&d) {
                    devices.push(d);
                }
            }
        }
        let mut out = Vec::with_capacity(devices.len());
        for bdf in devices {
            let attached = self
                .group_domain(pci, bdf, InvalidationMode::Strict, clock.clone())
                .and_then(|(hw, dma)| {
                    self.attach_member(pci, &hw, bdf)
                        .map(|m| (m, dma))
                        .map_err(SetupError::Attach)
                });
            match attached {
                Ok((member, dma)) => {
                    let did = member.domain().did();
                    log::info!(
                        "vt-d: {bdf} named by an RMRR: attached at boot to domain {did} with its RMRR identity-mapped"
                    );
                    self.boot_attachments.lock().push((member, dma));
                    out.push((bdf, Ok(did)));
                }
                Err(e) => {
                    log::error!("vt-d: attaching RMRR device {bdf} at boot: {e}");
                    out.push((bdf, Err(e)));
                }
            }
        }
        out
    }
}

/// What the embedder supplies for DMA devices: memory for bounce pools and coherent buffers, a
/// clock for deferred-invalidation deadlines, and the bounce pool size.
#[derive(Clone)]
pub struct DmaResources {
    /// Physical memory (bounce pools, coherent allocations, copies).
    pub phys: Arc<dyn PhysMemory>,
    /// Microsecond clock for deferred invalidation (`None`: deadlines never expire by time).
    pub clock: Option<Arc<dyn Clock>>,
    /// Bytes of each device's bounce pool.
    pub bounce_pool_size: u64,
}

impl fmt::Debug for DmaResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaResources")
            .field("clock", &self.clock.is_some())
            .field("bounce_pool_size", &self.bounce_pool_size)
            .finish_non_exhaustive()
    }
}

/// Builds the [`DmaDevice`] for PCI function `bdf`. Under the IOMMU it joins its isolation
/// group's default domain ([`Iommu::group_domain`] with `mode`), created and attached to the
/// whole group on first use, with a bounce pool unless the device is trusted; without one
/// (`iommu` is `None`), the direct path with a bounce pool below the device's mask.
///
/// # Errors
/// [`SetupError::Attach`] (no group or unit, the unit refused, an RMRR could not be mapped),
/// [`SetupError::ModeMismatch`] (the group's domain has another mode), [`SetupError::Dma`]
/// (no memory for the bounce pool, a configuration the `dma` crate refuses, such as deferred
/// invalidation for an untrusted device or mixed trust in one domain).
pub fn setup_device<R: RegisterIo + 'static, P: Platform + 'static>(
    pci: &impl PciView,
    iommu: Option<&Iommu<R, P>>,
    bdf: Bdf,
    config: DeviceConfig,
    mode: InvalidationMode,
    res: &DmaResources,
) -> Result<DeviceDma<R, P>, SetupError> {
    let phys = res.phys.clone();
    match iommu {
        Some(iommu) => {
            let (hw, domain) = iommu.group_domain(pci, bdf, mode, res.clock.clone())?;
            let member = iommu
                .attach_member(pci, &hw, bdf)
                .map_err(SetupError::Attach)?;
            let pool = if config.trusted {
                None
            } else {
                Some(
                    BouncePool::new(phys.clone(), res.bounce_pool_size, config.mask)
                        .map_err(SetupError::Dma)?,
                )
            };
            let dev = DmaDevice::new(config, Translation::Iommu(domain), phys, pool)
                .map_err(SetupError::Dma)?;
            Ok(DeviceDma {
                dev,
                hw: Some(hw),
                _member: Some(member),
            })
        }
        None => {
            let pool = BouncePool::new(phys.clone(), res.bounce_pool_size, config.mask)
                .map_err(SetupError::Dma)?;
            let dev = DmaDevice::new(config, Translation::Direct, phys, Some(pool))
                .map_err(SetupError::Dma)?;
            Ok(DeviceDma {
                dev,
                hw: None,
                _member: None,
            })
        }
    }
}
