//! Warnings about conditions that repeat (refused calls and connections, accept
//! errors) logged at most once per period, so a flood cannot flood the journal too.

use std::time::{Duration, Instant};

/// A repeating condition is logged at most once per this period, with the count of
/// occurrences since the last line.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a repeating warning at most once per [`LOG_EVERY`], counting the rest.
pub struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    pub const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line should be logged now, `n` being how many were skipped.
    pub fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_once_per_period_and_counts_the_rest() {
        let mut throttled = Throttled::new();
        assert_eq!(throttled.due(), Some(0));
        assert_eq!(throttled.due(), None);
        assert_eq!(throttled.due(), None);
        throttled.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(throttled.due(), Some(2));
    }
}
