//! [`Assigner::assign`] over QEMU's captured "complex" machine (and two small hand-built ones)
//! with fake VT-d units (issue 14): the whole sequence recorded on one timeline (configuration
//! writes through a logging [`ConfigSpace`], the embedder's revoke calls, and the table
//! write-backs and invalidations the fake unit completed), the refusals that must change
//! nothing, a failing revoke hook, a group's life from host through two guests, quarantine and
//! back to the host, the interrupts of an assigned device, and a bridge inside a group.
//!
//! The unit-level switch (exact stores and invalidations of `VtdUnit::assign_group`) is tested
//! in `drivers/iommu-vtd/tests/assign.rs`; here the glue's order around it is. Outcomes are
//! judged by what the fake hardware does (where a DMA or an interrupt lands, the registers a
//! reset zeroed), not by the glue's bookkeeping alone.

use std::sync::{Arc, Mutex};

use dma::iommu::Prot;
use iommu_vtd::context::ContextEntry;
use iommu_vtd::dmar::{drhd_flags, scope_type, PathEntry, ScopeSpec};
use iommu_vtd::fake::{FakeVtd, HostPlatform, InterruptResult, TableEvent};
use iommu_vtd::invalidation::Invalidation;
use iommu_vtd::{
    Destination, Dmar, DmarBuilder, FaultReason, GroupOwner, PagingLevels, UnitConfig, VtdError,
    VtdUnit,
};
use pci::acs::{apply_acs_policy, AcsPolicy};
use pci::regs::DevicePortType;
use pci::regs::{bridge, header, pcie, AcsFlags, BridgeControl, CapabilityId, Command};
use pci::reset::ResetMethod;
use pci::testing::{acpi_table_bytes, FakeConfigSpace};
use pci::{Bdf, ConfigSpace, McfgRegion};
use vtd_platform::{
    group_key, AssignError, AssignHooks, AssignPolicy, AssignReport, AssignTarget, Assigner,
    AttachError, GuestDomain, Iommu, PciState, RmrrInfo, UnitEntry,
};

const CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");
const ACPI: &str = include_str!("../../iommu-vtd/tests/fixtures/complex.acpi");

type Fake = Iommu<FakeVtd, Arc<HostPlatform>>;
type Unit = VtdUnit<FakeVtd, Arc<HostPlatform>>;
type Guest = Arc<GuestDomain<FakeVtd, Arc<HostPlatform>>>;

const RW: Prot = Prot::READ.union(Prot::WRITE);
/// The guest-physical page the devices DMA to.
const GPA: u64 = 0x10_0000;
/// Where each guest's RAM at [`GPA`] lives in host memory.
const VM1_HPA: u64 = 0x8000_0000;
const VM2_HPA: u64 = 0x9000_0000;
/// A host driver's IOVA and buffer.
const HOST_IOVA: u64 = 0x20_0000;
const HOST_BUF: u64 = 0x7000_0000;
/// IRTEs in each unit's interrupt remapping table.
const IRTES: u16 = 64;

fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(0, bus, device, function).unwrap()
}

/// edu behind the first root port (00:03.0): a group of its own, reset only by the port's
/// secondary-bus reset.
fn edu() -> Bdf {
    bdf(1, 0, 0)
}

/// The PCIe-to-PCI bridge 00:05.0 and the edu behind it (06:03.0, DMA as 06:00.0): one group.
const PCI_BRIDGE: (u8, u8, u8) = (0, 5, 0);
const EDU_BEHIND_PCI_BRIDGE: (u8, u8, u8) = (6, 3, 0);
/// A switch downstream port (advertising FLR in the fixture) and the edu below it: one group.
const DOWNSTREAM_PORT: (u8, u8, u8) = (3, 0, 0);
const EDU_BELOW_SWITCH: (u8, u8, u8) = (4, 0, 0);
/// The VGA device on bus 0: no FLR, no PM, no parent bridge, so no reset method.
const VGA: (u8, u8, u8) = (0, 1, 0);

fn at((bus, device, function): (u8, u8, u8)) -> Bdf {
    bdf(bus, device, function)
}

// ---------------------------------------------------------------------------------------------
// The recording: one timeline of configuration writes, revoke calls and table events.
// ---------------------------------------------------------------------------------------------

/// One thing that happened during an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A configuration write through [`Logged`].
    Cfg {
        bdf: Bdf,
        offset: u16,
        width: u8,
        value: u32,
        /// The function's Command register just before the write.
        command_before: u16,
    },
    /// [`AssignHooks::revoke_exports`] was called for this function.
    Revoke(Bdf),
    /// Table memory written back, an invalidation completed or a wait status written
    /// ([`HostPlatform::table_events`]).
    Table(TableEvent),
}

/// Merges the platform's table events into one log with the events the test's wrappers see:
/// before each of its own events it appends the table events completed since the last one, so
/// the log is in the order things happened.
struct Recorder {
    platform: Arc<HostPlatform>,
    state: Mutex<(Vec<Event>, usize)>,
}

impl Recorder {
    fn new(platform: Arc<HostPlatform>) -> Self {
        platform.record_table_events(true);
        Self {
            platform,
            state: Mutex::new((Vec::new(), 0)),
        }
    }

    fn sync(&self) {
        let table = self.platform.table_events();
        let mut s = self.state.lock().unwrap();
        let from = s.1;
        s.0.extend(table[from..].iter().cloned().map(Event::Table));
        s.1 = table.len();
    }

    fn push(&self, e: Event) {
        self.sync();
        self.state.lock().unwrap().0.push(e);
    }

    /// Everything recorded since the last call.
    fn take(&self) -> Vec<Event> {
        self.sync();
        std::mem::take(&mut self.state.lock().unwrap().0)
    }
}

/// A [`ConfigSpace`] that records every write (reads are not recorded).
struct Logged<'a> {
    cfg: &'a FakeConfigSpace,
    rec: &'a Recorder,
}

impl Logged<'_> {
    fn log(&self, bdf: Bdf, offset: u16, width: u8, value: u32) {
        self.rec.push(Event::Cfg {
            bdf,
            offset,
            width,
            value,
            command_before: self.cfg.peek16(bdf, header::COMMAND),
        });
    }
}

impl ConfigSpace for Logged<'_> {
    fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        self.cfg.read8(bdf, offset)
    }
    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        self.cfg.read16(bdf, offset)
    }
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        self.cfg.read32(bdf, offset)
    }
    fn write8(&self, bdf: Bdf, offset: u16, value: u8) {
        self.log(bdf, offset, 1, value.into());
        self.cfg.write8(bdf, offset, value);
    }
    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        self.log(bdf, offset, 2, value.into());
        self.cfg.write16(bdf, offset, value);
    }
    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        self.log(bdf, offset, 4, value);
        self.cfg.write32(bdf, offset, value);
    }
}

