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

/// Suffix of the directory segments of a long key's file path.
const DIR_SUFFIX: &str = ".d";

/// The file path of `key` in a directory tier: its object name, with every
/// segment but the last suffixed `.d`. S3 names are flat strings, where
/// `a/b` and `a` live side by side; in a file system `a` cannot be both a
/// file (one key) and a directory (a longer key that starts the same), so
/// the directory segments get a suffix that base64url never produces: the
/// paths of two different keys never contain each other.
pub fn file_path(key: &[u8]) -> String {
    let name = object_name("", key);
    let segments: Vec<&str> = name.split('/').collect();
    let last = segments.len() - 1;
    let mut path = String::with_capacity(name.len() + 2 * last);
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            path.push('/');
        }
        path.push_str(seg);
        // The first segment is the shard (two hex digits): never a key's.
        if i > 0 && i < last {
            path.push_str(DIR_SUFFIX);
        }
    }
    path
}

/// The longest key whose name fits in `budget` bytes: base64 grows a key
/// by 4/3, plus the shard, the separators and (`dir_suffix`) the `.d` of
/// every directory segment.
pub fn max_key_for(budget: usize, dir_suffix: bool) -> usize {
    let per_segment = 1 + if dir_suffix { DIR_SUFFIX.len() } else { 0 };
    let fixed = 3; // "xx/"
    let room = budget.saturating_sub(fixed);
    // Characters of base64 that fit with one separator per segment.
    let chars = room * SEGMENT / (SEGMENT + per_segment);
    chars * 3 / 4
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
    fn file_paths_are_prefix_free() {
        // A key whose name is exactly one segment, and a longer key that
        // starts with the same bytes: the first must not sit where the
        // second needs a directory.
        let short = vec![b'a'; 150]; // 200 base64 characters
        let long = vec![b'a'; 300];
        let (s, l) = (file_path(&short), file_path(&long));
        assert!(!l.starts_with(&format!("{s}/")), "{s} is a prefix of {l}");
        assert!(l.split('/').all(|seg| seg.len() <= SEGMENT + 2), "{l}");
    }

    #[test]
    fn the_key_budget_is_respected() {
        for budget in [300, 1000, 4000] {
            let k = max_key_for(budget, true);
            assert!(file_path(&vec![0xffu8; k]).len() <= budget, "{budget}");
            assert!(object_name("", &vec![0xffu8; max_key_for(budget, false)]).len() <= budget);
        }
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
        fn file_paths_never_nest(a in proptest::collection::vec(any::<u8>(), 1..400), b in proptest::collection::vec(any::<u8>(), 1..400)) {
            let (pa, pb) = (file_path(&a), file_path(&b));
            prop_assume!(a != b);
            let (da, db) = (format!("{pa}/"), format!("{pb}/"));
            prop_assert!(!pb.starts_with(&da) && !pa.starts_with(&db));
        }

        #[test]
        fn names_are_reversible(key in proptest::collection::vec(any::<u8>(), 1..400), prefix in "[a-z]{0,8}") {
            let n = object_name(&prefix, &key);
            prop_assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_'));
            prop_assert_eq!(key_of(&prefix, &n), Some(key));
        }
    }
}
