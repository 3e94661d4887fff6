//! A tier in a local directory (`DATA_DIR`): one file per key, laid out
//! like the S3 object names, written atomically (temporary file, then
//! rename). Several nodes on one machine may share the directory, which is
//! what the one-command local cluster does: a write compares versions and
//! renames under an exclusive lock on the key's shard directory
//! (`<shard>/.lock`, `flock`), so two nodes writing one key cannot let the
//! older version land last. (Advisory locks need a local file system; on
//! NFS, give each node its own directory or use S3.)
//!
//! Paths are prefix-free (see [`file_path`]): a key's file never sits where
//! a longer key needs a directory. (Before that, keys over 150 bytes were
//! laid out as in S3; a directory written then holds them where this
//! version does not look: they read through as misses.)
//!
//! File format: `MLNO`, a format byte (1 = value, 2 = tombstone), the
//! version (u64 LE), the expiry in Unix seconds (u64 LE, 0 = never), then
//! the value (empty for a tombstone). A delete leaves a tombstone with its
//! version, so a delayed older write cannot bring the key back; tombstones
//! expire after [`TOMBSTONE_LIFETIME`](super::TOMBSTONE_LIFETIME), as
//! in the S3 tier, and are removed when next read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use std::io::Read;

use super::layout::{file_path, max_key_for};
use super::{Object, ReadOutcome, Tier, TierError, WriteOutcome};

const MAGIC: &[u8; 4] = b"MLNO";
/// Format byte of a value.
const FORMAT: u8 = 1;
/// Format byte of a tombstone (a deleted key, with the delete's version).
const TOMBSTONE: u8 = 2;
const HEADER: usize = 4 + 1 + 8 + 8;
/// The lock file in each shard directory.
const LOCK_FILE: &str = ".lock";

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
        self.root.join(file_path(key))
    }

    /// The lock serializing writes of `key` (and of its shard's other keys).
    fn lock_path(&self, key: &[u8]) -> PathBuf {
        let name = file_path(key);
        let shard = name.split('/').next().unwrap_or_default();
        self.root.join(shard).join(LOCK_FILE)
    }
}

/// What a file holds.
struct Header {
    version: u64,
    expires_at: Option<u64>,
    tombstone: bool,
}

fn encode(format: u8, version: u64, expires_at: Option<u64>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(MAGIC);
    out.push(format);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Holds the exclusive lock on `path` (created if missing) until dropped.
fn lock(path: &Path) -> Result<std::fs::File, TierError> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
    };
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // First key of this shard: make its directory, then again.
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()?
        }
        Err(e) => return Err(e.into()),
    };
    file.lock()?;
    Ok(file)
}

/// The header of a file.
fn header(path: &Path, bytes: &[u8]) -> Result<Header, TierError> {
    let corrupt = |reason: &str| TierError::Corrupt {
        name: path.display().to_string(),
        reason: reason.into(),
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(corrupt("not a Milena object"));
    }
    let tombstone = match bytes[4] {
        FORMAT => false,
        TOMBSTONE => true,
        _ => return Err(corrupt("unknown format version")),
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let expires = word(13);
    Ok(Header {
        version: word(5),
        expires_at: (expires != 0).then_some(expires),
        tombstone,
    })
}

/// The version stored at `path`, if any.
fn stored_version(path: &Path) -> Result<Option<u64>, TierError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut head = [0u8; HEADER];
    if let Err(e) = f.read_exact(&mut head) {
        // Shorter than a header (cut off by a crash): never ours to retry.
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Err(TierError::Corrupt {
                name: path.display().to_string(),
                reason: "shorter than a Milena object header".into(),
            });
        }
        return Err(e.into());
    }
    Ok(Some(header(path, &head)?.version))
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

/// Writes `bytes` at `version` as `path`, unless a newer version is
/// there, holding the shard's lock from the comparison to the rename.
fn write_file(
    path: &Path,
    lock_path: &Path,
    version: u64,
    bytes: &[u8],
) -> Result<WriteOutcome, TierError> {
    let _locked = lock(lock_path)?;
    // A file that is not a whole Milena object (cut off by a crash, or not
    // ours) is older than any write, as in the S3 tier: replace it.
    let stored = match stored_version(path) {
        Err(TierError::Corrupt { .. }) => None,
        other => other?,
    };
    if stored.is_some_and(|v| v > version) {
        return Ok(WriteOutcome::Superseded);
    }
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{seq}", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e.into());
        }
        // First key under this prefix: make the directory, then again.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&tmp, bytes)?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(WriteOutcome::Stored)
}

fn read_file(path: &Path, lock_path: &Path, now: u64) -> Result<ReadOutcome, TierError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadOutcome::Absent),
        Err(e) => return Err(e.into()),
    };
    let head = header(path, &bytes)?;
    let obj = Object {
        value: Bytes::from(bytes).slice(HEADER..),
        expires_at: head.expires_at,
        version: head.version,
    };
    if obj.is_expired(now) {
        // Lazy clean-up, of this version only (a newer write may have
        // landed since we read); a failure only leaves the file for later.
        let _ = remove_if_version(path, lock_path, head.version);
        return Ok(if head.tombstone {
            ReadOutcome::Absent
        } else {
            ReadOutcome::Expired
        });
    }
    if head.tombstone {
        return Ok(ReadOutcome::Absent);
    }
    Ok(ReadOutcome::Found(obj))
}

/// Removes `path` if it still holds `version`.
fn remove_if_version(path: &Path, lock_path: &Path, version: u64) -> Result<(), TierError> {
    let _locked = lock(lock_path)?;
    if stored_version(path)? == Some(version) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Tier for DirTier {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn max_key(&self) -> Option<usize> {
        // Linux paths are at most 4096 bytes: the root, the key's path and
        // a temporary file's suffix (`.tmp-<pid>-<seq>`) must fit.
        const PATH_MAX: usize = 4096;
        const TMP_SUFFIX: usize = 48;
        let root = self.root.as_os_str().len() + 1;
        Some(max_key_for(
            PATH_MAX.saturating_sub(root + TMP_SUFFIX),
            true,
        ))
    }

    async fn get(&self, key: &[u8], now: u64) -> Result<ReadOutcome, TierError> {
        let (path, lock) = (self.path(key), self.lock_path(key));
        blocking(move || read_file(&path, &lock, now)).await
    }

    async fn put(&self, key: &[u8], obj: &Object) -> Result<WriteOutcome, TierError> {
        let (path, lock) = (self.path(key), self.lock_path(key));
        let bytes = encode(FORMAT, obj.version, obj.expires_at, &obj.value);
        let version = obj.version;
        blocking(move || write_file(&path, &lock, version, &bytes)).await
    }

    async fn delete(&self, key: &[u8], version: u64) -> Result<WriteOutcome, TierError> {
        let (path, lock) = (self.path(key), self.lock_path(key));
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + super::TOMBSTONE_LIFETIME.as_secs();
        let bytes = encode(TOMBSTONE, version, Some(until), b"");
        blocking(move || write_file(&path, &lock, version, &bytes)).await
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

    async fn tier(_name: &str) -> (DirTier, tempfile::TempDir) {
        let root = tempfile::tempdir().expect("temporary directory");
        (DirTier::open(root.path()).await.expect("open"), root)
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
        drop(root);
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
        drop(root);
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
        drop(root);
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
