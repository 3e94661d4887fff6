//! Hit ratio of the segment store against an exact LRU of the same
//! capacity, quick_cache (S3-FIFO-like) and moka (TinyLFU), on the Zipf
//! workload and on the same traffic with one-pass scans mixed in. Prints
//! a table.
//!
//! Run: `cargo bench --bench hit_ratio`

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use milena::node::store::{Millis, Store, StoreConfig};

#[path = "workload.rs"]
mod workload;
use workload::*;

/// An exact LRU: recency stamps in an ordered map (the reference).
struct ExactLru {
    stamp: u64,
    by_key: HashMap<Vec<u8>, u64>,
    by_stamp: BTreeMap<u64, Vec<u8>>,
    capacity: usize,
}

impl ExactLru {
    fn new(capacity: usize) -> Self {
        ExactLru {
            stamp: 0,
            by_key: HashMap::new(),
            by_stamp: BTreeMap::new(),
            capacity,
        }
    }

    fn touch(&mut self, k: &[u8]) -> bool {
        let Some(old) = self.by_key.get_mut(k) else {
            return false;
        };
        self.stamp += 1;
        let key = self.by_stamp.remove(old).expect("indexed");
        *old = self.stamp;
        self.by_stamp.insert(self.stamp, key);
        true
    }

    fn insert(&mut self, k: &[u8]) {
        if self.touch(k) {
            return;
        }
        if self.by_key.len() >= self.capacity
            && let Some((_, victim)) = self.by_stamp.pop_first()
        {
            self.by_key.remove(&victim);
        }
        self.stamp += 1;
        self.by_key.insert(k.to_vec(), self.stamp);
        self.by_stamp.insert(self.stamp, k.to_vec());
    }
}

/// Gets that miss are followed by a put (a cache-aside client); scan
/// steps (keys past the Zipf key space) are read once and never again.
/// Counts the Zipf gets of the second half.
fn ratio(
    mut get: impl FnMut(&[u8]) -> bool,
    mut put: impl FnMut(&[u8]),
    keys: &[Vec<u8>],
    steps: &[Step],
) -> f64 {
    let (mut hits, mut gets) = (0u64, 0u64);
    let mut scan_key = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let key = match keys.get(s.key as usize) {
            Some(k) => k,
            None => {
                scan_key.clear();
                scan_key.extend_from_slice(format!("scan:{}", s.key).as_bytes());
                &scan_key
            }
        };
        if s.get {
            let hit = get(key);
            if !hit {
                put(key);
            }
            if i >= steps.len() / 2 && (s.key as usize) < keys.len() {
                gets += 1;
                hits += u64::from(hit);
            }
        } else {
            put(key);
        }
    }
    hits as f64 / gets as f64
}

/// The Zipf steps with a one-pass scan of `len` fresh keys after every
/// `every` steps.
fn with_scans(steps: &[Step], every: usize, len: usize) -> Vec<Step> {
    let mut out = Vec::with_capacity(steps.len() * 2);
    let mut next = KEYS as u32;
    for (i, s) in steps.iter().enumerate() {
        out.push(*s);
        if i % every == every - 1 {
            for _ in 0..len {
                out.push(Step {
                    key: next,
                    get: true,
                });
                next += 1;
            }
        }
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench target
    }
    let keys = keys();
    let zipf = steps(4_000_000, 0.99, 90, 7);
    let scans = with_scans(&zipf, 200_000, CAPACITY / 2);
    let value = [7u8; VALUE];
    let shards = StoreConfig::default_shards();
    println!(
        "hit ratio on Zipf gets (second half counted), Zipf(0.99) over {KEYS} keys, capacity {CAPACITY} items, 90% gets, 4M ops; \
         with scans: a one-pass scan of {} fresh keys after every 200k ops",
        CAPACITY / 2
    );
    println!("| cache | Zipf | vs exact LRU | Zipf + scans | vs exact LRU |");
    println!("|---|---|---|---|---|");
    let mut base = (0.0, 0.0);
    for name in [
        "exact LRU",
        "milena segment store, 1 stripe",
        "milena segment store, default stripes",
        "quick_cache (S3-FIFO-like)",
        "moka (TinyLFU)",
    ] {
        let run = |steps: &[Step]| -> f64 {
            match name {
                "exact LRU" => {
                    let lru = std::cell::RefCell::new(ExactLru::new(CAPACITY));
                    ratio(
                        |k| lru.borrow_mut().touch(k),
                        |k| lru.borrow_mut().insert(k),
                        &keys,
                        steps,
                    )
                }
                "quick_cache (S3-FIFO-like)" => {
                    let qc: quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> =
                        quick_cache::sync::Cache::new(CAPACITY);
                    ratio(
                        |k| qc.get(k).is_some(),
                        |k| qc.insert(k.to_vec(), value[..].into()),
                        &keys,
                        steps,
                    )
                }
                "moka (TinyLFU)" => {
                    let moka: moka::sync::Cache<Vec<u8>, Arc<[u8]>> =
                        moka::sync::Cache::new(CAPACITY as u64);
                    ratio(
                        |k| moka.get(k).is_some(),
                        |k| moka.insert(k.to_vec(), value[..].into()),
                        &keys,
                        steps,
                    )
                }
                _ => {
                    let s = Store::new(StoreConfig {
                        max_items: CAPACITY,
                        max_bytes: None,
                        shards: if name.contains("1 stripe") { 1 } else { shards },
                    });
                    ratio(
                        |k| s.get_with(k, Millis(0), 0, |_| ()).is_some(),
                        |k| {
                            s.put(k, &value, 0, Millis(0), 0);
                        },
                        &keys,
                        steps,
                    )
                }
            }
        };
        let (z, sc) = (run(&zipf), run(&scans));
        if name == "exact LRU" {
            base = (z, sc);
        }
        println!(
            "| {name} | {z:.4} | {:+.2}% | {sc:.4} | {:+.2}% |",
            (z - base.0) / base.0 * 100.0,
            (sc - base.1) / base.1 * 100.0
        );
    }
}
