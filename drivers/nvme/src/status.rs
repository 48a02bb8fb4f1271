//! The completion status field (NVM Express 1.4 §4.6.1, Figures 125-129) decoded into types.
//!
//! Bits 15:1 of completion dword 3's upper half: Status Code (SC, 8 bits), Status Code Type
//! (SCT, 3 bits), Command Retry Delay (CRD, 2 bits), More (M) and Do Not Retry (DNR).

use core::fmt;

/// Status Code Types (Figure 126).
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
    /// Path related status.
    pub const PATH: u8 = 3;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// The 15-bit status field of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    field: u16,
}

impl Status {
    /// Successful completion.
    pub const SUCCESS: Self = Self { field: 0 };

    /// From the 15-bit field (completion dword 3 bits 31:17).
    pub const fn from_field(field: u16) -> Self {
        Self {
            field: field & 0x7fff,
        }
    }

    /// A status with type `sct` and code `sc` (DNR and the rest clear).
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self::from_field((sct as u16 & 7) << 8 | sc as u16)
    }

    /// The 15-bit field.
    pub const fn field(&self) -> u16 {
        self.field
    }

    /// Status Code.
    pub const fn code(&self) -> u8 {
        self.field as u8
    }

    /// Status Code Type.
    pub const fn code_type(&self) -> u8 {
        ((self.field >> 8) & 7) as u8
    }

    /// Command Retry Delay index.
    pub const fn retry_delay(&self) -> u8 {
        ((self.field >> 11) & 3) as u8
    }

    /// More information in the Error Information log page.
    pub const fn more(&self) -> bool {
        self.field & (1 << 13) != 0
    }

    /// Do Not Retry: the same command would fail again.
    pub const fn do_not_retry(&self) -> bool {
        self.field & (1 << 14) != 0
    }

    /// Whether the command succeeded (SCT 0, SC 0).
    pub const fn is_success(&self) -> bool {
        self.code_type() == sct::GENERIC && self.code() == 0
    }

    /// `Ok(())` on success, else the decoded error.
    ///
    /// # Errors
    ///
    /// [`CommandError`] for any status but success.
    pub const fn result(&self) -> Result<(), CommandError> {
        if self.is_success() {
            Ok(())
        } else {
            Err(CommandError::decode(*self))
        }
    }
}

/// A failed command's status, decoded (the common codes by name, the rest by value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// Generic 01h: Invalid Command Opcode.
    InvalidOpcode,
    /// Generic 02h: Invalid Field in Command.
    InvalidField,
    /// Generic 03h: Command ID Conflict.
    CommandIdConflict,
    /// Generic 04h: Data Transfer Error (what a controller reports when its DMA fails, e.g. a
    /// translation fault in the IOMMU).
    DataTransfer,
    /// Generic 06h: Internal Error.
    Internal,
    /// Generic 07h: Command Abort Requested.
    AbortRequested,
    /// Generic 08h: Command Aborted due to SQ Deletion.
    AbortedSqDeleted,
    /// Generic 0Bh: Invalid Namespace or Format.
    InvalidNamespace,
    /// Generic 13h: PRP Offset Invalid.
    PrpOffsetInvalid,
    /// Generic 80h: LBA Out of Range.
    LbaOutOfRange,
    /// Generic 81h: Capacity Exceeded.
    CapacityExceeded,
    /// Generic 82h: Namespace Not Ready.
    NamespaceNotReady,
    /// Command specific 01h: Invalid Queue Identifier.
    InvalidQueueId,
    /// Command specific 02h: Invalid Queue Size.
    InvalidQueueSize,
    /// Command specific 08h: Invalid Interrupt Vector (e.g. MSI-X not enabled yet).
    InvalidInterruptVector,
    /// Media 81h: Unrecovered Read Error.
    UnrecoveredRead,
    /// Media 80h: Write Fault.
    WriteFault,
    /// Any other status.
    Other {
        /// Status Code Type.
        sct: u8,
        /// Status Code.
        sc: u8,
        /// Do Not Retry.
        dnr: bool,
    },
}

