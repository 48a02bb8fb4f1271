//! The interrupt-remapping part of [`FakeVtd`]: IRTA/SIRTP/IRE/CFI through GCMD/GSTS, the
//! interrupt entry cache and its invalidation (§6.5.2.7), the fault event (§7.3: FECTL,
//! FEDATA, FEADDR, FEUADDR) and an interrupt emulator ([`FakeVtd::interrupt`]) applying §5.1
//! as hardware does: handle and subhandle, table size, present, reserved bits, source-id
//! validation (SVT/SQ/SID, §5.1.4), FPD. Unlike QEMU 7.2 (and like QEMU 10) it records
//! interrupt-remapping faults (reasons 20h-26h) in the fault recording registers.
//!
//! The interrupt entry cache holds every present entry an interrupt used until an
//! interrupt-entry-cache invalidation drops it. An interrupt served from a cached entry that no
//! longer matches the table in memory (changed after caching, no invalidation since) is
//! recorded in [`FakeVtd::violations`]: how host tests prove "invalidated after every change,
//! before use".

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use pci_address::RequesterId;

use super::{FakeState, FakeVtd, HwEvent};
use crate::fault::FaultReason;
use crate::invalidation::Invalidation;
use crate::registers::{
    self, irte, Fectl, FrcdLoIr, Global, IrHandle, Irta, IrteHi, IrteLo, MsiAddress64,
    MsiAddressCompat, MsiAddressRemappable, MsiDataCompat, MsiDataRemappable, SidBusRange,
    XApicDst, MSI_WINDOW,
};

/// What became of one emulated interrupt request ([`FakeVtd::interrupt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptResult {
    /// The interrupt reached the CPU side.
    Delivered {
        /// The vector delivered.
        vector: u8,
        /// The destination APIC ID (8-bit xAPIC or 32-bit x2APIC).
        destination: u32,
        /// Level-triggered.
        level: bool,
        /// The IRTE it went through (`None`: not remapped, passed through in compatibility
        /// format).
        index: Option<u16>,
    },
    /// The unit blocked it (and recorded the fault unless the entry has FPD).
    Blocked {
        /// Why.
        reason: FaultReason,
        /// The interrupt index computed, if any.
        index: Option<u16>,
    },
    /// The write was not to the interrupt window (0xFEEx_xxxx): a DMA, not an interrupt.
    NotAnInterrupt,
}

/// The interrupt-remapping state of the fake unit.
#[derive(Debug, Default)]
pub(super) struct IrState {
    /// The IRTA register.
    pub(super) irta: u64,
    /// The IRTA value the last SIRTP latched.
    latched: Option<u64>,
    /// A global interrupt-entry-cache invalidation was processed since the last SIRTP.
    global_iec_since_sirtp: bool,
    /// Cached IRTEs by index (raw low, high).
    cache: BTreeMap<u16, (u64, u64)>,
    /// Accept interrupt-entry-cache invalidations without performing them (negative control).
    pub(super) iec_ignored: bool,
}

