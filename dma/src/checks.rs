//! Argument checks shared by every public operation (SPEC.md "Rules for every public
//! operation": every argument is validated before anything changes, digest item 8).

use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::attrs::Attrs;
use crate::error::DmaError;

/// No attribute bits beyond the known ones ([`DmaError::UnsupportedAttrs`] otherwise).
pub(crate) fn check_attrs(attrs: Attrs) -> Result<(), DmaError> {
    let unknown = attrs.bits() & !Attrs::all().bits();
    if unknown != 0 {
        return Err(DmaError::UnsupportedAttrs(unknown));
    }
    Ok(())
}

/// `len > 0` and `phys + len - 1` representable.
pub(crate) fn check_range(phys: PhysAddr, len: u64) -> Result<(), DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    phys.checked_add(len - 1)?;
    Ok(())
}

/// Bytes of whole pages covering `len` bytes at `offset` into the first page.
pub(crate) fn page_span(offset: u64, len: u64) -> Result<u64, DmaError> {
    offset
        .checked_add(len)
        .and_then(|b| b.checked_next_multiple_of(PAGE_SIZE))
        .ok_or(DmaError::Overflow { addr: offset, len })
}
