//! Debian's stock kernel, its headers and busybox, fetched with the system's own `apt-get
//! download` into `target/linux-baseline/` and unpacked there once; later runs re-use the
//! unpacked files without asking apt.
//!
//! The kernel is the package `linux-image-amd64` depends on (e.g. `linux-image-6.1.0-48-amd64`);
//! the headers are `linux-headers-<release>` plus its `linux-headers-*-common` and
//! `linux-kbuild-*` dependencies, all pinned to the image's version. The bzImage's XZ payload is
//! decompressed to the ELF `vmlinux`, which QEMU boots through its PVH note as it boots ours.
//! Delete `target/linux-baseline/` to pick up a newer Debian kernel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::qemu::{is_root, tool_present};

/// What a baseline run needs, all unpacked under the cache directory.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The ELF kernel with a PVH entry note.
    pub vmlinux: PathBuf,
    /// `busybox` (static).
    pub busybox: PathBuf,
    /// The kbuild tree modules are built against (`.../usr/src/linux-headers-<release>`).
    pub headers: PathBuf,
    /// The image package, e.g. `linux-image-6.1.0-48-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.172-1`.
    pub version: String,
}

/// The marker that an unpacked set is complete: `<package> <version>`.
const READY: &str = "ready";

/// The XZ stream header magic (XZ file format 1.0.4, section 2.1.1.1).
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Kernel configuration options the initramfs relies on being built in (no modules but ours).
const NEEDED_CONFIG: [&str; 6] = [
    "CONFIG_PVH=y",
    "CONFIG_INTEL_IOMMU=y",
    "CONFIG_SERIAL_8250_CONSOLE=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_RD_GZIP=y",
    "CONFIG_DEVTMPFS=y",
];

/// Makes sure everything is unpacked in `cache` (downloading with apt-get only what is missing).
pub fn ensure(cache: &Path) -> Result<Assets, String> {
    let root = cache.join("unpacked");
    if let Ok(text) = std::fs::read_to_string(cache.join(READY)) {
        if let Some((package, version)) = text.trim().split_once(' ') {
            let assets = assets(&root, package, version);
            if assets.vmlinux.is_file() && assets.busybox.is_file() && assets.headers.is_dir() {
                return Ok(assets);
            }
        }
    }
    for tool in ["apt-get", "apt-cache", "dpkg-deb", "tar", "xz"] {
        if !tool_present(tool) {
            return Err(format!(
                "`{tool}` not found: the Linux baseline needs a Debian host with apt, dpkg and \
                 xz-utils (apt-get install xz-utils)"
            ));
        }
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("creating {}: {e}", debs.display()))?;
    let package = image_package()?;
    println!(
        "bench: Linux baseline: downloading {package} into {}",
        debs.display()
    );
    let image = download(&debs, &package, None)?;
    let version = deb_version(&image, &package)
        .ok_or_else(|| format!("cannot read the version from {}", image.display()))?;
    let release = release_of(&package).to_string();
    let headers_pkg = format!("linux-headers-{release}");
    let mut header_debs = vec![download(&debs, &headers_pkg, Some(&version))?];
    for dep in header_dependencies(&headers_pkg)? {
        header_debs.push(download(&debs, &dep, Some(&version))?);
    }
    let busybox = download(&debs, "busybox-static", None)?;

    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|e| format!("removing {}: {e}", root.display()))?;
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    // Only /boot of the image: its modules (hundreds of MB) are not needed.
    unpack_boot(&image, &root)?;
    for deb in header_debs.iter().chain([&busybox]) {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    let a = assets(&root, &package, &version);
    let config = std::fs::read_to_string(root.join("boot").join(format!("config-{release}")))
        .map_err(|e| format!("reading the kernel config: {e}"))?;
    if let Some(missing) = missing_config(&config) {
        return Err(format!(
            "{package}: {missing} is not set; the baseline boots without modules"
        ));
    }
    point_makefile_here(&a.headers, &root)?;
    let vmlinuz = std::fs::read(root.join("boot").join(format!("vmlinuz-{release}")))
        .map_err(|e| format!("reading vmlinuz: {e}"))?;
    let elf = extract_vmlinux(&vmlinuz)?;
    std::fs::write(&a.vmlinux, elf).map_err(|e| format!("writing vmlinux: {e}"))?;
    std::fs::write(cache.join(READY), format!("{package} {version}\n"))
        .map_err(|e| format!("writing the cache marker: {e}"))?;
    Ok(a)
}

