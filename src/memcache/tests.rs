use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

const LIMITS: Limits = Limits {
    max_line: 2048,
    max_value: 1024,
};

fn all(input: &[u8]) -> (Vec<Command>, Result<(), ProtocolError>, usize) {
    let mut p = Parser::default();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match p.next(&mut buf, &LIMITS) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => return (out, Ok(()), buf.len()),
            Err(e) => return (out, Err(e), buf.len()),
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn reads_the_commands_memcached_clients_send() {
    let (cmds, end, left) = all(
        b"set k 0 60 5\r\nhello\r\nget k other\r\ngets k\nadd a 0 0 0 noreply\r\n\r\ndelete k\r\ndelete k 0 noreply\r\ntouch k 10\r\nincr n 5\r\nversion\r\nstats\r\nstats slabs\r\nverbosity 1 noreply\r\nflush_all\r\nmn\r\nquit\r\n",
    );
    assert_eq!(end, Ok(()));
    assert_eq!(left, 0);
    assert_eq!(
        cmds,
        vec![
            Command::Store {
                mode: StoreMode::Set,
                key: b("k"),
                flags: 0,
                exptime: 60,
                data: b("hello"),
                noreply: false
            },
            Command::Get {
                keys: vec![b("k"), b("other")],
                cas: false
            },
            Command::Get {
                keys: vec![b("k")],
                cas: true
            },
            Command::Store {
                mode: StoreMode::Add,
                key: b("a"),
                flags: 0,
                exptime: 0,
                data: b(""),
                noreply: true
            },
            Command::Delete {
                key: b("k"),
                noreply: false
            },
            Command::Delete {
                key: b("k"),
                noreply: true
            },
            Command::Touch {
                key: b("k"),
                exptime: 10,
                noreply: false
            },
            Command::Arith {
                incr: true,
                key: b("n"),
                noreply: false
            },
            Command::Version,
            Command::Stats { group: None },
            Command::Stats {
                group: Some(b("slabs"))
            },
            Command::Verbosity { noreply: true },
            Command::FlushAll { noreply: false },
            Command::MetaNoop,
            Command::Quit,
        ]
    );
}

#[test]
fn malformed_lines_are_answered_and_reading_goes_on() {
    let long_key = "k".repeat(251);
    let input = format!(
        "bogus\r\n\r\nget\r\nset k x 0 1\r\nget {long_key}\r\nset {long_key} 0 0 3\r\nabc\r\ndelete\r\nset k 0 0 2000\r\n{}\r\nget k\r\n",
        "v".repeat(2000)
    );
    let (cmds, end, left) = all(input.as_bytes());
    assert_eq!(end, Ok(()));
    assert_eq!(left, 0);
    let bad = Command::Invalid("bad command line format");
    assert_eq!(
        cmds,
        vec![
            Command::Unknown,
            Command::Unknown,
            Command::Unknown,
            bad.clone(),
            bad.clone(),
            bad,
            Command::Invalid("bad command line format.  Usage: delete <key> [noreply]"),
            Command::TooLarge { noreply: false },
            Command::Get {
                keys: vec![b("k")],
                cas: false
            },
        ]
    );
}

#[test]
fn what_leaves_the_stream_out_of_step_is_an_error() {
    assert_eq!(
        all(b"set k 0 0 3\r\nabcd\r\n").1,
        Err(ProtocolError("bad data chunk"))
    );
    let long = vec![b'a'; 3000];
    assert_eq!(all(&long).1, Err(ProtocolError("line too long")));
    let mut long_line = b"get ".to_vec();
    long_line.extend(std::iter::repeat_n(b'k', 3000));
    long_line.extend_from_slice(b"\r\n");
    assert_eq!(all(&long_line).1, Err(ProtocolError("line too long")));
}

#[test]
fn an_oversized_value_is_skipped_as_it_arrives() {
    let mut p = Parser::default();
    let mut buf = BytesMut::from(&b"set k 0 0 2000\r\n"[..]);
    assert_eq!(
        p.next(&mut buf, &LIMITS),
        Ok(Some(Command::TooLarge { noreply: false }))
    );
    for _ in 0..4 {
        buf.extend_from_slice(&[b'x'; 500]);
        assert_eq!(p.next(&mut buf, &LIMITS), Ok(None));
        assert!(buf.is_empty());
    }
    buf.extend_from_slice(b"\r\nversion\r\n");
    assert_eq!(p.next(&mut buf, &LIMITS), Ok(Some(Command::Version)));
}

proptest! {
    /// Commands cut into pieces anywhere parse the same as whole.
    #[test]
    fn any_split_parses_the_same(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8), cuts in proptest::collection::vec(0usize..400, 0..6)) {
        let mut input = Vec::new();
        for (i, v) in values.iter().enumerate() {
            input.extend_from_slice(format!("set key{i} 0 0 {}\r\n", v.len()).as_bytes());
            input.extend_from_slice(v);
            input.extend_from_slice(format!("\r\nget key{i}\r\n").as_bytes());
        }
        let (whole, end, _) = all(&input);
        prop_assert_eq!(end, Ok(()));
        let mut p = Parser::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&input[at..cut]);
            at = cut;
            while let Ok(Some(c)) = p.next(&mut buf, &LIMITS) {
                got.push(c);
            }
        }
        prop_assert_eq!(got, whole);
    }

    /// Arbitrary bytes are commands, "need more" or an error: never a panic.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = all(&data);
    }
}
