//! Running an NVMe controller: enable and disable with the CAP.TO timeout (NVM Express 1.4
//! §7.6.1, §7.6.2), the admin queue and I/O queue pairs in coherent DMA memory, Identify
//! (§5.15), and Read / Write / Flush with PRPs built from DMA segments (§4.3), with many
//! commands in flight, completion by polling (phase tags, §4.6), typed status, and command
//! timeouts handled by Abort (§5.1) and then a controller reset.
//!
//! Written only against the public `dma` crate: every buffer the controller touches (queues,
//! identify pages, PRP lists, data) is a [`dma::CoherentBuffer`] or a [`dma::Mapping`] of the
//! caller's memory, so under an IOMMU the controller reaches exactly those and nothing else.
//! A data mapping lives until its command's completion has been seen (or the controller was
//! reset), never shorter.
//!
//! # Ordering
//!
//! A submission entry is written to queue memory, then a full fence, then the tail doorbell. A
//! completion is consumed by reading its dword 3 (phase tag) first and the rest only once the
//! phase says it is new, with a fence between the two reads.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{fence, Ordering};

use dma::{Attrs, Clock, CoherentBuffer, Direction, DmaDevice, DmaError, Mapping, PhysAddr};

use crate::command::{cns, Command, Completion, CQE_SIZE, SQE_SIZE};
use crate::io::{offset, Aqa, Cc, Registers, SHST_COMPLETE};
use crate::prp::{self, PrpError, PrpListMemory, Prps, Segment};
use crate::queue::{check_size, CommandIds, CompletionRing, QueueError, SubmissionRing};
use crate::registers::{Capabilities, ControllerStatus};
use crate::status::CommandError;

/// Memory page size this driver programs (CC.MPS = 0).
pub const PAGE_SIZE: u64 = 4096;
/// Most commands in flight per queue (command identifiers are tracked in a 256-bit map).
pub const MAX_IN_FLIGHT: u16 = 256;
const ID_WORDS: usize = MAX_IN_FLIGHT as usize / 64;
/// Admin queue entries.
const ADMIN_QUEUE_SIZE: u16 = 32;
/// Queue ID of the admin queue pair.
const ADMIN: u16 = 0;

/// Why a controller operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerError {
    /// CSTS.RDY did not follow CC.EN within CAP.TO (or shutdown did not complete).
    NotReady {
        /// What was waited for.
        what: &'static str,
    },
    /// CSTS.CFS: the controller reported a fatal error.
    Fatal,
    /// CSTS reads all-ones: the controller is gone (surprise removal, decode off).
    Gone,
    /// The controller needs something this driver does not offer.
    Unsupported(&'static str),
    /// A command completed with an error status.
    Command(CommandError),
    /// A command did not complete within the timeout; it was aborted or the controller reset.
    Timeout {
        /// Opcode of the command.
        opcode: u8,
        /// Whether the controller had to be reset to get rid of it.
        reset: bool,
    },
    /// The controller was reset while the command was in flight (it never completed).
    Reset,
    /// Queue bookkeeping refused the operation (full queue, controller reported nonsense).
    Queue(QueueError),
    /// The buffer cannot be described with PRPs.
    Prp(PrpError),
    /// Mapping or allocating DMA memory failed.
    Dma(DmaError),
    /// No namespace, or a namespace with an unusable format.
    NoNamespace,
    /// Blocks outside the namespace.
    OutOfRange {
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u64,
        /// Blocks in the namespace.
        capacity: u64,
    },
    /// A buffer whose length is not `blocks × block size`.
    BadLength {
        /// Bytes given.
        len: u64,
        /// Bytes the blocks need.
        expected: u64,
    },
    /// A transfer larger than the controller's MDTS (or this driver's per-command limit).
    TooLarge {
        /// Bytes asked.
        bytes: u64,
        /// Most bytes per command.
        max: u64,
    },
    /// A queue index that does not exist.
    NoQueue(usize),
    /// A ticket that names no command in flight.
    BadTicket,
}

impl fmt::Display for ControllerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotReady { what } => write!(f, "NVMe controller timed out waiting for {what}"),
            Self::Fatal => f.write_str("NVMe controller fatal status (CSTS.CFS)"),
            Self::Gone => f.write_str("NVMe controller registers read all-ones"),
            Self::Unsupported(what) => write!(f, "NVMe controller unsupported: {what}"),
            Self::Command(e) => write!(f, "NVMe command failed: {e}"),
            Self::Timeout { opcode, reset } => write!(
                f,
                "NVMe command {opcode:#04x} timed out ({})",
                if reset { "controller reset" } else { "aborted" }
            ),
            Self::Reset => f.write_str("NVMe controller reset while the command was in flight"),
            Self::Queue(e) => write!(f, "NVMe queue: {e}"),
            Self::Prp(e) => write!(f, "NVMe PRP: {e}"),
            Self::Dma(e) => write!(f, "NVMe DMA: {e}"),
            Self::NoNamespace => f.write_str("NVMe namespace missing or unusable"),
            Self::OutOfRange {
                lba,
                blocks,
                capacity,
            } => write!(
                f,
                "blocks {lba}..{} outside the namespace's {capacity}",
                lba.saturating_add(blocks)
            ),
            Self::BadLength { len, expected } => {
                write!(f, "buffer of {len} bytes, the blocks need {expected}")
            }
            Self::TooLarge { bytes, max } => {
                write!(f, "transfer of {bytes} bytes, at most {max} per command")
            }
            Self::NoQueue(q) => write!(f, "no I/O queue {q}"),
            Self::BadTicket => f.write_str("no such command in flight"),
        }
    }
}

