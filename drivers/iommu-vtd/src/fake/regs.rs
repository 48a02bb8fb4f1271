//! The register file of [`FakeVtd`]: GCMD/GSTS (§10.4.4), 32/64-bit reads and writes by
//! offset, and the [`RegisterIo`] implementation.

use super::*;

impl FakeVtd {
    fn write_gcmd(&self, s: &mut FakeState, value: u32) {
        s.events.push(HwEvent::Gcmd(value));
        let persistent = s.gsts & GSTS_PERSISTENT_MASK;
        let changed = value ^ persistent;
        if changed.count_ones() != 1 {
            s.violations.push(format!(
                "GCMD write {value:#x} is not (GSTS & 0x96FF_FFFF) | one bit (GSTS {:#x})",
                s.gsts
            ));
        }
        if s.unresponsive {
            return;
        }
        let on = |bit: Global| value & bit.bits() != 0;
        if on(Global::SRTP) {
            s.active_root = Some(Rtaddr::from_bits(s.rtaddr).rta());
            s.gsts |= Global::SRTP.bits();
            s.global_invalidated_since_root = false;
            s.events.push(HwEvent::RootTableLatched(s.rtaddr));
        }
        if on(Global::WBF) {
            s.events.push(HwEvent::WriteBufferFlush);
        }
        Self::interrupt_remapping_gcmd(s, value);
        let qie = on(Global::QIE);
        if qie && s.gsts & Global::QIE.bits() == 0 {
            if s.iqt != 0 {
                s.violations.push("QIE set with IQT != 0".into());
            } else {
                s.iqh = 0;
                s.gsts |= Global::QIE.bits();
            }
        } else if !qie && s.gsts & Global::QIE.bits() != 0 {
            if s.iqh != s.iqt {
                s.violations
                    .push("QIE cleared with a non-empty queue".into());
            }
            s.gsts &= !Global::QIE.bits();
        }
        let te = on(Global::TE);
        if te && s.gsts & Global::TE.bits() == 0 {
            if s.active_root.is_none() {
                s.violations
                    .push("TE set before a root table was latched".into());
            }
            if !s.global_invalidated_since_root {
                s.violations
                    .push("TE set without a global invalidation after SRTP".into());
            }
            s.gsts |= Global::TE.bits();
        } else if !te {
            s.gsts &= !Global::TE.bits();
        }
        for bit in [Global::IRE, Global::EAFL, Global::CFI] {
            if on(bit) {
                s.gsts |= bit.bits();
            } else {
                s.gsts &= !bit.bits();
            }
        }
    }
    fn read64_locked(&self, s: &FakeState, offset: usize) -> u64 {
        let (fr_start, fr_end) = Self::fault_record_range(s);
        match offset {
            registers::CAP => s.caps.cap.raw,
            registers::ECAP => s.caps.ecap.raw,
            registers::RTADDR => s.rtaddr,
            registers::CCMD => s.ccmd,
            registers::IQH => s.iqh,
            registers::IQT => s.iqt,
            registers::IQA => s.iqa,
            registers::IRTA => s.ir.irta,
            o if o == s.caps.ecap.iva_offset() => s.iva,
            o if o == s.caps.ecap.iotlb_offset() => s.iotlb_reg,
            o if o >= fr_start && o < fr_end && (o - fr_start) % 8 == 0 => {
                let rec = s.fault_records[(o - fr_start) / registers::FAULT_RECORD_SIZE];
                if (o - fr_start) % registers::FAULT_RECORD_SIZE == 0 {
                    rec.0
                } else {
                    rec.1
                }
            }
            o => {
                u64::from(self.read32_locked(s, o)) | u64::from(self.read32_locked(s, o + 4)) << 32
            }
        }
    }

    fn read32_locked(&self, s: &FakeState, offset: usize) -> u32 {
        match offset {
            registers::VER => s.caps.version.0 as u32 * 16 + s.caps.version.1 as u32,
            registers::GCMD => 0,
            registers::GSTS => s.gsts,
            registers::FSTS => {
                let ppf = if s
                    .fault_records
                    .iter()
                    .any(|(_, h)| FrcdHi::from_bits(*h).f())
                {
                    FaultStatus::PPF.bits()
                } else {
                    0
                };
                s.fsts | ppf
            }
            registers::FECTL => s.fectl,
            registers::ICS => s.ics,
            o if o % 8 == 4 && self.is_64bit_register(s, o - 4) => {
                (self.read64_locked(s, o - 4) >> 32) as u32
            }
            o if o % 8 == 0 && self.is_64bit_register(s, o) => self.read64_locked(s, o) as u32,
            o => s.other.get(&o).copied().unwrap_or(0) as u32,
        }
    }

    fn is_64bit_register(&self, s: &FakeState, o: usize) -> bool {
        let (fr_start, fr_end) = Self::fault_record_range(s);
        matches!(
            o,
            registers::CAP
                | registers::ECAP
                | registers::RTADDR
                | registers::CCMD
                | registers::IQH
                | registers::IQT
                | registers::IQA
                | registers::IRTA
        ) || o == s.caps.ecap.iva_offset()
            || o == s.caps.ecap.iotlb_offset()
            || (o >= fr_start && o < fr_end)
    }
}

