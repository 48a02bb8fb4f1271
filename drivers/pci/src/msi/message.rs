//! The x86 interrupt message a device writes to signal an MSI or MSI-X vector: the
//! compatibility format of the Intel SDM vol. 3 §11.11 ("Message Signalled Interrupts", also
//! VT-d spec §5.1.2.1) and the remappable format of VT-d spec §5.1.2.2 / §5.1.5.2.
//!
//! A message is a dword memory write of `data` to `address` in the 0xFEEx_xxxx window. In the
//! compatibility format the address names the destination APIC and the data the vector; in the
//! remappable format (address bit 4 set) the address carries a 16-bit *handle* into the
//! interrupt remapping table and, with SHV set, the data carries a *subhandle* added to it, so
//! the remapping hardware (not the device) decides vector and destination.
//!
//! Every field is declared once below with `bitfield-struct`; [`MsiMessage::decode`] is the
//! inverse of the two constructors and is what tests and device fakes use to see what a device
//! would deliver.

use core::fmt;

use bitfield_struct::bitfield;

/// Bits 31:20 of every interrupt message address (SDM §11.11.1).
pub const INTERRUPT_ADDRESS_BASE: u16 = 0xfee;

/// The lowest vector a compatibility-format message may carry: vectors 0-15 are reserved for
/// exceptions and the APIC reports them as illegal (SDM §10.5.2, §11.11.2).
pub const FIRST_VALID_VECTOR: u8 = 16;

/// Delivery Mode of a compatibility-format message (SDM §11.11.2, data bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryMode {
    /// 000b: deliver to all destination processors.
    Fixed,
    /// 001b: deliver to the lowest-priority processor among the destinations.
    LowestPriority,
    /// 010b: System Management Interrupt (vector ignored).
    Smi,
    /// 100b: Non-Maskable Interrupt (vector ignored).
    Nmi,
    /// 101b: INIT (vector ignored).
    Init,
    /// 111b: external interrupt (ExtINT), delivered as if from an 8259 PIC.
    ExtInt,
    /// A reserved encoding (011b, 110b), only produced by decoding.
    Reserved(u8),
}

impl DeliveryMode {
    /// The 3-bit encoding.
    pub const fn into_bits(self) -> u8 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::ExtInt => 0b111,
            Self::Reserved(bits) => bits,
        }
    }

    /// Decodes a 3-bit encoding.
    pub const fn from_bits(bits: u8) -> Self {
        match bits {
            0b000 => Self::Fixed,
            0b001 => Self::LowestPriority,
            0b010 => Self::Smi,
            0b100 => Self::Nmi,
            0b101 => Self::Init,
            0b111 => Self::ExtInt,
            other => Self::Reserved(other),
        }
    }
}

/// Destination Mode of a compatibility-format message (address bit 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationMode {
    /// The destination ID is an APIC ID.
    Physical,
    /// The destination ID is a logical destination (matched against each LAPIC's LDR/DFR).
    Logical,
}

impl DestinationMode {
    /// The address bit: 1 for logical.
    pub const fn into_bits(self) -> u8 {
        matches!(self, Self::Logical) as u8
    }

    /// Decodes the address bit (any non-zero value is logical).
    pub const fn from_bits(bit: u8) -> Self {
        if bit != 0 {
            Self::Logical
        } else {
            Self::Physical
        }
    }
}

/// Trigger Mode of a compatibility-format message (data bit 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerMode {
    /// Edge triggered (what MSI is in practice).
    Edge,
    /// Level triggered.
    Level,
}

impl TriggerMode {
    /// The data bit: 1 for level.
    pub const fn into_bits(self) -> u8 {
        matches!(self, Self::Level) as u8
    }

    /// Decodes the data bit (any non-zero value is level).
    pub const fn from_bits(bit: u8) -> Self {
        if bit != 0 {
            Self::Level
        } else {
            Self::Edge
        }
    }
}

// Typed fields, listed from bit 0 up; `__` is reserved space.

