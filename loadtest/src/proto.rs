//! The three wire protocols, each as an encoder for get/set and an
//! incremental parser of answers. Answers come back in request order for
//! memcached, Redis and a Milena node; a Milena router may reorder them, so
//! Milena requests carry ids.

use milena_protocol::{
    Body, FrameCodec, MAGIC, Op as WireOp, PROTOCOL_VERSION, Request, Status, decode_response,
    encode_request,
};

/// Which server speaks on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Milena binary protocol (`milena://`).
    Milena,
    /// memcached text protocol (`memcache://`).
    Memcache,
    /// Redis RESP (`redis://`).
    Redis,
}

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Protocol.
    pub kind: Kind,
    /// `host:port`.
    pub addr: String,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, addr) = s
            .split_once("://")
            .ok_or_else(|| format!("'{s}': use milena://, memcache:// or redis://HOST:PORT"))?;
        let kind = match scheme {
            "milena" | "http" => Kind::Milena,
            "memcache" | "memcached" => Kind::Memcache,
            "redis" => Kind::Redis,
            other => return Err(format!("unknown scheme '{other}'")),
        };
        let addr = addr.trim_end_matches('/');
        if !addr.contains(':') {
            return Err(format!("'{s}' needs a port"));
        }
        Ok(Target {
            kind,
            addr: addr.to_string(),
        })
    }
}

/// How an answer turned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A get found its key.
    Hit,
    /// A get found nothing.
    Miss,
    /// A set was stored.
    Stored,
    /// Anything else, by kind.
    Error(String),
}

/// Appends the bytes that open a connection (Milena's hello).
pub fn greeting(kind: Kind, out: &mut Vec<u8>) {
    if kind == Kind::Milena {
        encode_request(
            &Request {
                id: 0,
                op: WireOp::Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    token: None,
                },
            },
            out,
        );
    }
}

/// Appends a get of `key`.
pub fn encode_get(kind: Kind, id: u64, key: &[u8], out: &mut Vec<u8>) {
    match kind {
        Kind::Milena => encode_request(
            &Request {
                id,
                op: WireOp::Get { key },
            },
            out,
        ),
        Kind::Memcache => {
            out.extend_from_slice(b"get ");
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
        }
        Kind::Redis => {
            out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
            bulk(key, out);
        }
    }
}

