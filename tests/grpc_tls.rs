//! The gRPC gateway behind tonic's TLS, as the guide's "Secure
//! Communication" snippet sets it up: certificates made in the test, a full
//! put/get through the router and a node, an untrusted certificate
//! refused, and mutual TLS without a client certificate refused.

mod common;

use common::*;
use milena::grpc::{Channel, GetRequest, PutRequest, RouterClient, RouterServer, Server};
use milena::router::grpc::Gateway;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A CA, and a certificate it signed for `name`: (ca pem, cert pem, key pem).
struct Pki {
    ca: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let ca = params.self_signed(&key).expect("ca").pem();
        Pki {
            ca,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Serves the gateway over a router (with one node) behind TLS; returns the
/// https URL.
async fn tls_gateway(
    pki: &Pki,
    client_ca: Option<&str>,
) -> (String, CancellationToken, TestRouter, ClusterNode) {
    let router = start_router(test_router_settings()).await;
    let node = ClusterNode::start("127.0.0.1:0", &[router.url()], small_settings());
    router.wait_members(&[&node.url()]).await;
    let (cert, key) = pki.issue("localhost");
    let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let router_service = Gateway::new(router.router.clone());
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let server = Server::builder()
        .tls_config(tls_config)
        .expect("tls config")
        .add_service(RouterServer::new(router_service));
    tokio::spawn(server.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move { signal.cancelled().await },
    ));
    (format!("https://localhost:{port}"), stop, router, node)
}

async fn connect(
    url: &str,
    tls_config: ClientTlsConfig,
) -> Result<RouterClient<Channel>, tonic::transport::Error> {
    let channel = Channel::from_shared(url.to_string())
        .expect("uri")
        .tls_config(tls_config)?
        .connect()
        .await?;
    Ok(RouterClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_over_tls() {
    let pki = Pki::new();
    let (url, stop, router, node) = tls_gateway(&pki, None).await;
    let tls_config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    let mut client = connect(&url, tls_config).await.expect("TLS connect");
    client
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"secret".to_vec(),
            ttl_seconds: 0,
        })
        .await
        .expect("put");
    let got = client
        .get(GetRequest { key: b"k".to_vec() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.value, b"secret");
    assert_eq!(
        node.node.cache.store().stats().items,
        1,
        "it went through to the node"
    );
    stop.cancel();
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let pki = Pki::new();
    let (url, stop, router, node) = tls_gateway(&pki, None).await;
    let stranger = Pki::new();
    let tls_config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&stranger.ca));
    let refused = match connect(&url, tls_config).await {
        Err(_) => true,
        Ok(mut c) => c.get(GetRequest { key: b"k".to_vec() }).await.is_err(),
    };
    assert!(
        refused,
        "a server certificate from an unknown CA was accepted"
    );
    stop.cancel();
    node.stop().await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate() {
    let pki = Pki::new();
    let (url, stop, router, node) = tls_gateway(&pki, Some(&pki.ca)).await;
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));
    let refused = match connect(&url, anonymous).await {
        Err(_) => true,
        Ok(mut c) => c.get(GetRequest { key: b"k".to_vec() }).await.is_err(),
    };
    assert!(refused, "a client without a certificate got through");
    let (cert, key) = pki.issue("client");
    let with_identity = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .identity(Identity::from_pem(cert, key));
    let mut c = connect(&url, with_identity).await.expect("mTLS connect");
    c.put(PutRequest {
        key: b"m".to_vec(),
        value: b"tls".to_vec(),
        ttl_seconds: 0,
    })
    .await
    .expect("put");
    stop.cancel();
    node.stop().await;
    router.stop().await;
}
