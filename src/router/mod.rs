//! The router: accepts clients on one port (binary protocol, gRPC, Redis,
//! HTTP),
//! keeps the member table, and forwards each key to its owner.
//!
//! Lower rooms know nothing of the router: `request` (a request in
//! flight), `metrics`, `ratelimit`, `pool` (node connections, reporting
//! failures through a narrow `NodeEvents` sink) and `members` (the ring).
//! `forward` routes and retries, `admit` is the one admission path every
//! front shares. The fronts: `server` accepts and sniffs a connection,
//! `session` runs the binary protocol (one task reads and writes),
//! `http` serves health, metrics and `grpc` (the gateway), `redis` serves
//! Redis clients (RESP from `crate::resp`), `memcache` memcached clients
//! (from `crate::memcache`); they await each operation through `call`. `local` answers
//! what the router answers itself, and `cluster_stats` gathers counters
//! from every node. `etcd` follows the ring in etcd when membership
//! lives there (several routers), instead of the member table deciding.

pub mod accept;
pub mod admit;
pub mod call;
pub mod cluster_stats;
pub mod etcd;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod local;
pub mod members;
pub mod memcache;
pub mod metrics;
pub mod pool;
pub mod ratelimit;
pub mod redis;
pub mod request;
pub mod server;
pub mod session;
pub mod settings;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use members::{Connector, Members};
use metrics::{RingGauges, RouterMetrics, RouterStats};
use pool::{NodeHandle, PoolContext};
use ratelimit::Limiter;

pub use server::run;
pub use settings::RouterSettings;

/// A router's shared state.
#[derive(Debug)]
pub struct Router {
    /// Limits and timings.
    pub settings: RouterSettings,
    /// The member table and ring.
    pub members: Members,
    /// `RATE_LIMIT`.
    pub limiter: Limiter,
    /// Counters.
    pub stats: RouterStats,
    /// Prometheus metrics (`/metrics` on the router's port).
    pub metrics: Arc<RouterMetrics>,
    /// Cancelled when the router shuts down (stops node connections too).
    pub shutdown: CancellationToken,
    /// What node connections (and join probes) need.
    pub pool: Arc<PoolContext>,
    /// Membership changes admitted (see [`admit::MEMBERSHIP_CHANGES_PER_SECOND`]).
    pub membership_changes: governor::DefaultDirectRateLimiter,
    /// Membership in etcd, once [`etcd::follow`] has started.
    pub etcd: std::sync::OnceLock<etcd::EtcdMembers>,
    /// Room for awaited calls (gRPC, Redis), see [`call::MAX_CALLS`].
    pub calls: Arc<tokio::sync::Semaphore>,
}

impl Router {
    /// A router with an empty ring and a real-clock rate limiter.
    pub fn new(settings: RouterSettings, shutdown: CancellationToken) -> Arc<Self> {
        let limiter = Limiter::new(settings.rate_limit);
        Self::with_limiter(settings, limiter, shutdown)
    }

    /// A router with the given rate limiter (tests use a fake clock).
    pub fn with_limiter(
        settings: RouterSettings,
        limiter: Limiter,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let metrics = Arc::new(RouterMetrics::new());
        Arc::new_cyclic(|weak| {
            let ctx = Arc::new(PoolContext {
                connect_timeout: settings.connect_timeout,
                max_frame: settings.max_frame,
                node_timeout: settings.node_timeout,
                token: settings.cluster_token.clone(),
                tls: settings.tls.as_ref().map(|t| t.connector.clone()),
                metrics: metrics.clone(),
                events: Arc::new(forward::Failover::new(weak.clone())),
                shutdown: shutdown.clone(),
                fenced_answer_within: settings.fenced_answer_within,
            });
            let conns = settings.node_connections;
            let probes = ctx.clone();
            let connector: Connector = Arc::new(move |address: &str| {
                Arc::new(NodeHandle::spawn(address, conns, ctx.clone()))
            });
            Router {
                members: Members::new(settings.heartbeat_timeout, settings.hold_down, connector)
                    .with_handoff_window(settings.handoff_window),
                settings,
                limiter,
                stats: RouterStats::default(),
                metrics,
                shutdown,
                pool: probes,
                membership_changes: admit::membership_limiter(),
                etcd: std::sync::OnceLock::new(),
                calls: Arc::new(tokio::sync::Semaphore::new(call::MAX_CALLS)),
            }
        })
    }

    /// Renders `/metrics`.
    pub fn scrape(&self) -> String {
        let view = self.members.view();
        let ring = RingGauges {
            members: view.ring.len() as u64,
            epoch: view.epoch,
            ejections: self.members.ejections(),
            etcd_connected: self.etcd.get().is_some_and(|e| e.connected()),
        };
        self.metrics.scrape(&self.stats, ring)
    }
}
