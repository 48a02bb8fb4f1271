//! Device assignment: a whole isolation group owned by one (guest) domain, pass-through,
//! quarantine, and the atomic switch of a group between owners (VT-d spec §9.3 context
//! entries, §6.5.3.3 guidance for invalidations after a context-entry change).
//!
//! A tracked group is in one of four states ([`GroupOwner`]): attached for host drivers
//! (members, `attach`), *assigned* (owned as a whole by one domain, no members),
//! *pass-through* (TT = 10) or *quarantined* (tracked, no present context entry, so its DMA
//! faults with reason 2 and nothing attaches to it until it is assigned again or released).
//!
//! Quarantine is "no present context entry" rather than an empty quarantine domain: it needs
//! no table or DID kept per unit, nothing can ever be mapped into it by mistake, and every
//! blocked DMA is recorded as a fault (reason 2) naming its source, which a domain without
//! mappings would report only per page and only for accesses inside its aperture.
//!
//! # Writing entries
//!
//! - Not present → present (an unattached or quarantined group): as `attach` does, upper half
//!   first and the lower half with P last, each written back when ECAP.C = 0, then
//!   device-selective context-cache invalidations (tagged DID 0 under caching mode, which may
//!   cache not-present entries, else the new DID) and the new domain's domain-selective IOTLB
//!   invalidation.
//! - Present → present (the *switch*: assigned to another domain, or between a domain and
//!   pass-through): for each requester ID, **one** 16-byte atomic store of the new entry
//!   (`lock cmpxchg16b`, [`RootTable::replace_context_atomic`]), written back with clflush
//!   when ECAP.C = 0; then, in one submission closed by its wait descriptor and completed
//!   before the call returns, a device-selective context-cache invalidation tagged with the
//!   **old** DID for every requester ID, then a domain-selective IOTLB invalidation of the
//!   **old** DID. This is §6.5.3.3's guidance for a modified present context entry in legacy
//!   mode (device-selective context-cache invalidation with the DID of the old entry, then
//!   domain-selective IOTLB invalidation of that DID; the device-TLB step does not apply: our
//!   entries never enable ATS, TT = 01). Between the store and the completed invalidation the
//!   hardware either still uses its cached copy of the old entry and the old domain's cached
//!   translations, or fetches the new entry: a DMA translates through the old or the new
//!   domain, never through a third and never faults (no instant has a not-present entry,
//!   which clearing P first would create). The 16-byte atomicity is this crate's rule, not a
//!   spec quote we verified for context entries: the hardware may fetch the entry at any
//!   time and two 8-byte stores would let it see the new upper half (DID, AW) with the old
//!   lower half (SLPTPTR). Where the CPU has no `CMPXCHG16B`, a switch is refused with
//!   [`VtdError::NoAtomicStore`] before anything is written.
//! - Present → not present (quarantine, and a domain's drop for its assigned groups): P
//!   cleared with one 8-byte store, the entry then zeroed, each written back; then
//!   device-selective context-cache invalidations tagged with the old DID and the old
//!   domain's IOTLB, completed before returning.
//!
//! If an invalidation fails the entries are already the new owner's: the group is recorded
//! as owned by the new owner but *unsynced* and the error returned (as `attach` does). Which
//! cached copies are left is not recorded, so the next operation that must be sure of them
//! (assigning the group to the same owner again, quarantining or releasing it, a domain's
//! drop) runs a global context-cache and IOTLB invalidation instead.
//!
//! # Pass-through
//!
//! TT = 10 needs ECAP.PT; without it [`VtdError::PassThroughUnsupported`] tells the caller
//! to build an identity domain instead. AW is the largest depth SAGAW advertises (§9.3:
//! "must be programmed to indicate the largest AGAW value supported by hardware"; QEMU
//! checks that AW names an advertised depth, reason 3 otherwise). Every pass-through entry
//! of a unit carries one DID, allocated on first use and never released: cached copies are
//! tagged with it, and no translation is cached under it (QEMU caches none for TT = 10).

use super::*;

use super::attach::same_set;

