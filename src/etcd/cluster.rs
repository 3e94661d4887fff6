//! A live view of the cluster's layout in etcd (the ring record and the
//! live nodes with the revision each has applied), and the ring changes
//! every participant may make: a join, a leave, and the removal of a
//! member whose lease has lapsed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::client::{Etcd, EtcdError, revision};
use super::pb;
use super::record::Record;
use crate::backoff::Backoff;

/// What a participant knows of the cluster in etcd.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// The ring (members with revisions filled in).
    pub ring: Arc<Record>,
    /// The ring's revision: the `mod_revision` of its record (0: no ring).
    pub revision: u64,
    /// Live nodes (those whose lease holds their key) and the ring
    /// revision each has applied.
    pub nodes: Arc<BTreeMap<String, u64>>,
    /// Whether the watch is following etcd right now.
    pub connected: bool,
}

impl ClusterState {
    /// The lowest ring revision every live node has applied (0 if any has
    /// not said yet, or if no node is known: then nothing is settled).
    pub fn min_applied(&self) -> u64 {
        self.nodes.values().copied().min().unwrap_or(0)
    }
}

/// Follows `<prefix>/` in etcd until `shutdown`: the receiver always holds
/// the latest state. Reconnects by itself (with backoff) when etcd goes
/// away, keeping the last state meanwhile with `connected == false`.
/// Ring members whose node key is gone (a lapsed lease) are removed.
pub fn watch_cluster(etcd: Etcd, shutdown: CancellationToken) -> watch::Receiver<ClusterState> {
    let (tx, rx) = watch::channel(ClusterState::default());
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut was_up = true;
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = follow(&etcd, &tx, &mut backoff) => r,
            };
            if let Err(e) = r {
                tx.send_modify(|s| s.connected = false);
                if was_up {
                    warn!(error = %e, "etcd: lost the cluster's membership watch; routing on the last ring known until etcd is back");
                }
                was_up = false;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            if !was_up && tx.borrow().connected {
                was_up = true;
            }
        }
    });
    rx
}

/// Reads the layout, then applies its changes as they come.
async fn follow(
    etcd: &Etcd,
    tx: &watch::Sender<ClusterState>,
    backoff: &mut Backoff,
) -> Result<(), EtcdError> {
    let (key, end) = etcd.range_of("");
    let snap = etcd.range(key.clone(), end.clone()).await?;
    let start = revision(snap.header.as_ref());
    let mut ring = (Arc::new(Record::default()), 0u64);
    let mut nodes = BTreeMap::new();
    for kv in &snap.kvs {
        apply(etcd, kv, false, &mut ring, &mut nodes)?;
    }
    let was_connected = tx.borrow().connected;
    publish(tx, &ring, &nodes);
    if !was_connected {
        info!(
            revision = ring.1,
            members = ring.0.members.len(),
            "etcd: following the cluster's membership"
        );
    }
    backoff.reset();
    // Members already dealt with at a ring revision; only the current
    // revision's are kept.
    let mut reaped = HashSet::new();
    reap(etcd, &ring, &nodes, &mut reaped).await;
    let mut watch = etcd.watch(key, end, start + 1).await?;
    loop {
        let resp = watch.next().await?;
        if resp.canceled {
            return Err(EtcdError::Unavailable(format!(
                "the watch was cancelled ({}; compacted at {})",
                resp.cancel_reason, resp.compact_revision
            )));
        }
        if resp.events.is_empty() {
            continue;
        }
        for ev in &resp.events {
            let Some(kv) = &ev.kv else { continue };
            let deleted = ev.r#type == pb::event::EventType::Delete as i32;
            apply(etcd, kv, deleted, &mut ring, &mut nodes)?;
        }
        publish(tx, &ring, &nodes);
        reaped.retain(|(_, rev)| *rev == ring.1);
        reap(etcd, &ring, &nodes, &mut reaped).await;
    }
}

fn publish(
    tx: &watch::Sender<ClusterState>,
    ring: &(Arc<Record>, u64),
    nodes: &BTreeMap<String, u64>,
) {
    tx.send_replace(ClusterState {
        ring: ring.0.clone(),
        revision: ring.1,
        nodes: Arc::new(nodes.clone()),
        connected: true,
    });
}

