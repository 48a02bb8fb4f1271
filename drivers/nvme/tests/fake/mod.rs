//! A fake NVMe controller for the host tests: registers with behaviour (CC.EN → CSTS.RDY,
//! shutdown, doorbells that run the queues), admin commands (Identify, Set Features / Number of
//! Queues, Create/Delete I/O queues, Abort) and Read / Write / Flush on an in-memory disk. Every
//! access it makes to host memory goes through the fake IOMMU domain's page table, exactly as
//! a device's DMA would: an address the driver did not map fails the command with Data Transfer
//! Error and is counted, so a test sees what the device could reach.
//!
//! Knobs make it misbehave: hold back completions of one opcode (timeouts), honour or ignore
//! Abort, never become ready.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use dma::testing::{FakeDomain, FakePhysMemory};
use dma::{PhysAddr, PhysMemory};
use nvme::command::{admin, nvm, Command, Completion};
use nvme::io::{offset, Registers};
use nvme::prp;
use nvme::status::{sct, Status};

/// CAP as QEMU 7.2 presents it (MQES 0x7ff, CQR, TO 15, CSS NVM, MPSMAX 4), without CMBS.
pub const CAP: u64 = 0x0040_0020_0f01_07ff;
pub const PAGE: u64 = 4096;

#[derive(Debug, Default, Clone, Copy)]
struct Queue {
    base: u64,
    size: u16,
    head: u16,
    tail: u16,
    phase: bool,
    cqid: u16,
}

pub struct State {
    pub cc: u32,
    pub csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    sqs: [Option<Queue>; 8],
    cqs: [Option<Queue>; 8],
    pub disk: Vec<u8>,
    pub block_size: u64,
    /// Hold completions of this opcode on I/O queues (the command is fetched, never answered).
    pub hang_opcode: Option<u8>,
    /// Commands held back (queue, cid, sq head after fetching it).
    held: Vec<(u16, u16, u16)>,
    /// An Abort completes the held command with Command Abort Requested.
    pub abort_works: bool,
    /// CC.EN never sets CSTS.RDY.
    pub never_ready: bool,
    /// Accesses to host memory that had no translation.
    pub faults: Vec<u64>,
    pub commands: Vec<u8>,
    pub aborts: u32,
    pub enables: u32,
    pub mdts: u8,
}

#[derive(Clone)]
pub struct FakeNvme {
    pub st: Arc<Mutex<State>>,
    hw: Arc<FakeDomain>,
    phys: Arc<FakePhysMemory>,
}

impl FakeNvme {
    pub fn new(hw: Arc<FakeDomain>, phys: Arc<FakePhysMemory>, blocks: u64) -> Self {
        let block_size = 512;
        let disk = (0..blocks * block_size).map(pattern).collect();
        Self {
            st: Arc::new(Mutex::new(State {
                cc: 0,
                csts: 0,
                aqa: 0,
                asq: 0,
                acq: 0,
                sqs: [None; 8],
                cqs: [None; 8],
                disk,
                block_size,
                hang_opcode: None,
                held: Vec::new(),
                abort_works: false,
                never_ready: false,
                faults: Vec::new(),
                commands: Vec::new(),
                aborts: 0,
                enables: 0,
                mdts: 5,
            })),
            hw,
            phys,
        }
    }

    /// The physical address behind a device address, or `None` (an IOMMU fault).
    fn translate(&self, iova: u64) -> Option<u64> {
        let page = iova & !(PAGE - 1);
        let (start, pte) = self.hw.entries_in(page, PAGE).into_iter().next()?;
        Some(pte.paddr + (iova - start))
    }

    /// Walks `[iova, iova + len)` page by page through the IOMMU, calling `access(phys, from,
    /// to)` for each translated piece (`from..to` within the transfer); stops at the first
    /// untranslated page, records it as a fault and returns false.
    fn dma_pages(
        &self,
        st: &mut State,
        iova: u64,
        len: usize,
        mut access: impl FnMut(PhysAddr, usize, usize),
    ) -> bool {
        let mut done = 0;
        while done < len {
            let a = iova + done as u64;
            let n = ((PAGE - (a % PAGE)) as usize).min(len - done);
            let Some(p) = self.translate(a) else {
                st.faults.push(a);
                return false;
            };
            access(PhysAddr::new(p), done, done + n);
            done += n;
        }
        true
    }

    /// Device read of host memory.
    fn dma_read(&self, st: &mut State, iova: u64, buf: &mut [u8]) -> bool {
        let phys = &self.phys;
        self.dma_pages(st, iova, buf.len(), |p, from, to| {
            phys.read(p, &mut buf[from..to]).expect("fake RAM")
        })
    }

    /// Device write of host memory.
    fn dma_write(&self, st: &mut State, iova: u64, data: &[u8]) -> bool {
        let phys = &self.phys;
        self.dma_pages(st, iova, data.len(), |p, from, to| {
            phys.write(p, &data[from..to]).expect("fake RAM")
        })
    }

