//! The cache node: a sharded in-memory store served over the binary protocol.
//!
//! `server` owns sockets and frames, `store` owns memory, and `execute` is
//! the one match that joins a decoded request to the store.

pub mod execute;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod server;
pub mod store;
pub mod tier;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::NodeConfig;
use store::{Millis, Store, StoreConfig};

pub use membership::Membership;
pub use server::run;

/// Limits and defaults a node applies to requests.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Store sizing.
    pub store: StoreConfig,
    /// TTL for puts that do not name one (`TTL_SECONDS`; 0 = never expire).
    pub default_ttl: u32,
    /// Longest key accepted.
    pub max_key: usize,
    /// Longest value accepted.
    pub max_value: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// How long a new connection may take to send its hello (and finish
    /// its TLS handshake).
    pub hello_timeout: Duration,
    /// TLS for the listener and for connections to routers.
    pub tls: Option<crate::tls::Tls>,
    /// When puts are acknowledged (`WRITE_MODE`).
    pub write_mode: WriteMode,
    /// Keys the write-behind queue may hold before writers get an error.
    pub queue_capacity: usize,
    /// Concurrent tier uploads (`UPLOAD_CONCURRENCY`).
    pub uploaders: usize,
    /// How long a graceful stop waits for the tier to take the queued
    /// writes (`FLUSH_TIMEOUT_SECONDS`); past it the node exits without them
    /// and says how many it could not write.
    pub flush_timeout: std::time::Duration,
    /// Concurrent misses of one key share one tier read. Off only to
    /// measure what that saves (`bench/stampede.rs`).
    pub coalesce_misses: bool,
}

impl NodeSettings {
    /// The largest frame a node accepts: a put of the largest key and value,
    /// plus room for the message envelope.
    pub fn max_frame(&self) -> usize {
        self.max_key + self.max_value + 1024
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            store: StoreConfig {
                max_items: 100_000,
                max_bytes: None,
                shards: StoreConfig::default_shards(),
                exact_lru: false,
            },
            default_ttl: 3600,
            max_key: 250,
            max_value: 16 * 1024 * 1024,
            max_connections: 10_000,
            hello_timeout: Duration::from_secs(10),
            tls: None,
            write_mode: WriteMode::Async,
            queue_capacity: 100_000,
            uploaders: 64,
            flush_timeout: std::time::Duration::from_secs(30),
            coalesce_misses: true,
        }
    }
}

impl From<&NodeConfig> for NodeSettings {
    fn from(c: &NodeConfig) -> Self {
        NodeSettings {
            store: StoreConfig {
                max_items: usize::try_from(c.lru_size).unwrap_or(usize::MAX),
                max_bytes: c.max_memory,
                shards: c
                    .shards
                    .map_or_else(StoreConfig::default_shards, |s| s as usize),
                exact_lru: false,
            },
            default_ttl: c.ttl_seconds,
            max_key: c.max_key_size as usize,
            max_value: c.max_value_size as usize,
            max_connections: c.max_connections as usize,
            hello_timeout: Duration::from_secs(c.hello_timeout_secs),
            tls: None,
            write_mode: if c.write_mode == "sync" {
                WriteMode::Sync
            } else {
                WriteMode::Async
            },
            queue_capacity: c.queue_capacity as usize,
            uploaders: c.upload_concurrency as usize,
            flush_timeout: std::time::Duration::from_secs(c.flush_timeout_secs),
            coalesce_misses: true,
        }
    }
}

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

/// Node-wide counters. Connections tally locally and fold their counts in
/// once per batch, so the request path touches no shared cache line.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Requests executed (after hello).
    pub requests: AtomicU64,
    /// Requests answered with an error status, plus protocol errors.
    pub errors: AtomicU64,
    /// Get requests.
    pub gets: AtomicU64,
    /// Put requests.
    pub puts: AtomicU64,
    /// Delete requests.
    pub deletes: AtomicU64,
    /// Client connections: open, accepted, refused at `MAX_CONNECTIONS`.
    pub conns: Arc<crate::net::ConnCounters>,
    /// Connections closed for a protocol violation (bad frame, bad hello...).
    pub protocol_errors: AtomicU64,
    /// Reads through to the tier (after a memory miss).
    pub tier_reads: AtomicU64,
    /// Tier reads that failed.
    pub tier_read_errors: AtomicU64,
    /// Misses on which a key's previous owner was asked for a write it had
    /// not yet made durable.
    pub handoff_peeks: AtomicU64,
    /// Of those, answers newer than the tier's copy, taken over.
    pub handoff_adopted: AtomicU64,
    /// Of those, previous owners that could not be asked.
    pub handoff_errors: AtomicU64,
    /// Tier latency, by operation.
    pub tier_times: Arc<tier::TierTimes>,
}

/// Per-connection counts, folded into [`NodeStats`] after each batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Requests executed.
    pub requests: u64,
    /// Error answers.
    pub errors: u64,
    /// Gets.
    pub gets: u64,
    /// Puts.
    pub puts: u64,
    /// Deletes.
    pub deletes: u64,
}

impl NodeStats {
    /// Adds a connection's tally and resets it.
    pub fn fold(&self, t: &mut Tally) {
        if t.requests == 0 && t.errors == 0 {
            return;
        }
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.requests, t.requests);
        add(&self.errors, t.errors);
        add(&self.gets, t.gets);
        add(&self.puts, t.puts);
        add(&self.deletes, t.deletes);
        *t = Tally::default();
    }
}

