//! Invalidation of the context cache and the IOTLB: queued or register-based.
//!
//! Implements VT-d spec §6.5: register-based invalidation through CCMD and the IOTLB register
//! pair (§6.5.1, §11.4.6, §11.4.8; a completion whose actual granularity CAIG/IAIG is 00 means
//! "not performed" and is an error) and queued invalidation (§6.5.2): a one-page ring of 128-bit
//! descriptors (context-cache §6.5.2.1, IOTLB §6.5.2.3, invalidation wait §6.5.2.8; in scalable
//! mode also PASID-cache §6.5.2.2, type 7, and PASID-based IOTLB §6.5.2.4, type 6) written by
//! software, fetched by hardware between IQH and IQT. The interrupt entry cache (§6.5.2.7, type
//! 4: global or index-selective with an index mask) can only be invalidated through the queue. A batch is always closed with a wait
//! descriptor whose status write lands in a memory word this module polls with a timeout, so
//! "invalidated" means "the hardware said it finished", never "we asked".
//!
//! Once GCMD.QIE is set the CCMD/IOTLB registers must not be touched (QEMU ignores them and a
//! poller would hang); [`Invalidator`] makes that impossible by construction: it is either in
//! register mode or in queued mode, and only the unit's enable/disable switch modes.
//!
//! Page-selective invalidation of a range ([`iotlb_range`]) is split into naturally aligned
//! power-of-two chunks ([`psi_chunks`]: address aligned to 2^AM pages, AM ≤ CAP.MAMV) when that
//! takes at most [`PSI_DESCRIPTOR_LIMIT`] descriptors. Past the limit one page-selective
//! request covers the whole range ([`psi_cover`]: the smallest aligned 2^AM block containing
//! it, as Linux issues one covering PSI), or, when even that needs AM > MAMV or the unit lacks
//! CAP.PSI, one domain-selective request. Every descriptor costs the hardware a pass over its
//! IOTLB, so a few slightly wider requests beat many exact ones. The plan is an
//! [`IotlbRequests`] of fixed capacity: no heap allocation on the unmap path.
//!
//! # Register accesses on the hot path
//!
//! Under emulation every register access is a VM exit, so a submission that completes normally
//! makes exactly one: the IQT write.
//!
//! - **Free space** is tracked, not read: a completed wait descriptor means the hardware fetched
//!   everything up to it (waits complete in order, §6.5.2.8), so after one the whole ring is
//!   free again. The queue keeps that lower bound of the hardware's head
//!   ([`InvalidationQueue`]'s `head`) and reads IQH only when a batch does not fit the space
//!   it proves free: after a timed-out wait (the software tail is then ahead of what the
//!   hardware fetched, and writing blindly could overwrite descriptors it has not fetched
//!   yet) or for a batch larger than what is known free. The batch then waits (with the same
//!   timeout) until it fits; one that never fits fails with [`InvalidationError::Timeout`]
//!   without writing anything.
//! - **Queue errors** (FSTS.IQE/ICE/ITE) stop the hardware before the wait descriptor, so a
//!   wait that completed saw none. FSTS is read only when the status word has not arrived
//!   after [`FAST_STATUS_POLLS`] polls (then once per that many polls) and once more before a
//!   timeout is reported, so an error is still detected and recovered from (the rest of the
//!   queue dropped, IQT = IQH, the error cleared) within the submission that met it.
//!
//! The queue and the status word are not written back from the CPU cache: ECAP.C covers
//! remapping-structure walks only; descriptor fetches and status writes are coherent (as Linux
//! relies on too).

use core::fmt;
use core::ops::Deref;

use dma::PhysAddr;
use pci_address::RequesterId;

use crate::caps::Capabilities;
use crate::platform::{Platform, TableMem, TABLE_PAGE_SIZE};
use crate::registers::{
    self, ccmd, iotlb, CacheDescLo, Ccmd, FaultStatus, IecDescLo, IotlbCmd, IotlbDescHi, Iqa, Iva,
    PasidDescLo, PasidIotlbDescHi, QueueIndex, RegisterIo, WaitDescHi, WaitDescLo,
};

/// Invalidation descriptor types and granularities, §6.5.2 (declared in [`registers`]).
pub use crate::registers::desc;

