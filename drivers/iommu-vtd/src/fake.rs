//! In-memory models of the host platform and of QEMU's VT-d unit, for host tests.
//!
//! [`HostPlatform`] backs table memory with heap pages at made-up physical addresses (never
//! equal to their CPU addresses, never reused after free) and keeps, per page, a *device view*
//! that only `flush_cache_range` updates: a model of a non-coherent walker (ECAP.C = 0), which
//! sees exactly what was written back with clflush. Fresh pages' device view is poison, so a
//! table linked without being written back is caught.
//!
//! [`FakeVtd`] implements [`RegisterIo`] the way QEMU 7.2's `intel-iommu` behaves (VT-d spec
//! §10.4, §6.5, §7.1, §3.6): GSTS follows GCMD, SRTP latches RTADDR, the invalidation queue is
//! processed when IQT is written (wait descriptors write their status word), CCMD/IOTLB
//! registers are ignored once QIE is set (a poller would time out), and a DMA emulator
//! ([`FakeVtd::dma`]) walks root/context/second-level tables through the device view with
//! QEMU's checks (AW in SAGAW, R/W ANDed across levels, SNP reserved without ECAP.SC, output
//! addresses below the HAW), caches context entries and translations until invalidated (and,
//! under caching mode, not-present translations too), and records faults in the fault
//! recording registers. Protocol violations (a GCMD write not of the form
//! `(GSTS & 0x96FF_FFFF) | bit`, a register invalidation while QIE is set, a misaligned PSI,
//! ...) are collected in [`FakeVtd::violations`]. Failures can be injected: a unit that stops
//! answering ([`FakeVtd::set_unresponsive`]), a queue whose head stalls
//! ([`FakeVtd::set_queue_fetch_limit`]), descriptors rejected with FSTS.IQE
//! ([`FakeVtd::set_rejected_descriptor`]).
//!
//! These models are plain `no_std` + `alloc` code so embedders can test against them too.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use dma::PhysAddr;
use pci_address::RequesterId;
use spin::Mutex;

use crate::caps::Capabilities;
use crate::context::ContextEntry;
use crate::fault::FaultReason;
use crate::invalidation::{desc, Descriptor, Invalidation};
use crate::pagetable::pte;
use crate::platform::{Platform, TablePage, TABLE_PAGE_SIZE};
mod ir;

pub use ir::InterruptResult;

use crate::registers::{
    self, ccmd, frcd, iotlb, iq, Ccmd, ContextEntryLo, FaultStatus, FrcdHi, FrcdLo, Global,
    IotlbCmd, Iqa, Iva, QueueIndex, RegisterIo, RootEntryLo, Rtaddr, SlPte, WaitDescHi, WaitDescLo,
    GSTS_PERSISTENT_MASK,
};

/// First fake physical address handed out.
const FIRST_PHYS: u64 = 0x4000_0000;
/// Byte pattern of a page's device view before its first write-back.
const POISON: u8 = 0xA5;
/// Cache line size used to round flushes.
const CACHE_LINE: usize = 64;

struct HostPage {
    virt: usize,
    device: Box<[u8; TABLE_PAGE_SIZE]>,
    /// The heap block this page heads (`Some(pages)`: dealloc with that many pages) or a later
    /// page of a contiguous block (`None`: freed with its head).
    block: Option<usize>,
}

#[derive(Default)]
struct HostMem {
    pages: BTreeMap<u64, HostPage>,
    by_virt: BTreeMap<usize, u64>,
    next_phys: u64,
    allocs_left: Option<usize>,
    allocations: usize,
    frees: usize,
    flushes: Vec<(u64, usize)>,
    freed: Vec<u64>,
    flush_disabled: bool,
    timeline: Vec<MemEvent>,
}

/// One entry of [`HostPlatform::timeline`]: table frees and completed invalidations in the
/// order they happened, so a test can check that a page was freed only after the invalidation
/// that made it unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemEvent {
    /// A table page was returned with `free_table_page`.
    TableFreed(u64),
    /// A [`FakeVtd`] on this platform completed an invalidation (it processes each one
    /// synchronously, so processing is completion).
    Invalidated(Invalidation),
}

/// Heap-backed [`Platform`] that records every cache write-back.
pub struct HostPlatform {
    mem: Mutex<HostMem>,
    clock: AtomicU64,
    clock_step: u64,
}

impl Default for HostPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for HostPlatform {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostPlatform")
            .field("live_pages", &self.live_pages())
            .finish()
    }
}

