//! Async client for routers and nodes: one connection, pipelined.
//!
//! Any number of tasks may call one `Client` at once. Requests are written
//! by a writer task that coalesces whatever is queued into one `write`;
//! responses are matched to callers by id, so they may arrive in any order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
/// The condition of [`Client::put_if`].
pub use milena_protocol::Cond;
use milena_protocol::{
    Body, DEFAULT_MAX_FRAME, FrameCodec, MAGIC, Op, PROTOCOL_VERSION, Request, Response, Status,
    decode_response, encode_request, peek_id,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::net;
use crate::tls::Stream;

/// Requests queued for the writer before callers wait for room.
const QUEUE: usize = 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address could not be parsed or resolved.
    #[error("invalid address: {0}")]
    Address(String),
    /// Connecting or talking to the server failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection is gone; the request may or may not have been executed.
    #[error("connection closed")]
    Closed,
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server sent something that is not a valid response.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error status.
    #[error("{}", server_message(*.status, .message))]
    Server {
        /// The status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
}

/// `status: message`, without saying the status twice when the server's
/// message already starts with it (`unavailable: no cache node ...`).
fn server_message(status: Status, message: &str) -> String {
    if message
        .strip_prefix(status.as_str())
        .is_some_and(|rest| rest.starts_with(':'))
    {
        message.to_string()
    } else {
        format!("{status}: {message}")
    }
}

impl ClientError {
    /// The server's status, if the server answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request may have taken effect although it failed: the
    /// connection broke or timed out with it in flight, or the server said
    /// so (`Internal`: a node failed holding it, a sync write never became
    /// durable). Puts and deletes are idempotent, so sending them again is
    /// harmless; a caller that must know reads the key first.
    pub fn maybe_applied(&self) -> bool {
        match self {
            ClientError::Closed | ClientError::Timeout(_) | ClientError::Io(_) => true,
            ClientError::Server { status, .. } => *status == Status::Internal,
            ClientError::Address(_) | ClientError::Protocol(_) => false,
        }
    }

    /// Whether the server refused the request without applying it, for a
    /// reason that may pass (`Unavailable`, `RateLimited`): the same request
    /// can be sent again later as it is.
    pub fn retry_is_safe(&self) -> bool {
        matches!(
            self.status(),
            Some(Status::Unavailable | Status::RateLimited)
        )
    }
}

/// Connection options.
#[derive(Clone)]
pub struct ClientOptions {
    /// Token sent in the hello (`CLUSTER_TOKEN`).
    pub token: Option<String>,
    /// Largest response frame accepted.
    pub max_frame: usize,
    /// Limit on connecting plus the hello exchange.
    pub connect_timeout: Duration,
    /// Limit on each call; `None` waits as long as the connection lives.
    pub request_timeout: Option<Duration>,
    /// TLS client configuration, used for `https://` addresses.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("max_frame", &self.max_frame)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(30)),
            tls: None,
        }
    }
}

/// A raw answer: its status and the frame it came in, to decode on demand.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response status.
    pub status: Status,
    frame: Bytes,
}

impl Reply {
    fn new(frame: Bytes) -> Result<Self, ClientError> {
        let status = decode_response(&frame)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .status;
        Ok(Reply { status, frame })
    }

    /// The decoded response, borrowing from the frame.
    pub fn response(&self) -> Response<'_> {
        // Decoded successfully in `new`, and the frame is immutable.
        match decode_response(&self.frame) {
            Ok(r) => r,
            Err(_) => Response {
                id: 0,
                status: Status::Internal,
                body: Body::Empty,
            },
        }
    }

    /// The value in a `Value` body, sharing the frame's memory.
    pub fn value(&self) -> Option<Bytes> {
        match self.response().body {
            Body::Value(v) => Some(self.frame.slice_ref(v)),
            _ => None,
        }
    }

    /// `Ok(self)` for `Ok`/`NotFound`, the server's error otherwise.
    pub fn into_result(self) -> Result<Self, ClientError> {
        match self.status {
            Status::Ok | Status::NotFound | Status::NotStored => Ok(self),
            status => {
                let message = match self.response().body {
                    Body::Message(m) => m.to_string(),
                    _ => String::new(),
                };
                Err(ClientError::Server { status, message })
            }
        }
    }
}

/// Connects to `addr` (`http://host:port`, `https://…` or `host:port`)
/// within the options' connect timeout and exchanges the hello. Returns
/// the stream, any bytes read past the hello's answer, and what the server
/// said it is.
pub async fn open(
    addr: &str,
    opts: &ClientOptions,
) -> Result<(Stream, BytesMut, String), ClientError> {
    let (hostport, tls) = net::parse_url(addr).map_err(ClientError::Address)?;
    let tls = match (tls, &opts.tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config.clone()),
        (true, None) => {
            return Err(ClientError::Address(format!(
                "'{addr}' asks for TLS: give the CA that signed the server's certificate (TLS_CA)"
            )));
        }
    };
    let limit = opts.connect_timeout;
    tokio::time::timeout(limit, async {
        let stream = connect_stream(&hostport, tls).await?;
        hello(stream, opts.token.as_deref(), opts.max_frame).await
    })
    .await
    .map_err(|_| ClientError::Timeout(limit))?
}

