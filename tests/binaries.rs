//! The shipped binaries as a user runs them: `milena-cli` against a real
//! node, and `milena-cache` started, configured badly, and stopped by signal.

mod common;

use std::process::Stdio;

use common::*;
use milena::client::Client;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_milena-cli");
const CACHE: &str = env!("CARGO_BIN_EXE_milena-cache");
const ROUTER: &str = env!("CARGO_BIN_EXE_milena-router");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut child = Command::new(CLI)
        .args(args)
        .env("MILENA_ADDR", addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn milena-cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(data) = stdin {
        input.write_all(data).await.expect("stdin write");
    }
    drop(input);
    let out = child.wait_with_output().await.expect("milena-cli runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_against_a_node() {
    let n = start_node(small_settings()).await;
    let url = n.url();

    let put = cli(&url, &["put", "greeting", "hello world"], None).await;
    assert_eq!((put.code, put.stdout.trim()), (0, "OK"), "{}", put.stderr);

    let get = cli(&url, &["get", "greeting"], None).await;
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(
        get.stdout, "hello world",
        "piped output is the value, byte for byte"
    );

    let miss = cli(&url, &["get", "nothing"], None).await;
    assert_eq!(miss.code, 1);
    assert_eq!(miss.stderr.trim(), "not found");
    assert!(miss.stdout.is_empty());

    let binary: Vec<u8> = (0..=255u8).collect();
    let put = cli(&url, &["put", "blob", "-", "--ttl", "60"], Some(&binary)).await;
    assert_eq!(put.code, 0, "{}", put.stderr);
    let c = Client::connect(&url).await.expect("connect");
    assert_eq!(
        c.get(b"blob").await.expect("get").as_deref(),
        Some(&binary[..])
    );

    let del = cli(&url, &["del", "greeting"], None).await;
    assert_eq!((del.code, del.stdout.trim()), (0, "deleted"));
    let del = cli(&url, &["del", "greeting"], None).await;
    assert_eq!((del.code, del.stdout.trim()), (0, "not found"));

    let ping = cli(&url, &["ping"], None).await;
    assert_eq!(ping.code, 0);
    assert!(ping.stdout.starts_with("PONG"), "{}", ping.stdout);

    let stats = cli(&url, &["stats"], None).await;
    assert_eq!(stats.code, 0);
    assert!(
        stats.stdout.lines().any(|l| l == "hits 2"),
        "{}",
        stats.stdout
    );
    assert!(
        stats.stdout.lines().any(|l| l == "misses 1"),
        "{}",
        stats.stdout
    );

    let too_big = cli(&url, &["put", &"k".repeat(300), "v"], None).await;
    assert_ne!(too_big.code, 0);
    assert!(
        too_big.stderr.contains("MAX_KEY_SIZE"),
        "{}",
        too_big.stderr
    );
    n.stop().await;
}

#[tokio::test]
async fn cli_reports_an_unreachable_server() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("http://127.0.0.1:{port}");
    let out = cli(&addr, &["get", "k"], None).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot reach {addr} (connection error")),
        "the error names the address it tried: {}",
        out.stderr
    );

    let out = cli("ftp://x:1", &["ping"], None).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unsupported scheme"), "{}", out.stderr);
}

async fn cache_with_env(env: &[(&str, &str)]) -> Out {
    let out = Command::new(CACHE)
        .envs(env.iter().copied())
        .env(
            "LISTEN_ADDR",
            env.iter()
                .find(|(k, _)| *k == "LISTEN_ADDR")
                .map_or("127.0.0.1:0", |e| e.1),
        )
        .output()
        .await
        .expect("milena-cache runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn bad_configuration_exits_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("LRU_SIZE", "abc"),
        ("LRU_SIZE", "0"),
        ("TTL_SECONDS", "-1"),
        ("LISTEN_ADDR", "not-an-address"),
        ("MAX_MEMORY", "lots"),
        ("LOG_LEVEL", "loud=[["),
    ] {
        let out = cache_with_env(&[(var, value)]).await;
        assert_eq!(out.code, 2, "{var}={value}: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{var}={value}: {}", out.stderr);
        assert!(lines[0].contains(var), "{var}={value}: {}", lines[0]);
        assert!(!out.stderr.contains("panicked"));
    }
}

#[tokio::test]
async fn an_address_it_cannot_bind_is_a_clear_error() {
    let out = cache_with_env(&[("LISTEN_ADDR", "192.0.2.1:50051")]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("cannot listen on LISTEN_ADDR=192.0.2.1:50051"),
        "{}",
        out.stdout
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milena_cache_serves_then_stops_on_sigterm() {
    let mut child = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LRU_SIZE", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn milena-cache");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("read log")
            .expect("log line before exit");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    let c = Client::connect(&format!("http://{addr}"))
        .await
        .expect("connect");
    c.put(b"k", b"v", None).await.expect("put");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));

    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().await.expect("exit");
    assert!(exit.success(), "{exit:?}");
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(rest.contains("SIGTERM received"), "{rest}");
    assert!(rest.contains("cache node stopped"), "{rest}");
}

