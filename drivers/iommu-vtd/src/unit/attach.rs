//! Domain IDs (§3.4.1, CAP.ND, CAP.CM) and isolation-group attachment: context-entry
//! programming and the invalidations it needs (§6.5.3.3, §6.1).

use super::*;

/// Allocator of domain IDs within CAP.ND.
#[derive(Debug)]
pub(super) struct DomainIds {
    bits: Vec<u64>,
    count: u32,
    first: u32,
}

impl DomainIds {
    pub(super) fn new(count: u32, reserve_zero: bool) -> Option<Self> {
        let words = (count as usize).div_ceil(u64::BITS as usize);
        let mut bits = Vec::new();
        bits.try_reserve_exact(words).ok()?;
        bits.resize(words, 0);
        Some(Self {
            bits,
            count,
            first: u32::from(reserve_zero),
        })
    }

    pub(super) fn alloc(&mut self) -> Option<u16> {
        let id = (self.first..self.count)
            .find(|&i| self.bits[(i / 64) as usize] & (1 << (i % 64)) == 0)?;
        self.bits[(id / 64) as usize] |= 1 << (id % 64);
        u16::try_from(id).ok()
    }

    pub(super) fn free(&mut self, id: u16) {
        if let Some(word) = self.bits.get_mut(id as usize / 64) {
            *word &= !(1 << (id % 64));
        }
    }
}

/// An isolation group as the caller computed it (the PCI crate's groups; this crate does not
/// depend on it): a key naming the group and the union of the requester IDs every member's DMA
/// can carry (own BDFs and DMA aliases). A one-device group is
/// `GroupRef { key, requester_ids: &[rid] }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    /// The group's key, unique per group on this unit.
    pub key: u32,
    /// Every requester ID the group's DMA can arrive with.
    pub requester_ids: &'a [RequesterId],
}

/// How a tracked group is owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupKind {
    /// Attached for host drivers: members refcount the entries (this module).
    Members,
    /// Owned as a whole by one domain (`unit::assign`).
    Assigned,
    /// Pass-through entries with the unit's pass-through DID (`unit::assign`).
    PassThrough,
    /// No present context entry; nothing may attach until it is assigned or released.
    Quarantined,
}

/// A tracked group: its requester IDs, its owner and, for [`GroupKind::Members`], the
/// members using it.
#[derive(Debug)]
pub(super) struct GroupAttachment {
    pub(super) key: u32,
    /// The owner's domain ID (each requester ID has a present context entry for it); for a
    /// quarantined group, the DID its entries last had (0 if it never had any).
    pub(super) did: u16,
    pub(super) rids: Vec<RequesterId>,
    pub(super) members: Vec<RequesterId>,
    /// The context cache and IOTLB invalidation after writing the entries completed; `false`
    /// after a failed one (for members: retried when the next member attaches; for the other
    /// kinds: the next operation on the group, or any domain's drop, runs a global
    /// invalidation first, since which cached copies are left is not recorded).
    pub(super) synced: bool,
    pub(super) kind: GroupKind,
}

impl GroupAttachment {
    /// Whether domain `did` owns the group (members attached, or assigned to it).
    pub(super) fn owned_by(&self, did: u16) -> bool {
        self.did == did && matches!(self.kind, GroupKind::Members | GroupKind::Assigned)
    }
}

