//! The baseline's initramfs: a cpio archive in the "new ASCII" (`newc`) format the kernel's
//! initramfs unpacker reads (Linux `Documentation/driver-api/early-userspace/buffer-format.rst`),
//! gzip-compressed, holding busybox, the measurement module and an `/init` that loads it,
//! prints its result lines on the console and powers the machine off.

use std::io::Write as _;

/// File type bits of `st_mode` (POSIX `<sys/stat.h>`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// The newc header magic.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir { path: String, mode: u32 },
    /// A regular file.
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A character device node (e.g. `/dev/console`, 5:1).
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::CharDev { path, .. } => {
                path
            }
        }
    }
}

/// Why an archive could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// A field does not fit the format's eight hex digits.
    TooLarge(String),
    /// A path contains a NUL byte or is empty.
    BadPath(String),
}

impl std::fmt::Display for CpioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpioError::TooLarge(p) => write!(f, "{p}: too large for a newc cpio entry"),
            CpioError::BadPath(p) => write!(f, "{p:?}: not a valid cpio path"),
        }
    }
}

impl std::error::Error for CpioError {}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Appends one newc header, name and data (both padded to four bytes).
fn member(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<(), CpioError> {
    if name.is_empty() || name.contains('\0') {
        return Err(CpioError::BadPath(name.into()));
    }
    let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.into()))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge(name.into()))?;
    let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
    out.extend_from_slice(NEWC_MAGIC);
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    for field in [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ] {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

/// The uncompressed newc archive of `entries` (paths without a leading `/`), trailer included.
///
/// # Errors
///
/// A path that is empty or holds a NUL, or a file of 4 GiB or more.
pub fn cpio(entries: &[Entry]) -> Result<Vec<u8>, CpioError> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| CpioError::TooLarge(e.path().into()))?;
        let name = e.path().trim_start_matches('/');
        match e {
            Entry::Dir { mode, .. } => member(&mut out, ino, name, S_IFDIR | mode, &[], (0, 0))?,
            Entry::File { mode, data, .. } => {
                member(&mut out, ino, name, S_IFREG | mode, data, (0, 0))?
            }
            Entry::CharDev {
                mode, major, minor, ..
            } => member(&mut out, ino, name, S_IFCHR | mode, &[], (*major, *minor))?,
        }
    }
    member(&mut out, 0, TRAILER, 0, &[], (0, 0))?;
    Ok(out)
}

/// `data` gzip-compressed (the kernel's `CONFIG_RD_GZIP` decompressor reads it).
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// The marker `/init` prints after the result lines; its absence means the run did not finish.
pub const DONE: &str = "LINUX-BASELINE done";

/// `/init`: mounts proc, sysfs and devtmpfs, loads the module (which measures in its probe),
/// prints the module's `LBENCH` lines and the IOMMU's flush policy from the kernel log, powers
/// off. Run by busybox's shell.
pub fn init_script(module: &str, insmod_args: &str) -> String {
    format!(
        "#!/bin/busybox sh\n\
         bb=/bin/busybox\n\
         $bb mount -t proc proc /proc\n\
         $bb mount -t sysfs sysfs /sys\n\
         $bb mount -t devtmpfs devtmpfs /dev\n\
         $bb insmod /{module} {insmod_args}\n\
         echo \"LINUX-BASELINE insmod rc=$?\"\n\
         $bb dmesg | $bb sed -n -e 's/^\\[[^]]*\\] //' -e '/^LBENCH/p' -e 's/^iommu: DMA domain TLB invalidation policy: /LINUX-BASELINE policy /p'\n\
         echo \"{DONE}\"\n\
         # Let the UART drain before the machine goes away.\n\
         $bb usleep 300000\n\
         $bb poweroff -f\n"
    )
}

