//! What a remapping unit needs from the host kernel: table memory, cache maintenance, time,
//! and masking interrupts around the unit's locks.
//!
//! VT-d remapping structures (root, context and second-level tables, §3.4–§3.6) live in
//! ordinary memory that both the CPU and the remapping hardware access. When ECAP.C = 0
//! (§11.4.3) the hardware's walks do not snoop the CPU caches, so every table write must be
//! written back with `clflush` before the hardware may walk it (§6.1 "Caching and coherency").
//! [`Platform`] is the seam that provides this; host tests back it with heap memory that
//! records every flush (`crate::fake::HostPlatform`).
//!
//! The unit's locks that interrupt handlers can meet (the invalidation queue, the fault
//! records, the interrupt remapping table) are crate-private `IrqMutex`es: held only with
//! interrupts disabled through [`Platform::irq_save`] / [`Platform::irq_restore`], so a handler
//! on the same CPU never spins on a lock the code it interrupted holds.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use dma::PhysAddr;
use spin::{Mutex, MutexGuard};

/// Size of every table page (root, context, page table, invalidation queue).
pub const TABLE_PAGE_SIZE: usize = 4096;
/// Number of 64-bit entries in a table page.
pub const ENTRIES_PER_TABLE: usize = TABLE_PAGE_SIZE / core::mem::size_of::<u64>();

/// A zeroed, 4 KiB-aligned page of table memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TablePage {
    /// Its physical address (what the hardware is given).
    pub phys: PhysAddr,
    /// Where the CPU accesses it.
    pub virt: NonNull<u8>,
}

/// Host services for a remapping unit.
///
/// # Safety
///
/// Implementations promise that:
/// - `alloc_table_page` returns pages that are 4 KiB aligned, zeroed, backed by RAM the
///   hardware can reach at `phys`, not used by anything else, and valid for CPU reads and
///   writes at `virt` (and at `phys_to_virt(phys)`) until passed to `free_table_page`;
///   `alloc_table_pages(n)` returns the same for `n` physically and virtually contiguous
///   pages, until passed to `free_table_pages`;
/// - `phys_to_virt` returns that same CPU address for every address inside such a page;
/// - `flush_cache_range` returns only after every line of the range has been written back to
///   memory (e.g. `mfence; clflush each line; mfence`), ordered after earlier stores.
pub unsafe trait Platform: Send + Sync {
    /// Allocates a zeroed 4 KiB table page, or `None` when out of memory.
    fn alloc_table_page(&self) -> Option<TablePage>;

    /// Returns a page obtained from [`Platform::alloc_table_page`].
    ///
    /// # Safety
    ///
    /// `phys` came from `alloc_table_page`, is not freed yet, and neither the CPU nor the
    /// hardware will access it again (every reference was removed and invalidated).
    unsafe fn free_table_page(&self, phys: PhysAddr);

    /// Allocates `count` physically contiguous, zeroed table pages (the first 4 KiB aligned,
    /// each virtually contiguous after the first at `virt`), or `None` when out of memory or
    /// not supported. For structures larger than a page (the interrupt remapping table,
    /// §9.10: up to 256 pages).
    ///
    /// The default serves `count == 1` through [`Platform::alloc_table_page`] and refuses
    /// anything larger: an embedder that wants interrupt remapping tables of more than 256
    /// entries implements it.
    fn alloc_table_pages(&self, count: usize) -> Option<TablePage> {
        if count == 1 {
            self.alloc_table_page()
        } else {
            None
        }
    }

    /// Returns `count` pages obtained from one [`Platform::alloc_table_pages`] call.
    ///
    /// # Safety
    ///
    /// As [`Platform::free_table_page`], for the whole block; `count` is the count it was
    /// allocated with.
    unsafe fn free_table_pages(&self, phys: PhysAddr, count: usize) {
        if count == 1 {
            // SAFETY: the caller upholds the contract of `free_table_page`.
            unsafe { self.free_table_page(phys) }
        }
    }

    /// The CPU address of table memory at `phys`.
    fn phys_to_virt(&self, phys: PhysAddr) -> *mut u8;

    /// Writes the CPU cache lines covering `[virt, virt + len)` back to memory (clflush).
    /// Called after table writes when the hardware's walks are not coherent (ECAP.C = 0).
    fn flush_cache_range(&self, virt: *const u8, len: usize);

    /// A full memory fence (`mfence`): orders table/queue writes before a doorbell register
    /// write.
    fn memory_fence(&self);

    /// A monotonic clock in microseconds, used for timeouts.
    fn now_us(&self) -> u64;

    /// A cycle counter (on x86: `rdtsc`) for the unit's opt-in phase timing
    /// ([`crate::VtdUnit::set_phase_timing`]); read only while timing is on. The default
    /// returns 0 (every phase then counts 0 cycles).
    fn cycles(&self) -> u64 {
        0
    }

