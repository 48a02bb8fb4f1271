//! The C runtime symbols `core`/`alloc` expect from a freestanding binary.
//!
//! `compiler_builtins` on the `x86_64-unknown-linux-gnu` target relies on libc for `mem*`, so the
//! kernel provides them. They are written with `rep movsb`/`rep stosb` (fast on modern CPUs and
//! immune to the compiler turning a byte loop back into a call to itself). Unwinding never happens
//! (the kernel is built with `panic=abort`), but the prebuilt `core` still references the
//! personality routine, so it is defined and aborts.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst` (non-overlapping).
///
/// # Safety
/// `src` must be valid for `n` reads, `dst` for `n` writes, and they must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid; rep movsb copies exactly n bytes
    // forwards with DF clear (the ABI guarantees DF = 0 on function entry).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// `src` must be valid for `n` reads and `dst` for `n` writes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src, or the ranges do not overlap: a forward copy is safe.
        // SAFETY: forwarded contract.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: the ranges are valid (caller contract); copying backwards from the last byte with
    // DF set never overwrites a source byte before it was read. DF is cleared again.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

/// Fills `n` bytes at `dst` with the low byte of `c`.
///
/// # Safety
/// `dst` must be valid for `n` writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid for writes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// Compares `n` bytes; returns <0, 0 or >0 like C's `memcmp`.
///
/// # Safety
/// Both pointers must be valid for `n` reads.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n reads.
        let (x, y) = unsafe { (a.add(i).read(), b.add(i).read()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// Equality-only comparison (LLVM emits it for `==` on slices).
///
/// # Safety
/// Both pointers must be valid for `n` reads.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}

/// Length of a NUL-terminated string.
///
/// # Safety
/// `s` must point to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminator exists, so every byte up to it is readable.
    while unsafe { s.add(n).read() } != 0 {
        n += 1;
    }
    n
}

/// Personality routine referenced by the prebuilt `core`; never called (`panic=abort`).
#[no_mangle]
pub extern "C" fn rust_eh_personality() {
    crate::arch::exit::fail_now("rust_eh_personality called: unwinding is not supported");
}

/// Unwinder entry referenced by the prebuilt `core`; never called (`panic=abort`).
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::arch::exit::fail_now("_Unwind_Resume called: unwinding is not supported");
}
