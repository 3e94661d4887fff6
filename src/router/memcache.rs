//! memcached clients on the router (the text protocol), on `MEMCACHE_ADDR`
//! when set. Each command goes down the same admission and forwarding path
//! as a binary request (`Router::call`): same owners, epochs, write modes
//! and tier, so a key set here is read by any other protocol. The commands
//! of one read run concurrently and are answered in order, with one write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, join_all};
use milena_protocol::{Body, Cond, Op, Status, decode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Router;
use super::request::Kind;
use crate::error::WireError;
use crate::memcache::{Command, Limits, Parser, StoreMode};
use crate::tls::Stream;

/// Commands taken from one read before their answers are written.
const MAX_BATCH: usize = 1024;
/// The longest command line (a `get` of many keys).
const MAX_LINE: usize = 64 * 1024;
/// memcached's bound between relative and absolute expiry times (30 days).
const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;
/// What opens a value stored with memcached flags other than 0, followed
/// by the flags (4 bytes, big-endian) and the client's bytes. Milena stores
/// bytes only; a value with flags is one a client serialized its own way
/// (pickled, compressed, an integer marker), so other protocols see the
/// envelope with it; a value without flags is stored as it came.
const FLAGS: &[u8; 8] = b"\0mcflags";
/// The memcached version announced: the text protocol as of 1.6.
const VERSION: &str = concat!("VERSION 1.6.0-milena-", env!("CARGO_PKG_VERSION"), "\r\n");

/// Serves memcached clients on `listener` (`MEMCACHE_ADDR`) until
/// `shutdown`, within the router's one `MAX_CONNECTIONS` and its TLS settings.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    shutdown: CancellationToken,
) {
    super::accept::serve_listener(
        listener,
        router,
        shutdown,
        |stream, router, shutdown| async move { serve_text(stream, &router, &shutdown).await },
    )
    .await;
}