/// Applies one key's state to the view.
fn apply(
    etcd: &Etcd,
    kv: &pb::KeyValue,
    deleted: bool,
    ring: &mut (Arc<Record>, u64),
    nodes: &mut BTreeMap<String, u64>,
) -> Result<(), EtcdError> {
    let Some(rest) = etcd.strip(&kv.key) else {
        return Ok(());
    };
    let rev = kv.mod_revision.max(0) as u64;
    if rest == "ring" {
        *ring = if deleted {
            (Arc::new(Record::default()), rev)
        } else {
            (
                Arc::new(Record::decode(&kv.value, rev).map_err(EtcdError::Record)?),
                rev,
            )
        };
    } else if let Some(address) = rest.strip_prefix("nodes/") {
        // A node key always lives under its node's lease; one without (put
        // by hand) would never lapse and hold every handoff back for ever.
        if deleted || kv.lease == 0 {
            nodes.remove(address);
        } else {
            // A node's value is the ring revision it has applied; anything
            // else counts as nothing applied yet.
            let applied = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            nodes.insert(address.to_string(), applied);
        }
    }
    Ok(())
}

/// Removes ring members whose node key is gone (its lease lapsed), once
/// per member and ring revision: every participant tries, the ring's
/// compare-and-swap lets one succeed.
async fn reap(
    etcd: &Etcd,
    ring: &(Arc<Record>, u64),
    nodes: &BTreeMap<String, u64>,
    tried: &mut HashSet<(String, u64)>,
) {
    let gone: Vec<String> = ring
        .0
        .members
        .iter()
        .filter(|m| !nodes.contains_key(&m.address))
        .map(|m| m.address.clone())
        .collect();
    for address in gone {
        if tried.contains(&(address.clone(), ring.1)) {
            continue;
        }
        let guard = etcd.key(&format!("nodes/{address}"));
        match change_ring(etcd, Some(guard), |r| {
            r.without_member(&address, wall_micros())
        })
        .await
        {
            Ok(Some(rev)) => {
                warn!(node = %address, revision = rev, "Leave: node's etcd lease lapsed; removed from the ring")
            }
            Ok(None) => {}
            Err(e) => {
                warn!(node = %address, error = %e, "etcd: could not remove a node whose lease lapsed")
            }
        }
    }
}

/// Compare-and-swaps the ring record with `change` (which returns `None`
/// when there is nothing to do) until it sticks; with `absent`, only while
/// that key does not exist. Returns the new ring revision, if changed.
pub async fn change_ring(
    etcd: &Etcd,
    absent: Option<Vec<u8>>,
    change: impl Fn(&Record) -> Option<Record>,
) -> Result<Option<u64>, EtcdError> {
    let ring_key = etcd.key("ring");
    for _ in 0..32 {
        let cur = etcd.range(ring_key.clone(), Vec::new()).await?;
        let (record, mod_rev) = match cur.kvs.first() {
            Some(kv) => {
                let rev = kv.mod_revision.max(0) as u64;
                (
                    Record::decode(&kv.value, rev).map_err(EtcdError::Record)?,
                    rev,
                )
            }
            None => (Record::default(), 0),
        };
        if let Some(key) = &absent {
            let r = etcd.range(key.clone(), Vec::new()).await?;
            if !r.kvs.is_empty() {
                return Ok(None);
            }
        }
        let Some(next) = change(&record) else {
            return Ok(None);
        };
        let mut compare = vec![if mod_rev == 0 {
            compare_version(ring_key.clone(), 0)
        } else {
            pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Mod as i32,
                key: ring_key.clone(),
                target_union: Some(pb::compare::TargetUnion::ModRevision(mod_rev as i64)),
            }
        }];
        if let Some(key) = &absent {
            compare.push(compare_version(key.clone(), 0));
        }
        let txn = pb::TxnRequest {
            compare,
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: ring_key.clone(),
                    value: next.encode(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let r = etcd.txn(txn).await?;
        if r.succeeded {
            return Ok(Some(revision(r.header.as_ref())));
        }
    }
    Err(EtcdError::Unavailable(
        "the ring kept changing under 32 attempts to change it".into(),
    ))
}

fn compare_version(key: Vec<u8>, version: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Version as i32,
        key,
        target_union: Some(pb::compare::TargetUnion::Version(version)),
    }
}

/// Wall-clock microseconds, recorded with ring changes for the handoff
/// window only (never to order anything).
pub fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