fn block_layout(pages: usize) -> Layout {
    // 4096 is a non-zero power of two; the size is at least one page.
    Layout::from_size_align(TABLE_PAGE_SIZE * pages.max(1), TABLE_PAGE_SIZE)
        .unwrap_or(Layout::new::<u8>())
}

impl HostPlatform {
    /// An empty platform whose clock advances 10 µs per reading.
    pub fn new() -> Self {
        Self::with_clock_step(10)
    }

    /// An empty platform whose clock advances `step` µs per reading.
    pub fn with_clock_step(step: u64) -> Self {
        Self {
            mem: Mutex::new(HostMem {
                next_phys: FIRST_PHYS,
                ..HostMem::default()
            }),
            clock: AtomicU64::new(0),
            clock_step: step,
        }
    }

    /// Lets only `n` more allocations succeed (`None`: unlimited).
    pub fn set_alloc_limit(&self, n: Option<usize>) {
        self.mem.lock().allocs_left = n;
    }

    /// Makes `flush_cache_range` record but not write back (a negative control: a walker that
    /// is not coherent then sees stale or poisoned tables).
    pub fn set_flush_disabled(&self, disabled: bool) {
        self.mem.lock().flush_disabled = disabled;
    }

    /// Pages currently allocated.
    pub fn live_pages(&self) -> usize {
        self.mem.lock().pages.len()
    }

    /// Total allocations and frees so far.
    pub fn alloc_stats(&self) -> (usize, usize) {
        let m = self.mem.lock();
        (m.allocations, m.frees)
    }

    /// Whether `phys` lies in a live page.
    pub fn is_live(&self, phys: u64) -> bool {
        self.mem
            .lock()
            .pages
            .contains_key(&(phys & !(TABLE_PAGE_SIZE as u64 - 1)))
    }

    /// Every `(phys, len)` write-back so far, in order.
    pub fn flush_log(&self) -> Vec<(u64, usize)> {
        self.mem.lock().flushes.clone()
    }

    /// Clears the write-back log.
    pub fn clear_flush_log(&self) {
        self.mem.lock().flushes.clear();
    }

    /// Pages freed so far, in order.
    pub fn freed_pages(&self) -> Vec<u64> {
        self.mem.lock().freed.clone()
    }

    /// Table frees and completed invalidations so far, in order.
    pub fn timeline(&self) -> Vec<MemEvent> {
        self.mem.lock().timeline.clone()
    }

    /// Number of [`HostPlatform::timeline`] entries so far (a timestamp: everything recorded
    /// later has an index at or above it).
    pub fn timeline_len(&self) -> usize {
        self.mem.lock().timeline.len()
    }

    fn record_invalidation(&self, inv: Invalidation) {
        self.mem.lock().timeline.push(MemEvent::Invalidated(inv));
    }

    fn with_page<T>(&self, phys: u64, f: impl FnOnce(&mut HostPage, usize) -> T) -> Option<T> {
        let mut m = self.mem.lock();
        let base = phys & !(TABLE_PAGE_SIZE as u64 - 1);
        let page = m.pages.get_mut(&base)?;
        Some(f(page, (phys - base) as usize))
    }

    /// The CPU's view of the 64-bit word at `phys`.
    pub fn read_cpu_u64(&self, phys: u64) -> Option<u64> {
        if !phys.is_multiple_of(8) {
            return None;
        }
        self.with_page(phys, |page, off| {
            // SAFETY: the page is live (we hold the lock), `off + 8 <= 4096`, aligned.
            unsafe { ((page.virt + off) as *const u64).read_volatile() }
        })
    }

