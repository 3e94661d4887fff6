//! One lock stripe of the store: a hash table of slot indices, a slab of
//! slots threaded by an intrusive LRU list, and a timing wheel.
//!
//! Per entry the shard spends one allocation holding key and value back to
//! back, a 48-byte slot (pointer, lengths, list links, expiry, wheel mark,
//! recency stamp, ring epoch) and a 4-byte table index; no list nodes or timers live on
//! the heap.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::ttl::{Millis, WHEEL_SLOTS, Wheel, is_expired};

/// Marks "no slot" in links and free lists.
const NIL: u32 = u32::MAX;

/// Bytes charged against `MAX_MEMORY` per entry on top of its key and value:
/// the slot, the table index and control byte, a wheel hint and the
/// allocator's header, rounded up.
pub const ENTRY_OVERHEAD: u64 = 64;

/// Hints examined per lock hold while reclaiming expired entries.
const EXPIRE_BUDGET: usize = 256;

#[derive(Debug)]
struct Slot {
    /// Key followed by value; `None` for a free slot.
    data: Option<Box<[u8]>>,
    key_len: u32,
    /// Towards the most recently used end; unused while free.
    prev: u32,
    /// Towards the least recently used end; next free slot while free.
    next: u32,
    /// Expiry second, 0 for never.
    expire: u32,
    /// The second this slot's wheel hint is due, 0 when it has none.
    wheel_at: u32,
    /// The shard's push counter when this slot last moved to the head.
    stamp: u32,
    /// Ring epoch the entry was written in (0 when written directly).
    epoch: u64,
}

impl Slot {
    fn key(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[..self.key_len as usize],
            None => &[],
        }
    }

    fn value(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.key_len as usize..],
            None => &[],
        }
    }

    fn charge(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.len() as u64) + ENTRY_OVERHEAD
    }
}

/// Counters a shard keeps under its own lock (so they cost no atomics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardCounters {
    /// Gets that found a live entry.
    pub hits: u64,
    /// Gets that found nothing or an expired entry.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Entries dropped because their TTL passed.
    pub expirations: u64,
    /// Entries dropped because they predate the node's latest gain of the
    /// key (see `Op::RoutedGet`).
    pub stale: u64,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; `evicted` older entries were dropped to make room.
    Stored {
        /// Entries evicted by this put.
        evicted: u32,
    },
    /// The entry alone is larger than the shard's byte budget.
    TooLarge,
}

/// One lock stripe. Not thread-safe by itself; the store wraps it in a mutex.
#[derive(Debug)]
pub struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: u32,
    head: u32,
    tail: u32,
    len: usize,
    bytes: u64,
    max_items: usize,
    max_bytes: u64,
    wheel: Wheel,
    hasher: DefaultHashBuilder,
    counters: ShardCounters,
    /// Moves to the head so far (wrapping); see `promote_window`.
    pushes: u32,
    /// A hit moves its entry to the head only if at least this many entries
    /// went to the head since it last did. An entry that recent sits in the
    /// front part of the list and cannot be next to go, so leaving it there
    /// saves touching two neighbouring slots (two cache misses) on most hits
    /// of hot keys, like memcached's once-a-minute bump. 0 = exact LRU.
    promote_window: u32,
}

impl Shard {
    /// An empty shard holding at most `max_items` entries and `max_bytes`
    /// charged bytes, hashing keys with `hasher` (the store's, so the hash
    /// passed to each call matches the one used when the table grows).
    ///
    /// `promote_window` 0 gives an exact LRU; the store uses a quarter of
    /// the shard's capacity (see [`Shard::default_window`]).
    pub fn new(
        max_items: usize,
        max_bytes: u64,
        promote_window: u32,
        hasher: DefaultHashBuilder,
        now: Millis,
    ) -> Self {
        Shard {
            table: HashTable::new(),
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            bytes: 0,
            max_items: max_items.max(1),
            max_bytes,
            wheel: Wheel::new(now),
            hasher,
            counters: ShardCounters::default(),
            pushes: 0,
            promote_window,
        }
    }

    /// The promotion window the store uses for a shard of `max_items`: a
    /// quarter of it, so a skipped entry still has three quarters of the
    /// list behind it. With a byte budget the list can be shorter than
    /// `max_items`, so the window is also bounded by what the bytes allow
    /// for the smallest entries.
    pub fn default_window(max_items: usize, max_bytes: u64) -> u32 {
        let by_bytes = max_bytes / ENTRY_OVERHEAD;
        let len = (max_items as u64).min(by_bytes);
        u32::try_from(len / 4).unwrap_or(u32::MAX)
    }