impl RegisterIo for FakeVtd {
    fn read32(&self, offset: usize) -> u32 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.platform.note_use();
        let s = self.state.lock();
        self.read32_locked(&s, offset)
    }

    fn read64(&self, offset: usize) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.platform.note_use();
        let s = self.state.lock();
        self.read64_locked(&s, offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.platform.note_use();
        let mut s = self.state.lock();
        let (fr_start, fr_end) = Self::fault_record_range(&s);
        match offset {
            registers::GCMD => self.write_gcmd(&mut s, value),
            registers::FSTS => {
                let w1c = FaultStatus::PFO
                    | FaultStatus::AFO
                    | FaultStatus::APF
                    | FaultStatus::IQE
                    | FaultStatus::ICE
                    | FaultStatus::ITE;
                s.fsts &= !(value & w1c.bits());
                Self::fault_cleared(&mut s);
                // Clearing IQE lets the queue resume.
                self.resume_queue(&mut s);
            }
            registers::FECTL => Self::write_fectl(&mut s, value),
            registers::ICS => s.ics &= !(value & iq::ICS_IWC),
            o if o >= fr_start
                && o < fr_end
                && (o - fr_start) % registers::FAULT_RECORD_SIZE
                    == registers::FAULT_RECORD_F_DWORD =>
            {
                if value & frcd::F_IN_DWORD != 0 {
                    if let Some((sid, iova, write)) = s.fault_on_clear.take() {
                        Self::record_fault(
                            &mut s,
                            sid,
                            iova,
                            write,
                            FaultReason::ContextEntryNotPresent,
                        );
                    }
                    let h = &mut s.fault_records[(o - fr_start) / registers::FAULT_RECORD_SIZE].1;
                    *h = FrcdHi::from_bits(*h).with_f(false).into_bits();
                    Self::fault_cleared(&mut s);
                }
            }
            o if self.is_64bit_register(&s, o & !7) => {
                s.violations
                    .push(format!("32-bit write to 64-bit register {o:#x}"));
            }
            o => {
                s.other.insert(o, u64::from(value));
            }
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.platform.note_use();
        let mut s = self.state.lock();
        let iva = s.caps.ecap.iva_offset();
        let iotlb_off = s.caps.ecap.iotlb_offset();
        match offset {
            registers::RTADDR => s.rtaddr = value,
            registers::CCMD => {
                s.ccmd = value;
                let cmd = Ccmd::from_bits(value);
                if cmd.icc() && self.register_invalidation(&mut s, "CCMD") {
                    let gran = cmd.cirg();
                    let did = cmd.did();
                    let sid = RequesterId::new(cmd.sid());
                    let inv = match gran {
                        ccmd::GRANULARITY_GLOBAL => Some(Invalidation::ContextGlobal),
                        ccmd::GRANULARITY_DEVICE => Some(Invalidation::ContextDevice { did, sid }),
                        _ => None,
                    };
                    let actual = if s.register_not_performed {
                        0
                    } else {
                        if let Some(inv) = inv {
                            self.process_invalidation(&mut s, Via::Register, inv);
                        } else {
                            s.context_cache.clear();
                        }
                        gran
                    };
                    s.ccmd = cmd.with_icc(false).with_caig(actual).into_bits();
                }
            }
            o if o == iva => s.iva = value,
            o if o == iotlb_off => {
                s.iotlb_reg = value;
                let cmd = IotlbCmd::from_bits(value);
                if cmd.ivt() && self.register_invalidation(&mut s, "IOTLB register") {
                    let gran = cmd.iirg();
                    let did = cmd.did();
                    let iva = Iva::from_bits(s.iva);
                    let inv = match gran {
                        iotlb::GRANULARITY_GLOBAL => Invalidation::IotlbGlobal,
                        iotlb::GRANULARITY_DOMAIN => Invalidation::IotlbDomain { did },
                        _ => Invalidation::IotlbPage {
                            did,
                            addr: iva.addr(),
                            am: iva.am(),
                            leaf_only: iva.ih(),
                        },
                    };
                    let actual = if s.register_not_performed {
                        0
                    } else {
                        self.process_invalidation(&mut s, Via::Register, inv);
                        gran
                    };
                    s.iotlb_reg = cmd.with_ivt(false).with_iaig(actual).into_bits();
                }
            }
            registers::IRTA => s.ir.irta = value,
            registers::IQA => {
                if s.gsts & Global::QIE.bits() != 0 {
                    s.violations
                        .push("IQA written while queued invalidation is on (§6.5.2)".into());
                }
                s.iqa = value;
            }
            registers::IQT => {
                let tail = QueueIndex::from_bits(value).index();
                s.iqt = QueueIndex::new().with_index(tail).into_bits();
                self.resume_queue(&mut s);
            }
            o => {
                let (fr_start, fr_end) = Self::fault_record_range(&s);
                if o >= fr_start
                    && o < fr_end
                    && (o - fr_start) % registers::FAULT_RECORD_SIZE
                        == registers::FAULT_RECORD_HIGH_QWORD
                {
                    if FrcdHi::from_bits(value).f() {
                        let h =
                            &mut s.fault_records[(o - fr_start) / registers::FAULT_RECORD_SIZE].1;
                        *h = FrcdHi::from_bits(*h).with_f(false).into_bits();
                        Self::fault_cleared(&mut s);
                    }
                } else {
                    s.violations.push(format!("64-bit write to {o:#x}"));
                }
            }
        }
    }
}
