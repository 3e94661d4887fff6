//! Second copies of other nodes' writes not yet durable (`WRITE_REPLICAS`,
//! async mode): held apart from the cache (never served while their owner
//! lives), dropped when the owner says the write is durable, taken over
//! when this node becomes the key's owner. Bounded: a full store refuses,
//! and the owner acknowledges with its single copy (counted).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

// foldhash, not SipHash: touched on every copied write.
use hashbrown::HashMap;

use super::tier::writeback::Pending;

/// Bytes a held copy costs beyond its key and value.
pub const REPLICA_OVERHEAD: usize = 64;

/// The copies this node holds for its peers.
#[derive(Debug)]
pub struct Replicas {
    held: Mutex<HashMap<Vec<u8>, Held>>,
    max_entries: usize,
    max_bytes: u64,
    bytes: AtomicU64,
    /// Copies refused because the store was full.
    pub refused: AtomicU64,
    /// Copies taken over (this node became the key's owner).
    pub promoted: AtomicU64,
}

/// A copy and when it arrived (for [`Replicas::overdue`]).
#[derive(Debug)]
struct Held {
    write: Pending,
    since: std::time::Instant,
}

fn cost(key: &[u8], write: &Pending) -> u64 {
    let value = match write {
        Pending::Put(obj) => obj.value.len(),
        Pending::Delete(_) => 0,
    };
    (key.len() + value + REPLICA_OVERHEAD) as u64
}

impl Replicas {
    /// A store of at most `max_entries` copies and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Replicas {
            held: Mutex::new(HashMap::new()),
            max_entries,
            max_bytes,
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            promoted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `write` for `key` unless a newer copy is held; `false` if the
    /// store is full.
    pub fn hold(&self, key: &[u8], write: Pending) -> bool {
        let mut held = self.lock();
        let add = cost(key, &write);
        match held.get_mut(key) {
            Some(old) => {
                if write.version() >= old.write.version() {
                    let before = cost(key, &old.write);
                    *old = Held {
                        write,
                        since: std::time::Instant::now(),
                    };
                    self.bytes.fetch_add(add, Ordering::Relaxed);
                    self.bytes.fetch_sub(before, Ordering::Relaxed);
                }
                true
            }
            None => {
                if held.len() >= self.max_entries
                    || self.bytes.load(Ordering::Relaxed) + add > self.max_bytes
                {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                held.insert(
                    key.to_vec(),
                    Held {
                        write,
                        since: std::time::Instant::now(),
                    },
                );
                self.bytes.fetch_add(add, Ordering::Relaxed);
                true
            }
        }
    }

    /// The owner made `version` of `key` durable: drops the copy if it is
    /// that version or older.
    pub fn settle(&self, key: &[u8], version: u64) {
        let mut held = self.lock();
        if held.get(key).is_some_and(|h| h.write.version() <= version)
            && let Some(h) = held.remove(key)
        {
            self.bytes.fetch_sub(cost(key, &h.write), Ordering::Relaxed);
        }
    }

    /// Removes and returns the copy of `key` (this node now owns it, or
    /// wrote it itself).
    pub fn take(&self, key: &[u8]) -> Option<Pending> {
        let h = self.lock().remove(key)?;
        self.bytes.fetch_sub(cost(key, &h.write), Ordering::Relaxed);
        Some(h.write)
    }

    /// Up to `max` copies held longer than `age` (their settle notice may
    /// have been lost): each key with its version and whether it is a
    /// delete.
    pub fn overdue(&self, age: std::time::Duration, max: usize) -> Vec<(Vec<u8>, u64, bool)> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.since.elapsed() > age)
            .take(max)
            .map(|(k, h)| {
                (
                    k.clone(),
                    h.write.version(),
                    matches!(h.write, Pending::Delete(_)),
                )
            })
            .collect()
    }

    /// Removes and returns every copy whose key `mine` says this node now
    /// owns, handing each to `adopt` first while the store is still locked:
    /// a reader that finds the copy gone then finds it wherever `adopt` put
    /// it (the write-behind queue), never in neither place.
    pub fn take_owned(
        &self,
        mut mine: impl FnMut(&[u8]) -> bool,
        mut adopt: impl FnMut(&[u8], &Pending),
    ) -> Vec<(Vec<u8>, Pending)> {
        let mut held = self.lock();
        let keys: Vec<Vec<u8>> = held.keys().filter(|k| mine(k)).cloned().collect();
        keys.into_iter()
            .filter_map(|k| {
                let w = held.remove(&k)?.write;
                adopt(&k, &w);
                self.bytes.fetch_sub(cost(&k, &w), Ordering::Relaxed);
                Some((k, w))
            })
            .collect()
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (keys, values and [`REPLICA_OVERHEAD`] each).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tier::Object;

    fn put(v: u64) -> Pending {
        Pending::Put(Object {
            value: bytes::Bytes::from_static(b"value"),
            expires_at: None,
            version: v,
        })
    }

    #[test]
    fn keeps_the_newest_and_settles_up_to_a_version() {
        let r = Replicas::new(10, 1 << 20);
        assert!(r.hold(b"k", put(5)));
        assert!(r.hold(b"k", put(3)));
        assert_eq!(r.take(b"k").map(|w| w.version()), Some(5));
        assert!(r.hold(b"k", put(7)));
        r.settle(b"k", 6);
        assert_eq!(
            r.len(),
            1,
            "a newer copy outlives an older version's settling"
        );
        r.settle(b"k", 7);
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn a_full_store_refuses() {
        let r = Replicas::new(2, 1 << 20);
        assert!(r.hold(b"a", put(1)));
        assert!(r.hold(b"b", put(1)));
        assert!(!r.hold(b"c", put(1)));
        assert!(
            r.hold(b"a", put(2)),
            "a held key is replaced even when full"
        );
        let small = Replicas::new(100, 100);
        assert!(!small.hold(
            b"a",
            Pending::Put(Object {
                value: bytes::Bytes::from(vec![0u8; 200]),
                expires_at: None,
                version: 1,
            })
        ));
        assert_eq!(small.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn takes_over_the_keys_it_now_owns() {
        let r = Replicas::new(10, 1 << 20);
        r.hold(b"mine", put(1));
        r.hold(b"theirs", put(1));
        let mut adopted = 0;
        let taken = r.take_owned(|k| k == b"mine", |_, _| adopted += 1);
        assert_eq!(adopted, 1);
        assert_eq!(taken.len(), 1);
        assert_eq!(r.len(), 1);
    }
}
