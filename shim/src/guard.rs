//! The recursion guard: while the shim itself talks to the broker on a thread, the sockets,
//! binds and socket options of that talk (the client library's own connection) go straight to
//! libc instead of coming back into the shim.

use std::cell::Cell;

thread_local! {
    // A const-initialised Cell needs no destructor: reading it allocates nothing and takes
    // no lock, even in a signal handler.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the shim's own work.
pub fn is_inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(true)
}

/// Marks this thread as inside the shim until dropped.
pub struct Inside(());

impl Inside {
    /// Enters; `None` if this thread already is inside (or is being torn down).
    pub fn enter() -> Option<Inside> {
        match INSIDE.try_with(|inside| inside.replace(true)) {
            Ok(false) => Some(Inside(())),
            Ok(true) | Err(_) => None,
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_enters_once_and_others_are_not_affected() {
        assert!(!is_inside());
        let inside = Inside::enter().expect("first entry");
        assert!(is_inside());
        assert!(
            Inside::enter().is_none(),
            "a nested entry must pass through"
        );
        std::thread::spawn(|| assert!(!is_inside())).join().unwrap();
        drop(inside);
        assert!(!is_inside());
    }
}
