//! [`HostPlatform`]: heap-backed table memory at made-up physical addresses, with a device view
//! per page that only cache write-backs update (a non-coherent walker), an allocation and
//! flush log, a clock, and a model of the CPU's interrupt flag that checks the unit's
//! interrupt-safe locks ([`IrqReport`]).

use super::*;

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
    /// `Some` while [`HostPlatform::record_table_events`] is on.
    table_events: Option<Vec<TableEvent>>,
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

/// One entry of [`HostPlatform::table_events`] (recorded only while
/// [`HostPlatform::record_table_events`] is on): what a non-coherent walker could observe of
/// table memory, in order with the invalidations a [`FakeVtd`] completed, so a test can check
/// the exact sequence of an operation. The CPU's stores themselves are not visible to the
/// platform; a write-back shows which 64-bit words the walker's view gained in it (one
/// 16-byte store then one write-back shows both words of an entry changing at once; an entry
/// written in halves, each written back, shows up as several write-backs). Nothing is recorded
/// for write-backs while [`HostPlatform::set_flush_disabled`] is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent {
    /// A `flush_cache_range` (clflush) of table memory: the physical address and length asked
    /// for, and every 64-bit word whose device view it changed, as `(phys, new value)`.
    WrittenBack {
        /// Start of the range asked for.
        phys: u64,
        /// Bytes asked for.
        len: usize,
        /// The words the walker's view gained.
        changed: Vec<(u64, u64)>,
    },
    /// A [`FakeVtd`] on this platform completed an invalidation.
    Invalidated(Invalidation),
    /// A coherent 32-bit DMA write (a wait descriptor's status write).
    StatusWritten {
        /// Where.
        phys: u64,
        /// What.
        value: u32,
    },
}

/// Heap-backed [`Platform`] that records every cache write-back.
pub struct HostPlatform {
    mem: Mutex<HostMem>,
    clock: AtomicU64,
    clock_step: u64,
    cycles: AtomicU64,
    irq: Mutex<IrqReport>,
}

