//! The node's side of the several-routers rule (PROTOCOL.md, "Several
//! routers"): a request routed under etcd membership is served only if
//! the node's lease still holds, the router routed it under the very ring
//! revision the node is at, and every live node has applied the revision
//! at which this node gained the key. Requests admitted under a revision
//! are counted, so a ring change can wait for them before the node says it
//! has applied the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Why a fenced request was not served (it was not applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The node is not (or no longer provably) a member.
    #[error("this node's etcd lease is not known to hold")]
    Lease,
    /// The node registered again and has not yet seen the ring it
    /// rejoined (requests from before its lease lapsed may still arrive).
    #[error("this node is rejoining the ring (at revision {0})")]
    Rejoining(u64),
    /// The node is not in the ring it follows.
    #[error("this node is not in the ring (revision {0})")]
    NotMember(u64),
    /// The router's ring differs from the node's.
    #[error("routed under ring revision {theirs}, this node is at {mine}")]
    Revision {
        /// The node's revision.
        mine: u64,
        /// The request's.
        theirs: u64,
    },
    /// The node gained the key at `since` and not every live node has
    /// applied that revision yet.
    #[error(
        "the key is still changing hands (gained at revision {since}, every node has applied {applied})"
    )]
    Gaining {
        /// When the node gained the key.
        since: u64,
        /// The lowest revision every live node has applied.
        applied: u64,
    },
}

/// Requests admitted under one ring revision.
#[derive(Debug)]
pub struct Generation {
    revision: u64,
    inflight: AtomicUsize,
    /// A newer revision has been installed: admit nothing more under this.
    closed: std::sync::atomic::AtomicBool,
}

impl Generation {
    fn new(revision: u64) -> Self {
        Generation {
            revision,
            inflight: AtomicUsize::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Requests admitted under this revision and not yet answered.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
}

/// A request's hold on the revision it was admitted under, released when
/// its answer is ready.
#[derive(Debug)]
pub struct Admission(Arc<Generation>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct State {
    member: bool,
    min_applied: u64,
    current: Arc<Generation>,
}

/// The node's fence. Without etcd it is never armed and fenced requests
/// are refused as misrouted.
#[derive(Debug)]
pub struct Fence {
    state: ArcSwap<State>,
    /// Nanoseconds on the lease clock ([`crate::etcd::lease_clock`]) until
    /// which the lease provably holds.
    lease_until: AtomicU64,
    /// The ring revision of the node's latest join: nothing is served
    /// under an older ring.
    floor: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            state: ArcSwap::from_pointee(State {
                member: false,
                min_applied: 0,
                current: Arc::new(Generation::new(0)),
            }),
            lease_until: AtomicU64::new(0),
            floor: AtomicU64::new(0),
        }
    }
}

impl Fence {
    /// Admits a request routed under `revision` for a key this node gained
    /// at `since`, or says why not.
    pub fn admit(&self, revision: u64, since: u64) -> Result<Admission, Refusal> {
        let now = crate::etcd::lease_clock().as_nanos() as u64;
        if now >= self.lease_until.load(Ordering::Acquire) {
            return Err(Refusal::Lease);
        }
        let s = self.state.load();
        let mine = s.current.revision;
        let floor = self.floor.load(Ordering::Acquire);
        if mine < floor {
            return Err(Refusal::Rejoining(floor));
        }
        if revision != mine {
            return Err(Refusal::Revision {
                mine,
                theirs: revision,
            });
        }
        if !s.member {
            return Err(Refusal::NotMember(mine));
        }
        if since > s.min_applied {
            return Err(Refusal::Gaining {
                since,
                applied: s.min_applied,
            });
        }
        let current = s.current.clone();
        // Counted, then checked open: `install` marks the generation closed
        // before it reads the count (both sequentially consistent), so
        // either this sees it closed or the drain sees this request.
        current.inflight.fetch_add(1, Ordering::SeqCst);
        if current.closed.load(Ordering::SeqCst) {
            drop(Admission(current));
            return Err(Refusal::Revision {
                mine: self.revision(),
                theirs: revision,
            });
        }
        Ok(Admission(current))
    }

    /// The ring revision the node is at.
    pub fn revision(&self) -> u64 {
        self.state.load().current.revision
    }

