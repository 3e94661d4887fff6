//! The binary protocol on the router's port: one task per client
//! connection reads its requests and writes their answers, which come back
//! from nodes in any order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milena_protocol::{FrameCodec, FrameError, Op, decode_request, peek_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Router;
use super::admit::Access;
use super::request::{Answer, Forward, Kind, ReplyRx, ReplyTx, replies};
use super::{cluster_stats, local};
use crate::budget::{self, Receiving};
use crate::error::{WireError, check_hello, hello_response};
use crate::ring::key_hash;
use crate::tls::Stream;

/// Answer bytes a client may have waiting to be written before the router
/// stops reading its requests: a client that pipelines gets of large values
/// and does not read holds this much, not its in-flight cap times the
/// value size. (One answer larger than this still goes out.)
const MAX_QUEUED_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// What the router says it is in its hello answer.
const SERVER_NAME: &str = concat!("router milena/", env!("CARGO_PKG_VERSION"));

/// The binary protocol: one task per connection reads requests and writes
/// the answers, which come back from nodes in any order.
pub async fn serve_binary(
    mut stream: Stream,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (tx, mut rx) = replies(router.settings.buffered.clone());
    // Bounds what one client can have queued anywhere in the router.
    let slots = Arc::new(Semaphore::new(router.settings.max_inflight));
    let mut codec = FrameCodec::new(router.settings.max_frame);
    // Small at first: most of 10,000 connections sit idle; a busy one
    // grows its buffer as frames arrive.
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut out = Outgoing::default();
    let stall = router.settings.frame_timeout;
    let mut session = Session::default();
    let hello_deadline = tokio::time::sleep(router.settings.hello_timeout);
    tokio::pin!(hello_deadline);

    let mut receiving = Receiving::new(router.settings.frame_timeout);
    // Whole frames wait in `rbuf` (a batch stopped at a cap): decoded
    // before anything more is read.
    let mut backlog = false;
    'conn: loop {
        // Answers first: writing them frees slots and queue room.
        let written = tokio::select! {
            ok = out.flush(&mut stream, &mut rx, stall) => ok,
            // The rest is written in the drain below, within its grace.
            _ = shutdown.cancelled() => true,
        };
        if !written || shutdown.is_cancelled() {
            break;
        }
        // A client that does not read its answers stops being read (the
        // write above waits for it, up to `stall`), and so does one with
        // every slot taken, until answers free some.
        let paused = stop_decoding(&tx, &slots);
        // A large frame is read only with room in the router-wide budget;
        // without it the connection waits (backpressure).
        let to_hold = if paused || backlog {
            None
        } else {
            receiving.to_hold(&rbuf)
        };
        if to_hold.is_some() && session.access.is_none() {
            // A hello is small: a large first frame holds no budget.
            protocol_error(router, &tx, WireError::HelloRequired, 0);
            break;
        }
        let n = if backlog && !paused {
            1
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                () = rx.arrived() => continue,
                held = router.settings.buffered.hold(to_hold.unwrap_or(0)), if to_hold.is_some() => {
                    receiving.hold(held);
                    continue;
                }
                _ = budget::until(receiving.deadline()) => {
                    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let secs = receiving.timeout().as_secs();
                    let _ = tx.send((WireError::FrameTimeout(secs).body(0), None));
                    break;
                }
                // Before the hello deadline: a hello that has arrived is
                // taken even if this task looks at it late (a busy router).
                r = stream.read_buf(&mut rbuf), if !paused && !backlog && to_hold.is_none() => r?,
                _ = &mut hello_deadline, if session.access.is_none() => {
                    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let secs = router.settings.hello_timeout.as_secs();
                    let _ = tx.send((WireError::HelloTimeout(secs).body(0), None));
                    break;
                }
            }
        };
        backlog = false;
        if n == 0 {
            if !rbuf.is_empty() {
                router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            }
            break;
        }
        let mut completed = false;
        loop {
            if stop_decoding(&tx, &slots) {
                backlog = true;
                break;
            }
            let frame = match codec.decode_frame(&mut rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let err = match e {
                        FrameError::TooLarge { .. } => WireError::FrameTooLarge(e.to_string()),
                        FrameError::Io(_) => WireError::Undecodable(e.to_string()),
                    };
                    protocol_error(router, &tx, err, 0);
                    break 'conn;
                }
            };
            completed = true;
            match handle_frame(router, frame, &mut session, &tx, &slots).await {
                Ok(()) => {}
                Err((err, id)) => {
                    protocol_error(router, &tx, err, id);
                    break 'conn;
                }
            }
        }
        // Frames left whole in `rbuf` by a cap are not a request still
        // arriving: no clock for them.
        receiving.decoded(if backlog { &[] } else { &rbuf }, completed);
    }
    // Give back the budget held for a partial frame before waiting for
    // the last answers.
    drop(receiving);
    drop(tx);
    // Every forwarded request holds a sender: the answers still due come
    // in (or fail) and are written, until the drain grace after shutdown
    // runs out or the client stops reading.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let written = tokio::select! {
            ok = out.flush(&mut stream, &mut rx, stall) => ok,
            () = &mut grace => false,
        };
        if !written {
            break;
        }
        let answer = tokio::select! {
            a = rx.recv() => a,
            () = &mut grace => None,
        };
        let Some(answer) = answer else { break };
        out.take(answer);
    }
    rx.close();
    // Bounded: sending a TLS close_notify to a peer that reads nothing
    // would otherwise wait for ever.
    let _ = tokio::time::timeout(DRAIN_GRACE, stream.shutdown()).await;
    Ok(())
}

