//! Time for the store: a millisecond clock reading and a hashed timing wheel.
//!
//! Expiry is kept in whole seconds (a `u32` per entry, 136 years of range)
//! and rounded up, so an entry lives at least its TTL and at most one second
//! longer, like memcached. Reads compare against the millisecond clock, so an
//! expired entry is never returned whether or not the wheel has reclaimed it.

/// A reading of the store's clock: milliseconds since the clock started.
///
/// The store never reads a clock itself; callers pass the time in, which keeps
/// it synchronous and lets tests drive time by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Whole seconds, rounded down.
    pub fn secs_floor(self) -> u32 {
        (self.0 / 1000).min(u32::MAX as u64) as u32
    }

    /// Whole seconds, rounded up.
    pub fn secs_ceil(self) -> u32 {
        self.0.div_ceil(1000).min(u32::MAX as u64) as u32
    }
}

/// The expiry second for an entry written at `now` with `ttl_secs` to live;
/// 0 means it never expires.
pub fn expiry_for(now: Millis, ttl_secs: u32) -> u32 {
    if ttl_secs == 0 {
        return 0;
    }
    now.secs_ceil().saturating_add(ttl_secs).max(1)
}

/// Whether an entry with expiry second `expire` is dead at `now`.
#[inline]
pub fn is_expired(expire: u32, now: Millis) -> bool {
    expire != 0 && now.0 >= u64::from(expire) * 1000
}

/// Buckets in the wheel: one per second. Entries further out than the
/// horizon are examined early and filed again (hashed wheel with lazy
/// re-filing), so the wheel stays small whatever the TTLs.
pub const WHEEL_SLOTS: u32 = 512;

/// A hashed timing wheel of slot indices, one bucket per second.
///
/// The wheel holds hints, not truth: a bucket entry is acted on only when
/// the slot it names still says (through its `wheel_at`) that it is due in
/// this very second. Stale hints left by deletes and evictions cost a few
/// bytes until their second comes or a compaction sweeps them.
#[derive(Debug)]
pub struct Wheel {
    buckets: Box<[Vec<u32>]>,
    /// The last second fully processed.
    cursor: u32,
    /// Hints held across all buckets, live or stale.
    refs: usize,
}

impl Wheel {
    /// An empty wheel whose cursor starts at `now`.
    pub fn new(now: Millis) -> Self {
        Wheel {
            buckets: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            cursor: now.secs_floor(),
            refs: 0,
        }
    }

    /// The second at which an entry expiring at `expire` should next be
    /// examined: its expiry, clamped into the wheel's window.
    pub fn target(&self, expire: u32) -> u32 {
        let lo = self.cursor.saturating_add(1);
        let hi = self.cursor.saturating_add(WHEEL_SLOTS - 1);
        expire.clamp(lo, hi)
    }

    /// Files `idx` for examination at second `at` (from [`Wheel::target`]).
    pub fn file(&mut self, idx: u32, at: u32) {
        self.buckets[(at % WHEEL_SLOTS) as usize].push(idx);
        self.refs += 1;
    }

    /// Hints held, live or stale.
    pub fn refs(&self) -> usize {
        self.refs
    }

    /// The last second fully processed.
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Takes the hints of the next due second, if any second up to `now` is
    /// still unprocessed. Returns the second and up to `budget` hints; hints
    /// beyond the budget stay in the bucket and the cursor stays put, so the
    /// caller can release its lock between rounds.
    pub fn take_due(&mut self, now: Millis, budget: usize) -> Option<(u32, Vec<u32>)> {
        let now_s = now.secs_floor();
        if self.refs == 0 && self.cursor < now_s {
            // Nothing filed: skip a long idle gap in one step.
            self.cursor = now_s;
            return None;
        }
        while self.cursor < now_s {
            let second = self.cursor + 1;
            let bucket = &mut self.buckets[(second % WHEEL_SLOTS) as usize];
            if bucket.is_empty() {
                self.cursor = second;
                continue;
            }
            let take = if bucket.len() > budget {
                bucket.split_off(bucket.len() - budget)
            } else {
                self.cursor = second;
                std::mem::take(bucket)
            };
            self.refs -= take.len();
            return Some((second, take));
        }
        None
    }

    /// Drops every hint for which `is_live(idx, bucket)` is false, where
    /// `bucket` is the index of the bucket holding it.
    pub fn compact(&mut self, mut is_live: impl FnMut(u32, u32) -> bool) {
        let mut refs = 0;
        for (b, bucket) in self.buckets.iter_mut().enumerate() {
            bucket.retain(|&idx| is_live(idx, b as u32));
            refs += bucket.len();
        }
        self.refs = refs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_and_zero_is_forever() {
        assert_eq!(expiry_for(Millis(0), 0), 0);
        assert_eq!(expiry_for(Millis(0), 1), 1);
        assert_eq!(expiry_for(Millis(900), 1), 2);
        assert_eq!(expiry_for(Millis(1000), 1), 2);
        assert!(!is_expired(2, Millis(1999)));
        assert!(is_expired(2, Millis(2000)));
        assert!(!is_expired(0, Millis(u64::MAX)));
        assert_eq!(expiry_for(Millis(0), u32::MAX), u32::MAX);
    }

    #[test]
    fn targets_stay_inside_the_window() {
        let w = Wheel::new(Millis(10_000));
        assert_eq!(w.target(5), 11);
        assert_eq!(w.target(20), 20);
        assert_eq!(w.target(u32::MAX), 10 + WHEEL_SLOTS - 1);
    }

    #[test]
    fn due_hints_come_out_in_budgeted_rounds() {
        let mut w = Wheel::new(Millis(0));
        for i in 0..5 {
            w.file(i, 3);
        }
        w.file(9, 4);
        assert!(w.take_due(Millis(2999), 10).is_none());
        let (s, a) = w.take_due(Millis(3000), 3).expect("due");
        assert_eq!((s, a.len()), (3, 3));
        let (s, b) = w.take_due(Millis(3000), 3).expect("rest");
        assert_eq!((s, b.len()), (3, 2));
        assert!(w.take_due(Millis(3000), 3).is_none());
        let (s, c) = w.take_due(Millis(9000), 3).expect("next");
        assert_eq!((s, c), (4, vec![9]));
        assert_eq!(w.refs(), 0);
    }
}
