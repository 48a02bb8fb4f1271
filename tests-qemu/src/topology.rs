//! A QEMU machine description: memory, the IOMMU and the devices, as QEMU arguments.

/// One machine to boot: always `q35`, with or without `intel-iommu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `-m` value.
    pub memory: String,
    /// `None`: no IOMMU. `Some(props)`: `-device intel-iommu` plus `,props` when not empty.
    pub iommu: Option<String>,
    /// Further QEMU arguments (devices, objects), in order.
    pub devices: Vec<String>,
}

impl Topology {
    /// q35 + intel-iommu (default properties), 512 MiB, no extra devices.
    pub fn base() -> Self {
        Self {
            memory: "512M".into(),
            iommu: Some(String::new()),
            devices: Vec::new(),
        }
    }

    /// The topology `cargo xtask run` boots: the base machine plus the devices the demos use:
    /// an edu (DMA engine) on the root bus and an ivshmem (RAM-backed BAR2, the P2P provider)
    /// behind a root port.
    pub fn default_run() -> Self {
        Self::base()
            .device("edu")
            .object("memory-backend-ram,id=shm,size=1M")
            .device("pcie-root-port,id=rp1,chassis=1,bus=pcie.0")
            .device("ivshmem-plain,memdev=shm,bus=rp1")
    }

    /// Adds `-device <spec>`.
    pub fn device(mut self, spec: &str) -> Self {
        self.devices.push("-device".into());
        self.devices.push(spec.into());
        self
    }

    /// Adds `-object <spec>` (e.g. the memory backend of an ivshmem device).
    pub fn object(mut self, spec: &str) -> Self {
        self.devices.push("-object".into());
        self.devices.push(spec.into());
        self
    }

    /// Removes the IOMMU.
    pub fn without_iommu(mut self) -> Self {
        self.iommu = None;
        self
    }

    /// The machine-specific QEMU arguments (everything but the kernel, console and exit device).
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = vec![
            "-machine".into(),
            "q35".into(),
            "-m".into(),
            self.memory.clone(),
        ];
        if let Some(props) = &self.iommu {
            // intel-iommu must come before the PCI devices it translates for.
            args.push("-device".into());
            args.push(if props.is_empty() {
                "intel-iommu".into()
            } else {
                format!("intel-iommu,{props}")
            });
        }
        args.extend(self.devices.iter().cloned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iommu_comes_first_and_props_are_appended() {
        let t = Topology {
            iommu: Some("aw-bits=48".into()),
            ..Topology::base()
        }
        .device("edu");
        assert_eq!(
            t.qemu_args(),
            [
                "-machine",
                "q35",
                "-m",
                "512M",
                "-device",
                "intel-iommu,aw-bits=48",
                "-device",
                "edu"
            ]
        );
        assert!(!Topology::base()
            .without_iommu()
            .qemu_args()
            .iter()
            .any(|a| a.contains("iommu")));
    }
}
