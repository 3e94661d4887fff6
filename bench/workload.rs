//! Shared workload for the store benchmarks: a Zipf(0.99) key stream over
//! 1M keys with a 90/10 get/put mix, generated once from a fixed seed so
//! every cache under test sees exactly the same operations.

#![allow(dead_code)]

use rand::{SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Zipf};

/// Keys in the key space.
pub const KEYS: usize = 1_000_000;
/// Cache capacity in entries (10% of the key space).
pub const CAPACITY: usize = 100_000;
/// Value size in bytes.
pub const VALUE: usize = 100;

/// One operation: a key index and whether it is a get (else a put).
#[derive(Clone, Copy)]
pub struct Step {
    pub key: u32,
    pub get: bool,
}

/// The key bytes for index `i` (`key:0000123`, 11 bytes).
pub fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("key:{i:07}").into_bytes())
        .collect()
}

/// `n` operations, Zipf(`s`) over the key space, `get_pct`% gets.
pub fn steps(n: usize, s: f64, get_pct: u32, seed: u64) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(KEYS as f64, s).expect("valid zipf");
    let mut mix = SmallRng::seed_from_u64(seed ^ 0xA5A5);
    (0..n)
        .map(|_| {
            // Sampled ranks are 1..=KEYS; scramble them so hot keys are not
            // neighbours in any hash-independent sense.
            let rank = zipf.sample(&mut rng) as u64 - 1;
            let key = (rank.wrapping_mul(0x9E37_79B9) % KEYS as u64) as u32;
            let get = rand::RngExt::random_range(&mut mix, 0..100) < get_pct;
            Step { key, get }
        })
        .collect()
}
