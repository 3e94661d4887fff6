//! The owner's side of second copies (`WRITE_REPLICAS`, async mode): each
//! write this node accepts and has not yet made durable is also held in
//! memory by its successors (the nodes that would own the key if this one
//! disappeared: the next in its rendezvous order), and acknowledged only
//! once they have it. When the tier has a write, its successors hear so in
//! batches and drop their copies. When the ring changes so that a queued
//! write's successors change, it is copied to the new ones.
//!
//! The owner forwards (rather than the router writing to both): the owner
//! orders a key's writes and gives them their versions, so the copy is the
//! very write the owner queued; a router cannot know that version, and two
//! routers writing both copies could cross. The cost is one node-to-node
//! round trip on each async write, on a persistent connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::copies::{CopyStreams, Ticket};
use super::peers::Peers;
use super::tier::writeback::Pending;
use crate::ring::{Ring, key_hash, score};

/// How long durable notices gather before they go out in one `Settle`.
const SETTLE_EVERY: Duration = Duration::from_millis(50);
/// Most keys in one `Settle`.
const SETTLE_BATCH: usize = 4096;

/// Per queued key: the successors holding its copy, and its version.
type Sent = HashMap<Vec<u8>, (Vec<String>, u64)>;

/// Counters of the owner's side.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Copies sent and acknowledged.
    pub sent: AtomicU64,
    /// Copies a successor did not take (down, full, slow): the write was
    /// acknowledged with fewer copies.
    pub failed: AtomicU64,
    /// Writes copied again because their successors changed.
    pub recopied: AtomicU64,
}

