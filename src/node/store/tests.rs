//! The store against an exact, single-lock LRU reference model.

use std::collections::VecDeque;

use hashbrown::DefaultHashBuilder;
use proptest::prelude::*;

use super::*;
use std::hash::BuildHasher;

/// The obviously-correct model: a recency-ordered list, most recent first.
struct Model {
    entries: VecDeque<(Vec<u8>, Vec<u8>, u32)>,
    max_items: usize,
    max_bytes: u64,
    bytes: u64,
}

fn charge(k: &[u8], v: &[u8]) -> u64 {
    (k.len() + v.len()) as u64 + ENTRY_OVERHEAD
}

impl Model {
    fn pos(&self, k: &[u8]) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == k)
    }
    fn remove(&mut self, i: usize) {
        if let Some((k, v, _)) = self.entries.remove(i) {
            self.bytes -= charge(&k, &v);
        }
    }
    fn get(&mut self, k: &[u8], now: Millis) -> Option<Vec<u8>> {
        let i = self.pos(k)?;
        if ttl::is_expired(self.entries[i].2, now) {
            self.remove(i);
            return None;
        }
        let e = self.entries.remove(i)?;
        let v = e.1.clone();
        self.entries.push_front(e);
        Some(v)
    }
    fn put(&mut self, k: &[u8], v: &[u8], expire: u32) -> bool {
        let c = charge(k, v);
        if c > self.max_bytes {
            return false;
        }
        if let Some(i) = self.pos(k) {
            self.remove(i);
        } else {
            while !self.entries.is_empty()
                && (self.entries.len() >= self.max_items || self.bytes + c > self.max_bytes)
            {
                self.remove(self.entries.len() - 1);
            }
        }
        self.entries.push_front((k.to_vec(), v.to_vec(), expire));
        self.bytes += c;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            self.remove(self.entries.len() - 1);
        }
        true
    }
    fn delete(&mut self, k: &[u8], now: Millis) -> bool {
        match self.pos(k) {
            Some(i) => {
                let live = !ttl::is_expired(self.entries[i].2, now);
                self.remove(i);
                live
            }
            None => false,
        }
    }
    fn expire(&mut self, now: Millis) {
        self.entries.retain(|e| !ttl::is_expired(e.2, now));
        self.bytes = self.entries.iter().map(|e| charge(&e.0, &e.1)).sum();
    }
}

#[derive(Debug, Clone)]
enum Action {
    Get(u8),
    Put(u8, Vec<u8>, u32),
    Delete(u8),
    Advance(u32),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..24).prop_map(Action::Get),
        4 => (0u8..24, proptest::collection::vec(any::<u8>(), 0..48), prop_oneof![Just(0u32), 1u32..5, Just(600u32)])
            .prop_map(|(k, v, t)| Action::Put(k, v, t)),
        1 => (0u8..24).prop_map(Action::Delete),
        1 => (0u32..3000).prop_map(Action::Advance),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// One shard behaves exactly like the model: same hits, same values,
    /// same recency order, same byte charge, whatever the op sequence.
    #[test]
    fn shard_matches_exact_lru(
        max_items in 1usize..10,
        budget in prop_oneof![Just(None), (2u64..6).prop_map(Some)],
        actions in proptest::collection::vec(action(), 1..300),
    ) {
        let max_bytes = budget.map_or(u64::MAX, |n| n * (ENTRY_OVERHEAD + 30));
        let hasher = DefaultHashBuilder::default();
        let mut now = Millis(0);
        let mut shard = Shard::new(max_items, max_bytes, 0, hasher.clone(), now);
        let mut model = Model { entries: VecDeque::new(), max_items, max_bytes, bytes: 0 };
        for a in actions {
            match a {
                Action::Get(k) => {
                    let k = key(k);
                    let got = shard.get(hasher.hash_one(&k), &k, now, 0).map(<[u8]>::to_vec);
                    prop_assert_eq!(got, model.get(&k, now));
                }
                Action::Put(k, v, ttl) => {
                    let k = key(k);
                    let expire = expiry_for(now, ttl);
                    let stored = shard.put(hasher.hash_one(&k), &k, &v, expire, 0);
                    let model_stored = model.put(&k, &v, expire);
                    prop_assert_eq!(matches!(stored, PutOutcome::Stored { .. }), model_stored);
                }
                Action::Delete(k) => {
                    let k = key(k);
                    prop_assert_eq!(shard.delete(hasher.hash_one(&k), &k, now), model.delete(&k, now));
                }
                Action::Advance(ms) => {
                    now = Millis(now.0 + u64::from(ms));
                    loop {
                        if shard.expire_step(now).1 { break; }
                    }
                    model.expire(now);
                }
            }
            let model_keys: Vec<Vec<u8>> = model.entries.iter().map(|e| e.0.clone()).collect();
            prop_assert_eq!(shard.keys_mru(), model_keys);
            prop_assert_eq!(shard.bytes(), model.bytes);
            prop_assert!(shard.len() <= max_items);
        }
    }
}