/// Compatibility-format message address (SDM §11.11.1, VT-d §5.1.2.1).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
struct CompatibilityAddress {
    /// Bits 1:0: don't care.
    #[bits(2)]
    __: u8,
    /// Destination Mode (bit 2).
    #[bits(1, from = DestinationMode::from_bits, into = DestinationMode::into_bits)]
    destination_mode: DestinationMode,
    /// Redirection Hint (bit 3): with logical mode, the message may go to any one destination.
    redirection_hint: bool,
    /// Interrupt Format (bit 4): 0 for compatibility.
    remappable: bool,
    /// Bits 11:5: reserved.
    #[bits(7)]
    __: u8,
    /// Destination ID (bits 19:12): an xAPIC ID (or logical destination).
    destination_id: u8,
    /// Bits 31:20: 0xFEE.
    #[bits(12)]
    base: u16,
}

/// Remappable-format message address (VT-d §5.1.2.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
struct RemappableAddress {
    /// Bits 1:0: don't care.
    #[bits(2)]
    __: u8,
    /// Handle bit 15 (bit 2).
    handle_high: bool,
    /// SubHandle Valid (bit 3): the data's low 16 bits are added to the handle.
    shv: bool,
    /// Interrupt Format (bit 4): 1 for remappable.
    remappable: bool,
    /// Handle bits 14:0 (bits 19:5).
    #[bits(15)]
    handle_low: u16,
    /// Bits 31:20: 0xFEE.
    #[bits(12)]
    base: u16,
}

/// How [`RemappableAddress`] splits a 16-bit handle.
#[bitfield(u16)]
#[derive(PartialEq, Eq)]
struct Handle {
    /// Handle bits 14:0.
    #[bits(15)]
    low: u16,
    /// Handle bit 15.
    high: bool,
}

/// Compatibility-format message data (SDM §11.11.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
struct CompatibilityData {
    /// Vector (bits 7:0).
    vector: u8,
    /// Delivery Mode (bits 10:8).
    #[bits(3, from = DeliveryMode::from_bits, into = DeliveryMode::into_bits)]
    delivery_mode: DeliveryMode,
    /// Bits 13:11: reserved.
    #[bits(3)]
    __: u8,
    /// Level (bit 14): 1 = assert. Ignored for edge-triggered messages.
    level_assert: bool,
    /// Trigger Mode (bit 15).
    #[bits(1, from = TriggerMode::from_bits, into = TriggerMode::into_bits)]
    trigger_mode: TriggerMode,
    /// Bits 31:16: reserved.
    #[bits(16)]
    __: u16,
}

/// Remappable-format message data (VT-d §5.1.2.2): the subhandle when SHV is set.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
struct RemappableData {
    /// Subhandle (bits 15:0).
    subhandle: u16,
    /// Bits 31:16: reserved.
    #[bits(16)]
    __: u16,
}

/// A 64-bit message address as the two dwords devices store (Message Address and Message
/// Upper Address).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub(crate) struct AddressDwords {
    /// Bits 31:0: Message Address.
    pub(crate) low: u32,
    /// Bits 63:32: Message Upper Address.
    pub(crate) high: u32,
}

/// Why a message could not be built or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// A compatibility-format message with a vector below 16 (reserved for exceptions; the
    /// APIC would report an illegal vector).
    ReservedVector {
        /// The vector asked for.
        vector: u8,
    },
    /// The address is not in the interrupt window 0xFEEx_xxxx (upper 32 bits zero).
    NotAnInterruptAddress {
        /// The address.
        address: u64,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedVector { vector } => write!(
                f,
                "vector {vector} is reserved (compatibility-format vectors start at {FIRST_VALID_VECTOR})"
            ),
            Self::NotAnInterruptAddress { address } => {
                write!(f, "{address:#x} is not an interrupt message address (0xfeex_xxxx)")
            }
        }
    }
}

impl core::error::Error for MessageError {}

