//! The write-behind queue: puts and deletes are acknowledged from memory and
//! written to the tier in the background.
//!
//! Bounded (a full queue refuses new keys, so the writer gets an error:
//! never a silent drop), coalescing (a key written again before its upload
//! starts is uploaded once, with the latest value), concurrent (several
//! uploads at once, never two for the same key, so they cannot finish out
//! of order), retried with capped, jittered exponential backoff while the
//! tier is down, and flushed on close. A write the tier refuses for good
//! (see [`TierError::is_retryable`]) is dropped from the queue, counted and
//! logged instead of blocking its key for ever. A writer may wait until its
//! write is durable (`WRITE_MODE=sync`) and learns if it never will be.

use std::collections::VecDeque;

// foldhash, not SipHash: these maps are touched on every write.
use hashbrown::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use super::{Object, Tier, TierError, WriteOutcome};
use crate::backoff::Backoff;

/// A write waiting for the tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Store this object.
    Put(Object),
    /// Remove the key (as of this version).
    Delete(u64),
}

impl Pending {
    /// The write's version: a newer one replaces an older one, never the
    /// other way round.
    pub fn version(&self) -> u64 {
        match self {
            Pending::Put(obj) => obj.version,
            Pending::Delete(v) => *v,
        }
    }
}

/// First retry delay after a tier error; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between retries of one upload.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a queued write will never reach the tier.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tier ({tier}) refused the write for good: {reason}")]
pub struct Refused {
    /// The tier's name.
    pub tier: &'static str,
    /// What it said.
    pub reason: Arc<str>,
}

/// Completes once a queued write (or a later one of the same key) is
/// durable, or with why it never will be. Dropped unanswered if the queue
/// stops first.
pub type Durable = oneshot::Receiver<Result<(), Refused>>;

type Waiter = oneshot::Sender<Result<(), Refused>>;

/// Refused keys remembered so each is logged once; cleared when full.
const REFUSED_LOGGED: usize = 10_000;

#[derive(Default)]
struct State {
    /// Latest write per key not yet taken by an uploader.
    pending: HashMap<Vec<u8>, (Pending, Vec<Waiter>)>,
    /// Keys in arrival order (a key appears once while pending).
    order: VecDeque<Vec<u8>>,
    /// Keys being uploaded now, with what is being written (reads must see
    /// it until the tier has it).
    inflight: HashMap<Vec<u8>, Pending>,
    /// Pending keys set aside after failing while others succeeded: not
    /// taken again before their time.
    deferred: HashMap<Vec<u8>, tokio::time::Instant>,
}

/// Counters of the queue.
#[derive(Debug, Default)]
pub struct WriteBackStats {
    /// Writes that reached the tier (or found a newer version there).
    pub written: AtomicU64,
    /// Writes replaced by a later write of the same key before upload.
    pub coalesced: AtomicU64,
    /// Failed tier calls (each retried).
    pub errors: AtomicU64,
    /// Writes the tier refused because it held a newer version.
    pub superseded: AtomicU64,
    /// Writes the tier refused for good (dropped from the queue, never
    /// retried): they live in memory only.
    pub refused: AtomicU64,
}

struct Inner {
    tier: Arc<dyn Tier>,
    state: Mutex<State>,
    capacity: usize,
    /// Wakes uploaders when work arrives.
    work: Notify,
    /// Wakes writers and flushers when the queue shrinks.
    progress: Notify,
    stats: WriteBackStats,
    stop: CancellationToken,
    /// Keys whose refusal was logged (bounded), so a key written again and
    /// again is not logged again and again.
    refused_logged: Mutex<HashSet<Vec<u8>>>,
    /// Failed attempts since the last success, across all keys: many in a
    /// row mean the tier is down (retry in place, gently); a few mean one
    /// key is in trouble (set it aside, upload the others).
    failures_in_a_row: AtomicU64,
    uploaders: usize,
    /// Told of each write done with (durable, or refused for good).
    on_done: std::sync::OnceLock<DoneHook>,
}