pub(super) fn same_set(a: &[RequesterId], b: &[RequesterId]) -> bool {
    a.len() == b.len() && a.iter().all(|r| b.contains(r))
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Allocates a domain ID and an empty second-level table of depth `levels` (which must be
    /// advertised in SAGAW) with unlinked-table owner token `owner`, for
    /// [`VtdUnit::create_domain`].
    pub(crate) fn alloc_domain(
        &self,
        levels: PagingLevels,
        owner: u64,
    ) -> Result<(u16, SecondLevelTable), VtdError> {
        let table_cfg = TableConfig {
            levels,
            input_bits: levels.address_width().min(self.caps.cap.mgaw),
            output_bits: self.config.host_address_width,
            page_sizes: pagetable::page_sizes(
                self.caps.cap.superpage_2m(),
                self.caps.cap.superpage_1g(),
            ),
            snoop_control: self.caps.ecap.snoop_control,
            coherent: self.caps.ecap.coherent,
        };
        let did = self
            .tables
            .lock()
            .dids
            .alloc()
            .ok_or(VtdError::DomainIdsExhausted)?;
        match SecondLevelTable::with_owner(&self.platform, table_cfg, owner) {
            Ok(table) => Ok((did, table)),
            Err(_) => {
                self.tables.lock().dids.free(did);
                Err(VtdError::OutOfMemory)
            }
        }
    }

    /// Returns a domain ID (only when no context entry or cached translation uses it).
    pub(crate) fn release_did(&self, did: u16) {
        self.tables.lock().dids.free(did);
    }

    /// The context entry of `rid` as the hardware would read it (`None`: no context table).
    pub fn context_entry(&self, rid: RequesterId) -> Option<ContextEntry> {
        self.tables.lock().root.context(&self.platform, rid)
    }

    /// [`VtdUnit::context_entry`] without the tables lock, for a fault-event handler that may
    /// interrupt a holder of that lock on its own CPU. Sound because context-table pages are
    /// freed only with the unit; a read racing a writer can see an entry being rewritten
    /// (present bit clear, or the new upper half with the old lower half), so use it for
    /// reporting (which domain a fault belongs to), never to decide what to map.
    pub fn context_entry_unlocked(&self, rid: RequesterId) -> Option<ContextEntry> {
        RootTable::alias(self.root_phys, self.caps.ecap.coherent).context(&self.platform, rid)
    }

    /// Which domain ID holds the isolation group `key` (`None`: not attached, or
    /// quarantined); see [`VtdUnit::group_owner`] for how.
    pub fn group_domain(&self, key: u32) -> Option<u16> {
        self.tables
            .lock()
            .groups
            .iter()
            .find(|g| g.key == key && g.kind != GroupKind::Quarantined)
            .map(|g| g.did)
    }

    /// The keys of the groups attached (members) or assigned to domain `did`.
    pub(crate) fn groups_of(&self, did: u16) -> Vec<u32> {
        self.tables
            .lock()
            .groups
            .iter()
            .filter(|g| g.owned_by(did))
            .map(|g| g.key)
            .collect()
    }

    /// The requester IDs of the groups attached (members) or assigned to domain `did`.
    pub(crate) fn requester_ids_of(&self, did: u16) -> Vec<RequesterId> {
        self.tables
            .lock()
            .groups
            .iter()
            .filter(|g| g.owned_by(did))
            .flat_map(|g| g.rids.iter().copied())
            .collect()
    }

    /// Attaches member `device` of `group` to domain `did` (see [`Domain::attach_device`](crate::Domain::attach_device)).
    pub(crate) fn attach_group(
        &self,
        did: u16,
        table: &SecondLevelTable,
        group: GroupRef<'_>,
        device: RequesterId,
    ) -> Result<(), VtdError> {
        let key = group.key;
        let rids = group.requester_ids;
        if rids.is_empty() {
            return Err(VtdError::EmptyGroup { group: key });
        }
        for (i, &rid) in rids.iter().enumerate() {
            if rids[..i].contains(&rid) {
                return Err(VtdError::DuplicateRequesterId { rid });
            }
        }
        if !rids.contains(&device) {
            // A member's own requester ID is among the group's (its first DMA alias).
            return Err(VtdError::NotAMember { group: key, device });
        }
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        if let Some(g) = tables.groups.iter_mut().find(|g| g.key == key) {
            match g.kind {
                GroupKind::Members => {}
                GroupKind::Quarantined => return Err(VtdError::GroupQuarantined { group: key }),
                GroupKind::Assigned | GroupKind::PassThrough => {
                    return Err(VtdError::GroupAssigned {
                        group: key,
                        did: g.did,
                    })
                }
            }
            if g.did != did {
                return Err(VtdError::GroupAttachedElsewhere {
                    group: key,
                    did: g.did,
                });
            }
            if !same_set(&g.rids, rids) {
                return Err(VtdError::GroupRequesterIdsDiffer { group: key });
            }
            if g.members.contains(&device) {
                return Err(VtdError::AlreadyMember { group: key, device });
            }
            g.members
                .try_reserve(1)
                .map_err(|_| VtdError::OutOfMemory)?;
            if !g.synced {
                // The first member's invalidation failed: finish it before another member
                // relies on the entries.
                let requests = self.context_requests(did, &g.rids, self.cached_did(did))?;
                self.sync_context_writes()?;
                self.invalidate(&requests)?;
                g.synced = true;
            }
            g.members.push(device);
            return Ok(());
        }
        // A new group: every ID must be free (no other group, no present entry).
        let mut missing_buses: Vec<u8> = Vec::new();
        for &rid in rids {
            if let Some(other) = tables.groups.iter().find(|g| g.rids.contains(&rid)) {
                if other.kind == GroupKind::Quarantined {
                    return Err(VtdError::GroupQuarantined { group: other.key });
                }
                return Err(VtdError::AlreadyAttached {
                    rid,
                    did: other.did,
                });
            }
            match tables.root.context(&self.platform, rid) {
                Some(entry) if entry.present() => {
                    return Err(VtdError::AlreadyAttached {
                        rid,
                        did: entry.did(),
                    });
                }
                Some(_) => {}
                None => {
                    let bus = rid.bus();
                    if !missing_buses.contains(&bus) {
                        missing_buses
                            .try_reserve(1)
                            .map_err(|_| VtdError::OutOfMemory)?;
                        missing_buses.push(bus);
                    }
                }
            }
        }
        // Every heap reservation happens before the first table page is allocated, so a
        // failure after it can only be a page allocation, which frees what this call took.
        let oom = |_| VtdError::OutOfMemory;
        let requests = self.context_requests(did, rids, self.cached_did(did))?;
        let mut record = GroupAttachment {
            key,
            did,
            rids: Vec::new(),
            members: Vec::new(),
            synced: false,
            kind: GroupKind::Members,
        };
        record.rids.try_reserve_exact(rids.len()).map_err(oom)?;
        record.rids.extend_from_slice(rids);
        record.members.try_reserve(1).map_err(oom)?;
        record.members.push(device);
        tables.groups.try_reserve(1).map_err(oom)?;
        let mut pages: Vec<TablePage> = Vec::new();
        pages.try_reserve_exact(missing_buses.len()).map_err(oom)?;
        for _ in &missing_buses {
            match self.platform.alloc_table_page() {
                Some(p) => pages.push(p),
                None => {
                    for p in pages {
                        // SAFETY: just allocated, never linked.
                        unsafe { self.platform.free_table_page(p.phys) };
                    }
                    return Err(VtdError::OutOfMemory);
                }
            }
        }
        // Nothing can fail from here up to the invalidation.
        for (bus, page) in missing_buses.iter().zip(pages) {
            tables.root.link_context_table(&self.platform, *bus, page);
        }
        let entry = ContextEntry::translated(table.root(), table.levels(), did);
        for &rid in rids {
            tables.root.set_context(&self.platform, rid, entry);
        }
        // Tracked from now on, so a failed invalidation leaves something detach can clear.
        tables.groups.push(record);
        let synced = self
            .sync_context_writes()
            .and_then(|()| self.invalidate(&requests).map_err(VtdError::from));
        if let Some(g) = tables.groups.last_mut() {
            match synced {
                Ok(()) => g.synced = true,
                // The entries are written but maybe not yet visible: the group stays tracked
                // (owned by this domain, unsynced) with no member, so the caller, which gets
                // the error, holds nothing; any member's next attach (this device's retry
                // included) finishes the invalidation first, and the domain's drop clears it.
                Err(_) => g.members.clear(),
            }
        }
        synced
    }

    /// Removes member `device` of group `key` from domain `did` (see
    /// [`Domain::detach_device`](crate::Domain::detach_device)); the last member clears the group's context entries.
    pub(crate) fn detach_group_member(
        &self,
        did: u16,
        key: u32,
        device: RequesterId,
    ) -> Result<(), VtdError> {
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let Some(index) = tables
            .groups
            .iter()
            .position(|g| g.key == key && g.did == did && g.kind == GroupKind::Members)
        else {
            return Err(VtdError::GroupNotAttached { group: key });
        };
        let g = &mut tables.groups[index];
        let Some(member) = g.members.iter().position(|&m| m == device) else {
            return Err(VtdError::NotAMember { group: key, device });
        };
        if g.members.len() > 1 {
            // Another member still uses the entries: nothing changes in hardware.
            g.members.swap_remove(member);
            return Ok(());
        }
        let requests = self.context_requests(did, &g.rids, did)?;
        Self::clear_entries(
            &self.platform,
            &mut tables.root,
            did,
            &tables.groups[index].rids,
        );
        // Forget the group only once the entries are cleared *and* the invalidation completed.
        self.invalidate(&requests)?;
        tables.groups.swap_remove(index);
        Ok(())
    }

    /// Detaches every group of domain `did` (the domain is going away): groups attached for
    /// host drivers are forgotten, groups assigned to it become quarantined (their entries
    /// cleared, never "back to whatever was there"). When a group owned as a whole has an
    /// unsynced change (a failed invalidation whose leftovers are not recorded), the
    /// invalidation is global instead. On failure every group stays tracked (a context entry
    /// or a cached copy may still point at the domain's table), assigned ones as quarantined
    /// and unsynced.
    pub(crate) fn detach_domain(&self, did: u16) -> Result<(), VtdError> {
        let mut guard = self.tables.lock();
        let tables = &mut *guard;
        let mut rids: Vec<RequesterId> = Vec::new();
        for g in tables.groups.iter().filter(|g| g.owned_by(did)) {
            rids.try_reserve(g.rids.len())
                .map_err(|_| VtdError::OutOfMemory)?;
            rids.extend_from_slice(&g.rids);
        }
        let global = Self::needs_global(&tables.groups);
        let requests = if global {
            Self::global_requests()?
        } else {
            self.context_requests(did, &rids, did)?
        };
        Self::clear_entries(&self.platform, &mut tables.root, did, &rids);
        for g in tables.groups.iter_mut() {
            if g.did == did && g.kind == GroupKind::Assigned {
                g.kind = GroupKind::Quarantined;
                g.synced = false;
            }
        }
        self.invalidate(&requests)?;
        tables
            .groups
            .retain(|g| !(g.did == did && g.kind == GroupKind::Members));
        for g in tables.groups.iter_mut() {
            if global || (g.did == did && g.kind == GroupKind::Quarantined) {
                g.synced = true;
            }
        }
        Ok(())
    }

    /// Whether a group owned as a whole has an unsynced change: then which cached copies are
    /// left is not known, and only a global invalidation is sure to drop them.
    pub(super) fn needs_global(groups: &[GroupAttachment]) -> bool {
        groups
            .iter()
            .any(|g| g.kind != GroupKind::Members && !g.synced)
    }

    /// A global context-cache invalidation, then a global IOTLB invalidation (§6.5.3.3).
    pub(super) fn global_requests() -> Result<Vec<Invalidation>, VtdError> {
        let mut requests: Vec<Invalidation> = Vec::new();
        requests
            .try_reserve_exact(2)
            .map_err(|_| VtdError::OutOfMemory)?;
        requests.push(Invalidation::ContextGlobal);
        requests.push(Invalidation::IotlbGlobal);
        Ok(requests)
    }

    /// The domain ID a cached copy of a *not-present* entry may carry: 0 under caching mode.
    pub(super) fn cached_did(&self, did: u16) -> u16 {
        if self.caps.cap.caching_mode {
            0
        } else {
            did
        }
    }

    /// Device-selective context-cache invalidations of `rids` (tagged `cached_did`), then the
    /// domain's IOTLB.
    pub(super) fn context_requests(
        &self,
        did: u16,
        rids: &[RequesterId],
        cached_did: u16,
    ) -> Result<Vec<Invalidation>, VtdError> {
        let mut requests: Vec<Invalidation> = Vec::new();
        requests
            .try_reserve_exact(rids.len() + 1)
            .map_err(|_| VtdError::OutOfMemory)?;
        requests.extend(rids.iter().map(|&sid| Invalidation::ContextDevice {
            did: cached_did,
            sid,
        }));
        requests.push(Invalidation::IotlbDomain { did });
        Ok(requests)
    }

    /// Makes context-entry writes visible where the unit buffers writes (CAP.RWBF without
    /// caching mode, §6.8).
    pub(super) fn sync_context_writes(&self) -> Result<(), VtdError> {
        if self.caps.cap.rwbf && !self.caps.cap.caching_mode {
            self.write_gcmd(Global::WBF, true);
            self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))?;
        }
        Ok(())
    }

    /// Clears the context entries of `rids` that still belong to `did`. An entry that no
    /// longer does (cleared by an earlier detach whose invalidation failed, then attached
    /// elsewhere) is left alone; its cached copy tagged `did` is still invalidated by the
    /// caller.
    pub(super) fn clear_entries(
        platform: &P,
        root: &mut RootTable,
        did: u16,
        rids: &[RequesterId],
    ) {
        for &rid in rids {
            let ours = root
                .context(platform, rid)
                .is_some_and(|e| e.present() && e.did() == did);
            if ours {
                root.clear_context(platform, rid);
            }
        }
    }
}
