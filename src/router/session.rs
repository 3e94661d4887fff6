//! The binary protocol on the router's port: a reader loop per client
//! connection (this file), a writer task for its answers (`writer`), which
//! come back from nodes in any order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use milena_protocol::{FrameCodec, FrameError, Op, decode_request, peek_id};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Router;
use super::admit::Access;
use super::request::{Forward, Kind, ReplyTx, replies};
use super::writer::write_loop;
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

/// The binary protocol: a reader loop here, a writer task for answers
/// (which come back from nodes in any order).
pub async fn serve_binary(
    stream: Stream,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = replies(router.settings.buffered.clone());
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        shutdown.clone(),
        router.settings.frame_timeout,
    ));
    // Bounds what one client can have queued anywhere in the router.
    let slots = Arc::new(Semaphore::new(router.settings.max_inflight));
    let mut codec = FrameCodec::new(router.settings.max_frame);
    // Small at first: most of 10,000 connections sit idle; a busy one
    // grows its buffer as frames arrive.
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut session = Session::default();
    let hello_deadline = tokio::time::sleep(router.settings.hello_timeout);
    tokio::pin!(hello_deadline);

    let mut receiving = Receiving::new(router.settings.frame_timeout);
    let mut backlog = false;
    'conn: loop {
        // A large frame is read only with room in the router-wide budget;
        // without it the connection waits here (backpressure).
        if let Some(bytes) = receiving.to_hold(&rbuf) {
            if session.access.is_none() {
                // A hello is small: a large first frame holds no budget.
                protocol_error(router, &tx, WireError::HelloRequired, 0);
                break;
            }
            tokio::select! {
                held = router.settings.buffered.hold(bytes) => receiving.hold(held),
                _ = shutdown.cancelled() => break,
            }
        }
        // A client that does not read its answers stops being read.
        if tx.queued() > MAX_QUEUED_ANSWER_BYTES {
            tokio::select! {
                _ = tx.until_at_most(MAX_QUEUED_ANSWER_BYTES) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Frames already in `rbuf` (the batch stopped at the answer cap)
        // are decoded before anything more is read.
        let n = if backlog {
            1
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = budget::until(receiving.deadline()) => {
                    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let secs = receiving.timeout().as_secs();
                    let _ = tx.send((WireError::FrameTimeout(secs).body(0), None));
                    break;
                }
                // Before the hello deadline: a hello that has arrived is
                // taken even if this task looks at it late (a busy router).
                r = rd.read_buf(&mut rbuf) => r?,
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
            if tx.queued() > MAX_QUEUED_ANSWER_BYTES {
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
        // Frames left whole in `rbuf` by the answer cap are not a request
        // still arriving: no clock for them.
        receiving.decoded(if backlog { &[] } else { &rbuf }, completed);
    }
    // Give back the budget held for a partial frame before waiting for
    // the writer's last answers.
    drop(receiving);
    drop(tx);
    // The writer ends once every forwarded request has been answered (each
    // holds a sender) or the drain grace after shutdown runs out.
    let _ = writer.await;
    Ok(())
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
    // written; when all are taken, this connection's reading waits.
    let Ok(permit) = slots.clone().acquire_owned().await else {
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
