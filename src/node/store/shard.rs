//! One lock stripe of the store: items appended to segments, a compact
//! index, TTL bucket chains and eviction by segment (Segcache's layout).
//!
//! - **Index** (`index.rs`): a cuckoo hash table of 32-bit entries, each
//!   naming a segment (14 bits) and an item's offset in it (18 bits, in
//!   4-byte units). Keys live only in the segments; the table compares
//!   through them.
//! - **Segments** are written in order; each belongs to one TTL bucket
//!   (items of similar time to live) and has a place in the shard's age
//!   order (oldest first). Writes go to their bucket's head segment.
//! - **Expiry** frees a bucket's oldest segment whole once its latest
//!   expiry has passed; no item is scanned to find it (its items are
//!   walked once, to drop their index entries). A read never returns an
//!   expired item, whether or not its segment has gone.
//! - **Eviction** is S3-FIFO by segment. New items go to *small*
//!   segments. While small segments hold more than a tenth of the bytes,
//!   eviction takes the oldest of them: items read since they were
//!   written (frequency > 0) stay, moved to its front, and the segment
//!   joins the *main* queue as its newest; the rest go (a one-pass scan
//!   never reaches the main queue). Otherwise it takes the oldest main
//!   segment the same way (items read since the last pass stay with their
//!   frequency lowered: FIFO with reinsertion, close to LRU on skewed
//!   traffic). A kept segment becomes its bucket's head in its queue, its
//!   free tail taking writes. A few rounds keep items; after that the
//!   oldest segment is emptied outright, so a put never waits long.
//! - **Dead space** (overwritten, deleted, expired items) is reclaimed as
//!   eviction passes over it; without a byte budget, live items of the
//!   most wasteful old segments are copied out once dead space exceeds
//!   half of what is written, so memory follows what is held.

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;

use super::index::Index;
use super::segment::{
    AGE, ALIGN, BUCKETS, CHAIN, HEADER, Link, MAX_SEGMENT, NIL, Segment, bucket_of, item_size,
};
use super::ttl::{Millis, is_expired};

/// Segments a shard may hold (the index entry's segment bits).
const MAX_SEGMENTS: usize = 1 << 14;
/// The queues, as indices.
const SMALL: usize = 0;
const MAIN: usize = 1;
/// Offset bits of an index entry (in [`ALIGN`] units: 1 MiB).
const OFFSET_BITS: u32 = 18;
/// Eviction rounds of one put that keep recently read items; later
/// rounds empty the oldest segment outright.
const KEEP_ROUNDS: u32 = 4;
/// Item bytes walked per lock hold while reclaiming expired segments.
const EXPIRE_BUDGET: usize = 1 << 20;
/// Oldest segments looked at when choosing one to reclaim dead space from.
const GC_CANDIDATES: usize = 8;

#[inline]
fn entry(id: u32, offset: usize) -> u32 {
    (id << OFFSET_BITS) | (offset / ALIGN) as u32
}

#[inline]
fn split(e: u32) -> (usize, usize) {
    (
        (e >> OFFSET_BITS) as usize,
        (e & ((1 << OFFSET_BITS) - 1)) as usize * ALIGN,
    )
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
    table: Index,
    segs: Vec<Segment>,
    free_ids: Vec<u32>,
    /// Per queue (small, main), age order: the next segment eviction
    /// examines, and the newest.
    oldest: [u32; 2],
    newest: [u32; 2],
    /// Bytes of each queue's segments.
    queue_bytes: [u64; 2],
    /// Per queue and TTL bucket: the segment writes go to.
    heads: [Box<[u32]>; 2],
    /// Per TTL bucket: its chain's ends (both queues).
    chain_first: Box<[u32]>,
    chain_last: Box<[u32]>,
    /// Size of a normal segment.
    seg_size: usize,
    /// Bytes of the segments held, the spare included.
    seg_bytes: u64,
    /// A freed normal segment's buffer, kept for the next one.
    spare: Option<Box<[u8]>>,
    /// Bytes written into normal segments, and how many of those belong
    /// to items still indexed.
    written: u64,
    live: u64,
    max_items: usize,
    max_bytes: u64,
    hasher: DefaultHashBuilder,
    counters: ShardCounters,
    /// The bucket the expiry sweep resumes at.
    expire_cursor: usize,
}

