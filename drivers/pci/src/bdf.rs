//! Function addresses: PCI segment group, bus, device and function number.
//!
//! The bus/device/function triple is the *Requester ID* of PCIe Base 4.0 §2.2.6.2 (the source-id
//! an IOMMU sees); the segment group comes from the MCFG table (PCI Firmware 3.2 §4.1.2).

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

    /// Builds an address from a 16-bit requester ID (bus << 8 | device << 3 | function).
    pub const fn from_requester_id(segment: u16, requester_id: u16) -> Self {
        Self {
            segment,
            bus: (requester_id >> 8) as u8,
            devfn: requester_id as u8,
        }
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
    pub const fn requester_id(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }

    /// The same device with another function number.
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
        assert_eq!(bdf.requester_id(), 0x0618);
        assert_eq!(Bdf::new(0, 0xff, 31, 7).unwrap().requester_id(), 0xffff);
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

    proptest! {
        #[test]
        fn requester_id_round_trips(segment: u16, rid: u16) {
            let bdf = Bdf::from_requester_id(segment, rid);
            prop_assert_eq!(bdf.requester_id(), rid);
            prop_assert_eq!(Bdf::new(segment, bdf.bus(), bdf.device(), bdf.function()), Ok(bdf));
            prop_assert_eq!(bdf.to_string().parse::<Bdf>(), Ok(bdf));
        }
    }
}
