//! Root and context tables (legacy mode): which domain a requester ID belongs to.
//!
//! Implements VT-d spec §3.4.2 (legacy root/context tables), §9.1 (root entry) and §9.3
//! (context entry). The root table has one 128-bit entry per bus pointing to that bus's context
//! table; a context table has one 128-bit entry per device/function. A present context entry
//! holds the translation type (00: untranslated requests only, through the second-level table),
//! the address width (AW, which must equal the table depth and be advertised in SAGAW), the
//! domain ID and the second-level table pointer.
//!
//! Writes keep the hardware's view consistent: a context entry is made present by writing its
//! upper half first and the lower half (with P) last, and made not-present by clearing P first;
//! each write is written back from the CPU cache when ECAP.C = 0.

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
