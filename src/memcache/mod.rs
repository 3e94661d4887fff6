//! The memcached text protocol: command lines (and the data blocks of
//! storage commands) in, reply lines out. Pure parsing, bounded, never
//! panicking on what a client sends; what a command does is the server's
//! business (`router::memcache`).
//!
//! As memcached does, a line ends with `\r\n` or a bare `\n`; a malformed
//! line is answered (`ERROR`, `CLIENT_ERROR ...`) and the connection goes
//! on; a value over the size limit is answered `SERVER_ERROR object too
//! large for cache` and its bytes are skipped as they arrive. Only what
//! leaves the stream out of step (a line too long, a data block not ending
//! in `\r\n`) closes the connection.

use bytes::{Buf, Bytes, BytesMut};

/// The longest key memcached accepts.
pub const MAX_KEY: usize = 250;

/// Limits on what one command may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest command line (a `get` of many keys is one line).
    pub max_line: usize,
    /// Largest data block of a storage command.
    pub max_value: usize,
}

/// How a storage command stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `set`: always.
    Set,
    /// `add`: only if the key does not exist.
    Add,
    /// `replace`: only if it does.
    Replace,
    /// `append`: after the existing value.
    Append,
    /// `prepend`: before the existing value.
    Prepend,
    /// `cas`: only if unchanged since a `gets`.
    Cas,
}

/// One command a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get`/`gets` (`cas` true for `gets`).
    Get {
        /// The keys, in order (one or more).
        keys: Vec<Bytes>,
        /// Whether a cas value is asked for.
        cas: bool,
    },
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store {
        /// Which.
        mode: StoreMode,
        /// The key.
        key: Bytes,
        /// The client's opaque flags.
        flags: u32,
        /// Seconds to live, a Unix time past 30 days, 0 or negative.
        exptime: i64,
        /// The value.
        data: Bytes,
        /// No answer wanted.
        noreply: bool,
    },
    /// `delete <key> [noreply]`.
    Delete {
        /// The key.
        key: Bytes,
        /// No answer wanted.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        /// The key.
        key: Bytes,
        /// As a storage command's.
        exptime: i64,
        /// No answer wanted.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Arith {
        /// `incr` (or `decr`).
        incr: bool,
        /// The key.
        key: Bytes,
        /// No answer wanted.
        noreply: bool,
    },
    /// `stats [group]`.
    Stats {
        /// The group asked for, if any.
        group: Option<Bytes>,
    },
    /// `version`.
    Version,
    /// `verbosity <n> [noreply]`.
    Verbosity {
        /// No answer wanted.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll {
        /// No answer wanted.
        noreply: bool,
    },
    /// `mn`, the meta no-op: answered `MN`.
    MetaNoop,
    /// `quit`.
    Quit,
    /// A storage command whose value is over the limit: its bytes are
    /// being skipped.
    TooLarge {
        /// No answer wanted.
        noreply: bool,
    },
    /// A malformed line, already consumed: answer `CLIENT_ERROR <reason>`.
    Invalid(&'static str),
    /// A command memcached does not have: answer `ERROR`.
    Unknown,
}

/// Why the stream cannot be read on: answer `CLIENT_ERROR <reason>`, close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub &'static str);

/// A connection's parser: the only state is the bytes of an oversized
/// value still to skip.
#[derive(Debug, Default)]
pub struct Parser {
    skip: usize,
}

