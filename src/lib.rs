//! Milena: a distributed cache in front of S3.
//!
//! The library holds all the logic; the binaries in `src/bin/` only parse
//! configuration, bind sockets, install signal handlers and call `run`.

pub mod node;