/// What [`WriteBack::on_done`] calls: the key and the version done with.
pub type DoneHook = Box<dyn Fn(&[u8], u64) + Send + Sync>;

/// The write-behind queue of one node. Cheap to clone.
#[derive(Clone)]
pub struct WriteBack {
    inner: Arc<Inner>,
    tracker: TaskTracker,
}

impl std::fmt::Debug for WriteBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBack")
            .field("tier", &self.inner.tier.name())
            .field("depth", &self.depth())
            .finish()
    }
}

/// Nice value of the background threads: under contention the kernel
/// gives each about 1/70 of what a request thread gets, so uploads use the
/// CPU that serving leaves idle instead of adding to request latency. A
/// node saturated for long lets its queue grow (coalescing repeated keys)
/// until backpressure, rather than slowing every request.
pub const UPLOAD_NICE: i32 = 19;

/// A small runtime of low-priority threads for tier uploads (and the
/// blocking file I/O of the directory tier): signing, HTTP and checksums
/// of every upload are CPU work that must not compete with the request
/// path on equal terms.
pub struct Background {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Background")
    }
}

impl Background {
    /// Starts `threads` worker threads at [`UPLOAD_NICE`].
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            // Nice is per thread: many low-priority threads would add up
            // to a normal one. The directory tier's file I/O runs here.
            .max_blocking_threads(2 * threads.max(1))
            .thread_name("milena-tier")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Background {
            runtime: Some(runtime),
        })
    }

    /// Its handle, to spawn on.
    pub fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // May be dropped inside another runtime, where blocking is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux: nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // Failure only leaves the thread at normal priority.
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, UPLOAD_NICE);
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WriteBack {
    /// A queue of at most `capacity` keys, uploading with `uploaders` tasks
    /// on the current runtime.
    pub fn new(tier: Arc<dyn Tier>, capacity: usize, uploaders: usize) -> Self {
        Self::start(tier, capacity, uploaders, None)
    }

    /// As [`WriteBack::new`], with the uploaders on `runtime` (see
    /// [`Background`]).
    pub fn start(
        tier: Arc<dyn Tier>,
        capacity: usize,
        uploaders: usize,
        runtime: Option<&tokio::runtime::Handle>,
    ) -> Self {
        let inner = Arc::new(Inner {
            tier,
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            work: Notify::new(),
            progress: Notify::new(),
            stats: WriteBackStats::default(),
            stop: CancellationToken::new(),
            refused_logged: Mutex::new(HashSet::new()),
            failures_in_a_row: AtomicU64::new(0),
            uploaders: uploaders.max(1),
            on_done: std::sync::OnceLock::new(),
        });
        let tracker = TaskTracker::new();
        for _ in 0..uploaders.max(1) {
            match runtime {
                Some(rt) => tracker.spawn_on(uploader(inner.clone()), rt),
                None => tracker.spawn(uploader(inner.clone())),
            };
        }
        WriteBack { inner, tracker }
    }

    /// Keys waiting or being uploaded.
    pub fn depth(&self) -> usize {
        let s = lock(&self.inner.state);
        s.pending.len() + s.inflight.len()
    }

    /// The queue's counters.
    pub fn stats(&self) -> &WriteBackStats {
        &self.inner.stats
    }

    /// The write of `key` not yet uploaded, if any: a read-through must see
    /// it before the tier's older copy.
    pub fn peek(&self, key: &[u8]) -> Option<Pending> {
        let s = lock(&self.inner.state);
        let pending = s.pending.get(key).map(|(p, _)| p);
        // Being uploaded: the tier may not have it yet.
        let inflight = s.inflight.get(key);
        // An older write may wait behind a newer one being uploaded (a
        // previous owner's, taken over): the newer is the key's value.
        match (pending, inflight) {
            (Some(p), Some(i)) if i.version() > p.version() => Some(i.clone()),
            (Some(p), _) => Some(p.clone()),
            (None, i) => i.cloned(),
        }
    }

    /// Queues `write` for `key` if there is room (or the key is already
    /// queued, when it replaces the queued write); `None` when the queue is
    /// full: the caller answers with an error rather than wait.
    pub fn try_enqueue(&self, key: &[u8], write: Pending) -> Option<Durable> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(key, write, Some(tx)).then_some(rx)
    }

    /// [`WriteBack::try_enqueue`] for a caller that will not wait for the
    /// write to be durable (async mode, copies taken over): no waiter is
    /// kept, so a hot key written over and over while queued gathers none.
    /// `false` when the queue is full.
    pub fn try_enqueue_unwatched(&self, key: &[u8], write: Pending) -> bool {
        self.enqueue(key, write, None)
    }

    fn enqueue(&self, key: &[u8], write: Pending, waiter: Option<Waiter>) -> bool {
        {
            let mut s = lock(&self.inner.state);
            if let Some((p, waiters)) = s.pending.get_mut(key) {
                // The newer write wins, whichever arrived last: a delete
                // that had to read the tier first, or a previous owner's
                // write taken over, may come in after a newer one.
                if write.version() >= p.version() {
                    *p = write;
                }
                waiters.extend(waiter);
                self.inner.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            } else if s.pending.len() + s.inflight.len() < self.inner.capacity {
                s.pending
                    .insert(key.to_vec(), (write, waiter.into_iter().collect()));
                s.order.push_back(key.to_vec());
            } else {
                return false;
            }
        }
        self.inner.work.notify_one();
        true
    }

    /// Calls `hook` with each key and version the queue is done with
    /// (written, or refused for good); once per queue.
    pub fn on_done(&self, hook: DoneHook) {
        let _ = self.inner.on_done.set(hook);
    }

    /// Waits until everything queued so far is durable.
    pub async fn flush(&self) {
        loop {
            let wait = self.inner.progress.notified();
            if self.depth() == 0 {
                return;
            }
            wait.await;
        }
    }

    /// Flushes, then stops the uploaders.
    pub async fn close(&self) {
        self.flush().await;
        self.inner.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Attempts on one key before it is set aside, when the tier is not down.
const ATTEMPTS_BEFORE_DEFERRING: u32 = 3;

/// Takes the oldest pending key that is not being uploaded nor set aside
/// for later.
fn take(s: &mut State) -> Option<(Vec<u8>, Pending, Vec<Waiter>)> {
    let now = tokio::time::Instant::now();
    s.deferred.retain(|_, due| *due > now);
    let n = s.order.len();
    for _ in 0..n {
        let key = s.order.pop_front()?;
        if s.inflight.contains_key(&key) || s.deferred.contains_key(&key) {
            // Its previous upload is still running, or it waits for its
            // retry: keep order, look further.
            s.order.push_back(key);
            continue;
        }
        if let Some((p, w)) = s.pending.remove(&key) {
            s.inflight.insert(key.clone(), p.clone());
            return Some((key, p, w));
        }
    }
    None
}

async fn uploader(inner: Arc<Inner>) {
    loop {
        let job = {
            let wait = inner.work.notified();
            let (job, next_due) = {
                let mut s = lock(&inner.state);
                (take(&mut s), s.deferred.values().min().copied())
            };
            match job {
                Some(job) => job,
                None => {
                    tokio::select! {
                        _ = wait => continue,
                        _ = crate::budget::until(next_due) => continue,
                        _ = inner.stop.cancelled() => return,
                    }
                }
            }
        };
        let (key, write, waiters) = job;
        let outcome = match upload(&inner, &key, &write).await {
            Attempt::Done(outcome) => outcome,
            Attempt::Later(delay) => {
                set_aside(&inner, key, write, waiters, delay);
                continue;
            }
        };
        lock(&inner.state).inflight.remove(&key);
        if let Some(hook) = inner.on_done.get() {
            hook(&key, write.version());
        }
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        inner.progress.notify_waiters();
        // The key may have been written again meanwhile; let someone take it.
        inner.work.notify_one();
    }
}

/// How an upload ended.
enum Attempt {
    /// Written, or refused for good.
    Done(Result<(), Refused>),
    /// Failed a few times while other keys went through: try it again
    /// after this long, and upload the others meanwhile.
    Later(Duration),
}

/// Puts a key that keeps failing back in the queue, due after `delay`
/// (unless a newer write of it came in meanwhile, which takes its place
/// and its waiters).
fn set_aside(inner: &Inner, key: Vec<u8>, write: Pending, waiters: Vec<Waiter>, delay: Duration) {
    let mut s = lock(&inner.state);
    s.inflight.remove(&key);
    match s.pending.get_mut(&key) {
        Some((newer, later)) => {
            if write.version() > newer.version() {
                *newer = write;
            }
            later.extend(waiters);
        }
        None => {
            s.pending.insert(key.clone(), (write, waiters));
            s.order.push_back(key.clone());
        }
    }
    s.deferred.insert(key, tokio::time::Instant::now() + delay);
    drop(s);
    inner.work.notify_one();
}

/// Writes one queued write, retrying while the tier's errors may pass.
async fn upload(inner: &Inner, key: &[u8], write: &Pending) -> Attempt {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut attempts = 0u32;
    loop {
        let result: Result<WriteOutcome, TierError> = match write {
            Pending::Put(obj) => inner.tier.put(key, obj).await,
            Pending::Delete(v) => inner.tier.delete(key, *v).await,
        };
        match result {
            Ok(outcome) => {
                if outcome == WriteOutcome::Superseded {
                    inner.stats.superseded.fetch_add(1, Ordering::Relaxed);
                }
                inner.stats.written.fetch_add(1, Ordering::Relaxed);
                inner.failures_in_a_row.store(0, Ordering::Relaxed);
                return Attempt::Done(Ok(()));
            }
            Err(e) if !e.is_retryable() => {
                inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                let tier = inner.tier.name();
                if first_refusal(inner, key) {
                    error!(tier, key = %crate::logging::escape_bytes(key), error = %e, "the tier refused a write for good; the key lives in memory only until written again");
                } else {
                    debug!(tier, error = %e, "the tier refused a write for good");
                }
                return Attempt::Done(Err(Refused {
                    tier,
                    reason: e.to_string().into(),
                }));
            }
            Err(e) => {
                inner.stats.errors.fetch_add(1, Ordering::Relaxed);
                attempts += 1;
                let in_a_row = inner.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                // Many failures in a row, across keys: the tier is down,
                // and every key waits its turn here. A few: this key is in
                // trouble; the others must not wait behind it.
                let tier_down = in_a_row >= (2 * inner.uploaders as u64).max(16);
                // Even then, a key that failed long on its own is set aside
                // now and then, so keys that may succeed get a turn.
                let long = attempts >= 4 * ATTEMPTS_BEFORE_DEFERRING;
                if attempts >= ATTEMPTS_BEFORE_DEFERRING && (!tier_down || long) {
                    warn!(tier = inner.tier.name(), error = %e, "a tier write keeps failing; setting it aside and uploading the others");
                    return Attempt::Later(crate::backoff::jitter(MAX_BACKOFF));
                }
                let delay = backoff.next_delay();
                warn!(tier = inner.tier.name(), error = %e, retry_in = ?delay, "tier write failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether `key`'s refusal is the first one logged (bounded memory).
fn first_refusal(inner: &Inner, key: &[u8]) -> bool {
    let mut logged = inner
        .refused_logged
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if logged.len() >= REFUSED_LOGGED {
        logged.clear();
    }
    logged.insert(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tier::dir::DirTier;
    use crate::node::tier::{ReadOutcome, Tier};
    use bytes::Bytes;
    use std::sync::atomic::AtomicU32;

    /// A real directory tier whose first `fail` writes fail, whose writes of
    /// keys starting with `bad` fail for good (a corrupt object), and whose
    /// writes wait for `gate` to open: injected faults and latency, as a
    /// proxy would.
    #[derive(Debug)]
    struct Faulty {
        dir: DirTier,
        _root: tempfile::TempDir,
        fail: AtomicU32,
        puts: AtomicU32,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl Tier for Faulty {
        fn name(&self) -> &'static str {
            "faulty-dir"
        }
        async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
            self.dir.get(key, now).await
        }
        async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
            let _pass = self
                .gate
                .acquire()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.puts.fetch_add(1, Ordering::Relaxed);
            if key.starts_with(b"stuck") {
                return Err(std::io::Error::other("this object alone keeps failing").into());
            }
            if key.starts_with(b"bad") {
                return Err(TierError::Corrupt {
                    name: String::from_utf8_lossy(key).into_owned(),
                    reason: "not a Milena object".into(),
                });
            }
            if self.fail.load(Ordering::Relaxed) > 0 {
                self.fail.fetch_sub(1, Ordering::Relaxed);
                return Err(std::io::Error::other("injected failure").into());
            }
            self.dir.put(key, obj).await
        }
        async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
            self.dir.delete(key, version).await
        }
    }

    async fn faulty(fail: u32, open: usize) -> Arc<Faulty> {
        let root = tempfile::tempdir().expect("temporary directory");
        Arc::new(Faulty {
            dir: DirTier::open(root.path()).await.expect("dir"),
            _root: root,
            fail: AtomicU32::new(fail),
            puts: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(open),
        })
    }

    fn put(v: &'static [u8], version: u64) -> Pending {
        Pending::Put(Object {
            value: Bytes::from_static(v),
            expires_at: None,
            version,
        })
    }

    fn enqueue(wb: &WriteBack, key: &[u8], write: Pending) -> Durable {
        wb.try_enqueue(key, write).expect("room in the queue")
    }

    #[tokio::test]
    async fn writes_reach_the_tier_and_close_flushes() {
        let tier = faulty(0, 1000).await;
        let wb = WriteBack::new(tier.clone(), 100, 4);
        for i in 0..50u64 {
            drop(enqueue(&wb, format!("k{i}").as_bytes(), put(b"v", i)));
        }
        wb.close().await;
        assert_eq!(wb.depth(), 0);
        for i in 0..50u64 {
            assert!(matches!(
                tier.get(format!("k{i}").as_bytes(), 0).await.expect("get"),
                ReadOutcome::Found(_)
            ));
        }
    }

    #[tokio::test]
    async fn repeated_writes_of_a_key_are_coalesced_and_the_latest_wins() {
        let tier = faulty(0, 0).await; // uploads blocked for now
        let wb = WriteBack::new(tier.clone(), 100, 1);
        drop(enqueue(&wb, b"other", put(b"x", 1))); // occupies the uploader
        tokio::task::yield_now().await;
        for v in 1..=100u64 {
            drop(enqueue(
                &wb,
                b"k",
                put(if v == 100 { b"last" } else { b"old" }, v),
            ));
        }
        assert_eq!(
            wb.peek(b"k"),
            Some(put(b"last", 100)),
            "a read-through sees the queued value"
        );
        tier.gate.add_permits(1000);
        wb.close().await;
        assert_eq!(tier.puts.load(Ordering::Relaxed), 2, "one upload per key");
        match tier.get(b"k", 0).await.expect("get") {
            ReadOutcome::Found(o) => assert_eq!(o.value, Bytes::from_static(b"last")),
            other => panic!("{other:?}"),
        }
        assert_eq!(wb.stats().coalesced.load(Ordering::Relaxed), 99);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_tier_is_retried_until_the_write_lands() {
        let tier = faulty(5, 1000).await;
        let wb = WriteBack::new(tier.clone(), 10, 1);
        let durable = enqueue(&wb, b"k", put(b"v", 1));
        durable
            .await
            .expect("answered")
            .expect("durable after retries");
        assert_eq!(wb.stats().errors.load(Ordering::Relaxed), 5);
        assert!(matches!(
            tier.get(b"k", 0).await.expect("get"),
            ReadOutcome::Found(_)
        ));
        wb.close().await;
    }

    /// A write the tier refuses for good is given up at once: it neither
    /// blocks its key nor the other keys behind it, its waiter learns why,
    /// and closing the queue does not wait for it. (Virtual time: a queue
    /// that retried for ever would run into the hour below.)
    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried_for_ever() {
        let tier = faulty(0, 1000).await;
        let wb = WriteBack::new(tier.clone(), 10, 1);
        let bad = enqueue(&wb, b"bad-key", put(b"v", 1));
        let good = enqueue(&wb, b"good-key", put(b"v", 1));
        let refused = bad.await.expect("answered").expect_err("refused for good");
        assert!(
            refused.to_string().contains("not a Milena object"),
            "{refused}"
        );
        good.await
            .expect("answered")
            .expect("the next key is written");
        tokio::time::timeout(Duration::from_secs(3600), wb.close())
            .await
            .expect("close does not wait on a refused write");
        assert_eq!(wb.stats().refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            tier.puts.load(Ordering::Relaxed),
            2,
            "no retry of the refused write"
        );
        // Written again, it is tried again (and refused again), not ignored.
        let again = WriteBack::new(tier.clone(), 10, 1);
        let bad = enqueue(&again, b"bad-key", put(b"v", 2));
        assert!(bad.await.expect("answered").is_err());
        again.close().await;
    }

    /// A key whose uploads keep failing (while others succeed) is set
    /// aside and retried later: it does not hold the only uploader, so the
    /// keys behind it are written. (Virtual time: the hour is a hang guard.)
    #[tokio::test(start_paused = true)]
    async fn one_stuck_key_does_not_block_the_others() {
        let tier = faulty(0, 1000).await;
        let wb = WriteBack::new(tier.clone(), 100, 1);
        let stuck = enqueue(&wb, b"stuck-key", put(b"v", 1));
        let others: Vec<Durable> = (0..10u64)
            .map(|i| enqueue(&wb, format!("good-{i}").as_bytes(), put(b"v", i)))
            .collect();
        tokio::time::timeout(Duration::from_secs(3600), async {
            for d in others {
                d.await.expect("answered").expect("written");
            }
        })
        .await
        .expect("the others are written while one key keeps failing");
        assert_eq!(wb.depth(), 1, "the stuck key is still queued, not dropped");
        assert!(wb.peek(b"stuck-key").is_some(), "and still seen by reads");
        drop(stuck);
    }

    /// When every write fails (the tier is down), keys are not spun
    /// through: each uploader waits out its backoff on its key.
    #[tokio::test(start_paused = true)]
    async fn an_outage_is_waited_out_not_spun_through() {
        let tier = faulty(1_000_000, 1000).await; // every write fails
        let wb = WriteBack::new(tier.clone(), 1000, 2);
        for i in 0..200u64 {
            drop(enqueue(&wb, format!("k{i}").as_bytes(), put(b"v", i)));
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let attempts = tier.puts.load(Ordering::Relaxed);
        // Two uploaders backing off to 5 s: a few dozen attempts a minute,
        // not hundreds of keys tried in turn.
        assert!(attempts < 200, "{attempts} attempts in a minute of outage");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_new_keys_instead_of_dropping() {
        let tier = faulty(0, 0).await;
        let wb = WriteBack::new(tier.clone(), 2, 1);
        drop(enqueue(&wb, b"a", put(b"1", 1)));
        drop(enqueue(&wb, b"b", put(b"2", 1)));
        assert!(
            wb.try_enqueue(b"c", put(b"3", 1)).is_none(),
            "the third key must be refused, not queued past the bound"
        );
        // A key already queued is still taken: it replaces its queued write.
        drop(enqueue(&wb, b"b", put(b"2b", 2)));
        assert_eq!(wb.depth(), 2);
        tier.gate.add_permits(1000);
        wb.flush().await;
        drop(enqueue(&wb, b"c", put(b"3", 1)));
        wb.close().await;
        assert_eq!(tier.puts.load(Ordering::Relaxed), 3, "nothing dropped");
    }
}
