//! Routing a client request to its owner, and retrying it once on the next
//! owner when that node fails.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Router;
use super::members::wall_micros;
use super::pool::NodeEvents;
use super::request::{Forward, Kind};
use crate::error::WireError;

/// Under etcd membership, how long after a node's connections failed the
/// router connects to it again (it stays in the ring until its lease lapses).
const RECONNECT_AFTER: Duration = Duration::from_millis(100);

/// Most sends of one request: the owner, then once more the next owner.
const MAX_ATTEMPTS: u8 = 2;

impl Router {
    /// Sends `fwd` to the owner of its key in the current ring.
    pub async fn route(self: &Arc<Self>, mut fwd: Forward) {
        loop {
            let view = self.members.view();
            let Some(owner) = view.ring.owner_index(fwd.key_hash) else {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                self.fail(
                    fwd,
                    &WireError::Unavailable("no cache node is in the ring".into()),
                );
                return;
            };
            fwd.previous = None;
            fwd.fence = None;
            if self.in_etcd() {
                // Every operation carries the ring it was routed under and
                // when its owner gained the key: the node checks both.
                let since = view.gained_since(owner, fwd.key_hash);
                if matches!(fwd.kind, Kind::Get | Kind::PutIf) {
                    fwd.previous = view.handoff_from(owner, fwd.key_hash, since);
                }
                fwd.fence = Some((view.epoch, since));
            }
            fwd.meta = match fwd.kind {
                Kind::Get => {
                    let since = view.gained_since(owner, fwd.key_hash);
                    fwd.previous = view.handoff_from(owner, fwd.key_hash, since);
                    since
                }
                // The write's own time (never before the ring's epoch): with
                // several routers numbering the same change a little apart,
                // only writes inside that sliver are taken for stale, not
                // every write until the next change.
                Kind::Put => view.epoch.max(wall_micros()),
                Kind::Delete => 0,
                // A write (versioned as a put) that first reads (as a get).
                Kind::PutIf => {
                    fwd.since = view.gained_since(owner, fwd.key_hash);
                    fwd.previous = view.handoff_from(owner, fwd.key_hash, fwd.since);
                    view.epoch.max(wall_micros())
                }
            };
            let node = &view.nodes[owner];
            match node.send(fwd).await {
                Ok(()) => return,
                Err(back) => {
                    // The node's connection is gone before the request left:
                    // the node is down; take it out and try the next owner
                    // (under etcd, its lease decides when it is out).
                    if self.in_etcd() {
                        // The router reconnects shortly (or the lease
                        // lapses): route it again then, not at once.
                        self.reroute_stale(back);
                        return;
                    }
                    self.members.eject_handle(
                        &node.address,
                        node.id,
                        "connection to the node is closed",
                    );
                    match self.next_attempt(back) {
                        Some(f) => fwd = f,
                        None => return,
                    }
                }
            }
        }
    }

    /// Re-routes a request whose node failed after it was sent, at most
    /// once; afterwards the client gets an error.
    pub fn retry(self: &Arc<Self>, fwd: Forward) {
        if let Some(fwd) = self.next_attempt(fwd) {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            let router = self.clone();
            tokio::spawn(async move { router.route(fwd).await });
        }
    }

    /// Routes again, shortly, a request a node refused as routed under
    /// another ring (not applied): the ring settles within a watch delay
    /// and the time the losing node takes to finish what it had admitted.
    /// Past `ring_patience` the client gets "unavailable".
    pub fn reroute_stale(self: &Arc<Self>, mut fwd: Forward) {
        let patience = self.settings.ring_patience;
        if fwd.started.elapsed() > patience {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "the key's owner is changing and did not settle within {} ms",
                patience.as_millis()
            );
            // An earlier send may have reached a node that failed after
            // taking it: then a write may have been applied.
            let err = if fwd.maybe_applied && fwd.kind != Kind::Get {
                WireError::Indeterminate(why)
            } else {
                WireError::Unavailable(why)
            };
            self.fail(fwd, &err);
            return;
        }
        fwd.ring_retries = fwd.ring_retries.saturating_add(1);
        let delay = Duration::from_millis(1 << fwd.ring_retries.min(5));
        self.metrics.ring_retries.inc();
        let router = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            router.route(fwd).await;
        });
    }

    fn next_attempt(&self, mut fwd: Forward) -> Option<Forward> {
        fwd.attempt += 1;
        if fwd.attempt < MAX_ATTEMPTS {
            return Some(fwd);
        }
        self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        let why = "the key's node failed, and so did its next owner";
        // A write that reached a node before it failed may have been
        // applied there: say so, rather than invite a blind retry.
        let err = if fwd.maybe_applied && fwd.kind != Kind::Get {
            WireError::Indeterminate(why.into())
        } else {
            WireError::Unavailable(why.into())
        };
        self.fail(fwd, &err);
        None
    }

    /// Answers `fwd` with `err` instead of a node's response, counted.
    fn fail(&self, fwd: Forward, err: &WireError) {
        self.metrics.count(fwd.kind, err.status());
        fwd.fail(err);
    }
}

/// The router's side of its node pools: a failed node is ejected and its
/// requests go to the next owner. Holds the router weakly (the router owns
/// the pools); once the router is gone, failures are dropped.
pub struct Failover(Weak<Router>);

impl Failover {
    /// Failover for the router behind `router`.
    pub fn new(router: Weak<Router>) -> Self {
        Failover(router)
    }
}

impl NodeEvents for Failover {
    fn node_failed(&self, address: &str, handle_id: u64, reason: &str) {
        let Some(router) = self.0.upgrade() else {
            return;
        };
        if !router.in_etcd() {
            router.members.eject_handle(address, handle_id, reason);
            return;
        }
        // Under etcd the node stays in the ring until its lease lapses:
        // connect again, after a pause so a dead node is not hammered.
        let (weak, address) = (self.0.clone(), address.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(RECONNECT_AFTER).await;
            if let Some(router) = weak.upgrade() {
                router.members.renew_handle(&address, handle_id);
            }
        });
    }

    fn stale_ring(&self, fwd: Forward) {
        if let Some(router) = self.0.upgrade() {
            router.reroute_stale(fwd);
        }
    }

    fn retry(&self, fwd: Forward) {
        if let Some(router) = self.0.upgrade() {
            router.retry(fwd);
        }
    }
}