#[tokio::test]
async fn router_bad_configuration_exits_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("RATE_LIMIT", "fast"),
        ("LISTEN_ADDR", "nowhere"),
        ("HEARTBEAT_TIMEOUT_MS", "1"),
    ] {
        let out = Command::new(ROUTER)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env(var, value)
            .output()
            .await
            .expect("milena-router runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

/// The memcached text protocol cannot carry CLIENT_TOKEN: a router asked
/// for both (without client certificates) refuses to start and says why.
#[tokio::test]
async fn memcache_addr_with_a_client_token_is_refused_at_start() {
    let out = Command::new(ROUTER)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("MEMCACHE_ADDR", "127.0.0.1:0")
        .env("CLIENT_TOKEN", "s3cret")
        .output()
        .await
        .expect("milena-router runs");
    // The error is logged, like every other start-up failure.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("MEMCACHE_ADDR cannot be served with CLIENT_TOKEN"),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "the token never appears: {log}");
}

/// Reads log lines until one carries `addr=`, and returns that address.
async fn listening_addr(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> String {
    loop {
        let line = lines
            .next_line()
            .await
            .expect("read log")
            .expect("log line before exit");
        if let Some(rest) = line.split("addr=").nth(1) {
            return rest.split_whitespace().next().expect("address").to_string();
        }
    }
}

/// The guide's quick start with the real binaries: a router, a node that
/// joins it through ROUTER_ADDR, the CLI through the router, `members`,
/// `leave`, and SIGTERM making the node leave before it exits.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_with_the_real_binaries() {
    let mut router = Command::new(ROUTER)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RATE_LIMIT", "0")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn router");
    let mut router_log = BufReader::new(router.stdout.take().expect("stdout")).lines();
    let router_url = format!("http://{}", listening_addr(&mut router_log).await);

    let mut node = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ROUTER_ADDR", &router_url)
        .env("HEARTBEAT_INTERVAL_MS", "100")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut node_log = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let node_url = format!("http://{}", listening_addr(&mut node_log).await);
    loop {
        let line = router_log
            .next_line()
            .await
            .expect("log")
            .expect("router log");
        if line.contains("Join") {
            assert!(line.contains(&node_url), "{line}");
            break;
        }
    }

    let members = cli(&router_url, &["members"], None).await;
    assert_eq!(members.stdout.trim(), node_url);
    assert_eq!(cli(&router_url, &["put", "k", "v"], None).await.code, 0);
    assert_eq!(cli(&router_url, &["get", "k"], None).await.stdout, "v");

    let pid = node.id().expect("pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill")
            .success()
    );
    assert!(node.wait().await.expect("exit").success());
    loop {
        let line = router_log
            .next_line()
            .await
            .expect("log")
            .expect("router log");
        if line.contains("Leave") {
            assert!(line.contains("left the ring"), "{line}");
            break;
        }
    }
    let members = cli(&router_url, &["members"], None).await;
    assert_eq!((members.code, members.stdout.as_str()), (0, ""));
    let leave = cli(&router_url, &["leave", &node_url], None).await;
    assert_eq!((leave.code, leave.stdout.trim()), (0, "OK"));
    let get = cli(&router_url, &["get", "k"], None).await;
    assert_ne!(get.code, 0);
    assert!(get.stderr.contains("unavailable"), "{}", get.stderr);
    router.kill().await.expect("stop router");
}

#[tokio::test]
async fn a_node_without_a_router_logs_the_guide_phrase_and_keeps_serving() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut node = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ROUTER_ADDR", format!("http://127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut log = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let addr = listening_addr(&mut log).await;
    loop {
        let line = log.next_line().await.expect("log").expect("node log");
        if line.contains("Failed to join router") {
            break;
        }
    }
    let c = Client::connect(&format!("http://{addr}"))
        .await
        .expect("direct client");
    c.put(b"k", b"v", None).await.expect("still serving");
    node.kill().await.expect("stop node");
}

#[tokio::test]
async fn a_node_that_cannot_reach_etcd_logs_failed_to_join_and_keeps_serving() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut node = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ETCD_ENDPOINTS", format!("http://127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut log = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let addr = listening_addr(&mut log).await;
    loop {
        let line = log.next_line().await.expect("log").expect("node log");
        if line.contains("Failed to join") {
            assert!(line.contains("etcd"), "{line}");
            break;
        }
    }
    let c = Client::connect(&format!("http://{addr}"))
        .await
        .expect("direct client");
    c.put(b"k", b"v", None)
        .await
        .expect("still serving direct clients");
    node.kill().await.expect("stop node");
}