#[test]
fn expired_entries_are_never_returned_even_before_reclaim() {
    let store = Store::new(
        StoreConfig {
            max_items: 100,
            max_bytes: None,
            shards: 4,
            exact_lru: false,
        },
        Millis(0),
    );
    store.put(b"a", b"1", 2, Millis(0), 0);
    assert_eq!(store.get(b"a", Millis(1999)), Some(b"1".to_vec()));
    assert_eq!(store.get(b"a", Millis(2000)), None);
    assert_eq!(store.stats().counters.expirations, 1);
}

#[test]
fn the_wheel_reclaims_without_any_get() {
    let store = Store::new(
        StoreConfig {
            max_items: 10_000,
            max_bytes: None,
            shards: 8,
            exact_lru: false,
        },
        Millis(0),
    );
    for i in 0..5000u32 {
        store.put(&i.to_le_bytes(), b"v", 1 + i % 5, Millis(0), 0);
    }
    store.put(b"forever", b"v", 0, Millis(0), 0);
    store.put(b"long", b"v", 4000, Millis(0), 0);
    assert_eq!(store.expire(Millis(999)), 0);
    assert_eq!(store.expire(Millis(3000)), 3000);
    assert_eq!(store.expire(Millis(6000)), 2000);
    let s = store.stats();
    assert_eq!(s.items, 2);
    assert_eq!(s.counters.expirations, 5000);
    // Far beyond the wheel's horizon: the long entry is re-filed, not lost early.
    assert_eq!(store.expire(Millis(3_999_000)), 0);
    assert_eq!(store.expire(Millis(4_000_000)), 1);
    assert_eq!(
        store.get(b"forever", Millis(u64::from(u32::MAX) * 1000)),
        Some(b"v".to_vec())
    );
}

#[test]
fn overwrites_move_expiry_both_ways() {
    let store = Store::new(
        StoreConfig {
            max_items: 10,
            max_bytes: None,
            shards: 1,
            exact_lru: false,
        },
        Millis(0),
    );
    store.put(b"k", b"1", 100, Millis(0), 0);
    store.put(b"k", b"2", 1, Millis(0), 0);
    assert_eq!(store.expire(Millis(1000)), 1);
    store.put(b"k", b"3", 1, Millis(1000), 0);
    store.put(b"k", b"4", 100, Millis(1000), 0);
    assert_eq!(store.expire(Millis(50_000)), 0);
    assert_eq!(store.get(b"k", Millis(50_000)), Some(b"4".to_vec()));
}

#[test]
fn item_budget_is_exact_across_shards() {
    let store = Store::new(
        StoreConfig {
            max_items: 10,
            max_bytes: None,
            shards: 64,
            exact_lru: false,
        },
        Millis(0),
    );
    assert_eq!(store.shard_count(), 8);
    for i in 0..1000u32 {
        store.put(&i.to_le_bytes(), b"v", 0, Millis(0), 0);
    }
    let s = store.stats();
    assert!(s.items <= 10, "{s:?}");
    assert_eq!(s.items + s.counters.evictions, 1000);
}

#[test]
fn byte_budget_bounds_memory_and_rejects_giants() {
    let budget = 64 * 1024;
    let store = Store::new(
        StoreConfig {
            max_items: 1 << 20,
            max_bytes: Some(budget),
            shards: 4,
            exact_lru: false,
        },
        Millis(0),
    );
    for i in 0..10_000u32 {
        store.put(&i.to_le_bytes(), &[7u8; 100], 0, Millis(0), 0);
    }
    let s = store.stats();
    assert!(s.bytes <= budget, "{s:?}");
    assert!(s.counters.evictions > 0);
    assert_eq!(
        store.put(b"giant", &vec![0u8; 20 * 1024], 0, Millis(0), 0),
        PutOutcome::TooLarge
    );
}

#[test]
fn stale_wheel_hints_stay_bounded_under_churn() {
    let hasher = DefaultHashBuilder::default();
    let mut shard = Shard::new(100, u64::MAX, 25, hasher.clone(), Millis(0));
    for i in 0..200_000u32 {
        let k = i.to_le_bytes();
        shard.put(hasher.hash_one(k), &k, b"v", 400, 0);
        if i % 1000 == 0 {
            shard.expire_step(Millis(0));
        }
    }
    assert_eq!(shard.len(), 100);
    assert!(
        shard.wheel_refs() <= 2 * 100 + 1024 + 1000,
        "{}",
        shard.wheel_refs()
    );
}

#[test]
fn entries_older_than_the_ownership_epoch_are_dropped() {
    let store = Store::new(
        StoreConfig {
            max_items: 10,
            max_bytes: None,
            shards: 1,
            exact_lru: false,
        },
        Millis(0),
    );
    store.put(b"k", b"old", 0, Millis(0), 5);
    assert_eq!(
        store.get_with(b"k", Millis(0), 5, <[u8]>::to_vec),
        Some(b"old".to_vec())
    );
    assert_eq!(store.get_with(b"k", Millis(0), 6, <[u8]>::to_vec), None);
    assert_eq!(store.stats().counters.stale, 1);
    assert_eq!(
        store.stats().items,
        0,
        "a stale entry is reclaimed, not kept"
    );
    store.put(b"k", b"new", 0, Millis(0), 7);
    assert_eq!(
        store.get_with(b"k", Millis(0), 6, <[u8]>::to_vec),
        Some(b"new".to_vec())
    );
}
