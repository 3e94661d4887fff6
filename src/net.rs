//! Listeners, the shared accept loop, and socket options.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::error::WireError;

/// Pending connections the kernel queues before `accept`.
const BACKLOG: i32 = 4096;

/// Binds a TCP listener with `SO_REUSEADDR` (restart without waiting out
/// TIME_WAIT) and a deep backlog. Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Options for every accepted or connected stream: no Nagle delay, since
/// requests and responses are small and latency-bound.
pub fn tune(stream: &TcpStream) {
    // Best effort: a socket that refuses the option still works.
    let _ = stream.set_nodelay(true);
}

/// Connection counters an accept loop keeps.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Open now.
    pub open: AtomicU64,
    /// Accepted since start.
    pub total: AtomicU64,
    /// Refused at the connection limit.
    pub refused: AtomicU64,
}

/// Accepts connections on `listener` until `shutdown`, running `handle` for
/// each on `tracker`. Past `max` open connections a newcomer gets one
/// `unavailable` error and is closed. On shutdown it stops accepting,
/// closes the listener and waits for every tracked task.
pub async fn accept_loop<H, Fut>(
    listener: TcpListener,
    max: usize,
    counters: Arc<ConnCounters>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // back off a little instead of spinning, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tune(&stream);
        if counters.open.fetch_add(1, Ordering::Relaxed) as usize >= max {
            counters.open.fetch_sub(1, Ordering::Relaxed);
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(async move {
                let mut stream = stream;
                let mut out = Vec::new();
                WireError::TooManyConnections(max).respond(0, &mut out);
                let _ = stream.write_all(&out).await;
            });
            continue;
        }
        counters.total.fetch_add(1, Ordering::Relaxed);
        let conn = handle(stream);
        let counters = counters.clone();
        tracker.spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    info!("stopped accepting; draining connections");
    tracker.close();
    tracker.wait().await;
}

/// Resolves `host:port` (a name or a literal) to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{addr}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{addr}' resolves to no address"))
}

/// Splits a Milena URL (`http://host:port`, `milena://host:port` or a bare
/// `host:port`) into `host:port` and whether it asks for TLS (`https://`).
pub fn parse_url(url: &str) -> Result<(String, bool), String> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("milena://"))
    {
        (r, false)
    } else if url.contains("://") {
        return Err(format!(
            "unsupported scheme in '{url}' (use http://, https:// or host:port)"
        ));
    } else {
        (url, false)
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
        return Err(format!("'{url}' is not of the form http://host:port"));
    }
    Ok((hostport.to_string(), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://localhost:50050").ok(),
            Some(("localhost:50050".into(), false))
        );
        assert_eq!(parse_url("https://a:1/").ok(), Some(("a:1".into(), true)));
        assert_eq!(
            parse_url("1.2.3.4:5").ok(),
            Some(("1.2.3.4:5".into(), false))
        );
        assert!(parse_url("ftp://a:1").is_err());
        assert!(parse_url("http://nohost").is_err());
        assert!(parse_url("http://a:1/path").is_err());
    }
}
