//! The node's Prometheus metrics, with the operations guide's names.
//!
//! Counters mirror the node's own tallies and the store's stripe counters,
//! copied in at scrape time; only the latency histogram is fed from the
//! connections (per-connection local histograms, flushed once per batch).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use prometheus::local::LocalHistogram;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::cache::Cache;
use super::stats::NodeStats;
use crate::metrics::{latency_buckets, render, sync};

/// Operation labels of `milena_operation_duration_seconds`, indexed by [`OpKind`].
pub const OPERATIONS: [&str; 4] = ["get", "put", "delete", "other"];

/// Which latency series a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Get (direct or routed).
    Get = 0,
    /// Put (direct or routed).
    Put = 1,
    /// Delete.
    Delete = 2,
    /// Ping, stats, and refused operations.
    Other = 3,
}

/// A node's metrics and the registry that exposes them.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    hits: IntCounter,
    misses: IntCounter,
    requests: IntCounter,
    errors: IntCounter,
    operations: IntCounterVec,
    /// `milena_operation_duration_seconds{operation}`.
    pub duration: HistogramVec,
    /// `milena_tier_operation_duration_seconds{operation}`.
    pub tier_duration: HistogramVec,
    handoff_peeks: IntCounter,
    handoff_adopted: IntCounter,
    handoff_errors: IntCounter,
    items: IntGauge,
    bytes: IntGauge,
    evictions: IntCounter,
    expirations: IntCounter,
    stale: IntCounter,
    connections: IntGauge,
    connections_total: IntCounter,
    connections_refused: IntCounter,
    tasks: IntGauge,
    protocol_errors: IntCounter,
    max_items: IntGauge,
    tier_reads: IntCounter,
    tier_read_errors: IntCounter,
    tier_queue_depth: IntGauge,
    tier_writes: IntCounter,
    tier_write_errors: IntCounter,
    tier_writes_refused: IntCounter,
    tier_coalesced: IntCounter,
    replica_entries: IntGauge,
    replica_bytes: IntGauge,
    replicas_promoted: IntCounter,
    copies_failed: IntCounter,
    /// Serializes scrapes, so two at once cannot both add the same delta.
    scrape: Mutex<()>,
}

/// Metric definitions are constants; a failure here is a programming
/// error caught by the tests, not a runtime condition.
fn must<T>(r: prometheus::Result<T>) -> T {
    r.expect("static metric definition") // ok: constant names, tested
}

fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    let c = must(IntCounter::new(name, help));
    must(reg.register(Box::new(c.clone())));
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = must(IntGauge::new(name, help));
    must(reg.register(Box::new(g.clone())));
    g
}

