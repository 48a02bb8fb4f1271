//! Fixture loading: configuration spaces captured by our kernel (`bb:dd.f OFF VALUE` dumps),
//! with BAR and ROM sizes from the QEMU device catalogue, and ACPI tables from `.acpi` dumps.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::catalogue::QemuDevice;
use super::fake::{FakeConfigSpace, FakeFunction};
use super::qemu::{QemuCommandLine, QemuError};
use crate::config::is_valid_access;
use crate::Bdf;

/// Why a fixture could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fixture line {}: {}", self.line, self.message)
    }
}

impl core::error::Error for FixtureError {}

impl FakeConfigSpace {
    /// Loads a fixture: an optional `# qemu-system-x86_64 ...` line, then `bb:dd.f OFF VALUE`
    /// lines (hex) listing the non-zero dwords of every present function. BARs are read-only
    /// until sizes are declared ([`FakeConfigSpace::set_bar_size`] or
    /// [`FakeConfigSpace::from_qemu_fixture`]).
    ///
    /// # Errors
    ///
    /// A [`FixtureError`] naming the line that is not `bb:dd.f OFF VALUE` (bad address, offset or
    /// value) or whose offset is not a dword inside 4 KiB.
    pub fn from_fixture(text: &str) -> Result<Self, FixtureError> {
        let fake = Self::new();
        {
            let mut state = fake.state.lock();
            for (index, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let error = |message: &str| FixtureError {
                    line: index + 1,
                    message: message.to_string(),
                };
                let mut fields = line.split_whitespace();
                let (Some(bdf), Some(offset), Some(value), None) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    return Err(error("expected `bb:dd.f OFF VALUE`"));
                };
                let bdf: Bdf = bdf.parse().map_err(|_| error("bad function address"))?;
                let offset = u16::from_str_radix(offset, 16).map_err(|_| error("bad offset"))?;
                let value = u32::from_str_radix(value, 16).map_err(|_| error("bad value"))?;
                if !is_valid_access(offset, 4) {
                    return Err(error("offset is not a dword inside 4 KiB"));
                }
                state
                    .functions
                    .entry(bdf)
                    .or_insert_with(FakeFunction::new)
                    .put(offset, 4, value);
            }
        }
        let bdfs: Vec<Bdf> = fake.state.lock().functions.keys().copied().collect();
        for bdf in bdfs {
            fake.protect_capabilities(bdf);
        }
        Ok(fake)
    }

    /// Loads a fixture captured from QEMU 7.2 and declares the BAR and Expansion ROM sizes of
    /// the functions it contains from the QEMU device catalogue ([`QemuDevice`]), applied to
    /// the devices of the fixture's `#` command line (the built-ins without one).
    ///
    /// # Errors
    ///
    /// The errors of [`FakeConfigSpace::from_fixture`], and a [`FixtureError`] for line 1 when
    /// the command line cannot be modelled ([`QemuError`]) or gives two devices with the same
    /// IDs different sizes (the fixture cannot tell which BDF is which).
    pub fn from_qemu_fixture(text: &str) -> Result<Self, FixtureError> {
        let fake = Self::from_fixture(text)?;
        let at_line_1 = |message: String| FixtureError { line: 1, message };
        let command_line = match QemuCommandLine::from_fixture(text) {
            Ok(command_line) => command_line,
            Err(QemuError::NoCommandLine) => QemuCommandLine::default(),
            Err(e) => return Err(at_line_1(e.to_string())),
        };
        let devices = QemuDevice::all(&command_line).map_err(|e| at_line_1(e.to_string()))?;
        let bdfs: Vec<Bdf> = fake.state.lock().functions.keys().copied().collect();
        for bdf in bdfs {
            let ids = (fake.peek16(bdf, 0), fake.peek16(bdf, 2));
            let mut models = devices.iter().filter(|d| (d.vendor, d.device) == ids);
            let Some(model) = models.next() else {
                continue;
            };
            if let Some(other) = models.find(|d| (&d.bars, d.rom) != (&model.bars, model.rom)) {
                return Err(at_line_1(alloc::format!(
                    "{} sizes differ between devices ({:?} and {:?})",
                    model.driver,
                    model.bars,
                    other.bars
                )));
            }
            for b in &model.bars {
                fake.set_bar_size(bdf, b.index, b.size);
            }
            if let Some(size) = model.rom {
                fake.with(bdf, |f| f.rom = Some(size));
            }
        }
        Ok(fake)
    }
}

/// The bytes of one ACPI table from an `.acpi` fixture dump (lines `SIG 0000: 4d 43 ...`).
pub fn acpi_table_bytes(dump: &str, signature: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in dump.lines() {
        let Some(rest) = line.trim().strip_prefix(signature) else {
            continue;
        };
        let Some((offset, hex)) = rest.split_once(':') else {
            continue;
        };
        if u32::from_str_radix(offset.trim(), 16).is_err() {
            continue;
        }
        bytes.extend(
            hex.split_whitespace()
                .filter_map(|b| u8::from_str_radix(b, 16).ok()),
        );
    }
    bytes
}
