//! The router's port: one listener for the binary protocol, gRPC and
//! HTTP. Accepts, then sniffs each connection: the first byte decides for a
//! plain connection (a binary frame starts with its big-endian length, whose
//! top byte is 0 or 1 for any frame the router accepts, while HTTP/1 starts
//! with an ASCII method name and HTTP/2 with its `PRI` preface), ALPN for a
//! TLS one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Router;
use super::http::serve_http;
use super::session::serve_binary;
use crate::net;
use crate::tls::Stream;

/// Serves clients and nodes on `listener` until `shutdown` is cancelled,
/// then stops accepting and waits for every connection to finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    tracker.spawn(sweep_loop(router.clone(), shutdown.clone()));
    let (max, counters) = (router.settings.max_connections, router.stats.conns.clone());
    let token = shutdown.clone();
    net::accept_loop(listener, max, counters, tracker, shutdown, move |stream| {
        let (router, shutdown) = (router.clone(), token.clone());
        async move { serve_connection(stream, &router, &shutdown).await }
    })
    .await;
}

async fn sweep_loop(router: Arc<Router>, shutdown: CancellationToken) {
    let period = (router.settings.heartbeat_timeout / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // Under etcd, leases decide who is out, not heartbeats here.
            _ = tick.tick(), if !router.in_etcd() => { router.members.sweep(); }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    if let Some(tls) = &router.settings.tls {
        // Boxed, like the HTTP side: idle plain connections should not
        // carry room for a TLS handshake.
        return Box::pin(serve_tls(stream, tls, router, shutdown)).await;
    }
    let mut first = [0u8; 1];
    let sniffed = tokio::select! {
        r = stream.peek(&mut first) => r?,
        _ = tokio::time::sleep(router.settings.hello_timeout) => {
            router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return Ok(()); // said nothing at all: just close
        }
        _ = shutdown.cancelled() => return Ok(()),
    };
    if sniffed == 0 {
        return Ok(());
    }
    if first[0].is_ascii_alphabetic() {
        // Boxed: hyper's connection state is large, and every idle binary
        // connection would otherwise carry room for it.
        return Box::pin(serve_http(Stream::Plain(stream), router.clone(), shutdown)).await;
    }
    if first[0] == b'*' {
        // A binary frame starts with its length's top byte (0 or 1).
        return Box::pin(super::redis::serve_resp(
            Stream::Plain(stream),
            router,
            shutdown,
        ))
        .await;
    }
    serve_binary(Stream::Plain(stream), router, shutdown).await
}

/// A TLS connection: the handshake's ALPN says which protocol follows.
async fn serve_tls(
    stream: TcpStream,
    tls: &crate::tls::Tls,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let Some(stream) = super::accept::handshake(stream, tls, router, shutdown).await else {
        return Ok(());
    };
    match stream.alpn() {
        Some(b"h2") | Some(b"http/1.1") => {
            Box::pin(serve_http(stream, router.clone(), shutdown)).await
        }
        // No ALPN says which: the first byte does, as on a plain port
        // (`*` for a Redis client, else the binary protocol).
        _ => {
            let mut stream = stream;
            let mut first = [0u8; 1];
            let read = tokio::select! {
                r = tokio::time::timeout(router.settings.hello_timeout, stream.read(&mut first)) => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            match read {
                Ok(Ok(1)) => {}
                // Silent so far: the binary protocol's own hello deadline
                // answers it (bounded, if later than on a plain port).
                Err(_) => return serve_binary(stream, router, shutdown).await,
                Ok(_) => return Ok(()), // closed or failed
            }
            let stream = Stream::Prefixed(Box::new(crate::tls::Prefixed {
                prefix: bytes::Bytes::copy_from_slice(&first),
                inner: stream,
            }));
            if first[0] == b'*' {
                Box::pin(super::redis::serve_resp(stream, router, shutdown)).await
            } else {
                serve_binary(stream, router, shutdown).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RouterSettings;
    /// Every open connection is one of these futures: its size is paid by
    /// each of 10,000 idle clients.
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let shutdown = CancellationToken::new();
        let router = Router::new(RouterSettings::default(), shutdown.clone());
        let conn = serve_connection(server, &router, &shutdown);
        let conn = std::mem::size_of_val(&conn);
        println!("serve_connection {conn} B");
        // Was 3.4 KB while it held hyper's state inline, 1.5 KB plus a
        // writer task's 1 KB before the connection's one task wrote its
        // own answers.
        assert!(conn < 2048, "serve_connection future is {conn} B");
    }
}