impl Parser {
    /// Takes the next whole command off `buf`: `Ok(None)` while it is
    /// still arriving (or an oversized value is still being skipped).
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Command>, ProtocolError> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > limits.max_line {
                return Err(ProtocolError("line too long"));
            }
            return Ok(None);
        };
        if eol > limits.max_line {
            return Err(ProtocolError("line too long"));
        }
        let line_len = eol + 1;
        let end = if eol > 0 && buf[eol - 1] == b'\r' {
            eol - 1
        } else {
            eol
        };
        // Token positions, so keys can be cut from the buffer unchanged.
        let mut tokens = Vec::new();
        let mut start = None;
        for (i, &b) in buf[..end].iter().enumerate() {
            match (b == b' ', start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    tokens.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            tokens.push(s..end);
        }
        let mode = match tokens.first().map(|t| &buf[t.clone()]) {
            Some(b"set") => Some(StoreMode::Set),
            Some(b"add") => Some(StoreMode::Add),
            Some(b"replace") => Some(StoreMode::Replace),
            Some(b"append") => Some(StoreMode::Append),
            Some(b"prepend") => Some(StoreMode::Prepend),
            Some(b"cas") => Some(StoreMode::Cas),
            _ => None,
        };
        if let Some(mode) = mode {
            return self.store(buf, line_len, mode, &tokens[1..], limits);
        }
        let line = buf.split_to(line_len).freeze();
        let Some((name, args)) = tokens.split_first() else {
            // A blank line: memcached answers ERROR.
            return Ok(Some(Command::Unknown));
        };
        let args: Vec<Bytes> = args.iter().map(|t| line.slice(t.clone())).collect();
        Ok(Some(line_command(&line[name.clone()], &args)))
    }

    /// A storage command: its line, then `bytes` of data and `\r\n`.
    fn store(
        &mut self,
        buf: &mut BytesMut,
        line_len: usize,
        mode: StoreMode,
        args: &[std::ops::Range<usize>],
        limits: &Limits,
    ) -> Result<Option<Command>, ProtocolError> {
        let arg = |i: usize| &buf[args[i].clone()];
        let fixed = if mode == StoreMode::Cas { 5 } else { 4 };
        let noreply = args.len() == fixed + 1 && arg(fixed) == b"noreply";
        let parsed = (args.len() == fixed || noreply)
            .then(|| {
                let flags: u32 = number(arg(1))?;
                let exptime: i64 = number(arg(2))?;
                let bytes: usize = number(arg(3))?;
                if mode == StoreMode::Cas {
                    let _unique: u64 = number(arg(4))?;
                }
                Some((flags, exptime, bytes))
            })
            .flatten();
        let Some((flags, exptime, bytes)) = parsed else {
            // The data block's length is unknown: as memcached, the line
            // is answered and whatever follows is read as commands.
            buf.advance(line_len);
            return Ok(Some(Command::Invalid("bad command line format")));
        };
        let key = args[0].clone();
        if key.len() > MAX_KEY || bytes > limits.max_value {
            // The length is known: skip the data rather than read a
            // value's bytes as commands.
            buf.advance(line_len);
            self.skip = bytes.saturating_add(2);
            return Ok(Some(if key.len() > MAX_KEY {
                Command::Invalid("bad command line format")
            } else {
                Command::TooLarge { noreply }
            }));
        }
        let total = line_len + bytes + 2;
        if buf.len() < total {
            return Ok(None);
        }
        if &buf[line_len + bytes..total] != b"\r\n" {
            return Err(ProtocolError("bad data chunk"));
        }
        let frame = buf.split_to(total).freeze();
        Ok(Some(Command::Store {
            mode,
            key: frame.slice(key),
            flags,
            exptime,
            data: frame.slice(line_len..line_len + bytes),
            noreply,
        }))
    }
}

fn line_command(name: &[u8], args: &[Bytes]) -> Command {
    let noreply_at = |i: usize| match args.len() {
        n if n == i => Some(false),
        n if n == i + 1 && &args[i][..] == b"noreply" => Some(true),
        _ => None,
    };
    let key_ok = |k: &Bytes| k.len() <= MAX_KEY;
    match name {
        b"get" | b"gets" => {
            if args.is_empty() {
                return Command::Unknown;
            }
            if !args.iter().all(key_ok) {
                return Command::Invalid("bad command line format");
            }
            Command::Get {
                keys: args.to_vec(),
                cas: name == b"gets",
            }
        }
        b"delete" => {
            // `delete <key> 0` is accepted, as memcached does.
            let args: Vec<&Bytes> = args
                .iter()
                .enumerate()
                .filter(|(i, a)| !(*i == 1 && &a[..] == b"0"))
                .map(|(_, a)| a)
                .collect();
            match args[..] {
                [k] if key_ok(k) => Command::Delete {
                    key: k.clone(),
                    noreply: false,
                },
                [k, n] if key_ok(k) && &n[..] == b"noreply" => Command::Delete {
                    key: k.clone(),
                    noreply: true,
                },
                _ => Command::Invalid("bad command line format.  Usage: delete <key> [noreply]"),
            }
        }
        b"touch" => match (
            noreply_at(2),
            args.first(),
            args.get(1).and_then(|t| number(t)),
        ) {
            (Some(noreply), Some(k), Some(exptime)) if key_ok(k) => Command::Touch {
                key: k.clone(),
                exptime,
                noreply,
            },
            _ => Command::Invalid("bad command line format"),
        },
        b"incr" | b"decr" => {
            let delta = args.get(1).and_then(|d| number::<u64>(d));
            match (noreply_at(2), args.first(), delta) {
                (Some(noreply), Some(k), Some(_)) if key_ok(k) => Command::Arith {
                    incr: name == b"incr",
                    key: k.clone(),
                    noreply,
                },
                _ => Command::Invalid("bad command line format"),
            }
        }
        b"stats" => Command::Stats {
            group: args.first().cloned(),
        },
        b"version" if args.is_empty() => Command::Version,
        b"verbosity" => match noreply_at(1) {
            Some(noreply) if args.first().and_then(|v| number::<u32>(v)).is_some() => {
                Command::Verbosity { noreply }
            }
            _ => Command::Unknown,
        },
        b"flush_all" => Command::FlushAll {
            noreply: args.last().is_some_and(|a| &a[..] == b"noreply"),
        },
        b"mn" => Command::MetaNoop,
        b"quit" => Command::Quit,
        _ => Command::Unknown,
    }
}

/// A decimal number of type `T`, or `None`.
fn number<T: std::str::FromStr>(token: &[u8]) -> Option<T> {
    std::str::from_utf8(token).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
