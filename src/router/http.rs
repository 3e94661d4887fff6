//! HTTP/1.1 and HTTP/2 on the router's port: gRPC requests go to the
//! gateway, everything else gets the health line or `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use crate::budget::{ByteBudget, Held};
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
/// Streams one HTTP/2 connection may have open at once: a gRPC client
/// multiplexes its calls, but a hundred partial bodies is already a lot of
/// memory to hold for one peer.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 pings on quiet connections, and how long an answer may take:
/// a peer that vanished is noticed even while a call is open.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one HTTP connection (either version) until it ends or `shutdown`.
pub async fn serve_http(
    stream: Stream,
    router: Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    // Messages as large as the binary protocol's frames (tonic's own
    // default, 4 MiB, would refuse values MAX_VALUE_SIZE allows).
    let limit = router.settings.max_frame;
    let router_idle = router.settings.http_idle_timeout;
    let grpc = RouterServer::new(Gateway::new(router.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // Request bodies this connection holds, against its cap and the
    // router-wide budget; and whether a request is under way.
    let received = Arc::new(AtomicUsize::new(0));
    let activity = Arc::new(Activity::default());
    let cap = 2 * router.settings.max_frame;
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: HttpRequest<hyper::body::Incoming>| {
        let (router, mut grpc) = (router.clone(), grpc.clone());
        let (received, activity) = (received.clone(), seen.clone());
        async move {
            let _busy = activity.start();
            let is_grpc = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if is_grpc {
                let budget = router.settings.buffered.clone();
                let timeout = router.settings.frame_timeout;
                let req = req.map(|body| Metered::new(body, received, cap, budget, timeout));
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
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle_timeout = router_idle;
    let mut tick = tokio::time::interval(idle_timeout / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(std::io::Error::other),
            _ = tick.tick() => {
                if !activity.idle_for(idle_timeout) {
                    continue;
                }
                // Idle: nothing under way to finish; just close.
                return Ok(());
            }
            _ = shutdown.cancelled() => {}
        }
        // Shutting down: finish what is under way.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(DRAIN_GRACE, conn).await;
        return Ok(());
    }
}

/// Requests under way on one HTTP connection, and when the last ended.
#[derive(Debug)]
struct Activity {
    busy: AtomicUsize,
    since: std::sync::Mutex<tokio::time::Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            busy: AtomicUsize::new(0),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

impl Activity {
    /// Marks a request under way until the guard drops.
    fn start(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn idle_for(&self, limit: Duration) -> bool {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        self.busy.load(Ordering::Relaxed) == 0 && since.elapsed() >= limit
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request body that counts what it has received against its
/// connection's cap and the router-wide byte budget, and gives both back
/// when the request is done with it: a peer holding many streams of
/// partial messages is refused past the bounds instead of filling memory.
struct Metered {
    inner: hyper::body::Incoming,
    received: Arc<AtomicUsize>,
    cap: usize,
    budget: ByteBudget,
    held: Option<Held>,
    held_bytes: usize,
    taken: usize,
    /// A body that sends nothing for `FRAME_TIMEOUT_SECONDS` is failed, as
    /// a stalled binary frame is.
    stall: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Metered {
    fn new(
        inner: hyper::body::Incoming,
        received: Arc<AtomicUsize>,
        cap: usize,
        budget: ByteBudget,
        timeout: Duration,
    ) -> Self {
        Metered {
            inner,
            received,
            cap,
            budget,
            held: None,
            held_bytes: 0,
            taken: 0,
            stall: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                if this.stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(format!(
                        "the request body stalled for {} seconds (FRAME_TIMEOUT_SECONDS)",
                        this.timeout.as_secs()
                    )
                    .into())));
                }
                return Poll::Pending;
            }
        };
        this.stall
            .as_mut()
            .reset(tokio::time::Instant::now() + this.timeout);
        if let Some(data) = frame.data_ref() {
            let n = data.len();
            this.taken += n;
            if this.received.fetch_add(n, Ordering::Relaxed) + n > this.cap {
                return Poll::Ready(Some(Err(format!(
                    "this connection's request bodies passed {} bytes",
                    this.cap
                )
                .into())));
            }
            // Hold whole KiB for the body so far, not a KiB per frame: a
            // peer sending one-byte frames must not spend the budget 1024
            // times over.
            let need = this.taken.div_ceil(1024) * 1024 - this.held_bytes;
            if need > 0 {
                match (this.budget.try_hold(need), &mut this.held) {
                    (Some(h), Some(held)) => held.merge(h),
                    (Some(h), slot) => *slot = Some(h),
                    (None, _) => {
                        return Poll::Ready(Some(Err(
                            "the router's buffer budget (MAX_BUFFERED_BYTES) is spent; try again"
                                .into(),
                        )));
                    }
                }
                this.held_bytes += need;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.received.fetch_sub(self.taken, Ordering::Relaxed);
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
