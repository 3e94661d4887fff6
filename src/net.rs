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

/// Longest URL accepted for a member, router or endpoint address.
pub const MAX_URL_LEN: usize = 300;

/// Splits a Milena URL (`http://host:port`, `milena://host:port` or a bare
/// `host:port`) into `host:port` and whether it asks for TLS (`https://`).
/// Strict, since addresses come from the network (joins): the host is a
/// DNS name (letters, digits, `-`, `.`, `_`), an IPv4 literal or a
/// bracketed IPv6 literal, the port a number from 1 to 65535, and the whole
/// at most [`MAX_URL_LEN`] bytes.
pub fn parse_url(url: &str) -> Result<(String, bool), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "an address of {} bytes is longer than {MAX_URL_LEN}",
            url.len()
        ));
    }
    let shown = || crate::logging::escape(url);
    let lower = url.get(..10).unwrap_or(url).to_ascii_lowercase();
    let (rest, tls) = if lower.starts_with("https://") {
        (&url[8..], true)
    } else if lower.starts_with("http://") {
        (&url[7..], false)
    } else if lower.starts_with("milena://") {
        (&url[9..], false)
    } else if url.contains("://") {
        return Err(format!(
            "unsupported scheme in '{}' (use http://, https:// or host:port)",
            shown()
        ));
    } else {
        (url, false)
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let not_a_url = || format!("'{}' is not of the form http://host:port", shown());
    let (host, port) = hostport.rsplit_once(':').ok_or_else(not_a_url)?;
    let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !valid_host {
        return Err(not_a_url());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => {
            return Err(format!("'{}' has no valid port (1 to 65535)", shown()));
        }
    }
    Ok((hostport.to_string(), tls))
}

/// The one spelling of a member address: `http://` or `https://`, the
/// host lowercased, no trailing slash (`localhost:5/`, `HTTP://LocalHost:5`
/// and `milena://localhost:5` are all `http://localhost:5`), so one
/// listener cannot be several members under several spellings.
pub fn canonical_url(url: &str) -> Result<String, String> {
    let (hostport, tls) = parse_url(url)?;
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}", hostport.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_address() {
        for spelling in ["localhost:5", "http://localhost:5/", "milena://LocalHost:5"] {
            assert_eq!(canonical_url(spelling).as_deref(), Ok("http://localhost:5"));
        }
        assert_eq!(canonical_url("https://A:1").as_deref(), Ok("https://a:1"));
    }

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
        assert_eq!(
            parse_url("http://[::1]:7").ok(),
            Some(("[::1]:7".into(), false))
        );
        assert!(parse_url("ftp://a:1").is_err());
        assert!(parse_url("http://nohost").is_err());
        assert!(parse_url("http://a:1/path").is_err());
    }

    #[test]
    fn hostile_addresses_are_refused() {
        let huge = format!("http://{}:1", "h".repeat(100_000));
        for bad in [
            ":1",
            "http://:0",
            "http://h:0",
            "http://h:99999",
            "http://h:+5",
            "a b:1",
            "http://h\nINFO forged:1",
            "http://h:1//",
            "http://[zz]:1",
            huge.as_str(),
        ] {
            assert!(parse_url(bad).is_err(), "{bad:.40}");
        }
    }
}
