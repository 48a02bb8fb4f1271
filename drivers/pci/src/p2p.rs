//! PCI peer-to-peer: providers for a function's memory BARs, and the map type between a
//! provider and a client computed from the topology, the ACS controls along the path and a
//! host-bridge allow policy.
//!
//! Implements SPEC.md "PCI peer-to-peer (P2P)" (classification from topology, ACS and host-bridge
//! policy) and the digest's provider rules and item 11, following Linux's `pci_p2pdma`
//! (`calc_map_type_and_dist`, `pci_bridge_has_acs_redir`, `host_bridge_whitelist`):
//!
//! - **Providers** ([`provider_table`], [`ProviderRegistry`]): one per *memory* BAR, `{owner,
//!   bus_offset}`; I/O BARs, unimplemented slots, the upper half of a 64-bit BAR, unassigned
//!   BARs and indices past the header's slots are refused with a typed
//!   [`ProviderError`]. [`ProviderRegistry::init`] is idempotent: a second call returns the
//!   same table (`Arc::ptr_eq`).
//! - **Only page-granular BARs are providers**: every mapping of a provider is made of whole
//!   pages, so a BAR smaller than a page (QEMU's 256-byte `ivshmem` and SHPC register BARs) or
//!   not aligned to its size would expose bytes its device does not decode, possibly another
//!   device's MMIO. Such a slot is `NotPageGranular` (enumeration already refuses misaligned
//!   BARs; the table checks again, since `Function` fields are public). The rest of a sub-page
//!   BAR's page cannot be proven unused, so the rule is simply: refused.
//! - **Decoded ranges** ([`peer_decoded_ranges`]): every bus range a peer may decode (memory
//!   BARs, Expansion ROMs, refused BARs, bridge windows), for the IOVA allocator to keep out.
//! - **Classification** ([`P2pRouting`], the [`P2pClassifier`] the `dma` export layer asks):
//!   walk up from the provider (itself included) to the first function that is also on the
//!   client's path (itself included): the *common upstream bridge*. A *redirect* is any of ACS
//!   RR, CR, EC enabled on the provider, on each function up to and including the common bridge,
//!   or on the client's path below it. A common bridge and no redirect → BUS_ADDR (the transfer
//!   turns around there). No common bridge (root bus, different root ports, different host
//!   bridges), or a redirect → the transfer crosses the root complex: THRU_HOST_BRIDGE if the
//!   [`HostBridgePolicy`] allows it, else NOT_SUPPORTED. Unknown functions → NOT_SUPPORTED.
//! - **Provider == client**: BUS_ADDR (unless the function itself redirects), as in Linux, where
//!   the two walks meet at once with distance 0: a function reaching its own BAR never leaves it.
//!   NONE is never returned: every provider here is BAR memory.
//! - **Host bridges** are identified, as in Linux, by the vendor:device of function 00.0 on the
//!   root bus of each device's hierarchy (q35: 8086:29c0; a `pxb-pcie` hierarchy: whatever sits
//!   at 00.0 of its root bus). Two devices below different root buses cross two host bridges:
//!   both must be allowed, and neither may be marked "same host bridge only".
//! - **Caching**: results are cached per (provider device, client) pair: the map type depends
//!   only on the two functions, not on the BAR, so all BARs of a provider share one entry. The
//!   topology and ACS controls are *snapshotted*; after changing either (an ACS policy, a reset
//!   that cleared ACS controls, a hot-plug) call [`P2pRouting::refresh`]: it re-reads them,
//!   bumps the generation and drops the cache. A classification racing a refresh never stores
//!   a result computed from the old snapshot.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;

use crate::acs;
use crate::bar::BarKind;
use crate::regs::{header, Command};
use crate::topology::TopologyWarning;
use crate::{Bdf, ConfigSpace, Function, Topology};

pub use dma::p2p::ProviderTable;
pub use dma::p2p::{BarSlot, DeviceId, MapType, P2pClassifier, Provider, ProviderError};
pub use dma::MemoryDecode;

/// The `dma` identity of a function (segment and requester ID).
///
/// `DeviceId::from(bdf)` as a `const fn` (usable in constants).
pub const fn device_id(bdf: Bdf) -> DeviceId {
    DeviceId::new(bdf.segment(), bdf.requester_id())
}

/// The function a `dma` identity names: `Bdf::from(id)` as a `const fn`.
pub const fn bdf_of(id: DeviceId) -> Bdf {
    Bdf::from_requester_id(id.segment(), id.requester_id())
}

/// Whether `bdf` decodes memory now (Command.Memory Space), read live. An absent function (all
/// ones) counts as disabled. An export created while disabled starts revoked.
pub fn memory_decode(cfg: &impl ConfigSpace, bdf: Bdf) -> MemoryDecode {
    let raw = cfg.read16(bdf, header::COMMAND);
    if raw != u16::MAX && Command::from_bits_retain(raw).contains(Command::MEMORY_SPACE) {
        MemoryDecode::Enabled
    } else {
        MemoryDecode::Disabled
    }
}

/// The provider table of a probed function: one slot per BAR of its header (6 for a type-0
/// header, 2 for a bridge), a provider for each assigned, page-granular memory BAR
/// ([`crate::Bar::is_page_granular`]; the others are `NotPageGranular`).
///
/// Built from the BARs enumeration recorded (enumerate with `probe_bars`, the default; without
/// it every slot is `Unimplemented`). Errors only if a BAR's range overflows (enumeration
/// already refuses those).
///
/// # Errors
///
/// A [`dma::DmaError`] when a recorded BAR's range overflows the address space.
pub fn provider_table(function: &Function) -> Result<ProviderTable, dma::DmaError> {
    let count = function.layout.bar_count();
    let mut slots = Vec::with_capacity(usize::from(count));
    let mut upper_half_next = false;
    for index in 0..count {
        if core::mem::take(&mut upper_half_next) {
            slots.push(BarSlot::UpperHalf);
            continue;
        }
        let slot = match function.bar(index) {
            None => BarSlot::Unimplemented,
            Some(bar) => match bar.kind {
                BarKind::Io => BarSlot::Io,
                kind => {
                    upper_half_next = matches!(kind, BarKind::Memory64 { .. });
                    if bar.is_unassigned() {
                        BarSlot::Unassigned
                    } else if !bar.is_page_granular() {
                        BarSlot::NotPageGranular
                    } else {
                        BarSlot::Memory {
                            phys: dma::PhysAddr::new(bar.phys_address),
                            size: bar.size,
                            bus_offset: bar.bus_offset.0,
                        }
                    }
                }
            },
        };
        slots.push(slot);
    }
    ProviderTable::new(device_id(function.bdf), slots)
}

