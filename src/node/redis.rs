//! Redis clients straight to a node, on the node's `REDIS_ADDR` when set:
//! single-node use and benchmarking a node against Redis with Redis's own
//! tools. Every command becomes the binary protocol's operation and goes
//! through the node's one `execute` step, as a direct binary client's
//! would (no routing: the node serves whatever it is asked). The commands
//! themselves are `crate::redis`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use milena_protocol::Op;
use tokio_util::sync::CancellationToken;

use super::execute::{Later, execute};
use super::{Node, Tally};
use crate::error::WireError;
use crate::redis::{Answer, Answered, Backend};
use crate::resp::Limits;

/// A node as a Redis backend.
#[derive(Clone)]
struct Local(Arc<Node>);

impl Backend for Local {
    fn start(&self, op: Op<'_>) -> Answer {
        // Room for a small value's answer without growing.
        let mut out = Vec::with_capacity(256);
        let mut tally = Tally::default();
        let later = execute(&self.0, 0, op, &mut out, &mut tally);
        self.0.stats.fold(&mut tally);
        match later {
            None => Answer::Now(body(out)),
            // A tier read others may share: it runs to its end even if
            // this connection goes.
            Some(Later::Spawn(work)) => Answer::Later(
                async move {
                    let frame = tokio::spawn(work)
                        .await
                        .map_err(|_| WireError::Unavailable("the request was dropped".into()))?;
                    body(frame)
                }
                .boxed(),
            ),
            Some(Later::Here(work)) => Answer::Later(async move { body(work.await) }.boxed()),
        }
    }

    fn counters(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        // The names the router gives a cluster's sums (`nodes_items`, ...)
        // beside the node's own.
        let own: Vec<(String, u64)> = self
            .0
            .stats_list()
            .into_iter()
            .map(|s| (s.name.to_string(), s.value))
            .collect();
        let summed = own.iter().map(|(n, v)| (format!("nodes_{n}"), *v));
        let mut all: Vec<(String, u64)> = summed.collect();
        all.extend(own);
        all.push(("members".into(), 1));
        all.push(("nodes_reporting".into(), 1));
        futures_util::future::ready(all).boxed()
    }

    fn password(&self, _: Option<&str>) -> Option<bool> {
        // A node has no client token: its port belongs on a private network.
        None
    }

    fn limits(&self) -> (Limits, std::time::Duration) {
        let s = &self.0.settings;
        let limits = Limits {
            max_args: 1024 * 1024,
            max_bulk: s.max_value.max(s.max_key),
            max_inline: 64 * 1024,
            max_command: s.max_frame(),
        };
        (limits, s.frame_timeout)
    }

    fn protocol_error(&self) {
        self.0.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// An encoded response without its length prefix, as a router's answer comes.
fn body(frame: Vec<u8>) -> Answered {
    if frame.len() < 4 {
        return Err(WireError::Unavailable("no answer was encoded".into()));
    }
    Ok(Bytes::from(frame).slice(4..))
}

/// Serves Redis clients on `listener` (the node's `REDIS_ADDR`) until
/// `shutdown`, within the node's `MAX_CONNECTIONS` and its TLS settings.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
) {
    let tracker = tokio_util::task::TaskTracker::new();
    let (max, counters) = (node.settings.max_connections, node.stats.conns.clone());
    let token = shutdown.clone();
    crate::net::accept_loop(listener, max, counters, tracker, shutdown, move |tcp| {
        let (node, shutdown) = (node.clone(), token.clone());
        async move {
            let Some(stream) = super::server::accept_stream(tcp, &node).await else {
                return Ok(());
            };
            crate::redis::serve_resp(stream, &Local(node), &shutdown).await
        }
    })
    .await;
}
