//! Message types. Field order and variant order are the wire format: add new
//! variants at the end of an enum, never reorder or change existing ones.

use wincode::{SchemaRead, SchemaWrite};

/// The four bytes that open every hello: `MLNA`.
pub const MAGIC: [u8; 4] = *b"MLNA";

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A request: an id chosen by the sender (echoed in the response) and an operation.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Correlates the response with this request; any value the sender likes.
    pub id: u64,
    /// What to do.
    pub op: Op<'a>,
}

/// An operation. The first frame of a connection must be `Hello`.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Opens a connection: magic, protocol version and an optional token.
    Hello {
        /// Must be [`MAGIC`].
        magic: [u8; 4],
        /// Must be [`PROTOCOL_VERSION`].
        version: u16,
        /// The cluster token (`CLUSTER_TOKEN`), needed for join, leave and
        /// heartbeat when the router has one; data operations need none.
        token: Option<&'a str>,
    },
    /// Reads a key.
    Get {
        /// The key (1 byte or more).
        key: &'a [u8],
    },
    /// Writes a key.
    Put {
        /// The key (1 byte or more).
        key: &'a [u8],
        /// The value (may be empty).
        value: &'a [u8],
        /// Seconds to live: `None` takes the server default, `Some(0)` never expires.
        ttl: Option<u32>,
    },
    /// Removes a key.
    Delete {
        /// The key (1 byte or more).
        key: &'a [u8],
    },
    /// Liveness check; answered with an empty `Ok`.
    Ping,
    /// Asks for the server's counters.
    Stats,
    /// A cache node asks a router to add it to the ring.
    Join {
        /// The address the node is reachable at, e.g. `http://10.0.0.5:50051`.
        address: &'a str,
    },
    /// Removes a node from a router's ring.
    Leave {
        /// The address the node joined with.
        address: &'a str,
    },
    /// A cache node tells a router it is alive; answered with the ring.
    Heartbeat {
        /// The address the node joined with.
        address: &'a str,
    },
    /// Asks a router for the current ring members.
    Members,
    /// A get forwarded by a router: an entry written before ring epoch
    /// `since` may predate a gap in this node's ownership of the key and
    /// must not be served.
    RoutedGet {
        /// The epoch at which the node last gained ownership of the key.
        since: u64,
        /// The key.
        key: &'a [u8],
    },
    /// A put forwarded by a router, tagged with the ring epoch it was routed in.
    RoutedPut {
        /// The router's ring epoch when it forwarded the put.
        epoch: u64,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// As in `Put`.
        ttl: Option<u32>,
    },
    /// Node to node: the value of a key that the node has accepted but not
    /// yet made durable (queued or uploading). Answered with `Body::Entry`,
    /// or `NotFound` when nothing for the key is waiting.
    Peek {
        /// The key.
        key: &'a [u8],
    },
    /// A get forwarded by a router to a key's new owner shortly after it
    /// gained the key from `previous`, which may still hold a newer value
    /// than the tier: on a memory miss the node asks it (`Peek`) as well.
    HandoffGet {
        /// As in `RoutedGet`.
        since: u64,
        /// Address of the key's previous owner.
        previous: &'a str,
        /// The key.
        key: &'a [u8],
    },
    /// A get routed under etcd membership: served only if the node's ring
    /// is at `revision` and every live node has applied `since` (see
    /// PROTOCOL.md, "Several routers"); otherwise answered `StaleRing`.
    FencedGet {
        /// The ring revision the router routed under.
        revision: u64,
        /// The revision at which the node last gained the key.
        since: u64,
        /// The key's previous owner, to ask for writes not yet durable.
        previous: Option<&'a str>,
        /// The key.
        key: &'a [u8],
    },
    /// A put routed under etcd membership (as `FencedGet`).
    FencedPut {
        /// The ring revision the router routed under.
        revision: u64,
        /// The revision at which the node last gained the key.
        since: u64,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// As in `Put`.
        ttl: Option<u32>,
    },
    /// A delete routed under etcd membership (as `FencedGet`).
    FencedDelete {
        /// The ring revision the router routed under.
        revision: u64,
        /// The revision at which the node last gained the key.
        since: u64,
        /// The key.
        key: &'a [u8],
    },
    /// Node to node: hold a copy of a write the sender (the key's owner)
    /// has accepted and not yet made durable, apart from the cache, until
    /// the owner says it is durable (`Settle`); the copy takes over if the
    /// owner is lost. Answered `Ok`, or `Unavailable` when full.
    Replicate {
        /// The write's version.
        version: u64,
        /// Unix seconds at which it expires; 0 = never.
        expires_at: u64,
        /// The write is a delete (`value` is empty).
        deleted: bool,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// Node to node: these writes are durable in the tier; drop the copies
    /// of them (and of older versions).
    Settle {
        /// The keys and the versions now durable.
        entries: Vec<Settled<'a>>,
    },
    /// Writes a key only if it exists (`Present`) or does not (`Absent`),
    /// decided atomically by the key's owner. Answered `Ok` when written,
    /// `NotStored` when the condition did not hold.
    PutIf {
        /// What must hold for the write to happen.
        cond: Cond,
        /// The key (1 byte or more).
        key: &'a [u8],
        /// The value (may be empty).
        value: &'a [u8],
        /// As in `Put`.
        ttl: Option<u32>,
    },
    /// A `PutIf` forwarded by a router: the write's version (as a
    /// `RoutedPut`'s epoch), and what a get needs to see the key's current
    /// value (as `HandoffGet`): when the node gained it and its previous owner.
    RoutedPutIf {
        /// The write's version (the router's epoch or clock).
        version: u64,
        /// The epoch at which the node last gained the key.
        since: u64,
        /// The key's previous owner, right after a ring change.
        previous: Option<&'a str>,
        /// As in `PutIf`.
        cond: Cond,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// As in `Put`.
        ttl: Option<u32>,
    },
    /// A `PutIf` routed under etcd membership (as `FencedGet`).
    FencedPutIf {
        /// The ring revision the router routed under.
        revision: u64,
        /// The revision at which the node last gained the key.
        since: u64,
        /// The key's previous owner, to ask for writes not yet durable.
        previous: Option<&'a str>,
        /// As in `PutIf`.
        cond: Cond,
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// As in `Put`.
        ttl: Option<u32>,
    },
    /// Asks how long a key has left to live (Redis `TTL`/`PTTL`). Read as
    /// a `Get` reads (memory, queue, tier), answered `Ok` + `Remaining`,
    /// or `NotFound`.
    Ttl {
        /// The key (1 byte or more).
        key: &'a [u8],
    },
    /// A `Ttl` forwarded by a router, with what a get needs (as `HandoffGet`).
    RoutedTtl {
        /// The epoch at which the node last gained the key.
        since: u64,
        /// The key's previous owner, right after a ring change.
        previous: Option<&'a str>,
        /// The key.
        key: &'a [u8],
    },
    /// A `Ttl` routed under etcd membership (as `FencedGet`).
    FencedTtl {
        /// The ring revision the router routed under.
        revision: u64,
        /// The revision at which the node last gained the key.
        since: u64,
        /// The key's previous owner, to ask for writes not yet durable.
        previous: Option<&'a str>,
        /// The key.
        key: &'a [u8],
    },
}

