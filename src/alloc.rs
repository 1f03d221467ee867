//! Allocator settings for a process that streams large, short-lived buffers between threads.

/// Tunes glibc's malloc before any thread starts (elsewhere it does nothing).
///
/// An export allocates pages of text and Arrow/Parquet buffers of up to a few MB on the
/// fetcher thread and frees them on the exporter thread. With glibc's defaults each such
/// buffer is a fresh `mmap` (page faults, zeroing, TLB shootdowns on `munmap`) or lands in
/// another thread's arena, which measured at about a sixth of an export's CPU. One arena, no
/// `mmap` below 32 MiB and no trimming below 128 MiB free keep those pages in reuse; the peak
/// RSS stays what it was (the export's working set is bounded, see the README).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc parameters; it is called at start-up, before any
    // other thread exists, and every value is within the documented range.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
