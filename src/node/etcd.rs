//! Membership in etcd, the node's side: register under a lease and keep
//! it alive, join the ring record, follow the ring into the fence (see
//! `fence` and PROTOCOL.md, "Several routers"), say which revision this
//! node has applied once it has finished what it admitted before, and on
//! a graceful stop leave the ring, then give the lease up once the queue
//! is flushed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Node;
use super::fence::Generation;
use crate::backoff::Backoff;
use crate::etcd::cluster::{change_ring, wall_micros};
use crate::etcd::{ClusterState, Etcd, watch_cluster};

/// Beyond the answer window, how long a ring change waits for the
/// requests admitted under the previous revision before saying it has
/// applied the new one anyway: every such request was sent before the
/// change, so its answer then arrives later than the window after its
/// sending, and no router trusts it.
const DRAIN_SLACK: Duration = Duration::from_millis(500);

/// Longest lease TTL believed from etcd (what `ETCD_LEASE_SECONDS` allows).
const MAX_TTL: u64 = 3600;

/// Membership in etcd for one node.
#[derive(Debug, Clone)]
pub struct EtcdMembership {
    /// The etcd client.
    pub etcd: Etcd,
    /// Lease TTL asked for (`ETCD_LEASE_SECONDS`).
    pub lease_seconds: u64,
}

/// What is left to do once the node has left the ring: keep the lease
/// while the queue flushes, then revoke it.
pub struct Registered {
    stay: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Registered {
    /// Gives the lease up (the node's key goes at once) and waits for it.
    pub async fn done(self) {
        self.stay.cancel();
        let _ = self.task.await;
    }
}

/// Registers `advertise` and keeps it in the ring until `shutdown`, then
/// leaves the ring. The lease is kept (so the node still counts while it
/// finishes what it admitted) until [`Registered::done`].
pub async fn maintain(
    node: Arc<Node>,
    m: EtcdMembership,
    advertise: String,
    shutdown: CancellationToken,
) -> Registered {
    let stay = CancellationToken::new();
    let (left_tx, left_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(keep(node, m, advertise, shutdown, stay.clone(), left_tx));
    let _ = left_rx.await;
    Registered { stay, task }
}

async fn keep(
    node: Arc<Node>,
    m: EtcdMembership,
    advertise: String,
    shutdown: CancellationToken,
    stay: CancellationToken,
    left: tokio::sync::oneshot::Sender<()>,
) {
    let etcd = m.etcd.clone();
    let window = crate::etcd::answer_window(m.lease_seconds);
    let follow = CancellationToken::new();
    let mut state = watch_cluster(etcd.clone(), follow.clone());
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();
    tokio::spawn(publish_applied(
        etcd.clone(),
        advertise.clone(),
        publish_rx,
        window + DRAIN_SLACK,
        follow.clone(),
    ));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut left = Some(left);
    let mut said = 0u64;
    'register: loop {
        if shutdown.is_cancelled() {
            break;
        }
        // Register: a lease, the node's key under it, then the ring.
        let sent = crate::etcd::lease_clock();
        let registered = async {
            let (lease, ttl) = etcd.grant(m.lease_seconds).await?;
            etcd.put(
                etcd.key(&format!("nodes/{advertise}")),
                b"0".to_vec(),
                lease,
            )
            .await?;
            let revision = change_ring(&etcd, None, |r| {
                Some(r.with_member(&advertise, wall_micros()))
            })
            .await?;
            // Before the lease is armed: requests routed before a lapse
            // must not pass under the ring this node is about to leave.
            node.fence.joined_at(revision.unwrap_or(0));
            Ok::<_, crate::etcd::EtcdError>((lease, ttl, revision))
        };
        let (lease, ttl) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = registered => match r {
                Ok((lease, ttl, revision)) => {
                    info!(address = %advertise, revision = ?revision, lease_seconds = ttl, "joined the ring in etcd");
                    backoff.reset();
                    (lease, ttl)
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    error!(error = %e, retry_in = ?delay, "Failed to join: could not register in etcd");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
        };
        let ttl = Duration::from_secs(ttl);
        node.fence
            .lease_holds_until(sent + ttl.saturating_sub(window));
        let mut keepalive = None;
        let mut tick = tokio::time::interval(ttl / 6);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut blind_since: Option<Duration> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    leave(&etcd, &advertise).await;
                    if let Some(l) = left.take() {
                        let _ = l.send(());
                    }
                    // Keep the lease while the queue flushes; follow the
                    // ring meanwhile (the node still counts as live).
                    keep_until(&node, &etcd, lease, ttl, window, &mut state, &publish_tx, &advertise, &stay).await;
                    follow.cancel();
                    return;
                }
                _ = tick.tick() => {
                    // A node that cannot follow the ring would hold every
                    // handoff back (its applied revision never moves):
                    // past a lease's length blind, it lets its lease lapse.
                    if state.borrow().connected {
                        blind_since = None;
                    } else if blind_since.get_or_insert_with(crate::etcd::lease_clock).saturating_add(ttl) < crate::etcd::lease_clock() {
                        if !failing {
                            warn!("etcd: this node has not followed the ring for a lease's length; it stops renewing its lease and leaves the ring until it can");
                        }
                        failing = true;
                        continue;
                    }
                    match renew(&etcd, &mut keepalive, lease).await {
                        Ok((sent, 0)) => {
                            let _ = sent;
                            node.fence.lease_lost();
                            warn!(address = %advertise, "this node's etcd lease lapsed (a pause, or etcd lost it): it stopped serving routed requests and registers again");
                            continue 'register;
                        }
                        Ok((sent, ttl)) => {
                            node.fence.lease_holds_until(sent + Duration::from_secs(ttl.min(MAX_TTL)).saturating_sub(window));
                            if failing {
                                info!("etcd: lease renewed again");
                            }
                            failing = false;
                        }
                        Err(e) => {
                            keepalive = None;
                            if !failing {
                                warn!(error = %e, left_ms = node.fence.lease_left().as_millis() as u64, "etcd: could not renew this node's lease; it stops serving routed requests when what etcd last granted runs out");
                            }
                            failing = true;
                        }
                    }
                }
                r = state.changed() => {
                    if r.is_err() {
                        // The watch task is gone (only at shutdown).
                        break 'register;
                    }
                    let s = state.borrow_and_update().clone();
                    apply(&node, &s, &advertise, &publish_tx, &mut said);
                }
            }
        }
    }
    if let Some(l) = left.take() {
        let _ = l.send(());
    }
    follow.cancel();
}