/// What put a range in [`peer_decoded_ranges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodedBy {
    /// An assigned memory BAR of the function, by slot.
    Bar(u8),
    /// The function's assigned Expansion ROM BAR (enabled or not: anyone may enable it later).
    ExpansionRom,
    /// A BAR or ROM enumeration refused as misaligned ([`crate::bar::BarError::Misaligned`],
    /// slot index as reported): the aligned blocks its register touches, since what it decodes
    /// is unknown. (Its kind is not recorded, so a refused I/O BAR reserves a harmless low range.)
    RefusedBar(u8),
    /// A bridge's memory or prefetchable window.
    BridgeWindow,
}

/// A bus address range a peer decodes (see [`peer_decoded_ranges`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedRange {
    /// The function decoding it.
    pub bdf: Bdf,
    /// First bus address.
    pub start: u64,
    /// Size in bytes (never 0).
    pub size: u64,
    /// Why it is listed.
    pub by: DecodedBy,
}

/// Every bus address range a PCI function of `topology` decodes or may decode: assigned memory
/// BARs, assigned Expansion ROMs, the claimed ranges of BARs enumeration refused as
/// misaligned, and bridge memory/prefetchable windows.
///
/// An IOVA equal to one of these could be claimed by the peer instead of reaching the IOMMU,
/// so every domain reserves them (SPEC.md "Reserved IOVA space"; on x86 firmware describes
/// host-bridge apertures only in AML, and the union of what it programmed covers every address
/// a peer actually decodes). Unassigned BARs and ROMs (address 0) and I/O BARs are left out.
pub fn peer_decoded_ranges(topology: &Topology) -> Vec<DecodedRange> {
    let mut out = Vec::new();
    for f in topology.functions() {
        let bdf = f.bdf;
        for b in f
            .bars
            .iter()
            .filter(|b| b.kind.is_memory() && !b.is_unassigned())
        {
            out.push(DecodedRange {
                bdf,
                start: b.bus_address,
                size: b.size,
                by: DecodedBy::Bar(b.index),
            });
        }
        if let Some(rom) = f.expansion_rom.filter(|r| !r.is_unassigned()) {
            out.push(DecodedRange {
                bdf,
                start: rom.bus_address,
                size: rom.size,
                by: DecodedBy::ExpansionRom,
            });
        }
        if let Some(br) = &f.bridge {
            for w in [br.memory_window, br.prefetchable_window]
                .into_iter()
                .flatten()
            {
                out.push(DecodedRange {
                    bdf,
                    start: w.base,
                    size: (w.limit - w.base).saturating_add(1),
                    by: DecodedBy::BridgeWindow,
                });
            }
        }
    }
    for w in topology.warnings() {
        if let TopologyWarning::Bar { bdf, error } = *w {
            if let Some((start, size)) = error.claimed_bus_range() {
                out.push(DecodedRange {
                    bdf,
                    start,
                    size,
                    by: DecodedBy::RefusedBar(error.index()),
                });
            }
        }
    }
    out
}

/// Why [`ProviderRegistry::remove`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryError {
    /// No providers were initialised for the function.
    NotInitialised(Bdf),
    /// Someone (an exporter) still holds the providers: tear its exports down first.
    InUse {
        /// The function.
        bdf: Bdf,
        /// References held outside the registry.
        holders: usize,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInitialised(bdf) => write!(f, "{bdf}: no P2P providers initialised"),
            Self::InUse { bdf, holders } => write!(
                f,
                "{bdf}: P2P providers still held by {holders} exporter(s); tear them down first"
            ),
        }
    }
}

impl core::error::Error for RegistryError {}

/// The providers of every function that offers P2P memory, initialised once per function
/// (Linux's `pcim_p2pdma_init`). `Send + Sync`; a kernel keeps one.
#[derive(Debug, Default)]
pub struct ProviderRegistry {
    tables: Mutex<BTreeMap<Bdf, Arc<ProviderTable>>>,
}

impl ProviderRegistry {
    /// An empty registry (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            tables: Mutex::new(BTreeMap::new()),
        }
    }

    /// The providers of `function`, created on the first call; later calls return the same
    /// table (even if the BARs moved since: remove and init again to pick that up).
    ///
    /// # Errors
    ///
    /// The error of [`provider_table`] on the first call for `function`.
    pub fn init(&self, function: &Function) -> Result<Arc<ProviderTable>, dma::DmaError> {
        if let Some(t) = self.get(function.bdf) {
            return Ok(t);
        }
        let table = Arc::new(provider_table(function)?);
        // Another thread may have won the race: keep whichever came first.
        Ok(self
            .tables
            .lock()
            .entry(function.bdf)
            .or_insert(table)
            .clone())
    }

    /// The providers of `bdf`, if initialised.
    pub fn get(&self, bdf: Bdf) -> Option<Arc<ProviderTable>> {
        self.tables.lock().get(&bdf).cloned()
    }

    /// The provider for BAR `bar` of `bdf`.
    ///
    /// # Errors
    ///
    /// `Some(Err(_))`: the table's [`ProviderError`] for that slot (index out of range, an I/O
    /// BAR, an unimplemented slot or the upper half of a 64-bit BAR, ...); `None` when `bdf` has no providers.
    pub fn provider(&self, bdf: Bdf, bar: u8) -> Option<Result<Provider, ProviderError>> {
        self.get(bdf).map(|t| t.provider(bar))
    }

    /// Number of functions with providers.
    pub fn len(&self) -> usize {
        self.tables.lock().len()
    }

    /// Whether no function has providers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the providers of `bdf` before the device goes away. Refused while anything else
    /// holds them: an `Exporter` holds its table until its `teardown` (which revokes every
    /// export and removes every mapping), so a provider cannot disappear under a mapping.
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotInitialised`] when `bdf` has no providers, [`RegistryError::InUse`] while
    /// an exporter (or anyone else) still holds them.
    pub fn remove(&self, bdf: Bdf) -> Result<(), RegistryError> {
        let mut tables = self.tables.lock();
        let table = tables.get(&bdf).ok_or(RegistryError::NotInitialised(bdf))?;
        // Stable under the lock: a new clone needs the registry lock or an existing clone.
        let holders = Arc::strong_count(table) - 1;
        if holders > 0 {
            return Err(RegistryError::InUse { bdf, holders });
        }
        tables.remove(&bdf);
        Ok(())
    }
}

/// One host-bridge model allowed to route peer-to-peer traffic (Linux's
/// `pci_p2pdma_whitelist_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowedHostBridge {
    /// Vendor ID of function 00.0 on the root bus.
    pub vendor_id: u16,
    /// Device ID of function 00.0 on the root bus.
    pub device_id: u16,
    /// Only between two devices below this same host bridge (Linux `REQ_SAME_HOST_BRIDGE`).
    pub same_host_bridge_only: bool,
}

