//! Property tests: every message round-trips, frames survive any split of
//! the byte stream, and arbitrary bytes never panic the decoder.

use bytes::BytesMut;
use milena_protocol::*;
use proptest::prelude::*;

/// Owned material from which a borrowed message is built.
#[derive(Debug, Clone)]
enum OwnedOp {
    Hello([u8; 4], u16, Option<String>),
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>, Option<u32>),
    Delete(Vec<u8>),
    Ping,
    Stats,
    Join(String),
    Leave(String),
    Heartbeat(String),
    Members,
    RoutedGet(u64, Vec<u8>),
    RoutedPut(u64, Vec<u8>, Vec<u8>, Option<u32>),
    Peek(Vec<u8>),
    HandoffGet(u64, String, Vec<u8>),
    PutIf(bool, Vec<u8>, Vec<u8>, Option<u32>),
    Ttl(Vec<u8>),
}

impl OwnedOp {
    fn op(&self) -> Op<'_> {
        match self {
            OwnedOp::Hello(m, v, t) => Op::Hello {
                magic: *m,
                version: *v,
                token: t.as_deref(),
            },
            OwnedOp::Get(k) => Op::Get { key: k },
            OwnedOp::Put(k, v, t) => Op::Put {
                key: k,
                value: v,
                ttl: *t,
            },
            OwnedOp::Delete(k) => Op::Delete { key: k },
            OwnedOp::Ping => Op::Ping,
            OwnedOp::Stats => Op::Stats,
            OwnedOp::Join(a) => Op::Join { address: a },
            OwnedOp::Leave(a) => Op::Leave { address: a },
            OwnedOp::Heartbeat(a) => Op::Heartbeat { address: a },
            OwnedOp::Members => Op::Members,
            OwnedOp::RoutedGet(s, k) => Op::RoutedGet { since: *s, key: k },
            OwnedOp::RoutedPut(e, k, v, t) => Op::RoutedPut {
                epoch: *e,
                key: k,
                value: v,
                ttl: *t,
            },
            OwnedOp::Peek(k) => Op::Peek { key: k },
            OwnedOp::HandoffGet(s, p, k) => Op::HandoffGet {
                since: *s,
                previous: p,
                key: k,
            },
            OwnedOp::PutIf(absent, k, v, t) => Op::PutIf {
                cond: if *absent { Cond::Absent } else { Cond::Present },
                key: k,
                value: v,
                ttl: *t,
            },
            OwnedOp::Ttl(k) => Op::Ttl { key: k },
        }
    }
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300)
}

fn owned_op() -> impl Strategy<Value = OwnedOp> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            proptest::option::of(".{0,40}")
        )
            .prop_map(|(m, v, t)| OwnedOp::Hello(m, v, t)),
        bytes().prop_map(OwnedOp::Get),
        (bytes(), bytes(), proptest::option::of(any::<u32>()))
            .prop_map(|(k, v, t)| OwnedOp::Put(k, v, t)),
        bytes().prop_map(OwnedOp::Delete),
        Just(OwnedOp::Ping),
        Just(OwnedOp::Stats),
        ".{0,60}".prop_map(OwnedOp::Join),
        ".{0,60}".prop_map(OwnedOp::Leave),
        ".{0,60}".prop_map(OwnedOp::Heartbeat),
        Just(OwnedOp::Members),
        (any::<u64>(), bytes()).prop_map(|(s, k)| OwnedOp::RoutedGet(s, k)),
        (
            any::<u64>(),
            bytes(),
            bytes(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(e, k, v, t)| OwnedOp::RoutedPut(e, k, v, t)),
        bytes().prop_map(OwnedOp::Peek),
        (any::<u64>(), ".{0,60}", bytes()).prop_map(|(s, p, k)| OwnedOp::HandoffGet(s, p, k)),
        (
            any::<bool>(),
            bytes(),
            bytes(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(c, k, v, t)| OwnedOp::PutIf(c, k, v, t)),
        bytes().prop_map(OwnedOp::Ttl),
    ]
}

#[derive(Debug, Clone)]
enum OwnedBody {
    Empty,
    Value(Vec<u8>),
    Message(String),
    Stats(Vec<(String, u64)>),
    Members(u64, Vec<String>),
    Hello(u16, String),
    Entry(u64, u64, bool, Vec<u8>),
}

impl OwnedBody {
    fn body(&self) -> Body<'_> {
        match self {
            OwnedBody::Empty => Body::Empty,
            OwnedBody::Value(v) => Body::Value(v),
            OwnedBody::Message(m) => Body::Message(m),
            OwnedBody::Stats(s) => {
                Body::Stats(s.iter().map(|(n, v)| Stat { name: n, value: *v }).collect())
            }
            OwnedBody::Members(e, a) => Body::Members {
                epoch: *e,
                addresses: a.iter().map(String::as_str).collect(),
            },
            OwnedBody::Hello(v, s) => Body::Hello {
                version: *v,
                server: s,
            },
            OwnedBody::Entry(v, e, d, val) => Body::Entry {
                version: *v,
                expires_at: *e,
                deleted: *d,
                value: val,
            },
        }
    }
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Ok),
        Just(Status::NotFound),
        Just(Status::RateLimited),
        Just(Status::TooLarge),
        Just(Status::Unavailable),
        Just(Status::BadRequest),
        Just(Status::Unauthorized),
        Just(Status::Internal),
    ]
}

