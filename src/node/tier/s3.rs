//! The S3 tier: one object per key, in AWS S3 or any S3-compatible store
//! (MinIO, Ceph, R2, the tests' in-process `s3s-fs`).
//!
//! Each object carries its write version and absolute expiry as user
//! metadata (`x-amz-meta-milena-version`, `x-amz-meta-milena-expires`, Unix
//! seconds). Writes are compare-and-swap: read the stored version (HEAD),
//! give up if it is newer, then upload with `If-Match: <etag>` (or
//! `If-None-Match: *` for a new object) and start over if someone else
//! wrote in between — so a slow upload of an old value never replaces a
//! newer one. A delete writes a small tombstone the same way (S3 has no
//! conditional delete everywhere), so a delayed older put cannot bring a
//! deleted key back; tombstones expire after [`TOMBSTONE_LIFETIME`] and are
//! then removed lazily (or by the bucket's lifecycle rule).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::layout::{max_key_for, object_name};
use super::{Object, ReadOutcome, TOMBSTONE_LIFETIME, Tier, TierError, WriteOutcome};

/// Metadata key of the write version.
const META_VERSION: &str = "milena-version";
/// Metadata key of the absolute expiry (Unix seconds; absent = never).
const META_EXPIRES: &str = "milena-expires";
/// Metadata key marking a tombstone (a deleted key).
const META_DELETED: &str = "milena-deleted";
/// Compare-and-swap rounds before a write gives up (and is retried later
/// by the write-behind queue): only concurrent writers of one key lose one.
const CAS_ATTEMPTS: usize = 8;

/// Where the S3 tier stores objects and how it reaches the store.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Bucket name (`S3_BUCKET`).
    pub bucket: String,
    /// Object name prefix (`S3_PREFIX`), may be empty.
    pub prefix: String,
    /// Endpoint URL for S3-compatible stores (`S3_ENDPOINT`); switches to
    /// path-style addressing, which MinIO, Ceph and test servers expect.
    pub endpoint: Option<String>,
    /// Region (`AWS_REGION`); the credential chain's profile region when unset.
    pub region: Option<String>,
    /// Fixed access key and secret, instead of the standard credential
    /// chain (for embedding and tests; the binary uses the chain).
    pub static_credentials: Option<(String, String)>,
}

/// The S3 tier.
#[derive(Debug)]
pub struct S3Tier {
    client: Client,
    bucket: String,
    prefix: String,
    /// ETag and version of objects this node last wrote or read, by name:
    /// the next upload of the key goes straight to a conditional PUT
    /// (`If-Match` that ETag) without a HEAD. A stale entry only costs a
    /// 412 and the HEAD after all.
    known: Mutex<HashMap<String, (String, u64)>>,
}

/// Most entries in [`S3Tier`]'s ETag memory; cleared when full.
const KNOWN_ETAGS: usize = 65_536;

/// A stored object's ETag and version, from a HEAD.
struct Head {
    etag: Option<String>,
    version: u64,
}

impl S3Tier {
    /// Builds a client from the standard AWS configuration chain
    /// (environment, profile, web identity, container and instance
    /// credentials) plus `settings`. Makes no request.
    pub async fn connect(settings: S3Settings) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some((id, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "milena-static",
            ));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // S3-compatible stores rarely care; AWS itself needs AWS_REGION.
            conf = conf.region(aws_config::Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            conf = conf.endpoint_url(endpoint).force_path_style(true);
        }
        // Objects are small and each carries its own version; a CRC of
        // every body is CPU on the node for no gain (TLS already checks).
        conf = conf
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        S3Tier {
            client: Client::from_conf(conf.build()),
            bucket: settings.bucket,
            prefix: settings.prefix,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that the bucket exists and the credentials may use it: an
    /// error when the store refuses (wrong bucket, credentials, region),
    /// `Ok(Some(why))` when it cannot be reached at all (it may come back;
    /// the write-behind queue retries).
    pub async fn check(&self) -> Result<Option<String>, TierError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(None),
            Err(e) if http_status(&e).is_none() => Ok(Some(DisplayErrorContext(e).to_string())),
            Err(e) => Err(service("head bucket", &self.bucket, e)),
        }
    }

    /// The object name of `key`.
    pub fn object_name(&self, key: &[u8]) -> String {
        object_name(&self.prefix, key)
    }

    async fn head(&self, name: &str) -> Result<Option<Head>, TierError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(name)
            .send()
            .await
        {
            Ok(h) => {
                // An object without our version (a foreign object, or one
                // a store left half-written when an upload was cut off) is
                // never served, and any write of ours replaces it: as
                // version 0 it is older than everything.
                let version = parse_meta(name, h.metadata(), META_VERSION)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                Ok(Some(Head {
                    etag: h.e_tag().map(str::to_string),
                    version,
                }))
            }
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(service("head", name, e)),
        }
    }

    fn remember(&self, name: &str, etag: &str, version: u64) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_ETAGS {
            known.clear();
        }
        known.insert(name.to_string(), (etag.to_string(), version));
    }

    fn forget(&self, name: &str) -> Option<(String, u64)> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Uploads `body` as `name` at `version` unless a newer version is stored.
    async fn write(
        &self,
        name: &str,
        version: u64,
        expires_at: Option<u64>,
        tombstone: bool,
        body: &Bytes,
    ) -> Result<WriteOutcome, TierError> {
        let mut remembered = self.forget(name);
        for _ in 0..CAS_ATTEMPTS {
            let head = match remembered.take() {
                Some((etag, version)) => Some(Head {
                    etag: Some(etag),
                    version,
                }),
                None => self.head(name).await?,
            };
            if head.as_ref().is_some_and(|h| h.version > version) {
                return Ok(WriteOutcome::Superseded);
            }
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(name)
                .content_type("application/octet-stream")
                .metadata(META_VERSION, version.to_string())
                .body(ByteStream::from(body.clone()));
            if let Some(t) = expires_at {
                put = put.metadata(META_EXPIRES, t.to_string());
            }
            if tombstone {
                put = put.metadata(META_DELETED, "1");
            }
            put = match head {
                Some(Head {
                    etag: Some(etag), ..
                }) => put.if_match(etag),
                // No ETag to compare: the version check above is all we have.
                Some(Head { etag: None, .. }) => put,
                None => put.if_none_match("*"),
            };
            match put.send().await {
                Ok(out) => {
                    if let Some(etag) = out.e_tag() {
                        self.remember(name, etag, version);
                    }
                    return Ok(WriteOutcome::Stored);
                }
                // Someone wrote between our HEAD and PUT: look again.
                Err(e) if matches!(http_status(&e), Some(412 | 409)) => continue,
                Err(e) => return Err(service("put", name, e)),
            }
        }
        Err(TierError::Service {
            op: "put",
            name: name.into(),
            message: format!("still contended after {CAS_ATTEMPTS} conditional attempts"),
            retryable: true,
        })
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A numeric metadata field; `Corrupt` when present but not a number.
fn parse_meta(
    name: &str,
    meta: Option<&std::collections::HashMap<String, String>>,
    field: &str,
) -> Result<Option<u64>, TierError> {
    match meta.and_then(|m| m.get(field)) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| TierError::Corrupt {
            name: name.into(),
            reason: format!("metadata {field}={v:?} is not a number"),
        }),
    }
}

