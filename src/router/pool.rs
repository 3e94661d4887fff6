//! Persistent, multiplexed connections from the router to one node.
//!
//! Each connection is one task that owns its socket and its table of
//! requests in flight, so nothing on the path is locked: requests from any
//! number of clients are renumbered, spliced into one write buffer and
//! written together; answers come back in any order, get the client's id
//! back and go straight to that client's connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use milena_protocol::{
    FrameCodec, Status, encode_fenced, encode_forward, patch_id, peek_id, peek_status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::metrics::RouterMetrics;
use super::request::Forward;
use crate::error::{Secret, WireError};
use crate::tls::Stream;
use crate::{client, net};

/// What a node's connections report back. The router implements it (eject
/// the node, send its requests to the next owner); the pool knows nothing
/// else of the router.
pub trait NodeEvents: Send + Sync {
    /// Node `address`, through its pool `handle_id`, failed for `reason`.
    fn node_failed(&self, address: &str, handle_id: u64, reason: &str);
    /// A request its node took and failed to answer: route it again.
    fn retry(&self, fwd: Forward);
    /// A node answered "stale ring" (not applied): route it again once the
    /// ring has settled.
    fn stale_ring(&self, fwd: Forward);
}

/// Everything a node's connections need from the router.
pub struct PoolContext {
    /// Limit on connecting to a node (and its hello).
    pub connect_timeout: Duration,
    /// Largest frame accepted from a node.
    pub max_frame: usize,
    /// A node that leaves a request unanswered this long, and answers
    /// nothing else meanwhile, is failed.
    pub node_timeout: Duration,
    /// `CLUSTER_TOKEN`, presented in the hello.
    pub token: Option<Secret>,
    /// TLS for `https://` nodes.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Counters and latency histograms.
    pub metrics: Arc<RouterMetrics>,
    /// Where failures go.
    pub events: Arc<dyn NodeEvents>,
    /// Cancelled when the router stops.
    pub shutdown: CancellationToken,
    /// Under etcd membership: an answer to a fenced request arriving later
    /// than this after it was sent is not trusted (the node's lease may
    /// have lapsed meanwhile, see PROTOCOL.md): a write becomes "may or
    /// may not have been applied", a read "unavailable".
    pub fenced_answer_within: Option<Duration>,
}

impl std::fmt::Debug for PoolContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolContext").finish_non_exhaustive()
    }
}

/// How long requests in flight may take to be answered once the router
/// shuts down.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Requests queued per connection before senders wait.
const QUEUE: usize = 4096;
/// Bytes gathered into one write before the task stops taking requests
/// and waits for the socket.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// A node's connections. Dropping the last handle closes them once their
/// requests in flight are answered.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's advertised address.
    pub address: String,
    /// Tells this handle from a later one for the same address (after the
    /// node was ejected and rejoined), so a dying old connection cannot
    /// eject the new incarnation.
    pub id: u64,
    conns: Vec<mpsc::Sender<Forward>>,
}

/// Source of [`NodeHandle::id`]s.
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

impl NodeHandle {
    /// Starts `connections` connection tasks to `address`.
    pub fn spawn(address: &str, connections: usize, ctx: Arc<PoolContext>) -> Self {
        let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        let conns = (0..connections.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(conn_task(address.to_string(), id, rx, ctx.clone()));
                tx
            })
            .collect();
        NodeHandle {
            address: address.to_string(),
            id,
            conns,
        }
    }

    /// Queues `fwd` on the connection its key maps to, so that requests
    /// for one key keep their order (a put then a get, a put then a delete);
    /// gives it back if that connection has died.
    pub async fn send(&self, fwd: Forward) -> Result<(), Forward> {
        // Bits 40.. of the key hash: independent of the ring's placement.
        let i = ((fwd.key_hash >> 40) as usize) % self.conns.len();
        self.conns[i].send(fwd).await.map_err(|e| e.0)
    }
}

/// Why a node connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("node broke the protocol: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn conn_task(
    address: String,
    handle_id: u64,
    mut rx: mpsc::Receiver<Forward>,
    ctx: Arc<PoolContext>,
) {
    let mut inflight: HashMap<u64, (Forward, Instant)> = HashMap::new();
    let counters = ctx.metrics.node_counters(&address);
    let result = match connect(&address, &ctx).await {
        Ok((stream, rbuf, _)) => serve(stream, rbuf, &mut rx, &mut inflight, &ctx, &counters).await,
        Err(e) => Err(e),
    };
    if result.is_err() && !ctx.shutdown.is_cancelled() {
        counters.1.inc();
    }
    ctx.metrics.release_node(&address);
    if let Err(e) = result {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        ctx.events.node_failed(&address, handle_id, &e.to_string());
        rx.close();
        // Everything sent to this node, answered or not, goes to the next
        // owner once; get, put and delete are idempotent.
        for (_, (mut fwd, _)) in inflight.drain() {
            fwd.maybe_applied = true;
            ctx.events.retry(fwd);
        }
        while let Ok(fwd) = rx.try_recv() {
            ctx.events.retry(fwd);
        }
    }
}