    /// The walker's (device) view of the 64-bit word at `phys`: what was written back.
    pub fn read_device_u64(&self, phys: u64) -> Option<u64> {
        if !phys.is_multiple_of(8) {
            return None;
        }
        self.with_page(phys, |page, off| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page.device[off..off + 8]);
            u64::from_le_bytes(b)
        })
    }

    /// Writes a 32-bit word as a coherent DMA write (queue status writes).
    pub fn dma_write_u32(&self, phys: u64, value: u32) -> bool {
        if !phys.is_multiple_of(4) {
            return false;
        }
        self.with_page(phys, |page, off| {
            // SAFETY: the page is live, `off + 4 <= 4096`, aligned.
            unsafe { ((page.virt + off) as *mut u32).write_volatile(value) };
            page.device[off..off + 4].copy_from_slice(&value.to_le_bytes());
        })
        .is_some()
    }

    /// Whether every 64-bit word of the live page at `phys` reads the same in both views.
    pub fn views_agree(&self, phys: u64) -> bool {
        (0..TABLE_PAGE_SIZE as u64 / 8)
            .all(|i| self.read_cpu_u64(phys + i * 8) == self.read_device_u64(phys + i * 8))
    }

    /// Every live page.
    pub fn live_page_list(&self) -> Vec<u64> {
        self.mem.lock().pages.keys().copied().collect()
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        let m = self.mem.get_mut();
        for (_, page) in core::mem::take(&mut m.pages) {
            if let Some(pages) = page.block {
                // SAFETY: allocated in `alloc_table_pages` with this layout and not freed.
                unsafe { dealloc(page.virt as *mut u8, block_layout(pages)) };
            }
        }
    }
}

// SAFETY: pages are 4 KiB-aligned zeroed heap allocations owned by the platform until freed;
// `phys_to_virt` maps each fake physical page to its allocation; `flush_cache_range` is
// synchronous.
unsafe impl Platform for HostPlatform {
    fn alloc_table_page(&self) -> Option<TablePage> {
        self.alloc_table_pages(1)
    }

    /// Contiguous blocks: one heap allocation of `count` pages at consecutive fake physical
    /// addresses (one allocation in [`HostPlatform::alloc_stats`]).
    fn alloc_table_pages(&self, count: usize) -> Option<TablePage> {
        let mut m = self.mem.lock();
        if count == 0 {
            return None;
        }
        if let Some(left) = m.allocs_left.as_mut() {
            if *left == 0 {
                return None;
            }
            *left -= 1;
        }
        // SAFETY: the layout has non-zero size.
        let virt = NonNull::new(unsafe { alloc_zeroed(block_layout(count)) })?;
        let phys = m.next_phys;
        m.next_phys += (TABLE_PAGE_SIZE * count) as u64;
        for i in 0..count {
            let page_virt = virt.as_ptr() as usize + i * TABLE_PAGE_SIZE;
            let page_phys = phys + (i * TABLE_PAGE_SIZE) as u64;
            m.pages.insert(
                page_phys,
                HostPage {
                    virt: page_virt,
                    device: Box::new([POISON; TABLE_PAGE_SIZE]),
                    block: (i == 0).then_some(count),
                },
            );
            m.by_virt.insert(page_virt, page_phys);
        }
        m.allocations += 1;
        Some(TablePage {
            phys: PhysAddr::new(phys),
            virt,
        })
    }

    unsafe fn free_table_page(&self, phys: PhysAddr) {
        // SAFETY: the caller upholds the contract of `free_table_pages` for one page.
        unsafe { self.free_table_pages(phys, 1) }
    }

    unsafe fn free_table_pages(&self, phys: PhysAddr, count: usize) {
        let mut m = self.mem.lock();
        let head = match m.pages.get(&phys.as_u64()) {
            Some(page) if page.block == Some(count) => page.virt,
            _ => return,
        };
        for i in 0..count {
            let page_phys = phys.as_u64() + (i * TABLE_PAGE_SIZE) as u64;
            if let Some(page) = m.pages.remove(&page_phys) {
                m.by_virt.remove(&page.virt);
            }
        }
        m.frees += 1;
        m.freed.push(phys.as_u64());
        m.timeline.push(MemEvent::TableFreed(phys.as_u64()));
        // SAFETY: allocated with this layout in `alloc_table_pages`; the caller guarantees no
        // further use.
        unsafe { dealloc(head as *mut u8, block_layout(count)) };
    }

