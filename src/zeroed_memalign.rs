//! Reproducible H.264: x264 (core 164, Debian 12's libx264) reads memory it allocated but
//! never wrote when its macroblock tree runs (the default: `mbtree` with a lookahead and
//! B-frames), so what it encodes depends on what that memory held before. In a fresh process
//! that is the kernel's zeroed pages and the ffmpeg CLI looks deterministic; in ctxd the
//! heap has held ONNX Runtime's tensors first, and the same frames gave different files run
//! to run. Seen with the ffmpeg CLI alone: `MALLOC_PERTURB_=1` and `=200` give different
//! files from the same input; with `mbtree=0`, `rc-lookahead=0` or `bframes=0` they do not.
//! Valgrind does not flag it (the reads go through SIMD code).
//!
//! x264 takes all of its memory through `memalign`; this binary defines that symbol (exported
//! by build.rs, so it comes before glibc's for every shared library) and hands out zeroed
//! memory. Little else calls the obsolete `memalign` (FFmpeg and Rust use
//! `posix_memalign`), and x264 writes most of what it allocates anyway.

use std::ffi::c_void;

/// glibc's `memalign`, with the memory zeroed.
///
/// # Safety
/// The C contract of `memalign(3)`: the caller frees the result with `free`.
#[no_mangle]
pub unsafe extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    // posix_memalign wants a power of two that is a multiple of a pointer's size; glibc's
    // memalign takes any alignment and rounds it up to a power of two.
    let alignment = alignment
        .max(std::mem::size_of::<*mut c_void>())
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX);
    let mut p: *mut c_void = std::ptr::null_mut();
    let rc = libc::posix_memalign(&mut p, alignment, size);
    if rc != 0 {
        // memalign reports through errno, posix_memalign through its result.
        *libc::__errno_location() = rc;
        return std::ptr::null_mut();
    }
    std::ptr::write_bytes(p.cast::<u8>(), 0, size);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_aligned_and_zeroed_and_any_alignment_is_taken() {
        for (alignment, size) in [(64, 4096), (48, 100), (1, 7), (4096, 1 << 20)] {
            // Dirty the heap first so a reused block would show.
            let dirty = unsafe { libc::malloc(size) };
            unsafe { std::ptr::write_bytes(dirty.cast::<u8>(), 0xA5, size) };
            unsafe { libc::free(dirty) };
            let p = unsafe { memalign(alignment, size) };
            assert!(!p.is_null(), "memalign({alignment}, {size})");
            let want = alignment.next_power_of_two();
            assert_eq!(p as usize % want, 0, "memalign({alignment}, {size})");
            let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) };
            assert!(bytes.iter().all(|b| *b == 0));
            unsafe { libc::free(p) };
        }
    }
}
