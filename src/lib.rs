//! Milena: a distributed cache in front of S3.
//!
//! The library holds all the logic; the binaries in `src/bin/` only parse
//! configuration, bind sockets, install signal handlers and call `run`.
//! A tour of the layers, top down (arrows point down only; `node` and
//! `router` never import each other):
//!
//! - `router`: the router. Accepts clients on one port (binary protocol,
//!   gRPC gateway, Redis clients, HTTP health and metrics), keeps the ring, forwards each
//!   key to its owner. Its own `mod.rs` gives the tour of its rooms.
//! - `node`: the cache node. `server` (sockets) → `execute` (the one
//!   protocol ↔ cache match) → `cache` (memory, write-behind, read-through,
//!   handoff) → `store` (sharded LRU + TTL) and `tier` (S3, directory, none).
//! - `client`: the async client of the binary protocol, used by the CLI,
//!   the load tester, node membership and the router's stats fan-out.
//! - `grpc`: the gRPC contract generated from `protocol/milena.proto`
//!   (`RouterClient`, `RouterServer`, the messages).
//! - `resp`: the Redis protocol (RESP2, RESP3) parsed and encoded, free of
//!   I/O; the router's `redis` room executes its commands. `memcache`: the
//!   memcached text protocol parsed, executed by the router's `memcache` room.
//! - `ring`: rendezvous placement, pure functions shared by router and nodes.
//! - `etcd`: membership in etcd (`ETCD_ENDPOINTS`) for several routers: a
//!   small etcd v3 client, the ring record and a live view of it, shared by
//!   router and nodes.
//! - `net` (listeners, accept loop, URLs) and `tls` (rustls acceptors and
//!   connectors): sockets for everyone above.
//! - `error`: what a request can fail with, and the one place it becomes a
//!   wire status.
//! - `config` (every flag, variable and default), `process` (what a server
//!   binary's `main` does), `logging`, `metrics` (Prometheus plumbing),
//!   `shutdown` (signals to a cancellation token), `backoff` (jittered
//!   retries) and `budget` (the process-wide byte budget for requests
//!   still arriving).
//! - `milena_protocol` (re-exported as `protocol`): message types, codec and
//!   framing; below everything, and free of I/O.

pub mod backoff;
pub mod budget;
pub mod client;
pub mod config;
pub mod error;
pub mod etcd;
pub mod grpc;
pub mod logging;
pub mod memcache;
pub mod metrics;
pub mod net;
pub mod node;
pub mod process;
pub mod redis;
pub mod resp;
pub mod ring;
pub mod router;
pub mod shutdown;
pub mod tls;

pub use milena_protocol as protocol;
