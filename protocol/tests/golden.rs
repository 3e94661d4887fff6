//! Golden byte vectors: the exact bytes of one frame per message shape, kept
//! as hex under `golden/`. A change to the wire format fails here; if it is
//! intended, bump `PROTOCOL_VERSION`, regenerate with `UPDATE_GOLDEN=1 cargo
//! test -p milena-protocol --test golden`, and update PROTOCOL.md.

use std::path::PathBuf;

use milena_protocol::*;

fn requests() -> Vec<(&'static str, Request<'static>)> {
    vec![
        (
            "req_hello",
            Request {
                id: 0,
                op: Op::Hello {
                    magic: MAGIC,
                    version: 1,
                    token: None,
                },
            },
        ),
        (
            "req_hello_token",
            Request {
                id: 0,
                op: Op::Hello {
                    magic: MAGIC,
                    version: 1,
                    token: Some("s3cret"),
                },
            },
        ),
        (
            "req_get",
            Request {
                id: 1,
                op: Op::Get { key: b"user:42" },
            },
        ),
        (
            "req_put_ttl",
            Request {
                id: 2,
                op: Op::Put {
                    key: b"k",
                    value: b"hello",
                    ttl: Some(60),
                },
            },
        ),
        (
            "req_put_default_ttl",
            Request {
                id: 3,
                op: Op::Put {
                    key: b"k",
                    value: b"",
                    ttl: None,
                },
            },
        ),
        (
            "req_delete",
            Request {
                id: 4,
                op: Op::Delete { key: b"k" },
            },
        ),
        (
            "req_ping",
            Request {
                id: 5,
                op: Op::Ping,
            },
        ),
        (
            "req_stats",
            Request {
                id: 6,
                op: Op::Stats,
            },
        ),
        (
            "req_join",
            Request {
                id: 7,
                op: Op::Join {
                    address: "http://10.0.0.5:50051",
                },
            },
        ),
        (
            "req_leave",
            Request {
                id: 8,
                op: Op::Leave {
                    address: "http://10.0.0.5:50051",
                },
            },
        ),
        (
            "req_heartbeat",
            Request {
                id: 9,
                op: Op::Heartbeat {
                    address: "http://10.0.0.5:50051",
                },
            },
        ),
        (
            "req_members",
            Request {
                id: 10,
                op: Op::Members,
            },
        ),
        (
            "req_routed_get",
            Request {
                id: 11,
                op: Op::RoutedGet {
                    since: 5,
                    key: b"k",
                },
            },
        ),
        (
            "req_routed_put",
            Request {
                id: 12,
                op: Op::RoutedPut {
                    epoch: 6,
                    key: b"k",
                    value: b"v",
                    ttl: None,
                },
            },
        ),
        (
            "req_fenced_get",
            Request {
                id: 13,
                op: Op::FencedGet {
                    revision: 42,
                    since: 40,
                    previous: Some("http://a:1"),
                    key: b"k",
                },
            },
        ),
        (
            "req_fenced_put",
            Request {
                id: 14,
                op: Op::FencedPut {
                    revision: 42,
                    since: 40,
                    key: b"k",
                    value: b"v",
                    ttl: Some(60),
                },
            },
        ),
        (
            "req_replicate",
            Request {
                id: 16,
                op: Op::Replicate {
                    version: 1_764_750_000_000_000,
                    expires_at: 0,
                    deleted: false,
                    key: b"k",
                    value: b"v",
                },
            },
        ),
        (
            "req_settle",
            Request {
                id: 17,
                op: Op::Settle {
                    entries: vec![Settled {
                        key: b"k",
                        version: 1_764_750_000_000_000,
                    }],
                },
            },
        ),
        (
            "req_fenced_delete",
            Request {
                id: 15,
                op: Op::FencedDelete {
                    revision: 42,
                    since: 40,
                    key: b"k",
                },
            },
        ),
        (
            "req_put_if",
            Request {
                id: 19,
                op: Op::PutIf {
                    cond: Cond::Absent,
                    key: b"k",
                    value: b"v",
                    ttl: Some(60),
                },
            },
        ),
        (
            "req_routed_put_if",
            Request {
                id: 20,
                op: Op::RoutedPutIf {
                    version: 1_764_750_000_000_000,
                    since: 40,
                    previous: Some("http://10.0.0.5:50051"),
                    cond: Cond::Present,
                    key: b"k",
                    value: b"v",
                    ttl: None,
                },
            },
        ),
        (
            "req_put_if_touch",
            Request {
                id: 22,
                op: Op::PutIf {
                    cond: Cond::Touch,
                    key: b"k",
                    value: b"",
                    ttl: Some(30),
                },
            },
        ),
        (
            "req_fenced_put_if",
            Request {
                id: 21,
                op: Op::FencedPutIf {
                    revision: 42,
                    since: 40,
                    previous: None,
                    cond: Cond::Absent,
                    key: b"k",
                    value: b"v",
                    ttl: Some(0),
                },
            },
        ),
        (
            "req_ttl",
            Request {
                id: 23,
                op: Op::Ttl { key: b"k" },
            },
        ),
        (
            "req_routed_ttl",
            Request {
                id: 24,
                op: Op::RoutedTtl {
                    since: 40,
                    previous: Some("http://10.0.0.5:50051"),
                    key: b"k",
                },
            },
        ),
        (
            "req_fenced_ttl",
            Request {
                id: 25,
                op: Op::FencedTtl {
                    revision: 42,
                    since: 40,
                    previous: None,
                    key: b"k",
                },
            },
        ),
    ]
}