fn owned_body() -> impl Strategy<Value = OwnedBody> {
    prop_oneof![
        Just(OwnedBody::Empty),
        bytes().prop_map(OwnedBody::Value),
        ".{0,80}".prop_map(OwnedBody::Message),
        proptest::collection::vec((".{0,20}", any::<u64>()), 0..20).prop_map(OwnedBody::Stats),
        (any::<u64>(), proptest::collection::vec(".{0,30}", 0..10))
            .prop_map(|(e, a)| OwnedBody::Members(e, a)),
        (any::<u16>(), ".{0,30}").prop_map(|(v, s)| OwnedBody::Hello(v, s)),
        (any::<u64>(), any::<u64>(), any::<bool>(), bytes())
            .prop_map(|(v, e, d, val)| OwnedBody::Entry(v, e, d, val)),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(id in any::<u64>(), op in owned_op()) {
        let req = Request { id, op: op.op() };
        let mut frame = Vec::new();
        encode_request(&req, &mut frame);
        prop_assert_eq!(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize, frame.len() - 4);
        prop_assert_eq!(decode_request(&frame[4..]).expect("decodes"), req);
        prop_assert_eq!(peek_id(&frame[4..]), Some(id));
    }

    #[test]
    fn responses_round_trip(id in any::<u64>(), status in status(), body in owned_body()) {
        let resp = Response { id, status, body: body.body() };
        let mut frame = Vec::new();
        encode_response(&resp, &mut frame);
        prop_assert_eq!(peek_status(&frame[4..]), Some(status));
        prop_assert_eq!(decode_response(&frame[4..]).expect("decodes"), resp);
    }

    /// However the stream is cut into reads, the codec yields the same frames.
    #[test]
    fn frames_survive_any_split(ops in proptest::collection::vec(owned_op(), 1..20), cuts in proptest::collection::vec(1usize..64, 1..50)) {
        let mut stream = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode_request(&Request { id: i as u64, op: op.op() }, &mut stream);
        }
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < stream.len() {
            let n = (*cut.next().expect("cycle")).min(stream.len() - pos);
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            while let Some(frame) = codec.decode_frame(&mut buf).expect("valid stream") {
                got.push(frame);
            }
        }
        prop_assert_eq!(got.len(), ops.len());
        for (i, (frame, op)) in got.iter().zip(&ops).enumerate() {
            prop_assert_eq!(decode_request(frame).expect("decodes"), Request { id: i as u64, op: op.op() });
        }
    }

    /// Arbitrary bytes are either frames, "need more", or an error: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(frame)) = codec.decode_frame(&mut buf) {
            let _ = decode_request(&frame);
            let _ = decode_response(&frame);
        }
        let _ = decode_request(&data);
        let _ = decode_response(&data);
    }
}

proptest! {
    /// A router's spliced forward decodes as the routed form of the
    /// client's operation, with the new id and the key and value intact.
    #[test]
    fn forwards_splice_into_routed_ops(client_id in any::<u64>(), node_id in any::<u64>(), meta in any::<u64>(), since in any::<u64>(), op in owned_op(), previous in proptest::option::of(".{0,40}")) {
        let mut frame = Vec::new();
        encode_request(&Request { id: client_id, op: op.op() }, &mut frame);
        let mut fwd = Vec::new();
        let spliced = encode_forward(node_id, &frame[4..], meta, since, previous.as_deref(), &mut fwd);
        let expect = match op.op() {
            Op::Get { key } => Some(match previous.as_deref() {
                None => Op::RoutedGet { since: meta, key },
                Some(previous) => Op::HandoffGet { since: meta, previous, key },
            }),
            Op::Put { key, value, ttl } => Some(Op::RoutedPut { epoch: meta, key, value, ttl }),
            Op::Delete { key } => Some(Op::Delete { key }),
            Op::PutIf { cond, key, value, ttl } => Some(Op::RoutedPutIf { version: meta, since, previous: previous.as_deref(), cond, key, value, ttl }),
            Op::Ttl { key } => Some(Op::RoutedTtl { since: meta, previous: previous.as_deref(), key }),
            _ => None,
        };
        prop_assert_eq!(spliced, expect.is_some());
        if let Some(expect) = expect {
            prop_assert_eq!(u32::from_be_bytes([fwd[0], fwd[1], fwd[2], fwd[3]]) as usize, fwd.len() - 4);
            prop_assert_eq!(decode_request(&fwd[4..]).expect("decodes"), Request { id: node_id, op: expect });
        } else {
            prop_assert!(fwd.is_empty());
        }
    }
}

