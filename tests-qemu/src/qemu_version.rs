//! Which QEMU a scenario runs on, and what that QEMU's models do differently, as measured
//! (SPEC.md, "QEMU 10.0.2"; issue 16). Scenarios whose expectations differ by version ask these
//! predicates instead of pasting per-version output.
//!
//! Measured on Debian's 7.2 (bookworm) and 10.0.2 (bookworm-backports) with the intremap suite
//! (QEMU 10's `hw/i386/intel_iommu.c`: `vtd_irte_get`, `vtd_interrupt_remap_msi`,
//! `vtd_mem_ir_write`):
//! - 7.2 records no interrupt-remapping fault; 10 records them (`vtd_report_ir_fault`): a
//!   not-present IRTE (22h) and a source-id mismatch (26h), with the interrupt index.
//! - Neither gives a device's DMA write to the interrupt window a requester ID
//!   (`MEMTXATTRS_UNSPECIFIED`): the SID check is skipped, and a fault it causes is recorded
//!   with source-id FFFFh (QEMU's `X86_IOMMU_SID_INVALID`).
//! - Neither models CFI: compatibility-format interrupts pass with GSTS.CFIS = 0.
//! - Neither I/O APIC (TCG) sends a requester ID.
//! - 10's e1000e sends its OTHER MSI-X vector twice for one ICS write; 7.2's once.

use core::fmt;

/// A QEMU release, from `qemu-system-x86_64 --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Micro (patch) version.
    pub micro: u16,
}

/// The source-id QEMU records for a request that carried none (`X86_IOMMU_SID_INVALID`).
pub const QEMU_NO_SOURCE_ID: u16 = 0xffff;

impl QemuVersion {
    /// Debian bookworm's QEMU (the system one on this project's machines).
    pub const BOOKWORM: Self = Self::new(7, 2, 0);

    /// A version.
    pub const fn new(major: u16, minor: u16, micro: u16) -> Self {
        Self {
            major,
            minor,
            micro,
        }
    }

    /// Parses `QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`: the first
    /// line's `version X.Y[.Z]`.
    pub fn parse(version_output: &str) -> Option<Self> {
        let line = version_output.lines().next()?;
        let rest = &line[line.find("version ")? + "version ".len()..];
        let word = rest.split(|c: char| c.is_whitespace() || c == '(').next()?;
        let mut parts = word.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok()
        });
        let major = parts.next()??;
        let minor = parts.next()??;
        let micro = parts.next().flatten().unwrap_or(0);
        Some(Self::new(major, minor, micro))
    }

    /// intel-iommu's `aw-bits` when none is given: 39 up to 9.1, 48 from 9.2 (its
    /// `hw_compat_9_1` keeps 39 for older machine types; measured: 7.2 picks 3-level tables,
    /// 10.0.2 4-level).
    pub fn default_aw_bits(self) -> u8 {
        if self >= Self::new(9, 2, 0) {
            48
        } else {
            39
        }
    }

    /// Whether interrupt-remapping faults are recorded in the fault recording registers (10:
    /// yes; 7.2: no).
    pub fn records_interrupt_remapping_faults(self) -> bool {
        self.major >= 10
    }

    /// Whether a device's DMA write to 0xFEEx_xxxx carries its requester ID, so the IRTE's
    /// source-id check applies to forged interrupts (no release yet).
    pub fn dma_writes_carry_requester_id(self) -> bool {
        false
    }

    /// Whether GSTS.CFIS = 0 blocks compatibility-format interrupts (no release yet).
    pub fn blocks_compatibility_format(self) -> bool {
        false
    }

    /// Whether the I/O APIC's interrupts carry its source-id (no release yet under TCG).
    pub fn ioapic_sends_source_id(self) -> bool {
        false
    }

    /// MSI-X messages e1000e sends for one ICS write of the OTHER cause.
    pub fn e1000e_messages_per_ics(self) -> u64 {
        if self.major >= 10 {
            2
        } else {
            1
        }
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_lines() {
        assert_eq!(
            QemuVersion::parse(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some(QemuVersion::new(10, 0, 2))
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u13)"),
            Some(QemuVersion::new(7, 2, 15))
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 9.1.50"),
            Some(QemuVersion::new(9, 1, 50))
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 8.2"),
            Some(QemuVersion::new(8, 2, 0))
        );
        assert_eq!(QemuVersion::parse("qemu: no such thing"), None);
        assert_eq!(QemuVersion::parse(""), None);
        assert_eq!(QemuVersion::new(10, 0, 2).to_string(), "10.0.2");
    }

    #[test]
    fn versions_order_numerically() {
        assert!(QemuVersion::new(10, 0, 0) > QemuVersion::new(7, 2, 15));
        assert!(QemuVersion::new(7, 10, 0) > QemuVersion::new(7, 2, 0));
        assert!(!QemuVersion::BOOKWORM.records_interrupt_remapping_faults());
        assert!(QemuVersion::new(10, 0, 2).records_interrupt_remapping_faults());
    }
}