fn responses() -> Vec<(&'static str, Response<'static>)> {
    vec![
        (
            "resp_ok",
            Response {
                id: 2,
                status: Status::Ok,
                body: Body::Empty,
            },
        ),
        (
            "resp_value",
            Response {
                id: 1,
                status: Status::Ok,
                body: Body::Value(b"hello"),
            },
        ),
        (
            "resp_not_found",
            Response {
                id: 1,
                status: Status::NotFound,
                body: Body::Empty,
            },
        ),
        (
            "resp_error",
            Response {
                id: 4,
                status: Status::BadRequest,
                body: Body::Message("key must not be empty"),
            },
        ),
        (
            "resp_rate_limited",
            Response {
                id: 9,
                status: Status::RateLimited,
                body: Body::Message("rate limited"),
            },
        ),
        (
            "resp_stats",
            Response {
                id: 6,
                status: Status::Ok,
                body: Body::Stats(vec![
                    Stat {
                        name: "hits",
                        value: 7,
                    },
                    Stat {
                        name: "misses",
                        value: 3,
                    },
                ]),
            },
        ),
        (
            "resp_members",
            Response {
                id: 10,
                status: Status::Ok,
                body: Body::Members {
                    epoch: 3,
                    addresses: vec!["http://a:1", "http://b:2"],
                },
            },
        ),
        (
            "resp_stale_ring",
            Response {
                id: 13,
                status: Status::StaleRing,
                body: Body::Message("stale ring"),
            },
        ),
        (
            "resp_remaining",
            Response {
                id: 23,
                status: Status::Ok,
                body: Body::Remaining {
                    millis: Some(59_500),
                },
            },
        ),
        (
            "resp_remaining_forever",
            Response {
                id: 23,
                status: Status::Ok,
                body: Body::Remaining { millis: None },
            },
        ),
        (
            "resp_not_stored",
            Response {
                id: 19,
                status: Status::NotStored,
                body: Body::Empty,
            },
        ),
        (
            "resp_hello",
            Response {
                id: 0,
                status: Status::Ok,
                body: Body::Hello {
                    version: 1,
                    server: "node milena/test",
                },
            },
        ),
    ]
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.chunks(16) {
        let line: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&line.join(" "));
        s.push('\n');
    }
    s
}

fn from_hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

fn check(name: &str, frame: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.hex"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, to_hex(frame)).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create)",
            path.display()
        )
    });
    assert_eq!(
        to_hex(frame),
        to_hex(&from_hex(&want)),
        "wire format of {name} changed"
    );
}

#[test]
fn requests_match_their_golden_bytes() {
    for (name, req) in requests() {
        let mut frame = Vec::new();
        encode_request(&req, &mut frame);
        check(name, &frame);
        assert_eq!(decode_request(&frame[4..]).expect("decodes"), req);
    }
}

#[test]
fn responses_match_their_golden_bytes() {
    for (name, resp) in responses() {
        let mut frame = Vec::new();
        encode_response(&resp, &mut frame);
        check(name, &frame);
        assert_eq!(decode_response(&frame[4..]).expect("decodes"), resp);
    }
}

/// PROTOCOL.md's worked example, byte by byte, so the document cannot drift.
#[test]
fn the_documented_put_example_is_exact() {
    let mut frame = Vec::new();
    encode_request(
        &Request {
            id: 2,
            op: Op::Put {
                key: b"k",
                value: b"hello",
                ttl: Some(60),
            },
        },
        &mut frame,
    );
    let mut want = vec![0, 0, 0, 39]; // length, big-endian
    want.extend_from_slice(&2u64.to_le_bytes()); // id
    want.extend_from_slice(&2u32.to_le_bytes()); // Op::Put
    want.extend_from_slice(&1u64.to_le_bytes()); // key length
    want.extend_from_slice(b"k");
    want.extend_from_slice(&5u64.to_le_bytes()); // value length
    want.extend_from_slice(b"hello");
    want.push(1); // Some
    want.extend_from_slice(&60u32.to_le_bytes());
    assert_eq!(frame, want);
}
