//! Object names: arbitrary key bytes mapped reversibly to valid object
//! names, spread over 256 hashed prefixes (S3 scales request rate per
//! prefix, and directories stay small).
//!
//! `<prefix>/<2 hex digits of XXH3(key)>/<base64url(key), no padding>`,
//! e.g. key `user:42` → `milena/9f/dXNlcjo0Mg`. Names longer than a file
//! name may be are split into 200-character path segments, which a listing
//! simply concatenates back (`aws s3 ls s3://bucket/ --recursive` shows one
//! object per key).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Longest path segment produced (file systems allow 255 bytes).
const SEGMENT: usize = 200;

/// The object name of `key` under `prefix` (may be empty).
pub fn object_name(prefix: &str, key: &[u8]) -> String {
    let shard = (xxhash_rust::xxh3::xxh3_64(key) >> 56) as u8;
    let encoded = URL_SAFE_NO_PAD.encode(key);
    let mut name = String::with_capacity(prefix.len() + encoded.len() + 8);
    if !prefix.is_empty() {
        name.push_str(prefix.trim_end_matches('/'));
        name.push('/');
    }
    name.push_str(&format!("{shard:02x}/"));
    for (i, chunk) in encoded.as_bytes().chunks(SEGMENT).enumerate() {
        if i > 0 {
            name.push('/');
        }
        // base64url is ASCII, so any byte boundary is a char boundary.
        name.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    name
}

/// The key an object name stands for, if it is one of ours.
pub fn key_of(prefix: &str, name: &str) -> Option<Vec<u8>> {
    let rest = if prefix.is_empty() {
        name
    } else {
        name.strip_prefix(prefix.trim_end_matches('/'))?
            .strip_prefix('/')?
    };
    let (shard, encoded) = rest.split_once('/')?;
    let key = URL_SAFE_NO_PAD.decode(encoded.replace('/', "")).ok()?;
    let expected = format!("{:02x}", (xxhash_rust::xxh3::xxh3_64(&key) >> 56) as u8);
    (shard == expected).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_look_like_the_documentation() {
        let n = object_name("milena", b"user:42");
        assert!(n.starts_with("milena/"), "{n}");
        assert!(n.ends_with("/dXNlcjo0Mg"), "{n}");
        assert_eq!(n.split('/').count(), 3);
    }

    #[test]
    fn long_keys_are_split_into_short_segments() {
        let key = vec![0xffu8; 250];
        let n = object_name("", &key);
        assert!(n.split('/').all(|s| s.len() <= SEGMENT), "{n}");
        assert_eq!(key_of("", &n), Some(key));
    }

    proptest! {
        #[test]
        fn names_are_reversible(key in proptest::collection::vec(any::<u8>(), 1..400), prefix in "[a-z]{0,8}") {
            let n = object_name(&prefix, &key);
            prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_'));
            prop_assert_eq!(key_of(&prefix, &n), Some(key));
        }
    }
}
