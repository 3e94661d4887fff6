//! The engine: N connections, each keeping up to `pipeline` requests in
//! flight, closed-loop or on an open-loop timetable.
//!
//! In open-loop mode a request's latency runs from the moment the timetable
//! said to send it, not from when it was actually sent, so a server that
//! stalls is charged for the requests that queued behind the stall
//! (coordinated omission).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proto::{Answer, Parser, Target, encode_get, encode_set, greeting};
use crate::report::Report;
use crate::workload::{Generator, KeyDist, Op, Ratio, ValueSize, key_bytes};

/// How long stays stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Measure for this long (after the warm-up).
    Duration(Duration),
    /// Send this many requests in all (after the warm-up).
    Requests(u64),
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where to send.
    pub target: Target,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Get:set mix.
    pub ratio: Ratio,
    /// Key space size.
    pub keys: u64,
    /// Key distribution.
    pub dist: KeyDist,
    /// Key length in bytes.
    pub key_size: usize,
    /// Value sizes.
    pub value_size: ValueSize,
    /// Set every key once before measuring.
    pub prefill: bool,
    /// When to stop.
    pub limit: Limit,
    /// Load sent but not measured first.
    pub warmup: Duration,
    /// Open-loop total rate (requests per second); closed loop when `None`.
    pub rate: Option<f64>,
    /// Seed of the operation streams.
    pub seed: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The timetable of one open-loop connection: its `k`-th request is due at
/// `start + offset + k·interval`.
#[derive(Debug, Clone, Copy)]
pub struct Timetable {
    start: Instant,
    offset: Duration,
    interval: Duration,
}

impl Timetable {
    /// Connection `i` of `n` sharing `rate` requests per second; the
    /// connections are staggered evenly across one interval.
    pub fn new(start: Instant, rate: f64, i: usize, n: usize) -> Self {
        let per_conn = (rate / n.max(1) as f64).max(1e-6);
        let interval = Duration::from_secs_f64(1.0 / per_conn);
        let offset = interval.mul_f64(i as f64 / n.max(1) as f64);
        Timetable {
            start,
            offset,
            interval,
        }
    }

    /// When request `k` is due.
    pub fn due(&self, k: u64) -> Instant {
        self.start + self.offset + self.interval.mul_f64(k as f64)
    }
}

/// What one connection measured.
#[derive(Debug)]
struct Tally {
    hist: Histogram<u64>,
    gets: u64,
    hits: u64,
    misses: u64,
    sets: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Result<Self, String> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?,
            gets: 0,
            hits: 0,
            misses: 0,
            sets: 0,
            errors: BTreeMap::new(),
        })
    }

    fn merge(&mut self, o: Tally) -> Result<(), String> {
        self.hist.add(o.hist).map_err(|e| e.to_string())?;
        self.gets += o.gets;
        self.hits += o.hits;
        self.misses += o.misses;
        self.sets += o.sets;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        Ok(())
    }
}

/// State all connections share.
struct Shared {
    /// Requests that may still be sent in a `Requests` run.
    budget: AtomicU64,
    stop: AtomicBool,
    completed: AtomicU64,
    measure_from: Instant,
    measure_until: Option<Instant>,
}

/// Where a connection's operations come from.
enum Source {
    Prefill { next: u64, end: u64 },
    Workload(Generator),
}

