//! Shared helpers: real servers on port 0 and a raw protocol socket.
#![allow(dead_code)]

pub mod etcd;
pub mod s3;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use milena::node::{Node, NodeSettings};
use milena::protocol::{
    Body, FrameCodec, MAGIC, Op, PROTOCOL_VERSION, Request, Status, decode_response, encode_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A node serving on a loopback port.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels the node and waits until every connection is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("node task");
    }
}

/// Starts a node; the listener is bound before this returns, so clients
/// may connect at once.
pub async fn start_node_with(node: Node) -> TestNode {
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let node = Arc::new(node);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(milena::node::run(listener, node.clone(), shutdown.clone()));
    TestNode {
        addr,
        node,
        shutdown,
        task,
    }
}

pub async fn start_node(settings: NodeSettings) -> TestNode {
    start_node_with(Node::new(settings)).await
}

pub fn small_settings() -> NodeSettings {
    NodeSettings {
        max_key: 250,
        max_value: 4096,
        ..NodeSettings::default()
    }
}

/// An owned, test-friendly view of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub id: u64,
    pub status: Status,
    pub value: Option<Vec<u8>>,
    pub message: Option<String>,
}

/// A raw protocol connection, for sending exactly the bytes a test wants.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(64 << 20),
        }
    }

    /// Connects and completes the hello.
    pub async fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(0, hello_op()).await;
        let r = raw.recv().await.expect("hello answer");
        assert_eq!(r.status, Status::Ok, "{r:?}");
        raw
    }

    pub async fn send(&mut self, id: u64, op: Op<'_>) {
        let mut out = Vec::new();
        encode_request(&Request { id, op }, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next response, or `None` once the server has closed.
    pub async fn recv(&mut self) -> Option<Resp> {
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf).expect("frame") {
                let r = decode_response(&frame).expect("response");
                return Some(Resp {
                    id: r.id,
                    status: r.status,
                    value: match r.body {
                        Body::Value(v) => Some(v.to_vec()),
                        _ => None,
                    },
                    message: match r.body {
                        Body::Message(m) => Some(m.to_string()),
                        _ => None,
                    },
                });
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes; panics if it answers with more frames
    /// than `max_frames` first.
    pub async fn expect_closed(&mut self) {
        assert!(self.recv().await.is_none(), "expected the server to close");
    }
}

pub fn hello_op() -> Op<'static> {
    Op::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        token: None,
    }
}

// ---- clusters: a router in-process, nodes each in their own runtime ----

use milena::node::Membership;
use milena::router::{Router, RouterSettings};
use std::time::Duration;

/// A router serving on a loopback port.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub router: Arc<Router>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl TestRouter {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("router task");
    }

    /// Waits until the ring is exactly `members`.
    pub async fn wait_members(&self, members: &[&str]) {
        let mut want: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.router
            .members
            .wait_for(|v| v.ring.addresses().map(str::to_string).collect::<Vec<_>>() == want)
            .await;
    }
}

pub fn test_router_settings() -> RouterSettings {
    RouterSettings {
        heartbeat_timeout: Duration::from_secs(3),
        hold_down: Duration::from_millis(0),
        ..RouterSettings::default()
    }
}

pub async fn start_router(settings: RouterSettings) -> TestRouter {
    let shutdown = CancellationToken::new();
    start_router_with(Router::new(settings, shutdown.clone()), shutdown).await
}

pub async fn start_router_with(router: Arc<Router>, shutdown: CancellationToken) -> TestRouter {
    let listener = milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(milena::router::run(
        listener,
        router.clone(),
        shutdown.clone(),
    ));
    TestRouter {
        addr,
        router,
        shutdown,
        task,
    }
}

