//! Access Control Services policy (PCIe Base 4.0 §6.12 and the ACS capability, §7.7.7).
//!
//! ACS decides whether peer-to-peer requests between functions below the same port stay there
//! or are forced up to the root complex, where the IOMMU sees them. Isolation (the kernel's
//! default when the IOMMU is on) enables Source Validation, P2P Request Redirect, P2P Completion
//! Redirect and Upstream Forwarding on every function that has the capability; it is a policy the
//! embedder can change ([`AcsPolicy`]). Only control bits the capability advertises are set:
//! the others are hardwired to 0 and setting them proves nothing. The write-back keeps every
//! other bit of the Control register as it was, including bits this crate does not name
//! (PCIe 5.0 and later define bits 7-12: I/O Request Blocking, Memory Target Access Control,
//! Unclaimed Request Redirect): the register is read and written as a raw `u16`.
//!
//! ACS Control is not sticky: a Function Level Reset or a bus reset clears it. The
//! configuration save/restore around resets (`crate::reset::SavedConfig`) saves and restores it
//! with the Egress Control Vector.
//!
//! In QEMU 7.2 only `pcie-root-port` has ACS (control 0 at reset); switch ports have none.

use alloc::vec::Vec;
use core::fmt;

use crate::regs::{acs as acs_regs, AcsFlags};
use crate::{Bdf, ConfigSpace, Topology};

// The register readers live in the lower module `acs_state`, so the topology can read ACS
// without depending on this policy, which walks the topology.
use crate::acs_state::flag_names;
pub use crate::acs_state::{read_acs, read_control_raw, AcsState};

/// What to do with ACS controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcsPolicy {
    /// Enable SV, RR, CR and UF where advertised: every peer-to-peer request goes through the
    /// IOMMU. The default with an IOMMU.
    #[default]
    Isolate,
    /// Touch nothing (report the current state only).
    Leave,
    /// Enable these controls where advertised (controls already set stay set).
    Enable(AcsFlags),
}

impl AcsPolicy {
    /// The controls [`AcsPolicy::Isolate`] enables.
    pub const ISOLATION: AcsFlags = AcsFlags::SV
        .union(AcsFlags::RR)
        .union(AcsFlags::CR)
        .union(AcsFlags::UF);

    /// The controls the policy asks for.
    pub const fn requested(self) -> AcsFlags {
        match self {
            Self::Isolate => Self::ISOLATION,
            Self::Leave => AcsFlags::empty(),
            Self::Enable(flags) => flags,
        }
    }
}

/// What the policy did to one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcsPortReport {
    /// The function.
    pub bdf: Bdf,
    /// Offset of its ACS capability.
    pub offset: u16,
    /// Advertised features.
    pub capability: AcsFlags,
    /// Control before.
    pub before: AcsFlags,
    /// Control read back after the write.
    pub after: AcsFlags,
    /// Requested controls the function does not advertise (left alone).
    pub unsupported: AcsFlags,
}

impl AcsPortReport {
    /// Controls this run turned on.
    pub fn enabled(&self) -> AcsFlags {
        self.after.difference(self.before)
    }

    /// Advertised, requested controls that did not stick (read back as 0).
    pub fn stuck(&self, policy: AcsPolicy) -> AcsFlags {
        policy
            .requested()
            .intersection(self.capability)
            .difference(self.after)
    }
}

/// The per-function results of [`apply_acs_policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcsReport {
    /// The policy applied.
    pub policy: AcsPolicy,
    /// One entry per function with an ACS capability, in BDF order.
    pub ports: Vec<AcsPortReport>,
}

impl fmt::Display for AcsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ACS policy {:?}: {} port(s) with ACS",
            self.policy,
            self.ports.len()
        )?;
        for p in &self.ports {
            writeln!(
                f,
                "  {}: cap [{}] ctl [{}] -> [{}]",
                p.bdf,
                flag_names(p.capability),
                flag_names(p.before),
                flag_names(p.after)
            )?;
        }
        Ok(())
    }
}