/// Opens a Milena session on a connected stream: sends the hello and reads
/// the answer. Returns the stream, any bytes read past the answer, and what
/// the server said it is.
pub async fn hello(
    mut stream: Stream,
    token: Option<&str>,
    max_frame: usize,
) -> Result<(Stream, BytesMut, String), ClientError> {
    let mut out = Vec::new();
    encode_request(
        &Request {
            id: 0,
            op: Op::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                token,
            },
        },
        &mut out,
    );
    stream.write_all(&out).await?;
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let frame = loop {
        if let Some(f) = codec
            .decode_frame(&mut buf)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            break f.freeze();
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    };
    let reply = Reply::new(frame)?.into_result()?;
    let server = match reply.response().body {
        Body::Hello { server, .. } => server.to_string(),
        _ => {
            return Err(ClientError::Protocol(
                "hello answered without a hello".into(),
            ));
        }
    };
    Ok((stream, buf, server))
}

/// Connects to `host:port`, over TLS when `tls` is given (the host name
/// is what the server's certificate must name).
pub async fn connect_stream(
    hostport: &str,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
) -> Result<Stream, ClientError> {
    let tcp = TcpStream::connect(hostport).await?;
    net::tune(&tcp);
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(config) => {
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            Ok(crate::tls::connect(config, host, tcp).await?)
        }
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, ClientError>>>>>;

struct Outgoing {
    frame: Vec<u8>,
    id: u64,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

/// A pipelined connection to a Milena router or node. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Outgoing>,
    waiters: Waiters,
    next_id: Arc<AtomicU64>,
    request_timeout: Option<Duration>,
    server: Arc<str>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish()
    }
}

impl Client {
    /// Connects to `addr` (`http://host:port` or `host:port`) with default options.
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects to `addr` and exchanges the hello.
    pub async fn connect_with(addr: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let (stream, buf, server) = open(addr, &opts).await?;
        Ok(Self::over(stream, buf, server, &opts))
    }