/// Runs the load and reports what it measured.
pub async fn run(cfg: RunConfig) -> Result<Report, String> {
    if cfg.prefill {
        prefill(&cfg).await?;
    }
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let (budget, measure_until) = match cfg.limit {
        Limit::Duration(d) => (u64::MAX, Some(measure_from + d)),
        Limit::Requests(n) => (n, None),
    };
    let shared = Arc::new(Shared {
        budget: AtomicU64::new(budget),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        measure_from,
        measure_until,
    });
    let progress = cfg
        .progress
        .then(|| spawn_progress(shared.clone(), cfg.limit, cfg.warmup));
    let mut tasks = Vec::new();
    for i in 0..cfg.connections {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let generator = Generator::new(
            cfg.keys,
            cfg.dist,
            cfg.ratio,
            cfg.value_size,
            cfg.seed.wrapping_add(i as u64 * 7919),
        );
        let table = cfg
            .rate
            .map(|r| Timetable::new(start, r, i, cfg.connections));
        tasks.push(tokio::spawn(async move {
            connection(&cfg, Source::Workload(generator), table, &shared).await
        }));
    }
    let mut total = Tally::new()?;
    let mut first_error = None;
    for t in tasks {
        match t.await.map_err(|e| e.to_string())? {
            Ok(tally) => total.merge(tally)?,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let end = Instant::now();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let window_end = measure_until.map_or(end, |u| u.min(end));
    let secs = window_end
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    Ok(Report::new(
        &cfg,
        secs,
        &total.hist,
        total.gets,
        total.hits,
        total.misses,
        total.sets,
        total.errors,
    ))
}

/// Sets every key once, spread over the connections, unmeasured.
async fn prefill(cfg: &RunConfig) -> Result<(), String> {
    let shared = Arc::new(Shared {
        budget: AtomicU64::new(u64::MAX),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        measure_from: Instant::now() + Duration::from_secs(86_400 * 365),
        measure_until: None,
    });
    let n = cfg.connections.max(1) as u64;
    let per = cfg.keys.div_ceil(n);
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = cfg.clone();
        c.pipeline = c.pipeline.max(32);
        let shared = shared.clone();
        let source = Source::Prefill {
            next: i * per,
            end: ((i + 1) * per).min(cfg.keys),
        };
        tasks.push(tokio::spawn(async move {
            connection(&c, source, None, &shared).await
        }));
    }
    for t in tasks {
        let tally = t.await.map_err(|e| e.to_string())??;
        if let Some((kind, n)) = tally.errors.iter().next() {
            return Err(format!("prefill failed: {n} × {kind}"));
        }
    }
    Ok(())
}

fn spawn_progress(
    shared: Arc<Shared>,
    limit: Limit,
    warmup: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = match limit {
            Limit::Duration(d) => indicatif::ProgressBar::new((d + warmup).as_secs()),
            Limit::Requests(n) => indicatif::ProgressBar::new(n),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let start = Instant::now();
        let mut last = (start, 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let done = shared.completed.load(Ordering::Relaxed);
            let now = Instant::now();
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, done);
            bar.set_position(match limit {
                Limit::Duration(_) => now.duration_since(start).as_secs(),
                Limit::Requests(_) => done,
            });
            bar.set_message(format!("{rate:.0} ops/s"));
        }
    })
}

/// Gives out one request from a `Requests` budget.
fn take_one(shared: &Shared) -> bool {
    shared
        .budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
        .is_ok()
}

/// How long a connection waits for its last answers once it stops sending.
const DRAIN: Duration = Duration::from_secs(5);

