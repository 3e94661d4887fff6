//! The S3 tier against a real S3-compatible server (`s3s-fs` over HTTP,
//! signatures checked): versions and conditional writes, tombstones, TTLs
//! in metadata, the object layout, and nodes that lose no data.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::s3::{BUCKET, FaultProxy, S3Server};
use common::*;
use milena::client::Client;
use milena::node::tier::layout::key_of;
use milena::node::tier::s3::S3Tier;
use milena::node::tier::{Object, ReadOutcome, Tier, TierError, WriteOutcome};
use milena::node::{Clock, Node, NodeSettings, WriteMode};
use milena::router::RouterSettings;

fn obj(value: &'static [u8], version: u64, expires_at: Option<u64>) -> Object {
    Object {
        value: Bytes::from_static(value),
        expires_at,
        version,
    }
}

#[tokio::test]
async fn versions_tombstones_and_expiry_round_trip() {
    let s3 = S3Server::start("rt");
    let t = s3.tier().await;
    assert_eq!(t.check().await.expect("bucket reachable"), None);
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    // A slow upload of an older value never replaces a newer one.
    assert_eq!(
        t.put(b"k", &obj(b"v1", 1, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        t.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"v2", 2, None))
    );
    // Same version again (a retried upload) is idempotent.
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Stored
    );

    // A delete older than the stored write does nothing; a newer one
    // leaves a tombstone that keeps an even later-arriving older put out.
    assert_eq!(
        t.delete(b"k", 1).await.expect("delete"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        t.delete(b"k", 3).await.expect("delete"),
        WriteOutcome::Stored
    );
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v4", 4, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    assert_eq!(
        t.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"v4", 4, None))
    );

    // TTL travels with the object: dead at its expiry, then removed.
    t.put(b"t", &obj(b"x", 5, Some(100))).await.expect("put");
    assert_eq!(
        t.get(b"t", 99).await.expect("get"),
        ReadOutcome::Found(obj(b"x", 5, Some(100)))
    );
    assert_eq!(t.get(b"t", 100).await.expect("get"), ReadOutcome::Expired);
    assert_eq!(t.get(b"t", 0).await.expect("get"), ReadOutcome::Absent);
}

