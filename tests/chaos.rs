//! Fault injection with the real binaries (issue 9): a router, three cache
//! nodes and an S3-compatible server (`examples/s3-server.rs`), each its
//! own process on loopback, under a mixed workload from the client
//! library. Every acknowledged write is recorded, every read is checked
//! against that history, and each scenario prints its figures.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use milena::client::Client;
use milena::node::tier::Tier;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod common;
use common::s3::FaultProxy;

const CACHE: &str = env!("CARGO_BIN_EXE_milena-cache");
const ROUTER: &str = env!("CARGO_BIN_EXE_milena-router");

/// `examples/s3-server`, built by `cargo test` beside the test binaries.
fn s3_server_bin() -> std::path::PathBuf {
    std::path::Path::new(CACHE)
        .parent()
        .expect("bin dir")
        .join("examples")
        .join("s3-server")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A server process, its address and its log lines.
struct Proc {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `program` and waits for the log line carrying `marker`,
    /// taking the address after `addr=` (or the whole line for the S3
    /// server); the rest of the log is kept for later checks.
    async fn start(program: &std::path::Path, args: &[String], env: &[(&str, String)]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next_line()
                .await
                .expect("read log")
                .unwrap_or_else(|| panic!("{} exited before listening", program.display()));
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().expect("addr").to_string();
            }
            if let Some(rest) = line.strip_prefix("s3 server at ") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log").push(line);
            }
        });
        Proc { child, addr, log }
    }

    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    async fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid()])
            .status()
            .await
            .expect("kill");
        assert!(ok.success(), "kill -{sig}");
    }

    /// `kill -9`, then waits until the process is gone (its port free).
    async fn kill_and_wait(&mut self) {
        self.signal("KILL").await;
        let _ = self.child.wait().await;
    }

    fn logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Router, nodes and S3, all real processes.
