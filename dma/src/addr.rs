//! Typed addresses: CPU physical ([`PhysAddr`]) and device-visible ([`DmaAddr`]).
//!
//! Both are plain `u64` newtypes with checked arithmetic: every `+ len` that could overflow goes
//! through [`PhysAddr::checked_add`] / [`DmaAddr::checked_add`] and reports [`AddrError`], so a
//! caller-supplied `addr + len` overflow is an error, never a wrap.

use core::fmt;

/// The smallest page (and IOMMU granule) size: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

/// Why an address computation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// `addr + len` does not fit in 64 bits.
    Overflow {
        /// The start address.
        addr: u64,
        /// The length added.
        len: u64,
    },
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Overflow { addr, len } => write!(f, "{addr:#x} + {len:#x} overflows 64 bits"),
        }
    }
}

impl core::error::Error for AddrError {}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The raw value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + len`, or an error on overflow.
            ///
            /// # Errors
            ///
            /// [`AddrError::Overflow`] when `self + len` does not fit in 64 bits.
            pub const fn checked_add(self, len: u64) -> Result<Self, AddrError> {
                match self.0.checked_add(len) {
                    Some(v) => Ok(Self(v)),
                    None => Err(AddrError::Overflow { addr: self.0, len }),
                }
            }

            /// Offset within its 4 KiB page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// Rounded down to a 4 KiB boundary.
            pub const fn page_align_down(self) -> Self {
                Self(self.0 & !(PAGE_SIZE - 1))
            }

            /// Whether the address is aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align.wrapping_sub(1)) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A CPU physical address (what `paddr` means in the seeds).
    PhysAddr,
    "PhysAddr"
);

address_type!(
    /// An address as the device puts it on the bus: an IOVA under an IOMMU, or a physical/bus
    /// address on the direct path.
    DmaAddr,
    "DmaAddr"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_reports_overflow() {
        assert_eq!(
            PhysAddr::new(u64::MAX - 1).checked_add(1),
            Ok(PhysAddr::new(u64::MAX))
        );
        assert_eq!(
            PhysAddr::new(u64::MAX - 1).checked_add(2),
            Err(AddrError::Overflow {
                addr: u64::MAX - 1,
                len: 2
            })
        );
        assert_eq!(DmaAddr::new(0x1234).page_offset(), 0x234);
        assert_eq!(DmaAddr::new(0x1234).page_align_down(), DmaAddr::new(0x1000));
        assert!(DmaAddr::new(0x20_0000).is_aligned(0x20_0000));
        assert!(!PhysAddr::new(0xfe41_0024).is_aligned(PAGE_SIZE));
    }
}
