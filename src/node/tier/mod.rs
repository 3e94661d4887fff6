//! The durable tier behind a node's memory: S3, a local directory, or
//! nothing. Tiers sit behind one small trait and answer with explicit
//! outcomes; the node's cache (its write-behind queue and read-through
//! path) is their only caller, and [`open`] picks one from the
//! configuration.
//!
//! Every object carries its write version and absolute expiry, so an
//! expired object is never served and an older write never replaces a
//! newer one; a delete leaves a tombstone with its version for the same
//! reason.

pub mod dir;
pub mod layout;
pub mod s3;
pub mod writeback;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// How long a tombstone guards a deleted key against delayed older writes.
/// Far longer than any upload is retried.
pub const TOMBSTONE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Why the configured tier cannot be used (the node does not start).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `S3_ENDPOINT` is not a URL.
    #[error("invalid S3_ENDPOINT: {0}")]
    Endpoint(String),
    /// The store refused the bucket (name, credentials, region).
    #[error("cannot use S3_BUCKET={bucket}: {source}")]
    Bucket {
        /// `S3_BUCKET`.
        bucket: String,
        /// What the store said.
        source: TierError,
    },
    /// `MAX_KEY_SIZE` allows keys the tier cannot name.
    #[error(
        "MAX_KEY_SIZE={max_key_size} is more than the {tier} tier can store (keys up to {limit} bytes): lower MAX_KEY_SIZE"
    )]
    KeyTooLong {
        /// `MAX_KEY_SIZE`.
        max_key_size: u64,
        /// The tier's name.
        tier: &'static str,
        /// Its limit.
        limit: usize,
    },
    /// The directory cannot be created or used.
    #[error("cannot use DATA_DIR={dir}: {source}")]
    Dir {
        /// `DATA_DIR`.
        dir: String,
        /// Why.
        source: TierError,
    },
}

/// The tier the configuration asks for: S3 when `S3_BUCKET` is set, else
/// the local directory `DATA_DIR`, else none (memory only, with a warning).
/// An empty value means "not set" (compose files pass `S3_ENDPOINT=` for AWS).
pub async fn open(cfg: &crate::config::NodeConfig) -> Result<Arc<dyn Tier>, OpenError> {
    let tier = open_configured(cfg).await?;
    match tier.max_key() {
        Some(limit) if cfg.max_key_size > limit as u64 => Err(OpenError::KeyTooLong {
            max_key_size: cfg.max_key_size,
            tier: tier.name(),
            limit,
        }),
        _ => Ok(tier),
    }
}

async fn open_configured(cfg: &crate::config::NodeConfig) -> Result<Arc<dyn Tier>, OpenError> {
    use tracing::{info, warn};
    let endpoint = cfg.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(bucket) = cfg.s3_bucket.as_ref().filter(|b| !b.is_empty()) {
        if let Some(dir) = &cfg.data_dir {
            warn!(data_dir = %dir.display(), "S3_BUCKET is set: DATA_DIR is ignored");
        }
        if let Some(e) = &endpoint {
            crate::net::parse_url(e).map_err(OpenError::Endpoint)?;
        }
        let t = s3::S3Tier::connect(s3::S3Settings {
            bucket: bucket.clone(),
            prefix: cfg.s3_prefix.clone(),
            endpoint: endpoint.clone(),
            region: cfg.aws_region.clone(),
            static_credentials: None,
        })
        .await;
        match t.check().await {
            Ok(None) => {}
            Ok(Some(why)) => warn!(
                bucket = %bucket,
                "S3 is unreachable for now; serving from memory and queueing writes until it answers: {why}"
            ),
            Err(source) => {
                return Err(OpenError::Bucket {
                    bucket: bucket.clone(),
                    source,
                });
            }
        }
        info!(
            bucket = %bucket,
            prefix = %cfg.s3_prefix,
            endpoint = endpoint.as_deref().unwrap_or("AWS"),
            write_mode = ?cfg.write_mode,
            "tier: S3"
        );
        return Ok(Arc::new(t));
    }
    if let Some(dir) = &cfg.data_dir {
        let t = dir::DirTier::open(dir)
            .await
            .map_err(|source| OpenError::Dir {
                dir: dir.display().to_string(),
                source,
            })?;
        info!(data_dir = %dir.display(), write_mode = ?cfg.write_mode, "tier: local directory");
        return Ok(Arc::new(t));
    }
    warn!("no S3_BUCKET or DATA_DIR: entries live in memory only and are lost with the node");
    Ok(Arc::new(NoTier))
}

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

/// Why a tier operation failed. [`TierError::is_retryable`] tells a
/// passing outage (retry with backoff) from a write the tier will never
/// take (give up, count it, tell whoever waits).
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
        /// Whether the same request may succeed later (a 5xx, a timeout,
        /// throttling, a refused connection), as opposed to one the store
        /// will refuse every time (a name it does not accept).
        retryable: bool,
    },
}

impl TierError {
    /// Whether trying the same operation again later may succeed. Outages,
    /// timeouts, full disks and missing permissions can pass (an operator
    /// fixes them); a foreign or corrupt object, or a key the tier cannot
    /// name, fails the same way for ever and must not be retried endlessly.
    pub fn is_retryable(&self) -> bool {
        match self {
            TierError::Io(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::InvalidFilename
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
            ),
            TierError::Corrupt { .. } => false,
            TierError::Service { retryable, .. } => *retryable,
        }
    }
}

/// A durable tier.
#[async_trait::async_trait]
pub trait Tier: Send + Sync + std::fmt::Debug {
    /// Short name for logs and metrics (`s3`, `dir`, `none`).
    fn name(&self) -> &'static str;
    /// Whether writes are kept: only then does a node queue writes behind
    /// and read misses through. `false` for [`NoTier`] alone.
    fn persists(&self) -> bool {
        true
    }
    /// The longest key the tier can store, if it has a limit (a path or
    /// object name length): a node refuses to start with a larger
    /// `MAX_KEY_SIZE` rather than fail those writes for ever.
    fn max_key(&self) -> Option<usize> {
        None
    }
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
    fn persists(&self) -> bool {
        false
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
    fn persists(&self) -> bool {
        self.inner.persists()
    }
    fn max_key(&self) -> Option<usize> {
        self.inner.max_key()
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