impl core::error::Error for ControllerError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Command(e) => Some(e),
            Self::Queue(e) => Some(e),
            Self::Prp(e) => Some(e),
            Self::Dma(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DmaError> for ControllerError {
    fn from(e: DmaError) -> Self {
        Self::Dma(e)
    }
}
impl From<QueueError> for ControllerError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}
impl From<PrpError> for ControllerError {
    fn from(e: PrpError) -> Self {
        Self::Prp(e)
    }
}

/// How to run the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// I/O queue pairs to create (at least 1; fewer if the controller grants fewer).
    pub io_queues: u16,
    /// Entries per I/O queue (capped by CAP.MQES + 1 and by [`MAX_IN_FLIGHT`] + 1).
    pub io_queue_size: u16,
    /// A command not completed after this many microseconds is aborted.
    pub command_timeout_us: u64,
    /// Namespace to do I/O on.
    pub nsid: u32,
    /// Unmap the data buffers of all the completions one poll finds as one batch, with one
    /// IOTLB flush ([`dma::UnmapBatch`]); otherwise each completion's mapping is unmapped on
    /// its own. Either way a command's result is reported only after its buffer was unmapped.
    pub batch_unmaps: bool,
    /// Create each I/O completion queue with interrupts enabled on MSI-X table entry `qid`
    /// (I/O queue `q` is `qid = q + 1`; the admin queue always signals entry 0 once MSI-X is
    /// on). The caller programs and enables MSI-X (this crate never writes MSI addresses);
    /// with this off the queues are created with interrupts disabled and only polled.
    pub interrupts: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            io_queues: 1,
            io_queue_size: 64,
            command_timeout_us: 5_000_000,
            nsid: 1,
            batch_unmaps: false,
            interrupts: false,
        }
    }
}

/// What Identify Controller and Identify Namespace said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// PCI vendor ID (VID).
    pub vendor_id: u16,
    /// Serial number (SN), trimmed.
    pub serial: heapless_str::Str<20>,
    /// Model number (MN), trimmed.
    pub model: heapless_str::Str<40>,
    /// Firmware revision (FR), trimmed.
    pub firmware: heapless_str::Str<8>,
    /// Maximum data transfer size in bytes (`None`: no limit reported).
    pub max_transfer: Option<u64>,
    /// Number of namespaces (NN).
    pub namespaces: u32,
    /// The namespace used for I/O.
    pub namespace: Namespace,
}

/// Small fixed-capacity strings for identify fields (ASCII, space padded on the wire).
pub mod heapless_str {
    use core::fmt;

    /// Up to `N` ASCII bytes.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct Str<const N: usize> {
        bytes: [u8; N],
        len: usize,
    }

    impl<const N: usize> Str<N> {
        /// From an identify field: trailing spaces and NULs dropped, non-printable bytes as '?'.
        pub fn from_field(field: &[u8]) -> Self {
            let mut bytes = [0; N];
            let mut len = field.len().min(N);
            while len > 0 && matches!(field[len - 1], b' ' | 0) {
                len -= 1;
            }
            for (dst, &b) in bytes.iter_mut().zip(&field[..len]) {
                *dst = if b.is_ascii_graphic() || b == b' ' {
                    b
                } else {
                    b'?'
                };
            }
            Self { bytes, len }
        }

        /// The text.
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
        }
    }

    impl<const N: usize> fmt::Debug for Str<N> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(self.as_str(), f)
        }
    }

    impl<const N: usize> fmt::Display for Str<N> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.as_str())
        }
    }
}

/// A namespace's size and format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub block_size: u64,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
}

/// Where a command's data is.
#[derive(Debug, Clone, Copy)]
pub enum Buffer<'a> {
    /// One physically contiguous buffer; the driver maps it for the device.
    Phys(PhysAddr),
    /// A scatter list of physical ranges; the driver maps it for the device (`map_sg`).
    PhysList(&'a [(PhysAddr, u64)]),
    /// Device addresses the caller has already made valid for this controller; the caller
    /// keeps them valid until the command completes.
    Dma(&'a [Segment]),
    /// `len` bytes at `offset` of a peer-to-peer mapping of another device's memory (an export
    /// handle's attachment): a stale mapping (its export was revoked) is refused with
    /// [`DmaError::Revoked`]; the caller keeps the mapping alive until the command completes (a
    /// revoke meanwhile tears the translation down, so the transfer faults instead of landing).
    Peer {
        /// The mapping.
        mapping: &'a dma::P2pMapping,
        /// Byte offset of the transfer in the mapping.
        offset: u64,
    },
}

/// The part `[offset, offset + len)` of `segments`, or `None` when it is not inside them.
fn slice_segments(segments: &[dma::DmaSegment], offset: u64, len: u64) -> Option<Vec<Segment>> {
    let end = offset.checked_add(len)?;
    let mut out = Vec::new();
    let mut at = 0u64;
    for s in segments {
        let (lo, hi) = (at, at + s.len);
        if hi > offset && lo < end {
            let from = offset.max(lo);
            let to = end.min(hi);
            out.push(Segment::new(s.addr.as_u64() + (from - lo), to - from));
        }
        at = hi;
    }
    (at >= end && len > 0).then_some(out)
}

/// A command in flight: which queue, which command identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    queue: u16,
    cid: u16,
    generation: u32,
}

enum DataMapping {
    None,
    Single(Mapping),
    List(dma::SgMapping),
}

