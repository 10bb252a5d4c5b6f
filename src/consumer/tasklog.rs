//! What the consumer logs about tasks, at pipeline speed (thousands a second) without
//! tripping journald's rate limit (10,000 records per 30 s per service by default):
//!
//! - each processed task: one record at debug, with its structured fields;
//! - each failed task: one record at warn, at most [`FAILURES_PER_WINDOW`] per
//!   [`FAILURE_WINDOW`]; the records held back are counted, and the count is given by the
//!   next failure record that is logged or by the next summary, so none goes unreported;
//! - every `log_summary_secs`, at info, one summary of the interval: tasks by kind and
//!   outcome, the rate, p50/p99 latency, retries, dead letters (nothing when idle), and a
//!   last one at shutdown.
//!
//! The summary reads the same counters and histogram as `/metrics`, so the two agree.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Metric};
use tokio_util::sync::CancellationToken;

use super::metrics::{ConsumerMetrics, KINDS, NO_KIND, OUTCOMES};
use crate::task::{ResultDocument, truncate};

/// At most this many failure records per [`FAILURE_WINDOW`]; the rest are counted.
pub const FAILURES_PER_WINDOW: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// Failure records logged in the current window, and those held back since the last
/// one that was logged.
struct FailureBudget {
    window_start: Option<Instant>,
    used: u32,
    held_back: u64,
}

impl FailureBudget {
    /// `Some(held_back)` when a failure record may be logged now (taking the count of
    /// those held back before it); `None` when it is held back (and counted).
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= FAILURE_WINDOW)
        {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used >= FAILURES_PER_WINDOW {
            self.held_back += 1;
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

pub struct TaskLog {
    metrics: ConsumerMetrics,
    failures: Mutex<FailureBudget>,
}

impl TaskLog {
    pub fn new(metrics: ConsumerMetrics) -> Self {
        Self {
            metrics,
            failures: Mutex::new(FailureBudget {
                window_start: None,
                used: 0,
                held_back: 0,
            }),
        }
    }

    /// One task's result was published and its message acked.
    pub fn processed(&self, document: &ResultDocument, redelivered: bool) {
        let kind = document.kind.map_or(NO_KIND, |k| k.as_str());
        let (ms, attempts) = (document.duration_ms, document.attempts);
        let Some(error) = &document.error else {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let task = truncate(&document.task, 80);
                tracing::debug!(
                    task_id = %document.id, kind, ok = true, duration_ms = ms, attempts, redelivered,
                    task = %task,
                    "task processed: {task} ({kind}) in {ms} ms, {attempts} attempt(s)"
                );
            }
            return;
        };
        let admitted = match self.failures.lock() {
            Ok(mut budget) => budget.admit(Instant::now()),
            Err(poisoned) => poisoned.into_inner().admit(Instant::now()),
        };
        let Some(held_back) = admitted else {
            return;
        };
        let task = truncate(&document.task, 80);
        let reason = truncate(&error.message, 200);
        let earlier = if held_back > 0 {
            format!(" ({held_back} earlier failure record(s) held back by the rate limit)")
        } else {
            String::new()
        };
        tracing::warn!(
            task_id = %document.id, kind, ok = false, duration_ms = ms, attempts, redelivered,
            task = %task, error_code = %error.code, error = %reason, held_back,
            "task failed; message dead-lettered: {task} ({kind}) {}: {reason}{earlier}", error.code
        );
    }

    /// Failure records held back and not yet reported; resets the count.
    fn take_held_back(&self) -> u64 {
        match self.failures.lock() {
            Ok(mut budget) => std::mem::take(&mut budget.held_back),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().held_back),
        }
    }

    /// Logs a summary every `interval` until `shutdown`, then a last one.
    pub async fn summarize(&self, interval: Duration, shutdown: CancellationToken) {
        let mut last = Snapshot::take(&self.metrics);
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(interval) => false,
            };
            let now = Snapshot::take(&self.metrics);
            self.log_summary(&last, &now);
            last = now;
            if stop {
                return;
            }
        }
    }

    fn log_summary(&self, before: &Snapshot, now: &Snapshot) {
        let held_back = self.take_held_back();
        let by = |kind: usize, outcome: usize| {
            now.tasks[kind][outcome].saturating_sub(before.tasks[kind][outcome])
        };
        let (ok, failed): (u64, u64) = (0..KINDS.len()).fold((0, 0), |(ok, failed), kind| {
            (ok + by(kind, 0), failed + by(kind, 1))
        });
        if ok + failed == 0 && held_back == 0 {
            return;
        }
        let secs = now.at.duration_since(before.at).as_secs_f64().max(0.001);
        let per_sec = (ok + failed) as f64 / secs;
        let buckets: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .zip(&before.buckets)
            .map(|((bound, n), (_, m))| (*bound, n.saturating_sub(*m)))
            .collect();
        let count = now.count.saturating_sub(before.count);
        let p50_ms = quantile(&buckets, count, 0.5) * 1000.0;
        let p99_ms = quantile(&buckets, count, 0.99) * 1000.0;
        let retries = now.retries.saturating_sub(before.retries);
        let dead_letters = now.dead_letters.saturating_sub(before.dead_letters);
        let by_kind: Vec<String> = KINDS
            .iter()
            .enumerate()
            .filter(|(kind, _)| by(*kind, 0) + by(*kind, 1) > 0)
            .map(|(kind, name)| format!("{name} {}/{}", by(kind, 0), by(kind, 1)))
            .collect();
        let held = if held_back > 0 {
            format!("; {held_back} failure record(s) held back by the rate limit")
        } else {
            String::new()
        };
        tracing::info!(
            interval_secs = format!("{secs:.1}"),
            ok,
            failed,
            per_sec = format!("{per_sec:.1}"),
            p50_ms = format!("{p50_ms:.1}"),
            p99_ms = format!("{p99_ms:.1}"),
            retries,
            dead_letters,
            held_back,
            ab_ok = by(0, 0),
            ab_failed = by(0, 1),
            factorial_ok = by(1, 0),
            factorial_failed = by(1, 1),
            frequent_letter_ok = by(2, 0),
            frequent_letter_failed = by(2, 1),
            upper_ok = by(3, 0),
            upper_failed = by(3, 1),
            none_failed = by(4, 1),
            "tasks in the last {:.1} s: {ok} ok, {failed} failed ({per_sec:.1}/s); p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms; {retries} retries, {dead_letters} dead-lettered; ok/failed by kind: {}{held}",
            secs,
            if by_kind.is_empty() {
                "-".to_owned()
            } else {
                by_kind.join(", ")
            }
        );
    }
}

