//! Redis clients on the router: sniffed on the router's port (a first byte
//! `*` cannot start a binary frame the router accepts) and served on
//! `REDIS_ADDR` when set. Each command goes down the same admission and
//! forwarding path as a binary request (`Router::call`): same owners,
//! epochs, write modes and tier, so a key set here is read by any other
//! protocol. The commands themselves are `crate::redis`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::{BoxFuture, FutureExt};
use milena_protocol::Op;
use tokio_util::sync::CancellationToken;

use super::Router;
use super::request::Kind;
use crate::error::WireError;
use crate::redis::{Answer, Backend};
use crate::resp::Limits;
use crate::tls::Stream;

/// The router as a Redis backend.
#[derive(Clone)]
struct Routed(Arc<Router>);

impl Backend for Routed {
    fn start(&self, op: Op<'_>) -> Answer {
        let (kind, key, value) = match op {
            Op::Get { key } => (Kind::Get, key, None),
            Op::Put { key, value, .. } => (Kind::Put, key, Some(value)),
            Op::Delete { key } => (Kind::Delete, key, None),
            Op::PutIf { key, value, .. } => (Kind::PutIf, key, Some(value)),
            Op::Ttl { key } => (Kind::Get, key, None),
            _ => return Answer::Now(Err(WireError::Undecodable("not a data operation".into()))),
        };
        Answer::Later(self.0.call(kind, key, value, op).boxed())
    }

    fn counters(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        super::cluster_stats::counters(&self.0).boxed()
    }

    fn password(&self, password: Option<&str>) -> Option<bool> {
        let s = &self.0.settings;
        if s.client_token.is_none() && s.cluster_token.is_none() {
            return None;
        }
        Some(self.0.access(password).is_ok_and(|a| a.data))
    }

    fn limits(&self) -> (Limits, std::time::Duration) {
        let s = &self.0.settings;
        let limits = Limits {
            max_args: 1024 * 1024,
            max_bulk: s.max_value.max(s.max_key),
            max_inline: 64 * 1024,
            max_command: s.max_frame,
        };
        (limits, s.frame_timeout)
    }

    fn protocol_error(&self) {
        self.0.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Serves Redis clients on `listener` (`REDIS_ADDR`) until `shutdown`,
/// within the router's one `MAX_CONNECTIONS` and its TLS settings.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    super::accept::serve_listener(
        listener,
        router,
        shutdown,
        |stream, router, shutdown| async move { serve_resp(stream, &router, &shutdown).await },
    )
    .await;
}

/// Serves one Redis client until it quits, sends something that is not
/// RESP, or the router shuts down.
pub async fn serve_resp(
    stream: Stream,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    crate::redis::serve_resp(stream, &Routed(router.clone()), shutdown).await
}