struct Cluster {
    s3: Proc,
    router: Proc,
    router_port: u16,
    nodes: Vec<Proc>,
    _dir: TempDir,
    write_mode: &'static str,
    /// Between the nodes and S3, when the scenario injects S3 faults.
    proxy: Option<FaultProxy>,
    /// Extra node settings.
    node_env: Vec<(&'static str, String)>,
    /// Routers beyond the first (each node joins them all), and their ports.
    more_routers: Vec<(Proc, u16)>,
    /// Membership in etcd (a real etcd process), when the scenario has it.
    etcd: Option<common::etcd::EtcdServer>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Heartbeats every 100 ms; a node missing them for 3 s is ejected (long
/// enough that a loaded 2-core machine running debug builds does not
/// eject live nodes).
const HEARTBEAT_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_MS: u64 = 3000;
/// With etcd: a node that stops renewing leaves every ring after 2 s.
const ETCD_LEASE_SECONDS: u64 = 2;

impl Cluster {
    async fn start(name: &str, nodes: usize, write_mode: &'static str) -> Cluster {
        Self::start_with(name, nodes, write_mode, false, Vec::new()).await
    }

    async fn start_with(
        name: &str,
        nodes: usize,
        write_mode: &'static str,
        proxied: bool,
        node_env: Vec<(&'static str, String)>,
    ) -> Cluster {
        Self::start_full(name, nodes, write_mode, proxied, node_env, None).await
    }

    async fn start_full(
        name: &str,
        nodes: usize,
        write_mode: &'static str,
        proxied: bool,
        node_env: Vec<(&'static str, String)>,
        etcd: Option<common::etcd::EtcdServer>,
    ) -> Cluster {
        let dir = std::env::temp_dir().join(format!("milena-chaos-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s3 = Proc::start(
            &s3_server_bin(),
            &[
                "--root".into(),
                dir.join("s3").display().to_string(),
                "--port".into(),
                free_port().to_string(),
                "--bucket".into(),
                "cache".into(),
            ],
            &[],
        )
        .await;
        let router_port = free_port();
        let etcd_url = etcd.as_ref().map(|e| e.endpoint());
        let router = Self::router(router_port, etcd_url.as_deref()).await;
        let mut c = Cluster {
            s3,
            router,
            router_port,
            nodes: Vec::new(),
            _dir: TempDir(dir),
            write_mode,
            proxy: None,
            node_env,
            more_routers: Vec::new(),
            etcd,
        };
        if proxied {
            let target =
                c.s3.addr
                    .trim_start_matches("http://")
                    .parse()
                    .expect("s3 addr");
            c.proxy = Some(FaultProxy::start(target).await);
        }
        for _ in 0..nodes {
            let n = c.node().await;
            c.nodes.push(n);
        }
        c.wait_members(nodes).await;
        c
    }

    async fn router(port: u16, etcd: Option<&str>) -> Proc {
        let mut env = vec![
            ("HELLO_TIMEOUT_SECONDS", "1".into()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("RATE_LIMIT", "0".into()),
            ("HEARTBEAT_TIMEOUT_MS", HEARTBEAT_TIMEOUT_MS.to_string()),
            ("NODE_TIMEOUT_MS", "3000".into()),
        ];
        if let Some(e) = etcd {
            env.push(("ETCD_ENDPOINTS", e.to_string()));
            env.push(("ETCD_LEASE_SECONDS", ETCD_LEASE_SECONDS.to_string()));
        }
        Proc::start(std::path::Path::new(ROUTER), &[], &env).await
    }

    async fn node(&self) -> Proc {
        let s3 = match &self.proxy {
            Some(p) => p.endpoint(),
            None => self.s3.addr.clone(),
        };
        let mut env = vec![
            ("LISTEN_ADDR", "127.0.0.1:0".into()),
            match &self.etcd {
                Some(e) => ("ETCD_ENDPOINTS", e.endpoint()),
                None => ("ROUTER_ADDR", self.router_urls()),
            },
            ("ETCD_LEASE_SECONDS", ETCD_LEASE_SECONDS.to_string()),
            ("HEARTBEAT_INTERVAL_MS", HEARTBEAT_MS.to_string()),
            ("WRITE_MODE", self.write_mode.into()),
            ("S3_BUCKET", "cache".into()),
            ("S3_ENDPOINT", s3),
            ("AWS_ACCESS_KEY_ID", "milena".into()),
            ("AWS_SECRET_ACCESS_KEY", "milena-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("LRU_SIZE", "100000".into()),
            ("TTL_SECONDS", "0".into()),
        ];
        env.extend(self.node_env.iter().cloned());
        Proc::start(std::path::Path::new(CACHE), &[], &env).await
    }

    fn router_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.router_port)
    }

    /// Every router's URL, comma-separated (as `ROUTER_ADDR` takes them).
    fn router_urls(&self) -> String {
        std::iter::once(self.router_port)
            .chain(self.more_routers.iter().map(|(_, p)| *p))
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `routers` routers sharing membership in a real etcd.
    async fn start_in_etcd(
        name: &str,
        nodes: usize,
        write_mode: &'static str,
        routers: usize,
    ) -> Cluster {
        let etcd = common::etcd::EtcdServer::start();
        Self::start_many(name, nodes, write_mode, routers, Some(etcd)).await
    }

    async fn start_many(
        name: &str,
        nodes: usize,
        write_mode: &'static str,
        routers: usize,
        etcd: Option<common::etcd::EtcdServer>,
    ) -> Cluster {
        let mut c = Self::start_full(name, 0, write_mode, false, Vec::new(), etcd).await;
        let etcd_url = c.etcd.as_ref().map(|e| e.endpoint());
        for _ in 1..routers {
            let port = free_port();
            c.more_routers
                .push((Self::router(port, etcd_url.as_deref()).await, port));
        }
        for _ in 0..nodes {
            let n = c.node().await;
            c.nodes.push(n);
        }
        c.wait_members(nodes).await;
        c
    }

    /// Polls every router until each has `n` members.
    async fn wait_members(&self, n: usize) -> Duration {
        let started = Instant::now();
        for url in self.router_urls().split(',') {
            loop {
                if let Ok(c) = Client::connect(url).await
                    && let Ok((_, m)) = c.members().await
                    && m.len() == n
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        started.elapsed()
    }
}

/// What the workload saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Reads that returned something other than the last acknowledged
    /// write (or a write whose outcome is unknown).
    stale: AtomicU64,
    /// Reads that found nothing where a write was acknowledged.
    lost: AtomicU64,
    /// The first few distinct error messages, for the report.
    messages: Mutex<Vec<String>>,
    first_error: Mutex<Option<Instant>>,
    last_error: Mutex<Option<Instant>>,
}

impl Tally {
    fn error_with(&self, e: &milena::client::ClientError) {
        let mut m = self.messages.lock().expect("tally");
        let s = e.to_string();
        if m.len() < 5 && !m.contains(&s) {
            m.push(s);
        }
        drop(m);
        self.error();
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.first_error.lock().expect("tally").get_or_insert(now);
        *self.last_error.lock().expect("tally") = Some(now);
    }

    fn error_window(&self) -> Duration {
        match (
            *self.first_error.lock().expect("tally"),
            *self.last_error.lock().expect("tally"),
        ) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        }
    }
}

/// One key's history as its single writer knows it.
#[derive(Default, Clone)]
struct KeyState {
    /// The last acknowledged (or observed) value and its sequence number.
    acked: Option<(u64, Vec<u8>)>,
    /// Values of later puts that failed: each may or may not have been
    /// applied (or may still be on its way).
    maybe: Vec<(u64, Vec<u8>)>,
}

impl KeyState {
    fn accepts(&self, v: &[u8]) -> bool {
        self.acked.as_ref().is_some_and(|(_, a)| a == v) || self.maybe.iter().any(|(_, m)| m == v)
    }

    fn acked(&mut self, seq: u64, v: Vec<u8>) {
        self.acked = Some((seq, v));
        self.maybe.clear();
    }

    /// A read saw `v`: a failed put did land; only later ones remain open.
    fn observed(&mut self, v: &[u8]) {
        if let Some(pos) = self.maybe.iter().position(|(_, m)| m == v) {
            let (seq, m) = self.maybe[pos].clone();
            self.maybe.retain(|(s, _)| *s > seq);
            self.acked = Some((seq, m));
        }
    }
}

/// Router connections that reconnect after errors. With several routers
/// (`url` a comma-separated list) each request goes to the next one, so
/// one key's writes and reads cross routers.
struct Conn {
    url: String,
    clients: Vec<Option<Client>>,
    turn: usize,
}

impl Conn {
    fn new(url: String) -> Self {
        let n = url.split(',').count();
        Conn {
            url,
            clients: (0..n).map(|_| None).collect(),
            turn: 0,
        }
    }

    async fn get(&mut self) -> Option<&Client> {
        self.turn = (self.turn + 1) % self.clients.len();
        let url = self.url.split(',').nth(self.turn)?.to_string();
        let slot = &mut self.clients[self.turn];
        if slot.is_none() {
            *slot = Client::connect(&url).await.ok();
        }
        slot.as_ref()
    }

    fn broken(&mut self, e: &milena::client::ClientError) {
        if e.status().is_none() {
            self.clients[self.turn] = None;
        }
    }
}

const WRITERS: usize = 16;
const KEYS_PER_WRITER: usize = 64;

/// The workload: each writer owns its keys, writes one, then reads four, and checks every read against what it was told.
fn workload(
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<Vec<KeyState>>> {
    workload_diag(url, stop, tally, Arc::default())
}

/// As [`workload`]; a read that finds nothing also asks each of `diag`
/// (node addresses) directly, for the report.
fn workload_diag(
    url: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    diag: Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<Vec<KeyState>>> {
    (0..WRITERS)
        .map(|w| {
            let (url, stop, tally, diag) = (url.clone(), stop.clone(), tally.clone(), diag.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(url);
                let mut keys = vec![KeyState::default(); KEYS_PER_WRITER];
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let i = (seq as usize * 7 + w) % KEYS_PER_WRITER;
                    let key = format!("w{w}-k{i}");
                    let value = format!("{key}-{seq}").into_bytes();
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = conn.get().await else {
                        tally.error();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match c.put(key.as_bytes(), &value, Some(0)).await {
                        Ok(()) => keys[i].acked(seq, value),
                        Err(e) => {
                            tally.error_with(&e);
                            keys[i].maybe.push((seq, value));
                            conn.broken(&e);
                            continue;
                        }
                    }
                    // Four reads per write: a cache's usual mix.
                    for r in 0..4 {
                        let j = (seq as usize * 13 + r * 17 + 3) % KEYS_PER_WRITER;
                        let key = format!("w{w}-k{j}");
                        tally.requests.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = conn.get().await else {
                            tally.error();
                            continue;
                        };
                        match c.get(key.as_bytes()).await {
                            Ok(Some(v)) if keys[j].accepts(&v) => keys[j].observed(&v),
                            Ok(Some(_)) => {
                                tally.stale.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(None) if keys[j].acked.is_some() => {
                                tally.lost.fetch_add(1, Ordering::Relaxed);
                                let mut where_ = Vec::new();
                                let addrs = diag.lock().expect("diag").clone();
                                for a in addrs.iter() {
                                    if let Some(root) = a.strip_prefix("s3:") {
                                        let name = milena::node::tier::layout::object_name("", key.as_bytes());
                                        where_.push(format!("s3 file exists: {}", std::path::Path::new(root).join(name).is_file()));
                                        continue;
                                    }
                                    if let Ok(nc) = Client::connect(&format!("http://{a}")).await {
                                        where_.push(format!("{a}={:?}", nc.get(key.as_bytes()).await.map(|v| v.map(|v| String::from_utf8_lossy(&v).to_string()))));
                                        let peek = nc.call(milena::protocol::Op::Peek { key: key.as_bytes() }).await.map(|r| r.status);
                                        let st = nc.stats().await.unwrap_or_default().into_iter().filter(|(n, _)| n.starts_with("handoff") || n == "tier_queue_depth").collect::<Vec<_>>();
                                        where_.push(format!("{a} peek={peek:?} {st:?}"));
                                    }
                                }
                                let again = c.get(key.as_bytes()).await;
                                let mut m = tally.messages.lock().expect("tally");
                                if m.len() < 5 {
                                    m.push(format!("{key}: not found after {:?}; nodes: {where_:?}; again: {again:?}", keys[j].acked.as_ref().map(|a| String::from_utf8_lossy(&a.1).to_string())));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tally.error_with(&e);
                                conn.broken(&e);
                            }
                        }
                    }
                }
                keys
            })
        })
        .collect()
}

/// Stops the workload and collects each writer's key histories.
async fn stop_writers(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<KeyState>>>,
) -> Vec<Vec<KeyState>> {
    stop.store(true, Ordering::Relaxed);
    let mut histories = Vec::new();
    for t in tasks {
        histories.push(t.await.expect("writer"));
    }
    histories
}

/// After the faults: every key reads back as its last acknowledged value.
async fn verify(cluster: &Cluster, histories: Vec<Vec<KeyState>>) -> (usize, usize, usize) {
    cluster.wait_members(cluster.nodes.len()).await;
    let c = Client::connect(&cluster.router_url())
        .await
        .expect("connect for verification");
    let (mut checked, mut lost, mut wrong) = (0, 0, 0);
    for (w, keys) in histories.into_iter().enumerate() {
        for (i, k) in keys.into_iter().enumerate() {
            if k.acked.is_none() && k.maybe.is_empty() {
                continue;
            }
            checked += 1;
            match c.get(format!("w{w}-k{i}").as_bytes()).await.expect("get") {
                Some(v) if k.accepts(&v) => {}
                Some(_) => wrong += 1,
                None if k.acked.is_some() => lost += 1,
                None => {}
            }
        }
    }
    (checked, lost, wrong)
}

async fn run_for(d: Duration) {
    // The workload runs meanwhile; this is how long the scenario lasts,
    // not a wait for anything to start.
    tokio::time::sleep(d).await;
}

/// Scenarios run one at a time: each is a whole cluster under load, and
/// on a small machine two at once would starve each other's heartbeats.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Scenario 1: `kill -9` of a node under load in sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_acknowledged_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("kill", 3, "sync").await;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1500)).await;
    let victim = cluster.nodes.remove(0);
    let killed = Instant::now();
    victim.signal("KILL").await;
    let noticed = cluster.wait_members(2).await;
    run_for(Duration::from_millis(1500)).await;
    let histories = stop_writers(&stop, tasks).await;
    // How long after the router noticed did clients still see errors
    // (the goal is none: requests in flight to the dead node are retried
    // on the next owner).
    let tail = tally
        .last_error
        .lock()
        .expect("tally")
        .map(|t| t.saturating_duration_since(killed + noticed));
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    println!(
        "kill -9: {} requests, {} errors in a {:?} window, router noticed after {:?} (heartbeat timeout {HEARTBEAT_TIMEOUT_MS} ms), last error {:?} after it noticed; {checked} keys checked: lost {lost}, wrong {wrong}, stale reads {}",
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.error_window(),
        noticed,
        tail,
        tally.stale.load(Ordering::Relaxed)
    );
    assert_eq!((lost, wrong), (0, 0));
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
}

/// Scenario 2: a node paused past the heartbeat timeout is ejected, its
/// keys are written elsewhere, and after it resumes and rejoins it never
/// serves what it held from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_ejected_rejoins_and_serves_nothing_stale() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("pause", 3, "sync").await;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1000)).await;
    let paused = &cluster.nodes[0];
    paused.signal("STOP").await;
    let ejected = cluster.wait_members(2).await;
    run_for(Duration::from_millis(1000)).await;
    paused.signal("CONT").await;
    let rejoined = cluster.wait_members(3).await;
    run_for(Duration::from_millis(1500)).await;
    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    println!(
        "SIGSTOP/SIGCONT: {} requests, {} errors in a {:?} window, ejected after {ejected:?}, back after {rejoined:?}; {checked} keys checked: lost {lost}, wrong {wrong}, stale reads {}",
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.error_window(),
        tally.stale.load(Ordering::Relaxed)
    );
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0, "stale reads");
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
    assert_eq!((lost, wrong), (0, 0));
    assert!(cluster.router.logged("node ejected from the ring") > 0);
    assert!(cluster.router.logged("node rejoined the ring") > 0);
}

/// Scenario 3: the router is killed and restarted on its port; the nodes
/// rejoin by themselves and clients reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_router_gets_its_nodes_back_without_help() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("router", 3, "sync").await;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1000)).await;
    let down = Instant::now();
    cluster.router.kill_and_wait().await;
    cluster.router = Cluster::router(cluster.router_port, None).await;
    let rejoined = cluster.wait_members(3).await;
    let recovered = down.elapsed();
    run_for(Duration::from_millis(1500)).await;
    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    let requests = tally.requests.load(Ordering::Relaxed);
    println!(
        "router restart: {requests} requests, {} errors in a {:?} window, all 3 nodes back {rejoined:?} after the new router listened ({recovered:?} after the kill); {checked} keys checked: lost {lost}, wrong {wrong}, stale reads {}",
        tally.errors.load(Ordering::Relaxed),
        tally.error_window(),
        tally.stale.load(Ordering::Relaxed)
    );
    assert_eq!((lost, wrong), (0, 0));
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
}

/// Scenario 5: a fourth node joins and one leaves (SIGTERM: leave, then
/// flush) while the workload runs: no client errors, no stale reads.
#[allow(non_snake_case)]
async fn join_and_leave(MODE: &'static str) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("joinleave", 3, MODE).await;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let diag: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        cluster.nodes.iter().map(|n| n.addr.clone()).collect(),
    ));
    diag.lock().expect("diag").push(format!(
        "s3:{}",
        cluster._dir.0.join("s3").join("cache").display()
    ));
    let tasks = workload_diag(
        cluster.router_url(),
        stop.clone(),
        tally.clone(),
        diag.clone(),
    );
    run_for(Duration::from_millis(1000)).await;
    let fourth = cluster.node().await;
    diag.lock().expect("diag").push(fourth.addr.clone());
    cluster.nodes.push(fourth);
    let joined = cluster.wait_members(4).await;
    run_for(Duration::from_millis(1000)).await;
    let leaving = cluster.nodes.remove(0);
    leaving.signal("TERM").await;
    let left = cluster.wait_members(3).await;
    let mut leaving = leaving;
    let status = leaving.child.wait().await.expect("exit");
    run_for(Duration::from_millis(1000)).await;
    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    println!(
        "join + leave ({MODE}): {} requests, {} errors, joined in {joined:?}, left in {left:?} (exit {status}); {checked} keys checked: lost {lost}, wrong {wrong}, stale reads {}",
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.stale.load(Ordering::Relaxed)
    );
    println!(
        "errors: {:?}; router: {} ejections, {} rejoins, {} joins",
        tally.messages.lock().expect("tally"),
        cluster.router.logged("node ejected"),
        cluster.router.logged("rejoined"),
        cluster.router.logged("node joined the ring")
    );
    assert!(status.success(), "the leaving node exits cleanly");
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
    assert_eq!((lost, wrong), (0, 0));
}

/// Scenario 5 in sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_under_load_cost_no_errors_in_sync_mode() {
    join_and_leave("sync").await;
}

/// Scenario 5 in async mode: writes still queued at the node that leaves
/// (or at a joining node's predecessor) are asked for, never bypassed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_under_load_cost_no_errors_in_async_mode() {
    join_and_leave("async").await;
}

/// Scenario 4: S3 unreachable for 30 s, then slow (200 ms per chunk),
/// then well, in async mode, with a node stopped gracefully during the
/// outage. Memory keeps serving, writes are accepted, nothing is lost: the
/// stopping node waits for S3 (answering its successors meanwhile) and
/// every acknowledged write is in S3 at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_loses_nothing_acknowledged() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start_with(
        "s3down",
        3,
        "async",
        true,
        vec![("FLUSH_TIMEOUT_SECONDS", "120".into())],
    )
    .await;
    let proxy = cluster.proxy.clone().expect("proxy");
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1500)).await;
    let before = tally.requests.load(Ordering::Relaxed);
    proxy.set_down(true);
    let outage = Instant::now();
    run_for(Duration::from_secs(10)).await;
    // A graceful stop in the middle of the outage.
    let mut stopping = cluster.nodes.remove(0);
    stopping.signal("TERM").await;
    cluster.wait_members(2).await;
    run_for(Duration::from_secs(20)).await;
    let during = tally.requests.load(Ordering::Relaxed) - before;
    proxy.set_delay(Duration::from_millis(200));
    proxy.set_down(false);
    let down_for = outage.elapsed();
    run_for(Duration::from_secs(5)).await;
    proxy.set_delay(Duration::ZERO);
    run_for(Duration::from_secs(1)).await;
    let histories = stop_writers(&stop, tasks).await;
    let stopped = stopping.child.wait().await.expect("exit");
    // Everything reads back through the cluster...
    let (checked, lost, wrong) = verify(&cluster, histories.clone()).await;
    // ...and, once the others have stopped too, from S3 alone.
    for n in &cluster.nodes {
        n.signal("TERM").await;
    }
    for n in &mut cluster.nodes {
        assert!(n.child.wait().await.expect("exit").success());
    }
    let tier = milena::node::tier::s3::S3Tier::connect(milena::node::tier::s3::S3Settings {
        bucket: "cache".into(),
        prefix: String::new(),
        endpoint: Some(cluster.s3.addr.clone()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("milena".into(), "milena-secret".into())),
    })
    .await;
    let (mut in_s3, mut missing) = (0, 0);
    for (w, keys) in histories.iter().enumerate() {
        for (i, k) in keys.iter().enumerate() {
            let Some((_, acked)) = &k.acked else { continue };
            match tier.get(format!("w{w}-k{i}").as_bytes(), 0).await {
                Ok(milena::node::tier::ReadOutcome::Found(o)) if k.accepts(&o.value) => in_s3 += 1,
                other => {
                    missing += 1;
                    if missing <= 3 {
                        println!(
                            "w{w}-k{i}: want {:?}, S3 has {other:?}",
                            String::from_utf8_lossy(acked)
                        );
                    }
                }
            }
        }
    }
    println!(
        "S3 down {down_for:?} then slow 5 s (async): {} requests ({during} during the outage), {} errors ({:?}), a node stopped mid-outage exited {stopped}; {checked} keys checked: lost {lost}, wrong {wrong}, stale reads {}; in S3 afterwards: {in_s3}, missing {missing}",
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.messages.lock().expect("tally"),
        tally.stale.load(Ordering::Relaxed)
    );
    assert!(during > 0, "memory kept serving during the outage");
    assert!(stopped.success());
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
    assert_eq!(tally.lost.load(Ordering::Relaxed), 0);
    assert_eq!((lost, wrong), (0, 0));
    assert_eq!(missing, 0, "acknowledged writes missing from S3");
}