/// The embedder's hooks: every revoke recorded; the revoke of `fail` refused.
struct Hooks<'a> {
    rec: &'a Recorder,
    fail: Option<Bdf>,
    delayed_us: u64,
}

impl AssignHooks for Hooks<'_> {
    fn revoke_exports(&mut self, bdf: Bdf) -> Result<(), ()> {
        self.rec.push(Event::Revoke(bdf));
        if self.fail == Some(bdf) {
            Err(())
        } else {
            Ok(())
        }
    }

    fn delay_us(&mut self, us: u32) {
        self.delayed_us += u64::from(us);
    }
}

// ---------------------------------------------------------------------------------------------
// The machine.
// ---------------------------------------------------------------------------------------------

struct Machine {
    cfg: FakeConfigSpace,
    pci: PciState,
    iommu: Fake,
    assigner: Assigner<FakeVtd, Arc<HostPlatform>>,
    rec: Recorder,
}

impl Machine {
    /// `cfg` enumerated over `regions` with ACS isolation, one fake unit per DRHD of
    /// `dmar_bytes` (translation and interrupt remapping on), bus mastering on for every
    /// function (as host drivers left it).
    fn build(cfg: FakeConfigSpace, regions: &[McfgRegion], dmar_bytes: &[u8]) -> Self {
        let topology = pci::enumerate(&cfg, regions);
        apply_acs_policy(&cfg, &topology, AcsPolicy::Isolate);
        let groups = pci::group::compute(&cfg, &topology);
        let pci = PciState { topology, groups };
        for f in pci.topology.functions() {
            let command = cfg.peek16(f.bdf, header::COMMAND);
            cfg.poke16(f.bdf, header::COMMAND, command | Command::BUS_MASTER.bits());
        }
        let dmar = Dmar::parse(dmar_bytes).unwrap();
        let platform = Arc::new(HostPlatform::new());
        let mut iommu = Fake::new(dmar.host_address_width());
        for drhd in dmar.drhds() {
            let regs = FakeVtd::qemu_default(platform.clone());
            let unit = Arc::new(VtdUnit::new(regs, platform.clone(), UnitConfig::new(39)).unwrap());
            unit.enable().unwrap();
            unit.enable_interrupt_remapping(u32::from(IRTES), false)
                .unwrap();
            let (entry, missed) = UnitEntry::new(unit, &drhd, &pci.topology, PagingLevels::Three);
            assert_eq!(missed, 0);
            iommu.units.push(entry);
        }
        cfg.clear_writes();
        Self {
            cfg,
            pci,
            iommu,
            assigner: Assigner::new(),
            rec: Recorder::new(platform),
        }
    }

    /// QEMU's complex machine with its own DMAR (one unit).
    fn qemu() -> Self {
        Self::qemu_with_dmar(&acpi_table_bytes(ACPI, "DMAR"))
    }

    fn qemu_with_dmar(dmar: &[u8]) -> Self {
        let regions = pci::mcfg::parse(&acpi_table_bytes(ACPI, "MCFG")).unwrap();
        let cfg = FakeConfigSpace::from_qemu_fixture(CFG).unwrap();
        Self::build(cfg, &regions, dmar)
    }

    fn unit(&self, b: Bdf) -> &Arc<Unit> {
        &self.iommu.unit_for(&self.pci, b).unwrap().unit
    }

    fn key(&self, b: Bdf) -> u32 {
        group_key(self.pci.groups.group_of(b).unwrap())
    }

    fn members(&self, b: Bdf) -> Vec<Bdf> {
        self.pci.groups.group_of(b).unwrap().members().to_vec()
    }

    /// A guest on `b`'s unit whose RAM page [`GPA`] is backed by host page `hpa`.
    fn guest(&self, b: Bdf, vm: u32, hpa: u64) -> Guest {
        let g = self.iommu.create_guest(&self.pci, b, vm).unwrap();
        g.space().map(GPA, hpa, 0x1000, RW).unwrap();
        g
    }

    /// Assigns through the logging configuration space with hooks that refuse `fail`'s
    /// revoke; returns the outcome and what was recorded.
    fn assign_failing(
        &self,
        b: Bdf,
        target: AssignTarget<'_, FakeVtd, Arc<HostPlatform>>,
        policy: AssignPolicy,
        fail: Option<Bdf>,
    ) -> (Result<AssignReport, AssignError>, Vec<Event>) {
        self.rec.take();
        let logged = Logged {
            cfg: &self.cfg,
            rec: &self.rec,
        };
        let mut hooks = Hooks {
            rec: &self.rec,
            fail,
            delayed_us: 0,
        };
        let r = self.assigner.assign(
            &self.iommu,
            &self.pci,
            &logged,
            b,
            target,
            &mut hooks,
            policy,
        );
        (r, self.rec.take())
    }

    fn assign(
        &self,
        b: Bdf,
        target: AssignTarget<'_, FakeVtd, Arc<HostPlatform>>,
        policy: AssignPolicy,
    ) -> (Result<AssignReport, AssignError>, Vec<Event>) {
        self.assign_failing(b, target, policy, None)
    }

    /// A DMA by `b` (with the requester ID its requests carry at the unit) at `iova`.
    fn dma(&self, b: Bdf, iova: u64) -> Result<u64, FaultReason> {
        let source = self.pci.topology.iommu_source_id(b).unwrap();
        self.unit(b)
            .registers()
            .dma(source.requester_id(), iova, true)
    }

    /// An interrupt by `b` with `message`.
    fn interrupt(&self, b: Bdf, message: pci::msi::MsiMessage) -> InterruptResult {
        let source = self.pci.topology.iommu_source_id(b).unwrap();
        self.unit(b)
            .registers()
            .interrupt(source.requester_id(), message.address, message.data)
    }

    fn bus_master(&self, b: Bdf) -> bool {
        self.cfg.peek16(b, header::COMMAND) & Command::BUS_MASTER.bits() != 0
    }