/// After leaving: keep renewing the lease and following the ring until
/// `stay` is cancelled, then revoke the lease.
#[allow(clippy::too_many_arguments)]
async fn keep_until(
    node: &Node,
    etcd: &Etcd,
    lease: i64,
    ttl: Duration,
    window: Duration,
    state: &mut tokio::sync::watch::Receiver<ClusterState>,
    publish: &mpsc::UnboundedSender<(u64, Option<Arc<Generation>>)>,
    advertise: &str,
    stay: &CancellationToken,
) {
    let mut keepalive = None;
    let mut tick = tokio::time::interval(ttl / 6);
    let (mut said, mut watch_gone) = (0u64, false);
    loop {
        tokio::select! {
            _ = stay.cancelled() => break,
            _ = tick.tick() => {
                if let Ok((sent, ttl)) = renew(etcd, &mut keepalive, lease).await && ttl > 0 {
                    node.fence.lease_holds_until(sent + Duration::from_secs(ttl.min(MAX_TTL)).saturating_sub(window));
                }
            }
            r = state.changed(), if !watch_gone => {
                match r {
                    Ok(()) => {
                        let s = state.borrow_and_update().clone();
                        apply(node, &s, advertise, publish, &mut said);
                    }
                    Err(_) => watch_gone = true,
                }
            }
        }
    }
    node.fence.lease_lost();
    match etcd.revoke(lease).await {
        Ok(()) => info!(address = %advertise, "gave up the etcd lease"),
        Err(e) => warn!(error = %e, "could not revoke the etcd lease; it lapses by itself"),
    }
}

