//! `milena-router`: the Milena router. Parses configuration, binds, installs
//! signal handlers and runs the router until SIGINT/SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use milena::config::{RouterConfig, one_line_error};
use milena::router::{Router, RouterSettings};
use tracing::info;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = match RouterConfig::try_parse() {
        Ok(cfg) => cfg,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line_error("milena-router", &e));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = milena::logging::init(&cfg.log_level) {
        eprintln!("milena-router: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("milena-router: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: RouterConfig) -> anyhow::Result<()> {
    let listener = milena::net::bind(cfg.listen_addr)
        .with_context(|| format!("cannot listen on LISTEN_ADDR={}", cfg.listen_addr))?;
    let shutdown = milena::shutdown::on_signals().context("cannot install signal handlers")?;
    let router = Router::new(RouterSettings::from(&cfg), shutdown.clone());
    info!(
        addr = %listener.local_addr()?,
        rate_limit = cfg.rate_limit,
        "router listening"
    );
    milena::router::run(listener, router, shutdown).await;
    info!("router stopped");
    Ok(())
}
