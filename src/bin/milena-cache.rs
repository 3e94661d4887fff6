//! `milena-cache`: a Milena cache node. Parses configuration, binds, installs
//! signal handlers and runs the node until SIGINT/SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use milena::config::NodeConfig;
use std::time::Duration;

use milena::node::tier::Tier;
use milena::node::tier::dir::DirTier;
use milena::node::tier::s3::{S3Settings, S3Tier};
use milena::node::{Membership, Node, NodeSettings};
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    milena::process::run_server(
        "milena-cache",
        |c: &NodeConfig| (&c.log_level, &c.log_format),
        serve,
    )
}

/// The tier the configuration asks for: S3 when `S3_BUCKET` is set, else
/// the local directory `DATA_DIR`, else none (memory only).
async fn open_tier(
    cfg: &NodeConfig,
    settings: &NodeSettings,
) -> anyhow::Result<Option<Arc<dyn Tier>>> {
    // An empty value means "not set" (compose files pass S3_ENDPOINT= for AWS).
    let endpoint = cfg.s3_endpoint.clone().filter(|e| !e.is_empty());
    if let Some(bucket) = cfg.s3_bucket.as_ref().filter(|b| !b.is_empty()) {
        if let Some(dir) = &cfg.data_dir {
            warn!(data_dir = %dir.display(), "S3_BUCKET is set: DATA_DIR is ignored");
        }
        if let Some(e) = &endpoint {
            milena::net::parse_url(e)
                .map_err(|err| anyhow::anyhow!("invalid S3_ENDPOINT: {err}"))?;
        }
        let t = S3Tier::connect(S3Settings {
            bucket: bucket.clone(),
            prefix: cfg.s3_prefix.clone(),
            endpoint: endpoint.clone(),
            region: cfg.aws_region.clone(),
            static_credentials: None,
        })
        .await;
        match t.check().await {
            Ok(None) => {}
            Ok(Some(why)) => warn!(
                bucket = %bucket,
                "S3 is unreachable for now; serving from memory and queueing writes until it answers: {why}"
            ),
            Err(e) => anyhow::bail!("cannot use S3_BUCKET={bucket}: {e}"),
        }
        info!(
            bucket = %bucket,
            prefix = %cfg.s3_prefix,
            endpoint = endpoint.as_deref().unwrap_or("AWS"),
            write_mode = ?settings.write_mode,
            "tier: S3"
        );
        return Ok(Some(Arc::new(t)));
    }
    if let Some(dir) = &cfg.data_dir {
        let t = DirTier::open(dir)
            .await
            .with_context(|| format!("cannot use DATA_DIR={}", dir.display()))?;
        info!(data_dir = %dir.display(), write_mode = ?settings.write_mode, "tier: local directory");
        return Ok(Some(Arc::new(t)));
    }
    warn!("no S3_BUCKET or DATA_DIR: entries live in memory only and are lost with the node");
    Ok(None)
}

async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    let listener = milena::net::bind(cfg.listen_addr)
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", cfg.listen_addr))?;
    let shutdown = milena::shutdown::on_signals().context("cannot install signal handlers")?;
    let mut settings = NodeSettings::from(&cfg);
    settings.tls = cfg.tls.load()?;
    let tls_client = settings.tls.as_ref().map(|t| t.connector.clone());
    let tier = open_tier(&cfg, &settings).await?;
    let node = Arc::new(Node::with_tier(settings, milena::node::Clock::new(), tier));
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
        shards = node.store.shard_count(),
        "cache node listening"
    );
    let routers: Vec<String> = cfg
        .router_addr
        .iter()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if routers.is_empty() {
        info!("no ROUTER_ADDR: serving direct clients only");
        milena::node::run(listener, node, shutdown).await;
    } else {
        for r in &routers {
            milena::net::parse_url(r).map_err(|e| anyhow::anyhow!("invalid ROUTER_ADDR: {e}"))?;
        }
        let advertise = match cfg.advertise_addr {
            Some(a) => {
                milena::net::parse_url(&a)
                    .map_err(|e| anyhow::anyhow!("invalid ADVERTISE_ADDR: {e}"))?;
                a
            }
            None => milena::node::membership::default_advertise(listener.local_addr()?),
        };
        info!(%advertise, routers = ?routers, "joining routers");
        let membership = Membership {
            routers,
            advertise,
            interval: Duration::from_millis(cfg.heartbeat_interval_ms),
            token: cfg.cluster_token.clone(),
            tls: tls_client,
        };
        milena::node::run_in_cluster(listener, node, membership, shutdown).await;
    }
    info!("cache node stopped");
    Ok(())
}