    /// Everything an assignment could change, across every unit and function.
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for g in self.pci.groups.groups() {
            let key = group_key(g);
            let Some(entry) = self.iommu.unit_for(&self.pci, g.members()[0]) else {
                continue;
            };
            let u = &entry.unit;
            s.owners.push((key, u.group_owner(key)));
            s.guests
                .push((key, self.assigner.guest_of(key).map(|g| g.vm())));
            for &rid in g.requester_ids() {
                s.contexts.push((rid.get(), u.context_entry(rid)));
            }
        }
        for e in &self.iommu.units {
            s.invalidations
                .push(e.unit.registers().invalidations().len());
            s.irtes
                .push((0..IRTES).map(|i| e.unit.irte_raw(i)).collect());
            s.faults.push(e.unit.read_faults().records.len());
        }
        for f in self.pci.topology.functions() {
            s.functions.push((
                f.bdf,
                self.cfg.peek16(f.bdf, header::COMMAND),
                self.cfg.reset_count(f.bdf),
            ));
        }
        s.config_writes = self.cfg.writes().len();
        s
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Snapshot {
    owners: Vec<(u32, Option<GroupOwner>)>,
    guests: Vec<(u32, Option<u32>)>,
    contexts: Vec<(u16, Option<ContextEntry>)>,
    invalidations: Vec<usize>,
    irtes: Vec<Vec<Option<(u64, u64)>>>,
    faults: Vec<usize>,
    functions: Vec<(Bdf, u16, u32)>,
    config_writes: usize,
}

fn policy() -> AssignPolicy {
    AssignPolicy::default()
}

// ---------------------------------------------------------------------------------------------
// Classifying a timeline.
// ---------------------------------------------------------------------------------------------

/// What one recorded event is, for the order checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A member endpoint's Command written with Bus Master Enable clear (the quiesce).
    BusMasterOff(Bdf),
    Revoke(Bdf),
    /// An IRTE cleared (written back with P = 0).
    IrteCleared,
    /// An interrupt-entry-cache invalidation.
    Iec,
    /// The write that resets: Initiate FLR, or Secondary Bus Reset set in Bridge Control.
    ResetTrigger(Bdf),
    /// Any other configuration write of the reset (save/quiesce/release/restore) to one of
    /// the functions a reset touches.
    ResetWrite(Bdf),
    /// A context entry of the group written back.
    ContextWrite,
    /// Table memory written back with nothing the walker sees changed (the switch's probe of
    /// the 16-byte store, a root entry stored back onto itself).
    Invisible,
    /// A context-cache or IOTLB invalidation.
    ContextOrIotlbInvalidation,
    /// A wait descriptor's status write (the end of a queue submission).
    Wait,
    /// Anything else: must not happen.
    Other,
}

struct Classifier<'m> {
    m: &'m Machine,
    group: Vec<Bdf>,
    /// Functions an assignment may write to: the group's members and their parent bridges
    /// (whose secondary bus is reset).
    reset_scope: Vec<Bdf>,
    rids: Vec<pci::RequesterId>,
    unit: &'m Unit,
    irt: (u64, u64),
}

impl<'m> Classifier<'m> {
    fn new(m: &'m Machine, b: Bdf) -> Self {
        let group = m.members(b);
        let u = m.unit(b);
        let mut reset_scope: Vec<Bdf> = group.clone();
        for &f in &group {
            if let Some(p) = m.pci.topology.parent(f) {
                reset_scope.push(p.bdf);
            }
        }
        let rids = m.pci.groups.group_of(b).unwrap().requester_ids().to_vec();
        let (table, entries, _) = u.interrupt_remapping_table().unwrap();
        let irt = (table.as_u64(), table.as_u64() + u64::from(entries) * 16);
        Self {
            m,
            group,
            reset_scope,
            rids,
            unit: u,
            irt,
        }
    }

    /// Whether the table word at `phys` (now `value`) belongs to the group's context
    /// entries: the entries themselves, the root entries of their buses, or a fresh context
    /// table of those buses being zero-filled.
    fn is_context_word(&self, phys: u64, value: u64) -> bool {
        let root = self.unit.root_table().as_u64();
        let platform = self.unit.platform();
        self.rids.iter().any(|r| {
            let root_entry = root + u64::from(r.bus()) * 16;
            if (root_entry..root_entry + 16).contains(&phys) {
                return true;
            }
            let Some(lo) = platform.read_cpu_u64(root_entry).filter(|lo| lo & 1 == 1) else {
                return false;
            };
            let table = lo & !0xFFF;
            let entry = table + u64::from(r.devfn()) * 16;
            (entry..entry + 16).contains(&phys)
                || ((table..table + 4096).contains(&phys) && value == 0)
        })
    }

    fn is_endpoint(&self, b: Bdf) -> bool {
        self.m
            .pci
            .topology
            .function(b)
            .is_some_and(|f| f.bridge.is_none())
    }

    fn step(&self, e: &Event) -> Step {
        match e {
            Event::Revoke(b) => Step::Revoke(*b),
            Event::Cfg {
                bdf,
                offset,
                width,
                value,
                command_before,
            } => {
                let b = *bdf;
                if !self.reset_scope.contains(&b) {
                    return Step::Other;
                }
                // Bridges (members or the parents of members) only see their Secondary Bus
                // Reset: no Command write, no save/restore.
                if !self.is_endpoint(b) && *offset != bridge::BRIDGE_CONTROL {
                    return Step::Other;
                }
                let value16 = *value as u16;
                if *offset == header::COMMAND
                    && *width == 2
                    && self.group.contains(&b)
                    && self.is_endpoint(b)
                    && command_before & Command::BUS_MASTER.bits() != 0
                    && value16 & Command::BUS_MASTER.bits() == 0
                    && value16 != Command::INTERRUPT_DISABLE.bits()
                {
                    return Step::BusMasterOff(b);
                }
                if *offset == bridge::BRIDGE_CONTROL
                    && value16 & BridgeControl::SECONDARY_BUS_RESET.bits() != 0
                {
                    return Step::ResetTrigger(b);
                }
                let express = pci::capability::standard_capabilities(&self.m.cfg, b)
                    .entries
                    .into_iter()
                    .find(|c| c.id == CapabilityId::PCI_EXPRESS)
                    .map(|c| u16::from(c.offset));
                if express.is_some_and(|p| *offset == p + pcie::DEVICE_CONTROL)
                    && value16 & pcie::DEVCTL_INITIATE_FLR != 0
                {
                    return Step::ResetTrigger(b);
                }
                Step::ResetWrite(b)
            }
            Event::Table(TableEvent::WrittenBack { changed, .. }) => {
                if changed.is_empty() {
                    Step::Invisible
                } else if !changed.is_empty()
                    && changed.iter().all(|&(p, v)| self.is_context_word(p, v))
                {
                    Step::ContextWrite
                } else if !changed.is_empty()
                    && changed.iter().all(|(p, v)| {
                        (self.irt.0..self.irt.1).contains(p) && (p % 16 != 0 || v & 1 == 0)
                    })
                {
                    Step::IrteCleared
                } else {
                    Step::Other
                }
            }
            Event::Table(TableEvent::Invalidated(inv)) => match inv {
                Invalidation::InterruptEntries { .. } | Invalidation::InterruptEntryGlobal => {
                    Step::Iec
                }
                Invalidation::ContextDevice { .. } | Invalidation::IotlbDomain { .. } => {
                    Step::ContextOrIotlbInvalidation
                }
                _ => Step::Other,
            },
            Event::Table(TableEvent::StatusWritten { .. }) => Step::Wait,
        }
    }

