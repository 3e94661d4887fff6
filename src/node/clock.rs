//! Time as a node reads it: a monotonic clock for TTLs in memory, wall
//! time for expiries and versions that travel to the tier and other nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::store::Millis;

/// Milliseconds since the node started. Normally tokio's clock (which tests
/// may pause and advance); a manual clock lets tests that talk over real
/// sockets move time by hand, since a paused runtime would skip ahead on its
/// own whenever it waits for I/O.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Tokio's clock, from the moment the node started.
    Tokio(tokio::time::Instant),
    /// A reading set by hand (milliseconds).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Tokio's clock, reading zero now.
    pub fn new() -> Self {
        Clock::Tokio(tokio::time::Instant::now())
    }

    /// A manual clock and the handle that sets it.
    pub fn manual() -> (Self, Arc<AtomicU64>) {
        let ms = Arc::new(AtomicU64::new(0));
        (Clock::Manual(ms.clone()), ms)
    }

    /// The current reading.
    #[inline]
    pub fn now(&self) -> Millis {
        match self {
            Clock::Tokio(start) => Millis(start.elapsed().as_millis() as u64),
            Clock::Manual(ms) => Millis(ms.load(Ordering::Relaxed)),
        }
    }

    /// Wall-clock Unix seconds, for expiries stored in the tier (absolute,
    /// so they mean the same to every node). A manual clock reads
    /// [`MANUAL_UNIX_BASE`] plus its own reading, so tests can move it.
    pub fn unix_secs(&self) -> u64 {
        match self {
            Clock::Tokio(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Clock::Manual(ms) => MANUAL_UNIX_BASE + ms.load(Ordering::Relaxed) / 1000,
        }
    }
}

/// The Unix time a manual clock reads at zero (2023-11-14).
pub const MANUAL_UNIX_BASE: u64 = 1_700_000_000;

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock microseconds: the version of a write. Versions from several
/// nodes are compared, so they come from the wall clock, not [`Clock`].
pub fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
