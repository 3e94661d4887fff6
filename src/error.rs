//! What can go wrong with a request at a router or a node, and the one
//! place that turns it into a wire status.

use milena_protocol::{Body, MAGIC, Op, PROTOCOL_VERSION, Response, Status, encode_response};

/// A request a router or node refuses. Every variant maps to one wire status.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The key is zero bytes long.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key exceeds `MAX_KEY_SIZE`.
    #[error("key of {len} bytes exceeds MAX_KEY_SIZE ({max} bytes)")]
    KeyTooLarge {
        /// Key length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The value exceeds `MAX_VALUE_SIZE`.
    #[error("value of {len} bytes exceeds MAX_VALUE_SIZE ({max} bytes)")]
    ValueTooLarge {
        /// Value length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The entry does not fit in one stripe's share of `MAX_MEMORY`.
    #[error("entry of {len} bytes does not fit in the memory budget (MAX_MEMORY)")]
    EntryTooLarge {
        /// Key + value length.
        len: usize,
    },
    /// A frame announced more bytes than the node accepts.
    #[error("{0}")]
    FrameTooLarge(String),
    /// A frame body is not a valid request.
    #[error("{0}")]
    Undecodable(String),
    /// The first frame was not a hello.
    #[error("expected hello as the first frame of the connection")]
    HelloRequired,
    /// The hello did not start with `MLNA`.
    #[error("bad magic {0:02x?}: not a Milena client")]
    BadMagic([u8; 4]),
    /// The hello asked for a protocol version the node does not speak.
    #[error("unsupported protocol version {0} (this server speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// A second hello on the same connection.
    #[error("hello already received on this connection")]
    DuplicateHello,
    /// A request started to arrive and did not finish in time.
    #[error(
        "a request started more than {0} seconds ago and has not finished arriving (FRAME_TIMEOUT_SECONDS)"
    )]
    FrameTimeout(u64),
    /// No hello arrived in time.
    #[error("no hello within {0} seconds")]
    HelloTimeout(u64),
    /// A router-only operation was sent to a node.
    #[error("{0} is a router operation; this is a cache node")]
    RouterOnly(&'static str),
    /// The server is at `MAX_CONNECTIONS`.
    #[error("too many connections (MAX_CONNECTIONS={0})")]
    TooManyConnections(usize),
    /// A node-internal operation was sent to a router.
    #[error("{0} is sent by routers to nodes, not by clients")]
    NodeOnly(&'static str),
    /// The router's `RATE_LIMIT` refused the request.
    #[error("rate limited (RATE_LIMIT={0} requests per second)")]
    RateLimited(u32),
    /// Not applied: no node can serve the request now; retrying is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Failed after it may have taken effect (a node failed with the
    /// request in flight, a sync write that never became durable): the
    /// client must not assume either way.
    #[error("may or may not have been applied: {0}")]
    Indeterminate(String),
    /// Membership changes arrive faster than the router admits them.
    #[error("rate limited: more than {0} membership changes per second; try again shortly")]
    MembershipRateLimited(u32),
    /// A join named something that is not a reachable cache node claiming
    /// that address.
    #[error("cannot join: {0}")]
    NotANode(String),
    /// A leave that names no member.
    #[error("{0}")]
    NotMember(String),
    /// A membership call with a bad address.
    #[error("invalid node address: {0}")]
    BadAddress(String),
    /// A cluster operation without the right `CLUSTER_TOKEN`.
    #[error("unauthorized: {0} needs the cluster token (CLUSTER_TOKEN)")]
    Unauthorized(&'static str),
    /// A hello with a token that does not match.
    #[error("unauthorized: wrong token (it is neither the cluster token nor the client token)")]
    WrongToken,
    /// A data operation without the router's `CLIENT_TOKEN`.
    #[error("unauthorized: data operations need the client token (CLIENT_TOKEN)")]
    NeedsClientToken,
    /// Not applied: routed under another ring than the node's, or the key
    /// is still changing hands; the router routes it again.
    #[error("stale ring: {0}")]
    StaleRing(String),
    /// Membership lives in etcd: the router takes no joins or heartbeats.
    #[error("membership is in etcd (ETCD_ENDPOINTS): nodes register there, not with a router")]
    MembershipInEtcd,
}

impl WireError {
    /// The wire status for this error.
    pub fn status(&self) -> Status {
        match self {
            WireError::KeyTooLarge { .. }
            | WireError::ValueTooLarge { .. }
            | WireError::EntryTooLarge { .. }
            | WireError::FrameTooLarge(_) => Status::TooLarge,
            WireError::TooManyConnections(_) | WireError::Unavailable(_) => Status::Unavailable,
            WireError::Indeterminate(_) => Status::Internal,
            WireError::StaleRing(_) => Status::StaleRing,
            WireError::RateLimited(_) | WireError::MembershipRateLimited(_) => Status::RateLimited,
            WireError::Unauthorized(_) | WireError::WrongToken | WireError::NeedsClientToken => {
                Status::Unauthorized
            }
            WireError::EmptyKey
            | WireError::Undecodable(_)
            | WireError::HelloRequired
            | WireError::BadMagic(_)
            | WireError::Version(_)
            | WireError::DuplicateHello
            | WireError::HelloTimeout(_)
            | WireError::FrameTimeout(_)
            | WireError::RouterOnly(_)
            | WireError::NodeOnly(_)
            | WireError::BadAddress(_)
            | WireError::NotMember(_)
            | WireError::MembershipInEtcd => Status::BadRequest,
            WireError::NotANode(_) => Status::Unavailable,
        }
    }

    /// The error response for request `id` as a frame body (no length
    /// prefix), for writers that frame bodies themselves.
    pub fn body(&self, id: u64) -> bytes::Bytes {
        let mut out = Vec::new();
        self.respond(id, &mut out);
        bytes::Bytes::from(out).slice(4..)
    }

    /// Appends the error response for request `id` to `out`.
    pub fn respond(&self, id: u64, out: &mut Vec<u8>) {
        let message = self.to_string();
        encode_response(
            &Response {
                id,
                status: self.status(),
                body: Body::Message(&message),
            },
            out,
        );
    }
}

/// Checks a connection's first request. Returns the hello's token, or why
/// the connection must be refused.
pub fn check_hello<'a>(op: &Op<'a>) -> Result<Option<&'a str>, WireError> {
    match *op {
        Op::Hello { magic, .. } if magic != MAGIC => Err(WireError::BadMagic(magic)),
        Op::Hello { version, .. } if version != PROTOCOL_VERSION => {
            Err(WireError::Version(version))
        }
        Op::Hello { token, .. } => Ok(token),
        _ => Err(WireError::HelloRequired),
    }
}

/// Appends the answer to an accepted hello.
pub fn hello_response(id: u64, server: &str, out: &mut Vec<u8>) {
    encode_response(
        &Response {
            id,
            status: Status::Ok,
            body: Body::Hello {
                version: PROTOCOL_VERSION,
                server,
            },
        },
        out,
    );
}

/// A shared secret (`CLUSTER_TOKEN`): compared in constant time, never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Secret(token.into())
    }

    /// Whether `offered` is this secret, in time independent of where they differ.
    pub fn matches(&self, offered: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        offered.is_some_and(|o| bool::from(o.as_bytes().ct_eq(self.0.as_bytes())))
    }

    /// The token itself, for sending in a hello.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}
