//! A client's data request on its way through the router: what it is,
//! where its answer goes, and the in-flight slot it holds. Every front
//! (binary, gRPC) makes these; the pool carries them to nodes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::budget::{ByteBudget, Held};
use crate::error::WireError;

/// An answer for a client connection: the frame body, and the
/// in-flight slot it frees once written (so a client that never reads
/// cannot make the router queue more than its slots' worth of answers).
pub type Answer = (Bytes, Option<OwnedSemaphorePermit>);

/// Where a client connection's answers go, counting the bytes queued and
/// not yet written, so the connection can stop reading from a client that
/// does not read its answers. Cloned into every request in flight.
#[derive(Debug)]
pub struct ReplyTx {
    inbox: Arc<Inbox>,
}

/// The connection's end of [`ReplyTx`]: the task that reads the client's
/// requests also writes their answers (no writer task, no channel).
#[derive(Debug)]
pub struct ReplyRx {
    inbox: Arc<Inbox>,
}

/// What a connection's answers pass through. An idle connection's costs a
/// few hundred bytes: the queue allocates nothing until an answer comes.
#[derive(Debug)]
struct Inbox {
    answers: std::sync::Mutex<VecDeque<Answer>>,
    /// An answer arrived, or the last sender went.
    arrived: Notify,
    /// Senders alive: the connection's own and one per request in flight.
    senders: AtomicUsize,
    bytes: AtomicUsize,
    /// The process-wide budget answers beyond [`FREE_ANSWER_BYTES`] draw on.
    budget: ByteBudget,
    /// What this connection holds of it, given back once its queue drains.
    held: std::sync::Mutex<Option<Held>>,
    /// The connection is done writing: nothing more will be written or
    /// waited for.
    closed: AtomicBool,
}

impl Inbox {
    fn answers(&self) -> std::sync::MutexGuard<'_, VecDeque<Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back what the connection held of the budget.
    fn release(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Answer bytes a connection may have queued without drawing on the
/// process-wide budget: a client reading at its own pace stays under it.
pub const FREE_ANSWER_BYTES: usize = 1 << 20;

/// A connection's answer queue; answers queued beyond
/// [`FREE_ANSWER_BYTES`] hold room in `budget` until written.
pub fn replies(budget: ByteBudget) -> (ReplyTx, ReplyRx) {
    let inbox = Arc::new(Inbox {
        answers: std::sync::Mutex::new(VecDeque::new()),
        arrived: Notify::new(),
        senders: AtomicUsize::new(1),
        bytes: AtomicUsize::new(0),
        budget,
        held: std::sync::Mutex::new(None),
        closed: AtomicBool::new(false),
    });
    (
        ReplyTx {
            inbox: inbox.clone(),
        },
        ReplyRx { inbox },
    )
}

impl Clone for ReplyTx {
    fn clone(&self) -> Self {
        self.inbox.senders.fetch_add(1, Ordering::Relaxed);
        ReplyTx {
            inbox: self.inbox.clone(),
        }
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if self.inbox.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a connection draining its answers stops waiting.
            self.inbox.arrived.notify_one();
        }
    }
}

impl ReplyTx {
    /// Queues an answer for the client; gives it back if the connection
    /// is gone. Past [`FREE_ANSWER_BYTES`] queued, an answer needs room in
    /// the process-wide budget; without it, the client gets a short error
    /// in its place (it is not reading what it asked for, and the router
    /// will not hold unbounded memory for it).
    pub fn send(&self, answer: Answer) -> Result<(), Answer> {
        if self.inbox.closed.load(Ordering::Acquire) {
            return Err(answer);
        }
        let answer = self.within_budget(answer);
        let n = answer.0.len();
        {
            let mut answers = self.inbox.answers();
            // Checked again under the lock: `close` empties the queue
            // under it, so nothing is left behind in a closed one.
            if self.inbox.closed.load(Ordering::Acquire) {
                return Err(answer);
            }
            self.inbox.bytes.fetch_add(n, Ordering::Relaxed);
            answers.push_back(answer);
        }
        self.inbox.arrived.notify_one();
        Ok(())
    }

