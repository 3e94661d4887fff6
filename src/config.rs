//! Configuration: every setting is a flag with an environment variable of
//! the same meaning, documented in `--help`, and its default in
//! [`defaults`], the one place the library's settings take them from too.

use std::net::SocketAddr;

use clap::Parser;

/// Every setting's default, shared by the flags below and by the library's
/// `NodeSettings`/`RouterSettings`, so embedding and the binaries agree.
pub mod defaults {
    use std::time::Duration;

    /// `LRU_SIZE`.
    pub const LRU_SIZE: u64 = 100_000;
    /// `TTL_SECONDS`.
    pub const TTL_SECONDS: u32 = 3600;
    /// `MAX_KEY_SIZE`: memcached's limit.
    pub const MAX_KEY_SIZE: u64 = 250;
    /// `MAX_VALUE_SIZE` (16 MiB).
    pub const MAX_VALUE_SIZE: u64 = 16 * 1024 * 1024;
    /// `MAX_CONNECTIONS`.
    pub const MAX_CONNECTIONS: u64 = 10_000;
    /// `HELLO_TIMEOUT_SECONDS`.
    pub const HELLO_TIMEOUT_SECONDS: u64 = 10;
    /// `QUEUE_CAPACITY`.
    pub const QUEUE_CAPACITY: u64 = 100_000;
    /// `UPLOAD_CONCURRENCY`.
    pub const UPLOAD_CONCURRENCY: u64 = 64;
    /// `FLUSH_TIMEOUT_SECONDS`.
    pub const FLUSH_TIMEOUT_SECONDS: u64 = 30;
    /// `HEARTBEAT_INTERVAL_MS`.
    pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;
    /// `HEARTBEAT_TIMEOUT_MS`: three missed heartbeats at the nodes' default interval.
    pub const HEARTBEAT_TIMEOUT_MS: u64 = 3000;
    /// `NODE_CONNECTIONS`.
    pub const NODE_CONNECTIONS: u64 = 2;
    /// `MAX_INFLIGHT_PER_CONNECTION`.
    pub const MAX_INFLIGHT_PER_CONNECTION: u64 = 1024;
    /// `HANDOFF_WINDOW_SECONDS`: long enough for a previous owner's
    /// write-behind queue to drain, unless the tier is down for longer.
    pub const HANDOFF_WINDOW_SECONDS: u64 = 60;
    /// How long a router keeps routing again a request that nodes refuse
    /// as routed under another ring (etcd membership) before answering
    /// "unavailable": a ring change settles within a watch delay and the
    /// time the losing node takes to finish what it admitted.
    pub const RING_PATIENCE: Duration = Duration::from_secs(3);
    /// `WRITE_REPLICAS`: one extra copy of every write not yet durable.
    pub const WRITE_REPLICAS: u64 = 1;
    /// `ETCD_LEASE_SECONDS`: the heartbeat timeout's role with etcd.
    pub const ETCD_LEASE_SECONDS: u64 = 3;
    /// `NODE_TIMEOUT_MS`.
    pub const NODE_TIMEOUT_MS: u64 = 5000;
    /// `MAX_BUFFERED_BYTES`: what all connections together may hold of
    /// requests still arriving (256 MiB: sixteen of the largest puts).
    pub const MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;
    /// `FRAME_TIMEOUT_SECONDS`: how long a request that has started to
    /// arrive may take to finish (a 16 MiB put over a 10 Mbit/s link takes
    /// 13 s).
    pub const FRAME_TIMEOUT_SECONDS: u64 = 30;
    /// An HTTP connection to the router with no request under way for this
    /// long is closed: gRPC clients keep theirs busy or reconnect, and a
    /// peer that sends only a preface must not hold a connection slot.
    pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Room in a frame beside the largest key and value, for the message
    /// envelope (ids, epochs, a previous owner's address).
    pub const FRAME_ENVELOPE: u64 = 1024;
    /// How long a router waits to connect to a node (and finish the hello)
    /// before counting the node as down: nodes sit on the same network, so
    /// a second is long.
    pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
}

/// When a node acknowledges a put (`WRITE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WriteMode {
    /// At once; the tier write follows in the background.
    #[default]
    Async,
    /// Once the tier has it.
    Sync,
}

pub use crate::logging::LogFormat;

/// `milena-cache` settings.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "milena-cache",
    version,
    about = "Milena cache node: a sharded in-memory LRU with TTL, served over Milena's binary protocol"
)]
pub struct NodeConfig {
    /// Address to serve the binary protocol on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50051", value_parser = parse_listen_addr)]
    pub listen_addr: SocketAddr,

    /// Address for Redis clients straight to this node (RESP2/RESP3, single-node use and benchmarks), e.g. 0.0.0.0:6380; off when unset.
    #[arg(long, env = "REDIS_ADDR", value_parser = parse_listen_addr)]
    pub redis_addr: Option<SocketAddr>,