/// Most page-selective descriptors issued for one range: past it, one covering page-selective
/// request ([`psi_cover`]) or a domain-selective one.
pub const PSI_DESCRIPTOR_LIMIT: usize = 4;
/// Descriptors per queue page (128-bit descriptors, QS = 0).
pub const QUEUE_ENTRIES: usize = TABLE_PAGE_SIZE / DESCRIPTOR_SIZE;
const DESCRIPTOR_SIZE: usize = 16;
const WORDS_PER_DESCRIPTOR: usize = DESCRIPTOR_SIZE / core::mem::size_of::<u64>();
/// Requests per submission: the queue holds `QUEUE_ENTRIES - 1` descriptors (head == tail
/// means empty), one of which is the closing wait descriptor.
const BATCH: usize = QUEUE_ENTRIES - 2;
const PAGE_SHIFT: u32 = 12;
/// Polls of the wait descriptor's status word between two reads of FSTS (the first after that
/// many polls): a wait normally completes before the first poll (QEMU processes the queue in
/// the IQT write), so the fault status register is read only on the slow path.
pub const FAST_STATUS_POLLS: u32 = 256;
/// IQA.QS for a one-page (4 KiB) queue.
const QUEUE_SIZE_ONE_PAGE: u8 = 0;

/// The IQH/IQT value for descriptor `index` (below [`QUEUE_ENTRIES`], so it fits the field).
fn queue_index(index: usize) -> u64 {
    let index = u16::try_from(index % QUEUE_ENTRIES).unwrap_or(0);
    QueueIndex::new().with_index(index).into_bits()
}

/// One invalidation request, independent of how it is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Every context-cache entry.
    ContextGlobal,
    /// The context-cache entry of one source ID in one domain (function mask 0).
    ContextDevice {
        /// Domain ID the cached entry is tagged with (0 for not-present entries under CM).
        did: u16,
        /// Source (requester) ID.
        sid: RequesterId,
    },
    /// Every IOTLB and paging-structure cache entry.
    IotlbGlobal,
    /// Every IOTLB entry of one domain.
    IotlbDomain {
        /// Domain ID.
        did: u16,
    },
    /// 2^`am` pages at `addr` (aligned to 2^`am` pages) in one domain.
    IotlbPage {
        /// Domain ID.
        did: u16,
        /// First address (4 KiB units, aligned to 2^am pages).
        addr: u64,
        /// Address mask: log2 of the page count.
        am: u8,
        /// Only leaf entries changed (IH = 1): paging-structure caches may be kept.
        leaf_only: bool,
    },
    /// Every interrupt-entry-cache entry (§6.5.2.7, G = 0). Queued invalidation only.
    InterruptEntryGlobal,
    /// `2^mask` interrupt-entry-cache entries starting at `index` (aligned to `2^mask`;
    /// §6.5.2.7, G = 1). Queued invalidation only.
    InterruptEntries {
        /// First interrupt index (IIDX).
        index: u16,
        /// Index mask (IM, at most 16): log2 of the entry count.
        mask: u8,
    },
    /// Every PASID-cache entry (§6.5.2.2, type 7, granularity 11). Scalable mode, queued
    /// invalidation only.
    PasidCacheGlobal,
    /// The PASID-cache entries of domain `did`: all its PASIDs (`pasid: None`, granularity
    /// 00) or one (granularity 01). Scalable mode, queued invalidation only.
    PasidCache {
        /// Domain ID the cached PASID entries are tagged with.
        did: u16,
        /// One PASID, or every PASID of the domain.
        pasid: Option<u32>,
    },
    /// Every IOTLB entry of one PASID of domain `did` (§6.5.2.4, type 6, granularity 10).
    /// Scalable mode, queued invalidation only.
    PasidIotlb {
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// 2^`am` pages at `addr` of one PASID of domain `did` (type 6, granularity 11).
    PasidIotlbPage {
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
        /// First address (aligned to 2^am pages).
        addr: u64,
        /// Address mask: log2 of the page count.
        am: u8,
        /// Only leaf entries changed (IH = 1).
        leaf_only: bool,
    },
}

