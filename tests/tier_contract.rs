//! One contract for every tier, run against each: the directory tier, the
//! S3 tier (a real S3-compatible server over HTTP) and, where it means
//! something, the no-op tier. Each case names the promise it checks;
//! `Pair` gives two tier instances over the same storage, as two nodes
//! sharing a directory or a bucket have.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use milena::node::tier::dir::DirTier;
use milena::node::tier::{NoTier, Object, ReadOutcome, Tier, WriteOutcome};

use common::s3::S3Server;

/// Two instances of one tier over the same storage, and what keeps that
/// storage alive.
struct Pair {
    a: Arc<dyn Tier>,
    b: Arc<dyn Tier>,
    _keep: Box<dyn std::any::Any + Send>,
}

type Make = fn() -> Pin<Box<dyn Future<Output = Pair>>>;

fn dir_pair() -> Pin<Box<dyn Future<Output = Pair>>> {
    Box::pin(async {
        let root = tempfile::tempdir().expect("temporary directory");
        let a = DirTier::open(root.path()).await.expect("dir a");
        let b = DirTier::open(root.path()).await.expect("dir b");
        Pair {
            a: Arc::new(a),
            b: Arc::new(b),
            _keep: Box::new(root),
        }
    })
}

fn s3_pair() -> Pin<Box<dyn Future<Output = Pair>>> {
    Box::pin(async {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let server = S3Server::start(&format!("contract-{n}"));
        let a = server.tier().await;
        let b = server.tier().await;
        Pair {
            a: Arc::new(a),
            b: Arc::new(b),
            _keep: Box::new(server),
        }
    })
}

/// Now, in Unix seconds: tombstones expire a day after the real now, so
/// reads must not come from another day.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn obj(value: &str, version: u64, expires_at: Option<u64>) -> Object {
    Object {
        value: Bytes::copy_from_slice(value.as_bytes()),
        expires_at,
        version,
    }
}

async fn read(t: &Arc<dyn Tier>, key: &[u8]) -> ReadOutcome {
    t.get(key, now()).await.expect("read")
}

fn value_of(r: &ReadOutcome) -> Option<(String, u64)> {
    match r {
        ReadOutcome::Found(o) => Some((String::from_utf8_lossy(&o.value).into_owned(), o.version)),
        _ => None,
    }
}

/// A key never written is absent; a write is read back with its value,
/// version and expiry, binary keys and empty values included.
async fn round_trip(make: Make) {
    let p = make().await;
    assert_eq!(read(&p.a, b"never").await, ReadOutcome::Absent);
    let w = obj("v1", 10, Some(now() + 100));
    assert_eq!(p.a.put(b"k", &w).await.expect("put"), WriteOutcome::Stored);
    assert_eq!(read(&p.a, b"k").await, ReadOutcome::Found(w.clone()));
    assert_eq!(
        read(&p.b, b"k").await,
        ReadOutcome::Found(w),
        "shared storage"
    );
    // (s3s-fs takes object names up to about 160 characters.)
    let odd: Vec<u8> = (1..=100u8).collect();
    let empty = obj("", 1, None);
    p.a.put(&odd, &empty).await.expect("put");
    assert_eq!(read(&p.b, &odd).await, ReadOutcome::Found(empty));
}

