//! TLS on the binary protocol, with certificates made in the test: client →
//! router → node and node → router all over TLS, an untrusted certificate
//! refused, mutual TLS without a client certificate refused, and a plain
//! client on a TLS port refused without harming the router.

mod common;

use std::path::PathBuf;

use common::*;
use milena::client::{Client, ClientOptions};
use milena::router::RouterSettings;
use milena::tls::{Tls, client_config};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("milena-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (redis-cli, Python) takes a leaf whose
        // subject equals its issuer's for self-signed, and refuses it.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("milena test CA {name}"));
        let key = KeyPair::generate().expect("key");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, params.self_signed(&key).expect("ca").pem()).expect("write");
        Pki {
            dir,
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    /// Cert and key files for `localhost`, signed by this CA.
    fn issue(&self, who: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, who.to_string());
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (c, k) = (
            self.dir.join(format!("{who}.pem")),
            self.dir.join(format!("{who}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    fn tls(&self, who: &str, client_auth: bool) -> Tls {
        let (c, k) = self.issue(who);
        Tls::from_files(&c, &k, Some(&self.ca), client_auth).expect("tls config")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https(addr: std::net::SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

async fn tls_cluster(pki: &Pki, client_auth: bool) -> (TestRouter, ClusterNode) {
    let router = start_router(RouterSettings {
        tls: Some(pki.tls("router", client_auth)),
        ..test_router_settings()
    })
    .await;
    let node_settings = milena::node::NodeSettings {
        tls: Some(pki.tls("node", client_auth)),
        ..small_settings()
    };
    let node = ClusterNode::start("127.0.0.1:0", &[https(router.addr)], node_settings);
    assert!(node.url().starts_with("https://"));
    router.wait_members(&[&node.url()]).await;
    (router, node)
}

fn options(ca: &std::path::Path, identity: Option<(PathBuf, PathBuf)>) -> ClientOptions {
    let tls = milena::tls::client_config_from_files(
        Some(ca),
        identity.as_ref().map(|i| i.0.as_path()),
        identity.as_ref().map(|i| i.1.as_path()),
    )
    .expect("client tls");
    ClientOptions {
        tls: Some(tls),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_through_router_and_node_over_tls() {
    let pki = Pki::new("full");
    let (router, node) = tls_cluster(&pki, false).await;
    let c = Client::connect_with(&https(router.addr), options(&pki.ca, None))
        .await
        .expect("TLS client");
    for i in 0..100 {
        c.put(format!("k{i}").as_bytes(), b"over tls", None)
            .await
            .expect("put");
    }
    for i in 0..100 {
        assert_eq!(
            c.get(format!("k{i}").as_bytes())
                .await
                .expect("get")
                .as_deref(),
            Some(&b"over tls"[..])
        );
    }
    assert_eq!(
        node.node.cache.store().stats().items,
        100,
        "the node got them over its TLS listener"
    );
    // A plain client on the TLS port is refused; the router keeps serving.
    let plain = Client::connect(&router.url()).await;
    assert!(plain.is_err(), "plain text accepted on a TLS port");
    c.ping().await.expect("still serving");
    // https:// without a CA to trust is a clear error, not a plain connection.
    let err = Client::connect(&https(router.addr))
        .await
        .expect_err("no CA given");
    assert!(err.to_string().contains("TLS_CA"), "{err}");
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let pki = Pki::new("trusted");
    let router = start_router(RouterSettings {
        tls: Some(pki.tls("router", false)),
        ..test_router_settings()
    })
    .await;
    let other = Pki::new("stranger");
    let err = Client::connect_with(&https(router.addr), options(&other.ca, None))
        .await
        .expect_err("certificate from an unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = Pki::new("mtls");
    let (router, node) = tls_cluster(&pki, true).await; // nodes present their certificates
    let anonymous = Client::connect_with(&https(router.addr), options(&pki.ca, None)).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(c) => c.ping().await.is_err(),
    };
    assert!(refused, "a client without a certificate got through");
    let c = Client::connect_with(
        &https(router.addr),
        options(&pki.ca, Some(pki.issue("client"))),
    )
    .await
    .expect("client with a certificate");
    c.put(b"k", b"v", None).await.expect("put");
    assert_eq!(c.get(b"k").await.expect("get").as_deref(), Some(&b"v"[..]));
    let _ = client_config(Some(&pki.ca), None).expect("plain client config builds");
    node.stop().await;
    router.stop().await;
}

/// gRPC over the router's own TLS port: ALPN `h2` selects the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_the_routers_tls_port() {
    use milena::grpc::{Channel, MembersRequest, RouterClient};
    use tonic::transport::{Certificate, ClientTlsConfig};
    let pki = Pki::new("grpc");
    let (router, node) = tls_cluster(&pki, false).await;
    let ca = std::fs::read(&pki.ca).expect("ca");
    let channel = Channel::from_shared(https(router.addr))
        .expect("uri")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let members = RouterClient::new(channel)
        .members(MembersRequest {})
        .await
        .expect("members");
    assert_eq!(members.into_inner().addresses, vec![node.url()]);
    node.stop().await;
    router.stop().await;
}

/// The guide's TLS snippet (examples/tls.rs) run as written: a gateway
/// behind tonic's TLS, a node joining its router, a client that trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_tls_snippet_runs() {
    let pki = Pki::new("example");
    let (cert, key) = pki.issue("gateway");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
    };
    let example = std::env::current_exe()
        .expect("test binary")
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("tls"))
        .expect("examples dir");
    // The snippet serves on an address it is given, so the test picks free
    // ports first; another test may take one before the example binds it,
    // in which case the example exits and the test tries new ports (bounded).
    let mut last = String::new();
    for _attempt in 0..5 {
        let (grpc_addr, router_addr) = (free(), free());
        let mut server = tokio::process::Command::new(&example)
            .args(["serve"])
            .arg(&cert)
            .arg(&key)
            .arg(grpc_addr.to_string())
            .arg(router_addr.to_string())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo test builds examples)", example.display()));
        let node = ClusterNode::start(
            "127.0.0.1:0",
            &[format!("http://{router_addr}")],
            small_settings(),
        );
        // The node joins once the example's router listens; the client
        // retries until the gateway answers (bounded).
        for _ in 0..200 {
            if let Ok(Some(status)) = server.try_wait() {
                last = format!("the example exited ({status}) before answering");
                break;
            }
            let out = tokio::process::Command::new(&example)
                .args(["put", &format!("https://localhost:{}", grpc_addr.port())])
                .arg(&pki.ca)
                .args(["greeting", "hello over tls"])
                .output()
                .await
                .expect("run client");
            if out.status.success() {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "hello over tls"
                );
                assert_eq!(node.node.cache.store().stats().items, 1);
                let _ = server.kill().await;
                node.stop().await;
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = server.kill().await;
        node.stop().await;
    }
    panic!("the TLS example never answered: {last}");
}

/// Redis and memcached clients over TLS: `redis-cli --tls` on the router's
/// own port (told from the binary protocol by its first byte after the
/// handshake) and on `REDIS_ADDR`; pymemcache with TLS on `MEMCACHE_ADDR`;
/// a plain client on those ports gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_memcached_clients_over_tls() {
    let pki = Pki::new("fronts");
    let (router, node) = tls_cluster(&pki, false).await;
    let bind = || milena::net::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let (redis_l, mc_l) = (bind(), bind());
    let (redis_port, mc_port) = (
        redis_l.local_addr().expect("addr").port(),
        mc_l.local_addr().expect("addr").port(),
    );
    tokio::spawn(milena::router::redis::serve(
        redis_l,
        router.router.clone(),
        router.shutdown.clone(),
    ));
    tokio::spawn(milena::router::memcache::serve(
        mc_l,
        router.router.clone(),
        router.shutdown.clone(),
    ));
    let ca = pki.ca.to_str().expect("path").to_string();
    let redis_cli = |port: u16, stdin: &'static str| {
        let ca = ca.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new("redis-cli")
                .args(["--tls", "--cacert", &ca])
                .args(["-h", "localhost", "-p", &port.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("redis-cli");
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(stdin.as_bytes()).await.expect("write");
            drop(input);
            let out = child.wait_with_output().await.expect("ran");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    assert_eq!(
        redis_cli(router.addr.port(), "SET tls-key v1\nGET tls-key\n").await,
        "OK\nv1\n"
    );
    assert_eq!(redis_cli(redis_port, "GET tls-key\n").await, "v1\n");
    let script = r#"
import ssl, sys
from pymemcache.client.base import Client
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
c = Client(('127.0.0.1', int(sys.argv[1])), tls_context=ctx)
assert c.get('tls-key') == b'v1'
assert c.set('tls-mc', 'v2', noreply=False) is True
print('ok')
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &mc_port.to_string(), &ca])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The binary protocol on the same TLS port still works, and sees it.
    let tls_opts = ClientOptions {
        tls: Some(client_config(Some(&pki.ca), None).expect("client tls")),
        ..ClientOptions::default()
    };
    let c = Client::connect_with(&https(router.addr), tls_opts)
        .await
        .expect("binary over tls");
    assert_eq!(
        c.get(b"tls-mc").await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
    // Plain text on a TLS port is not served.
    let plain = tokio::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis_port.to_string(), "PING"])
        .output()
        .await
        .expect("redis-cli");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));
    node.stop().await;
    router.stop().await;
}
