//! A node's membership in one or more routers' rings: join at start-up
//! (retrying with capped, jittered exponential backoff), heartbeat, leave on
//! shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Node;
use crate::client::{Client, ClientOptions};

/// How a node takes part in routers' rings.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Router URLs (`ROUTER_ADDR`).
    pub routers: Vec<String>,
    /// The URL routers use to reach this node (`ADVERTISE_ADDR`).
    pub advertise: String,
    /// Time between heartbeats.
    pub interval: Duration,
    /// `CLUSTER_TOKEN`, presented in the hello to each router.
    pub token: Option<crate::error::Secret>,
    /// TLS client configuration for `https://` routers.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Membership in etcd (`ETCD_ENDPOINTS`) instead of joining routers.
    pub etcd: Option<super::etcd::EtcdMembership>,
}

/// A membership setting that is not usable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}: {reason}")]
pub struct AddressError {
    /// `ROUTER_ADDR`, `ADVERTISE_ADDR` or `ETCD_ENDPOINTS`.
    pub variable: &'static str,
    /// Why.
    pub reason: String,
}

impl Membership {
    /// The membership `cfg` asks for, for a node listening on `bound`:
    /// `None` without `ROUTER_ADDR` (the node serves direct clients only).
    pub fn from_config(
        cfg: &crate::config::NodeConfig,
        bound: std::net::SocketAddr,
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    ) -> Result<Option<Self>, AddressError> {
        let routers: Vec<String> = cfg
            .router_addr
            .iter()
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .collect();
        let in_etcd = cfg.etcd.enabled();
        if routers.is_empty() && !in_etcd {
            return Ok(None);
        }
        if in_etcd && !routers.is_empty() {
            tracing::warn!(routers = ?routers, "ETCD_ENDPOINTS is set: membership is in etcd, ROUTER_ADDR is ignored");
        }
        if !in_etcd && routers.len() > 1 {
            // Each router would keep its own ring: writes through one and
            // reads through another could meet different owners and go
            // back to older values. etcd gives them one ring.
            return Err(AddressError {
                variable: "ROUTER_ADDR",
                reason: format!(
                    "{} routers listed, but several routers need membership in etcd: set ETCD_ENDPOINTS on the routers and nodes (see docs/operations.md, \"Several routers\"), or list one router",
                    routers.len()
                ),
            });
        }
        let check = |variable, url: &str| {
            crate::net::parse_url(url)
                .map(|_| ())
                .map_err(|reason| AddressError { variable, reason })
        };
        if !in_etcd {
            for r in &routers {
                check("ROUTER_ADDR", r)?;
            }
        }
        // The spelling routers keep (so the node finds itself in their
        // member lists, and its hello names the address they check).
        let advertise = match &cfg.advertise_addr {
            Some(a) => a.clone(),
            None => default_advertise(bound),
        };
        check("ADVERTISE_ADDR", &advertise)?;
        let advertise = crate::net::canonical_url(&advertise).map_err(|reason| AddressError {
            variable: "ADVERTISE_ADDR",
            reason,
        })?;
        let etcd = if in_etcd {
            let client = crate::etcd::Etcd::connect(&cfg.etcd).map_err(|e| AddressError {
                variable: "ETCD_ENDPOINTS",
                reason: e.to_string(),
            })?;
            Some(super::etcd::EtcdMembership {
                etcd: client,
                lease_seconds: cfg.etcd.etcd_lease_seconds,
            })
        } else {
            None
        };
        Ok(Some(Membership {
            routers: if in_etcd { Vec::new() } else { routers },
            etcd,
            advertise,
            interval: Duration::from_millis(cfg.heartbeat_interval_ms),
            token: cfg.cluster_token.clone(),
            tls,
        }))
    }
}

