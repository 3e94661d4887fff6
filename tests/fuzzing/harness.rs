//! Socket-level fuzzing harness, shared by the `cargo fuzz` targets in
//! `fuzz/` and the regression test `tests/fuzz_inputs.rs`.
//!
//! A real router (with one real node in its ring) and a node's real
//! `/metrics` server run in a background runtime, started once per
//! process. Each input is written to a fresh connection, which is then
//! half-closed and read until the server closes it; then a separate,
//! long-lived connection must still be answered. A panic anywhere in the
//! servers' tasks aborts the process (libFuzzer installs that hook; the
//! regression test installs it too), so a crash cannot hide in a task.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use milena::node::{Membership, Node, NodeSettings};
use milena::protocol::{
    FrameCodec, MAGIC, Op, PROTOCOL_VERSION, Request, Status, decode_response, encode_request,
};
use milena::router::{Router, RouterSettings};
use tokio_util::sync::CancellationToken;

/// How long one input's connection may stay open after the input ends;
/// a server that is still silent then is simply left behind (the
/// liveness check below is what must not fail).
const DRAIN: Duration = Duration::from_millis(500);
/// How long the liveness check waits for an answer (generous: a loaded
/// CI machine must not turn slowness into a finding).
const ANSWER: Duration = Duration::from_secs(60);

/// The servers under test.
pub struct Servers {
    /// The router's one port (binary protocol, HTTP/1, HTTP/2 + gRPC).
    pub router: SocketAddr,
    /// The node's `/metrics` port.
    pub metrics: SocketAddr,
    /// The router's memcached listener (`MEMCACHE_ADDR`).
    pub memcache: SocketAddr,
    /// A greeted binary connection to the router, for liveness checks.
    probe: Mutex<Option<Probe>>,
}

/// The servers, started on first use and kept for the process's life.
pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(start)
}

fn start() -> Servers {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let shutdown = CancellationToken::new();
            let settings = RouterSettings {
                hello_timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_millis(200),
                node_timeout: Duration::from_secs(1),
                hold_down: Duration::ZERO,
                // A loaded CI machine may stall the node's heartbeats for
                // seconds; the seeds test needs it still in the ring.
                heartbeat_timeout: Duration::from_secs(60),
                ..RouterSettings::default()
            };
            let router = Router::new(settings, shutdown.clone());
            let router_listener = milena::net::bind(loopback()).expect("bind router");
            let router_addr = router_listener.local_addr().expect("router addr");
            tokio::spawn(milena::router::run(
                router_listener,
                router.clone(),
                shutdown.clone(),
            ));
            let memcache_listener = milena::net::bind(loopback()).expect("bind memcache");
            let memcache_addr = memcache_listener.local_addr().expect("memcache addr");
            tokio::spawn(milena::router::memcache::serve(
                memcache_listener,
                router.clone(),
                shutdown.clone(),
            ));

            let node = Arc::new(Node::new(NodeSettings::default()));
            let node_listener = milena::net::bind(loopback()).expect("bind node");
            let node_addr = node_listener.local_addr().expect("node addr");
            let metrics_listener = milena::net::bind(loopback()).expect("bind metrics");
            let metrics_addr = metrics_listener.local_addr().expect("metrics addr");
            tokio::spawn(milena::node::serve_metrics(
                metrics_listener,
                node.clone(),
                shutdown.clone(),
            ));
            let membership = Membership {
                etcd: None,
                routers: vec![format!("http://{router_addr}")],
                advertise: format!("http://{node_addr}"),
                interval: Duration::from_millis(100),
                token: None,
                tls: None,
            };
            tokio::spawn(milena::node::run_in_cluster(
                node_listener,
                node,
                membership,
                shutdown.clone(),
            ));
            router.members.wait_for(|v| v.ring.len() == 1).await;
            let _ = tx.send((router_addr, metrics_addr, memcache_addr));
            // Serve until the process exits.
            std::future::pending::<()>().await;
        });
    });
    let (router, metrics, memcache) = rx.recv().expect("servers started");
    Servers {
        router,
        metrics,
        memcache,
        probe: Mutex::new(None),
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Writes `data` to a fresh connection to `addr`, half-closes it and reads
/// whatever comes back until the server closes (or [`ANSWER`] passes).
/// Returns the bytes read.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    exchange_within(addr, data, ANSWER)
}

/// A fuzzing input: as [`exchange`], but only waits [`DRAIN`] for the close.
fn feed(addr: SocketAddr, data: &[u8]) {
    exchange_within(addr, data, DRAIN);
}

