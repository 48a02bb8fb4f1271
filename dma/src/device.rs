//! [`DmaDevice`]: the per-device DMA handle a driver maps through.
//!
//! It carries what decides every mapping (SPEC.md "physical-address DMA API", "Device isolation
//! by default", "sub-page isolation"): the DMA mask, whether the device is cache coherent and
//! trusted, how it reaches memory ([`Translation`]: an IOMMU domain, or dma-direct where the
//! device address is the physical address), the physical-memory provider and the bounce pool.
//!
//! This module holds the handle and its state (construction, configuration, accessors). The
//! operations a driver calls on it are inherent methods declared with the layer that implements
//! them, so no module depends on a layer above it: streaming mappings and raw unmap/sync in
//! [`crate::mapping`], [`DmaDevice::alloc_coherent`] in [`crate::coherent`], the link API
//! ([`DmaDevice::iova_try_alloc`], [`DmaDevice::map_linked`]) in [`crate::link`], and
//! [`DmaDevice::map_peer`] in [`crate::peer`].
//!
//! A device that must not DMA at all simply gets no `DmaDevice` (the IOMMU driver leaves it in a
//! blocking domain): there is no "no translation" variant to get wrong.

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::AtomicU64;

use spin::Mutex;

use crate::bounce::BouncePool;
use crate::domain::DmaDomain;
use crate::error::DmaError;
use crate::phys::PhysMemory;
use crate::record::RawTable;

/// How the device's addresses reach memory.
#[derive(Clone, Debug)]
pub enum Translation {
    /// dma-direct: the device address is the CPU physical address; the DMA mask is checked.
    Direct,
    /// Through an IOMMU domain: every mapping gets an IOVA.
    Iommu(Arc<DmaDomain>),
}

/// Fixed properties of a device.
///
/// **Untrusted by default** (SPEC.md "Device isolation by default"): [`DeviceConfig::default`]
/// and [`DeviceConfig::with_mask_bits`] describe an untrusted device, which gets sub-page
/// isolation (a mapping that does not start and end on page boundaries is bounced, so the
/// device never sees another byte of those pages) and cannot join a deferred-invalidation
/// domain. Trust is an explicit choice: [`DeviceConfig::trusted`]. An untrusted device under an
/// IOMMU needs a bounce pool for sub-page mappings, and cannot be direct-mapped at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Highest address the device can emit (inclusive), `2^bits - 1`.
    pub mask: u64,
    /// Whether device accesses snoop the CPU caches (no cache maintenance needed).
    pub coherent: bool,
    /// Whether the device is trusted. Untrusted devices (the default) get sub-page isolation
    /// and cannot use deferred invalidation.
    pub trusted: bool,
    /// Longest segment the device accepts in one descriptor (used when a DMA range is split
    /// into segments, e.g. [`crate::IovaLink::segments`]); rounded down to a page when splitting.
    pub max_segment: u64,
}

impl Default for DeviceConfig {
    /// A 32-bit, coherent, **untrusted** device with `u32::MAX`-byte segments (Linux's defaults
    /// for a PCI device, scatterlist length width; trust is opt-in, [`DeviceConfig::trusted`]).
    fn default() -> Self {
        Self {
            mask: u32::MAX as u64,
            coherent: true,
            trusted: false,
            max_segment: u32::MAX as u64,
        }
    }
}

impl DeviceConfig {
    /// The mask of a device that emits `bits`-bit addresses (12..=64).
    ///
    /// # Errors
    ///
    /// [`DmaError::InvalidConfig`] when `bits` is outside 12..=64.
    pub const fn mask_bits(bits: u32) -> Result<u64, DmaError> {
        match bits {
            64 => Ok(u64::MAX),
            12..=63 => Ok((1u64 << bits) - 1),
            _ => Err(DmaError::InvalidConfig(
                "DMA mask width must be 12..=64 bits",
            )),
        }
    }

    /// An untrusted, coherent device with a `bits`-bit mask (add [`DeviceConfig::trusted`] to
    /// trust it).
    ///
    /// # Errors
    ///
    /// [`DmaError::InvalidConfig`] when `bits` is outside 12..=64 (see
    /// [`DeviceConfig::mask_bits`]).
    pub const fn with_mask_bits(bits: u32) -> Result<Self, DmaError> {
        match Self::mask_bits(bits) {
            Ok(mask) => Ok(Self {
                mask,
                coherent: true,
                trusted: false,
                max_segment: u32::MAX as u64,
            }),
            Err(e) => Err(e),
        }
    }