#[tokio::test]
async fn several_routers_without_etcd_stop_the_node_with_a_clear_message() {
    let out = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env(
            "ROUTER_ADDR",
            "http://127.0.0.1:50050,http://127.0.0.1:50060",
        )
        .output()
        .await
        .expect("run node");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ETCD_ENDPOINTS"), "{text}");
}

#[tokio::test]
async fn unreadable_tls_files_are_a_clear_error() {
    let out = Command::new(ROUTER)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("TLS_CERT", "/nonexistent/cert.pem")
        .env("TLS_KEY", "/nonexistent/key.pem")
        .output()
        .await
        .expect("milena-router runs");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("cannot read TLS_CERT from /nonexistent/cert.pem"),
        "{log}"
    );
}

/// `n` consecutive free loopback ports (probed by binding them).
fn free_port_block(n: u16) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if first > u16::MAX - n {
            continue;
        }
        let held: Vec<_> = (first..first + n)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return first;
        }
    }
    panic!("no block of {n} free ports");
}

/// The README's one-command cluster (router + 3 nodes on a shared local
/// directory) survives `kill -9` of a node with no acknowledged write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_survives_killing_a_node() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = std::path::Path::new(CACHE).parent().expect("bin dir");
    let base = free_port_block(4);
    let metrics = free_port_block(4);
    let logs = std::env::temp_dir().join(format!("milena-local-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logs);
    let mut script = Command::new("bash")
        .arg(format!("{root}/scripts/local-cluster.sh"))
        .env("BIN_DIR", bin_dir)
        .env("ROUTER_PORT", base.to_string())
        .env("METRICS_BASE", (metrics - 1).to_string())
        .env("LOG_DIR", &logs)
        .env("HEARTBEAT_INTERVAL_MS", "100")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn local-cluster.sh");
    let mut out = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    loop {
        let line = out
            .next_line()
            .await
            .expect("read")
            .expect("the script says when the cluster is up");
        if line.starts_with("Milena is running") {
            break;
        }
    }
    // The rest of the banner: the commands it prints use the real port.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_millis(200), out.next_line()).await
    {
        banner.push_str(&line);
        banner.push('\n');
    }
    assert!(
        banner.contains(&format!("--addr http://localhost:{base} members"))
            || (base == 50050 && banner.contains("localhost:50050")),
        "{banner}"
    );
    // Nodes start once the router listens: a healthy start logs no failure.
    for i in 1..=3 {
        let log = std::fs::read_to_string(logs.join(format!("node{i}.log"))).expect("node log");
        assert!(!log.contains("Failed to join router"), "node{i}: {log}");
    }
    let router = format!("http://127.0.0.1:{base}");
    let c = Client::connect(&router).await.expect("connect");
    assert_eq!(c.members().await.expect("members").1.len(), 3);
    for i in 0..300 {
        c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), None)
            .await
            .expect("put");
    }
    let pid = std::fs::read_to_string(logs.join("node1.pid")).expect("node1.pid");
    assert!(
        Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .await
            .expect("kill")
            .success()
    );
    let mut lost = Vec::new();
    for i in 0..300 {
        match c.get(format!("k{i}").as_bytes()).await {
            Ok(Some(v)) if v == format!("v{i}").as_bytes() => {}
            other => lost.push((i, format!("{other:?}"))),
        }
    }
    assert!(lost.is_empty(), "lost after kill -9 of a node: {lost:?}");
    let (_, members) = c.members().await.expect("members");
    assert_eq!(members.len(), 2, "{members:?}");
    // Stop the script as Ctrl-C would: it stops the other nodes, then the
    // router. TERM, not INT: a script started in the background by a
    // non-interactive shell (as CI may be) inherits INT as ignored, and
    // bash cannot trap a signal ignored on entry, so INT would hang here.
    let spid = script.id().expect("pid").to_string();
    Command::new("kill")
        .args(["-TERM", &spid])
        .status()
        .await
        .expect("kill");
    script.wait().await.expect("script exits");
    let _ = std::fs::remove_dir_all(&logs);
}

/// A MAX_KEY_SIZE the tier cannot name is refused at start, with the
/// limit, instead of failing those writes for ever later.
#[tokio::test]
async fn a_key_size_the_tier_cannot_store_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(CACHE)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", dir.path())
        .env("MAX_KEY_SIZE", "8192")
        .output()
        .await
        .expect("milena-cache runs");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("MAX_KEY_SIZE=8192 is more than the dir tier can store"),
        "{log}"
    );
}
