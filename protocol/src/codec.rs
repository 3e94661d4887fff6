//! Framing and body encoding.
//!
//! A frame is a 4-byte big-endian length and that many body bytes. The
//! splitter is stateless: until a whole frame is there it consumes
//! nothing, so a server's read buffer always starts at a frame's length
//! prefix, and what it announces can be read off the buffer (to hold
//! memory for a large frame before reading it). Encoding writes the same
//! layout straight into the caller's output buffer, so a batch of
//! pipelined responses becomes one contiguous buffer and one `write`
//! without staging each body in its own allocation.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use crate::message::{Request, Response};

/// Most room reserved at once for a frame still arriving.
const RESERVE_STEP: usize = 64 * 1024;

/// Bytes in the length prefix.
const LEN_PREFIX: usize = 4;

/// Why a frame could not be split off the stream. The stream is out of sync
/// afterwards: answer if possible, then close.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the configured maximum.
    #[error("frame length exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Configured maximum.
        max: usize,
    },
    /// The underlying codec failed.
    #[error("framing error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a frame body is not a valid message.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(String);

/// Splits a byte stream into frames of at most `max_frame` bytes.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` body bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameCodec { max_frame }
    }

    /// The configured maximum body length.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Splits the next complete frame body off `buf`, if there is one;
    /// otherwise leaves `buf` as it is (with some room reserved for the rest).
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        let Some(head) = buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(head);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                max: self.max_frame,
            });
        }
        let whole = LEN_PREFIX + len;
        if buf.len() < whole {
            // Room for what is coming, a step at a time: a length alone
            // does not get its whole frame's memory before the bytes come.
            buf.reserve((whole - buf.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        buf.advance(LEN_PREFIX);
        Ok(Some(buf.split_to(len)))
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        self.decode_frame(src)
    }
}

/// Appends one framed request to `out`.
pub fn encode_request(req: &Request<'_>, out: &mut Vec<u8>) {
    encode_framed(out, |out| wincode::serialize_into(out, req));
}

/// Appends one framed response to `out`.
pub fn encode_response(resp: &Response<'_>, out: &mut Vec<u8>) {
    encode_framed(out, |out| wincode::serialize_into(out, resp));
}

fn encode_framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>) -> wincode::WriteResult<()>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    // Writing into a Vec only fails on allocation failure, which aborts
    // anyway; keep the buffer consistent regardless.
    if body(out).is_err() {
        out.truncate(start);
        return;
    }
    let len = (out.len() - start - LEN_PREFIX) as u32;
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Decodes a request body (without its length prefix), borrowing from `frame`.
pub fn decode_request(frame: &[u8]) -> Result<Request<'_>, DecodeError> {
    wincode::deserialize_exact(frame).map_err(|e| DecodeError(e.to_string()))
}

/// Decodes a response body (without its length prefix), borrowing from `frame`.
pub fn decode_response(frame: &[u8]) -> Result<Response<'_>, DecodeError> {
    wincode::deserialize_exact(frame).map_err(|e| DecodeError(e.to_string()))
}