impl Shard {
    /// An empty shard holding at most `max_items` entries and `max_bytes`
    /// bytes (segments and index), in segments of `seg_size` bytes (at
    /// most 1 MiB), hashing keys with `hasher` (the store's, so the hash
    /// passed to each call matches the one used when the table grows).
    pub fn new(
        max_items: usize,
        max_bytes: u64,
        seg_size: usize,
        hasher: DefaultHashBuilder,
    ) -> Self {
        Shard {
            table: Index::default(),
            segs: Vec::new(),
            free_ids: Vec::new(),
            oldest: [NIL; 2],
            newest: [NIL; 2],
            queue_bytes: [0; 2],
            heads: [
                vec![NIL; BUCKETS].into_boxed_slice(),
                vec![NIL; BUCKETS].into_boxed_slice(),
            ],
            chain_first: vec![NIL; BUCKETS].into_boxed_slice(),
            chain_last: vec![NIL; BUCKETS].into_boxed_slice(),
            seg_size: seg_size.clamp(ALIGN * 64, MAX_SEGMENT),
            seg_bytes: 0,
            spare: None,
            written: 0,
            live: 0,
            max_items: max_items.max(1),
            max_bytes,
            hasher,
            counters: ShardCounters::default(),
            expire_cursor: 0,
        }
    }

    /// The segment size the store uses for a shard of `max_items` items and
    /// `max_bytes` bytes: about a sixteenth of what it holds (so eviction
    /// takes a small slice at a time), a power of two from 1 KiB to 1 MiB.
    pub fn segment_size_for(max_items: usize, max_bytes: u64) -> usize {
        // Without a byte budget, guess 160 bytes an item.
        let expected = if max_bytes == u64::MAX {
            (max_items as u64).saturating_mul(160)
        } else {
            max_bytes
        };
        let want = (expected / 16).clamp(1024, MAX_SEGMENT as u64);
        1 << (63 - want.leading_zeros())
    }

    /// Entries indexed (including expired ones not yet reclaimed).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the shard holds no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held: segments and index.
    pub fn bytes(&self) -> u64 {
        self.seg_bytes + self.table.allocation_size() as u64
    }

    /// Segments held (tests and debugging).
    pub fn segments(&self) -> usize {
        self.segs.len() - self.free_ids.len()
    }

    /// This shard's counters.
    pub fn counters(&self) -> ShardCounters {
        self.counters
    }

    #[inline]
    fn key_of(segs: &[Segment], e: u32) -> &[u8] {
        let (id, off) = split(e);
        segs[id].item(off).key()
    }

