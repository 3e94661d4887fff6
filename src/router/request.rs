//! A client's data request on its way through the router: what it is,
//! where its answer goes, and the in-flight slot it holds. Every front
//! (binary, gRPC) makes these; the pool carries them to nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};

use crate::budget::{ByteBudget, Held};
use crate::error::WireError;

/// An answer for a client connection's writer: the frame body, and the
/// in-flight slot it frees once written (so a client that never reads
/// cannot make the router queue more than its slots' worth of answers).
pub type Answer = (Bytes, Option<OwnedSemaphorePermit>);

/// Where a client connection's answers go, counting the bytes queued and
/// not yet written, so the connection can stop reading from a client that
/// does not read its answers.
#[derive(Debug, Clone)]
pub struct ReplyTx {
    tx: mpsc::UnboundedSender<Answer>,
    queued: Arc<Queued>,
}

/// A client connection's writer end of [`ReplyTx`].
#[derive(Debug)]
pub struct ReplyRx {
    rx: mpsc::UnboundedReceiver<Answer>,
    queued: Arc<Queued>,
}

#[derive(Debug)]
struct Queued {
    bytes: AtomicUsize,
    written: Notify,
    /// The process-wide budget answers beyond [`FREE_ANSWER_BYTES`] draw on.
    budget: ByteBudget,
    /// What this connection holds of it, given back once its queue drains.
    held: std::sync::Mutex<Option<Held>>,
    /// The writer is gone: nothing more will be written or waited for.
    closed: std::sync::atomic::AtomicBool,
}

impl Queued {
    /// Gives back what the connection held of the budget.
    fn release(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Answer bytes a connection may have queued without drawing on the
/// process-wide budget: a client reading at its own pace stays under it.
pub const FREE_ANSWER_BYTES: usize = 1 << 20;

/// A connection's answer channel; answers queued beyond
/// [`FREE_ANSWER_BYTES`] hold room in `budget` until written.
pub fn replies(budget: ByteBudget) -> (ReplyTx, ReplyRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(Queued {
        bytes: AtomicUsize::new(0),
        written: Notify::new(),
        budget,
        held: std::sync::Mutex::new(None),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    (
        ReplyTx {
            tx,
            queued: queued.clone(),
        },
        ReplyRx { rx, queued },
    )
}

impl ReplyTx {
    /// Queues an answer for the client; gives it back if the connection
    /// is gone. Past [`FREE_ANSWER_BYTES`] queued, an answer needs room in
    /// the process-wide budget; without it, the client gets a short error
    /// in its place (it is not reading what it asked for, and the router
    /// will not hold unbounded memory for it).
    pub fn send(&self, answer: Answer) -> Result<(), Answer> {
        let answer = self.within_budget(answer);
        let n = answer.0.len();
        self.queued.bytes.fetch_add(n, Ordering::Relaxed);
        self.tx.send(answer).map_err(|e| {
            self.queued.bytes.fetch_sub(n, Ordering::Relaxed);
            e.0
        })
    }

    fn within_budget(&self, (body, slot): Answer) -> Answer {
        let n = body.len();
        if self.queued().saturating_add(n) <= FREE_ANSWER_BYTES {
            return (body, slot);
        }
        let Some(more) = self.queued.budget.try_hold(n) else {
            let id = milena_protocol::peek_id(&body).unwrap_or(0);
            let err = WireError::Unavailable(format!(
                "{} bytes of answers are waiting unread on this connection and the router's buffer budget (MAX_BUFFERED_BYTES) is spent: read answers before asking for more",
                self.queued()
            ));
            return (err.body(id), slot);
        };
        let mut held = self.queued.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(h) => h.merge(more),
            None => *held = Some(more),
        }
        (body, slot)
    }

    /// Answer bytes queued and not yet written (0 once the writer is gone:
    /// nothing is waited for then).
    pub fn queued(&self) -> usize {
        if self.queued.closed.load(Ordering::Relaxed) {
            return 0;
        }
        self.queued.bytes.load(Ordering::Relaxed)
    }

    /// Waits until at most `cap` answer bytes are queued.
    pub async fn until_at_most(&self, cap: usize) {
        loop {
            // Created before the check: a write in between still wakes it.
            let written = self.queued.written.notified();
            if self.queued() <= cap {
                return;
            }
            written.await;
        }
    }
}

impl ReplyRx {
    /// The next answer; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Answer> {
        self.rx.recv().await
    }

    /// An answer already queued, if any.
    pub fn try_recv(&mut self) -> Option<Answer> {
        self.rx.try_recv().ok()
    }

    /// Records that `bytes` of answers were written out.
    pub fn written(&self, bytes: usize) {
        let left = self
            .queued
            .bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if left <= FREE_ANSWER_BYTES {
            // Drained back under the free allowance: give the budget back.
            self.queued.release();
        }
        self.queued.written.notify_waiters();
    }

    /// The writer is done (the client is gone or shutdown's grace ran
    /// out): later answers are refused, and a reader waiting for room
    /// goes on (to find the connection closed).
    pub fn close(&mut self) {
        self.rx.close();
        self.queued.closed.store(true, Ordering::Relaxed);
        self.queued.release();
        self.queued.written.notify_waiters();
    }
}

/// Which data operation a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A get (sent as `RoutedGet`).
    Get,
    /// A put (sent as `RoutedPut`).
    Put,
    /// A delete (sent as is).
    Delete,
    /// A conditional put (sent as `RoutedPutIf`).
    PutIf,
}

impl Kind {
    /// Name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Put => "put",
            Kind::Delete => "delete",
            Kind::PutIf => "put_if",
        }
    }
}

