//! Conditional puts (`PutIf`: Redis `SET NX`/`XX`, memcached `add` and
//! `replace`) through a router to real nodes: decided by the key's owner
//! from memory, its queue or the tier, and atomic against racing writes.

mod common;

use common::*;
use milena::client::{Client, Cond};

fn data_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("milena-cond-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn check_semantics(c: &Client) {
    assert!(
        c.put_if(Cond::Absent, b"fresh", b"one", None)
            .await
            .expect("nx")
    );
    assert!(
        !c.put_if(Cond::Absent, b"fresh", b"two", None)
            .await
            .expect("nx again")
    );
    assert_eq!(
        c.get(b"fresh").await.expect("get"),
        Some(bytes::Bytes::from_static(b"one"))
    );
    assert!(
        !c.put_if(Cond::Present, b"missing", b"x", None)
            .await
            .expect("xx")
    );
    assert_eq!(c.get(b"missing").await.expect("get"), None);
    assert!(
        c.put_if(Cond::Present, b"fresh", b"three", Some(0))
            .await
            .expect("xx")
    );
    assert_eq!(
        c.get(b"fresh").await.expect("get"),
        Some(bytes::Bytes::from_static(b"three"))
    );
    assert!(c.delete(b"fresh").await.expect("delete"));
    assert!(
        !c.put_if(Cond::Present, b"fresh", b"four", None)
            .await
            .expect("xx")
    );
    assert!(
        c.put_if(Cond::Absent, b"fresh", b"five", None)
            .await
            .expect("nx")
    );
    assert_eq!(
        c.get(b"fresh").await.expect("get"),
        Some(bytes::Bytes::from_static(b"five"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_puts_in_memory_only_and_with_a_tier() {
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    check_semantics(&c).await;
    node.stop().await;

    let dir = data_dir("semantics");
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|_| {
            ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), &dir)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    check_semantics(&c).await;
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Two connections race `SET NX` on the same fresh keys (each first read
/// through the tier): exactly one wins each key, and the key holds the
/// winner's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_puts_exactly_one_wins() {
    let dir = data_dir("race");
    let router = start_router(test_router_settings()).await;
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|_| {
            ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), &dir)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    const KEYS: usize = 300;
    let racer = |name: &'static str| {
        let url = router.url();
        tokio::spawn(async move {
            let c = Client::connect(&url).await.expect("connect");
            let mut won = Vec::new();
            // Pipelined: every key in flight at once on this connection.
            let tries = (0..KEYS).map(|i| {
                let c = c.clone();
                async move {
                    let k = format!("race-{i}");
                    c.put_if(Cond::Absent, k.as_bytes(), name.as_bytes(), Some(0))
                        .await
                        .expect("nx")
                }
            });
            for (i, w) in futures_util::future::join_all(tries)
                .await
                .into_iter()
                .enumerate()
            {
                if w {
                    won.push(i);
                }
            }
            won
        })
    };
    let (a, b) = (racer("a"), racer("b"));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    let c = Client::connect(&router.url()).await.expect("connect");
    for i in 0..KEYS {
        let (in_a, in_b) = (a.contains(&i), b.contains(&i));
        assert!(in_a ^ in_b, "race-{i}: a won {in_a}, b won {in_b}");
        let winner: &[u8] = if in_a { b"a" } else { b"b" };
        let k = format!("race-{i}");
        assert_eq!(
            c.get(k.as_bytes()).await.expect("get").as_deref(),
            Some(winner)
        );
    }
    for n in nodes {
        n.stop().await;
    }
    router.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A key only the tier holds (its node stopped, a fresh node took over
/// with empty memory) exists for `NX` and `XX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_put_sees_a_key_only_the_tier_holds() {
    let dir = data_dir("tier");
    let router = start_router(test_router_settings()).await;
    let first = ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), &dir);
    router.wait_members(&[&first.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    c.put(b"durable", b"old", Some(0)).await.expect("put");
    c.put(b"durable2", b"old", Some(0)).await.expect("put");
    first.stop().await;
    let second =
        ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), &dir);
    router.wait_members(&[&second.url()]).await;
    assert_eq!(
        second.node.cache.store().stats().items,
        0,
        "memory starts empty"
    );
    assert!(
        !c.put_if(Cond::Absent, b"durable", b"nx", None)
            .await
            .expect("nx")
    );
    assert_eq!(
        c.get(b"durable").await.expect("get"),
        Some(bytes::Bytes::from_static(b"old"))
    );
    assert!(
        !c.put_if(Cond::Present, b"never", b"xx", None)
            .await
            .expect("xx")
    );
    assert!(
        c.put_if(Cond::Present, b"durable2", b"xx", None)
            .await
            .expect("xx")
    );
    assert_eq!(
        c.get(b"durable2").await.expect("get"),
        Some(bytes::Bytes::from_static(b"xx"))
    );
    second.stop().await;
    router.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
