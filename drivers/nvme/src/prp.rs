//! Physical Region Page entries and lists: how a command names its data buffer (NVM Express 1.4
//! §4.3, Figure 88-90).
//!
//! A transfer is described by PRP1 and PRP2 of the submission entry:
//! - PRP1 is the first page's address and may carry an offset into that page (dword aligned);
//! - when the transfer ends in the first page, PRP2 is unused (0);
//! - when it ends in the second page, PRP2 is that page's address (offset 0);
//! - otherwise PRP2 points to a **PRP list**: page-aligned entries for the second and later
//!   pages. A list page holds `page_size / 8` entries; when more are needed, the last entry of
//!   a full list page points to the next list page instead of to data.
//!
//! A buffer given as several DMA segments (a scatter list after mapping) can be described only
//! when it is contiguous *in pages*: every segment but the first starts on a page boundary and
//! every segment but the last ends on one. [`build`] checks that and refuses the rest with a
//! typed [`PrpError`]; callers bounce or split such buffers. The list pages themselves are DMA
//! memory the caller provides through [`PrpListMemory`] (the controller fetches them).
//!
//! [`walk`] is the other side: what a controller does with PRP1, PRP2 and the list pages. The
//! host tests and the fake controller use it as the model [`build`] must agree with.

use core::fmt;

/// One DMA segment of a transfer: a device address and a length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Device (DMA) address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Segment {
    /// A segment of `len` bytes at `addr`.
    pub const fn new(addr: u64, len: u64) -> Self {
        Self { addr, len }
    }
}

/// PRP1 and PRP2 of a command, and how much of the list memory they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prps {
    /// PRP entry 1: the first page, with the buffer's offset.
    pub prp1: u64,
    /// PRP entry 2: 0, the second page, or the first list page.
    pub prp2: u64,
    /// PRP list entries written (data pointers and chain pointers).
    pub list_entries: usize,
    /// List pages used.
    pub list_pages: usize,
}

/// Why a buffer cannot be described with PRPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrpError {
    /// No segments, or a total length of 0.
    Empty,
    /// A segment of length 0.
    EmptySegment {
        /// Its index.
        index: usize,
    },
    /// The page size is not a power of two from 4 KiB to 128 MiB (CC.MPS range).
    BadPageSize(u64),
    /// The first address is not dword aligned (PRP bits 1:0 must be 0).
    Misaligned {
        /// The address.
        addr: u64,
    },
    /// A segment other than the first does not start on a page boundary.
    GapBefore {
        /// Its index.
        index: usize,
        /// Its address.
        addr: u64,
    },
    /// A segment other than the last does not end on a page boundary.
    GapAfter {
        /// Its index.
        index: usize,
        /// Its end address.
        end: u64,
    },
    /// A segment runs past the top of the 64-bit address space.
    Overflow {
        /// Its index.
        index: usize,
    },
    /// The list memory has fewer pages than the transfer needs.
    ListTooSmall {
        /// List pages needed.
        needed: usize,
        /// List pages available.
        available: usize,
    },
    /// A list page's DMA address is not page aligned.
    ListMisaligned {
        /// The address.
        addr: u64,
    },
}

impl fmt::Display for PrpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("empty transfer"),
            Self::EmptySegment { index } => write!(f, "segment {index} has length 0"),
            Self::BadPageSize(size) => write!(f, "memory page size {size:#x} is not valid"),
            Self::Misaligned { addr } => {
                write!(f, "first PRP address {addr:#x} is not dword aligned")
            }
            Self::GapBefore { index, addr } => write!(
                f,
                "segment {index} starts at {addr:#x}, not on a page boundary"
            ),
            Self::GapAfter { index, end } => write!(
                f,
                "segment {index} ends at {end:#x}, not on a page boundary"
            ),
            Self::Overflow { index } => write!(f, "segment {index} overflows the address space"),
            Self::ListTooSmall { needed, available } => write!(
                f,
                "transfer needs {needed} PRP list pages, {available} available"
            ),
            Self::ListMisaligned { addr } => {
                write!(f, "PRP list page {addr:#x} is not page aligned")
            }
        }
    }
}

impl core::error::Error for PrpError {}

/// Memory for PRP list pages: `page_size` bytes each, page aligned, reachable by the device.
pub trait PrpListMemory {
    /// How many list pages there are.
    fn pages(&self) -> usize;
    /// The device address of list page `page` (below [`PrpListMemory::pages`]).
    fn page_addr(&self, page: usize) -> u64;
    /// Writes entry `index` of list page `page`.
    fn write(&mut self, page: usize, index: usize, value: u64);
}

/// Checks a memory page size: a power of two from 4 KiB to 128 MiB (CC.MPS 0-15).
fn check_page_size(page_size: u64) -> Result<(), PrpError> {
    if page_size.is_power_of_two() && (4096..=1 << 27).contains(&page_size) {
        Ok(())
    } else {
        Err(PrpError::BadPageSize(page_size))
    }
}

