//! Root and context tables (legacy mode): which domain a requester ID belongs to.
//!
//! Implements VT-d spec §3.4.2 (legacy root/context tables), §9.1 (root entry) and §9.3
//! (context entry). The root table has one 128-bit entry per bus pointing to that bus's context
//! table; a context table has one 128-bit entry per device/function. A present context entry
//! holds the translation type (TT, bits 3:2), the address width (AW, bits 66:64), the domain
//! ID (bits 87:72) and, for TT = 00, the second-level table pointer:
//!
//! - TT = 00 ([`ContextEntry::translated`]): untranslated requests go through the
//!   second-level table; AW must equal the table depth and be advertised in SAGAW;
//! - TT = 10 ([`ContextEntry::pass_through`], only when ECAP.PT = 1): untranslated requests
//!   pass with output address = input address; SLPTPTR is ignored; §9.3 requires AW to be
//!   "the largest AGAW value supported by hardware" (QEMU checks that AW names a depth in
//!   SAGAW and faults with reason 3 otherwise, and also when ECAP.PT = 0). The DID still tags
//!   the context-cache entry.
//!
//! Writes keep the hardware's view consistent: a context entry is made present by writing its
//! upper half first and the lower half (with P) last ([`RootTable::set_context`]), made
//! not-present by clearing P first ([`RootTable::clear_context`]), and a present entry is
//! replaced by another present one with a single 16-byte atomic store
//! ([`RootTable::replace_context_atomic`]), so the hardware reads either the old or the new
//! entry, never a mix and never a not-present one. Each write is written back from the CPU
//! cache when ECAP.C = 0.

use dma::PhysAddr;

use crate::caps::PagingLevels;
use crate::platform::{Platform, TableMem, TablePage};
use crate::registers::{ContextEntryHi, ContextEntryLo, RootEntryLo};
use pci_address::RequesterId;

/// Number of 64-bit words per root or context entry.
const WORDS_PER_ENTRY: usize = 2;

/// A decoded context entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextEntry {
    /// Lower 64 bits.
    pub lo: u64,
    /// Upper 64 bits.
    pub hi: u64,
}

impl ContextEntry {
    /// TT = 00: untranslated requests through the second-level table (§9.3).
    pub const TT_TRANSLATED: u8 = ContextEntryLo::TT_UNTRANSLATED_ONLY;
    /// TT = 10: pass-through, untranslated requests are not translated (§9.3, ECAP.PT).
    pub const TT_PASS_THROUGH: u8 = 0b10;

    /// A present pass-through entry (TT = 10) in domain `did` with AW = `aw_levels` (which
    /// must be the largest depth SAGAW advertises, §9.3). SLPTPTR is 0 (ignored by hardware).
    pub const fn pass_through(aw_levels: PagingLevels, did: u16) -> Self {
        Self {
            lo: ContextEntryLo::new()
                .with_present(true)
                .with_tt(Self::TT_PASS_THROUGH)
                .into_bits(),
            hi: ContextEntryHi::new()
                .with_aw(aw_levels.context_aw())
                .with_did(did)
                .into_bits(),
        }
    }

    /// A present entry translating untranslated requests through `table` (depth `levels`) in
    /// domain `did`.
    pub const fn translated(table: PhysAddr, levels: PagingLevels, did: u16) -> Self {
        Self {
            lo: ContextEntryLo::new()
                .with_present(true)
                .with_tt(ContextEntryLo::TT_UNTRANSLATED_ONLY)
                .with_slptptr(table.as_u64())
                .into_bits(),
            hi: ContextEntryHi::new()
                .with_aw(levels.context_aw())
                .with_did(did)
                .into_bits(),
        }
    }

    /// Whether the entry is present.
    pub const fn present(&self) -> bool {
        ContextEntryLo::from_bits(self.lo).present()
    }

    /// The domain ID.
    pub const fn did(&self) -> u16 {
        ContextEntryHi::from_bits(self.hi).did()
    }

    /// The AW field.
    pub const fn aw(&self) -> u8 {
        ContextEntryHi::from_bits(self.hi).aw()
    }

    /// The translation type.
    pub const fn translation_type(&self) -> u8 {
        ContextEntryLo::from_bits(self.lo).tt()
    }

    /// The second-level table pointer.
    pub const fn slptptr(&self) -> PhysAddr {
        PhysAddr::new(ContextEntryLo::from_bits(self.lo).slptptr())
    }
}

/// The root table and the context tables below it.
#[derive(Debug)]
pub struct RootTable {
    phys: PhysAddr,
    coherent: bool,
}

impl RootTable {
    /// Allocates an empty root table.
    pub fn new<P: Platform + ?Sized>(platform: &P, coherent: bool) -> Option<Self> {
        let page = platform.alloc_table_page()?;
        let table = Self {
            phys: page.phys,
            coherent,
        };
        table.mem(platform, page.phys).flush_all();
        Some(table)
    }

    /// A second handle on the root table at `phys` (the unit's own), for reads that must not
    /// take the unit's tables lock ([`crate::VtdUnit::context_entry_unlocked`]). Crate-private
    /// so nothing can write or destroy through it.
    pub(crate) const fn alias(phys: PhysAddr, coherent: bool) -> Self {
        Self { phys, coherent }
    }

