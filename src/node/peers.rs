//! Connections from this node to other nodes, for asking a key's previous
//! owner about writes it has not yet made durable (`Peek`), so a new owner
//! never bypasses them by reading an older copy from the tier; and for
//! keeping second copies of this node's own such writes on their
//! successors (`Settle`; the copies themselves go over `copies`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use milena_protocol::{Body, Op, Status};

use super::tier::Object;
use super::tier::writeback::Pending;
use crate::client::{Client, ClientError, ClientOptions};

/// Limit on connecting to a peer and on each peek: a slow or dead previous
/// owner delays a miss by at most this, then the tier alone answers.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Most peer connections kept; beyond it the map is cleared (rings are small).
const MAX_PEERS: usize = 256;

/// Lazily opened, shared connections to peers, by address.
pub struct Peers {
    options: ClientOptions,
    clients: Mutex<HashMap<String, Client>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers reached with `tls` for `https://` addresses.
    pub fn new(tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>) -> Self {
        Peers {
            options: ClientOptions {
                tls,
                connect_timeout: PEER_TIMEOUT,
                request_timeout: Some(PEER_TIMEOUT),
                ..ClientOptions::default()
            },
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, address: &str) -> Option<Client> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .cloned()
    }

    /// The write `address` holds for `key` and has not yet made durable.
    pub async fn peek(&self, address: &str, key: &[u8]) -> Result<Option<Pending>, ClientError> {
        let reply = self.call(address, Op::Peek { key }).await?;
        decode(reply)
    }

    /// How peers are reached (TLS, timeouts), for other streams to them.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Tells `address` these writes are durable (see `Settle`).
    pub async fn settle(
        &self,
        address: &str,
        entries: &[(Vec<u8>, u64)],
    ) -> Result<(), ClientError> {
        let entries = entries
            .iter()
            .map(|(key, version)| milena_protocol::Settled {
                key,
                version: *version,
            })
            .collect();
        self.call(address, Op::Settle { entries })
            .await?
            .into_result()
            .map(|_| ())
    }

    async fn call(&self, address: &str, op: Op<'_>) -> Result<crate::client::Reply, ClientError> {
        // One retry on a fresh connection: a cached one may have died with
        // an earlier incarnation of the peer.
        for fresh in [false, true] {
            let client = match self.cached(address) {
                Some(c) if !fresh => c,
                _ => {
                    let c = Client::connect_with(address, self.options.clone()).await?;
                    let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                    if map.len() >= MAX_PEERS {
                        map.clear();
                    }
                    map.insert(address.to_string(), c.clone());
                    c
                }
            };
            match client.call(op.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(ClientError::Closed) if !fresh => continue,
                Err(e) => {
                    self.clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(address);
                    return Err(e);
                }
            }
        }
        Err(ClientError::Closed)
    }
}

fn decode(reply: crate::client::Reply) -> Result<Option<Pending>, ClientError> {
    let reply = reply.into_result()?;
    if reply.status == Status::NotFound {
        return Ok(None);
    }
    match reply.response().body {
        Body::Entry {
            version,
            deleted: true,
            ..
        } => Ok(Some(Pending::Delete(version))),
        Body::Entry {
            version,
            expires_at,
            value,
            ..
        } => Ok(Some(Pending::Put(Object {
            value: bytes::Bytes::copy_from_slice(value),
            expires_at: (expires_at != 0).then_some(expires_at),
            version,
        }))),
        _ => Err(ClientError::Protocol(
            "a peek answered without an entry".into(),
        )),
    }
}