    fn post(&self, st: &mut State, sqid: u16, cid: u16, sq_head: u16, status: Status, dw0: u32) {
        let cqid = st.sqs[sqid as usize].map_or(0, |q| q.cqid);
        let Some(mut cq) = st.cqs[cqid as usize] else {
            return;
        };
        let entry = Completion {
            dw0,
            dw1: 0,
            sq_head,
            sq_id: sqid,
            cid,
            phase: cq.phase,
            status,
        };
        let at = cq.base + u64::from(cq.tail) * 16;
        self.dma_write(st, at, &entry.to_bytes());
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        st.cqs[cqid as usize] = Some(cq);
    }

    fn run_sq(&self, st: &mut State, sqid: u16) {
        loop {
            let Some(mut sq) = st.sqs[sqid as usize] else {
                return;
            };
            if sq.head == sq.tail {
                return;
            }
            let mut bytes = [0u8; 64];
            let ok = self.dma_read(st, sq.base + u64::from(sq.head) * 64, &mut bytes);
            sq.head = (sq.head + 1) % sq.size;
            st.sqs[sqid as usize] = Some(sq);
            if !ok {
                // A real controller sets CSTS.CFS when it cannot fetch a submission entry.
                st.csts |= 2;
                return;
            }
            let cmd = Command::from_bytes(&bytes);
            st.commands.push(cmd.opcode());
            if sqid != 0 && st.hang_opcode == Some(cmd.opcode()) {
                st.held.push((sqid, cmd.cid(), sq.head));
                continue;
            }
            let (status, dw0) = if sqid == 0 {
                self.admin(st, &cmd)
            } else {
                self.io(st, &cmd)
            };
            self.post(st, sqid, cmd.cid(), sq.head, status, dw0);
        }
    }

    fn admin(&self, st: &mut State, cmd: &Command) -> (Status, u32) {
        let ok = (Status::SUCCESS, 0);
        let invalid = (Status::new(sct::GENERIC, 0x02), 0);
        match cmd.opcode() {
            admin::IDENTIFY => {
                let mut page = vec![0u8; PAGE as usize];
                match cmd.dw[10] & 0xff {
                    1 => {
                        page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        page[4..24].copy_from_slice(b"FAKE0001            ");
                        page[24..64].copy_from_slice(&{
                            let mut m = [b' '; 40];
                            m[..9].copy_from_slice(b"Fake NVMe");
                            m
                        });
                        page[64..72].copy_from_slice(b"1.0     ");
                        page[77] = st.mdts;
                        page[516..520].copy_from_slice(&1u32.to_le_bytes());
                    }
                    0 if cmd.nsid() == 1 => {
                        let blocks = st.disk.len() as u64 / st.block_size;
                        page[0..8].copy_from_slice(&blocks.to_le_bytes());
                        page[8..16].copy_from_slice(&blocks.to_le_bytes());
                        page[26] = 0;
                        page[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
                    }
                    _ => return invalid,
                }
                if self.dma_write(st, cmd.prp1(), &page) {
                    ok
                } else {
                    (Status::new(sct::GENERIC, 0x04), 0)
                }
            }
            admin::SET_FEATURES if cmd.dw[10] & 0xff == 7 => {
                // Grant at most 4 queue pairs.
                let n = (cmd.dw[11] & 0xffff).min(3);
                (Status::SUCCESS, n << 16 | n)
            }
            admin::CREATE_CQ => {
                let qid = (cmd.dw[10] & 0xffff) as usize;
                if qid == 0 || qid >= 8 {
                    return (Status::new(sct::COMMAND_SPECIFIC, 0x01), 0);
                }
                st.cqs[qid] = Some(Queue {
                    base: cmd.prp1(),
                    size: (cmd.dw[10] >> 16) as u16 + 1,
                    phase: true,
                    ..Queue::default()
                });
                ok
            }
            admin::CREATE_SQ => {
                let qid = (cmd.dw[10] & 0xffff) as usize;
                let cqid = (cmd.dw[11] >> 16) as u16;
                if qid == 0 || qid >= 8 || st.cqs[cqid as usize].is_none() {
                    return (Status::new(sct::COMMAND_SPECIFIC, 0x01), 0);
                }
                st.sqs[qid] = Some(Queue {
                    base: cmd.prp1(),
                    size: (cmd.dw[10] >> 16) as u16 + 1,
                    cqid,
                    ..Queue::default()
                });
                ok
            }
            admin::ABORT => {
                st.aborts += 1;
                let (sqid, cid) = ((cmd.dw[10] & 0xffff) as u16, (cmd.dw[10] >> 16) as u16);
                if st.abort_works {
                    if let Some(i) = st.held.iter().position(|h| (h.0, h.1) == (sqid, cid)) {
                        let (q, c, head) = st.held.remove(i);
                        self.post(st, q, c, head, Status::new(sct::GENERIC, 0x07), 0);
                        return ok;
                    }
                }
                // DW0 bit 0 set: the command was not aborted.
                (Status::SUCCESS, 1)
            }
            _ => (Status::new(sct::GENERIC, 0x01), 0),
        }
    }

    fn io(&self, st: &mut State, cmd: &Command) -> (Status, u32) {
        match cmd.opcode() {
            nvm::FLUSH => (Status::SUCCESS, 0),
            op @ (nvm::READ | nvm::WRITE) => {
                let lba = u64::from(cmd.dw[10]) | u64::from(cmd.dw[11]) << 32;
                let blocks = u64::from(cmd.dw[12] & 0xffff) + 1;
                let bs = st.block_size;
                let (start, len) = (lba * bs, blocks * bs);
                if start + len > st.disk.len() as u64 {
                    return (Status::new(sct::GENERIC, 0x80), 0);
                }
                let mut ranges = Vec::new();
                let walked = {
                    let mut read_entry = |a: u64| {
                        let mut b = [0u8; 8];
                        if self.dma_read(st, a, &mut b) {
                            u64::from_le_bytes(b)
                        } else {
                            1
                        }
                    };
                    prp::walk(
                        cmd.prp1(),
                        cmd.prp2(),
                        len,
                        PAGE,
                        &mut read_entry,
                        |a, l| ranges.push((a, l)),
                    )
                };
                if walked.is_none() {
                    return (Status::new(sct::GENERIC, 0x13), 0);
                }
                let mut at = start as usize;
                for (a, l) in ranges {
                    let l = l as usize;
                    let ok = if op == nvm::READ {
                        let data = st.disk[at..at + l].to_vec();
                        self.dma_write(st, a, &data)
                    } else {
                        let mut buf = vec![0u8; l];
                        let ok = self.dma_read(st, a, &mut buf);
                        if ok {
                            st.disk[at..at + l].copy_from_slice(&buf);
                        }
                        ok
                    };
                    if !ok {
                        return (Status::new(sct::GENERIC, 0x04), 0);
                    }
                    at += l;
                }
                (Status::SUCCESS, 0)
            }
            _ => (Status::new(sct::GENERIC, 0x01), 0),
        }
    }

    pub fn held(&self) -> usize {
        self.st.lock().unwrap().held.len()
    }
}

/// The disk's initial content: a byte pattern the tests recompute.
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (offset >> 9) as u8
}