/// Checks that `address` (canonical) is a Milena cache node that says it
/// is that address, before it may enter the ring: a listener that is not
/// reachable, not a node (a router, another service), or a node known by
/// another address is refused, so it can neither take keys nor, by coming
/// and going, invalidate every node's cached entries.
pub async fn probe(address: &str, ctx: &PoolContext) -> Result<(), String> {
    let (_, _, server) = connect(address, ctx).await.map_err(|e| e.to_string())?;
    let mut words = server.split_whitespace();
    if words.next() != Some("node") {
        return Err(format!(
            "{address} is not a Milena cache node (its hello says '{}')",
            crate::logging::escape(&server)
        ));
    }
    let _version = words.next();
    // A node in a cluster names the address it advertises; one started
    // without routers names none and is taken at the address given.
    if let Some(claimed) = words.next()
        && net::canonical_url(claimed).as_deref() != Ok(address)
    {
        return Err(format!(
            "the node at {address} says it is {}: join it by that address",
            crate::logging::escape(claimed)
        ));
    }
    Ok(())
}

async fn connect(
    address: &str,
    ctx: &PoolContext,
) -> Result<(Stream, BytesMut, String), ConnError> {
    let timeout = ctx.connect_timeout;
    let (hostport, tls) = net::parse_url(address).map_err(ConnError::Connect)?;
    let tls_config = match (tls, &ctx.tls) {
        (false, _) => None,
        (true, Some(c)) => Some(c.clone()),
        (true, None) => {
            return Err(ConnError::Connect(
                "the node's address is https:// but the router has no TLS_CERT/TLS_CA".into(),
            ));
        }
    };
    let session = async {
        let stream = client::connect_stream(&hostport, tls_config).await?;
        client::hello(
            stream,
            ctx.token.as_ref().map(|t| t.expose()),
            ctx.max_frame,
        )
        .await
    };
    let (stream, rbuf, server) = tokio::time::timeout(timeout, session)
        .await
        .map_err(|_| ConnError::Connect(format!("timed out after {timeout:?}")))?
        .map_err(|e| ConnError::Connect(e.to_string()))?;
    debug!(node = %address, "connected to node");
    Ok((stream, rbuf, server))
}

