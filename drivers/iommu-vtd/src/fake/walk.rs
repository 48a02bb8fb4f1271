//! The DMA emulator of [`FakeVtd`]: root/context/second-level walks through the device view
//! with QEMU's checks (§3.6, §9), the context and IOTLB caches, and primary fault recording
//! (§7.1).
//!
//! As QEMU 7.2's `vtd_do_iommu_translate`: the IOTLB (keyed by source ID and page, tagged
//! with the DID) is looked up first, then the context cache, then the tables; a context entry
//! is checked for AW naming an advertised depth, then for its type: TT = 00 walks the
//! second-level table, TT = 10 (pass-through) passes the address untranslated when ECAP.PT
//! (and caches no translation), anything else (or TT = 10 without ECAP.PT) faults with
//! reason 3. Cached context entries and translations keep serving until invalidated.

use super::*;

impl FakeVtd {
    /// Emulates one DMA access by `sid` to `iova` through the unit: the output address, or the
    /// fault it raised (also recorded in the fault registers, as QEMU does).
    pub fn dma(&self, sid: RequesterId, iova: u64, write: bool) -> DmaResult {
        let mut s = self.state.lock();
        let result = self.translate(&mut s, sid, iova, write);
        if let Err(reason) = result {
            Self::record_fault(&mut s, sid, iova, write, reason);
        }
        result
    }

    pub(super) fn walk_read(&self, s: &FakeState, phys: u64) -> Option<u64> {
        if s.caps.ecap.coherent {
            self.platform.read_cpu_u64(phys)
        } else {
            self.platform.read_device_u64(phys)
        }
    }

