//! Second-level (legacy-mode) I/O page tables: map, unmap, translate.
//!
//! Implements VT-d spec §3.6 (second-level translation) and §9.8 (second-level paging
//! entries) for 3-level (39-bit) and 4-level (48-bit) tables, with 2 MiB and 1 GiB leaves
//! when CAP.SLLPS allows. Rules this module enforces (each checked by a test):
//!
//! - non-leaf entries always carry R|W (rights AND across levels, §3.6.1), leaves carry the
//!   requested R/W;
//! - SNP (bit 11) only when ECAP.SC = 1, [`Prot::CACHE`] is asked and [`Prot::MMIO`] is not
//!   (with SC = 0 the bit is reserved and QEMU faults with reason 0xC);
//! - output addresses at or beyond `2^HAW` are refused ([`IommuError::OutputBeyondLimit`]);
//! - map is all-or-nothing *by construction*: a dry run checks for overlaps and counts the
//!   table pages needed, all of them are allocated up front, and only then is anything
//!   written, so the only failures happen before the first write (digest items 1, 2, 10);
//! - unmap removes exactly what was mapped: a range must be fully mapped and may not split a
//!   superpage ([`IommuError::PartialSuperpage`]; callers unmap superpages whole);
//! - a table is unlinked only when the unmapped range covers the whole region it maps (2 MiB
//!   for a leaf table, 1 GiB for a directory, ...; Linux's rule). It is then handed to *that
//!   unmap's* gather ([`IotlbGather::add_unlinked_table`], with the region it mapped), and
//!   only the flush of that gather frees it, after an invalidation that drops the
//!   paging-structure caches for the region completed (§6.5.1: IH = 0). A table
//!   an unmap merely leaves *empty* stays linked: another mapping may be made in its region
//!   before this unmap's invalidation completes, and hardware without caching mode may still
//!   walk the table through a stale paging-structure cache entry, so it must stay the live
//!   table of that region. Later maps reuse it (leaves inside it, not a superpage over it);
//! - every table write is written back from the CPU cache when ECAP.C = 0, new tables are
//!   filled before they are linked, and entries are stored with single 64-bit writes.

use alloc::vec::Vec;

use dma::iommu::{IommuError, IotlbGather, PageSizes, Prot, UnlinkedTable};
use dma::{DmaAddr, PhysAddr};

use crate::caps::PagingLevels;
use crate::platform::{Platform, TableMem, TablePage, ENTRIES_PER_TABLE};
use crate::registers::SlPte;

/// Second-level paging entry bits, §9.8 (declared in [`registers`](crate::registers)).
pub use crate::registers::pte;

/// log2 of the smallest page.
const PAGE_SHIFT: u32 = 12;
/// Address bits translated per level.
const BITS_PER_LEVEL: u32 = 9;
/// Largest output address width an entry can hold (bits 51:12).
pub const MAX_OUTPUT_BITS: u8 = 52;
const PAGE_4K: u64 = 1 << PAGE_SHIFT;

/// Bytes covered by one entry at `level` (1 = 4 KiB leaf table).
const fn slot_size(level: u8) -> u64 {
    1u64 << (PAGE_SHIFT + BITS_PER_LEVEL * (level as u32 - 1))
}

/// Index of `iova` in a table at `level`.
const fn slot_index(level: u8, iova: u64) -> usize {
    ((iova >> (PAGE_SHIFT + BITS_PER_LEVEL * (level as u32 - 1))) as usize)
        & (ENTRIES_PER_TABLE - 1)
}

/// One leaf entry as [`SecondLevelTable::leaf`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// The output address of the IOVA looked up (the leaf's page plus the IOVA's offset in it).
    pub phys: u64,
    /// The leaf's rights ([`Prot::READ`], [`Prot::WRITE`], [`Prot::CACHE`] for SNP,
    /// [`Prot::MMIO`] for device memory).
    pub prot: Prot,
    /// Bytes the leaf maps: 4 KiB, 2 MiB or 1 GiB.
    pub size: u64,
    /// The level the leaf sits at: 1 (4 KiB page table), 2 (2 MiB, PS = 1 in a page
    /// directory) or 3 (1 GiB, PS = 1 in a PDPT).
    pub level: u8,
}