/// The fields of a compatibility-format message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompatibilityMessage {
    /// Destination APIC ID (xAPIC: 8 bits).
    pub destination_id: u8,
    /// Vector.
    pub vector: u8,
    /// Delivery mode.
    pub delivery_mode: DeliveryMode,
    /// Destination mode.
    pub destination_mode: DestinationMode,
    /// Redirection hint.
    pub redirection_hint: bool,
    /// Trigger mode.
    pub trigger_mode: TriggerMode,
    /// The Level bit (assert).
    pub level_assert: bool,
}

/// The fields of a remappable-format message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemappableMessage {
    /// Handle: the interrupt remapping table index (plus the subhandle, when present).
    pub handle: u16,
    /// Subhandle, present when SHV is set.
    pub subhandle: Option<u16>,
}

impl RemappableMessage {
    /// The interrupt remapping table index the hardware computes (VT-d §5.1.5.2): handle +
    /// subhandle with SHV, handle alone without. `None` when the sum leaves 16 bits.
    pub fn interrupt_index(&self) -> Option<u16> {
        self.handle.checked_add(self.subhandle.unwrap_or(0))
    }
}

/// A decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodedMessage {
    /// Compatibility format: the device names vector and destination itself.
    Compatibility(CompatibilityMessage),
    /// Remappable format: the interrupt remapping table decides.
    Remappable(RemappableMessage),
}

/// An interrupt message: the address and data a device writes to raise one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Message address (0xFEEx_xxxx on x86; the upper 32 bits are zero).
    pub address: u64,
    /// Message data (the low 16 bits are what MSI without extended data carries).
    pub data: u32,
}

impl MsiMessage {
    /// A compatibility-format message: `vector` delivered to APIC `destination_id`. The Level
    /// bit is set (assert), which edge-triggered delivery ignores and level-triggered delivery
    /// requires.
    ///
    /// # Errors
    ///
    /// [`MessageError::ReservedVector`] for vectors below 16.
    pub fn compatibility(
        destination_id: u8,
        vector: u8,
        delivery_mode: DeliveryMode,
        destination_mode: DestinationMode,
        redirection_hint: bool,
        trigger_mode: TriggerMode,
    ) -> Result<Self, MessageError> {
        if vector < FIRST_VALID_VECTOR {
            return Err(MessageError::ReservedVector { vector });
        }
        let address = CompatibilityAddress::new()
            .with_destination_mode(destination_mode)
            .with_redirection_hint(redirection_hint)
            .with_remappable(false)
            .with_destination_id(destination_id)
            .with_base(INTERRUPT_ADDRESS_BASE);
        let data = CompatibilityData::new()
            .with_vector(vector)
            .with_delivery_mode(delivery_mode)
            .with_level_assert(true)
            .with_trigger_mode(trigger_mode);
        Ok(Self {
            address: u64::from(address.into_bits()),
            data: data.into_bits(),
        })
    }

    /// A fixed, physical-destination, edge-triggered compatibility message: the common case.
    ///
    /// # Errors
    ///
    /// [`MessageError::ReservedVector`] for vectors below 16.
    pub fn fixed(destination_id: u8, vector: u8) -> Result<Self, MessageError> {
        Self::compatibility(
            destination_id,
            vector,
            DeliveryMode::Fixed,
            DestinationMode::Physical,
            false,
            TriggerMode::Edge,
        )
    }

    /// A remappable-format message naming interrupt remapping table entry `handle` (plus
    /// `subhandle`, which sets SHV and goes in the data).
    pub fn remappable(handle: u16, subhandle: Option<u16>) -> Self {
        let split = Handle::from_bits(handle);
        let address = RemappableAddress::new()
            .with_handle_high(split.high())
            .with_shv(subhandle.is_some())
            .with_remappable(true)
            .with_handle_low(split.low())
            .with_base(INTERRUPT_ADDRESS_BASE);
        let data = RemappableData::new().with_subhandle(subhandle.unwrap_or(0));
        Self {
            address: u64::from(address.into_bits()),
            data: data.into_bits(),
        }
    }

