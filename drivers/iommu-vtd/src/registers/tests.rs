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

/// Sets bit `bit` of a multi-word entry given as words (bit 64 is word 1's bit 0).
fn bit(words: usize, n: u32) -> alloc::vec::Vec<u64> {
    let mut w = alloc::vec![0u64; words];
    w[(n / 64) as usize] = 1 << (n % 64);
    w
}

#[test]
fn scalable_root_entry_matches_spec_9_2() {
    // LP bit 0, LCTP 63:12; UP bit 64, UCTP 127:76.
    assert_eq!(
        SmRootEntryLo::new().with_present(true).into_bits(),
        bit(2, 0)[0]
    );
    assert_eq!(
        SmRootEntryHi::new().with_present(true).into_bits(),
        bit(2, 64)[1]
    );
    let lo = SmRootEntryLo::new().with_ctp(0xFFFF_FFFF_FFFF_F123);
    assert_eq!(lo.into_bits(), 0xFFFF_FFFF_FFFF_F000);
    let hi = SmRootEntryHi::new().with_ctp(0x1234_5000);
    assert_eq!(hi.into_bits(), 0x1234_5000);
    assert_eq!(SmRootEntryHi::from_bits(0x1234_5001).ctp(), 0x1234_5000);
}

#[test]
fn scalable_context_entry_matches_spec_9_4() {
    let w0 = |v: SmContextW0| v.into_bits();
    assert_eq!(w0(SmContextW0::new().with_present(true)), 1 << 0);
    assert_eq!(w0(SmContextW0::new().with_fpd(true)), 1 << 1);
    assert_eq!(w0(SmContextW0::new().with_dte(true)), 1 << 2);
    assert_eq!(w0(SmContextW0::new().with_paside(true)), 1 << 3);
    assert_eq!(w0(SmContextW0::new().with_pre(true)), 1 << 4);
    // PDTS bits 11:9.
    assert_eq!(w0(SmContextW0::new().with_pdts(0b111)), 0b111 << 9);
    assert_eq!(w0(SmContextW0::new().with_pdts(1)), 1 << 9);
    // PASIDDIRPTR bits 63:12.
    assert_eq!(
        w0(SmContextW0::new().with_pasid_dir(0xABCD_E000)),
        0xABCD_E000
    );
    // RID_PASID bits 83:64 (word 1 bits 19:0), RID_PRIV bit 84.
    assert_eq!(
        SmContextW1::new().with_rid_pasid(0xF_FFFF).into_bits(),
        0xF_FFFF
    );
    assert_eq!(
        SmContextW1::new().with_rid_pasid(1).into_bits(),
        bit(4, 64)[1]
    );
    assert_eq!(
        SmContextW1::new().with_rid_priv(true).into_bits(),
        bit(4, 84)[1]
    );
    assert_eq!(SM_CONTEXT_WORDS * 8, 32);
    assert_eq!(SM_CONTEXT_ENTRIES_PER_TABLE * SM_CONTEXT_WORDS * 8, 4096);
}

#[test]
fn pasid_directory_entry_matches_spec_9_5() {
    assert_eq!(PasidDirEntry::new().with_present(true).into_bits(), 1);
    assert_eq!(PasidDirEntry::new().with_fpd(true).into_bits(), 2);
    assert_eq!(
        PasidDirEntry::new().with_table(0x7_6543_2FFF).into_bits(),
        0x7_6543_2000
    );
}

#[test]
fn pasid_table_entry_matches_spec_9_6() {
    let w0 = |v: PasidEntryW0| v.into_bits();
    assert_eq!(w0(PasidEntryW0::new().with_present(true)), 1 << 0);
    assert_eq!(w0(PasidEntryW0::new().with_fpd(true)), 1 << 1);
    // AW bits 4:2.
    assert_eq!(w0(PasidEntryW0::new().with_aw(0b111)), 0b111 << 2);
    assert_eq!(w0(PasidEntryW0::new().with_aw(2)), 2 << 2);
    assert_eq!(w0(PasidEntryW0::new().with_slee(true)), 1 << 5);
    // PGTT bits 8:6: second stage 010b, pass-through 100b.
    assert_eq!(w0(PasidEntryW0::new().with_pgtt(0b111)), 0b111 << 6);
    assert_eq!(
        w0(PasidEntryW0::new().with_pgtt(PasidEntryW0::PGTT_SECOND_STAGE)),
        0b010 << 6
    );
    assert_eq!(
        w0(PasidEntryW0::new().with_pgtt(PasidEntryW0::PGTT_PASS_THROUGH)),
        0b100 << 6
    );
    assert_eq!(PasidEntryW0::PGTT_FIRST_STAGE, 0b001);
    assert_eq!(PasidEntryW0::PGTT_NESTED, 0b011);
    assert_eq!(w0(PasidEntryW0::new().with_slade(true)), 1 << 9);
    // SLPTPTR bits 63:12.
    assert_eq!(
        w0(PasidEntryW0::new().with_slptptr(0x1_2345_6789)),
        0x1_2345_6000
    );
    // DID bits 79:64 (word 1 bits 15:0), PWSNP bit 87, PGSNP bit 88.
    assert_eq!(PasidEntryW1::new().with_did(0xFFFF).into_bits(), 0xFFFF);
    assert_eq!(PasidEntryW1::new().with_did(1).into_bits(), bit(8, 64)[1]);
    assert_eq!(
        PasidEntryW1::new().with_pwsnp(true).into_bits(),
        bit(8, 87)[1]
    );
    assert_eq!(
        PasidEntryW1::new().with_pgsnp(true).into_bits(),
        bit(8, 88)[1]
    );
    assert_eq!(PASID_ENTRY_WORDS * 8 * PASID_ENTRIES_PER_TABLE, 4096);
}

#[test]
fn rtaddr_ttm_selects_scalable_mode() {
    // TTM bits 11:10: 00 legacy, 01 scalable (§11.4.5).
    let r = Rtaddr::new()
        .with_rta(0x5000)
        .with_ttm(Rtaddr::TTM_SCALABLE);
    assert_eq!(r.into_bits(), 0x5000 | 1 << 10);
    assert_eq!(Rtaddr::new().with_ttm(Rtaddr::TTM_LEGACY).into_bits(), 0);
}

#[test]
fn pasid_descriptors_match_spec_6_5_2() {
    // Type 3:0, granularity 5:4, DID 31:16, PASID 51:32.
    let d = PasidDescLo::new()
        .with_kind(desc::TYPE_PASID_CACHE)
        .with_granularity(desc::PASID_CACHE_PASID)
        .with_did(0xBEEF)
        .with_pasid(0xF_FFFF);
    assert_eq!(d.into_bits(), 0x000F_FFFF_BEEF_0017);
    let d = PasidDescLo::new()
        .with_kind(desc::TYPE_PASID_IOTLB)
        .with_granularity(desc::PASID_IOTLB_PAGE);
    assert_eq!(d.into_bits(), 0x36);
    assert_eq!(desc::PASID_CACHE_DOMAIN, 0b00);
    assert_eq!(desc::PASID_CACHE_GLOBAL, 0b11);
    assert_eq!(desc::PASID_IOTLB_PASID, 0b10);
    // The upper half: AM 69:64, IH 70, ADDR 127:76.
    let hi = PasidIotlbDescHi::new()
        .with_am(5)
        .with_ih(true)
        .with_addr(0xDEAD_B000);
    assert_eq!(hi.into_bits(), 0xDEAD_B000 | 1 << 6 | 5);
}
