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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// foldhash, not SipHash: touched on every copied write.
use hashbrown::HashMap;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::copies::{CopyStreams, Ticket, lock};
use super::peers::Peers;
use super::tier::writeback::Pending;
use crate::ring::{Ring, key_hash, score};

/// How long durable notices gather before they go out in one `Settle`.
const SETTLE_EVERY: Duration = Duration::from_millis(50);
/// Most keys in one `Settle`.
const SETTLE_BATCH: usize = 4096;

/// Per queued key: the successors holding its copy, and its version.
type Sent = HashMap<Vec<u8>, (Vec<Arc<str>>, u64)>;

/// Durable notices not yet sent, per successor.
type Settling = HashMap<Arc<str>, Vec<(Vec<u8>, u64)>>;

/// The ring as this node knows it, with its members' addresses shared
/// (a write's bookkeeping clones a pointer, not a string).
#[derive(Default)]
struct Known {
    ring: Ring,
    me: Option<Arc<str>>,
    /// Members other than this node, with their rendezvous seeds.
    others: Vec<(Arc<str>, u64)>,
}

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
    known: ArcSwap<Known>,
    streams: CopyStreams,
    /// Per queued key: the successors holding its copy and its version.
    sent: Mutex<Sent>,
    /// Durable notices on their way to the successors.
    settler: Arc<Settler>,
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
        let r = Arc::new(Replication {
            copies,
            known: ArcSwap::from_pointee(Known::default()),
            streams: CopyStreams::new(peers.options().clone()),
            sent: Mutex::new(HashMap::new()),
            settler: Arc::new(Settler::default()),
            stats: ReplicationStats::default(),
        });
        tokio::spawn(settle_batches(r.settler.clone(), peers));
        r
    }

    fn sent(&self) -> std::sync::MutexGuard<'_, Sent> {
        lock(&self.sent)
    }

    /// The ring as this node last heard it, and the address it is known by.
    pub fn set_ring(&self, ring: Ring, me: &str) {
        let members: Vec<&str> = (0..ring.len())
            .filter_map(|i| ring.member(i))
            .map(|(a, _)| a)
            .collect();
        self.streams.retain(&members);
        let others = (0..ring.len())
            .filter_map(|i| ring.member(i))
            .filter(|(a, _)| *a != me)
            .map(|(a, seed)| (Arc::from(a), seed))
            .collect();
        let me = Some(Arc::from(me));
        self.known.store(Arc::new(Known { ring, me, others }));
    }

    /// Members of the ring this node knows.
    pub fn members(&self) -> usize {
        self.known.load().ring.len()
    }

    /// Whether this node owns `key` in the ring it knows.
    pub fn owns(&self, key: &[u8]) -> bool {
        let known = self.known.load();
        let Some(me) = known.me.as_deref() else {
            return false;
        };
        known.ring.owner(key_hash(key)) == Some(me)
    }

    /// The members that would hold `key` next, best first, this node aside.
    pub fn successors(&self, key: &[u8]) -> Vec<Arc<str>> {
        let known = self.known.load();
        if known.me.is_none() || self.copies == 0 {
            return Vec::new();
        }
        let h = key_hash(key);
        if self.copies == 1 {
            // The common case, on every write: the best score, no sort.
            return known
                .others
                .iter()
                .max_by_key(|(_, seed)| score(*seed, h))
                .map(|(a, _)| vec![a.clone()])
                .unwrap_or_default();
        }
        let mut ranked: Vec<(u64, &Arc<str>)> = known
            .others
            .iter()
            .map(|(a, seed)| (score(*seed, h), a))
            .collect();
        ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        ranked
            .into_iter()
            .take(self.copies)
            .map(|(_, a)| a.clone())
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
        {
            let mut sent = self.sent();
            // Hot keys are written again and again: no new key then.
            match sent.get_mut(key) {
                Some(held) => *held = (to, write.version()),
                None => {
                    sent.insert(key.to_vec(), (to, write.version()));
                }
            }
        }
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
        let (key, mut to, v) = {
            let mut sent = self.sent();
            let Some((_, v)) = sent.get(key) else { return };
            if *v > version {
                return; // a newer write is on its way; its copy stays
            }
            let Some((key, (to, v))) = sent.remove_entry(key) else {
                return;
            };
            (key, to, v)
        };
        let mut settling = lock(&self.settler.settling);
        let was_empty = settling.is_empty();
        // The key moves to the last successor; the others get a clone.
        if let Some(last) = to.pop() {
            for a in to {
                settling.entry(a).or_default().push((key.clone(), v));
            }
            settling.entry(last).or_default().push((key, v));
        }
        drop(settling);
        if was_empty {
            self.settler.gathering.notify_one();
        }
    }

    /// After a ring change: the queued writes whose successors changed,
    /// with the new successors that do not hold a copy yet.
    pub fn moved(&self) -> Vec<(Vec<u8>, Vec<Arc<str>>)> {
        let sent = self.sent();
        sent.iter()
            .filter_map(|(k, (to, _))| {
                let now = self.successors(k);
                let missing: Vec<Arc<str>> = now.into_iter().filter(|a| !to.contains(a)).collect();
                (!missing.is_empty()).then(|| (k.clone(), missing))
            })
            .collect()
    }

    /// Copies `write` of `key` to `to` again (successors changed).
    pub async fn recopy(&self, key: &[u8], write: Pending, to: Vec<Arc<str>>) {
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

/// Durable notices gathering for the next `Settle`s.
#[derive(Default)]
struct Settler {
    settling: Mutex<Settling>,
    /// Wakes the batcher when notices start gathering, or to stop.
    gathering: Notify,
    /// The replication is gone: the batcher stops.
    closed: std::sync::atomic::AtomicBool,
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.settler.closed.store(true, Ordering::Relaxed);
        self.settler.gathering.notify_one();
    }
}

/// Sends durable notices in batches, per successor: woken when notices
/// start gathering, it lets them gather for [`SETTLE_EVERY`] and sends
/// them all (a wake-up per batch, not per write).
async fn settle_batches(settler: Arc<Settler>, peers: Arc<Peers>) {
    loop {
        let gathering = settler.gathering.notified();
        tokio::pin!(gathering);
        // Registered before the check: a notice in between still wakes it.
        gathering.as_mut().enable();
        if settler.closed.load(Ordering::Relaxed) {
            return;
        }
        if lock(&settler.settling).is_empty() {
            gathering.await;
            if settler.closed.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(SETTLE_EVERY).await;
        }
        let batch = std::mem::take(&mut *lock(&settler.settling));
        for (a, entries) in batch {
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
