//! Building the measurement module (`xtask/linux-module/`) against the unpacked Debian headers:
//! a copy of the sources in the cache, then `make -C <headers> M=<copy> modules` (Linux
//! `Documentation/kbuild/modules.rst`). Rebuilt when a source is newer than the `.ko`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The module's file name inside the initramfs and the build directory.
pub const MODULE: &str = "dma_bench.ko";
const SOURCES: [&str; 2] = ["dma_bench.c", "Kbuild"];

/// The source directory of the module.
pub fn source_dir() -> PathBuf {
    super::super::root().join("xtask").join("linux-module")
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds (or re-uses) `dma_bench.ko` for the kernel whose headers are at `headers`.
pub fn build(headers: &Path, cache: &Path) -> Result<PathBuf, String> {
    let src = source_dir();
    let dir = cache.join("module");
    let ko = dir.join(MODULE);
    let fresh = modified(&ko).is_some_and(|built| {
        SOURCES
            .iter()
            .all(|s| modified(&src.join(s)).is_some_and(|m| m <= built))
    }) && dir.join(".headers").is_file()
        && std::fs::read_to_string(dir.join(".headers"))
            .ok()
            .as_deref()
            == Some(&*headers.to_string_lossy());
    if fresh {
        return Ok(ko);
    }
    for tool in ["make", "gcc-12"] {
        let present = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !present {
            return Err(format!(
                "`{tool}` not found: Debian's 6.1 headers build modules with make and gcc-12 \
                 (apt-get install make gcc-12)"
            ));
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for s in SOURCES {
        std::fs::copy(src.join(s), dir.join(s))
            .map_err(|e| format!("copying {s} to {}: {e}", dir.display()))?;
    }
    println!("bench: building {MODULE} against {}", headers.display());
    let out = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(headers)
        .arg(format!("M={}", dir.display()))
        .arg("modules")
        .output()
        .map_err(|e| format!("running make: {e}"))?;
    if !out.status.success() || !ko.is_file() {
        return Err(format!(
            "building {MODULE} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(dir.join(".headers"), headers.to_string_lossy().as_bytes())
        .map_err(|e| format!("writing the build marker: {e}"))?;
    Ok(ko)
}
