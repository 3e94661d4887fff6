//! The store's operation sequences for fuzzing (`fuzz/fuzz_targets/store_ops.rs`)
//! and their replay in `tests/fuzz_inputs.rs`: bytes become gets, puts,
//! deletes and clock advances on a real `Store`, checked against a model.
//! A value read is always the model's (never wrong or torn), budgets
//! always hold, and with room for every key nothing is lost.

use std::collections::HashMap;

use milena::node::store::{Millis, Store, StoreConfig, expiry_for};

/// Distinct keys an input can name.
const KEYS: u8 = 64;

/// A value recognisable from its key and write number, of `len` bytes.
fn value(key: u8, n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (n as u8).wrapping_mul(31) ^ key ^ (i as u8))
        .collect()
}

fn key(k: u8) -> Vec<u8> {
    // Every eighth key is over 255 bytes: the store's path for long keys.
    let mut key = format!("key-{k}").into_bytes();
    if k % 8 == 7 {
        key.resize(256 + usize::from(k), b'k');
    }
    key
}

/// Runs one input.
pub fn store_ops(data: &[u8]) {
    let Some((&cfg, mut ops)) = data.split_first() else {
        return;
    };
    // Bit 0: stripes; bits 1-5: items; bits 6-7: bytes.
    let shards = if cfg & 1 == 0 { 1 } else { 4 };
    let max_items = 8 * (1 + usize::from((cfg >> 1) & 0x1f));
    let budget = match cfg >> 6 {
        0 => None,
        1 => Some(16 * 1024),
        2 => Some(64 * 1024),
        _ => Some(1 << 20),
    };
    // With room for every key in every stripe and no byte budget nothing
    // may be lost.
    let exact = budget.is_none() && max_items >= usize::from(KEYS) * shards;
    let store = Store::new(StoreConfig {
        max_items,
        max_bytes: budget,
        shards,
    });
    let mut now = Millis(0);
    let mut writes = 0u32;
    // key → (value, expiry second, ring epoch)
    let mut model: HashMap<u8, (Vec<u8>, u32, u64)> = HashMap::new();
    while let [op, k, rest @ ..] = ops {
        let k = k % KEYS;
        ops = rest;
        let live = |m: &HashMap<u8, (Vec<u8>, u32, u64)>, now: Millis| {
            m.get(&k)
                .filter(|(_, e, _)| *e == 0 || now.0 < u64::from(*e) * 1000)
                .map(|(v, _, _)| v.clone())
        };
        match op % 4 {
            0 => {
                let got = store.get(&key(k), now);
                let want = live(&model, now);
                match (&got, &want) {
                    (Some(g), Some(w)) => {
                        assert_eq!(g, w, "key {k}: a wrong value");
                        // Its ring epoch is kept exactly, wherever it moved.
                        let epoch = model.get(&k).map_or(0, |m| m.2);
                        assert!(store.remaining(&key(k), now, epoch).is_some());
                        if let Some(later) = epoch.checked_add(1) {
                            let newer = store.remaining(&key(k), now, later);
                            assert!(newer.is_none(), "key {k}: epoch {epoch} read as newer");
                        }
                    }
                    (Some(g), None) => panic!("key {k}: {} bytes returned for nothing", g.len()),
                    (None, Some(_)) => {
                        assert!(!exact, "key {k} lost with room for everything");
                        model.remove(&k);
                    }
                    (None, None) => {}
                }
            }
            1 => {
                let [len, ttl, tail @ ..] = ops else { return };
                ops = tail;
                // Mostly small values, some over a small segment.
                let len = match len % 8 {
                    0 => usize::from(*len) * 64,
                    _ => usize::from(*len),
                };
                // Epochs further apart than a segment's 32-bit range.
                let epoch = match (*ttl >> 4) % 4 {
                    0 => 0,
                    1 => 5,
                    2 => 1_764_750_000_000_000,
                    _ => 1_764_750_000_000_000 + (1 << 33),
                };
                let ttl = u32::from(*ttl % 16) * 7;
                writes += 1;
                let v = value(k, writes, len);
                let expire = expiry_for(now, ttl);
                match store.put(&key(k), &v, ttl, now, epoch) {
                    milena::node::store::PutOutcome::Stored { .. } => {
                        model.insert(k, (v, expire, epoch));
                    }
                    // Refused: nothing was written, the old value stays
                    // (or is gone as evicted).
                    milena::node::store::PutOutcome::TooLarge => {
                        assert!(!exact, "refused with room for everything");
                    }
                }
            }
            2 => {
                let had = store.delete(&key(k), now);
                let want = live(&model, now).is_some();
                assert!(!had || want, "key {k}: deleted what it should not hold");
                if exact {
                    assert_eq!(had, want, "key {k}");
                }
                model.remove(&k);
            }
            _ => {
                now = Millis(now.0 + u64::from(k) * 250);
                store.expire(now);
            }
        }
        let s = store.stats();
        assert!(s.items <= max_items as u64, "{s:?}");
        if let Some(b) = budget {
            assert!(s.bytes <= b, "{s:?} over {b}");
        }
    }
}

/// Seeds: each budget, puts, overwrites, long keys, deletes and time.
pub fn store_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    // Room for all (1 and 4 stripes), tight on items, and each byte budget.
    for cfg in [0x0e, 0x3f, 0x03, 0x46, 0x8f, 0xc1] {
        let mut s = vec![cfg];
        for k in 0..64u8 {
            s.extend_from_slice(&[1, k, k.wrapping_mul(7), k % 3]);
        }
        for k in 0..64u8 {
            s.extend_from_slice(&[0, k]);
            if k % 5 == 0 {
                s.extend_from_slice(&[2, k, 3, 9]);
            }
        }
        seeds.push(s);
    }
    seeds
}
