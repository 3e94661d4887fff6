//! The durable tier behind a node's memory: S3, a local directory, or
//! nothing. Tiers sit behind one small trait and answer with explicit
//! outcomes; the node's write-behind queue and read-through path (issue 4)
//! are their only callers.
//!
//! Every object carries its write version and absolute expiry, so an
//! expired object is never served and an older write never replaces a
//! newer one.

pub mod dir;
pub mod layout;
pub mod s3;
pub mod writeback;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// What a tier stores for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The value.
    pub value: Bytes,
    /// Unix seconds after which the object is dead; `None` never expires.
    pub expires_at: Option<u64>,
    /// Write version (ring-epoch microseconds of the write): higher wins.
    pub version: u64,
}

impl Object {
    /// Whether the object is dead at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A live object.
    Found(Object),
    /// Nothing stored under the key.
    Absent,
    /// An object whose TTL has passed (and which the tier removed).
    Expired,
}

/// What a write or delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied.
    Stored,
    /// Not applied: the tier holds a newer version.
    Superseded,
}

/// Why a tier operation failed (the caller retries with backoff).
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Reading or writing failed.
    #[error("tier I/O: {0}")]
    Io(#[from] std::io::Error),
    /// What the tier holds is not a Milena object.
    #[error("corrupt object {name}: {reason}")]
    Corrupt {
        /// Object name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store refused or failed a request.
    #[error("tier {op} {name}: {message}")]
    Service {
        /// The operation (`get`, `put`, ...).
        op: &'static str,
        /// Object name.
        name: String,
        /// What the store said.
        message: String,
    },
}

/// A durable tier.
#[async_trait::async_trait]
pub trait Tier: Send + Sync + std::fmt::Debug {
    /// Short name for logs and metrics (`s3`, `dir`, `none`).
    fn name(&self) -> &'static str;
    /// Reads `key`, at `now` (Unix seconds).
    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError>;
    /// Writes `obj` under `key` unless a newer version is there.
    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError>;
    /// Removes `key` unless a version newer than `version` is there.
    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError>;
}

/// No tier: memory only. Reads find nothing; writes are dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTier;

#[async_trait::async_trait]
impl Tier for NoTier {
    fn name(&self) -> &'static str {
        "none"
    }
    async fn get(&self, _: &[u8], _: u64) -> Result<ReadOutcome, TierError> {
        Ok(ReadOutcome::Absent)
    }
    async fn put(&self, _: &[u8], _: &Object) -> Result<WriteOutcome, TierError> {
        Ok(WriteOutcome::Stored)
    }
    async fn delete(&self, _: &[u8], _: u64) -> Result<WriteOutcome, TierError> {
        Ok(WriteOutcome::Stored)
    }
}

/// Cumulative tier latency, by operation (get, put, delete), for stats.
#[derive(Debug, Default)]
pub struct TierTimes {
    /// Operations finished, by operation.
    pub count: [AtomicU64; 3],
    /// Their total time in microseconds, by operation.
    pub micros: [AtomicU64; 3],
}

/// Operation names, indexed as in [`TierTimes`].
pub const TIER_OPERATIONS: [&str; 3] = ["get", "put", "delete"];

/// A tier that times every operation: into a histogram for `/metrics` and
/// into [`TierTimes`] for stats. Tier calls take milliseconds, so one
/// shared histogram observation each costs nothing that matters.
#[derive(Debug)]
pub struct Timed {
    inner: Arc<dyn Tier>,
    histogram: prometheus::HistogramVec,
    times: Arc<TierTimes>,
}

impl Timed {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn Tier>,
        histogram: prometheus::HistogramVec,
        times: Arc<TierTimes>,
    ) -> Self {
        Timed {
            inner,
            histogram,
            times,
        }
    }

    fn record(&self, op: usize, started: Instant) {
        let elapsed = started.elapsed();
        self.histogram
            .with_label_values(&[TIER_OPERATIONS[op]])
            .observe(elapsed.as_secs_f64());
        self.times.count[op].fetch_add(1, Ordering::Relaxed);
        self.times.micros[op].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Tier for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        let t = Instant::now();
        let r = self.inner.get(key, now).await;
        self.record(0, t);
        r
    }
    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        let t = Instant::now();
        let r = self.inner.put(key, obj).await;
        self.record(1, t);
        r
    }
    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        let t = Instant::now();
        let r = self.inner.delete(key, version).await;
        self.record(2, t);
        r
    }
}
