//! Redis clients against a router with three nodes: the real `redis-cli`
//! and `redis-benchmark` (Debian's redis-tools), raw RESP for what a
//! client library would never send.

mod common;

use common::{ClusterNode, TestRouter, small_settings, start_router, test_router_settings};
use milena::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Cluster {
    router: TestRouter,
    _nodes: Vec<ClusterNode>,
}

async fn cluster() -> Cluster {
    let router = start_router(test_router_settings()).await;
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|_| ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings()))
        .collect();
    let urls: Vec<String> = nodes.iter().map(ClusterNode::url).collect();
    router
        .wait_members(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    Cluster {
        router,
        _nodes: nodes,
    }
}

/// Runs `redis-cli` against the router's port with `stdin` as its
/// commands, one per line, all on one connection; its output lines.
async fn cli(c: &Cluster, stdin: &str) -> Vec<String> {
    let mut child = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &c.router.addr.port().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("redis-cli (Debian package redis-tools)");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write");
    drop(input);
    let out = child.wait_with_output().await.expect("redis-cli ran");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_reads_and_writes_what_other_protocols_see() {
    let c = cluster().await;
    assert_eq!(cli(&c, "PING\n").await, ["PONG"]);
    assert_eq!(
        cli(
            &c,
            "SET greeting hello\nGET greeting\nGET absent\nECHO hi\n"
        )
        .await,
        ["OK", "hello", "", "hi"]
    );
    // The same keys through the binary protocol, both ways.
    let bin = Client::connect(&c.router.url())
        .await
        .expect("binary client");
    assert_eq!(
        bin.get(b"greeting").await.expect("get").as_deref(),
        Some(&b"hello"[..])
    );
    bin.put(b"from-binary", b"42", None).await.expect("put");
    assert_eq!(cli(&c, "GET from-binary\n").await, ["42"]);

    // Keys spread over all three nodes, merged in request order.
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let mset: String = keys.iter().map(|k| format!(" {k} v{k}")).collect();
    assert_eq!(cli(&c, &format!("MSET{mset}\n")).await, ["OK"]);
    let mut want: Vec<String> = keys.iter().map(|k| format!("v{k}")).collect();
    want.insert(3, String::new());
    let mut asked = keys.clone();
    asked.insert(3, "nope".into());
    assert_eq!(cli(&c, &format!("MGET {}\n", asked.join(" "))).await, want);
    assert_eq!(
        cli(&c, "DEL k0 k1 nope\nEXISTS k0 k2 k3\nDBSIZE\n").await,
        ["2", "2", "12"]
    );
    assert_eq!(
        cli(&c, "SET t v EX 100\nSET t v PX 0\n").await[..2],
        [
            "OK".to_string(),
            "ERR invalid expire time in 'set' command".into()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_connection() {
    let c = cluster().await;
    let long_key = "x".repeat(300);
    let out = cli(
        &c,
        &format!("FOO bar\nPING\nSET {long_key} v\nGET\nSELECT 1\nSELECT 0\nPING\n"),
    )
    .await;
    // redis-cli prints an error reply followed by an empty line.
    let out: Vec<String> = out.into_iter().filter(|l| !l.is_empty()).collect();
    assert!(
        out[0].starts_with("ERR unknown command 'FOO'"),
        "{}",
        out[0]
    );
    assert_eq!(out[1], "PONG");
    assert!(out[2].contains("MAX_KEY_SIZE"), "{}", out[2]);
    assert_eq!(out[3], "ERR wrong number of arguments for 'get' command");
    assert_eq!(out[4], "ERR DB index is out of range");
    assert_eq!(out[5..], ["OK", "PONG"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_valid_command_is_answered_then_closed() {
    let c = cluster().await;
    let mut s = TcpStream::connect(c.router.addr).await.expect("connect");
    s.write_all(b"*1\r\n$4\r\nPING\r\n*x\r\n*1\r\n$4\r\nPING\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read until closed");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    );
    // Inline commands, as typed into nc.
    let mut s = TcpStream::connect(c.router.addr).await.expect("connect");
    s.write_all(b"*1\r\n$4\r\nPING\r\nECHO hey\r\nQUIT\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.expect("read until closed");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n$3\r\nhey\r\n+OK\r\n"
    );
    // The router still serves everyone else.
    assert_eq!(cli(&c, "PING\n").await, ["PONG"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_runs_against_the_router() {
    let c = cluster().await;
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.router.addr.port().to_string(),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-P",
            "16",
            "-q",
        ])
        .output()
        .await
        .expect("redis-benchmark (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    let stats = Client::connect(&c.router.url())
        .await
        .expect("client")
        .stats()
        .await
        .expect("stats");
    let errors = stats
        .iter()
        .find(|(n, _)| n == "errors")
        .map_or(0, |(_, v)| *v);
    assert_eq!(errors, 0, "{stats:?}");
}

/// `SET NX` and `SET XX` are decided by the key's owner: two `redis-cli`
/// connections racing `SET NX` on the same keys each win some, and exactly
/// one wins each key, whose value is then the winner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_races_from_two_connections_have_one_winner_per_key() {
    let c = cluster().await;
    assert_eq!(
        cli(&c, "SET nx1 a NX\nSET nx1 b NX\nGET nx1\nSET xx1 a XX\nGET xx1\nSET nx1 c XX EX 100\nGET nx1\nSET nx1 d NX XX\n").await,
        ["OK", "", "a", "", "", "OK", "c", "ERR syntax error", ""]
    );
    const KEYS: usize = 200;
    let script = |who: &str| -> String {
        (0..KEYS)
            .map(|i| format!("SET race{i} {who} NX\n"))
            .collect()
    };
    let (script_a, script_b) = (script("a"), script("b"));
    let (a, b) = tokio::join!(cli(&c, &script_a), cli(&c, &script_b));
    assert_eq!((a.len(), b.len()), (KEYS, KEYS));
    let gets: String = (0..KEYS).map(|i| format!("GET race{i}\n")).collect();
    let values = cli(&c, &gets).await;
    for i in 0..KEYS {
        let won = (a[i] == "OK", b[i] == "OK");
        assert!(
            won.0 ^ won.1,
            "race{i}: a said {:?}, b said {:?}",
            a[i],
            b[i]
        );
        assert_eq!(values[i], if won.0 { "a" } else { "b" }, "race{i}");
    }
}

/// redis-py (PyPI, installed by scripts/test.sh), as an application uses
/// it: connection handshake, plain and conditional sets, expiry, multi-key
/// commands, a pipeline, errors as exceptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_works_as_applications_use_it() {
    let c = cluster().await;
    let script = r#"
import sys, redis
r = redis.Redis(host='127.0.0.1', port=int(sys.argv[1]))
assert r.ping() is True
assert r.set('a', '1') is True
assert r.get('a') == b'1'
assert r.set('a', '2', nx=True) is None
assert r.set('a', '3', xx=True) is True
assert r.set('fresh', 'x', xx=True) is None
assert r.set('fresh', 'y', nx=True, ex=100) is True
assert r.expire('fresh', 50) is True
assert r.expire('nope', 50) is False
assert r.get('fresh') == b'y'
assert r.ttl('fresh') in (49, 50)
assert 49000 < r.pttl('fresh') <= 51000
assert r.ttl('nope') == -2 and r.pttl('nope') == -2
assert r.set('plain', 'x') is True
assert 3598 <= r.ttl('plain') <= 3600, 'a SET without EX takes the nodes TTL_SECONDS'
assert r.mset({'m1': 'v1', 'm2': 'v2'}) is True
assert r.mget(['m1', 'nope', 'm2']) == [b'v1', None, b'v2']
assert r.exists('a', 'm1', 'nope') == 2
assert r.delete('a', 'nope') == 1
p = r.pipeline(transaction=False)
for i in range(50):
    p.set('p%d' % i, i)
for i in range(50):
    p.get('p%d' % i)
out = p.execute()
assert out[:50] == [True] * 50 and out[50:] == [str(i).encode() for i in range(50)]
assert r.expire('p0', 0) is True and r.get('p0') is None
assert r.dbsize() >= 50
assert 'redis_version' in r.info()
try:
    r.execute_command('LPUSH', 'l', 'x')
    raise SystemExit('LPUSH should fail')
except redis.ResponseError as e:
    assert 'unknown command' in str(e)
print('ok')
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &c.router.addr.port().to_string()])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// A node's own `REDIS_ADDR`: the same commands on its cache, seen by
/// binary clients of the node, and `redis-benchmark` with no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_redis_port_serves_its_cache() {
    let node = common::start_node(small_settings()).await;
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    tokio::spawn(milena::node::redis::serve(
        listener,
        node.node.clone(),
        node.shutdown.clone(),
    ));
    let cli = |stdin: &'static str| {
        let port = port.clone();
        async move {
            let mut child = tokio::process::Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("redis-cli");
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(stdin.as_bytes()).await.expect("write");
            drop(input);
            let out = child.wait_with_output().await.expect("ran");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        cli("PING\nSET a 1\nSET a 2 NX\nGET a\nEXPIRE a 100\nMGET a b\nDEL a b\nDBSIZE\n").await,
        ["PONG", "OK", "", "1", "1", "1", "", "1", "0"]
    );
    let bin = Client::connect(&node.url()).await.expect("binary");
    bin.put(b"from-binary", b"x", None).await.expect("put");
    assert_eq!(cli("GET from-binary\n").await, ["x"]);
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "get,set",
            "-n",
            "2000",
            "-P",
            "16",
            "-q",
        ])
        .output()
        .await
        .expect("redis-benchmark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = node.node.stats_list();
    let errors = stats.iter().find(|s| s.name == "errors").map(|s| s.value);
    assert_eq!(errors, Some(0));
    let puts = stats
        .iter()
        .find(|s| s.name == "puts")
        .map_or(0, |s| s.value);
    assert!(puts >= 2000, "{puts} puts");
    node.stop().await;
}
