//! Milena: a distributed cache in front of S3.
//!
//! The library holds all the logic; the binaries in `src/bin/` only parse
//! configuration, bind sockets, install signal handlers and call `run`.
//! Layers depend downwards only: binaries → `node` → `client`/`net` →
//! `milena_protocol`.

pub mod client;
pub mod config;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod process;
pub mod ring;
pub mod router;
pub mod shutdown;
pub mod tls;

pub use milena_protocol as protocol;