    fn steps(&self, events: &[Event]) -> Vec<Step> {
        events.iter().map(|e| self.step(e)).collect()
    }
}

fn positions(steps: &[Step], f: impl Fn(&Step) -> bool) -> Vec<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| f(s))
        .map(|(i, _)| i)
        .collect()
}

/// Asserts the documented order of a whole assignment (module docs of `assign`): Bus Master
/// off for every member endpoint, then every member's revoke, then the previous guest's IRTEs
/// cleared with their IEC invalidation, then the reset, then the context-entry switch and its
/// invalidations, and nothing else. `irtes`: whether interrupts must be revoked.
fn assert_sequence(c: &Classifier<'_>, events: &[Event], irtes: bool) {
    let steps = c.steps(events);
    let show = || format!("{:#?}", steps.iter().zip(events).collect::<Vec<_>>());
    assert!(
        !steps.contains(&Step::Other),
        "unexpected events: {}",
        show()
    );
    let endpoints: Vec<Bdf> = c
        .group
        .iter()
        .copied()
        .filter(|&b| c.is_endpoint(b))
        .collect();
    // Bus Master off: exactly once per member endpoint, in member order, first of all.
    let bme: Vec<Bdf> = steps
        .iter()
        .filter_map(|s| match s {
            Step::BusMasterOff(b) => Some(*b),
            _ => None,
        })
        .collect();
    assert_eq!(bme, endpoints, "{}", show());
    let bme_at = positions(&steps, |s| matches!(s, Step::BusMasterOff(_)));
    assert_eq!(
        bme_at,
        (0..endpoints.len()).collect::<Vec<_>>(),
        "bus mastering is turned off before anything else: {}",
        show()
    );
    // Revoke: every member once, after every Bus Master write.
    let revoked: Vec<Bdf> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Revoke(b) => Some(*b),
            _ => None,
        })
        .collect();
    assert_eq!(revoked, c.group, "{}", show());
    let revoke_at = positions(&steps, |s| matches!(s, Step::Revoke(_)));
    let last_bme = *bme_at.last().unwrap();
    assert!(revoke_at.iter().all(|&i| i > last_bme), "{}", show());
    let last_revoke = *revoke_at.last().unwrap();
    // Interrupts: cleared entries and their IEC invalidations, after the revokes.
    let irq_at = positions(&steps, |s| matches!(s, Step::IrteCleared | Step::Iec));
    let iec_at = positions(&steps, |s| matches!(s, Step::Iec));
    assert_eq!(!iec_at.is_empty(), irtes, "IEC invalidations: {}", show());
    if irtes {
        assert!(!positions(&steps, |s| matches!(s, Step::IrteCleared)).is_empty());
    }
    assert!(irq_at.iter().all(|&i| i > last_revoke), "{}", show());
    // Reset: the trigger after the revokes and the interrupts; every reset write after them.
    let trigger_at = positions(&steps, |s| matches!(s, Step::ResetTrigger(_)));
    assert!(!trigger_at.is_empty(), "a reset happened: {}", show());
    let reset_at = positions(&steps, |s| {
        matches!(s, Step::ResetTrigger(_) | Step::ResetWrite(_))
    });
    let after_irqs = irq_at.last().copied().unwrap_or(last_revoke);
    assert!(
        reset_at.iter().all(|&i| i > after_irqs),
        "the reset comes after the revokes and the previous guest's interrupts: {}",
        show()
    );
    // Switch: the context entries written back after the last reset write, then the
    // invalidations, then the wait that ends the submission, last of all.
    let last_reset = *reset_at.last().unwrap();
    let switch_at = positions(&steps, |s| {
        matches!(
            s,
            Step::ContextWrite | Step::ContextOrIotlbInvalidation | Step::Invisible
        )
    });
    assert!(!switch_at.is_empty(), "{}", show());
    assert!(
        switch_at.iter().all(|&i| i > last_reset),
        "the context entries switch after the reset: {}",
        show()
    );
    assert_eq!(steps.last(), Some(&Step::Wait), "{}", show());
    let first_switch = switch_at[0];
    assert!(
        irq_at.iter().all(|&i| i < first_switch),
        "old IRTEs are gone before the switch: {}",
        show()
    );
    // Waits only end submissions: one after the IEC work (if any) and one after the switch.
    let waits = positions(&steps, |s| matches!(s, Step::Wait));
    assert!(waits.iter().all(|&i| i > last_revoke), "{}", show());
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_whole_sequence_runs_in_the_documented_order_and_nothing_else_happens() {
    let m = Machine::qemu();
    let dev = edu();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let vm2 = m.guest(dev, 2, VM2_HPA);
    let c = Classifier::new(&m, dev);

    // Host → VM1: no interrupts to revoke.
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm1), policy());
    let report = r.unwrap();
    assert_sequence(&c, &events, false);
    assert_eq!(report.members, vec![dev]);
    assert_eq!(report.revoked, 1);
    assert_eq!(report.interrupts_revoked, 0);
    assert_eq!(
        report.resets,
        vec![(
            ResetMethod::SecondaryBus {
                bridge: bdf(0, 3, 0)
            },
            vec![dev]
        )]
    );
    assert_eq!(report.vtd.from_did, None);
    assert_eq!(m.dma(dev, GPA + 8), Ok(VM1_HPA + 8));

    // VM1 programs its vectors; VM1 → VM2 must clear them before the switch.
    let message = vm1
        .remap_interrupts(&m.assigner, &m.pci, dev, &[0x41], Destination::XApic(0))
        .unwrap();
    assert!(matches!(
        m.interrupt(dev, message),
        InterruptResult::Delivered { vector: 0x41, .. }
    ));
    m.cfg.poke16(
        dev,
        header::COMMAND,
        m.cfg.peek16(dev, header::COMMAND) | Command::BUS_MASTER.bits(),
    );
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm2), policy());
    let report = r.unwrap();
    assert_sequence(&c, &events, true);
    assert_eq!(report.interrupts_revoked, 1);
    assert_eq!(report.vtd.from_did, Some(vm1.did()));
    assert_eq!(report.vtd.atomic_stores, 1);
    // The invalidations of the switch name the old domain.
    let switch: Vec<Invalidation> = events
        .iter()
        .filter_map(|e| match e {
            Event::Table(TableEvent::Invalidated(
                i @ (Invalidation::ContextDevice { .. } | Invalidation::IotlbDomain { .. }),
            )) => Some(*i),
            _ => None,
        })
        .collect();
    assert_eq!(
        switch,
        vec![
            Invalidation::ContextDevice {
                did: vm1.did(),
                sid: dev.requester_id()
            },
            Invalidation::IotlbDomain { did: vm1.did() }
        ]
    );
    assert_eq!(m.dma(dev, GPA + 8), Ok(VM2_HPA + 8));
    assert!(
        !m.bus_master(dev),
        "the new owner enables bus mastering itself"
    );
    assert_eq!(m.cfg.reset_count(dev), 2);
    assert!(m.unit(dev).registers().violations().is_empty());
}

