//! Bring-up and shutdown of a unit: the global command protocol (§10.4.4), write-buffer flush
//! (§6.8), the enable order of the [parent module](super) (queued invalidation, root table,
//! global invalidation, translation enable) and disable (§10.4.5).

use super::*;

/// The state [`VtdUnit::enable`] found the unit in (what firmware or an earlier owner left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareState {
    /// GSTS.TES was set: translation was on (through someone else's root table).
    pub translation: bool,
    /// GSTS.QIES was set: queued invalidation was on (with someone else's queue).
    pub queued_invalidation: bool,
    /// GSTS.IRES was set: interrupt remapping was on. [`VtdUnit::enable`] leaves it as it is;
    /// [`VtdUnit::enable_interrupt_remapping`] takes it over (our table replaces the
    /// firmware's under IRE, then a global interrupt-entry-cache invalidation).
    pub interrupt_remapping: bool,
}

impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Flushes the write buffer (GCMD.WBF, wait for GSTS.WBFS to clear), §6.8. A no-op unless
    /// CAP.RWBF.
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.WBFS does not clear in time.
    pub fn flush_write_buffer(&self) -> Result<(), VtdError> {
        if !self.caps.cap.rwbf {
            return Ok(());
        }
        // Serialise with other GCMD users (enable/disable hold the tables lock).
        let _tables = self.tables.lock();
        self.write_gcmd(Global::WBF, true);
        self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))
    }

    /// Runs the enable sequence (see the module docs), taking the unit over from whatever
    /// state firmware left it in ([`FirmwareState`], kept in [`VtdUnit::firmware_state`]):
    ///
    /// - queued invalidation left on: the firmware's queue is drained (IQH = IQT) and queued
    ///   invalidation turned off (GCMD.QIE = 0, wait for QIES to clear) before IQA/IQT are
    ///   reprogrammed (§6.5.2); a queue that does not drain is [`VtdError::Timeout`];
    /// - translation left on: it stays on. Our root table (no present entry yet) replaces the
    ///   firmware's (SRTP while TE = 1) and the global context-cache and IOTLB invalidation
    ///   makes the switch effective, so from then on every device is blocked until attached.
    ///   Turning translation off first would open a window in which DMA is not translated at
    ///   all. (RMRR identity maps are installed by the embedder's attach, as for any device.)
    /// - interrupt remapping left on: left as it is (every GCMD write keeps IRE/CFI, being
    ///   `(GSTS & 0x96FF_FFFF) | bit`); the interrupt-remapping owner reprograms it.
    ///
    /// Fails with [`VtdError::AlreadyEnabled`] if this unit's own enable already completed.
    ///
    /// `enable` is [`VtdUnit::prepare`] followed by [`VtdUnit::start_translation`]; an embedder
    /// that must attach devices before translation starts (RMRR users, which must never lose
    /// their memory once translation is on) calls the two with its attaches in between.
    ///
    /// # Errors
    ///
    /// [`VtdError::AlreadyEnabled`] (see above); [`VtdError::Timeout`] when a status bit (or the
    /// firmware's queue drain) does not settle in time; [`VtdError::Invalidation`] when the global
    /// invalidation fails.
    pub fn enable(&self) -> Result<(), VtdError> {
        self.prepare()?;
        self.start_translation()
    }

    /// Steps 1-3 of the enable sequence (queued invalidation, root table, global invalidation;
    /// a firmware queue drained and stopped first). Afterwards domains can be attached: their
    /// context entries are written and invalidated through the queue, and take effect when
    /// [`VtdUnit::start_translation`] sets TE. (If firmware left translation on, our root table
    /// is already live here: every device is blocked until attached, never untranslated.)
    ///
    /// # Errors
    /// As [`VtdUnit::enable`]; a second call is [`VtdError::AlreadyEnabled`].
    pub fn prepare(&self) -> Result<(), VtdError> {
        let mut tables = self.tables.lock();
        if tables.enabled || tables.prepared {
            return Err(VtdError::AlreadyEnabled);
        }
        let found = self.gsts();
        let firmware = FirmwareState {
            translation: found.contains(Global::TE),
            queued_invalidation: found.contains(Global::QIE),
            interrupt_remapping: found.contains(Global::IRE),
        };
        tables.firmware = Some(firmware);
        let mut inval = self.invalidation.lock(&self.platform);
        // 0. A queue someone else left running (firmware; not ours): drain it, then stop it.
        if firmware.queued_invalidation && !matches!(inval.active, Invalidator::Queued(_)) {
            let start = self.platform.now_us();
            while self.regs.read64(registers::IQH) != self.regs.read64(registers::IQT) {
                if self.platform.now_us().saturating_sub(start) > self.config.timeout_us {
                    return Err(VtdError::Timeout {
                        what: "the firmware's invalidation queue to drain",
                    });
                }
                core::hint::spin_loop();
            }
            self.write_gcmd(Global::QIE, false);
            self.wait_status("GSTS.QIES to clear", |g| !g.contains(Global::QIE))?;
        }
        // 1. Queued invalidation.
        if let Some(mut queue) = inval.spare.take() {
            self.regs.write64(registers::IQT, 0);
            queue.reset();
            self.regs.write64(registers::IQA, queue.iqa());
            self.write_gcmd(Global::QIE, true);
            if let Err(e) = self.wait_status("GSTS.QIES", |g| g.contains(Global::QIE)) {
                inval.spare = Some(queue);
                return Err(e);
            }
            inval.active = Invalidator::Queued(queue);
        }
        // 2. Root table.
        let rtaddr = Rtaddr::new()
            .with_rta(tables.root.phys().as_u64())
            .with_ttm(Rtaddr::TTM_LEGACY);
        self.regs.write64(registers::RTADDR, rtaddr.into_bits());
        self.write_gcmd(Global::SRTP, true);
        self.wait_status("GSTS.RTPS", |g| g.contains(Global::SRTP))?;
        if self.caps.cap.rwbf {
            self.write_gcmd(Global::WBF, true);
            self.wait_status("GSTS.WBFS to clear", |g| !g.contains(Global::WBF))?;
        }
        // 3. Global invalidation, closed by a wait descriptor in queued mode.
        inval.active.run(
            &self.regs,
            &self.platform,
            &self.caps,
            &[Invalidation::ContextGlobal, Invalidation::IotlbGlobal],
            self.config.timeout_us,
        )?;
        drop(inval);
        tables.prepared = true;
        Ok(())
    }

    /// Step 4 of the enable sequence: GCMD.TE, wait for GSTS.TES. From here on every device
    /// without a context entry is blocked.
    ///
    /// # Errors
    /// [`VtdError::AlreadyEnabled`] if translation was started already,
    /// [`VtdError::Unsupported`] before [`VtdUnit::prepare`], [`VtdError::Timeout`].
    pub fn start_translation(&self) -> Result<(), VtdError> {
        let mut tables = self.tables.lock();
        if tables.enabled {
            return Err(VtdError::AlreadyEnabled);
        }
        if !tables.prepared {
            return Err(VtdError::Unsupported {
                reason: "start_translation before prepare",
            });
        }
        // 4. Translation (already on if firmware left it on: the switch in prepare took effect).
        if self.gsts().contains(Global::TE) {
            log::warn!("VT-d: translation was left on by firmware; now through our root table");
        } else {
            self.write_gcmd(Global::TE, true);
            self.wait_status("GSTS.TES", |g| g.contains(Global::TE))?;
        }
        tables.enabled = true;
        log::info!(
            "VT-d: translation enabled (root table {})",
            tables.root.phys()
        );
        Ok(())
    }

    /// Turns interrupt remapping off if this unit enabled it
    /// ([`VtdUnit::disable_interrupt_remapping`]: it needs the queue), then translation (wait
    /// for TES to clear), then queued invalidation (after draining the queue), returning to
    /// register-based invalidation.
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.IRES, GSTS.TES or GSTS.QIES does not clear in time;
    /// [`VtdError::Invalidation`] when the queue does not drain.
    pub fn disable(&self) -> Result<(), VtdError> {
        self.disable_interrupt_remapping()?;
        let mut tables = self.tables.lock();
        if self.gsts().contains(Global::TE) {
            self.write_gcmd(Global::TE, false);
            self.wait_status("GSTS.TES to clear", |g| !g.contains(Global::TE))?;
        }
        tables.enabled = false;
        tables.prepared = false;
        let mut inval = self.invalidation.lock(&self.platform);
        if let Invalidator::Queued(queue) = &mut inval.active {
            queue.submit(
                &self.regs,
                &self.platform,
                &self.caps,
                &[],
                self.config.timeout_us,
            )?;
            self.write_gcmd(Global::QIE, false);
            self.wait_status("GSTS.QIES to clear", |g| !g.contains(Global::QIE))?;
            if let Invalidator::Queued(queue) =
                core::mem::replace(&mut inval.active, Invalidator::Registers)
            {
                inval.spare = Some(queue);
            }
        }
        Ok(())
    }
}