/// What owns a tracked group ([`VtdUnit::group_owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOwner {
    /// Attached for host drivers ([`crate::Domain::attach_device`]) to domain `did`.
    Members {
        /// The domain's ID.
        did: u16,
    },
    /// Assigned as a whole to domain `did` ([`VtdUnit::assign_group`]).
    Assigned {
        /// The domain's ID.
        did: u16,
    },
    /// Pass-through ([`VtdUnit::assign_group_pass_through`]), entries tagged `did`.
    PassThrough {
        /// The unit's pass-through domain ID.
        did: u16,
    },
    /// Blocked: no present context entry ([`VtdUnit::quarantine_group`]).
    Quarantined,
}

/// What an assignment, switch or quarantine did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssignStats {
    /// Context entries written (made present, replaced or cleared).
    pub entries_written: u32,
    /// Of those, entries replaced with one 16-byte atomic store.
    pub atomic_stores: u32,
    /// Invalidation requests submitted (context-cache and IOTLB; the wait not counted).
    pub invalidations: u32,
    /// The DID of the previous present entries (switch or quarantine), if there were any.
    pub from_did: Option<u16>,
}

/// The entry an assignment writes.
#[derive(Clone, Copy)]
enum Target {
    /// A guest domain's translated entry.
    Domain(ContextEntry),
    /// Pass-through with this AW; the DID is the unit's pass-through DID.
    PassThrough(PagingLevels),
}

impl Target {
    fn kind(self) -> GroupKind {
        match self {
            Self::Domain(_) => GroupKind::Assigned,
            Self::PassThrough(_) => GroupKind::PassThrough,
        }
    }
}

/// How the entries change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Not present → present.
    Write,
    /// Present (DID `from`) → present.
    Switch { from: u16 },
}

