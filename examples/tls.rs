//! The operations guide's "Secure Communication" snippet, as written: the
//! gRPC gateway served by tonic with TLS, and a client that trusts it.
//!
//! ```text
//! cargo run --example tls -- serve CERT.pem KEY.pem 127.0.0.1:50443 127.0.0.1:50050
//!     # the gateway over TLS on :50443; nodes join the embedded router on :50050
//! cargo run --example tls -- put https://localhost:50443 CA.pem KEY VALUE
//! ```

use std::sync::Arc;

use milena::grpc::{Channel, GetRequest, PutRequest, RouterClient, RouterServer, Server};
use milena::router::grpc::Gateway;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 5 => {
            let identity = Identity::from_pem(std::fs::read(&args[1])?, std::fs::read(&args[2])?);
            let addr = args[3].parse()?;
            // An embedded router that nodes join on its binary-protocol port.
            let shutdown = tokio_util::sync::CancellationToken::new();
            let router = milena::router::Router::new(Default::default(), shutdown.clone());
            let nodes = milena::net::bind(args[4].parse()?)?;
            tokio::spawn(milena::router::run(nodes, router.clone(), shutdown));
            let router_service = Gateway::new(Arc::clone(&router));
            let tls_config = ServerTlsConfig::new().identity(identity);

            // Server-side TLS configuration
            Server::builder()
                .tls_config(tls_config)?
                .add_service(RouterServer::new(router_service))
                .serve(addr)
                .await?;
        }
        Some("put") if args.len() == 5 => {
            let ca = Certificate::from_pem(std::fs::read(&args[2])?);
            let tls_config = ClientTlsConfig::new().ca_certificate(ca);
            let url: &'static str = Box::leak(args[1].clone().into_boxed_str());

            // Client-side TLS configuration
            let channel = Channel::from_static(url)
                .tls_config(tls_config)?
                .connect()
                .await?;
            let mut client = RouterClient::new(channel);

            let (key, value) = (args[3].as_bytes().to_vec(), args[4].as_bytes().to_vec());
            client
                .put(PutRequest {
                    key: key.clone(),
                    value,
                    ttl_seconds: 0,
                })
                .await?;
            let got = client.get(GetRequest { key }).await?.into_inner();
            println!("{}", String::from_utf8_lossy(&got.value));
        }
        _ => eprintln!("usage: tls serve CERT KEY ADDR ROUTER_ADDR | tls put URL CA KEY VALUE"),
    }
    Ok(())
}
