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

/// Time on the clock leases are measured with: CLOCK_BOOTTIME, which
/// (unlike the monotonic clock `Instant` uses) keeps counting while the
/// machine is suspended, as etcd's time does meanwhile; so a node resumed
/// from a suspend does not believe a lapsed lease still holds.
pub fn lease_clock() -> std::time::Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0 {
            return std::time::Duration::new(
                ts.tv_sec.max(0) as u64,
                ts.tv_nsec.clamp(0, 999_999_999) as u32,
            );
        }
    }
    // Elsewhere (or if the call fails): the monotonic clock.
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed()
}
