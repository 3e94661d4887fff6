//! Replays the fuzzing seeds and every input a fuzz run ever found
//! interesting enough to keep (crashes, hangs) through the real router
//! port and metrics endpoint: `tests/fuzzing/<target>/*`. Each must leave
//! the server answering; a panic in a server task aborts the test binary.

#[path = "fuzzing/harness.rs"]
mod harness;
#[path = "fuzzing/store_ops.rs"]
mod store_ops;

use std::path::Path;

fn kept(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzzing")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("regression directory")
        .map(|e| e.expect("entry").path())
        // `.gitkeep`-style files are not inputs.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read input");
            (path.display().to_string(), bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

/// Feeds `target`'s seeds, then its kept inputs, to `run`.
fn replay(target: &str, seeds: Vec<Vec<u8>>, run: fn(&[u8])) {
    harness::abort_on_panic();
    let kept = kept(target);
    for seed in &seeds {
        run(seed);
    }
    for (name, input) in &kept {
        eprintln!("replaying {name}");
        run(input);
    }
    eprintln!(
        "{target}: {} seeds and {} kept inputs replayed",
        seeds.len(),
        kept.len()
    );
}

#[test]
fn router_port_survives_its_seeds_and_kept_inputs() {
    replay("router_port", harness::router_seeds(), harness::router_port);
}

#[test]
fn memcache_port_survives_its_seeds_and_kept_inputs() {
    replay(
        "memcache_port",
        harness::memcache_seeds(),
        harness::memcache_port,
    );
}

#[test]
fn metrics_endpoint_survives_its_seeds_and_kept_inputs() {
    replay(
        "metrics_http",
        harness::metrics_seeds(),
        harness::metrics_http,
    );
}

#[test]
fn the_seeds_are_real_traffic_that_gets_real_answers() {
    harness::abort_on_panic();
    let s = harness::servers();
    let seeds = harness::router_seeds();
    // The binary seed: seven requests, seven answers, then the close.
    let binary = harness::exchange(s.router, &seeds[0]);
    let mut buf = bytes::BytesMut::from(&binary[..]);
    let mut codec = milena::protocol::FrameCodec::new(1 << 20);
    let mut answers = Vec::new();
    while let Some(frame) = codec.decode_frame(&mut buf).expect("frame") {
        let r = milena::protocol::decode_response(&frame).expect("response");
        answers.push((r.id, r.status));
    }
    assert_eq!(answers.len(), 7, "{answers:?}");
    use milena::protocol::Status;
    assert!(
        answers
            .iter()
            .all(|(_, st)| matches!(st, Status::Ok | Status::NotFound)),
        "{answers:?}"
    );
    let health = String::from_utf8_lossy(&harness::exchange(s.router, &seeds[1])).to_string();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("ok, 1 members"),
        "{health}"
    );
    let metrics =
        String::from_utf8_lossy(&harness::exchange(s.metrics, &harness::metrics_seeds()[0]))
            .to_string();
    assert!(metrics.contains("milena_operations_total"), "{metrics}");
}

/// Replays a whole fuzzing corpus (`FUZZ_CORPUS=fuzz/corpus/router_port`)
/// through the router port, printing the slowest inputs and what the
/// router holds afterwards: for finding why a run slows down.
#[test]
#[ignore = "a tool for fuzzing sessions; needs FUZZ_CORPUS"]
fn replay_a_corpus_with_timings() {
    harness::abort_on_panic();
    let dir = std::env::var("FUZZ_CORPUS").expect("FUZZ_CORPUS");
    let mut times = Vec::new();
    for e in std::fs::read_dir(&dir).expect("corpus") {
        let path = e.expect("entry").path();
        let input = std::fs::read(&path).expect("read");
        let started = std::time::Instant::now();
        harness::router_port(&input);
        times.push((started.elapsed(), path.display().to_string()));
    }
    times.sort();
    let total: std::time::Duration = times.iter().map(|(t, _)| *t).sum();
    println!("{} inputs in {total:?}; slowest:", times.len());
    for (t, p) in times.iter().rev().take(10) {
        println!("  {t:?} {p}");
    }
    let s = harness::servers();
    let page = harness::exchange(
        s.router,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    for line in String::from_utf8_lossy(&page).lines() {
        if line.starts_with("milena_router_connections ")
            || line.starts_with("milena_tasks ")
            || line.starts_with("milena_router_members ")
        {
            println!("  {line}");
        }
    }
}

#[test]
fn the_store_survives_its_seeds_and_kept_inputs() {
    replay("store_ops", store_ops::store_seeds(), store_ops::store_ops);
}
