//! Queue-pair bookkeeping (NVM Express 1.4 §4.1): the submission ring's tail and the head the
//! controller reports, the completion ring's head and phase tag, and the command identifiers in
//! flight with their deadlines. Pure state, no memory and no registers: [`crate::controller`]
//! puts entries into queue memory and rings the doorbells.
//!
//! Rules implemented:
//! - a ring of `size` entries holds at most `size - 1` (head == tail means empty, §4.1.1);
//! - the controller's SQ Head Pointer in each completion frees the slots before it (§4.6); a
//!   value outside the in-flight window is a controller error, reported, never trusted;
//! - a completion entry is new when its phase tag equals the ring's current phase; the phase
//!   inverts each time the head wraps (§4.6, "Phase Tag");
//! - a completion naming a command identifier that is not in flight is a controller error.

use core::fmt;

/// Why queue bookkeeping refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// A queue size below 2 or above the controller's CAP.MQES + 1.
    BadSize(u32),
    /// The submission ring has no free slot.
    Full,
    /// Every command identifier is in flight.
    NoCommandId,
    /// The controller reported an SQ head outside the submitted window.
    BadSqHead {
        /// The value reported.
        head: u16,
    },
    /// A completion for a command identifier that is not in flight.
    UnknownCommandId(u16),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadSize(n) => write!(f, "queue size {n} is not supported"),
            Self::Full => f.write_str("submission queue full"),
            Self::NoCommandId => f.write_str("no free command identifier"),
            Self::BadSqHead { head } => {
                write!(
                    f,
                    "controller reported SQ head {head} outside the submitted window"
                )
            }
            Self::UnknownCommandId(cid) => {
                write!(
                    f,
                    "completion for command identifier {cid} that is not in flight"
                )
            }
        }
    }
}

impl core::error::Error for QueueError {}

/// Checks a queue size against CAP.MQES (`max_entries` = MQES + 1).
///
/// # Errors
///
/// [`QueueError::BadSize`] below 2 or above `max_entries` (or 65536).
pub fn check_size(size: u32, max_entries: u32) -> Result<u16, QueueError> {
    if size < 2 || size > max_entries.min(65536) {
        return Err(QueueError::BadSize(size));
    }
    // 65536 entries are encoded 0's based in 16 bits; this driver keeps sizes ≤ 65535 so the
    // ring arithmetic fits u16.
    u16::try_from(size).map_err(|_| QueueError::BadSize(size))
}

/// The submission ring: software owns the tail, the controller reports the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRing {
    size: u16,
    head: u16,
    tail: u16,
}

impl SubmissionRing {
    /// An empty ring of `size` entries (≥ 2, from [`check_size`]).
    pub const fn new(size: u16) -> Self {
        Self {
            size,
            head: 0,
            tail: 0,
        }
    }

    /// Entries.
    pub const fn size(&self) -> u16 {
        self.size
    }

    /// The next slot software writes (what the tail doorbell gets after the write).
    pub const fn tail(&self) -> u16 {
        self.tail
    }

    /// The controller's last reported head.
    pub const fn head(&self) -> u16 {
        self.head
    }

    /// Entries submitted and not yet consumed by the controller.
    pub const fn in_use(&self) -> u16 {
        ((self.tail as u32 + self.size as u32 - self.head as u32) % self.size as u32) as u16
    }

    /// Free slots.
    pub const fn free(&self) -> u16 {
        self.size - 1 - self.in_use()
    }

    /// Reserves the slot at the tail and advances it; returns the slot to fill.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`].
    pub fn push(&mut self) -> Result<u16, QueueError> {
        if self.free() == 0 {
            return Err(QueueError::Full);
        }
        let slot = self.tail;
        self.tail = (self.tail + 1) % self.size;
        Ok(slot)
    }

    /// Takes back the last [`SubmissionRing::push`] (the entry was not submitted).
    pub fn unpush(&mut self) {
        if self.in_use() > 0 {
            self.tail = (self.tail + self.size - 1) % self.size;
        }
    }

    /// Records the controller's SQ head from a completion: it must lie in `[head, tail]`.
    ///
    /// # Errors
    ///
    /// [`QueueError::BadSqHead`], changing nothing.
    pub fn update_head(&mut self, head: u16) -> Result<(), QueueError> {
        if head >= self.size {
            return Err(QueueError::BadSqHead { head });
        }
        let advanced = (head as u32 + self.size as u32 - self.head as u32) % self.size as u32;
        if advanced > u32::from(self.in_use()) {
            return Err(QueueError::BadSqHead { head });
        }
        self.head = head;
        Ok(())
    }