    fn phys_to_virt(&self, phys: PhysAddr) -> *mut u8 {
        let m = self.mem.lock();
        let base = phys.as_u64() & !(TABLE_PAGE_SIZE as u64 - 1);
        match m.pages.get(&base) {
            Some(page) => (page.virt + (phys.as_u64() - base) as usize) as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    fn flush_cache_range(&self, virt: *const u8, len: usize) {
        let mut m = self.mem.lock();
        let addr = virt as usize;
        let Some((&page_virt, &phys)) = m.by_virt.range(..=addr).next_back() else {
            return;
        };
        if addr >= page_virt + TABLE_PAGE_SIZE {
            return;
        }
        let start = (addr - page_virt) / CACHE_LINE * CACHE_LINE;
        let end = ((addr - page_virt + len).div_ceil(CACHE_LINE) * CACHE_LINE).min(TABLE_PAGE_SIZE);
        m.flushes.push((phys + (addr - page_virt) as u64, len));
        if m.flush_disabled {
            return;
        }
        if let Some(page) = m.pages.get_mut(&phys) {
            // SAFETY: the page is live and `start..end` lies within it.
            let cpu = unsafe {
                core::slice::from_raw_parts((page.virt + start) as *const u8, end - start)
            };
            page.device[start..end].copy_from_slice(cpu);
        }
    }

    fn memory_fence(&self) {
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    fn now_us(&self) -> u64 {
        self.clock.fetch_add(self.clock_step, Ordering::Relaxed)
    }
}

/// How an invalidation reached the fake hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the invalidation queue.
    Queue,
    /// Through CCMD / the IOTLB register.
    Register,
}

/// Something the fake hardware did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HwEvent {
    /// A GCMD write (the value written).
    Gcmd(u32),
    /// SRTP latched this root table address.
    RootTableLatched(u64),
    /// An invalidation was processed.
    Invalidation(Via, Invalidation),
    /// A wait descriptor wrote `data` to `addr`.
    WaitStatus {
        /// Status address.
        addr: u64,
        /// Data written.
        data: u32,
    },
    /// A write-buffer flush.
    WriteBufferFlush,
    /// SIRTP latched this IRTA value.
    InterruptTableLatched(u64),
    /// The unit sent its fault-event interrupt (FEUADDR:FEADDR, FEDATA).
    FaultEvent {
        /// The message address.
        address: u64,
        /// The message data.
        data: u32,
    },
}

/// The result of one emulated DMA.
pub type DmaResult = Result<u64, FaultReason>;

#[derive(Debug, Clone, Copy)]
struct CachedTranslation {
    /// Output page, or `None` for a cached not-present entry (caching mode).
    page: Option<u64>,
    read: bool,
    write: bool,
}

struct FakeState {
    caps: Capabilities,
    haw: u8,
    gsts: u32,
    rtaddr: u64,
    active_root: Option<u64>,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    other: BTreeMap<usize, u64>,
    fault_records: Vec<(u64, u64)>,
    context_cache: BTreeMap<RequesterId, ContextEntry>,
    iotlb: BTreeMap<(u16, u64), CachedTranslation>,
    events: Vec<HwEvent>,
    violations: Vec<String>,
    unresponsive: bool,
    /// Descriptors the queue may still fetch before its head stalls (`None`: unlimited).
    fetch_budget: Option<usize>,
    /// Descriptor type the queue rejects with FSTS.IQE (failure injection).
    rejected_kind: Option<u8>,
    /// Register-based invalidations complete with CAIG/IAIG = 00 ("not performed").
    register_not_performed: bool,
    /// A fault to record when the next fault-record F bit is cleared (a fault arriving between
    /// software's read and its clear).
    fault_on_clear: Option<(RequesterId, u64, bool)>,
    global_invalidated_since_root: bool,
    /// The interrupt-remapping model (fake/ir.rs).
    ir: ir::IrState,
}

/// A model of QEMU 7.2's VT-d unit (see the module docs).
pub struct FakeVtd {
    platform: Arc<HostPlatform>,
    state: Mutex<FakeState>,
}

impl core::fmt::Debug for FakeVtd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeVtd")
            .field("caps", &self.state.lock().caps)
            .finish()
    }
}

/// QEMU 7.2 register values (tests/fixtures/registers.txt).
pub mod qemu {
    /// VER.
    pub const VER: u32 = 0x10;
    /// CAP, default properties.
    pub const CAP_DEFAULT: u64 = 0xd2008c22260206;
    /// CAP with `aw-bits=48`.
    pub const CAP_AW48: u64 = 0xd2008c222f0606;
    /// CAP with `caching-mode=on`.
    pub const CAP_CACHING_MODE: u64 = 0xd2008c22260286;
    /// ECAP, default properties.
    pub const ECAP_DEFAULT: u64 = 0xf00f4a;
}

