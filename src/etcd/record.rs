//! The ring record kept at `<prefix>/ring`: the members with the revision
//! at which each came up, and the recent removals, which is what a
//! router needs to tell a node which of its entries may be stale
//! (`View::gained_since`). Readable with `etcdctl get <prefix>/ring`.
//!
//! A change is written before its revision is known, so a `joined` or
//! `epoch` of 0 means "the revision of this very record"; [`Record::decode`]
//! fills it in from the key's `mod_revision`.

use serde::{Deserialize, Serialize};

/// Removals kept in the record; older ones are summarized by `horizon`
/// (entries written before it are taken for stale).
pub const MAX_REMOVALS: usize = 256;

/// Most members a record may list (etcd values are limited to ~1.5 MB).
pub const MAX_MEMBERS: usize = 10_000;

/// The ring as etcd holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The nodes in the ring.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Recent removals, oldest first.
    #[serde(default)]
    pub removals: Vec<Removal>,
    /// Removals before this revision were forgotten.
    #[serde(default)]
    pub horizon: u64,
}

/// A node in the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The address it advertises.
    pub address: String,
    /// The ring revision at which it (last) came up.
    pub joined: u64,
    /// Unix microseconds of that change (handoff window only, never order).
    #[serde(default)]
    pub at: u64,
}

/// A node taken out of the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    /// The ring revision of the removal.
    pub epoch: u64,
    /// The node removed.
    pub address: String,
    /// When it had come up.
    pub joined: u64,
    /// Unix microseconds of the removal (handoff window only).
    #[serde(default)]
    pub at: u64,
}

impl Record {
    /// Reads a record stored at `revision`, filling in "this revision".
    pub fn decode(bytes: &[u8], revision: u64) -> Result<Record, String> {
        if bytes.is_empty() {
            return Ok(Record::default());
        }
        let mut r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.members.len() > MAX_MEMBERS {
            return Err(format!(
                "{} members (at most {MAX_MEMBERS})",
                r.members.len()
            ));
        }
        for m in &mut r.members {
            if m.joined == 0 {
                m.joined = revision;
            }
        }
        for x in &mut r.removals {
            if x.epoch == 0 {
                x.epoch = revision;
            }
        }
        r.members.sort_by(|a, b| a.address.cmp(&b.address));
        r.members.dedup_by(|a, b| a.address == b.address);
        Ok(r)
    }

    /// The JSON stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether `address` is a member.
    pub fn contains(&self, address: &str) -> bool {
        self.members.iter().any(|m| m.address == address)
    }

    /// This record with `address` (re)joined at the record's own revision:
    /// a node that comes back holds nothing it may trust from before.
    pub fn with_member(&self, address: &str, now_micros: u64) -> Record {
        let mut r = self.clone();
        r.members.retain(|m| m.address != address);
        r.members.push(Member {
            address: address.to_string(),
            joined: 0,
            at: now_micros,
        });
        r.members.sort_by(|a, b| a.address.cmp(&b.address));
        r
    }

    /// This record without `address`, the removal remembered; `None` if it
    /// is not a member.
    pub fn without_member(&self, address: &str, now_micros: u64) -> Option<Record> {
        let gone = self.members.iter().find(|m| m.address == address)?;
        let mut r = self.clone();
        r.removals.push(Removal {
            epoch: 0,
            address: address.to_string(),
            joined: gone.joined,
            at: now_micros,
        });
        r.members.retain(|m| m.address != address);
        while r.removals.len() > MAX_REMOVALS {
            let old = r.removals.remove(0);
            r.horizon = r.horizon.max(old.epoch);
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_mean_the_records_own_revision() {
        let r = Record::default()
            .with_member("http://a:1", 5)
            .with_member("http://b:1", 6);
        let stored = Record::decode(&r.encode(), 40).expect("decodes");
        assert_eq!(stored.members[0].joined, 40);
        let r2 = stored.without_member("http://a:1", 7).expect("member");
        let stored2 = Record::decode(&r2.encode(), 41).expect("decodes");
        assert_eq!(stored2.members.len(), 1);
        assert_eq!(stored2.members[0].joined, 40);
        assert_eq!(stored2.removals[0].epoch, 41);
        assert_eq!(stored2.removals[0].joined, 40);
        assert!(stored2.without_member("http://a:1", 8).is_none());
    }

    #[test]
    fn removals_are_bounded_by_a_horizon() {
        let mut r = Record::default();
        for i in 0..(MAX_REMOVALS as u64 + 10) {
            r = Record::decode(&r.with_member("http://a:1", 0).encode(), 2 * i + 1).expect("join");
            r = Record::decode(
                &r.without_member("http://a:1", 0).expect("member").encode(),
                2 * i + 2,
            )
            .expect("leave");
        }
        assert_eq!(r.removals.len(), MAX_REMOVALS);
        assert_eq!(r.horizon, 20);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Record::decode(b"{not json", 3).is_err());
        assert_eq!(Record::decode(b"", 3), Ok(Record::default()));
    }
}