/// Reads until the server closes the connection; how many bytes it sent.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return n,
            Ok(k) => n += k,
        }
    }
}

fn hello_frame() -> Vec<u8> {
    let mut f = Vec::new();
    milena::protocol::encode_request(
        &milena::protocol::Request {
            id: 1,
            op: milena::protocol::Op::Hello {
                magic: milena::protocol::MAGIC,
                version: milena::protocol::PROTOCOL_VERSION,
                token: None,
            },
        },
        &mut f,
    );
    f
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Scenario 7: bad clients against the router process while good ones
/// work: connections that never say hello, a slowloris hello, half-closed
/// sockets, a 1 GiB length prefix, a flood of invalid frames. Each is cut
/// off by a limit, counted in metrics, and the good clients see no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_cut_off_and_nobody_else_notices() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("badclients", 3, "async").await;
    let addr = format!("127.0.0.1:{}", cluster.router_port);
    let rss_before = rss_kib(&cluster.router.pid());
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());

    // 200 connections that never send a hello: closed by HELLO_TIMEOUT.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Slowloris: a valid hello, one byte every 100 ms.
    let slow_addr = addr.clone();
    let slowloris = tokio::spawn(async move {
        let mut s = TcpStream::connect(&slow_addr).await.expect("connect");
        let mut sent = 0;
        for b in hello_frame() {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (sent, read_to_close(&mut s).await)
    });
    // Half-closed: hello, then no more writes; the server answers and,
    // seeing the end of the stream, closes.
    let mut half = TcpStream::connect(&addr).await.expect("connect");
    half.write_all(&hello_frame()).await.expect("hello");
    half.shutdown().await.expect("half close");
    let half_answer = read_to_close(&mut half).await;
    // A 1 GiB length prefix after the hello: refused, never allocated.
    let mut huge = TcpStream::connect(&addr).await.expect("connect");
    huge.write_all(&hello_frame()).await.expect("hello");
    huge.write_all(&(1u32 << 30).to_be_bytes())
        .await
        .expect("prefix");
    let huge_answer = read_to_close(&mut huge).await;
    // A flood of invalid frames after the hello.
    let mut flood = TcpStream::connect(&addr).await.expect("connect");
    flood.write_all(&hello_frame()).await.expect("hello");
    let mut garbage = Vec::new();
    for i in 0..1000u32 {
        garbage.extend_from_slice(&16u32.to_be_bytes());
        garbage.extend_from_slice(&[(i % 251) as u8; 16]);
    }
    let _ = flood.write_all(&garbage).await;
    let flood_answer = read_to_close(&mut flood).await;
    // Every silent connection is closed by the server.
    for s in &mut silent {
        read_to_close(s).await;
    }
    let (slow_sent, _) = slowloris.await.expect("slowloris");
    let rss_after = rss_kib(&cluster.router.pid());

    run_for(Duration::from_millis(500)).await;
    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    let metrics = reqwest_metrics(&addr).await;
    let protocol_errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("milena_router_protocol_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "bad clients: 200 silent connections closed, slowloris cut after {slow_sent} of {} hello bytes, half-closed got {half_answer} bytes, 1 GiB prefix got {huge_answer} bytes, invalid-frame flood got {flood_answer} bytes; router RSS {rss_before} KiB -> {rss_after} KiB; protocol errors counted: {protocol_errors}; good clients: {} requests, {} errors; {checked} keys checked: lost {lost}, wrong {wrong}",
        hello_frame().len(),
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    assert!(slow_sent < hello_frame().len(), "the slowloris was cut off");
    assert!(
        half_answer > 0,
        "the half-closed client got its hello answer"
    );
    assert!(huge_answer > 0, "the oversized frame got an error answer");
    assert!(flood_answer > 0, "the flood got an error answer");
    assert!(rss_after < rss_before + 256 * 1024, "no 1 GiB allocation");
    assert!(protocol_errors >= 2.0, "bad frames are counted");
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
    assert_eq!((lost, wrong), (0, 0));
}

/// The router's `/metrics` page.
async fn reqwest_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// Raises this process's open-file limit to its hard limit.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Scenario 6: 10,000 client connections held open against the router
/// process at once, each served (hello, then a ping); memory per idle
/// connection reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_are_all_served() {
    use milena::protocol::{Op, Request, encode_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _one = ONE_AT_A_TIME.lock().await;
    const CONNS: usize = 10_000;
    let limit = raise_fd_limit();
    if limit < CONNS as u64 + 1000 {
        // This process and the router (which inherits the limit) each
        // need a descriptor per connection.
        panic!(
            "the open-file limit ({limit}) is too low for {CONNS} connections; raise it (ulimit -n)"
        );
    }
    let port = free_port();
    let router = Proc::start(
        std::path::Path::new(ROUTER),
        &[],
        &[
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("MAX_CONNECTIONS", (CONNS + 100).to_string()),
            ("RATE_LIMIT", "0".into()),
        ],
    )
    .await;
    let rss_before = rss_kib(&router.pid());
    let addr = format!("127.0.0.1:{port}");
    let hello = hello_frame();
    let mut ping = Vec::new();
    encode_request(
        &Request {
            id: 2,
            op: Op::Ping,
        },
        &mut ping,
    );
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(&hello).await.expect("hello");
        conns.push(s);
    }
    // All open at once; now each must answer its hello and a ping.
    let mut served = 0;
    let mut buf = vec![0u8; 256];
    for s in &mut conns {
        s.write_all(&ping).await.expect("ping");
        let mut got = 0;
        let mut frames = 0;
        while frames < 2 {
            let n = s.read(&mut buf[got..]).await.expect("read");
            assert!(n > 0, "connection closed");
            got += n;
            // Count complete frames (4-byte big-endian length prefix).
            frames = 0;
            let mut at = 0;
            while at + 4 <= got {
                let len =
                    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                if at + 4 + len > got {
                    break;
                }
                at += 4 + len;
                frames += 1;
            }
        }
        served += 1;
    }
    let rss_after = rss_kib(&router.pid());
    let per_conn = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / CONNS as f64;
    println!(
        "{CONNS} connections held open: {served} served (hello + ping each); router RSS {rss_before} KiB -> {rss_after} KiB, {per_conn:.0} B per idle connection"
    );
    assert_eq!(served, CONNS);
    drop(conns);
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What a quiet cluster holds: the router's client connections and tasks,
/// the nodes' (summed) connections and tasks, and each process's open
/// files. Read through the router's stats, which gathers the nodes'.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    router_connections: u64,
    router_tasks: u64,
    node_connections: u64,
    node_tasks: u64,
    fds: Vec<usize>,
    /// Writes still queued for S3 (not a leak, but it explains tasks).
    queued: u64,
}

