//! MSI capability programming against the fake configuration space.

use super::fake::add_msi_capability;
use super::*;
use crate::regs::{msi, MsiControl};
use crate::testing::FakeConfigSpace;
use crate::Bdf;

fn bdf() -> Bdf {
    Bdf::new(0, 3, 0, 0).unwrap()
}

fn function(vectors_log2: u8, address_64: bool, pvm: bool) -> (FakeConfigSpace, u16) {
    let fake = FakeConfigSpace::new();
    fake.add_endpoint(bdf(), 0x1234, 0x11e8, 0x00_ff_00);
    let cap = add_msi_capability(&fake, bdf(), vectors_log2, address_64, pvm);
    fake.clear_writes();
    (fake, u16::from(cap))
}

fn control(fake: &FakeConfigSpace, cap: u16) -> MsiControl {
    MsiControl::from_bits(fake.peek16(bdf(), cap + msi::CONTROL))
}

#[test]
fn programs_a_32_bit_function() {
    let (fake, cap) = function(0, false, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    assert!(!msi.capability().is_64bit());
    let message = MsiMessage::fixed(2, 0x41).unwrap();
    msi.configure(1, message).unwrap();
    assert_eq!(fake.peek32(bdf(), cap + msi::ADDRESS_LOW), 0xfee0_2000);
    assert_eq!(fake.peek16(bdf(), cap + msi::DATA_32), 0x4041);
    assert_eq!(msi.message(), message);
    // No write lands where a 64-bit function's data would be.
    assert!(fake.writes().iter().all(|w| w.offset != cap + msi::DATA_64));
    assert!(!control(&fake, cap).enable());
    msi.enable().unwrap();
    assert!(control(&fake, cap).enable());
    msi.disable().unwrap();
    assert!(!control(&fake, cap).enable());
}

#[test]
fn programs_a_64_bit_function() {
    let (fake, cap) = function(0, true, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    let message = MsiMessage::from_dwords(0xfee0_0000, 0x1, 0x30);
    msi.configure(1, message).unwrap();
    assert_eq!(fake.peek32(bdf(), cap + msi::ADDRESS_HIGH), 1);
    assert_eq!(fake.peek16(bdf(), cap + msi::DATA_64), 0x30);
    assert_eq!(msi.message(), message);
}

#[test]
fn refuses_what_the_function_cannot_take_without_writing() {
    let (fake, _) = function(2, false, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    assert_eq!(msi.capability().vectors_capable(), 4);
    let ok = MsiMessage::fixed(0, 0x40).unwrap();
    assert_eq!(msi.configure(3, ok), Err(MsiError::BadCount { count: 3 }));
    assert_eq!(msi.configure(0, ok), Err(MsiError::BadCount { count: 0 }));
    assert_eq!(
        msi.configure(8, ok),
        Err(MsiError::TooManyVectors {
            count: 8,
            capable: 4
        })
    );
    let high = MsiMessage::from_dwords(0xfee0_0000, 1, 0x40);
    assert_eq!(
        msi.configure(1, high),
        Err(MsiError::AddressNeeds64Bit {
            address: high.address
        })
    );
    let wide = MsiMessage {
        data: 0x1_0040,
        ..ok
    };
    assert_eq!(
        msi.configure(1, wide),
        Err(MsiError::DataTooWide { data: 0x1_0040 })
    );
    let odd = MsiMessage::fixed(0, 0x42).unwrap();
    assert_eq!(
        msi.configure(4, odd),
        Err(MsiError::DataNotAligned {
            data: odd.data,
            count: 4
        })
    );
    let misaligned = MsiMessage {
        address: 0xfee0_0002,
        ..ok
    };
    assert!(matches!(
        msi.configure(1, misaligned),
        Err(MsiError::MisalignedAddress { .. })
    ));
    assert!(fake.writes().is_empty());
}

#[test]
fn multiple_message_enable_and_per_vector_data() {
    let (fake, cap) = function(3, true, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    // Four remapping-table entries from handle 32 + subhandle 4.
    let message = MsiMessage::remappable(32, Some(4));
    msi.configure(4, message).unwrap();
    assert_eq!(control(&fake, cap).multiple_message_enable(), 2);
    assert_eq!(msi.capability().vectors_enabled(), 4);
    for vector in 0..4u8 {
        let sent = msi.message_for(vector).unwrap();
        let DecodedMessage::Remappable(r) = sent.decode().unwrap() else {
            panic!("remappable message expected");
        };
        assert_eq!(r.interrupt_index(), Some(36 + u16::from(vector)));
    }
    assert_eq!(
        msi.message_for(4),
        Err(MsiError::VectorOutOfRange {
            vector: 4,
            capable: 4
        })
    );
    // Compatibility format: vector i of a 4-aligned base.
    msi.configure(2, MsiMessage::fixed(0, 0x50).unwrap())
        .unwrap();
    assert_eq!(control(&fake, cap).multiple_message_enable(), 1);
    let DecodedMessage::Compatibility(c) = msi.message_for(1).unwrap().decode().unwrap() else {
        panic!("compatibility message expected");
    };
    assert_eq!(c.vector, 0x51);
}

/// Replays the write log: Message Control's enable bit at every address or data write.
fn enabled_during_message_writes(fake: &FakeConfigSpace, cap: u16, initial: bool) -> Vec<bool> {
    let mut enabled = initial;
    let mut seen = Vec::new();
    for w in fake.writes() {
        if w.offset == cap + msi::CONTROL {
            enabled = MsiControl::from_bits(w.value as u16).enable();
        } else if (cap + msi::ADDRESS_LOW..=cap + msi::DATA_64).contains(&w.offset) {
            seen.push(enabled);
        }
    }
    seen
}

#[test]
fn an_enabled_function_is_reprogrammed_with_msi_disabled() {
    let (fake, cap) = function(0, true, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    msi.configure(1, MsiMessage::fixed(0, 0x40).unwrap())
        .unwrap();
    msi.enable().unwrap();
    fake.clear_writes();
    msi.configure(1, MsiMessage::fixed(1, 0x60).unwrap())
        .unwrap();
    let seen = enabled_during_message_writes(&fake, cap, true);
    assert_eq!(seen, [false, false, false]);
    assert!(control(&fake, cap).enable(), "left enabled as found");

    // Negative control: the replay does see a write made while enabled.
    fake.clear_writes();
    crate::ConfigSpace::write32(&fake, bdf(), cap + msi::ADDRESS_LOW, 0xfee0_0000);
    assert_eq!(enabled_during_message_writes(&fake, cap, true), [true]);
}

#[test]
fn per_vector_mask_and_pending() {
    let (fake, cap) = function(2, true, true);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    msi.mask(1).unwrap();
    msi.mask(3).unwrap();
    assert_eq!(fake.peek32(bdf(), cap + msi::MASK_64), 0b1010);
    assert!(msi.is_masked(1).unwrap() && !msi.is_masked(0).unwrap());
    msi.unmask(1).unwrap();
    assert_eq!(fake.peek32(bdf(), cap + msi::MASK_64), 0b1000);
    fake.poke32(bdf(), cap + msi::PENDING_64, 0b0100);
    assert!(msi.is_pending(2).unwrap());
    assert!(!msi.is_pending(3).unwrap());
    assert_eq!(
        msi.mask(4),
        Err(MsiError::VectorOutOfRange {
            vector: 4,
            capable: 4
        })
    );

    // 32-bit layout: mask and pending sit one dword lower.
    let (fake, cap) = function(0, false, true);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    msi.mask(0).unwrap();
    assert_eq!(fake.peek32(bdf(), cap + msi::MASK_32), 1);

    let (fake, _) = function(0, true, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    assert_eq!(msi.mask(0), Err(MsiError::NoPerVectorMasking));
    assert_eq!(msi.is_pending(0), Err(MsiError::NoPerVectorMasking));
}

#[test]
fn absent_capability_and_function() {
    let fake = FakeConfigSpace::new();
    assert_eq!(
        Msi::new(&fake, bdf()).map(|_| ()),
        Err(MsiError::NotPresent)
    );
    fake.add_endpoint(bdf(), 0x1234, 0x5678, 0);
    assert_eq!(
        Msi::new(&fake, bdf()).map(|_| ()),
        Err(MsiError::NotPresent)
    );
    let cap = add_msi_capability(&fake, bdf(), 0, false, false);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    fake.remove_function(bdf());
    assert_eq!(
        MsiCapability::read(&fake, bdf(), cap),
        Err(MsiError::NotResponding)
    );
    assert_eq!(msi.enable(), Err(MsiError::NotResponding));
}

#[test]
fn lspci_style_line() {
    let (fake, _) = function(3, true, true);
    let mut msi = Msi::new(&fake, bdf()).unwrap();
    msi.configure(2, MsiMessage::fixed(0, 0x40).unwrap())
        .unwrap();
    msi.enable().unwrap();
    assert_eq!(
        alloc::format!("{}", msi.capability()),
        "MSI: Enable+ Count=2/8 Maskable+ 64bit+"
    );
}