/// The order checker itself must be able to fail: the same timeline with two steps swapped
/// is rejected.
#[test]
fn the_order_check_rejects_a_reordered_timeline() {
    let m = Machine::qemu();
    let dev = edu();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let c = Classifier::new(&m, dev);
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm1), policy());
    r.unwrap();
    assert_sequence(&c, &events, false);
    let steps = c.steps(&events);
    let find = |f: &dyn Fn(&Step) -> bool| steps.iter().position(f).unwrap();
    let bme = find(&|s| matches!(s, Step::BusMasterOff(_)));
    let revoke = find(&|s| matches!(s, Step::Revoke(_)));
    let trigger = find(&|s| matches!(s, Step::ResetTrigger(_)));
    let switch = find(&|s| matches!(s, Step::ContextWrite));
    for (a, b) in [(bme, revoke), (revoke, trigger), (trigger, switch)] {
        let mut bad = events.clone();
        bad.swap(a, b);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_sequence(&c, &bad, false)
        }));
        assert!(
            caught.is_err(),
            "swapping events {a} and {b} went unnoticed"
        );
    }
    // An extra write to a function outside the group is "something else".
    let mut extra = events.clone();
    extra.insert(
        1,
        Event::Cfg {
            bdf: bdf(0, 2, 0),
            offset: header::COMMAND,
            width: 2,
            value: 0,
            command_before: 0,
        },
    );
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_sequence(&c, &extra, false)
    }));
    assert!(caught.is_err());
}

/// Asserts that `result` is `want` and that nothing was recorded or changed.
fn assert_refused(
    m: &Machine,
    before: &Snapshot,
    (result, events): (Result<AssignReport, AssignError>, Vec<Event>),
    want: AssignError,
) {
    assert_eq!(result, Err(want.clone()));
    assert!(events.is_empty(), "{want}: {events:#?}");
    assert_eq!(&m.snapshot(), before, "{want} changed something");
    // Display names the failure (never empty).
    assert!(!want.to_string().is_empty());
}

#[test]
fn a_group_a_host_driver_holds_is_refused_and_nothing_changes() {
    let m = Machine::qemu();
    let dev = edu();
    let host = Arc::new(m.iommu.domain_for(&m.pci, dev).unwrap());
    let member = m.iommu.attach_member(&m.pci, &host, dev).unwrap();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let before = m.snapshot();
    for target in [
        AssignTarget::Guest(&vm1),
        AssignTarget::PassThrough,
        AssignTarget::Quarantine,
    ] {
        let trusted = AssignPolicy {
            trusted: true,
            ..policy()
        };
        assert_refused(
            &m,
            &before,
            m.assign(dev, target, trusted),
            AssignError::GroupInUse {
                group: m.key(dev),
                member: dev,
            },
        );
    }
    // Once the driver lets go, the same assignment goes through.
    drop(member);
    m.assign(dev, AssignTarget::Guest(&vm1), policy())
        .0
        .unwrap();
    assert_eq!(m.dma(dev, GPA), Ok(VM1_HPA));
}

#[test]
fn rmrr_untrusted_no_reset_no_device_refusals_change_nothing() {
    let mut m = Machine::qemu();
    let dev = edu();
    m.iommu.rmrrs.push(RmrrInfo {
        base: 0x7800_0000,
        limit: 0x7800_0fff,
        devices: vec![dev],
    });
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let before = m.snapshot();
    assert_refused(
        &m,
        &before,
        m.assign(dev, AssignTarget::Guest(&vm1), policy()),
        AssignError::RmrrMember(dev),
    );
    m.iommu.rmrrs.clear();
    let before = m.snapshot();
    assert_refused(
        &m,
        &before,
        m.assign(dev, AssignTarget::PassThrough, policy()),
        AssignError::Untrusted(dev),
    );
    let vga = at(VGA);
    assert_eq!(m.members(vga), vec![vga]);
    assert_refused(
        &m,
        &before,
        m.assign(vga, AssignTarget::Guest(&vm1), policy()),
        AssignError::NoResetMethod(vga),
    );
    let absent = bdf(0x99, 0, 0);
    assert_refused(
        &m,
        &before,
        m.assign(absent, AssignTarget::Guest(&vm1), policy()),
        AssignError::NoSuchDevice(absent),
    );
    // Negative controls: each refusal was about its condition.
    let waived = AssignPolicy {
        require_reset: false,
        ..policy()
    };
    let (r, events) = m.assign(vga, AssignTarget::Guest(&vm1), waived);
    let report = r.unwrap();
    assert!(report.resets.is_empty(), "nothing to reset with");
    assert_eq!(
        events.first().map(|e| Classifier::new(&m, vga).step(e)),
        Some(Step::BusMasterOff(vga))
    );
    let trusted = AssignPolicy {
        trusted: true,
        ..policy()
    };
    m.assign(dev, AssignTarget::PassThrough, trusted).0.unwrap();
    assert_eq!(m.dma(dev, 0x1234_5000), Ok(0x1234_5000), "pass-through");
}

#[test]
fn assigning_to_the_current_owner_is_refused_and_nothing_changes() {
    let m = Machine::qemu();
    let dev = edu();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    m.assign(dev, AssignTarget::Guest(&vm1), policy())
        .0
        .unwrap();
    vm1.remap_interrupts(&m.assigner, &m.pci, dev, &[0x50], Destination::XApic(0))
        .unwrap();
    let before = m.snapshot();
    assert_refused(
        &m,
        &before,
        m.assign(dev, AssignTarget::Guest(&vm1), policy()),
        AssignError::AlreadyOwned { group: m.key(dev) },
    );
    assert_eq!(m.dma(dev, GPA), Ok(VM1_HPA));
}

