//! RESP2, the Redis protocol: commands in (multibulk arrays of bulk
//! strings, or inline lines typed into `nc`), replies out. Pure parsing
//! and encoding, bounded, never panicking on what a client sends; what a
//! command does is the server's business (`router::redis`).

use bytes::{Buf, Bytes, BytesMut};

/// Limits on what one command may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most arguments (command name included).
    pub max_args: usize,
    /// Longest bulk string.
    pub max_bulk: usize,
    /// Longest inline command line.
    pub max_inline: usize,
    /// Most bytes one multibulk command may take on the wire.
    pub max_command: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1024 * 1024,
            max_bulk: 512 * 1024 * 1024,
            max_inline: 64 * 1024,
            max_command: 1024 * 1024 * 1024,
        }
    }
}

/// Why the bytes a client sent are not RESP. The connection cannot find
/// the next command after one of these: it is answered and closed, as
/// Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn err(m: impl Into<String>) -> ProtocolError {
    ProtocolError(m.into())
}

/// Takes the next whole command off `buf`: `Ok(None)` while it is still
/// arriving. Empty commands (`*0`, blank lines) are skipped.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            multibulk(buf, limits)?
        } else {
            inline(buf, limits)?
        };
        match parsed {
            Some(args) if args.is_empty() => continue,
            other => return Ok(other),
        }
    }
}

/// The line at the start of `buf` (without its CRLF) and its length with
/// it, or `None` if it has not all arrived. Lines are short here (headers),
/// so a line longer than `max` is an error.
fn line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&buf[..i], i + 2))),
        None if buf.len() > max + 1 => Err(err("too big header line")),
        None => Ok(None),
    }
}

fn number(digits: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| err(format!("invalid {what} length")))
}

fn multibulk(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some((header, mut at)) = line(buf, 32)? else {
        return Ok(None);
    };
    let count = number(&header[1..], "multibulk")?;
    if count <= 0 {
        buf.advance(at);
        return Ok(Some(Vec::new()));
    }
    let count = usize::try_from(count).map_err(|_| err("invalid multibulk length"))?;
    if count > limits.max_args {
        return Err(err("invalid multibulk length"));
    }
    // Where each argument lies, found before anything is taken, so that a
    // command still arriving is left whole for the next read.
    let mut spans = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let Some((header, n)) = line(&buf[at..], 32)? else {
            return Ok(None);
        };
        if header.first() != Some(&b'$') {
            let got = header.first().map_or(' ', |&b| b as char);
            return Err(err(format!("expected '$', got '{got}'")));
        }
        let len = number(&header[1..], "bulk")?;
        let len = usize::try_from(len).map_err(|_| err("invalid bulk length"))?;
        if len > limits.max_bulk {
            return Err(err("invalid bulk length"));
        }
        let start = at + n;
        let end = start + len;
        if end + 2 > limits.max_command {
            return Err(err("command too large"));
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(err("bulk string not followed by CRLF"));
        }
        spans.push((start, end));
        at = end + 2;
    }
    let frame = buf.split_to(at).freeze();
    Ok(Some(
        spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect(),
    ))
}

fn inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let window = &buf[..buf.len().min(limits.max_inline + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return Err(err("too big inline request"));
        }
        return Ok(None);
    };
    let frame = buf.split_to(nl + 1).freeze();
    let text = &frame[..nl];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if text[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && !text[i].is_ascii_whitespace() {
            i += 1;
        }
        if args.len() == limits.max_args {
            return Err(err("invalid multibulk length"));
        }
        // Offsets into `frame`: `text` starts at its beginning.
        args.push(frame.slice(start..i));
    }
    Ok(Some(args))
}

