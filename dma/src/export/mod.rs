//! Revocable export handles: a device exports MMIO ranges of one of its BARs as a handle object
//! (the role dma-buf plays in Linux); importers attach, map and unmap; the exporter can revoke,
//! restore and finally tear down.
//!
//! Implements SPEC.md "Revocable handles" and the digest's "Export validation", "Rules the
//! reviewers insisted on" (revoke semantics) and items 11-12:
//!
//! - [`validate_export`] rejects, in this order: no ranges or unknown flags; a BAR index out of
//!   range or not a memory BAR; a range of length 0 or with offset/length not page aligned; a
//!   running total that overflows (these three per range, first pass); a range whose
//!   `BAR start + offset` or `+ length` overflows; a range ending past the BAR (ending exactly
//!   at the end is fine) (second pass); and, unlike Linux, overlapping or duplicate ranges
//!   (third pass).
//! - Importers declare that they accept peer-to-peer memory ([`Importer::peer_to_peer`]),
//!   otherwise attach fails with [`DmaError::ImporterNotP2p`] ("unsupported").
//! - Revoke is a synchronous invalidation: when [`Exporter::revoke`] returns, every importer was
//!   notified once, every mapping of every importer is unmapped and the IOTLB flush completed.
//!   While revoked, attach and map fail with [`DmaError::Revoked`]; [`Exporter::restore`]
//!   re-enables. Notifications happen only on a real state change, exactly once per change.
//! - What revoke *enforces* depends on the map type (see [Revoke is enforced only through an
//!   IOMMU](#revoke-is-enforced-only-through-an-iommu)): for mappings translated by the
//!   importer's IOMMU it is a hard guarantee; for [`MapType::BusAddr`] mappings (and for
//!   importers without an IOMMU) it is advisory and relies on the importer honouring
//!   [`MoveEvent::Revoked`].
//! - An export created while the device's memory decoding is off starts revoked.
//! - Teardown ([`Exporter::teardown`], or dropping the exporter) is a permanent revoke; handles
//!   and attachments may outlive the device and then fail with [`DmaError::DeviceGone`].
//!
//! # Ownership, expressed in types
//!
//! - [`Exporter`] (one per device, not `Clone`) owns the right to revoke, restore and tear down;
//!   `revoke`/`restore` take `&mut self`, so two state changes can never interleave and
//!   notifications arrive in order. `teardown` consumes it. It holds the device's
//!   [`ProviderTable`]; `pci::p2p::ProviderRegistry::remove` refuses while anyone (an exporter)
//!   still holds the table, so the provider cannot go away before its exports were torn down.
//! - [`ExportHandle`] (cheap `Clone`) is what gets passed around, like a dma-buf file.
//! - [`Attachment`] is RAII: dropping it unmaps its mappings and detaches.
//! - [`P2pMapping`] is RAII too and records the export's *generation* when it was made; every
//!   state change bumps the generation, so a mapping that a revoke took away is detectable
//!   ([`P2pMapping::is_stale`]) and unmapping it is a harmless no-op.
//!
//! The actual page-table state of every mapping is owned by the export, not by the importer's
//! handle: that is what lets the exporter tear everything down without the importer's help.
//!
//! # Revoke is enforced only through an IOMMU
//!
//! Removing a mapping can only take access away where there is a translation to remove:
//!
//! - [`MapType::ThruHostBridge`] under an importer's IOMMU domain: the transaction goes up to
//!   the root complex and is translated by the IOMMU. Revoke unmaps the IOVA range and waits for
//!   the IOTLB flush, so when it returns the importer's device *cannot* reach the memory any
//!   more, whether or not the importer cooperated.
//! - [`MapType::BusAddr`]: the importer is programmed with the bus address
//!   (`paddr + bus_offset`) and the transaction is routed inside the PCIe switch; it never
//!   reaches the IOMMU, and there is no IOVA or page-table entry to remove. Revoke forgets the
//!   mapping and notifies the importer, but the importer's device can still issue transactions
//!   to that bus address. Revoke is **advisory** here: the importer must honour
//!   [`MoveEvent::Revoked`] (stop and quiesce its DMA before its move-notify callback returns),
//!   exactly Linux's dma-buf `move_notify` contract for P2P. What stops a non-cooperating
//!   importer is only what the exporter does next (memory decode off, reset, power-down), after
//!   which its transactions fail at the exporting device instead of reaching the memory.
//! - [`MapType::ThruHostBridge`] for an importer without an IOMMU (dma-direct): the device
//!   holds a CPU physical address and nothing translates it; revoke is advisory in the same way.
//!
//! # Worst-case hold time of the state lock
//!
//! An export's state lock is a spin lock (`spin::Mutex`, this crate runs without a scheduler)
//! and it is held across the IOMMU work of its importers: page-table updates, `sync_map` and
//! IOTLB flushes of a map, an unmap, a detach or a revoke (see below for why). Anyone contending
//! for it (another importer mapping or unmapping the same export, a revoke) spins for as long.
//! That time is bounded by the IOMMU: each flush issued under the lock completes or fails within
//! the IOMMU's invalidation timeout (VT-d's invalidation-wait timeout), and only a few are
//! issued under it: one per IOMMU domain involved for a revoke or a detach (the mappings are
//! unmapped into one batch), one for an importer's unmap, none for a successful map (one
//! `sync_map`), and one or two more on an error unwind or when an IOVA allocation on a deferred
//! domain first waits for that domain's deferred flush. Do not take it, or call anything that
//! maps or unmaps an export, from a context that must not spin that long (interrupt handlers).
//!
//! # Locks and callbacks
//!
//! Lock order: (1) an exporter's export list, (2) one export's state, then the locks of the
//! mapping layer below (domain allocator, bounce pool, the IOMMU domain's own), which are
//! leaves. No lock is held across (1) → (2): revoke copies the list first.
//!
//! Why the export's state lock is held across map/unmap (IOMMU work under a spin lock, against
//! the crate-wide habit): it is what makes "every mapping is gone when revoke returns" true
//! under races. A map that passed the "not revoked" check, or an importer's unmap that took its
//! mapping out of the table, finishes its IOMMU work (including the IOTLB flush) before revoke
//! can take the lock; there is no window where revoke returns while another thread still holds a
//! half-removed mapping. The cost is that importers of one export serialise their map/unmap.
//!
//! Move-notify callbacks are called with **no** lock held: a callback may unmap its own
//! mappings or drop its attachment (both take lock 2). Callbacks must not block on work that
//! waits for the exporter (revoke holds the exporter mutably while they run). Revoke first
//! notifies (so importers can quiesce their devices and unmap, Linux's `move_notify` contract),
//! then removes whatever mappings remain itself, so the guarantee holds even for an importer
//! that ignores the notification. An attachment dropped concurrently with a revoke may still
//! receive that revoke's single notification.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;

