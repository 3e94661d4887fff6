//! Arbitrary bytes on the router's one port: the first byte picks binary
//! protocol or HTTP/1 / HTTP/2 (gRPC), then that parser takes the rest.
//! After each input the router must still answer a well-behaved client.
#![no_main]

#[path = "../../tests/fuzzing/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let _ = harness::servers();
    },
    |data: &[u8]| harness::router_port(data)
);
