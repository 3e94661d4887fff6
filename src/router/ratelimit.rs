//! `RATE_LIMIT` admission: a token bucket (governor's GCRA) shared by all
//! of a router's connections.

use std::num::NonZeroU32;

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

type FakeLimiter =
    RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// Admits at most N requests per second, with a burst of a tenth of a
/// second's worth, so a 3-second flood admits about 3·N, not 4·N.
pub enum Limiter {
    /// No limit (`RATE_LIMIT` 0 or unset).
    Off,
    /// On the real clock.
    Real(DefaultDirectRateLimiter, u32),
    /// On a clock a test moves by hand.
    Fake(FakeLimiter, u32),
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limiter::Off => "Limiter::Off",
            Limiter::Real(..) => "Limiter::Real",
            Limiter::Fake(..) => "Limiter::Fake",
        })
    }
}

fn quota(per_second: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new(per_second.get() / 10).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

impl Limiter {
    /// A limiter for `per_second` requests (0 = unlimited).
    pub fn new(per_second: u32) -> Self {
        match NonZeroU32::new(per_second) {
            None => Limiter::Off,
            Some(n) => Limiter::Real(RateLimiter::direct(quota(n)), per_second),
        }
    }

    /// A limiter on `clock` (tests).
    pub fn with_clock(per_second: u32, clock: FakeRelativeClock) -> Self {
        match NonZeroU32::new(per_second) {
            None => Limiter::Off,
            Some(n) => Limiter::Fake(RateLimiter::direct_with_clock(quota(n), clock), per_second),
        }
    }

    /// Takes one request's token; `Err(limit)` if none is left.
    #[inline]
    pub fn admit(&self) -> Result<(), u32> {
        match self {
            Limiter::Off => Ok(()),
            Limiter::Real(l, n) => l.check().map_err(|_| *n),
            Limiter::Fake(l, n) => l.check().map_err(|_| *n),
        }
    }
}
