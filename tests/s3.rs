//! The S3 tier against a real S3-compatible server (`s3s-fs` over HTTP,
//! signatures checked): versions and conditional writes, tombstones, TTLs
//! in metadata, the object layout, and nodes that lose no data.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::s3::{BUCKET, FaultProxy, S3Server};
use common::*;
use milena::client::Client;
use milena::node::tier::layout::key_of;
use milena::node::tier::s3::S3Tier;
use milena::node::tier::{Object, ReadOutcome, Tier, TierError, WriteOutcome};
use milena::node::{Clock, Node, NodeSettings, WriteMode};

fn obj(value: &'static [u8], version: u64, expires_at: Option<u64>) -> Object {
    Object {
        value: Bytes::from_static(value),
        expires_at,
        version,
    }
}

#[tokio::test]
async fn versions_tombstones_and_expiry_round_trip() {
    let s3 = S3Server::start("rt");
    let t = s3.tier().await;
    assert_eq!(t.check().await.expect("bucket reachable"), None);
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    // A slow upload of an older value never replaces a newer one.
    assert_eq!(
        t.put(b"k", &obj(b"v1", 1, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        t.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"v2", 2, None))
    );
    // Same version again (a retried upload) is idempotent.
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Stored
    );

    // A delete older than the stored write does nothing; a newer one
    // leaves a tombstone that keeps an even later-arriving older put out.
    assert_eq!(
        t.delete(b"k", 1).await.expect("delete"),
        WriteOutcome::Superseded
    );
    assert_eq!(
        t.delete(b"k", 3).await.expect("delete"),
        WriteOutcome::Stored
    );
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
        WriteOutcome::Superseded
    );
    assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
    assert_eq!(
        t.put(b"k", &obj(b"v4", 4, None)).await.expect("put"),
        WriteOutcome::Stored
    );
    assert_eq!(
        t.get(b"k", 0).await.expect("get"),
        ReadOutcome::Found(obj(b"v4", 4, None))
    );

    // TTL travels with the object: dead at its expiry, then removed.
    t.put(b"t", &obj(b"x", 5, Some(100))).await.expect("put");
    assert_eq!(
        t.get(b"t", 99).await.expect("get"),
        ReadOutcome::Found(obj(b"x", 5, Some(100)))
    );
    assert_eq!(t.get(b"t", 100).await.expect("get"), ReadOutcome::Expired);
    assert_eq!(t.get(b"t", 0).await.expect("get"), ReadOutcome::Absent);
}

#[tokio::test]
async fn binary_keys_map_to_listable_object_names() {
    let s3 = S3Server::start("keys");
    let t = s3.tier().await;
    // s3s-fs keeps metadata in a file named after the whole object name,
    // so its keys stop at about 110 bytes (AWS takes 1024-byte names; the
    // directory tier's tests cover the longest keys).
    let long = vec![0xab; 100];
    let odd: Vec<u8> = (0..=255u8).collect();
    for (k, v) in [
        (&b"user:42"[..], &b"ann"[..]),
        (&long, b""),
        (&odd[..100], b"bytes"),
    ] {
        t.put(
            k,
            &Object {
                value: Bytes::copy_from_slice(v),
                expires_at: None,
                version: 1,
            },
        )
        .await
        .expect("put");
        match t.get(k, 0).await.expect("get") {
            ReadOutcome::Found(o) => assert_eq!(&o.value[..], v),
            other => panic!("{other:?}"),
        }
    }
    // What `aws s3 ls --recursive` shows maps back to the keys.
    assert_eq!(t.object_name(b"user:42"), "milena/9f/dXNlcjo0Mg");
    assert!(s3.root.join(BUCKET).join("milena/9f/dXNlcjo0Mg").is_file());
    assert_eq!(
        key_of("milena", &t.object_name(&long)).as_deref(),
        Some(&long[..])
    );
    assert_eq!(s3.object_count(), 3);
}

#[tokio::test]
async fn a_foreign_object_is_reported_not_served() {
    let s3 = S3Server::start("foreign");
    let t = s3.tier().await;
    let path = s3.root.join(BUCKET).join(t.object_name(b"k"));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, b"put there by someone else").expect("write");
    match t.get(b"k", 0).await {
        Err(TierError::Corrupt { reason, .. }) => assert!(reason.contains("milena-version")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_credentials_and_a_missing_bucket_are_clear_errors() {
    let s3 = S3Server::start("creds");
    let mut s = s3.settings();
    s.static_credentials = Some(("milena-test".into(), "wrong".into()));
    let err = S3Tier::connect(s)
        .await
        .get(b"k", 0)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("tier get"), "{err}");
    let mut s = s3.settings();
    s.bucket = "no-such-bucket".into();
    let err = S3Tier::connect(s)
        .await
        .check()
        .await
        .expect_err("no bucket");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    // Nothing listening: reported as unreachable, not as a refusal.
    let mut s = s3.settings();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    s.endpoint = Some(format!("http://{}", closed.local_addr().expect("addr")));
    drop(closed);
    let why = S3Tier::connect(s)
        .await
        .check()
        .await
        .expect("not a refusal");
    assert!(why.is_some());
}
