//! Submission and completion queue entries (NVM Express 1.4 §4.2, §4.6) and the commands this
//! driver issues: admin Identify (§5.15), Create/Delete I/O Submission and Completion Queue
//! (§5.3-§5.6), Abort (§5.1), Set Features / Number of Queues (§5.21.1.7), and the NVM command
//! set's Read, Write and Flush (NVM Command Set 1.0 §3.2.4, §3.2.6; NVMe 1.4 §6.8, §6.9, §6.15).
//!
//! A submission entry is 64 bytes (sixteen dwords, little endian); a completion entry 16 bytes.
//! Data is always described with PRPs (PSDT = 00, [`crate::prp`]).

use crate::prp::Prps;
use crate::status::Status;

/// Size of a submission queue entry (CC.IOSQES = 6).
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry (CC.IOCQES = 4).
pub const CQE_SIZE: usize = 16;

/// Admin command opcodes (NVMe 1.4 Figure 139).
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
}

/// NVM command set opcodes (NVMe 1.4 Figure 346).
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
}

/// Identify CNS values (NVMe 1.4 Figure 244).
pub mod cns {
    /// Identify Namespace data structure for NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
}

/// Feature identifiers (NVMe 1.4 Figure 271).
pub mod feature {
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
}

/// A 64-byte submission queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Command {
    /// Dwords 0-15.
    pub dw: [u32; 16],
}

impl Command {
    /// A command with `opcode` and `nsid`, everything else zero (CID is set at submission).
    pub const fn new(opcode: u8, nsid: u32) -> Self {
        let mut dw = [0; 16];
        dw[0] = opcode as u32;
        dw[1] = nsid;
        Self { dw }
    }

    /// The opcode (CDW0 bits 7:0).
    pub const fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }

    /// The command identifier (CDW0 bits 31:16).
    pub const fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.dw[0] = (self.dw[0] & 0xffff) | (u32::from(cid) << 16);
    }

    /// The namespace ID.
    pub const fn nsid(&self) -> u32 {
        self.dw[1]
    }

    /// PRP entry 1 (dwords 6-7).
    pub const fn prp1(&self) -> u64 {
        self.dw[6] as u64 | (self.dw[7] as u64) << 32
    }

    /// PRP entry 2 (dwords 8-9).
    pub const fn prp2(&self) -> u64 {
        self.dw[8] as u64 | (self.dw[9] as u64) << 32
    }

    /// Sets the data pointer.
    pub fn set_prps(&mut self, prps: &Prps) {
        self.dw[6] = prps.prp1 as u32;
        self.dw[7] = (prps.prp1 >> 32) as u32;
        self.dw[8] = prps.prp2 as u32;
        self.dw[9] = (prps.prp2 >> 32) as u32;
    }

    /// With the data pointer set.
    pub fn with_prps(mut self, prps: &Prps) -> Self {
        self.set_prps(prps);
        self
    }

    /// Identify `cns` for namespace `nsid` into one 4 KiB page (PRP1 only).
    pub fn identify(cns: u8, nsid: u32) -> Self {
        let mut c = Self::new(admin::IDENTIFY, nsid);
        c.dw[10] = u32::from(cns);
        c
    }

    /// Create I/O Completion Queue `qid` of `size` entries at `addr` (physically contiguous),
    /// interrupts enabled on MSI-X vector `vector` when given.
    pub fn create_cq(qid: u16, size: u16, addr: u64, vector: Option<u16>) -> Self {
        let mut c = Self::new(admin::CREATE_CQ, 0);
        c.dw[6] = addr as u32;
        c.dw[7] = (addr >> 32) as u32;
        c.dw[10] = u32::from(size.saturating_sub(1)) << 16 | u32::from(qid);
        // PC = 1 (physically contiguous), IEN per vector, IV.
        c.dw[11] = 1 | match vector {
            Some(v) => 2 | u32::from(v) << 16,
            None => 0,
        };
        c
    }

    /// Create I/O Submission Queue `qid` of `size` entries at `addr`, completing on `cqid`.
    pub fn create_sq(qid: u16, size: u16, addr: u64, cqid: u16) -> Self {
        let mut c = Self::new(admin::CREATE_SQ, 0);
        c.dw[6] = addr as u32;
        c.dw[7] = (addr >> 32) as u32;
        c.dw[10] = u32::from(size.saturating_sub(1)) << 16 | u32::from(qid);
        // PC = 1, QPRIO = 00 (urgent; ignored under round-robin arbitration).
        c.dw[11] = 1 | u32::from(cqid) << 16;
        c
    }

    /// Delete I/O Submission Queue `qid`.
    pub fn delete_sq(qid: u16) -> Self {
        let mut c = Self::new(admin::DELETE_SQ, 0);
        c.dw[10] = u32::from(qid);
        c
    }

    /// Delete I/O Completion Queue `qid`.
    pub fn delete_cq(qid: u16) -> Self {
        let mut c = Self::new(admin::DELETE_CQ, 0);
        c.dw[10] = u32::from(qid);
        c
    }

    /// Abort command `cid` of submission queue `sqid`.
    pub fn abort(sqid: u16, cid: u16) -> Self {
        let mut c = Self::new(admin::ABORT, 0);
        c.dw[10] = u32::from(cid) << 16 | u32::from(sqid);
        c
    }

    /// Set Features / Number of Queues: asks for `sq` submission and `cq` completion queues
    /// (1-based counts; the command carries them 0-based).
    pub fn set_queue_count(sq: u16, cq: u16) -> Self {
        let mut c = Self::new(admin::SET_FEATURES, 0);
        c.dw[10] = u32::from(feature::NUMBER_OF_QUEUES);
        c.dw[11] = u32::from(cq.saturating_sub(1)) << 16 | u32::from(sq.saturating_sub(1));
        c
    }

    /// Read or Write `blocks` (≥ 1) logical blocks at `lba` of namespace `nsid`.
    pub fn read_write(write: bool, nsid: u32, lba: u64, blocks: u16) -> Self {
        let mut c = Self::new(if write { nvm::WRITE } else { nvm::READ }, nsid);
        c.dw[10] = lba as u32;
        c.dw[11] = (lba >> 32) as u32;
        // NLB is 0's based.
        c.dw[12] = u32::from(blocks.saturating_sub(1));
        c
    }

    /// Flush namespace `nsid`.
    pub fn flush(nsid: u32) -> Self {
        Self::new(nvm::FLUSH, nsid)
    }

    /// The entry as 64 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; SQE_SIZE] {
        let mut out = [0; SQE_SIZE];
        for (chunk, dw) in out.chunks_exact_mut(4).zip(self.dw) {
            chunk.copy_from_slice(&dw.to_le_bytes());
        }
        out
    }

    /// An entry from 64 little-endian bytes.
    pub fn from_bytes(bytes: &[u8; SQE_SIZE]) -> Self {
        let mut dw = [0; 16];
        for (d, chunk) in dw.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Self { dw }
    }
}

