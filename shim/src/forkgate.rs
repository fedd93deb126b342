//! Keeps `fork()` from splitting a lease in two: a fork waits until every other thread's bind
//! through the broker is done, and no such bind starts while a fork is under way.
//!
//! Without it, a thread that forks while another thread is in the middle of leasing would give
//! the child a copy of the client library's state at that instant: a lock the other thread
//! held (the child would hang at its next bind) or a half-read answer. The wait lasts as long
//! as the binds in flight, which the client library's timeout bounds.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Binds through the broker in flight, in every thread.
static IN_FLIGHT: AtomicU32 = AtomicU32::new(0);
/// Forks under way (several threads may fork at once).
static FORKING: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// Binds in flight on this thread: a signal handler that forks in the middle of its own
    /// thread's bind must not wait for itself.
    static MINE: Cell<u32> = const { Cell::new(0) };
}

const PAUSE: Duration = Duration::from_millis(1);

/// A bind through the broker in flight; ends when dropped.
pub struct Pass(());

impl Pass {
    /// Waits for any fork under way to finish, then counts this bind as in flight.
    pub fn enter() -> Pass {
        loop {
            while FORKING.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(PAUSE);
            }
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            if FORKING.load(Ordering::SeqCst) == 0 {
                break;
            }
            // A fork began meanwhile: let it go first.
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = MINE.try_with(|mine| mine.set(mine.get() + 1));
        Pass(())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        let _ = MINE.try_with(|mine| mine.set(mine.get().saturating_sub(1)));
    }
}

/// `pthread_atfork` prepare handler: stops new binds and waits for those in flight on other
/// threads.
pub fn before_fork() {
    FORKING.fetch_add(1, Ordering::SeqCst);
    let mine = MINE.try_with(Cell::get).unwrap_or(0);
    while IN_FLIGHT.load(Ordering::SeqCst) > mine {
        std::thread::sleep(PAUSE);
    }
}

/// `pthread_atfork` parent handler.
pub fn after_fork_in_parent() {
    FORKING.fetch_sub(1, Ordering::SeqCst);
}

/// `pthread_atfork` child handler: the child has this thread only, and no fork under way.
pub fn after_fork_in_child() {
    FORKING.store(0, Ordering::SeqCst);
    IN_FLIGHT.store(MINE.try_with(Cell::get).unwrap_or(0), Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_fork_waits_for_another_threads_bind_and_not_for_its_own() {
        // This thread's own pass does not hold its fork up.
        let own = Pass::enter();
        let started = Instant::now();
        before_fork();
        after_fork_in_parent();
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(own);

        // Another thread's pass does, until it ends.
        let done = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let worker = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let pass = Pass::enter();
                entered_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                done.store(true, Ordering::SeqCst);
                drop(pass);
            })
        };
        entered_rx.recv().unwrap();
        before_fork();
        assert!(
            done.load(Ordering::SeqCst),
            "the fork went ahead while another thread's bind was in flight"
        );
        after_fork_in_parent();
        worker.join().unwrap();
    }
}
