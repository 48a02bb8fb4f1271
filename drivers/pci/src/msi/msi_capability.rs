//! The MSI capability (PCI Local Bus 3.0 §6.8.1, capability ID 05h): one message address and
//! data in configuration space, 1-32 vectors that differ in the data's low bits, optional
//! per-vector Mask and Pending bits.
//!
//! Programming rule: the address and data are written only while MSI Enable is clear, so the
//! function can never send a message built from half-written registers. Reprogramming an
//! enabled function therefore disables MSI for the few configuration writes it takes and
//! enables it again.

use core::fmt;

use super::exclusive::msix_enabled;
use super::message::MsiMessage;
use crate::capability::standard_capabilities;
use crate::regs::{msi, CapabilityId, MsiControl};
use crate::{Bdf, ConfigSpace};

/// Why an MSI operation was refused. Nothing was written to the function when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiError {
    /// The function has no MSI capability.
    NotPresent,
    /// The function reads all-ones: it is absent or not responding.
    NotResponding,
    /// The vector count is not a power of two between 1 and 32.
    BadCount {
        /// The count asked for.
        count: u8,
    },
    /// More vectors than Multiple Message Capable advertises.
    TooManyVectors {
        /// The count asked for.
        count: u8,
        /// What the function supports.
        capable: u8,
    },
    /// A message address above 4 GiB for a function with 32-bit Message Address only.
    AddressNeeds64Bit {
        /// The address.
        address: u64,
    },
    /// Message address bits 1:0 must be zero (dword aligned).
    MisalignedAddress {
        /// The address.
        address: u64,
    },
    /// MSI message data is 16 bits wide (extended message data is not used).
    DataTooWide {
        /// The data.
        data: u32,
    },
    /// With `count` vectors the function ORs the vector number into the data's low
    /// `log2(count)` bits, so they must be zero in the programmed data.
    DataNotAligned {
        /// The data.
        data: u32,
        /// The vector count.
        count: u8,
    },
    /// The function does not implement per-vector masking.
    NoPerVectorMasking,
    /// A vector number at or above the function's capable count.
    VectorOutOfRange {
        /// The vector.
        vector: u8,
        /// Vectors the function has.
        capable: u8,
    },
    /// MSI-X is enabled on the function; MSI and MSI-X are mutually exclusive.
    MsixEnabled,
}

impl fmt::Display for MsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPresent => write!(f, "the function has no MSI capability"),
            Self::NotResponding => write!(f, "the function's MSI capability reads all-ones"),
            Self::BadCount { count } => {
                write!(f, "{count} MSI vectors: the count must be a power of two, 1 to 32")
            }
            Self::TooManyVectors { count, capable } => {
                write!(f, "{count} MSI vectors asked, the function supports {capable}")
            }
            Self::AddressNeeds64Bit { address } => write!(
                f,
                "message address {address:#x} needs 64-bit MSI, the function has 32-bit only"
            ),
            Self::MisalignedAddress { address } => {
                write!(f, "message address {address:#x} is not dword aligned")
            }
            Self::DataTooWide { data } => {
                write!(f, "message data {data:#x} does not fit MSI's 16 bits")
            }
            Self::DataNotAligned { data, count } => write!(
                f,
                "message data {data:#x} has low bits set that {count} vectors use for the vector number"
            ),
            Self::NoPerVectorMasking => write!(f, "the function has no per-vector MSI masking"),
            Self::VectorOutOfRange { vector, capable } => {
                write!(f, "MSI vector {vector} out of range (the function has {capable})")
            }
            Self::MsixEnabled => write!(f, "MSI-X is enabled: disable it before enabling MSI"),
        }
    }
}

impl core::error::Error for MsiError {}

/// What a function's MSI capability advertises and its current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    control: MsiControl,
}

impl MsiCapability {
    /// Finds and reads the function's MSI capability.
    ///
    /// # Errors
    ///
    /// [`MsiError::NotPresent`] without one, [`MsiError::NotResponding`] when it reads all-ones.
    pub fn find(cfg: &impl ConfigSpace, bdf: Bdf) -> Result<Self, MsiError> {
        let offset = standard_capabilities(cfg, bdf)
            .entries
            .iter()
            .find(|c| c.id == CapabilityId::MSI)
            .map(|c| c.offset)
            .ok_or(MsiError::NotPresent)?;
        Self::read(cfg, bdf, offset)
    }

    /// Reads the MSI capability at `offset` (from a capability walk).
    ///
    /// # Errors
    ///
    /// [`MsiError::NotResponding`] when Message Control reads all-ones.
    pub fn read(cfg: &impl ConfigSpace, bdf: Bdf, offset: u8) -> Result<Self, MsiError> {
        let raw = cfg.read16(bdf, u16::from(offset) + msi::CONTROL);
        if raw == u16::MAX {
            return Err(MsiError::NotResponding);
        }
        Ok(Self {
            offset,
            control: MsiControl::from_bits(raw),
        })
    }