/// An older write never replaces a newer one, whoever writes it.
async fn versions(make: Make) {
    let p = make().await;
    p.a.put(b"k", &obj("new", 20, None)).await.expect("put");
    assert_eq!(
        p.b.put(b"k", &obj("old", 10, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(value_of(&read(&p.a, b"k").await), Some(("new".into(), 20)));
    assert_eq!(
        p.b.put(b"k", &obj("newer", 30, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    assert_eq!(
        value_of(&read(&p.a, b"k").await),
        Some(("newer".into(), 30))
    );
}

/// A delete older than the stored write is ignored; a newer one removes
/// the key and leaves a tombstone, so a delayed older write (an upload
/// retried after the delete landed) cannot bring it back. A write newer
/// than the delete does.
async fn deletes_leave_tombstones(make: Make) {
    let p = make().await;
    p.a.put(b"k", &obj("v", 20, None)).await.expect("put");
    assert_eq!(
        p.a.delete(b"k", 10).await.expect("delete"),
        WriteOutcome::Superseded
    );
    assert_eq!(value_of(&read(&p.a, b"k").await), Some(("v".into(), 20)));
    assert_eq!(
        p.a.delete(b"k", 30).await.expect("delete"),
        WriteOutcome::Stored
    );
    assert_eq!(read(&p.a, b"k").await, ReadOutcome::Absent);
    assert_eq!(
        p.b.put(b"k", &obj("resurrected", 25, None))
            .await
            .expect("put"),
        WriteOutcome::Superseded,
        "an older write must not resurrect a deleted key"
    );
    assert_eq!(read(&p.a, b"k").await, ReadOutcome::Absent);
    assert_eq!(read(&p.b, b"k").await, ReadOutcome::Absent);
    p.b.put(b"k", &obj("back", 40, None)).await.expect("put");
    assert_eq!(value_of(&read(&p.a, b"k").await), Some(("back".into(), 40)));
    // Deleting a key never written is fine, and guards it too.
    assert_eq!(
        p.a.delete(b"fresh", 50).await.expect("delete"),
        WriteOutcome::Stored
    );
    p.b.put(b"fresh", &obj("late", 45, None))
        .await
        .expect("put");
    assert_eq!(read(&p.a, b"fresh").await, ReadOutcome::Absent);
}

/// The expiry travels with the object: it is served until then and never
/// after, by any reader.
async fn ttl_in_the_object(make: Make) {
    let p = make().await;
    #[allow(non_snake_case)]
    let NOW = now();
    p.a.put(b"t", &obj("x", 1, Some(NOW + 5)))
        .await
        .expect("put");
    assert!(matches!(
        p.b.get(b"t", NOW + 4).await.expect("read"),
        ReadOutcome::Found(o) if o.expires_at == Some(NOW + 5)
    ));
    let dead = p.b.get(b"t", NOW + 5).await.expect("read");
    assert!(
        matches!(dead, ReadOutcome::Expired | ReadOutcome::Absent),
        "{dead:?}"
    );
    let later = p.a.get(b"t", NOW + 6).await.expect("read");
    assert!(
        matches!(later, ReadOutcome::Expired | ReadOutcome::Absent),
        "{later:?}"
    );
}

/// Two instances writing one key at once, in scrambled version order: the
/// newest version is what remains, every round.
async fn concurrent_writers(make: Make) {
    let p = make().await;
    for round in 0..8u64 {
        let key = format!("race-{round}").into_bytes();
        let mut writes = Vec::new();
        for i in 0..24u64 {
            // A permutation of 1..=24, different each round.
            let version = (i * 7 + round * 5) % 24 + 1;
            let tier = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
            let key = key.clone();
            writes.push(tokio::spawn(async move {
                let w = obj(&format!("v{version}"), version, None);
                // As the write-behind queue does: a write that lost every
                // compare-and-swap round to the others is tried again.
                for _ in 0..100 {
                    match tier.put(&key, &w).await {
                        Ok(outcome) => return outcome,
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("write failed for good: {e}"),
                    }
                }
                panic!("write of version {version} still contended after 100 tries");
            }));
        }
        for w in writes {
            w.await.expect("task");
        }
        assert_eq!(
            value_of(&read(&p.a, &key).await),
            Some(("v24".into(), 24)),
            "round {round}: an older write landed last"
        );
    }
}

macro_rules! contract {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn round_trip() {
                super::round_trip($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn versions() {
                super::versions($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn deletes_leave_tombstones() {
                super::deletes_leave_tombstones($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ttl_in_the_object() {
                super::ttl_in_the_object($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writers() {
                super::concurrent_writers($make).await;
            }
        }
    };
}

contract!(dir, dir_pair);
contract!(s3, s3_pair);

/// The no-op tier keeps nothing: it takes every write, finds nothing, and
/// says it does not persist (so a node starts no queue for it).
#[tokio::test]
async fn no_tier_keeps_nothing() {
    let t: Arc<dyn Tier> = Arc::new(NoTier);
    assert!(!t.persists());
    assert_eq!(t.name(), "none");
    assert_eq!(
        t.put(b"k", &obj("v", 1, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    assert_eq!(
        t.delete(b"k", 2).await.expect("delete"),
        WriteOutcome::Stored
    );
    assert_eq!(read(&t, b"k").await, ReadOutcome::Absent);
}

/// Every real tier persists.
#[tokio::test]
async fn real_tiers_persist() {
    for make in [dir_pair as Make, s3_pair as Make] {
        let p = make().await;
        assert!(p.a.persists(), "{}", p.a.name());
    }
}

/// Keys whose names share a prefix both live in a directory: a key's file
/// never sits where a longer key needs a directory (crafted pairs of keys
/// used to jam every uploader with EISDIR/ENOTDIR for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dir_paths_of_keys_sharing_a_prefix_never_collide() {
    let p = dir_pair().await;
    use milena::node::tier::layout::object_name;
    let short = vec![b'a'; 150]; // exactly one 200-character segment
    let shard = |k: &[u8]| object_name("", k)[..2].to_string();
    // A longer key with the same first 150 bytes, in the same shard: as
    // S3 names, the short one's name is a directory of the long one's.
    let long = (0u32..)
        .map(|i| {
            let mut k = vec![b'a'; 150];
            k.extend_from_slice(format!("-{i:08}").as_bytes());
            k
        })
        .find(|k| shard(k) == shard(&short))
        .expect("a key in the same shard");
    assert!(object_name("", &long).starts_with(&format!("{}/", object_name("", &short))));
    for (v, (first, second)) in [(10, (&short, &long)), (20, (&long, &short))] {
        p.a.put(first, &obj("first", v, None)).await.expect("put");
        p.a.put(second, &obj("second", v, None)).await.expect("put");
        assert_eq!(
            value_of(&read(&p.b, first).await),
            Some(("first".into(), v))
        );
        assert_eq!(
            value_of(&read(&p.b, second).await),
            Some(("second".into(), v))
        );
        p.a.delete(first, v + 1).await.expect("delete");
        p.a.delete(second, v + 1).await.expect("delete");
    }
}

/// The directory tier says how long a key it can name; the node refuses to
/// start with a larger MAX_KEY_SIZE instead of failing those writes.
#[tokio::test]
async fn the_dir_tier_knows_its_longest_key() {
    let p = dir_pair().await;
    let limit = p.a.max_key().expect("a limit");
    assert!(limit > 2000 && limit < 3100, "{limit}");
    let key = vec![0xffu8; limit];
    p.a.put(&key, &obj("fits", 1, None))
        .await
        .expect("the longest key fits");
    assert_eq!(value_of(&read(&p.b, &key).await), Some(("fits".into(), 1)));
}