async fn connection(
    cfg: &RunConfig,
    mut source: Source,
    table: Option<Timetable>,
    shared: &Shared,
) -> Result<Tally, String> {
    let kind = cfg.target.kind;
    let mut stream = TcpStream::connect(&cfg.target.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.target.addr))?;
    let _ = stream.set_nodelay(true);
    let mut parser = Parser::new(kind);
    let mut tally = Tally::new()?;
    let mut wbuf = Vec::with_capacity(64 * 1024);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    greeting(kind, &mut wbuf);
    // (id, due or sent time, is a get)
    let mut pending: VecDeque<(u64, Instant, bool)> = VecDeque::new();
    let mut key = Vec::with_capacity(cfg.key_size + 8);
    let value = vec![b'x'; cfg.value_size.max];
    let mut next_id = 1u64;
    let mut k = 0u64;
    let mut sending = true;
    let mut drain_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if sending
            && (shared.stop.load(Ordering::Relaxed)
                || shared.measure_until.is_some_and(|u| now >= u))
        {
            sending = false;
        }
        while sending && pending.len() < cfg.pipeline {
            let due = match table {
                Some(t) => {
                    let due = t.due(k);
                    if due > now {
                        break;
                    }
                    due
                }
                None => now,
            };
            let op = match &mut source {
                Source::Prefill { next, end } => {
                    if *next >= *end {
                        sending = false;
                        break;
                    }
                    *next += 1;
                    Op::Set(*next - 1, cfg.value_size.max)
                }
                Source::Workload(g) => {
                    // Warm-up requests do not count against a request budget.
                    if due >= shared.measure_from && !take_one(shared) {
                        sending = false;
                        break;
                    }
                    g.next_op()
                }
            };
            key.clear();
            let is_get = match op {
                Op::Get(n) => {
                    key_bytes(n, cfg.key_size, &mut key);
                    encode_get(kind, next_id, &key, &mut wbuf);
                    true
                }
                Op::Set(n, size) => {
                    key_bytes(n, cfg.key_size, &mut key);
                    encode_set(kind, next_id, &key, &value[..size], &mut wbuf);
                    false
                }
            };
            pending.push_back((next_id, due, is_get));
            next_id += 1;
            k += 1;
        }
        if !wbuf.is_empty() {
            stream
                .write_all(&wbuf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            wbuf.clear();
        }
        if pending.is_empty() && !sending {
            return Ok(tally);
        }
        if !sending && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + DRAIN);
        }
        let wake = match (table, sending && pending.len() < cfg.pipeline) {
            (Some(t), true) => Some(t.due(k)),
            _ => drain_deadline,
        };
        let read = tokio::select! {
            r = stream.read_buf(&mut rbuf) => Some(r),
            _ = sleep_until_opt(wake) => None,
        };
        match read {
            None => {
                if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    *tally.errors.entry("timeout".into()).or_default() += pending.len() as u64;
                    return Ok(tally);
                }
                continue;
            }
            Some(Ok(0)) => return Err("the server closed the connection".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
        let now = Instant::now();
        let mut done = 0;
        while let Some((id, answer)) = parser.next(&mut rbuf)? {
            let pos = match id {
                Some(id) => pending.iter().position(|p| p.0 == id),
                None => (!pending.is_empty()).then_some(0),
            };
            let Some((_, due, is_get)) = pos.and_then(|p| pending.remove(p)) else {
                return Err("an answer nobody asked for".into());
            };
            done += 1;
            let measured =
                due >= shared.measure_from && shared.measure_until.is_none_or(|u| now <= u);
            if !measured {
                continue;
            }
            let _ = tally
                .hist
                .record(now.saturating_duration_since(due).as_nanos().max(1) as u64);
            match answer {
                Answer::Hit => {
                    tally.gets += 1;
                    tally.hits += 1;
                }
                Answer::Miss => {
                    tally.gets += 1;
                    tally.misses += 1;
                }
                Answer::Stored => tally.sets += 1,
                Answer::Error(kind) => {
                    if is_get {
                        tally.gets += 1;
                    } else {
                        tally.sets += 1;
                    }
                    *tally.errors.entry(kind).or_default() += 1;
                }
            }
        }
        shared.completed.fetch_add(done, Ordering::Relaxed);
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timetable_spreads_the_rate_over_connections() {
        let start = Instant::now();
        // 1000/s over 4 connections: each sends every 4 ms, staggered by 1 ms.
        let t0 = Timetable::new(start, 1000.0, 0, 4);
        let t1 = Timetable::new(start, 1000.0, 1, 4);
        assert_eq!(t0.due(0), start);
        assert_eq!(t0.due(1) - start, Duration::from_millis(4));
        assert_eq!(t0.due(250) - start, Duration::from_secs(1));
        assert_eq!(t1.due(0) - start, Duration::from_millis(1));
        // Over one second the four together are due 1000 times.
        let due: usize = (0..4)
            .map(|i| {
                let t = Timetable::new(start, 1000.0, i, 4);
                (0..10_000)
                    .take_while(|&k| t.due(k) < start + Duration::from_secs(1))
                    .count()
            })
            .sum();
        assert_eq!(due, 1000);
    }
}