/// Where this node's dirty writes are copied.
pub struct Replication {
    copies: usize,
    me: ArcSwap<Option<String>>,
    ring: ArcSwap<Ring>,
    streams: CopyStreams,
    /// Per queued key: the successors holding its copy and its version.
    sent: Mutex<Sent>,
    settle: mpsc::UnboundedSender<(String, Vec<u8>, u64)>,
    /// Counters.
    pub stats: ReplicationStats,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("copies", &self.copies)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// `copies` extra copies of each dirty write, over `peers`. Must be
    /// called inside a tokio runtime (the settle batcher starts).
    pub fn new(copies: usize, peers: Arc<Peers>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = Arc::new(Replication {
            copies,
            me: ArcSwap::from_pointee(None),
            ring: ArcSwap::from_pointee(Ring::default()),
            streams: CopyStreams::new(peers.options().clone()),
            sent: Mutex::new(HashMap::new()),
            settle: tx,
            stats: ReplicationStats::default(),
        });
        tokio::spawn(settle_batches(rx, peers));
        r
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, Sent> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ring as this node last heard it, and the address it is known by.
    pub fn set_ring(&self, ring: Ring, me: &str) {
        let members: Vec<&str> = (0..ring.len())
            .filter_map(|i| ring.member(i))
            .map(|(a, _)| a)
            .collect();
        self.streams.retain(&members);
        self.ring.store(Arc::new(ring));
        self.me.store(Arc::new(Some(me.to_string())));
    }

    /// Members of the ring this node knows.
    pub fn members(&self) -> usize {
        self.ring.load().len()
    }

    /// Whether this node owns `key` in the ring it knows.
    pub fn owns(&self, key: &[u8]) -> bool {
        let me = self.me.load();
        let Some(me) = me.as_deref() else {
            return false;
        };
        self.ring.load().owner(key_hash(key)) == Some(me)
    }

    /// The members that would hold `key` next, best first, this node aside.
    pub fn successors(&self, key: &[u8]) -> Vec<String> {
        let me = self.me.load();
        let Some(me) = me.as_deref() else {
            return Vec::new();
        };
        let ring = self.ring.load();
        let h = key_hash(key);
        let mut ranked: Vec<(u64, &str)> = (0..ring.len())
            .filter_map(|i| ring.member(i))
            .filter(|(a, _)| *a != me)
            .map(|(a, seed)| (score(seed, h), a))
            .collect();
        ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        ranked
            .into_iter()
            .take(self.copies)
            .map(|(_, a)| a.to_string())
            .collect()
    }

    /// Copies `write` of `key` to its successors (sent before this
    /// returns); the future resolves once they all answered (or failed:
    /// the write then has fewer copies, counted). `None` when there is
    /// nobody to copy to (a ring of one).
    pub fn replicate(
        self: &Arc<Self>,
        key: &[u8],
        write: &Pending,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let to = self.successors(key);
        if to.is_empty() {
            return None;
        }
        let tickets: Vec<Ticket> = to
            .iter()
            .map(|a| self.streams.send(a, key, write))
            .collect();
        self.sent().insert(key.to_vec(), (to, write.version()));
        let me = self.clone();
        Some(async move {
            for t in tickets {
                if t.await.unwrap_or(false) {
                    me.stats.sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    tracing::debug!("a successor did not take a copy");
                    me.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    /// The tier has `version` of `key` (or refused it for good): its
    /// successors may drop their copies.
    pub fn durable(&self, key: &[u8], version: u64) {
        let mut sent = self.sent();
        let Some((_, v)) = sent.get(key) else { return };
        if *v > version {
            return; // a newer write is on its way; its copy stays
        }
        if let Some((to, v)) = sent.remove(key) {
            for a in to {
                let _ = self.settle.send((a, key.to_vec(), v));
            }
        }
    }

    /// After a ring change: the queued writes whose successors changed,
    /// with the new successors that do not hold a copy yet.
    pub fn moved(&self) -> Vec<(Vec<u8>, Vec<String>)> {
        let sent = self.sent();
        sent.iter()
            .filter_map(|(k, (to, _))| {
                let now = self.successors(k);
                let missing: Vec<String> = now.into_iter().filter(|a| !to.contains(a)).collect();
                (!missing.is_empty()).then(|| (k.clone(), missing))
            })
            .collect()
    }

    /// Copies `write` of `key` to `to` again (successors changed).
    pub async fn recopy(&self, key: &[u8], write: Pending, to: Vec<String>) {
        let version = write.version();
        let mut ok = Vec::new();
        for a in &to {
            if self.streams.send(a, key, &write).await.unwrap_or(false) {
                ok.push(a.clone());
            }
        }
        self.stats.recopied.fetch_add(1, Ordering::Relaxed);
        let mut sent = self.sent();
        if let Some((held, v)) = sent.get_mut(key)
            && *v <= version
        {
            // The old successors keep theirs until the write is durable.
            for a in ok {
                if !held.contains(&a) {
                    held.push(a);
                }
            }
            *v = version;
        }
    }

    /// Keys whose copies are out and not yet settled.
    pub fn outstanding(&self) -> usize {
        self.sent().len()
    }
}

/// Sends durable notices in batches, per successor.
async fn settle_batches(
    mut rx: mpsc::UnboundedReceiver<(String, Vec<u8>, u64)>,
    peers: Arc<Peers>,
) {
    let mut batch: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    loop {
        let Some((a, k, v)) = rx.recv().await else {
            return;
        };
        batch.entry(a).or_default().push((k, v));
        let deadline = tokio::time::Instant::now() + SETTLE_EVERY;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some((a, k, v)) => {
                        let entries = batch.entry(a).or_default();
                        entries.push((k, v));
                        if entries.len() >= SETTLE_BATCH { break; }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        for (a, entries) in batch.drain() {
            for chunk in entries.chunks(SETTLE_BATCH) {
                // A lost notice leaves a copy behind until the key's next
                // write settles it; the copy is older, never served over
                // the tier's newer object.
                if let Err(e) = peers.settle(&a, chunk).await {
                    tracing::debug!(peer = %a, error = %e, "could not tell a successor its copies are durable");
                }
            }
        }
    }
}
