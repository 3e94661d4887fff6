//! A small etcd v3 client over tonic: key ranges, transactions, leases
//! and watches, with etcd's user/password authentication and TLS. Every
//! unary call is bounded by [`CALL_TIMEOUT`]; streams are watched by HTTP/2
//! keep-alives, so a vanished etcd is an error within seconds, not a hang.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::pb::{
    self, auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    watch_client::WatchClient,
};
use crate::config::EtcdArgs;
use crate::error::Secret;

/// Longest wait for one etcd call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The settings cannot work.
    #[error("etcd settings: {0}")]
    Config(String),
    /// etcd could not be reached or failed; worth retrying.
    #[error("etcd is unreachable: {0}")]
    Unavailable(String),
    /// etcd answered with a refusal (permissions, bad request).
    #[error("etcd refused: {0}")]
    Refused(String),
    /// etcd holds data this version cannot read.
    #[error("etcd holds a ring record that does not read: {0}")]
    Record(String),
}

impl From<tonic::Status> for EtcdError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        match s.code() {
            Unavailable | DeadlineExceeded | Cancelled | Unknown | Internal | Aborted => {
                EtcdError::Unavailable(s.message().to_string())
            }
            code => EtcdError::Refused(format!("{code:?}: {}", s.message())),
        }
    }
}

/// A connection to an etcd cluster, scoped to a key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    channel: Channel,
    prefix: Arc<str>,
    auth: Option<Arc<Auth>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .finish()
    }
}

struct Auth {
    user: String,
    password: Secret,
    token: Mutex<Option<AsciiMetadataValue>>,
}

impl Etcd {
    /// A client for `args.etcd_endpoints` (connects lazily; calls fail
    /// with `Unavailable` while no endpoint answers). Must be called
    /// inside a tokio runtime.
    pub fn connect(args: &EtcdArgs) -> Result<Etcd, EtcdError> {
        let prefix = args.etcd_prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.len() > 200 {
            return Err(EtcdError::Config(
                "ETCD_PREFIX must be 1 to 200 bytes other than '/' (e.g. /milena)".into(),
            ));
        }
        let tls = tls_config(args)?;
        let mut endpoints = Vec::new();
        for url in &args.etcd_endpoints {
            let url = url.trim();
            crate::net::parse_url(url)
                .map_err(|e| EtcdError::Config(format!("ETCD_ENDPOINTS '{url}': {e}")))?;
            let mut ep = Endpoint::from_shared(url.to_string())
                .map_err(|e| EtcdError::Config(format!("ETCD_ENDPOINTS '{url}': {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // etcd sends GOAWAY to clients that ping more often than
                // its --grpc-keepalive-min-time (5 s by default).
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            if url.starts_with("https://") {
                let tls = tls.clone().ok_or_else(|| {
                    EtcdError::Config(format!(
                        "ETCD_ENDPOINTS '{url}' is https: set ETCD_CA to the CA that signed etcd's certificate"
                    ))
                })?;
                ep = ep
                    .tls_config(tls)
                    .map_err(|e| EtcdError::Config(format!("etcd TLS: {e}")))?;
            }
            endpoints.push(ep);
        }
        if endpoints.is_empty() {
            return Err(EtcdError::Config("ETCD_ENDPOINTS is empty".into()));
        }
        let channel = Channel::balance_list(endpoints.into_iter());
        let auth = match (&args.etcd_username, &args.etcd_password) {
            (Some(user), Some(password)) => Some(Arc::new(Auth {
                user: user.clone(),
                password: password.clone(),
                token: Mutex::new(None),
            })),
            _ => None,
        };
        Ok(Etcd {
            channel,
            prefix: Arc::from(prefix),
            auth,
        })
    }

    /// The full key of `rest` under the prefix.
    pub fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.prefix).into_bytes()
    }

    /// `(key, range_end)` covering every key that starts with `rest`
    /// under the prefix.
    pub fn range_of(&self, rest: &str) -> (Vec<u8>, Vec<u8>) {
        let key = self.key(rest);
        let mut end = key.clone();
        // Keys under the prefix end with "/..." so the last byte is never 0xff.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        (key, end)
    }

    /// The part of `key` after `<prefix>/`, if it is under the prefix.
    pub fn strip<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        std::str::from_utf8(rest.strip_prefix(b"/")?).ok()
    }

    async fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, EtcdError> {
        let mut req = tonic::Request::new(msg);
        if let Some(auth) = &self.auth {
            let token = self.token(auth).await?;
            req.metadata_mut().insert("token", token);
        }
        Ok(req)
    }