/// A completion queue entry (NVMe 1.4 Figure 124).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// Command-specific dword 0.
    pub dw0: u32,
    /// Command-specific dword 1.
    pub dw1: u32,
    /// SQ Head Pointer: how far the controller consumed the submission queue.
    pub sq_head: u16,
    /// SQ Identifier.
    pub sq_id: u16,
    /// Command Identifier.
    pub cid: u16,
    /// Phase Tag.
    pub phase: bool,
    /// Status (bits 15:1 of dword 3's upper half).
    pub status: Status,
}

impl Completion {
    /// Decodes dwords 0-3.
    pub const fn from_dwords(dw: [u32; 4]) -> Self {
        Self {
            dw0: dw[0],
            dw1: dw[1],
            sq_head: dw[2] as u16,
            sq_id: (dw[2] >> 16) as u16,
            cid: dw[3] as u16,
            phase: dw[3] & (1 << 16) != 0,
            status: Status::from_field((dw[3] >> 17) as u16),
        }
    }

    /// Encodes dwords 0-3 (what a controller writes; used by fakes).
    pub const fn to_dwords(&self) -> [u32; 4] {
        [
            self.dw0,
            self.dw1,
            self.sq_head as u32 | (self.sq_id as u32) << 16,
            self.cid as u32 | (self.phase as u32) << 16 | (self.status.field() as u32) << 17,
        ]
    }

    /// Decodes 16 little-endian bytes.
    pub fn from_bytes(bytes: &[u8; CQE_SIZE]) -> Self {
        let mut dw = [0; 4];
        for (d, chunk) in dw.iter_mut().zip(bytes.chunks_exact(4)) {
            *d = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Self::from_dwords(dw)
    }

    /// Encodes 16 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; CQE_SIZE] {
        let mut out = [0; CQE_SIZE];
        for (chunk, dw) in out.chunks_exact_mut(4).zip(self.to_dwords()) {
            chunk.copy_from_slice(&dw.to_le_bytes());
        }
        out
    }
}
