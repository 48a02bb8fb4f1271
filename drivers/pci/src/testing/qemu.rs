//! The one parser of QEMU command lines used by the tests: the `-device`/`-object` options with
//! their properties (as QEMU's `qemu_opts_parse` reads them: `driver,key=value,...`, a bare
//! `key` meaning `key=on`, the last value of a key winning), and the options that decide which
//! default devices q35 creates (`-vga`, `-nodefaults`, `-nic`/`-net`/`-netdev`).
//!
//! Options that could change the PCI layout in a way the catalogue does not model are refused
//! with a [`QemuError`], so a caller never predicts a layout from a command line it misread.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Why a command line or a device could not be modelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuError {
    /// The fixture has no `# qemu-system-x86_64 ...` line.
    NoCommandLine,
    /// An option that takes a value ends the command line.
    MissingValue {
        /// The option.
        option: String,
    },
    /// A machine other than q35.
    UnmodelledMachine {
        /// The `-machine` value.
        machine: String,
    },
    /// A `-vga` other than `std` or `none`.
    UnmodelledVga {
        /// The `-vga` value.
        vga: String,
    },
    /// `-nic`/`-net` with anything but `none`.
    UnmodelledNic {
        /// `-nic` or `-net`.
        option: String,
        /// Its value.
        value: String,
    },
    /// An option the parser does not know.
    UnmodelledOption {
        /// The option.
        option: String,
    },
    /// A `-device` driver that is not in the catalogue.
    UnmodelledDriver {
        /// The driver.
        driver: String,
    },
    /// A property that changes a device's layout in a way the catalogue does not model.
    UnmodelledProperty {
        /// The device's driver.
        driver: String,
        /// The property.
        key: String,
    },
    /// A property whose value is not what the property takes.
    BadValue {
        /// The property.
        key: String,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A required property is missing.
    MissingProperty {
        /// The device's driver.
        driver: String,
        /// The property.
        key: &'static str,
        /// What it must name or hold.
        expected: &'static str,
    },
    /// A `memdev=` names no `-object` with a `size=`.
    MissingObject {
        /// The `id` looked for.
        id: String,
    },
    /// A size QEMU requires to be a power of two is not (QEMU aborts).
    NotPowerOfTwo {
        /// What the size is.
        what: String,
        /// The size in bytes.
        size: u64,
    },
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommandLine => write!(f, "no `# qemu-system-x86_64 ...` line"),
            Self::MissingValue { option } => write!(f, "`{option}` without a value"),
            Self::UnmodelledMachine { machine } => {
                write!(f, "only q35 is modelled, not `-machine {machine}`")
            }
            Self::UnmodelledVga { vga } => {
                write!(f, "`-vga {vga}` is not modelled (use std or none)")
            }
            Self::UnmodelledNic { option, value } => write!(
                f,
                "`{option} {value}` is not modelled: use `-nic none` plus `-device e1000e`"
            ),
            Self::UnmodelledOption { option } => {
                write!(f, "QEMU option `{option}` is not modelled")
            }
            Self::UnmodelledDriver { driver } => write!(
                f,
                "driver `{driver}` is not modelled: add its IDs and BARs to pci::testing's catalogue"
            ),
            Self::UnmodelledProperty { driver, key } => write!(
                f,
                "property `{key}` changes {driver}'s layout and is not modelled"
            ),
            Self::BadValue {
                key,
                value,
                expected,
            } => write!(f, "`{key}={value}` is not {expected}"),
            Self::MissingProperty {
                driver,
                key,
                expected,
            } => write!(f, "{driver} needs {key}=<{expected}>"),
            Self::MissingObject { id } => {
                write!(f, "no `-object ...,id={id},size=...` for memdev")
            }
            Self::NotPowerOfTwo { what, size } => {
                write!(f, "{what} size {size:#x} is not a power of two (QEMU aborts)")
            }
        }
    }
}

impl core::error::Error for QemuError {}

/// One `-device` or `-object` option of a QEMU command line: its driver/type and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOption {
    /// `-device` or `-object`.
    pub kind: String,
    /// The first comma-separated field (`edu`, `pcie-root-port`, `memory-backend-ram`).
    pub driver: String,
    /// The `key=value` properties in command-line order (a bare `key` is stored as `key=on`).
    pub properties: Vec<(String, String)>,
}

impl QemuOption {
    /// Splits `driver,k=v,...` as QEMU does; a bare `k` means `k=on`.
    pub fn parse(kind: &str, spec: &str) -> Self {
        let mut parts = spec.split(',');
        let driver = parts.next().unwrap_or_default().to_string();
        let properties = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), "on".to_string()),
            })
            .collect();
        Self {
            kind: kind.to_string(),
            driver,
            properties,
        }
    }

    /// The value of a property (the last one when it is given several times, as in QEMU).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean property (`on`/`off`, `true`/`false`, `yes`/`no`), `default` when absent.
    ///
    /// # Errors
    ///
    /// [`QemuError::BadValue`] when the value is not a boolean.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, QemuError> {
        match self.get(key) {
            None => Ok(default),
            Some("on" | "true" | "yes") => Ok(true),
            Some("off" | "false" | "no") => Ok(false),
            Some(v) => Err(QemuError::BadValue {
                key: key.to_string(),
                value: v.to_string(),
                expected: "a boolean",
            }),
        }
    }

    /// An integer property as QEMU reads it ([`parse_int`]), `None` when absent.
    ///
    /// # Errors
    ///
    /// [`QemuError::BadValue`] when the value is not a number.
    pub fn int(&self, key: &str) -> Result<Option<u64>, QemuError> {
        self.get(key)
            .map(|v| {
                parse_int(v).ok_or_else(|| QemuError::BadValue {
                    key: key.to_string(),
                    value: v.to_string(),
                    expected: "a number",
                })
            })
            .transpose()
    }

    /// The option as it was written (`driver,k=v,...`), for messages.
    pub fn spec(&self) -> String {
        let mut s = self.driver.clone();
        for (k, v) in &self.properties {
            s.push(',');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }
}