    /// Router URL(s) to join, comma-separated (e.g. http://localhost:50050).
    #[arg(long, env = "ROUTER_ADDR", value_delimiter = ',')]
    pub router_addr: Vec<String>,

    /// URL this node registers with the router (default: LISTEN_ADDR with the host name for 0.0.0.0).
    #[arg(long, env = "ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Most entries held in memory.
    #[arg(long, env = "LRU_SIZE", default_value_t = defaults::LRU_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
    pub lru_size: u64,

    /// Most bytes held in memory (keys + values + 64 B per entry); accepts 512MiB, 2GiB, 1000000.
    #[arg(long, env = "MAX_MEMORY", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,

    /// Default time to live of an entry, in seconds (0 = entries never expire).
    #[arg(long, env = "TTL_SECONDS", default_value_t = defaults::TTL_SECONDS)]
    pub ttl_seconds: u32,

    /// Port of the Prometheus /metrics endpoint.
    #[arg(long, env = "METRICS_PORT")]
    pub metrics_port: Option<u16>,

    /// AWS region of the S3 bucket.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// S3 bucket that backs the cache (wins over DATA_DIR when both are set).
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Endpoint of an S3-compatible store (MinIO, Ceph, R2), e.g. http://minio:9000; uses path-style addressing.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Prefix of every object name in the bucket, e.g. "milena" (default: none).
    #[arg(long, env = "S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// Log level or filter: error, warn, info, debug, trace, or e.g. "milena=debug,info".
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: text (human-readable) or json (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Lock stripes in the store (power of two; default 16 per core).
    #[arg(long, env = "SHARDS", value_parser = parse_shards)]
    pub shards: Option<u64>,

    /// Longest key accepted, in bytes.
    #[arg(long, env = "MAX_KEY_SIZE", default_value_t = defaults::MAX_KEY_SIZE, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_key_size: u64,

    /// Longest value accepted; accepts 1MiB, 16MiB, 1000000.
    #[arg(long, env = "MAX_VALUE_SIZE", default_value = "16MiB", value_parser = parse_value_size)]
    pub max_value_size: u64,

    /// Most simultaneous client connections; more are refused with an error.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds a new connection has to send its hello.
    #[arg(long, env = "HELLO_TIMEOUT_SECONDS", default_value_t = defaults::HELLO_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hello_timeout_seconds: u64,

    /// Bytes all connections together may hold of requests still arriving (large frames, gRPC bodies); beyond it, reads wait. Accepts 256MiB, 1GiB.
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_buffered_bytes: u64,

    /// Seconds a request that has started to arrive may take to finish before the connection is closed.
    #[arg(long, env = "FRAME_TIMEOUT_SECONDS", default_value_t = defaults::FRAME_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub frame_timeout_seconds: u64,

    /// Requests one connection may have waiting on the tier (misses, sync puts) before the node stops reading from it.
    #[arg(long, env = "MAX_INFLIGHT_PER_CONNECTION", default_value_t = defaults::MAX_INFLIGHT_PER_CONNECTION, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_inflight_per_connection: u64,

    /// Shared secret presented to routers when joining, leaving and heartbeating.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub cluster_token: Option<crate::error::Secret>,

    /// TLS settings.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Membership in etcd (several routers).
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Local directory holding every entry durably (the tier when no S3 bucket is set).
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// async: acknowledge puts at once and write to the tier behind; sync: once the tier has them.
    #[arg(long, env = "WRITE_MODE", value_enum, default_value_t = WriteMode::Async)]
    pub write_mode: WriteMode,

    /// Async mode: extra copies of each write not yet in the tier, held by the key's successors (acknowledged once they have it) so losing a node loses no acknowledged write; 0 = none.
    #[arg(long, env = "WRITE_REPLICAS", default_value_t = defaults::WRITE_REPLICAS, value_parser = clap::value_parser!(u64).range(0..=3))]
    pub write_replicas: u64,

    /// Keys the write-behind queue may hold; beyond it puts get an error.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = defaults::QUEUE_CAPACITY, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub queue_capacity: u64,

    /// Tier uploads in flight at once (S3 takes thousands; each upload is a HEAD and a PUT).
    #[arg(long, env = "UPLOAD_CONCURRENCY", default_value_t = defaults::UPLOAD_CONCURRENCY, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub upload_concurrency: u64,

    /// Seconds a graceful stop waits for the tier to take the queued writes before exiting without them.
    #[arg(long, env = "FLUSH_TIMEOUT_SECONDS", default_value_t = defaults::FLUSH_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub flush_timeout_seconds: u64,

    /// Milliseconds between heartbeats to each router.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = defaults::HEARTBEAT_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_interval_ms: u64,
}

/// `milena-router` settings.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "milena-router",
    version,
    about = "Milena router: consistent hashing of keys to cache nodes, membership, rate limiting; binary protocol and HTTP health on one port"
)]
pub struct RouterConfig {
    /// Address for clients and nodes (binary protocol and HTTP on one port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50050", value_parser = parse_listen_addr)]
    pub listen_addr: SocketAddr,

