//! [`VtdError`]: why a unit or domain-management operation failed.

use super::*;

/// Why a unit or domain-management operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The hardware lacks something this crate needs.
    Unsupported {
        /// What is missing.
        reason: &'static str,
    },
    /// A status bit did not reach its expected value in time.
    Timeout {
        /// What was being waited for.
        what: &'static str,
    },
    /// An invalidation failed.
    Invalidation(InvalidationError),
    /// An interrupt-remapping operation was refused.
    InterruptRemapping(IntRemapError),
    /// No memory for tables.
    OutOfMemory,
    /// This unit's enable already completed (call [`VtdUnit::disable`] first).
    AlreadyEnabled,
    /// Every domain ID the unit supports (CAP.ND) is in use.
    DomainIdsExhausted,
    /// No advertised table depth gives the address width asked for.
    NoSuitableAddressWidth {
        /// The width asked for.
        requested: u8,
    },
    /// The table depth asked for is not advertised in SAGAW.
    LevelsNotSupported(PagingLevels),
    /// The requester ID already has a context entry (in domain `did`); detach it first.
    AlreadyAttached {
        /// The requester ID.
        rid: RequesterId,
        /// The domain it is attached to.
        did: u16,
    },
    /// The same requester ID was given twice.
    DuplicateRequesterId {
        /// The requester ID.
        rid: RequesterId,
    },
    /// The isolation group is attached to another domain (`did`): a group is never split
    /// across domains; detach every member from that domain first.
    GroupAttachedElsewhere {
        /// The group key.
        group: u32,
        /// The domain the group is attached to.
        did: u16,
    },
    /// The group key is known with a different set of requester IDs (a stale or inconsistent
    /// group computation).
    GroupRequesterIdsDiffer {
        /// The group key.
        group: u32,
    },
    /// A group with no requester ID: nothing could be attached.
    EmptyGroup {
        /// The group key.
        group: u32,
    },
    /// The device is already a member of the attached group.
    AlreadyMember {
        /// The group key.
        group: u32,
        /// The member's requester ID.
        device: RequesterId,
    },
    /// The group is not attached to this domain.
    GroupNotAttached {
        /// The group key.
        group: u32,
    },
    /// The group is attached to this domain, but `device` is not one of its members.
    NotAMember {
        /// The group key.
        group: u32,
        /// The requester ID given.
        device: RequesterId,
    },
    /// Host drivers hold members of the group (attached through
    /// [`Domain::attach_device`](crate::Domain::attach_device) to domain `did`): it cannot be
    /// assigned or quarantined until every member detached.
    GroupInUse {
        /// The group key.
        group: u32,
        /// The domain its members use.
        did: u16,
        /// How many members are attached.
        members: u32,
    },
    /// The group is already assigned to this owner (domain `did`, or the unit's
    /// pass-through DID).
    AlreadyAssigned {
        /// The group key.
        group: u32,
        /// The owner's domain ID.
        did: u16,
    },
    /// The group is owned as a whole (assigned to domain `did`, or pass-through): host
    /// drivers cannot attach members to it.
    GroupAssigned {
        /// The group key.
        group: u32,
        /// The owner's domain ID.
        did: u16,
    },
    /// The group is quarantined: nothing can attach to it until it is assigned again or
    /// released ([`VtdUnit::release_quarantine`]).
    GroupQuarantined {
        /// The group key.
        group: u32,
    },
    /// The group is not quarantined (untracked, or owned by a domain).
    GroupNotQuarantined {
        /// The group key.
        group: u32,
    },
    /// The unit does not offer pass-through (ECAP.PT = 0): give the group an identity domain
    /// instead.
    PassThroughUnsupported,
    /// Replacing a present context entry needs a 16-byte atomic store and this CPU has no
    /// `CMPXCHG16B`; nothing was written.
    NoAtomicStore,
    /// The domain (`did`) belongs to another remapping unit.
    DomainOfAnotherUnit {
        /// Its domain ID on its own unit.
        did: u16,
    },
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported { reason } => write!(f, "VT-d unit unsupported: {reason}"),
            Self::Timeout { what } => write!(f, "VT-d unit timed out waiting for {what}"),
            Self::Invalidation(e) => write!(f, "VT-d invalidation failed: {e}"),
            Self::InterruptRemapping(e) => write!(f, "VT-d interrupt remapping: {e}"),
            Self::OutOfMemory => f.write_str("out of memory for VT-d tables"),
            Self::AlreadyEnabled => f.write_str("VT-d translation is already enabled"),
            Self::DomainIdsExhausted => f.write_str("no free VT-d domain ID"),
            Self::NoSuitableAddressWidth { requested } => {
                write!(
                    f,
                    "no supported page-table depth covers {requested}-bit IOVAs"
                )
            }
            Self::LevelsNotSupported(l) => {
                write!(f, "{}-level tables not advertised in SAGAW", l.count())
            }
            Self::AlreadyAttached { rid, did } => {
                write!(f, "requester {rid} is already attached to domain {did}")
            }
            Self::DuplicateRequesterId { rid } => write!(f, "requester {rid} given twice"),
            Self::GroupAttachedElsewhere { group, did } => {
                write!(f, "isolation group {group} is attached to domain {did}")
            }
            Self::GroupRequesterIdsDiffer { group } => write!(
                f,
                "isolation group {group} is attached with a different set of requester IDs"
            ),
            Self::EmptyGroup { group } => {
                write!(f, "isolation group {group} has no requester ID")
            }
            Self::AlreadyMember { group, device } => {
                write!(f, "{device} is already a member of isolation group {group}")
            }
            Self::GroupNotAttached { group } => {
                write!(f, "isolation group {group} is not attached to this domain")
            }
            Self::NotAMember { group, device } => write!(
                f,
                "{device} is not an attached member of isolation group {group}"
            ),
            Self::GroupInUse {
                group,
                did,
                members,
            } => write!(
                f,
                "isolation group {group} has {members} member(s) attached to domain {did} by host drivers"
            ),
            Self::AlreadyAssigned { group, did } => {
                write!(f, "isolation group {group} is already assigned to domain {did}")
            }
            Self::GroupAssigned { group, did } => write!(
                f,
                "isolation group {group} is owned as a whole by domain {did}; members cannot attach"
            ),
            Self::GroupQuarantined { group } => {
                write!(f, "isolation group {group} is quarantined")
            }
            Self::GroupNotQuarantined { group } => {
                write!(f, "isolation group {group} is not quarantined")
            }
            Self::PassThroughUnsupported => {
                f.write_str("VT-d unit does not support pass-through (ECAP.PT = 0)")
            }
            Self::NoAtomicStore => f.write_str(
                "no 16-byte atomic store (CMPXCHG16B) to replace a present context entry",
            ),
            Self::DomainOfAnotherUnit { did } => {
                write!(f, "domain {did} belongs to another VT-d unit")
            }
        }
    }
}

impl core::error::Error for VtdError {}

impl From<InvalidationError> for VtdError {
    fn from(e: InvalidationError) -> Self {
        Self::Invalidation(e)
    }
}

impl From<IntRemapError> for VtdError {
    fn from(e: IntRemapError) -> Self {
        Self::InterruptRemapping(e)
    }
}