/// What a QEMU command line asks for: its `-device`/`-object` options and whether q35's default
/// VGA and NIC are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommandLine {
    /// `-device` and `-object` options in command-line order.
    pub options: Vec<QemuOption>,
    /// The default VGA (`-vga std`) is created: no `-vga none`, no `-nodefaults`.
    pub vga: bool,
    /// The default NIC (e1000e on q35) is created: no `-nodefaults`, `-nic none` or `-netdev`.
    pub default_nic: bool,
}

impl Default for QemuCommandLine {
    fn default() -> Self {
        Self {
            options: Vec::new(),
            vga: true,
            default_nic: true,
        }
    }
}

impl QemuCommandLine {
    /// Parses the first `#` line of a fixture (`# qemu-system-x86_64 -machine q35 ...`).
    ///
    /// # Errors
    ///
    /// [`QemuError::NoCommandLine`] without a `#` line, and the errors of
    /// [`QemuCommandLine::parse_args`].
    pub fn from_fixture(text: &str) -> Result<Self, QemuError> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with('#'))
            .ok_or(QemuError::NoCommandLine)?;
        Self::parse(line.trim_start().trim_start_matches('#'))
    }

    /// Parses a command line whose arguments are separated by whitespace (no quoting); a first
    /// word that is not an option (the program name) is skipped.
    ///
    /// # Errors
    ///
    /// The errors of [`QemuCommandLine::parse_args`].
    pub fn parse(line: &str) -> Result<Self, QemuError> {
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_some_and(|w| !w.starts_with('-')) {
            words.next();
        }
        Self::parse_args(words)
    }

    /// Parses QEMU arguments (without the program name).
    ///
    /// # Errors
    ///
    /// A [`QemuError`] for an option that is not modelled (anything but `-machine q35`, `-m`,
    /// `-smp`, `-cpu`, `-accel`, `-display`, `-device`, `-object`, `-vga std|none`,
    /// `-nodefaults`, `-netdev`, `-nic none`, `-net none`) or that lacks its value.
    pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, QemuError> {
        let mut cl = Self::default();
        let mut it = args.into_iter();
        while let Some(opt) = it.next() {
            let mut value = || {
                it.next().ok_or_else(|| QemuError::MissingValue {
                    option: opt.to_string(),
                })
            };
            match opt {
                "-machine" | "-M" => {
                    let v = value()?;
                    let machine = QemuOption::parse(opt, v).driver;
                    if !matches!(machine.as_str(), "q35" | "pc-q35-7.2" | "") {
                        return Err(QemuError::UnmodelledMachine {
                            machine: v.to_string(),
                        });
                    }
                }
                "-m" | "-smp" | "-cpu" | "-accel" | "-display" => {
                    value()?;
                }
                "-device" | "-object" => {
                    let v = value()?;
                    cl.options.push(QemuOption::parse(opt, v));
                }
                "-vga" => match value()? {
                    "none" => cl.vga = false,
                    "std" => {}
                    v => return Err(QemuError::UnmodelledVga { vga: v.to_string() }),
                },
                "-nodefaults" => {
                    cl.vga = false;
                    cl.default_nic = false;
                }
                "-netdev" => {
                    value()?;
                    cl.default_nic = false;
                }
                "-nic" | "-net" => match value()? {
                    "none" => cl.default_nic = false,
                    v => {
                        return Err(QemuError::UnmodelledNic {
                            option: opt.to_string(),
                            value: v.to_string(),
                        })
                    }
                },
                other => {
                    return Err(QemuError::UnmodelledOption {
                        option: other.to_string(),
                    })
                }
            }
        }
        Ok(cl)
    }

    /// The `-device` options.
    pub fn devices(&self) -> impl Iterator<Item = &QemuOption> + '_ {
        self.options.iter().filter(|o| o.kind == "-device")
    }

    /// The `-device` option with `id=id`.
    pub fn device_by_id(&self, id: &str) -> Option<&QemuOption> {
        self.devices().find(|d| d.get("id") == Some(id))
    }

    /// The `-object` option with `id=id`.
    pub fn object_by_id(&self, id: &str) -> Option<&QemuOption> {
        self.options
            .iter()
            .find(|o| o.kind == "-object" && o.get("id") == Some(id))
    }
}

/// An integer as QEMU's integer properties take it (`0x` hex, leading `0` octal, else decimal).
pub fn parse_int(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse().ok()
    }
}

/// A size as QEMU's size properties take it: bytes, or a `B`/`K`/`M`/`G`/`T` (binary) suffix
/// in either case.
pub fn parse_size(text: &str) -> Option<u64> {
    let shift = match text.chars().last()?.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return text.parse().ok(),
    };
    let digits = &text[..text.len() - 1];
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `addr=` as QEMU parses it: `slot[.function]`, both hexadecimal; the devfn.
pub fn parse_addr(text: &str) -> Option<u8> {
    let hex = |s: &str| {
        let s = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        u8::from_str_radix(s, 16).ok()
    };
    let (slot, func) = match text.split_once('.') {
        Some((s, f)) => (hex(s)?, hex(f)?),
        None => (hex(text)?, 0),
    };
    (slot < 32 && func < 8).then_some(slot << 3 | func)
}