    /// Forgets everything (after a controller reset or queue deletion).
    pub fn reset(&mut self) {
        self.head = 0;
        self.tail = 0;
    }
}

/// The completion ring: software owns the head and the expected phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRing {
    size: u16,
    head: u16,
    phase: bool,
}

impl CompletionRing {
    /// A ring of `size` entries, zeroed memory: the first pass's entries carry phase 1.
    pub const fn new(size: u16) -> Self {
        Self {
            size,
            head: 0,
            phase: true,
        }
    }

    /// The slot software reads next.
    pub const fn head(&self) -> u16 {
        self.head
    }

    /// The phase tag a new entry at the head carries.
    pub const fn phase(&self) -> bool {
        self.phase
    }

    /// Whether an entry with phase tag `phase` at the head is new.
    pub const fn is_new(&self, phase: bool) -> bool {
        phase == self.phase
    }

    /// Consumes the entry at the head; returns the new head (what the head doorbell gets).
    pub fn advance(&mut self) -> u16 {
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.head
    }

    /// Back to the initial state (the queue memory must be zeroed again).
    pub fn reset(&mut self) {
        self.head = 0;
        self.phase = true;
    }
}

/// Command identifiers in flight, up to 64 × `WORDS` of them, with a deadline each.
#[derive(Debug, Clone)]
pub struct CommandIds<const N: usize> {
    used: [u64; N],
    deadline: [[u64; 64]; N],
    limit: u16,
    in_flight: u16,
}

impl<const N: usize> CommandIds<N> {
    /// At most `limit` (≤ 64 N) identifiers, 0..limit.
    pub fn new(limit: u16) -> Self {
        Self {
            used: [0; N],
            deadline: [[0; 64]; N],
            limit: limit.min(u16::try_from(64 * N).unwrap_or(u16::MAX)),
            in_flight: 0,
        }
    }

    /// Identifiers in flight.
    pub const fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Takes a free identifier, due by `deadline`.
    ///
    /// # Errors
    ///
    /// [`QueueError::NoCommandId`].
    pub fn alloc(&mut self, deadline: u64) -> Result<u16, QueueError> {
        for (w, word) in self.used.iter_mut().enumerate() {
            let free = !*word;
            if free == 0 {
                continue;
            }
            let bit = free.trailing_zeros() as usize;
            let cid = w * 64 + bit;
            if cid >= usize::from(self.limit) {
                break;
            }
            *word |= 1 << bit;
            self.deadline[w][bit] = deadline;
            self.in_flight += 1;
            return u16::try_from(cid).map_err(|_| QueueError::NoCommandId);
        }
        Err(QueueError::NoCommandId)
    }

    /// Whether `cid` is in flight.
    pub fn contains(&self, cid: u16) -> bool {
        let (w, bit) = (usize::from(cid) / 64, usize::from(cid) % 64);
        w < N && self.used[w] & (1 << bit) != 0
    }

    /// Moves the deadline of `cid` (in flight) to `deadline`.
    ///
    /// # Errors
    ///
    /// [`QueueError::UnknownCommandId`] when it is not in flight.
    pub fn set_deadline(&mut self, cid: u16, deadline: u64) -> Result<(), QueueError> {
        if !self.contains(cid) {
            return Err(QueueError::UnknownCommandId(cid));
        }
        self.deadline[usize::from(cid) / 64][usize::from(cid) % 64] = deadline;
        Ok(())
    }

    /// Releases `cid` (its completion arrived).
    ///
    /// # Errors
    ///
    /// [`QueueError::UnknownCommandId`] when it is not in flight.
    pub fn free(&mut self, cid: u16) -> Result<(), QueueError> {
        if !self.contains(cid) {
            return Err(QueueError::UnknownCommandId(cid));
        }
        let (w, bit) = (usize::from(cid) / 64, usize::from(cid) % 64);
        self.used[w] &= !(1 << bit);
        self.in_flight -= 1;
        Ok(())
    }

    /// The in-flight identifier with the earliest deadline before `now`, if any.
    pub fn expired(&self, now: u64) -> Option<u16> {
        let mut best: Option<(u64, usize)> = None;
        for (w, word) in self.used.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let d = self.deadline[w][bit];
                if d < now && best.is_none_or(|(b, _)| d < b) {
                    best = Some((d, w * 64 + bit));
                }
            }
        }
        best.and_then(|(_, cid)| u16::try_from(cid).ok())
    }

    /// Forgets every identifier (after a controller reset).
    pub fn clear(&mut self) {
        self.used = [0; N];
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests;
