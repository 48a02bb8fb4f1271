//! The driver against configuration spaces captured in QEMU 7.2 and against RAM standing in for
//! BAR2.

use core::ptr::NonNull;

use ivshmem::{IvshmemError, SharedMemory};
use pci::regs::{header, Command, Status};
use pci::testing::FakeConfigSpace;
use pci::{enumerate, BarKind, Bdf, ConfigSpace, McfgRegion};
use proptest::prelude::*;

const COMPLEX_CFG: &str = include_str!("../../pci/tests/fixtures/complex.cfg");

fn region() -> McfgRegion {
    McfgRegion::new(0xb000_0000, 0, 0, 0xff).unwrap()
}

#[test]
fn fixture_shared_memory_bar_is_the_memory_backend() {
    let fake = FakeConfigSpace::from_qemu_fixture(COMPLEX_CFG).unwrap();
    let topology = enumerate(&fake, &[region()]);
    let function = topology
        .functions()
        .iter()
        .find(|f| ivshmem::matches(f))
        .expect("the fixture has an ivshmem-plain");
    ivshmem::identify(&fake, function.bdf).unwrap();
    let bar = ivshmem::shared_memory_bar(function).unwrap();
    assert_eq!(bar.index, ivshmem::SHARED_MEMORY_BAR);
    // `-object memory-backend-ram,id=shm,size=1M` on the fixture's command line.
    assert_eq!(bar.size, 1 << 20);
    assert_eq!(bar.kind, BarKind::Memory64 { prefetchable: true });
    assert_eq!(
        function.bar(ivshmem::REGISTER_BAR).map(|b| b.size),
        Some(ivshmem::REGISTER_BAR_SIZE)
    );
    // Other functions are refused.
    let edu = topology.find(0x1234, 0x11e8).next().unwrap();
    assert_eq!(
        ivshmem::shared_memory_bar(edu),
        Err(IvshmemError::NotIvshmem {
            id: (0x1234, 0x11e8)
        })
    );
    assert_eq!(
        ivshmem::identify(&fake, edu.bdf),
        Err(IvshmemError::NotIvshmem {
            id: (0x1234, 0x11e8)
        })
    );
    // No reset method reaches it except its parent's bus reset.
    let parent = topology.parent(function.bdf).unwrap().bdf;
    assert_eq!(
        pci::reset::reset_method(&fake, &topology, function.bdf),
        Some(pci::ResetMethod::SecondaryBus { bridge: parent })
    );
}

#[test]
fn enable_memory_sets_only_memory_space() {
    let fake = FakeConfigSpace::new();
    let bdf = Bdf::new(0, 0, 4, 0).unwrap();
    fake.add_endpoint(bdf, ivshmem::VENDOR_ID, ivshmem::DEVICE_ID, ivshmem::CLASS);
    fake.poke16(bdf, header::STATUS, Status::DETECTED_PARITY_ERROR.bits());
    assert_eq!(ivshmem::enable_memory(&fake, bdf), Ok(false));
    assert_eq!(ivshmem::enable_memory(&fake, bdf), Ok(true));
    assert_eq!(
        fake.read16(bdf, header::COMMAND),
        Command::MEMORY_SPACE.bits()
    );
    assert_eq!(
        fake.read16(bdf, header::STATUS),
        Status::DETECTED_PARITY_ERROR.bits()
    );
    let absent = Bdf::new(0, 0, 5, 0).unwrap();
    assert_eq!(
        ivshmem::enable_memory(&fake, absent),
        Err(IvshmemError::NotIvshmem {
            id: (0xffff, 0xffff)
        })
    );
}

#[test]
fn a_missing_or_unassigned_bar2_is_refused() {
    let fake = FakeConfigSpace::new();
    let bdf = Bdf::new(0, 0, 4, 0).unwrap();
    fake.add_endpoint(bdf, ivshmem::VENDOR_ID, ivshmem::DEVICE_ID, ivshmem::CLASS);
    let kind = BarKind::Memory64 { prefetchable: true };
    let topology = enumerate(&fake, &[region()]);
    assert_eq!(
        ivshmem::shared_memory_bar(topology.function(bdf).unwrap()),
        Err(IvshmemError::NoSharedMemoryBar)
    );
    fake.define_bar(bdf, 2, kind, 1 << 20, 0);
    let topology = enumerate(&fake, &[region()]);
    assert_eq!(
        ivshmem::shared_memory_bar(topology.function(bdf).unwrap()),
        Err(IvshmemError::SharedMemoryUnassigned)
    );
    fake.define_bar(bdf, 2, BarKind::Io, 256, 0xc000);
    let topology = enumerate(&fake, &[region()]);
    assert_eq!(
        ivshmem::shared_memory_bar(topology.function(bdf).unwrap()),
        Err(IvshmemError::NotMemoryBar)
    );
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, Vec<u8>),
    Fill(usize, usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..300, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(o, d)| Op::Write(o, d)),
        (0usize..300, 0usize..60, any::<u8>()).prop_map(|(o, l, b)| Op::Fill(o, l, b)),
    ]
}

proptest! {
    /// Against a plain byte-array model: in-bounds operations do exactly what they say at any
    /// alignment, out-of-bounds or empty ones are refused and change nothing.
    #[test]
    fn shared_memory_matches_a_byte_model(ops in proptest::collection::vec(op(), 1..30), base in 0usize..8) {
        const SIZE: usize = 256;
        let mut backing = vec![0u64; SIZE / 8 + 1];
        let start = NonNull::new(backing.as_mut_ptr().cast::<u8>().wrapping_add(base)).unwrap();
        // SAFETY: `backing` outlives `shm` and is not touched while `shm` is in use; the mapping
        // (SIZE bytes from `base`) lies inside it.
        let mut shm = unsafe { SharedMemory::new(start, SIZE).unwrap() };
        let mut model = vec![0u8; SIZE];
        for op in ops {
            match op {
                Op::Write(offset, data) => {
                    let ok = !data.is_empty() && offset + data.len() <= SIZE;
                    prop_assert_eq!(shm.write_bytes(offset, &data).is_ok(), ok);
                    if ok {
                        model[offset..offset + data.len()].copy_from_slice(&data);
                    }
                }
                Op::Fill(offset, len, byte) => {
                    let ok = len > 0 && offset + len <= SIZE;
                    prop_assert_eq!(shm.fill(offset, len, byte).is_ok(), ok);
                    if ok {
                        model[offset..offset + len].fill(byte);
                    }
                }
            }
        }
        let mut out = vec![0u8; SIZE];
        shm.read_bytes(0, &mut out).unwrap();
        prop_assert_eq!(&out, &model);
        prop_assert_eq!(shm.compare(0, &model).unwrap(), None);
    }
}
