//! The store against a reference model: what is stored is returned until
//! it expires, is deleted or is evicted, never a wrong or torn value; with
//! room for everything, nothing is evicted and the store is the model.

use std::collections::HashMap;

use hashbrown::DefaultHashBuilder;
use proptest::prelude::*;

use super::*;
use std::hash::BuildHasher;

/// Key → (value, expiry second, ring epoch).
#[derive(Default)]
struct Model {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32, u64)>,
}

impl Model {
    fn live(&self, k: &[u8], now: Millis) -> Option<&Vec<u8>> {
        self.entries
            .get(k)
            .filter(|(_, e, _)| !ttl::is_expired(*e, now))
            .map(|(v, _, _)| v)
    }

    fn epoch(&self, k: &[u8]) -> u64 {
        self.entries.get(k).map_or(0, |&(_, _, epoch)| epoch)
    }
}

#[derive(Debug, Clone)]
enum Action {
    Get(u8),
    Put(u8, Vec<u8>, u32, u64),
    Delete(u8),
    Advance(u32),
}

fn action(max_value: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..40).prop_map(Action::Get),
        4 => (0u8..40, proptest::collection::vec(any::<u8>(), 0..max_value), prop_oneof![Just(0u32), 1u32..5, 10u32..40, Just(3000u32)], epoch())
            .prop_map(|(k, v, t, e)| Action::Put(k, v, t, e)),
        1 => (0u8..40).prop_map(Action::Delete),
        1 => (0u32..4000).prop_map(Action::Advance),
    ]
}

/// Ring epochs: none (0), etcd revisions, and microsecond times further
/// apart than a segment's 32-bit epoch range, so segments refuse items
/// and merges meet items of other bases.
fn epoch() -> impl Strategy<Value = u64> {
    let micros = 1_764_750_000_000_000u64;
    prop_oneof![
        Just(0u64),
        1u64..1000,
        micros..micros + 10,
        micros + (1 << 33)..micros + (1 << 33) + 10,
        Just(u64::MAX),
    ]
}

/// Keys of several lengths, one of them past 255 bytes (a jumbo item).
fn key(k: u8) -> Vec<u8> {
    let mut key = format!("key-{k}").into_bytes();
    if k.is_multiple_of(13) {
        key.resize(300, b'x');
    }
    key
}

