//! Nodes backed by a shared directory tier: a killed node loses nothing
//! in sync mode, a graceful stop flushes async writes, concurrent misses of
//! one key share one tier read, and a queued write is never bypassed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use milena::client::Client;
use milena::node::tier::dir::DirTier;
use milena::node::tier::{Object, ReadOutcome, Tier, TierError, WriteOutcome};
use milena::node::{Clock, Node, NodeSettings, WriteMode};

fn data_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("milena-tier-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn sync_settings() -> NodeSettings {
    NodeSettings {
        write_mode: WriteMode::Sync,
        ..small_settings()
    }
}

/// Sync mode: every acknowledged put is durable, so killing a node (no
/// leave, no flush) loses nothing; its keys are read back through the tier
/// by their new owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_write_in_sync_mode() {
    let dir = data_dir("kill");
    let router = start_router(test_router_settings()).await;
    let mut nodes: Vec<ClusterNode> = (0..3)
        .map(|_| ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], sync_settings(), &dir))
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    let c = Client::connect(&router.url()).await.expect("connect");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let k = format!("key-{t}-{i}");
                c.put(k.as_bytes(), k.as_bytes(), Some(0))
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
    assert!(held > 100, "the victim held its share ({held})");
    victim.kill().await;
    let rest: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&rest.iter().map(String::as_str).collect::<Vec<_>>())
        .await;

    let (mut lost, mut wrong) = (0, 0);
    for t in 0..4 {
        for i in 0..250 {
            let k = format!("key-{t}-{i}");
            match c.get(k.as_bytes()).await.expect("answered") {
                Some(v) if v == k.as_bytes() => {}
                Some(_) => wrong += 1,
                None => lost += 1,
            }
        }
    }
    assert_eq!(
        (lost, wrong),
        (0, 0),
        "lost or wrong after killing a node holding {held} keys"
    );
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Async mode: puts are acknowledged from memory, and a graceful stop
/// flushes every one of them to the tier before the node exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_flushes_async_writes() {
    let dir = data_dir("flush");
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), &dir);
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    for i in 0..500 {
        c.put(format!("k{i}").as_bytes(), b"v", Some(0))
            .await
            .expect("put");
    }
    node.stop().await;
    let tier = DirTier::open(&dir).await.expect("dir");
    for i in 0..500 {
        assert!(
            matches!(
                tier.get(format!("k{i}").as_bytes(), 0).await.expect("read"),
                ReadOutcome::Found(_)
            ),
            "k{i} was not flushed"
        );
    }
    router.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A directory tier that counts reads and holds them until released.
#[derive(Debug)]
struct Counting {
    dir: DirTier,
    reads: AtomicU32,
    /// Reads under way now, and the most at once.
    active: AtomicU32,
    max_active: AtomicU32,
    gate: tokio::sync::Semaphore,
}

impl Counting {
    /// Over a directory tier at `dir`, with `open` reads let through at once.
    async fn new(dir: &std::path::Path, open: usize) -> Arc<Counting> {
        Arc::new(Counting {
            dir: DirTier::open(dir).await.expect("dir"),
            reads: AtomicU32::new(0),
            active: AtomicU32::new(0),
            max_active: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(open),
        })
    }
}