/// Everything a table needs to know about the hardware that walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Depth (must equal the context entry's AW and be advertised in SAGAW).
    pub levels: PagingLevels,
    /// Input addresses must be below `2^input_bits` (min of the depth's width and MGAW).
    pub input_bits: u8,
    /// Output addresses must be below `2^output_bits` (the host address width, HAW).
    pub output_bits: u8,
    /// Leaf sizes allowed (4 KiB always; 2 MiB / 1 GiB per CAP.SLLPS).
    pub page_sizes: PageSizes,
    /// ECAP.SC: the SNP bit may be set.
    pub snoop_control: bool,
    /// ECAP.C: hardware walks are coherent (no clflush needed).
    pub coherent: bool,
}

impl TableConfig {
    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.page_sizes.contains(PageSizes::SIZE_2M),
            3 => self.page_sizes.contains(PageSizes::SIZE_1G),
            _ => false,
        }
    }

    fn aperture_end(&self) -> u64 {
        (1u64 << self.input_bits.min(self.levels.address_width())) - 1
    }

    fn output_limit(&self) -> u64 {
        1u64 << self.output_bits.min(MAX_OUTPUT_BITS)
    }
}

/// The walk position of one recursive step.
#[derive(Clone, Copy)]
struct Span {
    level: u8,
    start: u64,
    end: u64,
}

impl Span {
    /// The slots of this span at its level: `(index, slot_base, seg_start, seg_end)`.
    fn slots(self) -> impl Iterator<Item = (usize, u64, u64, u64)> {
        let size = slot_size(self.level);
        let mut cur = self.start;
        core::iter::from_fn(move || {
            (cur < self.end).then(|| {
                let base = cur & !(size - 1);
                let seg_end = self.end.min(base + size);
                let item = (slot_index(self.level, cur), base, cur, seg_end);
                cur = seg_end;
                item
            })
        })
    }

    fn child(self, start: u64, end: u64) -> Self {
        Self {
            level: self.level - 1,
            start,
            end,
        }
    }
}

/// What a map writes: where the range starts in both spaces, and the leaf bits.
#[derive(Clone, Copy)]
struct MapArgs {
    iova: u64,
    paddr: u64,
    leaf_bits: u64,
}

impl MapArgs {
    fn paddr_at(&self, iova: u64) -> u64 {
        self.paddr + (iova - self.iova)
    }
}

/// One second-level page table (one domain's translation structure).
///
/// The table does not own a [`Platform`]; every operation borrows one, so the same code runs
/// over kernel memory and over host test memory. Dropping the value leaks the table pages; call
/// [`SecondLevelTable::destroy`] once no context entry refers to it any more.
#[derive(Debug)]
pub struct SecondLevelTable {
    root: PhysAddr,
    cfg: TableConfig,
    /// Opaque token put into every [`UnlinkedTable`] this table hands out.
    owner: u64,
}

impl SecondLevelTable {
    /// Allocates an empty table (its root page). Its unlinked tables carry owner token 0; use
    /// [`SecondLevelTable::with_owner`] to tell tables apart.
    ///
    /// # Errors
    ///
    /// [`IommuError::OutOfMemory`] when the root page cannot be allocated.
    pub fn new<P: Platform + ?Sized>(platform: &P, cfg: TableConfig) -> Result<Self, IommuError> {
        Self::with_owner(platform, cfg, 0)
    }

    /// Allocates an empty table whose unlinked tables carry `owner`
    /// ([`UnlinkedTable::owner`]).
    ///
    /// # Errors
    ///
    /// [`IommuError::OutOfMemory`] when the root page cannot be allocated.
    pub fn with_owner<P: Platform + ?Sized>(
        platform: &P,
        cfg: TableConfig,
        owner: u64,
    ) -> Result<Self, IommuError> {
        let root = platform.alloc_table_page().ok_or(IommuError::OutOfMemory)?;
        // SAFETY: freshly allocated and owned by us.
        unsafe { TableMem::new(platform, root.phys, cfg.coherent) }.flush_all();
        Ok(Self {
            root: root.phys,
            cfg,
            owner,
        })
    }

    /// Physical address of the top-level table (the context entry's SLPTPTR).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The owner token of the tables this table unlinks.
    pub fn owner(&self) -> u64 {
        self.owner
    }

    /// The configuration.
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// The depth chosen.
    pub fn levels(&self) -> PagingLevels {
        self.cfg.levels
    }