use crate::addr::PhysAddr;
use crate::attrs::Direction;
use crate::device::DmaDevice;
use crate::engine::UnmapBatch;
use crate::error::DmaError;
use crate::p2p::{DeviceId, MapType, P2pClassifier, Provider, ProviderTable};
use crate::peer::PeerMapping;
use crate::segment::DmaSegment;

mod attachment;
mod validate;

pub use attachment::{Attachment, P2pMapping};
pub use validate::{
    validate_export, ExportRange, ExportRequest, ValidatedExport, EXPORT_FLAGS_KNOWN,
};

/// Whether the device decodes memory (Command.Memory Space) when an export is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryDecode {
    /// Memory decoding is on: the export starts live.
    Enabled,
    /// Memory decoding is off: the export starts revoked.
    Disabled,
}

/// The state of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportState {
    /// Importers may attach and map.
    Live,
    /// Temporarily revoked (reset, memory disable, low power): attach and map fail.
    Revoked,
    /// Permanently revoked: the device was torn down.
    Gone,
}

/// What a move-notify callback is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveEvent {
    /// Stop using the memory now; mappings are being removed (by the exporter if the importer
    /// does not unmap them itself).
    Revoked,
    /// The memory is usable again: map again to use it.
    Restored,
    /// The device is gone for good.
    Gone,
}

/// The move-notify callback of an importer.
pub type MoveNotify = alloc::boxed::Box<dyn Fn(MoveEvent) + Send + Sync>;