fn http_status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn service<E: std::error::Error + ProvideErrorMetadata + 'static>(
    op: &'static str,
    name: &str,
    e: SdkError<E, HttpResponse>,
) -> TierError {
    // Only a name the store will never take fails the same way every time.
    // A bare 400 is no proof: an upload cut off on the way (a proxy, a
    // reset) is answered 400 IncompleteBody, and must be sent again. So is
    // everything else that may pass: no answer, 5xx, throttling, a 403
    // while credentials or a policy are being fixed.
    let permanent = http_status(&e) == Some(414)
        || matches!(e.code(), Some("KeyTooLongError" | "InvalidObjectName"));
    let retryable = !permanent;
    TierError::Service {
        op,
        name: name.into(),
        message: DisplayErrorContext(e).to_string(),
        retryable,
    }
}

#[async_trait::async_trait]
impl Tier for S3Tier {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn max_key(&self) -> Option<usize> {
        // S3 object names are at most 1024 bytes, the prefix and its
        // slash included.
        let prefix = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.trim_end_matches('/').len() + 1
        };
        Some(max_key_for(1024usize.saturating_sub(prefix), false))
    }

    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        let name = self.object_name(key);
        let resp = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&name)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if http_status(&e) == Some(404) => return Ok(ReadOutcome::Absent),
            Err(e) => return Err(service("get", &name, e)),
        };
        let meta = resp.metadata();
        let version = parse_meta(&name, meta, META_VERSION)?.ok_or_else(|| TierError::Corrupt {
            name: name.clone(),
            reason: "no milena-version metadata (not written by Milena)".into(),
        })?;
        let expires_at = parse_meta(&name, meta, META_EXPIRES)?;
        let tombstone = meta.is_some_and(|m| m.contains_key(META_DELETED));
        let etag = resp.e_tag().map(str::to_string);
        if expires_at.is_some_and(|t| now >= t) {
            // Lazy clean-up, only of the object we read (If-Match), so a
            // newer write that raced in is never removed. Best effort.
            self.forget(&name);
            let mut del = self.client.delete_object().bucket(&self.bucket).key(&name);
            if let Some(etag) = etag {
                del = del.if_match(etag);
            }
            let _ = del.send().await;
            return Ok(if tombstone {
                ReadOutcome::Absent
            } else {
                ReadOutcome::Expired
            });
        }
        if let Some(etag) = &etag {
            self.remember(&name, etag, version);
        }
        if tombstone {
            return Ok(ReadOutcome::Absent);
        }
        let value = resp
            .body
            .collect()
            .await
            .map_err(|e| TierError::Service {
                op: "get",
                name: name.clone(),
                message: DisplayErrorContext(e).to_string(),
                retryable: true,
            })?
            .into_bytes();
        Ok(ReadOutcome::Found(Object {
            value,
            expires_at,
            version,
        }))
    }

    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        let name = self.object_name(key);
        self.write(&name, obj.version, obj.expires_at, false, &obj.value)
            .await
    }

    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        let name = self.object_name(key);
        let until = unix_now() + TOMBSTONE_LIFETIME.as_secs();
        self.write(&name, version, Some(until), true, &Bytes::new())
            .await
    }
}