/// First retry delay after a failed join; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between join attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Limit on the leave call at shutdown, so a dead router cannot hold the node.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the node in every router's ring until `shutdown`, then leaves
/// them all. Returns once the leaves are done (or timed out).
pub async fn maintain(node: Arc<Node>, m: Membership, shutdown: CancellationToken) {
    let tasks: Vec<_> = m
        .routers
        .iter()
        .map(|router| {
            tokio::spawn(with_router(
                node.clone(),
                router.clone(),
                m.advertise.clone(),
                m.interval,
                m.token.clone(),
                m.tls.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn with_router(
    node: Arc<Node>,
    router: String,
    advertise: String,
    interval: Duration,
    token: Option<crate::error::Secret>,
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    shutdown: CancellationToken,
) {
    let opts = ClientOptions {
        token: token.map(|t| t.expose().to_string()),
        tls,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(2)),
        ..ClientOptions::default()
    };
    let mut backoff = crate::backoff::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut client: Option<Client> = None;
    let mut ring_epoch = 0u64;
    loop {
        // Join (or re-join after losing the router).
        let c = match client.take() {
            Some(c) => c,
            None => {
                let joined = async {
                    let c = Client::connect_with(&router, opts.clone()).await?;
                    let (epoch, members) = c.join(&advertise).await?;
                    Ok::<_, crate::client::ClientError>((c, epoch, members))
                };
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => {
                        // The router may have admitted us before we read
                        // its answer: leave anyway, so it stops routing here.
                        leave_best_effort(&router, &advertise, &opts).await;
                        return;
                    }
                    r = joined => r,
                };
                match attempt {
                    Ok((c, epoch, members)) => {
                        node.ring_epoch.fetch_max(epoch, Ordering::Relaxed);
                        node.cache
                            .set_ring(crate::ring::Ring::new(members.iter().cloned()), &advertise);
                        ring_epoch = epoch;
                        info!(%router, address = %advertise, members = members.len(), epoch, "joined router");
                        backoff.reset();
                        c
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        error!(%router, error = %e, retry_in = ?delay, "Failed to join router");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                }
            }
        };
        // Heartbeat until shutdown or the router stops answering.
        let mut in_ring = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    match tokio::time::timeout(LEAVE_TIMEOUT, c.leave(&advertise)).await {
                        Ok(Ok(())) => info!(%router, address = %advertise, "left router"),
                        Ok(Err(e)) => warn!(%router, error = %e, "leave failed"),
                        Err(_) => warn!(%router, "leave timed out"),
                    }
                    return;
                }
                _ = tokio::time::sleep(interval) => {}
            }
            match c.heartbeat(&advertise).await {
                Ok((epoch, members)) => {
                    node.ring_epoch.fetch_max(epoch, Ordering::Relaxed);
                    if epoch != ring_epoch {
                        // Copies follow the ring: see `Cache::set_ring`.
                        node.cache
                            .set_ring(crate::ring::Ring::new(members.iter().cloned()), &advertise);
                        ring_epoch = epoch;
                    }
                    let member = members.contains(&advertise);
                    if !member && in_ring {
                        warn!(%router, address = %advertise, "this node was removed from the router's ring (leave); it gets no traffic from it until restarted");
                    }
                    in_ring = member;
                }
                Err(e) => {
                    warn!(%router, error = %e, "heartbeat failed; joining again");
                    break;
                }
            }
        }
    }
}

async fn leave_best_effort(router: &str, advertise: &str, opts: &ClientOptions) {
    let leave = async {
        let c = Client::connect_with(router, opts.clone()).await?;
        c.leave(advertise).await
    };
    match tokio::time::timeout(LEAVE_TIMEOUT, leave).await {
        Ok(Ok(())) => info!(%router, address = %advertise, "left router"),
        Ok(Err(e)) => warn!(%router, error = %e, "leave failed"),
        Err(_) => warn!(%router, "leave timed out"),
    }
}

/// The URL to advertise for a node listening on `bound`: `0.0.0.0` and
/// `::` are not routable, so the host name takes their place.
pub fn default_advertise(bound: std::net::SocketAddr) -> String {
    let host = if bound.ip().is_unspecified() {
        hostname().unwrap_or_else(|| "localhost".to_string())
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("http://{host}:{}", bound.port())
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