/// A node remembers the ETag of what it last wrote and skips the HEAD on
/// its next upload of the key; when another writer got in between, the
/// conditional PUT fails and the version check still decides.
#[tokio::test]
async fn a_stale_remembered_etag_never_clobbers_a_newer_write() {
    let s3 = S3Server::start("etag");
    let mine = s3.tier().await;
    let other = s3.tier().await;
    mine.put(b"k", &obj(b"v2", 2, None)).await.expect("put");
    other.put(b"k", &obj(b"v5", 5, None)).await.expect("put");
    assert_eq!(
        mine.put(b"k", &obj(b"v3", 3, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        mine.put(b"k", &obj(b"v6", 6, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    other.put(b"k", &obj(b"v7", 7, None)).await.expect("put");
    // Remembered v6 already says v4 is old: no request needed, still right.
    assert_eq!(
        mine.put(b"k", &obj(b"v4", 4, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        mine.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"v7", 7, None))
    );
}

#[tokio::test]
async fn binary_keys_map_to_listable_object_names() {
    let s3 = S3Server::start("keys");
    let t = s3.tier().await;
    // s3s-fs keeps metadata in a file named after the whole object name,
    // so its keys stop at about 110 bytes (AWS takes 1024-byte names; the
    // directory tier's tests cover the longest keys).
    let long = vec![0xab; 100];
    let odd: Vec<u8> = (0..=255u8).collect();
    for (k, v) in [
        (&b"user:42"[..], &b"ann"[..]),
        (&long, b""),
        (&odd[..100], b"bytes"),
    ] {
        t.put(
            k,
            &Object {
                value: Bytes::copy_from_slice(v),
                expires_at: None,
                version: 1,
            },
        )
        .await
        .expect("put");
        match t.get(k, 0).await.expect("get") {
            ReadOutcome::Found(o) => assert_eq!(&o.value[..], v),
            other => panic!("{other:?}"),
        }
    }
    // What `aws s3 ls --recursive` shows maps back to the keys.
    assert_eq!(t.object_name(b"user:42"), "milena/9f/dXNlcjo0Mg");
    assert!(s3.root.join(BUCKET).join("milena/9f/dXNlcjo0Mg").is_file());
    assert_eq!(
        key_of("milena", &t.object_name(&long)).as_deref(),
        Some(&long[..])
    );
    assert_eq!(s3.object_count(), 3);
}

#[tokio::test]
async fn a_foreign_object_is_reported_not_served() {
    let s3 = S3Server::start("foreign");
    let t = s3.tier().await;
    let path = s3.root.join(BUCKET).join(t.object_name(b"k"));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, b"put there by someone else").expect("write");
    match t.get(b"k", 0).await {
        Err(TierError::Corrupt { reason, .. }) => assert!(reason.contains("milena-version")),
        other => panic!("{other:?}"),
    }
    // A write of ours replaces it (it counts as older than everything).
    assert_eq!(
        t.put(b"k", &obj(b"ours", 1, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    assert_eq!(
        t.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"ours", 1, None))
    );
}

#[tokio::test]
async fn bad_credentials_and_a_missing_bucket_are_clear_errors() {
    let s3 = S3Server::start("creds");
    let mut s = s3.settings();
    s.static_credentials = Some(("milena-test".into(), "wrong".into()));
    let err = S3Tier::connect(s)
        .await
        .get(b"k", 0)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("tier get"), "{err}");
    let mut s = s3.settings();
    s.bucket = "no-such-bucket".into();
    let err = S3Tier::connect(s)
        .await
        .check()
        .await
        .expect_err("no bucket");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    // Nothing listening: reported as unreachable, not as a refusal.
    let mut s = s3.settings();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    s.endpoint = Some(format!("http://{}", closed.local_addr().expect("addr")));
    drop(closed);
    let why = S3Tier::connect(s)
        .await
        .check()
        .await
        .expect("not a refusal");
    assert!(why.is_some());
}

fn sync_settings() -> NodeSettings {
    NodeSettings {
        write_mode: WriteMode::Sync,
        ..small_settings()
    }
}

/// The value a node's stats report for `name`.
async fn stat(c: &Client, name: &str) -> u64 {
    c.stats()
        .await
        .expect("stats")
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

/// Sync mode: 10,000 puts through the router, one node killed without
/// leave or flush; every key reads back right through the router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sync_writes_survive_a_killed_node() {
    let s3 = S3Server::start("kill");
    let router = start_router(test_router_settings()).await;
    let mut nodes: Vec<ClusterNode> = (0..3)
        .map(|_| {
            ClusterNode::start_with_tier(
                "127.0.0.1:0",
                &[router.url()],
                sync_settings(),
                TierSpec::S3(s3.settings()),
            )
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let c = Client::connect(&router.url()).await.expect("connect");
    const WRITERS: usize = 32;
    const PER: usize = 10_000 / WRITERS + 1;
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER {
                let k = format!("key-{t}-{i}");
                c.put(k.as_bytes(), format!("value-{k}").as_bytes(), Some(0))
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let victim = nodes.remove(0);
    let held = victim.node.cache.store().stats().items;
    assert!(held > 2000, "the victim held its share ({held})");
    victim.kill().await;
    let rest: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&rest.iter().map(String::as_str).collect::<Vec<_>>())
        .await;

    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lost, mut wrong) = (0, 0);
            for i in 0..PER {
                let k = format!("key-{t}-{i}");
                match c.get(k.as_bytes()).await.expect("answered") {
                    Some(v) if v == format!("value-{k}").as_bytes() => {}
                    Some(_) => wrong += 1,
                    None => lost += 1,
                }
            }
            (lost, wrong)
        }));
    }
    let (mut lost, mut wrong) = (0, 0);
    for t in tasks {
        let (l, w) = t.await.expect("reader");
        lost += l;
        wrong += w;
    }
    println!(
        "{} keys, victim held {held}: lost {lost}, wrong {wrong}",
        WRITERS * PER
    );
    assert_eq!((lost, wrong), (0, 0));
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
}

/// Async mode: acknowledged at once, and a graceful stop uploads every
/// write before the node exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_uploads_every_async_write() {
    let s3 = S3Server::start("flush");
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start_with_tier(
        "127.0.0.1:0",
        &[router.url()],
        small_settings(),
        TierSpec::S3(s3.settings()),
    );
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    for i in 0..500 {
        c.put(
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
            Some(0),
        )
        .await
        .expect("put");
    }
    node.stop().await;
    let tier = s3.tier().await;
    for i in 0..500 {
        match tier.get(format!("k{i}").as_bytes(), 0).await.expect("read") {
            ReadOutcome::Found(o) => assert_eq!(o.value, format!("v{i}").as_bytes()),
            other => panic!("k{i}: {other:?}"),
        }
    }
    router.stop().await;
}

