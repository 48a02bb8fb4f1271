//! Friendly names for the devices this project meets (QEMU 7.2's q35 machine and its test
//! devices) and for class codes (PCI Code and ID Assignment 1.11 §1), for listings only.

/// A friendly name for a known vendor:device pair.
pub fn device_name(vendor_id: u16, device_id: u16) -> Option<&'static str> {
    Some(match (vendor_id, device_id) {
        (0x8086, 0x29c0) => "q35 host bridge (MCH)",
        (0x8086, 0x2918) => "ICH9 LPC bridge",
        (0x8086, 0x2922) => "ICH9 AHCI SATA controller",
        (0x8086, 0x2930) => "ICH9 SMBus controller",
        (0x8086, 0x10d3) => "e1000e (82574L) Ethernet",
        (0x8086, 0x100e) => "e1000 (82540EM) Ethernet",
        (0x1234, 0x1111) => "QEMU standard VGA",
        (0x1234, 0x11e8) => "edu (QEMU educational device)",
        (0x1af4, 0x1110) => "ivshmem (inter-VM shared memory)",
        (0x1af4, 0x1000) => "virtio-net (transitional)",
        (0x1af4, 0x1001) => "virtio-blk (transitional)",
        (0x1af4, 0x1041) => "virtio-net",
        (0x1af4, 0x1042) => "virtio-blk",
        (0x1b36, 0x0001) => "pci-bridge (PCI-PCI bridge)",
        (0x1b36, 0x0008) => "pci-host bridge (gpex)",
        (0x1b36, 0x0009) => "pxb (PCI expander bridge)",
        (0x1b36, 0x000b) => "pxb-pcie (PCIe expander bridge)",
        (0x1b36, 0x000c) => "pcie-root-port",
        (0x1b36, 0x000d) => "qemu-xhci USB controller",
        (0x1b36, 0x000e) => "pcie-pci-bridge (PCIe-to-PCI bridge)",
        (0x1b36, 0x0010) => "nvme (NVM Express controller)",
        (0x104c, 0x8232) => "x3130-upstream (switch upstream port)",
        (0x104c, 0x8233) => "xio3130-downstream (switch downstream port)",
        _ => return None,
    })
}

/// A generic name for a class code (base class, sub-class).
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x00, _) => "unclassified device",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "NVM controller",
        (0x01, _) => "mass storage controller",
        (0x02, _) => "network controller",
        (0x03, _) => "display controller",
        (0x04, _) => "multimedia controller",
        (0x05, _) => "memory controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, _) => "bridge",
        (0x07, _) => "communication controller",
        (0x08, _) => "system peripheral",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus controller",
        _ => "device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown() {
        assert_eq!(
            device_name(0x1234, 0x11e8),
            Some("edu (QEMU educational device)")
        );
        assert_eq!(device_name(0xffff, 0), None);
        assert_eq!(class_name(0x06, 0x04), "PCI bridge");
        assert_eq!(class_name(0xfe, 0), "device");
    }
}