    /// The Message Address dword.
    pub fn address_low(&self) -> u32 {
        AddressDwords::from_bits(self.address).low()
    }

    /// The Message Upper Address dword.
    pub fn address_high(&self) -> u32 {
        AddressDwords::from_bits(self.address).high()
    }

    /// A message from the two address dwords and the data a device holds.
    pub fn from_dwords(address_low: u32, address_high: u32, data: u32) -> Self {
        Self {
            address: AddressDwords::new()
                .with_low(address_low)
                .with_high(address_high)
                .into_bits(),
            data,
        }
    }

    /// What the message means to the platform.
    ///
    /// # Errors
    ///
    /// [`MessageError::NotAnInterruptAddress`] when the address is outside 0xFEEx_xxxx (such a
    /// write is ordinary DMA, not an interrupt).
    pub fn decode(&self) -> Result<DecodedMessage, MessageError> {
        let dwords = AddressDwords::from_bits(self.address);
        let compat = CompatibilityAddress::from_bits(dwords.low());
        if dwords.high() != 0 || compat.base() != INTERRUPT_ADDRESS_BASE {
            return Err(MessageError::NotAnInterruptAddress {
                address: self.address,
            });
        }
        if compat.remappable() {
            let address = RemappableAddress::from_bits(dwords.low());
            let handle = Handle::new()
                .with_low(address.handle_low())
                .with_high(address.handle_high())
                .into_bits();
            let subhandle = address
                .shv()
                .then(|| RemappableData::from_bits(self.data).subhandle());
            return Ok(DecodedMessage::Remappable(RemappableMessage {
                handle,
                subhandle,
            }));
        }
        let data = CompatibilityData::from_bits(self.data);
        Ok(DecodedMessage::Compatibility(CompatibilityMessage {
            destination_id: compat.destination_id(),
            vector: data.vector(),
            delivery_mode: data.delivery_mode(),
            destination_mode: compat.destination_mode(),
            redirection_hint: compat.redirection_hint(),
            trigger_mode: data.trigger_mode(),
            level_assert: data.level_assert(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Expected values are assembled from the spec tables' bit positions, independently of the
    // declarations above.

    #[test]
    fn compatibility_layout_follows_the_sdm() {
        let m = MsiMessage::compatibility(
            0x5a,
            0x41,
            DeliveryMode::LowestPriority,
            DestinationMode::Logical,
            true,
            TriggerMode::Level,
        )
        .unwrap();
        // Address: 31:20 = FEEh, 19:12 destination, 3 RH, 2 DM, 4 format = 0.
        assert_eq!(m.address, 0xfee0_0000 | 0x5a << 12 | 1 << 3 | 1 << 2);
        // Data: 7:0 vector, 10:8 delivery mode, 14 level, 15 trigger.
        assert_eq!(m.data, 0x41 | 0b001 << 8 | 1 << 14 | 1 << 15);
        let fixed = MsiMessage::fixed(0, 0x30).unwrap();
        assert_eq!(fixed.address, 0xfee0_0000);
        assert_eq!(fixed.data, 0x30 | 1 << 14);
    }

    #[test]
    fn remappable_layout_follows_vtd() {
        // VT-d §5.1.2.2: 19:5 handle[14:0], 4 = 1, 3 SHV, 2 handle[15].
        let m = MsiMessage::remappable(0x8123, Some(0x7));
        assert_eq!(
            m.address,
            0xfee0_0000 | 0x0123 << 5 | 1 << 4 | 1 << 3 | 1 << 2
        );
        assert_eq!(m.data, 0x7);
        let m = MsiMessage::remappable(0x7fff, None);
        assert_eq!(m.address, 0xfee0_0000 | 0x7fff << 5 | 1 << 4);
        assert_eq!(m.data, 0);
    }

    #[test]
    fn reserved_vectors_are_refused() {
        for vector in 0..FIRST_VALID_VECTOR {
            assert_eq!(
                MsiMessage::fixed(0, vector),
                Err(MessageError::ReservedVector { vector })
            );
        }
        assert!(MsiMessage::fixed(0, FIRST_VALID_VECTOR).is_ok());
    }

    #[test]
    fn non_interrupt_addresses_do_not_decode() {
        for address in [0, 0xfed0_0000, 0x1_fee0_0000, 0xfff0_0000] {
            let m = MsiMessage {
                address,
                data: 0x30,
            };
            assert_eq!(
                m.decode(),
                Err(MessageError::NotAnInterruptAddress { address })
            );
        }
    }

    #[test]
    fn dwords_split_and_join() {
        let m = MsiMessage::from_dwords(0xfee0_1000, 0x1234_5678, 0x4041);
        assert_eq!(m.address, 0x1234_5678_fee0_1000);
        assert_eq!(
            (m.address_low(), m.address_high()),
            (0xfee0_1000, 0x1234_5678)
        );
    }

    #[test]
    fn interrupt_index_adds_the_subhandle() {
        let index = |handle, subhandle| RemappableMessage { handle, subhandle }.interrupt_index();
        assert_eq!(index(10, None), Some(10));
        assert_eq!(index(10, Some(3)), Some(13));
        assert_eq!(index(u16::MAX, Some(1)), None);
    }

    fn delivery_mode() -> impl Strategy<Value = DeliveryMode> {
        prop_oneof![
            Just(DeliveryMode::Fixed),
            Just(DeliveryMode::LowestPriority),
            Just(DeliveryMode::Smi),
            Just(DeliveryMode::Nmi),
            Just(DeliveryMode::Init),
            Just(DeliveryMode::ExtInt),
        ]
    }

    proptest! {
        #[test]
        fn compatibility_round_trips(
            destination_id: u8,
            vector in FIRST_VALID_VECTOR..=u8::MAX,
            delivery_mode in delivery_mode(),
            logical: bool,
            redirection_hint: bool,
            level: bool,
        ) {
            let destination_mode = DestinationMode::from_bits(u8::from(logical));
            let trigger_mode = TriggerMode::from_bits(u8::from(level));
            let m = MsiMessage::compatibility(
                destination_id, vector, delivery_mode, destination_mode, redirection_hint,
                trigger_mode,
            ).unwrap();
            prop_assert_eq!(m.address >> 20, 0xfee);
            prop_assert_eq!(m.address & 1 << 4, 0);
            prop_assert_eq!(m.data >> 16, 0);
            prop_assert_eq!(m.decode(), Ok(DecodedMessage::Compatibility(CompatibilityMessage {
                destination_id, vector, delivery_mode, destination_mode, redirection_hint,
                trigger_mode, level_assert: true,
            })));
        }

        #[test]
        fn remappable_round_trips(handle: u16, subhandle: Option<u16>) {
            let m = MsiMessage::remappable(handle, subhandle);
            prop_assert_eq!(m.address >> 20, 0xfee);
            prop_assert_eq!(m.address & 1 << 4, 1 << 4);
            prop_assert_eq!(
                m.decode(),
                Ok(DecodedMessage::Remappable(RemappableMessage { handle, subhandle }))
            );
        }

        /// Every address in the window decodes to something and re-encodes to the same
        /// message, modulo the don't-care and reserved bits.
        #[test]
        fn decode_is_total_on_the_window(low in 0u32..0x10_0000, data: u16) {
            let m = MsiMessage { address: u64::from(0xfee0_0000 | low), data: u32::from(data) };
            match m.decode().unwrap() {
                DecodedMessage::Remappable(r) => {
                    let again = MsiMessage::remappable(r.handle, r.subhandle);
                    prop_assert_eq!(again.address, m.address & !0b11);
                }
                DecodedMessage::Compatibility(c) => {
                    prop_assert_eq!(u32::from(c.vector), u32::from(data) & 0xff);
                    prop_assert_eq!(u64::from(c.destination_id), u64::from(low) >> 12);
                }
            }
        }
    }
}
