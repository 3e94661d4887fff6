//! Metrics over real HTTP: the guide's names and exact values after a known
//! sequence, promtool's verdict on both expositions and on the dashboard's
//! queries, bad requests to the metrics port, and cluster-wide stats.

mod common;

use std::collections::HashMap;
use std::process::Stdio;

use common::*;
use milena::client::Client;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// The two names the operations guide fixes, which promtool's linter would
/// name differently (`_total` suffix, no type in the name). They are the
/// only lint findings allowed.
const GUIDE_NAMES: [&str; 2] = ["milena_request_counter", "milena_error_counter"];

fn promtool() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("promtool"))
            .find(|p| p.exists())
    });
    found.expect("promtool not found: install the Debian package `prometheus` (scripts/test.sh and .ci/run do)")
}

/// Runs `promtool check metrics` on `text`; panics on a parse error or on
/// any lint finding other than the guide's fixed names.
async fn promtool_accepts(text: &str) {
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .await
        .expect("feed");
    let out = child.wait_with_output().await.expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 0: clean; 3: lint findings only; 1: the exposition does not parse.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool rejected it: {report}"
    );
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            GUIDE_NAMES.iter().any(|n| line.starts_with(n)),
            "unexpected lint: {line}"
        );
    }
}

async fn node_with_metrics() -> (TestNode, std::net::SocketAddr, CancellationToken) {
    let n = start_node(small_settings()).await;
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(milena::node::serve_metrics(
        listener,
        n.node.clone(),
        stop.clone(),
    ));
    (n, addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_metrics_have_exact_values_after_a_known_sequence() {
    let (n, metrics, stop) = node_with_metrics().await;
    let c = Client::connect(&n.url()).await.expect("connect");
    c.put(b"k", b"v", None).await.expect("put");
    for _ in 0..7 {
        assert!(c.get(b"k").await.expect("hit").is_some());
    }
    for i in 0..3 {
        assert!(
            c.get(format!("missing{i}").as_bytes())
                .await
                .expect("miss")
                .is_none()
        );
    }
    for _ in 0..2 {
        c.get(b"").await.expect_err("empty key is an error");
    }
    c.ping().await.expect("ping"); // the batch before it is fully recorded

    let text = http_get(metrics, "/metrics").await;
    assert_eq!(sample(&text, "milena_cache_hits_total"), Some(7.0));
    assert_eq!(sample(&text, "milena_cache_misses_total"), Some(3.0));
    assert_eq!(sample(&text, "milena_request_counter"), Some(14.0)); // 1 put, 12 gets, 1 ping
    assert_eq!(sample(&text, "milena_error_counter"), Some(2.0));
    assert_eq!(
        sample(
            &text,
            r#"milena_operation_duration_seconds_count{operation="get"}"#
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"milena_operation_duration_seconds_count{operation="put"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"milena_operations_total{operation="get"}"#),
        Some(12.0)
    );
    assert_eq!(sample(&text, "milena_cache_items"), Some(1.0));
    assert!(
        text.contains(r#"milena_operation_duration_seconds_bucket{operation="get",le="0.00001"}"#),
        "10 µs bucket"
    );
    assert!(
        text.contains(r#"milena_operation_duration_seconds_bucket{operation="get",le="1"}"#),
        "1 s bucket"
    );
    assert!(text.contains(r#"milena_build_info{role="node",version=""#));
    promtool_accepts(&text).await;

    // The same figures over the protocol.
    let stats: HashMap<String, u64> = c.stats().await.expect("stats").into_iter().collect();
    assert_eq!((stats["hits"], stats["misses"], stats["errors"]), (7, 3, 2));
    stop.cancel();
    n.stop().await;
}

#[tokio::test]
async fn bad_requests_to_the_metrics_port_get_http_errors() {
    let (n, metrics, stop) = node_with_metrics().await;
    let not_found = http(
        metrics,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    let wrong_method = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(wrong_method.starts_with("HTTP/1.1 405"), "{wrong_method}");
    let garbage = http(metrics, "\x16\x03\x01 this is not http\r\n\r\n").await;
    assert!(
        garbage.starts_with("HTTP/1.1 400") || garbage.is_empty(),
        "{garbage}"
    );
    let huge_header = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = http(metrics, &huge_header).await;
    assert!(
        answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400")
            || answer.is_empty(),
        "{}",
        &answer[..answer.len().min(80)]
    );
    // Still serving.
    assert!(
        http_get(metrics, "/metrics")
            .await
            .contains("milena_cache_hits_total")
    );
    stop.cancel();
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_metrics_count_requests_by_status_and_node() {
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let c = Client::connect(&router.url()).await.expect("connect");
    c.put(b"a", b"1", None).await.expect("put");
    c.get(b"a").await.expect("hit");
    c.get(b"b").await.expect("miss");
    c.get(b"").await.expect_err("empty key");

    let text = http_get(router.addr, "/metrics").await;
    let get_ok = r#"milena_router_requests_total{operation="get",status="ok"}"#;
    assert_eq!(sample(&text, get_ok), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"milena_router_requests_total{operation="get",status="not_found"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"milena_router_requests_total{operation="get",status="bad_request"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"milena_router_requests_total{operation="put",status="ok"}"#
        ),
        Some(1.0)
    );
    let per_node = format!(
        r#"milena_router_node_requests_total{{node="{}"}}"#,
        node.url()
    );
    assert_eq!(sample(&text, &per_node), Some(3.0));
    assert_eq!(sample(&text, "milena_router_members"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"milena_router_forward_duration_seconds_count{operation="get"}"#
        ),
        Some(2.0)
    );
    promtool_accepts(&text).await;

    // Cluster-wide stats through the router: its own and the nodes' sums.
    let stats: HashMap<String, u64> = c.stats().await.expect("stats").into_iter().collect();
    assert_eq!(stats["members"], 1);
    assert_eq!(stats["nodes_reporting"], 1);
    assert_eq!(
        (
            stats["nodes_hits"],
            stats["nodes_misses"],
            stats["nodes_items"]
        ),
        (1, 1, 1)
    );
    node.stop().await;
    router.stop().await;
}

/// Every query in the Grafana dashboard parses as PromQL (checked by
/// promtool as recording rules), and the Prometheus config is valid.
#[tokio::test]
async fn dashboard_queries_and_prometheus_config_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash = std::fs::read_to_string(root.join("docker/grafana/dashboards/milena.json"))
        .expect("dashboard");
    let exprs: Vec<String> = dash
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"expr\": \""))
        .map(|rest| {
            rest.trim_end_matches(',')
                .trim_end_matches('"')
                .replace("\\\"", "\"")
        })
        .collect();
    assert!(exprs.len() >= 14, "found {} queries", exprs.len());
    for guide in [
        "sum(rate(milena_cache_hits_total[5m])) / (sum(rate(milena_cache_hits_total[5m])) + sum(rate(milena_cache_misses_total[5m])))",
        "histogram_quantile(0.95, sum(rate(milena_operation_duration_seconds_bucket[5m])) by (le))",
        "sum(rate(milena_request_counter[5m]))",
        "sum(rate(milena_error_counter[5m]))",
    ] {
        assert!(
            exprs.iter().any(|e| e == guide),
            "the guide's query is missing: {guide}"
        );
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let dir = std::env::temp_dir().join(format!("milena-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    let out = tokio::process::Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .await
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::process::Command::new(promtool())
        .args(["check", "config"])
        .arg(root.join("docker/prometheus.yml"))
        .output()
        .await
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}