/// What a command left the connection to do.
enum Step {
    Now(Vec<u8>),
    Later(BoxFuture<'static, Vec<u8>>),
}

/// Serves one memcached client until it quits, breaks the protocol, or
/// the router shuts down.
pub async fn serve_text(
    mut stream: Stream,
    router: &Arc<Router>,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let s = &router.settings;
    let limits = Limits {
        max_line: MAX_LINE,
        max_value: s.max_value,
    };
    let mut parser = Parser::default();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    // When the command at the head of `rbuf` started arriving: a client
    // that trickles one never finishes holds its connection only so long.
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut backlog = false;
    loop {
        if !backlog {
            let deadline = partial_since.map(|t| t + s.frame_timeout);
            let n = tokio::select! {
                r = stream.read_buf(&mut rbuf) => r?,
                _ = crate::budget::until(deadline) => {
                    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let e = WireError::FrameTimeout(s.frame_timeout.as_secs());
                    out.extend_from_slice(client_error(&e.to_string()).as_slice());
                    let _ = stream.write_all(&out).await;
                    return Ok(());
                }
                _ = shutdown.cancelled() => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
        }
        let mut steps = Vec::new();
        let mut close = false;
        backlog = false;
        loop {
            if steps.len() == MAX_BATCH {
                backlog = true;
                break;
            }
            match parser.next(&mut rbuf, &limits) {
                Ok(Some(Command::Quit)) => {
                    close = true;
                    break;
                }
                Ok(Some(cmd)) => steps.push(command(router, cmd)),
                Ok(None) => break,
                Err(e) => {
                    router.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    steps.push(Step::Now(client_error(&e.to_string())));
                    close = true;
                    break;
                }
            }
        }
        partial_since = match (rbuf.is_empty() || backlog, partial_since) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(tokio::time::Instant::now()),
        };
        let replies = join_all(steps.into_iter().map(|s| match s {
            Step::Now(r) => futures_util::future::ready(r).boxed(),
            Step::Later(f) => f,
        }))
        .await;
        for r in &replies {
            out.extend_from_slice(r);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            if out.capacity() > 1024 * 1024 {
                out = Vec::with_capacity(16 * 1024);
            }
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

fn line(s: &str) -> Vec<u8> {
    format!("{s}\r\n").into_bytes()
}

/// One line, whatever the message holds (no line breaks inside).
fn one_line(m: &str) -> String {
    m.replace(['\r', '\n'], " ")
}

fn client_error(m: &str) -> Vec<u8> {
    line(&format!("CLIENT_ERROR {}", one_line(m)))
}

fn server_error(m: &str) -> Vec<u8> {
    line(&format!("SERVER_ERROR {}", one_line(m)))
}

/// A router or node error as memcached clients read errors: what the
/// client sent wrong is `CLIENT_ERROR`, the rest `SERVER_ERROR`.
fn error_reply(status: Status, message: &str) -> Vec<u8> {
    match status {
        Status::TooLarge if message.contains("MAX_KEY_SIZE") => {
            client_error("bad command line format")
        }
        Status::TooLarge => server_error("object too large for cache"),
        Status::BadRequest => client_error(message),
        _ => server_error(message),
    }
}

/// Executes one command (or starts it).
fn command(router: &Arc<Router>, cmd: Command) -> Step {
    let r = router.clone();
    match cmd {
        Command::Get { keys, cas } => Step::Later(get_many(r, keys, cas).boxed()),
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            data,
            noreply,
        } => {
            let unsupported = match mode {
                StoreMode::Append => Some("append"),
                StoreMode::Prepend => Some("prepend"),
                StoreMode::Cas => Some("cas"),
                _ => None,
            };
            if let Some(name) = unsupported {
                return quiet(
                    noreply,
                    client_error(&format!("{name} is not supported by Milena (yet)")),
                );
            }
            // Flags other than 0 travel in front of the value (see `FLAGS`).
            let data = match flags {
                0 => data,
                f => {
                    let mut v = Vec::with_capacity(FLAGS.len() + 4 + data.len());
                    v.extend_from_slice(FLAGS);
                    v.extend_from_slice(&f.to_be_bytes());
                    v.extend_from_slice(&data);
                    Bytes::from(v)
                }
            };
            let step = async move {
                match expiry(exptime) {
                    Expiry::Past => expire_now(&r, mode, &key).await,
                    Expiry::Ttl(ttl) => store(&r, mode, &key, &data, ttl).await,
                }
            };
            later(noreply, step.boxed())
        }
        Command::Delete { key, noreply } => later(
            noreply,
            async move {
                match call(&r, Kind::Delete, &key, None, Op::Delete { key: &key }).await {
                    Ok((Status::Ok, _)) => line("DELETED"),
                    Ok(_) => line("NOT_FOUND"),
                    Err(e) => e,
                }
            }
            .boxed(),
        ),
        Command::Touch {
            key,
            exptime,
            noreply,
        } => later(
            noreply,
            async move {
                let ttl = match expiry(exptime) {
                    Expiry::Ttl(ttl) => ttl,
                    // Expired at once: as good as deleted.
                    Expiry::Past => {
                        return match call(&r, Kind::Delete, &key, None, Op::Delete { key: &key })
                            .await
                        {
                            Ok((Status::Ok, _)) => line("TOUCHED"),
                            Ok(_) => line("NOT_FOUND"),
                            Err(e) => e,
                        };
                    }
                };
                match put_if(&r, Cond::Touch, &key, b"", ttl).await {
                    Ok(true) => line("TOUCHED"),
                    Ok(false) => line("NOT_FOUND"),
                    Err(e) => e,
                }
            }
            .boxed(),
        ),
        Command::Arith { incr, noreply, .. } => quiet(
            noreply,
            client_error(&format!(
                "{} is not supported by Milena: values are not changed in place",
                if incr { "incr" } else { "decr" }
            )),
        ),
        Command::Stats { group: None } => Step::Later(stats(r).boxed()),
        // No slabs or items to describe: an empty answer.
        Command::Stats { group: Some(_) } => Step::Now(line("END")),
        Command::Version => Step::Now(VERSION.as_bytes().to_vec()),
        Command::Verbosity { noreply } => quiet(noreply, line("OK")),
        Command::FlushAll { noreply } => quiet(
            noreply,
            server_error("flush_all is not supported by Milena: the data lives on in the tier"),
        ),
        Command::MetaNoop => Step::Now(line("MN")),
        Command::TooLarge { noreply } => quiet(noreply, server_error("object too large for cache")),
        Command::Invalid(m) => Step::Now(client_error(m)),
        Command::Unknown => Step::Now(line("ERROR")),
        // Handled by the connection loop.
        Command::Quit => Step::Now(Vec::new()),
    }
}

/// An answer now, unless the client asked for none.
fn quiet(noreply: bool, reply: Vec<u8>) -> Step {
    Step::Now(if noreply { Vec::new() } else { reply })
}

/// An answer later, dropped if the client asked for none (the command
/// still runs to its end before the next batch is read).
fn later(noreply: bool, f: BoxFuture<'static, Vec<u8>>) -> Step {
    if !noreply {
        return Step::Later(f);
    }
    Step::Later(
        async move {
            f.await;
            Vec::new()
        }
        .boxed(),
    )
}

/// When a stored item expires, as memcached reads `exptime`.
enum Expiry {
    /// Seconds to live: `None` for 0 (the nodes' `TTL_SECONDS`, as a Redis
    /// `SET` without `EX` does), else at least one second.
    Ttl(Option<u32>),
    /// Negative, or an absolute time already past: gone at once.
    Past,
}

fn expiry(exptime: i64) -> Expiry {
    if exptime == 0 {
        return Expiry::Ttl(None);
    }
    let secs = if exptime > RELATIVE_EXPTIME_MAX {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        exptime - now
    } else {
        exptime
    };
    if secs <= 0 {
        return Expiry::Past;
    }
    Expiry::Ttl(Some(u32::try_from(secs).unwrap_or(u32::MAX)))
}

/// Calls the router; the answer's status and value, or the error's reply.
async fn call(
    r: &Arc<Router>,
    kind: Kind,
    key: &[u8],
    value: Option<&[u8]>,
    op: Op<'_>,
) -> Result<(Status, Option<Bytes>), Vec<u8>> {
    let frame = r
        .call(kind, key, value, op)
        .await
        .map_err(|e| error_reply(e.status(), &e.to_string()))?;
    let answer = decode_response(&frame).map_err(|e| server_error(&format!("bad answer: {e}")))?;
    match (answer.status, answer.body) {
        (s @ (Status::Ok | Status::NotFound | Status::NotStored), Body::Value(v)) => {
            Ok((s, Some(frame.slice_ref(v))))
        }
        (s @ (Status::Ok | Status::NotFound | Status::NotStored), _) => Ok((s, None)),
        (s, Body::Message(m)) => Err(error_reply(s, m)),
        (s, _) => Err(error_reply(s, s.as_str())),
    }
}

async fn put_if(
    r: &Arc<Router>,
    cond: Cond,
    key: &[u8],
    value: &[u8],
    ttl: Option<u32>,
) -> Result<bool, Vec<u8>> {
    let op = Op::PutIf {
        cond,
        key,
        value,
        ttl,
    };
    let (status, _) = call(r, Kind::PutIf, key, Some(value), op).await?;
    Ok(status == Status::Ok)
}

async fn store(
    r: &Arc<Router>,
    mode: StoreMode,
    key: &[u8],
    value: &[u8],
    ttl: Option<u32>,
) -> Vec<u8> {
    let cond = match mode {
        StoreMode::Add => Cond::Absent,
        StoreMode::Replace => Cond::Present,
        _ => {
            let op = Op::Put { key, value, ttl };
            return match call(r, Kind::Put, key, Some(value), op).await {
                Ok(_) => line("STORED"),
                Err(e) => e,
            };
        }
    };
    match put_if(r, cond, key, value, ttl).await {
        Ok(true) => line("STORED"),
        Ok(false) => line("NOT_STORED"),
        Err(e) => e,
    }
}

/// A store whose item would expire at once: nothing is left of the key
/// (`set`, `replace` of an existing key), or nothing changes (`add`).
async fn expire_now(r: &Arc<Router>, mode: StoreMode, key: &[u8]) -> Vec<u8> {
    if mode == StoreMode::Add {
        return match call(r, Kind::Get, key, None, Op::Get { key }).await {
            Ok((Status::Ok, _)) => line("NOT_STORED"),
            Ok(_) => line("STORED"),
            Err(e) => e,
        };
    }
    match call(r, Kind::Delete, key, None, Op::Delete { key }).await {
        Ok((Status::NotFound, _)) if mode == StoreMode::Replace => line("NOT_STORED"),
        Ok(_) => line("STORED"),
        Err(e) => e,
    }
}

/// `get`/`gets`: every key asked at once, answered in order; one error
/// answers the whole command.
async fn get_many(r: Arc<Router>, keys: Vec<Bytes>, cas: bool) -> Vec<u8> {
    let found = join_all(
        keys.iter()
            .map(|key| call(&r, Kind::Get, key, None, Op::Get { key })),
    )
    .await;
    let mut out = Vec::new();
    for (key, answer) in keys.iter().zip(found) {
        match answer {
            Ok((Status::Ok, Some(stored))) => {
                let (flags, v) = unwrap_flags(&stored);
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                match cas {
                    // No cas: a hash of the value stands for its version.
                    true => out.extend_from_slice(
                        format!(
                            " {flags} {} {}\r\n",
                            v.len(),
                            crate::ring::key_hash(&stored)
                        )
                        .as_bytes(),
                    ),
                    false => out.extend_from_slice(format!(" {flags} {}\r\n", v.len()).as_bytes()),
                }
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    out.extend_from_slice(b"END\r\n");
    out
}

/// A stored value's memcached flags and the client's bytes.
fn unwrap_flags(stored: &[u8]) -> (u32, &[u8]) {
    match stored.strip_prefix(&FLAGS[..]) {
        Some(rest) if rest.len() >= 4 => {
            let mut f = [0u8; 4];
            f.copy_from_slice(&rest[..4]);
            (u32::from_be_bytes(f), &rest[4..])
        }
        _ => (0, stored),
    }
}

/// `stats`: memcached's general statistics from Milena's counters.
async fn stats(r: Arc<Router>) -> Vec<u8> {
    let counters = super::cluster_stats::counters(&r).await;
    let get = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut s = String::new();
    let mut stat = |name: &str, value: String| s.push_str(&format!("STAT {name} {value}\r\n"));
    stat("pid", std::process::id().to_string());
    stat("time", now.to_string());
    stat(
        "version",
        format!("1.6.0-milena-{}", env!("CARGO_PKG_VERSION")),
    );
    stat("curr_connections", get("connections").to_string());
    stat("total_connections", get("connections_total").to_string());
    stat(
        "rejected_connections",
        get("connections_refused").to_string(),
    );
    stat("get_hits", get("nodes_hits").to_string());
    stat("get_misses", get("nodes_misses").to_string());
    stat("curr_items", get("nodes_items").to_string());
    stat("bytes", get("nodes_bytes").to_string());
    stat("evictions", get("nodes_evictions").to_string());
    for (name, value) in &counters {
        stat(&format!("milena_{name}"), value.to_string());
    }
    s.push_str("END\r\n");
    s.into_bytes()
}
