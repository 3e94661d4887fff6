//! A router's limits and timings, as the library takes them: built from the
//! command line's [`RouterConfig`], or by hand when embedding (tests).

use std::time::Duration;

use crate::config::{RouterConfig, defaults};

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
    /// What all connections together may hold of requests still arriving
    /// (`MAX_BUFFERED_BYTES`); shared by every connection.
    pub buffered: crate::budget::ByteBudget,
    /// How long a request that has started to arrive may take to finish
    /// (`FRAME_TIMEOUT_SECONDS`).
    pub frame_timeout: Duration,
    /// An HTTP connection with no request under way for this long is
    /// closed (a client that sent only the HTTP/2 preface held its slot
    /// for ever).
    pub http_idle_timeout: Duration,
    /// How long a new client may take to say hello.
    pub hello_timeout: Duration,
    /// Limit on connecting to a node.
    pub connect_timeout: Duration,
    /// A node that leaves a request unanswered this long is ejected and
    /// its requests go to the next owner.
    pub node_timeout: Duration,
    /// `CLUSTER_TOKEN`: when set, join, leave and heartbeat need it.
    pub cluster_token: Option<crate::error::Secret>,
    /// `CLIENT_TOKEN`: when set, data operations need it (or the cluster token).
    pub client_token: Option<crate::error::Secret>,
    /// TLS for the router's port and for `https://` nodes.
    pub tls: Option<crate::tls::Tls>,
    /// Longest key forwarded (keep equal to the nodes' `MAX_KEY_SIZE`).
    pub max_key: usize,
    /// Longest value forwarded (keep equal to the nodes' `MAX_VALUE_SIZE`).
    pub max_value: usize,
    /// Under etcd membership: how long after sending a fenced request its
    /// answer is trusted (half of `ETCD_LEASE_SECONDS`; see PROTOCOL.md).
    pub fenced_answer_within: Option<Duration>,
    /// How long a request a node refused as routed under another ring
    /// keeps being routed again before the client gets "unavailable".
    pub ring_patience: Duration,
}

/// The largest frame that carries a put of `max_key` and `max_value`.
fn max_frame(max_key: u64, max_value: u64) -> usize {
    (max_key + max_value + defaults::FRAME_ENVELOPE) as usize
}

impl Default for RouterSettings {
    fn default() -> Self {
        let heartbeat_timeout = Duration::from_millis(defaults::HEARTBEAT_TIMEOUT_MS);
        RouterSettings {
            rate_limit: 0,
            heartbeat_timeout,
            // An ejected node stays out for as long as it took to notice it
            // was gone, so a node the router cannot reach does not flap.
            hold_down: heartbeat_timeout,
            handoff_window: Duration::from_secs(defaults::HANDOFF_WINDOW_SECONDS),
            node_connections: defaults::NODE_CONNECTIONS as usize,
            max_inflight: defaults::MAX_INFLIGHT_PER_CONNECTION as usize,
            max_connections: defaults::MAX_CONNECTIONS as usize,
            max_frame: max_frame(defaults::MAX_KEY_SIZE, defaults::MAX_VALUE_SIZE),
            hello_timeout: Duration::from_secs(defaults::HELLO_TIMEOUT_SECONDS),
            http_idle_timeout: defaults::HTTP_IDLE_TIMEOUT,
            buffered: crate::budget::ByteBudget::new(defaults::MAX_BUFFERED_BYTES),
            frame_timeout: Duration::from_secs(defaults::FRAME_TIMEOUT_SECONDS),
            connect_timeout: defaults::NODE_CONNECT_TIMEOUT,
            node_timeout: Duration::from_millis(defaults::NODE_TIMEOUT_MS),
            cluster_token: None,
            client_token: None,
            tls: None,
            max_key: defaults::MAX_KEY_SIZE as usize,
            max_value: defaults::MAX_VALUE_SIZE as usize,
            fenced_answer_within: None,
            ring_patience: defaults::RING_PATIENCE,
        }
    }
}

impl From<&RouterConfig> for RouterSettings {
    fn from(c: &RouterConfig) -> Self {
        let heartbeat_timeout = Duration::from_millis(c.heartbeat_timeout_ms);
        RouterSettings {
            rate_limit: c.rate_limit,
            heartbeat_timeout,
            hold_down: heartbeat_timeout,
            handoff_window: Duration::from_secs(c.handoff_window_seconds),
            node_connections: c.node_connections as usize,
            max_inflight: c.max_inflight_per_connection as usize,
            max_connections: c.max_connections as usize,
            hello_timeout: Duration::from_secs(c.hello_timeout_seconds),
            buffered: crate::budget::ByteBudget::new(c.max_buffered_bytes),
            frame_timeout: Duration::from_secs(c.frame_timeout_seconds),
            cluster_token: c.cluster_token.clone(),
            client_token: c.client_token.clone(),
            node_timeout: Duration::from_millis(c.node_timeout_ms),
            max_key: c.max_key_size as usize,
            max_value: c.max_value_size as usize,
            // Room for the largest put, as on the nodes.
            max_frame: max_frame(c.max_key_size, c.max_value_size),
            fenced_answer_within: c
                .etcd
                .enabled()
                .then(|| crate::etcd::answer_window(c.etcd.etcd_lease_seconds)),
            ..RouterSettings::default()
        }
    }
}
