//! The cache node: store, protocol server, execution.

pub mod store;
