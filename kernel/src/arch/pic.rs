//! The legacy 8259A PICs (master at 0x20, slave at 0xa0): remapped and masked at boot so that
//! only the I/O APIC delivers device interrupts.
//!
//! The BIOS leaves the master's vectors at 0x08-0x0f, on top of CPU exceptions; a spurious
//! 8259 interrupt (IRQ 7/15, raised even when every line is masked) would then look like a
//! double fault. [`init`] runs the initialisation sequence (ICW1-ICW4, 8259A datasheet) with
//! vector bases 0x20 and 0x28, then masks every line (OCW1). The LAPIC's LINT0, where the PIC's
//! output arrives in virtual-wire mode, is masked too (`apic::init`).

use x86_64::instructions::port::Port;

/// Vector of master IRQ 0 after [`init`].
pub const MASTER_BASE: u8 = 0x20;
/// Vector of slave IRQ 8 after [`init`].
pub const SLAVE_BASE: u8 = 0x28;

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
/// ICW1: initialisation, ICW4 follows, cascade mode, edge triggered.
const ICW1_INIT_ICW4: u8 = 0x11;
/// ICW3 (master): slave on IRQ 2 (bit 2).
const ICW3_MASTER_SLAVE_ON_IRQ2: u8 = 0x04;
/// ICW3 (slave): cascade identity 2.
const ICW3_SLAVE_ID: u8 = 0x02;
/// ICW4: 8086 mode.
const ICW4_8086: u8 = 0x01;
/// OCW1: every line masked.
const ALL_MASKED: u8 = 0xff;

/// Remaps both PICs to 0x20-0x2f and masks every line.
pub fn init() {
    // SAFETY: 0x20/0x21/0xa0/0xa1 are the 8259 pair on every PC-compatible machine; nothing else
    // in this kernel touches them, and this runs once at boot with interrupts disabled.
    unsafe {
        let mut mc = Port::<u8>::new(MASTER_CMD);
        let mut md = Port::<u8>::new(MASTER_DATA);
        let mut sc = Port::<u8>::new(SLAVE_CMD);
        let mut sd = Port::<u8>::new(SLAVE_DATA);
        mc.write(ICW1_INIT_ICW4);
        sc.write(ICW1_INIT_ICW4);
        md.write(MASTER_BASE);
        sd.write(SLAVE_BASE);
        md.write(ICW3_MASTER_SLAVE_ON_IRQ2);
        sd.write(ICW3_SLAVE_ID);
        md.write(ICW4_8086);
        sd.write(ICW4_8086);
        md.write(ALL_MASKED);
        sd.write(ALL_MASKED);
    }
}

/// The two mask registers (master, slave), for tests.
pub fn masks() -> (u8, u8) {
    // SAFETY: reading OCW1 (the data port) has no side effect.
    unsafe {
        (
            Port::<u8>::new(MASTER_DATA).read(),
            Port::<u8>::new(SLAVE_DATA).read(),
        )
    }
}