/// A client request on its way to a node.
#[derive(Debug)]
pub struct Forward {
    /// The id the client gave it.
    pub client_id: u64,
    /// The client's request body, shared with the read buffer it came in.
    pub body: Bytes,
    /// What it is.
    pub kind: Kind,
    /// The key's ring hash.
    pub key_hash: u64,
    /// `since` for a get, the epoch for a put; set when routed.
    pub meta: u64,
    /// For a conditional put: `since`, as for a get; set when routed.
    pub since: u64,
    /// For a get: the key's previous owner, to be asked on a miss; set when routed.
    pub previous: Option<Arc<str>>,
    /// Under etcd membership: the ring revision it was routed under and
    /// the owner's `since` (sent as a fenced operation); set when routed.
    pub fence: Option<(u64, u64)>,
    /// Times a node answered "stale ring" and it was routed again.
    pub ring_retries: u16,
    /// When a fenced request was last sent, on the lease clock.
    pub sent_on_lease_clock: std::time::Duration,
    /// Where the answer goes.
    pub reply: ReplyTx,
    /// Sends so far to a node that failed.
    pub attempt: u8,
    /// Whether it reached a node that then failed before answering: the
    /// node may have applied it.
    pub maybe_applied: bool,
    /// Holds one of the client connection's in-flight slots until answered.
    pub permit: OwnedSemaphorePermit,
    /// When the router read the request.
    pub started: Instant,
}

impl Forward {
    /// A request not yet routed.
    pub fn new(
        client_id: u64,
        body: Bytes,
        kind: Kind,
        key_hash: u64,
        reply: ReplyTx,
        permit: OwnedSemaphorePermit,
        started: Instant,
    ) -> Self {
        Forward {
            client_id,
            body,
            kind,
            key_hash,
            meta: 0,
            since: 0,
            previous: None,
            fence: None,
            ring_retries: 0,
            sent_on_lease_clock: std::time::Duration::ZERO,
            reply,
            attempt: 0,
            maybe_applied: false,
            permit,
            started,
        }
    }

    /// Answers the client with an error instead of a node's response.
    pub fn fail(self, err: &WireError) {
        let _ = self
            .reply
            .send((err.body(self.client_id), Some(self.permit)));
    }
}
