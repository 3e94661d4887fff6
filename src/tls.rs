//! TLS (rustls) for every listener and client: configuration from PEM files
//! and one stream type for plain and TLS connections.
//!
//! Peers are verified against `TLS_CA` only (no system roots are shipped),
//! which is what a private cluster wants. `TLS_CLIENT_AUTH=true` makes a
//! server require client certificates signed by that CA (mutual TLS).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN id of Milena's binary protocol; `h2` and `http/1.1` select the gRPC
/// gateway and HTTP on a router's TLS port.
pub const ALPN_MILENA: &[u8] = b"milena/1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} from {path}: {error}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The path given.
        path: String,
        /// The cause.
        error: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: String| TlsError::File {
        what,
        path: path.display().to_string(),
        error: e,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "TLS_KEY",
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, "TLS_CA")? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("TLS_CA: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS settings shared by a process's listener and its outgoing connections.
#[derive(Clone)]
pub struct Tls {
    /// For accepting connections.
    pub acceptor: TlsAcceptor,
    /// For connecting to `https://` peers.
    pub connector: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// From `TLS_CERT`, `TLS_KEY`, `TLS_CA` and whether client
    /// certificates are required. The certificate also serves as this
    /// process's client certificate towards its peers.
    pub fn from_files(
        cert: &Path,
        key_path: &Path,
        ca: Option<&Path>,
        require_client_cert: bool,
    ) -> Result<Self, TlsError> {
        let chain = certs(cert, "TLS_CERT")?;
        let key = key(key_path)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (ca, require_client_cert) {
            (Some(ca), true) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, true) => {
                return Err(TlsError::Config(
                    "TLS_CLIENT_AUTH needs TLS_CA to verify client certificates".into(),
                ));
            }
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        server.alpn_protocols = vec![ALPN_MILENA.to_vec(), b"h2".to_vec(), b"http/1.1".to_vec()];
        let connector = client_config(ca, Some((chain, key)))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector,
        })
    }
}

/// A client configuration trusting `ca` and, for mutual TLS, presenting
/// `identity`.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => roots(ca)?,
        None => RootCertStore::empty(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_MILENA.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration from the CLI's environment: `TLS_CA`, and
/// `TLS_CERT` + `TLS_KEY` for mutual TLS.
pub fn client_config_from_files(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key_path: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let identity = match (cert, key_path) {
        (Some(c), Some(k)) => Some((certs(c, "TLS_CERT")?, key(k)?)),
        _ => None,
    };
    client_config(ca, identity)
}

/// Opens a TLS session to `host` over `tcp`.
pub async fn connect(config: Arc<ClientConfig>, host: &str, tcp: TcpStream) -> io::Result<Stream> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(Stream::Client(Box::new(tls)))
}

/// A connection, plain or TLS, server or client side.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, accepted.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, connected.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Another stream, with bytes already read from it (to tell which
    /// protocol a TLS connection speaks) handed out first.
    Prefixed(Box<Prefixed>),
}

/// A stream and the bytes read from it ahead of its reader.
pub struct Prefixed {
    /// Read already, not yet handed out.
    pub prefix: bytes::Bytes,
    /// The stream they came from.
    pub inner: Stream,
}

impl Stream {
    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(s) => s.get_ref().1.alpn_protocol(),
            Stream::Client(s) => s.get_ref().1.alpn_protocol(),
            Stream::Prefixed(p) => p.inner.alpn(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Prefixed(p) if !p.prefix.is_empty() => {
                let n = p.prefix.len().min(buf.remaining());
                buf.put_slice(&p.prefix.split_to(n));
                Poll::Ready(Ok(()))
            }
            Stream::Prefixed(p) => Pin::new(&mut p.inner).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Prefixed(p) => Pin::new(&mut p.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
            Stream::Prefixed(p) => Pin::new(&mut p.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Prefixed(p) => Pin::new(&mut p.inner).poll_shutdown(cx),
        }
    }
}
