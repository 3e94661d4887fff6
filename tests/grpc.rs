//! The gRPC gateway over real HTTP/2, on the same port as the binary
//! protocol and the HTTP health answer.

mod common;

use std::time::Duration;

use common::*;
use milena::client::Client;
use milena::error::Secret;
use milena::grpc::{
    DeleteRequest, GetRequest, JoinRequest, LeaveRequest, MembersRequest, PutRequest, RouterClient,
};
use milena::router::RouterSettings;
use milena::router::grpc::TOKEN_METADATA;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_members_leave_over_grpc() {
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;

    let mut g = RouterClient::connect(router.url())
        .await
        .expect("grpc connect");
    g.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ttl_seconds: 0,
    })
    .await
    .expect("put");
    let got = g
        .get(GetRequest { key: b"k".to_vec() })
        .await
        .expect("get")
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"v");
    let missing = g
        .get(GetRequest {
            key: b"nope".to_vec(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(!missing.found);

    // The same port still speaks the binary protocol and HTTP/1.
    let c = Client::connect(&router.url()).await.expect("binary");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));
    assert!(http_get(router.addr, "/").await.contains("ok, 1 members"));

    let del = g
        .delete(DeleteRequest { key: b"k".to_vec() })
        .await
        .expect("delete")
        .into_inner();
    assert!(del.deleted);
    assert!(
        !g.get(GetRequest { key: b"k".to_vec() })
            .await
            .expect("get")
            .into_inner()
            .found
    );

    let members = g
        .members(MembersRequest {})
        .await
        .expect("members")
        .into_inner();
    assert_eq!(members.addresses, vec![node.url()]);
    g.leave(LeaveRequest {
        address: node.url(),
    })
    .await
    .expect("leave");
    assert!(
        g.members(MembersRequest {})
            .await
            .expect("members")
            .into_inner()
            .addresses
            .is_empty()
    );
    g.join(JoinRequest {
        address: node.url(),
    })
    .await
    .expect("join");
    assert_eq!(router.router.members.view().ring.len(), 1);
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_grpc_status_codes() {
    let router = start_router(test_router_settings()).await;
    let mut g = RouterClient::connect(router.url()).await.expect("connect");
    let e = g
        .get(GetRequest { key: b"k".to_vec() })
        .await
        .expect_err("no nodes");
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let e = g
        .put(PutRequest {
            key: vec![],
            value: vec![],
            ttl_seconds: 0,
        })
        .await
        .expect_err("empty key");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = g
        .join(JoinRequest {
            address: "not a url".into(),
        })
        .await
        .expect_err("bad address");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let e = g
        .put(PutRequest {
            key: vec![b'k'; 300],
            value: vec![],
            ttl_seconds: 0,
        })
        .await
        .expect_err("key over MAX_KEY_SIZE");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("MAX_KEY_SIZE"), "{e}");
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_resource_exhausted() {
    let router = start_router(RouterSettings {
        rate_limit: 1,
        ..test_router_settings()
    })
    .await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let mut g = RouterClient::connect(router.url()).await.expect("connect");
    let mut codes = Vec::new();
    for _ in 0..5 {
        if let Err(e) = g.get(GetRequest { key: b"k".to_vec() }).await {
            codes.push(e.code());
        }
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_need_the_token_over_grpc() {
    let router = start_router(RouterSettings {
        cluster_token: Some(Secret::new("tok")),
        ..test_router_settings()
    })
    .await;
    let node = start_node(small_settings()).await;
    let mut g = RouterClient::connect(router.url()).await.expect("connect");
    let e = g
        .join(JoinRequest {
            address: node.url(),
        })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(JoinRequest {
        address: node.url(),
    });
    wrong
        .metadata_mut()
        .insert(TOKEN_METADATA, "nope".parse().expect("ascii"));
    assert_eq!(
        g.join(wrong).await.expect_err("wrong token").code(),
        Code::Unauthenticated
    );
    assert_eq!(
        router.router.members.view().ring.len(),
        0,
        "membership unchanged"
    );

    let mut right = tonic::Request::new(JoinRequest {
        address: node.url(),
    });
    right
        .metadata_mut()
        .insert(TOKEN_METADATA, "tok".parse().expect("ascii"));
    g.join(right).await.expect("join with token");
    let e = g
        .leave(LeaveRequest {
            address: node.url(),
        })
        .await
        .expect_err("leave without token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(router.router.members.view().ring.len(), 1);
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_gets_a_grpc_error_and_the_router_keeps_serving() {
    let router = start_router(test_router_settings()).await;
    let channel = tonic::transport::Channel::from_shared(router.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    // Bytes that are not a valid GetRequest (a truncated length-delimited field).
    let garbage = bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0x01]);
    let e = raw
        .unary(
            tonic::Request::new(garbage.clone()),
            "/milena.Router/Get".parse().expect("path"),
            RawCodec,
        )
        .await
        .expect_err("undecodable");
    assert!(
        matches!(e.code(), Code::Internal | Code::InvalidArgument),
        "{e}"
    );
    raw.ready().await.expect("ready");
    let e = raw
        .unary(
            tonic::Request::new(garbage),
            "/milena.Router/Nope".parse().expect("path"),
            RawCodec,
        )
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), Code::Unimplemented, "{e}");
    let mut g = RouterClient::connect(router.url()).await.expect("connect");
    g.members(MembersRequest {}).await.expect("still serving");
    router.stop().await;
}

/// The guide's snippet (examples/leave.rs) run as written against a router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_leave_snippet_runs() {
    let router = start_router(test_router_settings()).await;
    let node = start_node(small_settings()).await;
    Client::connect(&router.url())
        .await
        .expect("c")
        .join(&node.url())
        .await
        .expect("join");
    let exe = std::env::current_exe().expect("test binary");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("leave"))
        .expect("examples dir");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&example)
            .arg(router.url())
            .arg(node.url())
            .output(),
    )
    .await
    .expect("finishes")
    .unwrap_or_else(|e| panic!("{}: {e} (cargo test builds examples)", example.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(router.router.members.view().ring.len(), 0);
    node.stop().await;
    router.stop().await;
}

/// The guide's snippet names a node `http://localhost:50053` while the node
/// registered itself as `http://<host name>:50053` (what a node listening
/// on 0.0.0.0 advertises): it is the same node, and leaving it works. A
/// leave that names no member is an error listing the members, not a
/// silent OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_leave_snippet_matches_the_node_by_another_name() {
    let router = start_router(test_router_settings()).await;
    let node = start_node(small_settings()).await;
    let port = node.addr.port();
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let registered = format!("http://{host}:{port}");
    let c = Client::connect(&router.url()).await.expect("c");
    // As a node listening on 0.0.0.0 registers (set in the table directly:
    // a join would first check that the host name reaches this node).
    router.router.members.join(&registered);
    let example = std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("leave"))
        .expect("examples dir");
    let run = |node: String| {
        let (example, router) = (example.clone(), router.url());
        async move {
            tokio::process::Command::new(&example)
                .arg(router)
                .arg(node)
                .output()
                .await
                .expect("the example runs")
        }
    };
    let stranger = run("http://localhost:1".into()).await;
    assert!(!stranger.status.success(), "leaving a non-member must fail");
    let err = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        err.contains("not a member") && err.contains(&registered),
        "the error names the members: {err}"
    );
    let out = run(format!("http://localhost:{port}")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(router.router.members.view().ring.len(), 0);
    // Over the binary protocol too.
    let e = c
        .leave("http://localhost:1")
        .await
        .expect_err("not a member");
    assert!(e.to_string().contains("not a member"), "{e}");
    node.stop().await;
    router.stop().await;
}

