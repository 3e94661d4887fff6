//! A tier in a local directory (`DATA_DIR`): one file per key, laid out
//! like the S3 object names, written atomically (temporary file, then
//! rename). Several nodes on one machine may share the directory, which is
//! what the one-command local cluster does.
//!
//! File format: `MLNO`, a format byte (1), the version (u64 LE), the expiry
//! in Unix seconds (u64 LE, 0 = never), then the value.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use std::io::Read;

use super::layout::object_name;
use super::{Object, ReadOutcome, Tier, TierError, WriteOutcome};

const MAGIC: &[u8; 4] = b"MLNO";
const FORMAT: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 8;

/// Makes temporary file names unique within the process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory tier rooted at a path.
#[derive(Debug, Clone)]
pub struct DirTier {
    root: PathBuf,
}

impl DirTier {
    /// A tier storing under `root` (created if missing).
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, TierError> {
        let root = root.into();
        tokio::fs::create_dir_all(&root).await?;
        Ok(DirTier { root })
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.root.join(object_name("", key))
    }
}

fn encode(obj: &Object) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + obj.value.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&obj.version.to_le_bytes());
    out.extend_from_slice(&obj.expires_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&obj.value);
    out
}

/// (version, expiry) from a header.
fn header(path: &Path, bytes: &[u8]) -> Result<(u64, Option<u64>), TierError> {
    let corrupt = |reason: &str| TierError::Corrupt {
        name: path.display().to_string(),
        reason: reason.into(),
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(corrupt("not a Milena object"));
    }
    if bytes[4] != FORMAT {
        return Err(corrupt("unknown format version"));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let expires = word(13);
    Ok((word(5), (expires != 0).then_some(expires)))
}

/// The version stored at `path`, if any.
fn stored_version(path: &Path) -> Result<Option<u64>, TierError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head)?;
    Ok(Some(header(path, &head)?.0))
}

/// Runs blocking file work on tokio's blocking pool: one hop per tier
/// call, not one per file operation.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TierError> + Send + 'static,
) -> Result<T, TierError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| TierError::Io(std::io::Error::other(e)))?
}

fn write_file(path: &Path, obj: &Object) -> Result<WriteOutcome, TierError> {
    if stored_version(path)?.is_some_and(|v| v > obj.version) {
        return Ok(WriteOutcome::Superseded);
    }
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{seq}", std::process::id()));
    let bytes = encode(obj);
    if let Err(e) = std::fs::write(&tmp, &bytes) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e.into());
        }
        // First key under this prefix: make the directory, then again.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, &bytes)?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(WriteOutcome::Stored)
}

fn read_file(path: &Path, now: u64) -> Result<ReadOutcome, TierError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadOutcome::Absent),
        Err(e) => return Err(e.into()),
    };
    let (version, expires_at) = header(path, &bytes)?;
    let obj = Object {
        value: Bytes::from(bytes).slice(HEADER..),
        expires_at,
        version,
    };
    if obj.is_expired(now) {
        // Lazy clean-up; a failure only leaves the dead file for later.
        let _ = std::fs::remove_file(path);
        return Ok(ReadOutcome::Expired);
    }
    Ok(ReadOutcome::Found(obj))
}

fn remove_file(path: &Path, version: u64) -> Result<WriteOutcome, TierError> {
    if stored_version(path)?.is_some_and(|v| v > version) {
        return Ok(WriteOutcome::Superseded);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(WriteOutcome::Stored),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WriteOutcome::Stored),
        Err(e) => Err(e.into()),
    }
}

#[async_trait::async_trait]
impl Tier for DirTier {
    fn name(&self) -> &'static str {
        "dir"
    }

    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        let path = self.path(key);
        blocking(move || read_file(&path, now)).await
    }

    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        let path = self.path(key);
        let obj = obj.clone();
        blocking(move || write_file(&path, &obj)).await
    }

    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        let path = self.path(key);
        blocking(move || remove_file(&path, version)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: &'static [u8], version: u64, expires_at: Option<u64>) -> Object {
        Object {
            value: Bytes::from_static(value),
            expires_at,
            version,
        }
    }

    async fn tier(name: &str) -> (DirTier, PathBuf) {
        let root = std::env::temp_dir().join(format!("milena-dir-{}-{name}", std::process::id()));
        let _ = tokio::fs::remove_dir_all(&root).await;
        (DirTier::open(&root).await.expect("open"), root)
    }

    #[tokio::test]
    async fn round_trip_versions_and_expiry() {
        let (t, root) = tier("rt").await;
        assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
        assert_eq!(
            t.put(b"k", &obj(b"v2", 2, None)).await.expect("put"),
            WriteOutcome::Stored
        );
        // A slow, older write never replaces a newer one.
        assert_eq!(
            t.put(b"k", &obj(b"v1", 1, None)).await.expect("put"),
            WriteOutcome::Superseded
        );
        assert_eq!(
            t.get(b"k", 0).await.expect("get"),
            ReadOutcome::Found(obj(b"v2", 2, None))
        );
        assert_eq!(
            t.delete(b"k", 1).await.expect("delete"),
            WriteOutcome::Superseded
        );
        assert_eq!(
            t.delete(b"k", 3).await.expect("delete"),
            WriteOutcome::Stored
        );
        assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);

        // TTL travels with the object: dead at its expiry, and cleaned up.
        t.put(b"t", &obj(b"x", 5, Some(100))).await.expect("put");
        assert!(matches!(
            t.get(b"t", 99).await.expect("get"),
            ReadOutcome::Found(_)
        ));
        assert_eq!(t.get(b"t", 100).await.expect("get"), ReadOutcome::Expired);
        assert_eq!(t.get(b"t", 0).await.expect("get"), ReadOutcome::Absent);
        let _ = tokio::fs::remove_dir_all(root).await;
    }

    #[tokio::test]
    async fn binary_and_long_keys_and_empty_values() {
        let (t, root) = tier("keys").await;
        let long = vec![0xab; 250];
        t.put(&long, &obj(b"", 1, None)).await.expect("put");
        assert_eq!(
            t.get(&long, 0).await.expect("get"),
            ReadOutcome::Found(obj(b"", 1, None))
        );
        let odd: Vec<u8> = (0..=255u8).collect();
        t.put(&odd[..200], &obj(b"bytes", 1, None))
            .await
            .expect("put");
        assert!(matches!(
            t.get(&odd[..200], 0).await.expect("get"),
            ReadOutcome::Found(_)
        ));
        let _ = tokio::fs::remove_dir_all(root).await;
    }

    #[tokio::test]
    async fn a_foreign_file_is_reported_corrupt_not_served() {
        let (t, root) = tier("corrupt").await;
        let path = t.path(b"k");
        tokio::fs::create_dir_all(path.parent().expect("parent"))
            .await
            .expect("mkdir");
        tokio::fs::write(&path, b"hello").await.expect("write");
        assert!(matches!(
            t.get(b"k", 0).await,
            Err(TierError::Corrupt { .. })
        ));
        let _ = tokio::fs::remove_dir_all(root).await;
    }

    #[tokio::test]
    async fn the_no_op_tier_stores_nothing() {
        let t = super::super::NoTier;
        assert_eq!(
            t.put(b"k", &obj(b"v", 1, None)).await.expect("put"),
            WriteOutcome::Stored
        );
        assert_eq!(t.get(b"k", 0).await.expect("get"), ReadOutcome::Absent);
        assert_eq!(t.name(), "none");
    }
}
