//! Redis clients (RESP2, RESP3 after `HELLO 3`): the command set, one
//! connection's loop, and the error words Redis clients expect, over a
//! [`Backend`]: the router (each key forwarded to its owner, see
//! `router::redis`) or a node (its own cache, see `node::redis`). The
//! commands of one read run concurrently and are answered in order, with
//! one write. Parsing and encoding are `crate::resp`'s.

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt, join_all};
use milena_protocol::{Body, Cond, Op, Status, decode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::WireError;
use crate::resp::{Limits, Reply, parse};
use crate::tls::Stream;

/// A data operation's answer: a response body (without the length
/// prefix), or the router's or node's error.
pub type Answered = Result<Bytes, WireError>;

/// A data operation, started.
pub enum Answer {
    /// Answered at once (a node's memory hit).
    Now(Answered),
    /// Answered when this completes.
    Later(BoxFuture<'static, Answered>),
}

impl Answer {
    /// The answer as a future, whichever it is.
    fn future(self) -> BoxFuture<'static, Answered> {
        match self {
            Answer::Now(a) => futures_util::future::ready(a).boxed(),
            Answer::Later(f) => f,
        }
    }
}

/// Where a Redis connection's commands go.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Starts one data operation (`Get`, `Put`, `Delete`, `PutIf`).
    fn start(&self, op: Op<'_>) -> Answer;
    /// Counters for `INFO` and `DBSIZE`, named as the router's `stats`
    /// names them (`connections`, `nodes_items`, `nodes_hits`, ...).
    fn counters(&self) -> BoxFuture<'_, Vec<(String, u64)>>;
    /// Whether `password` (none: before any `AUTH`) allows data commands;
    /// `None` when no password is configured at all.
    fn password(&self, password: Option<&str>) -> Option<bool>;
    /// Limits on what one command may carry, and how long a partly sent
    /// one may take.
    fn limits(&self) -> (Limits, std::time::Duration);
    /// Counts a connection closed for breaking the protocol.
    fn protocol_error(&self);
}

/// Commands taken from one read before their answers are written.
const MAX_BATCH: usize = 1024;
/// The commands this front end knows (for `COMMAND COUNT`).
const COMMANDS: &[&str] = &[
    "GET", "SET", "SETEX", "EXPIRE", "PEXPIRE", "TTL", "PTTL", "DEL", "UNLINK", "EXISTS", "MGET",
    "MSET", "PING", "ECHO", "INFO", "DBSIZE", "HELLO", "CLIENT", "SELECT", "COMMAND", "QUIT",
    "AUTH",
];

/// What a command left the connection to do.
enum Step {
    Now(Reply),
    Later(BoxFuture<'static, Reply>),
    /// Answer, then close (`QUIT`, a protocol error).
    Close(Reply),
}

/// Per-connection state a client may set.
#[derive(Default)]
struct Session {
    name: Option<Bytes>,
    /// The client said `HELLO 3`: replies in RESP3.
    resp3: bool,
    /// Data commands allowed: no `CLIENT_TOKEN` is set, or `AUTH` gave it.
    authed: bool,
}

/// Serves one Redis client until it quits, sends something that is not
/// RESP, or the server shuts down.
pub async fn serve_resp<B: Backend>(
    mut stream: Stream,
    backend: &B,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (limits, frame_timeout) = backend.limits();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut session = Session {
        authed: backend.password(None).unwrap_or(true),
        ..Session::default()
    };
    // When the command at the head of `rbuf` started arriving: a client
    // that trickles one never finishes holds its connection only so long.
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut backlog = false;
    loop {
        if !backlog {
            let deadline = partial_since.map(|t| t + frame_timeout);
            let n = tokio::select! {
                r = stream.read_buf(&mut rbuf) => r?,
                _ = crate::budget::until(deadline) => {
                    backend.protocol_error();
                    let e = WireError::FrameTimeout(frame_timeout.as_secs());
                    Reply::err(e).encode(&mut out);
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
            match parse(&mut rbuf, &limits) {
                // Each reply in the protocol version in force once its
                // command ran (`HELLO 3` answers in RESP3).
                Ok(Some(args)) => match command(backend, &mut session, args) {
                    Step::Close(r) => {
                        steps.push((Step::Now(r), session.resp3));
                        close = true;
                        break;
                    }
                    step => steps.push((step, session.resp3)),
                },
                Ok(None) => break,
                Err(e) => {
                    backend.protocol_error();
                    steps.push((Step::Now(Reply::err(e)), session.resp3));
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
        if steps.iter().all(|(s, _)| !matches!(s, Step::Later(_))) {
            // All answered already (memory hits on a node): no futures.
            for (s, v3) in &steps {
                if let Step::Now(r) | Step::Close(r) = s {
                    r.encode_as(&mut out, *v3);
                }
            }
        } else {
            let resp3: Vec<bool> = steps.iter().map(|(_, v3)| *v3).collect();
            let replies = join_all(steps.into_iter().map(|(s, _)| match s {
                Step::Now(r) | Step::Close(r) => futures_util::future::ready(r).boxed(),
                Step::Later(f) => f,
            }))
            .await;
            for (r, v3) in replies.iter().zip(resp3) {
                r.encode_as(&mut out, v3);
            }
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

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Executes one command (or starts it).
fn command<B: Backend>(backend: &B, session: &mut Session, args: Vec<Bytes>) -> Step {
    // Upper-cased on the stack: no allocation per command.
    let mut upper = [0u8; 16];
    let name = match args[0].len() {
        n @ 1..=16 => {
            upper[..n].copy_from_slice(&args[0]);
            upper[..n].make_ascii_uppercase();
            std::str::from_utf8(&upper[..n]).unwrap_or("")
        }
        _ => "",
    };
    let argc = args.len();
    if !session.authed && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
        return Step::Now(Reply::Error("NOAUTH Authentication required.".into()));
    }
    let r = backend.clone();
    match name {
        "PING" => match argc {
            1 => Step::Now(Reply::Simple("PONG")),
            2 => Step::Now(Reply::Bulk(Some(args[1].clone()))),
            _ => Step::Now(arity(name)),
        },
        "ECHO" if argc == 2 => Step::Now(Reply::Bulk(Some(args[1].clone()))),
        "QUIT" => Step::Close(Reply::OK),
        "SELECT" if argc == 2 => Step::Now(if &args[1][..] == b"0" {
            Reply::OK
        } else {
            Reply::err("DB index is out of range")
        }),
        "AUTH" if argc == 2 || argc == 3 => Step::Now(auth(backend, session, &args[argc - 1])),
        "HELLO" => hello(backend, session, &args),
        "CLIENT" if argc >= 2 => client(session, &args),
        "COMMAND" => {
            let sub = args
                .get(1)
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase());
            Step::Now(match sub.as_deref() {
                Some("COUNT") => Reply::Int(COMMANDS.len() as i64),
                // Enough for redis-cli and client libraries that ask at
                // start-up: no command documentation or key specs.
                _ => Reply::Array(Vec::new()),
            })
        }
        "GET" if argc == 2 => single(&r, Op::Get { key: &args[1] }, |a| {
            reply(decode(a), Reply::Bulk)
        }),
        "SET" if argc >= 3 => set(&r, &args),
        "SETEX" if argc == 4 => {
            let Some(ttl) = seconds(&args[2]) else {
                return Step::Now(Reply::err("invalid expire time in 'setex' command"));
            };
            let op = Op::Put {
                key: &args[1],
                value: &args[3],
                ttl: Some(ttl),
            };
            single(&r, op, |a| reply(decode(a), |_| Reply::OK))
        }
        "EXPIRE" | "PEXPIRE" if argc == 3 => expire(&r, name, &args),
        "TTL" | "PTTL" if argc == 2 => {
            let millis = name == "PTTL";
            single(&r, Op::Ttl { key: &args[1] }, move |a| {
                reply(decode_ttl(a), |left| match left {
                    None => Reply::Int(-2),
                    Some(None) => Reply::Int(-1),
                    // Whole seconds rounded down: never more than was set.
                    Some(Some(ms)) if millis => Reply::Int(i64::try_from(ms).unwrap_or(i64::MAX)),
                    Some(Some(ms)) => Reply::Int(i64::try_from(ms / 1000).unwrap_or(i64::MAX)),
                })
            })
        }
        "DEL" | "UNLINK" if argc >= 2 => {
            let dels = every(&r, &args[1..], |key| Op::Delete { key });
            later(async move {
                let mut n = 0;
                for d in join_all(dels).await {
                    match decode(d) {
                        Ok(Some(_)) => n += 1,
                        Ok(None) => {}
                        Err(e) => return e,
                    }
                }
                Reply::Int(n)
            })
        }
        "EXISTS" if argc >= 2 => {
            let gets = every(&r, &args[1..], |key| Op::Get { key });
            later(async move {
                let mut n = 0;
                for g in join_all(gets).await {
                    match decode(g) {
                        Ok(Some(_)) => n += 1,
                        Ok(None) => {}
                        Err(e) => return e,
                    }
                }
                Reply::Int(n)
            })
        }
        "MGET" if argc >= 2 => {
            let gets = every(&r, &args[1..], |key| Op::Get { key });
            later(async move {
                let mut values = Vec::with_capacity(argc - 1);
                for g in join_all(gets).await {
                    match decode(g) {
                        Ok(v) => values.push(Reply::Bulk(v)),
                        // One error for the whole command, as a Redis
                        // Cluster client sees when a slot's node fails.
                        Err(e) => return e,
                    }
                }
                Reply::Array(values)
            })
        }
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            let puts: Vec<_> = args[1..]
                .chunks(2)
                .map(|kv| {
                    let op = Op::Put {
                        key: &kv[0],
                        value: &kv[1],
                        ttl: None,
                    };
                    r.start(op).future()
                })
                .collect();
            later(async move {
                for p in join_all(puts).await {
                    if let Err(e) = decode(p) {
                        return e;
                    }
                }
                Reply::OK
            })
        }
        "DBSIZE" if argc == 1 => {
            later(async move { Reply::Int(node_stat(&r, "nodes_items").await as i64) })
        }
        "INFO" => later(async move { Reply::Bulk(Some(info(&r).await.into())) }),
        known if COMMANDS.contains(&known) => Step::Now(arity(known)),
        _ => Step::Now(unknown(&args)),
    }
}

fn unknown(args: &[Bytes]) -> Reply {
    let mut m = format!(
        "unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for a in args[1..].iter().take(8) {
        let a = String::from_utf8_lossy(&a[..a.len().min(64)]).into_owned();
        m.push_str(&format!("'{a}' "));
    }
    Reply::err(m)
}

/// `AUTH [user] password`: the password is `CLIENT_TOKEN` (or the
/// cluster token); the user name is not checked.
fn auth<B: Backend>(backend: &B, session: &mut Session, password: &[u8]) -> Reply {
    match backend.password(Some(std::str::from_utf8(password).unwrap_or(""))) {
        None => Reply::err(
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        Some(true) => {
            session.authed = true;
            Reply::OK
        }
        Some(false) => {
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        }
    }
}

fn hello<B: Backend>(backend: &B, session: &mut Session, args: &[Bytes]) -> Step {
    let resp3 = match args.get(1).map(|v| &v[..]) {
        None => session.resp3,
        Some(b"2") => false,
        Some(b"3") => true,
        Some(_) => {
            return Step::Now(Reply::Error(
                "NOPROTO sorry, this protocol version is not supported".into(),
            ));
        }
    };
    let mut i = 2;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match (opt.as_str(), args.get(i + 1)) {
            ("SETNAME", Some(n)) => {
                session.name = Some(n.clone());
                i += 2;
            }
            ("AUTH", Some(_)) if i + 2 < args.len() => match auth(backend, session, &args[i + 2]) {
                Reply::Simple(_) => i += 3,
                refused => return Step::Now(refused),
            },
            _ => return Step::Now(Reply::err(format!("Syntax error in HELLO option '{opt}'"))),
        }
    }
    if !session.authed {
        return Step::Now(Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
        ));
    }
    session.resp3 = resp3;
    let t = Reply::text;
    Step::Now(Reply::Map(vec![
        (t("server"), t("milena")),
        (t("version"), t(env!("CARGO_PKG_VERSION"))),
        (t("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
        (t("id"), Reply::Int(0)),
        (t("mode"), t("standalone")),
        (t("role"), t("master")),
        (t("modules"), Reply::Array(Vec::new())),
    ]))
}

fn client(session: &mut Session, args: &[Bytes]) -> Step {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    Step::Now(match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Step::Now(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            session.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::OK
        }
        ("GETNAME", 2) => Reply::Bulk(session.name.clone()),
        // Library name and version, as clients announce them: noted by no one.
        ("SETINFO", 4) => Reply::OK,
        ("ID", 2) => Reply::Int(0),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    })
}

/// `SET key value [NX | XX] [EX s | PX ms]`.
fn set<B: Backend>(r: &B, args: &[Bytes]) -> Step {
    let (mut ttl, mut cond) = (None, None);
    let mut i = 3;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match (opt.as_str(), args.get(i + 1)) {
            ("NX", _) if cond.is_none() => cond = Some(Cond::Absent),
            ("XX", _) if cond.is_none() => cond = Some(Cond::Present),
            ("EX", Some(v)) if ttl.is_none() => match seconds(v) {
                Some(s) => ttl = Some(s),
                None => return Step::Now(Reply::err("invalid expire time in 'set' command")),
            },
            ("PX", Some(v)) if ttl.is_none() => match millis_as_seconds(v) {
                Some(s) => ttl = Some(s),
                None => return Step::Now(Reply::err("invalid expire time in 'set' command")),
            },
            ("GET" | "KEEPTTL" | "EXAT" | "PXAT", _) => {
                return Step::Now(Reply::err(format!(
                    "SET option {opt} is not supported by Milena (yet)"
                )));
            }
            _ => return Step::Now(Reply::err("syntax error")),
        }
        i += if matches!(opt.as_str(), "NX" | "XX") {
            1
        } else {
            2
        };
    }
    let (key, value) = (&args[1][..], &args[2][..]);
    match cond {
        None => single(r, Op::Put { key, value, ttl }, |a| {
            reply(decode(a), |_| Reply::OK)
        }),
        Some(cond) => {
            let op = Op::PutIf {
                cond,
                key,
                value,
                ttl,
            };
            // Not written: Redis answers a null bulk string.
            single(r, op, |a| {
                reply(decode_cond(a), |written| {
                    if written {
                        Reply::OK
                    } else {
                        Reply::Bulk(None)
                    }
                })
            })
        }
    }
}

/// `EXPIRE key seconds` / `PEXPIRE key ms`: a new time to live for an
/// existing key, its value kept (the owner's conditional put with
/// `Cond::Touch`); a time not in the future deletes the key, as in Redis.
fn expire<B: Backend>(r: &B, name: &str, args: &[Bytes]) -> Step {
    let n: Option<i64> = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|v| v.parse().ok());
    let Some(n) = n else {
        return Step::Now(Reply::err("value is not an integer or out of range"));
    };
    let secs = if name == "PEXPIRE" {
        n.saturating_add(999) / 1000
    } else {
        n
    };
    let key = &args[1][..];
    if secs <= 0 {
        return single(r, Op::Delete { key }, |a| {
            reply(decode(a), |existed| {
                Reply::Int(i64::from(existed.is_some()))
            })
        });
    }
    let op = Op::PutIf {
        cond: Cond::Touch,
        key,
        value: b"",
        ttl: Some(u32::try_from(secs).unwrap_or(u32::MAX)),
    };
    single(r, op, |a| {
        reply(decode_cond(a), |set| Reply::Int(i64::from(set)))
    })
}

/// A one-key command: its reply at once when the backend answered at
/// once, else when it does.
fn single<B: Backend>(
    r: &B,
    op: Op<'_>,
    finish: impl FnOnce(Answered) -> Reply + Send + 'static,
) -> Step {
    match r.start(op) {
        Answer::Now(a) => Step::Now(finish(a)),
        Answer::Later(f) => later(async move { finish(f.await) }),
    }
}

/// The same operation on every key, started at once.
fn every<'k, B: Backend>(
    r: &B,
    keys: &'k [Bytes],
    op: impl Fn(&'k [u8]) -> Op<'k>,
) -> Vec<BoxFuture<'static, Answered>> {
    keys.iter().map(|k| r.start(op(k)).future()).collect()
}

fn later(f: impl std::future::Future<Output = Reply> + Send + 'static) -> Step {
    Step::Later(f.boxed())
}

/// A positive number of seconds that fits Milena's TTL.
fn seconds(v: &[u8]) -> Option<u32> {
    let n: i64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    u32::try_from(n).ok().filter(|&s| s > 0)
}

/// Milliseconds rounded up to whole seconds (Milena's TTL unit).
fn millis_as_seconds(v: &[u8]) -> Option<u32> {
    let n: i64 = std::str::from_utf8(v).ok()?.parse().ok()?;
    if n <= 0 {
        return None;
    }
    u32::try_from((n + 999) / 1000).ok()
}

fn reply<T>(r: Result<T, Reply>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(v) => ok(v),
        Err(e) => e,
    }
}

/// A router or node error as Redis clients read errors: `TRYAGAIN` for
/// what was not applied and may be retried (Redis Cluster's word for it),
/// `ERR` otherwise, with Milena's message.
fn error_reply(status: Status, message: &str) -> Reply {
    match status {
        Status::Unavailable | Status::StaleRing | Status::RateLimited => {
            Reply::Error(format!("TRYAGAIN {message}"))
        }
        _ => Reply::err(message),
    }
}

/// Decodes a call's answer: `Ok(Some(value))`, `Ok(None)` for not found.
fn decode(answer: Answered) -> Result<Option<Bytes>, Reply> {
    let frame = answer.map_err(|e| error_reply(e.status(), &e.to_string()))?;
    let r = decode_response(&frame).map_err(|e| Reply::err(format!("bad answer: {e}")))?;
    match (r.status, r.body) {
        (Status::Ok, Body::Value(v)) => Ok(Some(frame.slice_ref(v))),
        (Status::Ok, _) => Ok(Some(Bytes::new())),
        (Status::NotFound, _) => Ok(None),
        (s, Body::Message(m)) => Err(error_reply(s, m)),
        (s, _) => Err(error_reply(s, s.as_str())),
    }
}

/// Decodes a `Ttl`'s answer: `None` for not found, `Some(None)` for no expiry.
fn decode_ttl(answer: Answered) -> Result<Option<Option<u64>>, Reply> {
    let frame = answer.map_err(|e| error_reply(e.status(), &e.to_string()))?;
    let r = decode_response(&frame).map_err(|e| Reply::err(format!("bad answer: {e}")))?;
    match (r.status, r.body) {
        (Status::Ok, Body::Remaining { millis }) => Ok(Some(millis)),
        (Status::NotFound, _) => Ok(None),
        (s, Body::Message(m)) => Err(error_reply(s, m)),
        (s, _) => Err(error_reply(s, s.as_str())),
    }
}

/// Decodes a conditional put's answer: whether it was written.
fn decode_cond(answer: Answered) -> Result<bool, Reply> {
    let frame = answer.map_err(|e| error_reply(e.status(), &e.to_string()))?;
    let r = decode_response(&frame).map_err(|e| Reply::err(format!("bad answer: {e}")))?;
    match (r.status, r.body) {
        (Status::Ok, _) => Ok(true),
        (Status::NotStored, _) => Ok(false),
        (s, Body::Message(m)) => Err(error_reply(s, m)),
        (s, _) => Err(error_reply(s, s.as_str())),
    }
}

async fn node_stat<B: Backend>(r: &B, name: &str) -> u64 {
    r.counters()
        .await
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

/// `INFO`: Redis's sections with Milena's counters.
async fn info<B: Backend>(r: &B) -> String {
    let stats = r.counters().await;
    let get = |name: &str| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
    let mut s = String::new();
    s.push_str("# Server\r\n");
    s.push_str("redis_version:7.0.0\r\n");
    s.push_str(&format!("milena_version:{}\r\n", env!("CARGO_PKG_VERSION")));
    s.push_str("redis_mode:standalone\r\n");
    s.push_str(&format!("process_id:{}\r\n", std::process::id()));
    s.push_str("\r\n# Clients\r\n");
    s.push_str(&format!("connected_clients:{}\r\n", get("connections")));
    s.push_str("\r\n# Stats\r\n");
    s.push_str(&format!(
        "total_connections_received:{}\r\n",
        get("connections_total")
    ));
    s.push_str(&format!("total_commands_processed:{}\r\n", get("requests")));
    s.push_str(&format!(
        "rejected_connections:{}\r\n",
        get("connections_refused")
    ));
    s.push_str(&format!("keyspace_hits:{}\r\n", get("nodes_hits")));
    s.push_str(&format!("keyspace_misses:{}\r\n", get("nodes_misses")));
    s.push_str(&format!("evicted_keys:{}\r\n", get("nodes_evictions")));
    s.push_str(&format!("milena_members:{}\r\n", get("members")));
    s.push_str(&format!(
        "milena_nodes_reporting:{}\r\n",
        get("nodes_reporting")
    ));
    s.push_str("\r\n# Keyspace\r\n");
    s.push_str(&format!(
        "db0:keys={},expires=0,avg_ttl=0\r\n",
        get("nodes_items")
    ));
    s
}
