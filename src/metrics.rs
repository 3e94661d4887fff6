//! Prometheus plumbing shared by routers and nodes: latency buckets,
//! scrape-time counter sync, text rendering and the `/metrics` HTTP answer.
//!
//! The request path never touches a shared metric per request: counters
//! live in per-connection tallies folded into atomics once per batch (or in
//! the store's stripes, under locks already held), and are copied into the
//! Prometheus counters when scraped; latencies go into per-connection local
//! histograms flushed once per batch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntCounter, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Histogram buckets for cache latencies: 10 µs to 1 s.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ]
}

/// Raises a Prometheus counter to `value`, the current reading of the
/// authoritative counter it mirrors. Only scrapes call it, one at a time.
pub fn sync(counter: &IntCounter, value: u64) {
    let have = counter.get();
    if value > have {
        counter.inc_by(value - have);
    }
}

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec only fails on metrics that are malformed, which
    // registration already rejected.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        debug!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Tokio tasks alive in the calling runtime (0 outside one): the serving
/// runtime, where a leak of connections or requests shows first. (A
/// node's write-behind uploads run in a runtime of their own.)
pub fn alive_tasks() -> u64 {
    tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks() as u64)
}

/// Something that renders its metrics on demand.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP answer for `/metrics` (and 404/405 for anything else).
pub fn http_answer<B>(req: &Request<B>, scrape: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(scrape())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (&Method::GET | &Method::HEAD, _) => {
            text(StatusCode::NOT_FOUND, "not found; try /metrics\n")
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves `/metrics` over HTTP/1.1 on `listener` until `shutdown`.
/// Malformed requests get hyper's 400; slow ones are cut off after 10 s.
pub async fn serve(listener: TcpListener, scrape: Scrape, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let scrape = scrape.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(http_answer(&req, || scrape())) }
            });
            // A client may send its request and shut its side at once
            // (`printf ... | nc -N`); it still gets its answer.
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .header_read_timeout(Some(Duration::from_secs(10)))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "metrics connection failed") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