async fn held(cluster: &Cluster) -> Held {
    let c = Client::connect(&cluster.router_url())
        .await
        .expect("connect for stats");
    let stats = c.stats().await.expect("stats");
    drop(c);
    // A node missing from the sums would hide its leaks.
    let reporting = stats.iter().find(|(k, _)| k == "nodes_reporting");
    assert_eq!(
        reporting.map(|(_, v)| *v),
        Some(cluster.nodes.len() as u64),
        "every node answered the stats call"
    );
    let get = |n: &str| {
        stats
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no stat {n}"))
    };
    Held {
        // The stats connection itself is open while it asks.
        router_connections: get("connections") - 1,
        router_tasks: get("tasks"),
        node_connections: get("nodes_connections"),
        node_tasks: get("nodes_tasks"),
        queued: get("nodes_tier_queue_depth"),
        fds: std::iter::once(&cluster.router)
            .chain(&cluster.nodes)
            .map(|p| open_fds(&p.pid()))
            .collect(),
    }
}

/// Polls until the cluster holds no more than `idle` (plus `slack` tasks
/// and files for work that legitimately comes and goes: a heartbeat in
/// flight, a pooled connection being replaced), or five minutes have
/// passed; returns the last reading. The nodes' S3 client keeps the
/// connections a burst of misses opened (a task and a file each) until its
/// pool's idle timeout: seen to take up to three minutes after the load.
async fn settle(cluster: &Cluster, idle: &Held, slack: u64) -> Held {
    let mut now = held(cluster).await;
    for i in 0..3000 {
        let quiet = now.router_connections <= idle.router_connections
            && now.router_tasks <= idle.router_tasks + slack
            && now.node_connections <= idle.node_connections + slack
            && now.node_tasks <= idle.node_tasks + slack
            && now
                .fds
                .iter()
                .zip(&idle.fds)
                .all(|(n, i)| *n as u64 <= *i as u64 + slack);
        if quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = held(cluster).await;
        if i % 50 == 49 {
            println!("settling: {now:?}");
        }
    }
    now
}