/// Everything a node's connections share.
#[derive(Debug)]
pub struct Node {
    /// The in-memory store.
    pub store: Store,
    /// Limits and defaults.
    pub settings: NodeSettings,
    /// Time source for TTLs.
    pub clock: Clock,
    /// Counters.
    pub stats: NodeStats,
    /// The latest ring epoch heard from a router (0 before joining).
    pub ring_epoch: AtomicU64,
    /// Prometheus metrics.
    pub metrics: metrics::NodeMetrics,
    /// The durable tier behind memory (`NoTier` when memory-only).
    pub tier: Arc<dyn tier::Tier>,
    /// Background writes to the tier; `None` when memory-only.
    pub writeback: Option<tier::writeback::WriteBack>,
    /// The low-priority threads the uploads run on.
    pub background: Option<tier::writeback::Background>,
    /// Keys the tier recently did not have: a hot missing key does not
    /// send every get to the tier. Entries live `NEGATIVE_TTL_SECS`.
    pub negative: Store,
    /// Connections to other nodes, to ask a key's previous owner on a miss.
    pub peers: peers::Peers,
    /// Tier reads under way, so concurrent misses of one key share one read.
    pub reads: std::sync::Mutex<
        std::collections::HashMap<Vec<u8>, Vec<tokio::sync::oneshot::Sender<ReadThrough>>>,
    >,
}

/// How long a tier miss is remembered (seconds).
pub const NEGATIVE_TTL_SECS: u32 = 1;
/// Most tier misses remembered at once.
const NEGATIVE_ENTRIES: usize = 10_000;

/// The result of one read through to the tier, shared by every request
/// that missed the same key meanwhile.
#[derive(Debug, Clone)]
pub enum ReadThrough {
    /// The value (already inserted into memory).
    Found(bytes::Bytes),
    /// The tier has nothing live for the key.
    Missing,
    /// The tier could not be read.
    Failed(String),
}

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// At once; the tier write follows in the background.
    #[default]
    Async,
    /// Once the tier has it.
    Sync,
}

impl Node {
    /// A node with an empty store on tokio's clock.
    pub fn new(settings: NodeSettings) -> Self {
        Self::with_clock(settings, Clock::new())
    }

    /// A node with an empty store on the given clock.
    pub fn with_clock(settings: NodeSettings, clock: Clock) -> Self {
        Self::with_tier(settings, clock, None)
    }

    /// A node backed by `tier` (memory-only when `None`). Must be called
    /// inside a tokio runtime when a tier is given (uploaders start).
    pub fn with_tier(
        settings: NodeSettings,
        clock: Clock,
        tier: Option<Arc<dyn tier::Tier>>,
    ) -> Self {
        let metrics = metrics::NodeMetrics::new();
        let stats = NodeStats::default();
        let tier: Option<Arc<dyn tier::Tier>> = tier.map(|t| {
            Arc::new(tier::Timed::new(
                t,
                metrics.tier_duration.clone(),
                stats.tier_times.clone(),
            )) as Arc<dyn tier::Tier>
        });
        // Uploads run on their own low-priority threads when they can be
        // started; otherwise beside the requests.
        let background = tier.as_ref().and_then(|_| {
            let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
            tier::writeback::Background::start(threads)
                .map_err(|e| tracing::warn!("uploads share the request threads: {e}"))
                .ok()
        });
        let writeback = tier.as_ref().map(|t| {
            tier::writeback::WriteBack::start(
                t.clone(),
                settings.queue_capacity,
                settings.uploaders,
                background.as_ref().and_then(|b| b.handle()),
            )
        });
        let negative = Store::new(
            StoreConfig {
                max_items: NEGATIVE_ENTRIES,
                max_bytes: None,
                shards: 16,
                exact_lru: false,
            },
            clock.now(),
        );
        Node {
            negative,
            tier: tier.unwrap_or_else(|| Arc::new(tier::NoTier)),
            writeback,
            background,
            reads: Default::default(),
            store: Store::new(settings.store, clock.now()),
            clock,
            peers: peers::Peers::new(settings.tls.as_ref().map(|t| t.connector.clone())),
            settings,
            stats,
            ring_epoch: AtomicU64::new(0),
            metrics,
        }
    }
}

/// Runs a node that takes part in routers' rings: joins them, serves, and
/// at `shutdown` first leaves the routers (so they stop sending it keys),
/// then uploads its write-behind queue while still answering (the keys'
/// new owners may ask it for writes not yet in the tier), then drains its
/// connections.
pub async fn run_in_cluster(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    membership: Membership,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let serving = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(run(listener, node.clone(), serving.clone()));
    membership::maintain(node.clone(), membership, shutdown).await;
    // Out of the ring: upload what is queued while still answering, so
    // the keys' new owners can ask for writes not yet in the tier.
    if let Some(wb) = &node.writeback {
        let limit = node.settings.flush_timeout;
        tracing::info!(
            depth = wb.depth(),
            "left the ring; flushing the write-behind queue"
        );
        let _ = tokio::time::timeout(limit, wb.flush()).await;
    }
    serving.cancel();
    let _ = server.await;
}

/// Serves this node's Prometheus metrics at `/metrics` on `listener` until
/// `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let scrape: crate::metrics::Scrape = Arc::new(move || node.metrics.scrape(&node));
    crate::metrics::serve(listener, scrape, shutdown).await;
}