/// The condition of a `PutIf`.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    /// Write only if the key does not exist (Redis `SET NX`, memcached `add`).
    Absent,
    /// Write only if the key exists (Redis `SET XX`, memcached `replace`).
    Present,
    /// Only if the key exists, keeping its value (the request's is
    /// ignored): only its time to live changes (memcached `touch`, Redis
    /// `EXPIRE`).
    Touch,
}

/// A key and the version of it now durable (in `Settle`).
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub struct Settled<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The version.
    pub version: u64,
}

/// Outcome of a request.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Done.
    Ok,
    /// The key does not exist (or has expired).
    NotFound,
    /// The router's rate limit refused the request; retry later.
    RateLimited,
    /// A key, value or frame exceeds a configured limit.
    TooLarge,
    /// No node can serve the request right now; retry later.
    Unavailable,
    /// The request is malformed or not allowed in this state.
    BadRequest,
    /// The token is missing or wrong.
    Unauthorized,
    /// The server failed; the request may or may not have taken effect.
    Internal,
    /// Node to router: the request was routed under another ring than the
    /// node's, or the key is still changing hands; not applied, route it
    /// again once the ring has settled.
    StaleRing,
    /// A `PutIf`'s condition did not hold: nothing was written.
    NotStored,
}

impl Status {
    /// A short lowercase name, as used in error messages and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not found",
            Status::RateLimited => "rate limited",
            Status::TooLarge => "too large",
            Status::Unavailable => "unavailable",
            Status::BadRequest => "bad request",
            Status::Unauthorized => "unauthorized",
            Status::Internal => "internal",
            Status::StaleRing => "stale ring",
            Status::NotStored => "not stored",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response: the request's id, a status and a body.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// The id of the request this answers (0 when the request could not be read).
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// Payload; its variant depends on the operation and the status.
    pub body: Body<'a>,
}

/// A response payload.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// Nothing more to say (put, delete, ping, join, leave, not found).
    Empty,
    /// The value of a get.
    Value(&'a [u8]),
    /// A human-readable explanation, sent with every status other than `Ok`/`NotFound`.
    Message(&'a str),
    /// Counters, answering `Stats`.
    Stats(Vec<Stat<'a>>),
    /// The ring, answering `Members` and `Heartbeat`: its epoch and member addresses.
    Members {
        /// Increases with every membership change the router makes.
        epoch: u64,
        /// Member addresses, sorted.
        addresses: Vec<&'a str>,
    },
    /// Answer to `Hello`: the version the server speaks and what it is.
    Hello {
        /// The server's protocol version.
        version: u16,
        /// `"node"` or `"router"`, with the software version, e.g. `"node milena/0.1.0"`.
        server: &'a str,
    },
    /// Answer to `Peek`: a write not yet durable, with its version.
    Entry {
        /// The write's version.
        version: u64,
        /// Unix seconds at which it expires; 0 = never.
        expires_at: u64,
        /// The write is a delete (`value` is empty).
        deleted: bool,
        /// The value.
        value: &'a [u8],
    },
    /// Answer to `Ttl`: how long the key has left to live.
    Remaining {
        /// Milliseconds; `None` = it never expires. Expiries are kept in
        /// whole seconds, so this can read up to a second over the TTL set.
        millis: Option<u64>,
    },
}

/// One named counter in a `Stats` answer.
#[derive(SchemaWrite, SchemaRead, Debug, Clone, PartialEq, Eq)]
pub struct Stat<'a> {
    /// Counter name, e.g. `"hits"`.
    pub name: &'a str,
    /// Counter value.
    pub value: u64,
}