#[test]
fn a_guest_on_another_unit_is_refused_and_nothing_changes() {
    // Unit A: the switch below 00:04.0 (a sub-hierarchy scope); unit B: everything else.
    let path = [PathEntry {
        device: 4,
        function: 0,
    }];
    let sub = ScopeSpec {
        kind: scope_type::PCI_SUB_HIERARCHY,
        ..ScopeSpec::endpoint(0, &path)
    };
    let table = DmarBuilder::new(39)
        .drhd(0, 0, 0, 0xfed9_0000, &[sub])
        .drhd(drhd_flags::INCLUDE_PCI_ALL, 0, 0, 0xfed9_1000, &[])
        .build();
    let m = Machine::qemu_with_dmar(&table);
    let on_switch = at(EDU_BELOW_SWITCH);
    let dev = edu();
    assert!(!Arc::ptr_eq(m.unit(on_switch), m.unit(dev)));
    let foreign = m.guest(on_switch, 1, VM1_HPA);
    let before = m.snapshot();
    assert_refused(
        &m,
        &before,
        m.assign(dev, AssignTarget::Guest(&foreign), policy()),
        AssignError::WrongUnit(dev),
    );
    // A guest on the right unit is accepted.
    let vm = m.guest(dev, 2, VM2_HPA);
    m.assign(dev, AssignTarget::Guest(&vm), policy()).0.unwrap();
    assert_eq!(m.dma(dev, GPA), Ok(VM2_HPA));
}

/// A root port (ACS) with a two-function device below it whose functions both have ACS: two
/// groups, and the only reset either has is the port's secondary-bus reset, which hits both.
fn two_groups_below_one_bridge() -> Machine {
    let cfg = FakeConfigSpace::new();
    cfg.add_endpoint(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00);
    let port = bdf(0, 0x1c, 0);
    cfg.add_bridge(port, 0x1b36, 0x000c, 0, 1, 1);
    cfg.add_pcie_capability(port, DevicePortType::RootPort);
    cfg.add_acs(port, AcsFlags::from_bits_retain(0x5f));
    let isolating = AcsFlags::SV | AcsFlags::RR | AcsFlags::CR | AcsFlags::UF;
    for f in 0..2 {
        let b = bdf(1, 0, f);
        cfg.add_endpoint(b, 0x1234, 0x11e8, 0x00_ff_00);
        cfg.add_pcie_capability(b, DevicePortType::Endpoint);
        cfg.add_acs(b, isolating);
    }
    cfg.set_multifunction(bdf(1, 0, 0));
    let table = DmarBuilder::new(39)
        .drhd(drhd_flags::INCLUDE_PCI_ALL, 0, 0, 0xfed9_0000, &[])
        .build();
    let region = McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap();
    Machine::build(cfg, &[region], &table)
}

#[test]
fn a_bus_reset_reaching_another_group_is_refused_and_nothing_changes() {
    let m = two_groups_below_one_bridge();
    let (a, b) = (bdf(1, 0, 0), bdf(1, 0, 1));
    assert_eq!(m.members(a), vec![a], "ACS splits the two functions");
    assert_eq!(m.members(b), vec![b]);
    let vm1 = m.guest(a, 1, VM1_HPA);
    let before = m.snapshot();
    assert_refused(
        &m,
        &before,
        m.assign(a, AssignTarget::Guest(&vm1), policy()),
        AssignError::ResetReachesOutside {
            member: a,
            outside: b,
        },
    );
    // Without requiring a reset the check is the same: a reset that would be done must stay
    // inside the group.
    let waived = AssignPolicy {
        require_reset: false,
        ..policy()
    };
    assert_refused(
        &m,
        &before,
        m.assign(b, AssignTarget::Guest(&vm1), waived),
        AssignError::ResetReachesOutside {
            member: b,
            outside: a,
        },
    );
    // Negative control: with FLR the function resets alone and the assignment goes through.
    m.cfg.set_flr_capable(a, true);
    let (r, events) = m.assign(a, AssignTarget::Guest(&vm1), policy());
    let report = r.unwrap();
    assert_eq!(report.resets, vec![(ResetMethod::FunctionLevel, vec![a])]);
    assert_sequence(&Classifier::new(&m, a), &events, false);
    assert_eq!(m.cfg.reset_count(b), 0);
    assert_eq!(m.cfg.reset_count(a), 1);
}

#[test]
fn a_failing_revoke_stops_before_the_reset_and_the_switch() {
    let m = Machine::qemu();
    let dev = edu();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let vm2 = m.guest(dev, 2, VM2_HPA);
    m.assign(dev, AssignTarget::Guest(&vm1), policy())
        .0
        .unwrap();
    let message = vm1
        .remap_interrupts(&m.assigner, &m.pci, dev, &[0x41], Destination::XApic(0))
        .unwrap();
    m.cfg.poke16(
        dev,
        header::COMMAND,
        m.cfg.peek16(dev, header::COMMAND) | Command::BUS_MASTER.bits(),
    );
    assert_eq!(m.dma(dev, GPA), Ok(VM1_HPA));
    let mut before = m.snapshot();
    let c = Classifier::new(&m, dev);
    let (r, events) = m.assign_failing(dev, AssignTarget::Guest(&vm2), policy(), Some(dev));
    assert_eq!(r, Err(AssignError::Revoke { member: dev }));
    // Quiesced and asked to revoke; nothing after it.
    assert_eq!(
        c.steps(&events),
        vec![Step::BusMasterOff(dev), Step::Revoke(dev)]
    );
    assert!(!m.bus_master(dev));
    assert_eq!(m.cfg.reset_count(dev), before_resets(&before, dev));
    // Everything but the Command register and the config write count is as it was: the
    // context entries still name VM1, VM1's IRTEs are live, no invalidation ran.
    let after = m.snapshot();
    for f in &mut before.functions {
        if f.0 == dev {
            f.1 &= !Command::BUS_MASTER.bits();
        }
    }
    before.config_writes += 1;
    assert_eq!(after, before);
    assert_eq!(m.assigner.guest_of(m.key(dev)).map(|g| g.vm()), Some(1));
    assert_eq!(
        m.dma(dev, GPA),
        Ok(VM1_HPA),
        "still VM1's: nothing switched"
    );
    assert!(matches!(
        m.interrupt(dev, message),
        InterruptResult::Delivered { vector: 0x41, .. }
    ));
    // Retrying with a working hook completes the move.
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm2), policy());
    assert_eq!(r.unwrap().interrupts_revoked, 1);
    // Bus Master is already off, so the quiesce writes nothing: the rest follows in order.
    assert!(!c
        .steps(&events)
        .iter()
        .any(|s| matches!(s, Step::BusMasterOff(_))));
    assert_eq!(m.dma(dev, GPA), Ok(VM2_HPA));
}