/// A 128-bit queued-invalidation descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl Descriptor {
    /// Encodes a request; `drain_reads`/`drain_writes` set IOTLB DR/DW (from CAP.DRD/DWD).
    pub fn encode(req: &Invalidation, drain_reads: bool, drain_writes: bool) -> Self {
        let context = |granularity| {
            CacheDescLo::new()
                .with_kind(desc::TYPE_CONTEXT)
                .with_granularity(granularity)
        };
        let iotlb = |granularity| {
            CacheDescLo::new()
                .with_kind(desc::TYPE_IOTLB)
                .with_granularity(granularity)
                .with_dr(drain_reads)
                .with_dw(drain_writes)
        };
        let iec = |index_selective: bool, index: u16, mask: u8| Self {
            lo: IecDescLo::new()
                .with_kind(desc::TYPE_IEC)
                .with_index_selective(index_selective)
                .with_im(mask)
                .with_iidx(index)
                .into_bits(),
            hi: 0,
        };
        let pasid_desc = |kind, granularity, did, pasid| {
            PasidDescLo::new()
                .with_kind(kind)
                .with_granularity(granularity)
                .with_did(did)
                .with_pasid(pasid)
                .into_bits()
        };
        let (lo, hi) = match *req {
            Invalidation::PasidCacheGlobal => {
                return Self {
                    lo: pasid_desc(desc::TYPE_PASID_CACHE, desc::PASID_CACHE_GLOBAL, 0, 0),
                    hi: 0,
                }
            }
            Invalidation::PasidCache { did, pasid } => {
                let (granularity, pasid) = match pasid {
                    Some(p) => (desc::PASID_CACHE_PASID, p),
                    None => (desc::PASID_CACHE_DOMAIN, 0),
                };
                return Self {
                    lo: pasid_desc(desc::TYPE_PASID_CACHE, granularity, did, pasid),
                    hi: 0,
                };
            }
            Invalidation::PasidIotlb { did, pasid } => {
                return Self {
                    lo: pasid_desc(desc::TYPE_PASID_IOTLB, desc::PASID_IOTLB_PASID, did, pasid),
                    hi: 0,
                }
            }
            Invalidation::PasidIotlbPage {
                did,
                pasid,
                addr,
                am,
                leaf_only,
            } => {
                return Self {
                    lo: pasid_desc(desc::TYPE_PASID_IOTLB, desc::PASID_IOTLB_PAGE, did, pasid),
                    hi: PasidIotlbDescHi::new()
                        .with_addr(addr)
                        .with_ih(leaf_only)
                        .with_am(am)
                        .into_bits(),
                }
            }
            Invalidation::InterruptEntryGlobal => return iec(false, 0, 0),
            Invalidation::InterruptEntries { index, mask } => return iec(true, index, mask),
            Invalidation::ContextGlobal => (context(desc::GLOBAL), 0),
            Invalidation::ContextDevice { did, sid } => (
                context(desc::DEVICE_OR_PAGE)
                    .with_did(did)
                    .with_sid(sid.get()),
                0,
            ),
            Invalidation::IotlbGlobal => (iotlb(desc::GLOBAL), 0),
            Invalidation::IotlbDomain { did } => (iotlb(desc::DOMAIN).with_did(did), 0),
            Invalidation::IotlbPage {
                did,
                addr,
                am,
                leaf_only,
            } => (
                iotlb(desc::DEVICE_OR_PAGE).with_did(did),
                IotlbDescHi::new()
                    .with_addr(addr)
                    .with_ih(leaf_only)
                    .with_am(am)
                    .into_bits(),
            ),
        };
        Self {
            lo: lo.into_bits(),
            hi,
        }
    }

    /// An invalidation-wait descriptor writing `data` to the 4-byte word at `status`.
    pub fn wait(status: PhysAddr, data: u32) -> Self {
        Self {
            lo: WaitDescLo::new()
                .with_kind(desc::TYPE_WAIT)
                .with_sw(true)
                .with_fence(true)
                .with_data(data)
                .into_bits(),
            hi: WaitDescHi::new().with_addr(status.as_u64()).into_bits(),
        }
    }

    /// The descriptor type (a `desc::TYPE_*` value).
    pub fn kind(&self) -> u8 {
        CacheDescLo::from_bits(self.lo).kind()
    }

    /// Decodes a context-cache, IOTLB, interrupt-entry-cache, PASID-cache or PASID-based IOTLB
    /// descriptor back into a request.
    pub fn decode(&self) -> Option<Invalidation> {
        use desc::*;
        if matches!(self.kind(), TYPE_PASID_CACHE | TYPE_PASID_IOTLB) {
            let p = PasidDescLo::from_bits(self.lo);
            let (did, pasid) = (p.did(), p.pasid());
            return match (p.kind(), p.granularity()) {
                (TYPE_PASID_CACHE, PASID_CACHE_GLOBAL) => Some(Invalidation::PasidCacheGlobal),
                (TYPE_PASID_CACHE, PASID_CACHE_DOMAIN) => {
                    Some(Invalidation::PasidCache { did, pasid: None })
                }
                (TYPE_PASID_CACHE, PASID_CACHE_PASID) => Some(Invalidation::PasidCache {
                    did,
                    pasid: Some(pasid),
                }),
                (TYPE_PASID_IOTLB, PASID_IOTLB_PASID) => {
                    Some(Invalidation::PasidIotlb { did, pasid })
                }
                (TYPE_PASID_IOTLB, PASID_IOTLB_PAGE) => {
                    let hi = PasidIotlbDescHi::from_bits(self.hi);
                    Some(Invalidation::PasidIotlbPage {
                        did,
                        pasid,
                        addr: hi.addr(),
                        am: hi.am(),
                        leaf_only: hi.ih(),
                    })
                }
                _ => None,
            };
        }
        if self.kind() == TYPE_IEC {
            let iec = IecDescLo::from_bits(self.lo);
            return Some(if iec.index_selective() {
                Invalidation::InterruptEntries {
                    index: iec.iidx(),
                    mask: iec.im(),
                }
            } else {
                Invalidation::InterruptEntryGlobal
            });
        }
        let lo = CacheDescLo::from_bits(self.lo);
        let did = lo.did();
        match (lo.kind(), lo.granularity()) {
            (TYPE_CONTEXT, GLOBAL) => Some(Invalidation::ContextGlobal),
            (TYPE_CONTEXT, DEVICE_OR_PAGE) => Some(Invalidation::ContextDevice {
                did,
                sid: RequesterId::new(lo.sid()),
            }),
            (TYPE_IOTLB, GLOBAL) => Some(Invalidation::IotlbGlobal),
            (TYPE_IOTLB, DOMAIN) => Some(Invalidation::IotlbDomain { did }),
            (TYPE_IOTLB, DEVICE_OR_PAGE) => {
                let hi = IotlbDescHi::from_bits(self.hi);
                Some(Invalidation::IotlbPage {
                    did,
                    addr: hi.addr(),
                    am: hi.am(),
                    leaf_only: hi.ih(),
                })
            }
            _ => None,
        }
    }
}