/// The whole gzip-compressed initramfs.
///
/// # Errors
///
/// As [`cpio`], or an I/O error from the compressor.
pub fn build(
    busybox: Vec<u8>,
    module_name: &str,
    module: Vec<u8>,
    insmod_args: &str,
) -> Result<Vec<u8>, String> {
    let dir = |p: &str| Entry::Dir {
        path: p.into(),
        mode: 0o755,
    };
    let entries = vec![
        dir("bin"),
        dir("dev"),
        dir("proc"),
        dir("sys"),
        Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
        Entry::File {
            path: module_name.into(),
            mode: 0o644,
            data: module,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init_script(module_name, insmod_args).into_bytes(),
        },
    ];
    let archive = cpio(&entries).map_err(|e| e.to_string())?;
    gzip(&archive).map_err(|e| format!("compressing the initramfs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// (name, mode, rdev, data) of one member.
    type Member = (String, u32, (u32, u32), Vec<u8>);

    /// A minimal newc reader, independent of the writer.
    fn parse(mut a: &[u8]) -> Vec<Member> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&a[..6], b"070701", "magic at offset {offset}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).expect("hex");
                u32::from_str_radix(s, 16).expect("hex field") as usize
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize;
            let name = std::str::from_utf8(&a[110..name_end - 1]).expect("name");
            assert_eq!(a[name_end - 1], 0, "NUL-terminated name");
            let data_start = name_end.div_ceil(4) * 4;
            let data_end = data_start + size;
            if name == "TRAILER!!!" {
                assert_eq!(
                    data_end.div_ceil(4) * 4,
                    a.len(),
                    "trailer ends the archive"
                );
                return out;
            }
            out.push((
                name.to_string(),
                mode as u32,
                (rmaj as u32, rmin as u32),
                a[data_start..data_end].to_vec(),
            ));
            let next = data_end.div_ceil(4) * 4;
            offset += next;
            a = &a[next..];
        }
    }

    #[test]
    fn newc_members_round_trip_with_alignment() {
        let entries = vec![
            Entry::Dir {
                path: "/dev".into(),
                mode: 0o755,
            },
            Entry::CharDev {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            // Sizes 0..=5 and odd name lengths exercise every padding case.
            Entry::File {
                path: "a".into(),
                mode: 0o644,
                data: vec![],
            },
            Entry::File {
                path: "bb".into(),
                mode: 0o755,
                data: b"x".to_vec(),
            },
            Entry::File {
                path: "ccc".into(),
                mode: 0o644,
                data: b"hello".to_vec(),
            },
        ];
        let a = cpio(&entries).expect("archive");
        assert_eq!(a.len() % 4, 0);
        let got = parse(&a);
        assert_eq!(
            got,
            vec![
                ("dev".into(), 0o040755, (0, 0), vec![]),
                ("dev/console".into(), 0o020600, (5, 1), vec![]),
                ("a".into(), 0o100644, (0, 0), vec![]),
                ("bb".into(), 0o100755, (0, 0), b"x".to_vec()),
                ("ccc".into(), 0o100644, (0, 0), b"hello".to_vec()),
            ]
        );
        // The first header, field by field (ino 1, mode 040755, nlink 2, namesize 4).
        let header = [
            "070701",
            "00000001",
            "000041ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "dev\0\0\0",
        ]
        .concat();
        assert_eq!(&a[..header.len()], header.as_bytes());
    }

    #[test]
    fn bad_paths_are_refused() {
        let bad = Entry::File {
            path: "a\0b".into(),
            mode: 0o644,
            data: vec![],
        };
        assert_eq!(cpio(&[bad]), Err(CpioError::BadPath("a\0b".into())));
    }

    #[test]
    fn initramfs_is_gzip_of_an_archive_with_init_and_module() {
        let gz = build(b"BB".to_vec(), "dma_bench.ko", b"KO".to_vec(), "iters=7").expect("built");
        assert_eq!(&gz[..2], [0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        let members = parse(&raw);
        let find = |n: &str| members.iter().find(|m| m.0 == n).expect(n).clone();
        assert_eq!(find("bin/busybox").3, b"BB");
        assert_eq!(find("dma_bench.ko").3, b"KO");
        let init = String::from_utf8(find("init").3).expect("utf8");
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains("insmod /dma_bench.ko iters=7\n"), "{init}");
        assert!(init.contains(DONE));
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("dev/console").2, (5, 1));
    }
}
