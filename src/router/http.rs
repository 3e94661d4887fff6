//! HTTP/1.1 and HTTP/2 on the router's port: gRPC requests go to the
//! gateway, everything else gets the health line or `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::Router;
use super::grpc::Gateway;
use crate::grpc::RouterServer;
use crate::metrics;
use crate::tls::Stream;

/// How long a connection may take to finish its requests once shutdown
/// has begun.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long an HTTP/1 client may take to send its request headers:
/// `curl` sends them at once; a client slower than this is holding the
/// connection, not using it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Serves one HTTP connection (either version) until it ends or `shutdown`.
pub async fn serve_http(
    stream: Stream,
    router: Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let grpc = RouterServer::new(Gateway::new(router.clone()));
    let service = hyper::service::service_fn(move |req: HttpRequest<hyper::body::Incoming>| {
        let (router, mut grpc) = (router.clone(), grpc.clone());
        async move {
            let is_grpc = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if is_grpc {
                grpc.call(req).await
            } else {
                Ok(http_answer(&router, &req).map(tonic::body::Body::new))
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Answer clients that send a request and shut their side at once.
        .half_close(true)
        .header_read_timeout(Some(HEADER_READ_TIMEOUT))
        .timer(hyper_util::rt::TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map_err(std::io::Error::other),
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
            Ok(())
        }
    }
}

fn http_answer<B>(router: &Router, req: &HttpRequest<B>) -> HttpResponse<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/" | "/health") => {
            let view = router.members.view();
            metrics::text(
                StatusCode::OK,
                format!(
                    "milena-router {}: ok, {} members, epoch {}\n",
                    env!("CARGO_PKG_VERSION"),
                    view.ring.len(),
                    view.epoch
                ),
            )
        }
        _ => metrics::http_answer(req, || router.scrape()),
    }
}