proptest! {
    /// A fenced forward decodes as the fenced form of the client's
    /// operation, with the ring revision, since, previous owner (gets
    /// only), new id, key and value intact.
    #[test]
    fn forwards_splice_into_fenced_ops(client_id in any::<u64>(), node_id in any::<u64>(), revision in any::<u64>(), since in any::<u64>(), op in owned_op(), previous in proptest::option::of(".{0,40}")) {
        let mut frame = Vec::new();
        encode_request(&Request { id: client_id, op: op.op() }, &mut frame);
        let mut fwd = Vec::new();
        let spliced = encode_fenced(node_id, &frame[4..], revision, since, previous.as_deref(), &mut fwd);
        let expect = match op.op() {
            Op::Get { key } => Some(Op::FencedGet { revision, since, previous: previous.as_deref(), key }),
            Op::Put { key, value, ttl } => Some(Op::FencedPut { revision, since, key, value, ttl }),
            Op::Delete { key } => Some(Op::FencedDelete { revision, since, key }),
            Op::PutIf { cond, key, value, ttl } => Some(Op::FencedPutIf { revision, since, previous: previous.as_deref(), cond, key, value, ttl }),
            Op::Ttl { key } => Some(Op::FencedTtl { revision, since, previous: previous.as_deref(), key }),
            _ => None,
        };
        prop_assert_eq!(spliced, expect.is_some());
        if let Some(expect) = expect {
            prop_assert_eq!(u32::from_be_bytes([fwd[0], fwd[1], fwd[2], fwd[3]]) as usize, fwd.len() - 4);
            prop_assert_eq!(decode_request(&fwd[4..]).expect("decodes"), Request { id: node_id, op: expect });
        } else {
            prop_assert!(fwd.is_empty());
        }
    }
}

#[test]
fn patching_an_id_keeps_the_rest() {
    let mut frame = Vec::new();
    encode_response(
        &Response {
            id: 1,
            status: Status::Ok,
            body: Body::Value(b"v"),
        },
        &mut frame,
    );
    assert!(patch_id(&mut frame[4..], 99));
    assert_eq!(
        decode_response(&frame[4..]).expect("decodes"),
        Response {
            id: 99,
            status: Status::Ok,
            body: Body::Value(b"v")
        }
    );
    assert!(!patch_id(&mut [0u8; 3], 1));
}

#[test]
fn oversized_length_prefix_is_an_error_not_an_allocation() {
    let mut codec = FrameCodec::new(1024);
    let mut buf = BytesMut::from(&(u32::MAX).to_be_bytes()[..]);
    assert!(matches!(
        codec.decode_frame(&mut buf),
        Err(FrameError::TooLarge { max: 1024 })
    ));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut frame = Vec::new();
    encode_request(
        &Request {
            id: 1,
            op: Op::Ping,
        },
        &mut frame,
    );
    frame.push(0);
    assert!(decode_request(&frame[4..]).is_err());
}

#[test]
fn huge_inner_lengths_are_rejected_without_allocating() {
    // A stats response claiming 2^60 entries.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes()); // Status::Ok
    body.extend_from_slice(&3u32.to_le_bytes()); // Body::Stats
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode_response(&body).is_err());
}

#[test]
fn a_settle_claiming_a_huge_list_is_an_error_not_an_allocation() {
    let mut frame = Vec::new();
    encode_request(
        &Request {
            id: 1,
            op: Op::Settle { entries: vec![] },
        },
        &mut frame,
    );
    // The list's length is the last 8 bytes: claim 2^60 entries.
    let n = frame.len();
    frame[n - 8..].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode_request(&frame[4..]).is_err());
}

proptest! {
    /// Until a frame is whole, the splitter consumes nothing: the buffer
    /// still starts at the frame's length prefix, so a server reads what a
    /// partial frame announces off the buffer. (The old stateful splitter
    /// consumed the prefix; a router then read body bytes as a length and
    /// held memory budget for gigabytes that never came.)
    #[test]
    fn a_partial_frame_is_left_whole_at_its_length_prefix(ops in proptest::collection::vec(owned_op(), 1..6), cut in 0usize..2000) {
        let mut wire = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode_request(&Request { id: i as u64, op: op.op() }, &mut wire);
        }
        let cut = cut.min(wire.len());
        let mut buf = BytesMut::from(&wire[..cut]);
        let mut codec = FrameCodec::new(1 << 20);
        let mut at = 0;
        while let Some(frame) = codec.decode_frame(&mut buf).expect("valid") {
            at += 4 + frame.len();
        }
        prop_assert_eq!(&buf[..], &wire[at..cut]);
    }
}
