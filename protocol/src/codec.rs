//! Framing and body encoding.
//!
//! Decoding splits frames with tokio-util's `LengthDelimitedCodec` (4-byte
//! big-endian length, no adjustment). Encoding writes the same layout
//! straight into the caller's output buffer, so a batch of pipelined
//! responses becomes one contiguous buffer and one `write` without staging
//! each body in its own allocation.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::message::{Request, Response};

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
    inner: LengthDelimitedCodec,
    max_frame: usize,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` body bytes.
    pub fn new(max_frame: usize) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(LEN_PREFIX)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        FrameCodec { inner, max_frame }
    }

    /// The configured maximum body length.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Splits the next complete frame body off `buf`, if there is one.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        self.inner.decode(buf).map_err(|e| {
            // The inner codec is stateful (it consumes the prefix before the
            // body arrives), so the limit is enforced there and its error
            // translated here rather than by peeking at the buffer.
            let too_large = e
                .get_ref()
                .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
            if too_large {
                FrameError::TooLarge {
                    max: self.max_frame,
                }
            } else {
                FrameError::Io(e)
            }
        })
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