    #[inline]
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let segs = &self.segs;
        self.table.find(hash, |e| Self::key_of(segs, e) == key)
    }

    /// Looks `key` up and, if live and written in epoch `since` or later,
    /// returns its value. An expired or stale entry is dropped on the spot.
    /// Counts a hit or a miss.
    pub fn get(&mut self, hash: u64, key: &[u8], now: Millis, since: u64) -> Option<&[u8]> {
        self.lookup(hash, key, now, since, true)
    }

    /// As [`Shard::get`]; `count` says whether this lookup is a request's
    /// hit or miss, or a second look on behalf of a request already counted.
    #[inline]
    pub fn lookup(
        &mut self,
        hash: u64,
        key: &[u8],
        now: Millis,
        since: u64,
        count: bool,
    ) -> Option<&[u8]> {
        let miss = u64::from(count);
        let Some(e) = self.find(hash, key) else {
            self.counters.misses += miss;
            return None;
        };
        let (id, off) = split(e);
        let item = self.segs[id].item(off);
        let expired = is_expired(item.expire(), now);
        if expired || item.epoch() < since {
            if expired {
                self.counters.expirations += 1;
            } else {
                self.counters.stale += 1;
            }
            self.unindex(hash, e);
            self.counters.misses += miss;
            return None;
        }
        self.counters.hits += miss;
        self.segs[id].touch(off);
        Some(self.segs[id].item(off).value())
    }

    /// The expiry second (0 = never) of `key`'s live entry written in epoch
    /// `since` or later, without counting or reordering anything.
    pub fn expiry(&self, hash: u64, key: &[u8], now: Millis, since: u64) -> Option<u32> {
        let (id, off) = split(self.find(hash, key)?);
        let item = self.segs[id].item(off);
        (!is_expired(item.expire(), now) && item.epoch() >= since).then_some(item.expire())
    }

    /// Whether a live (unexpired) entry for `key` is held, whatever its epoch.
    pub fn holds(&self, hash: u64, key: &[u8], now: Millis) -> bool {
        self.find(hash, key).is_some_and(|e| {
            let (id, off) = split(e);
            !is_expired(self.segs[id].item(off).expire(), now)
        })
    }

    /// Stores `key` = `value` expiring at second `expire` (0 = never),
    /// written in ring epoch `epoch` at `now`, evicting as needed.
    pub fn put(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expire: u32,
        epoch: u64,
        now: Millis,
    ) -> PutOutcome {
        let normal = item_size(key.len(), value.len());
        let jumbo = key.len() > u8::MAX as usize || normal > self.seg_size;
        let size = if jumbo {
            HEADER + key.len() + value.len()
        } else {
            normal
        };
        let fixed = self.table.allocation_size() as u64;
        if size as u64 + fixed > self.max_bytes || value.len() >= 1 << 32 {
            return PutOutcome::TooLarge;
        }
        if let Some(old) = self.find(hash, key) {
            self.unindex(hash, old);
        }
        let mut evicted = 0;
        let mut rounds = 0;
        while self.table.len() >= self.max_items {
            match self.evict_oldest(rounds < KEEP_ROUNDS, now) {
                Some(n) => evicted += n,
                None => break,
            }
            rounds += 1;
        }
        // Grow the index now, so the room made below counts its new size.
        let (segs, hasher) = (&self.segs, &self.hasher);
        self.table
            .reserve_one(|x| hasher.hash_one(Self::key_of(segs, x)));
        while self.bytes() > self.max_bytes {
            if self.drop_spare() {
                continue;
            }
            match self.evict_oldest(false, now) {
                Some(n) => evicted += n,
                None => break,
            }
        }
        let ttl = if expire == 0 {
            0
        } else {
            expire.saturating_sub(now.secs_floor()).max(1)
        };
        let bucket = bucket_of(ttl);
        let target = if jumbo {
            None
        } else {
            self.room_in(bucket, size, epoch, now, &mut evicted, &mut rounds)
        };
        let id = match target {
            Some(id) => id,
            // Too large for a segment, or no segment fits the budget: a
            // segment of its own, exactly sized.
            None => match self.jumbo_room(bucket, key.len(), value.len(), now, &mut evicted) {
                Some(id) => id,
                None => return PutOutcome::TooLarge,
            },
        };
        let off = self.segs[id].append(key, value, expire, epoch);
        if self.segs[id].jumbo.is_none() {
            self.segs[id].live += size as u32;
            self.written += size as u64;
            self.live += size as u64;
        }
        let e = entry(id as u32, off);
        let (segs, hasher) = (&self.segs, &self.hasher);
        self.table
            .insert(hash, e, |x| hasher.hash_one(Self::key_of(segs, x)));
        if self.max_bytes == u64::MAX {
            self.reclaim_dead(now);
        }
        PutOutcome::Stored { evicted }
    }

    /// Removes `key`; returns whether a live entry was there.
    pub fn delete(&mut self, hash: u64, key: &[u8], now: Millis) -> bool {
        let Some(e) = self.find(hash, key) else {
            return false;
        };
        let (id, off) = split(e);
        let live = !is_expired(self.segs[id].item(off).expire(), now);
        if !live {
            self.counters.expirations += 1;
        }
        self.unindex(hash, e);
        live
    }

    /// Frees up to a lock-hold's worth of segments whose items have all
    /// expired. Returns the entries reclaimed and whether every bucket has
    /// been looked at.
    pub fn expire_step(&mut self, now: Millis) -> (u64, bool) {
        let mut reclaimed = 0;
        let mut walked = 0;
        while self.expire_cursor < BUCKETS {
            let first = self.chain_first[self.expire_cursor];
            if first != NIL {
                let seg = &self.segs[first as usize];
                if seg.max_expire != u32::MAX && is_expired(seg.max_expire, now) {
                    walked += seg.used as usize;
                    reclaimed += self.drop_segment(first, now);
                    if walked >= EXPIRE_BUDGET {
                        return (reclaimed, false);
                    }
                    continue;
                }
            }
            self.expire_cursor += 1;
        }
        self.expire_cursor = 0;
        (reclaimed, true)
    }

    /// Drops the index entry `e` of `key`'s item (overwritten, deleted,
    /// expired, stale or evicted). A jumbo segment goes with its item.
    fn unindex(&mut self, hash: u64, e: u32) {
        self.table.remove(hash, |x| x == e);
        let (id, off) = split(e);
        if self.segs[id].jumbo.is_some() {
            self.free_segment(id as u32);
        } else {
            let size = self.segs[id].item(off).size();
            self.segs[id].kill(off);
            self.segs[id].live -= size as u32;
            self.live -= size as u64;
        }
    }

    /// A segment of `bucket` with `size` bytes free for an item of ring
    /// epoch `epoch`: its head, a new one, or room made by evicting. `None`
    /// when the budget cannot hold a normal segment at all.
    fn room_in(
        &mut self,
        bucket: u16,
        size: usize,
        epoch: u64,
        now: Millis,
        evicted: &mut u32,
        rounds: &mut u32,
    ) -> Option<usize> {
        loop {
            let h = self.heads[SMALL][bucket as usize];
            if h != NIL {
                let head = &self.segs[h as usize];
                if !head.accepts(epoch) {
                    // Its items' epochs are too far from this one: it
                    // takes no more writes (its items stay).
                    self.heads[SMALL][bucket as usize] = NIL;
                    continue;
                }
                if head.room() >= size {
                    return Some(h as usize);
                }
            }
            if self.can_allocate(self.seg_size) {
                return Some(self.allocate(self.seg_size, bucket, None, false));
            }
            let keep = *rounds < KEEP_ROUNDS;
            *rounds += 1;
            *evicted += self.evict_oldest(keep, now)?;
        }
    }

    /// A segment sized for one item, room made by evicting.
    fn jumbo_room(
        &mut self,
        bucket: u16,
        key_len: usize,
        value_len: usize,
        now: Millis,
        evicted: &mut u32,
    ) -> Option<usize> {
        let size = HEADER + key_len + value_len;
        let mut rounds = 0;
        while !self.can_allocate(size) {
            if self.drop_spare() {
                continue;
            }
            *evicted += self.evict_oldest(rounds < KEEP_ROUNDS, now)?;
            rounds += 1;
        }
        let lens = Some((key_len as u32, value_len as u32));
        Some(self.allocate(size, bucket, lens, false))
    }

    fn can_allocate(&self, size: usize) -> bool {
        let id_free = !self.free_ids.is_empty() || self.segs.len() < MAX_SEGMENTS;
        // A spare buffer is already counted.
        let spare = size == self.seg_size && self.spare.is_some();
        id_free
            && (spare
                || self.seg_bytes + size as u64 + self.table.allocation_size() as u64
                    <= self.max_bytes)
    }

    /// A new segment, newest in its queue and in its bucket's chain; a
    /// normal one becomes the bucket's head in its queue.
    fn allocate(
        &mut self,
        size: usize,
        bucket: u16,
        jumbo: Option<(u32, u32)>,
        main: bool,
    ) -> usize {
        let id = match self.free_ids.pop() {
            Some(id) => id,
            None => {
                self.segs.push(Segment::free());
                (self.segs.len() - 1) as u32
            }
        };
        {
            let s = &mut self.segs[id as usize];
            match self.spare.take().filter(|_| size == self.seg_size) {
                Some(buf) => s.data = buf,
                None => {
                    // Zeroed memory straight from the system: pages cost
                    // RSS only once written.
                    s.data = vec![0u8; size].into_boxed_slice();
                    self.seg_bytes += size as u64;
                }
            }
            s.used = 0;
            s.bucket = bucket;
            s.jumbo = jumbo;
            s.max_expire = 0;
            s.epoch_base = 0;
            s.main = main;
        }
        self.queue_bytes[usize::from(main)] += size as u64;
        self.link_newest(id);
        self.chain_push(id);
        if jumbo.is_none() {
            self.heads[usize::from(main)][bucket as usize] = id;
        }
        id as usize
    }

    /// The segment eviction takes next: the small queue's oldest while
    /// that queue holds more than a tenth of the bytes, else the main's.
    fn victim(&self) -> u32 {
        let small_first = self.queue_bytes[SMALL] * 10 > self.seg_bytes;
        match (self.oldest[SMALL], self.oldest[MAIN]) {
            (s, NIL) => s,
            (NIL, m) => m,
            (s, _) if small_first => s,
            (_, m) => m,
        }
    }

    /// Examines the next victim: items read since the last pass stay (if
    /// `keep`), moved to its front with their frequency lowered; the
    /// others go. A segment left empty is freed; one that is not becomes
    /// the newest of the main queue, and its bucket's head there when it
    /// has more room than the current one. Returns the entries evicted,
    /// or `None` when there is no segment.
    fn evict_oldest(&mut self, keep: bool, now: Millis) -> Option<u32> {
        let id = self.victim();
        if id == NIL {
            return None;
        }
        // Survivors merge into the main queue's head for their bucket.
        let into = self.heads[MAIN][self.segs[id as usize].bucket as usize];
        let walk = self.compact(id, now, |freq| keep && freq > 0, into);
        if walk.kept == 0 {
            self.free_segment(id);
        } else {
            self.unlink_age(id);
            let (bucket, len) = {
                let s = &self.segs[id as usize];
                (s.bucket as usize, s.data.len() as u64)
            };
            if !self.segs[id as usize].main {
                if self.heads[SMALL][bucket] == id {
                    self.heads[SMALL][bucket] = NIL;
                }
                self.segs[id as usize].main = true;
                self.queue_bytes[SMALL] -= len;
                self.queue_bytes[MAIN] += len;
            }
            self.link_newest(id);
            self.chain_unlink(id);
            self.chain_push(id);
            self.maybe_head(id);
        }
        Some(walk.evicted)
    }

    /// Walks segment `id`: expired items go (counted as expirations),
    /// items for which `stays(freq)` holds stay with their frequency
    /// lowered by one, others go (counted as evictions). Items that stay
    /// are appended to segment `into` while it has room (merging the
    /// survivors of several segments into one), the rest moved to the
    /// front of `id`. `kept` counts those left in `id`.
    fn compact(&mut self, id: u32, now: Millis, stays: impl Fn(u8) -> bool, into: u32) -> Walk {
        let idx = id as usize;
        let (mut off, mut to) = (0usize, 0usize);
        let mut walk = Walk::default();
        let used = self.segs[idx].used as usize;
        let jumbo = self.segs[idx].jumbo.is_some();
        let into = if jumbo || into == id { NIL } else { into };
        while off < used {
            let item = self.segs[idx].item(off);
            let size = if jumbo { used } else { item.size() };
            if item.is_dead() {
                off += size;
                continue;
            }
            let (expired, freq) = (is_expired(item.expire(), now), item.freq());
            let e = entry(id, off);
            let hash = self.hasher.hash_one(item.key());
            debug_assert!(self.table.find(hash, |x| x == e).is_some());
            {
                if expired {
                    self.drop_entry(hash, e, id, size);
                    self.counters.expirations += 1;
                    walk.expired += 1;
                } else if stays(freq) {
                    let merge = into != NIL && {
                        let dst = &self.segs[into as usize];
                        dst.room() >= size && dst.accepts(item.epoch())
                    };
                    let moved = if merge {
                        let (src, dst) = two(&mut self.segs, idx, into as usize);
                        let at = dst.copy_item(src, off, size, freq - 1);
                        src.live -= size as u32;
                        self.written += size as u64;
                        entry(into, at)
                    } else {
                        let seg = &mut self.segs[idx];
                        if to != off {
                            seg.data.copy_within(off..off + size, to);
                        }
                        seg.set_freq(to, freq - 1);
                        to += size;
                        walk.kept += 1;
                        entry(id, to - size)
                    };
                    if moved != e
                        && let Some(slot) = self.table.find_mut(hash, |x| x == e)
                    {
                        *slot = moved;
                    }
                } else {
                    self.drop_entry(hash, e, id, size);
                    self.counters.evictions += 1;
                    walk.evicted += 1;
                }
            }
            off += size;
        }
        if !jumbo {
            self.written -= (used - to) as u64;
            self.segs[idx].used = to as u32;
            debug_assert_eq!(self.segs[idx].live as usize, to);
        }
        walk
    }

    /// Removes the index entry `e` of an item of segment `id` during a
    /// walk (the segment stays for now).
    fn drop_entry(&mut self, hash: u64, e: u32, id: u32, size: usize) {
        self.table.remove(hash, |x| x == e);
        let seg = &mut self.segs[id as usize];
        if seg.jumbo.is_none() {
            seg.live -= size as u32;
            self.live -= size as u64;
        }
    }

    /// Drops every item of segment `id` (all expired) and frees it.
    /// Returns the entries reclaimed.
    fn drop_segment(&mut self, id: u32, now: Millis) -> u64 {
        let walk = self.compact(id, now, |_| false, NIL);
        self.free_segment(id);
        u64::from(walk.expired + walk.evicted)
    }

    /// Without a byte budget, nothing evicts while the item count is under
    /// `LRU_SIZE`: once dead items take more than half of what is written,
    /// the live items of the most wasteful of the oldest segments are
    /// copied to their bucket's head and that segment is freed.
    fn reclaim_dead(&mut self, now: Millis) {
        let dead = self.written - self.live;
        if dead <= self.written / 2 || dead < self.seg_size as u64 {
            return;
        }
        let mut best = (NIL, 0u32);
        for queue in [SMALL, MAIN] {
            let mut id = self.oldest[queue];
            for _ in 0..GC_CANDIDATES {
                if id == NIL {
                    break;
                }
                let s = &self.segs[id as usize];
                let is_head = self.heads[queue][s.bucket as usize] == id;
                if s.jumbo.is_none() && !is_head && s.used - s.live > best.1 {
                    best = (id, s.used - s.live);
                }
                id = s.links[AGE].next;
            }
        }
        if best.0 != NIL {
            self.move_out(best.0, now);
        }
    }

    /// Copies the live items of segment `id` to their bucket's head in its
    /// queue and frees it (no budget: a new head can always be had).
    fn move_out(&mut self, id: u32, now: Millis) {
        let idx = id as usize;
        let (bucket, main) = (self.segs[idx].bucket, self.segs[idx].main);
        let queue = usize::from(main);
        let used = self.segs[idx].used as usize;
        let mut off = 0;
        while off < used {
            let (size, expired, hash, dead, epoch, freq) = {
                let item = self.segs[idx].item(off);
                (
                    item.size(),
                    is_expired(item.expire(), now),
                    self.hasher.hash_one(item.key()),
                    item.is_dead(),
                    item.epoch(),
                    item.freq(),
                )
            };
            let e = entry(id, off);
            if !dead {
                if expired {
                    self.drop_entry(hash, e, id, size);
                    self.counters.expirations += 1;
                } else {
                    let h = match self.heads[queue][bucket as usize] {
                        h if h != NIL
                            && h != id
                            && self.segs[h as usize].room() >= size
                            && self.segs[h as usize].accepts(epoch) =>
                        {
                            h as usize
                        }
                        _ => self.allocate(self.seg_size, bucket, None, main),
                    };
                    let (src, dst) = two(&mut self.segs, idx, h);
                    let to = dst.copy_item(src, off, size, freq);
                    src.live -= size as u32;
                    self.written += size as u64;
                    if let Some(slot) = self.table.find_mut(hash, |x| x == e) {
                        *slot = entry(h as u32, to);
                    }
                }
            }
            off += size;
        }
        self.free_segment(id);
    }

    /// Returns segment `id`'s memory and unlinks it everywhere.
    fn free_segment(&mut self, id: u32) {
        self.unlink_age(id);
        self.chain_unlink(id);
        let s = &mut self.segs[id as usize];
        let queue = usize::from(s.main);
        if self.heads[queue][s.bucket as usize] == id {
            self.heads[queue][s.bucket as usize] = NIL;
        }
        self.queue_bytes[queue] -= s.data.len() as u64;
        if s.jumbo.is_none() {
            self.written -= u64::from(s.used);
        }
        let data = std::mem::take(&mut s.data);
        *s = Segment::free();
        self.free_ids.push(id);
        // One normal buffer is kept for the next segment: evicting and
        // refilling a segment then costs no page faults and no zeroing.
        if data.len() == self.seg_size && self.spare.is_none() {
            self.spare = Some(data);
        } else {
            self.seg_bytes -= data.len() as u64;
        }
    }

    /// Returns the spare buffer to the system (the budget needs its bytes).
    fn drop_spare(&mut self) -> bool {
        match self.spare.take() {
            Some(buf) => {
                self.seg_bytes -= buf.len() as u64;
                true
            }
            None => false,
        }
    }

    /// Makes `id` its bucket's head in its queue if it has more room than
    /// the head.
    fn maybe_head(&mut self, id: u32) {
        let s = &self.segs[id as usize];
        if s.jumbo.is_some() {
            return;
        }
        let (queue, b) = (usize::from(s.main), s.bucket as usize);
        let h = self.heads[queue][b];
        if h == NIL || self.segs[h as usize].room() < s.room() {
            self.heads[queue][b] = id;
        }
    }

    fn link_newest(&mut self, id: u32) {
        let q = usize::from(self.segs[id as usize].main);
        push(
            &mut self.segs,
            AGE,
            [&mut self.oldest[q], &mut self.newest[q]],
            id,
        );
    }

    fn unlink_age(&mut self, id: u32) {
        let q = usize::from(self.segs[id as usize].main);
        unlink(
            &mut self.segs,
            AGE,
            [&mut self.oldest[q], &mut self.newest[q]],
            id,
        );
    }

    fn chain_push(&mut self, id: u32) {
        let b = self.segs[id as usize].bucket as usize;
        let ends = [&mut self.chain_first[b], &mut self.chain_last[b]];
        push(&mut self.segs, CHAIN, ends, id);
    }

    fn chain_unlink(&mut self, id: u32) {
        let b = self.segs[id as usize].bucket as usize;
        let ends = [&mut self.chain_first[b], &mut self.chain_last[b]];
        unlink(&mut self.segs, CHAIN, ends, id);
    }
}

