//! First-stage (first-level) I/O page tables for scalable mode: map, unmap, translate.
//!
//! Implements VT-d spec §3.6 (first-stage translation, used when a scalable-mode PASID entry
//! (§9.6) has PGTT = 001b; access rights §3.6.1, A/D flags §3.6.2, snoop §3.6.3, memory type
//! §3.6.4) and §9.7 (first-stage paging entries). The format is x86 IA-32e paging
//! (4-level, 48-bit; 5-level, 57-bit, with CAP.FS5LP), not the second-level format of
//! [`pagetable`](crate::pagetable): entries carry P, R/W, U/S, PWT, PCD, A, D, PS, G and XD,
//! 2 MiB leaves are always available and 1 GiB leaves with CAP.FS1GP. [`FirstStageTable`] has
//! the API shape and the rules of [`SecondLevelTable`](crate::SecondLevelTable) (all-or-nothing
//! map with a dry run and every table page allocated up front, unmap of exactly what was
//! mapped, [`IommuError::PartialSuperpage`], unlinked tables handed to the unmap's gather,
//! write-back of every table write when walks are not coherent, output below `2^HAW`, the
//! largest leaves alignment allows); only the entry encoding differs. Rules specific to the
//! first-stage format (each checked by a test in `tests/firststage.rs`):
//!
//! - **U/S at every level.** Requests without PASID (RID_PASID) and requests with PASID but
//!   without the privileged-mode bit are user-mode requests (§3.6.1): every entry on the walk
//!   must have U/S = 1. QEMU 10 (`vtd_iova_to_flpte`) checks it at every level and faults with
//!   reason 0x81 otherwise, since none of its devices issues supervisor requests.
//! - **R/W ANDs across levels** (§3.6.1), as in second-level: non-leaf entries are
//!   P | R/W | U/S, leaves carry R/W only when writes are allowed.
//! - **No write-only mappings.** A present first-stage entry is always readable; there is no
//!   read-disable bit. A request for [`Prot::WRITE`] without [`Prot::READ`] is mapped read +
//!   write (the device may read what it may write; the page is the caller's buffer either
//!   way), and [`FirstStageTable::translate`] reports `READ | WRITE` for it, so callers see the
//!   rights the hardware really grants. `Prot::empty()` is a mapping with P = 0 and a software
//!   bit (hardware sees "not present"), as in second-level.
//! - **A and D are set by software** (§3.6.2). The accessed bit is set in every entry this module
//!   writes, and the dirty bit in writable leaves, as Linux does for first-level tables
//!   (`DMA_FL_PTE_ACCESS`, `DMA_FL_PTE_DIRTY`). Hardware then never writes the table (QEMU's
//!   `vtd_set_flag_in_pte` and real hardware both skip an update of a bit already set), so the
//!   table stays CPU-owned: no atomic A/D updates race with our stores, no non-coherent
//!   hardware writes, and entries read back exactly as written. A read-only leaf has D = 0:
//!   no write can go through it. Readers mask A and D anyway.
//! - **Reserved bits.** QEMU faults (reason 0x72) on a present entry with a bit set between
//!   the address width and bit 51, PS in a PML4E (or PML5E), or bits 20:13 (2 MiB) / 29:13
//!   (1 GiB) in a large leaf; bits 63:52 are ignored there. This module never sets an address
//!   bit at or above `2^HAW`, sets PS only at levels 2 and 3, keeps large-leaf addresses
//!   aligned (so PAT, bit 12 of a large leaf, is 0), never sets XD (bit 63; execute requests
//!   are not used), and keeps its two software bits in the ignored bits 52 and 53.
//! - **No SNP bit.** Snooping of first-stage translated requests is the PASID entry's PGSNP
//!   (or the request's no-snoop attribute), not an entry bit, so [`Prot::CACHE`] is accepted
//!   and ignored (not recorded). The memory type comes from PAT/PCD/PWT and matters only when
//!   memory types are enabled (ECAP.MTS and the PASID entry's memory-type fields): a
//!   [`Prot::MMIO`] leaf gets PCD | PWT (uncacheable with the default PAT), a RAM leaf neither
//!   (write-back).
//! - **Canonical input addresses.** First-stage input addresses must be canonical (§3.6;
//!   QEMU faults with `VTD_FR_FS_NON_CANONICAL` otherwise). This table maps the lower half only, so its
//!   aperture ends at `2^47 - 1` (4-level) or `2^56 - 1` (5-level), one bit below the paging
//!   width: an IOVA with bit 47 set and zero upper bits is not canonical.
//! - **Coherency.** In scalable mode, [`FirstStageConfig::coherent`] is ECAP.SMPWC with the
//!   PASID entry's PWSNP set (not ECAP.C, which governs legacy-mode walks).