    fn translate(&self, s: &mut FakeState, sid: RequesterId, iova: u64, write: bool) -> DmaResult {
        if s.gsts & Global::TE.bits() == 0 {
            return Ok(iova);
        }
        let perm_fault = if write {
            FaultReason::WriteNotPermitted
        } else {
            FaultReason::ReadNotPermitted
        };
        let page = iova >> 12;
        if let Some(t) = s.iotlb.get(&(sid, page)) {
            return match t.page {
                Some(out) if (write && t.write) || (!write && t.read) => Ok(out | (iova & 0xFFF)),
                _ => Err(perm_fault),
            };
        }
        let ctx = match s.context_cache.get(&sid) {
            Some(c) => *c,
            None => {
                let root = s.active_root.ok_or(FaultReason::RootTableAccess)?;
                let bus = u64::from(sid.bus());
                let root_lo = self
                    .walk_read(s, root + bus * 16)
                    .ok_or(FaultReason::RootTableAccess)?;
                let root_entry = RootEntryLo::from_bits(root_lo);
                if !root_entry.present() {
                    return Err(FaultReason::RootEntryNotPresent);
                }
                let ct = root_entry.ctp();
                let devfn = u64::from(sid.devfn());
                let lo = self
                    .walk_read(s, ct + devfn * 16)
                    .ok_or(FaultReason::ContextTableAccess)?;
                let hi = self
                    .walk_read(s, ct + devfn * 16 + 8)
                    .ok_or(FaultReason::ContextTableAccess)?;
                let c = ContextEntry { lo, hi };
                if !c.present() {
                    return Err(FaultReason::ContextEntryNotPresent);
                }
                let aw_ok = match c.aw() {
                    1 => s.caps.cap.sagaw & 0b10 != 0,
                    2 => s.caps.cap.sagaw & 0b100 != 0,
                    _ => false,
                };
                if !aw_ok {
                    return Err(FaultReason::InvalidContextEntry);
                }
                let type_ok = match c.translation_type() {
                    ContextEntry::TT_TRANSLATED => true,
                    ContextEntry::TT_PASS_THROUGH => s.caps.ecap.pass_through,
                    _ => false,
                };
                if !type_ok {
                    return Err(FaultReason::InvalidContextEntry);
                }
                s.context_cache.insert(sid, c);
                c
            }
        };
        let did = ctx.did();
        if ctx.translation_type() == ContextEntry::TT_PASS_THROUGH {
            // Untranslated, and no IOTLB entry (QEMU: "ignore IOTLB caching for PT devices").
            return Ok(iova);
        }
        let levels: u32 = if ctx.aw() == 1 { 3 } else { 4 };
        let width = 12 + 9 * levels;
        if iova >> width != 0 {
            return Err(FaultReason::AddressBeyondWidth);
        }
        let haw_mask = (1u64 << s.haw) - 1;
        let mut table = ctx.slptptr().as_u64();
        let (mut r, mut w) = (true, true);
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (level - 1);
            let index = (iova >> shift) & 0x1FF;
            let Some(entry) = self.walk_read(s, table + index * 8) else {
                s.violations
                    .push(format!("walk reached freed/unknown page {table:#x}"));
                return Err(FaultReason::PagingEntryAccess);
            };
            r &= entry & pte::READ != 0;
            w &= entry & pte::WRITE != 0;
            if entry & (pte::READ | pte::WRITE) == 0 {
                if s.caps.cap.caching_mode {
                    s.iotlb.insert(
                        (sid, page),
                        CachedTranslation {
                            did,
                            page: None,
                            read: false,
                            write: false,
                        },
                    );
                }
                return Err(perm_fault);
            }
            let addr = SlPte::from_bits(entry).addr();
            let leaf = level == 1 || entry & pte::PAGE_SIZE != 0;
            let snp_reserved = entry & pte::SNOOP != 0 && (!s.caps.ecap.snoop_control || !leaf);
            let ps_reserved = entry & pte::PAGE_SIZE != 0
                && match level {
                    2 => !s.caps.cap.superpage_2m(),
                    3 => !s.caps.cap.superpage_1g(),
                    _ => true,
                };
            if snp_reserved
                || ps_reserved
                || addr & !haw_mask != 0
                || (leaf && addr & ((1u64 << shift) - 1) != 0)
            {
                return Err(FaultReason::PagingEntryReserved);
            }
            if leaf {
                let out = (addr + (iova & ((1u64 << shift) - 1))) & !0xFFF;
                s.iotlb.insert(
                    (sid, page),
                    CachedTranslation {
                        did,
                        page: Some(out),
                        read: r,
                        write: w,
                    },
                );
                return if (write && w) || (!write && r) {
                    Ok(out | (iova & 0xFFF))
                } else {
                    Err(perm_fault)
                };
            }
            table = addr;
            level -= 1;
        }
    }

    pub(super) fn record_fault(
        s: &mut FakeState,
        rid: RequesterId,
        iova: u64,
        write: bool,
        reason: FaultReason,
    ) {
        let sid = rid.get();
        let lo = FrcdLo::new().with_fi(iova).into_bits();
        Self::record_fault_lo(s, sid, lo, write, reason);
    }

    /// Records a fault whose lower record half is `lo` (an address, or an interrupt index),
    /// then raises the fault event if the unit went from nothing pending to something pending
    /// (§7.3).
    pub(super) fn record_fault_lo(
        s: &mut FakeState,
        sid: u16,
        lo: u64,
        write: bool,
        reason: FaultReason,
    ) {
        let before = Self::fault_pending(s);
        Self::store_fault(s, sid, lo, write, reason);
        if !before && Self::fault_pending(s) {
            Self::raise_fault_event(s);
        }
    }

    fn store_fault(s: &mut FakeState, sid: u16, lo: u64, write: bool, reason: FaultReason) {
        let hi = FrcdHi::new()
            .with_f(true)
            .with_t(!write)
            .with_fr(reason.raw())
            .with_sid(sid);
        let record = |h: &u64| FrcdHi::from_bits(*h);
        if let Some(slot) = s.fault_records.iter().position(|(_, h)| !record(h).f()) {
            if s.fault_records
                .iter()
                .any(|(_, h)| record(h).f() && record(h).sid() == sid)
            {
                return;
            }
            s.fault_records[slot] = (lo, hi.into_bits());
        } else if !s.fault_records.iter().any(|(_, h)| record(h).sid() == sid) {
            s.fsts |= FaultStatus::PFO.bits();
        }
    }

    pub(super) fn fault_record_range(s: &FakeState) -> (usize, usize) {
        let start = s.caps.cap.fault_record_offset();
        (
            start,
            start + s.fault_records.len() * registers::FAULT_RECORD_SIZE,
        )
    }
}
