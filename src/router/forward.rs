//! Routing a client request to its owner, and retrying it once on the next
//! owner when that node fails.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Router;
use crate::error::WireError;

/// An answer for a client connection's writer: the frame body, and the
/// in-flight slot it frees once written (so a client that never reads
/// cannot make the router queue more than its slots' worth of answers).
pub type Answer = (Bytes, Option<OwnedSemaphorePermit>);

/// Where a client connection's responses go.
pub type ReplyTx = mpsc::UnboundedSender<Answer>;

/// Which data operation a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A get (sent as `RoutedGet`).
    Get,
    /// A put (sent as `RoutedPut`).
    Put,
    /// A delete (sent as is).
    Delete,
}

impl Kind {
    /// Name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Put => "put",
            Kind::Delete => "delete",
        }
    }
}

/// A client request on its way to a node.
#[derive(Debug)]
pub struct Forward {
    /// The id the client gave it.
    pub client_id: u64,
    /// The client's request body, shared with the read buffer it came in.
    pub body: Bytes,
    /// What it is.
    pub kind: Kind,
    /// The key's ring hash.
    pub key_hash: u64,
    /// `since` for a get, the epoch for a put; set when routed.
    pub meta: u64,
    /// For a get: the key's previous owner, to be asked on a miss; set when routed.
    pub previous: Option<Arc<str>>,
    /// Where the answer goes.
    pub reply: ReplyTx,
    /// Sends so far to a node that failed.
    pub attempt: u8,
    /// Holds one of the client connection's in-flight slots until answered.
    pub permit: OwnedSemaphorePermit,
    /// When the router read the request.
    pub started: Instant,
}

impl Forward {
    /// Answers the client with an error instead of a node's response.
    pub fn fail(self, router: &Router, err: &WireError) {
        router.metrics.count(self.kind, err.status());
        let _ = self
            .reply
            .send((err.body(self.client_id), Some(self.permit)));
    }
}

/// Most sends of one request: the owner, then once more the next owner.
const MAX_ATTEMPTS: u8 = 2;

impl Router {
    /// Sends `fwd` to the owner of its key in the current ring.
    pub async fn route(self: &Arc<Self>, mut fwd: Forward) {
        loop {
            let view = self.members.view();
            let Some(owner) = view.ring.owner_index(fwd.key_hash) else {
                self.stats.count_unavailable();
                fwd.fail(
                    self,
                    &WireError::Unavailable("no cache node is in the ring".into()),
                );
                return;
            };
            fwd.previous = None;
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
                Kind::Put => view.epoch.max(super::members::wall_micros()),
                Kind::Delete => 0,
            };
            let node = &view.nodes[owner];
            match node.send(fwd).await {
                Ok(()) => return,
                Err(back) => {
                    // The node's connection is gone before the request left:
                    // the node is down; take it out and try the next owner.
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
    /// once; afterwards the client gets `unavailable`.
    pub fn retry(self: &Arc<Self>, fwd: Forward) {
        if let Some(fwd) = self.next_attempt(fwd) {
            self.stats.count_retry();
            let router = self.clone();
            tokio::spawn(async move { router.route(fwd).await });
        }
    }

    fn next_attempt(&self, mut fwd: Forward) -> Option<Forward> {
        fwd.attempt += 1;
        if fwd.attempt >= MAX_ATTEMPTS {
            self.stats.count_unavailable();
            fwd.fail(
                self,
                &WireError::Unavailable("the key's node failed, and so did its next owner".into()),
            );
            return None;
        }
        Some(fwd)
    }
}
