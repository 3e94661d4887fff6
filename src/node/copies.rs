//! One pipelined stream of second copies to each successor.
//!
//! A copy is the hot path of every async write with `WRITE_REPLICAS`, so it
//! is not a general request: the writing connection encodes it straight
//! into the successor's outgoing buffer (no task, no channel, no timer per
//! copy), one writer sends whatever gathered in one `write`, and the
//! successor answers in order. A write waits on a ticket that resolves
//! when its copy's answer arrives, or fails when the stream breaks or the
//! successor stops answering for [`PEER_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use milena_protocol::{FrameCodec, Op, Request, Status, decode_response, encode_request, peek_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::peers::PEER_TIMEOUT;
use super::tier::writeback::Pending;
use crate::client::{ClientOptions, open};

/// Copies sent and not yet answered, per successor, before more are
/// failed at once (counted as copies the successor did not take).
const MAX_OUTSTANDING: usize = 64 * 1024;
/// Bytes of copies not yet written, per successor, likewise.
const MAX_UNSENT: usize = 64 * 1024 * 1024;

/// Whether a successor took a copy.
pub type Ticket = oneshot::Receiver<bool>;

/// Copy streams by successor address.
pub struct CopyStreams {
    options: ClientOptions,
    streams: Mutex<HashMap<String, Arc<CopyStream>>>,
}

impl std::fmt::Debug for CopyStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyStreams").finish_non_exhaustive()
    }
}

impl CopyStreams {
    /// Streams opened with `options` (TLS, frame limit).
    pub fn new(options: ClientOptions) -> Self {
        CopyStreams {
            options: ClientOptions {
                connect_timeout: PEER_TIMEOUT,
                ..options
            },
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Sends a copy of `write` of `key` to `address`.
    pub fn send(&self, address: &str, key: &[u8], write: &Pending) -> Ticket {
        let stream = {
            let mut streams = lock(&self.streams);
            match streams.get(address) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(CopyStream {
                        address: address.to_string(),
                        options: self.options.clone(),
                        outbox: Mutex::new(Outbox::default()),
                        wake: Notify::new(),
                        closed: CancellationToken::new(),
                    });
                    streams.insert(address.to_string(), s.clone());
                    s
                }
            }
        };
        stream.send(key, write)
    }

    /// Closes the streams to nodes not in `members` (they left the ring).
    pub fn retain(&self, members: &[&str]) {
        lock(&self.streams).retain(|a, s| {
            let keep = members.contains(&a.as_str());
            if !keep {
                s.closed.cancel();
            }
            keep
        });
    }
}

/// The stream to one successor.
struct CopyStream {
    address: String,
    options: ClientOptions,
    outbox: Mutex<Outbox>,
    /// The writer waits here for copies to send.
    wake: Notify,
    /// The successor left the ring.
    closed: CancellationToken,
}

#[derive(Default)]
struct Outbox {
    /// Encoded copies not yet written.
    unsent: Vec<u8>,
    /// Copies written or to be written, oldest first: id, when queued, ticket.
    waiting: VecDeque<(u64, Instant, oneshot::Sender<bool>)>,
    next_id: u64,
    /// A task holds (or is opening) the connection.
    running: bool,
}