/// A cache node in a runtime of its own, so a test can kill it outright:
/// dropping the runtime closes its sockets without a leave or a drain, as
/// `kill -9` would.
pub struct ClusterNode {
    pub addr: SocketAddr,
    /// The URL it joined with.
    pub advertised: String,
    pub node: Arc<Node>,
    shutdown: CancellationToken,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        self.advertised.clone()
    }

    /// Starts a node on `addr` (port 0 for any) that joins `routers`.
    pub fn start(addr: &str, routers: &[String], settings: NodeSettings) -> ClusterNode {
        Self::start_with_token(addr, routers, settings, None)
    }

    /// As [`ClusterNode::start`], presenting `token` to the routers.
    pub fn start_with_token(
        addr: &str,
        routers: &[String],
        settings: NodeSettings,
        token: Option<&str>,
    ) -> ClusterNode {
        Self::start_full(addr, routers, settings, token, TierSpec::None, None)
    }

    /// As [`ClusterNode::start`], backed by a directory tier at `dir`.
    pub fn start_with_dir(
        addr: &str,
        routers: &[String],
        settings: NodeSettings,
        dir: &std::path::Path,
    ) -> ClusterNode {
        Self::start_full(
            addr,
            routers,
            settings,
            None,
            TierSpec::Dir(dir.to_path_buf()),
            None,
        )
    }

    /// As [`ClusterNode::start`], backed by the tier `tier`.
    pub fn start_with_tier(
        addr: &str,
        routers: &[String],
        settings: NodeSettings,
        tier: TierSpec,
    ) -> ClusterNode {
        Self::start_full(addr, routers, settings, None, tier, None)
    }

    /// A node whose membership is in etcd (`args`), not with routers.
    pub fn start_in_etcd(
        addr: &str,
        etcd: milena::config::EtcdArgs,
        settings: NodeSettings,
        tier: TierSpec,
    ) -> ClusterNode {
        Self::start_full(addr, &[], settings, None, tier, Some(etcd))
    }

    fn start_full(
        addr: &str,
        routers: &[String],
        settings: NodeSettings,
        token: Option<&str>,
        tier: TierSpec,
        etcd: Option<milena::config::EtcdArgs>,
    ) -> ClusterNode {
        let cluster_token = token.map(milena::error::Secret::new);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let routers = routers.to_vec();
        let addr: SocketAddr = addr.parse().expect("addr");
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = milena::net::bind(addr).expect("bind node");
                let bound = listener.local_addr().expect("local addr");
                let tls = settings.tls.as_ref().map(|t| t.connector.clone());
                // Certificates in the tests name "localhost".
                let advertise = match tls {
                    Some(_) => format!("https://localhost:{}", bound.port()),
                    None => format!("http://{bound}"),
                };
                // Built inside the node's runtime: its HTTP connections
                // die with the node.
                let tier: Arc<dyn milena::node::tier::Tier> = match tier {
                    TierSpec::Dir(d) => Arc::new(
                        milena::node::tier::dir::DirTier::open(d)
                            .await
                            .expect("data dir"),
                    ),
                    TierSpec::S3(s) => Arc::new(milena::node::tier::s3::S3Tier::connect(s).await),
                    TierSpec::None => Arc::new(milena::node::tier::NoTier),
                };
                let node = Arc::new(Node::with_tier(settings, milena::node::Clock::new(), tier));
                let _ = ready_tx.send((bound, advertise.clone(), node.clone()));
                let membership = Membership {
                    etcd: etcd.map(|a| milena::node::etcd::EtcdMembership {
                        etcd: milena::etcd::Etcd::connect(&a).expect("etcd settings"),
                        lease_seconds: a.etcd_lease_seconds,
                    }),
                    routers,
                    tls,
                    advertise,
                    interval: Duration::from_millis(100),
                    token: cluster_token,
                };
                tokio::select! {
                    _ = milena::node::run_in_cluster(listener, node, membership, token) => {}
                    _ = kill_rx => {}
                }
            });
            // Drops every task (and so every socket) before returning, so
            // the node is fully dead when `kill` returns.
            rt.shutdown_timeout(Duration::from_secs(10));
        });
        let (addr, advertised, node) = ready_rx.recv().expect("node started");
        ClusterNode {
            addr,
            advertised,
            node,
            shutdown,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    /// Graceful stop: leave the routers, drain, exit.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let t = self.thread.take();
        tokio::task::spawn_blocking(move || t.map(|t| t.join()))
            .await
            .expect("join");
    }

    /// Abrupt stop: no leave, no drain.
    pub async fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        let t = self.thread.take();
        tokio::task::spawn_blocking(move || t.map(|t| t.join()))
            .await
            .expect("join");
    }
}

/// Which tier a test node writes to.
#[derive(Debug, Clone)]
pub enum TierSpec {
    /// Memory only.
    None,
    /// A shared directory.
    Dir(std::path::PathBuf),
    /// An S3-compatible server.
    S3(milena::node::tier::s3::S3Settings),
}

/// Sends a raw HTTP/1.1 request and returns the whole answer (the request
/// should say `Connection: close`).
pub async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// `GET path` and the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let answer = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels, exactly as exposed).
pub fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
