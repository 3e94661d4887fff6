//! Milena's wire contract.
//!
//! Every frame on a Milena connection is a 4-byte big-endian length followed
//! by a body in bincode's legacy format (fixed-width little-endian integers,
//! `u64` lengths, `u32` enum tags), encoded with `wincode`. `PROTOCOL.md`
//! beside this crate is the byte-level specification; the golden vectors in
//! `golden/` pin it.
//!
//! Messages borrow keys and values from the frame they were decoded from, so
//! the request path never copies a value it only forwards or stores once.

mod codec;
mod message;

pub use codec::{
    DecodeError, FrameCodec, FrameError, decode_request, decode_response, encode_fenced,
    encode_forward, encode_request, encode_response, patch_id, peek_id, peek_status,
};
pub use message::{
    Body, Cond, MAGIC, Op, PROTOCOL_VERSION, Request, Response, Settled, Stat, Status,
};

/// Default largest frame a peer accepts (16 MiB of value plus room for the key).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;