/// What a walk over a segment did.
#[derive(Debug, Default)]
struct Walk {
    evicted: u32,
    expired: u32,
    kept: u32,
}

/// Appends segment `id` at the newer end of list `which`, whose ends
/// (oldest, newest) are `ends`.
fn push(segs: &mut [Segment], which: usize, ends: [&mut u32; 2], id: u32) {
    let [first, last] = ends;
    let old = *last;
    segs[id as usize].links[which] = Link {
        prev: old,
        next: NIL,
    };
    if old != NIL {
        segs[old as usize].links[which].next = id;
    } else {
        *first = id;
    }
    *last = id;
}

/// Takes segment `id` out of list `which`, whose ends are `ends`.
fn unlink(segs: &mut [Segment], which: usize, ends: [&mut u32; 2], id: u32) {
    let [first, last] = ends;
    let Link { prev, next } = segs[id as usize].links[which];
    if prev != NIL {
        segs[prev as usize].links[which].next = next;
    } else {
        *first = next;
    }
    if next != NIL {
        segs[next as usize].links[which].prev = prev;
    } else {
        *last = prev;
    }
}

/// Two distinct segments: one to move items out of, one to move them to.
fn two(segs: &mut [Segment], a: usize, b: usize) -> (&mut Segment, &mut Segment) {
    if a < b {
        let (lo, hi) = segs.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = segs.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}