    async fn token(&self, auth: &Auth) -> Result<AsciiMetadataValue, EtcdError> {
        if let Some(t) = auth.token.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(t);
        }
        let req = pb::AuthenticateRequest {
            name: auth.user.clone(),
            password: auth.password.expose().to_string(),
        };
        let mut client = AuthClient::new(self.channel.clone());
        let resp = tokio::time::timeout(CALL_TIMEOUT, client.authenticate(req))
            .await
            .map_err(|_| EtcdError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))??
            .into_inner();
        let token = AsciiMetadataValue::try_from(resp.token.as_str())
            .map_err(|_| EtcdError::Refused("etcd sent an unusable auth token".into()))?;
        *auth.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }

    /// Runs one unary call, authenticating again once if the token expired.
    async fn call<T, R, F, Fut>(&self, msg: T, f: F) -> Result<R, EtcdError>
    where
        T: Clone,
        F: Fn(Channel, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut retried = false;
        loop {
            let req = self.request(msg.clone()).await?;
            let out = tokio::time::timeout(CALL_TIMEOUT, f(self.channel.clone(), req))
                .await
                .map_err(|_| {
                    EtcdError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}"))
                })?;
            match out {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unauthenticated && !retried => {
                    if let Some(auth) = &self.auth {
                        *auth.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    retried = true;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// Reads the keys in `[key, range_end)` (`range_end` empty: just `key`).
    pub async fn range(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let msg = pb::RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        self.call(
            msg,
            |ch, req| async move { KvClient::new(ch).range(req).await },
        )
        .await
    }

    /// Runs a transaction.
    pub async fn txn(&self, msg: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.call(
            msg,
            |ch, req| async move { KvClient::new(ch).txn(req).await },
        )
        .await
    }

    /// Writes `key` (under `lease`, 0 for none); returns the revision.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>, lease: i64) -> Result<u64, EtcdError> {
        let msg = pb::PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        };
        let r = self
            .call(
                msg,
                |ch, req| async move { KvClient::new(ch).put(req).await },
            )
            .await?;
        Ok(revision(r.header.as_ref()))
    }

    /// Grants a lease of `ttl` seconds: its id and the TTL etcd chose.
    pub async fn grant(&self, ttl: u64) -> Result<(i64, u64), EtcdError> {
        let msg = pb::LeaseGrantRequest {
            ttl: ttl as i64,
            id: 0,
        };
        let r = self
            .call(msg, |ch, req| async move {
                LeaseClient::new(ch).lease_grant(req).await
            })
            .await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Refused(r.error));
        }
        Ok((r.id, r.ttl.max(1) as u64))
    }

    /// Revokes a lease: its keys are deleted at once.
    pub async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let msg = pb::LeaseRevokeRequest { id };
        self.call(msg, |ch, req| async move {
            LeaseClient::new(ch).lease_revoke(req).await
        })
        .await
        .map(|_| ())
    }

    /// Opens a keep-alive stream for lease `id`.
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive, EtcdError> {
        let (tx, rx) = mpsc::channel(4);
        // The first renewal goes with the call: etcd answers the call only
        // once it has something to answer.
        tx.send(pb::LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| EtcdError::Unavailable("keep-alive channel closed".into()))?;
        let req = self.request(channel_stream(rx)).await?;
        let mut client = LeaseClient::new(self.channel.clone());
        let stream = tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(req))
            .await
            .map_err(|_| EtcdError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))??
            .into_inner();
        Ok(KeepAlive {
            id,
            tx,
            stream,
            primed: true,
        })
    }

    /// Watches `[key, range_end)` from `start_revision` on.
    pub async fn watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: u64,
    ) -> Result<WatchStream, EtcdError> {
        let (tx, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: start_revision as i64,
                    progress_notify: true,
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| EtcdError::Unavailable("watch channel closed".into()))?;
        let req = self.request(channel_stream(rx)).await?;
        let mut client = WatchClient::new(self.channel.clone());
        let stream = tokio::time::timeout(CALL_TIMEOUT, client.watch(req))
            .await
            .map_err(|_| EtcdError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))??
            .into_inner();
        Ok(WatchStream { _tx: tx, stream })
    }
}

/// The revision in a response header (0 if absent).
pub fn revision(h: Option<&pb::ResponseHeader>) -> u64 {
    h.map_or(0, |h| h.revision.max(0) as u64)
}

/// A request stream fed from a channel.
fn channel_stream<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// An open keep-alive stream for one lease.
pub struct KeepAlive {
    id: i64,
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    stream: tonic::Streaming<pb::LeaseKeepAliveResponse>,
    /// A renewal was sent with the call and is not answered yet.
    primed: bool,
}

impl KeepAlive {
    /// Renews the lease: the TTL etcd restarted it with, or 0 if the lease
    /// is gone (expired or revoked).
    pub async fn renew(&mut self) -> Result<u64, EtcdError> {
        if !std::mem::take(&mut self.primed) {
            self.tx
                .send(pb::LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| EtcdError::Unavailable("keep-alive stream closed".into()))?;
        }
        let msg = tokio::time::timeout(CALL_TIMEOUT, self.stream.message())
            .await
            .map_err(|_| EtcdError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))??
            .ok_or_else(|| EtcdError::Unavailable("keep-alive stream ended".into()))?;
        Ok(msg.ttl.max(0) as u64)
    }
}

/// An open watch.
pub struct WatchStream {
    // Keeps the request stream open: etcd ends a watch whose client
    // stream ends.
    _tx: mpsc::Sender<pb::WatchRequest>,
    stream: tonic::Streaming<pb::WatchResponse>,
}

impl WatchStream {
    /// The next batch of events (or progress notice).
    pub async fn next(&mut self) -> Result<pb::WatchResponse, EtcdError> {
        self.stream
            .message()
            .await?
            .ok_or_else(|| EtcdError::Unavailable("watch stream ended".into()))
    }
}

fn tls_config(args: &EtcdArgs) -> Result<Option<ClientTlsConfig>, EtcdError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| EtcdError::Config(format!("{}: {e}", p.display())))
    };
    let Some(ca) = &args.etcd_ca else {
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}
