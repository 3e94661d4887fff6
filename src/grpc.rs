//! The gRPC contract, generated at build time from `protocol/milena.proto`.
//!
//! Re-exports what the operations guide's snippets use: `RouterClient`,
//! `LeaveRequest` and the other messages, `RouterServer`, and tonic's
//! `Server` and `Channel`.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("milena");

pub use router_client::RouterClient;
pub use router_server::RouterServer;
pub use tonic::transport::{Channel, Server};