fn assets(root: &Path, package: &str, version: &str) -> Assets {
    let release = release_of(package);
    Assets {
        vmlinux: root.join("vmlinux"),
        busybox: root.join("bin").join("busybox"),
        headers: root
            .join("usr")
            .join("src")
            .join(format!("linux-headers-{release}")),
        package: package.to_string(),
        version: version.to_string(),
    }
}

/// `linux-image-6.1.0-48-amd64` -> `6.1.0-48-amd64`.
pub fn release_of(package: &str) -> &str {
    package.strip_prefix("linux-image-").unwrap_or(package)
}

/// Runs `cmd` and returns its stdout, or an error naming the command with its stderr when it
/// fails.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `Depends:` targets of `apt-cache depends` output that start with one of `prefixes`.
pub fn depends_with_prefix(depends: &str, prefixes: &[&str]) -> Vec<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().trim_matches(['<', '>']).to_string())
        .filter(|p| prefixes.iter().any(|x| p.starts_with(x)))
        .collect()
}

/// The versioned image package the metapackage depends on; runs `apt-get update` once when the
/// lists do not know the metapackage (as root; otherwise says what to run).
fn image_package() -> Result<String, String> {
    let resolve = || {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .ok()?;
        depends_with_prefix(&String::from_utf8_lossy(&out.stdout), &["linux-image-"])
            .into_iter()
            .find(|p| release_of(p).starts_with(|c: char| c.is_ascii_digit()))
    };
    if let Some(p) = resolve() {
        return Ok(p);
    }
    if !is_root() {
        return Err(
            "apt's package lists do not know linux-image-amd64: run `sudo apt-get update` \
                    and try again"
                .into(),
        );
    }
    println!("bench: apt's lists lack linux-image-amd64; running apt-get update");
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    resolve().ok_or_else(|| "apt-cache cannot resolve linux-image-amd64".into())
}

fn header_dependencies(headers_pkg: &str) -> Result<Vec<String>, String> {
    let out = run(Command::new("apt-cache").args(["depends", headers_pkg]))?;
    let deps = depends_with_prefix(&out, &["linux-headers-", "linux-kbuild-"]);
    if deps.is_empty() {
        return Err(format!("apt-cache knows no dependencies of {headers_pkg}"));
    }
    Ok(deps)
}

/// The `.deb` of `package` in `dir` (optionally of `version`), downloading it when absent.
fn download(dir: &Path, package: &str, version: Option<&str>) -> Result<PathBuf, String> {
    let find = || {
        let prefix = match version {
            Some(v) => format!("{package}_{v}_"),
            None => format!("{package}_"),
        };
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let spec = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(dir).arg("-q");
    if is_root() {
        // apt drops to the `_apt` user for downloads, which cannot write into target/.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    let fetched = run(cmd.args(["download", &spec]));
    if let Err(e) = fetched {
        return Err(if is_root() {
            format!("{e}\n(if the package is gone from the mirror, `apt-get update` refreshes the lists)")
        } else {
            format!("{e}\n(try `sudo apt-get update` first)")
        });
    }
    find().ok_or_else(|| format!("apt-get download {spec} left no .deb in {}", dir.display()))
}

/// `<dir>/<package>_<version>_<arch>.deb` -> version (`%3a` is apt's escaped epoch colon).
pub fn deb_version(deb: &Path, package: &str) -> Option<String> {
    let name = deb.file_name()?.to_str()?;
    let rest = name.strip_prefix(package)?.strip_prefix('_')?;
    let (version, _) = rest.split_once('_')?;
    Some(version.replace("%3a", ":"))
}

fn unpack_boot(deb: &Path, root: &Path) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running dpkg-deb: {e}"))?;
    let tar_in = dpkg.stdout.take().ok_or("no dpkg-deb output")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(root)
        .arg("./boot")
        .stdin(tar_in)
        .status()
        .map_err(|e| format!("running tar: {e}"))?;
    let dpkg = dpkg
        .wait()
        .map_err(|e| format!("waiting for dpkg-deb: {e}"))?;
    if tar.success() && dpkg.success() {
        Ok(())
    } else {
        Err(format!("unpacking /boot of {} failed", deb.display()))
    }
}

/// The first option of [`NEEDED_CONFIG`] that `config` does not set.
pub fn missing_config(config: &str) -> Option<&'static str> {
    NEEDED_CONFIG
        .into_iter()
        .find(|want| !config.lines().any(|l| l.trim() == *want))
}