/// Why an invalidation did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationError {
    /// The hardware did not report completion within the timeout.
    Timeout {
        /// What was being waited for.
        what: &'static str,
    },
    /// The hardware reported an invalidation queue error (FSTS.IQE/ICE/ITE); the queue was
    /// resynchronised and the batch dropped.
    QueueError {
        /// FSTS when the error was seen.
        fsts: u32,
        /// IQH (byte offset of the descriptor that failed).
        head: u64,
    },
    /// The request needs a capability the unit lacks (e.g. page-selective without CAP.PSI).
    Unsupported,
    /// A register-based invalidation completed with its actual granularity (CCMD.CAIG or
    /// IOTLB.IAIG) = 00: the hardware did not perform it (§11.4.6.1, §11.4.8.1).
    NotPerformed {
        /// Which invalidation register reported it.
        what: &'static str,
    },
    /// No memory for the queue.
    OutOfMemory,
}

impl fmt::Display for InvalidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Timeout { what } => write!(f, "invalidation timed out waiting for {what}"),
            Self::QueueError { fsts, head } => {
                write!(
                    f,
                    "invalidation queue error (FSTS {fsts:#x}, IQH {head:#x})"
                )
            }
            Self::Unsupported => f.write_str("invalidation granularity not supported by the unit"),
            Self::NotPerformed { what } => {
                write!(
                    f,
                    "{what} invalidation not performed (actual granularity 00)"
                )
            }
            Self::OutOfMemory => f.write_str("out of memory for the invalidation queue"),
        }
    }
}

impl core::error::Error for InvalidationError {}

/// Splits `[start, start + size)` into naturally aligned power-of-two page chunks `(addr, am)`
/// with `am <= mamv`: the greedy decomposition, so `N` contiguous pages yield O(log N) chunks
/// (plus `N / 2^mamv` for ranges larger than the biggest chunk). Sub-page parts are rounded out.
pub fn psi_chunks(start: u64, size: u64, mamv: u8) -> impl Iterator<Item = (u64, u8)> {
    let first = start >> PAGE_SHIFT;
    let end = start
        .saturating_add(size)
        .saturating_add((1 << PAGE_SHIFT) - 1)
        >> PAGE_SHIFT;
    let mut page = first;
    core::iter::from_fn(move || {
        if page >= end || size == 0 {
            return None;
        }
        let remaining = end - page;
        let align = page.trailing_zeros().min(63);
        let fit = 63 - remaining.leading_zeros();
        let am = align.min(fit).min(mamv as u32);
        let chunk = (page << PAGE_SHIFT, am as u8);
        page += 1u64 << am;
        Some(chunk)
    })
}

/// The page-selective request `(addr, am)` covering `[start, start + size)` with one
/// descriptor: the smallest naturally aligned block of 2^AM pages containing every page the
/// range touches, or `None` when that needs AM > `mamv` (or the range is empty).
pub fn psi_cover(start: u64, size: u64, mamv: u8) -> Option<(u64, u8)> {
    if size == 0 {
        return None;
    }
    let first = start >> PAGE_SHIFT;
    let last = start.saturating_add(size - 1) >> PAGE_SHIFT;
    // The lowest AM at which both ends fall into the same aligned block.
    let am = u64::BITS - (first ^ last).leading_zeros();
    if am > u32::from(mamv) {
        return None;
    }
    let base = first >> am << am;
    Some((base << PAGE_SHIFT, am as u8))
}

