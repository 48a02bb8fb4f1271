//! The device layer for PCI peer-to-peer: providers, the routing classifier, and the revoke
//! triggers (SPEC: "Revocable handles").
//!
//! A [`ProviderDevice`] owns the [`Exporter`] of one function's BARs. Every operation that takes
//! the device's memory away from its peers goes through it and revokes *before* acting:
//! clearing memory decode, a reset (FLR, or a secondary-bus reset through the parent bridge,
//! which revokes every provider on that bus), entering D3hot, and removal (permanent). Restore
//! re-applies the saved BARs and command register first, then re-enables the exports.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use dma::{DmaError, ExportHandle, ExportRange, ExportRequest, Exporter, TransitionStats};
use pci::p2p::{memory_decode, HostBridgePolicy, P2pRouting, ProviderRegistry, RegistryError};
use pci::reset::{self, PowerState, ResetError, ResetMethod, SavedConfig};
use pci::Bdf;

use super::pci::PciSystem;
use crate::arch::time;

/// QEMU q35's host bridge (MCH), allowed explicitly: QEMU routes peer transactions through it.
pub const Q35_HOST_BRIDGE: (u16, u16) = (0x8086, 0x29c0);

/// Providers and the P2P classifier of the machine.
pub struct P2pSystem {
    /// One provider table per function that exports memory.
    pub registry: ProviderRegistry,
    /// Map-type classification (ACS-aware, cached, with the host-bridge allow policy).
    pub routing: Arc<P2pRouting>,
}

/// Builds the classifier from the enumerated topology (after the ACS policy was applied).
pub fn init(pci: &PciSystem) -> P2pSystem {
    let policy = HostBridgePolicy::linux_default().allow(Q35_HOST_BRIDGE.0, Q35_HOST_BRIDGE.1);
    P2pSystem {
        registry: ProviderRegistry::new(),
        routing: Arc::new(P2pRouting::new(&pci.ecam, &pci.topology, policy)),
    }
}

/// Why a device-layer operation failed.
#[derive(Debug)]
pub enum DeviceError {
    /// No such PCI function.
    NoSuchDevice(Bdf),
    /// The DMA layer refused (provider table, revoke).
    Dma(DmaError),
    /// Configuration-space work failed.
    Reset(ResetError),
    /// The function has no reset method (SPEC: bus-0 devices have none).
    NoResetMethod(Bdf),
    /// The provider registry refused removal.
    Registry(RegistryError),
    /// The provider was already removed.
    Removed,
    /// A reset would affect this exporting function, but its provider device was not given.
    ProviderNotGiven(Bdf),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice(b) => write!(f, "no PCI function at {b}"),
            Self::Dma(e) => write!(f, "{e}"),
            Self::Reset(e) => write!(f, "{e}"),
            Self::NoResetMethod(b) => write!(f, "{b} has no reset method"),
            Self::Registry(e) => write!(f, "{e}"),
            Self::Removed => f.write_str("the provider was removed"),
            Self::ProviderNotGiven(b) => {
                write!(
                    f,
                    "a reset would affect exporting function {b}, whose provider was not given"
                )
            }
        }
    }
}

impl From<DmaError> for DeviceError {
    fn from(e: DmaError) -> Self {
        Self::Dma(e)
    }
}

impl From<ResetError> for DeviceError {
    fn from(e: ResetError) -> Self {
        Self::Reset(e)
    }
}

fn delay(us: u32) {
    time::delay_us(u64::from(us));
}

/// Why a provider's exports are currently revoked (several can hold at once; the exports come
/// back only when none is left, so e.g. restoring memory decode does not re-enable exports of a
/// device that is still in D3hot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Block {
    /// Memory Space Enable is off.
    MemoryDisabled = 1,
    /// The function is in a low-power state.
    LowPower = 2,
    /// A reset is in progress.
    Reset = 4,
    /// Revoked explicitly through [`ProviderDevice::revoke`].
    Explicit = 8,
}