/// An importing device, as it attaches.
pub struct Importer {
    /// The importer's identity (the client of the P2P classification).
    pub id: DeviceId,
    /// Its DMA handle (mask, IOMMU domain or direct).
    pub dev: DmaDevice,
    /// Whether it accepts peer-to-peer (MMIO) memory. Attach fails ("unsupported") if not.
    pub peer_to_peer: bool,
    /// Called on every state change of the export, with no lock held.
    pub move_notify: MoveNotify,
}

impl fmt::Debug for Importer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Importer")
            .field("id", &self.id)
            .field("dev", &self.dev)
            .field("peer_to_peer", &self.peer_to_peer)
            .finish()
    }
}

/// What a revoke, restore or teardown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransitionStats {
    /// Exports whose state changed.
    pub exports: usize,
    /// Callbacks called.
    pub notified: usize,
    /// Mappings the exporter unmapped itself (those importers did not unmap in their callback).
    pub unmapped: usize,
}

impl TransitionStats {
    fn add(&mut self, o: TransitionStats) {
        self.exports += o.exports;
        self.notified += o.notified;
        self.unmapped += o.unmapped;
    }
}

type Callback = Arc<dyn Fn(MoveEvent) + Send + Sync>;

struct AttachEntry {
    dev: DmaDevice,
    notify: Callback,
    mappings: BTreeMap<u64, PeerMapping>,
}

struct State {
    status: ExportState,
    generation: u64,
    next_id: u64,
    attachments: BTreeMap<u64, AttachEntry>,
}

struct Shared {
    provider: Provider,
    ranges: Vec<(PhysAddr, u64)>,
    size: u64,
    classifier: Arc<dyn P2pClassifier>,
    state: Mutex<State>,
    /// Test-only fault injection (never compiled into the shipped crate): when set, an
    /// importer's unmap releases the state lock between taking its mapping out of the table and
    /// unmapping it, the exact step the module docs say revoke relies on. The race test's
    /// negative control uses it to prove the race test can fail.
    #[cfg(test)]
    unlock_before_unmap: core::sync::atomic::AtomicBool,
}

fn status_error(status: ExportState) -> Result<(), DmaError> {
    match status {
        ExportState::Live => Ok(()),
        ExportState::Revoked => Err(DmaError::Revoked),
        ExportState::Gone => Err(DmaError::DeviceGone),
    }
}

/// Unmaps every mapping of `entries` in one batch (one IOTLB flush per IOMMU domain, completed
/// before this returns); the caller holds the state lock. Returns the count and the first error
/// (a failed unmap or flush leaks its IOVA, never reuses it).
fn unmap_all<'a>(
    entries: impl Iterator<Item = &'a mut AttachEntry>,
) -> (usize, Result<(), DmaError>) {
    let mut count = 0;
    let mut first = Ok(());
    let mut batch = UnmapBatch::new();
    for entry in entries {
        for (_, m) in core::mem::take(&mut entry.mappings) {
            count += 1;
            if let Err(e) = m.unmap_in(&mut batch) {
                log::error!("dma: export revoke: unmap failed: {e}");
                first = first.and(Err(e));
            }
        }
    }
    if let Err(e) = batch.finish() {
        log::error!("dma: export revoke: flush failed: {e}");
        first = first.and(Err(e));
    }
    (count, first)
}

impl Shared {
    /// Moves to `to` (never out of `Gone`), notifies, and for `Revoked`/`Gone` removes every
    /// remaining mapping. No-op (no notification) when the state does not change.
    fn transition(&self, to: ExportState) -> (TransitionStats, Result<(), DmaError>) {
        let mut stats = TransitionStats::default();
        let (event, callbacks) = {
            let mut st = self.state.lock();
            if st.status == to || st.status == ExportState::Gone {
                return (stats, Ok(()));
            }
            st.status = to;
            st.generation += 1;
            let event = match to {
                ExportState::Live => MoveEvent::Restored,
                ExportState::Revoked => MoveEvent::Revoked,
                ExportState::Gone => MoveEvent::Gone,
            };
            let callbacks: Vec<Callback> =
                st.attachments.values().map(|a| a.notify.clone()).collect();
            (event, callbacks)
        };
        stats.exports = 1;
        for cb in &callbacks {
            cb(event);
        }
        stats.notified = callbacks.len();
        if to == ExportState::Live {
            return (stats, Ok(()));
        }
        // Whatever the importers did not unmap themselves. Under the lock: any concurrent
        // map/unmap has finished its IOMMU work before we get here (module docs).
        let mut st = self.state.lock();
        let (count, result) = unmap_all(st.attachments.values_mut());
        stats.unmapped = count;
        (stats, result)
    }
}

