//! Time for the store: a millisecond clock reading and expiry seconds.
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
}
