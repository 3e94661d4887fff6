//! `Ttl` (Redis `TTL`/`PTTL`) through a router to real nodes: answered
//! from memory, or read through the tier when memory does not hold the key.

mod common;

use std::time::Duration;

use common::*;
use milena::client::Client;

/// A put with `ttl` seconds reads back between a second under and a
/// second over it (expiries are whole seconds, rounded up when set).
fn assert_about(left: Option<Option<Duration>>, ttl: u64) {
    let left = left.expect("exists").expect("expires");
    assert!(
        left > Duration::from_secs(ttl - 2) && left <= Duration::from_secs(ttl + 1),
        "{left:?} left of a {ttl} s TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_read_from_memory_and_through_the_tier() {
    let dir = tempfile::tempdir().expect("tier dir");
    let router = start_router(test_router_settings()).await;
    let first =
        ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), dir.path());
    router.wait_members(&[&first.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    c.put(b"short", b"v", Some(100)).await.expect("put");
    c.put(b"forever", b"v", Some(0)).await.expect("put");
    assert_about(c.ttl(b"short").await.expect("ttl"), 100);
    assert_eq!(c.ttl(b"forever").await.expect("ttl"), Some(None));
    assert_eq!(c.ttl(b"missing").await.expect("ttl"), None);
    c.delete(b"forever").await.expect("delete");
    assert_eq!(c.ttl(b"forever").await.expect("ttl"), None, "deleted");
    c.put(b"forever", b"v", Some(0)).await.expect("put");
    first.stop().await;

    // A fresh node over the same tier: memory is empty, the TTL comes
    // from the object's expiry.
    let second =
        ClusterNode::start_with_dir("127.0.0.1:0", &[router.url()], small_settings(), dir.path());
    router.wait_members(&[&second.url()]).await;
    assert_eq!(second.node.cache.store().stats().items, 0);
    assert_about(c.ttl(b"short").await.expect("ttl"), 100);
    assert_eq!(c.ttl(b"forever").await.expect("ttl"), Some(None));
    assert_eq!(c.ttl(b"missing").await.expect("ttl"), None);
    assert_eq!(
        second.node.cache.store().stats().items,
        2,
        "the reads filled memory"
    );
    second.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_on_a_node_without_a_tier() {
    let node = start_node(small_settings()).await;
    let c = Client::connect(&node.url()).await.expect("connect");
    c.put(b"k", b"v", Some(30)).await.expect("put");
    assert_about(c.ttl(b"k").await.expect("ttl"), 30);
    assert_eq!(c.ttl(b"nope").await.expect("ttl"), None);
    let err = c.ttl(b"").await.expect_err("empty key");
    assert!(err.to_string().contains("empty"), "{err}");
    node.stop().await;
}