    /// Extra address for Redis clients (RESP2, RESP3 after HELLO 3), e.g. 0.0.0.0:6379; Redis clients are also served on LISTEN_ADDR.
    #[arg(long, env = "REDIS_ADDR", value_parser = parse_listen_addr)]
    pub redis_addr: Option<SocketAddr>,

    /// Address for memcached clients (text protocol), e.g. 0.0.0.0:11211; off when unset.
    #[arg(long, env = "MEMCACHE_ADDR", value_parser = parse_listen_addr)]
    pub memcache_addr: Option<SocketAddr>,

    /// Requests per second admitted across all clients (0 = unlimited); excess gets "rate limited".
    #[arg(long, env = "RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Log level or filter: error, warn, info, debug, trace, or e.g. "milena=debug,info".
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: text (human-readable) or json (one object per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A node whose last heartbeat is older than this (milliseconds) is ejected.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_MS", default_value_t = defaults::HEARTBEAT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_timeout_ms: u64,

    /// Persistent connections kept to each node.
    #[arg(long, env = "NODE_CONNECTIONS", default_value_t = defaults::NODE_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub node_connections: u64,

    /// Requests one client connection may have in flight before the router stops reading from it.
    #[arg(long, env = "MAX_INFLIGHT_PER_CONNECTION", default_value_t = defaults::MAX_INFLIGHT_PER_CONNECTION, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_inflight_per_connection: u64,

    /// Most simultaneous client connections; more are refused with an error.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Seconds a new connection has to send its hello.
    #[arg(long, env = "HELLO_TIMEOUT_SECONDS", default_value_t = defaults::HELLO_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hello_timeout_seconds: u64,

    /// Bytes all connections together may hold of requests still arriving (large frames, gRPC bodies); beyond it, reads wait. Accepts 256MiB, 1GiB.
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_buffered_bytes: u64,

    /// Seconds a request that has started to arrive may take to finish before the connection is closed.
    #[arg(long, env = "FRAME_TIMEOUT_SECONDS", default_value_t = defaults::FRAME_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub frame_timeout_seconds: u64,

    /// Seconds after a ring change during which a key's new owner asks its previous owner for writes not yet in S3 (0 = never ask).
    #[arg(long, env = "HANDOFF_WINDOW_SECONDS", default_value_t = defaults::HANDOFF_WINDOW_SECONDS, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub handoff_window_seconds: u64,

    /// A node that leaves a request unanswered this long (milliseconds) is ejected.
    #[arg(long, env = "NODE_TIMEOUT_MS", default_value_t = defaults::NODE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..))]
    pub node_timeout_ms: u64,

    /// Longest key forwarded, in bytes (keep equal to the nodes').
    #[arg(long, env = "MAX_KEY_SIZE", default_value_t = defaults::MAX_KEY_SIZE, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_key_size: u64,

    /// Longest value forwarded (keep equal to the nodes'); accepts 1MiB, 16MiB.
    #[arg(long, env = "MAX_VALUE_SIZE", default_value = "16MiB", value_parser = parse_value_size)]
    pub max_value_size: u64,

    /// TLS settings.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Membership in etcd (several routers).
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Shared secret nodes must present to join, leave or heartbeat.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub cluster_token: Option<crate::error::Secret>,

    /// Shared secret clients must present for data operations: in the binary hello, as gRPC `authorization: Bearer` metadata, or with Redis AUTH.
    #[arg(long, env = "CLIENT_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub client_token: Option<crate::error::Secret>,
}

/// Largest `MAX_VALUE_SIZE`: frames carry a 32-bit length.
pub const VALUE_SIZE_LIMIT: u64 = 1 << 30;

/// Parses `MAX_VALUE_SIZE` (at most 1 GiB).
fn parse_value_size(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if n > VALUE_SIZE_LIMIT {
        return Err(format!("'{s}' is more than 1GiB"));
    }
    Ok(n)
}

/// Parses `SHARDS`: a power of two, so a key's stripe is a mask of its
/// hash; anything else is refused rather than silently rounded.
fn parse_shards(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(1..=65536).contains(&n) || !n.is_power_of_two() {
        return Err(format!(
            "'{s}' is not a power of two between 1 and 65536 (e.g. 16, 32, 64)"
        ));
    }
    Ok(n)
}

/// Wraps a token so that it never shows in debug output.
fn parse_secret(s: &str) -> Result<crate::error::Secret, String> {
    if s.is_empty() {
        return Err("the token must not be empty".into());
    }
    Ok(crate::error::Secret::new(s))
}

/// Parses `host:port` for a listener, resolving names such as `localhost`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    crate::net::resolve(s)
}