    /// Highest mappable IOVA (inclusive).
    pub fn aperture_end(&self) -> u64 {
        self.cfg.aperture_end()
    }

    /// Output addresses must be below this.
    pub fn output_limit(&self) -> u64 {
        self.cfg.output_limit()
    }

    fn top(&self) -> Span {
        Span {
            level: self.cfg.levels.count(),
            start: 0,
            end: 0,
        }
    }

    /// View of a table page this table owns.
    fn mem<'p, P: Platform + ?Sized>(&self, platform: &'p P, phys: PhysAddr) -> TableMem<'p, P> {
        // SAFETY: every `phys` passed here is the root or was read from one of our own
        // non-leaf entries, which only ever hold pages we allocated and have not freed (pages
        // are unlinked before they are queued for freeing). `&self`/`&mut self` serialises
        // CPU writers.
        unsafe { TableMem::new(platform, phys, self.cfg.coherent) }
    }

    fn is_leaf(level: u8, entry: u64) -> bool {
        level == 1 || SlPte::from_bits(entry).ps()
    }

    fn check_range(&self, iova: u64, size: u64) -> Result<u64, IommuError> {
        let end = iova
            .checked_add(size)
            .ok_or(IommuError::OutsideAperture { iova, size })?;
        if end - 1 > self.aperture_end() {
            return Err(IommuError::OutsideAperture { iova, size });
        }
        Ok(end)
    }

    /// Maps `[iova, iova + size)` to `[paddr, paddr + size)` with the largest leaves alignment
    /// allows. All-or-nothing: on error the table is unchanged.
    ///
    /// # Errors
    ///
    /// Nothing is changed on error: [`IommuError::Misaligned`] for a zero size or an address or
    /// size not 4 KiB aligned; [`IommuError::OutsideAperture`] beyond the table's input width;
    /// [`IommuError::OutputBeyondLimit`] for output addresses at or beyond `2^HAW`;
    /// [`IommuError::AlreadyMapped`] when part of the range is mapped; [`IommuError::OutOfMemory`]
    /// when table pages cannot be allocated.
    pub fn map<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: u64,
        paddr: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), IommuError> {
        if size == 0 || (iova | paddr | size) & (PAGE_4K - 1) != 0 {
            return Err(IommuError::Misaligned { iova, paddr, size });
        }
        let end = self.check_range(iova, size)?;
        let limit = self.output_limit();
        match paddr.checked_add(size) {
            Some(pend) if pend <= limit => {}
            _ => {
                return Err(IommuError::OutputBeyondLimit {
                    paddr: paddr.max(limit),
                })
            }
        }
        let args = MapArgs {
            iova,
            paddr,
            leaf_bits: self.leaf_bits(prot),
        };
        if size == PAGE_4K {
            if let Some((mem, index)) = self.leaf_slot(platform, iova) {
                // The common case: one 4 KiB page whose leaf table exists. One walk, one
                // entry written; the general path below handles a missing table or a
                // superpage on the way (`AlreadyMapped`).
                if mem.read(index) != 0 {
                    return Err(IommuError::AlreadyMapped { iova });
                }
                mem.write(
                    index,
                    SlPte::from_bits(args.leaf_bits)
                        .with_addr(paddr)
                        .into_bits(),
                );
                mem.flush(index, index);
                return Ok(());
            }
        }
        let span = Span {
            start: iova,
            end,
            ..self.top()
        };

        // Dry run: overlaps and the number of table pages needed.
        let mut needed = 0usize;
        self.plan_map(platform, Some(self.root), span, &args, &mut needed)?;

        // Allocate everything before writing anything.
        let mut pool: Vec<TablePage> = Vec::new();
        if pool.try_reserve_exact(needed).is_err() {
            return Err(IommuError::OutOfMemory);
        }
        for _ in 0..needed {
            match platform.alloc_table_page() {
                Some(page) => pool.push(page),
                None => {
                    for page in pool {
                        // SAFETY: allocated just now, never linked or used.
                        unsafe { platform.free_table_page(page.phys) };
                    }
                    return Err(IommuError::OutOfMemory);
                }
            }
        }
        self.apply_map(platform, self.root, span, &args, &mut pool);
        debug_assert!(pool.is_empty(), "the dry run counted every table");
        Ok(())
    }

    fn leaf_bits(&self, prot: Prot) -> u64 {
        let mmio = prot.contains(Prot::MMIO);
        SlPte::new()
            .with_sw_mapped(true)
            .with_r(prot.contains(Prot::READ))
            .with_w(prot.contains(Prot::WRITE))
            .with_sw_mmio(mmio)
            .with_snp(!mmio && prot.contains(Prot::CACHE) && self.cfg.snoop_control)
            .into_bits()
    }

    fn leaf_fits(
        &self,
        span: Span,
        base: u64,
        seg_start: u64,
        seg_end: u64,
        args: &MapArgs,
    ) -> bool {
        let size = slot_size(span.level);
        self.cfg.leaf_allowed(span.level)
            && seg_start == base
            && seg_end - seg_start == size
            && args.paddr_at(seg_start) & (size - 1) == 0
    }

    /// Dry run of a map over the table at `table` (`None`: a table that would be created).
    fn plan_map<P: Platform + ?Sized>(
        &self,
        platform: &P,
        table: Option<PhysAddr>,
        span: Span,
        args: &MapArgs,
        needed: &mut usize,
    ) -> Result<(), IommuError> {
        let mem = table.map(|t| self.mem(platform, t));
        for (index, base, seg_start, seg_end) in span.slots() {
            let entry = mem.as_ref().map_or(0, |m| m.read(index));
            let existing_table = entry != 0 && !Self::is_leaf(span.level, entry);
            if entry != 0 && !existing_table {
                return Err(IommuError::AlreadyMapped { iova: seg_start });
            }
            if existing_table {
                // Never place a leaf over a table, even an empty one (hardware may cache the
                // link to it): descend, so an overlap is found at the precise address and an
                // empty table is reused.
                let child = PhysAddr::new(SlPte::from_bits(entry).addr());
                self.plan_map(
                    platform,
                    Some(child),
                    span.child(seg_start, seg_end),
                    args,
                    needed,
                )?;
            } else if !self.leaf_fits(span, base, seg_start, seg_end, args) {
                *needed += 1;
                self.plan_map(platform, None, span.child(seg_start, seg_end), args, needed)?;
            }
        }
        Ok(())
    }

    fn apply_map<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        table: PhysAddr,
        span: Span,
        args: &MapArgs,
        pool: &mut Vec<TablePage>,
    ) {
        let mem = self.mem(platform, table);
        let (mut first, mut last) = (usize::MAX, 0);
        for (index, base, seg_start, seg_end) in span.slots() {
            let entry = mem.read(index);
            if entry != 0 {
                // The dry run proved this is a table with room for the range.
                let child = PhysAddr::new(SlPte::from_bits(entry).addr());
                self.apply_map(platform, child, span.child(seg_start, seg_end), args, pool);
                continue;
            }
            let value = if self.leaf_fits(span, base, seg_start, seg_end, args) {
                SlPte::from_bits(args.leaf_bits)
                    .with_addr(args.paddr_at(seg_start))
                    .with_ps(span.level > 1)
                    .into_bits()
            } else {
                let Some(page) = pool.pop() else {
                    // Unreachable: the dry run counted this table.
                    continue;
                };
                // Fill (and write back) the new table before the hardware can reach it.
                self.mem(platform, page.phys).flush_all();
                self.apply_map(
                    platform,
                    page.phys,
                    span.child(seg_start, seg_end),
                    args,
                    pool,
                );
                SlPte::new()
                    .with_addr(page.phys.as_u64())
                    .with_r(true)
                    .with_w(true)
                    .into_bits()
            };
            mem.write(index, value);
            first = first.min(index);
            last = last.max(index);
        }
        mem.flush(first, last);
    }

    /// Unmaps exactly `[iova, iova + size)`, which must be fully mapped and must not split a
    /// superpage, and records the range in `gather`. All-or-nothing.
    ///
    /// Tables whose whole region lies in the range are unlinked at once and handed to `gather`
    /// ([`IotlbGather::unlinked_tables`]): they are freed by the flush of that gather, after its
    /// invalidation completed, and leak if it is never flushed. Tables the range covers only
    /// partly stay linked, even when left empty (see the module docs).
    ///
    /// # Errors
    ///
    /// Nothing is changed on error: [`IommuError::Misaligned`] for a zero size or an unaligned
    /// address or size; [`IommuError::OutsideAperture`] beyond the input width;
    /// [`IommuError::NotMapped`] when part of the range is not mapped;
    /// [`IommuError::PartialSuperpage`] when the range splits a superpage;
    /// [`IommuError::OutOfMemory`] when the gather cannot grow.
    pub fn unmap<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        iova: u64,
        size: u64,
        gather: &mut IotlbGather,
    ) -> Result<(), IommuError> {
        if size == 0 || (iova | size) & (PAGE_4K - 1) != 0 {
            return Err(IommuError::Misaligned {
                iova,
                paddr: 0,
                size,
            });
        }
        let end = self.check_range(iova, size)?;
        if size == PAGE_4K {
            if let Some((mem, index)) = self.leaf_slot(platform, iova) {
                // The common case: one 4 KiB leaf in an existing leaf table. A 4 KiB range
                // never covers a table's whole region, so nothing is unlinked.
                if mem.read(index) == 0 {
                    return Err(IommuError::NotMapped { iova });
                }
                mem.write(index, 0);
                mem.flush(index, index);
                gather.add(DmaAddr::new(iova), size);
                return Ok(());
            }
        }
        let span = Span {
            start: iova,
            end,
            ..self.top()
        };
        let unlinks = self.check_unmap(platform, self.root, span)?;
        // Room for every table this unmap unlinks, reserved before anything changes (none for
        // a range that covers no table's whole region: no allocation on the common path). A
        // failed push later would only leak a page.
        if unlinks > 0 && !gather.try_reserve_unlinked(unlinks) {
            return Err(IommuError::OutOfMemory);
        }
        gather.add(DmaAddr::new(iova), size);
        self.apply_unmap(platform, self.root, span, gather);
        Ok(())
    }

    /// Dry run of an unmap: the range is fully mapped and splits no superpage. Returns the
    /// number of tables `apply_unmap` will unlink (those whose whole region is in the range).
    fn check_unmap<P: Platform + ?Sized>(
        &self,
        platform: &P,
        table: PhysAddr,
        span: Span,
    ) -> Result<usize, IommuError> {
        let mem = self.mem(platform, table);
        let mut unlinks = 0;
        for (index, base, seg_start, seg_end) in span.slots() {
            let entry = mem.read(index);
            if entry == 0 {
                return Err(IommuError::NotMapped { iova: seg_start });
            }
            let size = slot_size(span.level);
            let covers_region = seg_start == base && seg_end - seg_start == size;
            if Self::is_leaf(span.level, entry) {
                if !covers_region {
                    return Err(IommuError::PartialSuperpage { iova: base, size });
                }
            } else {
                let child = PhysAddr::new(SlPte::from_bits(entry).addr());
                unlinks += self.check_unmap(platform, child, span.child(seg_start, seg_end))?;
                unlinks += usize::from(covers_region);
            }
        }
        Ok(unlinks)
    }

    /// The leaf table (level 1) that translates `iova` and the index of its entry there, when
    /// every table on the way exists (`None` when an entry on the way is empty or a
    /// superpage). `iova` must be inside the aperture.
    fn leaf_slot<'p, P: Platform + ?Sized>(
        &self,
        platform: &'p P,
        iova: u64,
    ) -> Option<(TableMem<'p, P>, usize)> {
        let mut table = self.root;
        let mut level = self.cfg.levels.count();
        while level > 1 {
            let entry = self.mem(platform, table).read(slot_index(level, iova));
            if entry == 0 || Self::is_leaf(level, entry) {
                return None;
            }
            table = PhysAddr::new(SlPte::from_bits(entry).addr());
            level -= 1;
        }
        Some((self.mem(platform, table), slot_index(1, iova)))
    }

    fn apply_unmap<P: Platform + ?Sized>(
        &mut self,
        platform: &P,
        table: PhysAddr,
        span: Span,
        gather: &mut IotlbGather,
    ) {
        let mem = self.mem(platform, table);
        let (mut first, mut last) = (usize::MAX, 0);
        for (index, base, seg_start, seg_end) in span.slots() {
            let entry = mem.read(index);
            if !Self::is_leaf(span.level, entry) {
                let child = PhysAddr::new(SlPte::from_bits(entry).addr());
                self.apply_unmap(platform, child, span.child(seg_start, seg_end), gather);
                let covers_region =
                    seg_start == base && seg_end - seg_start == slot_size(span.level);
                if !covers_region {
                    // Possibly empty now, but another mapping in its region may arrive before
                    // this unmap's invalidation: keep it linked (and reusable).
                    continue;
                }
                // `check_unmap` proved the whole region mapped, so the table is empty now.
                debug_assert!(self.mem(platform, child).is_empty());
                // A failed push leaks the page (never frees it early); the gather still asks
                // for IH = 0 over the region.
                let recorded = gather.add_unlinked_table(UnlinkedTable {
                    phys: child,
                    iova: DmaAddr::new(seg_start),
                    size: slot_size(span.level),
                    owner: self.owner,
                });
                if !recorded {
                    log::warn!("VT-d: no memory to record unlinked table {child}; leaking it");
                }
            }
            mem.write(index, 0);
            first = first.min(index);
            last = last.max(index);
        }
        mem.flush(first, last);
    }

    /// Looks up one IOVA: the physical address it maps to and the leaf's rights
    /// ([`Prot::CACHE`] when SNP is set, [`Prot::MMIO`] for device memory).
    pub fn translate<P: Platform + ?Sized>(
        &self,
        platform: &P,
        iova: u64,
    ) -> Option<(PhysAddr, Prot)> {
        self.leaf(platform, iova)
            .map(|l| (PhysAddr::new(l.phys), l.prot))
    }

    /// The leaf entry that translates `iova`, read from the table: the output address of
    /// `iova` itself (the leaf's page plus the offset), its rights (as
    /// [`SecondLevelTable::translate`]) and the level it sits at, so a caller can prove which
    /// page size the hardware walk ends with. `None` when `iova` is outside the aperture or
    /// not mapped.
    pub fn leaf<P: Platform + ?Sized>(&self, platform: &P, iova: u64) -> Option<Leaf> {
        if iova > self.aperture_end() {
            return None;
        }
        let mut table = self.root;
        let mut level = self.cfg.levels.count();
        loop {
            let entry = self.mem(platform, table).read(slot_index(level, iova));
            if entry == 0 {
                return None;
            }
            if Self::is_leaf(level, entry) {
                let size = slot_size(level);
                let mut prot = Prot::empty();
                for (bit, p) in [
                    (pte::READ, Prot::READ),
                    (pte::WRITE, Prot::WRITE),
                    (pte::SNOOP, Prot::CACHE),
                    (pte::SW_MMIO, Prot::MMIO),
                ] {
                    if entry & bit != 0 {
                        prot |= p;
                    }
                }
                return Some(Leaf {
                    phys: SlPte::from_bits(entry).addr() + (iova & (size - 1)),
                    prot,
                    size,
                    level,
                });
            }
            table = PhysAddr::new(SlPte::from_bits(entry).addr());
            level -= 1;
        }
    }

    /// Frees every table page still linked (unlinked ones belong to their gathers).
    ///
    /// # Safety
    ///
    /// No context entry may refer to this table any more and the hardware caches must have been
    /// invalidated (the domain is detached): otherwise the hardware could walk freed memory.
    pub unsafe fn destroy<P: Platform + ?Sized>(self, platform: &P) {
        let levels = self.cfg.levels.count();
        self.free_subtree(platform, self.root, levels);
    }

    fn free_subtree<P: Platform + ?Sized>(&self, platform: &P, table: PhysAddr, level: u8) {
        if level > 1 {
            let mem = self.mem(platform, table);
            for index in 0..ENTRIES_PER_TABLE {
                let entry = mem.read(index);
                if entry != 0 && !Self::is_leaf(level, entry) {
                    self.free_subtree(
                        platform,
                        PhysAddr::new(SlPte::from_bits(entry).addr()),
                        level - 1,
                    );
                }
            }
        }
        // SAFETY: `destroy`'s caller guarantees the hardware no longer walks the table; the
        // page is ours and referenced nowhere else.
        unsafe { platform.free_table_page(table) };
    }
}

/// Page sizes a table can use given CAP.SLLPS.
pub fn page_sizes(superpage_2m: bool, superpage_1g: bool) -> PageSizes {
    let mut sizes = PageSizes::SIZE_4K;
    if superpage_2m {
        sizes |= PageSizes::SIZE_2M;
    }
    if superpage_1g {
        sizes |= PageSizes::SIZE_1G;
    }
    sizes
}
