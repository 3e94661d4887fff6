//! A node's cache: memory in front of the durable tier. It owns the store,
//! the negative cache of tier misses, the write-behind queue, the tier, the
//! single-flight map of reads through to it and the handoff asks to a key's
//! previous owner, and answers in outcomes, never in wire messages: the
//! `execute` step turns those into responses.
//!
//! Memory only is the [`NoTier`](super::tier::NoTier) tier: it keeps
//! nothing, so the cache starts no queue and a memory miss is final.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use milena_protocol::Cond;
use tokio::sync::oneshot;

use super::clock::{Clock, wall_micros};
use super::peers::Peers;
use super::replicas::Replicas;
use super::replication::Replication;
use super::settings::{NodeSettings, WriteMode};
use super::store::{PutOutcome, Store, StoreConfig, StoreStats};
use super::tier::writeback::{Background, Durable, Pending, WriteBack, WriteBackStats};
use super::tier::{Object, ReadOutcome, Tier, TierError, TierTimes, Timed};

/// How long a tier miss is remembered (seconds): long enough that a hot
/// missing key does not send every get to the tier, short enough that a
/// key another node writes shows up soon.
pub const NEGATIVE_TTL_SECS: u32 = 1;
/// Most tier misses remembered at once.
const NEGATIVE_ENTRIES: usize = 10_000;
/// Stripes of the negative cache: few entries, little contention.
const NEGATIVE_SHARDS: usize = 16;

/// The result of one read through to the tier, shared by every request
/// that missed the same key meanwhile.
#[derive(Debug, Clone)]
pub enum ReadThrough {
    /// The value (already inserted into memory).
    Found(Bytes),
    /// The tier has nothing live for the key.
    Missing,
    /// The tier could not be read.
    Failed(String),
}

/// A read through to the tier, under way.
pub type ReadFuture = Pin<Box<dyn Future<Output = ReadThrough> + Send + 'static>>;

/// What a get found at once.
pub enum Lookup {
    /// In memory: the value went to the caller's closure.
    Hit,
    /// Not in memory, and there is no tier to ask: a final miss.
    Miss,
    /// Not in memory: the answer comes from the tier (or the queue, or the
    /// key's previous owner) when this completes.
    ReadThrough(ReadFuture),
}

/// When a write is acknowledged.
pub enum Ack {
    /// Now: in memory, and queued for the tier if there is one.
    Now,
    /// Once this completes (`WRITE_MODE=sync`).
    WhenDurable(Durable),
    /// Once the key's successors hold a copy (async with `WRITE_REPLICAS`).
    WhenCopied(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ack::Now => "Now",
            Ack::WhenDurable(_) => "WhenDurable",
            Ack::WhenCopied(_) => "WhenCopied",
        })
    }
}

/// Why the cache refused a write.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The entry does not fit in one stripe's share of `MAX_MEMORY`.
    #[error("entry of {len} bytes does not fit in the memory budget (MAX_MEMORY)")]
    EntryTooLarge {
        /// Key + value length.
        len: usize,
    },
    /// The write-behind queue is full (the tier is down or slow).
    #[error(
        "the write-behind queue is full (QUEUE_CAPACITY={capacity}); the tier ({tier}) may be down"
    )]
    QueueFull {
        /// `QUEUE_CAPACITY`.
        capacity: usize,
        /// The tier's name.
        tier: &'static str,
    },
}

/// What a delete did, or what it waits for.
pub enum Removal {
    /// Known now: whether the key existed, and when the removal is
    /// acknowledged.
    Done(bool, Ack),
    /// Neither memory nor the queue knew the key: the tier is read first
    /// (nothing is queued until then, so a failed read applied nothing).
    ReadFirst(ReadFirstFuture),
}

/// What a conditional put did, or what it waits for.
pub enum CondPut {
    /// Decided now: whether it was written, and when that is acknowledged.
    Done(bool, Ack),
    /// Memory, the queue and the negative cache did not know whether the
    /// key exists: the tier (and the key's previous owner) is read first.
    ReadFirst(ReadFirstFuture),
}

/// A write reading the tier first: whether the key existed (a delete) or
/// the write happened (a conditional put), and when it is acknowledged.
pub type ReadFirstFuture =
    Pin<Box<dyn Future<Output = Result<(bool, Ack), ReadFirstError>> + Send + 'static>>;