/// S3 unreachable: memory hits keep being served, puts are accepted
/// until the queue is full and then refused with a clear error, the queue
/// depth and tier errors show in stats, and everything queued arrives
/// once S3 is back. A hard kill during the outage loses at most what the
/// queue held, which stats reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_queues_writes_bounded_and_drains_when_back() {
    let s3 = S3Server::start("outage");
    let proxy = FaultProxy::start(s3.addr).await;
    let settings = NodeSettings {
        queue_capacity: 64,
        ..small_settings()
    };
    let node = Node::with_tier(
        settings,
        Clock::new(),
        Arc::new(S3Tier::connect(s3.settings_via(&proxy.endpoint())).await),
    );
    let node = start_node_with(node).await;
    let c = Client::connect(&node.url()).await.expect("connect");
    c.put(b"hot", b"before", Some(0)).await.expect("put");
    node.node.cache.flush().await;

    proxy.set_down(true);
    let mut accepted = 0;
    let refusal = loop {
        match c
            .put(format!("q{accepted}").as_bytes(), b"queued", Some(0))
            .await
        {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 64, "the queue is bounded");
    };
    assert_eq!(accepted, 64);
    let msg = refusal.to_string();
    assert!(
        msg.contains("write-behind queue is full") && msg.contains("QUEUE_CAPACITY=64"),
        "{msg}"
    );
    // Memory keeps serving while S3 is away.
    assert_eq!(
        c.get(b"hot").await.expect("hit").as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(stat(&c, "tier_queue_depth").await, 64);
    // Uploads are failing and being retried.
    while stat(&c, "tier_write_errors").await == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.set_down(false);
    node.node.cache.flush().await;
    assert_eq!(stat(&c, "tier_queue_depth").await, 0);
    let tier = s3.tier().await;
    for i in 0..64 {
        assert!(
            matches!(
                tier.get(format!("q{i}").as_bytes(), 0).await.expect("read"),
                ReadOutcome::Found(_)
            ),
            "q{i} never arrived"
        );
    }
    assert!(stat(&c, "tier_put_count").await >= 65);
    node.stop().await;
}

/// A hard kill in async mode loses at most the writes still queued, and
/// the node reported that number just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_kill_loses_at_most_the_reported_queue() {
    let s3 = S3Server::start("hardkill");
    let proxy = FaultProxy::start(s3.addr).await;
    let router = start_router(test_router_settings()).await;
    let settings = NodeSettings {
        queue_capacity: 100,
        ..small_settings()
    };
    let node = ClusterNode::start_with_tier(
        "127.0.0.1:0",
        &[router.url()],
        settings,
        TierSpec::S3(s3.settings_via(&proxy.endpoint())),
    );
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    // Fewer than the queue holds, so none is refused however slow S3 is.
    for i in 0..50 {
        c.put(format!("a{i}").as_bytes(), b"v", Some(0))
            .await
            .expect("put");
    }
    node.node.cache.flush().await;
    proxy.set_down(true);
    let mut acked = 50;
    for i in 0..100 {
        if c.put(format!("b{i}").as_bytes(), b"v", Some(0))
            .await
            .is_ok()
        {
            acked += 1;
        }
    }
    let reported = node.node.cache.queue_depth();
    node.kill().await;
    proxy.set_down(false);
    let tier = s3.tier().await;
    let mut lost = 0;
    for p in ["a", "b"] {
        for i in 0..if p == "a" { 50 } else { 100 } {
            if !matches!(
                tier.get(format!("{p}{i}").as_bytes(), 0)
                    .await
                    .expect("read"),
                ReadOutcome::Found(_)
            ) {
                lost += 1;
            }
        }
    }
    println!("acknowledged {acked}, queued at the kill {reported}, lost {lost}");
    assert!(reported <= 100, "bounded by QUEUE_CAPACITY");
    assert!(lost <= reported, "lost {lost} > reported {reported}");
    assert_eq!(
        lost, 100,
        "S3 was down: every queued write died with the node"
    );
    router.stop().await;
}

