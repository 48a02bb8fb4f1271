//! The one PCI function address of the workspace: [`Bdf`] (segment group, bus, device,
//! function) and the 16-bit [`RequesterId`] of PCIe Base 4.0 §2.2.6.2.
//!
//! The bus/device/function triple is the *Requester ID* (the source-id an IOMMU sees, VT-d 3.x
//! §3.4.1); the segment group comes from the MCFG table (PCI Firmware 3.2 §4.1.2) or from the
//! DMAR structure that names the device (VT-d §8.3). Every crate that names a PCI function uses
//! these types: `pci`, `iommu-vtd` and `dma::p2p` re-export them, and the QEMU test model builds
//! its expectations with them, so an address parsed from a fixture, found by enumeration and
//! resolved from a DMAR device scope compare equal.
//!
//! The crate has no dependencies and no `unsafe`, so anything (a parser, a host tool, a test
//! model) can depend on it without pulling in hardware access.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;
use core::str::FromStr;

/// The address of one PCI function: segment group, bus, device (0-31) and function (0-7).
///
/// The fields are private so that a `Bdf` can never hold a device number above 31 or a function
/// number above 7: [`Bdf::requester_id`] could not encode them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    /// Device number in bits 7:3, function number in bits 2:0 (the "devfn" byte).
    devfn: u8,
}

/// Why a [`Bdf`] could not be built or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdfError {
    /// The device number is above 31.
    DeviceOutOfRange(u8),
    /// The function number is above 7.
    FunctionOutOfRange(u8),
    /// The text is not `[ssss:]bb:dd.f` in hexadecimal.
    Syntax,
}

impl fmt::Display for BdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeviceOutOfRange(d) => write!(f, "device number {d} is above 31"),
            Self::FunctionOutOfRange(n) => write!(f, "function number {n} is above 7"),
            Self::Syntax => f.write_str("expected a PCI address of the form [ssss:]bb:dd.f"),
        }
    }
}

impl core::error::Error for BdfError {}

impl Bdf {
    /// Highest device number on a bus.
    pub const MAX_DEVICE: u8 = 31;
    /// Highest function number of a device.
    pub const MAX_FUNCTION: u8 = 7;

    /// Builds an address, refusing device numbers above 31 and function numbers above 7.
    ///
    /// # Errors
    ///
    /// [`BdfError::DeviceOutOfRange`] when `device` is above 31, [`BdfError::FunctionOutOfRange`]
    /// when `function` is above 7.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfError> {
        if device > Self::MAX_DEVICE {
            return Err(BdfError::DeviceOutOfRange(device));
        }
        if function > Self::MAX_FUNCTION {
            return Err(BdfError::FunctionOutOfRange(function));
        }
        Ok(Self {
            segment,
            bus,
            devfn: (device << 3) | function,
        })
    }

    /// Builds an address from a bus number and a devfn byte (device << 3 | function).
    pub const fn from_devfn(segment: u16, bus: u8, devfn: u8) -> Self {
        Self {
            segment,
            bus,
            devfn,
        }
    }

    /// The function of requester ID `requester_id` in segment group `segment`.
    pub const fn from_requester_id(segment: u16, requester_id: RequesterId) -> Self {
        Self::from_devfn(segment, requester_id.bus(), requester_id.devfn())
    }

    /// The PCI segment group.
    pub const fn segment(self) -> u16 {
        self.segment
    }

    /// The bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// The device number (0-31).
    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }

    /// The function number (0-7).
    pub const fn function(self) -> u8 {
        self.devfn & 0x7
    }

    /// The devfn byte: device << 3 | function.
    pub const fn devfn(self) -> u8 {
        self.devfn
    }

    /// The requester ID (PCIe Base 4.0 §2.2.6.2): bus << 8 | device << 3 | function. This is the
    /// source-id an IOMMU uses to find the context entry; it does not include the segment.
    pub const fn requester_id(self) -> RequesterId {
        RequesterId::from_parts(self.bus, self.devfn)
    }

    /// The same device with another function number.
    ///
    /// # Errors
    ///
    /// [`BdfError::FunctionOutOfRange`] when `function` is above 7.
    pub const fn with_function(self, function: u8) -> Result<Self, BdfError> {
        Self::new(self.segment, self.bus, self.device(), function)
    }
}

/// `bb:dd.f`, prefixed with `ssss:` when the segment is not 0 (the form `lspci` prints).
impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segment != 0 {
            write!(f, "{:04x}:", self.segment)?;
        }
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus,
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Bdf({:04x}:{:02x}:{:02x}.{:x})",
            self.segment,
            self.bus,
            self.device(),
            self.function()
        )
    }
}

/// Parses `[ssss:]bb:dd.f` (hexadecimal, as printed by `lspci` and by [`Bdf`]'s `Display`).
///
/// Errors: [`BdfError::Syntax`] for text of another form, the range errors of [`Bdf::new`] for a
/// device above 31 or a function above 7.
impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (head, function) = s.rsplit_once('.').ok_or(BdfError::Syntax)?;
        let mut parts = head.rsplitn(3, ':');
        let device = parts.next().ok_or(BdfError::Syntax)?;
        let bus = parts.next().ok_or(BdfError::Syntax)?;
        let segment = parts.next().unwrap_or("0");
        let hex = |text: &str, max_digits: usize| -> Result<u32, BdfError> {
            if text.is_empty() || text.len() > max_digits {
                return Err(BdfError::Syntax);
            }
            u32::from_str_radix(text, 16).map_err(|_| BdfError::Syntax)
        };
        let segment = hex(segment, 4)? as u16;
        let bus = hex(bus, 2)? as u8;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        let device = u8::try_from(device).map_err(|_| BdfError::Syntax)?;
        let function = u8::try_from(function).map_err(|_| BdfError::Syntax)?;
        Self::new(segment, bus, device, function)
    }
}

