//! The router's Prometheus metrics, served at `/metrics` on its own port.
//!
//! Per-request updates are plain atomic adds on counters resolved ahead of
//! time (no label lookups on the path); everything else is copied in from
//! the router's counters when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use milena_protocol::Status;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::request::Kind;
use crate::metrics::{latency_buckets, render, sync};

/// Router-wide counters, copied into the metrics when scraped and listed
/// by `stats`.
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

/// What a scrape reads from the member table.
#[derive(Debug, Clone, Copy)]
pub struct RingGauges {
    /// Members in the ring.
    pub members: u64,
    /// The ring's epoch.
    pub epoch: u64,
    /// Nodes ejected since start.
    pub ejections: u64,
    /// Whether the router is following membership in etcd right now.
    pub etcd_connected: bool,
}

const STATUSES: [Status; 9] = [
    Status::Ok,
    Status::NotFound,
    Status::RateLimited,
    Status::TooLarge,
    Status::Unavailable,
    Status::BadRequest,
    Status::Unauthorized,
    Status::Internal,
    Status::NotStored,
];
const KINDS: [Kind; 4] = [Kind::Get, Kind::Put, Kind::Delete, Kind::PutIf];

fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("static metric definition") // ok: constant names, tested
}

/// A router's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct RouterMetrics {
    registry: Registry,
    /// `[kind][status]` of `milena_router_requests_total`.
    by_status: Vec<Vec<IntCounter>>,
    /// `milena_router_forward_duration_seconds{operation}`.
    pub forward_duration: HistogramVec,
    node_requests: IntCounterVec,
    node_errors: IntCounterVec,
    rate_limited: IntCounter,
    members: IntGauge,
    epoch: IntGauge,
    etcd_connected: IntGauge,
    /// `milena_router_ring_retries_total`.
    pub ring_retries: IntCounter,
    ejections: IntCounter,
    retries: IntCounter,
    unavailable: IntCounter,
    connections: IntGauge,
    connections_total: IntCounter,
    tasks: IntGauge,
    protocol_errors: IntCounter,
    scrape: Mutex<()>,
    /// Connections using each node's series.
    node_users: Mutex<std::collections::HashMap<String, usize>>,
}

impl RouterMetrics {
    /// All of a router's metrics, registered in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(r.register(c));
        let requests = must(IntCounterVec::new(
            Opts::new(
                "milena_router_requests_total",
                "Data requests answered, by operation and status",
            ),
            &["operation", "status"],
        ));
        reg(Box::new(requests.clone()));
        let by_status = KINDS
            .iter()
            .map(|k| {
                STATUSES
                    .iter()
                    .map(|s| {
                        requests.with_label_values(&[k.as_str(), &s.as_str().replace(' ', "_")])
                    })
                    .collect()
            })
            .collect();
        let forward_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "milena_router_forward_duration_seconds",
                "Time from reading a client request to handing over the node's answer",
            )
            .buckets(latency_buckets()),
            &["operation"],
        ));
        reg(Box::new(forward_duration.clone()));
        let node_requests = must(IntCounterVec::new(
            Opts::new(
                "milena_router_node_requests_total",
                "Requests answered by each node",
            ),
            &["node"],
        ));
        reg(Box::new(node_requests.clone()));
        let node_errors = must(IntCounterVec::new(
            Opts::new(
                "milena_router_node_errors_total",
                "Error answers and failed connections, by node",
            ),
            &["node"],
        ));
        reg(Box::new(node_errors.clone()));
        let build = must(IntGaugeVec::new(
            Opts::new("milena_build_info", "Build information; always 1"),
            &["version", "role"],
        ));
        reg(Box::new(build.clone()));
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "router"])
            .set(1);
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            reg(Box::new(g.clone()));
            g
        };
        RouterMetrics {
            by_status,
            forward_duration,
            node_requests,
            node_errors,
            rate_limited: counter(
                "milena_router_rate_limited_total",
                "Requests refused by RATE_LIMIT",
            ),
            members: gauge("milena_router_members", "Nodes in the ring"),
            epoch: gauge(
                "milena_router_ring_epoch",
                "Epoch of the current ring (the etcd revision under ETCD_ENDPOINTS)",
            ),
            etcd_connected: gauge(
                "milena_etcd_connected",
                "1 while membership in etcd is being followed, 0 while etcd is unreachable (and without ETCD_ENDPOINTS)",
            ),
            ring_retries: counter(
                "milena_router_ring_retries_total",
                "Requests routed again because a node answered that they were routed under another ring (etcd membership)",
            ),
            ejections: counter(
                "milena_router_ejections_total",
                "Nodes ejected from the ring",
            ),
            retries: counter(
                "milena_router_retries_total",
                "Requests re-sent to the next owner after a node failed",
            ),
            unavailable: counter(
                "milena_router_unavailable_total",
                "Requests answered unavailable",
            ),
            connections: gauge("milena_router_connections", "Client connections open"),
            tasks: gauge("milena_tasks", "Tokio tasks alive in the serving runtime"),
            connections_total: counter(
                "milena_router_connections_total",
                "Client connections accepted",
            ),
            protocol_errors: counter(
                "milena_router_protocol_errors_total",
                "Connections closed for a protocol violation",
            ),
            registry: r,
            scrape: Mutex::new(()),
            node_users: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts one answered data request.
    #[inline]
    pub fn count(&self, kind: Kind, status: Status) {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        let s = STATUSES.iter().position(|x| *x == status).unwrap_or(7);
        self.by_status[k][s].inc();
    }

    /// The request and error counters of node `address`, for one of its
    /// connections; [`RouterMetrics::release_node`] when that connection
    /// ends, so a node gone for good leaves no series behind.
    pub fn node_counters(&self, address: &str) -> (IntCounter, IntCounter) {
        *self
            .node_users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(address.to_string())
            .or_default() += 1;
        (
            self.node_requests.with_label_values(&[address]),
            self.node_errors.with_label_values(&[address]),
        )
    }

    /// One connection to `address` ended; its series go with the last one.
    pub fn release_node(&self, address: &str) {
        let mut users = self.node_users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = users.get_mut(address) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            users.remove(address);
            let _ = self.node_requests.remove_label_values(&[address]);
            let _ = self.node_errors.remove_label_values(&[address]);
        }
    }

    /// Brings every counter up to date from the router's counters and
    /// ring, and renders the text exposition.
    pub fn scrape(&self, s: &RouterStats, ring: RingGauges) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.members.set(ring.members as i64);
        self.epoch.set(ring.epoch as i64);
        self.etcd_connected.set(ring.etcd_connected as i64);
        sync(&self.ejections, ring.ejections);
        sync(&self.rate_limited, load(&s.rate_limited));
        sync(&self.retries, load(&s.retries));
        sync(&self.unavailable, load(&s.unavailable));
        self.connections.set(load(&s.conns.open) as i64);
        self.tasks.set(crate::metrics::alive_tasks() as i64);
        sync(&self.connections_total, load(&s.conns.total));
        sync(&self.protocol_errors, load(&s.protocol_errors));
        render(&self.registry)
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}