/// Values up to MAX_VALUE_SIZE go through the gateway as through the
/// binary protocol (tonic's own limit is 4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_goes_through_grpc_up_to_max_value_size() {
    let router = start_router(test_router_settings()).await;
    let settings = milena::node::NodeSettings {
        max_value: 16 * 1024 * 1024,
        ..small_settings()
    };
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], settings);
    router.wait_members(&[&node.url()]).await;
    let mut g = RouterClient::connect(router.url())
        .await
        .expect("connect")
        .max_decoding_message_size(32 << 20)
        .max_encoding_message_size(32 << 20);
    let value = vec![7u8; 5 << 20];
    g.put(PutRequest {
        key: b"big".to_vec(),
        value: value.clone(),
        ttl_seconds: 0,
    })
    .await
    .expect("a 5 MiB put");
    let got = g
        .get(GetRequest {
            key: b"big".to_vec(),
        })
        .await
        .expect("a 5 MiB get")
        .into_inner();
    assert_eq!(got.value.len(), value.len());
    node.stop().await;
    router.stop().await;
}

/// A Join address must be a real `scheme://host:port`, bounded and valid
/// UTF-8; anything else is INVALID_ARGUMENT and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_addresses_are_invalid_arguments() {
    let router = start_router(test_router_settings()).await;
    let mut g = RouterClient::connect(router.url()).await.expect("connect");
    let huge = format!("http://{}:1", "h".repeat(100_000));
    for address in [
        ":1",
        "http://:0",
        "http://host:99999",
        "http://host:0",
        "a b:1",
        "http://ho\nst:1",
        "http://host:1/path",
        "ftp://host:1",
        huge.as_str(),
    ] {
        let e = g
            .join(JoinRequest {
                address: address.to_string(),
            })
            .await
            .expect_err(address);
        assert_eq!(e.code(), Code::InvalidArgument, "{address:.60}: {e}");
    }
    // Not UTF-8 at all: field 1 (address), 3 bytes 0xff 0xfe 0xfd.
    let channel = tonic::transport::Channel::from_shared(router.url())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    let e = raw
        .unary(
            tonic::Request::new(bytes::Bytes::from_static(&[0x0a, 0x03, 0xff, 0xfe, 0xfd])),
            "/milena.Router/Join".parse().expect("path"),
            RawCodec,
        )
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert_eq!(router.router.members.view().ring.len(), 0);
    router.stop().await;
}

/// Passes bytes through untouched, to send what no generated client would.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
