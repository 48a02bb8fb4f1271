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
mod tests;
