//! The one match that joins a decoded request to the node's cache and
//! encodes the answer (Pelikan's "execute" step). No sockets and no storage
//! logic here: the cache answers in outcomes, this turns them into wire
//! responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use milena_protocol::{Body, Cond, Op, Response, Status, encode_response};

use super::cache::{
    Ack, CacheError, CondPut, CondWrite, Lookup, ReadThrough, Remaining, Removal, TtlLookup,
};
use super::tier::writeback::Pending;
use super::{Node, Tally};
use crate::error::WireError;

/// An answer that needs the tier: the encoded response (with its length
/// prefix), once ready. The connection writes it whenever it completes.
pub type Deferred = Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>>;

/// A request answered later.
pub enum Later {
    /// Work that must run to its end even if the connection goes (a tier
    /// read others may be waiting on): spawned.
    Spawn(Deferred),
    /// Only a wait (for copies to be taken): the connection polls it
    /// itself, and dropping it loses nothing but the answer.
    Here(Deferred),
}

/// How a request was answered.
enum Answer {
    /// Already encoded into `out` (a hit, stats).
    Encoded,
    /// A bare status.
    Status(Status),
    /// Later, by the tier.
    Later(Deferred),
    /// Once the write's copies are held.
    AfterCopies(Deferred),
}

impl From<CacheError> for WireError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::EntryTooLarge { len } => WireError::EntryTooLarge { len },
            e @ CacheError::QueueFull { .. } => WireError::Unavailable(e.to_string()),
        }
    }
}

/// Executes request `id`: appends its response to `out`, or returns the
/// work that will produce it (a read-through, a sync-mode write, a wait
/// for copies).
pub fn execute(
    node: &Arc<Node>,
    id: u64,
    op: Op<'_>,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Option<Later> {
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
        Op::FencedGet {
            revision,
            since,
            previous,
            key,
        } => {
            tally.gets += 1;
            fenced(
                node,
                revision,
                since,
                |out| get(node, id, key, since, previous, out),
                out,
            )
        }
        Op::FencedPut {
            revision,
            since,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            fenced(
                node,
                revision,
                since,
                |_| put(node, id, key, value, ttl, revision),
                out,
            )
        }
        Op::FencedDelete {
            revision,
            since,
            key,
        } => {
            tally.deletes += 1;
            fenced(node, revision, since, |_| delete(node, id, key), out)
        }
        Op::Replicate {
            version,
            expires_at,
            deleted,
            key,
            value,
        } => replicate(node, key, value, version, expires_at, deleted),
        Op::Settle { entries } => {
            for e in entries {
                node.cache.replicas.settle(e.key, e.version);
            }
            Ok(Answer::Status(Status::Ok))
        }
        Op::PutIf {
            cond,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            let version = node.ring_epoch.load(Ordering::Relaxed);
            let write = CondWrite {
                key,
                value,
                ttl,
                version,
                since: 0,
                previous: None,
            };
            put_if(node, id, cond, write)
        }
        Op::RoutedPutIf {
            version,
            since,
            previous,
            cond,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            let write = CondWrite {
                key,
                value,
                ttl,
                version,
                since,
                previous,
            };
            put_if(node, id, cond, write)
        }
        Op::FencedPutIf {
            revision,
            since,
            previous,
            cond,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            let write = CondWrite {
                key,
                value,
                ttl,
                version: revision,
                since,
                previous,
            };
            fenced(
                node,
                revision,
                since,
                |_| put_if(node, id, cond, write),
                out,
            )
        }
        Op::Ttl { key } => {
            tally.gets += 1;
            ttl(node, id, key, 0, None, out)
        }
        Op::RoutedTtl {
            since,
            previous,
            key,
        } => {
            tally.gets += 1;
            ttl(node, id, key, since, previous, out)
        }
        Op::FencedTtl {
            revision,
            since,
            previous,
            key,
        } => {
            tally.gets += 1;
            fenced(
                node,
                revision,
                since,
                |out| ttl(node, id, key, since, previous, out),
                out,
            )
        }
        Op::Ping => Ok(Answer::Status(Status::Ok)),
        Op::Stats => {
            respond(id, Status::Ok, Body::Stats(node.stats_list()), out);
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
            respond(id, status, Body::Empty, out);
            None
        }
        Ok(Answer::Later(work)) => Some(Later::Spawn(work)),
        Ok(Answer::AfterCopies(work)) => Some(Later::Here(work)),
        Err(e) => {
            tally.errors += 1;
            e.respond(id, out);
            None
        }
    }
}