/// TTL travels with the object: a node restarted after the TTL passed
/// does not serve it from S3, while a longer-lived one still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_object_is_not_served_after_a_restart() {
    let s3 = S3Server::start("ttl");
    let (clock, ms) = Clock::manual();
    let node = Node::with_tier(sync_settings(), clock, Arc::new(s3.tier().await));
    let node = start_node_with(node).await;
    let c = Client::connect(&node.url()).await.expect("connect");
    c.put(b"short", b"x", Some(10)).await.expect("put");
    c.put(b"long", b"y", Some(100)).await.expect("put");
    node.stop().await;

    let (clock, ms2) = Clock::manual();
    ms2.store(11_000, std::sync::atomic::Ordering::Relaxed);
    drop(ms);
    let node = Node::with_tier(sync_settings(), clock, Arc::new(s3.tier().await));
    let node = start_node_with(node).await;
    let c = Client::connect(&node.url()).await.expect("connect");
    assert_eq!(c.get(b"short").await.expect("get"), None);
    assert_eq!(
        c.get(b"long").await.expect("get").as_deref(),
        Some(&b"y"[..])
    );
    // The expired object was removed from the bucket on the way.
    assert_eq!(
        s3.tier().await.get(b"short", 0).await.expect("read"),
        ReadOutcome::Absent
    );
    node.stop().await;
}

/// 100 concurrent gets of one cold key: one S3 read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_s3_read() {
    let s3 = S3Server::start("coalesce");
    s3.tier()
        .await
        .put(b"cold", &obj(b"warm now", 1, None))
        .await
        .expect("seed");
    // Slow S3, so the misses really overlap (the count is one either way:
    // late arrivals find the value in memory).
    let proxy = FaultProxy::start(s3.addr).await;
    proxy.set_delay(Duration::from_millis(50));
    let node = Node::with_tier(
        small_settings(),
        Clock::new(),
        Arc::new(S3Tier::connect(s3.settings_via(&proxy.endpoint())).await),
    );
    let node = start_node_with(node).await;
    let c = Client::connect(&node.url()).await.expect("connect");
    let gets: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(b"cold").await })
        })
        .collect();
    for g in gets {
        assert_eq!(
            g.await.expect("task").expect("get").as_deref(),
            Some(&b"warm now"[..])
        );
    }
    assert_eq!(stat(&c, "tier_reads").await, 1);
    assert_eq!(stat(&c, "tier_get_count").await, 1);
    node.stop().await;
}

/// A ring change in async mode with writes stuck in the old owner's queue.
struct Handoff {
    s3: S3Server,
    proxy: FaultProxy,
    router: TestRouter,
    /// The old owner: `v1` of every key in S3, `v2` queued (its S3 is down).
    a: ClusterNode,
    /// The node that joined after the `v2` writes.
    b: ClusterNode,
    c: Client,
}