/// Appends a set of `key` to `value` (no expiry).
pub fn encode_set(kind: Kind, id: u64, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match kind {
        Kind::Milena => encode_request(
            &Request {
                id,
                op: WireOp::Put {
                    key,
                    value,
                    ttl: Some(0),
                },
            },
            out,
        ),
        Kind::Memcache => {
            out.extend_from_slice(b"set ");
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        Kind::Redis => {
            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
            bulk(key, out);
            bulk(value, out);
        }
    }
}

fn bulk(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Parses answers off the front of a buffer.
pub struct Parser {
    kind: Kind,
    codec: FrameCodec,
    greeted: bool,
}

impl Parser {
    /// A parser for `kind`.
    pub fn new(kind: Kind) -> Self {
        Parser {
            kind,
            codec: FrameCodec::new(64 << 20),
            greeted: kind != Kind::Milena,
        }
    }

    /// The next complete answer in `buf` (consumed from it) and, for Milena,
    /// its id. `Ok(None)` means more bytes are needed.
    pub fn next(
        &mut self,
        buf: &mut bytes::BytesMut,
    ) -> Result<Option<(Option<u64>, Answer)>, String> {
        match self.kind {
            Kind::Milena => loop {
                let Some(frame) = self.codec.decode_frame(buf).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let r = decode_response(&frame).map_err(|e| e.to_string())?;
                if !self.greeted {
                    if r.status != Status::Ok {
                        return Err(format!("hello refused: {:?}", r.body));
                    }
                    self.greeted = true;
                    continue;
                }
                let answer = match (r.status, &r.body) {
                    (Status::Ok, Body::Value(_)) => Answer::Hit,
                    (Status::Ok, _) => Answer::Stored,
                    (Status::NotFound, _) => Answer::Miss,
                    (s, _) => Answer::Error(s.as_str().replace(' ', "_")),
                };
                return Ok(Some((Some(r.id), answer)));
            },
            Kind::Memcache => Ok(parse_memcache(buf)?.map(|a| (None, a))),
            Kind::Redis => Ok(parse_redis(buf)?.map(|a| (None, a))),
        }
    }
}

fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_memcache(buf: &mut bytes::BytesMut) -> Result<Option<Answer>, String> {
    let Some(end) = line(buf) else {
        return Ok(None);
    };
    let head = &buf[..end];
    let answer = if head == b"END" {
        let _ = buf.split_to(end + 2);
        Answer::Miss
    } else if head == b"STORED" {
        let _ = buf.split_to(end + 2);
        Answer::Stored
    } else if let Some(rest) = head.strip_prefix(b"VALUE ") {
        let text = std::str::from_utf8(rest).map_err(|_| "bad VALUE line")?;
        let bytes: usize = text
            .split_whitespace()
            .nth(2)
            .and_then(|b| b.parse().ok())
            .ok_or("bad VALUE length")?;
        // VALUE line, data, CRLF, END CRLF
        let total = end + 2 + bytes + 2 + 5;
        if buf.len() < total {
            return Ok(None);
        }
        let _ = buf.split_to(total);
        Answer::Hit
    } else {
        let kind = String::from_utf8_lossy(head)
            .split_whitespace()
            .next()
            .unwrap_or("error")
            .to_ascii_lowercase();
        let _ = buf.split_to(end + 2);
        Answer::Error(kind)
    };
    Ok(Some(answer))
}

fn parse_redis(buf: &mut bytes::BytesMut) -> Result<Option<Answer>, String> {
    let Some(end) = line(buf) else {
        return Ok(None);
    };
    let answer = match buf.first() {
        Some(b'+') => {
            let _ = buf.split_to(end + 2);
            Answer::Stored
        }
        Some(b'-') => {
            let kind = String::from_utf8_lossy(&buf[1..end])
                .split_whitespace()
                .next()
                .unwrap_or("ERR")
                .to_ascii_lowercase();
            let _ = buf.split_to(end + 2);
            Answer::Error(kind)
        }
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(&buf[1..end])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or("bad bulk length")?;
            if n < 0 {
                let _ = buf.split_to(end + 2);
                Answer::Miss
            } else {
                let total = end + 2 + n as usize + 2;
                if buf.len() < total {
                    return Ok(None);
                }
                let _ = buf.split_to(total);
                Answer::Hit
            }
        }
        _ => return Err(format!("unexpected RESP reply {:?}", &buf[..end])),
    };
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn targets() {
        let t: Target = "memcache://127.0.0.1:11211".parse().expect("ok");
        assert_eq!(
            (t.kind, t.addr.as_str()),
            (Kind::Memcache, "127.0.0.1:11211")
        );
        assert!("ftp://x:1".parse::<Target>().is_err());
        assert!("redis://nohost".parse::<Target>().is_err());
    }

    type Parse = fn(&mut BytesMut) -> Result<Option<Answer>, String>;

    /// Feeds `stream` cut in two at every position; `parse` must find the
    /// same answers whatever the cut.
    fn answers_split_anywhere(parse: Parse, stream: &[u8], want: &[Answer]) {
        for cut in 0..stream.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(a) = parse(&mut buf).expect("valid") {
                got.push(a);
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(a) = parse(&mut buf).expect("valid") {
                got.push(a);
            }
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn memcache_answers_split_anywhere() {
        answers_split_anywhere(
            parse_memcache,
            b"VALUE k 0 3\r\nabc\r\nEND\r\nEND\r\nSTORED\r\nSERVER_ERROR out of memory\r\n",
            &[
                Answer::Hit,
                Answer::Miss,
                Answer::Stored,
                Answer::Error("server_error".into()),
            ],
        );
    }

    #[test]
    fn redis_answers_split_anywhere() {
        answers_split_anywhere(
            parse_redis,
            b"$3\r\nabc\r\n$-1\r\n+OK\r\n-OOM command not allowed\r\n",
            &[
                Answer::Hit,
                Answer::Miss,
                Answer::Stored,
                Answer::Error("oom".into()),
            ],
        );
    }
}