/// A fixed-capacity list of IOTLB requests (at most [`PSI_DESCRIPTOR_LIMIT`]), as
/// [`iotlb_range`] plans them; dereferences to a slice of [`Invalidation`].
#[derive(Clone, Copy)]
pub struct IotlbRequests {
    items: [Invalidation; PSI_DESCRIPTOR_LIMIT],
    len: usize,
}

impl IotlbRequests {
    const fn new() -> Self {
        Self {
            items: [Invalidation::IotlbGlobal; PSI_DESCRIPTOR_LIMIT],
            len: 0,
        }
    }

    const fn one(req: Invalidation) -> Self {
        let mut list = Self::new();
        list.items[0] = req;
        list.len = 1;
        list
    }

    /// Appends `req`; `false` (nothing stored) when the list is full.
    fn push(&mut self, req: Invalidation) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = req;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The requests, in issue order.
    pub fn as_slice(&self) -> &[Invalidation] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

impl Deref for IotlbRequests {
    type Target = [Invalidation];

    fn deref(&self) -> &[Invalidation] {
        self.as_slice()
    }
}

impl fmt::Debug for IotlbRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl PartialEq for IotlbRequests {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IotlbRequests {}

/// The IOTLB requests that invalidate `[start, start + size)` of domain `did` (see the module
/// docs): the exact page-selective chunks when there are at most [`PSI_DESCRIPTOR_LIMIT`],
/// else one covering page-selective request ([`psi_cover`]), else (AM above CAP.MAMV, or no
/// CAP.PSI) one domain-selective request. An empty range needs none. `leaf_only` is false when
/// page-table pages were freed (IH = 0 also drops the paging-structure caches for the range).
pub fn iotlb_range(
    caps: &Capabilities,
    did: u16,
    start: u64,
    size: u64,
    leaf_only: bool,
) -> IotlbRequests {
    let domain = IotlbRequests::one(Invalidation::IotlbDomain { did });
    if size == 0 {
        return IotlbRequests::new();
    }
    if !caps.cap.psi {
        return domain;
    }
    let page = |(addr, am)| Invalidation::IotlbPage {
        did,
        addr,
        am,
        leaf_only,
    };
    let mut exact = IotlbRequests::new();
    if psi_chunks(start, size, caps.cap.mamv).all(|chunk| exact.push(page(chunk))) {
        return exact;
    }
    match psi_cover(start, size, caps.cap.mamv) {
        Some(cover) => IotlbRequests::one(page(cover)),
        None => domain,
    }
}

/// Free descriptor slots in a ring of [`QUEUE_ENTRIES`] with the hardware at `head` and
/// software at `tail`: one slot always stays empty (head == tail means empty).
const fn free_slots(head: usize, tail: usize) -> usize {
    (head + QUEUE_ENTRIES - tail - 1) % QUEUE_ENTRIES
}

fn poll<P: Platform + ?Sized>(
    platform: &P,
    timeout_us: u64,
    what: &'static str,
    mut done: impl FnMut() -> Result<bool, InvalidationError>,
) -> Result<(), InvalidationError> {
    let start = platform.now_us();
    loop {
        if done()? {
            return Ok(());
        }
        if platform.now_us().saturating_sub(start) > timeout_us {
            return Err(InvalidationError::Timeout { what });
        }
        core::hint::spin_loop();
    }
}

/// Cycles ([`Platform::cycles`]) spent in each phase of queued invalidation, summed over
/// batches (one batch: its descriptors and the closing wait).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseCycles {
    /// Finding free space and writing the descriptors into the ring.
    pub descriptor_write: u64,
    /// The fence and the IQT write (the doorbell; under emulation the hardware processes the
    /// queue inside it).
    pub submission: u64,
    /// Polling the wait descriptor's status word until it arrives (or the error/timeout).
    pub wait: u64,
    /// Batches timed.
    pub batches: u64,
}

/// The queued-invalidation ring and its status word.
#[derive(Debug)]
pub struct InvalidationQueue {
    queue: PhysAddr,
    status: PhysAddr,
    /// The next descriptor slot software writes (what IQT was last set to).
    tail: usize,
    /// A lower bound of the hardware's head: every descriptor before it was fetched (the slot
    /// after the last completed wait descriptor, or IQH when last read). Descriptors between
    /// it and `tail` may still be unfetched.
    head: usize,
    sequence: u32,
}

impl InvalidationQueue {
    /// Allocates the queue page and the status page.
    ///
    /// # Errors
    ///
    /// [`InvalidationError::OutOfMemory`] when either page cannot be allocated (nothing is
    /// kept).
    pub fn new<P: Platform + ?Sized>(platform: &P) -> Result<Self, InvalidationError> {
        let queue = platform
            .alloc_table_page()
            .ok_or(InvalidationError::OutOfMemory)?;
        let Some(status) = platform.alloc_table_page() else {
            // SAFETY: allocated just now and never handed to hardware.
            unsafe { platform.free_table_page(queue.phys) };
            return Err(InvalidationError::OutOfMemory);
        };
        Ok(Self {
            queue: queue.phys,
            status: status.phys,
            tail: 0,
            head: 0,
            sequence: 0,
        })
    }