/// A PCIe requester ID (PCIe Base 4.0 §2.2.6.2): bus << 8 | device << 3 | function, the
/// source-id an IOMMU indexes its root and context tables with (VT-d 3.x §3.4.1).
///
/// Every `u16` is a valid requester ID (device and function have exactly 5 and 3 bits), so the
/// conversions from and to `u16` are infallible. The segment group is not part of it: a
/// requester ID is only meaningful together with the segment of the unit or bus that saw it,
/// which [`RequesterId::with_segment`] adds back.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RequesterId(u16);

impl RequesterId {
    /// The requester ID whose raw value is `raw`.
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }

    /// The requester ID of `bus` and a devfn byte (device << 3 | function).
    pub const fn from_parts(bus: u8, devfn: u8) -> Self {
        Self(((bus as u16) << 8) | devfn as u16)
    }

    /// The raw 16-bit value, as a DMA fault record or a context-entry index carries it.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The bus number (bits 15:8).
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// The devfn byte (bits 7:0): device << 3 | function, the context entry's index in its bus's
    /// context table.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }

    /// The device number (bits 7:3, 0-31).
    pub const fn device(self) -> u8 {
        self.devfn() >> 3
    }

    /// The function number (bits 2:0, 0-7).
    pub const fn function(self) -> u8 {
        self.devfn() & 0x7
    }

    /// The function with this requester ID in segment group `segment`.
    pub const fn with_segment(self, segment: u16) -> Bdf {
        Bdf::from_requester_id(segment, self)
    }
}

impl From<Bdf> for RequesterId {
    fn from(bdf: Bdf) -> Self {
        bdf.requester_id()
    }
}

impl From<u16> for RequesterId {
    fn from(raw: u16) -> Self {
        Self(raw)
    }
}

impl From<RequesterId> for u16 {
    fn from(rid: RequesterId) -> Self {
        rid.0
    }
}

/// `bb:dd.f`, the form a fault record's source is printed in (no segment: a requester ID has
/// none).
impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequesterId({self} = {:#06x})", self.0)
    }
}

/// The raw value in hexadecimal, with the formatter's flags (`{:#06x}` prints `0x0018`), for
/// logs that show the number a fault record or a context-cache invalidation carries.
impl fmt::LowerHex for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_omits_segment_zero() {
        let bdf = Bdf::new(0, 0x42, 0x1f, 3).unwrap();
        assert_eq!(bdf.to_string(), "42:1f.3");
        assert_eq!(Bdf::new(1, 0, 2, 0).unwrap().to_string(), "0001:00:02.0");
    }

    #[test]
    fn requester_id_layout() {
        let bdf = Bdf::new(0, 0x06, 0x03, 0).unwrap();
        assert_eq!(bdf.requester_id().get(), 0x0618);
        assert_eq!(
            Bdf::new(0, 0xff, 31, 7).unwrap().requester_id().get(),
            0xffff
        );
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        assert_eq!(Bdf::new(0, 0, 32, 0), Err(BdfError::DeviceOutOfRange(32)));
        assert_eq!(Bdf::new(0, 0, 0, 8), Err(BdfError::FunctionOutOfRange(8)));
        assert_eq!(
            "00:20.0".parse::<Bdf>(),
            Err(BdfError::DeviceOutOfRange(0x20))
        );
        assert_eq!(
            "00:1f.8".parse::<Bdf>(),
            Err(BdfError::FunctionOutOfRange(8))
        );
        for bad in [
            "",
            "00:00",
            "0:0:0:0.0",
            "zz:00.0",
            "00:00.",
            "100:00.0",
            "00:00.10",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn requester_id_fields_and_display() {
        let bdf = Bdf::new(7, 0x40, 0x1f, 3).unwrap();
        let rid = RequesterId::from(bdf);
        assert_eq!(rid.get(), 0x40fb);
        assert_eq!((rid.bus(), rid.device(), rid.function()), (0x40, 0x1f, 3));
        assert_eq!(rid.devfn(), 0xfb);
        assert_eq!(rid.to_string(), "40:1f.3");
        assert_eq!(format!("{rid:?}"), "RequesterId(40:1f.3 = 0x40fb)");
        // The segment is not part of a requester ID: it comes back only when given.
        assert_eq!(rid.with_segment(7), bdf);
        assert_ne!(rid.with_segment(0), bdf);
        assert_eq!(RequesterId::new(0x0018).to_string(), "00:03.0");
        assert_eq!(format!("{:#06x} {:x}", rid, rid), "0x40fb 40fb");
    }

    proptest! {
        #[test]
        fn requester_id_round_trips(segment: u16, rid: u16) {
            let bdf = Bdf::from_requester_id(segment, RequesterId::new(rid));
            prop_assert_eq!(bdf.requester_id().get(), rid);
            prop_assert_eq!(Bdf::new(segment, bdf.bus(), bdf.device(), bdf.function()), Ok(bdf));
            prop_assert_eq!(bdf.to_string().parse::<Bdf>(), Ok(bdf));
        }

        #[test]
        fn typed_requester_id_matches_raw(segment: u16, raw: u16) {
            let rid = RequesterId::new(raw);
            let bdf = rid.with_segment(segment);
            prop_assert_eq!(bdf.requester_id(), rid);
            prop_assert_eq!(u16::from(RequesterId::from(bdf)), raw);
            prop_assert_eq!(
                (rid.bus(), rid.device(), rid.function()),
                (bdf.bus(), bdf.device(), bdf.function())
            );
            prop_assert_eq!(rid.to_string(), Bdf::from_requester_id(0, rid).to_string());
        }
    }
}
