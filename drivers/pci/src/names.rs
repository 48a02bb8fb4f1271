//! Friendly names for the devices this project meets (QEMU 7.2's q35 machine and its test
//! devices) and for class codes (PCI Code and ID Assignment 1.11 §1), for listings only.

/// A friendly name for a known vendor:device pair: every PCI device model
/// `qemu-system-x86_64 -device help` offers on q35 (QEMU 7.2; IDs from QEMU's
/// `include/hw/pci/pci_ids.h` and `include/hw/pci/pci.h`), named by its `-device` name where
/// that is what users type. Devices that share an ID (e.g. `VGA` and `bochs-display`) share a
/// name.
pub fn device_name(vendor_id: u16, device_id: u16) -> Option<&'static str> {
    Some(match (vendor_id, device_id) {
        // Intel: the q35 chipset (MCH, ICH9 functions) and the devices QEMU models after Intel's.
        (0x8086, 0x29c0) => "q35 host bridge (MCH)",
        (0x8086, 0x2918) => "ICH9 LPC bridge",
        (0x8086, 0x2922) => "ICH9 AHCI SATA controller",
        (0x8086, 0x2930) => "ICH9 SMBus controller",
        (0x8086, 0x2934) => "ich9-usb-uhci1 (ICH9 UHCI USB)",
        (0x8086, 0x2935) => "ich9-usb-uhci2 (ICH9 UHCI USB)",
        (0x8086, 0x2936) => "ich9-usb-uhci3 (ICH9 UHCI USB)",
        (0x8086, 0x2937) => "ich9-usb-uhci4 (ICH9 UHCI USB)",
        (0x8086, 0x2938) => "ich9-usb-uhci5 (ICH9 UHCI USB)",
        (0x8086, 0x2939) => "ich9-usb-uhci6 (ICH9 UHCI USB)",
        (0x8086, 0x293a) => "ich9-usb-ehci1 (ICH9 EHCI USB)",
        (0x8086, 0x293c) => "ich9-usb-ehci2 (ICH9 EHCI USB)",
        (0x8086, 0x293e) => "ich9-intel-hda (ICH9 HD Audio)",
        (0x8086, 0x2668) => "intel-hda (ICH6 HD Audio)",
        (0x8086, 0x2415) => "AC97 (82801AA audio)",
        (0x8086, 0x24cd) => "usb-ehci (82801DB EHCI USB)",
        (0x8086, 0x244e) => "i82801b11-bridge (DMI-to-PCI bridge)",
        (0x8086, 0x25ab) => "i6300esb watchdog",
        (0x8086, 0x3420) => "ioh3420 (X58 PCIe root port)",
        (0x8086, 0x7020) => "piix3-usb-uhci (PIIX3 UHCI USB)",
        (0x8086, 0x7112) => "piix4-usb-uhci (PIIX4 UHCI USB)",
        (0x8086, 0x100c) => "e1000-82544gc Ethernet",
        (0x8086, 0x100e) => "e1000 (82540EM) Ethernet",
        (0x8086, 0x100f) => "e1000-82545em Ethernet",
        (0x8086, 0x10d3) => "e1000e (82574L) Ethernet",
        (0x8086, 0x1209) => "eepro100 (i82550/i82551/i82801) Ethernet",
        (0x8086, 0x1229) => "eepro100 (i8255x) Ethernet",
        // QEMU/Bochs.
        (0x1234, 0x1111) => "QEMU standard VGA / bochs-display",
        (0x1234, 0x11e8) => "edu (QEMU educational device)",
        // Red Hat / virtio (0x1af4: legacy-transitional 0x1000.., modern 0x1040 + type).
        (0x1af4, 0x1110) => "ivshmem (inter-VM shared memory)",
        (0x1af4, 0x1000) => "virtio-net (transitional)",
        (0x1af4, 0x1001) => "virtio-blk (transitional)",
        (0x1af4, 0x1002) => "virtio-balloon (transitional)",
        (0x1af4, 0x1003) => "virtio-serial (transitional)",
        (0x1af4, 0x1004) => "virtio-scsi (transitional)",
        (0x1af4, 0x1005) => "virtio-rng (transitional)",
        (0x1af4, 0x1009) => "virtio-9p (transitional)",
        (0x1af4, 0x1041) => "virtio-net",
        (0x1af4, 0x1042) => "virtio-blk",
        (0x1af4, 0x1043) => "virtio-serial",
        (0x1af4, 0x1044) => "virtio-rng",
        (0x1af4, 0x1045) => "virtio-balloon",
        (0x1af4, 0x1048) => "virtio-scsi",
        (0x1af4, 0x1049) => "virtio-9p",
        (0x1af4, 0x1050) => "virtio-gpu / virtio-vga",
        (0x1af4, 0x1052) => "virtio-input",
        (0x1af4, 0x1053) => "vhost-vsock",
        (0x1af4, 0x1054) => "virtio-crypto",
        (0x1af4, 0x1057) => "virtio-iommu",
        (0x1af4, 0x1058) => "virtio-mem",
        (0x1af4, 0x105a) => "vhost-user-fs",
        (0x1af4, 0x105b) => "virtio-pmem",
        (0x1b36, 0x0001) => "pci-bridge (PCI-PCI bridge)",
        (0x1b36, 0x0002) => "pci-serial (16550 UART)",
        (0x1b36, 0x0003) => "pci-serial-2x (16550 UARTs)",
        (0x1b36, 0x0004) => "pci-serial-4x (16550 UARTs)",
        (0x1b36, 0x0005) => "pci-testdev",
        (0x1b36, 0x0006) => "rocker (switch)",
        (0x1b36, 0x0007) => "sdhci-pci (SD host controller)",
        (0x1b36, 0x0008) => "pci-host bridge (gpex)",
        (0x1b36, 0x0009) => "pxb (PCI expander bridge)",
        (0x1b36, 0x000a) => "pci-bridge-seat (PCI-PCI bridge)",
        (0x1b36, 0x000b) => "pxb-pcie (PCIe expander bridge)",
        (0x1b36, 0x000c) => "pcie-root-port",
        (0x1b36, 0x000d) => "qemu-xhci USB controller",
        (0x1b36, 0x000e) => "pcie-pci-bridge (PCIe-to-PCI bridge)",
        (0x1b36, 0x0010) => "nvme (NVM Express controller)",
        (0x1b36, 0x0011) => "pvpanic-pci",
        (0x1b36, 0x0012) => "acpi-erst (error record store)",
        (0x1b36, 0x0100) => "qxl-vga / qxl (QXL display)",
        // Switch ports QEMU models after TI's XIO3130.
        (0x104c, 0x8232) => "x3130-upstream (switch upstream port)",
        (0x104c, 0x8233) => "xio3130-downstream (switch downstream port)",
        // Other vendors' devices QEMU emulates.
        (0x10ec, 0x8139) => "rtl8139 Ethernet",
        (0x10ec, 0x8029) => "ne2k_pci (RTL8029) Ethernet",
        (0x1022, 0x2000) => "pcnet (Am79C970A) Ethernet",
        (0x1022, 0x2020) => "am53c974 / dc390 (SCSI)",
        (0x1011, 0x0019) => "tulip (DEC 21143) Ethernet",
        (0x1000, 0x0001) => "lsi53c810 (SCSI)",
        (0x1000, 0x0012) => "lsi53c895a (SCSI)",
        (0x1000, 0x0054) => "mptsas1068 (SAS)",
        (0x1000, 0x005d) => "megasas-gen2 (SAS3108)",
        (0x1000, 0x0060) => "megasas (SAS1078)",
        (0x15ad, 0x0405) => "vmware-svga",
        (0x15ad, 0x07b0) => "vmxnet3 Ethernet",
        (0x15ad, 0x07c0) => "pvscsi (VMware paravirtual SCSI)",
        (0x1013, 0x00b8) => "cirrus-vga (CL-GD5446)",
        (0x1002, 0x5046) => "ati-vga (Rage 128 Pro)",
        (0x1002, 0x5159) => "ati-vga (Radeon RV100)",
        (0x1033, 0x0194) => "nec-usb-xhci (uPD720200)",
        (0x106b, 0x003f) => "pci-ohci (OHCI USB)",
        (0x1274, 0x5000) => "ES1370 (Ensoniq AudioPCI)",
        (0x1498, 0x30c8) => "tpci200 (IndustryPack carrier)",
        (0x5853, 0x0001) => "xen-platform",
        _ => return None,
    })
}

/// A generic name for a class code (base class, sub-class).
pub fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x00, _) => "unclassified device",
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x07) => "SAS controller",
        (0x01, 0x08) => "NVM controller",
        (0x01, _) => "mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, _) => "network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, _) => "display controller",
        (0x04, 0x01) => "multimedia audio controller",
        (0x04, 0x03) => "audio device",
        (0x04, _) => "multimedia controller",
        (0x05, _) => "memory controller",
        (0x06, 0x00) => "host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, 0x80) => "bridge",
        (0x06, _) => "bridge",
        (0x07, 0x00) => "serial controller",
        (0x07, _) => "communication controller",
        (0x08, 0x05) => "SD host controller",
        (0x08, _) => "system peripheral",
        (0x09, _) => "input device controller",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "serial bus controller",
        (0xff, _) => "unassigned class",
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
        assert_eq!(class_name(0x02, 0x00), "Ethernet controller");
        assert_eq!(device_name(0x1b36, 0x0005), Some("pci-testdev"));
        assert_eq!(device_name(0x10ec, 0x8139), Some("rtl8139 Ethernet"));
        assert_eq!(
            device_name(0x8086, 0x2934),
            Some("ich9-usb-uhci1 (ICH9 UHCI USB)")
        );
    }
}
