//! Arbitrary bytes on the router's memcached listener (`MEMCACHE_ADDR`):
//! command lines and data blocks. After each input the listener and the
//! router's port must still answer a well-behaved client.
#![no_main]

#[path = "../../tests/fuzzing/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let _ = harness::servers();
    },
    |data: &[u8]| harness::memcache_port(data)
);
