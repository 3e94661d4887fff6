//! The one admission path every front (binary protocol, gRPC, Redis,
//! memcached) shares: credentials (`CLUSTER_TOKEN`, `CLIENT_TOKEN`) at
//! connection or call time, then, per data request,
//! size limits and `RATE_LIMIT`, counted alike whichever way it came in;
//! and, for joins, the checks an address passes before it enters the ring.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::members::Change;
use super::pool;

/// Joins that change the ring, admitted per second across the router: a
/// cluster's nodes joining at once fit in the burst; a flood of bogus
/// joins cannot churn the ring (each change makes every node re-check the
/// keys it gained).
pub const MEMBERSHIP_CHANGES_PER_SECOND: u32 = 20;
/// Joins admitted at once before the rate applies.
pub const MEMBERSHIP_BURST: u32 = 64;

/// The limiter of membership changes.
pub fn membership_limiter() -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(MEMBERSHIP_CHANGES_PER_SECOND).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(MEMBERSHIP_BURST).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// The warning a router gives when anyone who can reach its port could
/// join or remove nodes: it listens beyond loopback with neither
/// `CLUSTER_TOKEN` nor client certificates.
pub fn exposure_warning(
    listen: std::net::SocketAddr,
    token: bool,
    client_certificates: bool,
) -> Option<String> {
    if listen.ip().is_loopback() || token || client_certificates {
        return None;
    }
    Some(format!(
        "LISTEN_ADDR={listen} is reachable beyond this machine and neither CLUSTER_TOKEN nor TLS_CLIENT_AUTH is set: anyone who can reach it can join a node (and receive keys and values) or remove nodes; set CLUSTER_TOKEN on the router and every node"
    ))
}

/// Why a router must not start with `MEMCACHE_ADDR` as configured: the
/// memcached text protocol has no way to present `CLIENT_TOKEN`, so a
/// listener for it would be an open door beside a locked one, unless
/// clients prove themselves with certificates (`TLS_CLIENT_AUTH`).
pub fn memcache_refusal(
    memcache: bool,
    client_token: bool,
    client_certificates: bool,
) -> Option<&'static str> {
    (memcache && client_token && !client_certificates).then_some(
        "MEMCACHE_ADDR cannot be served with CLIENT_TOKEN set: the memcached text protocol has no way to present a token; require client certificates (TLS_CLIENT_AUTH=true) or unset MEMCACHE_ADDR",
    )
}

use super::Router;
use super::request::Kind;
use crate::error::WireError;

/// What a client may do, from the token it offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Membership: join, leave, heartbeat (needs `CLUSTER_TOKEN` when the
    /// router has one).
    pub cluster: bool,
    /// Data operations, stats and the ring (need `CLIENT_TOKEN`, or the
    /// cluster token, when the router has a client token).
    pub data: bool,
}

impl Router {
    /// The access `offered` (a hello's, a call's or an `AUTH`'s token)
    /// grants. A token that matches neither configured token is refused
    /// outright; none at all grants what needs no token.
    pub fn access(&self, offered: Option<&str>) -> Result<Access, WireError> {
        let s = &self.settings;
        let cluster = s.cluster_token.as_ref().is_some_and(|t| t.matches(offered));
        let client = s.client_token.as_ref().is_some_and(|t| t.matches(offered));
        let any_configured = s.cluster_token.is_some() || s.client_token.is_some();
        if offered.is_some() && any_configured && !cluster && !client {
            return Err(WireError::WrongToken);
        }
        Ok(Access {
            cluster: s.cluster_token.is_none() || cluster,
            data: s.client_token.is_none() || client || cluster,
        })
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

    /// Admits `address` into the ring once it has shown to be a reachable
    /// Milena cache node that says it is that address (see
    /// [`pool::probe`]). A member already up under that address (or another
    /// spelling of it) is simply refreshed.
    pub async fn join_checked(&self, address: &str) -> Result<Change, WireError> {
        let address = crate::net::canonical_url(address).map_err(WireError::BadAddress)?;
        if let Some(member) = self.members.up_member(&address) {
            return Ok(self.members.join(&member));
        }
        if let Some(wait) = self.members.held_down(&address) {
            return Err(WireError::NotANode(format!(
                "{address} was ejected moments ago; it may join again in {} ms",
                wait.as_millis()
            )));
        }
        if self.membership_changes.check().is_err() {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(WireError::MembershipRateLimited(
                MEMBERSHIP_CHANGES_PER_SECOND,
            ));
        }
        pool::probe(&address, &self.pool)
            .await
            .map_err(WireError::NotANode)?;
        Ok(self.members.join(&address))
    }

    /// Removes the member `address` names (see `Members::leave`), counting
    /// a leave that changes the ring against the membership rate limit.
    pub fn leave_checked(&self, address: &str) -> Result<Change, WireError> {
        let up = self.members.leave_target(address).is_some_and(|(_, up)| up);
        if up && self.membership_changes.check().is_err() {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(WireError::MembershipRateLimited(
                MEMBERSHIP_CHANGES_PER_SECOND,
            ));
        }
        self.members
            .leave(address)
            .map_err(|e| WireError::NotMember(e.to_string()))
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
