//! The Linux baseline of `cargo xtask bench --vs-linux`: Debian's stock kernel booted on the
//! machine our kernel benches on, with a measurement module of ours, so both columns of the
//! comparison come from one QEMU machine in one session.
//!
//! Layers, each using only those listed before it: [`fetch`] (apt download, unpacking, the
//! vmlinux inside vmlinuz), [`module`] (the C module built against the unpacked headers),
//! [`initramfs`] (cpio newc + gzip with busybox and `/init`), [`boot`] (QEMU), [`trace`]
//! (VT-d register accesses per operation from QEMU's trace; pure), [`compare`] (parsing,
//! medians, the Markdown section; pure, it knows only [`initramfs::DONE`]).

pub mod boot;
pub mod compare;
pub mod fetch;
pub mod initramfs;
pub mod module;
pub mod trace;

use std::path::PathBuf;

/// Everything a Linux boot needs, built or re-used under `target/linux-baseline/`.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The downloaded and unpacked kernel.
    pub assets: fetch::Assets,
    /// The gzip initramfs with busybox, the module and `/init`.
    pub initrd: PathBuf,
    /// Where logs go.
    pub dir: PathBuf,
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    super::root().join("target").join("linux-baseline")
}

/// Fetches (once), builds the module (when its sources changed) and writes the initramfs.
pub fn prepare() -> Result<Baseline, String> {
    let dir = cache_dir();
    let assets = fetch::ensure(&dir)?;
    let ko = module::build(&assets.headers, &dir)?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let image = initramfs::build(read(&assets.busybox)?, module::MODULE, read(&ko)?, "")?;
    let initrd = dir.join("initrd.cpio.gz");
    std::fs::write(&initrd, image).map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    Ok(Baseline {
        assets,
        initrd,
        dir,
    })
}