    /// Whether the function takes a 64-bit message address.
    pub fn is_64bit(&self) -> bool {
        self.control.address_64()
    }

    /// Whether the function has per-vector Mask and Pending bits.
    pub fn per_vector_masking(&self) -> bool {
        self.control.per_vector_masking()
    }

    /// How many vectors the function asks for (Multiple Message Capable, 1-32).
    pub fn vectors_capable(&self) -> u8 {
        vectors(self.control.multiple_message_capable())
    }

    /// How many vectors are allocated (Multiple Message Enable, 1-32).
    pub fn vectors_enabled(&self) -> u8 {
        vectors(self.control.multiple_message_enable())
    }

    /// Whether MSI is enabled.
    pub fn is_enabled(&self) -> bool {
        self.control.enable()
    }

    fn register(&self, offset: u16) -> u16 {
        u16::from(self.offset) + offset
    }

    fn data_register(&self) -> u16 {
        self.register(if self.is_64bit() {
            msi::DATA_64
        } else {
            msi::DATA_32
        })
    }

    fn mask_register(&self) -> u16 {
        self.register(if self.is_64bit() {
            msi::MASK_64
        } else {
            msi::MASK_32
        })
    }

    fn pending_register(&self) -> u16 {
        self.register(if self.is_64bit() {
            msi::PENDING_64
        } else {
            msi::PENDING_32
        })
    }
}

/// `2^encoding`, saturating at 32 (encodings 110b and 111b are reserved).
fn vectors(encoding: u8) -> u8 {
    1 << encoding.min(5)
}

/// `lspci -vv` style: `MSI: Enable- Count=1/1 Maskable- 64bit+`.
impl fmt::Display for MsiCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |b: bool| if b { '+' } else { '-' };
        write!(
            f,
            "MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
            flag(self.is_enabled()),
            self.vectors_enabled(),
            self.vectors_capable(),
            flag(self.per_vector_masking()),
            flag(self.is_64bit())
        )
    }
}

/// One function's MSI capability, programmed through a configuration-space accessor.
#[derive(Debug)]
pub struct Msi<C> {
    cfg: C,
    bdf: Bdf,
    cap: MsiCapability,
}

impl<C: ConfigSpace> Msi<C> {
    /// Finds the MSI capability of `bdf`.
    ///
    /// # Errors
    ///
    /// The errors of [`MsiCapability::find`].
    pub fn new(cfg: C, bdf: Bdf) -> Result<Self, MsiError> {
        let cap = MsiCapability::find(&cfg, bdf)?;
        Ok(Self { cfg, bdf, cap })
    }

    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The capability as last read or written.
    pub fn capability(&self) -> MsiCapability {
        self.cap
    }

    fn write_control(&mut self, control: MsiControl) {
        self.cfg.write16(
            self.bdf,
            self.cap.register(msi::CONTROL),
            control.into_bits(),
        );
        self.cap.control = control;
    }

    /// Re-reads Message Control.
    fn refresh(&mut self) -> Result<MsiControl, MsiError> {
        self.cap = MsiCapability::read(&self.cfg, self.bdf, self.cap.offset)?;
        Ok(self.cap.control)
    }

    /// Allocates `count` vectors (a power of two, at most [`MsiCapability::vectors_capable`])
    /// and programs `message` as vector 0's; vector `i` sends `message.data | i`
    /// ([`Msi::message_for`]). For a compatibility message, `count` consecutive CPU vectors
    /// starting at an aligned one; for a remappable message with a subhandle, `count`
    /// consecutive remapping table entries from handle + subhandle.
    ///
    /// Leaves MSI Enable as it found it; the address and data are written with it clear.
    ///
    /// # Errors
    ///
    /// A [`MsiError`] for a count or message the function cannot take, before any write.
    pub fn configure(&mut self, count: u8, message: MsiMessage) -> Result<(), MsiError> {
        let control = self.refresh()?;
        if !count.is_power_of_two() || count > msi::MAX_VECTORS {
            return Err(MsiError::BadCount { count });
        }
        let capable = self.cap.vectors_capable();
        if count > capable {
            return Err(MsiError::TooManyVectors { count, capable });
        }
        if message.address_high() != 0 && !self.cap.is_64bit() {
            return Err(MsiError::AddressNeeds64Bit {
                address: message.address,
            });
        }
        if !message.address.is_multiple_of(4) {
            return Err(MsiError::MisalignedAddress {
                address: message.address,
            });
        }
        let Ok(data) = u16::try_from(message.data) else {
            return Err(MsiError::DataTooWide { data: message.data });
        };
        if !u32::from(data).is_multiple_of(u32::from(count)) {
            return Err(MsiError::DataNotAligned {
                data: message.data,
                count,
            });
        }
        let was_enabled = control.enable();
        if was_enabled {
            self.write_control(control.with_enable(false));
        }
        let (bdf, cap) = (self.bdf, self.cap);
        self.cfg
            .write32(bdf, cap.register(msi::ADDRESS_LOW), message.address_low());
        if cap.is_64bit() {
            self.cfg
                .write32(bdf, cap.register(msi::ADDRESS_HIGH), message.address_high());
        }
        self.cfg.write16(bdf, cap.data_register(), data);
        // count is a power of two <= 32: its log2 is the 3-bit encoding.
        let encoding = count.trailing_zeros() as u8;
        self.write_control(
            control
                .with_enable(false)
                .with_multiple_message_enable(encoding),
        );
        if was_enabled {
            self.write_control(self.cap.control.with_enable(true));
        }
        Ok(())
    }