    /// The IQA value: queue base, 128-bit descriptors, one page.
    pub fn iqa(&self) -> u64 {
        Iqa::new()
            .with_base(self.queue.as_u64())
            .with_dw_256(false)
            .with_qs(QUEUE_SIZE_ONE_PAGE)
            .into_bits()
    }

    /// The queue page.
    pub fn queue_page(&self) -> PhysAddr {
        self.queue
    }

    /// Resets the software tail and the tracked head (IQT is written 0 before QIE is set,
    /// which resets IQH).
    pub fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
    }

    fn mem<'p, P: Platform + ?Sized>(&self, platform: &'p P, phys: PhysAddr) -> TableMem<'p, P> {
        // SAFETY: the queue and status pages are ours until `destroy`; the unit's invalidation
        // lock serialises writers. Descriptor fetches are coherent: no write-back needed.
        unsafe { TableMem::new(platform, phys, true) }
    }

    fn read_status<P: Platform + ?Sized>(&self, platform: &P) -> u32 {
        let word = platform.phys_to_virt(self.status).cast::<u32>();
        // SAFETY: the status page is ours and 4 KiB long; the hardware writes it concurrently,
        // hence the volatile read.
        unsafe { word.read_volatile() }
    }

    /// Submits `requests` followed by a wait descriptor and waits for its status write.
    ///
    /// # Errors
    ///
    /// [`InvalidationError::Timeout`] when a wait descriptor's status write does not arrive in
    /// `timeout_us`; [`InvalidationError::QueueError`] when the hardware flags FSTS.IQE/ICE/ITE
    /// (the rest of the queue is dropped and the error cleared, so the queue can be used again).
    pub fn submit<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        caps: &Capabilities,
        requests: &[Invalidation],
        timeout_us: u64,
    ) -> Result<(), InvalidationError> {
        self.submit_timed(regs, platform, caps, requests, timeout_us, None)
    }

    /// [`InvalidationQueue::submit`], adding the cycles ([`Platform::cycles`]) each phase took
    /// to `phases` when given.
    ///
    /// # Errors
    ///
    /// As [`InvalidationQueue::submit`].
    pub fn submit_timed<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        caps: &Capabilities,
        requests: &[Invalidation],
        timeout_us: u64,
        mut phases: Option<&mut PhaseCycles>,
    ) -> Result<(), InvalidationError> {
        let mut batches = requests.chunks(BATCH);
        let first: &[Invalidation] = &[];
        // An empty request list still issues a wait (a pure "drain" of earlier work).
        let mut next = if requests.is_empty() {
            Some(first)
        } else {
            batches.next()
        };
        while let Some(batch) = next {
            self.submit_batch(
                regs,
                platform,
                caps,
                batch,
                timeout_us,
                phases.as_deref_mut(),
            )?;
            next = batches.next();
        }
        Ok(())
    }

    fn submit_batch<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        caps: &Capabilities,
        batch: &[Invalidation],
        timeout_us: u64,
        phases: Option<&mut PhaseCycles>,
    ) -> Result<(), InvalidationError> {
        let start = if phases.is_some() {
            platform.cycles()
        } else {
            0
        };
        // Never overwrite descriptors the hardware has not fetched yet. The tracked head proves
        // the space free without a register read unless a wait timed out since (the tail is
        // then ahead of what is known fetched) or the batch is larger than that space.
        let needed = batch.len() + 1;
        if free_slots(self.head, self.tail) < needed {
            poll(
                platform,
                timeout_us,
                "free invalidation queue slots",
                || {
                    self.check_queue_error(regs)?;
                    self.head = Self::head_index(regs);
                    Ok(free_slots(self.head, self.tail) >= needed)
                },
            )?;
        }
        let queue = self.mem(platform, self.queue);
        let push = |tail: &mut usize, d: Descriptor| {
            let word = *tail * WORDS_PER_DESCRIPTOR;
            queue.write(word, d.lo);
            queue.write(word + 1, d.hi);
            *tail = (*tail + 1) % QUEUE_ENTRIES;
        };
        let mut tail = self.tail;
        for req in batch {
            push(
                &mut tail,
                Descriptor::encode(req, caps.cap.drd, caps.cap.dwd),
            );
        }
        self.sequence = self.sequence.wrapping_add(1).max(1);
        let seq = self.sequence;
        push(&mut tail, Descriptor::wait(self.status, seq));
        self.tail = tail;
        let Some(phases) = phases else {
            platform.memory_fence();
            regs.write64(registers::IQT, queue_index(tail));
            return self.wait(regs, platform, seq, timeout_us);
        };
        let written = platform.cycles();
        platform.memory_fence();
        regs.write64(registers::IQT, queue_index(tail));
        let submitted = platform.cycles();
        let result = self.wait(regs, platform, seq, timeout_us);
        let done = platform.cycles();
        phases.descriptor_write += written.saturating_sub(start);
        phases.submission += submitted.saturating_sub(written);
        phases.wait += done.saturating_sub(submitted);
        phases.batches += 1;
        result
    }

    /// Waits for the status write of the wait descriptor `seq` (the last one submitted), reading
    /// FSTS only on the slow path (see the module docs). On completion the whole ring is known
    /// fetched.
    fn wait<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        seq: u32,
        timeout_us: u64,
    ) -> Result<(), InvalidationError> {
        let mut start = None;
        let mut polls: u32 = 0;
        loop {
            if self.read_status(platform) == seq {
                // Waits complete in order, after everything before them was fetched.
                self.head = self.tail;
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(FAST_STATUS_POLLS) {
                self.check_queue_error(regs)?;
            }
            let now = platform.now_us();
            let since = *start.get_or_insert(now);
            if now.saturating_sub(since) > timeout_us {
                // An error that stopped the queue is reported as such, not as a timeout.
                self.check_queue_error(regs)?;
                return Err(InvalidationError::Timeout {
                    what: "the invalidation wait descriptor",
                });
            }
            core::hint::spin_loop();
        }
    }

    /// The descriptor index in IQH (the next descriptor the hardware will fetch).
    fn head_index<R: RegisterIo + ?Sized>(regs: &R) -> usize {
        let head = regs.read64(registers::IQH);
        usize::from(QueueIndex::from_bits(head).index()) % QUEUE_ENTRIES
    }

    /// Reports (and recovers from) an invalidation queue error: what is left of the queue is
    /// dropped (IQT = IQH), then the error is cleared so the hardware resumes.
    fn check_queue_error<R: RegisterIo + ?Sized>(
        &mut self,
        regs: &R,
    ) -> Result<(), InvalidationError> {
        let errors = FaultStatus::IQE | FaultStatus::ICE | FaultStatus::ITE;
        let fsts = regs.read32(registers::FSTS);
        if fsts & errors.bits() == 0 {
            return Ok(());
        }
        let head = regs.read64(registers::IQH);
        let index = usize::from(QueueIndex::from_bits(head).index()) % QUEUE_ENTRIES;
        regs.write64(registers::IQT, queue_index(index));
        self.tail = index;
        self.head = index;
        regs.write32(registers::FSTS, fsts & errors.bits());
        Err(InvalidationError::QueueError { fsts, head })
    }

    /// Frees the queue and status pages.
    ///
    /// # Safety
    ///
    /// Queued invalidation must be disabled (GSTS.QIES clear).
    pub unsafe fn destroy<P: Platform + ?Sized>(self, platform: &P) {
        // SAFETY: ours; the caller guarantees the hardware no longer uses them.
        unsafe {
            platform.free_table_page(self.queue);
            platform.free_table_page(self.status);
        }
    }
}

