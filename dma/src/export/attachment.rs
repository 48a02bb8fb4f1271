//! An importer's side of an export (SPEC.md "PCI peer-to-peer (P2P)", revocable export
//! handles): the [`Attachment`] an importer holds and the [`P2pMapping`]s it makes through it.
//! Both reach the export's shared state (`Shared`, in the parent module), so a revoke can
//! remove their mappings.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use super::*;

/// One importer attached to an export. Detaches on drop (its mappings are unmapped first).
#[must_use = "dropping an Attachment detaches it at once"]
pub struct Attachment {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) client: DeviceId,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("id", &self.id)
            .field("client", &self.client)
            .field("provider", &self.shared.provider)
            .finish()
    }
}

impl Attachment {
    /// The export's provider.
    pub fn provider(&self) -> &Provider {
        &self.shared.provider
    }

    /// Total bytes of the export.
    pub fn size(&self) -> u64 {
        self.shared.size
    }

    /// How this importer reaches the provider, as the classifier says now.
    pub fn map_type(&self) -> MapType {
        self.shared
            .classifier
            .map_type(&self.shared.provider, self.client)
    }

    /// Number of this attachment's live mappings.
    pub fn live_mappings(&self) -> usize {
        self.shared
            .state
            .lock()
            .attachments
            .get(&self.id)
            .map_or(0, |a| a.mappings.len())
    }

    /// Maps the whole export for the importer's device ([`DmaDevice::map_peer`] with the
    /// classifier's map type): DMA segments only.
    ///
    /// # Errors
    ///
    /// [`DmaError::Revoked`] while revoked, [`DmaError::DeviceGone`] after teardown,
    /// [`DmaError::P2pNotSupported`] when the classifier says NOT_SUPPORTED, and every error of
    /// `map_peer` (nothing stays mapped on failure).
    pub fn map(&self, dir: Direction) -> Result<P2pMapping, DmaError> {
        let shared = &self.shared;
        // The classifier takes its own locks; ask it before taking ours.
        let map_type = shared.classifier.map_type(&shared.provider, self.client);
        let mut st = shared.state.lock();
        status_error(st.status)?;
        let id = st.next_id;
        let generation = st.generation;
        let entry = st
            .attachments
            .get_mut(&self.id)
            .ok_or(DmaError::DeviceGone)?;
        let m = entry
            .dev
            .map_peer(&shared.provider, map_type, &shared.ranges, dir)?;
        let segments = m.segments().to_vec();
        entry.mappings.insert(id, m);
        st.next_id += 1;
        Ok(P2pMapping {
            shared: shared.clone(),
            attachment: self.id,
            id,
            generation,
            map_type,
            segments,
        })
    }

    /// Detaches now, unmapping this importer's mappings first, and reports an unmap failure.
    /// (Dropping the attachment does the same and logs the failure.)
    ///
    /// # Errors
    ///
    /// The first unmap or IOTLB flush error of this importer's mappings ([`DmaError::Iommu`]); the
    /// importer is detached regardless and the affected IOVAs stay quarantined.
    pub fn detach(self) -> Result<(), DmaError> {
        // `Drop` runs afterwards and finds nothing left to do.
        self.detach_inner()
    }

    fn detach_inner(&self) -> Result<(), DmaError> {
        let (entry, result) = {
            let mut st = self.shared.state.lock();
            let Some(mut entry) = st.attachments.remove(&self.id) else {
                return Ok(());
            };
            // Unmapped under the lock (module docs); the callback is dropped after it.
            let result = unmap_all(core::iter::once(&mut entry)).1;
            (entry, result)
        };
        drop(entry);
        result
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            log::error!("dma: detach on drop: unmap failed: {e}");
        }
    }
}

/// One mapping of an export for one importer: the DMA segments to program. Unmapped on drop.
///
/// The page-table state behind it belongs to the export, so a revoke can remove it; this handle
/// then becomes *stale* (its generation is older than the export's) and unmapping it does
/// nothing.
#[must_use = "dropping a P2pMapping unmaps it at once"]
pub struct P2pMapping {
    pub(super) shared: Arc<Shared>,
    pub(super) attachment: u64,
    pub(super) id: u64,
    pub(super) generation: u64,
    pub(super) map_type: MapType,
    pub(super) segments: Vec<DmaSegment>,
}

impl fmt::Debug for P2pMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2pMapping")
            .field("map_type", &self.map_type)
            .field("generation", &self.generation)
            .field("segments", &self.segments)
            .finish()
    }
}

impl P2pMapping {
    /// The device addresses to program, in export order (lengths ≤ `u32::MAX` rounded down to
    /// a page; one contiguous span under an IOMMU). Meaningless once stale.
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }

    /// How the importer reaches the memory.
    pub fn map_type(&self) -> MapType {
        self.map_type
    }

    /// The export generation this mapping was made in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the export changed state (revoke, teardown) since this mapping was made: the
    /// mapping is gone, or being removed by the revoke in progress (inside a move-notify
    /// callback). Unmapping a stale mapping is a harmless no-op.
    pub fn is_stale(&self) -> bool {
        self.shared.state.lock().generation != self.generation
    }

    /// Unmaps now (strict: the IOTLB flush completed when this returns `Ok`). A mapping a revoke
    /// already removed unmaps to `Ok(())`.
    ///
    /// # Errors
    ///
    /// The unmap or IOTLB flush error ([`DmaError::Iommu`]); the IOVA is then leaked, never reused.
    pub fn unmap(mut self) -> Result<(), DmaError> {
        self.unmap_inner()
    }

    fn unmap_inner(&mut self) -> Result<(), DmaError> {
        let mut st = self.shared.state.lock();
        let taken = st
            .attachments
            .get_mut(&self.attachment)
            .and_then(|a| a.mappings.remove(&self.id));
        #[cfg(test)]
        if self
            .shared
            .unlock_before_unmap
            .load(core::sync::atomic::Ordering::SeqCst)
        {
            // The broken order (test-only): a revoke may run in this window, find nothing to
            // unmap and return while this mapping is still in the page table.
            drop(st);
            std::thread::yield_now();
            return taken.map_or(Ok(()), PeerMapping::unmap);
        }
        // Unmapped while the lock is held: see the module documentation.
        match taken {
            Some(m) => m.unmap(),
            None => Ok(()),
        }
    }
}

impl Drop for P2pMapping {
    fn drop(&mut self) {
        if let Err(e) = self.unmap_inner() {
            log::error!("dma: P2P unmap on drop failed: {e}");
        }
    }
}