/// Writes `v1` of `keys` keys through A to S3, cuts A off S3, writes
/// `v2`, then starts B and waits until the router has both.
async fn queued_at_a_then_b_joins(name: &str, settings: RouterSettings, keys: usize) -> Handoff {
    let s3 = S3Server::start(name);
    let proxy = FaultProxy::start(s3.addr).await;
    let router = start_router(settings).await;
    let a = ClusterNode::start_with_tier(
        "127.0.0.1:0",
        &[router.url()],
        small_settings(),
        TierSpec::S3(s3.settings_via(&proxy.endpoint())),
    );
    router.wait_members(&[&a.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    for i in 0..keys {
        c.put(format!("k{i}").as_bytes(), b"v1", Some(0))
            .await
            .expect("put");
    }
    a.node.cache.flush().await;
    proxy.set_down(true);
    for i in 0..keys {
        c.put(format!("k{i}").as_bytes(), b"v2", Some(0))
            .await
            .expect("put");
    }
    let b = ClusterNode::start_with_tier(
        "127.0.0.1:0",
        &[router.url()],
        small_settings(),
        TierSpec::S3(s3.settings()),
    );
    router.wait_members(&[&a.url(), &b.url()]).await;
    Handoff {
        s3,
        proxy,
        router,
        a,
        b,
        c,
    }
}

/// `HANDOFF_WINDOW_SECONDS=0` turns the asking off: the same ring change
/// as below, and the new owner reads S3 alone, finding the older values —
/// what the window exists to prevent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_handoff_window_off_a_new_owner_trusts_s3_alone() {
    const KEYS: usize = 100;
    let Handoff {
        s3: _s3,
        proxy,
        router,
        a,
        b,
        c,
    } = queued_at_a_then_b_joins(
        "handoff-off",
        RouterSettings {
            handoff_window: Duration::ZERO,
            ..test_router_settings()
        },
        KEYS,
    )
    .await;
    let mut older = 0;
    for i in 0..KEYS {
        if c.get(format!("k{i}").as_bytes())
            .await
            .expect("get")
            .as_deref()
            == Some(b"v1")
        {
            older += 1;
        }
    }
    let peeks = b
        .node
        .cache
        .stats()
        .handoff_peeks
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("handoff off: {older} of {KEYS} reads found the older value in S3; {peeks} peeks");
    assert_eq!(peeks, 0, "no previous owner was asked");
    assert!(older > 0, "the moved keys were read from S3 alone");
    proxy.set_down(false);
    b.stop().await;
    a.stop().await;
    router.stop().await;
}

/// Async mode across a ring change: writes still queued at the old owner
/// (its S3 is unreachable) are read through the router from the new owner
/// — which asks the old one — never the older copies in S3; and when the
/// old owner's stale uploads finally land, they do not overwrite what the
/// new owner wrote since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_never_bypasses_the_previous_owners_queue() {
    const KEYS: usize = 200;
    let Handoff {
        s3,
        proxy,
        router,
        a,
        b,
        c,
    } = queued_at_a_then_b_joins("handoff", test_router_settings(), KEYS).await;
    let mut stale = 0;
    for i in 0..KEYS {
        match c
            .get(format!("k{i}").as_bytes())
            .await
            .expect("get")
            .as_deref()
        {
            Some(b"v2") => {}
            _ => stale += 1,
        }
    }
    let moved = b
        .node
        .cache
        .stats()
        .handoff_adopted
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("{moved} of {KEYS} keys moved to the new node and were taken over");
    assert!(
        moved > 20,
        "the new node took a share of the keys ({moved})"
    );
    assert_eq!(stale, 0, "reads went backwards after the ring change");

    // B now writes v3 for every key it owns; A's v2 uploads land later.
    let owned_by_b: Vec<usize> = (0..KEYS)
        .filter(|i| {
            b.node
                .cache
                .store()
                .get_with(format!("k{i}").as_bytes(), b.node.clock.now(), 0, |_| ())
                .is_some()
        })
        .collect();
    assert_eq!(owned_by_b.len() as u64, moved);
    for &i in &owned_by_b {
        c.put(format!("k{i}").as_bytes(), b"v3", Some(0))
            .await
            .expect("put");
    }
    b.node.cache.flush().await;
    proxy.set_down(false);
    a.node.cache.flush().await;
    let tier = s3.tier().await;
    for i in 0..KEYS {
        let want: &[u8] = if owned_by_b.contains(&i) {
            b"v3"
        } else {
            b"v2"
        };
        match tier.get(format!("k{i}").as_bytes(), 0).await.expect("read") {
            ReadOutcome::Found(o) => assert_eq!(&o.value[..], want, "k{i}"),
            other => panic!("k{i}: {other:?}"),
        }
    }
    a.stop().await;
    b.stop().await;
    router.stop().await;
}