    /// Disables interrupts on this CPU and returns what is needed to undo it (on x86:
    /// RFLAGS, then `cli`). The unit calls it before taking a lock an interrupt handler can
    /// take too, and [`Platform::irq_restore`] after releasing it; calls nest, and each
    /// restore gets the state of its own save, innermost first.
    ///
    /// The default does nothing: right for an embedder that never calls the unit from an
    /// interrupt handler (or polls faults instead of taking the fault-event interrupt).
    fn irq_save(&self) -> IrqState {
        IrqState::NONE
    }

    /// Undoes one [`Platform::irq_save`]: re-enables interrupts only if they were enabled
    /// when that save ran (a nested restore leaves them disabled). The default does nothing.
    fn irq_restore(&self, state: IrqState) {
        let _ = state;
    }
}

/// What [`Platform::irq_save`] saved, handed back to [`Platform::irq_restore`]: an opaque,
/// platform-defined word (the kernel's is RFLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass it to `Platform::irq_restore`"]
pub struct IrqState(u64);

impl IrqState {
    /// The state of a platform that does not mask interrupts (the default `irq_save`).
    pub const NONE: Self = Self(0);

    /// Wraps a platform's saved word.
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The platform's saved word.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// A spin lock held only with interrupts disabled ([`Platform::irq_save`] before acquiring,
/// [`Platform::irq_restore`] after releasing), for state an interrupt handler can reach.
#[derive(Debug, Default)]
pub(crate) struct IrqMutex<T> {
    inner: Mutex<T>,
}

impl<T> IrqMutex<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self {
            inner: Mutex::new(value),
        }
    }

    /// Disables interrupts through `platform`, then takes the lock. Interrupts are restored
    /// when the guard drops, after the lock is released.
    pub(crate) fn lock<'a, P: Platform + ?Sized>(&'a self, platform: &'a P) -> IrqGuard<'a, T, P> {
        let restore = IrqRestore {
            platform,
            saved: platform.irq_save(),
        };
        IrqGuard {
            guard: self.inner.lock(),
            _restore: restore,
        }
    }
}

/// The guard of an [`IrqMutex`].
pub(crate) struct IrqGuard<'a, T, P: Platform + ?Sized> {
    // Fields drop in declaration order: the lock is released before interrupts are restored,
    // so no interrupt can arrive on this CPU while it is held.
    guard: MutexGuard<'a, T>,
    _restore: IrqRestore<'a, P>,
}

impl<T, P: Platform + ?Sized> Deref for IrqGuard<'_, T, P> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, P: Platform + ?Sized> DerefMut for IrqGuard<'_, T, P> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Restores the interrupt state of one [`Platform::irq_save`] when dropped.
struct IrqRestore<'a, P: Platform + ?Sized> {
    platform: &'a P,
    saved: IrqState,
}

impl<P: Platform + ?Sized> Drop for IrqRestore<'_, P> {
    fn drop(&mut self) {
        self.platform.irq_restore(self.saved);
    }
}

// SAFETY: forwarding to an implementation that upholds the contract.
unsafe impl<T: Platform + ?Sized> Platform for alloc::sync::Arc<T> {
    fn alloc_table_page(&self) -> Option<TablePage> {
        (**self).alloc_table_page()
    }
    unsafe fn free_table_page(&self, phys: PhysAddr) {
        // SAFETY: the caller upholds the contract for `T`.
        unsafe { (**self).free_table_page(phys) }
    }
    fn alloc_table_pages(&self, count: usize) -> Option<TablePage> {
        (**self).alloc_table_pages(count)
    }
    unsafe fn free_table_pages(&self, phys: PhysAddr, count: usize) {
        // SAFETY: the caller upholds the contract for `T`.
        unsafe { (**self).free_table_pages(phys, count) }
    }
    fn phys_to_virt(&self, phys: PhysAddr) -> *mut u8 {
        (**self).phys_to_virt(phys)
    }
    fn flush_cache_range(&self, virt: *const u8, len: usize) {
        (**self).flush_cache_range(virt, len)
    }
    fn memory_fence(&self) {
        (**self).memory_fence()
    }
    fn now_us(&self) -> u64 {
        (**self).now_us()
    }
    fn cycles(&self) -> u64 {
        (**self).cycles()
    }
    fn irq_save(&self) -> IrqState {
        (**self).irq_save()
    }
    fn irq_restore(&self, state: IrqState) {
        (**self).irq_restore(state)
    }
}

/// A live table page viewed as 512 64-bit entries, with volatile accesses (the hardware may
/// walk the page concurrently, so an entry is always written with one 64-bit store) and cache
/// write-back when the hardware is not coherent.
pub(crate) struct TableMem<'p, P: Platform + ?Sized> {
    platform: &'p P,
    base: *mut u64,
    coherent: bool,
}