/// How long a connection may take to receive its last answers once
/// shutdown has begun.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Answers gathered into one write at most.
const BATCH_BYTES: usize = 256 * 1024;
/// A buffer that grew past this for a large answer is given back, so an
/// idle connection does not pin it.
const BUF_KEEP: usize = 1024 * 1024;

/// Answers gathered for the next write, with the slots they free once
/// written.
#[derive(Default)]
struct Outgoing {
    // Grows with the first answers; an idle connection holds almost nothing.
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    slots: Vec<OwnedSemaphorePermit>,
    /// Body bytes in `buf`, as counted in the queue.
    bodies: usize,
}

impl Outgoing {
    /// Appends an answer to the batch.
    fn take(&mut self, (body, slot): Answer) {
        self.buf
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(&body);
        self.slots.extend(slot);
        self.bodies += body.len();
    }

    /// Writes the answers queued (in batches of up to [`BATCH_BYTES`]);
    /// `false` if the client is gone or read nothing for `stall`
    /// (FRAME_TIMEOUT_SECONDS): its unread answers are not held for ever.
    /// Cancel-safe: what was written stays counted, the rest goes next time.
    async fn flush(&mut self, stream: &mut Stream, rx: &mut ReplyRx, stall: Duration) -> bool {
        loop {
            while self.buf.len() < BATCH_BYTES {
                match rx.try_recv() {
                    Some(a) => self.take(a),
                    None => break,
                }
            }
            if self.buf.is_empty() {
                return true;
            }
            while self.sent < self.buf.len() {
                match tokio::time::timeout(stall, stream.write(&self.buf[self.sent..])).await {
                    Ok(Ok(n)) if n > 0 => self.sent += n,
                    _ => return false,
                }
            }
            rx.written(std::mem::take(&mut self.bodies));
            self.slots.clear();
            self.buf.clear();
            self.sent = 0;
            if self.buf.capacity() > BUF_KEEP {
                self.buf = Vec::new();
            }
        }
    }
}

/// Whether the connection stops decoding requests: too many answer bytes
/// unwritten, or every in-flight slot taken.
fn stop_decoding(tx: &ReplyTx, slots: &Semaphore) -> bool {
    tx.queued() > MAX_QUEUED_ANSWER_BYTES || slots.available_permits() == 0
}

fn protocol_error(router: &Router, tx: &ReplyTx, err: WireError, id: u64) {
    debug!(error = %err, "protocol error; closing connection");
    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    router.stats.errors.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send((err.body(id), None));
}

/// What a client connection has established: its access, once greeted.
#[derive(Debug, Default)]
struct Session {
    access: Option<Access>,
}

