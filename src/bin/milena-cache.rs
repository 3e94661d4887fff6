//! `milena-cache`: a Milena cache node. Parses configuration, binds, installs
//! signal handlers and runs the node until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use milena::config::NodeConfig;
use milena::node::{Membership, Node, NodeSettings};
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    commit_memory_as_used();
    milena::process::run_server(
        "milena-cache",
        milena::process::Runtime::MultiThread,
        |c: &NodeConfig| (&c.log_level, c.log_format),
        serve,
    )
}

/// Makes mimalloc commit arena memory as it is used rather than up front.
/// With transparent huge pages, eagerly committed arenas keep freed and
/// untouched memory resident: 61 vs 39 bytes per item over the payload for
/// 1M items (bench/RESULTS.md, "Segment store"). mimalloc reads the option
/// when it starts, before `main`, so the process starts itself again with
/// it set (same PID: `exec`). An operator's own setting is kept.
fn commit_memory_as_used() {
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "0")
        .exec();
    // Still here: the exec failed; run as we are.
    eprintln!(
        "milena-cache: could not restart with {VAR}=0 ({err}); memory may be committed early"
    );
}

async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    let listener = milena::net::bind(cfg.listen_addr)
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", cfg.listen_addr))?;
    let shutdown = milena::shutdown::on_signals().context("cannot install signal handlers")?;
    let mut settings = NodeSettings::from(&cfg);
    settings.tls = cfg.tls.load()?;
    let tls_client = settings.tls.as_ref().map(|t| t.connector.clone());
    let tier = milena::node::tier::open(&cfg).await?;
    let node = Arc::new(Node::with_tier(settings, milena::node::Clock::new(), tier));
    if let Some(addr) = cfg.redis_addr {
        let redis = milena::net::bind(addr)
            .with_context(|| format!("cannot listen on REDIS_ADDR={addr}"))?;
        info!(addr = %redis.local_addr()?, "Redis clients on REDIS_ADDR");
        tokio::spawn(milena::node::redis::serve(
            redis,
            node.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(port) = cfg.metrics_port {
        let addr = std::net::SocketAddr::new(cfg.listen_addr.ip(), port);
        let metrics = milena::net::bind(addr)
            .with_context(|| format!("cannot listen on METRICS_PORT={port} ({addr})"))?;
        info!(addr = %metrics.local_addr()?, "metrics at /metrics");
        tokio::spawn(milena::node::serve_metrics(
            metrics,
            node.clone(),
            shutdown.clone(),
        ));
    }
    info!(
        addr = %listener.local_addr()?,
        lru_size = node.settings.store.max_items,
        ttl_seconds = node.settings.default_ttl,
        shards = node.cache.store().shard_count(),
        "cache node listening"
    );
    match Membership::from_config(&cfg, listener.local_addr()?, tls_client)? {
        None => {
            info!("no ROUTER_ADDR: serving direct clients only");
            milena::node::run(listener, node, shutdown).await;
        }
        Some(membership) => {
            if membership.etcd.is_some() {
                info!(advertise = %membership.advertise, "registering in etcd");
            } else {
                info!(advertise = %membership.advertise, routers = ?membership.routers, "joining routers");
            }
            milena::node::run_in_cluster(listener, node, membership, shutdown).await;
        }
    }
    info!("cache node stopped");
    Ok(())
}