impl<'p, P: Platform + ?Sized> TableMem<'p, P> {
    /// Views the table page at `phys`.
    ///
    /// # Safety
    ///
    /// `phys` is a live page from `platform.alloc_table_page()` that the caller owns (no other
    /// CPU writer while the view is used).
    pub(crate) unsafe fn new(platform: &'p P, phys: PhysAddr, coherent: bool) -> Self {
        Self {
            platform,
            base: platform.phys_to_virt(phys).cast(),
            coherent,
        }
    }

    /// Reads entry `index` (taken modulo 512, so never out of the page).
    pub(crate) fn read(&self, index: usize) -> u64 {
        // SAFETY: `new`'s contract: the page is live and 4 KiB long; the index is in range.
        unsafe { self.base.add(index % ENTRIES_PER_TABLE).read_volatile() }
    }

    /// Writes entry `index` (modulo 512). The caller flushes with [`TableMem::flush`].
    pub(crate) fn write(&self, index: usize, value: u64) {
        // SAFETY: as in `read`.
        unsafe {
            self.base
                .add(index % ENTRIES_PER_TABLE)
                .write_volatile(value)
        }
    }

    /// Writes the 128-bit entry in words `pair * 2` (bits 63:0) and `pair * 2 + 1` (bits
    /// 127:64) with one 16-byte atomic store (`lock cmpxchg16b`), so the hardware never reads
    /// half an update (`pair` is taken modulo 256, so the entry stays in the page and is
    /// 16-byte aligned). Returns `false`, writing nothing, where no 16-byte atomic store
    /// exists (no CPUID.CX16, or not x86_64): the caller then orders two 64-bit stores itself.
    /// The caller flushes with [`TableMem::flush`].
    pub(crate) fn write_u128_atomic(&self, pair: usize, lo: u64, hi: u64) -> bool {
        let index = (pair % (ENTRIES_PER_TABLE / 2)) * 2;
        #[cfg(target_arch = "x86_64")]
        {
            if !has_cmpxchg16b() {
                return false;
            }
            let target = self.base.wrapping_add(index);
            // SAFETY: `new`'s contract: the page is live, 4 KiB long and 4 KiB aligned, so
            // `target` (an even word index below 512) is a valid, 16-byte aligned 16-byte
            // location we own. CPUID said CMPXCHG16B exists. RBX is reserved by the compiler,
            // so the new low half is swapped into it around the instruction and restored
            // after. The loop retries with the value the failed compare loaded into RDX:RAX
            // until the store happens; nothing else in the asm touches memory or the stack.
            unsafe {
                core::arch::asm!(
                    "xchg {new_lo}, rbx",
                    "2:",
                    "lock cmpxchg16b xmmword ptr [{target}]",
                    "jne 2b",
                    "mov rbx, {new_lo}",
                    target = in(reg) target,
                    new_lo = inout(reg) lo => _,
                    in("rcx") hi,
                    inout("rax") 0u64 => _,
                    inout("rdx") 0u64 => _,
                    options(nostack),
                );
            }
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (index, lo, hi);
            false
        }
    }

    /// Writes entries `first..=last` back from the CPU cache if the hardware is not coherent.
    pub(crate) fn flush(&self, first: usize, last: usize) {
        if self.coherent || first > last || last >= ENTRIES_PER_TABLE {
            return;
        }
        let entry = core::mem::size_of::<u64>();
        // Pointer arithmetic stays inside the page (`last < 512`).
        let start = self.base.wrapping_add(first).cast::<u8>();
        self.platform
            .flush_cache_range(start, (last - first + 1) * entry);
    }

    /// Writes the whole page back if the hardware is not coherent (a freshly zeroed page).
    pub(crate) fn flush_all(&self) {
        self.flush(0, ENTRIES_PER_TABLE - 1);
    }

    /// Whether every entry is zero.
    pub(crate) fn is_empty(&self) -> bool {
        (0..ENTRIES_PER_TABLE).all(|i| self.read(i) == 0)
    }
}

/// CPUID.01H:ECX.CX16 (Intel SDM vol. 2A, CPUID): `CMPXCHG16B` is available.
#[cfg(target_arch = "x86_64")]
const CPUID_1_ECX_CX16: u32 = 1 << 13;

/// Whether this CPU has `CMPXCHG16B` (asked once, then cached).
#[cfg(target_arch = "x86_64")]
fn has_cmpxchg16b() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    /// 0 = not asked yet, 1 = absent, 2 = present.
    static CX16: AtomicU8 = AtomicU8::new(0);
    match CX16.load(Ordering::Relaxed) {
        0 => {
            let present = core::arch::x86_64::__cpuid(1).ecx & CPUID_1_ECX_CX16 != 0;
            CX16.store(if present { 2 } else { 1 }, Ordering::Relaxed);
            present
        }
        known => known == 2,
    }
}