/// Handles one client frame. A stream-level error comes back as `Err` with
/// the id to answer under; the connection is then closed.
async fn handle_frame(
    router: &Arc<Router>,
    frame: BytesMut,
    session: &mut Session,
    tx: &ReplyTx,
    slots: &Arc<Semaphore>,
) -> Result<(), (WireError, u64)> {
    let req = decode_request(&frame).map_err(|e| {
        (
            WireError::Undecodable(e.to_string()),
            peek_id(&frame).unwrap_or(0),
        )
    })?;
    let id = req.id;
    let Some(access) = session.access else {
        let token = check_hello(&req.op).map_err(|e| (e, id))?;
        session.access = Some(router.access(token).map_err(|e| (e, id))?);
        let mut out = Vec::new();
        hello_response(id, SERVER_NAME, &mut out);
        let _ = tx.send((Bytes::from(out).slice(4..), None));
        return Ok(());
    };
    router.stats.requests.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    // Every request holds one of the connection's slots until its answer is
    // written; the connection decodes a frame only with a slot free, and
    // takes slots only here, so one is.
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        let busy = WireError::Unavailable("this connection has no request slot free".into());
        let _ = tx.send((busy.body(id), None));
        return Ok(());
    };
    let open_to_all = match req.op {
        Op::Ping | Op::Join { .. } | Op::Leave { .. } | Op::Heartbeat { .. } => true,
        Op::Members => access.cluster,
        _ => false,
    };
    if !access.data && !open_to_all {
        reply_error(router, tx, id, WireError::NeedsClientToken, permit);
        return Ok(());
    }
    let (kind, key, value) = match req.op {
        Op::Get { key } => (Kind::Get, key, None),
        Op::Put { key, value, .. } => (Kind::Put, key, Some(value)),
        Op::Delete { key } => (Kind::Delete, key, None),
        Op::PutIf { key, value, .. } => (Kind::PutIf, key, Some(value)),
        Op::Ttl { key } => (Kind::Get, key, None),
        Op::Stats => {
            // Gathers from every node: off the connection's read loop.
            let (router, tx) = (router.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send((cluster_stats::gather(&router, id).await, Some(permit)));
            });
            return Ok(());
        }
        Op::Join { .. } | Op::Leave { .. } | Op::Heartbeat { .. } if !access.cluster => {
            let what = match req.op {
                Op::Join { .. } => "join",
                Op::Leave { .. } => "leave",
                _ => "heartbeat",
            };
            reply_error(router, tx, id, WireError::Unauthorized(what), permit);
            return Ok(());
        }
        Op::Join { .. } | Op::Heartbeat { .. } if router.in_etcd() => {
            reply_error(router, tx, id, WireError::MembershipInEtcd, permit);
            return Ok(());
        }
        Op::Leave { address } if router.in_etcd() => {
            // A ring change in etcd: off the connection's read loop.
            let (router, tx, address) = (router.clone(), tx.clone(), address.to_string());
            tokio::spawn(async move {
                let mut out = Vec::new();
                match router.leave_in_etcd(&address).await {
                    Ok(()) => local::respond(id, milena_protocol::Body::Empty, &mut out),
                    Err(e) => {
                        router.stats.errors.fetch_add(1, Ordering::Relaxed);
                        e.respond(id, &mut out);
                    }
                }
                let _ = tx.send((bytes::Bytes::from(out).slice(4..), Some(permit)));
            });
            return Ok(());
        }
        Op::Join { address } => {
            // Probes the address: off the connection's read loop.
            let (router, tx, address) = (router.clone(), tx.clone(), address.to_string());
            tokio::spawn(async move {
                let answer = local::join(&router, id, &address).await;
                let _ = tx.send((answer, Some(permit)));
            });
            return Ok(());
        }
        other => {
            let answer = local::answer(router, id, &other);
            let _ = tx.send((answer, Some(permit)));
            return Ok(());
        }
    };
    if let Err(e) = router.admit(kind, key, value) {
        let _ = tx.send((e.body(id), Some(permit)));
        return Ok(());
    }
    let key_hash = key_hash(key);
    let fwd = Forward::new(
        id,
        frame.freeze(),
        kind,
        key_hash,
        tx.clone(),
        permit,
        started,
    );
    router.route(fwd).await;
    Ok(())
}

fn reply_error(router: &Router, tx: &ReplyTx, id: u64, err: WireError, slot: OwnedSemaphorePermit) {
    router.stats.errors.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send((err.body(id), Some(slot)));
}