/// Runs `actions` against a shard and the model. With `exact`, nothing
/// may be evicted; otherwise a value the shard no longer has is taken as
/// evicted (and must stay gone), and every value it returns must be the
/// model's.
fn check(
    mut shard: Shard,
    hasher: &DefaultHashBuilder,
    max_items: usize,
    max_bytes: u64,
    exact: bool,
    actions: Vec<Action>,
) -> Result<(), TestCaseError> {
    let mut now = Millis(0);
    let mut model = Model::default();
    for a in actions {
        match a {
            Action::Get(k) => {
                let k = key(k);
                let got = shard
                    .get(hasher.hash_one(&k), &k, now, 0)
                    .map(<[u8]>::to_vec);
                let want = model.live(&k, now).cloned();
                match (&got, &want) {
                    (Some(g), Some(w)) => {
                        prop_assert_eq!(g, w);
                        // The epoch is kept exactly, wherever the item moved.
                        let (h, epoch) = (hasher.hash_one(&k), model.epoch(&k));
                        prop_assert!(shard.expiry(h, &k, now, epoch).is_some());
                        if let Some(later) = epoch.checked_add(1) {
                            prop_assert!(shard.expiry(h, &k, now, later).is_none());
                        }
                    }
                    (Some(g), None) => {
                        prop_assert!(false, "returned {:?} for a key it should not hold", g)
                    }
                    (None, Some(_)) => {
                        prop_assert!(!exact, "lost {:?} with room for everything", k);
                        prop_assert!(shard.counters().evictions > 0);
                        model.entries.remove(&k);
                    }
                    (None, None) => {}
                }
            }
            Action::Put(k, v, ttl, epoch) => {
                let k = key(k);
                let expire = expiry_for(now, ttl);
                match shard.put(hasher.hash_one(&k), &k, &v, expire, epoch, now) {
                    PutOutcome::Stored { .. } => {
                        model.entries.insert(k, (v, expire, epoch));
                    }
                    // Refused: nothing was written, the old value stays.
                    PutOutcome::TooLarge => prop_assert!(!exact),
                }
            }
            Action::Delete(k) => {
                let k = key(k);
                let had = shard.delete(hasher.hash_one(&k), &k, now);
                let want = model.live(&k, now).is_some();
                if exact {
                    prop_assert_eq!(had, want);
                } else {
                    prop_assert!(!had || want, "deleted a key it should not hold");
                }
                model.entries.remove(&k);
            }
            Action::Advance(ms) => {
                now = Millis(now.0 + u64::from(ms));
                while !shard.expire_step(now).1 {}
            }
        }
        prop_assert!(shard.len() <= max_items);
        prop_assert!(
            shard.bytes() <= max_bytes,
            "{} > {}",
            shard.bytes(),
            max_bytes
        );
        if exact {
            let live = model
                .entries
                .values()
                .filter(|(_, e, _)| !ttl::is_expired(*e, now))
                .count();
            prop_assert!(shard.len() >= live, "{} < {live}", shard.len());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// With room for every key, the shard is the model.
    #[test]
    fn with_room_the_shard_is_the_model(
        seg_size in prop_oneof![Just(256usize), Just(1024), Just(64 * 1024)],
        actions in proptest::collection::vec(action(200), 1..400),
    ) {
        let hasher = DefaultHashBuilder::default();
        let shard = Shard::new(1000, u64::MAX, seg_size, hasher.clone());
        check(shard, &hasher, 1000, u64::MAX, true, actions)?;
    }

    /// Under item and byte pressure: never a wrong value, never over either
    /// budget, and what was evicted stays gone.
    #[test]
    fn under_pressure_values_are_right_or_gone(
        max_items in 1usize..30,
        budget in prop_oneof![Just(u64::MAX), 2_000u64..12_000],
        seg_size in prop_oneof![Just(256usize), Just(1024)],
        actions in proptest::collection::vec(action(300), 1..400),
    ) {
        let hasher = DefaultHashBuilder::default();
        let shard = Shard::new(max_items, budget, seg_size, hasher.clone());
        check(shard, &hasher, max_items, budget, false, actions)?;
    }
}

fn store(max_items: usize, max_bytes: Option<u64>, shards: usize) -> Store {
    Store::new(StoreConfig {
        max_items,
        max_bytes,
        shards,
    })
}

#[test]
fn expired_entries_are_never_returned_even_before_reclaim() {
    let store = store(100, None, 4);
    store.put(b"a", b"1", 2, Millis(0), 0);
    assert_eq!(store.get(b"a", Millis(1999)), Some(b"1".to_vec()));
    assert_eq!(store.get(b"a", Millis(2000)), None);
    assert_eq!(store.stats().counters.expirations, 1);
}

#[test]
fn expiry_frees_whole_segments_per_ttl_bucket() {
    let store = store(10_000, None, 8);
    // TTLs of 1 to 5 s share a bucket (8 s wide): their segments go
    // together once the last of them has expired.
    for i in 0..5000u32 {
        store.put(&i.to_le_bytes(), b"v", 1 + i % 5, Millis(0), 0);
    }
    store.put(b"forever", b"v", 0, Millis(0), 0);
    store.put(b"long", b"v", 4000, Millis(0), 0);
    assert_eq!(store.expire(Millis(999)), 0);
    assert_eq!(store.expire(Millis(4999)), 0, "a segment goes whole");
    assert_eq!(
        store.get(&3u32.to_le_bytes(), Millis(4999)),
        None,
        "yet never served"
    );
    assert_eq!(
        store.get(&4u32.to_le_bytes(), Millis(4999)),
        Some(b"v".to_vec())
    );
    let before = store.stats();
    assert_eq!(
        store.expire(Millis(5000)),
        4999,
        "one was dropped by the read"
    );
    let s = store.stats();
    assert_eq!(s.items, 2);
    assert_eq!(s.counters.expirations, 5000);
    assert!(s.bytes < before.bytes, "{s:?} vs {before:?}");
    assert_eq!(store.expire(Millis(3_999_000)), 0);
    assert_eq!(store.expire(Millis(4_100_000)), 1);
    assert_eq!(
        store.get(b"forever", Millis(u64::from(u32::MAX) * 1000)),
        Some(b"v".to_vec())
    );
}

#[test]
fn overwrites_move_expiry_both_ways() {
    let store = store(10, None, 1);
    store.put(b"k", b"1", 100, Millis(0), 0);
    store.put(b"k", b"2", 1, Millis(0), 0);
    assert_eq!(store.expire(Millis(1000)), 1);
    assert_eq!(store.get(b"k", Millis(1000)), None);
    store.put(b"k", b"3", 1, Millis(1000), 0);
    store.put(b"k", b"4", 100, Millis(1000), 0);
    assert_eq!(store.expire(Millis(50_000)), 0);
    assert_eq!(store.get(b"k", Millis(50_000)), Some(b"4".to_vec()));
    assert_eq!(store.get(b"k", Millis(101_000)), None);
}

#[test]
fn item_budget_is_exact_across_shards() {
    let store = store(10, None, 64);
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
    let store = store(1 << 20, Some(budget), 4);
    for i in 0..10_000u32 {
        store.put(&i.to_le_bytes(), &[7u8; 100], 0, Millis(0), 0);
        assert!(store.stats().bytes <= budget);
    }
    let s = store.stats();
    assert!(s.counters.evictions > 0);
    assert!(s.items > 300, "the budget holds items, not air: {s:?}");
    assert_eq!(
        store.put(b"giant", &vec![0u8; 20 * 1024], 0, Millis(0), 0),
        PutOutcome::TooLarge
    );
    // A value over a segment but within a stripe's budget has a segment
    // of its own.
    let big = vec![9u8; 8 * 1024];
    assert!(matches!(
        store.put(b"big", &big, 0, Millis(0), 0),
        PutOutcome::Stored { .. }
    ));
    assert_eq!(store.get(b"big", Millis(0)), Some(big));
    assert!(store.stats().bytes <= budget);
}

#[test]
fn the_budget_holds_under_mixed_sizes_and_ttls() {
    let budget = 4 << 20;
    let store = store(1 << 20, Some(budget), 8);
    let mut state = 7u64;
    for i in 0..200_000u64 {
        // xorshift: sizes from 0 to 64 KiB, mostly small.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = match state % 100 {
            0 => (state >> 8) as usize % 65_536,
            1..10 => (state >> 8) as usize % 4096,
            _ => (state >> 8) as usize % 300,
        };
        let ttl = [0, 5, 60, 3600][(state >> 40) as usize % 4];
        let now = Millis(i / 20);
        store.put(
            &(state % 50_000).to_le_bytes(),
            &vec![1u8; len],
            ttl,
            now,
            0,
        );
        if i % 1000 == 0 {
            store.expire(now);
        }
        assert!(store.stats().bytes <= budget);
    }
}

#[test]
fn dead_space_is_reclaimed_without_a_byte_budget() {
    let hasher = DefaultHashBuilder::default();
    let mut shard = Shard::new(1000, u64::MAX, 4096, hasher.clone());
    for i in 0..200_000u32 {
        let k = (i % 100).to_le_bytes();
        shard.put(hasher.hash_one(k), &k, &[3u8; 100], 0, 0, Millis(0));
    }
    assert_eq!(shard.len(), 100);
    // 100 items of 120 bytes: a handful of 4 KiB segments, not 200,000 items' worth.
    assert!(shard.segments() <= 8, "{}", shard.segments());
}

#[test]
fn a_one_pass_scan_does_not_flush_items_in_use() {
    let s = store(1000, None, 1);
    let hot: Vec<Vec<u8>> = (0..500u32)
        .map(|i| format!("hot-{i}").into_bytes())
        .collect();
    for k in &hot {
        s.put(k, b"v", 0, Millis(0), 0);
    }
    for _ in 0..3 {
        for k in &hot {
            assert!(s.get_with(k, Millis(0), 0, |_| ()).is_some());
        }
    }
    for i in 0..5000u32 {
        s.put(format!("scan-{i}").as_bytes(), b"v", 0, Millis(0), 0);
    }
    let kept = hot
        .iter()
        .filter(|k| s.get_with(k, Millis(0), 0, |_| ()).is_some())
        .count();
    // An LRU of 1,000 would hold none of them after 5,000 new keys.
    assert!(kept >= 450, "{kept} of 500 hot keys survived the scan");
}

#[test]
fn entries_older_than_the_ownership_epoch_are_dropped() {
    let store = store(10, None, 1);
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
    // Wall-clock microsecond epochs keep their order.
    let micros = 1_764_750_000_000_000u64;
    store.put(b"w", b"v", 0, Millis(0), micros);
    assert!(store.get_with(b"w", Millis(0), micros, |_| ()).is_some());
    assert!(
        store
            .get_with(b"w", Millis(0), micros + 1, |_| ())
            .is_none()
    );
}