impl FakeVtd {
    /// A unit with the given VER/CAP/ECAP, its memory in `platform`. The host address width is
    /// taken to be the MGAW (as QEMU's `aw-bits` sets both).
    pub fn new(platform: Arc<HostPlatform>, ver: u32, cap: u64, ecap: u64) -> Self {
        let caps = Capabilities::decode(ver, cap, ecap);
        let records = caps.cap.fault_records as usize;
        Self {
            platform,
            state: Mutex::new(FakeState {
                caps,
                haw: caps.cap.mgaw,
                gsts: 0,
                rtaddr: 0,
                active_root: None,
                ccmd: 0,
                iva: 0,
                iotlb_reg: 0,
                fsts: 0,
                fectl: registers::FECTL_IM,
                iqa: 0,
                iqh: 0,
                iqt: 0,
                ics: 0,
                other: BTreeMap::new(),
                fault_records: alloc::vec![(0, 0); records],
                context_cache: BTreeMap::new(),
                iotlb: BTreeMap::new(),
                events: Vec::new(),
                violations: Vec::new(),
                unresponsive: false,
                fetch_budget: None,
                rejected_kind: None,
                register_not_performed: false,
                fault_on_clear: None,
                global_invalidated_since_root: false,
                ir: ir::IrState::default(),
            }),
        }
    }

    /// QEMU's default `intel-iommu`.
    pub fn qemu_default(platform: Arc<HostPlatform>) -> Self {
        Self::new(platform, qemu::VER, qemu::CAP_DEFAULT, qemu::ECAP_DEFAULT)
    }

    /// QEMU's `intel-iommu,aw-bits=48`.
    pub fn qemu_aw48(platform: Arc<HostPlatform>) -> Self {
        Self::new(platform, qemu::VER, qemu::CAP_AW48, qemu::ECAP_DEFAULT)
    }

    /// QEMU's `intel-iommu,caching-mode=on`.
    pub fn qemu_caching_mode(platform: Arc<HostPlatform>) -> Self {
        Self::new(
            platform,
            qemu::VER,
            qemu::CAP_CACHING_MODE,
            qemu::ECAP_DEFAULT,
        )
    }

    /// The memory model.
    pub fn platform(&self) -> &Arc<HostPlatform> {
        &self.platform
    }

    /// Stops the unit from reacting (status bits stay, the queue is not processed): every wait
    /// must then time out.
    pub fn set_unresponsive(&self, stuck: bool) {
        self.state.lock().unresponsive = stuck;
    }

    /// Lets the invalidation queue fetch only `n` more descriptors, after which IQH stalls (as
    /// on hardware that is slow to fetch) while every other register keeps answering; `None`
    /// lifts the limit. Pending descriptors are fetched at once, up to the new limit.
    pub fn set_queue_fetch_limit(&self, n: Option<usize>) {
        let mut s = self.state.lock();
        s.fetch_budget = n;
        self.resume_queue(&mut s);
    }

    /// Makes the invalidation queue reject every descriptor of type `kind`
    /// ([`desc::TYPE_CONTEXT`], ...) with FSTS.IQE, as hardware does with a descriptor it cannot
    /// process; `None` accepts them again.
    pub fn set_rejected_descriptor(&self, kind: Option<u8>) {
        self.state.lock().rejected_kind = kind;
    }

    /// Puts the unit in a state firmware can leave it in: queued invalidation on (with its own
    /// queue page, drained, or with `pending` descriptors not fetched yet), translation on
    /// (through a firmware root table with no present entry), interrupt remapping on. Call it
    /// before [`crate::VtdUnit::enable`].
    pub fn firmware_left(&self, qi: bool, te: bool, ire: bool, pending: usize) {
        let mut s = self.state.lock();
        if qi {
            let queue = self.platform.alloc_table_page().map(|p| p.phys.as_u64());
            s.iqa = queue.unwrap_or(0);
            s.iqh = QueueIndex::new().with_index(3).into_bits();
            s.iqt = QueueIndex::new()
                .with_index(u16::try_from((3 + pending) % (TABLE_PAGE_SIZE / 16)).unwrap_or(0))
                .into_bits();
            s.gsts |= Global::QIE.bits();
            if pending > 0 {
                // Descriptors the hardware has not fetched yet (it is stalled).
                s.fetch_budget = Some(0);
            }
        }
        if te {
            let root = self.platform.alloc_table_page().map(|p| p.phys.as_u64());
            s.rtaddr = root.unwrap_or(0);
            s.active_root = root;
            s.global_invalidated_since_root = true;
            s.gsts |= Global::SRTP.bits() | Global::TE.bits();
        }
        if ire {
            s.gsts |= Global::IRE.bits();
        }
    }