/// Scenario 8, the soak (not in CI; about 10 minutes):
///
/// `SOAK_SECONDS=600 cargo test --test chaos soak -- --ignored --nocapture`
///
/// Mixed load for `SOAK_SECONDS` (default 600) in async mode: the 16
/// checking writers, plus connection churn (a new client per few
/// requests) and metrics scrapes. The first fifth is
/// warm-up; from the start of the rest to its end, no process's RSS may
/// grow by more than 5% (each end the mean of a tenth of the samples). After
/// the load, connections, tasks and open files return to their idle
/// levels, and every acknowledged write reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10-minute soak, run by hand: see docs/reliability.md"]
async fn soak_keeps_memory_connections_and_tasks_flat() {
    let _one = ONE_AT_A_TIME.lock().await;
    let total = Duration::from_secs(
        std::env::var("SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let warm_up = total / 5;
    let sample_every = (total / 60).max(Duration::from_secs(1));
    let cluster = Cluster::start("soak", 3, "async").await;
    let addr = format!("127.0.0.1:{}", cluster.router_port);

    // For a minute after the nodes joined, routers name previous owners
    // and the nodes open (and keep, up to MAX_PEERS) connections to each
    // other to ask them: a bounded cache, not a leak, but it would grow
    // after the idle level is taken. Wait the window out first.
    tokio::time::sleep(milena::router::members::HANDOFF_WINDOW + Duration::from_secs(1)).await;
    // Prime the router's pooled connections to every node, then take the
    // idle levels.
    let prime = Client::connect(&cluster.router_url())
        .await
        .expect("connect");
    for i in 0..300 {
        let key = format!("prime-{i}");
        prime
            .put(key.as_bytes(), b"x", Some(0))
            .await
            .expect("prime put");
        prime.get(key.as_bytes()).await.expect("prime get");
    }
    drop(prime);
    // Idle: the router's only client connections are the nodes' own
    // (the priming client's close is seen asynchronously).
    let mut idle = held(&cluster).await;
    for _ in 0..600 {
        if idle.router_connections == cluster.nodes.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        idle = held(&cluster).await;
    }
    assert_eq!(
        idle.router_connections,
        cluster.nodes.len() as u64,
        "{idle:?}"
    );
    println!("idle before: {idle:?}");

    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    // Churn: short-lived clients and metrics scrapes.
    let churn = {
        let (stop, url, addr) = (stop.clone(), cluster.router_url(), addr.clone());
        tokio::spawn(async move {
            let (mut clients, mut scrapes, mut errors) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match Client::connect(&url).await {
                    Ok(c) => {
                        clients += 1;
                        for i in 0..4 {
                            let key = format!("churn-{}", (clients + i) % 512);
                            if c.put(key.as_bytes(), b"churn", Some(60)).await.is_err()
                                || c.get(key.as_bytes()).await.is_err()
                            {
                                errors += 1;
                            }
                        }
                    }
                    Err(_) => errors += 1,
                }
                if clients.is_multiple_of(20) {
                    let page = reqwest_metrics(&addr).await;
                    if !page.contains("milena_router_requests_total") {
                        errors += 1;
                    }
                    scrapes += 1;
                }
            }
            (clients, scrapes, errors)
        })
    };

    let procs: Vec<(&str, String)> = std::iter::once(("router", cluster.router.pid()))
        .chain(cluster.nodes.iter().map(|n| ("node", n.pid())))
        .collect();
    let started = Instant::now();
    // (seconds, RSS of each process) after the warm-up.
    let mut steady: Vec<(u64, Vec<u64>)> = Vec::new();
    while started.elapsed() < total {
        run_for(sample_every).await;
        let rss: Vec<u64> = procs.iter().map(|(_, pid)| rss_kib(pid)).collect();
        let t = started.elapsed().as_secs();
        println!(
            "t={t:>4}s rss KiB {rss:?} requests {}",
            tally.requests.load(Ordering::Relaxed)
        );
        if started.elapsed() >= warm_up {
            steady.push((t, rss));
        }
    }
    let histories = stop_writers(&stop, tasks).await;
    let (clients, scrapes, churn_errors) = churn.await.expect("churn");
    let after = settle(&cluster, &idle, 4).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    // Growth from the start of the steady state to its end, each the
    // mean of a tenth of the samples so that allocator jitter (a few
    // hundred KiB either way) does not count as a trend.
    assert!(steady.len() >= 2, "ran past the warm-up");
    let tenth = (steady.len() / 10).max(1);
    let mean = |samples: &[(u64, Vec<u64>)], p: usize| {
        samples.iter().map(|(_, r)| r[p]).sum::<u64>() / samples.len() as u64
    };
    let baseline: Vec<u64> = (0..procs.len())
        .map(|p| mean(&steady[..tenth], p))
        .collect();
    let end: Vec<u64> = (0..procs.len())
        .map(|p| mean(&steady[steady.len() - tenth..], p))
        .collect();
    let peak: Vec<u64> = (0..procs.len())
        .map(|p| steady.iter().map(|(_, r)| r[p]).max().unwrap_or(0))
        .collect();
    let growth: Vec<f64> = end
        .iter()
        .zip(&baseline)
        .map(|(e, b)| (*e as f64 / *b as f64 - 1.0) * 100.0)
        .collect();
    println!(
        "soak {}s: {} requests, {} errors, {} stale; {clients} short-lived clients, {scrapes} scrapes, {churn_errors} churn errors; RSS (KiB) router + 3 nodes after warm-up {baseline:?}, at the end {end:?}, peak {peak:?}, growth % {growth:.1?}; idle before {idle:?}, after {after:?}; {checked} keys checked: lost {lost}, wrong {wrong}",
        total.as_secs(),
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.stale.load(Ordering::Relaxed),
    );
    for ((name, _), g) in procs.iter().zip(&growth) {
        assert!(*g <= 5.0, "{name} RSS grew {g:.1}% after warm-up");
    }
    assert!(
        after.router_connections <= idle.router_connections,
        "router connections leaked: {idle:?} -> {after:?}"
    );
    assert!(
        after.router_tasks <= idle.router_tasks + 4 && after.node_tasks <= idle.node_tasks + 4,
        "tasks leaked: {idle:?} -> {after:?}"
    );
    assert!(
        after.node_connections <= idle.node_connections + 4,
        "node connections leaked: {idle:?} -> {after:?}"
    );
    for (a, i) in after.fds.iter().zip(&idle.fds) {
        assert!(*a <= *i + 4, "open files leaked: {idle:?} -> {after:?}");
    }
    assert_eq!(tally.stale.load(Ordering::Relaxed), 0);
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(
        churn_errors, 0,
        "short-lived clients and scrapes all served"
    );
    assert_eq!((lost, wrong), (0, 0));
}

/// Scenario 10 (issue 16): async mode with a second copy of every write
/// not yet in S3 (`WRITE_REPLICAS=1`), four nodes under load. S3 is
/// unreachable for about 20 s; in the middle of the outage a node is killed
/// with `kill -9` (its queue holds acknowledged writes S3 never got), then
/// another is paused past the heartbeat timeout and resumed. No
/// acknowledged write may be lost, no read may go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writes_survive_a_killed_node_with_s3_down() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start_with(
        "copies",
        4,
        "async",
        true,
        vec![
            ("WRITE_REPLICAS", "1".into()),
            ("FLUSH_TIMEOUT_SECONDS", "60".into()),
        ],
    )
    .await;
    let proxy = cluster.proxy.clone().expect("proxy");
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_url(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1500)).await;
    proxy.set_down(true);
    let outage = Instant::now();
    run_for(Duration::from_secs(5)).await;
    let killed = cluster.nodes.remove(0);
    killed.signal("KILL").await;
    cluster.wait_members(3).await;
    run_for(Duration::from_secs(5)).await;
    cluster.nodes[0].signal("STOP").await;
    cluster.wait_members(2).await;
    run_for(Duration::from_millis(1000)).await;
    cluster.nodes[0].signal("CONT").await;
    cluster.wait_members(3).await;
    let left = Duration::from_secs(20).saturating_sub(outage.elapsed());
    run_for(left).await;
    proxy.set_down(false);
    let down_for = outage.elapsed();
    run_for(Duration::from_secs(2)).await;
    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    let (requests, stale, lost_reads) = (
        tally.requests.load(Ordering::Relaxed),
        tally.stale.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
    );
    println!(
        "copies (async, WRITE_REPLICAS=1), S3 down {down_for:?} around a kill -9 and a pause: {requests} requests, {} errors, stale reads {stale}, reads missing an acknowledged write {lost_reads}; {checked} keys checked: lost {lost}, wrong {wrong}",
        tally.errors.load(Ordering::Relaxed),
    );
    assert_eq!(stale, 0, "stale reads");
    assert_eq!(lost_reads, 0, "reads that missed an acknowledged write");
    assert_eq!((lost, wrong), (0, 0));
}

