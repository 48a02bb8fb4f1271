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

/// `cargo xtask test --linux-smoke`: fetch and build (cached), one Linux boot with
/// `iommu.strict=1` on the bench machine; passes when the module loaded, edu was translated by
/// the IOMMU, and at least one result line came back. Returns a one-line summary.
pub fn smoke() -> Result<String, String> {
    let start = std::time::Instant::now();
    let base = prepare()?;
    let logs = base.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let log_path = logs.join("smoke.log");
    let log = boot::run(
        &base.assets.vmlinux,
        &base.initrd,
        &tests_qemu::Topology::default_run(),
        true,
        "",
        &log_path,
        std::time::Duration::from_secs(300),
    )?;
    let run =
        compare::parse_linux(&log).map_err(|e| format!("{e} (log: {})", log_path.display()))?;
    let (name, ns, _) = &run.rows[0];
    Ok(format!(
        "{}: {} rows, {name} {ns:.0} ns/op, policy {} ({:.1}s)",
        base.assets.package,
        run.rows.len(),
        run.policy,
        start.elapsed().as_secs_f64()
    ))
}
