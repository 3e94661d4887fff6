//! A node's limits and defaults, as the library takes them: built from the
//! command line's [`NodeConfig`], or by hand when embedding (tests).

use std::time::Duration;

pub use crate::config::WriteMode;
use crate::config::{NodeConfig, defaults};

use super::store::StoreConfig;

/// Limits and defaults a node applies to requests.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Store sizing.
    pub store: StoreConfig,
    /// TTL for puts that do not name one (`TTL_SECONDS`; 0 = never expire).
    pub default_ttl: u32,
    /// Longest key accepted.
    pub max_key: usize,
    /// Longest value accepted.
    pub max_value: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// What all connections together may hold of requests still arriving
    /// (`MAX_BUFFERED_BYTES`); shared by every connection.
    pub buffered: crate::budget::ByteBudget,
    /// How long a request that has started to arrive may take to finish
    /// (`FRAME_TIMEOUT_SECONDS`).
    pub frame_timeout: Duration,
    /// How long a new connection may take to send its hello (and finish
    /// its TLS handshake).
    pub hello_timeout: Duration,
    /// Requests one connection may have waiting on the tier
    /// (`MAX_INFLIGHT_PER_CONNECTION`).
    pub max_inflight: usize,
    /// TLS for the listener and for connections to routers.
    pub tls: Option<crate::tls::Tls>,
    /// When puts are acknowledged (`WRITE_MODE`).
    pub write_mode: WriteMode,
    /// Keys the write-behind queue may hold before writers get an error.
    pub queue_capacity: usize,
    /// Concurrent tier uploads (`UPLOAD_CONCURRENCY`).
    pub uploaders: usize,
    /// How long a graceful stop waits for the tier to take the queued
    /// writes (`FLUSH_TIMEOUT_SECONDS`); past it the node exits without them
    /// and says how many it could not write.
    pub flush_timeout: Duration,
    /// Concurrent misses of one key share one tier read. Off only to
    /// measure what that saves (`bench/stampede.rs`).
    pub coalesce_misses: bool,
    /// Extra copies of each write not yet durable, on the key's successors
    /// (`WRITE_REPLICAS`; async mode with a tier; 0 = none).
    pub write_replicas: usize,
}

impl NodeSettings {
    /// The largest frame a node accepts: a put of the largest key and value,
    /// plus room for the message envelope.
    pub fn max_frame(&self) -> usize {
        self.max_key + self.max_value + defaults::FRAME_ENVELOPE as usize
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            store: StoreConfig {
                max_items: defaults::LRU_SIZE as usize,
                max_bytes: None,
                shards: StoreConfig::default_shards(),
            },
            default_ttl: defaults::TTL_SECONDS,
            max_key: defaults::MAX_KEY_SIZE as usize,
            max_value: defaults::MAX_VALUE_SIZE as usize,
            max_connections: defaults::MAX_CONNECTIONS as usize,
            hello_timeout: Duration::from_secs(defaults::HELLO_TIMEOUT_SECONDS),
            buffered: crate::budget::ByteBudget::new(defaults::MAX_BUFFERED_BYTES),
            frame_timeout: Duration::from_secs(defaults::FRAME_TIMEOUT_SECONDS),
            max_inflight: defaults::MAX_INFLIGHT_PER_CONNECTION as usize,
            tls: None,
            write_mode: WriteMode::default(),
            queue_capacity: defaults::QUEUE_CAPACITY as usize,
            uploaders: defaults::UPLOAD_CONCURRENCY as usize,
            flush_timeout: Duration::from_secs(defaults::FLUSH_TIMEOUT_SECONDS),
            coalesce_misses: true,
            write_replicas: crate::config::defaults::WRITE_REPLICAS as usize,
        }
    }
}

impl From<&NodeConfig> for NodeSettings {
    fn from(c: &NodeConfig) -> Self {
        NodeSettings {
            store: StoreConfig {
                max_items: usize::try_from(c.lru_size).unwrap_or(usize::MAX),
                max_bytes: c.max_memory,
                shards: c
                    .shards
                    .map_or_else(StoreConfig::default_shards, |s| s as usize),
            },
            default_ttl: c.ttl_seconds,
            max_key: c.max_key_size as usize,
            max_value: c.max_value_size as usize,
            max_connections: c.max_connections as usize,
            hello_timeout: Duration::from_secs(c.hello_timeout_seconds),
            buffered: crate::budget::ByteBudget::new(c.max_buffered_bytes),
            frame_timeout: Duration::from_secs(c.frame_timeout_seconds),
            max_inflight: c.max_inflight_per_connection as usize,
            tls: None,
            write_mode: c.write_mode,
            queue_capacity: c.queue_capacity as usize,
            uploaders: c.upload_concurrency as usize,
            flush_timeout: Duration::from_secs(c.flush_timeout_seconds),
            coalesce_misses: true,
            write_replicas: c.write_replicas as usize,
        }
    }
}
