//! memcached clients against a router with three nodes on `MEMCACHE_ADDR`:
//! the real libmemcached tools (Debian's libmemcached-tools) and the
//! Python client pymemcache (PyPI, installed by scripts/test.sh); raw text
//! for what a client library would never send.

mod common;

use std::net::SocketAddr;

use common::{ClusterNode, TestRouter, small_settings, start_router, test_router_settings};
use milena::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Cluster {
    router: TestRouter,
    /// The router's memcached listener.
    mc: SocketAddr,
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
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let mc = listener.local_addr().expect("addr");
    tokio::spawn(milena::router::memcache::serve(
        listener,
        router.router.clone(),
        router.shutdown.clone(),
    ));
    Cluster {
        router,
        mc,
        _nodes: nodes,
    }
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs one of libmemcached's tools against the router's memcached port.
async fn tool(c: &Cluster, name: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(name)
        .arg(format!("--servers=127.0.0.1:{}", c.mc.port()))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e} (Debian package libmemcached-tools)"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends `input` on one raw connection and reads until `until` ends the
/// answer (or the server closes).
async fn raw(c: &Cluster, input: &[u8], until: &str) -> String {
    let mut s = TcpStream::connect(c.mc).await.expect("connect");
    s.write_all(input).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(until) {
        match s.read(&mut buf).await.expect("read") {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libmemcached_tools_read_and_write_what_other_protocols_see() {
    let c = cluster().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("greeting.txt");
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &body).expect("write file");
    let cp = tool(&c, "memccp", &[file.to_str().expect("path")]).await;
    assert!(cp.ok, "memccp: {} {}", cp.stdout, cp.stderr);
    // The same key through the binary protocol, byte for byte.
    let bin = Client::connect(&c.router.url()).await.expect("binary");
    assert_eq!(
        bin.get(b"greeting.txt").await.expect("get").as_deref(),
        Some(&body[..])
    );
    bin.put(b"from-binary", b"forty-two", None)
        .await
        .expect("put");
    let cat = tool(&c, "memccat", &["from-binary"]).await;
    assert!(cat.ok, "memccat: {}", cat.stderr);
    assert_eq!(cat.stdout.trim_end(), "forty-two");
    let exist = tool(&c, "memcexist", &["from-binary"]).await;
    assert!(exist.ok, "memcexist: {}", exist.stderr);
    let touch = tool(&c, "memctouch", &["--expire=100", "from-binary"]).await;
    assert!(touch.ok, "memctouch: {} {}", touch.stdout, touch.stderr);
    assert_eq!(
        bin.get(b"from-binary").await.expect("get").as_deref(),
        Some(&b"forty-two"[..]),
        "touch keeps the value"
    );
    let rm = tool(&c, "memcrm", &["from-binary"]).await;
    assert!(rm.ok, "memcrm: {}", rm.stderr);
    assert_eq!(bin.get(b"from-binary").await.expect("get"), None);
    assert!(!tool(&c, "memcexist", &["from-binary"]).await.ok);
    let stat = tool(&c, "memcstat", &[]).await;
    assert!(stat.ok, "memcstat: {}", stat.stderr);
    assert!(stat.stdout.contains("curr_items"), "{}", stat.stdout);
    assert!(tool(&c, "memcping", &[]).await.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcslap_runs_against_the_router() {
    let c = cluster().await;
    for test in ["set", "get"] {
        let out = tool(
            &c,
            "memcslap",
            &[
                "--concurrency=4",
                "--execute-number=500",
                &format!("--test={test}"),
            ],
        )
        .await;
        assert!(
            out.ok,
            "memcslap --test={test}: {} {}",
            out.stdout, out.stderr
        );
    }
    let stats = &c.router.router.stats;
    assert!(stats.requests.load(std::sync::atomic::Ordering::Relaxed) >= 2000);
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// pymemcache from two processes racing `add` on the same keys: exactly
/// one wins each key; then `replace`, `set` with flags 0, `touch`,
/// `delete`, `get_many` as the library sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymemcache_add_races_have_one_winner_per_key() {
    let c = cluster().await;
    let port = c.mc.port().to_string();
    let racer = |who: &'static str| {
        let port = port.clone();
        tokio::process::Command::new("python3")
            .args([
                "-c",
                "import sys\nfrom pymemcache.client.base import Client\nc = Client(('127.0.0.1', int(sys.argv[1])))\nprint(''.join('1' if c.add('race%d' % i, sys.argv[2], noreply=False) else '0' for i in range(200)))",
                &port,
                who,
            ])
            .output()
    };
    let (a, b) = tokio::join!(racer("a"), racer("b"));
    let (a, b) = (a.expect("python3 a"), b.expect("python3 b"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    let (a, b) = (a.trim().as_bytes(), b.trim().as_bytes());
    assert_eq!((a.len(), b.len()), (200, 200));
    let bin = Client::connect(&c.router.url()).await.expect("binary");
    for i in 0..200 {
        assert!(
            (a[i] == b'1') ^ (b[i] == b'1'),
            "race{i}: {} {}",
            a[i],
            b[i]
        );
        let winner: &[u8] = if a[i] == b'1' { b"a" } else { b"b" };
        let k = format!("race{i}");
        assert_eq!(
            bin.get(k.as_bytes()).await.expect("get").as_deref(),
            Some(winner)
        );
    }
    let script = r#"
import sys
from pymemcache.client.base import Client
c = Client(('127.0.0.1', int(sys.argv[1])))
assert c.replace('nope', 'x', noreply=False) is False
assert c.set('k1', 'v1', expire=100, noreply=False) is True
assert c.replace('k1', 'v2', noreply=False) is True
assert c.get('k1') == b'v2'
assert c.touch('k1', 50, noreply=False) is True
assert c.touch('nope', 50, noreply=False) is False
assert c.get_many(['k1', 'nope', 'race0']) == {'k1': b'v2', 'race0': c.get('race0')}
v, cas = c.gets('k1')
assert v == b'v2' and cas is not None
assert c.delete('k1', noreply=False) is True
assert c.delete('k1', noreply=False) is False
assert c.get('k1') is None
assert c.version().startswith(b'1.6')
assert int(c.stats()[b'curr_items']) >= 200
# Values the client serializes itself come back through their flags.
from pymemcache import serde
s = Client(('127.0.0.1', int(sys.argv[1])), serde=serde.pickle_serde)
s.set('int', 42, noreply=False)
s.set('obj', {'a': [1, 2]}, noreply=False)
s.set('text', 'plain', noreply=False)
assert s.get('int') == 42 and s.get('obj') == {'a': [1, 2]} and s.get('text') == 'plain'
assert s.get_many(['int', 'text']) == {'int': 42, 'text': 'plain'}
print('ok')
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &port])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_connection_and_garbage_closes_it() {
    let c = cluster().await;
    let long_key = "k".repeat(251);
    let big = "v".repeat(17 * 1024 * 1024);
    let input = format!(
        "bogus\r\nset k 0 0 1\r\na\r\nset k 5 0 1\r\nb\r\nincr n 1\r\nget {long_key}\r\nset k 0 0 {}\r\n{big}\r\nappend k 0 0 1\r\nc\r\nset quiet 0 0 1 noreply\r\nq\r\nflush_all\r\nget k quiet\r\n",
        big.len()
    );
    let got = raw(&c, input.as_bytes(), "END\r\n").await;
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(lines[0], "ERROR");
    assert_eq!(lines[1], "STORED");
    assert_eq!(lines[2], "STORED", "flags are stored");
    assert!(lines[3].starts_with("CLIENT_ERROR incr"), "{}", lines[3]);
    assert_eq!(lines[4], "CLIENT_ERROR bad command line format");
    assert_eq!(lines[5], "SERVER_ERROR object too large for cache");
    assert!(lines[6].starts_with("CLIENT_ERROR append"), "{}", lines[6]);
    assert!(
        lines[7].starts_with("SERVER_ERROR flush_all"),
        "{}",
        lines[7]
    );
    assert_eq!(
        lines[8..],
        ["VALUE k 5 1", "b", "VALUE quiet 0 1", "q", "END", ""]
    );
    // A data block that does not end where its length says: answered, closed.
    let got = raw(&c, b"set k 0 0 1\r\nabc\r\nget k\r\n", "\r\n").await;
    assert_eq!(got, "CLIENT_ERROR bad data chunk\r\n");
}
