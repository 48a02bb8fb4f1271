//! Interrupt remapping management of a unit (§5.1, §10.4.4 IRE/SIRTP/CFI, §11.4.10 IRTA):
//! bring-up, IRTE allocation and updates with their interrupt-entry-cache invalidations.

use super::*;

/// Interrupt remapping (§5.1, §10.4.4 IRE/SIRTP/CFI, §11.4.10 IRTA).
impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Turns interrupt remapping on through a table of this unit's own, sized for `entries`
    /// vectors (the next power of two, 2 to 65536), in x2APIC mode (EIME) if `eim`:
    ///
    /// 1. GCMD.CFI cleared if set (compatibility-format interrupts blocked once IRE is on);
    /// 2. IRTA (base, EIME, size), GCMD.SIRTP, wait for GSTS.IRTPS;
    /// 3. a global interrupt-entry-cache invalidation, closed by a wait descriptor;
    /// 4. GCMD.IRE, wait for GSTS.IRES (already set if firmware left remapping on: step 2
    ///    swapped its table for ours and step 3 made it effective).
    ///
    /// Afterwards every interrupt goes through the table, whose entries are all not present:
    /// no interrupt is delivered until [`VtdUnit::set_irte`] fills an entry. Needs queued
    /// invalidation active ([`VtdUnit::prepare`] or [`VtdUnit::enable`] first).
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotSupported`] (no ECAP.IR),
    /// [`IntRemapError::ExtendedModeUnsupported`] (`eim` without ECAP.EIM),
    /// [`IntRemapError::AlreadyEnabled`], [`IntRemapError::QueuedInvalidationOff`],
    /// [`IntRemapError::BadTableSize`] or [`IntRemapError::OutOfMemory`];
    /// [`VtdError::Timeout`] when a status bit does not settle; [`VtdError::Invalidation`]
    /// when the global invalidation fails. After a failure past step 2 the table is leaked on
    /// purpose (the hardware may read it).
    pub fn enable_interrupt_remapping(&self, entries: u32, eim: bool) -> Result<(), VtdError> {
        if !self.caps.ecap.interrupt_remapping {
            return Err(IntRemapError::NotSupported.into());
        }
        if eim && !self.caps.ecap.eim {
            return Err(IntRemapError::ExtendedModeUnsupported.into());
        }
        let mut ir = self.intremap.lock(&self.platform);
        if ir.is_some() {
            return Err(IntRemapError::AlreadyEnabled.into());
        }
        if !self.queued_invalidation_active() {
            return Err(IntRemapError::QueuedInvalidationOff.into());
        }
        let table =
            InterruptRemapTable::new(&self.platform, entries, eim, self.caps.ecap.coherent)?;
        // Serialise GCMD with the other users (they hold the tables lock).
        let tables = self.tables.lock();
        // 1. Compatibility-format interrupts blocked.
        if self.gsts().contains(Global::CFI) {
            self.write_gcmd(Global::CFI, false);
            if let Err(e) = self.wait_status("GSTS.CFIS to clear", |g| !g.contains(Global::CFI)) {
                // SAFETY: the table was never given to the hardware.
                unsafe { table.destroy(&self.platform) };
                return Err(e);
            }
        }
        // 2. The table pointer.
        self.platform.memory_fence();
        self.regs.write64(registers::IRTA, table.irta());
        self.write_gcmd(Global::SIRTP, true);
        let latched = self.wait_status("GSTS.IRTPS", |g| g.contains(Global::SIRTP));
        let base = table.base();
        let count = table.entries();
        if let Err(e) = latched {
            // The hardware may have latched it after all: never free it.
            core::mem::forget(table);
            return Err(e);
        }
        // 3. Nothing cached from an earlier table survives.
        if let Err(e) = self.invalidate(&[Invalidation::InterruptEntryGlobal]) {
            core::mem::forget(table);
            return Err(e.into());
        }
        // 4. Remapping on.
        if !self.gsts().contains(Global::IRE) {
            self.write_gcmd(Global::IRE, true);
            if let Err(e) = self.wait_status("GSTS.IRES", |g| g.contains(Global::IRE)) {
                core::mem::forget(table);
                return Err(e);
            }
        }
        drop(tables);
        *ir = Some(table);
        log::info!(
            "VT-d: interrupt remapping enabled ({count} entries at {base}, {} mode)",
            if eim { "x2APIC" } else { "xAPIC" }
        );
        Ok(())
    }

    /// Turns interrupt remapping off (GCMD.IRE, wait for IRES to clear), invalidates the
    /// interrupt entry cache and frees the table. Does nothing if this unit did not enable it.
    /// Afterwards interrupts are no longer remapped (compatibility format passes).
    ///
    /// # Errors
    ///
    /// [`VtdError::Timeout`] when GSTS.IRES does not clear; [`VtdError::Invalidation`]. On
    /// failure the table stays in place (and remapping may still be on).
    pub fn disable_interrupt_remapping(&self) -> Result<(), VtdError> {
        let mut ir = self.intremap.lock(&self.platform);
        if ir.is_none() {
            return Ok(());
        }
        {
            let _tables = self.tables.lock();
            if self.gsts().contains(Global::IRE) {
                self.write_gcmd(Global::IRE, false);
                self.wait_status("GSTS.IRES to clear", |g| !g.contains(Global::IRE))?;
            }
        }
        self.invalidate(&[Invalidation::InterruptEntryGlobal])?;
        if let Some(table) = ir.take() {
            // SAFETY: IRE is off and the interrupt entry cache was invalidated since: the
            // hardware no longer reads the table.
            unsafe { table.destroy(&self.platform) };
        }
        Ok(())
    }

    /// Whether interrupt remapping is on through this unit's table.
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.intremap.lock(&self.platform).is_some()
    }

    /// The table's physical address, entry count and mode (EIME) while interrupt remapping is
    /// on through it.
    pub fn interrupt_remapping_table(&self) -> Option<(PhysAddr, u32, bool)> {
        self.intremap
            .lock(&self.platform)
            .as_ref()
            .map(|t| (t.base(), t.entries(), t.eime()))
    }

    /// Allocates a naturally aligned block of `count` IRTEs (a power of two; `count` > 1 for a
    /// multi-message MSI, whose message then carries the returned handle and the subhandle
    /// valid bit) and returns the first index: the *handle* of the remappable-format MSI
    /// address. The entries stay not present until [`VtdUnit::set_irte`].
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`],
    /// [`IntRemapError::BadCount`] or [`IntRemapError::Exhausted`].
    pub fn alloc_irtes(&self, count: u32) -> Result<u16, VtdError> {
        let mut ir = self.intremap.lock(&self.platform);
        let table = ir.as_mut().ok_or(IntRemapError::NotEnabled)?;
        Ok(table.alloc(count)?)
    }

    /// Writes IRTE `index` (one 128-bit atomic store, written back from the CPU cache when
    /// ECAP.C = 0), then invalidates exactly that interrupt-entry-cache entry and waits for
    /// the invalidation to complete: when this returns, the next interrupt through `index`
    /// uses the new entry.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`],
    /// [`IntRemapError::NotAllocated`] or a destination-format error of [`Irte::encode`]
    /// (nothing written); [`VtdError::Invalidation`] (the entry is written but maybe not yet
    /// in use: retry).
    pub fn set_irte(&self, index: u16, entry: &Irte) -> Result<(), VtdError> {
        let ir = self.intremap.lock(&self.platform);
        let table = ir.as_ref().ok_or(IntRemapError::NotEnabled)?;
        table.set(&self.platform, index, entry)?;
        self.invalidate(&[Invalidation::InterruptEntries { index, mask: 0 }])?;
        Ok(())
    }

    /// Makes IRTE `index` not present (interrupts through it are blocked), then invalidates
    /// its interrupt-entry-cache entry and waits, as [`VtdUnit::set_irte`].
    ///
    /// # Errors
    ///
    /// As [`VtdUnit::set_irte`].
    pub fn clear_irte(&self, index: u16) -> Result<(), VtdError> {
        let ir = self.intremap.lock(&self.platform);
        let table = ir.as_ref().ok_or(IntRemapError::NotEnabled)?;
        if !table.is_allocated(index) {
            return Err(IntRemapError::NotAllocated { index }.into());
        }
        table.write_raw(&self.platform, index, 0, 0);
        self.invalidate(&[Invalidation::InterruptEntries { index, mask: 0 }])?;
        Ok(())
    }

    /// Clears the block `index..index + count` (as [`VtdUnit::alloc_irtes`] returned it),
    /// invalidates its interrupt-entry-cache entries (one index-selective invalidation with
    /// mask `log2(count)`), waits, and only then returns the block to the allocator.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotEnabled`] or
    /// [`IntRemapError::NotAllocated`] (not a block handed out); [`VtdError::Invalidation`]
    /// (the entries are cleared but the block stays allocated, so it is not reused while a
    /// stale copy may be cached: call again).
    pub fn free_irtes(&self, index: u16, count: u32) -> Result<(), VtdError> {
        let mut ir = self.intremap.lock(&self.platform);
        let table = ir.as_mut().ok_or(IntRemapError::NotEnabled)?;
        if table.block_of(index) != Some((index, count)) {
            return Err(IntRemapError::NotAllocated { index }.into());
        }
        for i in 0..count {
            let Ok(i) = u16::try_from(u32::from(index) + i) else {
                break;
            };
            table.write_raw(&self.platform, i, 0, 0);
        }
        let mask = u8::try_from(count.trailing_zeros()).unwrap_or(u8::MAX);
        self.invalidate(&[Invalidation::InterruptEntries { index, mask }])?;
        table.free(index, count)?;
        Ok(())
    }

    /// IRTE `index` as it is in memory (`None`: remapping off, beyond the table, or not a
    /// present remapped-format entry this crate writes).
    pub fn irte(&self, index: u16) -> Option<Irte> {
        self.intremap
            .lock(&self.platform)
            .as_ref()
            .and_then(|t| t.get(&self.platform, index))
    }

    /// The raw IRTE `index` `(bits 63:0, bits 127:64)` as the CPU sees it.
    pub fn irte_raw(&self, index: u16) -> Option<(u64, u64)> {
        self.intremap
            .lock(&self.platform)
            .as_ref()
            .and_then(|t| t.read(&self.platform, index))
    }
}
