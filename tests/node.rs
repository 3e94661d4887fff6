//! A cache node over real sockets: the protocol, pipelining, TTL, limits and
//! every kind of bad input from DESIGN.md.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use milena::client::{Client, ClientError};
use milena::node::{Clock, Node, NodeSettings};
use milena::protocol::{MAGIC, Op, PROTOCOL_VERSION, Status};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn put_get_delete_ping_stats_through_the_client() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    assert!(c.server().starts_with("node milena/"));
    c.ping().await.expect("ping");
    assert_eq!(c.get(b"k").await.expect("get"), None);
    c.put(b"k", b"v1", None).await.expect("put");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    c.put(b"k", b"", None).await.expect("empty value");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b""[..]));
    assert!(c.delete(b"k").await.expect("del"));
    assert!(!c.delete(b"k").await.expect("del again"));
    assert_eq!(c.get(b"k").await.expect("get"), None);

    let stats: std::collections::HashMap<_, _> =
        c.stats().await.expect("stats").into_iter().collect();
    assert_eq!(stats["hits"], 2);
    assert_eq!(stats["misses"], 2);
    assert_eq!(stats["gets"], 4);
    assert_eq!(stats["puts"], 2);
    assert_eq!(stats["deletes"], 2);
    assert_eq!(stats["items"], 0);
    n.stop().await;
}

#[tokio::test]
async fn binary_keys_and_values_round_trip() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let key: Vec<u8> = (0..=255u8).collect::<Vec<_>>()[..250].to_vec();
    let value: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    c.put(&key, &value, Some(0)).await.expect("put");
    assert_eq!(c.get(&key).await.expect("get").as_deref(), Some(&value[..]));
    n.stop().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_ids() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::greeted(n.addr).await;
    // 300 requests in a single write.
    let mut bytes = Vec::new();
    for i in 0..100u64 {
        let key = format!("key{i}");
        let value = format!("value{i}");
        for (id, op) in [
            (
                i * 3 + 1,
                Op::Put {
                    key: key.as_bytes(),
                    value: value.as_bytes(),
                    ttl: None,
                },
            ),
            (
                i * 3 + 2,
                Op::Get {
                    key: key.as_bytes(),
                },
            ),
            (i * 3 + 3, Op::Get { key: b"absent" }),
        ] {
            milena::protocol::encode_request(&milena::protocol::Request { id, op }, &mut bytes);
        }
    }
    raw.send_bytes(&bytes).await;
    for i in 0..100u64 {
        let put = raw.recv().await.expect("put answer");
        assert_eq!((put.id, put.status), (i * 3 + 1, Status::Ok));
        let get = raw.recv().await.expect("get answer");
        assert_eq!((get.id, get.status), (i * 3 + 2, Status::Ok));
        assert_eq!(get.value, Some(format!("value{i}").into_bytes()));
        let miss = raw.recv().await.expect("miss answer");
        assert_eq!((miss.id, miss.status), (i * 3 + 3, Status::NotFound));
    }
    n.stop().await;
}

#[tokio::test]
async fn one_client_shared_by_many_tasks() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let k = format!("t{t}-{i}");
                c.put(k.as_bytes(), k.as_bytes(), None).await.expect("put");
                let v = c.get(k.as_bytes()).await.expect("get");
                assert_eq!(v.as_deref(), Some(k.as_bytes()));
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(n.node.cache.store().stats().items, 16 * 200);
    n.stop().await;
}

#[tokio::test]
async fn ttl_expires_entries_by_the_clock() {
    let (clock, ms) = Clock::manual();
    let n = start_node_with(Node::with_clock(
        NodeSettings {
            default_ttl: 10,
            ..small_settings()
        },
        clock,
    ))
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    c.put(b"default", b"v", None).await.expect("put");
    c.put(b"short", b"v", Some(2)).await.expect("put");
    c.put(b"forever", b"v", Some(0)).await.expect("put");

    ms.store(1_999, Ordering::Relaxed);
    assert!(c.get(b"short").await.expect("get").is_some());
    ms.store(2_000, Ordering::Relaxed);
    assert!(c.get(b"short").await.expect("get").is_none());
    assert!(c.get(b"default").await.expect("get").is_some());
    ms.store(10_000, Ordering::Relaxed);
    assert!(c.get(b"default").await.expect("get").is_none());
    ms.store(1_000_000_000, Ordering::Relaxed);
    assert!(c.get(b"forever").await.expect("get").is_some());
    n.stop().await;
}