enum Slot {
    Free,
    InFlight {
        opcode: u8,
        /// Dropped when the command is over (the controller can no longer use the buffer).
        #[allow(dead_code)]
        data: DataMapping,
        aborted: bool,
    },
    Done(Result<Completion, ControllerError>),
}

/// One submission/completion queue pair and what is in flight on it.
struct QueuePair {
    id: u16,
    sq: SubmissionRing,
    cq: CompletionRing,
    sq_mem: CoherentBuffer,
    cq_mem: CoherentBuffer,
    /// One PRP list page per command identifier.
    prp_lists: CoherentBuffer,
    ids: CommandIds<ID_WORDS>,
    slots: Vec<Slot>,
    /// Submissions write entries without ringing the doorbell ([`Controller::plug`]).
    plugged: bool,
    /// Entries written since the last doorbell write.
    unrung: bool,
}

/// The PRP list page of one command identifier.
struct ListPage<'a> {
    buf: &'a CoherentBuffer,
    cid: u16,
    error: Option<DmaError>,
}

impl PrpListMemory for ListPage<'_> {
    fn pages(&self) -> usize {
        1
    }
    fn page_addr(&self, _page: usize) -> u64 {
        self.buf.dma_addr().as_u64() + u64::from(self.cid) * PAGE_SIZE
    }
    fn write(&mut self, _page: usize, index: usize, value: u64) {
        let at = u64::from(self.cid) * PAGE_SIZE + index as u64 * 8;
        if let Err(e) = self.buf.write(at, &value.to_le_bytes()) {
            self.error.get_or_insert(e);
        }
    }
}

impl QueuePair {
    fn new(dev: &DmaDevice, id: u16, size: u16, in_flight: u16) -> Result<Self, ControllerError> {
        let sq_mem = dev.alloc_coherent(u64::from(size) * SQE_SIZE as u64)?;
        let cq_mem = dev.alloc_coherent(u64::from(size) * CQE_SIZE as u64)?;
        let prp_lists = dev.alloc_coherent(u64::from(in_flight) * PAGE_SIZE)?;
        let mut slots = Vec::new();
        slots.resize_with(usize::from(in_flight), || Slot::Free);
        Ok(Self {
            id,
            sq: SubmissionRing::new(size),
            cq: CompletionRing::new(size),
            sq_mem,
            cq_mem,
            prp_lists,
            ids: CommandIds::new(in_flight),
            slots,
            plugged: false,
            unrung: false,
        })
    }

    /// Forgets the rings (the controller was disabled) and zeroes the completion ring.
    fn reset_rings(&mut self) -> Result<(), ControllerError> {
        self.unrung = false;
        self.sq.reset();
        self.cq.reset();
        let zero = [0u8; CQE_SIZE];
        for i in 0..u64::from(self.sq.size()) {
            self.cq_mem.write(i * CQE_SIZE as u64, &zero)?;
        }
        Ok(())
    }
}

/// A running controller bound to its registers and its DMA handle.
pub struct Controller<R: Registers> {
    regs: R,
    dev: DmaDevice,
    clock: Arc<dyn Clock>,
    config: Config,
    caps: Capabilities,
    queues: Vec<QueuePair>,
    info: Option<Info>,
    /// Bumped on every reset, so tickets from before a reset are recognised.
    generation: u32,
    resets: u64,
    /// The command whose timeout caused the last reset (queue, cid, generation, opcode).
    reset_cause: Option<(u16, u16, u32, u8)>,
    /// Inside a reset's bring-up: an admin timeout fails instead of resetting again.
    resetting: bool,
}

impl<R: Registers> fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("info", &self.info)
            .field("queues", &self.queues.len())
            .field("resets", &self.resets)
            .finish()
    }
}

impl<R: Registers> Drop for Controller<R> {
    /// Disables the controller before its queue memory and mappings go: a controller left
    /// enabled could still write completions into pages that are about to be reused.
    fn drop(&mut self) {
        if self.disable().is_err() {
            // The controller did not stop: it may still write into its queues and into the
            // buffers of commands in flight. Leak them rather than hand that memory back.
            core::mem::forget(core::mem::take(&mut self.queues));
        }
    }
}

/// Doorbell offset of submission queue `qid`'s tail (`cq` false) or completion queue head.
fn doorbell(caps: &Capabilities, qid: u16, cq: bool) -> usize {
    let stride = caps.doorbell_stride() as usize;
    offset::DOORBELLS + (2 * usize::from(qid) + usize::from(cq)) * stride
}