/// Applies `policy` to every function of `topology` that has an ACS capability.
///
/// Each control register is written once, with a 16-bit write of the raw value read (every bit,
/// named or not) OR `requested & capability`, and only when that differs from what was read;
/// no bit is ever cleared. The report gives the control value read back.
pub fn apply_acs_policy(
    cfg: &impl ConfigSpace,
    topology: &Topology,
    policy: AcsPolicy,
) -> AcsReport {
    let requested = policy.requested();
    let mut ports = Vec::new();
    for function in topology.functions_sorted() {
        let Some(offset) = function.acs_offset() else {
            continue;
        };
        let bdf = function.bdf;
        let state = read_acs(cfg, bdf, offset);
        let raw = read_control_raw(cfg, bdf, offset);
        let wanted = raw | requested.intersection(state.capability).bits();
        let after = if wanted != raw {
            cfg.write16(bdf, offset.saturating_add(acs_regs::CONTROL), wanted);
            read_acs(cfg, bdf, offset).control
        } else {
            state.control
        };
        ports.push(AcsPortReport {
            bdf,
            offset,
            capability: state.capability,
            before: state.control,
            after,
            unsupported: requested.difference(state.capability),
        });
    }
    AcsReport { policy, ports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::DevicePortType;
    use crate::testing::FakeConfigSpace;
    use crate::{enumerate, McfgRegion};

    fn bdf(bus: u8, device: u8) -> Bdf {
        Bdf::new(0, bus, device, 0).unwrap()
    }

    fn region() -> McfgRegion {
        McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
    }

    fn ports() -> FakeConfigSpace {
        let fake = FakeConfigSpace::new();
        // QEMU's root port advertises SV TB RR CR UF DT (0x5f).
        fake.add_bridge(bdf(0, 1), 0x1b36, 0x000c, 0, 1, 1);
        fake.add_pcie_capability(bdf(0, 1), DevicePortType::RootPort);
        fake.add_acs(bdf(0, 1), AcsFlags::from_bits_retain(0x5f));
        // A port that only advertises SV and RR.
        fake.add_bridge(bdf(0, 2), 0x1b36, 0x000c, 0, 2, 2);
        fake.add_pcie_capability(bdf(0, 2), DevicePortType::RootPort);
        fake.add_acs(bdf(0, 2), AcsFlags::SV | AcsFlags::RR);
        // No ACS at all.
        fake.add_bridge(bdf(0, 3), 0x1b36, 0x000c, 0, 3, 3);
        fake.add_pcie_capability(bdf(0, 3), DevicePortType::RootPort);
        fake
    }

    #[test]
    fn isolate_sets_only_advertised_bits() {
        let fake = ports();
        let topo = enumerate(&fake, &[region()]);
        fake.clear_writes();
        let report = apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
        assert_eq!(report.ports.len(), 2);
        let full = report.ports[0];
        assert_eq!(full.bdf, bdf(0, 1));
        assert_eq!(full.before, AcsFlags::empty());
        assert_eq!(full.after, AcsPolicy::ISOLATION);
        assert_eq!(full.unsupported, AcsFlags::empty());
        let partial = report.ports[1];
        assert_eq!(partial.after, AcsFlags::SV | AcsFlags::RR);
        assert_eq!(partial.unsupported, AcsFlags::CR | AcsFlags::UF);
        assert_eq!(partial.stuck(AcsPolicy::Isolate), AcsFlags::empty());
        // One 16-bit write per port, never setting an unadvertised bit.
        let writes = fake.writes();
        assert_eq!(writes.len(), 2);
        assert!(writes.iter().all(|w| w.width == 2));
        assert_eq!(
            writes[1].value,
            u32::from((AcsFlags::SV | AcsFlags::RR).bits())
        );
        // The path query sees the new controls.
        let path = topo.acs_path(&fake, bdf(0, 1)).unwrap();
        assert_eq!(path[0].acs.map(|s| s.control), Some(AcsPolicy::ISOLATION));
        // Applying again writes nothing.
        fake.clear_writes();
        let again = apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
        assert!(fake.writes().is_empty());
        assert!(again.ports.iter().all(|p| p.enabled().is_empty()));
        assert!(report
            .to_string()
            .contains("00:01.0: cap [SV TB RR CR UF DT] ctl [-] -> [SV RR CR UF]"));
    }

    #[test]
    fn leave_and_custom_policies() {
        let fake = ports();
        let topo = enumerate(&fake, &[region()]);
        fake.clear_writes();
        let report = apply_acs_policy(&fake, &topo, AcsPolicy::Leave);
        assert!(fake.writes().is_empty());
        assert!(report.ports.iter().all(|p| p.after == p.before));
        let report = apply_acs_policy(&fake, &topo, AcsPolicy::Enable(AcsFlags::SV | AcsFlags::EC));
        assert_eq!(report.ports[0].after, AcsFlags::SV);
        assert_eq!(report.ports[0].unsupported, AcsFlags::EC);
        // Existing controls are kept.
        let report = apply_acs_policy(&fake, &topo, AcsPolicy::Enable(AcsFlags::TB));
        assert_eq!(report.ports[0].after, AcsFlags::SV | AcsFlags::TB);
        assert!(!report.ports[0].after.intersects(AcsFlags::REDIRECT));
    }

    /// Control bits this crate does not name (PCIe 5.0's I/O Request Blocking, bit 7, and
    /// Memory Target Access Control, bits 9:8) survive the write-back.
    #[test]
    fn write_back_preserves_control_bits_it_does_not_know() {
        let fake = FakeConfigSpace::new();
        fake.add_bridge(bdf(0, 1), 0x1b36, 0x000c, 0, 1, 1);
        fake.add_pcie_capability(bdf(0, 1), DevicePortType::RootPort);
        // Advertises SV TB RR CR UF DT and the Enhanced Capability (bit 7); bits 15:8 are the
        // egress vector size, so control bits 8+ are read-only in the fake.
        let offset = fake.add_acs(bdf(0, 1), AcsFlags::from_bits_retain(0xdf));
        let unknown = 0x0180;
        fake.poke16(bdf(0, 1), offset + acs_regs::CONTROL, unknown);
        let topo = enumerate(&fake, &[region()]);
        fake.clear_writes();
        let report = apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
        assert_eq!(report.ports[0].after, AcsPolicy::ISOLATION);
        let writes = fake.writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].value,
            u32::from(unknown | AcsPolicy::ISOLATION.bits())
        );
        assert_eq!(
            read_control_raw(&fake, bdf(0, 1), offset),
            unknown | AcsPolicy::ISOLATION.bits()
        );
        // Nothing to add: no write, even with unknown bits set.
        fake.clear_writes();
        apply_acs_policy(&fake, &topo, AcsPolicy::Isolate);
        assert!(fake.writes().is_empty());
    }

    #[test]
    fn redirect_rule() {
        let state = |control| AcsState {
            capability: AcsFlags::all(),
            control,
        };
        assert!(!state(AcsFlags::SV | AcsFlags::UF | AcsFlags::TB | AcsFlags::DT).has_redirect());
        for bit in [AcsFlags::RR, AcsFlags::CR, AcsFlags::EC] {
            assert!(state(bit).has_redirect());
        }
    }
}