/// The id of a request or response body, if the body is long enough to hold
/// one: lets a server echo the id in an error about an undecodable body.
pub fn peek_id(frame: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = frame.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Op tags, as laid out by `Op`'s variant order (checked by tests).
mod tag {
    pub const PUT: u32 = 2;
    pub const GET: u32 = 1;
    pub const DELETE: u32 = 3;
    pub const ROUTED_GET: u32 = 10;
    pub const ROUTED_PUT: u32 = 11;
    pub const HANDOFF_GET: u32 = 13;
    pub const FENCED_GET: u32 = 14;
    pub const FENCED_PUT: u32 = 15;
    pub const FENCED_DELETE: u32 = 16;
    pub const PUT_IF: u32 = 19;
    pub const ROUTED_PUT_IF: u32 = 20;
    pub const FENCED_PUT_IF: u32 = 21;
    pub const TTL: u32 = 22;
    pub const ROUTED_TTL: u32 = 23;
    pub const FENCED_TTL: u32 = 24;
}

/// Appends a framed request that forwards a client's `Get`, `Put`,
/// `Delete`, `PutIf` or `Ttl` body under a new `id`: a get becomes
/// `RoutedGet { since: meta }` (or `HandoffGet { since: meta, previous }`
/// when the key's previous owner is given), a put `RoutedPut { epoch: meta }`,
/// a conditional put `RoutedPutIf { version: meta, since, previous }`, a
/// `Ttl` `RoutedTtl { since: meta, previous }`, a delete stays as it is. The key and value bytes are copied straight
/// across, without decoding them again.
///
/// Returns `false` (and appends nothing) if `client_body` is not one of
/// those operations.
pub fn encode_forward(
    id: u64,
    client_body: &[u8],
    meta: u64,
    since: u64,
    previous: Option<&str>,
    out: &mut Vec<u8>,
) -> bool {
    let Some((op_tag, fields)) = split_op(client_body) else {
        return false;
    };
    if op_tag == tag::PUT_IF {
        return encode_prefixed(
            id,
            tag::ROUTED_PUT_IF,
            [meta, since],
            Some(previous),
            fields,
            out,
        );
    }
    if op_tag == tag::TTL {
        return encode_prefixed(id, tag::ROUTED_TTL, [meta], Some(previous), fields, out);
    }
    let (routed, previous) = match (op_tag, previous) {
        (tag::GET, None) => (Some(tag::ROUTED_GET), None),
        (tag::GET, Some(p)) => (Some(tag::HANDOFF_GET), Some(p)),
        (tag::PUT, _) => (Some(tag::ROUTED_PUT), None),
        (tag::DELETE, _) => (None, None),
        _ => return false,
    };
    let extra = previous.map_or(0, |p| 8 + p.len());
    let body_len = 8 + 4 + routed.map_or(0, |_| 8) + extra + fields.len();
    let Ok(len) = u32::try_from(body_len) else {
        return false;
    };
    out.reserve(LEN_PREFIX + body_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    match routed {
        Some(t) => {
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&meta.to_le_bytes());
        }
        None => out.extend_from_slice(&op_tag.to_le_bytes()),
    }
    if let Some(p) = previous {
        // A string is its length (u64 LE) and its bytes, as in every field.
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(fields);
    true
}

/// Appends a framed request that forwards a client's `Get`, `Put`,
/// `Delete`, `PutIf` or `Ttl` body under a new `id` as its fenced form
/// (`FencedGet`, `FencedPut`, `FencedDelete`, `FencedPutIf`, `FencedTtl`) with the ring
/// `revision` it was routed under and the `since` of its owner, the key and
/// value bytes copied straight across. `previous` is sent with gets,
/// conditional puts and `Ttl` only.
///
/// Returns `false` (and appends nothing) if `client_body` is not one of
/// those operations.
pub fn encode_fenced(
    id: u64,
    client_body: &[u8],
    revision: u64,
    since: u64,
    previous: Option<&str>,
    out: &mut Vec<u8>,
) -> bool {
    let Some((op_tag, fields)) = split_op(client_body) else {
        return false;
    };
    let (fenced, previous) = match op_tag {
        tag::GET => (tag::FENCED_GET, Some(previous)),
        tag::PUT => (tag::FENCED_PUT, None),
        tag::DELETE => (tag::FENCED_DELETE, None),
        tag::PUT_IF => (tag::FENCED_PUT_IF, Some(previous)),
        tag::TTL => (tag::FENCED_TTL, Some(previous)),
        _ => return false,
    };
    encode_prefixed(id, fenced, [revision, since], previous, fields, out)
}

/// Appends a framed request: `id`, `op_tag`, the `u64` fields of `words`,
/// `previous` as an `Option<string>` when given, then `fields` as they are.
fn encode_prefixed<const N: usize>(
    id: u64,
    op_tag: u32,
    words: [u64; N],
    previous: Option<Option<&str>>,
    fields: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let extra = previous.map_or(0, |p| 1 + p.map_or(0, |p| 8 + p.len()));
    let body_len = 8 + 4 + 8 * N + extra + fields.len();
    let Ok(len) = u32::try_from(body_len) else {
        return false;
    };
    out.reserve(LEN_PREFIX + body_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&op_tag.to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    match previous {
        Some(Some(p)) => {
            out.push(1);
            out.extend_from_slice(&(p.len() as u64).to_le_bytes());
            out.extend_from_slice(p.as_bytes());
        }
        Some(None) => out.push(0),
        None => {}
    }
    out.extend_from_slice(fields);
    true
}

/// A request body's op tag and the fields after it, if it is long enough.
fn split_op(body: &[u8]) -> Option<(u32, &[u8])> {
    let tag: [u8; 4] = body.get(8..12)?.try_into().ok()?;
    Some((u32::from_le_bytes(tag), &body[12..]))
}

/// Overwrites the id of a request or response body in place (a router
/// handing a node's answer back under the client's id).
pub fn patch_id(body: &mut [u8], id: u64) -> bool {
    match body.get_mut(..8) {
        Some(head) => {
            head.copy_from_slice(&id.to_le_bytes());
            true
        }
        None => false,
    }
}

/// The status of a response body without decoding the rest, for a router
/// counting the answers it passes through.
pub fn peek_status(body: &[u8]) -> Option<crate::Status> {
    use crate::Status::*;
    let tag: [u8; 4] = body.get(8..12)?.try_into().ok()?;
    Some(match u32::from_le_bytes(tag) {
        0 => Ok,
        1 => NotFound,
        2 => RateLimited,
        3 => TooLarge,
        4 => Unavailable,
        5 => BadRequest,
        6 => Unauthorized,
        7 => Internal,
        8 => StaleRing,
        9 => NotStored,
        _ => return None,
    })
}
