//! Router + nodes over real sockets: placement, membership changes, node
//! failure, stale reads, rate limiting, bad input and the HTTP answer.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use milena::client::Client;
use milena::protocol::{Op, Status};
use milena::ring::{Ring, key_hash};
use milena::router::Router;
use milena::router::ratelimit::Limiter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn cluster(n: usize) -> (TestRouter, Vec<ClusterNode>) {
    let router = start_router(test_router_settings()).await;
    let nodes: Vec<ClusterNode> = (0..n)
        .map(|_| ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings()))
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    (router, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_through_the_router() {
    let (router, nodes) = cluster(3).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    assert!(c.server().starts_with("router milena/"));
    let (_, members) = c.members().await.expect("members");
    assert_eq!(members.len(), 3);

    let mut tasks = Vec::new();
    for t in 0..10 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                let k = format!("key-{t}-{i}");
                c.put(k.as_bytes(), format!("value-{t}-{i}").as_bytes(), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut readers = Vec::new();
    for t in 0..10 {
        let c = c.clone();
        readers.push(tokio::spawn(async move {
            for i in 0..1000 {
                let k = format!("key-{t}-{i}");
                let v = c.get(k.as_bytes()).await.expect("get");
                assert_eq!(
                    v.as_deref(),
                    Some(format!("value-{t}-{i}").as_bytes()),
                    "{k}"
                );
            }
        }));
    }
    for r in readers {
        r.await.expect("reader");
    }
    // Every node holds exactly the keys the ring gives it.
    let ring = Ring::new(nodes.iter().map(ClusterNode::url));
    let mut want: HashMap<String, u64> = HashMap::new();
    for t in 0..10 {
        for i in 0..1000 {
            let owner = ring
                .owner(key_hash(format!("key-{t}-{i}").as_bytes()))
                .expect("owner");
            *want.entry(owner.to_string()).or_default() += 1;
        }
    }
    for n in &nodes {
        assert_eq!(
            n.node.cache.store().stats().items,
            want[&n.url()],
            "{}",
            n.url()
        );
        assert!(want[&n.url()] > 2500, "keys spread evenly: {want:?}");
    }
    assert!(c.delete(b"key-0-0").await.expect("delete"));
    assert_eq!(c.get(b"key-0-0").await.expect("get"), None);
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_ejected_and_every_request_still_gets_an_answer() {
    let (router, mut nodes) = cluster(3).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    for i in 0..1000 {
        c.put(format!("k{i}").as_bytes(), b"v", None)
            .await
            .expect("put");
    }
    let victim = nodes.remove(1);
    let victim_url = victim.url();
    let victim_addr = victim.addr;
    let held = victim.node.cache.store().stats().items;
    victim.kill().await;

    // Requests racing the ejection are retried on the next owner: every one
    // is answered with the value or not-found, never an error or a hang.
    let mut missing = 0;
    for i in 0..1000 {
        match c.get(format!("k{i}").as_bytes()).await.expect("answered") {
            Some(v) => assert_eq!(&v[..], b"v"),
            None => missing += 1,
        }
    }
    // Until the S3 tier lands, the dead node's keys are gone with it.
    assert_eq!(missing, held, "exactly the killed node's keys are missing");
    let others: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&others.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(router.router.members.ejections(), 1);

    // Writes after the ejection land on the survivors and read back.
    for i in 0..100 {
        c.put(format!("after{i}").as_bytes(), b"w", None)
            .await
            .expect("put");
        assert_eq!(
            c.get(format!("after{i}").as_bytes())
                .await
                .expect("get")
                .as_deref(),
            Some(&b"w"[..])
        );
    }

    // The node comes back on the same address and rejoins by itself.
    let back = ClusterNode::start(&victim_addr.to_string(), &[router.url()], small_settings());
    assert_eq!(back.url(), victim_url);
    let mut all = others.clone();
    all.push(victim_url);
    router
        .wait_members(&all.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    c.put(b"again", b"x", None).await.expect("put after rejoin");
    assert_eq!(
        c.get(b"again").await.expect("get").as_deref(),
        Some(&b"x"[..])
    );
    back.stop().await;
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_leaves_the_ring_before_the_node_stops() {
    let (router, mut nodes) = cluster(2).await;
    let leaving = nodes.remove(0);
    let url = leaving.url();
    leaving.stop().await;
    // No waiting: the leave happened before the node stopped serving.
    let view = router.router.members.view();
    assert!(!view.ring.contains(&url));
    assert_eq!(view.ring.len(), 1);
    assert_eq!(router.router.members.ejections(), 0);
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_through_the_client_removes_a_node() {
    let (router, nodes) = cluster(2).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    c.leave(&nodes[0].url()).await.expect("leave");
    let (_, members) = c.members().await.expect("members");
    assert_eq!(members, vec![nodes[1].url()]);
    // The removed node keeps heartbeating (every 100 ms) until it is shut
    // down; its heartbeats must not bring it back. Wait for a few of them.
    let before = nodes[0]
        .node
        .ring_epoch
        .load(std::sync::atomic::Ordering::Relaxed);
    let removed_at = router.router.members.view().epoch;
    while nodes[0]
        .node
        .ring_epoch
        .load(std::sync::atomic::Ordering::Relaxed)
        < removed_at
    {
        tokio::task::yield_now().await;
    }
    assert!(before <= removed_at);
    let (_, members) = c.members().await.expect("members");
    assert_eq!(members, vec![nodes[1].url()], "a heartbeat undid the leave");
    // An explicit join brings it back.
    c.join(&nodes[0].url()).await.expect("join");
    assert_eq!(c.members().await.expect("members").1.len(), 2);
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

#[tokio::test]
async fn two_routers_agree_whatever_the_join_order() {
    let a = start_router(test_router_settings()).await;
    let b = start_router(test_router_settings()).await;
    // Real nodes (standalone) so that neither router ejects them.
    let n: Vec<TestNode> = futures_join(3).await;
    let urls: Vec<String> = n.iter().map(TestNode::url).collect();
    let ca = Client::connect(&a.url()).await.expect("a");
    let cb = Client::connect(&b.url()).await.expect("b");
    for u in &urls {
        ca.join(u).await.expect("join a");
    }
    for u in urls.iter().rev() {
        cb.join(u).await.expect("join b");
    }
    let (va, vb) = (a.router.members.view(), b.router.members.view());
    assert_eq!(va.ring, vb.ring);
    for k in 0..10_000 {
        let h = key_hash(format!("key{k}").as_bytes());
        assert_eq!(va.ring.owner(h), vb.ring.owner(h));
    }
    assert_eq!(
        ca.members().await.expect("m").1,
        cb.members().await.expect("m").1
    );
    a.stop().await;
    b.stop().await;
    for n in n {
        n.stop().await;
    }
}

async fn futures_join(n: usize) -> Vec<TestNode> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(start_node(small_settings()).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_is_ejected() {
    let router = start_router(milena::router::RouterSettings {
        heartbeat_timeout: Duration::from_millis(200),
        ..test_router_settings()
    })
    .await;
    // Joined by hand, never heartbeats: the sweep must eject it.
    let silent = start_node(small_settings()).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    c.join(&silent.url()).await.expect("join");
    assert_eq!(router.router.members.view().ring.len(), 1);
    router.wait_members(&[]).await;
    assert_eq!(router.router.members.ejections(), 1);
    silent.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_connections_never_enters_the_ring() {
    let router = start_router(test_router_settings()).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let epoch = router.router.members.view().epoch;
    let err = c
        .join(&format!("http://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.status(), Some(Status::Unavailable), "{err}");
    assert!(err.to_string().contains("cannot join"), "{err}");
    assert_eq!(
        router.router.members.view().epoch,
        epoch,
        "the ring never changed"
    );
    let err = c.get(b"k").await.expect_err("no node");
    assert_eq!(err.status(), Some(Status::Unavailable), "{err}");
    router.stop().await;
}

/// The stale-read scenario: put k=v1 at A; B joins and takes k;
/// put k=v2 at B; B leaves; a get must not return v1 from A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_ownership_returns() {
    let router = start_router(test_router_settings()).await;
    let a = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&a.url()]).await;
    // B's address is fixed up front so a key it will own can be chosen.
    let b_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let b_url = format!("http://{b_addr}");
    let both = Ring::new([a.url(), b_url.clone()]);
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| both.owner(key_hash(k.as_bytes())) == Some(b_url.as_str()))
        .expect("a key B owns");

    let c = Client::connect(&router.url()).await.expect("connect");
    c.put(key.as_bytes(), b"v1", None).await.expect("put v1");
    assert_eq!(
        a.node
            .cache
            .store()
            .get(key.as_bytes(), a.node.clock.now())
            .as_deref(),
        Some(&b"v1"[..])
    );

    let b = ClusterNode::start(&b_addr.to_string(), &[router.url()], small_settings());
    router.wait_members(&[&a.url(), &b_url]).await;
    c.put(key.as_bytes(), b"v2", None).await.expect("put v2");
    assert_eq!(
        c.get(key.as_bytes()).await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    b.stop().await;
    router.wait_members(&[&a.url()]).await;

    // A still holds v1 in memory, but must not serve it.
    let got = c.get(key.as_bytes()).await.expect("get");
    assert_ne!(got.as_deref(), Some(&b"v1"[..]), "stale value served");
    assert_eq!(got, None);
    assert_eq!(a.node.cache.store().stats().counters.stale, 1);
    // A put after the change is served normally.
    c.put(key.as_bytes(), b"v3", None).await.expect("put v3");
    assert_eq!(
        c.get(key.as_bytes()).await.expect("get").as_deref(),
        Some(&b"v3"[..])
    );
    a.stop().await;
    router.stop().await;
}

/// RATE_LIMIT=100 over 3 seconds admits 300 ± 10%, on a clock the test moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_admits_about_the_configured_rate() {
    let clock = governor::clock::FakeRelativeClock::default();
    let shutdown = CancellationToken::new();
    let router = Router::with_limiter(
        test_router_settings(),
        Limiter::with_clock(100, clock.clone()),
        shutdown.clone(),
    );
    let router = start_router_with(router, shutdown).await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");

    let (mut admitted, mut limited) = (0, 0);
    // 3 seconds in 5 ms steps, 4 requests per step (800/s offered).
    for _ in 0..600 {
        for _ in 0..4 {
            match c.put(b"k", b"v", None).await {
                Ok(()) => admitted += 1,
                Err(e) => {
                    assert_eq!(e.status(), Some(Status::RateLimited), "{e}");
                    assert!(e.to_string().contains("rate limited"), "{e}");
                    limited += 1;
                }
            }
        }
        clock.advance(Duration::from_millis(5));
    }
    assert!((270..=330).contains(&admitted), "admitted {admitted}");
    assert_eq!(admitted + limited, 2400);
    let stats: HashMap<String, u64> = c.stats().await.expect("stats").into_iter().collect();
    assert_eq!(stats["rate_limited"], limited);
    node.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn with_no_nodes_clients_get_unavailable() {
    let router = start_router(test_router_settings()).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    let err = c.put(b"k", b"v", None).await.expect_err("no nodes");
    assert_eq!(err.status(), Some(Status::Unavailable));
    // Said once: the status is not repeated in front of the message.
    assert_eq!(err.to_string(), "unavailable: no cache node is in the ring");
    c.ping().await.expect("router still fine");
    router.stop().await;
}

#[tokio::test]
async fn malformed_input_to_the_router_gets_errors_and_it_keeps_serving() {
    let router = start_router(test_router_settings()).await;
    // 1 GiB length prefix.
    let mut raw = Raw::greeted(router.addr).await;
    raw.send_bytes(&(1u32 << 30).to_be_bytes()).await;
    let r = raw.recv().await.expect("answer");
    assert_eq!(r.status, Status::TooLarge);
    raw.expect_closed().await;
    // Undecodable body.
    let mut raw = Raw::greeted(router.addr).await;
    raw.send_bytes(&[0, 0, 0, 3, 1, 2, 3]).await;
    assert_eq!(raw.recv().await.expect("answer").status, Status::BadRequest);
    raw.expect_closed().await;
    // Request before hello.
    let mut raw = Raw::connect(router.addr).await;
    raw.send(9, Op::Ping).await;
    let r = raw.recv().await.expect("answer");
    assert_eq!((r.id, r.status), (9, Status::BadRequest));
    raw.expect_closed().await;
    // Node-internal ops and empty keys are refused, the connection goes on.
    let mut raw = Raw::greeted(router.addr).await;
    raw.send(
        1,
        Op::RoutedGet {
            since: 0,
            key: b"k",
        },
    )
    .await;
    raw.send(2, Op::Get { key: b"" }).await;
    raw.send(
        3,
        Op::Join {
            address: "not a url",
        },
    )
    .await;
    raw.send(4, Op::Ping).await;
    let mut answers: Vec<(u64, Status)> = Vec::new();
    for _ in 0..4 {
        let r = raw.recv().await.expect("answer");
        answers.push((r.id, r.status));
    }
    answers.sort_by_key(|a| a.0);
    assert_eq!(
        answers,
        vec![
            (1, Status::BadRequest),
            (2, Status::BadRequest),
            (3, Status::BadRequest),
            (4, Status::Ok)
        ]
    );
    // Garbage that is neither HTTP nor a frame.
    let mut s = tokio::net::TcpStream::connect(router.addr)
        .await
        .expect("connect");
    s.write_all(&[0x01, 0xff, 0xff, 0xff, 0xde, 0xad])
        .await
        .expect("write");
    s.shutdown().await.expect("half close");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink).await;
    Client::connect(&router.url())
        .await
        .expect("still serving")
        .ping()
        .await
        .expect("ping");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_a_health_line_on_the_same_port() {
    let (router, nodes) = cluster(3).await;
    let ok = http(
        router.addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("ok, 3 members"), "{ok}");
    let missing = http(
        router.addr,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let post = http(
        router.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let junk = http(router.addr, "GARBAGE\r\n\r\n").await;
    assert!(
        junk.starts_with("HTTP/1.1 400") || junk.is_empty(),
        "{junk}"
    );
    // The binary protocol still works on the same port.
    Client::connect(&router.url())
        .await
        .expect("binary")
        .ping()
        .await
        .expect("ping");
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

/// Pipelined requests for one key keep their order through the router,
/// whichever of its node connections they travel on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_one_key_keep_their_order_through_the_router() {
    let (router, nodes) = cluster(1).await;
    let mut raw = Raw::greeted(router.addr).await;
    let mut bytes = Vec::new();
    for round in 0..200u64 {
        let v1 = format!("a{round}");
        let v2 = format!("b{round}");
        for (id, op) in [
            (
                round * 3 + 1,
                Op::Put {
                    key: b"k",
                    value: v1.as_bytes(),
                    ttl: None,
                },
            ),
            (
                round * 3 + 2,
                Op::Put {
                    key: b"k",
                    value: v2.as_bytes(),
                    ttl: None,
                },
            ),
            (round * 3 + 3, Op::Get { key: b"k" }),
        ] {
            milena::protocol::encode_request(&milena::protocol::Request { id, op }, &mut bytes);
        }
    }
    raw.send_bytes(&bytes).await;
    let mut gets = std::collections::HashMap::new();
    for _ in 0..600 {
        let r = raw.recv().await.expect("answer");
        assert_eq!(r.status, Status::Ok, "{r:?}");
        if r.id % 3 == 0 {
            gets.insert(r.id, r.value.expect("value"));
        }
    }
    for round in 0..200u64 {
        assert_eq!(
            gets[&(round * 3 + 3)],
            format!("b{round}").into_bytes(),
            "round {round}"
        );
    }
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

/// A node that accepts requests but never answers (hung, paused, or behind
/// a black hole): after NODE_TIMEOUT its requests go to the next owner and
/// it leaves the ring, instead of clients waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_times_out_and_its_requests_move_on() {
    let router = start_router(milena::router::RouterSettings {
        node_timeout: Duration::from_millis(200),
        ..test_router_settings()
    })
    .await;
    let good = start_node(small_settings()).await;
    // The hung node: says hello, then reads and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("http://{}", hung.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = hung.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await; // the hello
                let mut out = Vec::new();
                milena::protocol::encode_response(
                    &milena::protocol::Response {
                        id: 0,
                        status: Status::Ok,
                        body: milena::protocol::Body::Hello {
                            version: 1,
                            server: "node milena/hung",
                        },
                    },
                    &mut out,
                );
                let _ = s.write_all(&out).await;
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    let c = Client::connect(&router.url()).await.expect("connect");
    c.join(&good.url()).await.expect("join good");
    c.join(&hung_url).await.expect("join hung");
    let both = Ring::new([good.url(), hung_url.clone()]);
    let key = (0..)
        .map(|i| format!("key{i}"))
        .find(|k| both.owner(key_hash(k.as_bytes())) == Some(hung_url.as_str()))
        .expect("a key the hung node owns");
    // Answered by the next owner after the timeout, not left hanging.
    c.put(key.as_bytes(), b"v", None)
        .await
        .expect("put moves on");
    assert_eq!(
        c.get(key.as_bytes()).await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    router.wait_members(&[&good.url()]).await;
    assert_eq!(router.router.members.ejections(), 1);
    good.stop().await;
    router.stop().await;
}
