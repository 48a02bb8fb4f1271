//! Unit tests of the register declarations: offsets, bit positions, and MMIO window checks.

use core::ptr::NonNull;

use super::*;

#[test]
fn derived_offsets_match_qemu() {
    // QEMU: IRO = 0xF -> IVA at 0xF0, IOTLB at 0xF8; FRO = 0x22 -> fault record at 0x220.
    assert_eq!(iva_offset(0xF), 0xF0);
    assert_eq!(iotlb_offset(0xF), 0xF8);
    assert_eq!(fault_record_offset(0x22, 0), 0x220);
    assert_eq!(fault_record_offset(0x22, 1), 0x230);
}

#[test]
fn typed_fields_sit_at_the_spec_bit_positions() {
    // Each value built through the declarations equals the raw bits the spec section
    // gives, so a wrong width or offset in a declaration fails here.
    let ccmd = Ccmd::new()
        .with_icc(true)
        .with_cirg(ccmd::GRANULARITY_DEVICE)
        .with_sid(0x0318)
        .with_did(7);
    assert_eq!(ccmd.into_bits(), 0xE000_0000_0318_0007);
    assert_eq!(Ccmd::from_bits(1 << 59).caig(), 1);
    let iotlb = IotlbCmd::new()
        .with_ivt(true)
        .with_iirg(iotlb::GRANULARITY_DOMAIN)
        .with_dr(true)
        .with_dw(true)
        .with_did(9);
    assert_eq!(iotlb.into_bits(), 0xA003_0009_0000_0000);
    assert_eq!(IotlbCmd::from_bits(0b11 << 57).iaig(), 0b11);
    let iva = Iva::new()
        .with_addr(0x4_0000_1FFF)
        .with_ih(true)
        .with_am(MAX_AM + 1);
    assert_eq!(iva.into_bits(), 0x4_0000_1000 | 1 << 6 | 63);
    let iqa = Iqa::new().with_base(0x1234_5000).with_qs(1);
    assert_eq!(iqa.into_bits(), 0x1234_5001);
    assert_eq!(QueueIndex::new().with_index(0x7FFF).into_bits(), 0x7_FFF0);
    assert_eq!(Fsts::from_bits(0x0000_2A03).fri(), 0x2A);
    let hi = FrcdHi::from_bits(0x8000_0005_0000_0318);
    assert_eq!(
        (hi.f(), hi.t(), hi.fr(), hi.sid()),
        (true, false, 5, 0x0318)
    );
    assert_eq!(FrcdLo::from_bits(0x30_0ABC).fi(), 0x30_0000);
    let rt = Rtaddr::new()
        .with_rta(0x7F_F000)
        .with_ttm(Rtaddr::TTM_LEGACY);
    assert_eq!(rt.into_bits(), 0x7F_F000);
    let root = RootEntryLo::new().with_present(true).with_ctp(0x8000_2000);
    assert_eq!(root.into_bits(), 0x8000_2001);
    let lo = ContextEntryLo::new()
        .with_present(true)
        .with_fpd(true)
        .with_tt(0b10)
        .with_slptptr(0x9000);
    assert_eq!(lo.into_bits(), 0x9000 | 0b10 << 2 | 0b11);
    let hi = ContextEntryHi::new().with_aw(2).with_did(0xABCD);
    assert_eq!(hi.into_bits(), 0x00AB_CD02);
    let wait = WaitDescHi::new().with_addr(0x1234_5678);
    assert_eq!(wait.into_bits(), 0x1234_5678);
    assert!(WaitDescLo::from_bits(1 << 4).interrupt());
}

