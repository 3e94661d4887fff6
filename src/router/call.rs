//! One data operation down the forwarding path, awaited: what the gRPC
//! gateway and the Redis front end use (the binary protocol splices
//! frames instead, see `session`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use milena_protocol::{Op, Request, encode_request};

use super::Router;
use super::request::{Forward, Kind, replies};
use crate::error::WireError;
use crate::ring::key_hash;

/// Awaited calls in flight at once across all gRPC and Redis connections.
pub const MAX_CALLS: usize = 4096;

impl Router {
    /// Admits `op` on `key` (sizes, rate limit), routes it, and returns
    /// the answer's response frame (the node's, or the router's error).
    /// The admission and the encoding happen now; the future owns what it
    /// needs, so it may outlive the arguments.
    pub fn call(
        self: &Arc<Self>,
        kind: Kind,
        key: &[u8],
        value: Option<&[u8]>,
        op: Op<'_>,
    ) -> impl std::future::Future<Output = Result<Bytes, WireError>> + Send + 'static {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let prepared = self.admit(kind, key, value).map(|()| {
            let mut frame = Vec::new();
            encode_request(&Request { id: 0, op }, &mut frame);
            (Bytes::from(frame).slice(4..), key_hash(key))
        });
        let router = self.clone();
        async move {
            let (body, hash) = prepared?;
            let permit = router
                .calls
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| WireError::Unavailable("the router is shutting down".into()))?;
            let (reply, mut answer) = replies(router.settings.buffered.clone());
            let fwd = Forward::new(0, body, kind, hash, reply, permit, Instant::now());
            router.route(fwd).await;
            answer
                .recv()
                .await
                .map(|(body, _slot)| body)
                .ok_or_else(|| WireError::Unavailable("the request was dropped".into()))
        }
    }
}
