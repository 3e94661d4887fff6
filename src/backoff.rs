//! Capped exponential backoff with jitter, for every retry loop (joining
//! routers, uploads to the tier): without jitter, every node that lost the
//! same router or the same S3 endpoint retries at the same instants, and
//! the herd arrives together when it comes back.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays that double from `first` up to `max`, each drawn uniformly from
/// the upper half of its step (`[d/2, d]`), so retries spread out while
/// still backing off.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The next delay to wait (jittered), and doubles the step.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.step);
        self.step = (self.step * 2).min(self.max);
        d
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// A delay drawn uniformly from `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let spread = half.as_nanos() as u64;
    if spread == 0 {
        return d;
    }
    // A fresh `RandomState` has new random keys (per thread, advanced on
    // each call): plenty for spreading retries, with no extra dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(spread);
    half + Duration::from_nanos(h.finish() % (spread + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for step in [100u64, 200, 400, 800, 800] {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn retries_of_many_nodes_spread_out() {
        let d = Duration::from_secs(1);
        let draws: std::collections::HashSet<Duration> = (0..100).map(|_| jitter(d)).collect();
        assert!(
            draws.len() > 90,
            "only {} distinct delays of 100",
            draws.len()
        );
        assert!(draws.iter().all(|x| *x >= d / 2 && *x <= d));
    }
}