/// What the model of one CPU's interrupt flag saw (see [`HostPlatform::irq_report`]):
/// `irq_save` disables interrupts (depth + 1) and returns the depth it found, `irq_restore`
/// must get back the state of the innermost open save. Single-threaded tests only (a real
/// flag is per CPU; this one is per platform).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IrqReport {
    /// Open saves now (0: interrupts enabled).
    pub depth: u64,
    /// The deepest nesting seen.
    pub max_depth: u64,
    /// `irq_save` calls.
    pub saves: u64,
    /// `irq_restore` calls.
    pub restores: u64,
    /// Register accesses of a [`FakeVtd`] on this platform and table-memory services
    /// (`phys_to_virt`, `flush_cache_range`, `memory_fence`) used while interrupts were
    /// enabled (depth 0): work an interrupt handler could interrupt.
    pub with_interrupts_enabled: u64,
    /// Unbalanced or out-of-order restores.
    pub errors: Vec<String>,
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
            cycles: AtomicU64::new(0),
            irq: Mutex::new(IrqReport::default()),
        }
    }

    /// How often the cycle counter ([`Platform::cycles`]) was read: it advances by one per
    /// reading, so this is also its current value.
    pub fn cycle_reads(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// The interrupt-flag model's observations since the platform was created or
    /// [`HostPlatform::reset_irq_report`].
    pub fn irq_report(&self) -> IrqReport {
        self.irq.lock().clone()
    }

    /// Clears the counters and errors of [`HostPlatform::irq_report`] (the depth stays).
    pub fn reset_irq_report(&self) {
        let mut irq = self.irq.lock();
        *irq = IrqReport {
            depth: irq.depth,
            max_depth: irq.depth,
            ..IrqReport::default()
        };
    }

    /// Records a use of the hardware or of table memory, noting whether interrupts were
    /// enabled.
    pub(super) fn note_use(&self) {
        let mut irq = self.irq.lock();
        if irq.depth == 0 {
            irq.with_interrupts_enabled += 1;
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

    pub(super) fn record_invalidation(&self, inv: Invalidation) {
        let mut m = self.mem.lock();
        m.timeline.push(MemEvent::Invalidated(inv));
        if let Some(events) = m.table_events.as_mut() {
            events.push(TableEvent::Invalidated(inv));
        }
    }

    /// Starts (clearing what was recorded) or stops recording [`HostPlatform::table_events`].
    pub fn record_table_events(&self, on: bool) {
        self.mem.lock().table_events = on.then(Vec::new);
    }

    /// Write-backs, invalidations and status writes since [`HostPlatform::record_table_events`]
    /// was turned on, in order (empty while it is off).
    pub fn table_events(&self) -> Vec<TableEvent> {
        self.mem.lock().table_events.clone().unwrap_or_default()
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
        let written = self
            .with_page(phys, |page, off| {
                // SAFETY: the page is live, `off + 4 <= 4096`, aligned.
                unsafe { ((page.virt + off) as *mut u32).write_volatile(value) };
                page.device[off..off + 4].copy_from_slice(&value.to_le_bytes());
            })
            .is_some();
        if written {
            if let Some(events) = self.mem.lock().table_events.as_mut() {
                events.push(TableEvent::StatusWritten { phys, value });
            }
        }
        written
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
        self.note_use();
        let m = self.mem.lock();
        let base = phys.as_u64() & !(TABLE_PAGE_SIZE as u64 - 1);
        match m.pages.get(&base) {
            Some(page) => (page.virt + (phys.as_u64() - base) as usize) as *mut u8,
            None => core::ptr::null_mut(),
        }
    }

    fn flush_cache_range(&self, virt: *const u8, len: usize) {
        self.note_use();
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
        let recording = m.table_events.is_some();
        let mut changed = Vec::new();
        if let Some(page) = m.pages.get_mut(&phys) {
            // SAFETY: the page is live and `start..end` lies within it.
            let cpu = unsafe {
                core::slice::from_raw_parts((page.virt + start) as *const u8, end - start)
            };
            if recording {
                for (i, word) in cpu.chunks_exact(8).enumerate() {
                    let at = start + i * 8;
                    if page.device[at..at + 8] != *word {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(word);
                        changed.push((phys + at as u64, u64::from_le_bytes(b)));
                    }
                }
            }
            page.device[start..end].copy_from_slice(cpu);
        }
        if let Some(events) = m.table_events.as_mut() {
            events.push(TableEvent::WrittenBack {
                phys: phys + (addr - page_virt) as u64,
                len,
                changed,
            });
        }
    }

    fn memory_fence(&self) {
        self.note_use();
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    fn now_us(&self) -> u64 {
        self.clock.fetch_add(self.clock_step, Ordering::Relaxed)
    }

    /// One cycle per reading, counted ([`HostPlatform::cycle_reads`]).
    fn cycles(&self) -> u64 {
        self.cycles.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Interrupts off: the depth grows; the state is the depth found.
    fn irq_save(&self) -> IrqState {
        let mut irq = self.irq.lock();
        let found = irq.depth;
        irq.depth += 1;
        irq.max_depth = irq.max_depth.max(irq.depth);
        irq.saves += 1;
        IrqState::from_raw(found)
    }

    /// Checks that `state` belongs to the innermost open save, then closes it.
    fn irq_restore(&self, state: IrqState) {
        let mut irq = self.irq.lock();
        irq.restores += 1;
        if irq.depth == 0 {
            irq.errors
                .push("irq_restore without an open irq_save".into());
            return;
        }
        if state.raw() != irq.depth - 1 {
            let message = format!(
                "irq_restore of the save at depth {} while {} are open (not innermost first)",
                state.raw(),
                irq.depth
            );
            irq.errors.push(message);
        }
        irq.depth -= 1;
    }
}
