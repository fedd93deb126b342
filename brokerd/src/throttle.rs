//! Rate-limited warnings: a flood of the same trouble logs one line a second, not one per
//! event.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// Whether a warning is due (at most one a second); if so, the next one waits a second.
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self.last.is_none_or(|t| now - t >= Duration::from_secs(1));
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second() {
        let mut throttle = Throttle::default();
        assert!(throttle.due());
        assert!(!throttle.due());
    }
}