/// One device's exports and the right to revoke, restore and tear them down (see the module
/// documentation). Dropping it tears down.
pub struct Exporter {
    table: Arc<ProviderTable>,
    classifier: Arc<dyn P2pClassifier>,
    exports: Mutex<Vec<Weak<Shared>>>,
    revoked: bool,
    torn_down: bool,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("owner", &self.table.owner())
            .field("exports", &self.exports.lock().len())
            .field("revoked", &self.revoked)
            .finish()
    }
}

impl Exporter {
    /// The exporter of the device whose providers are `table`, classifying importers with
    /// `classifier`.
    pub fn new(table: Arc<ProviderTable>, classifier: Arc<dyn P2pClassifier>) -> Self {
        Self {
            table,
            classifier,
            exports: Mutex::new(Vec::new()),
            revoked: false,
            torn_down: false,
        }
    }

    /// The device's providers.
    pub fn providers(&self) -> &Arc<ProviderTable> {
        &self.table
    }

    /// Whether the exporter is currently revoked (between [`Exporter::revoke`] and
    /// [`Exporter::restore`]).
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// Validates `req` ([`validate_export`]) and creates a handle. It starts revoked when
    /// `decode` is [`MemoryDecode::Disabled`] or the exporter is revoked.
    ///
    /// # Errors
    ///
    /// Every error of [`validate_export`] (nothing is created).
    pub fn export(
        &self,
        req: &ExportRequest<'_>,
        decode: MemoryDecode,
    ) -> Result<ExportHandle, DmaError> {
        let v = validate_export(&self.table, req)?;
        let status = if decode == MemoryDecode::Disabled || self.revoked {
            ExportState::Revoked
        } else {
            ExportState::Live
        };
        let shared = Arc::new(Shared {
            provider: v.provider,
            ranges: v.ranges,
            size: v.size,
            classifier: self.classifier.clone(),
            state: Mutex::new(State {
                status,
                generation: 0,
                next_id: 1,
                attachments: BTreeMap::new(),
            }),
            #[cfg(test)]
            unlock_before_unmap: core::sync::atomic::AtomicBool::new(false),
        });
        let mut list = self.exports.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&shared));
        Ok(ExportHandle { shared })
    }

    /// Number of exports still referenced by a handle or an attachment.
    pub fn live_exports(&self) -> usize {
        self.exports
            .lock()
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn all(&self) -> Vec<Arc<Shared>> {
        let mut list = self.exports.lock();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    fn move_all(&self, to: ExportState) -> Result<TransitionStats, DmaError> {
        let mut stats = TransitionStats::default();
        let mut first = Ok(());
        for s in self.all() {
            let (st, r) = s.transition(to);
            stats.add(st);
            if first.is_ok() {
                first = r;
            }
        }
        first.map(|()| stats)
    }

    /// Revokes every export of the device: importers of each live export are notified once
    /// ([`MoveEvent::Revoked`]), then every mapping left is unmapped and the IOTLB flushed.
    /// Exports already revoked are left alone (no notification).
    ///
    /// When this returns, no importer can reach the device's memory through a mapping that its
    /// IOMMU translates ([`MapType::ThruHostBridge`] under an IOMMU): those translations are gone
    /// and the IOTLB flush completed. For [`MapType::BusAddr`] mappings (the transaction stays in
    /// the PCIe switch and never passes the IOMMU) and for importers without an IOMMU, there is
    /// nothing to invalidate: revoke is advisory for them, and the guarantee holds only if the
    /// importer honours [`MoveEvent::Revoked`] (stops its DMA before its callback returns). See
    /// the module documentation, "Revoke is enforced only through an IOMMU".
    ///
    /// Call it before a reset, FLR, memory disable or power-down (digest item 12: revoke comes
    /// before reset).
    ///
    /// # Errors
    ///
    /// The first unmap or IOTLB flush error ([`DmaError::Iommu`]); the state is revoked
    /// regardless (never rolled back) and the affected IOVA stays quarantined.
    pub fn revoke(&mut self) -> Result<TransitionStats, DmaError> {
        self.revoked = true;
        self.move_all(ExportState::Revoked)
    }

    /// Re-enables every revoked export (including those created while memory decoding was
    /// off) and notifies their importers once ([`MoveEvent::Restored`]); importers map again.
    /// Call it only once the device decodes memory again.
    pub fn restore(&mut self) -> TransitionStats {
        self.revoked = false;
        // Restoring unmaps nothing, so it cannot fail.
        self.move_all(ExportState::Live).unwrap_or_default()
    }

    /// Permanent revoke, before the device goes away (unbind, removal): importers are notified
    /// once ([`MoveEvent::Gone`]), every mapping is removed and flushed, and every handle fails
    /// with [`DmaError::DeviceGone`] from now on. Releases the provider table.
    ///
    /// # Errors
    ///
    /// The first unmap or IOTLB flush error of an importer's mapping ([`DmaError::Iommu`]); the
    /// exporter is torn down regardless and the affected IOVAs stay quarantined.
    pub fn teardown(mut self) -> Result<TransitionStats, DmaError> {
        self.torn_down = true;
        self.move_all(ExportState::Gone)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            if let Err(e) = self.move_all(ExportState::Gone) {
                log::error!("dma: exporter teardown on drop: {e}");
            }
        }
    }
}

