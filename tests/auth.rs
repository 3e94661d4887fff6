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
    assert!(err.to_string().contains("wrong cluster token"), "{err}");
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
