//! Router overhead: the same closed-loop load straight to one node and
//! through a router in front of it, reported as a ratio.
//!
//! Run: `cargo bench --bench router` (add `-- --secs 10` for longer runs).
//! Everything runs in this process on loopback, each server on a runtime
//! with one worker thread; on a 2-core machine the router competes with the
//! node and the load generator for CPU, so the ratio is a floor for what a
//! router on its own cores costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use milena::client::Client;
use milena::node::{Membership, Node, NodeSettings};
use milena::router::{Router, RouterSettings};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 10_000;
const CONNECTIONS: usize = 16;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

struct Report {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
}

/// `CONNECTIONS` clients, each with `depth` requests in flight, 90% gets
/// and 10% puts of 100-byte values, for `secs` seconds.
async fn drive(url: &str, depth: usize, secs: u64) -> Report {
    let value = [7u8; 100];
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(url).await.expect("connect"));
    }
    for k in 0..KEYS {
        clients[0]
            .put(format!("key:{k}").as_bytes(), &value, Some(0))
            .await
            .expect("prefill");
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for d in 0..depth {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut ops = 0u64;
                let mut x = (ci * 7919 + d * 104_729 + 1) as u64;
                while Instant::now() < deadline {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let key = format!("key:{}", (x >> 33) % KEYS);
                    let t = Instant::now();
                    if (x >> 20).is_multiple_of(10) {
                        c.put(key.as_bytes(), &value, Some(0)).await.expect("put");
                    } else {
                        c.get(key.as_bytes()).await.expect("get");
                    }
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                    ops += 1;
                }
                (ops, hist)
            }));
        }
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut ops = 0;
    for t in tasks {
        let (n, h) = t.await.expect("task");
        ops += n;
        hist.add(h).expect("merge");
    }
    Report {
        ops,
        secs: start.elapsed().as_secs_f64(),
        hist,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);

    let shutdown = CancellationToken::new();
    let router_rt = runtime();
    let router_url = router_rt.block_on(async {
        let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = Router::new(RouterSettings::default(), shutdown.clone());
        tokio::spawn(milena::router::run(listener, router, shutdown.clone()));
        url
    });
    let node_rt = runtime();
    let (node_url, router) = {
        let shutdown = shutdown.clone();
        let router_url = router_url.clone();
        node_rt.block_on(async move {
            let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let node = Arc::new(Node::new(NodeSettings::default()));
            let m = Membership {
                etcd: None,
                routers: vec![router_url.clone()],
                advertise: url.clone(),
                interval: Duration::from_secs(1),
                token: None,
                tls: None,
            };
            tokio::spawn(milena::node::run_in_cluster(listener, node, m, shutdown));
            (url, router_url)
        })
    };
    let load = runtime();
    load.block_on(async {
        // Wait until the node is in the ring (bounded).
        let c = Client::connect(&router).await.expect("router");
        for _ in 0..100 {
            if c.members().await.expect("members").1.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    println!(
        "closed loop, {CONNECTIONS} connections, 90% get / 10% put, 100 B values, {KEYS} keys, {secs} s per run"
    );
    println!("| depth | target | ops/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|");
    for depth in [1usize, 16] {
        let mut rows = Vec::new();
        for (name, url) in [("direct", &node_url), ("router", &router)] {
            let r = load.block_on(drive(url, depth, secs));
            let tput = r.ops as f64 / r.secs;
            println!(
                "| {depth} | {name} | {:.0} | {} | {} | {} |",
                tput,
                r.hist.value_at_quantile(0.5),
                r.hist.value_at_quantile(0.99),
                r.hist.value_at_quantile(0.999)
            );
            rows.push((tput, r.hist.value_at_quantile(0.99)));
        }
        println!(
            "| {depth} | router/direct | {:.2}x | | {:.2}x | |",
            rows[1].0 / rows[0].0,
            rows[1].1 as f64 / rows[0].1.max(1) as f64
        );
    }
    shutdown.cancel();
}
