//! Several routers with membership in a real etcd: one ring for all, the
//! ring epoch is etcd's revision, and a router that has not yet applied a
//! revision never serves a read that goes back to an older value.

mod common;

use std::time::Duration;

use common::etcd::EtcdServer;
use common::s3::FaultProxy;
use common::{
    ClusterNode, TestRouter, TierSpec, small_settings, start_router, test_router_settings,
};
use milena::client::Client;
use milena::config::{EtcdArgs, NodeConfig, WriteMode};
use milena::node::NodeSettings;

const LEASE: u64 = 2;

async fn etcd_router(args: &EtcdArgs) -> TestRouter {
    let settings = milena::router::RouterSettings {
        fenced_answer_within: Some(milena::etcd::answer_window(args.etcd_lease_seconds)),
        ring_patience: Duration::from_millis(300),
        ..test_router_settings()
    };
    let r = start_router(settings).await;
    let etcd = milena::etcd::Etcd::connect(args).expect("etcd settings");
    milena::router::etcd::follow(&r.router, etcd);
    r
}

fn sync_settings() -> NodeSettings {
    NodeSettings {
        write_mode: WriteMode::Sync,
        ..small_settings()
    }
}

async fn members(r: &TestRouter) -> Vec<String> {
    r.router
        .members
        .view()
        .ring
        .addresses()
        .map(str::to_string)
        .collect()
}

async fn wait_count(r: &TestRouter, n: usize) {
    r.router.members.wait_for(|v| v.ring.len() == n).await;
}

/// Puts until acknowledged: a ring change in progress answers
/// "unavailable" (not applied), which a client retries.
async fn put_acked(c: &Client, key: &[u8], value: &[u8]) {
    loop {
        match c.put(key, value, None).await {
            Ok(()) => return,
            Err(e) if e.retry_is_safe() => tokio::task::yield_now().await,
            Err(e) => panic!("put failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_share_one_ring_numbered_by_etcd() {
    let etcd = EtcdServer::start();
    let args = etcd.args("/t-share", LEASE);
    let tier = tempfile::tempdir().expect("tier dir");
    let a = etcd_router(&args).await;
    let b = etcd_router(&args).await;
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|_| {
            ClusterNode::start_in_etcd(
                "127.0.0.1:0",
                args.clone(),
                sync_settings(),
                TierSpec::Dir(tier.path().to_path_buf()),
            )
        })
        .collect();
    wait_count(&a, 3).await;
    wait_count(&b, 3).await;
    assert_eq!(members(&a).await, members(&b).await);
    // The epoch is etcd's revision, the same on both routers.
    b.router
        .members
        .wait_for(|v| v.epoch == a.router.members.view().epoch)
        .await;

    let (ca, cb) = (
        Client::connect(&a.url()).await.expect("a"),
        Client::connect(&b.url()).await.expect("b"),
    );
    for i in 0..100 {
        put_acked(&ca, format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await;
    }
    for i in 0..100 {
        let got = cb.get(format!("k{i}").as_bytes()).await.expect("get");
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()));
    }

    // A join goes through etcd, not through either router.
    assert!(
        ca.join("http://127.0.0.1:1").await.is_err(),
        "a router under etcd takes no joins"
    );

    // An operator's leave through one router reaches both.
    let gone = nodes[0].advertised.clone();
    cb.leave(&gone).await.expect("leave");
    wait_count(&a, 2).await;
    assert!(!members(&a).await.contains(&gone));
    for i in 0..100 {
        let got = ca
            .get(format!("k{i}").as_bytes())
            .await
            .expect("get after leave");
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    // `Ttl` is fenced as a get is: every key has the nodes' default TTL.
    for i in 0..100 {
        let left = cb
            .ttl(format!("k{i}").as_bytes())
            .await
            .expect("ttl after leave")
            .expect("exists")
            .expect("expires");
        assert!(left > std::time::Duration::from_secs(3000), "{left:?}");
    }
    assert_eq!(cb.ttl(b"never-written").await.expect("ttl"), None);

    // A node that dies without a word leaves every ring when its lease
    // lapses.
    let mut nodes = nodes.into_iter();
    let _left = nodes.next();
    let killed = nodes.next().expect("node");
    let dead = killed.advertised.clone();
    killed.kill().await;
    wait_count(&a, 1).await;
    wait_count(&b, 1).await;
    assert!(!members(&b).await.contains(&dead));
    for i in 0..100 {
        let got = cb
            .get(format!("k{i}").as_bytes())
            .await
            .expect("get after kill");
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()));
    }
}