/// Runs `work` if the fence admits a request routed under `revision` for
/// a key gained at `since`, holding the admission until the answer is
/// ready (a ring change waits for it before saying it has applied).
fn fenced(
    node: &Node,
    revision: u64,
    since: u64,
    work: impl FnOnce(&mut Vec<u8>) -> Result<Answer, WireError>,
    out: &mut Vec<u8>,
) -> Result<Answer, WireError> {
    let admission = node
        .fence
        .admit(revision, since)
        .map_err(|r| WireError::StaleRing(r.to_string()))?;
    let held = move |later: Deferred| -> Deferred {
        Box::pin(async move {
            let answer = later.await;
            drop(admission);
            answer
        })
    };
    Ok(match work(out)? {
        Answer::Later(later) => Answer::Later(held(later)),
        Answer::AfterCopies(later) => Answer::AfterCopies(held(later)),
        now => now,
    })
}

fn respond(id: u64, status: Status, body: Body<'_>, out: &mut Vec<u8>) {
    encode_response(&Response { id, status, body }, out);
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

fn check_value(node: &Node, value: &[u8]) -> Result<(), WireError> {
    if value.len() > node.settings.max_value {
        return Err(WireError::ValueTooLarge {
            len: value.len(),
            max: node.settings.max_value,
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
    let lookup = node.cache.get(key, since, previous, |value| {
        respond(id, Status::Ok, Body::Value(value), out)
    });
    Ok(match lookup {
        Lookup::Hit => Answer::Encoded,
        Lookup::Miss => Answer::Status(Status::NotFound),
        Lookup::ReadThrough(read) => Answer::Later(Box::pin(async move {
            let mut out = Vec::new();
            match read.await {
                ReadThrough::Found(v) => respond(id, Status::Ok, Body::Value(&v), &mut out),
                ReadThrough::Missing => respond(id, Status::NotFound, Body::Empty, &mut out),
                ReadThrough::Failed(e) => {
                    WireError::Unavailable(format!("the tier could not be read: {e}"))
                        .respond(id, &mut out)
                }
            }
            out
        })),
    })
}

/// How long a key has left: `Ok` + `Remaining`, or `NotFound`.
fn ttl(
    node: &Arc<Node>,
    id: u64,
    key: &[u8],
    since: u64,
    previous: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let answer = move |r: Remaining, out: &mut Vec<u8>| match r {
        Remaining::Missing => respond(id, Status::NotFound, Body::Empty, out),
        Remaining::Forever => respond(id, Status::Ok, Body::Remaining { millis: None }, out),
        Remaining::Millis(ms) => respond(id, Status::Ok, Body::Remaining { millis: Some(ms) }, out),
    };
    Ok(match node.cache.ttl(key, since, previous) {
        TtlLookup::Now(r) => {
            answer(r, out);
            Answer::Encoded
        }
        TtlLookup::ReadFirst(read) => Answer::Later(Box::pin(async move {
            let mut out = Vec::new();
            match read.await {
                Ok(r) => answer(r, &mut out),
                Err(e) => WireError::Unavailable(e.to_string()).respond(id, &mut out),
            }
            out
        })),
    })
}

/// Answers a peer's `Peek`: the write this node holds for `key` and has
/// not yet made durable, if any.
fn peek(node: &Node, id: u64, key: &[u8], out: &mut Vec<u8>) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let body = match node.cache.peek(key) {
        None => return Ok(Answer::Status(Status::NotFound)),
        Some(Pending::Put(obj)) => {
            let body = Body::Entry {
                version: obj.version,
                expires_at: obj.expires_at.unwrap_or(0),
                deleted: false,
                value: &obj.value,
            };
            respond(id, Status::Ok, body, out);
            return Ok(Answer::Encoded);
        }
        Some(Pending::Delete(version)) => Body::Entry {
            version,
            expires_at: 0,
            deleted: true,
            value: b"",
        },
    };
    respond(id, Status::Ok, body, out);
    Ok(Answer::Encoded)
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
    check_value(node, value)?;
    let ack = node.cache.put(key, value, ttl, epoch)?;
    Ok(acknowledge(id, ack, Status::Ok))
}

fn delete(node: &Arc<Node>, id: u64, key: &[u8]) -> Result<Answer, WireError> {
    check_key(node, key)?;
    let existed = |e: bool| if e { Status::Ok } else { Status::NotFound };
    match node.cache.delete(key)? {
        Removal::Done(e, ack) => Ok(acknowledge(id, ack, existed(e))),
        Removal::ReadFirst(read) => Ok(Answer::Later(Box::pin(async move {
            match read.await {
                Ok((e, ack)) => settle(id, ack, existed(e)).await,
                Err(e) => {
                    let mut out = Vec::new();
                    WireError::Unavailable(e.to_string()).respond(id, &mut out);
                    out
                }
            }
        }))),
    }
}

/// A conditional put: `Ok` when written, `NotStored` when `cond` did not hold.
fn put_if(
    node: &Arc<Node>,
    id: u64,
    cond: Cond,
    write: CondWrite<'_>,
) -> Result<Answer, WireError> {
    check_key(node, write.key)?;
    check_value(node, write.value)?;
    let status = |written: bool| {
        if written {
            Status::Ok
        } else {
            Status::NotStored
        }
    };
    match node.cache.put_if(cond, write)? {
        CondPut::Done(written, ack) => Ok(acknowledge(id, ack, status(written))),
        CondPut::ReadFirst(read) => Ok(Answer::Later(Box::pin(async move {
            match read.await {
                Ok((written, ack)) => settle(id, ack, status(written)).await,
                Err(e) => {
                    let mut out = Vec::new();
                    WireError::Unavailable(e.to_string()).respond(id, &mut out);
                    out
                }
            }
        }))),
    }
}

/// Holds a peer's copy of a write it has not yet made durable.
fn replicate(
    node: &Node,
    key: &[u8],
    value: &[u8],
    version: u64,
    expires_at: u64,
    deleted: bool,
) -> Result<Answer, WireError> {
    check_key(node, key)?;
    check_value(node, value)?;
    let write = if deleted {
        Pending::Delete(version)
    } else {
        Pending::Put(super::tier::Object {
            value: bytes::Bytes::copy_from_slice(value),
            expires_at: (expires_at != 0).then_some(expires_at),
            version,
        })
    };
    if node.cache.replicas.hold(key, write) {
        Ok(Answer::Status(Status::Ok))
    } else {
        Err(WireError::Unavailable(
            "this node's room for copies of other nodes' writes is full".into(),
        ))
    }
}

/// Answers a write with `status` now, or once it is durable.
fn acknowledge(id: u64, ack: Ack, status: Status) -> Answer {
    match ack {
        Ack::Now => Answer::Status(status),
        later @ Ack::WhenCopied(_) => Answer::AfterCopies(Box::pin(settle(id, later, status))),
        later => Answer::Later(Box::pin(settle(id, later, status))),
    }
}

/// The answer to a write once its acknowledgement is due.
async fn settle(id: u64, ack: Ack, status: Status) -> Vec<u8> {
    let mut out = Vec::new();
    let durable = match ack {
        Ack::Now => {
            respond(id, status, Body::Empty, &mut out);
            return out;
        }
        Ack::WhenCopied(copied) => {
            copied.await;
            respond(id, status, Body::Empty, &mut out);
            return out;
        }
        Ack::WhenDurable(durable) => durable,
    };
    match durable.await {
        Ok(Ok(())) => respond(id, status, Body::Empty, &mut out),
        // In memory, maybe served, but not durable: the client cannot
        // tell whether the write "happened", so it must not assume either.
        Ok(Err(refused)) => WireError::Indeterminate(refused.to_string()).respond(id, &mut out),
        Err(_) => WireError::Indeterminate("the node stopped before the write was durable".into())
            .respond(id, &mut out),
    }
    out
}
