//! Gives memory freed by a sync cycle back to the system. The binary allocates with mimalloc
//! (src/main.rs), which keeps freed pages for reuse; between cycles nothing allocates to make it
//! return them, so the resident size would stay at the cycle's peak instead of what is live.

/// Returns the pages mimalloc holds free, after a cycle (a few milliseconds at a million runs).
/// Harmless when another allocator is in use (tests): mimalloc then holds nothing.
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only walks mimalloc's own free lists.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