    /// Live entries (including expired ones not yet reclaimed).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes charged against the byte budget.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// This shard's counters.
    pub fn counters(&self) -> ShardCounters {
        self.counters
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(hash, |&i| slots[i as usize].key() == key)
            .copied()
    }

    /// Looks `key` up and, if live and written in epoch `since` or later,
    /// marks it most recently used and returns its value. An expired or
    /// stale entry is reclaimed on the spot. Counts a hit or a miss.
    pub fn get(&mut self, hash: u64, key: &[u8], now: Millis, since: u64) -> Option<&[u8]> {
        self.lookup(hash, key, now, since, true)
    }

    /// As [`Shard::get`]; `count` says whether this lookup is a request's
    /// hit or miss, or a second look on behalf of a request already counted.
    pub fn lookup(
        &mut self,
        hash: u64,
        key: &[u8],
        now: Millis,
        since: u64,
        count: bool,
    ) -> Option<&[u8]> {
        let miss = u64::from(count);
        let Some(idx) = self.find(hash, key) else {
            self.counters.misses += miss;
            return None;
        };
        let slot = &self.slots[idx as usize];
        if is_expired(slot.expire, now) || slot.epoch < since {
            if is_expired(slot.expire, now) {
                self.counters.expirations += 1;
            } else {
                self.counters.stale += 1;
            }
            self.remove_at(hash, idx);
            self.counters.misses += miss;
            return None;
        }
        self.counters.hits += miss;
        // With a byte budget the list can be far shorter than the window;
        // a quarter of what it holds now keeps the skip safe.
        let window = self.promote_window.min(self.len as u32 / 4);
        if self.pushes.wrapping_sub(self.slots[idx as usize].stamp) >= window {
            self.move_to_front(idx);
        }
        Some(self.slots[idx as usize].value())
    }

    /// The expiry second (0 = never) of `key`'s live entry written in epoch
    /// `since` or later, without counting or reordering anything.
    pub fn expiry(&self, hash: u64, key: &[u8], now: Millis, since: u64) -> Option<u32> {
        let slot = &self.slots[self.find(hash, key)? as usize];
        (!is_expired(slot.expire, now) && slot.epoch >= since).then_some(slot.expire)
    }

    /// Whether a live (unexpired) entry for `key` is held, whatever its epoch.
    pub fn holds(&self, hash: u64, key: &[u8], now: Millis) -> bool {
        self.find(hash, key)
            .is_some_and(|idx| !is_expired(self.slots[idx as usize].expire, now))
    }

    /// Stores `key` = `value` expiring at second `expire` (0 = never),
    /// written in ring epoch `epoch`, evicting least recently used entries
    /// as needed.
    pub fn put(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expire: u32,
        epoch: u64,
    ) -> PutOutcome {
        let charge = (key.len() + value.len()) as u64 + ENTRY_OVERHEAD;
        if charge > self.max_bytes || key.len() > u32::MAX as usize {
            return PutOutcome::TooLarge;
        }
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let data = data.into_boxed_slice();

        let mut evicted = 0;
        let idx = match self.find(hash, key) {
            Some(idx) => {
                let slot = &mut self.slots[idx as usize];
                let old = slot.charge();
                slot.data = Some(data);
                slot.expire = expire;
                slot.epoch = epoch;
                self.bytes = self.bytes - old + charge;
                self.move_to_front(idx);
                idx
            }
            None => {
                while self.len >= self.max_items || self.bytes + charge > self.max_bytes {
                    if !self.evict_tail() {
                        break;
                    }
                    evicted += 1;
                }
                let idx = self.alloc(Slot {
                    data: Some(data),
                    key_len: key.len() as u32,
                    prev: NIL,
                    next: NIL,
                    expire,
                    wheel_at: 0,
                    stamp: 0,
                    epoch,
                });
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.table
                    .insert_unique(hash, idx, |&i| hasher.hash_one(slots[i as usize].key()));
                self.len += 1;
                self.bytes += charge;
                self.push_front(idx);
                idx
            }
        };
        // A grown value may push the shard over its byte budget; the entry
        // just written is at the head, so eviction stops before reaching it.
        while self.bytes > self.max_bytes && self.tail != idx {
            if !self.evict_tail() {
                break;
            }
            evicted += 1;
        }
        self.schedule(idx);
        PutOutcome::Stored { evicted }
    }

