//! A shard's index: a bucketized cuckoo hash table of 32-bit entries.
//!
//! Keys live only in the segments, so the index holds entries (segment
//! and offset) and 8-bit tags, and compares keys through the segments.
//! hashbrown does the same in 5 bytes a slot, but grows by doubling: it is
//! 44–87.5% full, 5.7–11.4 bytes per item (10.5 at the 1M items of
//! `bench/memory.sh`). Here a bucket is one cache line of 12 tags and 12
//! entries (5.3 bytes a slot), a key may sit in either of two buckets,
//! and the table grows by a quarter once 15/16 full: 75–94% full,
//! 5.7–7.1 bytes per item. The second bucket is computed from the first
//! and the tag alone (partial-key cuckoo hashing, as cuckoo filters do),
//! so moving an entry to make room reads no key; only growth rehashes.
//!
//! Large tables are mapped straight from the kernel: growing by a quarter
//! frees four old tables for every one held, and the allocator kept those
//! resident (26 MB of them at 1M items, more than the index itself).

/// Entries per bucket.
const SLOTS: usize = 12;
/// Tag of an empty slot.
const EMPTY: u8 = 0;
/// Entries moved before an insertion gives up and the table grows.
const MAX_KICKS: usize = 128;
/// Bytes per tag lane, for matching 12 tags at once.
const ONES: u128 = u128::from_le_bytes([1; 16]);

/// One cache line: 12 tags, 12 entries.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Bucket {
    tags: [u8; SLOTS],
    slots: [u32; SLOTS],
    _pad: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    tags: [EMPTY; SLOTS],
    slots: [0; SLOTS],
    _pad: 0,
};

impl Bucket {
    /// Bit `i` set for each slot `i` whose tag is `tag`.
    #[inline]
    fn matches(&self, tag: u8) -> u32 {
        let mut w = [0u8; 16];
        w[..SLOTS].copy_from_slice(&self.tags);
        let x = u128::from_le_bytes(w) ^ (ONES * u128::from(tag));
        // Exact zero-byte test (no borrow across lanes): a lane's top
        // bit ends up set only if the lane was zero.
        let low7 = ONES * 0x7f;
        let zero = !(((x & low7) + low7) | x | low7);
        let mut mask = 0u32;
        let mut z = zero;
        while z != 0 {
            let lane = z.trailing_zeros() / 8;
            mask |= 1 << lane;
            z &= z - 1;
        }
        mask & ((1 << SLOTS) - 1)
    }

    #[inline]
    fn free_slot(&self) -> Option<usize> {
        let m = self.matches(EMPTY);
        (m != 0).then(|| m.trailing_zeros() as usize)
    }
}

/// Tables of at least this many bytes are mapped, not allocated.
const MAP_BYTES: usize = 64 * 1024;

/// A table's buckets, zeroed (all slots empty) when made.
enum Buckets {
    Heap(Vec<Bucket>),
    /// An anonymous private mapping of `len` buckets, owned alone;
    /// unmapped on drop.
    Mapped {
        ptr: std::ptr::NonNull<Bucket>,
        len: usize,
    },
}

// SAFETY: `Mapped` owns its mapping alone (as a `Vec` owns its buffer);
// buckets are plain data.
unsafe impl Send for Buckets {}
// SAFETY: as above; shared access is read-only through `Deref`.
unsafe impl Sync for Buckets {}

impl Buckets {
    fn new(n: usize) -> Self {
        let bytes = n * std::mem::size_of::<Bucket>();
        if bytes >= MAP_BYTES {
            // SAFETY: a fresh anonymous mapping, no pointer passed in; the
            // result is checked before use.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            // Anonymous mappings are zeroed (every tag EMPTY) and page
            // aligned (more than a bucket's 64 bytes).
            if p != libc::MAP_FAILED
                && let Some(ptr) = std::ptr::NonNull::new(p.cast::<Bucket>())
            {
                return Buckets::Mapped { ptr, len: n };
            }
        }
        Buckets::Heap(vec![EMPTY_BUCKET; n])
    }

    /// Bytes held, as the system counts them.
    fn bytes(&self) -> usize {
        match self {
            Buckets::Heap(v) => v.capacity() * std::mem::size_of::<Bucket>(),
            Buckets::Mapped { len, .. } => {
                (len * std::mem::size_of::<Bucket>()).next_multiple_of(4096)
            }
        }
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::Heap(Vec::new())
    }
}

