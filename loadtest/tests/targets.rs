//! Each protocol client against a real server, with short runs whose
//! counts must add up: a Milena node and a router in this process,
//! memcached and Redis started by `scripts/test.sh` (as on CI).

use std::sync::Arc;
use std::time::Duration;

use milena::node::{Node, NodeSettings};
use milena_loadtest::workload::{KeyDist, Ratio, ValueSize};
use milena_loadtest::{Limit, Report, RunConfig, run};
use tokio_util::sync::CancellationToken;

fn config(target: &str) -> RunConfig {
    RunConfig {
        target: target.parse().expect("target"),
        connections: 4,
        pipeline: 8,
        ratio: Ratio { gets: 9, sets: 1 },
        keys: 1000,
        dist: KeyDist::Zipf(0.99),
        key_size: 32,
        value_size: ValueSize { min: 50, max: 150 },
        prefill: true,
        limit: Limit::Requests(4000),
        warmup: Duration::ZERO,
        rate: None,
        seed: 3,
        progress: false,
    }
}

/// The report's counts are consistent with each other and with the run.
fn assert_adds_up(r: &Report, requests: u64) {
    assert_eq!(r.requests, requests, "{r:?}");
    assert_eq!(r.gets + r.sets, r.requests);
    assert_eq!(r.hits + r.misses, r.gets);
    assert_eq!(r.errors, 0, "{:?}", r.errors_by_kind);
    // Every key was prefilled and nothing was evicted: every get hits.
    assert_eq!(r.misses, 0);
    assert!((r.hit_ratio - 1.0).abs() < f64::EPSILON);
    assert!(r.sets > 0 && r.gets > r.sets, "the 9:1 mix: {r:?}");
    assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
    assert!(r.throughput > 0.0);
}

fn env_target(var: &str, scheme: &str) -> String {
    let addr = std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run the tests with scripts/test.sh, which starts memcached and Redis"
        )
    });
    format!("{scheme}://{addr}")
}

async fn start_node() -> (String, CancellationToken) {
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let url = format!("milena://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let node = Arc::new(Node::new(NodeSettings::default()));
    tokio::spawn(milena::node::run(listener, node, stop.clone()));
    (url, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milena_node() {
    let (url, stop) = start_node().await;
    let r = run(config(&url)).await.expect("run");
    assert_adds_up(&r, 4000);
    assert!(r.target.starts_with("milena://"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milena_router_in_front_of_a_node() {
    let stop = CancellationToken::new();
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let router_addr = listener.local_addr().expect("addr");
    let router = milena::router::Router::new(Default::default(), stop.clone());
    tokio::spawn(milena::router::run(listener, router.clone(), stop.clone()));
    let (node_url, node_stop) = start_node().await;
    let node_http = node_url.replace("milena://", "http://");
    let c = milena::client::Client::connect(&format!("http://{router_addr}"))
        .await
        .expect("connect");
    c.join(&node_http).await.expect("join");
    let r = run(config(&format!("milena://{router_addr}")))
        .await
        .expect("run");
    assert_adds_up(&r, 4000);
    stop.cancel();
    node_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached() {
    let r = run(config(&env_target("MILENA_TEST_MEMCACHED", "memcache")))
        .await
        .expect("run");
    assert_adds_up(&r, 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let r = run(config(&env_target("MILENA_TEST_REDIS", "redis")))
        .await
        .expect("run");
    assert_adds_up(&r, 4000);
}

/// Open loop: the timetable, not the answers, paces the requests; the
/// counts still add up and the run takes about requests / rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_run_against_a_node() {
    let (url, stop) = start_node().await;
    let mut cfg = config(&url);
    cfg.rate = Some(4000.0);
    cfg.limit = Limit::Requests(800);
    cfg.pipeline = 64;
    let r = run(cfg).await.expect("run");
    assert_adds_up(&r, 800);
    assert_eq!(r.rate, Some(4000.0));
    stop.cancel();
}

/// A duration-limited run with warm-up reports only the measured window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_and_warmup() {
    let (url, stop) = start_node().await;
    let mut cfg = config(&url);
    cfg.limit = Limit::Duration(Duration::from_millis(300));
    cfg.warmup = Duration::from_millis(100);
    let r = run(cfg).await.expect("run");
    assert!(r.requests > 0);
    assert!((r.duration_s - 0.3).abs() < 1e-6, "window {}", r.duration_s);
    assert_eq!(r.gets + r.sets, r.requests);
    assert_eq!(r.errors, 0);
    stop.cancel();
}

/// The binary as scripts use it: flags, one JSON object on stdout, a plot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_json_and_writes_a_plot() {
    let (url, stop) = start_node().await;
    let svg = std::env::temp_dir().join(format!("milena-lt-{}.svg", std::process::id()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_milena-loadtest"))
        .args([
            "--target",
            &url,
            "--requests",
            "500",
            "--prefill",
            "--keys",
            "100",
        ])
        .args([
            "--ratio",
            "1:0",
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--json",
            "--plot",
        ])
        .arg(&svg)
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!((r.requests, r.gets, r.hits, r.errors), (500, 500, 500, 0));
    for key in [
        "throughput",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "hit_ratio",
        "errors",
    ] {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("\"{key}\"")),
            "{key}"
        );
    }
    assert!(
        std::fs::read_to_string(&svg)
            .expect("plot written")
            .contains("<svg")
    );
    let _ = std::fs::remove_file(svg);
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_milena-loadtest"))
        .args(["--target", "gopher://x:1"])
        .output()
        .await
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scheme"));
    stop.cancel();
}