/// A function whose BARs are exported to peers, with the triggers that revoke them.
pub struct ProviderDevice {
    bdf: Bdf,
    exporter: Option<Exporter>,
    /// Configuration saved before a power transition that may lose it.
    saved: Option<SavedConfig>,
    /// Bitwise OR of the [`Block`]s in force.
    blocked: u8,
}

impl ProviderDevice {
    /// Registers the function's BARs as providers (idempotent) and creates its exporter.
    pub fn new(p2p: &P2pSystem, pci: &PciSystem, bdf: Bdf) -> Result<Self, DeviceError> {
        let f = pci
            .topology
            .function(bdf)
            .ok_or(DeviceError::NoSuchDevice(bdf))?;
        let table = p2p.registry.init(f)?;
        let classifier: Arc<dyn dma::p2p::P2pClassifier> = p2p.routing.clone();
        Ok(Self {
            bdf,
            exporter: Some(Exporter::new(table, classifier)),
            saved: None,
            blocked: 0,
        })
    }

    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    fn exporter(&mut self) -> Result<&mut Exporter, DeviceError> {
        self.exporter.as_mut().ok_or(DeviceError::Removed)
    }

    /// Exports `ranges` of BAR `bar`; starts revoked if memory decoding is off right now.
    pub fn export(
        &mut self,
        pci: &PciSystem,
        bar: u8,
        ranges: &[ExportRange],
    ) -> Result<ExportHandle, DeviceError> {
        let decode = memory_decode(&pci.ecam, self.bdf);
        Ok(self.exporter()?.export(
            &ExportRequest {
                bar,
                ranges,
                flags: 0,
            },
            decode,
        )?)
    }

    /// Whether the exports are revoked.
    pub fn is_revoked(&self) -> bool {
        self.exporter.as_ref().is_none_or(|e| e.is_revoked())
    }

    /// Adds a reason to keep the exports revoked; revokes (importers notified, mappings torn
    /// down, IOTLB flushed) if it is the first.
    fn block(&mut self, why: Block) -> Result<TransitionStats, DeviceError> {
        let stats = self.exporter()?.revoke()?;
        self.blocked |= why as u8;
        Ok(stats)
    }

    /// Drops a reason; restores the exports when no reason is left.
    fn unblock(&mut self, why: Block) -> Result<TransitionStats, DeviceError> {
        self.blocked &= !(why as u8);
        if self.blocked != 0 {
            return Ok(TransitionStats::default());
        }
        Ok(self.exporter()?.restore())
    }

    /// Revokes every export until [`Self::restore`].
    pub fn revoke(&mut self) -> Result<TransitionStats, DeviceError> {
        self.block(Block::Explicit)
    }

    /// Undoes [`Self::revoke`] (the exports come back unless another trigger still holds them).
    pub fn restore(&mut self) -> Result<TransitionStats, DeviceError> {
        self.unblock(Block::Explicit)
    }

    /// Trigger: clear Memory Space Enable (revoke first).
    pub fn disable_memory(&mut self, pci: &PciSystem) -> Result<TransitionStats, DeviceError> {
        let stats = self.block(Block::MemoryDisabled)?;
        reset::set_memory_decode(&pci.ecam, self.bdf, false)?;
        Ok(stats)
    }

    /// Undo [`Self::disable_memory`]: decode on, then restore.
    pub fn enable_memory(&mut self, pci: &PciSystem) -> Result<TransitionStats, DeviceError> {
        reset::set_memory_decode(&pci.ecam, self.bdf, true)?;
        self.unblock(Block::MemoryDisabled)
    }

    /// Trigger: enter D3hot (revoke first; the configuration is saved in case D0 loses it).
    pub fn enter_d3hot(&mut self, pci: &PciSystem) -> Result<TransitionStats, DeviceError> {
        let stats = self.block(Block::LowPower)?;
        self.saved = Some(SavedConfig::save(&pci.ecam, self.bdf)?);
        reset::set_power_state(&pci.ecam, self.bdf, PowerState::D3Hot, &mut delay)?;
        Ok(stats)
    }

