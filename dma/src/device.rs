//! [`DmaDevice`]: the per-device DMA handle a driver maps through.
//!
//! It carries what decides every mapping (SPEC.md "physical-address DMA API", "Device isolation
//! by default", "sub-page isolation"): the DMA mask, whether the device is cache coherent and
//! trusted, how it reaches memory ([`Translation`]: an IOMMU domain, or dma-direct where the
//! device address is the physical address), the physical-memory provider and the bounce pool.
//!
//! A device that must not DMA at all simply gets no `DmaDevice` (the IOMMU driver leaves it in a
//! blocking domain): there is no "no translation" variant to get wrong.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::AtomicU64;

use spin::Mutex;

use crate::bounce::BouncePool;
use crate::domain::DmaDomain;
use crate::error::DmaError;
use crate::invalidation::InvalidationMode;
use crate::mapping::MapRecord;
use crate::phys::PhysMemory;

/// How the device's addresses reach memory.
#[derive(Clone, Debug)]
pub enum Translation {
    /// dma-direct: the device address is the CPU physical address; the DMA mask is checked.
    Direct,
    /// Through an IOMMU domain: every mapping gets an IOVA.
    Iommu(Arc<DmaDomain>),
}

/// Fixed properties of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Highest address the device can emit (inclusive), `2^bits - 1`.
    pub mask: u64,
    /// Whether device accesses snoop the CPU caches (no cache maintenance needed).
    pub coherent: bool,
    /// Whether the device is trusted. Untrusted devices get sub-page isolation and cannot use
    /// deferred invalidation.
    pub trusted: bool,
    /// Longest segment the device accepts in one descriptor (used when a DMA range is split
    /// into segments, e.g. [`crate::IovaLink::segments`]); rounded down to a page when splitting.
    pub max_segment: u64,
}

impl Default for DeviceConfig {
    /// A 32-bit, coherent, trusted device with `u32::MAX`-byte segments (Linux's defaults for a
    /// PCI device, scatterlist length width).
    fn default() -> Self {
        Self {
            mask: u32::MAX as u64,
            coherent: true,
            trusted: true,
            max_segment: u32::MAX as u64,
        }
    }
}

impl DeviceConfig {
    /// The mask of a device that emits `bits`-bit addresses (12..=64).
    pub const fn mask_bits(bits: u32) -> Result<u64, DmaError> {
        match bits {
            64 => Ok(u64::MAX),
            12..=63 => Ok((1u64 << bits) - 1),
            _ => Err(DmaError::InvalidConfig(
                "DMA mask width must be 12..=64 bits",
            )),
        }
    }

    /// A trusted, coherent device with a `bits`-bit mask.
    pub const fn with_mask_bits(bits: u32) -> Result<Self, DmaError> {
        match Self::mask_bits(bits) {
            Ok(mask) => Ok(Self {
                mask,
                coherent: true,
                trusted: true,
                max_segment: u32::MAX as u64,
            }),
            Err(e) => Err(e),
        }
    }

    /// The same device, untrusted (e.g. behind an external-facing port).
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
    /// Mappings turned into raw handles ([`crate::Mapping::into_raw`]), keyed by (DMA address,
    /// id) so two direct mappings of the same buffer do not collide.
    pub raw: Mutex<BTreeMap<(u64, u64), MapRecord>>,
    pub next_id: AtomicU64,
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
    /// Creates the handle. Refused (`InvalidConfig`) when: the mask is not `2^n - 1` with
    /// n ≥ 12; the device is untrusted but direct-mapped (no IOMMU, no isolation to give) or
    /// attached to a deferred-invalidation domain (SPEC.md: deferred is for trusted devices
    /// only); the bounce pool lies beyond a direct-mapped device's mask.
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
            Translation::Iommu(d) => {
                if !cfg.trusted && matches!(d.mode(), InvalidationMode::Deferred(_)) {
                    return Err(DmaError::InvalidConfig(
                        "deferred invalidation is for trusted devices only",
                    ));
                }
            }
        }
        Ok(Self {
            inner: Arc::new(DeviceInner {
                cfg,
                translation,
                phys,
                bounce,
                raw: Mutex::new(BTreeMap::new()),
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
