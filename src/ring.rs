//! Key placement: rendezvous (highest-random-weight) hashing over the member
//! addresses. Pure functions of the member set and the key.
//!
//! Every member scores every key; the highest score owns it. The result
//! depends only on the set of addresses, never on join order, so two routers
//! with the same members route every key the same way. Adding a member moves
//! to it exactly the keys it now wins (1/N of them in expectation) and moves
//! nothing else; removing one moves only its keys, each to its runner-up,
//! which is also the natural retry target when a node fails mid-request.
//!
//! The hashes are fixed (XXH3-64 with seed 0, then the SplitMix64 finalizer),
//! not randomly seeded: placement must agree across processes and versions.

use xxhash_rust::xxh3::xxh3_64;

/// Hash of a key, computed once per request and combined with each member.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// SplitMix64's finalizer: a cheap bijective mix of the two hashes.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A member's score for a key hash.
#[inline]
pub fn score(member_seed: u64, key_hash: u64) -> u64 {
    mix(key_hash ^ member_seed)
}

/// The seed of a member, from its address.
pub fn member_seed(address: &str) -> u64 {
    xxh3_64(address.as_bytes())
}

/// A member set with its seeds precomputed, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    members: Vec<(String, u64)>,
}

impl Ring {
    /// A ring of `addresses` (order and duplicates do not matter).
    pub fn new<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<(String, u64)> = addresses
            .into_iter()
            .map(|a| {
                let a = a.into();
                let seed = member_seed(&a);
                (a, seed)
            })
            .collect();
        members.sort();
        members.dedup();
        Ring { members }
    }

    /// Member addresses, sorted.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(a, _)| a.as_str())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `address` is a member.
    pub fn contains(&self, address: &str) -> bool {
        self.members
            .binary_search_by(|(a, _)| a.as_str().cmp(address))
            .is_ok()
    }

    /// The index of the owner of a key hash, if the ring has members.
    #[inline]
    pub fn owner_index(&self, key_hash: u64) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, (_, seed)) in self.members.iter().enumerate() {
            let s = score(*seed, key_hash);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// The address that owns a key hash.
    #[inline]
    pub fn owner(&self, key_hash: u64) -> Option<&str> {
        self.owner_index(key_hash)
            .map(|i| self.members[i].0.as_str())
    }

    /// The address and seed of member `i`.
    pub fn member(&self, i: usize) -> Option<(&str, u64)> {
        self.members.get(i).map(|(a, s)| (a.as_str(), *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:50051")).collect()
    }

    fn counts(ring: &Ring, keys: usize) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for k in 0..keys {
            let owner = ring
                .owner(key_hash(format!("key:{k}").as_bytes()))
                .expect("owner");
            *c.entry(owner.to_string()).or_default() += 1;
        }
        c
    }

    #[test]
    fn ten_nodes_share_a_million_keys_evenly() {
        let ring = Ring::new(nodes(10));
        let c = counts(&ring, 1_000_000);
        let max = *c.values().max().expect("counts") as f64;
        let mean = 1_000_000.0 / 10.0;
        assert_eq!(c.len(), 10);
        assert!(max / mean <= 1.10, "max/mean = {}", max / mean);
    }

    #[test]
    fn adding_or_removing_a_node_moves_only_its_share() {
        let keys = 200_000;
        let before = Ring::new(nodes(10));
        let after = Ring::new(nodes(11));
        let added = "http://10.0.0.10:50051";
        let mut moved = 0;
        for k in 0..keys {
            let h = key_hash(format!("key:{k}").as_bytes());
            let (a, b) = (before.owner(h), after.owner(h));
            if a != b {
                moved += 1;
                // Only to the new node on a join...
                assert_eq!(b, Some(added));
            }
        }
        let n = 11.0;
        assert!(moved as f64 <= 1.2 / n * keys as f64, "moved {moved}");
        // ...and only from the removed node on a leave.
        for k in 0..keys {
            let h = key_hash(format!("key:{k}").as_bytes());
            if after.owner(h) != before.owner(h) {
                assert_eq!(after.owner(h), Some(added));
            } else {
                assert_ne!(after.owner(h), Some(added));
            }
        }
    }

    #[test]
    fn placement_ignores_join_order_and_duplicates() {
        let mut shuffled = nodes(7);
        shuffled.reverse();
        shuffled.push(shuffled[2].clone());
        let a = Ring::new(nodes(7));
        let b = Ring::new(shuffled);
        assert_eq!(a, b);
        for k in 0..10_000 {
            let h = key_hash(format!("k{k}").as_bytes());
            assert_eq!(a.owner(h), b.owner(h));
        }
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert_eq!(Ring::default().owner(key_hash(b"k")), None);
    }

    const PINNED_OWNERS: [&str; 8] = [
        "http://b:1",
        "http://a:1",
        "http://b:1",
        "http://c:1",
        "http://b:1",
        "http://a:1",
        "http://b:1",
        "http://c:1",
    ];

    /// Pins the hash functions: placement must not change between versions.
    #[test]
    fn placement_is_stable_across_versions() {
        assert_eq!(key_hash(b"user:42"), 11_511_735_035_886_662_826);
        let ring = Ring::new(["http://a:1", "http://b:1", "http://c:1"]);
        let owners: Vec<&str> = (0..8)
            .map(|k| {
                ring.owner(key_hash(format!("k{k}").as_bytes()))
                    .expect("owner")
            })
            .collect();
        assert_eq!(owners, PINNED_OWNERS);
    }
}
