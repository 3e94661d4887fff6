//! `stats` through the router: its own counters, then every member
//! node's, summed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use milena_protocol::{Body, Stat};

use super::Router;
use super::local::respond;
use crate::metrics;

/// How long the router waits for each node's counters: a node that takes
/// longer is left out of the sum (`nodes_reporting` says how many answered).
const NODE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Node counters that make no sense summed across nodes.
const NOT_SUMMED: [&str; 3] = ["uptime_seconds", "ring_epoch", "shards"];

/// [`counters`] as the answer to `Stats` request `id`.
pub async fn gather(router: &Router, id: u64) -> Bytes {
    let stats = counters(router).await;
    let mut out = Vec::new();
    respond(
        id,
        Body::Stats(
            stats
                .iter()
                .map(|(name, value)| Stat {
                    name,
                    value: *value,
                })
                .collect(),
        ),
        &mut out,
    );
    Bytes::from(out).slice(4..)
}

/// The router's counters followed by every member node's, summed, as
/// `nodes_<name>`, and how many nodes answered (`nodes_reporting`).
pub async fn counters(router: &Router) -> Vec<(String, u64)> {
    let mut stats: Vec<(String, u64)> = router_stats(router)
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let view = router.members.view();
    let opts = crate::client::ClientOptions {
        connect_timeout: NODE_STATS_TIMEOUT,
        request_timeout: Some(NODE_STATS_TIMEOUT),
        ..Default::default()
    };
    let asks = view.ring.addresses().map(|a| {
        let (a, opts) = (a.to_string(), opts.clone());
        async move {
            let c = crate::client::Client::connect_with(&a, opts).await?;
            c.stats().await
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut sums: Vec<(String, u64)> = Vec::new();
    let mut reporting = 0;
    for node in answers.into_iter().flatten() {
        reporting += 1;
        for (name, value) in node {
            if NOT_SUMMED.contains(&name.as_str()) {
                continue;
            }
            match sums.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => *v += value,
                None => sums.push((name, value)),
            }
        }
    }
    stats.push(("nodes_reporting".into(), reporting));
    stats.extend(sums.into_iter().map(|(n, v)| (format!("nodes_{n}"), v)));
    stats
}

fn router_stats(router: &Router) -> Vec<(&'static str, u64)> {
    let s = &router.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let view = router.members.view();
    vec![
        ("members", view.ring.len() as u64),
        ("ring_epoch", view.epoch),
        ("ejections", router.members.ejections()),
        ("connections", load(&s.conns.open)),
        ("connections_total", load(&s.conns.total)),
        ("connections_refused", load(&s.conns.refused)),
        ("tasks", metrics::alive_tasks()),
        ("requests", load(&s.requests)),
        ("forwarded", load(&s.forwarded)),
        ("errors", load(&s.errors)),
        ("rate_limited", load(&s.rate_limited)),
        ("retries", load(&s.retries)),
        ("unavailable", load(&s.unavailable)),
        ("protocol_errors", load(&s.protocol_errors)),
    ]
}