/// Linux's allow-list (drivers/pci/p2pdma.c): Intel Xeon E5/Core i7 and Xeon E7 v3/E5 v3 (same
/// host bridge only), Skylake-E and 0x09a2 (any).
pub const LINUX_ALLOWED_HOST_BRIDGES: &[AllowedHostBridge] = &[
    same_only(0x8086, 0x3c00),
    same_only(0x8086, 0x3c01),
    same_only(0x8086, 0x2f00),
    same_only(0x8086, 0x2f01),
    any_bridge(0x8086, 0x2030),
    any_bridge(0x8086, 0x2031),
    any_bridge(0x8086, 0x2032),
    any_bridge(0x8086, 0x2033),
    any_bridge(0x8086, 0x2020),
    any_bridge(0x8086, 0x09a2),
];

const fn same_only(vendor_id: u16, device_id: u16) -> AllowedHostBridge {
    AllowedHostBridge {
        vendor_id,
        device_id,
        same_host_bridge_only: true,
    }
}

const fn any_bridge(vendor_id: u16, device_id: u16) -> AllowedHostBridge {
    AllowedHostBridge {
        vendor_id,
        device_id,
        same_host_bridge_only: false,
    }
}

/// Which host bridges may route peer-to-peer traffic through the root complex. Supplied by the
/// embedder (the default is Linux's list; our kernel adds QEMU q35's 8086:29c0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBridgePolicy {
    allowed: Vec<AllowedHostBridge>,
}

impl Default for HostBridgePolicy {
    /// [`LINUX_ALLOWED_HOST_BRIDGES`].
    fn default() -> Self {
        Self::linux_default()
    }
}

impl HostBridgePolicy {
    /// Nothing allowed: every path through a host bridge is NOT_SUPPORTED.
    pub fn deny_all() -> Self {
        Self {
            allowed: Vec::new(),
        }
    }

    /// Linux's allow-list.
    pub fn linux_default() -> Self {
        Self {
            allowed: LINUX_ALLOWED_HOST_BRIDGES.to_vec(),
        }
    }

    /// Also allows `vendor:device`, between any two allowed host bridges.
    pub fn allow(mut self, vendor_id: u16, device_id: u16) -> Self {
        self.allowed.push(any_bridge(vendor_id, device_id));
        self
    }

    /// Also allows `vendor:device`, only between two devices below the same one.
    pub fn allow_same_host_bridge_only(mut self, vendor_id: u16, device_id: u16) -> Self {
        self.allowed.push(same_only(vendor_id, device_id));
        self
    }

    /// The entries.
    pub fn entries(&self) -> &[AllowedHostBridge] {
        &self.allowed
    }

    /// Whether a host bridge with this identity may route a transfer (`same`: both devices are
    /// below it). The first matching entry decides. No identity (nothing at 00.0): refused.
    pub fn allows(&self, id: Option<(u16, u16)>, same: bool) -> bool {
        let Some((vendor, device)) = id else {
            return false;
        };
        self.allowed
            .iter()
            .find(|e| (e.vendor_id, e.device_id) == (vendor, device))
            .is_some_and(|e| same || !e.same_host_bridge_only)
    }
}

/// A host bridge as classification sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostBridge {
    /// Segment group.
    pub segment: u16,
    /// Root bus of the hierarchy.
    pub root_bus: u8,
    /// Vendor:device of function 00.0 on the root bus, if present.
    pub id: Option<(u16, u16)>,
}

impl fmt::Display for HostBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}", self.segment, self.root_bus)?;
        match self.id {
            Some((v, d)) => write!(f, " ({v:04x}:{d:04x})"),
            None => f.write_str(" (no function 00.0)"),
        }
    }
}

/// A classification with its reasons (for logs and tests; [`P2pRouting::classify`] gives the
/// cached map type only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The answer.
    pub map_type: MapType,
    /// A function given that is not in the topology (then NOT_SUPPORTED).
    pub unknown: Option<Bdf>,
    /// Where the two upstream paths meet, if below the host bridge.
    pub common_bridge: Option<Bdf>,
    /// Functions with an ACS redirect (RR, CR or EC) on the path, provider side first.
    pub redirects: Vec<Bdf>,
    /// The provider's and the client's host bridges, when the path crosses the root complex.
    pub host_bridges: Option<(HostBridge, HostBridge)>,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.map_type)?;
        if let Some(bdf) = self.unknown {
            return write!(f, " ({bdf} is not in the topology)");
        }
        if let Some(common) = self.common_bridge {
            write!(f, " via {common}")?;
        }
        if !self.redirects.is_empty() {
            f.write_str(", ACS redirect at")?;
            for r in &self.redirects {
                write!(f, " {r}")?;
            }
        }
        if let Some((a, b)) = self.host_bridges {
            if a == b {
                write!(f, ", through host bridge {a}")?;
            } else {
                write!(f, ", through host bridges {a} and {b}")?;
            }
        }
        Ok(())
    }
}

/// What classification reads: a snapshot of the topology and of which functions redirect.
struct Snapshot {
    generation: u64,
    topology: Topology,
    redirects: BTreeSet<Bdf>,
    policy: HostBridgePolicy,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    map: BTreeMap<(DeviceId, DeviceId), MapType>,
}

/// Map-type classification over one topology (see the module documentation), cached per pair.
/// `Send + Sync`; implements [`P2pClassifier`] for the `dma` export layer.
///
/// Lock order: the snapshot lock, then the cache lock (only [`P2pRouting::refresh`] nests
/// them; classification takes one at a time). Both are leaves below the export layer's locks.
pub struct P2pRouting {
    snapshot: Mutex<Arc<Snapshot>>,
    cache: Mutex<Cache>,
}

impl fmt::Debug for P2pRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot.lock().clone();
        f.debug_struct("P2pRouting")
            .field("generation", &s.generation)
            .field("functions", &s.topology.functions().len())
            .field("redirects", &s.redirects)
            .field("policy", &s.policy)
            .finish()
    }
}

/// Every function of `topology` with an ACS redirect enabled, read live.
fn read_redirects(cfg: &impl ConfigSpace, topology: &Topology) -> BTreeSet<Bdf> {
    topology
        .functions()
        .iter()
        .filter(|f| {
            f.acs_offset()
                .is_some_and(|offset| acs::read_acs(cfg, f.bdf, offset).has_redirect())
        })
        .map(|f| f.bdf)
        .collect()
}

