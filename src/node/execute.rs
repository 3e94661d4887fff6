//! The one match that joins a decoded request to the store (and, behind
//! it, the tier) and encodes the answer. No sockets here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use milena_protocol::{Body, Op, Response, Stat, Status, encode_response};
use tokio::sync::oneshot;

use super::store::PutOutcome;
use super::tier::writeback::Pending;
use super::tier::{Object, ReadOutcome};
use super::{Node, ReadThrough, Tally, WriteMode};
use crate::error::WireError;

/// An answer that needs the tier: the encoded response (with its length
/// prefix), once ready. The connection writes it whenever it completes.
pub type Deferred = Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>>;

/// How a request was answered.
enum Answer {
    /// Already encoded into `out` (a hit, stats).
    Encoded,
    /// A bare status.
    Status(Status),
    /// Later, by the tier.
    Later(Deferred),
}

/// Executes request `id`: appends its response to `out`, or returns the
/// work that will produce it (a read-through, a sync-mode write).
pub fn execute(
    node: &Arc<Node>,
    id: u64,
    op: Op<'_>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Option<Deferred> {
    tally.requests += 1;
    let result: Result<Answer, WireError> = match op {
        Op::Get { key } => {
            tally.gets += 1;
            get(node, id, key, 0, None, out)
        }
        Op::RoutedGet { since, key } => {
            tally.gets += 1;
            get(node, id, key, since, None, out)
        }
        Op::HandoffGet {
            since,
            previous,
            key,
        } => {
            tally.gets += 1;
            get(node, id, key, since, Some(previous), out)
        }
        Op::Peek { key } => peek(node, id, key, out),
        Op::Put { key, value, ttl } => {
            tally.puts += 1;
            // A direct put joins the ring epoch the node last heard of.
            let epoch = node.ring_epoch.load(Ordering::Relaxed);
            put(node, id, key, value, ttl, epoch)
        }
        Op::RoutedPut {
            epoch,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            put(node, id, key, value, ttl, epoch)
        }
        Op::Delete { key } => {
            tally.deletes += 1;
            delete(node, id, key)
        }
        Op::Ping => Ok(Answer::Status(Status::Ok)),
        Op::Stats => {
            encode_response(
                &Response {
                    id,
                    status: Status::Ok,
                    body: Body::Stats(stats(node)),
                },
                out,
            );
            Ok(Answer::Encoded)
        }
        Op::Hello { .. } => Err(WireError::DuplicateHello),
        Op::Join { .. } => Err(WireError::RouterOnly("join")),
        Op::Leave { .. } => Err(WireError::RouterOnly("leave")),
        Op::Heartbeat { .. } => Err(WireError::RouterOnly("heartbeat")),
        Op::Members => Err(WireError::RouterOnly("members")),
    };
    match result {
        Ok(Answer::Encoded) => None,
        Ok(Answer::Status(status)) => {
            respond(id, status, out);
            None
        }
        Ok(Answer::Later(work)) => Some(work),
        Err(e) => {
            tally.errors += 1;
            e.respond(id, out);
            None
        }
    }
}

fn respond(id: u64, status: Status, out: &mut Vec<u8>) {
    encode_response(
        &Response {
            id,
            status,
            body: Body::Empty,
        },
        out,
    );
}

fn check_key(node: &Node, key: &[u8]) -> Result<(), WireError> {
    if key.is_empty() {
        return Err(WireError::EmptyKey);
    }
    if key.len() > node.settings.max_key {
        return Err(WireError::KeyTooLarge {
            len: key.len(),
            max: node.settings.max_key,
        });
    }
    Ok(())
}

fn get(
    node: &Arc<Node>,
    id: u64,
    key: &[u8],
    since: u64,
    previous: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let hit = node.store.get_with(key, node.clock.now(), since, |value| {
        encode_value(id, value, out)
    });
    Ok(match hit {
        Some(()) => Answer::Encoded,
        // Memory-only: a miss is final.
        None if node.writeback.is_none() => Answer::Status(Status::NotFound),
        None => Answer::Later(Box::pin(read_through(
            node.clone(),
            id,
            key.to_vec(),
            since,
            previous.map(str::to_string),
        ))),
    })
}

/// Answers a peer's `Peek`: the write this node holds for `key` and has
/// not yet made durable, if any.
fn peek(node: &Node, id: u64, key: &[u8], out: &mut Vec<u8>) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let body = match node.writeback.as_ref().and_then(|wb| wb.peek(key)) {
        None => return Ok(Answer::Status(Status::NotFound)),
        Some(Pending::Put(obj)) => {
            encode_response(
                &Response {
                    id,
                    status: Status::Ok,
                    body: Body::Entry {
                        version: obj.version,
                        expires_at: obj.expires_at.unwrap_or(0),
                        deleted: false,
                        value: &obj.value,
                    },
                },
                out,
            );
            return Ok(Answer::Encoded);
        }
        Some(Pending::Delete(version)) => Body::Entry {
            version,
            expires_at: 0,
            deleted: true,
            value: b"",
        },
    };
    encode_response(
        &Response {
            id,
            status: Status::Ok,
            body,
        },
        out,
    );
    Ok(Answer::Encoded)
}