    /// Physical address (for RTADDR).
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    fn mem<'p, P: Platform + ?Sized>(&self, platform: &'p P, phys: PhysAddr) -> TableMem<'p, P> {
        // SAFETY: `phys` is the root table or a context table read from a present root entry;
        // both are pages we allocated and never free while the root table lives. The unit's
        // table lock serialises CPU writers.
        unsafe { TableMem::new(platform, phys, self.coherent) }
    }

    /// The context table of `bus`, if one is linked.
    pub fn context_table<P: Platform + ?Sized>(&self, platform: &P, bus: u8) -> Option<PhysAddr> {
        let lo = self
            .mem(platform, self.phys)
            .read(bus as usize * WORDS_PER_ENTRY);
        let entry = RootEntryLo::from_bits(lo);
        entry.present().then(|| PhysAddr::new(entry.ctp()))
    }

    /// Links `page` (a fresh zeroed page) as the context table of `bus`, which has none.
    pub fn link_context_table<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        bus: u8,
        page: TablePage,
    ) {
        self.mem(platform, page.phys).flush_all();
        let root = self.mem(platform, self.phys);
        let index = bus as usize * WORDS_PER_ENTRY;
        root.write(index + 1, 0);
        root.write(
            index,
            RootEntryLo::new()
                .with_present(true)
                .with_ctp(page.phys.as_u64())
                .into_bits(),
        );
        root.flush(index, index + 1);
    }

    /// The context entry of `rid`, if its bus has a context table.
    pub fn context<P: Platform + ?Sized>(
        &self,
        platform: &P,
        rid: RequesterId,
    ) -> Option<ContextEntry> {
        let table = self.context_table(platform, rid.bus())?;
        let mem = self.mem(platform, table);
        let index = rid.devfn() as usize * WORDS_PER_ENTRY;
        Some(ContextEntry {
            lo: mem.read(index),
            hi: mem.read(index + 1),
        })
    }

    /// Writes a present context entry for `rid` (upper half first, present bit last). The bus
    /// must have a context table; returns `false` (and writes nothing) otherwise.
    pub fn set_context<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        entry: ContextEntry,
    ) -> bool {
        let Some(table) = self.context_table(platform, rid.bus()) else {
            return false;
        };
        let mem = self.mem(platform, table);
        let index = rid.devfn() as usize * WORDS_PER_ENTRY;
        mem.write(index, 0);
        mem.flush(index, index);
        mem.write(index + 1, entry.hi);
        mem.flush(index + 1, index + 1);
        platform.memory_fence();
        mem.write(index, entry.lo);
        mem.flush(index, index);
        true
    }

    /// Replaces `rid`'s context entry with `entry` in one 16-byte atomic store
    /// (`lock cmpxchg16b`), then writes it back from the CPU cache when ECAP.C = 0: for a
    /// present entry switched to another present one, the hardware fetches either the old or
    /// the new entry, never half of each and never a not-present one. Returns `false`, writing
    /// nothing, when the bus has no context table or the CPU has no 16-byte atomic store
    /// ([`RootTable::atomic_store_available`] tells which beforehand).
    pub fn replace_context_atomic<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        rid: RequesterId,
        entry: ContextEntry,
    ) -> bool {
        let Some(table) = self.context_table(platform, rid.bus()) else {
            return false;
        };
        let mem = self.mem(platform, table);
        let pair = rid.devfn() as usize;
        if !mem.write_u128_atomic(pair, entry.lo, entry.hi) {
            return false;
        }
        let index = pair * WORDS_PER_ENTRY;
        mem.flush(index, index + 1);
        true
    }

    /// Whether [`RootTable::replace_context_atomic`] can store (the CPU has `CMPXCHG16B`).
    /// Asks by storing root entry 0 back with its own value (one 16-byte atomic store that
    /// changes nothing and needs no write-back), so a caller can refuse before touching
    /// anything.
    pub fn atomic_store_available<P: Platform + ?Sized>(&mut self, platform: &P) -> bool {
        let root = self.mem(platform, self.phys);
        root.write_u128_atomic(0, root.read(0), root.read(1))
    }

    /// Clears `rid`'s context entry (present bit first).
    pub fn clear_context<P: Platform + ?Sized>(&mut self, platform: &P, rid: RequesterId) {
        if let Some(table) = self.context_table(platform, rid.bus()) {
            let mem = self.mem(platform, table);
            let index = rid.devfn() as usize * WORDS_PER_ENTRY;
            mem.write(index, 0);
            mem.flush(index, index);
            mem.write(index + 1, 0);
            mem.flush(index + 1, index + 1);
        }
    }

    /// Frees the root table and every context table.
    ///
    /// # Safety
    ///
    /// Translation must be disabled (or RTADDR pointing elsewhere) and the context cache
    /// invalidated, so the hardware no longer walks these tables.
    pub unsafe fn destroy<P: Platform + ?Sized>(self, platform: &P) {
        for bus in 0..=u8::MAX {
            if let Some(table) = self.context_table(platform, bus) {
                // SAFETY: ours, and the caller guarantees the hardware no longer walks it.
                unsafe { platform.free_table_page(table) };
            }
        }
        // SAFETY: as above.
        unsafe { platform.free_table_page(self.phys) };
    }
}
