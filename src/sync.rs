//! Small synchronization helpers shared by the adapters and the observer.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex that guards plain maps: no code panics while holding it, so a
/// poisoned lock still holds consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