impl NodeMetrics {
    /// All of a node's metrics, registered in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let operations = must(IntCounterVec::new(
            Opts::new("milena_operations_total", "Requests executed, by operation"),
            &["operation"],
        ));
        must(r.register(Box::new(operations.clone())));
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "milena_operation_duration_seconds",
                "Time from reading a request to writing its response, by operation",
            )
            .buckets(latency_buckets()),
            &["operation"],
        ));
        must(r.register(Box::new(duration.clone())));
        let tier_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "milena_tier_operation_duration_seconds",
                "Time of each tier (S3 or directory) request, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["operation"],
        ));
        must(r.register(Box::new(tier_duration.clone())));
        let build = must(IntGaugeVec::new(
            Opts::new("milena_build_info", "Build information; always 1"),
            &["version", "role"],
        ));
        must(r.register(Box::new(build.clone())));
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "node"])
            .set(1);
        NodeMetrics {
            hits: counter(&r, "milena_cache_hits_total", "Gets answered from memory"),
            misses: counter(
                &r,
                "milena_cache_misses_total",
                "Gets that found no live entry",
            ),
            requests: counter(
                &r,
                "milena_request_counter",
                "Requests processed (after hello)",
            ),
            errors: counter(
                &r,
                "milena_error_counter",
                "Requests answered with an error, plus protocol errors",
            ),
            operations,
            duration,
            tier_duration,
            handoff_peeks: counter(
                &r,
                "milena_handoff_peeks_total",
                "Misses on which the key's previous owner was asked for an undurable write",
            ),
            handoff_adopted: counter(
                &r,
                "milena_handoff_adopted_total",
                "Previous owners' writes newer than the tier's copy, taken over",
            ),
            handoff_errors: counter(
                &r,
                "milena_handoff_errors_total",
                "Previous owners that could not be asked",
            ),
            items: gauge(&r, "milena_cache_items", "Entries held in memory"),
            bytes: gauge(
                &r,
                "milena_cache_bytes",
                "Bytes charged against MAX_MEMORY (keys + values + 64 B per entry)",
            ),
            evictions: counter(
                &r,
                "milena_cache_evictions_total",
                "Entries evicted to make room",
            ),
            expirations: counter(
                &r,
                "milena_cache_expirations_total",
                "Entries dropped because their TTL passed",
            ),
            stale: counter(
                &r,
                "milena_cache_stale_drops_total",
                "Entries dropped because they predate the node's latest gain of the key",
            ),
            connections: gauge(&r, "milena_connections", "Client connections open"),
            tasks: gauge(
                &r,
                "milena_tasks",
                "Tokio tasks alive in the serving runtime (uploads run apart)",
            ),
            connections_total: counter(
                &r,
                "milena_connections_total",
                "Client connections accepted",
            ),
            connections_refused: counter(
                &r,
                "milena_connections_refused_total",
                "Connections refused at MAX_CONNECTIONS",
            ),
            protocol_errors: counter(
                &r,
                "milena_protocol_errors_total",
                "Connections closed for a protocol violation",
            ),
            max_items: gauge(&r, "milena_cache_max_items", "LRU_SIZE"),
            tier_reads: counter(
                &r,
                "milena_tier_reads_total",
                "Reads through to the tier after a memory miss",
            ),
            tier_read_errors: counter(
                &r,
                "milena_tier_read_errors_total",
                "Tier reads that failed",
            ),
            tier_queue_depth: gauge(
                &r,
                "milena_tier_queue_depth",
                "Keys waiting in the write-behind queue or being uploaded",
            ),
            tier_writes: counter(
                &r,
                "milena_tier_writes_total",
                "Writes that reached the tier",
            ),
            tier_write_errors: counter(
                &r,
                "milena_tier_write_errors_total",
                "Failed tier writes (each retried)",
            ),
            tier_writes_refused: counter(
                &r,
                "milena_tier_writes_refused_total",
                "Writes the tier refused for good (never retried; they live in memory only)",
            ),
            tier_coalesced: counter(
                &r,
                "milena_tier_coalesced_total",
                "Writes replaced by a later write of the same key before upload",
            ),
            replica_entries: gauge(
                &r,
                "milena_replica_entries",
                "Copies held of other nodes' writes not yet durable (WRITE_REPLICAS)",
            ),
            replica_bytes: gauge(
                &r,
                "milena_replica_bytes",
                "Bytes of those copies (keys, values and 64 B each)",
            ),
            replicas_promoted: counter(
                &r,
                "milena_replicas_promoted_total",
                "Copies taken over because this node became the key's owner",
            ),
            copies_failed: counter(
                &r,
                "milena_replica_copy_failures_total",
                "Copies of this node's writes a successor did not take (the write was acknowledged with fewer copies)",
            ),
            registry: r,
            scrape: Mutex::new(()),
        }
    }

    /// A connection's local latency histograms, one per [`OpKind`].
    pub fn local_histograms(&self) -> [LocalHistogram; 4] {
        OPERATIONS.map(|op| self.duration.with_label_values(&[op]).local())
    }

    /// Brings every counter up to date from the node's request counters
    /// and its cache, and renders the text exposition.
    pub fn scrape(&self, s: &NodeStats, cache: &Cache, max_items: usize) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let st = cache.store_stats();
        sync(&self.hits, st.counters.hits);
        sync(&self.misses, st.counters.misses);
        sync(&self.evictions, st.counters.evictions);
        sync(&self.expirations, st.counters.expirations);
        sync(&self.stale, st.counters.stale);
        self.items.set(st.items as i64);
        self.bytes.set(st.bytes as i64);
        self.max_items.set(max_items as i64);
        self.tasks.set(crate::metrics::alive_tasks() as i64);
        sync(&self.requests, load(&s.requests));
        sync(&self.errors, load(&s.errors));
        sync(&self.protocol_errors, load(&s.protocol_errors));
        let gets = load(&s.gets);
        let puts = load(&s.puts);
        let deletes = load(&s.deletes);
        let other = load(&s.requests).saturating_sub(gets + puts + deletes);
        for (op, v) in OPERATIONS.iter().zip([gets, puts, deletes, other]) {
            sync(&self.operations.with_label_values(&[op]), v);
        }
        let c = cache.stats();
        sync(&self.tier_reads, load(&c.tier_reads));
        sync(&self.tier_read_errors, load(&c.tier_read_errors));
        sync(&self.handoff_peeks, load(&c.handoff_peeks));
        sync(&self.handoff_adopted, load(&c.handoff_adopted));
        sync(&self.handoff_errors, load(&c.handoff_errors));
        if let Some(w) = cache.queue_stats() {
            self.tier_queue_depth.set(cache.queue_depth() as i64);
            sync(&self.tier_writes, w.written.load(Ordering::Relaxed));
            sync(&self.tier_write_errors, w.errors.load(Ordering::Relaxed));
            sync(&self.tier_writes_refused, w.refused.load(Ordering::Relaxed));
            sync(&self.tier_coalesced, w.coalesced.load(Ordering::Relaxed));
        }
        self.replica_entries.set(cache.replicas.len() as i64);
        self.replica_bytes.set(cache.replicas.bytes() as i64);
        sync(&self.replicas_promoted, load(&cache.replicas.promoted));
        if let Some(r) = &cache.replication {
            sync(&self.copies_failed, load(&r.stats.failed));
        }
        self.connections.set(load(&s.conns.open) as i64);
        sync(&self.connections_total, load(&s.conns.total));
        sync(&self.connections_refused, load(&s.conns.refused));
        render(&self.registry)
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