/// Wall-clock microseconds: the version of a write.
fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Answers a memory miss from the queue of unwritten writes, else from the
/// tier (and, right after a ring change, from the key's previous owner's
/// unwritten writes, whichever is newer), with one tier read however many
/// requests missed the key at once.
async fn read_through(
    node: Arc<Node>,
    id: u64,
    key: Vec<u8>,
    since: u64,
    previous: Option<String>,
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(known) = settled(&node, &key, since) {
        answer(id, known, &mut out);
        return out;
    }
    let (tx, rx) = oneshot::channel();
    let leader = {
        let mut reads = node.reads.lock().unwrap_or_else(|e| e.into_inner());
        match reads.get_mut(&key) {
            Some(waiters) if node.settings.coalesce_misses => {
                waiters.push(tx);
                false
            }
            Some(waiters) => {
                // Not coalescing: every miss reads the tier itself.
                waiters.push(tx);
                true
            }
            None => {
                reads.insert(key.clone(), vec![tx]);
                true
            }
        }
    };
    if leader {
        // A leader that just finished may have filled memory (or the
        // negative cache) and left between our checks above and our
        // registering: look again before going to the tier.
        let result = if let Some(known) = settled(&node, &key, since) {
            known
        } else {
            let now = node.clock.unix_secs();
            node.stats.tier_reads.fetch_add(1, Ordering::Relaxed);
            let tier_read = node.tier.get(&key, now);
            let (stored, dirty) = match &previous {
                None => (tier_read.await, None),
                Some(prev) => {
                    node.stats.handoff_peeks.fetch_add(1, Ordering::Relaxed);
                    let (stored, peeked) = tokio::join!(tier_read, node.peers.peek(prev, &key));
                    let dirty = peeked.unwrap_or_else(|e| {
                        node.stats.handoff_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(previous = %prev, error = %e, "could not ask a key's previous owner");
                        None
                    });
                    (stored, dirty)
                }
            };
            resolve(&node, &key, now, stored, dirty)
        };
        let waiters = node
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
    match rx.await {
        Ok(result) => answer(id, result, &mut out),
        Err(_) => {
            WireError::Unavailable("the tier read was abandoned".into()).respond(id, &mut out)
        }
    }
    out
}

/// What the node already knows about `key` without the tier: a value in
/// memory (written since it gained the key), a write still queued, or a
/// miss remembered since it gained the key.
fn settled(node: &Node, key: &[u8], since: u64) -> Option<ReadThrough> {
    let mut value = None;
    node.store.get_with(key, node.clock.now(), since, |v| {
        value = Some(Bytes::copy_from_slice(v));
    });
    if let Some(v) = value {
        return Some(ReadThrough::Found(v));
    }
    match node.writeback.as_ref().and_then(|wb| wb.peek(key)) {
        Some(Pending::Put(obj)) => return Some(ReadThrough::Found(obj.value)),
        Some(Pending::Delete(_)) => return Some(ReadThrough::Missing),
        None => {}
    }
    node.negative
        .get_with(key, node.clock.now(), since, |_| ())
        .map(|()| ReadThrough::Missing)
}

/// Encodes a read-through's outcome as the answer to request `id`.
fn answer(id: u64, result: ReadThrough, out: &mut Vec<u8>) {
    match result {
        ReadThrough::Found(v) => encode_value(id, &v, out),
        ReadThrough::Missing => respond(id, Status::NotFound, out),
        ReadThrough::Failed(e) => {
            WireError::Unavailable(format!("the tier could not be read: {e}")).respond(id, out)
        }
    }
}

/// The outcome of a read-through from what the tier holds and what the
/// key's previous owner had not yet written (the newer version wins; a
/// previous owner's write that wins is taken over, so it is not lost if
/// that node dies before uploading it). Fills memory or the negative cache.
fn resolve(
    node: &Node,
    key: &[u8],
    now: u64,
    stored: Result<ReadOutcome, super::tier::TierError>,
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
            node.stats.handoff_adopted.fetch_add(1, Ordering::Relaxed);
            if let Some(wb) = &node.writeback {
                // If the queue is full the previous owner still has it.
                let _ = wb.try_enqueue(key, write.clone());
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
            // Fresh from the durable copy: tag it with the current time,
            // so no ownership epoch counts it as stale.
            node.store
                .put(key, &obj.value, ttl, node.clock.now(), wall_micros());
            ReadThrough::Found(obj.value)
        }
        Ok(ReadOutcome::Absent | ReadOutcome::Expired) => {
            node.negative.put(
                key,
                b"",
                super::NEGATIVE_TTL_SECS,
                node.clock.now(),
                wall_micros(),
            );
            ReadThrough::Missing
        }
        Err(e) => {
            node.stats.tier_read_errors.fetch_add(1, Ordering::Relaxed);
            ReadThrough::Failed(e.to_string())
        }
    }
}

fn encode_value(id: u64, value: &[u8], out: &mut Vec<u8>) {
    encode_response(
        &Response {
            id,
            status: Status::Ok,
            body: Body::Value(value),
        },
        out,
    );
}

