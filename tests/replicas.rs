//! Second copies of async writes (`WRITE_REPLICAS`): with S3 unreachable,
//! so every acknowledged write is still only in memory, the owner of the
//! keys is killed; its successors hold the copies and serve them.

mod common;

use common::s3::{FaultProxy, S3Server};
use common::{
    ClusterNode, TestRouter, TierSpec, small_settings, start_router, test_router_settings,
};
use milena::client::Client;
use milena::node::NodeSettings;
use milena::ring::{key_hash, score};

fn async_settings(replicas: usize) -> NodeSettings {
    NodeSettings {
        write_replicas: replicas,
        ..small_settings()
    }
}

async fn stat(url: &str, name: &str) -> u64 {
    let c = Client::connect(url).await.expect("node");
    c.stats()
        .await
        .expect("stats")
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

struct Setup {
    _s3: S3Server,
    proxy: FaultProxy,
    router: TestRouter,
    nodes: Vec<ClusterNode>,
}

async fn setup(name: &str, nodes: usize, replicas: usize) -> Setup {
    let s3 = S3Server::start(name);
    let proxy = FaultProxy::start(
        s3.endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("s3 addr"),
    )
    .await;
    let router = start_router(test_router_settings()).await;
    let mut s = Setup {
        _s3: s3,
        proxy,
        router,
        nodes: Vec::new(),
    };
    for _ in 0..nodes {
        s.add(replicas);
    }
    s.wait().await;
    s
}

impl Setup {
    fn add(&mut self, replicas: usize) {
        let tier = TierSpec::S3(self._s3.settings_via(&self.proxy.endpoint()));
        self.nodes.push(ClusterNode::start_with_tier(
            "127.0.0.1:0",
            &[self.router.url()],
            async_settings(replicas),
            tier,
        ));
    }

    /// Until the router and every node (whose copies follow the ring it
    /// last heard of) know the ring.
    async fn wait(&self) {
        let urls: Vec<String> = self.nodes.iter().map(ClusterNode::url).collect();
        self.router
            .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        for n in &self.nodes {
            while n
                .node
                .cache
                .replication
                .as_ref()
                .is_some_and(|r| r.members() != urls.len())
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// The rank of `member` among `members` for `key` (0 = owner).
fn rank(members: &[String], member: &str, key: &[u8]) -> usize {
    let h = key_hash(key);
    let mine = score(milena::ring::member_seed(member), h);
    members
        .iter()
        .filter(|m| score(milena::ring::member_seed(m), h) > mine)
        .count()
}

async fn read_all(c: &Client, keys: &[(Vec<u8>, Vec<u8>)]) -> (usize, usize) {
    let (mut lost, mut wrong) = (0, 0);
    for (k, v) in keys {
        let got = c.get(k).await;
        if let Err(e) = &got {
            panic!("get {} failed: {e}", String::from_utf8_lossy(k));
        }
        match got.expect("get answered") {
            Some(got) if got == *v => {}
            Some(_) => wrong += 1,
            None => lost += 1,
        }
    }
    (lost, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_loses_no_acknowledged_async_write() {
    let mut s = setup("replica-kill", 3, 1).await;
    s.proxy.set_down(true);
    let c = Client::connect(&s.router.url()).await.expect("router");
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
        .map(|i| (format!("k{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    for (k, v) in &keys {
        c.put(k, v, Some(0)).await.expect("put acknowledged");
    }
    let victim = s.nodes.remove(0);
    let url = victim.url();
    let held = stat(&url, "tier_queue_depth").await;
    assert!(
        held > 50,
        "the victim holds its share in its queue only ({held})"
    );
    let copies: u64 = {
        let mut n = 0;
        for node in &s.nodes {
            n += stat(&node.url(), "replica_entries").await;
        }
        n
    };
    assert!(
        copies >= held,
        "every write the victim queued has a copy ({copies} < {held})"
    );
    victim.kill().await;
    s.wait().await;
    let (lost, wrong) = read_all(&c, &keys).await;
    println!(
        "kill -9 with S3 down: {} keys, victim queued {held}: lost {lost}, wrong {wrong}",
        keys.len()
    );
    assert_eq!((lost, wrong), (0, 0));
    // S3 back: the copies taken over reach it, and nobody keeps copies of
    // what is durable.
    s.proxy.set_down(false);
    for node in &s.nodes {
        while stat(&node.url(), "tier_queue_depth").await > 0
            || stat(&node.url(), "copies_outstanding").await > 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    for node in &s.nodes {
        while stat(&node.url(), "replica_entries").await > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A node joins between the owner and its successor while writes are
/// dirty: the owner copies them to the new successor, which takes them
/// over when the owner is then killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_between_owner_and_successor_gets_the_copies() {
    let mut s = setup("replica-join", 2, 1).await;
    s.proxy.set_down(true);
    let c = Client::connect(&s.router.url()).await.expect("router");
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..400)
        .map(|i| (format!("j{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    for (k, v) in &keys {
        c.put(k, v, Some(0)).await.expect("put acknowledged");
    }
    s.add(1);
    s.wait().await;
    let owner = s.nodes[0].url();
    let joiner = s.nodes[2].url();
    let members: Vec<String> = s.nodes.iter().map(ClusterNode::url).collect();
    let between: Vec<&(Vec<u8>, Vec<u8>)> = keys
        .iter()
        .filter(|(k, _)| rank(&members, &owner, k) == 0 && rank(&members, &joiner, k) == 1)
        .collect();
    assert!(
        !between.is_empty(),
        "some keys have the joiner as their new successor"
    );
    // The owner copies its queued writes to their new successors in the
    // background once it knows the new ring.
    while stat(&owner, "copies_to_move").await > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(stat(&joiner, "replica_entries").await >= between.len() as u64);
    let victim = s.nodes.remove(0);
    victim.kill().await;
    s.wait().await;
    let owned: Vec<(Vec<u8>, Vec<u8>)> = between.into_iter().cloned().collect();
    let (lost, wrong) = read_all(&c, &owned).await;
    let (lost_all, wrong_all) = read_all(&c, &keys).await;
    println!(
        "join between, then kill: {} keys through the joiner: lost {lost}, wrong {wrong}; all {}: lost {lost_all}, wrong {wrong_all}",
        owned.len(),
        keys.len()
    );
    assert_eq!((lost, wrong, lost_all, wrong_all), (0, 0, 0, 0));
}

/// `WRITE_REPLICAS=0`: as before, a write acknowledged from a killed
/// node's queue and not yet in S3 is lost (the documented async window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_copies_the_async_window_is_as_before() {
    let mut s = setup("replica-none", 3, 0).await;
    s.proxy.set_down(true);
    let c = Client::connect(&s.router.url()).await.expect("router");
    let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
        .map(|i| (format!("n{i}").into_bytes(), format!("v{i}").into_bytes()))
        .collect();
    for (k, v) in &keys {
        c.put(k, v, Some(0)).await.expect("put acknowledged");
    }
    for node in &s.nodes {
        assert_eq!(stat(&node.url(), "replica_entries").await, 0);
    }
    let victim = s.nodes.remove(0);
    let held = stat(&victim.url(), "tier_queue_depth").await;
    victim.kill().await;
    s.wait().await;
    // S3 back (so a miss reads "not found" rather than failing).
    s.proxy.set_down(false);
    let (lost, _) = read_all(&c, &keys).await;
    assert_eq!(
        lost as u64, held,
        "exactly the victim's queued writes are lost"
    );
}

/// A successor that stops answering copies (here: every byte to it delayed
/// far past the peer timeout) holds an owner's writes only that long: they
/// are acknowledged with fewer copies (counted), and the next copy opens a
/// fresh stream once the successor answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_stops_answering_copies_does_not_hold_writes() {
    let s = setup("replica-stuck", 2, 1).await;
    let (owner, successor) = (&s.nodes[0], &s.nodes[1]);
    // The owner reaches its successor through a proxy that can stall.
    let proxy = FaultProxy::start(successor.addr).await;
    let members = [owner.url(), proxy.endpoint()];
    let Some(r) = owner.node.cache.replication.as_ref() else {
        panic!("copies are on");
    };
    r.set_ring(milena::ring::Ring::new(members.iter()), &owner.url());
    let owned: Vec<Vec<u8>> = (0..)
        .map(|i| format!("stuck{i}").into_bytes())
        .filter(|k| rank(&members, &owner.url(), k) == 0)
        .take(3)
        .collect();
    s.proxy.set_down(true); // S3 away: the copies stay held
    let c = Client::connect(&owner.url()).await.expect("owner");

    c.put(&owned[0], b"one", Some(0)).await.expect("put");
    assert_eq!(stat(&owner.url(), "copies_sent").await, 1);
    assert_eq!(stat(&successor.url(), "replica_entries").await, 1);

    proxy.set_delay(std::time::Duration::from_secs(3));
    c.put(&owned[1], b"two", Some(0))
        .await
        .expect("acknowledged without its copy");
    assert_eq!(stat(&owner.url(), "copies_failed").await, 1);
    assert_eq!(stat(&owner.url(), "copies_sent").await, 1);

    proxy.set_delay(std::time::Duration::ZERO);
    c.put(&owned[2], b"three", Some(0)).await.expect("put");
    assert_eq!(stat(&owner.url(), "copies_sent").await, 2);
    assert_eq!(
        c.get(&owned[1]).await.expect("get").as_deref(),
        Some(&b"two"[..])
    );
}
