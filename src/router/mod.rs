//! The router: accepts clients (binary protocol, and HTTP for health on the
//! same port), keeps the member table, and forwards each key to its owner.
//!
//! `members` owns the ring, `forward` routes and retries, `pool` owns the
//! node connections, `server` owns client sockets.

pub mod forward;
pub mod members;
pub mod metrics;
pub mod pool;
pub mod ratelimit;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RouterConfig;
use members::{Connector, Members};
use pool::NodeHandle;
use ratelimit::Limiter;

pub use server::run;

/// Router limits and timings.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Requests per second admitted (0 = unlimited).
    pub rate_limit: u32,
    /// A node silent this long is ejected.
    pub heartbeat_timeout: Duration,
    /// An ejected node's heartbeats are ignored this long.
    pub hold_down: Duration,
    /// `HANDOFF_WINDOW_SECONDS`: how long after a ring change a key's
    /// previous owner is asked for writes not yet in the tier.
    pub handoff_window: Duration,
    /// Connections kept to each node.
    pub node_connections: usize,
    /// Requests one client connection may have in flight.
    pub max_inflight: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Largest frame accepted from clients and nodes.
    pub max_frame: usize,
    /// How long a new client may take to say hello.
    pub hello_timeout: Duration,
    /// Limit on connecting to a node.
    pub connect_timeout: Duration,
    /// A node that leaves a request unanswered this long is ejected and
    /// its requests go to the next owner.
    pub node_timeout: Duration,
    /// `CLUSTER_TOKEN`: when set, join, leave and heartbeat need it.
    pub cluster_token: Option<crate::error::Secret>,
    /// TLS for the router's port and for `https://` nodes.
    pub tls: Option<crate::tls::Tls>,
    /// Longest key forwarded (keep equal to the nodes' `MAX_KEY_SIZE`).
    pub max_key: usize,
    /// Longest value forwarded (keep equal to the nodes' `MAX_VALUE_SIZE`).
    pub max_value: usize,
}

impl RouterSettings {
    /// Refuses keys and values the nodes would refuse, before forwarding:
    /// a frame over a node's limit would make it drop the whole connection.
    pub fn check_sizes(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), crate::error::WireError> {
        use crate::error::WireError;
        if key.is_empty() {
            return Err(WireError::EmptyKey);
        }
        if key.len() > self.max_key {
            return Err(WireError::KeyTooLarge {
                len: key.len(),
                max: self.max_key,
            });
        }
        match value {
            Some(v) if v.len() > self.max_value => Err(WireError::ValueTooLarge {
                len: v.len(),
                max: self.max_value,
            }),
            _ => Ok(()),
        }
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            rate_limit: 0,
            heartbeat_timeout: Duration::from_secs(3),
            hold_down: Duration::from_secs(2),
            handoff_window: members::HANDOFF_WINDOW,
            node_connections: 2,
            max_inflight: 1024,
            max_connections: 10_000,
            max_frame: 250 + 16 * 1024 * 1024 + 1024,
            hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            cluster_token: None,
            tls: None,
            max_key: 250,
            max_value: 16 * 1024 * 1024,
        }
    }
}

impl From<&RouterConfig> for RouterSettings {
    fn from(c: &RouterConfig) -> Self {
        RouterSettings {
            rate_limit: c.rate_limit,
            heartbeat_timeout: Duration::from_millis(c.heartbeat_timeout_ms),
            hold_down: Duration::from_millis(c.heartbeat_timeout_ms),
            handoff_window: Duration::from_secs(c.handoff_window_secs),
            node_connections: c.node_connections(),
            max_inflight: c.max_inflight as usize,
            max_connections: c.max_connections as usize,
            hello_timeout: Duration::from_secs(c.hello_timeout_secs),
            cluster_token: c.cluster_token.clone(),
            node_timeout: Duration::from_millis(c.node_timeout_ms),
            max_key: c.max_key_size as usize,
            max_value: c.max_value_size as usize,
            // Room for the largest put, as on the nodes.
            max_frame: c.max_key_size as usize + c.max_value_size as usize + 1024,
            ..RouterSettings::default()
        }
    }
}

/// Router-wide counters.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Client requests read (after hello).
    pub requests: AtomicU64,
    /// Requests forwarded to nodes.
    pub forwarded: AtomicU64,
    /// Requests answered with an error by the router itself.
    pub errors: AtomicU64,
    /// Requests refused by `RATE_LIMIT`.
    pub rate_limited: AtomicU64,
    /// Requests re-sent after their node failed.
    pub retries: AtomicU64,
    /// Requests answered `unavailable`.
    pub unavailable: AtomicU64,
    /// Client connections: open, accepted, refused at `MAX_CONNECTIONS`.
    pub conns: Arc<crate::net::ConnCounters>,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
}

impl RouterStats {
    fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    fn count_unavailable(&self) {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
    }
}

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
    pub metrics: metrics::RouterMetrics,
    /// Cancelled when the router shuts down (stops node connections too).
    pub shutdown: CancellationToken,
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
        Arc::new_cyclic(|weak| {
            let weak = weak.clone();
            let conns = settings.node_connections;
            let token = shutdown.clone();
            let connector: Connector = Arc::new(move |address: &str| {
                Arc::new(NodeHandle::spawn(
                    address,
                    conns,
                    weak.clone(),
                    token.clone(),
                ))
            });
            Router {
                members: Members::new(settings.heartbeat_timeout, settings.hold_down, connector)
                    .with_handoff_window(settings.handoff_window),
                settings,
                limiter,
                stats: RouterStats::default(),
                metrics: metrics::RouterMetrics::new(),
                shutdown,
            }
        })
    }
}
