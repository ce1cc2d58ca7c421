//! The one way this crate takes a std mutex: the data behind every such lock is replaced whole,
//! never left half-written, so a panic elsewhere (a poisoned lock) is no reason to stop serving.

use std::sync::{Mutex, MutexGuard};

/// Locks, ignoring poisoning.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
