//! The cache node: a sharded in-memory store in front of a durable tier,
//! served over the binary protocol.
//!
//! `server` owns sockets and frames, `cache` owns memory and the tier
//! behind it, and `execute` is the one match that joins a decoded request
//! to the cache. `membership` keeps the node in the routers' rings.

pub mod cache;
pub mod clock;
pub mod copies;
pub mod etcd;
pub mod execute;
pub mod fence;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod redis;
pub mod replicas;
pub mod replication;
pub mod server;
pub mod settings;
pub mod stats;
pub mod store;
pub mod tier;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use milena_protocol::Stat;
use tokio_util::sync::CancellationToken;

pub use cache::{Cache, NEGATIVE_TTL_SECS, ReadThrough};
pub use clock::{Clock, MANUAL_UNIX_BASE};
pub use membership::Membership;
pub use settings::{NodeSettings, WriteMode};
pub use stats::{NodeStats, Tally};

/// How often expired entries are reclaimed in the background.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a node's connections share.
#[derive(Debug)]
pub struct Node {
    /// Limits and defaults.
    pub settings: NodeSettings,
    /// Time source for TTLs.
    pub clock: Clock,
    /// Request counters.
    pub stats: NodeStats,
    /// The latest ring epoch heard from a router (0 before joining).
    pub ring_epoch: AtomicU64,
    /// Prometheus metrics.
    pub metrics: metrics::NodeMetrics,
    /// The several-routers rule (etcd membership); unarmed otherwise.
    pub fence: fence::Fence,
    /// Memory and the tier behind it.
    pub cache: Arc<Cache>,
    /// What the node says it is in its hello answer: `node milena/<version>`
    /// and, in a cluster, the address it advertises, so a router can check
    /// that the listener a join names is that node.
    hello_name: std::sync::OnceLock<String>,
}

/// A node's hello answer before it knows its advertised address.
const SERVER_NAME: &str = concat!("node milena/", env!("CARGO_PKG_VERSION"));

impl Node {
    /// A memory-only node on tokio's clock.
    pub fn new(settings: NodeSettings) -> Self {
        Self::with_clock(settings, Clock::new())
    }

    /// A memory-only node on the given clock.
    pub fn with_clock(settings: NodeSettings, clock: Clock) -> Self {
        Self::with_tier(settings, clock, Arc::new(tier::NoTier))
    }

    /// A node in front of `tier` (`NoTier`: memory only). Must be called
    /// inside a tokio runtime when the tier persists (uploaders start).
    pub fn with_tier(settings: NodeSettings, clock: Clock, tier: Arc<dyn tier::Tier>) -> Self {
        let metrics = metrics::NodeMetrics::new();
        let cache = Arc::new(Cache::new(
            &settings,
            clock.clone(),
            tier,
            metrics.tier_duration.clone(),
        ));
        Node {
            cache,
            clock,
            settings,
            stats: NodeStats::default(),
            ring_epoch: AtomicU64::new(0),
            metrics,
            fence: fence::Fence::default(),
            hello_name: std::sync::OnceLock::new(),
        }
    }

    /// What the node says it is in its hello answer.
    pub fn hello_name(&self) -> &str {
        self.hello_name.get().map_or(SERVER_NAME, String::as_str)
    }

    /// Names the address this node advertises in its hello answers (once;
    /// a node has one identity for its life).
    pub fn set_advertise(&self, advertise: &str) {
        let _ = self.hello_name.set(format!("{SERVER_NAME} {advertise}"));
    }

    /// Renders `/metrics`.
    pub fn scrape(&self) -> String {
        self.metrics
            .scrape(&self.stats, &self.cache, self.settings.store.max_items)
    }