use alloc::vec::Vec;

use bitfield_struct::bitfield;
use dma::iommu::{IommuError, IotlbGather, PageSizes, Prot, UnlinkedTable};
use dma::{DmaAddr, PhysAddr};

use crate::pagetable::{Leaf, MAX_OUTPUT_BITS};
use crate::platform::{Platform, TableMem, TablePage, ENTRIES_PER_TABLE};

/// log2 of the smallest page.
const PAGE_SHIFT: u32 = 12;
/// Address bits translated per level.
const BITS_PER_LEVEL: u32 = 9;
const PAGE_4K: u64 = 1 << PAGE_SHIFT;

/// Field conversion for the address in bits 51:12: the field holds bits 51:12 of the address.
const fn addr_51_12_into(addr: u64) -> u64 {
    (addr >> PAGE_SHIFT) & ((1 << 40) - 1)
}

/// Inverse of [`addr_51_12_into`].
const fn addr_51_12_from(field: u64) -> u64 {
    field << PAGE_SHIFT
}

/// First-stage paging entry, §9.7 (PML5E, PML4E, PDPTE, PDE and PTE alike; the bits a level
/// does not define are left 0).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct FsPte {
    /// Present (bit 0).
    pub p: bool,
    /// Read/write (bit 1): writes are allowed through this entry.
    pub rw: bool,
    /// User/supervisor (bit 2): user-mode requests are allowed (every request without PASID).
    pub us: bool,
    /// Page-level write-through (bit 3).
    pub pwt: bool,
    /// Page-level cache disable (bit 4).
    pub pcd: bool,
    /// Accessed (bit 5).
    pub a: bool,
    /// Dirty (bit 6; leaves only, ignored in non-leaf entries).
    pub d: bool,
    /// Page size (bit 7) in a PDE or PDPTE: this entry is a 2 MiB / 1 GiB leaf. In a PTE the
    /// same bit is PAT (never set here); in a PML4E/PML5E it is reserved.
    pub ps: bool,
    /// Global (bit 8; leaves only). Never set here.
    pub g: bool,
    #[bits(3)]
    __: u8,
    /// Address (bits 51:12): the next table or the leaf's page (bit 12 of a large leaf is PAT,
    /// always 0 here because large leaves are aligned).
    #[bits(40, from = addr_51_12_from, into = addr_51_12_into)]
    pub addr: u64,
    /// Software bit 52 (ignored by hardware): a leaf written by this crate, so a mapping with
    /// no access rights can exist (P = 0 to hardware).
    pub sw_mapped: bool,
    /// Software bit 53 (ignored by hardware): the leaf maps device memory ([`Prot::MMIO`]).
    pub sw_mmio: bool,
    #[bits(9)]
    __: u16,
    /// Execute disable (bit 63). Never set here.
    pub xd: bool,
}

/// The single bits and the address field of [`FsPte`] as raw masks, for code and tests that
/// look at raw entries.
pub mod fspte {
    use super::FsPte;

    /// Present.
    pub const PRESENT: u64 = FsPte::new().with_p(true).into_bits();
    /// Read/write.
    pub const WRITE: u64 = FsPte::new().with_rw(true).into_bits();
    /// User/supervisor.
    pub const USER: u64 = FsPte::new().with_us(true).into_bits();
    /// Page-level write-through.
    pub const PWT: u64 = FsPte::new().with_pwt(true).into_bits();
    /// Page-level cache disable.
    pub const PCD: u64 = FsPte::new().with_pcd(true).into_bits();
    /// Accessed.
    pub const ACCESSED: u64 = FsPte::new().with_a(true).into_bits();
    /// Dirty.
    pub const DIRTY: u64 = FsPte::new().with_d(true).into_bits();
    /// Page size (levels 2 and 3).
    pub const PAGE_SIZE: u64 = FsPte::new().with_ps(true).into_bits();
    /// Global.
    pub const GLOBAL: u64 = FsPte::new().with_g(true).into_bits();
    /// Address bits 51:12.
    pub const ADDR_MASK: u64 = FsPte::new().with_addr(u64::MAX).into_bits();
    /// Software bit: a leaf written by this crate ([`FsPte::sw_mapped`]).
    pub const SW_MAPPED: u64 = FsPte::new().with_sw_mapped(true).into_bits();
    /// Software bit: the leaf maps device memory ([`FsPte::sw_mmio`]).
    pub const SW_MMIO: u64 = FsPte::new().with_sw_mmio(true).into_bits();
    /// Execute disable.
    pub const XD: u64 = FsPte::new().with_xd(true).into_bits();
}