impl FakeVtd {
    /// Emulates one interrupt request: a DMA write of `data` to `address` by `sid`, through
    /// the unit (see the module docs). Compatibility format passes when remapping is off or
    /// GSTS.CFI is set and is blocked otherwise; remappable format goes through the latched
    /// table and the interrupt entry cache.
    pub fn interrupt(&self, sid: RequesterId, address: u64, data: u32) -> InterruptResult {
        let mut s = self.state.lock();
        let low = MsiAddress64::from_bits(address).lo();
        let remap = MsiAddressRemappable::from_bits(low);
        if remap.window() != MSI_WINDOW {
            return InterruptResult::NotAnInterrupt;
        }
        let ire = s.gsts & Global::IRE.bits() != 0;
        if !ire || (!remap.remappable() && s.gsts & Global::CFI.bits() != 0) {
            let a = MsiAddressCompat::from_bits(low);
            let d = MsiDataCompat::from_bits(data);
            return InterruptResult::Delivered {
                vector: d.vector(),
                destination: u32::from(a.dest()),
                level: d.trigger_level(),
                index: None,
            };
        }
        if !remap.remappable() {
            return Self::block(
                &mut s,
                sid,
                None,
                false,
                FaultReason::CompatibilityInterruptBlocked,
            );
        }
        let handle = IrHandle::new()
            .with_low(remap.handle_14_0())
            .with_bit_15(remap.handle_15())
            .into_bits();
        let d = MsiDataRemappable::from_bits(data);
        let mut index = u32::from(handle);
        if remap.shv() {
            if d.reserved() != 0 {
                let at = u16::try_from(index).ok();
                return Self::block(
                    &mut s,
                    sid,
                    at,
                    false,
                    FaultReason::InterruptRequestReserved,
                );
            }
            index += u32::from(d.subhandle());
        }
        let Some(table) = s.ir.latched.map(Irta::from_bits) else {
            return Self::block(&mut s, sid, None, false, FaultReason::IrtAccess);
        };
        let entries = 2u32 << table.s();
        let at = u16::try_from(index).ok();
        let Some(index) = at.filter(|_| index < entries) else {
            return Self::block(
                &mut s,
                sid,
                at,
                false,
                FaultReason::InterruptIndexBeyondTable,
            );
        };
        let phys = table.base() + u64::from(index) * irte::SIZE as u64;
        let memory = match (self.walk_read(&s, phys), self.walk_read(&s, phys + 8)) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => return Self::block(&mut s, sid, Some(index), false, FaultReason::IrtAccess),
        };
        let (lo, hi) = match s.ir.cache.get(&index).copied() {
            Some(cached) => {
                if cached != memory {
                    s.violations.push(format!(
                        "IRTE {index} used from the interrupt entry cache after it changed in \
                         memory ({cached:x?} cached, {memory:x?} in memory): no \
                         interrupt-entry-cache invalidation since the change"
                    ));
                }
                cached
            }
            None => memory,
        };
        let l = IrteLo::from_bits(lo);
        let h = IrteHi::from_bits(hi);
        if !l.p() {
            return Self::block(
                &mut s,
                sid,
                Some(index),
                l.fpd(),
                FaultReason::IrteNotPresent,
            );
        }
        // A present entry is cached on use (hardware may keep it until invalidated).
        s.ir.cache.insert(index, (lo, hi));
        let eime = table.eime();
        let xapic = XApicDst::from_bits(l.dst());
        let reserved = l.im()
            || l.reserved_14_12() != 0
            || l.reserved_31_24() != 0
            || h.reserved() != 0
            || (!eime && (xapic.reserved_lo() != 0 || xapic.reserved_hi() != 0));
        if reserved {
            return Self::block(&mut s, sid, Some(index), l.fpd(), FaultReason::IrteReserved);
        }
        let source_ok = match h.svt() {
            irte::SVT_NONE => true,
            irte::SVT_REQUESTER => {
                let ignored = irte::SQ_IGNORED_BITS[usize::from(h.sq()) % 4];
                (sid.get() ^ h.sid()) & !ignored == 0
            }
            irte::SVT_BUS_RANGE => {
                let range = SidBusRange::from_bits(h.sid());
                (range.start()..=range.end()).contains(&sid.bus())
            }
            _ => return Self::block(&mut s, sid, Some(index), l.fpd(), FaultReason::IrteReserved),
        };
        if !source_ok {
            return Self::block(
                &mut s,
                sid,
                Some(index),
                l.fpd(),
                FaultReason::InterruptSourceIdMismatch,
            );
        }
        InterruptResult::Delivered {
            vector: l.vector(),
            destination: if eime {
                l.dst()
            } else {
                u32::from(xapic.apic_id())
            },
            level: l.tm(),
            index: Some(index),
        }
    }

    fn block(
        s: &mut FakeState,
        sid: RequesterId,
        index: Option<u16>,
        fpd: bool,
        reason: FaultReason,
    ) -> InterruptResult {
        if !fpd {
            let lo = FrcdLoIr::new()
                .with_interrupt_index(index.unwrap_or(0))
                .into_bits();
            Self::record_fault_lo(s, sid.get(), lo, true, reason);
        }
        InterruptResult::Blocked { reason, index }
    }

    /// Makes interrupt-entry-cache invalidations complete without dropping anything (the
    /// negative control for "invalidated before use": a stale entry is then used and shows up
    /// in [`FakeVtd::violations`]).
    pub fn set_iec_ignored(&self, ignored: bool) {
        self.state.lock().ir.iec_ignored = ignored;
    }

    /// The IRTA value the last SIRTP latched.
    pub fn latched_irta(&self) -> Option<u64> {
        self.state.lock().ir.latched
    }

    /// The indices in the interrupt entry cache.
    pub fn cached_irtes(&self) -> Vec<u16> {
        self.state.lock().ir.cache.keys().copied().collect()
    }

    /// Every fault-event interrupt the unit sent, `(address, data)`, in order.
    pub fn fault_events(&self) -> Vec<(u64, u32)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HwEvent::FaultEvent { address, data } => Some((address, data)),
                _ => None,
            })
            .collect()
    }

    /// Sets GSTS.CFI as firmware can leave it (compatibility-format interrupts allowed while
    /// remapping is on).
    pub fn firmware_left_compatibility_format(&self) {
        self.state.lock().gsts |= Global::CFI.bits();
    }

    /// The interrupt-remapping side of a GCMD write (called before the persistent bits are
    /// updated, so `s.gsts` still holds the old status).
    pub(super) fn interrupt_remapping_gcmd(s: &mut FakeState, value: u32) {
        let on = |bit: Global| value & bit.bits() != 0;
        if on(Global::SIRTP) {
            s.ir.latched = Some(s.ir.irta);
            s.ir.global_iec_since_sirtp = false;
            s.gsts |= Global::SIRTP.bits();
            s.events.push(HwEvent::InterruptTableLatched(s.ir.irta));
        }
        if on(Global::IRE) && s.gsts & Global::IRE.bits() == 0 {
            if s.ir.latched.is_none() {
                s.violations
                    .push("IRE set before an interrupt remapping table was latched".into());
            }
            if !s.ir.global_iec_since_sirtp {
                s.violations.push(
                    "IRE set without a global interrupt-entry-cache invalidation after SIRTP"
                        .into(),
                );
            }
            if s.gsts & Global::QIE.bits() == 0 {
                s.violations
                    .push("IRE set while queued invalidation is off".into());
            }
            if s.ir.latched.is_some_and(|t| Irta::from_bits(t).eime()) && !s.caps.ecap.eim {
                s.violations.push("EIME set without ECAP.EIM".into());
            }
        }
    }

    /// Processes an interrupt-entry-cache invalidation; `false` for a malformed one.
    pub(super) fn invalidate_interrupt_entries(s: &mut FakeState, inv: Invalidation) -> bool {
        match inv {
            Invalidation::InterruptEntryGlobal => {
                s.ir.cache.clear();
                if s.ir.latched.is_some() {
                    s.ir.global_iec_since_sirtp = true;
                }
            }
            Invalidation::InterruptEntries { index, mask } => {
                if mask > s.caps.ecap.mhmv {
                    s.violations.push(format!(
                        "IEC index mask {mask} above ECAP.MHMV {}",
                        s.caps.ecap.mhmv
                    ));
                    return false;
                }
                let count = 1u32 << mask;
                let first = u32::from(index);
                if first % count != 0 {
                    s.violations
                        .push(format!("IEC index {index} not aligned to its mask {mask}"));
                    return false;
                }
                s.ir.cache
                    .retain(|&i, _| !(first..first + count).contains(&u32::from(i)));
            }
            _ => return false,
        }
        true
    }

    /// Whether a fault record is pending or PFO is set.
    pub(super) fn fault_pending(s: &FakeState) -> bool {
        s.fsts & registers::FaultStatus::PFO.bits() != 0
            || s.fault_records
                .iter()
                .any(|(_, h)| registers::FrcdHi::from_bits(*h).f())
    }

    /// The fault event condition arose: send the message, or mark it pending while masked.
    pub(super) fn raise_fault_event(s: &mut FakeState) {
        let fectl = Fectl::from_bits(s.fectl);
        if fectl.im() {
            s.fectl = fectl.with_ip(true).into_bits();
        } else {
            Self::send_fault_event(s);
        }
    }

    fn send_fault_event(s: &mut FakeState) {
        let reg = |o: usize| s.other.get(&o).copied().unwrap_or(0) as u32;
        let address = MsiAddress64::new()
            .with_lo(reg(registers::FEADDR))
            .with_hi(reg(registers::FEUADDR))
            .into_bits();
        let data = reg(registers::FEDATA);
        s.fectl = Fectl::from_bits(s.fectl).with_ip(false).into_bits();
        s.events.push(HwEvent::FaultEvent { address, data });
    }

    /// A FECTL write: IM is writable, IP read-only; unmasking with IP set sends the event.
    pub(super) fn write_fectl(s: &mut FakeState, value: u32) {
        let ip = Fectl::from_bits(s.fectl).ip();
        let im = Fectl::from_bits(value).im();
        s.fectl = Fectl::new().with_im(im).with_ip(ip).into_bits();
        if !im && ip {
            Self::send_fault_event(s);
        }
    }

    /// Software cleared a record or PFO: with nothing pending, IP clears (§11.4.7.2).
    pub(super) fn fault_cleared(s: &mut FakeState) {
        if !Self::fault_pending(s) {
            s.fectl = Fectl::from_bits(s.fectl).with_ip(false).into_bits();
        }
    }
}
