//! Hit ratio on the Zipf(0.99) workload: the sharded store against an exact
//! LRU (the same store with one stripe, which the property tests prove
//! equal to a reference LRU), quick_cache and moka. Prints a table.
//!
//! Run: `cargo bench --bench hit_ratio`

use std::sync::Arc;

use milena::node::store::{Millis, Store, StoreConfig};

#[path = "workload.rs"]
mod workload;
use workload::*;

fn ratio(
    mut get: impl FnMut(&[u8]) -> bool,
    mut put: impl FnMut(&[u8]),
    keys: &[Vec<u8>],
    steps: &[Step],
) -> f64 {
    let (mut hits, mut gets) = (0u64, 0u64);
    for (i, s) in steps.iter().enumerate() {
        let key = &keys[s.key as usize];
        if s.get {
            let hit = get(key);
            if !hit {
                put(key);
            }
            // The first half warms the cache; count the second half.
            if i >= steps.len() / 2 {
                gets += 1;
                hits += u64::from(hit);
            }
        } else {
            put(key);
        }
    }
    hits as f64 / gets as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes every bench target
    }
    let keys = keys();
    let steps = steps(4_000_000, 0.99, 90, 7);
    let value = [7u8; VALUE];
    let store = |shards, exact_lru| {
        Store::new(
            StoreConfig {
                max_items: CAPACITY,
                max_bytes: None,
                shards,
                exact_lru,
            },
            Millis(0),
        )
    };
    let run = |s: &Store| {
        ratio(
            |k| s.get_with(k, Millis(0), 0, |_| ()).is_some(),
            |k| {
                s.put(k, &value, 0, Millis(0), 0);
            },
            &keys,
            &steps,
        )
    };

    let r_exact = run(&store(1, true));
    let shards = StoreConfig::default_shards();
    let r_sharded_exact = run(&store(shards, true));
    let r_sharded = run(&store(shards, false));
    let qc: quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> = quick_cache::sync::Cache::new(CAPACITY);
    let r_qc = ratio(
        |k| qc.get(k).is_some(),
        |k| qc.insert(k.to_vec(), value[..].into()),
        &keys,
        &steps,
    );
    let moka: moka::sync::Cache<Vec<u8>, Arc<[u8]>> = moka::sync::Cache::new(CAPACITY as u64);
    let r_moka = ratio(
        |k| moka.get(k).is_some(),
        |k| moka.insert(k.to_vec(), value[..].into()),
        &keys,
        &steps,
    );

    println!(
        "hit ratio, Zipf(0.99) over {KEYS} keys, capacity {CAPACITY}, 90% gets, 4M ops (second half counted)"
    );
    println!("| cache | hit ratio | vs exact LRU |");
    println!("|---|---|---|");
    for (name, r) in [
        ("exact LRU (milena, 1 stripe)".to_string(), r_exact),
        (
            format!("milena, {shards} stripes, exact LRU per stripe"),
            r_sharded_exact,
        ),
        (
            format!("milena, {shards} stripes, default (promotion window)"),
            r_sharded,
        ),
        ("quick_cache (S3-FIFO-like)".to_string(), r_qc),
        ("moka (TinyLFU)".to_string(), r_moka),
    ] {
        println!(
            "| {name} | {:.4} | {:+.2}% |",
            r,
            (r - r_exact) / r_exact * 100.0
        );
    }
}