fn before_resets(s: &Snapshot, b: Bdf) -> u32 {
    s.functions.iter().find(|f| f.0 == b).unwrap().2
}

#[test]
fn a_group_goes_host_guest_guest_quarantine_and_back_to_the_host() {
    let m = Machine::qemu();
    let dev = edu();
    let key = m.key(dev);
    // A host driver maps a buffer and lets go.
    let host = Arc::new(m.iommu.domain_for(&m.pci, dev).unwrap());
    let rw = RW;
    dma::iommu::IommuDomain::map(
        &*host,
        dma::DmaAddr::new(HOST_IOVA),
        dma::PhysAddr::new(HOST_BUF),
        0x1000,
        rw,
    )
    .unwrap();
    let member = m.iommu.attach_member(&m.pci, &host, dev).unwrap();
    assert_eq!(m.dma(dev, HOST_IOVA), Ok(HOST_BUF));
    drop(member);
    assert!(m.dma(dev, HOST_IOVA).is_err(), "detached");
    m.unit(dev).clear_faults();

    let vm1 = m.guest(dev, 1, VM1_HPA);
    let vm2 = m.guest(dev, 2, VM2_HPA);
    let r1 = m
        .assign(dev, AssignTarget::Guest(&vm1), policy())
        .0
        .unwrap();
    assert_eq!(m.dma(dev, GPA), Ok(VM1_HPA));
    assert_eq!(
        m.unit(dev).group_owner(key),
        Some(GroupOwner::Assigned { did: vm1.did() })
    );
    let r2 = m
        .assign(dev, AssignTarget::Guest(&vm2), policy())
        .0
        .unwrap();
    assert_eq!(r2.vtd.from_did, Some(vm1.did()));
    assert_eq!(m.dma(dev, GPA), Ok(VM2_HPA), "VM1's memory is out of reach");
    assert_eq!(m.assigner.guest_of(key).map(|g| g.vm()), Some(2));
    let rq = m.assign(dev, AssignTarget::Quarantine, policy()).0.unwrap();
    assert_eq!(rq.vtd.from_did, Some(vm2.did()));
    for r in [&r1, &r2, &rq] {
        assert_eq!(r.revoked, 1);
        assert_eq!(r.resets.len(), 1, "every move resets the group");
    }
    assert_eq!(m.cfg.reset_count(dev), 3);
    assert_eq!(m.unit(dev).group_owner(key), Some(GroupOwner::Quarantined));
    assert!(m.assigner.guest_of(key).is_none());
    assert_eq!(m.dma(dev, GPA), Err(FaultReason::ContextEntryNotPresent));
    m.unit(dev).clear_faults();
    // A host driver cannot take a quarantined group.
    assert!(matches!(
        m.iommu.attach_member(&m.pci, &host, dev),
        Err(AttachError::Vtd(VtdError::GroupQuarantined { .. }))
    ));
    // Release refused for a group that is not quarantined (another group), then accepted.
    assert!(matches!(
        m.assigner
            .release_to_host(&m.iommu, &m.pci, at(EDU_BELOW_SWITCH)),
        Err(AssignError::Vtd(VtdError::GroupNotQuarantined { .. }))
    ));
    m.assigner.release_to_host(&m.iommu, &m.pci, dev).unwrap();
    assert_eq!(m.unit(dev).group_owner(key), None);
    let member = m.iommu.attach_member(&m.pci, &host, dev).unwrap();
    assert_eq!(
        m.dma(dev, HOST_IOVA),
        Ok(HOST_BUF),
        "a host attach works again"
    );
    assert_eq!(m.dma(dev, GPA).ok(), None, "and no guest mapping is left");
    drop(member);
    assert!(m.unit(dev).registers().violations().is_empty());
}

#[test]
fn interrupts_follow_the_owner_and_the_old_guests_irtes_are_gone() {
    let m = Machine::qemu();
    let dev = edu();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let vm2 = m.guest(dev, 2, VM2_HPA);
    let remap = |g: &Guest, v: u8| {
        g.remap_interrupts(&m.assigner, &m.pci, dev, &[v, v + 1], Destination::XApic(0))
    };
    // Nobody may program a group it does not own.
    assert_eq!(remap(&vm1, 0x41), Err(AssignError::NotAssignedHere(dev)));
    m.assign(dev, AssignTarget::Guest(&vm1), policy())
        .0
        .unwrap();
    assert_eq!(remap(&vm2, 0x61), Err(AssignError::NotAssignedHere(dev)));
    let old = remap(&vm1, 0x41).unwrap();
    let indices = vm1.irte_indices(dev);
    assert_eq!(indices.len(), 2);
    let u = m.unit(dev);
    for &i in &indices {
        assert_eq!(
            u.irte_raw(i).map(|(lo, _)| lo & 1),
            Some(1),
            "IRTE {i} present"
        );
    }
    let second = pci::msi::MsiMessage {
        data: old.data | 1,
        ..old
    };
    assert!(matches!(
        m.interrupt(dev, old),
        InterruptResult::Delivered { vector: 0x41, .. }
    ));
    assert!(matches!(
        m.interrupt(dev, second),
        InterruptResult::Delivered { vector: 0x42, .. }
    ));
    // Another function cannot use VM1's entries.
    let other = at(EDU_BELOW_SWITCH);
    assert!(matches!(
        m.interrupt(other, old),
        InterruptResult::Blocked { .. }
    ));
    u.clear_faults();

    let report = m
        .assign(dev, AssignTarget::Guest(&vm2), policy())
        .0
        .unwrap();
    assert_eq!(report.interrupts_revoked, 1);
    assert!(vm1.irte_indices(dev).is_empty());
    for &i in &indices {
        assert_eq!(
            u.irte_raw(i).map(|(lo, _)| lo & 1),
            Some(0),
            "IRTE {i} of the old guest is not present"
        );
    }
    for msg in [old, second] {
        assert!(matches!(
            m.interrupt(dev, msg),
            InterruptResult::Blocked {
                reason: FaultReason::IrteNotPresent,
                ..
            }
        ));
    }
    assert_eq!(remap(&vm1, 0x41), Err(AssignError::NotAssignedHere(dev)));
    let new = remap(&vm2, 0x61).unwrap();
    assert!(matches!(
        m.interrupt(dev, new),
        InterruptResult::Delivered { vector: 0x61, .. }
    ));
    // Reprogramming replaces the block (the old one is freed, not leaked).
    let again = remap(&vm2, 0x71).unwrap();
    assert_eq!(vm2.irte_indices(dev).len(), 2);
    assert!(matches!(
        m.interrupt(dev, again),
        InterruptResult::Delivered { vector: 0x71, .. }
    ));
    // Quarantine revokes them as well.
    let q = m.assign(dev, AssignTarget::Quarantine, policy()).0.unwrap();
    assert_eq!(q.interrupts_revoked, 1);
    assert!(matches!(
        m.interrupt(dev, again),
        InterruptResult::Blocked { .. }
    ));
    assert_eq!(remap(&vm2, 0x61), Err(AssignError::NotAssignedHere(dev)));
    assert!(
        u.registers().violations().is_empty(),
        "{:?}",
        u.registers().violations()
    );
}