/// Why a write that read the tier first failed; nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum ReadFirstError {
    /// The tier could not be read.
    #[error("the tier could not be read: {0}")]
    TierRead(String),
    /// The queue was full by then.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The key was read three times and other writes kept the node from
    /// settling whether it exists.
    #[error("whether the key exists could not be settled (too many writes meanwhile); try again")]
    Unsettled,
}

/// How long a key has left to live (see [`Cache::ttl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// No live entry.
    Missing,
    /// It never expires.
    Forever,
    /// Milliseconds.
    Millis(u64),
}

/// What a `Ttl` found at once, or what it waits for.
pub enum TtlLookup {
    /// Known now.
    Now(Remaining),
    /// Read through the tier first.
    ReadFirst(Pin<Box<dyn Future<Output = Result<Remaining, ReadFirstError>> + Send + 'static>>),
}

/// A conditional put's write and what its check needs (see [`Cache::put_if`]).
#[derive(Debug, Clone, Copy)]
pub struct CondWrite<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Seconds to live (`None`: the default TTL).
    pub ttl: Option<u32>,
    /// The write's version (as [`Cache::put`]'s `epoch`).
    pub version: u64,
    /// Entries written before this epoch do not count (as a get's `since`).
    pub since: u64,
    /// The key's previous owner, right after a ring change.
    pub previous: Option<&'a str>,
}

/// Stripes of locks that order a conditional put's check and write
/// against every other write of the same key on this node.
const WRITE_STRIPES: usize = 1024;
/// Reads a conditional put makes before giving up on settling presence.
const COND_READS: usize = 3;

/// Counters of the read-through and handoff paths.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Reads through to the tier (after a memory miss).
    pub tier_reads: AtomicU64,
    /// Tier reads that failed.
    pub tier_read_errors: AtomicU64,
    /// Misses on which a key's previous owner was asked for a write it had
    /// not yet made durable.
    pub handoff_peeks: AtomicU64,
    /// Of those, answers newer than the tier's copy, taken over.
    pub handoff_adopted: AtomicU64,
    /// Of those, previous owners that could not be asked.
    pub handoff_errors: AtomicU64,
    /// Tier latency, by operation.
    pub tier_times: Arc<TierTimes>,
}

/// Requests waiting on one tier read of a key, with the ownership epoch
/// (`since`) of the request that started it: only requests of that epoch
/// or an older one may share it.
type Waiters = (u64, Vec<oneshot::Sender<ReadThrough>>);