/// Depth of a first-stage table (the PASID entry's FSPM field, §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstStageLevels {
    /// 4-level paging, 48-bit input addresses (FSPM = 00b).
    Four,
    /// 5-level paging, 57-bit input addresses (FSPM = 01b; only with CAP.FS5LP).
    Five,
}

impl FirstStageLevels {
    /// Number of table levels.
    pub const fn count(self) -> u8 {
        match self {
            Self::Four => 4,
            Self::Five => 5,
        }
    }

    /// Paging width in bits (48 or 57): canonical addresses sign-extend bit `width - 1`.
    pub const fn address_width(self) -> u8 {
        match self {
            Self::Four => 48,
            Self::Five => 57,
        }
    }

    /// The PASID entry's first-stage paging mode (FSPM) encoding, §9.6.
    pub const fn fspm(self) -> u8 {
        match self {
            Self::Four => 0,
            Self::Five => 1,
        }
    }
}

/// Everything a first-stage table needs to know about the hardware that walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstStageConfig {
    /// Depth (the PASID entry's FSPM).
    pub levels: FirstStageLevels,
    /// Input addresses must be below `2^input_bits` (further capped to the lower canonical
    /// half of the paging width).
    pub input_bits: u8,
    /// Output addresses must be below `2^output_bits` (the host address width, HAW).
    pub output_bits: u8,
    /// Leaf sizes allowed (4 KiB always; see [`page_sizes`]). 1 GiB needs CAP.FS1GP.
    pub page_sizes: PageSizes,
    /// Hardware walks snoop the CPU caches (scalable mode: ECAP.SMPWC with PWSNP set in the
    /// PASID entry): no write-back needed.
    pub coherent: bool,
}

impl FirstStageConfig {
    fn leaf_allowed(&self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.page_sizes.contains(PageSizes::SIZE_2M),
            3 => self.page_sizes.contains(PageSizes::SIZE_1G),
            _ => false,
        }
    }

    fn aperture_end(&self) -> u64 {
        // The lower canonical half: bit `width - 1` must be 0 (upper bits are then 0 too).
        (1u64 << self.input_bits.min(self.levels.address_width() - 1)) - 1
    }

    fn output_limit(&self) -> u64 {
        1u64 << self.output_bits.min(MAX_OUTPUT_BITS)
    }
}

/// Page sizes a first-stage table can use: 4 KiB and 2 MiB always (§3.6), 1 GiB when
/// CAP.FS1GP is set.
pub fn page_sizes(fs1gp: bool) -> PageSizes {
    let mut sizes = PageSizes::SIZE_4K | PageSizes::SIZE_2M;
    if fs1gp {
        sizes |= PageSizes::SIZE_1G;
    }
    sizes
}

/// Bytes covered by one entry at `level` (1 = 4 KiB leaf table).
const fn slot_size(level: u8) -> u64 {
    1u64 << (PAGE_SHIFT + BITS_PER_LEVEL * (level as u32 - 1))
}