    /// Moves to ring `revision` (whether this node is a `member` of it):
    /// returns the previous generation, whose requests the caller waits for
    /// before saying it has applied the revision. Same revision: only the
    /// membership flag and `min_applied` change.
    pub fn install(
        &self,
        revision: u64,
        member: bool,
        min_applied: u64,
    ) -> Option<Arc<Generation>> {
        let s = self.state.load();
        if s.current.revision == revision {
            self.state.store(Arc::new(State {
                member,
                min_applied,
                current: s.current.clone(),
            }));
            return None;
        }
        let old = s.current.clone();
        old.closed.store(true, Ordering::SeqCst);
        self.state.store(Arc::new(State {
            member,
            min_applied,
            current: Arc::new(Generation::new(revision)),
        }));
        Some(old)
    }

    /// The node (re)joined the ring at `revision`: serve nothing until the
    /// node is at that ring or a later one. Call before arming the lease.
    pub fn joined_at(&self, revision: u64) {
        self.floor.fetch_max(revision, Ordering::AcqRel);
    }

    /// The lease holds until `until` on the lease clock
    /// ([`crate::etcd::lease_clock`]).
    pub fn lease_holds_until(&self, until: Duration) {
        self.lease_until
            .store(until.as_nanos() as u64, Ordering::Release);
    }

    /// The lease is lost (or given up): refuse everything from now on.
    pub fn lease_lost(&self) {
        self.lease_until.store(0, Ordering::Release);
    }

    /// How much longer the lease provably holds.
    pub fn lease_left(&self) -> Duration {
        let now = crate::etcd::lease_clock().as_nanos() as u64;
        Duration::from_nanos(self.lease_until.load(Ordering::Acquire).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed() -> Fence {
        let f = Fence::default();
        f.lease_holds_until(crate::etcd::lease_clock() + Duration::from_secs(60));
        f
    }

    #[test]
    fn serves_only_its_own_revision_and_settled_keys() {
        let f = armed();
        f.install(10, true, 10);
        assert!(f.admit(10, 5).is_ok());
        assert_eq!(
            f.admit(9, 5).err(),
            Some(Refusal::Revision {
                mine: 10,
                theirs: 9
            })
        );
        f.install(12, true, 10);
        assert!(matches!(f.admit(12, 12), Err(Refusal::Gaining { .. })));
        assert!(f.admit(12, 10).is_ok());
        f.install(12, true, 12);
        assert!(f.admit(12, 12).is_ok());
        f.install(13, false, 12);
        assert_eq!(f.admit(13, 1).err(), Some(Refusal::NotMember(13)));
    }

    #[test]
    fn a_ring_change_sees_the_requests_admitted_before_it() {
        let f = armed();
        f.install(1, true, 1);
        let a = f.admit(1, 1).expect("admitted");
        let old = f.install(2, true, 1).expect("new revision");
        assert_eq!(old.inflight(), 1);
        drop(a);
        assert_eq!(old.inflight(), 0);
        assert!(f.admit(1, 1).is_err());
    }

    #[test]
    fn a_node_that_registered_again_serves_nothing_under_the_ring_it_left() {
        let f = armed();
        f.install(5, true, 5);
        assert!(f.admit(5, 1).is_ok());
        // Its lease lapsed and it registered again, joining at 9; a request
        // from before (routed under 5) arrives before the watch says 9.
        f.lease_lost();
        f.joined_at(9);
        f.lease_holds_until(crate::etcd::lease_clock() + Duration::from_secs(60));
        assert_eq!(f.admit(5, 1).err(), Some(Refusal::Rejoining(9)));
        f.install(9, true, 9);
        assert!(f.admit(9, 9).is_ok());
    }

    #[test]
    fn a_lapsed_lease_refuses_everything() {
        let f = Fence::default();
        f.install(1, true, 1);
        assert_eq!(f.admit(1, 1).err(), Some(Refusal::Lease));
        f.lease_holds_until(crate::etcd::lease_clock() + Duration::from_secs(60));
        assert!(f.admit(1, 1).is_ok());
        f.lease_lost();
        assert_eq!(f.admit(1, 1).err(), Some(Refusal::Lease));
    }
}
