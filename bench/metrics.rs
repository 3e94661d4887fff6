//! What metrics cost on the request path: per pipelined batch of 16 gets,
//! the node executes 16 requests, then records 16 latency observations in
//! the connection's local histogram, flushes it and folds the connection's
//! tally into the shared counters. This compares the two.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use milena::node::execute::execute;
use milena::node::{Node, NodeSettings, Tally};
use milena::protocol::Op;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 16;

fn bench_metrics(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let _guard = rt.enter();
    let node = std::sync::Arc::new(Node::new(NodeSettings::default()));
    let now = node.clock.now();
    for i in 0..1000u32 {
        node.cache
            .store()
            .put(format!("key:{i}").as_bytes(), &[7u8; 100], 0, now, 0);
    }
    let keys: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| format!("key:{}", i * 37).into_bytes())
        .collect();
    let mut g = c.benchmark_group("node_batch_of_16_gets");
    g.throughput(Throughput::Elements(BATCH));
    let mut out = Vec::with_capacity(8192);
    g.bench_function("execute", |b| {
        let mut tally = Tally::default();
        b.iter(|| {
            out.clear();
            for (i, k) in keys.iter().enumerate() {
                execute(&node, i as u64, Op::Get { key: k }, &mut out, &mut tally);
            }
            black_box(out.len());
        })
    });
    let mut hists = node.metrics.local_histograms();
    g.bench_function("metrics_record_flush_fold", |b| {
        b.iter(|| {
            let mut tally = Tally {
                requests: BATCH,
                gets: BATCH,
                ..Tally::default()
            };
            let h = &mut hists[0];
            for _ in 0..BATCH {
                h.observe(black_box(0.000_042));
            }
            h.flush();
            node.stats.fold(&mut tally);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
