//! A process-wide budget of bytes held for requests still arriving (large
//! frames partly read, gRPC bodies partly received). Without it, a few
//! hundred connections that each announce a large put, send half of it and
//! stall hold gigabytes. With it, a connection that would go over the
//! budget waits before reading further (backpressure), and a gRPC body
//! that cannot get room is refused; what is held never exceeds the budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames at most this large are read without asking the budget: every
/// connection's read buffer holds that much anyway, and asking for each
/// small request would put a shared lock on the hot path.
pub const SMALL_FRAME: usize = 64 * 1024;

/// Budget accounting unit: 1 KiB (a semaphore counts in u32 permits).
const UNIT: usize = 1024;

/// A budget of bytes, shared by all of a process's connections.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

/// Bytes held from a [`ByteBudget`] until dropped.
#[derive(Debug)]
pub struct Held(OwnedSemaphorePermit);

impl Held {
    /// Adds `other` to what this holds.
    pub fn merge(&mut self, other: Held) {
        self.0.merge(other.0);
    }
}

impl ByteBudget {
    /// A budget of `bytes` (at least one large frame's worth is sensible).
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT as u64).max(1)).unwrap_or(u32::MAX);
        // A semaphore holds at most `MAX_PERMITS` (about 2^61): u32 fits.
        ByteBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    fn units_for(&self, bytes: usize) -> u32 {
        // A single frame larger than the whole budget may still be read,
        // alone: otherwise it would wait for ever.
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units)
    }

    /// Holds `bytes`, waiting while the budget is spent. (`None` only if
    /// the budget were closed, which it never is.)
    pub async fn hold(&self, bytes: usize) -> Option<Held> {
        let n = self.units_for(bytes);
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .ok()
            .map(Held)
    }

    /// Holds `bytes` if the budget has room now.
    pub fn try_hold(&self, bytes: usize) -> Option<Held> {
        let n = self.units_for(bytes);
        self.permits
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(Held)
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        (self.units as u64 - self.permits.available_permits() as u64) * UNIT as u64
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> u64 {
        self.units as u64 * UNIT as u64
    }
}

/// One connection's view of the request it is receiving: the budget it
/// holds for a large frame, and since when a frame has been incomplete.
#[derive(Debug)]
pub struct Receiving {
    held: Option<Held>,
    since: Option<tokio::time::Instant>,
    timeout: std::time::Duration,
}

impl Receiving {
    /// A connection allowing `timeout` for each frame to finish arriving.
    pub fn new(timeout: std::time::Duration) -> Self {
        Receiving {
            held: None,
            since: None,
            timeout,
        }
    }

    /// After a batch was decoded from `buf`: `completed` says whether any
    /// frame finished. A finished frame gives back what was held for it and
    /// restarts the clock for the next one.
    pub fn decoded(&mut self, buf: &[u8], completed: bool) {
        if completed {
            self.held = None;
        }
        if buf.is_empty() {
            self.since = None;
        } else if completed || self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
        }
    }

    /// The bytes to hold from the budget before reading more: the length
    /// the partial frame in `buf` announces, when it is large and not held yet.
    pub fn to_hold(&self, buf: &[u8]) -> Option<usize> {
        if self.held.is_some() {
            return None;
        }
        announced(buf).filter(|&n| n > SMALL_FRAME)
    }

    /// Keeps what was held for the frame being received.
    pub fn hold(&mut self, held: Option<Held>) {
        self.held = held;
    }

    /// When the frame being received must have finished.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since.map(|s| s + self.timeout)
    }

    /// Seconds a frame may take (for the error message).
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }
}

/// Sleeps until `deadline`, or for ever without one.
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The length a partly received frame announces, if its prefix is in.
pub fn announced(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_are_bounded_and_given_back() {
        let b = ByteBudget::new(4 * 1024 * 1024);
        let a = b.hold(3 * 1024 * 1024).await;
        assert!(b.try_hold(2 * 1024 * 1024).is_none(), "over the budget");
        assert_eq!(b.in_use(), 3 * 1024 * 1024);
        drop(a);
        assert!(b.try_hold(2 * 1024 * 1024).is_some());
        // Larger than the whole budget: taken alone, not waited on for ever.
        let all = b.hold(100 * 1024 * 1024).await;
        assert_eq!(b.in_use(), b.total());
        drop(all);
        assert_eq!(b.in_use(), 0);
    }
}