impl CopyStream {
    fn send(self: &Arc<Self>, key: &[u8], write: &Pending) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let op = match write {
            Pending::Put(obj) => Op::Replicate {
                version: obj.version,
                expires_at: obj.expires_at.unwrap_or(0),
                deleted: false,
                key,
                value: &obj.value,
            },
            Pending::Delete(version) => Op::Replicate {
                version: *version,
                expires_at: 0,
                deleted: true,
                key,
                value: b"",
            },
        };
        let (start, wake) = {
            let mut out = lock(&self.outbox);
            if self.closed.is_cancelled()
                || out.waiting.len() >= MAX_OUTSTANDING
                || out.unsent.len() >= MAX_UNSENT
            {
                let _ = tx.send(false);
                return rx;
            }
            out.next_id += 1;
            let id = out.next_id;
            let was_empty = out.unsent.is_empty();
            encode_request(&Request { id, op }, &mut out.unsent);
            out.waiting.push_back((id, Instant::now(), tx));
            let start = !out.running;
            out.running = true;
            (start, was_empty)
        };
        if start {
            tokio::spawn(self.clone().run());
        } else if wake {
            self.wake.notify_one();
        }
        rx
    }

    /// Holds the connection while there is anything to send; fails every
    /// waiting copy when it breaks (the next copy opens a new one).
    async fn run(self: Arc<Self>) {
        match open(&self.address, &self.options).await {
            Ok((stream, buf, _)) => {
                let (rd, wr) = tokio::io::split(stream);
                tokio::select! {
                    () = self.write_loop(wr) => {}
                    () = self.read_loop(rd, buf) => {}
                    () = self.closed.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::debug!(peer = %self.address, error = %e, "could not open a copy stream");
            }
        }
        let mut out = lock(&self.outbox);
        for (_, _, t) in out.waiting.drain(..) {
            let _ = t.send(false);
        }
        out.unsent.clear();
        out.running = false;
    }

    async fn write_loop(&self, mut wr: tokio::io::WriteHalf<crate::tls::Stream>) {
        let mut batch = Vec::with_capacity(16 * 1024);
        loop {
            {
                let mut out = lock(&self.outbox);
                std::mem::swap(&mut batch, &mut out.unsent);
            }
            if batch.is_empty() {
                self.wake.notified().await;
                // Woken by the first copy of a round: let the other
                // connections ready now add theirs, so that one write
                // (and one read and one answer on the successor) carries
                // them all instead of one each.
                tokio::task::yield_now().await;
                continue;
            }
            if let Err(e) = wr.write_all(&batch).await {
                tracing::debug!(peer = %self.address, error = %e, "a copy stream broke");
                return;
            }
            batch.clear();
            if batch.capacity() > 1024 * 1024 {
                batch = Vec::with_capacity(16 * 1024);
            }
        }
    }

    async fn read_loop(&self, mut rd: tokio::io::ReadHalf<crate::tls::Stream>, mut buf: BytesMut) {
        let mut codec = FrameCodec::new(self.options.max_frame);
        // One timer, re-armed each period: a copy unanswered for a whole
        // period means the successor is stuck or gone.
        let check = tokio::time::sleep(PEER_TIMEOUT);
        tokio::pin!(check);
        loop {
            loop {
                match codec.decode_frame(&mut buf) {
                    Ok(Some(frame)) => self.answered(&frame),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = %self.address, error = %e, "a copy stream sent garbage");
                        return;
                    }
                }
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return,
                },
                () = &mut check => {
                    let now = Instant::now();
                    let stuck = lock(&self.outbox)
                        .waiting
                        .front()
                        .is_some_and(|(_, at, _)| now.duration_since(*at) >= PEER_TIMEOUT);
                    if stuck {
                        tracing::debug!(peer = %self.address, "a successor stopped answering copies");
                        return;
                    }
                    check.as_mut().reset(now + PEER_TIMEOUT);
                }
            }
        }
    }

    /// Resolves the ticket a response answers.
    fn answered(&self, frame: &[u8]) {
        let Some(id) = peek_id(frame) else { return };
        let took = decode_response(frame).is_ok_and(|r| r.status == Status::Ok);
        let mut out = lock(&self.outbox);
        // Answers come in order: the oldest waiting copy, nearly always.
        let at = match out.waiting.front() {
            Some((first, _, _)) if *first == id => Some(0),
            _ => out.waiting.binary_search_by_key(&id, |w| w.0).ok(),
        };
        if let Some((_, _, t)) = at.and_then(|i| out.waiting.remove(i)) {
            let _ = t.send(took);
        }
    }
}

/// Locks `m`, going on past a panic elsewhere (the data stays consistent:
/// every critical section here is a few plain updates).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
