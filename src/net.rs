//! Listeners and socket options.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

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