/// The page addresses of a transfer, in order: the first with its offset, the rest page
/// aligned. Checks every rule of the module docs.
fn pages(
    segments: &[Segment],
    page_size: u64,
) -> Result<impl Iterator<Item = u64> + Clone + '_, PrpError> {
    check_page_size(page_size)?;
    let offset_mask = page_size - 1;
    let first = segments.first().ok_or(PrpError::Empty)?;
    if first.addr & 3 != 0 {
        return Err(PrpError::Misaligned { addr: first.addr });
    }
    let last = segments.len() - 1;
    for (index, s) in segments.iter().enumerate() {
        if s.len == 0 {
            return Err(PrpError::EmptySegment { index });
        }
        let end = s
            .addr
            .checked_add(s.len)
            .ok_or(PrpError::Overflow { index })?;
        if index > 0 && s.addr & offset_mask != 0 {
            return Err(PrpError::GapBefore {
                index,
                addr: s.addr,
            });
        }
        if index < last && end & offset_mask != 0 {
            return Err(PrpError::GapAfter { index, end });
        }
    }
    Ok(segments.iter().enumerate().flat_map(move |(index, s)| {
        let base = s.addr & !offset_mask;
        let end = s.addr + s.len;
        let count = (end - base).div_ceil(page_size);
        (0..count).map(move |i| {
            if index == 0 && i == 0 {
                s.addr
            } else {
                base + i * page_size
            }
        })
    }))
}

/// How many memory pages the transfer touches (its PRP entries, list pointers excluded).
///
/// # Errors
///
/// The [`PrpError`] [`build`] would return for the same segments (list size aside).
pub fn page_count(segments: &[Segment], page_size: u64) -> Result<usize, PrpError> {
    Ok(pages(segments, page_size)?.count())
}

/// List pages needed for a transfer of `pages` memory pages.
pub const fn list_pages_needed(pages: usize, page_size: u64) -> usize {
    let per_page = (page_size / 8) as usize;
    if pages <= 2 || per_page < 2 {
        return 0;
    }
    let entries = pages - 1;
    if entries <= per_page {
        1
    } else {
        // Every page but the last holds per_page - 1 data entries and one chain pointer.
        (entries - 1).div_ceil(per_page - 1)
    }
}

/// Describes `segments` with PRP1, PRP2 and, when needed, list pages written into `list`.
///
/// # Errors
///
/// [`PrpError`] when the segments break a rule of the module docs or `list` is too small;
/// nothing is written to `list` then.
pub fn build(
    segments: &[Segment],
    page_size: u64,
    list: &mut impl PrpListMemory,
) -> Result<Prps, PrpError> {
    let mut all = pages(segments, page_size)?;
    let count = all.clone().count();
    let prp1 = all.next().ok_or(PrpError::Empty)?;
    let needed = list_pages_needed(count, page_size);
    let mut prps = Prps {
        prp1,
        prp2: 0,
        list_entries: 0,
        list_pages: needed,
    };
    if count == 1 {
        return Ok(prps);
    }
    if needed == 0 {
        prps.prp2 = all.next().ok_or(PrpError::Empty)?;
        return Ok(prps);
    }
    if list.pages() < needed {
        return Err(PrpError::ListTooSmall {
            needed,
            available: list.pages(),
        });
    }
    for page in 0..needed {
        let addr = list.page_addr(page);
        if addr & (page_size - 1) != 0 {
            return Err(PrpError::ListMisaligned { addr });
        }
    }
    let per_page = (page_size / 8) as usize;
    prps.prp2 = list.page_addr(0);
    let mut remaining = count - 1;
    let mut written = 0;
    for page in 0..needed {
        let last_page = page + 1 == needed;
        let data = if last_page { remaining } else { per_page - 1 };
        for (index, addr) in all.by_ref().take(data).enumerate() {
            list.write(page, index, addr);
        }
        written += data;
        remaining -= data;
        if !last_page {
            list.write(page, per_page - 1, list.page_addr(page + 1));
            written += 1;
        }
    }
    prps.list_entries = written;
    Ok(prps)
}

/// What a controller does with PRP1/PRP2 for a transfer of `len` bytes: the byte ranges it
/// reads or writes, in order, reading list entries through `read_entry(address)`. Returns
/// `None` where a controller would report an invalid PRP (an entry with a non-zero offset where
/// none is allowed, a list pointer that is not qword aligned).
pub fn walk(
    prp1: u64,
    prp2: u64,
    len: u64,
    page_size: u64,
    mut read_entry: impl FnMut(u64) -> u64,
    mut range: impl FnMut(u64, u64),
) -> Option<()> {
    check_page_size(page_size).ok()?;
    let mask = page_size - 1;
    if prp1 & 3 != 0 || len == 0 {
        return None;
    }
    let first = (page_size - (prp1 & mask)).min(len);
    range(prp1, first);
    let mut left = len - first;
    if left == 0 {
        return Some(());
    }
    if left <= page_size {
        if prp2 & mask != 0 {
            return None;
        }
        range(prp2, left);
        return Some(());
    }
    if prp2 & 7 != 0 {
        return None;
    }
    let mut entry = prp2;
    while left > 0 {
        let value = read_entry(entry);
        let next = entry.checked_add(8)?;
        let last_in_page = next & mask == 0;
        if last_in_page && left > page_size {
            // A chain pointer to the next list page.
            if value & 7 != 0 {
                return None;
            }
            entry = value;
            continue;
        }
        if value & mask != 0 {
            return None;
        }
        let chunk = left.min(page_size);
        range(value, chunk);
        left -= chunk;
        entry = next;
    }
    Some(())
}

#[cfg(test)]
mod tests;