/// Issues one request through the CCMD / IOTLB registers and polls for completion. Only valid
/// while queued invalidation is off.
///
/// # Errors
///
/// [`InvalidationError::Unsupported`] for a page-selective request without CAP.PSI;
/// [`InvalidationError::Timeout`] when CCMD.ICC / IOTLB.IVT does not clear in `timeout_us`;
/// [`InvalidationError::NotPerformed`] when the hardware reports actual granularity 00.
pub fn register_invalidate<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
    regs: &R,
    platform: &P,
    caps: &Capabilities,
    req: &Invalidation,
    timeout_us: u64,
) -> Result<(), InvalidationError> {
    let context = |granularity: u8, sid: u16, did: u16| {
        let value = Ccmd::new()
            .with_icc(true)
            .with_cirg(granularity)
            .with_sid(sid)
            .with_did(did);
        regs.write64(registers::CCMD, value.into_bits());
        let mut done = Ccmd::new();
        poll(platform, timeout_us, "CCMD.ICC to clear", || {
            done = Ccmd::from_bits(regs.read64(registers::CCMD));
            Ok(!done.icc())
        })?;
        // CAIG = 00: the request was not performed (any other value is at least as wide as
        // what was asked, which is fine).
        if done.caig() == 0 {
            return Err(InvalidationError::NotPerformed {
                what: "context-cache (CCMD.CAIG = 00)",
            });
        }
        Ok(())
    };
    let tlb = |granularity: u8, did: u16| {
        let offset = caps.ecap.iotlb_offset();
        let value = IotlbCmd::new()
            .with_ivt(true)
            .with_iirg(granularity)
            .with_dr(caps.cap.drd)
            .with_dw(caps.cap.dwd)
            .with_did(did);
        regs.write64(offset, value.into_bits());
        let mut done = IotlbCmd::new();
        poll(platform, timeout_us, "IOTLB.IVT to clear", || {
            done = IotlbCmd::from_bits(regs.read64(offset));
            Ok(!done.ivt())
        })?;
        if done.iaig() == 0 {
            return Err(InvalidationError::NotPerformed {
                what: "IOTLB (IOTLB_REG.IAIG = 00)",
            });
        }
        Ok(())
    };
    match *req {
        // The interrupt entry cache has no register-based invalidation (§6.5.2.7): interrupt
        // remapping requires queued invalidation.
        // Nor have the scalable-mode PASID caches (§6.5.2.2, §6.5.2.4).
        Invalidation::InterruptEntryGlobal
        | Invalidation::InterruptEntries { .. }
        | Invalidation::PasidCacheGlobal
        | Invalidation::PasidCache { .. }
        | Invalidation::PasidIotlb { .. }
        | Invalidation::PasidIotlbPage { .. } => Err(InvalidationError::Unsupported),
        Invalidation::ContextGlobal => context(ccmd::GRANULARITY_GLOBAL, 0, 0),
        Invalidation::ContextDevice { did, sid } => {
            context(ccmd::GRANULARITY_DEVICE, sid.get(), did)
        }
        Invalidation::IotlbGlobal => tlb(iotlb::GRANULARITY_GLOBAL, 0),
        Invalidation::IotlbDomain { did } => tlb(iotlb::GRANULARITY_DOMAIN, did),
        Invalidation::IotlbPage {
            did,
            addr,
            am,
            leaf_only,
        } => {
            if !caps.cap.psi {
                return Err(InvalidationError::Unsupported);
            }
            let iva = Iva::new().with_addr(addr).with_ih(leaf_only).with_am(am);
            regs.write64(caps.ecap.iva_offset(), iva.into_bits());
            tlb(iotlb::GRANULARITY_PAGE, did)
        }
    }
}