#[test]
fn second_level_entry_bits_match_the_spec() {
    // §9.8: R = 0, W = 1, PS = 7, SNP = 11, address 51:12; software bits 52 and 53.
    assert_eq!(
        (pte::READ, pte::WRITE, pte::PAGE_SIZE, pte::SNOOP),
        (1, 2, 0x80, 0x800)
    );
    assert_eq!(pte::ADDR_MASK, 0x000F_FFFF_FFFF_F000);
    assert_eq!((pte::SW_MAPPED, pte::SW_MMIO), (1 << 52, 1 << 53));
    let leaf = SlPte::new().with_addr(0x1F_FFFF_FFFF_FFFF).with_r(true);
    assert_eq!(
        leaf.into_bits(),
        0x000F_FFFF_FFFF_F001,
        "nothing spills past bit 51"
    );
}

#[test]
fn interrupt_remapping_declarations_sit_at_the_spec_bit_positions() {
    // §11.4.10 IRTA: S 3:0, EIME 11, base 63:12.
    let irta = Irta::new().with_base(0x1234_5000).with_eime(true).with_s(7);
    assert_eq!(irta.into_bits(), 0x1234_5000 | 1 << 11 | 7);
    // §11.4.7.2 FECTL: IP 30, IM 31; §11.4.7.4 FEADDR bits 31:2.
    assert_eq!(FECTL_IM, 0x8000_0000);
    assert!(Fectl::from_bits(0x4000_0000).ip());
    assert_eq!(
        Feaddr::new().with_addr(0xFEE0_1003).into_bits(),
        0xFEE0_1000
    );
    // §5.1.5.2: handle 14:0 in address 19:5, handle 15 in bit 2, SHV bit 3, format bit 4.
    let a = MsiAddressRemappable::from_bits(0xFEE0_0000 | 0x1234 << 5 | 1 << 4 | 1 << 3 | 1 << 2);
    assert_eq!(
        (
            a.window(),
            a.handle_14_0(),
            a.remappable(),
            a.shv(),
            a.handle_15()
        ),
        (MSI_WINDOW, 0x1234, true, true, true)
    );
    let h = IrHandle::new().with_low(0x1234).with_bit_15(true);
    assert_eq!(h.into_bits(), 0x9234);
    // Compatibility format: destination 19:12, vector 7:0, trigger 15.
    let c = MsiAddressCompat::from_bits(0xFEE0_3000);
    assert_eq!((c.dest(), c.remappable()), (3, false));
    assert_eq!(MsiDataCompat::from_bits(0x8041).vector(), 0x41);
    assert!(MsiDataCompat::from_bits(0x8041).trigger_level());
    // §11.4.14: the interrupt index of an IR fault in FI bits 63:48.
    assert_eq!(FrcdLoIr::from_bits(0xABCD << 48).interrupt_index(), 0xABCD);
    assert_eq!(
        MsiAddress64::new()
            .with_lo(0xFEE0_0000)
            .with_hi(1)
            .into_bits(),
        0x1_FEE0_0000
    );
}

#[test]
fn persistent_mask_clears_exactly_the_one_shot_bits() {
    let one_shot = Global::SRTP | Global::SFL | Global::WBF | Global::SIRTP;
    assert_eq!(!GSTS_PERSISTENT_MASK, one_shot.bits());
}

#[test]
fn mmio_accesses_stay_in_the_window() {
    let mut page = [0u64; 8];
    let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
    // SAFETY: `page` is valid ordinary memory for 64 bytes and outlives `regs`.
    let regs = unsafe { MmioRegisters::new(base, 64) };
    regs.write64(8, 0x1122_3344_5566_7788);
    assert_eq!(regs.read64(8), 0x1122_3344_5566_7788);
    assert_eq!(regs.read32(12), 0x1122_3344);
    regs.write32(0, 7);
    assert_eq!(regs.read32(0), 7);
    assert_eq!(regs.read64(64), u64::MAX);
    assert_eq!(regs.read64(60), u64::MAX);
    assert_eq!(regs.read32(2), u32::MAX);
    regs.write64(usize::MAX - 3, 1);
    regs.write64(64, 1);
    assert_eq!(page[0], 7);
}