/// The background reclaimer runs on tokio's clock: with time paused, expired
/// entries disappear without any get once the clock passes their TTL.
#[tokio::test(start_paused = true)]
async fn expired_entries_are_reclaimed_in_the_background() {
    let n = start_node(NodeSettings {
        default_ttl: 5,
        ..small_settings()
    })
    .await;
    let now = n.node.clock.now();
    for i in 0..1000u32 {
        n.node.cache.store().put(&i.to_be_bytes(), b"v", 5, now, 0);
    }
    assert_eq!(n.node.cache.store().stats().items, 1000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(n.node.cache.store().stats().items, 1000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = n.node.cache.store().stats();
    assert_eq!((s.items, s.counters.expirations), (0, 1000));
    n.stop().await;
}

#[tokio::test]
async fn lru_size_bounds_the_node() {
    let n = start_node(NodeSettings {
        store: milena::node::store::StoreConfig {
            max_items: 100,
            max_bytes: None,
            shards: 4,
        },
        ..small_settings()
    })
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    for i in 0..1000 {
        c.put(format!("k{i}").as_bytes(), b"v", None)
            .await
            .expect("put");
    }
    let stats: std::collections::HashMap<_, _> =
        c.stats().await.expect("stats").into_iter().collect();
    assert!(stats["items"] <= 100);
    assert_eq!(stats["items"] + stats["evictions"], 1000);
    n.stop().await;
}

// ---- bad input: each over a real socket; the node keeps serving others ----

async fn assert_still_serving(n: &TestNode) {
    let c = Client::connect(&n.url())
        .await
        .expect("a second client connects");
    c.put(b"alive", b"yes", None).await.expect("put");
    assert_eq!(
        c.get(b"alive").await.expect("get").as_deref(),
        Some(&b"yes"[..])
    );
}

#[tokio::test]
async fn frame_longer_than_the_maximum_is_refused() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::greeted(n.addr).await;
    raw.send_bytes(&(1u32 << 30).to_be_bytes()).await; // 1 GiB announced
    let r = raw.recv().await.expect("an error answer");
    assert_eq!(r.status, Status::TooLarge);
    assert!(
        r.message
            .as_deref()
            .unwrap_or("")
            .contains("exceeds the maximum"),
        "{r:?}"
    );
    raw.expect_closed().await;
    assert_eq!(n.node.stats.protocol_errors.load(Ordering::Relaxed), 1);
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn truncated_frame_then_close() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::greeted(n.addr).await;
    raw.send_bytes(&100u32.to_be_bytes()).await;
    raw.send_bytes(&[1, 2, 3, 4, 5]).await;
    raw.stream.shutdown().await.expect("half close");
    raw.expect_closed().await;
    assert_still_serving(&n).await;
    assert_eq!(n.node.stats.protocol_errors.load(Ordering::Relaxed), 1);
    n.stop().await;
}

#[tokio::test]
async fn garbage_bytes_never_hang_or_crash_the_node() {
    let n = start_node(small_settings()).await;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut inputs: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"get foo\r\n".to_vec(),
        b"*1\r\n$4\r\nPING\r\n".to_vec(),
        vec![0; 64],
        vec![0xff; 64],
    ];
    for _ in 0..40 {
        let len = (next() % 200) as usize;
        inputs.push((0..len).map(|_| next() as u8).collect());
    }
    for input in inputs {
        let mut raw = Raw::connect(n.addr).await;
        raw.send_bytes(&input).await;
        raw.stream.shutdown().await.expect("half close");
        // Whatever the server answers, it must close; an answer, if any, is an error.
        while let Some(r) = raw.recv().await {
            assert_ne!(r.status, Status::Ok, "garbage {input:?} got {r:?}");
        }
    }
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn undecodable_body_in_a_valid_frame() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::greeted(n.addr).await;
    // id 7, then an op tag that does not exist.
    let mut body = 7u64.to_le_bytes().to_vec();
    body.extend_from_slice(&999u32.to_le_bytes());
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    raw.send_bytes(&frame).await;
    let r = raw.recv().await.expect("an error answer");
    assert_eq!((r.id, r.status), (7, Status::BadRequest));
    assert!(
        r.message.as_deref().unwrap_or("").contains("undecodable"),
        "{r:?}"
    );
    raw.expect_closed().await;
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn wrong_magic_and_wrong_version_are_refused() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::connect(n.addr).await;
    raw.send(
        1,
        Op::Hello {
            magic: *b"HTTP",
            version: PROTOCOL_VERSION,
            token: None,
        },
    )
    .await;
    let r = raw.recv().await.expect("answer");
    assert_eq!(r.status, Status::BadRequest);
    assert!(
        r.message.as_deref().unwrap_or("").contains("bad magic"),
        "{r:?}"
    );
    raw.expect_closed().await;

    let mut raw = Raw::connect(n.addr).await;
    raw.send(
        2,
        Op::Hello {
            magic: MAGIC,
            version: 9,
            token: None,
        },
    )
    .await;
    let r = raw.recv().await.expect("answer");
    assert_eq!((r.id, r.status), (2, Status::BadRequest));
    assert!(
        r.message
            .as_deref()
            .unwrap_or("")
            .contains("unsupported protocol version 9"),
        "{r:?}"
    );
    raw.expect_closed().await;

    // The client library reports the same clearly.
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn request_before_hello_is_refused() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::connect(n.addr).await;
    raw.send(5, Op::Get { key: b"k" }).await;
    let r = raw.recv().await.expect("answer");
    assert_eq!((r.id, r.status), (5, Status::BadRequest));
    assert!(
        r.message.as_deref().unwrap_or("").contains("hello"),
        "{r:?}"
    );
    raw.expect_closed().await;
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn oversized_key_or_value_and_empty_key_get_errors_and_the_connection_goes_on() {
    let n = start_node(small_settings()).await;
    let mut raw = Raw::greeted(n.addr).await;
    let big_key = vec![b'k'; 251];
    let big_value = vec![b'v'; 4097];
    raw.send(
        1,
        Op::Put {
            key: &big_key,
            value: b"v",
            ttl: None,
        },
    )
    .await;
    raw.send(2, Op::Get { key: &big_key }).await;
    raw.send(
        3,
        Op::Put {
            key: b"k",
            value: &big_value,
            ttl: None,
        },
    )
    .await;
    raw.send(
        4,
        Op::Put {
            key: b"",
            value: b"v",
            ttl: None,
        },
    )
    .await;
    raw.send(5, Op::Get { key: b"" }).await;
    raw.send(6, Op::Delete { key: b"" }).await;
    raw.send(
        7,
        Op::Put {
            key: b"k",
            value: b"fine",
            ttl: None,
        },
    )
    .await;
    raw.send(8, Op::Get { key: b"k" }).await;
    let expect = [
        (1, Status::TooLarge, "MAX_KEY_SIZE"),
        (2, Status::TooLarge, "MAX_KEY_SIZE"),
        (3, Status::TooLarge, "MAX_VALUE_SIZE"),
        (4, Status::BadRequest, "empty"),
        (5, Status::BadRequest, "empty"),
        (6, Status::BadRequest, "empty"),
    ];
    for (id, status, text) in expect {
        let r = raw.recv().await.expect("answer");
        assert_eq!((r.id, r.status), (id, status), "{r:?}");
        assert!(r.message.as_deref().unwrap_or("").contains(text), "{r:?}");
    }
    assert_eq!(raw.recv().await.expect("put").status, Status::Ok);
    assert_eq!(
        raw.recv().await.expect("get").value.as_deref(),
        Some(&b"fine"[..])
    );
    assert_eq!(n.node.stats.errors.load(Ordering::Relaxed), 6);
    n.stop().await;
}

#[tokio::test]
async fn router_operations_sent_to_a_node_are_refused() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let err = c
        .call(Op::Members)
        .await
        .expect("answer")
        .into_result()
        .expect_err("refused");
    assert_eq!(err.status(), Some(Status::BadRequest));
    assert!(err.to_string().contains("router operation"), "{err}");
    c.ping().await.expect("same connection still works");
    n.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_hello_timeout() {
    let n = start_node(NodeSettings {
        hello_timeout: Duration::from_millis(50),
        ..small_settings()
    })
    .await;
    let mut raw = Raw::connect(n.addr).await;
    let r = raw.recv().await.expect("timeout answer");
    assert_eq!(r.status, Status::BadRequest);
    assert!(
        r.message.as_deref().unwrap_or("").contains("no hello"),
        "{r:?}"
    );
    raw.expect_closed().await;
    assert_still_serving(&n).await;
    n.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_with_an_error() {
    let n = start_node(NodeSettings {
        max_connections: 2,
        ..small_settings()
    })
    .await;
    let a = Client::connect(&n.url()).await.expect("first");
    let b = Client::connect(&n.url()).await.expect("second");
    let err = Client::connect(&n.url())
        .await
        .expect_err("third is refused");
    assert_eq!(err.status(), Some(Status::Unavailable), "{err}");
    assert!(err.to_string().contains("too many connections"), "{err}");
    a.ping().await.expect("first still works");
    b.ping().await.expect("second still works");
    assert_eq!(n.node.stats.conns.refused.load(Ordering::Relaxed), 1);
    n.stop().await;
}

#[tokio::test]
async fn shutdown_drains_and_closes_client_connections() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    c.put(b"k", b"v", None).await.expect("put");
    let shutdown = n.shutdown.clone();
    shutdown.cancel();
    n.task
        .await
        .expect("run returns once connections are closed");
    let err = c.get(b"k").await.expect_err("connection is closed");
    assert!(
        matches!(err, ClientError::Closed | ClientError::Io(_)),
        "{err}"
    );
}

/// A pipelined batch whose answers are far larger than the write buffer's
/// flush point is answered in several writes, completely and in order.
#[tokio::test]
async fn large_pipelined_answers_are_flushed_in_bounded_chunks() {
    let n = start_node(small_settings()).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    c.put(b"big", &[9u8; 4096], None).await.expect("put");
    let mut raw = Raw::greeted(n.addr).await;
    let mut bytes = Vec::new();
    for id in 1..=1000u64 {
        milena::protocol::encode_request(
            &milena::protocol::Request {
                id,
                op: Op::Get { key: b"big" },
            },
            &mut bytes,
        );
    }
    raw.send_bytes(&bytes).await;
    for id in 1..=1000u64 {
        let r = raw.recv().await.expect("answer");
        assert_eq!((r.id, r.status), (id, Status::Ok));
        assert_eq!(r.value.as_deref().map(<[u8]>::len), Some(4096));
    }
    n.stop().await;
}