/// Index of `iova` in a table at `level`.
const fn slot_index(level: u8, iova: u64) -> usize {
    ((iova >> (PAGE_SHIFT + BITS_PER_LEVEL * (level as u32 - 1))) as usize)
        & (ENTRIES_PER_TABLE - 1)
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

    fn covers_slot(self, base: u64, seg_start: u64, seg_end: u64) -> bool {
        seg_start == base && seg_end - seg_start == slot_size(self.level)
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

/// The bits of a leaf entry for `prot` (address and PS not included).
fn leaf_bits(prot: Prot) -> u64 {
    let mmio = prot.contains(Prot::MMIO);
    let write = prot.contains(Prot::WRITE);
    // No write-only in the first-stage format: a writable leaf is readable too.
    let present = write || prot.contains(Prot::READ);
    FsPte::new()
        .with_sw_mapped(true)
        .with_sw_mmio(mmio)
        .with_p(present)
        .with_us(present)
        .with_a(present)
        .with_rw(write)
        .with_d(write)
        .with_pcd(present && mmio)
        .with_pwt(present && mmio)
        .into_bits()
}

/// A non-leaf entry pointing at the table at `phys`.
fn table_entry(phys: PhysAddr) -> u64 {
    FsPte::new()
        .with_addr(phys.as_u64())
        .with_p(true)
        .with_rw(true)
        .with_us(true)
        .with_a(true)
        .into_bits()
}

/// The rights a leaf entry grants (see the module docs: never write-only, no CACHE).
fn leaf_prot(entry: u64) -> Prot {
    let e = FsPte::from_bits(entry);
    let mut prot = Prot::empty();
    if e.p() {
        prot |= Prot::READ;
        if e.rw() {
            prot |= Prot::WRITE;
        }
    }
    if e.sw_mmio() {
        prot |= Prot::MMIO;
    }
    prot
}

/// One first-stage page table (the translation structure of one PASID entry with PGTT =
/// 001b; the PASID entry's FSPTPTR is [`FirstStageTable::root`]).
///
/// The table does not own a [`Platform`]; every operation borrows one, so the same code runs
/// over kernel memory and over host test memory. Dropping the value leaks the table pages; call
/// [`FirstStageTable::destroy`] once no PASID entry refers to it any more.
#[derive(Debug)]
pub struct FirstStageTable {
    root: PhysAddr,
    cfg: FirstStageConfig,
    /// Opaque token put into every [`UnlinkedTable`] this table hands out.
    owner: u64,
}

impl FirstStageTable {
    /// Allocates an empty table (its root page). Its unlinked tables carry owner token 0; use
    /// [`FirstStageTable::with_owner`] to tell tables apart.
    ///
    /// # Errors
    ///
    /// [`IommuError::OutOfMemory`] when the root page cannot be allocated.
    pub fn new<P: Platform + ?Sized>(
        platform: &P,
        cfg: FirstStageConfig,
    ) -> Result<Self, IommuError> {
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
        cfg: FirstStageConfig,
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

    /// Physical address of the top-level table (the PASID entry's FSPTPTR).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The owner token of the tables this table unlinks.
    pub fn owner(&self) -> u64 {
        self.owner
    }

    /// The configuration.
    pub fn config(&self) -> &FirstStageConfig {
        &self.cfg
    }

    /// The depth chosen.
    pub fn levels(&self) -> FirstStageLevels {
        self.cfg.levels
    }

    /// Highest mappable IOVA (inclusive): the top of the lower canonical half, or less.
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

    /// Whether a non-zero `entry` at `level` is a leaf (PS is only ever set at levels 2/3).
    fn is_leaf(level: u8, entry: u64) -> bool {
        level == 1 || FsPte::from_bits(entry).ps()
    }

    fn child_of(entry: u64) -> PhysAddr {
        PhysAddr::new(FsPte::from_bits(entry).addr())
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
    /// `prot` as in the module docs: [`Prot::WRITE`] alone maps read + write (the format has
    /// no write-only), [`Prot::CACHE`] is ignored, [`Prot::MMIO`] sets PCD | PWT.
    ///
    /// # Errors
    ///
    /// Nothing is changed on error: [`IommuError::Misaligned`] for a zero size or an address or
    /// size not 4 KiB aligned; [`IommuError::OutsideAperture`] beyond the table's input range
    /// (the lower canonical half); [`IommuError::OutputBeyondLimit`] for output addresses at
    /// or beyond `2^HAW`; [`IommuError::AlreadyMapped`] when part of the range is mapped;
    /// [`IommuError::OutOfMemory`] when table pages cannot be allocated.
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
            leaf_bits: leaf_bits(prot),
        };
        if size == PAGE_4K {
            if let Some((mem, index)) = self.leaf_slot(platform, iova) {
                // The common case: one 4 KiB page whose leaf table exists.
                if mem.read(index) != 0 {
                    return Err(IommuError::AlreadyMapped { iova });
                }
                mem.write(
                    index,
                    FsPte::from_bits(args.leaf_bits)
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

    fn leaf_fits(
        &self,
        span: Span,
        base: u64,
        seg_start: u64,
        seg_end: u64,
        args: &MapArgs,
    ) -> bool {
        self.cfg.leaf_allowed(span.level)
            && span.covers_slot(base, seg_start, seg_end)
            && args.paddr_at(seg_start) & (slot_size(span.level) - 1) == 0
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
            if entry != 0 && Self::is_leaf(span.level, entry) {
                return Err(IommuError::AlreadyMapped { iova: seg_start });
            }
            if entry != 0 {
                // Never place a leaf over a table, even an empty one (hardware may cache the
                // link to it): descend, so an overlap is found at the precise address and an
                // empty table is reused.
                self.plan_map(
                    platform,
                    Some(Self::child_of(entry)),
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
                let child = Self::child_of(entry);
                self.apply_map(platform, child, span.child(seg_start, seg_end), args, pool);
                continue;
            }
            let value = if self.leaf_fits(span, base, seg_start, seg_end, args) {
                FsPte::from_bits(args.leaf_bits)
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
                table_entry(page.phys)
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
    /// invalidation completed (a PASID-based IOTLB invalidation with IH = 0, §6.5.2.4), and
    /// leak if it is never flushed. Tables the range covers only partly stay linked, even when
    /// left empty (see [`pagetable`](crate::pagetable) for why).
    ///
    /// # Errors
    ///
    /// Nothing is changed on error: [`IommuError::Misaligned`] for a zero size or an unaligned
    /// address or size; [`IommuError::OutsideAperture`] beyond the input range;
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
                // One 4 KiB leaf in an existing leaf table: nothing can be unlinked.
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
        if unlinks > 0 && !gather.try_reserve_unlinked(unlinks) {
            return Err(IommuError::OutOfMemory);
        }
        gather.add(DmaAddr::new(iova), size);
        self.apply_unmap(platform, self.root, span, gather);
        Ok(())
    }

    /// Dry run of an unmap: the range is fully mapped and splits no superpage. Returns the
    /// number of tables `apply_unmap` will unlink.
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
            let covers_region = span.covers_slot(base, seg_start, seg_end);
            if Self::is_leaf(span.level, entry) {
                if !covers_region {
                    return Err(IommuError::PartialSuperpage {
                        iova: base,
                        size: slot_size(span.level),
                    });
                }
            } else {
                unlinks += self.check_unmap(
                    platform,
                    Self::child_of(entry),
                    span.child(seg_start, seg_end),
                )?;
                unlinks += usize::from(covers_region);
            }
        }
        Ok(unlinks)
    }

    /// The leaf table (level 1) that translates `iova` and the index of its entry there, when
    /// every table on the way exists. `iova` must be inside the aperture.
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
            table = Self::child_of(entry);
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
                let child = Self::child_of(entry);
                self.apply_unmap(platform, child, span.child(seg_start, seg_end), gather);
                if !span.covers_slot(base, seg_start, seg_end) {
                    // Possibly empty now, but another mapping in its region may arrive before
                    // this unmap's invalidation: keep it linked (and reusable).
                    continue;
                }
                debug_assert!(self.mem(platform, child).is_empty());
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

    /// Looks up one IOVA: the physical address it maps to and the rights the hardware grants
    /// ([`Prot::READ`] for every present leaf, [`Prot::WRITE`] with R/W, [`Prot::MMIO`] for
    /// device memory; never [`Prot::CACHE`]).
    pub fn translate<P: Platform + ?Sized>(
        &self,
        platform: &P,
        iova: u64,
    ) -> Option<(PhysAddr, Prot)> {
        self.leaf(platform, iova)
            .map(|l| (PhysAddr::new(l.phys), l.prot))
    }

    /// The leaf entry that translates `iova`, read from the table: the output address of
    /// `iova` itself, its rights (as [`FirstStageTable::translate`]), its size and the level
    /// it sits at. `None` when `iova` is outside the aperture or not mapped.
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
                // `& !(size - 1)` drops PAT (bit 12) of a large leaf.
                let page = FsPte::from_bits(entry).addr() & !(size - 1);
                return Some(Leaf {
                    phys: page + (iova & (size - 1)),
                    prot: leaf_prot(entry),
                    size,
                    level,
                });
            }
            table = Self::child_of(entry);
            level -= 1;
        }
    }

    /// Frees every table page still linked (unlinked ones belong to their gathers).
    ///
    /// # Safety
    ///
    /// No PASID entry may refer to this table any more and the hardware caches must have been
    /// invalidated: otherwise the hardware could walk freed memory.
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
                    self.free_subtree(platform, Self::child_of(entry), level - 1);
                }
            }
        }
        // SAFETY: `destroy`'s caller guarantees the hardware no longer walks the table; the
        // page is ours and referenced nowhere else.
        unsafe { platform.free_table_page(table) };
    }
}