/// A reply to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `-ERR ...`: the text includes its prefix word (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$3\r\nfoo` or the null bulk `$-1`.
    Bulk(Option<Bytes>),
    /// `*2 ...`.
    Array(Vec<Reply>),
    /// `%2 ...` in RESP3; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// A bulk string of `s`.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Some(Bytes::from(s.into())))
    }

    /// `-ERR <message>`.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// Appends the encoded reply to `out` (RESP2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_as(out, false);
    }

    /// Appends the encoded reply to `out`, in RESP3 when `resp3` (a client
    /// that said `HELLO 3`): nulls are `_`, maps are `%`.
    pub fn encode_as(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Reply::Simple(s) => line_out(out, b'+', s.as_bytes()),
            // A reply line cannot hold a line break: it would end the reply.
            Reply::Error(s) => {
                let clean: String = s
                    .chars()
                    .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                    .collect();
                line_out(out, b'-', clean.as_bytes())
            }
            Reply::Int(n) => line_out(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(None) if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                line_out(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(items) => {
                line_out(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode_as(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                match resp3 {
                    true => line_out(out, b'%', pairs.len().to_string().as_bytes()),
                    false => line_out(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                }
                for (k, v) in pairs {
                    k.encode_as(out, resp3);
                    v.encode_as(out, resp3);
                }
            }
        }
    }
}

fn line_out(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(c) = parse(&mut buf, &Limits::default())? {
            out.push(c);
        }
        Ok(out)
    }

    fn encode_command(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let got =
            all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n  set  a b \n\r\n*0\r\n").expect("valid");
        assert_eq!(
            got,
            vec![
                vec![Bytes::from("GET"), Bytes::from("k")],
                vec![Bytes::from("PING")],
                vec![Bytes::from("set"), Bytes::from("a"), Bytes::from("b")],
            ]
        );
    }

    #[test]
    fn bad_input_is_a_protocol_error() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n:1\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*99999999999\r\n",
            b"*1\r\n$99999999999999\r\n",
        ] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'a'; 70 * 1024];
        assert_eq!(all(&long), Err(err("too big inline request")));
    }

    #[test]
    fn replies_encode_as_redis_does() {
        let mut out = Vec::new();
        for r in [
            Reply::OK,
            Reply::Int(-2),
            Reply::Bulk(None),
            Reply::text("hi"),
            Reply::Array(vec![Reply::Bulk(None), Reply::Int(1)]),
            Reply::err("bad\r\nline"),
        ] {
            r.encode(&mut out);
        }
        assert_eq!(
            out,
            b"+OK\r\n:-2\r\n$-1\r\n$2\r\nhi\r\n*2\r\n$-1\r\n:1\r\n-ERR bad  line\r\n"
        );
    }

    #[test]
    fn resp3_has_its_own_nulls_and_maps() {
        let map = Reply::Map(vec![
            (Reply::text("proto"), Reply::Int(3)),
            (Reply::text("none"), Reply::Bulk(None)),
        ]);
        let mut v3 = Vec::new();
        map.encode_as(&mut v3, true);
        assert_eq!(v3, b"%2\r\n$5\r\nproto\r\n:3\r\n$4\r\nnone\r\n_\r\n");
        let mut v2 = Vec::new();
        map.encode_as(&mut v2, false);
        assert_eq!(v2, b"*4\r\n$5\r\nproto\r\n:3\r\n$4\r\nnone\r\n$-1\r\n");
    }

    proptest! {
        /// Any commands, cut anywhere: parsed back whole, the same.
        #[test]
        fn commands_survive_any_split(
            cmds in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5), 1..6),
            cut in 0usize..400,
        ) {
            let wire: Vec<u8> = cmds.iter().flat_map(|c| encode_command(c)).collect();
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(c) = parse(&mut buf, &Limits::default()).expect("valid") {
                got.push(c);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(c) = parse(&mut buf, &Limits::default()).expect("valid") {
                got.push(c);
            }
            let want: Vec<Vec<Bytes>> = cmds
                .iter()
                .map(|c| c.iter().map(|a| Bytes::from(a.clone())).collect())
                .collect();
            prop_assert_eq!(got, want);
        }

        /// Garbage never panics the parser.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let limits = Limits { max_args: 8, max_bulk: 64, max_inline: 64, max_command: 200 };
            while let Ok(Some(_)) = parse(&mut buf, &limits) {}
        }
    }
}
