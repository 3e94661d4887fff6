//! `milena-router`: the Milena router. Parses configuration, binds, installs
//! signal handlers and runs the router until SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use milena::config::RouterConfig;
use milena::router::{Router, RouterSettings};
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    milena::process::run_server(
        "milena-router",
        milena::process::Runtime::CurrentThreadOnOneCore,
        |c: &RouterConfig| (&c.log_level, c.log_format),
        serve,
    )
}

async fn serve(cfg: RouterConfig) -> anyhow::Result<()> {
    let listener = milena::net::bind(cfg.listen_addr)
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", cfg.listen_addr))?;
    let shutdown = milena::shutdown::on_signals().context("cannot install signal handlers")?;
    let mut settings = RouterSettings::from(&cfg);
    settings.tls = cfg.tls.load()?;
    if let Some(warning) = milena::router::admit::exposure_warning(
        listener.local_addr()?,
        cfg.cluster_token.is_some(),
        cfg.tls.tls_client_auth,
    ) {
        warn!("{warning}");
    }
    let bind_extra = |addr: Option<std::net::SocketAddr>, name: &str| -> anyhow::Result<_> {
        addr.map(|a| milena::net::bind(a).with_context(|| format!("cannot listen on {name}={a}")))
            .transpose()
    };
    if let Some(refusal) = milena::router::admit::memcache_refusal(
        cfg.memcache_addr.is_some(),
        cfg.client_token.is_some(),
        cfg.tls.tls_client_auth,
    ) {
        anyhow::bail!(refusal);
    }
    let redis = bind_extra(cfg.redis_addr, "REDIS_ADDR")?;
    let memcache = bind_extra(cfg.memcache_addr, "MEMCACHE_ADDR")?;
    let router = Router::new(settings, shutdown.clone());
    if cfg.etcd.enabled() {
        let etcd = milena::etcd::Etcd::connect(&cfg.etcd).context("invalid etcd settings")?;
        info!(endpoints = ?cfg.etcd.etcd_endpoints, prefix = %cfg.etcd.etcd_prefix, "membership in etcd");
        milena::router::etcd::follow(&router, etcd);
    }
    info!(
        addr = %listener.local_addr()?,
        rate_limit = cfg.rate_limit,
        "router listening"
    );
    let redis = redis.map(|l| {
        info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "Redis clients on REDIS_ADDR");
        tokio::spawn(milena::router::redis::serve(l, router.clone(), shutdown.clone()))
    });
    let memcache = memcache.map(|l| {
        info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "memcached clients on MEMCACHE_ADDR");
        tokio::spawn(milena::router::memcache::serve(l, router.clone(), shutdown.clone()))
    });
    milena::router::run(listener, router, shutdown).await;
    for side in [redis, memcache].into_iter().flatten() {
        let _ = side.await;
    }
    info!("router stopped");
    Ok(())
}