impl<R: Registers> Controller<R> {
    /// Resets and enables the controller, creates the admin queue and `config.io_queues` I/O
    /// queue pairs, and reads Identify Controller and Identify Namespace `config.nsid`.
    ///
    /// # Errors
    ///
    /// [`ControllerError`]: a controller that never becomes ready, a fatal status, memory or
    /// mapping failures, an admin command that fails, a namespace with an unusable format.
    /// The controller is left disabled on an error.
    pub fn new(
        regs: R,
        dev: DmaDevice,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Result<Self, ControllerError> {
        let caps = Capabilities {
            raw: regs.read64(offset::CAP),
        };
        if caps.raw == u64::MAX {
            return Err(ControllerError::Gone);
        }
        if caps.min_page_size() > PAGE_SIZE {
            return Err(ControllerError::Unsupported("CAP.MPSMIN above 4 KiB"));
        }
        if caps.command_sets() & 1 == 0 {
            return Err(ControllerError::Unsupported("no NVM command set (CAP.CSS)"));
        }
        let admin = QueuePair::new(
            &dev,
            ADMIN,
            check_size(u32::from(ADMIN_QUEUE_SIZE), caps.max_queue_entries())?,
            ADMIN_QUEUE_SIZE - 1,
        )?;
        let mut c = Self {
            regs,
            dev,
            clock,
            config,
            caps,
            queues: alloc::vec![admin],
            info: None,
            generation: 0,
            resets: 0,
            reset_cause: None,
            resetting: false,
        };
        if let Err(e) = c.bring_up(true) {
            let _ = c.disable();
            return Err(e);
        }
        Ok(c)
    }

    /// Disable, admin queue, enable, identify (first time), I/O queues.
    fn bring_up(&mut self, first: bool) -> Result<(), ControllerError> {
        self.disable()?;
        let admin = &mut self.queues[0];
        admin.reset_rings()?;
        let size = admin.sq.size() - 1;
        self.regs.write32(
            offset::AQA,
            Aqa::new().with_asqs(size).with_acqs(size).into_bits(),
        );
        self.regs
            .write64(offset::ASQ, admin.sq_mem.dma_addr().as_u64());
        self.regs
            .write64(offset::ACQ, admin.cq_mem.dma_addr().as_u64());
        let cc = Cc::new()
            .with_css(0)
            .with_mps(0)
            .with_ams(0)
            .with_iosqes(6)
            .with_iocqes(4);
        self.regs.write32(offset::CC, cc.into_bits());
        fence(Ordering::SeqCst);
        self.regs.write32(offset::CC, cc.with_en(true).into_bits());
        self.wait_status("CSTS.RDY = 1", |s| s.ready())?;
        if first {
            self.identify()?;
        }
        self.create_io_queues(first)
    }

    fn status(&self) -> Result<ControllerStatus, ControllerError> {
        let s = ControllerStatus {
            raw: self.regs.read32(offset::CSTS),
        };
        if s.raw == u32::MAX {
            return Err(ControllerError::Gone);
        }
        Ok(s)
    }

    fn wait_status(
        &self,
        what: &'static str,
        done: impl Fn(ControllerStatus) -> bool,
    ) -> Result<(), ControllerError> {
        // CAP.TO is the worst case for RDY to follow EN; at least 500 ms.
        let timeout_us = u64::from(self.caps.timeout_ms().max(500)) * 1000;
        let start = self.clock.now_us();
        loop {
            let s = self.status()?;
            if done(s) {
                return Ok(());
            }
            if s.fatal() && what != "CSTS.RDY = 0" {
                return Err(ControllerError::Fatal);
            }
            if self.clock.now_us().saturating_sub(start) > timeout_us {
                return Err(ControllerError::NotReady { what });
            }
            core::hint::spin_loop();
        }
    }

    /// Clears CC.EN and waits for CSTS.RDY = 0 (this deletes every I/O queue, §7.6.2). Commands
    /// in flight are completed with [`ControllerError::Reset`] and their mappings dropped.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NotReady`] when RDY does not clear within CAP.TO,
    /// [`ControllerError::Gone`].
    pub fn disable(&mut self) -> Result<(), ControllerError> {
        let cc = Cc::from_bits(self.regs.read32(offset::CC));
        if cc.en() {
            self.regs.write32(offset::CC, cc.with_en(false).into_bits());
        }
        let r = self.wait_status("CSTS.RDY = 0", |s| !s.ready());
        // Once RDY is clear the controller has stopped processing: nothing in flight can still
        // move data, so the mappings may go.
        if r.is_ok() {
            for q in &mut self.queues {
                for slot in q.slots.iter_mut() {
                    if matches!(slot, Slot::InFlight { .. }) {
                        *slot = Slot::Done(Err(ControllerError::Reset));
                    }
                }
            }
        }
        r
    }

    /// Normal shutdown (CC.SHN = 01b, wait for CSTS.SHST = 10b), then disable.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NotReady`] when shutdown or disable does not complete in time.
    pub fn shutdown(&mut self) -> Result<(), ControllerError> {
        let cc = Cc::from_bits(self.regs.read32(offset::CC));
        self.regs.write32(offset::CC, cc.with_shn(0b01).into_bits());
        let r = self.wait_status("CSTS.SHST = complete", |s| {
            s.shutdown_status() == SHST_COMPLETE
        });
        let d = self.disable();
        r.and(d)
    }

    /// Capabilities (CAP).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Identify data (read once at [`Controller::new`]).
    pub fn info(&self) -> Option<&Info> {
        self.info.as_ref()
    }

    /// The I/O namespace.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NoNamespace`] before identify completed.
    pub fn namespace(&self) -> Result<Namespace, ControllerError> {
        self.info
            .as_ref()
            .map(|i| i.namespace)
            .ok_or(ControllerError::NoNamespace)
    }

    /// I/O queue pairs running.
    pub fn io_queues(&self) -> usize {
        self.queues.len() - 1
    }

    /// Controller resets done (timeouts that abort could not resolve).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Most bytes one command may transfer: MDTS, and what one PRP list page describes.
    pub fn max_transfer(&self) -> u64 {
        let list_limit = (PAGE_SIZE / 8) * PAGE_SIZE;
        self.info
            .as_ref()
            .and_then(|i| i.max_transfer)
            .map_or(list_limit, |m| m.min(list_limit))
    }

    /// The index in `queues` of I/O queue `queue` (the admin queue is index 0).
    fn io_index(&self, queue: usize) -> Result<usize, ControllerError> {
        queue
            .checked_add(1)
            .filter(|&i| i < self.queues.len())
            .ok_or(ControllerError::NoQueue(queue))
    }

    /// Commands in flight on I/O queue `queue`.
    pub fn in_flight(&self, queue: usize) -> usize {
        self.io_index(queue)
            .map_or(0, |i| usize::from(self.queues[i].ids.in_flight()))
    }

    fn identify(&mut self) -> Result<(), ControllerError> {
        let page = self.dev.alloc_coherent(PAGE_SIZE)?;
        let r = self.identify_into(&page);
        page.free()?;
        r
    }

    fn identify_page(
        &mut self,
        page: &CoherentBuffer,
        cmd: Command,
        out: &mut [u8; PAGE_SIZE as usize],
    ) -> Result<(), ControllerError> {
        let prps = Prps {
            prp1: page.dma_addr().as_u64(),
            prp2: 0,
            list_entries: 0,
            list_pages: 0,
        };
        self.admin(cmd.with_prps(&prps))?;
        page.read(0, out)?;
        Ok(())
    }

    fn identify_into(&mut self, page: &CoherentBuffer) -> Result<(), ControllerError> {
        let mut data = [0u8; PAGE_SIZE as usize];
        self.identify_page(page, Command::identify(cns::CONTROLLER, 0), &mut data)?;
        let le32 =
            |d: &[u8], at: usize| u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
        let mdts = data[77];
        let max_transfer = (mdts != 0)
            .then(|| {
                1u64.checked_shl(u32::from(mdts))
                    .map(|n| n * self.caps.min_page_size())
            })
            .flatten();
        let vendor_id = u16::from_le_bytes([data[0], data[1]]);
        let serial = heapless_str::Str::from_field(&data[4..24]);
        let model = heapless_str::Str::from_field(&data[24..64]);
        let firmware = heapless_str::Str::from_field(&data[64..72]);
        let namespaces = le32(&data, 516);
        let nsid = self.config.nsid;
        if nsid == 0 || nsid > namespaces {
            return Err(ControllerError::NoNamespace);
        }
        self.identify_page(page, Command::identify(cns::NAMESPACE, nsid), &mut data)?;
        let le64 = |d: &[u8], at: usize| u64::from(le32(d, at)) | u64::from(le32(d, at + 4)) << 32;
        let blocks = le64(&data, 0);
        let format = usize::from(data[26] & 0xf);
        let lbaf = le32(&data, 128 + 4 * format);
        let lbads = (lbaf >> 16) & 0xff;
        // Metadata interleaved with data (LBAF.MS) is not supported.
        if blocks == 0 || !(9..=16).contains(&lbads) || lbaf & 0xffff != 0 {
            return Err(ControllerError::NoNamespace);
        }
        self.info = Some(Info {
            vendor_id,
            serial,
            model,
            firmware,
            max_transfer,
            namespaces,
            namespace: Namespace {
                nsid,
                block_size: 1 << lbads,
                blocks,
            },
        });
        Ok(())
    }

    fn create_io_queues(&mut self, first: bool) -> Result<(), ControllerError> {
        let wanted = self.config.io_queues.max(1);
        let granted = self.admin(Command::set_queue_count(wanted, wanted))?;
        // DW0: NCQA (31:16) and NSQA (15:0), 0's based.
        let count = wanted
            .min(((granted.dw0 & 0xffff) as u16).saturating_add(1))
            .min(((granted.dw0 >> 16) as u16).saturating_add(1));
        if first {
            let size = check_size(
                u32::from(self.config.io_queue_size).min(u32::from(MAX_IN_FLIGHT) + 1),
                self.caps.max_queue_entries(),
            )?;
            for qid in 1..=count {
                let pair = QueuePair::new(&self.dev, qid, size, size - 1)?;
                self.queues.push(pair);
            }
        }
        for i in 1..self.queues.len() {
            self.queues[i].reset_rings()?;
            let (qid, size) = (self.queues[i].id, self.queues[i].sq.size());
            let cq = self.queues[i].cq_mem.dma_addr().as_u64();
            let sq = self.queues[i].sq_mem.dma_addr().as_u64();
            let vector = self.config.interrupts.then_some(qid);
            self.admin(Command::create_cq(qid, size, cq, vector))?;
            self.admin(Command::create_sq(qid, size, sq, qid))?;
        }
        Ok(())
    }

    /// Runs one admin command to completion.
    fn admin(&mut self, cmd: Command) -> Result<Completion, ControllerError> {
        let ticket = self.submit_on(0, cmd, DataMapping::None)?;
        self.wait(ticket)
    }

    fn submit_on(
        &mut self,
        index: usize,
        cmd: Command,
        data: DataMapping,
    ) -> Result<Ticket, ControllerError> {
        let cid = self.alloc_cid(index)?;
        self.submit_with_cid(index, cid, cmd, data)
    }

    /// Takes a command identifier on queue `index` (with a free submission slot), due one
    /// timeout from now.
    fn alloc_cid(&mut self, index: usize) -> Result<u16, ControllerError> {
        let deadline = self
            .clock
            .now_us()
            .saturating_add(self.config.command_timeout_us);
        let q = self
            .queues
            .get_mut(index)
            .ok_or(ControllerError::NoQueue(index))?;
        if q.sq.free() == 0 {
            return Err(QueueError::Full.into());
        }
        Ok(q.ids.alloc(deadline)?)
    }

    /// Writes `cmd` with identifier `cid` (from [`Self::alloc_cid`]) at the tail and rings the
    /// doorbell; on an error the identifier is released and nothing was submitted.
    fn submit_with_cid(
        &mut self,
        index: usize,
        cid: u16,
        mut cmd: Command,
        data: DataMapping,
    ) -> Result<Ticket, ControllerError> {
        let generation = self.generation;
        let caps = self.caps;
        let q = &mut self.queues[index];
        cmd.set_cid(cid);
        let slot = match q.sq.push() {
            Ok(s) => s,
            Err(e) => {
                let _ = q.ids.free(cid);
                return Err(e.into());
            }
        };
        if let Err(e) = q
            .sq_mem
            .write(u64::from(slot) * SQE_SIZE as u64, &cmd.to_bytes())
        {
            q.sq.unpush();
            let _ = q.ids.free(cid);
            return Err(e.into());
        }
        q.slots[usize::from(cid)] = Slot::InFlight {
            opcode: cmd.opcode(),
            data,
            aborted: false,
        };
        if q.plugged {
            q.unrung = true;
        } else {
            fence(Ordering::SeqCst);
            self.regs
                .write32(doorbell(&caps, q.id, false), u32::from(q.sq.tail()));
        }
        Ok(Ticket {
            queue: q.id,
            cid,
            generation,
        })
    }

    /// Consumes every new completion of queue `index`; returns how many. The head doorbell is
    /// written for every entry consumed, even when one of them was malformed (an error is then
    /// returned after the doorbell).
    fn reap(&mut self, index: usize) -> Result<usize, ControllerError> {
        let caps = self.caps;
        let mut batch = self.config.batch_unmaps.then(dma::UnmapBatch::new);
        let q = &mut self.queues[index];
        let mut n = 0;
        let mut failed = None;
        loop {
            let at = u64::from(q.cq.head()) * CQE_SIZE as u64;
            let mut dw3 = [0u8; 4];
            if let Err(e) = q.cq_mem.read(at + 12, &mut dw3) {
                failed = Some(e.into());
                break;
            }
            if !q.cq.is_new(u32::from_le_bytes(dw3) & (1 << 16) != 0) {
                break;
            }
            fence(Ordering::Acquire);
            let mut bytes = [0u8; CQE_SIZE];
            if let Err(e) = q.cq_mem.read(at, &mut bytes) {
                failed = Some(e.into());
                break;
            }
            let done = Completion::from_bytes(&bytes);
            q.cq.advance();
            n += 1;
            if let Err(e) = Self::complete(q, &done, batch.as_mut()) {
                failed = Some(e);
                break;
            }
        }
        if n > 0 {
            fence(Ordering::SeqCst);
            self.regs
                .write32(doorbell(&caps, q.id, true), u32::from(q.cq.head()));
        }
        if let Some(batch) = batch {
            batch.finish()?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Records one completion: the SQ head it reports, its command's result; its data mapping
    /// is unmapped now (or added to `batch`, flushed before `reap` returns).
    fn complete(
        q: &mut QueuePair,
        done: &Completion,
        batch: Option<&mut dma::UnmapBatch>,
    ) -> Result<(), ControllerError> {
        q.sq.update_head(done.sq_head)?;
        let slot = q
            .slots
            .get_mut(usize::from(done.cid))
            .filter(|s| matches!(s, Slot::InFlight { .. }))
            .ok_or(QueueError::UnknownCommandId(done.cid))?;
        let Slot::InFlight {
            opcode,
            data,
            aborted,
        } = core::mem::replace(slot, Slot::Free)
        else {
            return Err(QueueError::UnknownCommandId(done.cid).into());
        };
        // The command is over: its data mapping goes now (strict unmap: when this returns
        // the controller can no longer reach the buffer; batched: before `reap` returns).
        let unmapped = match (data, batch) {
            (DataMapping::Single(m), Some(b)) => m.unmap_in(b),
            (DataMapping::List(m), Some(b)) => m.unmap_in(b),
            (data, _) => {
                drop(data);
                Ok(())
            }
        };
        *slot = Slot::Done(match done.status.result() {
            Ok(()) => Ok(*done),
            Err(_) if aborted => Err(ControllerError::Timeout {
                opcode,
                reset: false,
            }),
            Err(e) => Err(ControllerError::Command(e)),
        });
        // A finished command never times out, however late its result is collected.
        q.ids.set_deadline(done.cid, u64::MAX)?;
        unmapped.map_err(ControllerError::Dma)
    }

    /// Writes the tail doorbell of queue `index` if entries were written since the last one.
    fn ring(&mut self, index: usize) {
        let caps = self.caps;
        if let Some(q) = self.queues.get_mut(index).filter(|q| q.unrung) {
            q.unrung = false;
            fence(Ordering::SeqCst);
            self.regs
                .write32(doorbell(&caps, q.id, false), u32::from(q.sq.tail()));
        }
    }

    /// Plugs I/O queue `queue`: submissions are written to the queue but the controller is told
    /// only at [`Controller::unplug`] (one doorbell write for the whole batch, the block layer's
    /// plugging), or when a command of the queue is polled or waited for.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NoQueue`].
    pub fn plug(&mut self, queue: usize) -> Result<(), ControllerError> {
        let index = self.io_index(queue)?;
        self.queues[index].plugged = true;
        Ok(())
    }

    /// Unplugs I/O queue `queue` and rings its doorbell if anything was submitted meanwhile.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NoQueue`].
    pub fn unplug(&mut self, queue: usize) -> Result<(), ControllerError> {
        let index = self.io_index(queue)?;
        self.queues[index].plugged = false;
        self.ring(index);
        Ok(())
    }

    /// The result of `ticket` if its command has completed (its identifier is then free).
    ///
    /// # Errors
    ///
    /// The command's own error, or [`ControllerError::BadTicket`].
    pub fn poll(&mut self, ticket: Ticket) -> Option<Result<Completion, ControllerError>> {
        if ticket.generation != self.generation {
            // Issued before a reset: it never completed.
            return Some(Err(match self.reset_cause {
                Some((q, cid, g, opcode))
                    if (q, cid, g) == (ticket.queue, ticket.cid, ticket.generation) =>
                {
                    ControllerError::Timeout {
                        opcode,
                        reset: true,
                    }
                }
                _ => ControllerError::Reset,
            }));
        }
        let index = usize::from(ticket.queue);
        if index >= self.queues.len() {
            return Some(Err(ControllerError::BadTicket));
        }
        // Waiting on a command that was never announced would wait forever.
        self.ring(index);
        if let Err(e) = self.reap(index) {
            return Some(Err(e));
        }
        if let Err(e) = self.check_timeouts(index) {
            return Some(Err(e));
        }
        if ticket.generation != self.generation {
            // The timeout check reset the controller.
            return self.poll(ticket);
        }
        let q = &mut self.queues[index];
        let slot = q.slots.get_mut(usize::from(ticket.cid))?;
        match slot {
            Slot::Done(_) => {
                let Slot::Done(r) = core::mem::replace(slot, Slot::Free) else {
                    return None;
                };
                let _ = q.ids.free(ticket.cid);
                Some(r)
            }
            Slot::InFlight { .. } => None,
            Slot::Free => Some(Err(ControllerError::BadTicket)),
        }
    }

    /// Polls `ticket` until its command completes (or times out and is aborted or reset).
    ///
    /// # Errors
    ///
    /// The command's error; [`ControllerError::Timeout`] when it had to be aborted.
    pub fn wait(&mut self, ticket: Ticket) -> Result<Completion, ControllerError> {
        self.wait_with(ticket, core::hint::spin_loop)
    }

    /// [`Controller::wait`], calling `idle` between polls: with [`Config::interrupts`] an
    /// embedder passes something that sleeps until the next interrupt (e.g. `sti; hlt`), so
    /// the completion's MSI-X wakes it instead of a spinning poll. `idle` must return at least
    /// at every interrupt (the timer's included) for timeouts to be noticed.
    ///
    /// # Errors
    ///
    /// As [`Controller::wait`].
    pub fn wait_with(
        &mut self,
        ticket: Ticket,
        mut idle: impl FnMut(),
    ) -> Result<Completion, ControllerError> {
        loop {
            if let Some(r) = self.poll(ticket) {
                return r;
            }
            idle();
        }
    }

    /// Aborts commands of queue `index` past their deadline; resets the controller when an
    /// aborted command still has not completed one timeout later, when the abort itself fails,
    /// or when an admin command hangs.
    fn check_timeouts(&mut self, index: usize) -> Result<(), ControllerError> {
        let now = self.clock.now_us();
        let Some(cid) = self.queues[index].ids.expired(now) else {
            return Ok(());
        };
        let timeout = self.config.command_timeout_us;
        let q = &mut self.queues[index];
        let qid = q.id;
        let (opcode, already) = match q.slots.get_mut(usize::from(cid)) {
            Some(Slot::InFlight {
                opcode, aborted, ..
            }) => (*opcode, core::mem::replace(aborted, true)),
            _ => return Ok(()),
        };
        // The next check for this command comes one timeout later.
        q.ids.set_deadline(cid, now.saturating_add(timeout))?;
        if index == 0 && self.resetting {
            return Err(ControllerError::Timeout {
                opcode,
                reset: false,
            });
        }
        if already || index == 0 {
            self.reset_cause = Some((qid, cid, self.generation, opcode));
            return self.reset_controller();
        }
        if self.admin(Command::abort(qid, cid)).is_err() {
            self.reset_cause = Some((qid, cid, self.generation, opcode));
            return self.reset_controller();
        }
        Ok(())
    }

    /// Disables and re-enables the controller and recreates the I/O queues: every command in
    /// flight completes with [`ControllerError::Timeout`] `{ reset: true }` or
    /// [`ControllerError::Reset`].
    ///
    /// # Errors
    ///
    /// When the controller does not come back.
    pub fn reset_controller(&mut self) -> Result<(), ControllerError> {
        self.resets += 1;
        self.disable()?;
        for q in &mut self.queues {
            q.ids.clear();
            for slot in q.slots.iter_mut() {
                *slot = Slot::Free;
            }
        }
        self.generation = self.generation.wrapping_add(1);
        self.resetting = true;
        let r = self.bring_up(false);
        self.resetting = false;
        r
    }

    /// Submits a Read (`write` false) or Write of `blocks` blocks at `lba` on I/O queue
    /// `queue`, data in `buffer` (`len` bytes: exactly `blocks × block size`).
    ///
    /// # Errors
    ///
    /// Nothing is submitted on an error: blocks outside the namespace, a wrong length, a
    /// transfer above [`Controller::max_transfer`], a buffer PRPs cannot describe, a mapping
    /// failure, a full queue.
    pub fn submit_io(
        &mut self,
        queue: usize,
        write: bool,
        lba: u64,
        blocks: u64,
        buffer: Buffer<'_>,
        len: u64,
    ) -> Result<Ticket, ControllerError> {
        let ns = self.namespace()?;
        let index = self.io_index(queue)?;
        if blocks == 0 || lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
            return Err(ControllerError::OutOfRange {
                lba,
                blocks,
                capacity: ns.blocks,
            });
        }
        let expected = blocks.saturating_mul(ns.block_size);
        if len != expected {
            return Err(ControllerError::BadLength { len, expected });
        }
        let max = self.max_transfer();
        let nlb = u16::try_from(blocks)
            .ok()
            .filter(|_| expected <= max)
            .ok_or(ControllerError::TooLarge {
                bytes: expected,
                max,
            })?;
        let dir = if write {
            Direction::ToDevice
        } else {
            Direction::FromDevice
        };
        let cid = self.alloc_cid(index)?;
        match self.prepare(index, cid, buffer, len, dir) {
            Ok((data, prps)) => {
                let cmd = Command::read_write(write, ns.nsid, lba, nlb).with_prps(&prps);
                self.submit_with_cid(index, cid, cmd, data)
            }
            Err(e) => {
                // Any mapping made was dropped (undone) inside `prepare`.
                let _ = self.queues[index].ids.free(cid);
                Err(e)
            }
        }
    }

    /// Makes `buffer` (`len` bytes) reachable for the controller and describes it with PRPs,
    /// the list (if any) in command identifier `cid`'s list page of queue `index`. On an error
    /// whatever was mapped is unmapped again.
    fn prepare(
        &self,
        index: usize,
        cid: u16,
        buffer: Buffer<'_>,
        len: u64,
        dir: Direction,
    ) -> Result<(DataMapping, Prps), ControllerError> {
        let single: [Segment; 1];
        let owned: Vec<Segment>;
        let (data, segments): (DataMapping, &[Segment]) = match buffer {
            Buffer::Phys(phys) => {
                let m = self.dev.map_phys(phys, len, dir, Attrs::empty())?;
                single = [Segment::new(m.dma_addr().as_u64(), len)];
                (DataMapping::Single(m), &single)
            }
            Buffer::PhysList(list) => {
                let m = self.dev.map_sg(list, dir, Attrs::empty())?;
                owned = m
                    .segments()
                    .map(|s| Segment::new(s.addr.as_u64(), s.len))
                    .collect();
                (DataMapping::List(m), &owned)
            }
            Buffer::Peer { mapping, .. } if mapping.is_stale() => {
                return Err(ControllerError::Dma(DmaError::Revoked));
            }
            Buffer::Peer { mapping, offset } => {
                owned = slice_segments(mapping.segments(), offset, len).ok_or(
                    ControllerError::BadLength {
                        len: mapping.segments().iter().map(|s| s.len).sum(),
                        expected: offset.saturating_add(len),
                    },
                )?;
                (DataMapping::None, &owned)
            }
            Buffer::Dma(segments) => {
                let total = segments
                    .iter()
                    .try_fold(0u64, |t, s| t.checked_add(s.len))
                    .unwrap_or(u64::MAX);
                if total != len {
                    return Err(ControllerError::BadLength {
                        len: total,
                        expected: len,
                    });
                }
                (DataMapping::None, segments)
            }
        };
        let mut list = ListPage {
            buf: &self.queues[index].prp_lists,
            cid,
            error: None,
        };
        let prps = prp::build(segments, PAGE_SIZE, &mut list)?;
        match list.error {
            None => Ok((data, prps)),
            Some(e) => Err(e.into()),
        }
    }

    /// Submits `cmd` as given on I/O queue `queue` (only its command identifier is set here):
    /// for commands this driver has no call of its own for (vendor-specific or passthrough
    /// commands). Nothing is mapped for it: the caller owns every address in it and keeps the
    /// memory they name valid until the command completes.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NoQueue`], a full queue.
    pub fn submit_command(
        &mut self,
        queue: usize,
        cmd: Command,
    ) -> Result<Ticket, ControllerError> {
        let index = self.io_index(queue)?;
        self.submit_on(index, cmd, DataMapping::None)
    }

    /// Submits a Flush of the I/O namespace on queue `queue`.
    ///
    /// # Errors
    ///
    /// [`ControllerError::NoQueue`], a full queue.
    pub fn submit_flush(&mut self, queue: usize) -> Result<Ticket, ControllerError> {
        let ns = self.namespace()?;
        let index = self.io_index(queue)?;
        self.submit_on(index, Command::flush(ns.nsid), DataMapping::None)
    }

    /// Reads `blocks` blocks at `lba` into `buffer` and waits for them.
    ///
    /// # Errors
    ///
    /// Those of [`Controller::submit_io`] and [`Controller::wait`].
    pub fn read(
        &mut self,
        lba: u64,
        blocks: u64,
        buffer: Buffer<'_>,
        len: u64,
    ) -> Result<(), ControllerError> {
        self.transfer(false, lba, blocks, buffer, len)
    }

    /// Writes `blocks` blocks at `lba` from `buffer` and waits for them.
    ///
    /// # Errors
    ///
    /// Those of [`Controller::submit_io`] and [`Controller::wait`].
    pub fn write(
        &mut self,
        lba: u64,
        blocks: u64,
        buffer: Buffer<'_>,
        len: u64,
    ) -> Result<(), ControllerError> {
        self.transfer(true, lba, blocks, buffer, len)
    }

    /// One read or write on I/O queue 0, waited for.
    fn transfer(
        &mut self,
        write: bool,
        lba: u64,
        blocks: u64,
        buffer: Buffer<'_>,
        len: u64,
    ) -> Result<(), ControllerError> {
        let t = self.submit_io(0, write, lba, blocks, buffer, len)?;
        self.wait(t).map(|_| ())
    }

    /// Flushes the volatile write cache and waits.
    ///
    /// # Errors
    ///
    /// Those of [`Controller::submit_flush`] and [`Controller::wait`].
    pub fn flush(&mut self) -> Result<(), ControllerError> {
        let t = self.submit_flush(0)?;
        self.wait(t).map(|_| ())
    }
}
