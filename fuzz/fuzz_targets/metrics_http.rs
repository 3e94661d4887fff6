//! Arbitrary bytes on a node's `/metrics` port (hyper's HTTP/1 server and
//! our routing of paths and methods). After each input the endpoint must
//! still serve a scrape.
#![no_main]

#[path = "../../tests/fuzzing/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let _ = harness::servers();
    },
    |data: &[u8]| harness::metrics_http(data)
);