/// A graceful stop while S3 stays down does not hang: it gives up after
/// the flush timeout (saying how many writes it could not upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_gives_up_on_a_dead_tier_after_the_flush_timeout() {
    let s3 = S3Server::start("deadstop");
    let proxy = FaultProxy::start(s3.addr).await;
    let settings = NodeSettings {
        flush_timeout: Duration::from_millis(200),
        ..small_settings()
    };
    let node = Node::with_tier(
        settings,
        Clock::new(),
        Arc::new(S3Tier::connect(s3.settings_via(&proxy.endpoint())).await),
    );
    let node = start_node_with(node).await;
    proxy.set_down(true);
    let c = Client::connect(&node.url()).await.expect("connect");
    c.put(b"k", b"v", Some(0)).await.expect("accepted");
    let inner = node.node.clone();
    node.stop().await;
    assert_eq!(inner.cache.queue_depth(), 1);
}

const CACHE: &str = env!("CARGO_BIN_EXE_milena-cache");

/// `milena-cache` configured the way the guide and README say: S3_BUCKET,
/// S3_ENDPOINT, S3_PREFIX and the standard AWS variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_to_the_bucket_its_environment_names() {
    use tokio::io::AsyncBufReadExt;
    let s3 = S3Server::start("binary");
    let mut child = tokio::process::Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("S3_BUCKET", BUCKET)
        .env("S3_ENDPOINT", s3.endpoint())
        .env("S3_PREFIX", "milena")
        .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("WRITE_MODE", "sync")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn milena-cache");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut saw_tier = false;
    let addr = loop {
        let line = lines.next_line().await.expect("log").expect("log line");
        saw_tier |= line.contains("tier: S3");
        if line.contains("cache node listening") {
            let rest = line.split("addr=").nth(1).expect("addr");
            break rest.split_whitespace().next().expect("addr").to_string();
        }
    };
    assert!(saw_tier, "the node did not say it uses S3");
    let c = Client::connect(&format!("http://{addr}"))
        .await
        .expect("connect");
    c.put(b"user:42", b"ann", Some(0)).await.expect("put");
    assert!(s3.root.join(BUCKET).join("milena/9f/dXNlcjo0Mg").is_file());
    child.kill().await.expect("kill");
}

/// A bucket the store refuses stops the node at start-up with one line.
#[tokio::test]
async fn a_bucket_that_does_not_exist_is_a_clear_start_up_error() {
    let s3 = S3Server::start("nobucket");
    let out = tokio::process::Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("S3_BUCKET", "no-such-bucket")
        .env("S3_ENDPOINT", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .output()
        .await
        .expect("milena-cache runs");
    assert!(!out.status.success());
    // Start-up errors are logged like everything else (stdout).
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("cannot use S3_BUCKET=no-such-bucket"), "{log}");
}

/// An entry evicted from memory while its upload is still waiting (S3 is
/// down) is not lost: reads are answered from the queue's own copy, and
/// it reaches S3 when S3 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_evicted_while_dirty_is_still_served_and_written() {
    let s3 = S3Server::start("evict");
    let proxy = FaultProxy::start(s3.addr).await;
    let mut settings = small_settings();
    settings.store.max_items = 4;
    settings.store.shards = 1;
    let node = Node::with_tier(
        settings,
        Clock::new(),
        Arc::new(S3Tier::connect(s3.settings_via(&proxy.endpoint())).await),
    );
    let node = start_node_with(node).await;
    proxy.set_down(true);
    let c = Client::connect(&node.url()).await.expect("connect");
    for i in 0..40 {
        c.put(
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
            Some(0),
        )
        .await
        .expect("put");
    }
    assert!(stat(&c, "evictions").await >= 36, "memory holds 4 entries");
    for i in 0..40 {
        assert_eq!(
            c.get(format!("k{i}").as_bytes())
                .await
                .expect("get")
                .as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i}"
        );
    }
    assert_eq!(stat(&c, "tier_reads").await, 0, "answered from the queue");
    proxy.set_down(false);
    node.node.cache.flush().await;
    let tier = s3.tier().await;
    for i in 0..40 {
        match tier.get(format!("k{i}").as_bytes(), 0).await.expect("read") {
            ReadOutcome::Found(o) => assert_eq!(o.value, format!("v{i}").as_bytes()),
            other => panic!("k{i}: {other:?}"),
        }
    }
    node.stop().await;
}