impl Registers for FakeNvme {
    fn read32(&self, off: usize) -> u32 {
        let st = self.st.lock().unwrap();
        match off {
            offset::CAP => CAP as u32,
            0x04 => (CAP >> 32) as u32,
            offset::VS => 0x0001_0400,
            offset::CC => st.cc,
            offset::CSTS => st.csts,
            offset::AQA => st.aqa,
            _ => 0,
        }
    }

    fn write32(&self, off: usize, value: u32) {
        let mut st = self.st.lock().unwrap();
        match off {
            offset::CC => {
                let was = st.cc & 1 != 0;
                st.cc = value;
                let en = value & 1 != 0;
                if en && !was {
                    st.enables += 1;
                    if !st.never_ready {
                        st.csts |= 1;
                    }
                    let size = |v: u32| (v & 0xfff) as u16 + 1;
                    let aqa = st.aqa;
                    st.sqs[0] = Some(Queue {
                        base: st.asq,
                        size: size(aqa),
                        cqid: 0,
                        ..Queue::default()
                    });
                    st.cqs[0] = Some(Queue {
                        base: st.acq,
                        size: size(aqa >> 16),
                        phase: true,
                        ..Queue::default()
                    });
                } else if !en && was {
                    st.csts &= !0b1111;
                    st.sqs = [None; 8];
                    st.cqs = [None; 8];
                    st.held.clear();
                }
                if (value >> 14) & 3 == 1 {
                    st.csts = (st.csts & !0b1100) | 0b1000;
                }
            }
            offset::AQA => st.aqa = value,
            offset::ASQ => st.asq = (st.asq & !0xffff_ffff) | u64::from(value),
            0x2c => st.asq = (st.asq & 0xffff_ffff) | u64::from(value) << 32,
            offset::ACQ => st.acq = (st.acq & !0xffff_ffff) | u64::from(value),
            0x34 => st.acq = (st.acq & 0xffff_ffff) | u64::from(value) << 32,
            o if o >= offset::DOORBELLS => {
                let index = (o - offset::DOORBELLS) / 4;
                let (qid, cq) = (index / 2, index % 2 == 1);
                if qid >= 8 || st.csts & 1 == 0 {
                    return;
                }
                if cq {
                    if let Some(q) = st.cqs[qid].as_mut() {
                        q.head = value as u16;
                    }
                } else {
                    if let Some(q) = st.sqs[qid].as_mut() {
                        q.tail = value as u16;
                    }
                    self.run_sq(&mut st, qid as u16);
                }
            }
            _ => {}
        }
    }
}
