//! A client's data request on its way through the router: what it is,
//! where its answer goes, and the in-flight slot it holds. Every front
//! (binary, gRPC) makes these; the pool carries them to nodes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

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
    /// Whether it reached a node that then failed before answering: the
    /// node may have applied it.
    pub maybe_applied: bool,
    /// Holds one of the client connection's in-flight slots until answered.
    pub permit: OwnedSemaphorePermit,
    /// When the router read the request.
    pub started: Instant,
}

impl Forward {
    /// A request not yet routed.
    pub fn new(
        client_id: u64,
        body: Bytes,
        kind: Kind,
        key_hash: u64,
        reply: ReplyTx,
        permit: OwnedSemaphorePermit,
        started: Instant,
    ) -> Self {
        Forward {
            client_id,
            body,
            kind,
            key_hash,
            meta: 0,
            previous: None,
            reply,
            attempt: 0,
            maybe_applied: false,
            permit,
            started,
        }
    }

    /// Answers the client with an error instead of a node's response.
    pub fn fail(self, err: &WireError) {
        let _ = self
            .reply
            .send((err.body(self.client_id), Some(self.permit)));
    }
}