/// Queues `write` for the tier; in sync mode the answer waits until the
/// tier has it. A full queue is an error, never a silent drop.
fn persist(
    node: &Node,
    id: u64,
    key: &[u8],
    write: Pending,
    ok: Status,
) -> Result<Answer, WireError> {
    let Some(wb) = &node.writeback else {
        return Ok(Answer::Status(ok));
    };
    node.negative.delete(key, node.clock.now());
    let Some(durable) = wb.try_enqueue(key, write) else {
        return Err(WireError::Unavailable(format!(
            "the write-behind queue is full (QUEUE_CAPACITY={}); the tier ({}) may be down",
            node.settings.queue_capacity,
            node.tier.name()
        )));
    };
    if node.settings.write_mode == WriteMode::Async {
        return Ok(Answer::Status(ok));
    }
    Ok(Answer::Later(Box::pin(async move {
        let mut out = Vec::new();
        match durable.await {
            Ok(()) => respond(id, ok, &mut out),
            Err(_) => {
                WireError::Unavailable("the node stopped before the write was durable".into())
                    .respond(id, &mut out)
            }
        }
        out
    })))
}

fn put(
    node: &Node,
    id: u64,
    key: &[u8],
    value: &[u8],
    ttl: Option<u32>,
    epoch: u64,
) -> Result<Answer, WireError> {
    check_key(node, key)?;
    if value.len() > node.settings.max_value {
        return Err(WireError::ValueTooLarge {
            len: value.len(),
            max: node.settings.max_value,
        });
    }
    let ttl = ttl.unwrap_or(node.settings.default_ttl);
    match node.store.put(key, value, ttl, node.clock.now(), epoch) {
        PutOutcome::Stored { .. } => {}
        PutOutcome::TooLarge => {
            return Err(WireError::EntryTooLarge {
                len: key.len() + value.len(),
            });
        }
    }
    let obj = Object {
        value: Bytes::copy_from_slice(value),
        expires_at: (ttl > 0).then(|| node.clock.unix_secs() + u64::from(ttl)),
        version: epoch.max(wall_micros()),
    };
    persist(node, id, key, Pending::Put(obj), Status::Ok)
}

fn delete(node: &Node, id: u64, key: &[u8]) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let existed = node.store.delete(key, node.clock.now());
    let status = if existed || node.writeback.is_some() {
        // With a tier, the key may live there even when memory lacks it.
        Status::Ok
    } else {
        Status::NotFound
    };
    persist(node, id, key, Pending::Delete(wall_micros()), status)
}

fn stats(node: &Node) -> Vec<Stat<'static>> {
    let s = &node.stats;
    let st = node.store.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let uptime = node.clock.now().0 / 1000;
    let wb = node.writeback.as_ref();
    [
        ("uptime_seconds", uptime),
        ("connections", load(&s.conns.open)),
        ("connections_total", load(&s.conns.total)),
        ("connections_refused", load(&s.conns.refused)),
        ("tasks", crate::metrics::alive_tasks()),
        ("protocol_errors", load(&s.protocol_errors)),
        ("requests", load(&s.requests)),
        ("errors", load(&s.errors)),
        ("gets", load(&s.gets)),
        ("puts", load(&s.puts)),
        ("deletes", load(&s.deletes)),
        ("hits", st.counters.hits),
        ("misses", st.counters.misses),
        ("items", st.items),
        ("bytes", st.bytes),
        ("evictions", st.counters.evictions),
        ("expirations", st.counters.expirations),
        ("stale_drops", st.counters.stale),
        ("tier_reads", load(&s.tier_reads)),
        ("tier_read_errors", load(&s.tier_read_errors)),
        ("handoff_peeks", load(&s.handoff_peeks)),
        ("handoff_adopted", load(&s.handoff_adopted)),
        ("handoff_errors", load(&s.handoff_errors)),
        ("tier_get_count", load(&s.tier_times.count[0])),
        ("tier_get_micros", load(&s.tier_times.micros[0])),
        ("tier_put_count", load(&s.tier_times.count[1])),
        ("tier_put_micros", load(&s.tier_times.micros[1])),
        ("tier_delete_count", load(&s.tier_times.count[2])),
        ("tier_delete_micros", load(&s.tier_times.micros[2])),
        ("tier_queue_depth", wb.map_or(0, |w| w.depth() as u64)),
        (
            "tier_writes",
            wb.map_or(0, |w| w.stats().written.load(Ordering::Relaxed)),
        ),
        (
            "tier_write_errors",
            wb.map_or(0, |w| w.stats().errors.load(Ordering::Relaxed)),
        ),
        (
            "tier_coalesced",
            wb.map_or(0, |w| w.stats().coalesced.load(Ordering::Relaxed)),
        ),
        ("ring_epoch", node.ring_epoch.load(Ordering::Relaxed)),
        ("max_items", node.settings.store.max_items as u64),
        ("max_bytes", node.settings.store.max_bytes.unwrap_or(0)),
        ("shards", node.store.shard_count() as u64),
    ]
    .into_iter()
    .map(|(name, value)| Stat { name, value })
    .collect()
}