/// The counters a summary compares, at one moment.
struct Snapshot {
    at: Instant,
    /// `[kind][outcome]`, in the order of [`KINDS`] and [`OUTCOMES`].
    tasks: Vec<[u64; 2]>,
    /// Cumulative task-latency buckets over every kind: (upper bound in seconds, count).
    buckets: Vec<(f64, u64)>,
    /// Observations over every kind (those beyond the last bound included).
    count: u64,
    retries: u64,
    dead_letters: u64,
}

impl Snapshot {
    fn take(metrics: &ConsumerMetrics) -> Self {
        let tasks = KINDS
            .iter()
            .map(|kind| {
                let count = |outcome| metrics.tasks.with_label_values(&[*kind, outcome]).get();
                [count(OUTCOMES[0]), count(OUTCOMES[1])]
            })
            .collect();
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut count = 0;
        for kind in KINDS {
            let sample = metrics.task_latency.with_label_values(&[*kind]).metric();
            let histogram = sample.get_histogram();
            count += histogram.get_sample_count();
            for (at, bucket) in histogram.get_bucket().iter().enumerate() {
                match buckets.get_mut(at) {
                    Some((_, count)) => *count += bucket.cumulative_count(),
                    None => buckets.push((bucket.upper_bound(), bucket.cumulative_count())),
                }
            }
        }
        let dead_letters = metrics
            .dead_letters
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum();
        Self {
            at: Instant::now(),
            tasks,
            buckets,
            count,
            retries: metrics.retries.get(),
            dead_letters,
        }
    }
}

/// The `q` quantile, in seconds, of `total` observations in cumulative `buckets` (upper
/// bound, count), linearly interpolated inside its bucket as Prometheus'
/// `histogram_quantile` does; beyond the last bound, the last bound. 0 when empty.
fn quantile(buckets: &[(f64, u64)], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            let inside = (count - lower.1) as f64;
            if inside == 0.0 {
                return bound;
            }
            return lower.0 + (bound - lower.0) * ((rank - lower.1 as f64) / inside);
        }
        lower = (bound, count);
    }
    lower.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_records_are_bounded_per_window_and_held_back_ones_counted() {
        let mut budget = FailureBudget {
            window_start: None,
            used: 0,
            held_back: 0,
        };
        let start = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            assert_eq!(budget.admit(start), Some(0));
        }
        assert_eq!(budget.admit(start), None);
        assert_eq!(budget.admit(start + Duration::from_secs(1)), None);
        assert_eq!(budget.admit(start + FAILURE_WINDOW), Some(2));
        assert_eq!(budget.admit(start + FAILURE_WINDOW), Some(0));
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let buckets = [(0.001, 0), (0.01, 50), (0.1, 100)];
        assert!((quantile(&buckets, 100, 0.5) - 0.01).abs() < 1e-9);
        assert!((quantile(&buckets, 100, 0.99) - 0.0982).abs() < 1e-9);
        // Two observations beyond the last bound: p99 is at least that bound.
        assert_eq!(quantile(&buckets, 102, 0.99), 0.1);
        assert_eq!(quantile(&[], 0, 0.5), 0.0);
        assert_eq!(quantile(&[(1.0, 0)], 0, 0.5), 0.0);
    }
}