    fn within_budget(&self, (body, slot): Answer) -> Answer {
        let n = body.len();
        if self.queued().saturating_add(n) <= FREE_ANSWER_BYTES {
            return (body, slot);
        }
        let Some(more) = self.inbox.budget.try_hold(n) else {
            let id = milena_protocol::peek_id(&body).unwrap_or(0);
            let err = WireError::Unavailable(format!(
                "{} bytes of answers are waiting unread on this connection and the router's buffer budget (MAX_BUFFERED_BYTES) is spent: read answers before asking for more",
                self.queued()
            ));
            return (err.body(id), slot);
        };
        let mut held = self.inbox.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(h) => h.merge(more),
            None => *held = Some(more),
        }
        (body, slot)
    }

    /// Answer bytes queued and not yet written (0 once the connection is
    /// done writing: nothing is waited for then).
    pub fn queued(&self) -> usize {
        if self.inbox.closed.load(Ordering::Relaxed) {
            return 0;
        }
        self.inbox.bytes.load(Ordering::Relaxed)
    }
}

impl ReplyRx {
    /// Waits until an answer may be queued (or the last sender went):
    /// take them with [`ReplyRx::try_recv`]. Cancel-safe.
    pub async fn arrived(&self) {
        self.inbox.arrived.notified().await;
    }

    /// The next answer; `None` once every sender is gone and nothing is
    /// queued.
    pub async fn recv(&mut self) -> Option<Answer> {
        let inbox = self.inbox.clone();
        loop {
            let arrived = inbox.arrived.notified();
            if let Some(a) = self.try_recv() {
                return Some(a);
            }
            if inbox.senders.load(Ordering::Acquire) == 0 {
                return self.try_recv();
            }
            arrived.await;
        }
    }

    /// An answer already queued, if any.
    pub fn try_recv(&mut self) -> Option<Answer> {
        self.inbox.answers().pop_front()
    }

    /// Records that `bytes` of answers were written out.
    pub fn written(&self, bytes: usize) {
        let left = self
            .inbox
            .bytes
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if left <= FREE_ANSWER_BYTES {
            // Drained back under the free allowance: give the budget back.
            self.inbox.release();
        }
    }

    /// The connection is done writing (the client is gone or shutdown's
    /// grace ran out): later answers are refused, queued ones dropped
    /// (freeing their slots).
    pub fn close(&mut self) {
        self.inbox.closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.inbox.answers());
        drop(dropped);
        self.inbox.release();
    }
}

impl Drop for ReplyRx {
    fn drop(&mut self) {
        self.close();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static [u8]) -> Answer {
        (Bytes::from_static(body), None)
    }

    #[tokio::test]
    async fn answers_come_in_order_until_the_last_sender_goes() {
        let (tx, mut rx) = replies(ByteBudget::new(1 << 20));
        let in_flight = tx.clone();
        tx.send(answer(b"one")).expect("open");
        in_flight.send(answer(b"two")).expect("open");
        assert_eq!(tx.queued(), 6);
        drop(tx);
        assert_eq!(
            rx.recv().await.map(|a| a.0),
            Some(Bytes::from_static(b"one"))
        );
        assert_eq!(
            rx.recv().await.map(|a| a.0),
            Some(Bytes::from_static(b"two"))
        );
        rx.written(6);
        // One sender (a request in flight) is still out: its answer is due.
        let late = tokio::spawn(async move { in_flight.send(answer(b"three")) });
        assert_eq!(
            rx.recv().await.map(|a| a.0),
            Some(Bytes::from_static(b"three"))
        );
        assert!(late.await.expect("task").is_ok());
        assert!(rx.recv().await.is_none(), "every sender is gone");
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_answers_and_frees_their_slots() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let (tx, mut rx) = replies(ByteBudget::new(1 << 20));
        let slot = slots.clone().try_acquire_owned().expect("a slot");
        tx.send((Bytes::from_static(b"queued"), Some(slot)))
            .expect("open");
        assert_eq!(slots.available_permits(), 0);
        rx.close();
        assert_eq!(slots.available_permits(), 1, "the dropped answer's slot");
        assert!(tx.send(answer(b"late")).is_err());
        assert_eq!(tx.queued(), 0, "nothing is waited for once closed");
    }
}
