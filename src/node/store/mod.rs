//! The in-memory store: N lock-striped shards of segment storage with TTL
//! buckets (see `shard` for the layout, eviction and expiry): per item a
//! 12-byte header in its segment and a 4-byte index entry in a cuckoo
//! table, no allocation.
//!
//! Synchronous and socket-free by design: the connection loop calls it with
//! borrowed keys and values and a clock reading, and the answer is encoded
//! straight from the shard's memory while the stripe lock is held.

mod index;
mod segment;
mod shard;
pub mod ttl;

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use hashbrown::DefaultHashBuilder;

pub use shard::{PutOutcome, Shard, ShardCounters};
pub use ttl::{Millis, expiry_for};

/// Sizing of a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Most entries held (`LRU_SIZE`).
    pub max_items: usize,
    /// Most bytes held: segments (items with their headers) and index
    /// (`MAX_MEMORY`).
    pub max_bytes: Option<u64>,
    /// Lock stripes; rounded down to a power of two and to at most `max_items`.
    pub shards: usize,
}

impl StoreConfig {
    /// A default stripe count for this machine: 16 per core, as a power of
    /// two, so two threads rarely meet on one lock.
    pub fn default_shards() -> usize {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cores * 16).next_power_of_two().clamp(16, 1024)
    }
}

/// Totals across shards, as reported by `stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries held.
    pub items: u64,
    /// Bytes held: segments and index.
    pub bytes: u64,
    /// Counters summed over shards.
    pub counters: ShardCounters,
}

/// Pads a shard to its own cache lines so two stripes never false-share.
#[repr(align(128))]
struct Padded<T>(T);

/// A sharded segment store with TTL. Cheap to share behind an `Arc`.
pub struct Store {
    shards: Box<[Padded<Mutex<Shard>>]>,
    hasher: DefaultHashBuilder,
    mask: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Store {
    /// An empty store.
    pub fn new(cfg: StoreConfig) -> Self {
        let max_items = cfg.max_items.max(1);
        // Largest power of two not above either the request or the item
        // budget, so every stripe can hold at least one entry.
        let want = cfg.shards.clamp(1, max_items);
        let n = if want.is_power_of_two() {
            want
        } else {
            want.next_power_of_two() / 2
        };
        let max_bytes = cfg.max_bytes.unwrap_or(u64::MAX);
        // Random per process (and per store): keys an attacker chooses
        // cannot be aimed at one stripe or one probe chain.
        let hasher = DefaultHashBuilder::default();
        let shards = (0..n)
            .map(|i| {
                // Budgets split exactly: the first `rem` stripes take one more.
                let items = max_items / n + usize::from(i < max_items % n);
                // No budget stays no budget (a stripe sizes its segments
                // and reclaims dead space by it).
                let bytes = match cfg.max_bytes {
                    None => u64::MAX,
                    Some(_) => max_bytes / n as u64 + u64::from((i as u64) < max_bytes % n as u64),
                };
                let seg_size = Shard::segment_size_for(items, bytes);
                Padded(Mutex::new(Shard::new(
                    items,
                    bytes,
                    seg_size,
                    hasher.clone(),
                )))
            })
            .collect();
        Store {
            shards,
            hasher,
            mask: n - 1,
        }
    }

    /// Number of lock stripes.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    fn locate(&self, key: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        // The table uses the hash's low bits for buckets and its top seven
        // for tags; stripes take bits 32.. so neither is constant within a stripe.
        let i = (hash >> 32) as usize & self.mask;
        (hash, lock(&self.shards[i].0))
    }

    /// Calls `f` with the live value of `key`, if any and written in ring
    /// epoch `since` or later, while the stripe is locked: the caller copies
    /// it where it needs it (usually straight into a connection's output
    /// buffer) without an intermediate allocation.
    #[inline]
    pub fn get_with<R>(
        &self,
        key: &[u8],
        now: Millis,
        since: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let (hash, mut shard) = self.locate(key);
        shard.get(hash, key, now, since).map(f)
    }

    /// As [`Store::get_with`], without counting a hit or a miss: a second
    /// look on behalf of a request already counted (one request, one hit
    /// or one miss, whatever the read-through does inside).
    #[inline]
    pub fn peek_with<R>(
        &self,
        key: &[u8],
        now: Millis,
        since: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let (hash, mut shard) = self.locate(key);
        shard.lookup(hash, key, now, since, false).map(f)
    }

    /// How long `key`'s live entry written in epoch `since` or later has
    /// left: `Some(None)` = it never expires, `Some(Some(ms))`, or `None`
    /// when there is no such entry. Counts nothing.
    pub fn remaining(&self, key: &[u8], now: Millis, since: u64) -> Option<Option<u64>> {
        let (hash, shard) = self.locate(key);
        let expire = shard.expiry(hash, key, now, since)?;
        Some((expire != 0).then(|| (u64::from(expire) * 1000).saturating_sub(now.0)))
    }

    /// The live value of `key`, copied out, whatever epoch it was written in.
    pub fn get(&self, key: &[u8], now: Millis) -> Option<Vec<u8>> {
        self.get_with(key, now, 0, <[u8]>::to_vec)
    }

    /// Stores `key` = `value` for `ttl_secs` seconds (0 = no expiry),
    /// written in ring epoch `epoch` (0 outside a cluster).
    #[inline]
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_secs: u32,
        now: Millis,
        epoch: u64,
    ) -> PutOutcome {
        let expire = expiry_for(now, ttl_secs);
        let (hash, mut shard) = self.locate(key);
        shard.put(hash, key, value, expire, epoch, now)
    }

    /// As [`Store::put`], unless a live entry for `key` is already held:
    /// a value read from the tier must not replace one a put wrote while
    /// the read was under way. `None` when one was there.
    pub fn put_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_secs: u32,
        now: Millis,
        epoch: u64,
    ) -> Option<PutOutcome> {
        let expire = expiry_for(now, ttl_secs);
        let (hash, mut shard) = self.locate(key);
        if shard.holds(hash, key, now) {
            return None;
        }
        Some(shard.put(hash, key, value, expire, epoch, now))
    }

    /// Removes `key`; returns whether a live entry was there.
    #[inline]
    pub fn delete(&self, key: &[u8], now: Millis) -> bool {
        let (hash, mut shard) = self.locate(key);
        shard.delete(hash, key, now)
    }

    /// Reclaims every entry expired at `now`, one bounded lock hold at a
    /// time. Returns the number reclaimed.
    pub fn expire(&self, now: Millis) -> u64 {
        let mut total = 0;
        for shard in self.shards.iter() {
            loop {
                let (n, done) = lock(&shard.0).expire_step(now);
                total += n;
                if done {
                    break;
                }
            }
        }
        total
    }

    /// Totals across shards.
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for shard in self.shards.iter() {
            let g = lock(&shard.0);
            s.items += g.len() as u64;
            s.bytes += g.bytes();
            let c = g.counters();
            s.counters.hits += c.hits;
            s.counters.misses += c.misses;
            s.counters.evictions += c.evictions;
            s.counters.expirations += c.expirations;
            s.counters.stale += c.stale;
        }
        s
    }
}

/// Locks a stripe. A panic under the lock would be a bug that already failed
/// its own request; taking the lock over keeps the other keys of the stripe
/// served instead of failing every later request on it.
#[inline]
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