/// An exported set of MMIO ranges (a dma-buf). Cheap to clone; may outlive the device.
#[derive(Clone)]
pub struct ExportHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ExportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportHandle")
            .field("provider", &self.shared.provider)
            .field("size", &self.shared.size)
            .field("state", &self.state())
            .finish()
    }
}

impl ExportHandle {
    /// The provider the ranges belong to.
    pub fn provider(&self) -> &Provider {
        &self.shared.provider
    }

    /// The exported ranges (CPU physical), in order. For the exporter's bookkeeping; importers
    /// get DMA addresses from [`Attachment::map`].
    pub fn ranges(&self) -> &[(PhysAddr, u64)] {
        &self.shared.ranges
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.shared.size
    }

    /// Current state.
    pub fn state(&self) -> ExportState {
        self.shared.state.lock().status
    }

    /// Current generation (bumped by every state change).
    pub fn generation(&self) -> u64 {
        self.shared.state.lock().generation
    }

    /// Test-only: turns the safety step "unmap under the state lock" off (`true`) or on again
    /// for this export's importers (see `Shared::unlock_before_unmap`).
    #[cfg(test)]
    pub(crate) fn test_unlock_before_unmap(&self, on: bool) {
        self.shared
            .unlock_before_unmap
            .store(on, core::sync::atomic::Ordering::SeqCst);
    }

    /// Number of attachments.
    pub fn attachments(&self) -> usize {
        self.shared.state.lock().attachments.len()
    }

    /// Number of live mappings over all importers.
    pub fn live_mappings(&self) -> usize {
        self.shared
            .state
            .lock()
            .attachments
            .values()
            .map(|a| a.mappings.len())
            .sum()
    }

    /// Attaches an importer.
    ///
    /// # Errors
    ///
    /// [`DmaError::ImporterNotP2p`] if it does not accept
    /// peer-to-peer memory (checked first, like Linux), [`DmaError::Revoked`] while revoked,
    /// [`DmaError::DeviceGone`] after teardown.
    pub fn attach(&self, importer: Importer) -> Result<Attachment, DmaError> {
        if !importer.peer_to_peer {
            return Err(DmaError::ImporterNotP2p);
        }
        let mut st = self.shared.state.lock();
        status_error(st.status)?;
        let id = st.next_id;
        st.next_id += 1;
        st.attachments.insert(
            id,
            AttachEntry {
                dev: importer.dev,
                notify: Arc::from(importer.move_notify),
                mappings: BTreeMap::new(),
            },
        );
        Ok(Attachment {
            shared: self.shared.clone(),
            id,
            client: importer.id,
        })
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Exporter>();
    check::<ExportHandle>();
    check::<Attachment>();
    check::<P2pMapping>();
    check::<PeerMapping>();
}