#[async_trait::async_trait]
impl Tier for Counting {
    fn name(&self) -> &'static str {
        "counting-dir"
    }
    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let now_active = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_active.fetch_max(now_active, Ordering::Relaxed);
        let pass = self.gate.acquire().await;
        let result = match pass {
            Ok(_pass) => self.dir.get(key, now).await,
            Err(e) => Err(std::io::Error::other(e.to_string()).into()),
        };
        self.active.fetch_sub(1, Ordering::Relaxed);
        result
    }
    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        self.dir.put(key, obj).await
    }
    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        self.dir.delete(key, version).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_cold_key_share_one_tier_read() {
    let dir = data_dir("coalesce");
    let seed = DirTier::open(&dir).await.expect("dir");
    seed.put(
        b"cold",
        &Object {
            value: "warm".into(),
            expires_at: None,
            version: 1,
        },
    )
    .await
    .expect("seed");
    drop(seed);
    let tier = Counting::new(&dir, 0).await;
    let n = start_node_with(Node::with_tier(
        small_settings(),
        Clock::new(),
        tier.clone(),
    ))
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let gets: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(b"cold").await.expect("get") })
        })
        .collect();
    // Let every get reach the node before the tier answers.
    while n.node.stats.gets.load(Ordering::Relaxed) < 100 {
        tokio::task::yield_now().await;
    }
    tier.gate.add_permits(1000);
    for g in gets {
        assert_eq!(g.await.expect("task").as_deref(), Some(&b"warm"[..]));
    }
    assert_eq!(
        tier.reads.load(Ordering::Relaxed),
        1,
        "one tier read for 100 misses"
    );
    let stats: std::collections::HashMap<String, u64> =
        c.stats().await.expect("stats").into_iter().collect();
    assert_eq!((stats["tier_reads"], stats["tier_read_errors"]), (1, 0));
    let text = n.node.scrape();
    assert!(text.contains("milena_tier_reads_total 1"), "{text}");
    assert!(text.contains("milena_tier_queue_depth 0"), "{text}");
    // Now in memory: no further tier reads.
    assert_eq!(
        c.get(b"cold").await.expect("get").as_deref(),
        Some(&b"warm"[..])
    );
    assert_eq!(tier.reads.load(Ordering::Relaxed), 1);
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A value still queued for the tier is what a read sees, even after
/// memory dropped it, never the tier's older copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_write_is_never_bypassed_by_a_read_through() {
    let dir = data_dir("queued");
    let tier = Arc::new(DirTier::open(&dir).await.expect("dir"));
    tier.put(
        b"k",
        &Object {
            value: "old".into(),
            expires_at: None,
            version: 1,
        },
    )
    .await
    .expect("seed");
    let settings = NodeSettings {
        store: milena::node::store::StoreConfig {
            max_items: 1,
            max_bytes: None,
            shards: 1,
        },
        ..small_settings()
    };
    let n = start_node_with(Node::with_tier(settings, Clock::new(), tier)).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    c.put(b"k", b"new", Some(0)).await.expect("put");
    c.put(b"other", b"x", Some(0))
        .await
        .expect("evicts k from memory");
    assert_eq!(
        c.get(b"k").await.expect("get").as_deref(),
        Some(&b"new"[..])
    );
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A hot missing key reaches the tier once, not on every get; a put of
/// the key is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_remembered_briefly() {
    let dir = data_dir("negative");
    let tier = Counting::new(&dir, 1000).await;
    let n = start_node_with(Node::with_tier(
        small_settings(),
        Clock::new(),
        tier.clone(),
    ))
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    for _ in 0..50 {
        assert_eq!(c.get(b"nothing").await.expect("get"), None);
    }
    assert_eq!(
        tier.reads.load(Ordering::Relaxed),
        1,
        "one tier read for 50 sequential misses"
    );
    c.put(b"nothing", b"now something", Some(0))
        .await
        .expect("put");
    assert_eq!(
        c.get(b"nothing").await.expect("get").as_deref(),
        Some(&b"now something"[..])
    );
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// One get is one hit or one miss, however the read-through finds its
/// answer (memory, the remembered miss, the tier): the hit-ratio panel is
/// right on nodes with a tier too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_counts_one_miss() {
    let dir = data_dir("one-miss");
    let seed = DirTier::open(&dir).await.expect("dir");
    let obj = Object {
        value: bytes::Bytes::from_static(b"cold"),
        expires_at: None,
        version: 1,
    };
    seed.put(b"in-tier", &obj).await.expect("seed");
    let n = start_node_with(Node::with_tier(
        small_settings(),
        Clock::new(),
        Arc::new(DirTier::open(&dir).await.expect("dir")),
    ))
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let counts = |c: &Client| {
        let c = c.clone();
        async move {
            let s = c.stats().await.expect("stats");
            let get = |name: &str| {
                s.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| *v)
                    .expect(name)
            };
            (get("hits"), get("misses"))
        }
    };
    assert_eq!(c.get(b"missing").await.expect("get"), None);
    assert_eq!(
        counts(&c).await,
        (0, 1),
        "a first miss, read through the tier"
    );
    assert_eq!(c.get(b"missing").await.expect("get"), None);
    assert_eq!(counts(&c).await, (0, 2), "a remembered miss");
    assert_eq!(
        c.get(b"in-tier").await.expect("get").as_deref(),
        Some(&b"cold"[..])
    );
    assert_eq!(counts(&c).await, (0, 3), "a memory miss the tier answered");
    assert_eq!(
        c.get(b"in-tier").await.expect("get").as_deref(),
        Some(&b"cold"[..])
    );
    assert_eq!(counts(&c).await, (1, 3), "then a hit");
    let text = n.node.scrape();
    assert!(text.contains("milena_cache_misses_total 3"), "{text}");
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A client pipelining misses of distinct keys against a slow tier holds
/// at most MAX_INFLIGHT_PER_CONNECTION of them in the node at once: the
/// node stops reading that connection, and everyone else is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_its_inflight_cap_of_tier_waits() {
    let dir = data_dir("inflight");
    let tier = Counting::new(&dir, 0).await; // every read waits
    let settings = NodeSettings {
        max_inflight: 8,
        ..small_settings()
    };
    let n = start_node_with(Node::with_tier(settings, Clock::new(), tier.clone())).await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let gets: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get(format!("cold-{i}").as_bytes()).await })
        })
        .collect();
    // Until the cap is reached (bounded: the node reads what was sent).
    for _ in 0..1000 {
        if tier.reads.load(Ordering::Relaxed) >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let other = Client::connect(&n.url()).await.expect("another client");
    other.ping().await.expect("others are served meanwhile");
    tier.gate.add_permits(1000);
    for g in gets {
        assert_eq!(g.await.expect("task").expect("get"), None);
    }
    assert_eq!(
        tier.max_active.load(Ordering::Relaxed),
        8,
        "tier reads at once from one connection"
    );
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A delete says whether the key existed, on a node with a tier too: from
/// memory or the queue when they know, else from the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_says_whether_the_key_existed() {
    let dir = data_dir("delete-truth");
    let seed = DirTier::open(&dir).await.expect("dir");
    let obj = Object {
        value: bytes::Bytes::from_static(b"cold"),
        expires_at: None,
        version: 1,
    };
    seed.put(b"only-in-tier", &obj).await.expect("seed");
    for mode in [WriteMode::Async, WriteMode::Sync] {
        let settings = NodeSettings {
            write_mode: mode,
            ..small_settings()
        };
        let n = start_node_with(Node::with_tier(
            settings,
            Clock::new(),
            Arc::new(DirTier::open(&dir).await.expect("dir")),
        ))
        .await;
        let c = Client::connect(&n.url()).await.expect("connect");
        let never = format!("never-{mode:?}");
        assert!(
            !c.delete(never.as_bytes()).await.expect("del"),
            "{mode:?}: never written"
        );
        let hot = format!("hot-{mode:?}");
        c.put(hot.as_bytes(), b"v", None).await.expect("put");
        assert!(
            c.delete(hot.as_bytes()).await.expect("del"),
            "{mode:?}: in memory"
        );
        assert!(
            !c.delete(hot.as_bytes()).await.expect("del"),
            "{mode:?}: already deleted"
        );
        if mode == WriteMode::Async {
            assert!(
                c.delete(b"only-in-tier").await.expect("del"),
                "in the tier only"
            );
            n.node.cache.flush().await;
        }
        assert!(
            !c.delete(b"only-in-tier").await.expect("del"),
            "{mode:?}: gone from the tier"
        );
        assert_eq!(c.get(b"only-in-tier").await.expect("get"), None);
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A put that lands while a cold read of the same key waits on the tier is
/// not undone when the read comes back with the older stored value: the
/// read fills memory only where nothing newer was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_during_a_cold_read_is_not_undone_by_it() {
    let dir = data_dir("put-during-read");
    let tier = Counting::new(&dir, 0).await; // reads wait for the gate
    let old = Object {
        value: bytes::Bytes::from_static(b"old"),
        expires_at: None,
        version: 1,
    };
    tier.dir.put(b"k", &old).await.expect("seed");
    let n = start_node_with(Node::with_tier(
        small_settings(),
        Clock::new(),
        tier.clone(),
    ))
    .await;
    let reader = Client::connect(&n.url()).await.expect("connect");
    let cold = tokio::spawn(async move { reader.get(b"k").await });
    for _ in 0..1000 {
        if tier.reads.load(Ordering::Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let writer = Client::connect(&n.url()).await.expect("connect");
    writer.put(b"k", b"new", None).await.expect("put");
    tier.gate.add_permits(1000);
    let first = cold.await.expect("task").expect("get");
    assert!(
        matches!(first.as_deref(), Some(b"old" | b"new")),
        "{first:?}"
    );
    assert_eq!(
        writer.get(b"k").await.expect("get").as_deref(),
        Some(&b"new"[..]),
        "the acknowledged put must win over the read that began before it"
    );
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A directory tier whose writes wait for `gate`: writes stay queued.
#[derive(Debug)]
struct HeldWrites {
    dir: DirTier,
    gate: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl Tier for HeldWrites {
    fn name(&self) -> &'static str {
        "held-dir"
    }
    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        self.dir.get(key, now).await
    }
    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        let _pass = self
            .gate
            .acquire()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.dir.put(key, obj).await
    }
    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        let _pass = self
            .gate
            .acquire()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.dir.delete(key, version).await
    }
}

/// A put versioned by a router whose clock runs ahead of the node's, then
/// a delete of the key while the put still waits in the queue: the delete
/// is the later request and wins, in memory, in the queue and in the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_wins_over_a_queued_put_stamped_by_a_clock_ahead() {
    use milena::protocol::Op;
    let dir = data_dir("delete-after-put");
    let tier = Arc::new(HeldWrites {
        dir: DirTier::open(&dir).await.expect("dir"),
        gate: tokio::sync::Semaphore::new(0),
    });
    let n = start_node_with(Node::with_tier(
        small_settings(),
        Clock::new(),
        tier.clone(),
    ))
    .await;
    let c = Client::connect(&n.url()).await.expect("connect");
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
        + 60_000_000;
    c.call(Op::RoutedPut {
        epoch: ahead,
        key: b"k",
        value: b"v",
        ttl: None,
    })
    .await
    .expect("put")
    .into_result()
    .expect("put acknowledged");
    assert!(c.delete(b"k").await.expect("delete"), "it existed");
    assert_eq!(
        c.get(b"k").await.expect("get"),
        None,
        "deleted, whatever the clocks"
    );
    tier.gate.add_permits(1000);
    n.node.cache.flush().await;
    assert!(
        !matches!(
            tier.dir.get(b"k", 0).await.expect("read"),
            ReadOutcome::Found(_)
        ),
        "the tier must not keep the put"
    );
    n.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
