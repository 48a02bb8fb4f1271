//! Invalidation processing of [`FakeVtd`]: the queue (§6.5.2: fetch from IQH to IQT, wait
//! descriptors, IQE on a rejected descriptor) and the register-based CCMD/IOTLB path (§6.5.1),
//! both dropping the cached entries each request names.

use super::*;

impl FakeVtd {
    pub(super) fn process_invalidation(
        &self,
        s: &mut FakeState,
        via: Via,
        inv: Invalidation,
    ) -> bool {
        match inv {
            Invalidation::InterruptEntryGlobal | Invalidation::InterruptEntries { .. } => {
                if !Self::invalidate_interrupt_entries(s, inv) {
                    return false;
                }
            }
            // QEMU 7.2 accepts both PASID descriptor types in scalable mode and does nothing for
            // them (`vtd_process_inv_desc`: "just return true is enough so far"); without
            // scalable mode they are invalid (FSTS.IQE).
            Invalidation::PasidCacheGlobal
            | Invalidation::PasidCache { .. }
            | Invalidation::PasidIotlb { .. }
            | Invalidation::PasidIotlbPage { .. } => {
                if !s.caps.ecap.smts {
                    s.violations
                        .push(format!("{inv:?} without ECAP.SMTS (rejected)"));
                    return false;
                }
            }
            Invalidation::ContextGlobal => s.context_cache.clear(),
            Invalidation::ContextDevice { did, sid } => {
                if s.context_cache.get(&sid).is_some_and(|c| c.did() == did) {
                    s.context_cache.remove(&sid);
                }
            }
            Invalidation::IotlbGlobal => {
                s.iotlb.clear();
                if s.active_root.is_some() {
                    s.global_invalidated_since_root = true;
                }
            }
            Invalidation::IotlbDomain { did: d } => s.iotlb.retain(|_, t| t.did != d),
            Invalidation::IotlbPage {
                did: d, addr, am, ..
            } => {
                if am > s.caps.cap.mamv {
                    s.violations
                        .push(format!("PSI with AM {am} above MAMV {}", s.caps.cap.mamv));
                    return false;
                }
                let pages = 1u64 << am;
                let first = addr >> 12;
                if first % pages != 0 {
                    s.violations
                        .push(format!("PSI address {addr:#x} not aligned to 2^{am} pages"));
                    return false;
                }
                s.iotlb
                    .retain(|(_, p), t| !(t.did == d && *p >= first && *p < first + pages));
            }
        }
        s.events.push(HwEvent::Invalidation(via, inv));
        self.platform.record_invalidation(inv);
        true
    }

    fn process_queue(&self, s: &mut FakeState) {
        let entries = (TABLE_PAGE_SIZE / 16) as u64;
        let base = Iqa::from_bits(s.iqa).base();
        while s.iqh != s.iqt {
            if s.fetch_budget == Some(0) {
                return;
            }
            let index = u64::from(QueueIndex::from_bits(s.iqh).index());
            let at = base + index * 16;
            let (Some(lo), Some(hi)) = (
                self.platform.read_cpu_u64(at),
                self.platform.read_cpu_u64(at + 8),
            ) else {
                s.violations
                    .push(format!("queue descriptor at unknown page {at:#x}"));
                s.fsts |= FaultStatus::IQE.bits();
                return;
            };
            let d = Descriptor { lo, hi };
            let ok = match d.kind() {
                kind if Some(kind) == s.rejected_kind => false,
                desc::TYPE_WAIT => {
                    let wait = WaitDescLo::from_bits(lo);
                    if wait.sw() {
                        let addr = WaitDescHi::from_bits(hi).addr();
                        let data = wait.data();
                        if !self.platform.dma_write_u32(addr, data) {
                            s.violations
                                .push(format!("wait status address {addr:#x} is not memory"));
                        }
                        s.events.push(HwEvent::WaitStatus { addr, data });
                    }
                    if wait.interrupt() {
                        s.ics |= iq::ICS_IWC;
                    }
                    true
                }
                desc::TYPE_CONTEXT
                | desc::TYPE_IOTLB
                | desc::TYPE_PASID_CACHE
                | desc::TYPE_PASID_IOTLB => match d.decode() {
                    Some(inv) => self.process_invalidation(s, Via::Queue, inv),
                    None => false,
                },
                desc::TYPE_IEC if s.ir.iec_ignored => true,
                desc::TYPE_IEC => match d.decode() {
                    Some(inv) => self.process_invalidation(s, Via::Queue, inv),
                    None => false,
                },
                desc::TYPE_DEVICE_TLB => true,
                _ => false,
            };
            if !ok {
                s.fsts |= FaultStatus::IQE.bits();
                return;
            }
            let next = u16::try_from((index + 1) % entries).unwrap_or(0);
            s.iqh = QueueIndex::new().with_index(next).into_bits();
            if let Some(budget) = s.fetch_budget.as_mut() {
                *budget -= 1;
            }
        }
    }

    /// Fetches pending descriptors if the queue is on and able to.
    pub(super) fn resume_queue(&self, s: &mut FakeState) {
        if s.gsts & Global::QIE.bits() != 0
            && !s.unresponsive
            && s.fsts & FaultStatus::IQE.bits() == 0
        {
            self.process_queue(s);
        }
    }
    pub(super) fn register_invalidation(&self, s: &mut FakeState, what: &str) -> bool {
        if s.gsts & Global::QIE.bits() != 0 {
            s.violations.push(format!(
                "{what} written while queued invalidation is on (ignored)"
            ));
            return false;
        }
        !s.unresponsive
    }
}