    /// The root table the unit translates through (latched by the last SRTP).
    pub fn active_root(&self) -> Option<u64> {
        self.state.lock().active_root
    }

    /// Makes register-based invalidations complete without performing anything, reporting
    /// CCMD.CAIG / IOTLB.IAIG = 00 (§11.4.6.1, §11.4.8.1: "not performed").
    pub fn set_register_invalidation_not_performed(&self, on: bool) {
        self.state.lock().register_not_performed = on;
    }

    /// Records a fault from `sid` at `iova` at the moment software next clears a fault
    /// record's F bit: a fault arriving between the read and the clear.
    pub fn inject_fault_on_next_clear(&self, sid: RequesterId, iova: u64, write: bool) {
        self.state.lock().fault_on_clear = Some((sid, iova, write));
    }

    /// Everything the unit did so far.
    pub fn events(&self) -> Vec<HwEvent> {
        self.state.lock().events.clone()
    }

    /// Takes (and clears) the event log.
    pub fn take_events(&self) -> Vec<HwEvent> {
        core::mem::take(&mut self.state.lock().events)
    }

    /// The invalidations processed so far.
    pub fn invalidations(&self) -> Vec<(Via, Invalidation)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                HwEvent::Invalidation(via, inv) => Some((via, inv)),
                _ => None,
            })
            .collect()
    }

    /// Protocol violations seen (should stay empty).
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// The GSTS value.
    pub fn gsts(&self) -> Global {
        Global::from_bits_retain(self.state.lock().gsts)
    }

    /// Emulates one DMA access by `sid` to `iova` through the unit: the output address, or the
    /// fault it raised (also recorded in the fault registers, as QEMU does).
    pub fn dma(&self, sid: RequesterId, iova: u64, write: bool) -> DmaResult {
        let mut s = self.state.lock();
        let result = self.translate(&mut s, sid, iova, write);
        if let Err(reason) = result {
            Self::record_fault(&mut s, sid, iova, write, reason);
        }
        result
    }

    fn walk_read(&self, s: &FakeState, phys: u64) -> Option<u64> {
        if s.caps.ecap.coherent {
            self.platform.read_cpu_u64(phys)
        } else {
            self.platform.read_device_u64(phys)
        }
    }

    fn translate(&self, s: &mut FakeState, sid: RequesterId, iova: u64, write: bool) -> DmaResult {
        if s.gsts & Global::TE.bits() == 0 {
            return Ok(iova);
        }
        let perm_fault = if write {
            FaultReason::WriteNotPermitted
        } else {
            FaultReason::ReadNotPermitted
        };
        let ctx = match s.context_cache.get(&sid) {
            Some(c) => *c,
            None => {
                let root = s.active_root.ok_or(FaultReason::RootTableAccess)?;
                let bus = u64::from(sid.bus());
                let root_lo = self
                    .walk_read(s, root + bus * 16)
                    .ok_or(FaultReason::RootTableAccess)?;
                let root_entry = RootEntryLo::from_bits(root_lo);
                if !root_entry.present() {
                    return Err(FaultReason::RootEntryNotPresent);
                }
                let ct = root_entry.ctp();
                let devfn = u64::from(sid.devfn());
                let lo = self
                    .walk_read(s, ct + devfn * 16)
                    .ok_or(FaultReason::ContextTableAccess)?;
                let hi = self
                    .walk_read(s, ct + devfn * 16 + 8)
                    .ok_or(FaultReason::ContextTableAccess)?;
                let c = ContextEntry { lo, hi };
                if !c.present() {
                    return Err(FaultReason::ContextEntryNotPresent);
                }
                if c.translation_type() != ContextEntryLo::TT_UNTRANSLATED_ONLY {
                    return Err(FaultReason::InvalidContextEntry);
                }
                let aw_ok = match c.aw() {
                    1 => s.caps.cap.sagaw & 0b10 != 0,
                    2 => s.caps.cap.sagaw & 0b100 != 0,
                    _ => false,
                };
                if !aw_ok {
                    return Err(FaultReason::InvalidContextEntry);
                }
                s.context_cache.insert(sid, c);
                c
            }
        };
        let did = ctx.did();
        let page = iova >> 12;
        if let Some(t) = s.iotlb.get(&(did, page)) {
            return match t.page {
                Some(out) if (write && t.write) || (!write && t.read) => Ok(out | (iova & 0xFFF)),
                _ => Err(perm_fault),
            };
        }
        let levels: u32 = if ctx.aw() == 1 { 3 } else { 4 };
        let width = 12 + 9 * levels;
        if iova >> width != 0 {
            return Err(FaultReason::AddressBeyondWidth);
        }
        let haw_mask = (1u64 << s.haw) - 1;
        let mut table = ctx.slptptr().as_u64();
        let (mut r, mut w) = (true, true);
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (level - 1);
            let index = (iova >> shift) & 0x1FF;
            let Some(entry) = self.walk_read(s, table + index * 8) else {
                s.violations
                    .push(format!("walk reached freed/unknown page {table:#x}"));
                return Err(FaultReason::PagingEntryAccess);
            };
            r &= entry & pte::READ != 0;
            w &= entry & pte::WRITE != 0;
            if entry & (pte::READ | pte::WRITE) == 0 {
                if s.caps.cap.caching_mode {
                    s.iotlb.insert(
                        (did, page),
                        CachedTranslation {
                            page: None,
                            read: false,
                            write: false,
                        },
                    );
                }
                return Err(perm_fault);
            }
            let addr = SlPte::from_bits(entry).addr();
            let leaf = level == 1 || entry & pte::PAGE_SIZE != 0;
            let snp_reserved = entry & pte::SNOOP != 0 && (!s.caps.ecap.snoop_control || !leaf);
            let ps_reserved = entry & pte::PAGE_SIZE != 0
                && match level {
                    2 => !s.caps.cap.superpage_2m(),
                    3 => !s.caps.cap.superpage_1g(),
                    _ => true,
                };
            if snp_reserved
                || ps_reserved
                || addr & !haw_mask != 0
                || (leaf && addr & ((1u64 << shift) - 1) != 0)
            {
                return Err(FaultReason::PagingEntryReserved);
            }
            if leaf {
                let out = (addr + (iova & ((1u64 << shift) - 1))) & !0xFFF;
                s.iotlb.insert(
                    (did, page),
                    CachedTranslation {
                        page: Some(out),
                        read: r,
                        write: w,
                    },
                );
                return if (write && w) || (!write && r) {
                    Ok(out | (iova & 0xFFF))
                } else {
                    Err(perm_fault)
                };
            }
            table = addr;
            level -= 1;
        }
    }

    fn record_fault(
        s: &mut FakeState,
        rid: RequesterId,
        iova: u64,
        write: bool,
        reason: FaultReason,
    ) {
        let sid = rid.get();
        let lo = FrcdLo::new().with_fi(iova).into_bits();
        Self::record_fault_lo(s, sid, lo, write, reason);
    }

    /// Records a fault whose lower record half is `lo` (an address, or an interrupt index),
    /// then raises the fault event if the unit went from nothing pending to something pending
    /// (§7.3).
    fn record_fault_lo(s: &mut FakeState, sid: u16, lo: u64, write: bool, reason: FaultReason) {
        let before = Self::fault_pending(s);
        Self::store_fault(s, sid, lo, write, reason);
        if !before && Self::fault_pending(s) {
            Self::raise_fault_event(s);
        }
    }

    fn store_fault(s: &mut FakeState, sid: u16, lo: u64, write: bool, reason: FaultReason) {
        let hi = FrcdHi::new()
            .with_f(true)
            .with_t(!write)
            .with_fr(reason.raw())
            .with_sid(sid);
        let record = |h: &u64| FrcdHi::from_bits(*h);
        if let Some(slot) = s.fault_records.iter().position(|(_, h)| !record(h).f()) {
            if s.fault_records
                .iter()
                .any(|(_, h)| record(h).f() && record(h).sid() == sid)
            {
                return;
            }
            s.fault_records[slot] = (lo, hi.into_bits());
        } else if !s.fault_records.iter().any(|(_, h)| record(h).sid() == sid) {
            s.fsts |= FaultStatus::PFO.bits();
        }
    }

    fn fault_record_range(s: &FakeState) -> (usize, usize) {
        let start = s.caps.cap.fault_record_offset();
        (
            start,
            start + s.fault_records.len() * registers::FAULT_RECORD_SIZE,
        )
    }

    fn process_invalidation(&self, s: &mut FakeState, via: Via, inv: Invalidation) -> bool {
        match inv {
            Invalidation::InterruptEntryGlobal | Invalidation::InterruptEntries { .. } => {
                if !Self::invalidate_interrupt_entries(s, inv) {
                    return false;
                }
            }
            Invalidation::ContextGlobal => s.context_cache.clear(),
            Invalidation::ContextDevice { did, sid } => {
                if s.context_cache.get(&sid).is_some_and(|c| c.did() == did) {
                    s.context_cache.remove(&sid);
                }
            }
            Invalidation::IotlbGlobal => {
                s.iotlb.clear();
                if s.active_root.is_some() {
                    s.global_invalidated_since_root = true;
                }
            }
            Invalidation::IotlbDomain { did: d } => s.iotlb.retain(|(did, _), _| *did != d),
            Invalidation::IotlbPage {
                did: d, addr, am, ..
            } => {
                if am > s.caps.cap.mamv {
                    s.violations
                        .push(format!("PSI with AM {am} above MAMV {}", s.caps.cap.mamv));
                    return false;
                }
                let pages = 1u64 << am;
                let first = addr >> 12;
                if first % pages != 0 {
                    s.violations
                        .push(format!("PSI address {addr:#x} not aligned to 2^{am} pages"));
                    return false;
                }
                s.iotlb
                    .retain(|(did, p), _| !(*did == d && *p >= first && *p < first + pages));
            }
        }
        s.events.push(HwEvent::Invalidation(via, inv));
        self.platform.record_invalidation(inv);
        true
    }

    fn process_queue(&self, s: &mut FakeState) {
        let entries = (TABLE_PAGE_SIZE / 16) as u64;
        let base = Iqa::from_bits(s.iqa).base();
        while s.iqh != s.iqt {
            if s.fetch_budget == Some(0) {
                return;
            }
            let index = u64::from(QueueIndex::from_bits(s.iqh).index());
            let at = base + index * 16;
            let (Some(lo), Some(hi)) = (
                self.platform.read_cpu_u64(at),
                self.platform.read_cpu_u64(at + 8),
            ) else {
                s.violations
                    .push(format!("queue descriptor at unknown page {at:#x}"));
                s.fsts |= FaultStatus::IQE.bits();
                return;
            };
            let d = Descriptor { lo, hi };
            let ok = match d.kind() {
                kind if Some(kind) == s.rejected_kind => false,
                desc::TYPE_WAIT => {
                    let wait = WaitDescLo::from_bits(lo);
                    if wait.sw() {
                        let addr = WaitDescHi::from_bits(hi).addr();
                        let data = wait.data();
                        if !self.platform.dma_write_u32(addr, data) {
                            s.violations
                                .push(format!("wait status address {addr:#x} is not memory"));
                        }
                        s.events.push(HwEvent::WaitStatus { addr, data });
                    }
                    if wait.interrupt() {
                        s.ics |= iq::ICS_IWC;
                    }
                    true
                }
                desc::TYPE_CONTEXT | desc::TYPE_IOTLB => match d.decode() {
                    Some(inv) => self.process_invalidation(s, Via::Queue, inv),
                    None => false,
                },
                desc::TYPE_IEC if s.ir.iec_ignored => true,
                desc::TYPE_IEC => match d.decode() {
                    Some(inv) => self.process_invalidation(s, Via::Queue, inv),
                    None => false,
                },
                desc::TYPE_DEVICE_TLB => true,
                _ => false,
            };
            if !ok {
                s.fsts |= FaultStatus::IQE.bits();
                return;
            }
            let next = u16::try_from((index + 1) % entries).unwrap_or(0);
            s.iqh = QueueIndex::new().with_index(next).into_bits();
            if let Some(budget) = s.fetch_budget.as_mut() {
                *budget -= 1;
            }
        }
    }

    /// Fetches pending descriptors if the queue is on and able to.
    fn resume_queue(&self, s: &mut FakeState) {
        if s.gsts & Global::QIE.bits() != 0
            && !s.unresponsive
            && s.fsts & FaultStatus::IQE.bits() == 0
        {
            self.process_queue(s);
        }
    }

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

    fn register_invalidation(&self, s: &mut FakeState, what: &str) -> bool {
        if s.gsts & Global::QIE.bits() != 0 {
            s.violations.push(format!(
                "{what} written while queued invalidation is on (ignored)"
            ));
            return false;
        }
        !s.unresponsive
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
        let s = self.state.lock();
        self.read32_locked(&s, offset)
    }

    fn read64(&self, offset: usize) -> u64 {
        let s = self.state.lock();
        self.read64_locked(&s, offset)
    }

    fn write32(&self, offset: usize, value: u32) {
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
