//! Booting the Debian kernel on the bench machine: the same QEMU command line our kernel gets
//! (`crate::qemu::command` on the same [`Topology`]), with the unpacked `vmlinux` entered
//! through its PVH note, the initramfs as `-initrd`, and the console captured to a log.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests_qemu::Topology;

/// The kernel command line: serial console, VT-d on (`intel_iommu=on`), the flush policy given
/// by `iommu.strict` (6.1 ignores `iommu=strict` for VT-d), and `pci=hpiosize=0` so Linux keeps
/// the firmware's bridge windows as our kernel finds them. `quiet` keeps the console for the
/// result lines; `panic=-1` with `-no-reboot` ends QEMU on a panic. `extra` is appended (the
/// traced run adds `loglevel=7`).
pub fn cmdline(strict: bool, extra: &str) -> String {
    let mut c = format!(
        "console=ttyS0 intel_iommu=on iommu.strict={} pci=hpiosize=0 quiet panic=-1",
        u8::from(strict)
    );
    if !extra.is_empty() {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// Boots `vmlinux` with `initrd` on `topo`; returns the console log (QEMU's stderr appended),
/// also kept at `log_path`.
pub fn run(
    vmlinux: &Path,
    initrd: &Path,
    topo: &Topology,
    strict: bool,
    extra_append: &str,
    log_path: &Path,
    timeout: Duration,
) -> Result<String, String> {
    let log = std::fs::File::create(log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("duplicating the log file: {e}"))?;
    let mut cmd: Command = crate::qemu::command(vmlinux, topo, &cmdline(strict, extra_append));
    cmd.arg("-initrd").arg(initrd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting QEMU: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
            .is_some()
        {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "Linux did not power off within {}s (log: {})",
                timeout.as_secs(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bytes =
        std::fs::read(log_path).map_err(|e| format!("reading {}: {e}", log_path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_selects_the_flush_policy() {
        assert!(cmdline(true, "").contains(" iommu.strict=1 "));
        assert!(cmdline(false, "").contains(" iommu.strict=0 "));
        assert!(cmdline(true, "loglevel=7").ends_with("panic=-1 loglevel=7"));
    }
}
