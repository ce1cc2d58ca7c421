//! A counting global allocator for the sync benches: live heap bytes and their peak, over the
//! binary's own allocator (mimalloc, as src/main.rs sets it), so that what the exporter holds is
//! told apart from what the allocator keeps of freed memory in the resident figure.
// Each bench uses the part it needs.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

use mimalloc::MiMalloc;

/// Install with `#[global_allocator] static ALLOC: heap::Counting = heap::Counting;`.
pub struct Counting;
pub static LIVE: AtomicUsize = AtomicUsize::new(0);
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        unsafe { MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        grew(new);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { MiMalloc.realloc(p, l, new) }
    }
}

pub fn mib_of(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The live heap now, MiB.
pub fn live_mib() -> f64 {
    mib_of(LIVE.load(Ordering::Relaxed))
}
