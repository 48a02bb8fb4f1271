//! The register block at BAR0 (`hw/misc/ivshmem.c`, QEMU 7.2: 256 bytes, 32-bit accesses only).

use core::ptr::NonNull;

use volatile::{map_field, VolatilePtr};

/// BAR0 layout.
#[repr(C)]
struct Regs {
    /// 0x00: interrupt mask (INTx mode of `ivshmem-doorbell`).
    interrupt_mask: u32,
    /// 0x04: interrupt status; reading it clears it.
    interrupt_status: u32,
    /// 0x08: IVPosition, this peer's ID (assigned by an `ivshmem-doorbell` server).
    iv_position: u32,
    /// 0x0c: doorbell: writing `peer << 16 | vector` interrupts a peer.
    doorbell: u32,
    _reserved: [u32; 60],
}

const _: () = assert!(core::mem::size_of::<Regs>() as u64 == crate::REGISTER_BAR_SIZE);
const _: () = assert!(core::mem::offset_of!(Regs, iv_position) == 0x08);
const _: () = assert!(core::mem::offset_of!(Regs, doorbell) == 0x0c);

/// The BAR0 registers. `ivshmem-plain` has no interrupts and no peers, so only the side-effect
/// free registers are exposed (interrupt status clears on read, the doorbell rings peers).
pub struct Registers {
    regs: VolatilePtr<'static, Regs>,
}

// SAFETY: the registers are device memory accessed only with volatile 32-bit operations; the
// ones exposed have no side effects that need serialising.
unsafe impl Send for Registers {}
// SAFETY: as above; every method takes &self and is a single volatile access.
unsafe impl Sync for Registers {}

impl Registers {
    /// Binds to the register block.
    ///
    /// # Safety
    /// `bar0` must point to the function's BAR0 (256 bytes), mapped uncached with memory
    /// decoding on, for the lifetime of the returned object.
    pub unsafe fn new(bar0: NonNull<u8>) -> Self {
        // SAFETY: the caller guarantees bar0 maps the 256-byte register block for 'static use.
        let regs = unsafe { VolatilePtr::new(bar0.cast::<Regs>()) };
        Self { regs }
    }

    /// The interrupt mask register.
    pub fn interrupt_mask(&self) -> u32 {
        let regs = self.regs;
        map_field!(regs.interrupt_mask).read()
    }

    /// Writes the interrupt mask register (no effect on `ivshmem-plain`, which has no
    /// interrupts).
    pub fn set_interrupt_mask(&self, mask: u32) {
        let regs = self.regs;
        map_field!(regs.interrupt_mask).write(mask)
    }

    /// IVPosition: the peer ID an `ivshmem-doorbell` server assigned; meaningless for
    /// `ivshmem-plain`.
    pub fn iv_position(&self) -> u32 {
        let regs = self.regs;
        map_field!(regs.iv_position).read()
    }
}

impl core::fmt::Debug for Registers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registers")
            .field("base", &self.regs.as_raw_ptr())
            .finish()
    }
}