#[test]
fn a_bridge_in_the_group_is_neither_quiesced_nor_reset() {
    let m = Machine::qemu();
    let bridge_bdf = at(PCI_BRIDGE);
    let dev = at(EDU_BEHIND_PCI_BRIDGE);
    assert_eq!(m.members(dev), vec![bridge_bdf, dev]);
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm1), policy());
    let report = r.unwrap();
    assert_sequence(&Classifier::new(&m, dev), &events, false);
    assert_eq!(report.revoked, 2, "both members' exports revoked");
    assert_eq!(
        report.resets,
        vec![(ResetMethod::SecondaryBus { bridge: bridge_bdf }, vec![dev])]
    );
    assert!(m.bus_master(bridge_bdf), "the bridge still forwards");
    assert!(!m.bus_master(dev));
    assert_eq!(m.cfg.reset_count(bridge_bdf), 0);
    assert_eq!(m.cfg.reset_count(dev), 1);
    // The only writes to the bridge are its Bridge Control (Secondary Bus Reset on, off).
    let to_bridge: Vec<(u16, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Cfg {
                bdf, offset, value, ..
            } if *bdf == bridge_bdf => Some((*offset, *value)),
            _ => None,
        })
        .collect();
    assert_eq!(to_bridge.len(), 2, "{to_bridge:x?}");
    assert!(to_bridge.iter().all(|(o, _)| *o == bridge::BRIDGE_CONTROL));
    // The group's DMA arrives with the bridge's alias and is translated by VM1.
    assert_eq!(m.dma(dev, GPA), Ok(VM1_HPA));

    // A switch downstream port that advertises FLR, grouped with the edu below it: the port
    // is not reset by FLR (it would be, were bridges treated as endpoints).
    let port = at(DOWNSTREAM_PORT);
    let below = at(EDU_BELOW_SWITCH);
    assert_eq!(m.members(below), vec![port, below]);
    assert!(pci::reset::has_flr(&m.cfg, port));
    let vm2 = m.guest(below, 2, VM2_HPA);
    let (r, events) = m.assign(below, AssignTarget::Guest(&vm2), policy());
    let report = r.unwrap();
    assert_sequence(&Classifier::new(&m, below), &events, false);
    assert_eq!(
        report.resets,
        vec![(ResetMethod::SecondaryBus { bridge: port }, vec![below])]
    );
    assert_eq!(m.cfg.reset_count(port), 0);
    assert!(m.bus_master(port));
    assert_eq!(m.dma(below, GPA), Ok(VM2_HPA));
}

/// A host domain attached with [`Iommu::attach`] (no [`vtd_platform::Membership`] guard) holds
/// the group just as much: the assignment must be refused before the device is quiesced and
/// reset under the host driver's feet.
#[test]
fn a_group_attached_without_a_guard_is_refused_before_anything_changes() {
    let m = Machine::qemu();
    let dev = edu();
    let host = m.iommu.domain_for(&m.pci, dev).unwrap();
    m.iommu.attach(&m.pci, &host, dev).unwrap();
    let vm1 = m.guest(dev, 1, VM1_HPA);
    let before = m.snapshot();
    let (r, events) = m.assign(dev, AssignTarget::Guest(&vm1), policy());
    assert!(
        matches!(
            r,
            Err(AssignError::GroupInUse { .. })
                | Err(AssignError::Vtd(VtdError::GroupInUse { .. }))
        ),
        "{r:?}"
    );
    assert!(events.is_empty(), "changed before refusing: {events:#?}");
    assert_eq!(m.snapshot(), before);
}

/// Pass-through on a unit without ECAP.PT cannot be done (the issue asks for an identity
/// domain then); it must be refused, or fall back, before the device is reset.
#[test]
fn pass_through_without_ecap_pt_changes_nothing_or_falls_back() {
    /// ECAP.PT is bit 6 (§11.4.3).
    const ECAP_PT: u64 = 1 << 6;
    let mut m = Machine::qemu();
    // Replace the unit with one that has no pass-through.
    let platform = m.rec.platform.clone();
    let regs = FakeVtd::new(
        platform.clone(),
        iommu_vtd::fake::qemu::VER,
        iommu_vtd::fake::qemu::CAP_DEFAULT,
        iommu_vtd::fake::qemu::ECAP_DEFAULT & !ECAP_PT,
    );
    let unit = Arc::new(VtdUnit::new(regs, platform, UnitConfig::new(39)).unwrap());
    unit.enable().unwrap();
    unit.enable_interrupt_remapping(u32::from(IRTES), false)
        .unwrap();
    assert!(!unit.capabilities().ecap.pass_through);
    m.iommu.units[0].unit = unit;
    let dev = edu();
    let before = m.snapshot();
    let trusted = AssignPolicy {
        trusted: true,
        ..policy()
    };
    let (r, events) = m.assign(dev, AssignTarget::PassThrough, trusted);
    match r {
        // A fallback (an identity domain): DMA reaches physical addresses.
        Ok(_) => assert_eq!(m.dma(dev, 0x1234_5000), Ok(0x1234_5000)),
        Err(e) => {
            assert!(
                events.is_empty(),
                "{e}: changed before refusing: {events:#?}"
            );
            assert_eq!(m.snapshot(), before);
            // The fallback issue 14 names: an identity domain over the RAM, assigned as a
            // guest. DMA reaches physical addresses inside it and faults outside.
            let identity = m
                .iommu
                .create_identity_guest(&m.pci, dev, 7, &[(0x1000_0000, 0x1000_0000)])
                .unwrap();
            let (r, _) = m.assign(dev, AssignTarget::Guest(&identity), trusted);
            r.unwrap();
            assert_eq!(m.dma(dev, 0x1234_5000), Ok(0x1234_5000));
            assert!(m.dma(dev, 0x3000_0000).is_err());
        }
    }
}