/// Refuses an empty group or one naming a requester ID twice.
fn check_group(group: GroupRef<'_>) -> Result<(), VtdError> {
    let rids = group.requester_ids;
    if rids.is_empty() {
        return Err(VtdError::EmptyGroup { group: group.key });
    }
    for (i, &rid) in rids.iter().enumerate() {
        if rids[..i].contains(&rid) {
            return Err(VtdError::DuplicateRequesterId { rid });
        }
    }
    Ok(())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Pass-through for a trusted group (TT = 10, §9.3): every requester ID of the group gets
    /// a present pass-through entry (AW = the largest depth SAGAW advertises, the unit's
    /// pass-through DID, allocated by the first call and shared by every pass-through group
    /// of the unit); DMA then reaches physical addresses untranslated. Same "from" states,
    /// sequences and refusals as [`VtdUnit::assign_group`].
    ///
    /// # Errors
    ///
    /// [`VtdError::PassThroughUnsupported`] when ECAP.PT = 0 (the caller then builds an
    /// identity domain); [`VtdError::Unsupported`] when SAGAW's largest depth is one this
    /// crate cannot encode (5-level); [`VtdError::DomainIdsExhausted`] for the first call
    /// when no domain ID is free; otherwise as [`VtdUnit::assign_group`]. Nothing changes
    /// on any refusal.
    pub fn assign_group_pass_through(&self, group: GroupRef<'_>) -> Result<AssignStats, VtdError> {
        if !self.caps.ecap.pass_through {
            return Err(VtdError::PassThroughUnsupported);
        }
        if self.caps.cap.sagaw & 0b1000 != 0 {
            return Err(VtdError::Unsupported {
                reason: "pass-through needs AW = 5-level (the largest SAGAW), not encodable here",
            });
        }
        let levels = [PagingLevels::Four, PagingLevels::Three]
            .into_iter()
            .find(|&l| self.caps.cap.supports_levels(l))
            .ok_or(VtdError::Unsupported {
                reason: "SAGAW advertises neither 3- nor 4-level tables",
            })?;
        self.assign_entries(group, Target::PassThrough(levels))
    }

    /// [`VtdUnit::assign_group`] once the domain's table is known (its lock held).
    pub(crate) fn assign_translated(
        &self,
        group: GroupRef<'_>,
        did: u16,
        table: PhysAddr,
        levels: PagingLevels,
    ) -> Result<AssignStats, VtdError> {
        self.assign_entries(
            group,
            Target::Domain(ContextEntry::translated(table, levels, did)),
        )
    }

    fn assign_entries(&self, group: GroupRef<'_>, target: Target) -> Result<AssignStats, VtdError> {
        check_group(group)?;
        let key = group.key;
        let rids = group.requester_ids;
        let oom = |_| VtdError::OutOfMemory;
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let kind = target.kind();
        let target_did = match target {
            Target::Domain(entry) => Some(entry.did()),
            Target::PassThrough(_) => tables.pass_through_did,
        };
        let global = Self::needs_global(&tables.groups);
        let index = tables.groups.iter().position(|g| g.key == key);
        let change = match index {
            Some(i) => {
                let g = &tables.groups[i];
                if !same_set(&g.rids, rids) {
                    return Err(VtdError::GroupRequesterIdsDiffer { group: key });
                }
                match g.kind {
                    GroupKind::Members => {
                        return Err(VtdError::GroupInUse {
                            group: key,
                            did: g.did,
                            members: count(g.members.len()),
                        })
                    }
                    k if k == kind && Some(g.did) == target_did => {
                        if g.synced {
                            return Err(VtdError::AlreadyAssigned {
                                group: key,
                                did: g.did,
                            });
                        }
                        // A retry after a failed invalidation: finish it.
                        let requests = Self::global_requests()?;
                        self.invalidate(&requests)?;
                        for g in tables.groups.iter_mut() {
                            if g.kind != GroupKind::Members {
                                g.synced = true;
                            }
                        }
                        return Ok(AssignStats {
                            invalidations: count(requests.len()),
                            ..AssignStats::default()
                        });
                    }
                    GroupKind::Assigned | GroupKind::PassThrough => Change::Switch { from: g.did },
                    GroupKind::Quarantined => Change::Write,
                }
            }
            None => {
                // A new group: every ID must be free (no other group, no present entry).
                self.check_rids_free(tables, rids, true)?;
                Change::Write
            }
        };
        if let Change::Switch { .. } = change {
            if !tables.root.atomic_store_available(&self.platform) {
                return Err(VtdError::NoAtomicStore);
            }
        }
        // Buses without a context table (a group never attached, or quarantined while
        // unattached).
        let mut missing_buses: Vec<u8> = Vec::new();
        if change == Change::Write {
            for &rid in rids {
                let bus = rid.bus();
                if tables.root.context_table(&self.platform, bus).is_none()
                    && !missing_buses.contains(&bus)
                {
                    missing_buses.try_reserve(1).map_err(oom)?;
                    missing_buses.push(bus);
                }
            }
        }
        // Bookkeeping before any allocation the hardware could see.
        let mut record = None;
        if index.is_none() {
            let mut new_rids = Vec::new();
            new_rids.try_reserve_exact(rids.len()).map_err(oom)?;
            new_rids.extend_from_slice(rids);
            tables.groups.try_reserve(1).map_err(oom)?;
            record = Some(new_rids);
        }
        // The pass-through DID, on first use.
        let mut fresh_did = None;
        let did = match target_did {
            Some(did) => did,
            None => {
                let did = tables.dids.alloc().ok_or(VtdError::DomainIdsExhausted)?;
                fresh_did = Some(did);
                did
            }
        };
        let entry = match target {
            Target::Domain(entry) => entry,
            Target::PassThrough(levels) => ContextEntry::pass_through(levels, did),
        };
        let requests = if global {
            Self::global_requests()
        } else {
            match change {
                Change::Write => self.context_requests(did, rids, self.cached_did(did)),
                Change::Switch { from } => self.context_requests(from, rids, from),
            }
        };
        let requests = match requests {
            Ok(r) => r,
            Err(e) => {
                if let Some(d) = fresh_did {
                    tables.dids.free(d);
                }
                return Err(e);
            }
        };
        let mut pages: Vec<TablePage> = Vec::new();
        let reserved = pages.try_reserve_exact(missing_buses.len()).is_ok();
        let mut allocated = reserved;
        if reserved {
            for _ in &missing_buses {
                match self.platform.alloc_table_page() {
                    Some(p) => pages.push(p),
                    None => {
                        allocated = false;
                        break;
                    }
                }
            }
        }
        if !allocated {
            for p in pages {
                // SAFETY: just allocated, never linked.
                unsafe { self.platform.free_table_page(p.phys) };
            }
            if let Some(d) = fresh_did {
                tables.dids.free(d);
            }
            return Err(VtdError::OutOfMemory);
        }
        // Nothing can fail from here up to the invalidation.
        if fresh_did.is_some() {
            tables.pass_through_did = fresh_did;
        }
        for (bus, page) in missing_buses.iter().zip(pages) {
            tables.root.link_context_table(&self.platform, *bus, page);
        }
        let mut stats = AssignStats {
            entries_written: count(rids.len()),
            invalidations: count(requests.len()),
            ..AssignStats::default()
        };
        match change {
            Change::Write => {
                for &rid in rids {
                    tables.root.set_context(&self.platform, rid, entry);
                }
            }
            Change::Switch { from } => {
                stats.from_did = Some(from);
                for &rid in rids {
                    if tables
                        .root
                        .replace_context_atomic(&self.platform, rid, entry)
                    {
                        stats.atomic_stores += 1;
                    } else {
                        // Unreachable (the entry is present, so its table exists, and the
                        // store was available above); never leave the old entry behind.
                        log::warn!(
                            "VT-d: atomic context store failed for {rid}; writing it in halves"
                        );
                        tables.root.set_context(&self.platform, rid, entry);
                    }
                }
            }
        }
        // Tracked as the new owner's from now on, so a failed invalidation leaves the group
        // owned (unsynced) by whoever the entries name.
        let slot = match (index, record) {
            (Some(i), _) => i,
            (None, Some(new_rids)) => {
                tables.groups.push(GroupAttachment {
                    key,
                    did,
                    rids: new_rids,
                    members: Vec::new(),
                    synced: false,
                    kind,
                });
                tables.groups.len() - 1
            }
            (None, None) => return Err(VtdError::OutOfMemory),
        };
        if let Some(g) = tables.groups.get_mut(slot) {
            g.did = did;
            g.kind = kind;
            g.synced = false;
        }
        self.finish(tables, &requests, global)?;
        Ok(stats)
    }

    /// Makes the writes visible and runs `requests`; on success marks the changed group (the
    /// unsynced ones; with `global`, every group owned as a whole) synced.
    fn finish(
        &self,
        tables: &mut Tables,
        requests: &[Invalidation],
        global: bool,
    ) -> Result<(), VtdError> {
        self.sync_context_writes()?;
        self.invalidate(requests)?;
        for g in tables.groups.iter_mut() {
            if g.kind != GroupKind::Members && (global || !g.synced) {
                g.synced = true;
            }
        }
        Ok(())
    }

    /// Blocks the group: every context entry not present (P cleared with one store, the
    /// entry then zeroed, each written back), the context cache (tagged with the old DID) and
    /// the old owner's IOTLB invalidated before this returns. The group stays tracked as
    /// quarantined, so nothing can attach host drivers to it
    /// ([`crate::Domain::attach_device`] refuses with [`VtdError::GroupQuarantined`]) until it
    /// is assigned again or released ([`VtdUnit::release_quarantine`]).
    ///
    /// From assigned or pass-through; from unattached the group becomes tracked with nothing
    /// to clear; an already quarantined group is left as it is (after finishing a failed
    /// invalidation).
    ///
    /// # Errors
    ///
    /// Nothing changes on: [`VtdError::GroupInUse`] (host drivers hold members),
    /// [`VtdError::EmptyGroup`], [`VtdError::DuplicateRequesterId`],
    /// [`VtdError::GroupRequesterIdsDiffer`], [`VtdError::AlreadyAttached`] (an ID of an
    /// untracked group is in another group or has a present entry),
    /// [`VtdError::OutOfMemory`]. After the entries were cleared: [`VtdError::Timeout`] or
    /// [`VtdError::Invalidation`]; the group is then quarantined but unsynced (see the module
    /// docs).
    pub fn quarantine_group(&self, group: GroupRef<'_>) -> Result<AssignStats, VtdError> {
        check_group(group)?;
        let key = group.key;
        let rids = group.requester_ids;
        let oom = |_| VtdError::OutOfMemory;
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let global = Self::needs_global(&tables.groups);
        let Some(index) = tables.groups.iter().position(|g| g.key == key) else {
            self.check_rids_free(tables, rids, false)?;
            let mut new_rids = Vec::new();
            new_rids.try_reserve_exact(rids.len()).map_err(oom)?;
            new_rids.extend_from_slice(rids);
            tables.groups.try_reserve(1).map_err(oom)?;
            tables.groups.push(GroupAttachment {
                key,
                did: 0,
                rids: new_rids,
                members: Vec::new(),
                synced: true,
                kind: GroupKind::Quarantined,
            });
            return Ok(AssignStats::default());
        };
        let g = &tables.groups[index];
        if !same_set(&g.rids, rids) {
            return Err(VtdError::GroupRequesterIdsDiffer { group: key });
        }
        let from = g.did;
        match g.kind {
            GroupKind::Members => {
                return Err(VtdError::GroupInUse {
                    group: key,
                    did: g.did,
                    members: count(g.members.len()),
                })
            }
            GroupKind::Quarantined if g.synced => return Ok(AssignStats::default()),
            GroupKind::Quarantined => {
                let requests = Self::global_requests()?;
                self.finish(tables, &requests, true)?;
                return Ok(AssignStats {
                    invalidations: count(requests.len()),
                    ..AssignStats::default()
                });
            }
            GroupKind::Assigned | GroupKind::PassThrough => {}
        }
        let requests = if global {
            Self::global_requests()?
        } else {
            self.context_requests(from, rids, from)?
        };
        Self::clear_entries(&self.platform, &mut tables.root, from, rids);
        if let Some(g) = tables.groups.get_mut(index) {
            g.kind = GroupKind::Quarantined;
            g.synced = false;
        }
        self.finish(tables, &requests, global)?;
        Ok(AssignStats {
            entries_written: count(rids.len()),
            atomic_stores: 0,
            invalidations: count(requests.len()),
            from_did: Some(from),
        })
    }

    /// Stops tracking a quarantined group (its entries are already not present), so host
    /// drivers may attach to it again. A quarantine whose invalidation failed is finished
    /// first (global invalidation).
    ///
    /// # Errors
    ///
    /// [`VtdError::GroupNotQuarantined`] when the group is untracked or owned (nothing
    /// changes); [`VtdError::Invalidation`] when finishing a failed quarantine fails again
    /// (the group stays quarantined).
    pub fn release_quarantine(&self, key: u32) -> Result<(), VtdError> {
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let Some(index) = tables
            .groups
            .iter()
            .position(|g| g.key == key && g.kind == GroupKind::Quarantined)
        else {
            return Err(VtdError::GroupNotQuarantined { group: key });
        };
        if !tables.groups[index].synced {
            let requests = Self::global_requests()?;
            self.finish(tables, &requests, true)?;
        }
        tables.groups.swap_remove(index);
        Ok(())
    }

    /// What owns group `key` (`None`: untracked).
    pub fn group_owner(&self, key: u32) -> Option<GroupOwner> {
        let tables = self.tables.lock();
        let g = tables.groups.iter().find(|g| g.key == key)?;
        Some(match g.kind {
            GroupKind::Members => GroupOwner::Members { did: g.did },
            GroupKind::Assigned => GroupOwner::Assigned { did: g.did },
            GroupKind::PassThrough => GroupOwner::PassThrough { did: g.did },
            GroupKind::Quarantined => GroupOwner::Quarantined,
        })
    }

    /// The unit's pass-through domain ID, once a pass-through group was assigned.
    pub fn pass_through_did(&self) -> Option<u16> {
        self.tables.lock().pass_through_did
    }
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Refuses `rids` for a new group when one is in a tracked group or has a present context
    /// entry ([`VtdError::AlreadyAttached`]; [`VtdError::GroupQuarantined`] instead for a
    /// quarantined group when `name_quarantine`).
    fn check_rids_free(
        &self,
        tables: &Tables,
        rids: &[RequesterId],
        name_quarantine: bool,
    ) -> Result<(), VtdError> {
        for &rid in rids {
            if let Some(other) = tables.groups.iter().find(|g| g.rids.contains(&rid)) {
                if name_quarantine && other.kind == GroupKind::Quarantined {
                    return Err(VtdError::GroupQuarantined { group: other.key });
                }
                return Err(VtdError::AlreadyAttached {
                    rid,
                    did: other.did,
                });
            }
            if let Some(entry) = tables.root.context(&self.platform, rid) {
                if entry.present() {
                    return Err(VtdError::AlreadyAttached {
                        rid,
                        did: entry.did(),
                    });
                }
            }
        }
        Ok(())
    }
}
