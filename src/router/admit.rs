//! The one admission path every front (binary protocol, gRPC) shares:
//! cluster credentials at connection or call time, then, per data request,
//! size limits and `RATE_LIMIT`, counted alike whichever way it came in.

use std::sync::atomic::Ordering;

use super::Router;
use super::request::Kind;
use crate::error::WireError;

/// What a client may do, from the cluster token it offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Data operations and membership (join, leave, heartbeat).
    Cluster,
    /// Data operations only: no token offered while one is configured.
    Data,
}

impl Router {
    /// The access `offered` (a hello's or a call's token) grants. A wrong
    /// token is refused outright; none at all still allows data operations.
    pub fn access(&self, offered: Option<&str>) -> Result<Access, WireError> {
        match &self.settings.cluster_token {
            None => Ok(Access::Cluster),
            Some(secret) if secret.matches(offered) => Ok(Access::Cluster),
            Some(_) if offered.is_some() => Err(WireError::WrongToken),
            Some(_) => Ok(Access::Data),
        }
    }

    /// Admits one data request: refuses keys and values the nodes would
    /// refuse (a frame over a node's limit would make it drop the whole
    /// connection) and requests over `RATE_LIMIT`, counting the refusal.
    pub fn admit(&self, kind: Kind, key: &[u8], value: Option<&[u8]>) -> Result<(), WireError> {
        let checked = self.check_sizes(key, value).and_then(|()| {
            self.limiter.admit().map_err(|limit| {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                WireError::RateLimited(limit)
            })
        });
        if let Err(e) = &checked {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.metrics.count(kind, e.status());
        } else {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    fn check_sizes(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), WireError> {
        let s = &self.settings;
        if key.is_empty() {
            return Err(WireError::EmptyKey);
        }
        if key.len() > s.max_key {
            return Err(WireError::KeyTooLarge {
                len: key.len(),
                max: s.max_key,
            });
        }
        match value {
            Some(v) if v.len() > s.max_value => Err(WireError::ValueTooLarge {
                len: v.len(),
                max: s.max_value,
            }),
            _ => Ok(()),
        }
    }
}