    fn over(stream: Stream, buf: BytesMut, server: String, opts: &ClientOptions) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        let codec = FrameCodec::new(opts.max_frame);
        let waiters: Waiters = Arc::default();
        let (tx, rx) = mpsc::channel(QUEUE);
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(wr, rx, waiters.clone(), closed.clone()));
        tokio::spawn(read_loop(rd, buf, codec, waiters.clone(), closed));
        Client {
            tx,
            waiters,
            next_id: Arc::new(AtomicU64::new(1)),
            request_timeout: opts.request_timeout,
            server: server.into(),
        }
    }

    /// What the server said it is in its hello, e.g. `node milena/0.1.0`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `op` and waits for its answer, whatever its status.
    pub async fn call(&self, op: Op<'_>) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_request(&Request { id, op }, &mut frame);
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx
                .send(Outgoing { frame, id, reply })
                .await
                .map_err(|_| ClientError::Closed)?;
            rx.await.map_err(|_| ClientError::Closed)?
        };
        let frame = match self.request_timeout {
            Some(t) => match tokio::time::timeout(t, exchange).await {
                Ok(r) => r?,
                Err(_) => {
                    // Nobody will wait for this answer any more.
                    lock(&self.waiters).remove(&id);
                    return Err(ClientError::Timeout(t));
                }
            },
            None => exchange.await?,
        };
        Reply::new(frame)
    }

    /// The value of `key`, or `None` if it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>, ClientError> {
        let reply = self.call(Op::Get { key }).await?.into_result()?;
        match reply.status {
            Status::NotFound => Ok(None),
            _ => reply
                .value()
                .map(Some)
                .ok_or_else(|| ClientError::Protocol("get answered without a value".into())),
        }
    }

    /// Stores `key` = `value`; `ttl` in seconds (`None`: the server default, `Some(0)`: never expire).
    pub async fn put(&self, key: &[u8], value: &[u8], ttl: Option<u32>) -> Result<(), ClientError> {
        self.call(Op::Put { key, value, ttl })
            .await?
            .into_result()?;
        Ok(())
    }

    /// Stores `key` = `value` only if the key does not exist
    /// (`Cond::Absent`) or does (`Cond::Present`); returns whether it was
    /// written. The key's owner decides atomically.
    pub async fn put_if(
        &self,
        cond: Cond,
        key: &[u8],
        value: &[u8],
        ttl: Option<u32>,
    ) -> Result<bool, ClientError> {
        let op = Op::PutIf {
            cond,
            key,
            value,
            ttl,
        };
        let reply = self.call(op).await?.into_result()?;
        match reply.status {
            Status::Ok => Ok(true),
            Status::NotStored => Ok(false),
            status => Err(ClientError::Server {
                status,
                message: "unexpected answer to a conditional put".into(),
            }),
        }
    }

    /// How long `key` has left to live: `None` when it does not exist,
    /// `Some(None)` when it never expires, else `Some(Some(left))`
    /// (expiries are whole seconds, so up to a second over the TTL set).
    pub async fn ttl(&self, key: &[u8]) -> Result<Option<Option<Duration>>, ClientError> {
        let reply = self.call(Op::Ttl { key }).await?.into_result()?;
        if reply.status == Status::NotFound {
            return Ok(None);
        }
        match reply.response().body {
            Body::Remaining { millis } => Ok(Some(millis.map(Duration::from_millis))),
            _ => Err(ClientError::Protocol(
                "ttl answered without the time remaining".into(),
            )),
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let reply = self.call(Op::Delete { key }).await?.into_result()?;
        Ok(reply.status == Status::Ok)
    }

    /// Checks the server is alive.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call(Op::Ping).await?.into_result()?;
        Ok(())
    }

    /// A router's ring: its epoch and member addresses.
    pub async fn members(&self) -> Result<(u64, Vec<String>), ClientError> {
        let reply = self.call(Op::Members).await?.into_result()?;
        ring_of(&reply)
    }

    /// Asks a router to add the node at `address` to its ring; returns the new ring.
    pub async fn join(&self, address: &str) -> Result<(u64, Vec<String>), ClientError> {
        let reply = self.call(Op::Join { address }).await?.into_result()?;
        ring_of(&reply)
    }

    /// Tells a router the node at `address` is alive; returns the ring.
    pub async fn heartbeat(&self, address: &str) -> Result<(u64, Vec<String>), ClientError> {
        let reply = self.call(Op::Heartbeat { address }).await?.into_result()?;
        ring_of(&reply)
    }

    /// Asks a router to remove the node at `address` from its ring.
    pub async fn leave(&self, address: &str) -> Result<(), ClientError> {
        self.call(Op::Leave { address }).await?.into_result()?;
        Ok(())
    }

    /// The server's counters, by name.
    pub async fn stats(&self) -> Result<Vec<(String, u64)>, ClientError> {
        let reply = self.call(Op::Stats).await?.into_result()?;
        match reply.response().body {
            Body::Stats(s) => Ok(s.iter().map(|s| (s.name.to_string(), s.value)).collect()),
            _ => Err(ClientError::Protocol("stats answered without stats".into())),
        }
    }
}

fn ring_of(reply: &Reply) -> Result<(u64, Vec<String>), ClientError> {
    match reply.response().body {
        Body::Members { epoch, addresses } => {
            Ok((epoch, addresses.iter().map(|a| a.to_string()).collect()))
        }
        _ => Err(ClientError::Protocol(
            "expected the ring in the answer".into(),
        )),
    }
}

async fn write_loop(
    mut wr: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Outgoing>,
    waiters: Waiters,
    closed: CancellationToken,
) {
    let mut batch = Vec::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            biased;
            _ = closed.cancelled() => break,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        let mut next = Some(first);
        // Coalesce whatever else is already queued into the same write.
        while let Some(o) = next {
            batch.extend_from_slice(&o.frame);
            lock(&waiters).insert(o.id, o.reply);
            next = if batch.len() < 256 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // The reader may have died while we queued: nobody would answer.
        if closed.is_cancelled() || wr.write_all(&batch).await.is_err() {
            break;
        }
        batch.clear();
    }
    closed.cancel();
    fail_all(&waiters);
}

async fn read_loop(
    mut rd: ReadHalf<Stream>,
    mut buf: BytesMut,
    mut codec: FrameCodec,
    waiters: Waiters,
    closed: CancellationToken,
) {
    'conn: loop {
        loop {
            match codec.decode_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let frame = frame.freeze();
                    let Some(id) = peek_id(&frame) else {
                        break 'conn;
                    };
                    if let Some(w) = lock(&waiters).remove(&id) {
                        let _ = w.send(Ok(frame));
                    }
                }
                Ok(None) => break,
                Err(_) => break 'conn,
            }
        }
        tokio::select! {
            _ = closed.cancelled() => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(n) if n > 0 => {}
                _ => break,
            },
        }
    }
    closed.cancel();
    fail_all(&waiters);
}

fn fail_all(waiters: &Waiters) {
    for (_, w) in lock(waiters).drain() {
        let _ = w.send(Err(ClientError::Closed));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
