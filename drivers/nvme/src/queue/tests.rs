//! Ring bookkeeping against a model of a controller that consumes submissions in order and
//! posts completions with phase tags into a ring of its own.

use proptest::prelude::*;

use super::*;

#[test]
fn sizes_follow_mqes() {
    assert_eq!(check_size(1, 2048), Err(QueueError::BadSize(1)));
    assert_eq!(check_size(2, 2048), Ok(2));
    assert_eq!(check_size(2048, 2048), Ok(2048));
    assert_eq!(check_size(2049, 2048), Err(QueueError::BadSize(2049)));
    assert_eq!(check_size(65536, 65536), Err(QueueError::BadSize(65536)));
}

#[test]
fn a_ring_holds_size_minus_one() {
    let mut sq = SubmissionRing::new(4);
    assert_eq!((sq.push(), sq.push(), sq.push()), (Ok(0), Ok(1), Ok(2)));
    assert_eq!(sq.push(), Err(QueueError::Full));
    assert_eq!(sq.free(), 0);
    sq.update_head(2).expect("head in window");
    assert_eq!(sq.free(), 2);
    assert_eq!((sq.push(), sq.push()), (Ok(3), Ok(0)));
    assert_eq!(sq.tail(), 1);
    sq.unpush();
    assert_eq!(sq.tail(), 0);
}

#[test]
fn sq_heads_outside_the_window_are_refused() {
    let mut sq = SubmissionRing::new(8);
    for _ in 0..3 {
        sq.push().expect("slot");
    }
    // Submitted 0..3: head may be 0..=3.
    assert_eq!(sq.update_head(4), Err(QueueError::BadSqHead { head: 4 }));
    assert_eq!(sq.update_head(8), Err(QueueError::BadSqHead { head: 8 }));
    assert_eq!(sq.head(), 0);
    sq.update_head(3).expect("all consumed");
    // Going backwards is outside the window too.
    assert_eq!(sq.update_head(1), Err(QueueError::BadSqHead { head: 1 }));
}

#[test]
fn phase_inverts_on_every_wrap() {
    let mut cq = CompletionRing::new(3);
    let mut phases = Vec::new();
    for _ in 0..7 {
        phases.push(cq.phase());
        cq.advance();
    }
    assert_eq!(phases, [true, true, true, false, false, false, true]);
    assert!(cq.is_new(true) && !cq.is_new(false));
}

#[test]
fn command_ids_are_unique_and_expire_by_deadline() {
    let mut ids = CommandIds::<2>::new(100);
    let a = ids.alloc(50).expect("id");
    let b = ids.alloc(20).expect("id");
    let c = ids.alloc(30).expect("id");
    assert_eq!((a, b, c), (0, 1, 2));
    assert_eq!(ids.expired(10), None);
    assert_eq!(ids.expired(25), Some(b));
    assert_eq!(ids.expired(1000), Some(b));
    ids.free(b).expect("in flight");
    assert_eq!(ids.expired(1000), Some(c));
    assert_eq!(ids.free(b), Err(QueueError::UnknownCommandId(1)));
    for _ in 3..100 {
        ids.alloc(0).expect("id");
    }
    assert_eq!(ids.in_flight(), 99);
    assert_eq!(ids.alloc(0), Ok(99));
    assert_eq!(ids.alloc(0), Err(QueueError::NoCommandId));
    assert_eq!(ids.free(200), Err(QueueError::UnknownCommandId(200)));
    ids.clear();
    assert_eq!((ids.in_flight(), ids.expired(u64::MAX)), (0, None));
}

/// A controller model: consumes the submission ring in order, and writes completions with its
/// own tail and phase into a completion ring of `size` entries.
struct Controller {
    sq_head: u16,
    cq_tail: u16,
    cq_phase: bool,
    cq: Vec<Option<(bool, u16, u16)>>, // (phase, cid, sq_head)
}

proptest! {
    /// Random interleavings of submit / controller-completes / host-reaps on rings of random
    /// sizes: every completion is seen exactly once in order, the phase never lets an old entry
    /// look new, and the SQ never overflows.
    #[test]
    fn rings_against_a_controller_model(size in 2u16..9, ops in proptest::collection::vec(0u8..3, 1..300)) {
        let mut sq = SubmissionRing::new(size);
        let mut cq = CompletionRing::new(size);
        let mut ids = CommandIds::<1>::new(size - 1);
        let mut ctrl = Controller { sq_head: 0, cq_tail: 0, cq_phase: true, cq: vec![None; size as usize] };
        let mut sq_mem = vec![0u16; size as usize];
        let (mut submitted, mut reaped) = (Vec::new(), Vec::new());
        let mut pending = 0u16; // consumed by the controller, completion not yet reaped
        for op in ops {
            match op {
                0 => {
                    // Host submits (only if a CID and a slot and a CQ slot for its completion exist).
                    if sq.free() > 0 && ids.in_flight() + pending < size - 1 {
                        let cid = ids.alloc(0).expect("cid");
                        let slot = sq.push().expect("slot");
                        sq_mem[slot as usize] = cid;
                        submitted.push(cid);
                    }
                }
                1 => {
                    // Controller consumes one entry and posts its completion.
                    if ctrl.sq_head != sq.tail() {
                        let cid = sq_mem[ctrl.sq_head as usize];
                        ctrl.sq_head = (ctrl.sq_head + 1) % size;
                        ctrl.cq[ctrl.cq_tail as usize] = Some((ctrl.cq_phase, cid, ctrl.sq_head));
                        ctrl.cq_tail += 1;
                        if ctrl.cq_tail == size { ctrl.cq_tail = 0; ctrl.cq_phase = !ctrl.cq_phase; }
                        pending += 1;
                    }
                }
                _ => {
                    // Host reaps everything new.
                    while let Some((phase, cid, head)) = ctrl.cq[cq.head() as usize] {
                        if !cq.is_new(phase) { break; }
                        sq.update_head(head).expect("head in window");
                        ids.free(cid).expect("cid in flight");
                        reaped.push(cid);
                        cq.advance();
                        pending -= 1;
                    }
                }
            }
            prop_assert!(sq.in_use() < size);
        }
        prop_assert!(submitted.starts_with(&reaped));
    }
}
