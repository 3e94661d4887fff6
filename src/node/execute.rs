//! The one match that joins a decoded request to the store and encodes the
//! answer. No sockets here, and no storage details beyond the store's API.

use std::sync::atomic::Ordering;

use milena_protocol::{Body, Op, Response, Stat, Status, encode_response};

use super::store::PutOutcome;
use super::{Node, Tally};
use crate::error::WireError;

/// Executes request `id` and appends its response to `out`.
pub fn execute(node: &Node, id: u64, op: Op<'_>, out: &mut Vec<u8>, tally: &mut Tally) {
    tally.requests += 1;
    // `Ok(None)`: the response is already in `out` (a hit, encoded straight
    // from the store's memory, or stats).
    let result: Result<Option<Status>, WireError> = match op {
        Op::Get { key } => {
            tally.gets += 1;
            get(node, id, key, 0, out)
        }
        Op::RoutedGet { since, key } => {
            tally.gets += 1;
            get(node, id, key, since, out)
        }
        Op::Put { key, value, ttl } => {
            tally.puts += 1;
            // A direct put joins the ring epoch the node last heard of.
            let epoch = node.ring_epoch.load(Ordering::Relaxed);
            put(node, key, value, ttl, epoch).map(|()| Some(Status::Ok))
        }
        Op::RoutedPut {
            epoch,
            key,
            value,
            ttl,
        } => {
            tally.puts += 1;
            put(node, key, value, ttl, epoch).map(|()| Some(Status::Ok))
        }
        Op::Delete { key } => {
            tally.deletes += 1;
            check_key(node, key).map(|()| {
                if node.store.delete(key, node.clock.now()) {
                    Some(Status::Ok)
                } else {
                    Some(Status::NotFound)
                }
            })
        }
        Op::Ping => Ok(Some(Status::Ok)),
        Op::Stats => {
            encode_response(
                &Response {
                    id,
                    status: Status::Ok,
                    body: Body::Stats(stats(node)),
                },
                out,
            );
            Ok(None)
        }
        Op::Hello { .. } => Err(WireError::DuplicateHello),
        Op::Join { .. } => Err(WireError::RouterOnly("join")),
        Op::Leave { .. } => Err(WireError::RouterOnly("leave")),
        Op::Heartbeat { .. } => Err(WireError::RouterOnly("heartbeat")),
        Op::Members => Err(WireError::RouterOnly("members")),
    };
    match result {
        Ok(None) => {}
        Ok(Some(status)) => encode_response(
            &Response {
                id,
                status,
                body: Body::Empty,
            },
            out,
        ),
        Err(e) => {
            tally.errors += 1;
            e.respond(id, out);
        }
    }
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
    node: &Node,
    id: u64,
    key: &[u8],
    since: u64,
    out: &mut Vec<u8>,
) -> Result<Option<Status>, WireError> {
    check_key(node, key)?;
    let hit = node.store.get_with(key, node.clock.now(), since, |value| {
        encode_response(
            &Response {
                id,
                status: Status::Ok,
                body: Body::Value(value),
            },
            out,
        );
    });
    Ok(match hit {
        Some(()) => None,
        None => Some(Status::NotFound),
    })
}

fn put(
    node: &Node,
    key: &[u8],
    value: &[u8],
    ttl: Option<u32>,
    epoch: u64,
) -> Result<(), WireError> {
    check_key(node, key)?;
    if value.len() > node.settings.max_value {
        return Err(WireError::ValueTooLarge {
            len: value.len(),
            max: node.settings.max_value,
        });
    }
    let ttl = ttl.unwrap_or(node.settings.default_ttl);
    match node.store.put(key, value, ttl, node.clock.now(), epoch) {
        PutOutcome::Stored { .. } => Ok(()),
        PutOutcome::TooLarge => Err(WireError::EntryTooLarge {
            len: key.len() + value.len(),
        }),
    }
}

fn stats(node: &Node) -> Vec<Stat<'static>> {
    let s = &node.stats;
    let st = node.store.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let uptime = node.clock.now().0 / 1000;
    [
        ("uptime_seconds", uptime),
        ("connections", load(&s.conns.open)),
        ("connections_total", load(&s.conns.total)),
        ("connections_refused", load(&s.conns.refused)),
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
        ("ring_epoch", node.ring_epoch.load(Ordering::Relaxed)),
        ("max_items", node.settings.store.max_items as u64),
        ("max_bytes", node.settings.store.max_bytes.unwrap_or(0)),
        ("shards", node.store.shard_count() as u64),
    ]
    .into_iter()
    .map(|(name, value)| Stat { name, value })
    .collect()
}
