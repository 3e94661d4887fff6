//! Membership in etcd (`ETCD_ENDPOINTS`): one ordered record of the ring
//! that any number of routers and nodes share.
//!
//! Layout under `ETCD_PREFIX` (default `/milena`):
//! - `<prefix>/ring`: the ring [`record::Record`] (JSON). Its etcd
//!   `mod_revision` is the ring's revision: every change is a
//!   compare-and-swap on it, so changes are totally ordered by etcd, never
//!   by clocks.
//! - `<prefix>/nodes/<address>`: one key per live node, under the node's
//!   lease; its value is the last ring revision the node has applied (and
//!   drained). A node whose lease lapses loses its key, and whoever sees a
//!   ring member without one removes it from the ring.
//!
//! [`client::Etcd`] speaks etcd's gRPC API from the messages in
//! `etcd.proto`; [`cluster`] keeps a live view of the layout above.

pub mod client;
pub mod cluster;
pub mod record;

/// etcd's messages and clients, generated from `src/etcd/etcd.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use client::{Etcd, EtcdError};
pub use cluster::{ClusterState, watch_cluster};
pub use record::Record;

/// How long after a router sends a fenced request its answer is trusted,
/// for a lease of `lease_seconds`: half the lease. A node stops serving
/// that long before its lease can lapse at etcd (see `node::fence` and
/// PROTOCOL.md, "Several routers"), so any answer within the window was
/// produced while no other node could serve the key.
pub fn answer_window(lease_seconds: u64) -> std::time::Duration {
    std::time::Duration::from_millis(lease_seconds * 1000 / 2)
}
