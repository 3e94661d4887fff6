//! Stampede: 1000 concurrent gets of one cold key against a node whose
//! tier answers in 20 ms, with and without coalescing of concurrent
//! misses. Prints how many tier reads each caused (the goal: with
//! coalescing ≤ 0.01× without). Run: `cargo bench --bench stampede`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use milena::client::Client;
use milena::node::tier::{Object, ReadOutcome, Tier, TierError, WriteOutcome};
use milena::node::{Clock, Node, NodeSettings};
use tokio_util::sync::CancellationToken;

const GETS: usize = 1000;
const TIER_LATENCY: Duration = Duration::from_millis(20);

/// An in-memory tier that takes [`TIER_LATENCY`] per read and counts them.
#[derive(Debug, Default)]
struct SlowTier {
    objects: Mutex<HashMap<Vec<u8>, Object>>,
    reads: AtomicU64,
}

#[async_trait::async_trait]
impl Tier for SlowTier {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn get(&self, key: &[u8], _now: u64) -> Result<ReadOutcome, TierError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(TIER_LATENCY).await;
        let found = self
            .objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        Ok(found.map_or(ReadOutcome::Absent, ReadOutcome::Found))
    }
    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_vec(), obj.clone());
        Ok(WriteOutcome::Stored)
    }
    async fn delete(&self, key: &[u8], _version: u64) -> Result<WriteOutcome, TierError> {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        Ok(WriteOutcome::Stored)
    }
}

/// Tier reads caused by [`GETS`] concurrent gets of one cold key.
async fn stampede(coalesce: bool) -> u64 {
    let tier = Arc::new(SlowTier::default());
    tier.put(
        b"cold",
        &Object {
            value: bytes::Bytes::from_static(b"value"),
            expires_at: None,
            version: 1,
        },
    )
    .await
    .expect("seed");
    let settings = NodeSettings {
        coalesce_misses: coalesce,
        ..NodeSettings::default()
    };
    let node = Arc::new(Node::with_tier(settings, Clock::new(), tier.clone()));
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(milena::node::run(listener, node, shutdown.clone()));
    let client = Client::connect(&format!("http://{addr}"))
        .await
        .expect("connect");
    let gets: Vec<_> = (0..GETS)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get(b"cold").await })
        })
        .collect();
    for g in gets {
        let v = g.await.expect("task").expect("get");
        assert_eq!(v.as_deref(), Some(&b"value"[..]));
    }
    shutdown.cancel();
    let _ = server.await;
    tier.reads.load(Ordering::Relaxed)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let with = stampede(true).await;
        let without = stampede(false).await;
        println!("stampede: {GETS} concurrent gets of one cold key, tier latency {TIER_LATENCY:?}");
        println!("  tier reads with coalescing:    {with}");
        println!("  tier reads without coalescing: {without}");
        println!(
            "  ratio: {:.4} (goal <= 0.01)",
            with as f64 / without.max(1) as f64
        );
    });
}
