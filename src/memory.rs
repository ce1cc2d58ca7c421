//! Keeps the resident size close to what is live. The binary allocates with mimalloc (src/main.rs),
//! which keeps freed pages for reuse; between cycles nothing allocates to make it return them, so
//! the resident size would stay at the cycle's peak instead of what is live. And mimalloc asks for
//! transparent huge pages on its arenas, which turns a few live KiB into 2 MiB resident.

/// Returns the pages mimalloc holds free, after a cycle (a few milliseconds at a million runs).
/// Harmless when another allocator is in use (tests): mimalloc then holds nothing.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only walks mimalloc's own free lists.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`), before anything is
/// allocated. mimalloc marks its arenas `MADV_HUGEPAGE`, and the kernel's khugepaged then merges
/// each 2 MiB range holding any live page into one huge page: in the 30-minute soak this added
/// 14 MiB (+45 %) of resident memory around minute 11, when khugepaged's scan reached the heap,
/// with no more live data. A heap of tens of MiB gains nothing measurable from huge pages.
/// Returns whether the kernel took the setting (it cannot fail on Linux 3.15 or later).
#[allow(unsafe_code)]
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
        // process's memory map; no pointer is passed.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