    /// The node's counters, as a `Stats` request answers them.
    pub fn stats_list(&self) -> Vec<Stat<'static>> {
        let s = &self.stats;
        let c = self.cache.stats();
        let st = self.cache.store_stats();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let queue = self.cache.queue_stats();
        let queued = |f: fn(&tier::writeback::WriteBackStats) -> &AtomicU64| {
            queue.map_or(0, |q| f(q).load(Ordering::Relaxed))
        };
        [
            ("uptime_seconds", self.clock.now().0 / 1000),
            ("connections", load(&s.conns.open)),
            ("connections_total", load(&s.conns.total)),
            ("connections_refused", load(&s.conns.refused)),
            ("tasks", crate::metrics::alive_tasks()),
            ("protocol_errors", load(&s.protocol_errors)),
            ("requests", load(&s.requests)),
            ("errors", load(&s.errors)),
            ("gets", load(&s.gets)),
            ("puts", load(&s.puts)),
            ("deletes", load(&s.deletes)),
            ("hits", st.counters.hits),
            ("misses", st.counters.misses),
            ("items", st.items),
            ("bytes", st.bytes),
            ("evictions", st.counters.evictions),
            ("expirations", st.counters.expirations),
            ("stale_drops", st.counters.stale),
            ("tier_reads", load(&c.tier_reads)),
            ("tier_read_errors", load(&c.tier_read_errors)),
            ("handoff_peeks", load(&c.handoff_peeks)),
            ("handoff_adopted", load(&c.handoff_adopted)),
            ("handoff_errors", load(&c.handoff_errors)),
            ("tier_get_count", load(&c.tier_times.count[0])),
            ("tier_get_micros", load(&c.tier_times.micros[0])),
            ("tier_put_count", load(&c.tier_times.count[1])),
            ("tier_put_micros", load(&c.tier_times.micros[1])),
            ("tier_delete_count", load(&c.tier_times.count[2])),
            ("tier_delete_micros", load(&c.tier_times.micros[2])),
            ("tier_queue_depth", self.cache.queue_depth() as u64),
            ("tier_writes", queued(|q| &q.written)),
            ("tier_write_errors", queued(|q| &q.errors)),
            ("tier_writes_refused", queued(|q| &q.refused)),
            ("tier_coalesced", queued(|q| &q.coalesced)),
            ("ring_epoch", load(&self.ring_epoch)),
            (
                "ring_members_known",
                self.cache
                    .replication
                    .as_ref()
                    .map_or(0, |r| r.members() as u64),
            ),
            ("replica_entries", self.cache.replicas.len() as u64),
            ("replica_bytes", self.cache.replicas.bytes()),
            ("replicas_promoted", load(&self.cache.replicas.promoted)),
            ("replicas_refused", load(&self.cache.replicas.refused)),
            (
                "copies_sent",
                self.cache
                    .replication
                    .as_ref()
                    .map_or(0, |r| load(&r.stats.sent)),
            ),
            (
                "copies_failed",
                self.cache
                    .replication
                    .as_ref()
                    .map_or(0, |r| load(&r.stats.failed)),
            ),
            (
                "copies_to_move",
                self.cache
                    .replication
                    .as_ref()
                    .map_or(0, |r| r.moved().len() as u64),
            ),
            (
                "copies_outstanding",
                self.cache
                    .replication
                    .as_ref()
                    .map_or(0, |r| r.outstanding() as u64),
            ),
            ("max_items", self.settings.store.max_items as u64),
            ("max_bytes", self.settings.store.max_bytes.unwrap_or(0)),
            ("shards", self.cache.store().shard_count() as u64),
        ]
        .into_iter()
        .map(|(name, value)| Stat { name, value })
        .collect()
    }
}

/// Serves the binary protocol on `listener` until `shutdown`, then drains
/// the connections and closes the cache (every acknowledged write reaches
/// the tier before this returns, within `FLUSH_TIMEOUT_SECONDS`).
pub async fn run(listener: tokio::net::TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let expiry = tokio::spawn(expire_loop(node.cache.clone(), shutdown.clone()));
    server::serve(listener, node.clone(), shutdown).await;
    let _ = expiry.await;
    node.cache.close().await;
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
    shutdown: CancellationToken,
) {
    node.set_advertise(&membership.advertise);
    let serving = CancellationToken::new();
    let server = tokio::spawn(run(listener, node.clone(), serving.clone()));
    let registered = match membership.etcd.clone() {
        Some(m) => {
            Some(etcd::maintain(node.clone(), m, membership.advertise.clone(), shutdown).await)
        }
        None => {
            membership::maintain(node.clone(), membership, shutdown).await;
            None
        }
    };
    if node.cache.persists() {
        tracing::info!(
            depth = node.cache.queue_depth(),
            "left the ring; flushing the write-behind queue"
        );
        node.cache.flush().await;
    }
    serving.cancel();
    let _ = server.await;
    if let Some(r) = registered {
        r.done().await;
    }
}

async fn expire_loop(cache: Arc<Cache>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let n = cache.expire();
                if n > 0 {
                    tracing::debug!(reclaimed = n, "expired entries reclaimed");
                }
            }
        }
    }
}

/// Serves this node's Prometheus metrics at `/metrics` on `listener` until
/// `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
) {
    let scrape: crate::metrics::Scrape = Arc::new(move || node.scrape());
    crate::metrics::serve(listener, scrape, shutdown).await;
}