async fn serve(
    stream: Stream,
    mut rbuf: BytesMut,
    rx: &mut mpsc::Receiver<Forward>,
    inflight: &mut HashMap<u64, (Forward, Instant)>,
    ctx: &PoolContext,
    (node_requests, node_errors): &(prometheus::IntCounter, prometheus::IntCounter),
) -> Result<(), ConnError> {
    let shutdown = &ctx.shutdown;
    let mut codec = FrameCodec::new(ctx.max_frame);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut wbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut written = 0usize;
    let mut next_id: u64 = 1;
    let mut open = true;
    let mut answered: Vec<(Forward, Option<bytes::Bytes>)> = Vec::new();
    let mut drain_until: Option<tokio::time::Instant> = None;
    let node_timeout = ctx.node_timeout;
    let mut tick = tokio::time::interval((node_timeout / 4).max(Duration::from_millis(10)));
    // When the node last answered anything: a node that answers is alive
    // even while one request waits long (a miss or a sync-mode put waiting
    // on a slow S3 is answered out of order, after the others).
    let mut last_answer = tokio::time::Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    use super::request::Kind;
    let mut latency = [Kind::Get, Kind::Put, Kind::Delete, Kind::PutIf].map(|k| {
        ctx.metrics
            .forward_duration
            .with_label_values(&[k.as_str()])
            .local()
    });

    loop {
        if written == wbuf.len() {
            wbuf.clear();
            written = 0;
            std::mem::swap(&mut wbuf, &mut pending);
        }
        if !open && inflight.is_empty() && wbuf.is_empty() {
            return Ok(()); // handle dropped and every answer delivered
        }
        tokio::select! {
            biased;
            // Shutting down: take no more requests, but give the ones in
            // flight a grace period to be answered.
            _ = shutdown.cancelled(), if drain_until.is_none() => {
                open = false;
                drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            _ = sleep_until_opt(drain_until) => return Ok(()),
            r = rd.read_buf(&mut rbuf) => {
                if r? == 0 {
                    return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                last_answer = tokio::time::Instant::now();
                let result = decode_answers(&mut codec, &mut rbuf, inflight, ctx, node_requests, node_errors, &mut latency, &mut answered);
                // Metrics first, so a client holding its answer sees it counted.
                for h in &mut latency {
                    h.flush();
                }
                // Deliver what did arrive even if a later frame was bad.
                for (fwd, frame) in answered.drain(..) {
                    match frame {
                        Some(frame) => {
                            let _ = fwd.reply.send((frame, Some(fwd.permit)));
                        }
                        None => ctx.events.stale_ring(fwd),
                    }
                }
                result?;
            }
            _ = tick.tick(), if !inflight.is_empty() => {
                // A node that holds a request this long and has answered
                // nothing meanwhile is down for our purposes: fail the
                // connection so its requests go to the next owner.
                let oldest = inflight.values().map(|(_, sent)| *sent).min();
                if oldest.is_some_and(|t| t.elapsed() > node_timeout)
                    && last_answer.elapsed() > node_timeout
                {
                    return Err(ConnError::Timeout(node_timeout));
                }
            }
            w = wr.write(&wbuf[written..]), if written < wbuf.len() => {
                written += w?;
            }
            f = rx.recv(), if open && pending.len() < WRITE_HIGH_WATER => {
                let Some(fwd) = f else {
                    open = false;
                    continue;
                };
                enqueue(fwd, &mut next_id, &mut pending, inflight);
                // Gather what else is already queued into the same write.
                while pending.len() < WRITE_HIGH_WATER {
                    match rx.try_recv() {
                        Ok(fwd) => enqueue(fwd, &mut next_id, &mut pending, inflight),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

fn enqueue(
    mut fwd: Forward,
    next_id: &mut u64,
    out: &mut Vec<u8>,
    inflight: &mut HashMap<u64, (Forward, Instant)>,
) {
    let id = *next_id;
    *next_id = next_id.wrapping_add(1);
    if fwd.fence.is_some() {
        // On the clock leases are measured with (it counts a suspend).
        fwd.sent_on_lease_clock = crate::etcd::lease_clock();
    }
    let previous = fwd.previous.as_deref();
    let encoded = match fwd.fence {
        Some((revision, since)) => encode_fenced(id, &fwd.body, revision, since, previous, out),
        None => encode_forward(id, &fwd.body, fwd.meta, fwd.since, previous, out),
    };
    if encoded {
        inflight.insert(id, (fwd, Instant::now()));
    } else {
        // The client loop only forwards gets, puts, deletes and conditional puts.
        let _ = fwd.reply.send((
            WireError::Undecodable("not a data operation".into()).body(fwd.client_id),
            Some(fwd.permit),
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_answers(
    codec: &mut FrameCodec,
    rbuf: &mut BytesMut,
    inflight: &mut HashMap<u64, (Forward, Instant)>,
    ctx: &PoolContext,
    node_requests: &prometheus::IntCounter,
    node_errors: &prometheus::IntCounter,
    latency: &mut [prometheus::local::LocalHistogram; 4],
    answered: &mut Vec<(Forward, Option<bytes::Bytes>)>,
) -> Result<(), ConnError> {
    let metrics = &ctx.metrics;
    while let Some(mut frame) = codec
        .decode_frame(rbuf)
        .map_err(|e| ConnError::Protocol(e.to_string()))?
    {
        let id = peek_id(&frame).ok_or_else(|| ConnError::Protocol("short frame".into()))?;
        let status = peek_status(&frame)
            .ok_or_else(|| ConnError::Protocol("answer without a status".into()))?;
        let Some((fwd, _)) = inflight.remove(&id) else {
            return Err(ConnError::Protocol(format!(
                "answer to unknown request {id}"
            )));
        };
        if status == Status::StaleRing && fwd.fence.is_some() {
            // Not applied: routed again, counted once it is answered.
            answered.push((fwd, None));
            continue;
        }
        if let Some(within) = ctx.fenced_answer_within
            && fwd.fence.is_some()
            && crate::etcd::lease_clock().saturating_sub(fwd.sent_on_lease_clock) > within
        {
            let took = crate::etcd::lease_clock().saturating_sub(fwd.sent_on_lease_clock);
            let late = format!(
                "the node answered after {} ms, past the {} ms its etcd lease vouches for",
                took.as_millis(),
                within.as_millis()
            );
            let err = match fwd.kind {
                super::request::Kind::Get => WireError::Unavailable(late),
                _ => WireError::Indeterminate(late),
            };
            metrics.count(fwd.kind, err.status());
            node_requests.inc();
            node_errors.inc();
            let body = err.body(fwd.client_id);
            answered.push((fwd, Some(body)));
            continue;
        }
        metrics.count(fwd.kind, status);
        node_requests.inc();
        if !matches!(status, Status::Ok | Status::NotFound | Status::NotStored) {
            node_errors.inc();
        }
        latency[fwd.kind as usize].observe(fwd.started.elapsed().as_secs_f64());
        patch_id(&mut frame, fwd.client_id);
        answered.push((fwd, Some(frame.freeze())));
    }
    Ok(())
}
