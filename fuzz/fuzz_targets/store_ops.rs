//! Arbitrary operation sequences on the node's store (gets, puts of many
//! sizes and TTLs, deletes, time passing), checked against a model: never
//! a wrong or torn value, never over a budget, nothing lost with room.
#![no_main]

#[path = "../../tests/fuzzing/store_ops.rs"]
mod store_ops;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| store_ops::store_ops(data));
