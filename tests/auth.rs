//! CLUSTER_TOKEN: join, leave and heartbeat need it; data operations do not;
//! a wrong token is refused at hello; membership never changes without it.

mod common;

use common::*;
use milena::client::{Client, ClientOptions};
use milena::error::Secret;
use milena::protocol::Status;
use milena::router::RouterSettings;

const TOKEN: &str = "s3cret-cluster-token";

async fn router_with_token() -> TestRouter {
    start_router(RouterSettings {
        cluster_token: Some(Secret::new(TOKEN)),
        ..test_router_settings()
    })
    .await
}

async fn client(url: &str, token: Option<&str>) -> Result<Client, milena::client::ClientError> {
    Client::connect_with(
        url,
        ClientOptions {
            token: token.map(str::to_string),
            ..ClientOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_the_token() {
    let router = router_with_token().await;
    let node = start_node(small_settings()).await;

    // Without a token: data and members are fine, membership changes are not.
    let anon = client(&router.url(), None)
        .await
        .expect("connect without a token");
    for err in [
        anon.join(&node.url()).await.expect_err("join"),
        anon.heartbeat(&node.url()).await.expect_err("heartbeat"),
    ] {
        assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
        assert!(err.to_string().contains("CLUSTER_TOKEN"), "{err}");
        assert!(
            !err.to_string().contains(TOKEN),
            "the token never appears in messages"
        );
    }
    assert_eq!(router.router.members.view().ring.len(), 0);

    // With the token: the join works.
    let admin = client(&router.url(), Some(TOKEN))
        .await
        .expect("connect with the token");
    admin.join(&node.url()).await.expect("join");
    assert_eq!(anon.members().await.expect("members").1, vec![node.url()]);

    // A rogue client cannot remove it.
    let err = anon
        .leave(&node.url())
        .await
        .expect_err("leave without token");
    assert_eq!(err.status(), Some(Status::Unauthorized));
    assert_eq!(router.router.members.view().ring.len(), 1);
    admin.leave(&node.url()).await.expect("leave with token");
    assert_eq!(router.router.members.view().ring.len(), 0);
    node.stop().await;
    router.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_at_hello() {
    let router = router_with_token().await;
    let err = client(&router.url(), Some("guess"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    assert!(err.to_string().contains("wrong token"), "{err}");
    // The router still serves others.
    client(&router.url(), Some(TOKEN))
        .await
        .expect("right token")
        .ping()
        .await
        .expect("ping");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_token_join_and_serve() {
    let router = router_with_token().await;
    let good = ClusterNode::start_with_token(
        "127.0.0.1:0",
        &[router.url()],
        small_settings(),
        Some(TOKEN),
    );
    router.wait_members(&[&good.url()]).await;
    let c = client(&router.url(), None).await.expect("connect");
    c.put(b"k", b"v", None).await.expect("data needs no token");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));
    good.stop().await;
    router.wait_members(&[]).await;
    router.stop().await;
}

#[test]
fn tokens_never_show_in_debug_output() {
    let s = Secret::new(TOKEN);
    assert!(!format!("{s:?}").contains(TOKEN));
    let opts = ClientOptions {
        token: Some(TOKEN.into()),
        ..ClientOptions::default()
    };
    assert!(!format!("{opts:?}").contains(TOKEN));
    let settings = RouterSettings {
        cluster_token: Some(Secret::new(TOKEN)),
        ..RouterSettings::default()
    };
    assert!(!format!("{settings:?}").contains(TOKEN));
    assert!(s.matches(Some(TOKEN)));
    assert!(!s.matches(Some("s3cret-cluster-tokeN")));
    assert!(!s.matches(None));
}

const CLIENT: &str = "s3cret-client-token";

/// CLIENT_TOKEN: every data path needs it (binary hello, gRPC metadata,
/// Redis AUTH); nodes still join with the cluster token alone; wrong
/// tokens are refused; what needs no token keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_operations_need_the_client_token_when_one_is_set() {
    let router = start_router(RouterSettings {
        cluster_token: Some(Secret::new(TOKEN)),
        client_token: Some(Secret::new(CLIENT)),
        ..test_router_settings()
    })
    .await;
    let node = ClusterNode::start_with_token(
        "127.0.0.1:0",
        &[router.url()],
        small_settings(),
        Some(TOKEN),
    );
    router.wait_members(&[&node.url()]).await;

    // Binary protocol.
    let anon = client(&router.url(), None)
        .await
        .expect("hello without a token");
    anon.ping().await.expect("ping needs no token");
    for err in [
        anon.get(b"k").await.expect_err("get"),
        anon.put(b"k", b"v", None).await.expect_err("put"),
        anon.stats().await.expect_err("stats"),
        anon.members().await.expect_err("members"),
    ] {
        assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
        assert!(err.to_string().contains("CLIENT_TOKEN"), "{err}");
        assert!(!err.to_string().contains(CLIENT), "the token never appears");
    }
    let app = client(&router.url(), Some(CLIENT))
        .await
        .expect("client token");
    app.put(b"k", b"v", None)
        .await
        .expect("put with the client token");
    assert_eq!(
        app.get(b"k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    let err = app
        .join("http://127.0.0.1:1")
        .await
        .expect_err("no membership");
    assert_eq!(err.status(), Some(Status::Unauthorized), "{err}");
    let admin = client(&router.url(), Some(TOKEN))
        .await
        .expect("cluster token");
    assert_eq!(
        admin.get(b"k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );

    // gRPC: `authorization: Bearer <token>` metadata.
    use milena::grpc::{GetRequest, RouterClient};
    let mut g = RouterClient::connect(router.url()).await.expect("grpc");
    let err = g
        .get(GetRequest { key: b"k".to_vec() })
        .await
        .expect_err("no metadata");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut req = tonic::Request::new(GetRequest { key: b"k".to_vec() });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {CLIENT}").parse().expect("metadata"),
    );
    assert_eq!(
        g.get(req).await.expect("with the token").into_inner().value,
        b"v"
    );

    // Redis: AUTH, and redis-cli's -a.
    let redis = |args: &[&str], stdin: &str| {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &router.addr.port().to_string()])
            .args(args)
            .env("REDISCLI_AUTH", "")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let stdin = stdin.to_string();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = cmd.spawn().expect("redis-cli (Debian package redis-tools)");
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(stdin.as_bytes()).await.expect("write");
            drop(input);
            let out = child.wait_with_output().await.expect("redis-cli ran");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let out = redis(&[], "GET k\nAUTH wrong\nAUTH s3cret-client-token\nGET k\n").await;
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        [
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair or user is disabled.",
            "OK",
            "v"
        ]
    );
    let out = redis(&["-a", CLIENT, "--no-auth-warning"], "GET k\n").await;
    assert_eq!(out.trim(), "v");
    node.stop().await;
    router.stop().await;
}