fn host_bridge(topology: &Topology, bdf: Bdf) -> Option<HostBridge> {
    let root = topology.root_bus(bdf)?;
    let id = Bdf::new(root.segment, root.bus, 0, 0)
        .ok()
        .and_then(|b| topology.function(b))
        .map(|f| (f.vendor_id, f.device_id));
    Some(HostBridge {
        segment: root.segment,
        root_bus: root.bus,
        id,
    })
}

fn route_in(s: &Snapshot, provider: Bdf, client: Bdf) -> Route {
    let topo = &s.topology;
    let mut route = Route {
        map_type: MapType::NotSupported,
        unknown: None,
        common_bridge: None,
        redirects: Vec::new(),
        host_bridges: None,
    };
    for bdf in [provider, client] {
        if topo.function(bdf).is_none() {
            route.unknown = Some(bdf);
            return route;
        }
    }
    let client_path: Vec<Bdf> = core::iter::once(client)
        .chain(topo.upstream_bridges(client).map(|f| f.bdf))
        .collect();
    // Provider side, up to and including the common bridge (Linux checks `a` before the
    // search, so the common bridge's own redirect counts).
    let provider_path =
        core::iter::once(provider).chain(topo.upstream_bridges(provider).map(|f| f.bdf));
    for a in provider_path {
        if s.redirects.contains(&a) {
            route.redirects.push(a);
        }
        if client_path.contains(&a) {
            route.common_bridge = Some(a);
            break;
        }
    }
    if let Some(common) = route.common_bridge {
        // Client side, below the common bridge.
        for &b in client_path.iter().take_while(|&&b| b != common) {
            if s.redirects.contains(&b) && !route.redirects.contains(&b) {
                route.redirects.push(b);
            }
        }
        if route.redirects.is_empty() {
            route.map_type = MapType::BusAddr;
            return route;
        }
    }
    // Through the root complex.
    let (Some(hp), Some(hc)) = (host_bridge(topo, provider), host_bridge(topo, client)) else {
        return route;
    };
    let same = (hp.segment, hp.root_bus) == (hc.segment, hc.root_bus);
    let allowed = if same {
        s.policy.allows(hp.id, true)
    } else {
        s.policy.allows(hp.id, false) && s.policy.allows(hc.id, false)
    };
    route.host_bridges = Some((hp, hc));
    route.map_type = if allowed {
        MapType::ThruHostBridge
    } else {
        MapType::NotSupported
    };
    route
}

