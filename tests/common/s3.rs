//! A real S3-compatible server for the tests (`s3s-fs` over real HTTP on
//! a loopback port, signatures checked), and a fault-injecting TCP proxy
//! to put between nodes and it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use milena::node::tier::s3::{S3Settings, S3Tier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Access key the test server accepts.
pub const ACCESS_KEY: &str = "milena-test";
/// Its secret.
pub const SECRET_KEY: &str = "milena-test-secret";
/// The bucket every test server has.
pub const BUCKET: &str = "cache";

/// An `s3s-fs` server in its own thread and runtime, so it outlives any
/// node a test kills.
pub struct S3Server {
    pub addr: SocketAddr,
    /// Its file-system root (the bucket is a directory under it).
    pub root: PathBuf,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`].
    pub fn start(name: &str) -> S3Server {
        let root = std::env::temp_dir().join(format!("milena-s3-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs");
        let fs = Serialized::new(fs);
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let stop = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind s3");
                let _ = tx.send(listener.local_addr().expect("addr"));
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        r = listener.accept() => match r {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                        _ = token.cancelled() => break,
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        let addr = rx.recv().expect("s3 server started");
        S3Server {
            addr,
            root,
            stop,
            thread: Some(thread),
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tier settings that reach this server at `endpoint` (itself, or a
    /// proxy in front of it).
    pub fn settings_via(&self, endpoint: &str) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            prefix: "milena".into(),
            endpoint: Some(endpoint.into()),
            region: Some("us-east-1".into()),
            static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        }
    }

    /// Tier settings that reach this server directly.
    pub fn settings(&self) -> S3Settings {
        self.settings_via(&self.endpoint())
    }

    /// A tier client of this server, for checking what it holds.
    pub async fn tier(&self) -> S3Tier {
        S3Tier::connect(self.settings()).await
    }

    /// Objects in the bucket (files other than s3s-fs's own sidecars).
    pub fn object_count(&self) -> usize {
        fn walk(dir: &std::path::Path, n: &mut usize) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().to_string();
                if p.is_dir() {
                    walk(&p, n);
                } else if !name.starts_with('.') {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&self.root.join(BUCKET), &mut n);
        n
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

include!("../../examples/support/s3_atomic.rs");

/// A TCP proxy that can refuse service (S3 "down": live connections cut,
/// new ones closed at once) or add latency to every chunk it forwards.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    cut: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Starts forwarding a loopback port to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let p = FaultProxy {
            addr: listener.local_addr().expect("addr"),
            down: Arc::new(AtomicBool::new(false)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            cut: Arc::new(watch::channel(0).0),
            stop: CancellationToken::new(),
        };
        let me = p.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = me.stop.cancelled() => return,
                };
                if me.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(me.clone().forward(client, target));
            }
        });
        p
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection and refuses new ones (`true`), or serves again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|g| *g += 1);
        }
    }

    /// Stops accepting and cuts every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Delays every forwarded chunk by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    async fn forward(self, client: TcpStream, target: SocketAddr) {
        let Ok(upstream) = TcpStream::connect(target).await else {
            return;
        };
        let mut cut = self.cut.subscribe();
        let (cr, cw) = client.into_split();
        let (ur, uw) = upstream.into_split();
        tokio::select! {
            _ = pipe(cr, uw, self.delay_ms.clone()) => {}
            _ = pipe(ur, cw, self.delay_ms.clone()) => {}
            _ = cut.changed() => {}
            _ = self.stop.cancelled() => {}
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