/// One keep-alive round trip: when it was sent and the TTL granted (0:
/// the lease is gone).
async fn renew(
    etcd: &Etcd,
    keepalive: &mut Option<crate::etcd::client::KeepAlive>,
    lease: i64,
) -> Result<(Duration, u64), crate::etcd::EtcdError> {
    let sent = crate::etcd::lease_clock();
    if keepalive.is_none() {
        *keepalive = Some(etcd.keep_alive(lease).await?);
    }
    let Some(k) = keepalive.as_mut() else {
        return Err(crate::etcd::EtcdError::Unavailable(
            "no keep-alive stream".into(),
        ));
    };
    match k.renew().await {
        Ok(ttl) => Ok((sent, ttl)),
        Err(e) => {
            *keepalive = None;
            Err(e)
        }
    }
}

/// Moves the fence to the ring in `s` and queues the revision to be
/// published once what was admitted before it is done.
fn apply(
    node: &Node,
    s: &ClusterState,
    advertise: &str,
    publish: &mpsc::UnboundedSender<(u64, Option<Arc<Generation>>)>,
    said: &mut u64,
) {
    if !s.connected && s.revision == 0 {
        return;
    }
    let member = s.ring.contains(advertise);
    let old = node.fence.install(s.revision, member, s.min_applied());
    if old.is_some() {
        // Copies follow the ring: those of keys this node gains are taken
        // over in the background, or on the first read of the key.
        let ring = crate::ring::Ring::new(s.ring.members.iter().map(|m| m.address.clone()));
        node.cache.set_ring(ring, advertise);
    }
    node.ring_epoch
        .store(s.revision, std::sync::atomic::Ordering::Relaxed);
    // Said again when the node's key reads 0: it registered (again) and
    // has not said yet.
    let fresh = s.nodes.get(advertise) == Some(&0) && *said != s.revision;
    if old.is_some() || fresh {
        *said = s.revision;
        let _ = publish.send((s.revision, old));
    }
}

/// Publishes, in order, each revision this node has applied, once the
/// requests admitted under the one before have finished (or after
/// `drain_limit`: the answer window and [`DRAIN_SLACK`]).
async fn publish_applied(
    etcd: Etcd,
    advertise: String,
    mut rx: mpsc::UnboundedReceiver<(u64, Option<Arc<Generation>>)>,
    drain_limit: Duration,
    stop: CancellationToken,
) {
    let key = etcd.key(&format!("nodes/{advertise}"));
    let mut published = 0u64;
    loop {
        let (revision, old) = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if let Some(old) = old {
            let started = Instant::now();
            while old.inflight() > 0 && started.elapsed() < drain_limit {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if old.inflight() > 0 {
                warn!(
                    left = old.inflight(),
                    revision,
                    "requests admitted under the previous ring are still running; saying the new ring is applied anyway"
                );
            }
        }
        if revision < published {
            continue;
        }
        // Under the node's lease: the key must exist (a lapsed lease means
        // registering again, which writes it).
        let txn = crate::etcd::pb::TxnRequest {
            compare: vec![crate::etcd::pb::Compare {
                result: crate::etcd::pb::compare::CompareResult::Greater as i32,
                target: crate::etcd::pb::compare::CompareTarget::Version as i32,
                key: key.clone(),
                target_union: Some(crate::etcd::pb::compare::TargetUnion::Version(0)),
            }],
            success: vec![crate::etcd::pb::RequestOp {
                request: Some(crate::etcd::pb::request_op::Request::RequestPut(
                    crate::etcd::pb::PutRequest {
                        key: key.clone(),
                        value: revision.to_string().into_bytes(),
                        // Stays under the node's lease.
                        ignore_lease: true,
                        ..Default::default()
                    },
                )),
            }],
            failure: vec![],
        };
        // Until it sticks: the whole cluster's handoffs wait on it. A newer
        // revision queued meanwhile supersedes this one.
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match etcd.txn(txn.clone()).await {
                Ok(_) => {
                    published = revision;
                    break;
                }
                Err(e) => {
                    warn!(error = %e, revision, "etcd: could not say which ring this node has applied; trying again")
                }
            }
            if !rx.is_empty() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Leaves the ring record (a graceful stop).
async fn leave(etcd: &Etcd, advertise: &str) {
    match change_ring(etcd, None, |r| r.without_member(advertise, wall_micros())).await {
        Ok(Some(revision)) => info!(address = %advertise, revision, "left the ring in etcd"),
        Ok(None) => info!(address = %advertise, "not in the ring in etcd"),
        Err(e) => {
            warn!(error = %e, "could not leave the ring in etcd; the lease lapses when the node stops")
        }
    }
}