/// How invalidations are issued: a unit is in exactly one mode at a time.
#[derive(Debug)]
pub enum Invalidator {
    /// Through CCMD / IOTLB registers (queued invalidation off).
    Registers,
    /// Through the invalidation queue (GCMD.QIE set); the registers are never touched.
    Queued(InvalidationQueue),
}

impl Invalidator {
    /// Issues `requests` and returns once the hardware completed all of them.
    ///
    /// # Errors
    ///
    /// Those of [`register_invalidate`] (the first failing request stops the rest) or
    /// [`InvalidationQueue::submit`].
    pub fn run<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        caps: &Capabilities,
        requests: &[Invalidation],
        timeout_us: u64,
    ) -> Result<(), InvalidationError> {
        self.run_timed(regs, platform, caps, requests, timeout_us, None)
    }

    /// [`Invalidator::run`], adding the cycles of each queued-invalidation phase to `phases`
    /// when given ([`InvalidationQueue::submit_timed`]; register-based invalidation has no
    /// such phases and adds nothing).
    ///
    /// # Errors
    ///
    /// As [`Invalidator::run`].
    pub fn run_timed<R: RegisterIo + ?Sized, P: Platform + ?Sized>(
        &mut self,
        regs: &R,
        platform: &P,
        caps: &Capabilities,
        requests: &[Invalidation],
        timeout_us: u64,
        phases: Option<&mut PhaseCycles>,
    ) -> Result<(), InvalidationError> {
        match self {
            Self::Registers => {
                for req in requests {
                    register_invalidate(regs, platform, caps, req, timeout_us)?;
                }
                Ok(())
            }
            Self::Queued(queue) => {
                queue.submit_timed(regs, platform, caps, requests, timeout_us, phases)
            }
        }
    }
}

#[cfg(test)]
mod tests;
