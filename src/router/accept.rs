//! Accepting a connection for one of the router's listeners: the TLS
//! handshake when the router has TLS, and the accept loop of the listeners
//! that serve one protocol only (`REDIS_ADDR`, `MEMCACHE_ADDR`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::Router;
use crate::net;
use crate::tls::Stream;

/// The TLS handshake of an accepted connection, bounded by the hello
/// timeout; `None` (counted as a protocol error) if it fails.
pub(super) async fn handshake(
    stream: TcpStream,
    tls: &crate::tls::Tls,
    router: &Router,
    shutdown: &CancellationToken,
) -> Option<Stream> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(router.settings.hello_timeout, tls.acceptor.accept(stream)) => r,
        _ = shutdown.cancelled() => return None,
    };
    match accepted {
        Ok(Ok(s)) => Some(Stream::Server(Box::new(s))),
        Ok(Err(e)) => {
            router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Serves one protocol's own listener (`REDIS_ADDR`, `MEMCACHE_ADDR`)
/// until `shutdown`, within the router's one `MAX_CONNECTIONS` and its TLS
/// settings: `serve` gets each connection once any handshake is done.
pub async fn serve_listener<F, Fut>(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(Stream, Arc<Router>, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let (max, counters) = (router.settings.max_connections, router.stats.conns.clone());
    let token = shutdown.clone();
    net::accept_loop(listener, max, counters, tracker, shutdown, move |tcp| {
        let (router, shutdown, serve) = (router.clone(), token.clone(), serve.clone());
        async move {
            let stream = match &router.settings.tls {
                None => Stream::Plain(tcp),
                Some(tls) => match handshake(tcp, tls, &router, &shutdown).await {
                    Some(s) => s,
                    None => return Ok(()),
                },
            };
            serve(stream, router, shutdown).await
        }
    })
    .await;
}