/// Debian's arch headers include the common ones by absolute `/usr/src/...` path: point that
/// include at the unpacked tree.
fn point_makefile_here(headers: &Path, root: &Path) -> Result<(), String> {
    let path = headers.join("Makefile");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let here = format!("include {}/usr/src/", root.display());
    std::fs::write(&path, text.replace("include /usr/src/", &here))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Offsets of every XZ stream header in `blob`, in order.
pub fn xz_offsets(blob: &[u8]) -> impl Iterator<Item = usize> + '_ {
    blob.windows(XZ_MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == XZ_MAGIC)
        .map(|(i, _)| i)
}

/// The ELF image inside a bzImage (or any blob) whose payload is one XZ stream: the first
/// stream that decompresses (with `xz --single-stream`, ignoring what follows it) to an ELF.
pub fn extract_vmlinux(blob: &[u8]) -> Result<Vec<u8>, String> {
    for off in xz_offsets(blob) {
        if let Ok(out) = xz_decompress(&blob[off..]) {
            if out.starts_with(&ELF_MAGIC) {
                return Ok(out);
            }
        }
    }
    Err("no XZ stream holding an ELF image in vmlinuz".into())
}

fn xz_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running xz: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no xz stdin")?;
    let data = data.to_vec();
    // Feed from a thread: xz writes its output while it reads.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for xz: {e}"))?;
    let _ = feeder.join();
    // Trailing bytes after the stream make xz exit non-zero with -q; the output is complete.
    if out.stdout.is_empty() {
        return Err("xz produced nothing".into());
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_packages_from_apt_cache_output() {
        let meta = "linux-image-amd64\n  Depends: linux-image-6.1.0-48-amd64\n";
        assert_eq!(
            depends_with_prefix(meta, &["linux-image-6"]),
            ["linux-image-6.1.0-48-amd64"]
        );
        let hdr = "linux-headers-6.1.0-48-amd64\n  Depends: linux-headers-6.1.0-48-common\n  \
                   Depends: linux-kbuild-6.1\n  Depends: linux-compiler-gcc-12-x86\n";
        assert_eq!(
            depends_with_prefix(hdr, &["linux-headers-", "linux-kbuild-"]),
            ["linux-headers-6.1.0-48-common", "linux-kbuild-6.1"]
        );
        assert_eq!(release_of("linux-image-6.1.0-48-amd64"), "6.1.0-48-amd64");
        assert_eq!(
            deb_version(
                Path::new("/x/linux-image-6.1.0-48-amd64_6.1.172-1_amd64.deb"),
                "linux-image-6.1.0-48-amd64"
            )
            .as_deref(),
            Some("6.1.172-1")
        );
        assert_eq!(
            deb_version(
                Path::new("busybox-static_1%3a1.35.0-4_amd64.deb"),
                "busybox-static"
            )
            .as_deref(),
            Some("1:1.35.0-4")
        );
    }

    #[test]
    fn config_check_names_the_missing_option() {
        let full = NEEDED_CONFIG.join("\n");
        assert_eq!(missing_config(&full), None);
        let without = full.replace("CONFIG_RD_GZIP=y", "# CONFIG_RD_GZIP is not set");
        assert_eq!(missing_config(&without), Some("CONFIG_RD_GZIP=y"));
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = Command::new("xz")
            .args(["-zc", "--check=crc32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz is installed (xz-utils)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("write");
        child.wait_with_output().expect("xz").stdout
    }

    #[test]
    fn extracts_the_elf_payload_from_a_synthetic_bzimage() {
        let mut elf = ELF_MAGIC.to_vec();
        elf.extend((0u32..5000).flat_map(|i| (i * 7919).to_le_bytes()));
        // A decoy stream that is not an ELF, then the real payload, then trailing junk (the
        // rest of a bzImage follows its payload).
        let mut blob = b"MZ setup code \xfd7zXZ but not a stream".to_vec();
        blob.extend(xz(b"not an elf"));
        blob.extend([0u8; 13]);
        let at = blob.len();
        blob.extend(xz(&elf));
        blob.extend(b"trailing decompressor bytes".repeat(10));
        assert_eq!(xz_offsets(&blob).last(), Some(at));
        assert_eq!(extract_vmlinux(&blob).expect("extracted"), elf);
        // Without the payload there is nothing to find.
        assert!(extract_vmlinux(&blob[..at]).is_err());
    }
}
