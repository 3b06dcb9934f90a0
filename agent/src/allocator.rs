//! glibc malloc settings for a small, long-running process.
//!
//! Measured on a release agent at default intervals (`/proc/PID/smaps`, 2026-12-07):
//! of 16 MiB RSS, 4.4 MiB were heap and 0.55 MiB three per-thread arenas; a
//! `malloc_trim(0)` from a debugger gave 2.6 MiB of that heap back at once, and it
//! came back within a minute. The cause is glibc's *dynamic* mmap threshold: the
//! first time a large block that was mmapped is freed (every message tonic
//! compresses gets a fresh zstd context of about 3 MiB), glibc raises the threshold
//! to that block's size, so from then on such blocks come from the heap, and a heap
//! block that is not at the top stays resident after `free`.
//!
//! Fixing the threshold turns that dynamic behaviour off: blocks of 128 KiB and
//! more are mapped for their use and unmapped on `free`. One arena for all threads
//! suits a process that mostly waits (no contention to spread).
//!
//! Only glibc has these knobs; elsewhere (musl) this does nothing.

/// Applies the settings. Call first thing in `main`, before any thread starts.
// The workspace denies unsafe code; this is the one FFI call the agent makes
// itself (the alternative, `GLIBC_TUNABLES` in every unit and manifest, is
// easy to lose).
#[allow(unsafe_code)]
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// Blocks at least this large are mmapped and returned to the kernel when freed.
        const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
        /// Free memory at the top of the heap above this is returned (glibc's default,
        /// stated because setting the mmap threshold would otherwise freeze it as is).
        const TRIM_THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: mallopt only changes allocator parameters; it is called before any
        // other thread exists, as glibc recommends.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
