//! Store throughput: Milena's sharded LRU against quick_cache and moka on
//! the same Zipf(0.99) 90/10 workload, with 1 and 2 threads.
//!
//! Every cache does the same work per operation: a get copies the value
//! into a reused output buffer (what the node does into a connection's
//! write buffer); a put inserts a fresh key and value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use milena::node::store::{Millis, Store, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "workload.rs"]
mod workload;
use workload::*;

const OPS: usize = 1 << 20;

trait Cache: Sync {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> bool;
    fn put(&self, key: &[u8], value: &[u8]);
}

impl Cache for Store {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        self.get_with(key, Millis(0), 0, |v| out.extend_from_slice(v))
            .is_some()
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        Store::put(self, key, value, 0, Millis(0), 0);
    }
}

impl Cache for quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        match quick_cache::sync::Cache::get(self, key) {
            Some(v) => {
                out.extend_from_slice(&v);
                true
            }
            None => false,
        }
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        self.insert(key.to_vec(), value.into());
    }
}

impl Cache for moka::sync::Cache<Vec<u8>, Arc<[u8]>> {
    fn get(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        match moka::sync::Cache::get(self, key) {
            Some(v) => {
                out.extend_from_slice(&v);
                true
            }
            None => false,
        }
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        self.insert(key.to_vec(), value.into());
    }
}

/// Runs `iters` operations on each of `threads` threads; returns wall time.
fn run(
    cache: &dyn Cache,
    keys: &[Vec<u8>],
    steps: &[Step],
    threads: usize,
    iters: u64,
) -> Duration {
    let value = [7u8; VALUE];
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut out = Vec::with_capacity(4096);
                let offset = t * (steps.len() / threads.max(1));
                for i in 0..iters as usize {
                    let step = steps[(offset + i) % steps.len()];
                    let key = &keys[step.key as usize];
                    if step.get {
                        if !cache.get(key, &mut out) {
                            cache.put(key, &value); // read-through fill, as a cache-aside client would
                        }
                    } else {
                        cache.put(key, &value);
                    }
                    if out.len() > 2048 {
                        out.clear();
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn prefill(cache: &dyn Cache, keys: &[Vec<u8>], steps: &[Step]) {
    let value = [7u8; VALUE];
    for step in steps.iter().take(CAPACITY * 4) {
        cache.put(&keys[step.key as usize], &value);
    }
}

fn bench_store(c: &mut Criterion) {
    let keys = keys();
    let steps = steps(OPS, 0.99, 90, 42);
    let mut group = c.benchmark_group("store_zipf099_90get");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        let milena = Store::new(StoreConfig {
            max_items: CAPACITY,
            max_bytes: None,
            shards: StoreConfig::default_shards(),
        });
        prefill(&milena, &keys, &steps);
        group.bench_function(format!("milena/{threads}t"), |b| {
            b.iter_custom(|iters| run(&milena, &keys, &steps, threads, iters))
        });
        let qc: quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> =
            quick_cache::sync::Cache::new(CAPACITY);
        prefill(&qc, &keys, &steps);
        group.bench_function(format!("quick_cache/{threads}t"), |b| {
            b.iter_custom(|iters| run(&qc, &keys, &steps, threads, iters))
        });
        let moka: moka::sync::Cache<Vec<u8>, Arc<[u8]>> = moka::sync::Cache::new(CAPACITY as u64);
        prefill(&moka, &keys, &steps);
        group.bench_function(format!("moka/{threads}t"), |b| {
            b.iter_custom(|iters| run(&moka, &keys, &steps, threads, iters))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