/// Scenario 9 (issue 15): three routers and a real etcd, three nodes,
/// every request to the next router, while a node is killed with
/// `kill -9` and replaced, a node is paused past its lease and resumed, a
/// node leaves (operator's leave through a router, then SIGTERM), a router
/// is killed with `kill -9` and restarted, and etcd itself is restarted.
#[allow(non_snake_case)]
async fn three_routers_in_etcd(MODE: &'static str) -> (u64, u64, u64, usize, usize, usize) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start_in_etcd(&format!("etcd-{MODE}"), 3, MODE, 3).await;
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = workload(cluster.router_urls(), stop.clone(), tally.clone());
    run_for(Duration::from_millis(1500)).await;

    // kill -9: every router routes around it once its lease lapses.
    let killed = cluster.nodes.remove(0);
    killed.signal("KILL").await;
    let t = Instant::now();
    cluster.wait_members(2).await;
    let kill_to_gone = t.elapsed();
    run_for(Duration::from_millis(800)).await;
    let t = Instant::now();
    let n = cluster.node().await;
    cluster.nodes.push(n);
    cluster.wait_members(3).await;
    let join_to_routed = t.elapsed();
    run_for(Duration::from_millis(800)).await;

    // SIGSTOP past the lease, then SIGCONT: it registers again.
    cluster.nodes[0].signal("STOP").await;
    cluster.wait_members(2).await;
    run_for(Duration::from_millis(500)).await;
    cluster.nodes[0].signal("CONT").await;
    cluster.wait_members(3).await;
    run_for(Duration::from_millis(800)).await;

    // An operator's leave through the third router, then a graceful stop.
    let leaving = cluster.nodes.remove(1);
    let via = cluster
        .router_urls()
        .split(',')
        .nth(2)
        .expect("third router")
        .to_string();
    Client::connect(&via)
        .await
        .expect("router")
        .leave(&format!("http://{}", leaving.addr))
        .await
        .expect("leave");
    cluster.wait_members(2).await;
    leaving.signal("TERM").await;
    let n = cluster.node().await;
    cluster.nodes.push(n);
    cluster.wait_members(3).await;
    run_for(Duration::from_millis(800)).await;

    // A router killed and restarted on its port: it reads the ring back.
    let (mut r, port) = cluster.more_routers.remove(0);
    r.kill_and_wait().await;
    run_for(Duration::from_millis(300)).await;
    let etcd_url = cluster.etcd.as_ref().map(|e| e.endpoint());
    let r = Cluster::router(port, etcd_url.as_deref()).await;
    cluster.more_routers.insert(0, (r, port));
    cluster.wait_members(3).await;
    run_for(Duration::from_millis(800)).await;

    // etcd restarted (SIGKILL): leases survive, routers follow again.
    cluster.etcd.as_mut().expect("etcd").restart();
    run_for(Duration::from_millis(2000)).await;
    cluster.wait_members(3).await;

    let histories = stop_writers(&stop, tasks).await;
    let (checked, lost, wrong) = verify(&cluster, histories).await;
    let (requests, errors, stale) = (
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.stale.load(Ordering::Relaxed),
    );
    println!(
        "three routers in etcd ({MODE}): {requests} requests, {errors} errors, stale reads {stale}, lost reads {}; kill -9 to out of every ring {kill_to_gone:?}, join to routed by every router {join_to_routed:?}; {checked} keys checked: lost {lost}, wrong {wrong}",
        tally.lost.load(Ordering::Relaxed),
    );
    (
        requests,
        stale,
        tally.lost.load(Ordering::Relaxed),
        checked,
        lost,
        wrong,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_in_etcd_sync_lose_nothing_and_read_nothing_stale() {
    let (requests, stale, lost_reads, _, lost, wrong) = three_routers_in_etcd("sync").await;
    assert!(requests > 0);
    assert_eq!(stale, 0, "stale reads");
    assert_eq!(lost_reads, 0, "reads that missed an acknowledged write");
    assert_eq!((lost, wrong), (0, 0));
}

/// Async mode: a write acknowledged from a killed or paused node's queue
/// and not yet in S3 is the documented async window (issue 16); measured,
/// not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "async with several routers: measured by hand (the async window is issue 16's)"]
async fn three_routers_in_etcd_async() {
    three_routers_in_etcd("async").await;
}