fn exchange_within(addr: SocketAddr, data: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    // The server may close first (a refused frame, a bad request): a
    // failed write is an answer too.
    if s.write_all(data).is_ok() {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// One input on the router's port, then checks the router still serves.
pub fn router_port(data: &[u8]) {
    let s = servers();
    feed(s.router, data);
    s.check_router();
}

/// One input on the router's memcached listener, then checks it and the
/// router's port still serve.
pub fn memcache_port(data: &[u8]) {
    let s = servers();
    feed(s.memcache, data);
    let answer = exchange(s.memcache, b"version\r\n");
    assert!(
        answer.starts_with(b"VERSION "),
        "the memcached listener stopped answering after input {data:?}: {:?}",
        String::from_utf8_lossy(&answer)
    );
    s.check_router();
}

/// One input on the node's metrics port, then checks it still serves.
pub fn metrics_http(data: &[u8]) {
    let s = servers();
    feed(s.metrics, data);
    let answer = exchange(
        s.metrics,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("milena_build_info"),
        "metrics endpoint stopped answering after input {data:?}: {text:?}"
    );
}

impl Servers {
    /// A get on the long-lived connection must be answered (any status:
    /// an input may have joined a bogus node to the ring), and so must a
    /// hello and a ping on a new one (the router still accepts).
    fn check_router(&self) {
        let mut fresh = Probe::greeted(self.router);
        assert_eq!(
            fresh.call(Op::Ping),
            Some(Status::Ok),
            "a new client is served"
        );
        let mut probe = self.probe.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if probe.is_none() {
                *probe = Some(Probe::greeted(self.router));
            }
            if let Some(p) = probe.as_mut()
                && p.get().is_some()
            {
                return;
            }
            // One fresh connection may fail only if the old one was
            // broken; a second failure is a finding.
            *probe = None;
            assert!(attempt == 0, "router stopped answering");
        }
    }
}

/// A binary-protocol connection that has said hello.
struct Probe {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    next_id: u64,
}

impl Probe {
    fn greeted(addr: SocketAddr) -> Probe {
        let stream = TcpStream::connect(addr).expect("connect probe");
        stream.set_read_timeout(Some(ANSWER)).expect("timeout");
        let mut p = Probe {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(4 << 20),
            next_id: 1,
        };
        let hello = Op::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            token: None,
        };
        let status = p.call(hello).expect("hello answered");
        assert_eq!(status, Status::Ok, "hello refused");
        p
    }

    fn get(&mut self) -> Option<Status> {
        self.call(Op::Get { key: b"fuzz-probe" })
    }

    /// Sends `op` and returns the status of its answer, or `None` if the
    /// connection failed.
    fn call(&mut self, op: Op<'_>) -> Option<Status> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        encode_request(&Request { id, op }, &mut out);
        self.stream.write_all(&out).ok()?;
        loop {
            if let Ok(Some(frame)) = self.codec.decode_frame(&mut self.buf) {
                let r = decode_response(&frame).ok()?;
                if r.id == id {
                    return Some(r.status);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Inputs every run starts from: valid traffic of each kind the ports
/// speak, so mutations begin inside the parsers rather than at their doors.
pub fn router_seeds() -> Vec<Vec<u8>> {
    let mut hello_get_put = Vec::new();
    let hello = Op::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        token: None,
    };
    for (id, op) in [
        (0, hello),
        (1, Op::Get { key: b"k" }),
        (
            2,
            Op::Put {
                key: b"k",
                value: b"v",
                ttl: Some(60),
            },
        ),
        (3, Op::Delete { key: b"k" }),
        (4, Op::Ping),
        (5, Op::Stats),
        (6, Op::Members),
    ] {
        encode_request(&Request { id, op }, &mut hello_get_put);
    }
    vec![
        hello_get_put,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        // HTTP/2 preface and an empty SETTINGS frame.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(),
        // Redis clients (RESP2), then inline commands on the same connection.
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$4\r\nMGET\r\n$1\r\nk\r\n$1\r\nx\r\nPING\r\nINFO\r\nTTL k\r\nPTTL x\r\nDEL k x\r\n".to_vec(),
    ]
}

/// Seeds for the memcached listener: every command it knows, noreply,
/// an oversized value, errors.
pub fn memcache_seeds() -> Vec<Vec<u8>> {
    vec![
        b"set k 0 60 1\r\nv\r\nget k x\r\ngets k\r\nadd k 0 0 1 noreply\r\nw\r\nreplace k 0 0 2\r\nvv\r\ntouch k 10\r\ndelete k\r\nstats\r\nversion\r\nmn\r\nquit\r\n".to_vec(),
        b"set big 0 0 99999999\r\nxxxx\r\nincr n 1\r\nappend k 0 0 1\r\na\r\nbogus\r\n\r\nflush_all\r\nverbosity 1\r\n".to_vec(),
    ]
}

/// Seeds for the metrics port.
pub fn metrics_seeds() -> Vec<Vec<u8>> {
    vec![
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
    ]
}

/// A panic hook that aborts, so a panic in any server task fails the run
/// instead of being swallowed by the task's join handle.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::abort();
    }));
}
