//! Capped exponential backoff with jitter, for gRPC retries and broker reconnects.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Endless delays growing from `initial` to `max`, each jittered so that many waiting
/// tasks do not retry in lock step.
pub fn delays(initial: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(initial)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let max = Duration::from_millis(800);
        let all: Vec<_> = delays(Duration::from_millis(100), max).take(50).collect();
        assert_eq!(all.len(), 50, "never runs out");
        // backon's jitter adds up to one more base delay on top of the capped value.
        assert!(all.iter().all(|d| *d <= max * 2), "{all:?}");
        assert!(all[10] >= Duration::from_millis(800), "{all:?}");
    }
}