/// The race of issue 15: router A has applied a revision that moves keys
/// to a new node, router B (cut off from etcd) has not. Writes through A
/// and reads through B interleave: B's reads are refused (its ring is
/// stale), never answered with the older value; once B catches up it reads
/// the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_behind_on_the_ring_never_reads_an_older_value() {
    let etcd = EtcdServer::start();
    let args = etcd.args("/t-race", LEASE);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", etcd.port).parse().expect("addr")).await;
    let args_b = etcd.args_via(&proxy.endpoint(), "/t-race", LEASE);
    let tier = tempfile::tempdir().expect("tier dir");
    let a = etcd_router(&args).await;
    let b = etcd_router(&args_b).await;
    let start = |args: &EtcdArgs| {
        ClusterNode::start_in_etcd(
            "127.0.0.1:0",
            args.clone(),
            sync_settings(),
            TierSpec::Dir(tier.path().to_path_buf()),
        )
    };
    let _n1 = start(&args);
    let _n2 = start(&args);
    wait_count(&a, 2).await;
    wait_count(&b, 2).await;
    let (ca, cb) = (
        Client::connect(&a.url()).await.expect("a"),
        Client::connect(&b.url()).await.expect("b"),
    );
    let keys: Vec<Vec<u8>> = (0..24).map(|i| format!("race{i}").into_bytes()).collect();
    for k in &keys {
        put_acked(&cb, k, b"old").await;
    }

    // B loses etcd; a third node joins: A moves a third of the keys to it.
    proxy.set_down(true);
    let before = b.router.members.view().epoch;
    let n3 = start(&args);
    wait_count(&a, 3).await;
    assert_eq!(
        b.router.members.view().epoch,
        before,
        "B must still be behind"
    );
    let moved: Vec<&Vec<u8>> = keys
        .iter()
        .filter(|k| {
            a.router
                .members
                .view()
                .ring
                .owner(milena::ring::key_hash(k))
                == Some(n3.advertised.as_str())
        })
        .collect();
    assert!(!moved.is_empty(), "some keys move to the new node");

    let mut refused = 0;
    for k in &keys {
        put_acked(&ca, k, b"new").await;
        match cb.get(k).await {
            Ok(v) => assert_eq!(
                v.as_deref(),
                Some(&b"new"[..]),
                "B read {:?} after a newer write was acknowledged",
                v
            ),
            Err(e) => {
                assert!(e.retry_is_safe(), "a refused read is 'unavailable': {e}");
                refused += 1;
            }
        }
        // A write through the stale router is refused, never acknowledged
        // to an owner nobody reads from.
        match cb.put(k, b"lost?", None).await {
            Ok(()) => {
                let v = ca.get(k).await.expect("get via A");
                assert_eq!(
                    v.as_deref(),
                    Some(&b"lost?"[..]),
                    "an acknowledged write through B is visible through A"
                );
                put_acked(&ca, k, b"new").await;
            }
            Err(e) => assert!(e.retry_is_safe(), "not applied: {e}"),
        }
    }
    assert!(refused > 0, "B's stale ring was refused at least once");

    // B catches up and reads what A wrote.
    proxy.set_down(false);
    wait_count(&b, 3).await;
    for k in &keys {
        let v = loop {
            match cb.get(k).await {
                Ok(v) => break v,
                Err(e) if e.retry_is_safe() => tokio::task::yield_now().await,
                Err(e) => panic!("get via B: {e}"),
            }
        };
        assert_eq!(v.as_deref(), Some(&b"new"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_keep_routing_through_an_etcd_restart() {
    let mut etcd = EtcdServer::start();
    let args = etcd.args("/t-restart", LEASE);
    let tier = tempfile::tempdir().expect("tier dir");
    let a = etcd_router(&args).await;
    let b = etcd_router(&args).await;
    let start = || {
        ClusterNode::start_in_etcd(
            "127.0.0.1:0",
            args.clone(),
            sync_settings(),
            TierSpec::Dir(tier.path().to_path_buf()),
        )
    };
    let _nodes = [start(), start()];
    wait_count(&a, 2).await;
    wait_count(&b, 2).await;
    let ca = Client::connect(&a.url()).await.expect("a");
    put_acked(&ca, b"k", b"v").await;

    etcd.restart();
    // Back by themselves: the watch follows again and a join through
    // etcd reaches both routers.
    let _third = start();
    wait_count(&a, 3).await;
    wait_count(&b, 3).await;
    let etcd_up = |r: &TestRouter| {
        milena::router::Router::scrape(&r.router).contains("milena_etcd_connected 1")
    };
    assert!(etcd_up(&a) && etcd_up(&b));
    let cb = Client::connect(&b.url()).await.expect("b");
    let v = loop {
        match cb.get(b"k").await {
            Ok(v) => break v,
            Err(e) if e.retry_is_safe() => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
}

#[test]
fn several_routers_without_etcd_are_refused_at_start() {
    use clap::Parser;
    let cfg = NodeConfig::try_parse_from([
        "milena-cache",
        "--router-addr",
        "http://127.0.0.1:50050,http://127.0.0.1:50060",
    ])
    .expect("parses");
    let err =
        milena::node::Membership::from_config(&cfg, "127.0.0.1:50051".parse().expect("addr"), None)
            .expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("ETCD_ENDPOINTS"), "{msg}");
    assert!(msg.contains("2 routers"), "{msg}");

    // One router stays as it always was.
    let cfg =
        NodeConfig::try_parse_from(["milena-cache", "--router-addr", "http://127.0.0.1:50050"])
            .expect("parses");
    assert!(
        milena::node::Membership::from_config(&cfg, "127.0.0.1:50051".parse().expect("addr"), None)
            .expect("one router")
            .is_some()
    );
}

/// A node's memory filled from the tier while it did not own a key must
/// not be served once it gains the key: a newer write went to the owner
/// in between (found in review: fills were tagged with the wall clock,
/// which is never older than an etcd revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_before_a_gain_is_not_served_after_it() {
    let etcd = EtcdServer::start();
    let args = etcd.args("/t-fill", LEASE);
    let tier = tempfile::tempdir().expect("tier dir");
    let r = etcd_router(&args).await;
    let start = || {
        ClusterNode::start_in_etcd(
            "127.0.0.1:0",
            args.clone(),
            sync_settings(),
            TierSpec::Dir(tier.path().to_path_buf()),
        )
    };
    let o = start();
    let n = start();
    wait_count(&r, 2).await;
    let ring = r.router.members.view().ring.clone();
    let key = (0..1000)
        .map(|i| format!("fill{i}").into_bytes())
        .find(|k| ring.owner(milena::ring::key_hash(k)) == Some(n.advertised.as_str()))
        .expect("a key owned by n");
    let c = Client::connect(&r.url()).await.expect("router");
    put_acked(&c, &key, b"v1").await;
    // o reads the key from the tier while n owns it.
    let direct = Client::connect(&o.url()).await.expect("o");
    assert_eq!(
        direct.get(&key).await.expect("direct get").as_deref(),
        Some(&b"v1"[..])
    );
    put_acked(&c, &key, b"v2").await;
    // n leaves: the key goes back to o.
    c.leave(&n.advertised).await.expect("leave");
    wait_count(&r, 1).await;
    let v = loop {
        match c.get(&key).await {
            Ok(v) => break v,
            Err(e) if e.retry_is_safe() => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        v.as_deref(),
        Some(&b"v2"[..]),
        "o served what it read before it gained the key"
    );
}