/// Parses a byte size: a plain number, or one with a K/M/G/T suffix
/// (KiB/MiB/... and KB/MB/... are all read as powers of 1024, like memcached's -m).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte size (e.g. 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}' (use KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Renders a configuration error as one line that names the variable, for
/// binaries to print before exiting.
pub fn one_line_error(binary: &str, err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid configuration");
    let first = first.trim_start_matches("error: ");
    format!("{binary}: invalid configuration: {first}")
}

/// Membership in etcd, shared by the router and the node.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EtcdArgs {
    /// etcd v3 endpoints, comma-separated (e.g. http://etcd:2379): membership lives there and any number of routers may run.
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix of this cluster's membership in etcd, so several clusters can share one etcd.
    #[arg(long, env = "ETCD_PREFIX", default_value = "/milena")]
    pub etcd_prefix: String,

    /// etcd user name (etcd authentication; needs ETCD_PASSWORD).
    #[arg(long, env = "ETCD_USERNAME", requires = "etcd_password")]
    pub etcd_username: Option<String>,

    /// etcd password for ETCD_USERNAME.
    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true, value_parser = parse_secret, requires = "etcd_username")]
    pub etcd_password: Option<crate::error::Secret>,

    /// PEM CA certificate(s) that etcd's certificate must chain to (needed for https endpoints).
    #[arg(long, env = "ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,

    /// PEM client certificate presented to etcd (needs ETCD_KEY).
    #[arg(long, env = "ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,

    /// PEM private key for ETCD_CERT.
    #[arg(long, env = "ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,

    /// Seconds a member's etcd lease lives without renewal: a node that stops renewing leaves the ring this long after (etcd's minimum is 2).
    #[arg(long, env = "ETCD_LEASE_SECONDS", default_value_t = defaults::ETCD_LEASE_SECONDS, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub etcd_lease_seconds: u64,
}

impl EtcdArgs {
    /// Whether membership lives in etcd.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }
}

/// TLS settings shared by the router and the node.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain for this process's TLS listener (and its client certificate).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for TLS_CERT.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// PEM CA certificate(s) that peers' certificates must chain to.
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Require client certificates signed by TLS_CA (mutual TLS).
    #[arg(long, env = "TLS_CLIENT_AUTH", default_value_t = false)]
    pub tls_client_auth: bool,
}

impl TlsArgs {
    /// The process's TLS configuration, if `TLS_CERT` is set.
    pub fn load(&self) -> Result<Option<crate::tls::Tls>, crate::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::Tls::from_files(cert, key, self.tls_ca.as_deref(), self.tls_client_auth)
                    .map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert!(parse_bytes("abc").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn the_value_size_default_is_the_library_default() {
        assert_eq!(parse_bytes("16MiB"), Ok(defaults::MAX_VALUE_SIZE));
        assert_eq!(parse_bytes("256MiB"), Ok(defaults::MAX_BUFFERED_BYTES));
    }

    #[test]
    fn shards_must_be_a_power_of_two() {
        let err = NodeConfig::try_parse_from(["milena-cache", "--shards", "3"])
            .expect_err("3 is not a power of two");
        let line = one_line_error("milena-cache", &err);
        assert!(
            line.contains("SHARDS") && line.contains("power of two"),
            "{line}"
        );
        let ok = NodeConfig::try_parse_from(["milena-cache", "--shards", "32"]).expect("32");
        assert_eq!(ok.shards, Some(32));
    }

    #[test]
    fn write_mode_lists_its_values() {
        let err = NodeConfig::try_parse_from(["milena-cache", "--write-mode", "later"])
            .expect_err("not a mode");
        let line = one_line_error("milena-cache", &err);
        assert!(line.contains("WRITE_MODE"), "{line}");
        let text = err.to_string();
        assert!(text.contains("async") && text.contains("sync"), "{text}");
    }

    #[test]
    fn flags_are_their_variables_in_kebab_case() {
        use clap::CommandFactory;
        for cmd in [NodeConfig::command(), RouterConfig::command()] {
            for arg in cmd.get_arguments() {
                let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
                    continue;
                };
                let env = env.to_string_lossy().to_ascii_lowercase().replace('_', "-");
                assert_eq!(long, env, "{} flag --{long}", cmd.get_name());
            }
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = NodeConfig::try_parse_from(["milena-cache", "--lru-size", "abc"])
            .expect_err("abc is not a size");
        let line = one_line_error("milena-cache", &err);
        assert!(line.contains("LRU_SIZE"), "{line}");
        assert!(!line.contains('\n'));
    }
}
