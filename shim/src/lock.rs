//! A lock that never waits for long: a few thousand tries, then it gives up. For data that a
//! signal handler may touch (the recorded socket options), where a handler that interrupted
//! the lock's own holder would wait forever on an ordinary lock.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// Tries before giving up: the first ones spin, the rest yield the CPU (`sched_yield`, a plain
/// system call), so a holder on another CPU or preempted on this one gets to finish.
const TRIES: u32 = 2_000;
const SPINS: u32 = 100;

pub struct TryLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a Guard, and `locked` lets one Guard exist at a
// time, so sharing the lock between threads shares no unsynchronised access to T.
unsafe impl<T: Send> Sync for TryLock<T> {}

impl<T> TryLock<T> {
    pub const fn new(value: T) -> Self {
        TryLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, unless the lock stayed held through every try.
    pub fn lock(&self) -> Option<Guard<'_, T>> {
        for attempt in 0..TRIES {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Guard { lock: self });
            }
            if attempt < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        None
    }

    /// In a child just forked: its only thread holds no guard, so a held lock belonged to a
    /// thread that the fork left behind. Unlocks it; returns whether it was held, in which case
    /// the value may be half-changed.
    pub fn unlock_after_fork(&self) -> bool {
        self.locked.swap(false, Ordering::AcqRel)
    }
}

pub struct Guard<'a, T> {
    lock: &'a TryLock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this Guard is the only one (see TryLock's Sync), so no &mut exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this Guard is the only one, and &mut self makes this borrow unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_after_bounded_tries_and_free_once_dropped() {
        let lock = TryLock::new(5);
        let guard = lock.lock().unwrap();
        assert!(
            lock.lock().is_none(),
            "a second guard while the first lives"
        );
        drop(guard);
        *lock.lock().unwrap() += 1;
        assert_eq!(*lock.lock().unwrap(), 6);
    }

    #[test]
    fn a_fork_child_unlocks_what_a_vanished_thread_held() {
        let lock = TryLock::new(());
        std::mem::forget(lock.lock().unwrap());
        assert!(lock.unlock_after_fork());
        assert!(lock.lock().is_some());
        assert!(!lock.unlock_after_fork());
    }
}