    /// Back to D0: restore the saved configuration if it was lost, then the exports.
    pub fn enter_d0(&mut self, pci: &PciSystem) -> Result<TransitionStats, DeviceError> {
        let t = reset::set_power_state(&pci.ecam, self.bdf, PowerState::D0, &mut delay)?;
        if let Some(saved) = self.saved.take() {
            if t.context_lost {
                saved.restore(&pci.ecam)?;
            }
        }
        self.unblock(Block::LowPower)
    }

    /// Trigger: driver removal. Permanent: every importer is told the device is gone; handles
    /// that outlive it fail cleanly; the provider table leaves the registry. Afterwards every
    /// operation on this object fails with [`DeviceError::Removed`].
    pub fn remove(&mut self, p2p: &P2pSystem) -> Result<TransitionStats, DeviceError> {
        let exporter = self.exporter.take().ok_or(DeviceError::Removed)?;
        let stats = exporter.teardown()?;
        p2p.registry
            .remove(self.bdf)
            .map_err(DeviceError::Registry)?;
        Ok(stats)
    }
}

/// What a reset did.
#[derive(Debug)]
pub struct ResetDone {
    /// The method used.
    pub method: ResetMethod,
    /// Every function the reset affected.
    pub affected: Vec<Bdf>,
    /// Providers revoked (and restored) around it.
    pub revoked: usize,
}

/// Trigger: reset `bdf` with its best method (FLR, PM, or a secondary-bus reset through the
/// parent bridge). `providers` must hold the provider device of every function the reset
/// affects that exports memory (checked against the registry before anything happens). Each is
/// revoked first; configuration is saved and restored around the reset (a bus reset zeroes BARs
/// and command registers); the ACS policy is re-applied (a reset clears ACS control) and the
/// classifier refreshed; then the providers are restored. If the reset itself fails, the
/// providers stay revoked: their memory's state is unknown.
pub fn reset_function(
    p2p: &P2pSystem,
    pci: &PciSystem,
    providers: &mut [&mut ProviderDevice],
    bdf: Bdf,
) -> Result<ResetDone, DeviceError> {
    let method = reset::reset_method(&pci.ecam, &pci.topology, bdf)
        .ok_or(DeviceError::NoResetMethod(bdf))?;
    let affected = method.affected(&pci.topology, bdf);
    if let Some(missing) = affected
        .iter()
        .find(|b| p2p.registry.get(**b).is_some() && !providers.iter().any(|p| p.bdf == **b))
    {
        return Err(DeviceError::ProviderNotGiven(*missing));
    }
    let mut revoked = 0;
    let mut blocked = Ok(());
    for p in providers.iter_mut().filter(|p| affected.contains(&p.bdf)) {
        if let Err(e) = p.block(Block::Reset) {
            blocked = Err(e);
            break;
        }
        revoked += 1;
    }
    if let Err(e) = blocked {
        // Nothing was reset: lift the blocks this call placed before failing.
        for p in providers
            .iter_mut()
            .filter(|p| affected.contains(&p.bdf) && p.blocked & Block::Reset as u8 != 0)
        {
            if let Err(undo) = p.unblock(Block::Reset) {
                log::error!("p2p: restoring {} after a failed revoke: {undo}", p.bdf);
            }
        }
        return Err(e);
    }
    let result = reset::reset(&pci.ecam, &pci.topology, bdf, method, &mut delay);
    pci.reapply_acs_policy();
    p2p.routing.refresh(&pci.ecam, &pci.topology);
    result?;
    for p in providers.iter_mut().filter(|p| affected.contains(&p.bdf)) {
        p.unblock(Block::Reset)?;
    }
    Ok(ResetDone {
        method,
        affected,
        revoked,
    })
}