impl std::ops::Deref for Buckets {
    type Target = [Bucket];
    fn deref(&self) -> &[Bucket] {
        match self {
            Buckets::Heap(v) => v,
            // SAFETY: `len` initialized (zeroed) buckets, owned by `self`.
            Buckets::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl std::ops::DerefMut for Buckets {
    fn deref_mut(&mut self) -> &mut [Bucket] {
        match self {
            Buckets::Heap(v) => v,
            // SAFETY: as in `deref`, and `&mut self` makes the access unique.
            Buckets::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl Drop for Buckets {
    fn drop(&mut self) {
        if let Buckets::Mapped { ptr, len } = self {
            // SAFETY: the mapping made in `new`, unmapped once; no borrow
            // of it outlives `self`.
            unsafe {
                libc::munmap(ptr.as_ptr().cast(), *len * std::mem::size_of::<Bucket>());
            }
        }
    }
}

/// The table. Every method takes the entry's 64-bit key hash; growth
/// asks `rehash` for the hash of an entry's key.
#[derive(Default)]
pub struct Index {
    buckets: Buckets,
    len: usize,
    /// Rotates the slot an insertion displaces, so kicks do not cycle.
    kick: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("len", &self.len)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

/// The first bucket of `hash` among `n`, and its tag (never [`EMPTY`]).
#[inline]
fn place(hash: u64, n: usize) -> (usize, u8) {
    // Bits 0..32 pick the bucket (by multiplication: any `n` works), the
    // top 8 the tag; the store picks stripes from bits 32.., so neither
    // is constant within a stripe.
    let b = ((u64::from(hash as u32) * n as u64) >> 32) as usize;
    let tag = (hash >> 56) as u8;
    (b, if tag == EMPTY { 1 } else { tag })
}

/// The other bucket of an entry with `tag` in bucket `b`: `alt(alt(b)) == b`.
#[inline]
fn alt(b: usize, tag: u8, n: usize) -> usize {
    let mixed = u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let off = ((mixed * n as u64) >> 32) as usize;
    if off >= b { off - b } else { off + n - b }
}

impl Index {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the table.
    pub fn allocation_size(&self) -> usize {
        self.buckets.bytes()
    }

    /// Where the entry of `hash` for which `eq` holds sits.
    #[inline]
    fn locate(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, usize)> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let (b1, tag) = place(hash, n);
        let search = |b: usize, eq: &mut dyn FnMut(u32) -> bool| {
            let bucket = &self.buckets[b];
            let mut m = bucket.matches(tag);
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                if eq(bucket.slots[i]) {
                    return Some(i);
                }
                m &= m - 1;
            }
            None
        };
        if let Some(i) = search(b1, &mut eq) {
            return Some((b1, i));
        }
        let b2 = alt(b1, tag, n);
        if b2 != b1
            && let Some(i) = search(b2, &mut eq)
        {
            return Some((b2, i));
        }
        None
    }

    /// The entry of `hash` for which `eq` holds.
    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.locate(hash, eq).map(|(b, i)| self.buckets[b].slots[i])
    }

    /// As [`Index::find`], to change the entry in place (same key).
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<&mut u32> {
        let (b, i) = self.locate(hash, eq)?;
        Some(&mut self.buckets[b].slots[i])
    }

    /// Removes the entry of `hash` for which `eq` holds; whether there was one.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(u32) -> bool) -> bool {
        match self.locate(hash, eq) {
            Some((b, i)) => {
                self.buckets[b].tags[i] = EMPTY;
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    /// Makes room for one more entry, growing now if the table would pass
    /// 15/16 full (so a caller can count the new size before inserting).
    pub fn reserve_one(&mut self, rehash: impl Fn(u32) -> u64) {
        let slots = self.buckets.len() * SLOTS;
        if (self.len + 1) * 16 > slots * 15 {
            self.grow(&rehash, None);
        }
    }

    /// Adds `entry` for `hash` (the caller removed any entry of the same
    /// key), growing if needed.
    pub fn insert(&mut self, hash: u64, entry: u32, rehash: impl Fn(u32) -> u64) {
        self.reserve_one(&rehash);
        let (b, tag) = place(hash, self.buckets.len());
        if let Err(homeless) = self.place_entry(b, tag, entry) {
            self.grow(&rehash, Some(homeless));
        }
        self.len += 1;
    }

    /// Puts `entry` (tag `tag`, first bucket `b`) in one of its buckets,
    /// moving others to their other bucket to make room. On failure, the
    /// entry left without a slot (not necessarily `entry`) is returned;
    /// every other entry is still in the table.
    fn place_entry(&mut self, b: usize, tag: u8, entry: u32) -> Result<(), u32> {
        let n = self.buckets.len();
        let (mut b, mut tag, mut entry) = (b, tag, entry);
        for bucket in [b, alt(b, tag, n)] {
            if let Some(i) = self.buckets[bucket].free_slot() {
                self.buckets[bucket].tags[i] = tag;
                self.buckets[bucket].slots[i] = entry;
                return Ok(());
            }
        }
        for _ in 0..MAX_KICKS {
            self.kick = self.kick.wrapping_add(1);
            let i = self.kick % SLOTS;
            let slot = &mut self.buckets[b];
            std::mem::swap(&mut slot.tags[i], &mut tag);
            std::mem::swap(&mut slot.slots[i], &mut entry);
            b = alt(b, tag, n);
            if let Some(j) = self.buckets[b].free_slot() {
                self.buckets[b].tags[j] = tag;
                self.buckets[b].slots[j] = entry;
                return Ok(());
            }
        }
        Err(entry)
    }

    /// Rebuilds the table a quarter larger (twice as large while small;
    /// larger still if placement fails),
    /// with `extra` (an entry not yet counted in `len`) added.
    fn grow(&mut self, rehash: &dyn Fn(u32) -> u64, extra: Option<u32>) {
        let mut n = self.buckets.len();
        'size: loop {
            // Doubling while a table is a few pages (cheap, and fewer
            // rebuilds for the many small stripes of a small store).
            n = if n < 64 { (n * 2).max(1) } else { n + n / 4 };
            let mut next = Index {
                buckets: Buckets::new(n),
                len: 0,
                kick: self.kick,
            };
            let held = self.buckets.iter().flat_map(|b| {
                (0..SLOTS)
                    .filter(|&i| b.tags[i] != EMPTY)
                    .map(|i| b.slots[i])
            });
            for e in held.chain(extra) {
                let (b, tag) = place(rehash(e), n);
                if next.place_entry(b, tag, e).is_err() {
                    continue 'size;
                }
            }
            next.len = self.len;
            *self = next;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{BuildHasher, BuildHasherDefault};

    fn hash_of(k: u32) -> u64 {
        // Fixed keys: failures replay.
        BuildHasherDefault::<DefaultHasher>::default().hash_one(k)
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn tags_match_exactly() {
        let mut b = EMPTY_BUCKET;
        b.tags = [0, 1, 2, 0x80, 0xff, 1, 0x7f, 0x01, 0, 0x81, 1, 0xfe];
        assert_eq!(b.matches(1), 0b0100_1010_0010);
        assert_eq!(b.matches(0), 0b0001_0000_0001);
        assert_eq!(b.matches(0xff), 0b1_0000);
        assert_eq!(b.matches(0x81), 0b10_0000_0000);
        assert_eq!(b.matches(3), 0);
        assert_eq!(EMPTY_BUCKET.matches(0), (1 << SLOTS) - 1);
    }

    #[test]
    fn the_other_bucket_leads_back() {
        for n in [1usize, 2, 3, 7, 100, 12_345] {
            for b in (0..n).step_by(n / 50 + 1) {
                for tag in 1..=255u8 {
                    let a = alt(b, tag, n);
                    assert!(a < n);
                    assert_eq!(alt(a, tag, n), b, "n {n} b {b} tag {tag}");
                }
            }
        }
    }

    #[test]
    fn a_million_entries_fill_it_past_three_quarters() {
        let mut ix = Index::default();
        for e in 0..1_000_000u32 {
            ix.insert(hash_of(e), e, hash_of);
        }
        assert_eq!(ix.len(), 1_000_000);
        let per_item = ix.allocation_size() as f64 / ix.len() as f64;
        assert!(per_item < 7.2, "{per_item} bytes per entry");
        for e in (0..1_000_000u32).step_by(997) {
            assert_eq!(ix.find(hash_of(e), |x| x == e), Some(e));
        }
        assert_eq!(ix.find(hash_of(2_000_000), |x| x == 2_000_000), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32),
        Remove(u32),
        Move(u32),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (0..3000u32).prop_map(Op::Insert),
                2 => (0..3000u32).prop_map(Op::Remove),
                1 => (0..3000u32).prop_map(Op::Move),
            ],
            0..4000,
        )
    }

    /// Entries stand for keys as `key + 10_000 * generation`.
    fn key_of(e: u32) -> u32 {
        e % 10_000
    }

    fn rehash(e: u32) -> u64 {
        hash_of(key_of(e))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The table holds exactly what a map of key to entry holds,
        /// through growth, kicks and entries changed in place (as the
        /// store moves an item to another segment).
        #[test]
        fn behaves_as_a_map(ops in ops()) {
            let mut ix = Index::default();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        if let Some(old) = model.remove(&k) {
                            prop_assert!(ix.remove(hash_of(k), |x| x == old));
                        }
                        ix.insert(hash_of(k), k, rehash);
                        model.insert(k, k);
                    }
                    Op::Remove(k) => {
                        let old = model.remove(&k);
                        let removed = ix.remove(hash_of(k), |x| key_of(x) == k);
                        prop_assert_eq!(removed, old.is_some());
                    }
                    Op::Move(k) => {
                        if let Some(e) = model.get_mut(&k) {
                            let slot = ix.find_mut(hash_of(k), |x| x == *e);
                            prop_assert!(slot.is_some());
                            if let Some(s) = slot {
                                *s = *e + 10_000;
                            }
                            *e += 10_000;
                        }
                    }
                }
                prop_assert_eq!(ix.len(), model.len());
            }
            for (&k, &e) in &model {
                prop_assert_eq!(ix.find(hash_of(k), |x| key_of(x) == k), Some(e));
            }
            for k in 3000..3100u32 {
                prop_assert_eq!(ix.find(hash_of(k), |x| key_of(x) == k), None);
            }
            let slots = ix.buckets.len() * SLOTS;
            prop_assert!(ix.len() * 16 <= slots * 15);
        }
    }
}
