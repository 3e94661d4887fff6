//! Feeds arbitrary bytes through the frame splitter and both message
//! decoders, as a server or client reading from a hostile peer would.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use milena_protocol::{FrameCodec, decode_request, decode_response, peek_id};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small frame limit so both the limit and the
    // body decoders get exercised.
    let (limit, stream) = match data.split_first() {
        Some((l, rest)) => (usize::from(*l) * 16, rest),
        None => return,
    };
    let mut codec = FrameCodec::new(limit);
    // Deliver the stream in two reads, split in the middle.
    let mut buf = BytesMut::new();
    for part in [&stream[..stream.len() / 2], &stream[stream.len() / 2..]] {
        buf.extend_from_slice(part);
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let _ = peek_id(&frame);
                    if let Ok(req) = decode_request(&frame) {
                        // Whatever decodes must re-encode to the same bytes.
                        let mut again = Vec::new();
                        milena_protocol::encode_request(&req, &mut again);
                        assert_eq!(&again[4..], &frame[..]);
                    }
                    if let Ok(resp) = decode_response(&frame) {
                        let mut again = Vec::new();
                        milena_protocol::encode_response(&resp, &mut again);
                        assert_eq!(&again[4..], &frame[..]);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
