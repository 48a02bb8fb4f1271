//! Fault recording (§7.1, §11.4.14) and the fault-event interrupt (§7.3, §11.4.7.2-5) of a
//! unit.

use super::*;

/// Fault recording and fault-event interrupts.
impl<R: RegisterIo, P: Platform> VtdUnit<R, P> {
    /// Reads every pending fault record (and FSTS.PFO).
    pub fn read_faults(&self) -> FaultLog {
        fault::read_faults(&self.regs, &self.caps)
    }

    /// Reads every pending fault record and clears exactly the records returned (and FSTS.PFO
    /// only if the log reports it), so a fault arriving in between is never lost.
    pub fn read_and_clear_faults(&self) -> FaultLog {
        let _faults = self.faults.lock(&self.platform);
        fault::read_and_clear_faults(&self.regs, &self.caps)
    }

    /// Clears every fault record's F bit and FSTS.PFO, read or not (see
    /// [`VtdUnit::read_and_clear_faults`] to consume faults).
    pub fn clear_faults(&self) {
        fault::clear_faults(&self.regs, &self.caps)
    }
    /// Makes faults raise an interrupt: the unit's fault event is a compatibility-format MSI
    /// (remapping hardware does not remap its own interrupts) with `address` (0xFEEx_xxxx,
    /// bit 4 clear; the upper half goes to FEUADDR) and `data`. The event is masked while
    /// FEDATA/FEADDR/FEUADDR are written, then unmasked (FECTL.IM = 0); a fault already
    /// pending (FECTL.IP) is delivered at once. Service it with
    /// [`VtdUnit::service_fault_event`]; polling keeps working.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptRemapping`] with [`IntRemapError::NotAnInterruptAddress`] (nothing
    /// is written).
    pub fn set_fault_event(&self, address: u64, data: u32) -> Result<(), VtdError> {
        let split = MsiAddress64::from_bits(address);
        let low = MsiAddressCompat::from_bits(split.lo());
        if low.window() != MSI_WINDOW || low.remappable() {
            return Err(IntRemapError::NotAnInterruptAddress(address).into());
        }
        let masked = Fectl::new().with_im(true).into_bits();
        self.regs.write32(registers::FECTL, masked);
        self.regs.write32(registers::FEDATA, data);
        self.regs.write32(
            registers::FEADDR,
            Feaddr::new().with_addr(split.lo()).into_bits(),
        );
        self.regs.write32(registers::FEUADDR, split.hi());
        self.platform.memory_fence();
        self.regs
            .write32(registers::FECTL, Fectl::new().with_im(false).into_bits());
        Ok(())
    }

    /// Masks the fault event (FECTL.IM = 1): faults are recorded but raise no interrupt
    /// (FECTL.IP shows one pending); poll with [`VtdUnit::read_and_clear_faults`].
    pub fn mask_fault_event(&self) {
        self.regs
            .write32(registers::FECTL, Fectl::new().with_im(true).into_bits());
    }

    /// Whether the fault event is masked (FECTL.IM) and whether one is pending (FECTL.IP).
    pub fn fault_event_state(&self) -> (bool, bool) {
        let fectl = Fectl::from_bits(self.regs.read32(registers::FECTL));
        (fectl.im(), fectl.ip())
    }

    /// The fault-event interrupt handler's work: reads and clears exactly the records it read
    /// (and PFO only when it saw it), repeating until the unit shows no pending fault, so a
    /// record that arrived while the previous ones were cleared is returned too instead of
    /// sitting unreported (the hardware raises the next event only once nothing is pending).
    /// Safe to call from a poller as well.
    pub fn service_fault_event(&self) -> FaultLog {
        let _faults = self.faults.lock(&self.platform);
        fault::service_faults(&self.regs, &self.caps)
    }
}
