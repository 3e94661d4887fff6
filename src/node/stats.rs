//! A node's request counters. Connections tally locally and fold their
//! counts in once per batch, so the request path touches no shared cache
//! line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Node-wide request counters (the cache keeps its own).
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
