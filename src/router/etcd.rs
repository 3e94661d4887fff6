//! Membership in etcd, the router's side: the ring is etcd's record,
//! installed revision by revision into the member table; the router never
//! decides a change itself (no joins, heartbeats or ejections), except an
//! operator's `leave`, which becomes a ring change in etcd.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Router;
use crate::error::WireError;
use crate::etcd::cluster::{change_ring, wall_micros};
use crate::etcd::{ClusterState, Etcd, watch_cluster};

/// How long a leave waits for its ring change to come back through the
/// watch, so that the router's next answer already shows it.
const LEAVE_SETTLES_WITHIN: Duration = Duration::from_secs(2);

/// The router's handle on membership in etcd.
#[derive(Debug)]
pub struct EtcdMembers {
    etcd: Etcd,
    state: watch::Receiver<ClusterState>,
}

impl EtcdMembers {
    /// Whether the router is following etcd right now.
    pub fn connected(&self) -> bool {
        self.state.borrow().connected
    }
}

/// Starts following the ring in `etcd`: every revision the watch delivers
/// is installed into the member table, until the router shuts down.
pub fn follow(router: &Arc<Router>, etcd: Etcd) {
    let mut rx = watch_cluster(etcd.clone(), router.shutdown.clone());
    let _ = router.etcd.set(EtcdMembers {
        etcd,
        state: rx.clone(),
    });
    let weak = Arc::downgrade(router);
    tokio::spawn(async move {
        loop {
            let s = rx.borrow_and_update().clone();
            if s.connected {
                let Some(router) = weak.upgrade() else { return };
                router.members.install(s.revision, &s.ring);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

impl Router {
    /// Whether membership lives in etcd.
    pub fn in_etcd(&self) -> bool {
        self.etcd.get().is_some()
    }

    /// An operator's leave under etcd membership: takes the member
    /// `address` names out of the ring record, and answers once this
    /// router has the new ring.
    pub async fn leave_in_etcd(&self, address: &str) -> Result<(), WireError> {
        let Some(e) = self.etcd.get() else {
            return self.leave_checked(address).map(|_| ());
        };
        let Some((member, _)) = self.members.leave_target(address) else {
            return Err(WireError::NotMember(
                self.members.not_member(address).to_string(),
            ));
        };
        if self.membership_changes.check().is_err() {
            return Err(WireError::MembershipRateLimited(
                super::admit::MEMBERSHIP_CHANGES_PER_SECOND,
            ));
        }
        let changed = change_ring(&e.etcd, None, |r| r.without_member(&member, wall_micros()))
            .await
            .map_err(|e| {
                WireError::Unavailable(format!("the ring in etcd could not be changed: {e}"))
            })?;
        if let Some(revision) = changed {
            tracing::info!(node = %member, revision, "Leave: node removed from the ring in etcd");
            let _ = tokio::time::timeout(
                LEAVE_SETTLES_WITHIN,
                self.members.wait_for(|v| v.epoch >= revision),
            )
            .await;
        }
        Ok(())
    }
}