impl P2pRouting {
    /// Classification over `topology`, with the ACS controls read now from `cfg`, and `policy`
    /// for host bridges.
    pub fn new(cfg: &impl ConfigSpace, topology: &Topology, policy: HostBridgePolicy) -> Self {
        let snapshot = Snapshot {
            generation: 0,
            topology: topology.clone(),
            redirects: read_redirects(cfg, topology),
            policy,
        };
        Self {
            snapshot: Mutex::new(Arc::new(snapshot)),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The generation of the current snapshot (bumped by every refresh).
    pub fn generation(&self) -> u64 {
        self.snapshot.lock().generation
    }

    /// Pairs with a cached answer.
    pub fn cached_pairs(&self) -> usize {
        self.cache.lock().map.len()
    }

    fn replace(&self, build: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut current = self.snapshot.lock();
        let mut next = build(&current);
        next.generation = current.generation + 1;
        let generation = next.generation;
        *current = Arc::new(next);
        let mut cache = self.cache.lock();
        cache.generation = generation;
        cache.map.clear();
    }

    /// Re-reads the topology and every ACS control and drops every cached answer. Call after
    /// enumeration changed or any ACS control may have (policy applied, a reset).
    pub fn refresh(&self, cfg: &impl ConfigSpace, topology: &Topology) {
        let redirects = read_redirects(cfg, topology);
        self.replace(|old| Snapshot {
            generation: 0,
            topology: topology.clone(),
            redirects,
            policy: old.policy.clone(),
        });
    }

    /// Re-reads the ACS controls of the current topology and drops every cached answer.
    pub fn refresh_acs(&self, cfg: &impl ConfigSpace) {
        let topology = self.snapshot.lock().topology.clone();
        self.refresh(cfg, &topology);
    }

    /// Replaces the host-bridge policy and drops every cached answer.
    pub fn set_policy(&self, policy: HostBridgePolicy) {
        self.replace(|old| Snapshot {
            generation: 0,
            topology: old.topology.clone(),
            redirects: old.redirects.clone(),
            policy,
        });
    }

    /// The classification with its reasons (not cached).
    pub fn route(&self, provider: Bdf, client: Bdf) -> Route {
        let s = self.snapshot.lock().clone();
        route_in(&s, provider, client)
    }

    /// The map type between the function owning a provider and a client, cached per pair.
    pub fn classify(&self, provider: Bdf, client: Bdf) -> MapType {
        let s = self.snapshot.lock().clone();
        let key = (device_id(provider), device_id(client));
        {
            let cache = self.cache.lock();
            if cache.generation == s.generation {
                if let Some(&t) = cache.map.get(&key) {
                    return t;
                }
            }
        }
        let t = route_in(&s, provider, client).map_type;
        let mut cache = self.cache.lock();
        // Only an answer from the current snapshot is kept (a refresh may have run meanwhile).
        if cache.generation == s.generation {
            cache.map.insert(key, t);
        }
        t
    }
}

impl P2pClassifier for P2pRouting {
    fn map_type(&self, provider: &Provider, client: DeviceId) -> MapType {
        self.classify(bdf_of(provider.owner()), bdf_of(client))
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic topologies (switch with and without ACS redirect, root ports, root-bus
    //! devices, a second host bridge), providers, the allow policy, the cache, and one QEMU
    //! fixture. Names: `p2p_*`, `provider_*`, `classify_*`, `cache_*`.

    use super::*;
    use crate::regs::{AcsFlags, DevicePortType};
    use crate::testing::FakeConfigSpace;
    use crate::{enumerate, enumerate_with, EnumerationOptions, HostBridgeWindow, McfgRegion};
    use dma::testing::Fixture;
    use dma::{
        DeviceConfig, Direction, DmaError, ExportRange, ExportRequest, Exporter, Importer,
        InvalidationMode,
    };

    fn bdf(bus: u8, device: u8, function: u8) -> Bdf {
        Bdf::new(0, bus, device, function).unwrap()
    }

    fn region() -> McfgRegion {
        McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
    }

    const Q35: (u16, u16) = (0x8086, 0x29c0);

    fn q35_policy() -> HostBridgePolicy {
        HostBridgePolicy::linux_default().allow(Q35.0, Q35.1)
    }

    const A: (u8, u8, u8) = (3, 0, 0); // edu below switch port 02:00.0
    const B: (u8, u8, u8) = (4, 0, 0); // edu below switch port 02:01.0
    const C: (u8, u8, u8) = (5, 0, 0); // ivshmem below root port 00:02.0
    const D: (u8, u8, u8) = (0x41, 0, 0); // edu below a pxb root port
    const E: (u8, u8, u8) = (0, 3, 0); // edu on the root bus
    const F: (u8, u8, u8) = (0, 4, 0); // ivshmem on the root bus

    fn at(x: (u8, u8, u8)) -> Bdf {
        bdf(x.0, x.1, x.2)
    }

    /// q35 host bridge 00:00.0; root port 00:01.0 (ACS 0x5f) above a switch (01:00.0 upstream,
    /// 02:00.0 / 02:01.0 downstream) with endpoints A and B; root port 00:02.0 (ACS) above C;
    /// root-bus endpoints E, F; a pxb-pcie (00:07.0) whose root bus 0x40 has a root port
    /// 40:00.0 above D.
    fn machine() -> FakeConfigSpace {
        let fake = FakeConfigSpace::new();
        fake.add_endpoint(bdf(0, 0, 0), Q35.0, Q35.1, 0x06_00_00);
        fake.add_bridge(bdf(0, 1, 0), 0x1b36, 0x000c, 0, 1, 4);
        fake.add_pcie_capability(bdf(0, 1, 0), DevicePortType::RootPort);
        fake.add_acs(bdf(0, 1, 0), AcsFlags::from_bits_retain(0x5f));
        fake.add_bridge(bdf(1, 0, 0), 0x104c, 0x8232, 1, 2, 4);
        fake.add_pcie_capability(bdf(1, 0, 0), DevicePortType::UpstreamPort);
        for (device, bus) in [(0, 3), (1, 4)] {
            fake.add_bridge(bdf(2, device, 0), 0x104c, 0x8233, 2, bus, bus);
            fake.add_pcie_capability(bdf(2, device, 0), DevicePortType::DownstreamPort);
            fake.add_endpoint(bdf(bus, 0, 0), 0x1234, 0x11e8, 0x00_ff_00);
        }
        fake.add_bridge(bdf(0, 2, 0), 0x1b36, 0x000c, 0, 5, 5);
        fake.add_pcie_capability(bdf(0, 2, 0), DevicePortType::RootPort);
        fake.add_acs(bdf(0, 2, 0), AcsFlags::from_bits_retain(0x5f));
        fake.add_endpoint(at(C), 0x1af4, 0x1110, 0x05_00_00);
        fake.add_endpoint(at(E), 0x1234, 0x11e8, 0x00_ff_00);
        fake.add_endpoint(at(F), 0x1af4, 0x1110, 0x05_00_00);
        fake.add_endpoint(bdf(0, 7, 0), 0x1b36, 0x000b, 0x06_00_00); // pxb-pcie
        fake.add_bridge(bdf(0x40, 0, 0), 0x1b36, 0x000c, 0x40, 0x41, 0x41);
        fake.add_pcie_capability(bdf(0x40, 0, 0), DevicePortType::RootPort);
        fake.add_endpoint(at(D), 0x1234, 0x11e8, 0x00_ff_00);
        // ivshmem-like BARs on C: BAR0 MMIO 256 B, BAR2 64-bit prefetchable 1 MiB.
        fake.define_bar(
            at(C),
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x100,
            0xfe80_0000,
        );
        fake.define_bar(
            at(C),
            2,
            BarKind::Memory64 { prefetchable: true },
            1 << 20,
            0x80_0000_0000,
        );
        fake.define_bar(at(C), 4, BarKind::Io, 0x20, 0xc000);
        fake
    }

    fn routing(fake: &FakeConfigSpace, policy: HostBridgePolicy) -> (Topology, P2pRouting) {
        let topo = enumerate(fake, &[region()]);
        assert!(topo.warnings().is_empty(), "{:?}", topo.warnings());
        let r = P2pRouting::new(fake, &topo, policy);
        (topo, r)
    }

    /// Enables `flags` in the ACS control of `port`, adding the capability if it has none
    /// (QEMU's switch ports have none; real switches do).
    fn set_acs(fake: &FakeConfigSpace, port: Bdf, flags: AcsFlags) {
        let offset = fake.add_acs(port, AcsFlags::from_bits_retain(0x7f));
        fake.poke16(port, offset + crate::regs::acs::CONTROL, flags.bits());
    }

    #[test]
    fn classify_same_switch_without_redirect_is_bus_addr() {
        let fake = machine();
        let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
        let route = r.route(at(A), at(B));
        assert_eq!(route.map_type, MapType::BusAddr);
        assert_eq!(route.common_bridge, Some(bdf(1, 0, 0)));
        assert!(route.redirects.is_empty() && route.host_bridges.is_none());
        assert_eq!(r.classify(at(B), at(A)), MapType::BusAddr);
        // The root port above the switch has ACS isolation on: not on the path, no effect.
        let topo = enumerate(&fake, &[region()]);
        crate::acs::apply_acs_policy(&fake, &topo, crate::acs::AcsPolicy::Isolate);
        r.refresh(&fake, &topo);
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
        assert_eq!(route.to_string(), "BUS_ADDR via 01:00.0");
    }

    #[test]
    fn classify_same_switch_with_acs_redirect_goes_through_host_bridge() {
        for flag in [AcsFlags::RR, AcsFlags::CR, AcsFlags::EC] {
            let fake = machine();
            // A redirect on the provider's downstream port.
            set_acs(&fake, bdf(2, 0, 0), flag | AcsFlags::SV);
            let (_, r) = routing(&fake, q35_policy());
            let route = r.route(at(A), at(B));
            assert_eq!(route.map_type, MapType::ThruHostBridge, "{flag:?}");
            assert_eq!(route.redirects, [bdf(2, 0, 0)]);
            assert_eq!(route.common_bridge, Some(bdf(1, 0, 0)));
            // The redirect on the client's side counts too.
            assert_eq!(r.classify(at(B), at(A)), MapType::ThruHostBridge);
            // Blocked host bridge: NOT_SUPPORTED.
            r.set_policy(HostBridgePolicy::deny_all());
            assert_eq!(r.classify(at(A), at(B)), MapType::NotSupported);
        }
    }

    #[test]
    fn classify_redirect_on_common_bridge_and_on_provider_itself_count() {
        let fake = machine();
        set_acs(&fake, bdf(1, 0, 0), AcsFlags::RR);
        let (_, r) = routing(&fake, q35_policy());
        assert_eq!(r.route(at(A), at(B)).redirects, [bdf(1, 0, 0)]);
        let fake = machine();
        // A PCIe endpoint with ACS (multi-function devices have it).
        fake.add_pcie_capability(at(A), DevicePortType::Endpoint);
        set_acs(&fake, at(A), AcsFlags::CR);
        let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
        assert_eq!(r.classify(at(A), at(B)), MapType::NotSupported);
        // SV, TB, UF, DT are not redirects.
        let fake = machine();
        set_acs(
            &fake,
            bdf(2, 0, 0),
            AcsFlags::SV | AcsFlags::TB | AcsFlags::UF | AcsFlags::DT,
        );
        let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    }

    #[test]
    fn classify_different_root_ports_need_an_allowed_host_bridge() {
        let fake = machine();
        let (_, r) = routing(&fake, q35_policy());
        let route = r.route(at(A), at(C));
        assert_eq!(route.map_type, MapType::ThruHostBridge);
        assert_eq!(route.common_bridge, None);
        let hb = HostBridge {
            segment: 0,
            root_bus: 0,
            id: Some(Q35),
        };
        assert_eq!(route.host_bridges, Some((hb, hb)));
        assert!(route
            .to_string()
            .contains("through host bridge 0000:00 (8086:29c0)"));
        // Linux's default list does not know q35.
        let (_, r) = routing(&fake, HostBridgePolicy::linux_default());
        assert_eq!(r.classify(at(A), at(C)), MapType::NotSupported);
        // "same host bridge only" is fine here: both are below 00:00.0.
        let (_, r) = routing(
            &fake,
            HostBridgePolicy::deny_all().allow_same_host_bridge_only(Q35.0, Q35.1),
        );
        assert_eq!(r.classify(at(A), at(C)), MapType::ThruHostBridge);
    }

    #[test]
    fn classify_root_bus_devices_go_through_the_host_bridge() {
        let fake = machine();
        let (_, r) = routing(&fake, q35_policy());
        assert_eq!(r.classify(at(E), at(F)), MapType::ThruHostBridge);
        assert_eq!(r.classify(at(E), at(C)), MapType::ThruHostBridge);
        let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
        assert_eq!(r.classify(at(E), at(F)), MapType::NotSupported);
    }

    #[test]
    fn classify_different_host_bridges_pxb() {
        let fake = machine();
        let (_, r) = routing(&fake, q35_policy());
        let route = r.route(at(D), at(C));
        let (hp, hc) = route.host_bridges.unwrap();
        assert_eq!((hp.root_bus, hp.id), (0x40, Some((0x1b36, 0x000c))));
        assert_eq!((hc.root_bus, hc.id), (0, Some(Q35)));
        // The pxb's host bridge (identified by its 00.0) is not allowed.
        assert_eq!(route.map_type, MapType::NotSupported);
        let (_, r) = routing(&fake, q35_policy().allow(0x1b36, 0x000c));
        assert_eq!(r.classify(at(D), at(C)), MapType::ThruHostBridge);
        assert_eq!(r.classify(at(C), at(D)), MapType::ThruHostBridge);
        // Both allowed, but one only within itself: refused across bridges.
        let (_, r) = routing(
            &fake,
            HostBridgePolicy::deny_all()
                .allow_same_host_bridge_only(Q35.0, Q35.1)
                .allow(0x1b36, 0x000c),
        );
        assert_eq!(r.classify(at(D), at(C)), MapType::NotSupported);
        assert_eq!(r.classify(at(A), at(C)), MapType::ThruHostBridge);
    }

    #[test]
    fn classify_same_function_is_bus_addr_like_linux() {
        let fake = machine();
        let (_, r) = routing(&fake, HostBridgePolicy::deny_all());
        let route = r.route(at(C), at(C));
        assert_eq!(route.map_type, MapType::BusAddr);
        assert_eq!(route.common_bridge, Some(at(C)));
    }

    #[test]
    fn classify_unknown_function_is_not_supported() {
        let fake = machine();
        let (_, r) = routing(&fake, q35_policy());
        let route = r.route(at(C), bdf(9, 9, 0));
        assert_eq!(route.map_type, MapType::NotSupported);
        assert_eq!(route.unknown, Some(bdf(9, 9, 0)));
        assert_eq!(r.classify(bdf(9, 9, 0), at(C)), MapType::NotSupported);
    }

    #[test]
    fn cache_per_pair_and_explicit_invalidation_on_acs_change() {
        let fake = machine();
        let (topo, r) = routing(&fake, q35_policy());
        assert_eq!(r.generation(), 0);
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
        assert_eq!(r.cached_pairs(), 1);
        // Both BARs of a provider share the entry (keyed by device); the dma seam hits it.
        let table = provider_table(topo.function(at(A)).unwrap()).unwrap();
        assert_eq!(table.providers().count(), 0); // edu in this fake has no BARs
        let p = Provider::new(device_id(at(A)), 0, dma::PhysAddr::new(0x1000), 0x1000, 0).unwrap();
        assert_eq!(r.map_type(&p, device_id(at(B))), MapType::BusAddr);
        assert_eq!(r.cached_pairs(), 1);
        // ACS changes under the snapshot: the cached answer stays until invalidated...
        set_acs(&fake, bdf(2, 1, 0), AcsFlags::RR);
        let topo = enumerate(&fake, &[region()]); // the new capability needs re-enumeration
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
        // ...and refresh re-reads, bumps the generation and drops the cache.
        r.refresh(&fake, &topo);
        assert_eq!(r.generation(), 1);
        assert_eq!(r.cached_pairs(), 0);
        assert_eq!(r.classify(at(A), at(B)), MapType::ThruHostBridge);
        // A control cleared (e.g. by a reset): refresh_acs is enough.
        let offset = topo.function(bdf(2, 1, 0)).unwrap().acs_offset().unwrap();
        fake.poke16(bdf(2, 1, 0), offset + crate::regs::acs::CONTROL, 0);
        assert_eq!(r.classify(at(A), at(B)), MapType::ThruHostBridge);
        r.refresh_acs(&fake);
        assert_eq!(r.generation(), 2);
        assert_eq!(r.classify(at(A), at(B)), MapType::BusAddr);
    }

    #[test]
    fn provider_one_per_memory_bar_with_typed_errors() {
        let fake = machine();
        let topo = enumerate(&fake, &[region()]);
        let t = provider_table(topo.function(at(C)).unwrap()).unwrap();
        assert_eq!(t.owner(), device_id(at(C)));
        assert_eq!(t.providers().count(), 1);
        let bar2 = t.provider(2).unwrap();
        assert_eq!(
            (bar2.phys().as_u64(), bar2.size(), bar2.bus_offset()),
            (0x80_0000_0000, 1 << 20, 0)
        );
        // The 256-byte register BAR shares its page with whatever sits next to it.
        assert_eq!(
            t.provider(0),
            Err(ProviderError::NotPageGranular { index: 0 })
        );
        assert_eq!(
            t.provider(1),
            Err(ProviderError::Unimplemented { index: 1 })
        );
        assert_eq!(t.provider(3), Err(ProviderError::UpperHalf { index: 3 }));
        assert_eq!(t.provider(4), Err(ProviderError::IoBar { index: 4 }));
        assert_eq!(
            t.provider(5),
            Err(ProviderError::Unimplemented { index: 5 })
        );
        assert_eq!(
            t.provider(6),
            Err(ProviderError::IndexOutOfRange { index: 6, count: 6 })
        );
        // A bridge has two slots.
        let rp = provider_table(topo.function(bdf(0, 2, 0)).unwrap()).unwrap();
        assert_eq!(
            rp.provider(2),
            Err(ProviderError::IndexOutOfRange { index: 2, count: 2 })
        );
    }

    #[test]
    fn provider_unassigned_bar_is_refused() {
        let fake = machine();
        fake.define_bar(
            at(F),
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
            0,
        );
        let topo = enumerate(&fake, &[region()]);
        let t = provider_table(topo.function(at(F)).unwrap()).unwrap();
        assert_eq!(t.provider(0), Err(ProviderError::Unassigned { index: 0 }));
    }

    #[test]
    fn provider_bus_offset_from_a_translating_host_bridge_window() {
        let fake = machine();
        // CPU 0x1_8000_0000_0000.. appears on the bus at 0x80_0000_0000.. (an arm64-style window).
        let window = HostBridgeWindow {
            segment: 0,
            cpu_address: 0x1_8000_0000_0000,
            bus_address: 0x80_0000_0000,
            size: 1 << 30,
        };
        let topo = enumerate_with(
            &fake,
            &[region()],
            &EnumerationOptions {
                windows: &[window],
                ..Default::default()
            },
        );
        let t = provider_table(topo.function(at(C)).unwrap()).unwrap();
        let p = t.provider(2).unwrap();
        assert_eq!(p.phys().as_u64(), 0x1_8000_0000_0000);
        assert_eq!(
            p.bus_addr(p.phys()),
            0x80_0000_0000,
            "the BAR register value"
        );
        assert_ne!(p.bus_offset(), 0);
        // BUS_ADDR mapping programs paddr + bus_offset.
        let f = Fixture::iommu(
            DeviceConfig::with_mask_bits(64).unwrap().trusted(),
            InvalidationMode::Strict,
        )
        .unwrap();
        let m = f
            .dev
            .map_peer(
                &p,
                MapType::BusAddr,
                &[(p.phys(), 0x2000)],
                Direction::ToDevice,
            )
            .unwrap();
        assert_eq!(m.segments()[0].addr.as_u64(), 0x80_0000_0000);
    }

    #[test]
    fn provider_init_is_idempotent_and_remove_waits_for_teardown() {
        let fake = machine();
        let (topo, r) = routing(&fake, q35_policy());
        let reg = ProviderRegistry::new();
        let c = topo.function(at(C)).unwrap();
        let t1 = reg.init(c).unwrap();
        let t2 = reg.init(c).unwrap();
        assert!(
            Arc::ptr_eq(&t1, &t2),
            "init twice returns the same providers"
        );
        assert_eq!(reg.len(), 1);
        assert_eq!(
            reg.provider(at(C), 2).unwrap().unwrap(),
            t1.provider(2).unwrap()
        );
        drop((t1, t2));
        let ex = Exporter::new(reg.get(at(C)).unwrap(), Arc::new(r));
        assert_eq!(
            reg.remove(at(C)),
            Err(RegistryError::InUse {
                bdf: at(C),
                holders: 1
            })
        );
        ex.teardown().unwrap();
        assert_eq!(reg.remove(at(C)), Ok(()));
        assert_eq!(reg.remove(at(C)), Err(RegistryError::NotInitialised(at(C))));
        assert!(reg.is_empty());
    }

    #[test]
    fn p2p_memory_decode_is_read_live() {
        let fake = machine();
        assert_eq!(memory_decode(&fake, at(C)), MemoryDecode::Disabled);
        fake.poke16(at(C), header::COMMAND, Command::MEMORY_SPACE.bits());
        assert_eq!(memory_decode(&fake, at(C)), MemoryDecode::Enabled);
        assert_eq!(memory_decode(&fake, bdf(9, 9, 0)), MemoryDecode::Disabled);
        assert_eq!(bdf_of(device_id(at(C))), at(C));
        let far = Bdf::new(3, 0x41, 2, 5).unwrap();
        let id = device_id(far);
        assert_eq!((id.segment(), id.requester_id()), (3, far.requester_id()));
        assert_eq!(bdf_of(id), far);
    }

    /// Neither a sub-page BAR nor a misaligned one can be exported, whatever range is asked
    /// for: the export of `[0, 4K)` of either would map a page the device does not (wholly)
    /// decode. A page-granular BAR of the same device still exports.
    #[test]
    fn p2p_export_refuses_bars_that_are_not_page_granular() {
        let fake = machine();
        // F: a 4 KiB BAR0 that reads back at 0xfe90_0800, a 512-byte BAR1 and a fine BAR2.
        let mem32 = BarKind::Memory32 {
            prefetchable: false,
        };
        fake.define_bar(at(F), 0, mem32, 0x1000, 0xfe90_0800);
        fake.define_bar(at(F), 1, mem32, 0x200, 0xfe90_2000);
        fake.define_bar(at(F), 2, mem32, 0x4000, 0xfe90_4000);
        let topo = enumerate(&fake, &[region()]);
        assert_eq!(
            topo.warnings(),
            [TopologyWarning::Bar {
                bdf: at(F),
                error: crate::bar::BarError::Misaligned {
                    index: 0,
                    bus_address: 0xfe90_0800,
                    phys_address: 0xfe90_0800,
                    size: 0x1000
                }
            }]
        );
        let t = provider_table(topo.function(at(F)).unwrap()).unwrap();
        let (_, r) = routing(&machine(), q35_policy());
        let mut ex = Exporter::new(Arc::new(t), Arc::new(r));
        let page = [ExportRange {
            offset: 0,
            len: 0x1000,
        }];
        let export = |ex: &mut Exporter, bar| {
            ex.export(
                &ExportRequest {
                    bar,
                    ranges: &page,
                    flags: 0,
                },
                MemoryDecode::Enabled,
            )
            .map(|_| ())
        };
        // The misaligned BAR was refused at enumeration: its slot is empty.
        assert_eq!(
            export(&mut ex, 0),
            Err(DmaError::Provider(ProviderError::Unimplemented {
                index: 0
            }))
        );
        assert_eq!(
            export(&mut ex, 1),
            Err(DmaError::Provider(ProviderError::NotPageGranular {
                index: 1
            }))
        );
        assert_eq!(export(&mut ex, 2), Ok(()));
        ex.teardown().unwrap();
        // A misaligned BAR put into a Function by hand is refused by the table too.
        let mut f = topo.function(at(F)).unwrap().clone();
        f.bars[0].bus_address = 0xfe90_4800;
        f.bars[0].phys_address = 0xfe90_4800;
        f.bars[0].index = 2;
        f.bars.retain(|b| b.index == 2);
        assert_eq!(
            provider_table(&f).unwrap().provider(2),
            Err(ProviderError::NotPageGranular { index: 2 })
        );
    }

    /// Every range a peer decodes is listed for IOVA reservation: memory BARs (not I/O),
    /// Expansion ROMs (assigned ones, enabled or not), bridge windows and the blocks a refused
    /// misaligned BAR touches.
    #[test]
    fn peer_decoded_ranges_cover_bars_roms_windows_and_refused_bars() {
        let fake = machine();
        fake.define_expansion_rom(at(C), 0x8_0000, 0xfe88_0000, false);
        fake.define_expansion_rom(at(E), 0x800, 0, false); // unassigned: nothing to reserve
        let mem32 = BarKind::Memory32 {
            prefetchable: false,
        };
        fake.define_bar(at(F), 0, mem32, 0x2000, 0xfe90_1000);
        // Root port 00:02.0 forwards a 1 MiB memory window to bus 5.
        fake.poke16(bdf(0, 2, 0), crate::regs::bridge::MEMORY_BASE, 0xfe80);
        fake.poke16(bdf(0, 2, 0), crate::regs::bridge::MEMORY_LIMIT, 0xfe80);
        let topo = enumerate(&fake, &[region()]);
        let ranges = peer_decoded_ranges(&topo);
        let has = |bdf: Bdf, start: u64, size: u64, by: DecodedBy| {
            ranges.contains(&DecodedRange {
                bdf,
                start,
                size,
                by,
            })
        };
        assert!(
            has(at(C), 0xfe80_0000, 0x100, DecodedBy::Bar(0)),
            "{ranges:?}"
        );
        assert!(has(at(C), 0x80_0000_0000, 1 << 20, DecodedBy::Bar(2)));
        assert!(has(at(C), 0xfe88_0000, 0x8_0000, DecodedBy::ExpansionRom));
        assert!(has(
            bdf(0, 2, 0),
            0xfe80_0000,
            1 << 20,
            DecodedBy::BridgeWindow
        ));
        assert!(has(at(F), 0xfe90_0000, 0x4000, DecodedBy::RefusedBar(0)));
        // Nothing else but windows (the fake's other bridges have zeroed window registers,
        // which decode 0..1M): no I/O BAR (C's BAR4), no unassigned ROM (E).
        let not_windows = ranges
            .iter()
            .filter(|r| r.by != DecodedBy::BridgeWindow)
            .count();
        assert_eq!(not_windows, 4, "{ranges:?}");
    }

    /// End to end: ivshmem BAR2 exported, edu importers classified by the topology.
    #[test]
    fn p2p_export_through_pci_classification() {
        let fake = machine();
        let (topo, r) = routing(&fake, q35_policy());
        let r = Arc::new(r);
        let reg = ProviderRegistry::new();
        let mut ex = Exporter::new(reg.init(topo.function(at(C)).unwrap()).unwrap(), r.clone());
        let ranges = [ExportRange {
            offset: 0,
            len: 0x4000,
        }];
        let h = ex
            .export(
                &ExportRequest {
                    bar: 2,
                    ranges: &ranges,
                    flags: 0,
                },
                memory_decode(&fake, at(C)),
            )
            .unwrap();
        // Memory decoding is off in the fake: the export starts revoked.
        assert_eq!(h.state(), dma::ExportState::Revoked);
        ex.restore();
        let f = Fixture::iommu(
            DeviceConfig::with_mask_bits(39).unwrap().trusted(),
            InvalidationMode::Strict,
        )
        .unwrap();
        let importer = |id: Bdf| Importer {
            id: device_id(id),
            dev: f.dev.clone(),
            peer_to_peer: true,
            move_notify: alloc::boxed::Box::new(|_| {}),
        };
        let a = h.attach(importer(at(A))).unwrap();
        assert_eq!(a.map_type(), MapType::ThruHostBridge);
        let m = a.map(Direction::FromDevice).unwrap();
        assert_eq!(f.hw().entries(), 4);
        // The pxb importer crosses a host bridge the policy does not allow.
        let d = h.attach(importer(at(D))).unwrap();
        assert_eq!(
            d.map(Direction::FromDevice).unwrap_err(),
            DmaError::P2pNotSupported(MapType::NotSupported)
        );
        ex.revoke().unwrap();
        assert!(m.is_stale());
        assert_eq!(f.hw().entries(), 0);
        drop((m, a, d));
        ex.teardown().unwrap();
        assert!(r.cached_pairs() >= 2);
    }

    /// On the captured QEMU `complex` machine: edu below one switch port and ivshmem below the
    /// other are BUS_ADDR (QEMU's switch ports have no ACS), also after the kernel's ACS
    /// isolation on root ports; edu below a root port reaches ivshmem through q35.
    #[test]
    fn p2p_qemu_complex_fixture() {
        let fake =
            FakeConfigSpace::from_qemu_fixture(include_str!("../tests/fixtures/complex.cfg"))
                .unwrap();
        let topo = enumerate(&fake, &[region()]);
        crate::acs::apply_acs_policy(&fake, &topo, crate::acs::AcsPolicy::Isolate);
        let r = P2pRouting::new(&fake, &topo, q35_policy());
        let ivshmem = topo.find(0x1af4, 0x1110).next().unwrap().bdf;
        let edus: Vec<Bdf> = topo.find(0x1234, 0x11e8).map(|f| f.bdf).collect();
        let switch_edu = edus
            .iter()
            .copied()
            .find(|&e| topo.below_same_switch(e, ivshmem).is_some())
            .expect("an edu shares the switch with ivshmem");
        assert_eq!(r.classify(ivshmem, switch_edu), MapType::BusAddr);
        let rp_edu = edus
            .iter()
            .copied()
            .find(|&e| {
                topo.parent(e)
                    .is_some_and(|p| p.port_type() == Some(DevicePortType::RootPort))
                    && topo.root_bus(e).map(|b| b.bus) == Some(0)
            })
            .expect("an edu below a root port");
        assert_eq!(r.classify(ivshmem, rp_edu), MapType::ThruHostBridge);
        let t = provider_table(topo.function(ivshmem).unwrap()).unwrap();
        assert!(t.provider(2).is_ok(), "ivshmem BAR2 is a provider");
    }
}