    /// The same device, trusted: no sub-page bouncing, and deferred invalidation allowed. Only
    /// for devices that are part of the trusted computing base (not behind an external-facing
    /// port, not assigned to a guest); the direct path (no IOMMU) requires it.
    pub const fn trusted(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// The same device, untrusted (the default; e.g. to undo [`DeviceConfig::trusted`]).
    pub const fn untrusted(mut self) -> Self {
        self.trusted = false;
        self
    }

    /// The same device, not cache coherent.
    pub const fn non_coherent(mut self) -> Self {
        self.coherent = false;
        self
    }
}

pub(crate) struct DeviceInner {
    pub cfg: DeviceConfig,
    pub translation: Translation,
    pub phys: Arc<dyn PhysMemory>,
    pub bounce: Option<Arc<BouncePool>>,
    /// Mappings turned into raw handles ([`crate::Mapping::into_raw`]).
    pub raw: Mutex<RawTable>,
    pub next_id: AtomicU64,
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        if let Translation::Iommu(d) = &self.translation {
            let raw = self.raw.get_mut().len();
            if raw > 0 {
                // Raw mappings are never unmapped for the caller: they stay in the domain and
                // the device (or its group) can still reach them, so the device stays a member
                // and the domain keeps its trust level (a device of the other kind must not
                // join and see these pages).
                log::warn!(
                    "dma: device dropped with {raw} raw mapping(s) still mapped; its domain keeps it as a member"
                );
                return;
            }
            d.leave();
        }
    }
}

/// A device's DMA handle. Cheap to clone (`Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct DmaDevice {
    pub(crate) inner: Arc<DeviceInner>,
}

impl fmt::Debug for DmaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDevice")
            .field("config", &self.inner.cfg)
            .field("translation", &self.inner.translation)
            .field("bounce", &self.inner.bounce)
            .finish()
    }
}

impl DmaDevice {
    /// Creates the handle.
    ///
    /// # Errors
    ///
    /// Refused (`InvalidConfig`) when: the mask is not `2^n - 1` with
    /// n ≥ 12; the device is untrusted but direct-mapped (no IOMMU, no isolation to give) or
    /// attached to a deferred-invalidation domain (SPEC.md: deferred is for trusted devices
    /// only); the bounce pool lies beyond a direct-mapped device's mask. Refused with
    /// [`DmaError::MixedTrust`] when the domain already has devices of the other trust level
    /// (see [`DmaDomain`]: mixing is refused).
    ///
    /// Under an IOMMU the device registers with its domain here and deregisters when the last
    /// clone of the handle (and the last mapping made through it) is gone.
    pub fn new(
        cfg: DeviceConfig,
        translation: Translation,
        phys: Arc<dyn PhysMemory>,
        bounce: Option<Arc<BouncePool>>,
    ) -> Result<Self, DmaError> {
        if cfg.mask < 0xfff || cfg.mask.wrapping_add(1) & cfg.mask != 0 {
            return Err(DmaError::InvalidConfig(
                "DMA mask must be 2^n - 1 with n >= 12",
            ));
        }
        match &translation {
            Translation::Direct if !cfg.trusted => {
                return Err(DmaError::InvalidConfig(
                    "an untrusted device needs an IOMMU domain for isolation",
                ))
            }
            Translation::Direct => {
                if let Some(pool) = &bounce {
                    if pool.last_byte() > cfg.mask {
                        return Err(DmaError::InvalidConfig(
                            "the bounce pool is beyond the device's DMA mask",
                        ));
                    }
                }
            }
            // Last check: from here on the device is a member and `DeviceInner::drop` leaves.
            Translation::Iommu(d) => d.join(cfg.trusted)?,
        }
        Ok(Self {
            inner: Arc::new(DeviceInner {
                cfg,
                translation,
                phys,
                bounce,
                raw: Mutex::new(RawTable::default()),
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// The device's configuration.
    pub fn config(&self) -> DeviceConfig {
        self.inner.cfg
    }

    /// The DMA mask.
    pub fn mask(&self) -> u64 {
        self.inner.cfg.mask
    }

    /// The IOMMU domain, if the device is translated.
    pub fn domain(&self) -> Option<&Arc<DmaDomain>> {
        match &self.inner.translation {
            Translation::Iommu(d) => Some(d),
            Translation::Direct => None,
        }
    }

    /// The physical-memory provider.
    pub fn phys_memory(&self) -> &Arc<dyn PhysMemory> {
        &self.inner.phys
    }

    /// The bounce pool, if any.
    pub fn bounce_pool(&self) -> Option<&Arc<BouncePool>> {
        self.inner.bounce.as_ref()
    }

    /// Number of raw mappings (from [`crate::Mapping::into_raw`]) not yet unmapped.
    pub fn raw_mappings(&self) -> usize {
        self.inner.raw.lock().len()
    }
}