/// Memory in front of the tier. Shared by every connection (`Arc`).
pub struct Cache {
    store: Store,
    /// Keys the tier recently did not have.
    negative: Store,
    tier: Arc<dyn Tier>,
    /// Writes on their way to the tier; `None` exactly when the tier keeps
    /// nothing.
    queue: Option<WriteBack>,
    /// The low-priority threads the uploads run on; dropped last.
    _background: Option<Background>,
    /// Tier reads under way, so concurrent misses of one key share one read.
    reads: Mutex<HashMap<Vec<u8>, Waiters>>,
    /// Held by every write for its key's stripe, so a conditional put's
    /// check and write are one step (see [`Cache::put_if`]).
    writes: Box<[Mutex<()>]>,
    /// Connections to other nodes, to ask a key's previous owner on a miss
    /// and to copy dirty writes to their successors.
    peers: Arc<Peers>,
    /// Copies of other nodes' dirty writes this node holds for them.
    pub replicas: Arc<Replicas>,
    /// Where this node's own dirty writes are copied (`WRITE_REPLICAS`,
    /// async mode with a tier); `None` otherwise.
    pub replication: Option<Arc<Replication>>,
    clock: Clock,
    default_ttl: u32,
    write_mode: WriteMode,
    queue_capacity: usize,
    coalesce_misses: bool,
    flush_timeout: std::time::Duration,
    stats: CacheStats,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.store)
            .field("tier", &self.tier.name())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache sized by `settings` in front of `tier`, timing tier calls
    /// into `tier_histogram`. Must be called inside a tokio runtime when
    /// the tier persists (the uploaders start).
    pub fn new(
        settings: &NodeSettings,
        clock: Clock,
        tier: Arc<dyn Tier>,
        tier_histogram: prometheus::HistogramVec,
    ) -> Self {
        let stats = CacheStats::default();
        let persists = tier.persists();
        let tier: Arc<dyn Tier> =
            Arc::new(Timed::new(tier, tier_histogram, stats.tier_times.clone()));
        // Uploads run on their own low-priority threads when they can be
        // started; otherwise beside the requests.
        let background = persists.then(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
            Background::start(threads)
                .map_err(|e| tracing::warn!("uploads share the request threads: {e}"))
                .ok()
        });
        let background = background.flatten();
        let queue = persists.then(|| {
            WriteBack::start(
                tier.clone(),
                settings.queue_capacity,
                settings.uploaders,
                background.as_ref().and_then(|b| b.handle()),
            )
        });
        let peers = Arc::new(Peers::new(
            settings.tls.as_ref().map(|t| t.connector.clone()),
        ));
        let replication = (queue.is_some()
            && settings.write_mode == WriteMode::Async
            && settings.write_replicas > 0)
            .then(|| Replication::new(settings.write_replicas, peers.clone()));
        if let (Some(q), Some(r)) = (&queue, &replication) {
            let r = r.clone();
            q.on_done(Box::new(move |key, version| r.durable(key, version)));
        }
        // Copies held for others: up to a quarter of MAX_MEMORY (256 MiB
        // without one), and as many as a write-behind queue holds.
        let replica_bytes = settings.store.max_bytes.map_or(256 << 20, |b| b / 4);
        let replicas = Arc::new(Replicas::new(settings.queue_capacity, replica_bytes));
        if persists {
            tokio::spawn(sweep_copies(replicas.clone(), tier.clone(), clock.clone()));
        }
        let negative = Store::new(StoreConfig {
            max_items: NEGATIVE_ENTRIES,
            max_bytes: None,
            shards: NEGATIVE_SHARDS,
        });
        Cache {
            store: Store::new(settings.store),
            negative,
            tier,
            queue,
            _background: background,
            reads: Mutex::new(HashMap::new()),
            writes: (0..WRITE_STRIPES).map(|_| Mutex::new(())).collect(),
            peers,
            replicas,
            replication,
            clock,
            default_ttl: settings.default_ttl,
            write_mode: settings.write_mode,
            queue_capacity: settings.queue_capacity,
            coalesce_misses: settings.coalesce_misses,
            flush_timeout: settings.flush_timeout,
            stats,
        }
    }

    /// The in-memory store (for counters and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Store totals: items, bytes, hits, misses, evictions...
    pub fn store_stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// The tier's name (`s3`, `dir`, `none`).
    pub fn tier_name(&self) -> &'static str {
        self.tier.name()
    }

    /// Read-through and handoff counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Keys waiting for the tier or being uploaded.
    pub fn queue_depth(&self) -> usize {
        self.queue.as_ref().map_or(0, WriteBack::depth)
    }

    /// The write-behind queue's counters, if there is a queue.
    pub fn queue_stats(&self) -> Option<&WriteBackStats> {
        self.queue.as_ref().map(WriteBack::stats)
    }

    /// Looks `key` up for a request that may only see entries written since
    /// ring epoch `since`. A hit calls `on_hit` with the value while the
    /// stripe is locked, so the caller can encode it without a copy; a miss
    /// with a tier returns the read through it, which also asks
    /// `previous` (the key's previous owner, right after a ring change) for
    /// a write it has not made durable yet.
    pub fn get(
        self: &Arc<Self>,
        key: &[u8],
        since: u64,
        previous: Option<&str>,
        on_hit: impl FnOnce(&[u8]),
    ) -> Lookup {
        if self
            .store
            .get_with(key, self.clock.now(), since, on_hit)
            .is_some()
        {
            return Lookup::Hit;
        }
        if self.queue.is_none() {
            return Lookup::Miss;
        }
        Lookup::ReadThrough(Box::pin(self.clone().read_through(
            key.to_vec(),
            since,
            previous.map(str::to_string),
        )))
    }

    /// Stores `key` = `value` for `ttl` seconds (`None`: the default TTL),
    /// as written in ring epoch `epoch`, and queues it for the tier.
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<u32>,
        epoch: u64,
    ) -> Result<Ack, CacheError> {
        let _order = self.write_lock(key);
        self.put_locked(key, value, ttl, epoch)
    }

    /// The key's write stripe, held while a write changes memory and queue.
    fn write_lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let i = (crate::ring::key_hash(key) % WRITE_STRIPES as u64) as usize;
        self.writes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Cache::put`] with the key's write stripe held.
    fn put_locked(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<u32>,
        epoch: u64,
    ) -> Result<Ack, CacheError> {
        let ttl = ttl.unwrap_or(self.default_ttl);
        match self.store.put(key, value, ttl, self.clock.now(), epoch) {
            PutOutcome::Stored { .. } => {}
            PutOutcome::TooLarge => {
                return Err(CacheError::EntryTooLarge {
                    len: key.len() + value.len(),
                });
            }
        }
        if self.queue.is_none() {
            return Ok(Ack::Now);
        }
        let obj = Object {
            value: Bytes::copy_from_slice(value),
            expires_at: (ttl > 0).then(|| self.clock.unix_secs() + u64::from(ttl)),
            version: epoch.max(wall_micros()),
        };
        self.persist(key, Pending::Put(obj))
    }

    /// Removes `key` from memory and queues its removal from the tier
    /// (a tombstone, so an older write still on its way cannot bring it
    /// back). Says whether the key existed: from memory or the queue when
    /// they know, else from the tier, read first.
    pub fn delete(self: &Arc<Self>, key: &[u8]) -> Result<Removal, CacheError> {
        let order = self.write_lock(key);
        let now = self.clock.now();
        let in_memory = self.store.delete(key, now);
        if self.queue.is_none() {
            return Ok(Removal::Done(in_memory, Ack::Now));
        }
        // Newer than any write of the key still queued: a put's version
        // comes from the router's clock, which may run ahead of ours.
        let queued = self.peek(key);
        let version = wall_micros().max(queued.as_ref().map_or(0, |p| p.version() + 1));
        let known = match queued {
            _ if in_memory => Some(true),
            Some(Pending::Put(_)) => Some(true),
            Some(Pending::Delete(_)) => Some(false),
            None => self.negative.peek_with(key, now, 0, |_| false),
        };
        if let Some(existed) = known {
            let ack = self.persist(key, Pending::Delete(version))?;
            // A read-through that read the tier before may have filled
            // memory since: the tombstone is queued now, so clear it again.
            self.store.delete(key, self.clock.now());
            return Ok(Removal::Done(existed, ack));
        }
        drop(order);
        let cache = self.clone();
        let key = key.to_vec();
        Ok(Removal::ReadFirst(Box::pin(async move {
            cache.stats.tier_reads.fetch_add(1, Ordering::Relaxed);
            let existed = match cache.tier.get(&key, cache.clock.unix_secs()).await {
                Ok(ReadOutcome::Found(_)) => true,
                Ok(ReadOutcome::Absent | ReadOutcome::Expired) => false,
                Err(e) => {
                    cache.stats.tier_read_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(ReadFirstError::TierRead(e.to_string()));
                }
            };
            // Queued now, but with the version of the request's arrival:
            // a put of the key that arrived meanwhile is newer and wins.
            let _order = cache.write_lock(&key);
            let ack = cache.persist(&key, Pending::Delete(version))?;
            cache.store.delete(&key, cache.clock.now());
            Ok((existed, ack))
        })))
    }

    /// Stores `key` = `value` (as [`Cache::put`], version `epoch`) only if
    /// the key exists (`Cond::Present`) or does not (`Cond::Absent`) for a
    /// request that may only see entries written since `since`, right after
    /// a ring change asking `previous` too (as a get does).
    ///
    /// Atomic against every other write of the key on this node: the check
    /// and the write happen under the key's write stripe, which every write
    /// holds. When memory, the queue and the negative cache do not know the
    /// key, a read through the tier (outside the stripe) fills them first,
    /// and the check is made again under the stripe from what they then say:
    /// a write that landed meanwhile is seen there.
    pub fn put_if(self: &Arc<Self>, cond: Cond, w: CondWrite<'_>) -> Result<CondPut, CacheError> {
        // Right after a ring change the queue may hold a write from an
        // earlier ownership (as for a get: `read_through`).
        let trust_queue = w.previous.is_none();
        {
            let _order = self.write_lock(w.key);
            if let Some(current) = self.exists(w.key, w.since, trust_queue) {
                let (written, ack) = self.apply_if(cond, current, &w)?;
                return Ok(CondPut::Done(written, ack));
            }
        }
        let cache = self.clone();
        let (key, value) = (w.key.to_vec(), w.value.to_vec());
        let previous = w.previous.map(str::to_string);
        let (ttl, version, since) = (w.ttl, w.version, w.since);
        Ok(CondPut::ReadFirst(Box::pin(async move {
            for _ in 0..COND_READS {
                // Fills memory (found) or the negative cache (missing).
                let read = cache
                    .clone()
                    .read_through(key.clone(), since, previous.clone())
                    .await;
                if let ReadThrough::Failed(e) = read {
                    return Err(ReadFirstError::TierRead(e));
                }
                let _order = cache.write_lock(&key);
                if let Some(current) = cache.exists(&key, since, trust_queue) {
                    let w = CondWrite {
                        key: &key,
                        value: &value,
                        ttl,
                        version,
                        since,
                        previous: None,
                    };
                    return Ok(cache.apply_if(cond, current, &w)?);
                }
                // Evicted again before the check (memory under pressure):
                // read once more.
            }
            Err(ReadFirstError::Unsettled)
        })))
    }

    /// How long `key` has left to live, found as a get finds it (memory
    /// written since `since`, the queue, the tier, `previous`).
    pub fn ttl(self: &Arc<Self>, key: &[u8], since: u64, previous: Option<&str>) -> TtlLookup {
        let trust_queue = previous.is_none();
        if let Some(r) = self.remaining(key, since, trust_queue) {
            return TtlLookup::Now(r);
        }
        let cache = self.clone();
        let key = key.to_vec();
        let previous = previous.map(str::to_string);
        TtlLookup::ReadFirst(Box::pin(async move {
            for _ in 0..COND_READS {
                // Fills memory (found) or the negative cache (missing).
                let read = cache
                    .clone()
                    .read_through(key.clone(), since, previous.clone())
                    .await;
                match read {
                    ReadThrough::Failed(e) => return Err(ReadFirstError::TierRead(e)),
                    ReadThrough::Missing => return Ok(Remaining::Missing),
                    ReadThrough::Found(_) => {}
                }
                if let Some(r) = cache.remaining(&key, since, trust_queue) {
                    return Ok(r);
                }
                // Gone from memory again before the look (evicted or
                // changed): read once more.
            }
            Err(ReadFirstError::Unsettled)
        }))
    }

    /// [`Cache::ttl`] from what the node knows without the tier; `None`
    /// when only the tier can tell. Without a tier, memory is all there is.
    fn remaining(&self, key: &[u8], since: u64, trust_queue: bool) -> Option<Remaining> {
        let now = self.clock.now();
        if let Some(left) = self.store.remaining(key, now, since) {
            return Some(left.map_or(Remaining::Forever, Remaining::Millis));
        }
        if self.queue.is_none() {
            return Some(Remaining::Missing);
        }
        match self.peek(key).filter(|_| trust_queue) {
            Some(Pending::Put(obj)) => {
                let unix = self.clock.unix_secs();
                return Some(match obj.expires_at {
                    _ if obj.is_expired(unix) => Remaining::Missing,
                    None => Remaining::Forever,
                    Some(at) => Remaining::Millis(at.saturating_sub(unix) * 1000),
                });
            }
            Some(Pending::Delete(_)) => return Some(Remaining::Missing),
            None => {}
        }
        self.negative
            .get_with(key, now, since, |_| ())
            .map(|()| Remaining::Missing)
    }

    /// Whether `key` exists, with its value, as far as memory (entries
    /// written since `since`), the queue (if trusted) and the negative
    /// cache know; `None` when only the tier can tell. Without a tier,
    /// memory is all there is.
    fn exists(&self, key: &[u8], since: u64, trust_queue: bool) -> Option<Option<Bytes>> {
        let now = self.clock.now();
        let value = self
            .store
            .peek_with(key, now, since, Bytes::copy_from_slice);
        if value.is_some() || self.queue.is_none() {
            return Some(value);
        }
        match self.peek(key).filter(|_| trust_queue) {
            Some(Pending::Put(obj)) => {
                return Some((!obj.is_expired(self.clock.unix_secs())).then_some(obj.value));
            }
            Some(Pending::Delete(_)) => return Some(None),
            None => {}
        }
        self.negative
            .get_with(key, now, since, |_| ())
            .map(|()| None)
    }

    /// Writes `w` if `cond` holds given the key's `current` value; the
    /// stripe is held.
    fn apply_if(
        &self,
        cond: Cond,
        current: Option<Bytes>,
        w: &CondWrite<'_>,
    ) -> Result<(bool, Ack), CacheError> {
        let value = match (cond, &current) {
            (Cond::Absent, None) | (Cond::Present, Some(_)) => w.value,
            (Cond::Touch, Some(v)) => &v[..],
            _ => return Ok((false, Ack::Now)),
        };
        let ack = self.put_locked(w.key, value, w.ttl, w.version)?;
        Ok((true, ack))
    }

    /// Whether there is a tier behind memory, so a key memory lacks may
    /// still exist.
    pub fn persists(&self) -> bool {
        self.queue.is_some()
    }

    /// The write of `key` this node accepted and has not yet made durable,
    /// if any (what a key's new owner asks its previous owner for).
    pub fn peek(&self, key: &[u8]) -> Option<Pending> {
        self.queue.as_ref().and_then(|q| q.peek(key))
    }

    /// Reclaims every expired entry; returns how many.
    pub fn expire(&self) -> u64 {
        self.store.expire(self.clock.now())
    }

    /// Waits until every write queued so far is durable, for at most
    /// `FLUSH_TIMEOUT_SECONDS`; returns whether it got there.
    pub async fn flush(&self) -> bool {
        let Some(q) = &self.queue else {
            return true;
        };
        tokio::time::timeout(self.flush_timeout, q.flush())
            .await
            .is_ok()
    }

    /// Flushes the queue (bounded by `FLUSH_TIMEOUT_SECONDS`: a tier that
    /// stays down must not keep the process alive) and stops the uploaders.
    pub async fn close(&self) {
        let Some(q) = &self.queue else {
            return;
        };
        tracing::info!(depth = q.depth(), "flushing the write-behind queue");
        let limit = self.flush_timeout;
        match tokio::time::timeout(limit, q.close()).await {
            Ok(()) => tracing::info!("write-behind queue flushed"),
            Err(_) => tracing::error!(
                unwritten = q.depth(),
                tier = self.tier.name(),
                "the tier did not take the queued writes within FLUSH_TIMEOUT_SECONDS={}; exiting without them",
                limit.as_secs()
            ),
        }
    }

    /// Queues `write`; in sync mode the acknowledgement waits until the
    /// tier has it. A full queue is an error, never a silent drop.
    fn persist(&self, key: &[u8], write: Pending) -> Result<Ack, CacheError> {
        let Some(queue) = &self.queue else {
            return Ok(Ack::Now);
        };
        self.negative.delete(key, self.clock.now());
        // This node's own write is newer than a copy it holds for another.
        if self.replicas.bytes() > 0 {
            self.replicas.take(key);
        }
        let full = || CacheError::QueueFull {
            capacity: self.queue_capacity,
            tier: self.tier.name(),
        };
        Ok(match self.write_mode {
            WriteMode::Async => {
                let copy = self.replication.as_ref().map(|_| write.clone());
                if !queue.try_enqueue_unwatched(key, write) {
                    return Err(full());
                }
                match (&self.replication, copy) {
                    (Some(r), Some(copy)) => match r.replicate(key, &copy) {
                        Some(copied) => Ack::WhenCopied(Box::pin(copied)),
                        None => Ack::Now,
                    },
                    _ => Ack::Now,
                }
            }
            WriteMode::Sync => Ack::WhenDurable(queue.try_enqueue(key, write).ok_or_else(full)?),
        })
    }

    /// The ring changed (as this node heard it, `me` being its own
    /// address): takes over the copies it holds of keys it now owns (into
    /// its queue, copied on to its own successors), and copies its queued
    /// writes whose successors changed to the new ones.
    pub fn set_ring(self: &Arc<Self>, ring: crate::ring::Ring, me: &str) {
        let Some(r) = &self.replication else {
            return;
        };
        r.set_ring(ring, me);
        let (cache, r) = (self.clone(), r.clone());
        tokio::spawn(async move {
            let Some(queue) = &cache.queue else { return };
            let taken = cache.replicas.take_owned(
                |k| r.owns(k),
                |k, w| {
                    // A full queue drops the copy (logged); the write
                    // lives on at its old owner if that one is alive.
                    if !queue.try_enqueue_unwatched(k, w.clone()) {
                        tracing::warn!(
                            "the write-behind queue is full: a copy taken over is dropped"
                        );
                    }
                },
            );
            for (key, write) in taken {
                cache.replicas.promoted.fetch_add(1, Ordering::Relaxed);
                // Now held here alone: copied on to this node's successors.
                if let Some(copied) = r.replicate(&key, &write) {
                    copied.await;
                }
            }
            for (key, to) in r.moved() {
                if let Some(write) = queue.peek(&key) {
                    r.recopy(&key, write, to).await;
                }
            }
        });
    }

    /// Answers a memory miss from the queue of unwritten writes, else from
    /// the tier (and, right after a ring change, from the key's previous
    /// owner's unwritten writes, whichever is newer), with one tier read
    /// however many requests missed the key at once.
    async fn read_through(
        self: Arc<Self>,
        key: Vec<u8>,
        since: u64,
        previous: Option<String>,
    ) -> ReadThrough {
        // Right after a ring change (a previous owner named), this node's
        // own queue may hold a write from an earlier time it owned the key,
        // older than what the previous owner took since: then the newest
        // of queue, previous owner, copy and tier decides (`read_tier`).
        let trust_queue = previous.is_none();
        if let Some(known) = self.settled(&key, since, trust_queue) {
            return known;
        }
        let (tx, rx) = oneshot::channel();
        let leader = {
            let mut reads = self.reads();
            match reads.get_mut(&key) {
                Some((started_since, waiters)) if *started_since >= since => {
                    waiters.push(tx);
                    // Not coalescing: every miss reads the tier itself.
                    Some(!self.coalesce_misses)
                }
                // A read started for an older ownership epoch may predate
                // writes this request must see: read the tier alone.
                Some(_) => None,
                None => {
                    reads.insert(key.clone(), (since, vec![tx]));
                    Some(true)
                }
            }
        };
        let Some(leader) = leader else {
            return self.read_tier(&key, since, previous.as_deref()).await;
        };
        if leader {
            // A leader that just finished may have filled memory (or the
            // negative cache) and left between our checks above and our
            // registering: look again before going to the tier.
            let result = match self.settled(&key, since, trust_queue) {
                Some(known) => known,
                None => self.read_tier(&key, since, previous.as_deref()).await,
            };
            let (_, waiters) = self.reads().remove(&key).unwrap_or_default();
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        rx.await
            .unwrap_or_else(|_| ReadThrough::Failed("the tier read was abandoned".into()))
    }

    fn reads(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Waiters>> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One read of the tier, beside an ask of the key's previous owner.
    async fn read_tier(&self, key: &[u8], since: u64, previous: Option<&str>) -> ReadThrough {
        let started = wall_micros();
        let now = self.clock.unix_secs();
        self.stats.tier_reads.fetch_add(1, Ordering::Relaxed);
        let tier_read = self.tier.get(key, now);
        let (stored, dirty) = match previous {
            None => (tier_read.await, None),
            Some(prev) => {
                self.stats.handoff_peeks.fetch_add(1, Ordering::Relaxed);
                let (stored, peeked) = tokio::join!(tier_read, self.peers.peek(prev, key));
                let dirty = peeked.unwrap_or_else(|e| {
                    self.stats.handoff_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(previous = %prev, error = %e, "could not ask a key's previous owner");
                    None
                });
                (stored, dirty)
            }
        };
        // A copy this node holds for the key's previous owner: it owns the
        // key now (it was asked as the owner), so the copy takes over if it
        // is the newest.
        let copy = (self.replicas.bytes() > 0)
            .then(|| self.replicas.take(key))
            .flatten();
        if copy.is_some() {
            self.replicas.promoted.fetch_add(1, Ordering::Relaxed);
        }
        // And this node's own queue: a copy taken over meanwhile is there.
        let newest = |a: Option<Pending>, b: Option<Pending>| match (a, b) {
            (Some(a), Some(b)) => Some(if b.version() > a.version() { b } else { a }),
            (a, b) => a.or(b),
        };
        let dirty = newest(newest(dirty, copy), self.peek(key));
        self.resolve(key, now, started, since, stored, dirty)
    }

    /// What the node already knows about `key` without the tier: a value in
    /// memory (written since it gained the key), a write still queued, or a
    /// miss remembered since it gained the key.
    fn settled(&self, key: &[u8], since: u64, trust_queue: bool) -> Option<ReadThrough> {
        let mut value = None;
        self.store.peek_with(key, self.clock.now(), since, |v| {
            value = Some(Bytes::copy_from_slice(v));
        });
        if let Some(v) = value {
            return Some(ReadThrough::Found(v));
        }
        match self.peek(key).filter(|_| trust_queue) {
            Some(Pending::Put(obj)) => return Some(ReadThrough::Found(obj.value)),
            Some(Pending::Delete(_)) => return Some(ReadThrough::Missing),
            None => {}
        }
        self.negative
            .get_with(key, self.clock.now(), since, |_| ())
            .map(|()| ReadThrough::Missing)
    }

    /// The outcome of a read-through from what the tier holds and what the
    /// key's previous owner had not yet written (the newer version wins; a
    /// previous owner's write that wins is taken over, so it is not lost if
    /// that node dies before uploading it). Fills memory or the negative
    /// cache.
    fn resolve(
        &self,
        key: &[u8],
        now: u64,
        started: u64,
        since: u64,
        stored: Result<ReadOutcome, TierError>,
        dirty: Option<Pending>,
    ) -> ReadThrough {
        let stored_version = match &stored {
            Ok(ReadOutcome::Found(obj)) => obj.version,
            _ => 0,
        };
        let dirty_version = match &dirty {
            Some(Pending::Put(obj)) => obj.version,
            Some(Pending::Delete(v)) => *v,
            None => 0,
        };
        let stored = match dirty {
            Some(write) if dirty_version > stored_version || stored.is_err() => {
                self.stats.handoff_adopted.fetch_add(1, Ordering::Relaxed);
                if let Some(q) = &self.queue {
                    // If the queue is full the previous owner still has it.
                    if q.try_enqueue_unwatched(key, write.clone())
                        && let Some(r) = &self.replication
                        && let Some(copied) = r.replicate(key, &write)
                    {
                        // Now held here alone: copied on, not waited for.
                        tokio::spawn(copied);
                    }
                }
                match write {
                    Pending::Put(obj) if !obj.is_expired(now) => Ok(ReadOutcome::Found(obj)),
                    _ => Ok(ReadOutcome::Absent),
                }
            }
            _ => stored,
        };
        match stored {
            Ok(ReadOutcome::Found(obj)) => {
                let ttl = obj.expires_at.map_or(0, |t| {
                    t.saturating_sub(now).clamp(1, u64::from(u32::MAX)) as u32
                });
                // Fresh from the durable copy for this ownership epoch: tag
                // it with the epoch (`since`, a time or an etcd revision as
                // the requests carry them), so a later change of owner
                // counts it as stale. Only into an empty slot: a put that
                // arrived while the tier was read has written memory
                // already, and is newer.
                self.store
                    .put_if_absent(key, &obj.value, ttl, self.clock.now(), since);
                // A delete that arrived meanwhile (and found memory empty)
                // must not be undone by this fill.
                if matches!(self.peek(key), Some(Pending::Delete(v)) if v >= started) {
                    self.store.delete(key, self.clock.now());
                }
                ReadThrough::Found(obj.value)
            }
            Ok(ReadOutcome::Absent | ReadOutcome::Expired) => {
                self.negative
                    .put(key, b"", NEGATIVE_TTL_SECS, self.clock.now(), since);
                ReadThrough::Missing
            }
            Err(e) => {
                self.stats.tier_read_errors.fetch_add(1, Ordering::Relaxed);
                ReadThrough::Failed(e.to_string())
            }
        }
    }
}

/// How often copies held long are checked against the tier.
const COPY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// A copy held longer than this may have missed its settle notice.
const COPY_OVERDUE: std::time::Duration = std::time::Duration::from_secs(60);
/// Most copies checked per sweep.
const COPY_SWEEP_MAX: usize = 1000;

/// Drops copies whose settle notice was lost: held long, and the tier
/// already has that version (or a newer one). Ends with the cache.
async fn sweep_copies(replicas: Arc<Replicas>, tier: Arc<dyn Tier>, clock: Clock) {
    let mut tick = tokio::time::interval(COPY_SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Arc::strong_count(&replicas) == 1 {
            return;
        }
        for (key, version, deleted) in replicas.overdue(COPY_OVERDUE, COPY_SWEEP_MAX) {
            let durable = match tier.get(&key, clock.unix_secs()).await {
                Ok(ReadOutcome::Found(obj)) => obj.version >= version,
                // Gone from the tier: a delete is durable (or superseded);
                // a put is not there yet (its owner still has it).
                Ok(ReadOutcome::Absent | ReadOutcome::Expired) => deleted,
                Err(_) => false,
            };
            if durable {
                replicas.settle(&key, version);
            }
        }
    }
}