impl CommandError {
    /// Decodes a non-success status.
    pub const fn decode(status: Status) -> Self {
        match (status.code_type(), status.code()) {
            (sct::GENERIC, 0x01) => Self::InvalidOpcode,
            (sct::GENERIC, 0x02) => Self::InvalidField,
            (sct::GENERIC, 0x03) => Self::CommandIdConflict,
            (sct::GENERIC, 0x04) => Self::DataTransfer,
            (sct::GENERIC, 0x06) => Self::Internal,
            (sct::GENERIC, 0x07) => Self::AbortRequested,
            (sct::GENERIC, 0x08) => Self::AbortedSqDeleted,
            (sct::GENERIC, 0x0b) => Self::InvalidNamespace,
            (sct::GENERIC, 0x13) => Self::PrpOffsetInvalid,
            (sct::GENERIC, 0x80) => Self::LbaOutOfRange,
            (sct::GENERIC, 0x81) => Self::CapacityExceeded,
            (sct::GENERIC, 0x82) => Self::NamespaceNotReady,
            (sct::COMMAND_SPECIFIC, 0x01) => Self::InvalidQueueId,
            (sct::COMMAND_SPECIFIC, 0x02) => Self::InvalidQueueSize,
            (sct::COMMAND_SPECIFIC, 0x08) => Self::InvalidInterruptVector,
            (sct::MEDIA, 0x80) => Self::WriteFault,
            (sct::MEDIA, 0x81) => Self::UnrecoveredRead,
            (sct, sc) => Self::Other {
                sct,
                sc,
                dnr: status.do_not_retry(),
            },
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match *self {
            Self::InvalidOpcode => "invalid command opcode",
            Self::InvalidField => "invalid field in command",
            Self::CommandIdConflict => "command ID conflict",
            Self::DataTransfer => "data transfer error",
            Self::Internal => "internal error",
            Self::AbortRequested => "command abort requested",
            Self::AbortedSqDeleted => "command aborted due to SQ deletion",
            Self::InvalidNamespace => "invalid namespace or format",
            Self::PrpOffsetInvalid => "PRP offset invalid",
            Self::LbaOutOfRange => "LBA out of range",
            Self::CapacityExceeded => "capacity exceeded",
            Self::NamespaceNotReady => "namespace not ready",
            Self::InvalidQueueId => "invalid queue identifier",
            Self::InvalidQueueSize => "invalid queue size",
            Self::InvalidInterruptVector => "invalid interrupt vector",
            Self::WriteFault => "write fault",
            Self::UnrecoveredRead => "unrecovered read error",
            Self::Other { sct, sc, dnr } => {
                return write!(
                    f,
                    "status type {sct:#x} code {sc:#04x}{}",
                    if dnr { " (do not retry)" } else { "" }
                )
            }
        };
        f.write_str(s)
    }
}

impl core::error::Error for CommandError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Completion;

    /// The status field's bit positions (NVMe 1.4 Figure 125: SC 7:0, SCT 10:8, CRD 12:11,
    /// M 13, DNR 14, as bits 31:17 of dword 3 with the phase tag in bit 16), written out.
    #[test]
    fn fields_decode_from_completion_dword_3() {
        // DNR (bit 31), M (30), CRD 2 (29:28), SCT 2 (27:25), SC 0x81 (24:17), phase, CID 7.
        let dw3 = 1 << 31 | 1 << 30 | 0b10 << 28 | 0b010 << 25 | 0x81 << 17 | 1 << 16 | 7;
        let c = Completion::from_dwords([0, 0, 0x0001_0005, dw3]);
        assert_eq!((c.cid, c.phase, c.sq_head, c.sq_id), (7, true, 5, 1));
        let st = c.status;
        assert_eq!((st.code(), st.code_type(), st.retry_delay()), (0x81, 2, 2));
        assert!(st.more() && st.do_not_retry() && !st.is_success());
        assert_eq!(st.result(), Err(CommandError::UnrecoveredRead));
        assert_eq!(Completion::from_dwords(c.to_dwords()), c);
    }

    #[test]
    fn every_named_code_and_the_rest() {
        let named = [
            (sct::GENERIC, 0x01, CommandError::InvalidOpcode),
            (sct::GENERIC, 0x02, CommandError::InvalidField),
            (sct::GENERIC, 0x03, CommandError::CommandIdConflict),
            (sct::GENERIC, 0x04, CommandError::DataTransfer),
            (sct::GENERIC, 0x06, CommandError::Internal),
            (sct::GENERIC, 0x07, CommandError::AbortRequested),
            (sct::GENERIC, 0x08, CommandError::AbortedSqDeleted),
            (sct::GENERIC, 0x0b, CommandError::InvalidNamespace),
            (sct::GENERIC, 0x13, CommandError::PrpOffsetInvalid),
            (sct::GENERIC, 0x80, CommandError::LbaOutOfRange),
            (sct::GENERIC, 0x81, CommandError::CapacityExceeded),
            (sct::GENERIC, 0x82, CommandError::NamespaceNotReady),
            (sct::COMMAND_SPECIFIC, 0x01, CommandError::InvalidQueueId),
            (sct::COMMAND_SPECIFIC, 0x02, CommandError::InvalidQueueSize),
            (
                sct::COMMAND_SPECIFIC,
                0x08,
                CommandError::InvalidInterruptVector,
            ),
            (sct::MEDIA, 0x80, CommandError::WriteFault),
            (sct::MEDIA, 0x81, CommandError::UnrecoveredRead),
        ];
        for (t, c, e) in named {
            assert_eq!(Status::new(t, c).result(), Err(e));
            assert!(!alloc::format!("{e}").is_empty());
        }
        assert_eq!(Status::SUCCESS.result(), Ok(()));
        // Success is SCT 0 / SC 0 only: SC 0 of another type is an error.
        assert_eq!(
            Status::new(sct::MEDIA, 0).result(),
            Err(CommandError::Other {
                sct: 2,
                sc: 0,
                dnr: false
            })
        );
        let vendor = Status::from_field(1 << 14 | (sct::VENDOR as u16) << 8 | 0xc0);
        let e = vendor.result().unwrap_err();
        assert_eq!(
            e,
            CommandError::Other {
                sct: 7,
                sc: 0xc0,
                dnr: true
            }
        );
        assert_eq!(
            alloc::format!("{e}"),
            "status type 0x7 code 0xc0 (do not retry)"
        );
    }
}
