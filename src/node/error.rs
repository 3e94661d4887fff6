//! What can go wrong with a request at a node, and the one place that turns
//! it into a wire status.

use milena_protocol::{Body, PROTOCOL_VERSION, Response, Status, encode_response};

/// A request the node refuses. Every variant maps to one wire status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
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
    /// No hello arrived in time.
    #[error("no hello within {0} seconds")]
    HelloTimeout(u64),
    /// A router-only operation was sent to a node.
    #[error("{0} is a router operation; this is a cache node")]
    RouterOnly(&'static str),
    /// The node is at `MAX_CONNECTIONS`.
    #[error("too many connections (MAX_CONNECTIONS={0})")]
    TooManyConnections(usize),
}

impl NodeError {
    /// The wire status for this error.
    pub fn status(&self) -> Status {
        match self {
            NodeError::KeyTooLarge { .. }
            | NodeError::ValueTooLarge { .. }
            | NodeError::EntryTooLarge { .. }
            | NodeError::FrameTooLarge(_) => Status::TooLarge,
            NodeError::TooManyConnections(_) => Status::Unavailable,
            NodeError::EmptyKey
            | NodeError::Undecodable(_)
            | NodeError::HelloRequired
            | NodeError::BadMagic(_)
            | NodeError::Version(_)
            | NodeError::DuplicateHello
            | NodeError::HelloTimeout(_)
            | NodeError::RouterOnly(_) => Status::BadRequest,
        }
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
