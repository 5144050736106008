//! When to try a store again after it refused: exponential back-off with
//! jitter, so that after an outage the nodes of a cluster do not all come
//! back at the same second.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Backoff {
    failures: u32,
    next: Option<Instant>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: 0,
            next: None,
            base,
            max,
        }
    }

    /// May the store be tried now?
    pub(crate) fn due(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// Failing since this many attempts (0: the last one worked).
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Time left before the next try.
    pub(crate) fn wait(&self) -> Duration {
        self.next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// One more refusal: the next try is `base · 2^(failures-1)` away
    /// (capped at `max`), times a random factor in [0.5, 1.5).
    pub(crate) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.base.saturating_mul(1 << (self.failures - 1).min(16));
        let wait = exp.min(self.max).mul_f64(0.5 + fastrand::f64());
        self.next = Some(Instant::now() + wait);
        wait
    }

    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert!(b.due());
        let waits: Vec<Duration> = (0..8).map(|_| b.failed()).collect();
        assert!(!b.due());
        for (i, w) in waits.iter().enumerate() {
            let nominal = Duration::from_millis(100 << i).min(Duration::from_secs(2));
            assert!(*w >= nominal / 2 && *w < nominal * 3 / 2, "{i}: {w:?}");
        }
        assert_eq!(b.failures(), 8);
        // Jitter: eight nodes failing together do not retry together.
        let firsts: std::collections::BTreeSet<_> = (0..8)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).failed())
            .collect();
        assert!(firsts.len() > 1);
        b.succeeded();
        assert!(b.due() && b.failures() == 0 && b.wait().is_zero());
    }
}