    /// The programmed message (vector 0's).
    pub fn message(&self) -> MsiMessage {
        let (bdf, cap) = (self.bdf, self.cap);
        let low = self.cfg.read32(bdf, cap.register(msi::ADDRESS_LOW));
        let high = if cap.is_64bit() {
            self.cfg.read32(bdf, cap.register(msi::ADDRESS_HIGH))
        } else {
            0
        };
        let data = self.cfg.read16(bdf, cap.data_register());
        MsiMessage::from_dwords(low, high, u32::from(data))
    }

    /// The message the function sends for `vector` of the allocated ones: the programmed data
    /// with the vector number in its low bits (PCI Local Bus 3.0 §6.8.1.6).
    ///
    /// # Errors
    ///
    /// [`MsiError::VectorOutOfRange`] for `vector` at or above the enabled count.
    pub fn message_for(&self, vector: u8) -> Result<MsiMessage, MsiError> {
        let enabled = self.cap.vectors_enabled();
        if vector >= enabled {
            return Err(MsiError::VectorOutOfRange {
                vector,
                capable: enabled,
            });
        }
        let base = self.message();
        Ok(MsiMessage {
            data: base.data | u32::from(vector),
            ..base
        })
    }

    /// Sets MSI Enable. The function must have been [`Msi::configure`]d, and needs Bus Master
    /// Enable in its Command register to send messages.
    ///
    /// # Errors
    ///
    /// [`MsiError::MsixEnabled`] (nothing written) when MSI-X is enabled;
    /// [`MsiError::NotResponding`] when the capability reads all-ones.
    pub fn enable(&mut self) -> Result<(), MsiError> {
        let control = self.refresh()?;
        if msix_enabled(&self.cfg, self.bdf) {
            return Err(MsiError::MsixEnabled);
        }
        self.write_control(control.with_enable(true));
        Ok(())
    }

    /// Clears MSI Enable.
    ///
    /// # Errors
    ///
    /// [`MsiError::NotResponding`] when the capability reads all-ones.
    pub fn disable(&mut self) -> Result<(), MsiError> {
        let control = self.refresh()?;
        self.write_control(control.with_enable(false));
        Ok(())
    }

    fn vector_bit(&self, vector: u8) -> Result<u32, MsiError> {
        if !self.cap.per_vector_masking() {
            return Err(MsiError::NoPerVectorMasking);
        }
        let capable = self.cap.vectors_capable();
        if vector >= capable {
            return Err(MsiError::VectorOutOfRange { vector, capable });
        }
        Ok(1 << vector)
    }

    fn set_mask(&mut self, vector: u8, masked: bool) -> Result<(), MsiError> {
        let bit = self.vector_bit(vector)?;
        let register = self.cap.mask_register();
        let bits = self.cfg.read32(self.bdf, register);
        let bits = if masked { bits | bit } else { bits & !bit };
        self.cfg.write32(self.bdf, register, bits);
        Ok(())
    }

    /// Masks `vector`: the function holds its messages (setting its Pending bit instead).
    ///
    /// # Errors
    ///
    /// [`MsiError::NoPerVectorMasking`], [`MsiError::VectorOutOfRange`].
    pub fn mask(&mut self, vector: u8) -> Result<(), MsiError> {
        self.set_mask(vector, true)
    }

    /// Unmasks `vector`; a pending message is sent then.
    ///
    /// # Errors
    ///
    /// [`MsiError::NoPerVectorMasking`], [`MsiError::VectorOutOfRange`].
    pub fn unmask(&mut self, vector: u8) -> Result<(), MsiError> {
        self.set_mask(vector, false)
    }

    /// Whether `vector` is masked.
    ///
    /// # Errors
    ///
    /// [`MsiError::NoPerVectorMasking`], [`MsiError::VectorOutOfRange`].
    pub fn is_masked(&self, vector: u8) -> Result<bool, MsiError> {
        let bit = self.vector_bit(vector)?;
        Ok(self.cfg.read32(self.bdf, self.cap.mask_register()) & bit != 0)
    }

    /// Whether `vector` has a message pending (raised while masked).
    ///
    /// # Errors
    ///
    /// [`MsiError::NoPerVectorMasking`], [`MsiError::VectorOutOfRange`].
    pub fn is_pending(&self, vector: u8) -> Result<bool, MsiError> {
        let bit = self.vector_bit(vector)?;
        Ok(self.cfg.read32(self.bdf, self.cap.pending_register()) & bit != 0)
    }
}