    /// Removes `key`; returns whether a live entry was there.
    pub fn delete(&mut self, hash: u64, key: &[u8], now: Millis) -> bool {
        let Some(idx) = self.find(hash, key) else {
            return false;
        };
        let live = !is_expired(self.slots[idx as usize].expire, now);
        if !live {
            self.counters.expirations += 1;
        }
        self.remove_at(hash, idx);
        live
    }

    /// Reclaims up to a lock-hold's worth of expired entries. Returns the
    /// number reclaimed and whether the wheel has caught up with `now`.
    pub fn expire_step(&mut self, now: Millis) -> (u64, bool) {
        let mut reclaimed = 0;
        let mut examined = 0;
        while examined < EXPIRE_BUDGET {
            let Some((second, due)) = self.wheel.take_due(now, EXPIRE_BUDGET - examined) else {
                self.maybe_compact();
                return (reclaimed, true);
            };
            examined += due.len();
            for idx in due {
                let slot = &self.slots[idx as usize];
                if slot.data.is_none() || slot.wheel_at != second {
                    continue; // stale hint
                }
                if is_expired(slot.expire, now) {
                    let hash = self.hasher.hash_one(slot.key());
                    self.remove_at(hash, idx);
                    self.counters.expirations += 1;
                    reclaimed += 1;
                } else {
                    self.slots[idx as usize].wheel_at = 0;
                    self.schedule(idx);
                }
            }
        }
        (reclaimed, false)
    }

    /// Gives `idx` a wheel hint for its expiry unless it already has one
    /// due no later than needed (that hint will re-file it when it fires).
    fn schedule(&mut self, idx: u32) {
        let slot = &self.slots[idx as usize];
        if slot.expire == 0 {
            return;
        }
        let at = self.wheel.target(slot.expire);
        if slot.wheel_at != 0 && slot.wheel_at <= at && slot.wheel_at > self.wheel.cursor() {
            return;
        }
        self.slots[idx as usize].wheel_at = at;
        self.wheel.file(idx, at);
    }

    /// Sweeps stale wheel hints once they outnumber live entries, which
    /// bounds the wheel's memory under delete- or eviction-heavy churn.
    fn maybe_compact(&mut self) {
        if self.wheel.refs() <= 2 * self.len + 1024 {
            return;
        }
        let slots = &self.slots;
        let cursor = self.wheel.cursor();
        // A reused slot can be named by several hints for the same second;
        // keep only the first, so what survives is one hint per live entry.
        let mut kept = vec![false; slots.len()];
        self.wheel.compact(|idx, bucket| {
            let s = &slots[idx as usize];
            let live = s.data.is_some()
                && s.wheel_at > cursor
                && s.wheel_at % WHEEL_SLOTS == bucket
                && !kept[idx as usize];
            if live {
                kept[idx as usize] = true;
            }
            live
        });
    }

    fn evict_tail(&mut self) -> bool {
        let idx = self.tail;
        if idx == NIL {
            return false;
        }
        let hash = self.hasher.hash_one(self.slots[idx as usize].key());
        self.remove_at(hash, idx);
        self.counters.evictions += 1;
        true
    }

    fn remove_at(&mut self, hash: u64, idx: u32) {
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        self.unlink(idx);
        let charge = self.slots[idx as usize].charge();
        let slot = &mut self.slots[idx as usize];
        slot.data = None;
        slot.wheel_at = 0;
        slot.next = self.free;
        self.free = idx;
        self.len -= 1;
        self.bytes -= charge;
    }

    fn alloc(&mut self, slot: Slot) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            self.free = self.slots[idx as usize].next;
            self.slots[idx as usize] = slot;
            idx
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        }
    }

    fn push_front(&mut self, idx: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NIL;
            s.next = old;
            s.stamp = self.pushes;
        }
        self.pushes = self.pushes.wrapping_add(1);
        if old != NIL {
            self.slots[old as usize].prev = idx;
        } else {
            self.tail = idx;
        }
        self.head = idx;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn move_to_front(&mut self, idx: u32) {
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    /// Wheel hints held, live or stale (tests and debugging).
    pub fn wheel_refs(&self) -> usize {
        self.wheel.refs()
    }

    /// Keys from most to least recently used (tests and debugging).
    pub fn keys_mru(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len);
        let mut i = self.head;
        while i != NIL {
            out.push(self.slots[i as usize].key().to_vec());
            i = self.slots[i as usize].next;
        }
        out
    }
}
