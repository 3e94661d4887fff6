//! The member table: joins, heartbeats, leaves and ejections, each ring
//! version numbered by an epoch, and the history needed to tell a node which
//! of its entries may be stale.
//!
//! Requests read an immutable [`View`] through an `ArcSwap` (no lock on the
//! request path); changes take the table's mutex, build a new view and
//! publish it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::pool::NodeHandle;
use crate::ring::{Ring, score};

/// Departed members (ejected or left) remembered for hold-down and
/// leave-sticks; beyond this many the longest-gone are forgotten, so a
/// stream of bogus joins cannot grow the table without bound.
const MAX_DEPARTED: usize = 1024;

/// Removal transitions kept for [`View::gained_since`]. Older ones are
/// summarized by a horizon epoch that treats everything before it as stale.
const MAX_REMOVALS: usize = 1024;

/// One ring change that removed members.
#[derive(Debug, Clone)]
struct Removal {
    epoch: u64,
    seeds: Vec<u64>,
    /// The member removed (seed, address): one that left flushes its
    /// queue afterwards and answers meanwhile; one ejected may well be
    /// alive (a timeout under load, a pause) and still hold queued writes.
    left: Option<Departed>,
}

/// A member removed from the ring, as handoff needs it.
#[derive(Debug, Clone)]
struct Departed {
    seed: u64,
    address: Arc<str>,
    /// When it had come up (it owned keys only from then on).
    joined: u64,
}

/// An immutable snapshot of the ring, as requests see it.
#[derive(Debug, Default)]
pub struct View {
    /// This ring's epoch.
    pub epoch: u64,
    /// The members that are up.
    pub ring: Ring,
    /// Per ring index: the epoch at which that member last came up.
    joined: Vec<u64>,
    /// Per ring index: its connection pool.
    pub nodes: Vec<Arc<NodeHandle>>,
    removals: Arc<VecDeque<Removal>>,
    horizon: u64,
    /// [`Members::handoff_window`] when this view was made.
    handoff_window: Duration,
    /// Under etcd membership, epochs are revisions: the wall time of each
    /// change, for the handoff window (empty: epochs are wall times).
    times: Arc<BTreeMap<u64, u64>>,
}

impl View {
    /// The epoch at which ring member `owner` last gained the key with hash
    /// `key_hash`: it came up then, or a removed member that outranked it
    /// for this key left then. Anything it holds for the key from before
    /// that epoch may have been overwritten elsewhere in the meantime.
    pub fn gained_since(&self, owner: usize, key_hash: u64) -> u64 {
        let Some((_, seed)) = self.ring.member(owner) else {
            return self.epoch;
        };
        let joined = self.joined.get(owner).copied().unwrap_or(self.epoch);
        let mine = score(seed, key_hash);
        for r in self.removals.iter().rev() {
            if r.epoch <= joined {
                return joined;
            }
            if r.seeds.iter().any(|&s| score(s, key_hash) > mine) {
                return r.epoch;
            }
        }
        joined.max(self.horizon)
    }

    /// The node to ask for writes to the key that it accepted but may not
    /// have made durable yet, if ring member `owner` gained the key at
    /// `since` less than the handoff window ago: the member that owned it
    /// before `owner` joined, or the node whose removal gave it the key
    /// (one that left flushes its queue after leaving and answers
    /// meanwhile; one ejected may be alive after all — a timeout under
    /// load, a pause — and if it is dead the ask fails fast or times out).
    pub fn handoff_from(&self, owner: usize, key_hash: u64, since: u64) -> Option<Arc<str>> {
        let joined = *self.joined.get(owner)?;
        let at = if self.times.is_empty() {
            since
        } else {
            // A change this router never saw the time of is long past.
            self.times.get(&since).copied().unwrap_or(0)
        };
        if wall_micros().saturating_sub(at) >= self.handoff_window.as_micros() as u64 {
            return None;
        }
        if since == joined {
            // The owner before `owner` joined: the best-placed of the
            // members up then, whether still in the ring or removed since
            // (a removed one may still be flushing its queue).
            let members = (0..self.ring.len())
                .filter(|&i| i != owner && self.joined.get(i).is_some_and(|&j| j < since))
                .filter_map(|i| {
                    let (address, seed) = self.ring.member(i)?;
                    Some((Arc::from(address), score(seed, key_hash)))
                });
            let departed = self
                .removals
                .iter()
                .filter(|r| r.epoch > since)
                .filter_map(|r| r.left.as_ref())
                .filter(|d| d.joined < since)
                .map(|d| (d.address.clone(), score(d.seed, key_hash)));
            return members
                .chain(departed)
                .max_by_key(|(_, s)| *s)
                .map(|(address, _)| address);
        }
        let (_, mine) = self.ring.member(owner)?;
        let mine = score(mine, key_hash);
        self.removals
            .iter()
            .rev()
            .find(|r| r.epoch == since)
            .and_then(|r| r.left.as_ref())
            .filter(|d| score(d.seed, key_hash) > mine)
            .map(|d| d.address.clone())
    }
}

/// How long after a ring change gets name the keys' previous owners, by
/// default (`HANDOFF_WINDOW_SECONDS`).
pub const HANDOFF_WINDOW: Duration =
    Duration::from_secs(crate::config::defaults::HANDOFF_WINDOW_SECONDS);

#[derive(Debug)]
struct Entry {
    up: bool,
    last_seen: Instant,
    /// When it was ejected, for the rejoin hold-down.
    down_since: Option<Instant>,
    /// It left (or was removed with `leave`): only an explicit join brings
    /// it back, never a heartbeat, so an operator's `leave` sticks while the
    /// node is being shut down.
    left: bool,
    joined_epoch: u64,
    handle: Option<Arc<NodeHandle>>,
}

#[derive(Debug, Default)]
struct Table {
    nodes: BTreeMap<String, Entry>,
    epoch: u64,
    removals: VecDeque<Removal>,
    horizon: u64,
    ejections: u64,
    times: Arc<BTreeMap<u64, u64>>,
}

/// What a membership call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The ring changed; its new epoch.
    Changed(u64),
    /// Nothing changed.
    Unchanged,
}

/// Builds a node's connection pool when it enters the ring.
pub type Connector = Arc<dyn Fn(&str) -> Arc<NodeHandle> + Send + Sync>;

/// The member table of one router.
pub struct Members {
    table: Mutex<Table>,
    view: ArcSwap<View>,
    changes: watch::Sender<u64>,
    connector: Connector,
    /// A node that misses heartbeats this long is ejected.
    pub heartbeat_timeout: Duration,
    /// An ejected node's heartbeats are ignored this long (an explicit join
    /// is always accepted), so a node the router cannot reach does not flap.
    pub hold_down: Duration,
    /// How long after a ring change a key's previous owner is asked for
    /// writes it has not yet made durable ([`HANDOFF_WINDOW`] unless set).
    pub handoff_window: Duration,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field("view", &self.view.load())
            .finish()
    }
}

impl Members {
    /// An empty table; `connector` makes each joining node's pool.
    pub fn new(heartbeat_timeout: Duration, hold_down: Duration, connector: Connector) -> Self {
        Members {
            table: Mutex::new(Table::default()),
            view: ArcSwap::from_pointee(View::default()),
            changes: watch::channel(0).0,
            connector,
            heartbeat_timeout,
            hold_down,
            handoff_window: HANDOFF_WINDOW,
        }
    }

    /// The same table with another handoff window (0 turns handoff off).
    pub fn with_handoff_window(mut self, window: Duration) -> Self {
        self.handoff_window = window;
        self
    }

    /// The current ring snapshot.
    #[inline]
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Waits until the current view satisfies `pred` (tests, tools).
    pub async fn wait_for(&self, mut pred: impl FnMut(&View) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            if pred(&self.view()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Nodes ejected since start.
    pub fn ejections(&self) -> u64 {
        self.lock().ejections
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or re-admits) `address`, which the caller has checked (see
    /// `Router::join_checked`). A member known under another spelling of
    /// the same address is that member.
    pub fn join(&self, address: &str) -> Change {
        let mut t = self.lock();
        let now = Instant::now();
        let address = find_equivalent(&t, address).unwrap_or_else(|| address.to_string());
        if let Some(e) = t.nodes.get_mut(&address)
            && e.up
        {
            e.last_seen = now;
            return Change::Unchanged;
        }
        let known = t.nodes.contains_key(&address);
        let epoch = self.bring_up(&mut t, &address, now);
        if known {
            info!(node = %address, members = live(&t), epoch, "Join: node rejoined the ring");
        } else {
            info!(node = %address, members = live(&t), epoch, "Join: node joined the ring");
        }
        Change::Changed(epoch)
    }

    /// How much longer a member `address` names, ejected recently, must
    /// stay out (`hold_down` after its ejection), so a node that flaps does
    /// not change the ring on every heartbeat.
    pub fn held_down(&self, address: &str) -> Option<Duration> {
        let t = self.lock();
        let key = find_equivalent(&t, address)?;
        let e = t.nodes.get(&key)?;
        if e.up || e.left {
            return None;
        }
        let until = e.down_since? + self.hold_down;
        until.checked_duration_since(Instant::now())
    }

    /// The member a leave of `address` would remove, and whether it is up.
    pub fn leave_target(&self, address: &str) -> Option<(String, bool)> {
        let t = self.lock();
        let key = find_member(&t, address)?;
        let up = t.nodes.get(&key).is_some_and(|e| e.up);
        Some((key, up))
    }

    /// The key of the member `address` names, if it is up.
    pub fn up_member(&self, address: &str) -> Option<String> {
        let t = self.lock();
        find_equivalent(&t, address).filter(|a| t.nodes.get(a).is_some_and(|e| e.up))
    }

    /// Records a heartbeat of a member. A heartbeat never admits anyone:
    /// an unknown or ejected node gets an error and joins again (which
    /// checks it); one that left stays out (an operator's leave sticks
    /// while the node is being shut down) and sees it in the member list.
    pub fn heartbeat(&self, address: &str) -> Result<Change, NotMember> {
        let mut t = self.lock();
        let now = Instant::now();
        let key = find_equivalent(&t, address);
        match key.as_ref().and_then(|k| t.nodes.get_mut(k)) {
            Some(e) if e.up => {
                e.last_seen = now;
                Ok(Change::Unchanged)
            }
            Some(e) if e.left => Ok(Change::Unchanged),
            _ => Err(NotMember {
                address: crate::logging::escape(address),
                members: "join first".into(),
            }),
        }
    }

    /// The error for a leave of `address` that names no member.
    pub fn not_member(&self, address: &str) -> NotMember {
        NotMember::listing(address, self.view().ring.addresses())
    }

    /// Removes `address` at its own (or an operator's) request. The
    /// address may name the member another way (see [`same_node`]); one
    /// that names no member is an error that lists the members.
    pub fn leave(&self, address: &str) -> Result<Change, NotMember> {
        let mut t = self.lock();
        let Some(address) = find_member(&t, address) else {
            let up = t
                .nodes
                .iter()
                .filter(|(_, e)| e.up)
                .map(|(a, _)| a.as_str());
            return Err(NotMember::listing(address, up));
        };
        let Some(e) = t.nodes.get_mut(&address) else {
            return Ok(Change::Unchanged);
        };
        let was_up = e.up;
        e.up = false;
        e.left = true;
        e.down_since = Some(Instant::now());
        e.handle = None;
        if !was_up {
            return Ok(Change::Unchanged);
        }
        let epoch = self.remove(&mut t, &[&address]);
        info!(node = %address, members = live(&t), epoch, "Leave: node left the ring");
        Ok(Change::Changed(epoch))
    }

    /// Takes `address` out of the ring because it failed; it may come back
    /// by joining again.
    pub fn eject(&self, address: &str, reason: &str) -> Change {
        let mut t = self.lock();
        let now = Instant::now();
        let Some(e) = t.nodes.get_mut(address) else {
            return Change::Unchanged;
        };
        if !e.up {
            return Change::Unchanged;
        }
        e.up = false;
        e.down_since = Some(now);
        e.handle = None;
        t.ejections += 1;
        let epoch = self.remove(&mut t, &[address]);
        warn!(node = %address, reason, members = live(&t), epoch, "Leave: node ejected from the ring");
        Change::Changed(epoch)
    }

    /// Ejects `address` only if its current connection pool is the one
    /// with `handle_id`: failures of an older incarnation's connections
    /// must not eject a node that has since rejoined.
    pub fn eject_handle(&self, address: &str, handle_id: u64, reason: &str) -> Change {
        let current = self
            .lock()
            .nodes
            .get(address)
            .and_then(|e| e.handle.as_ref().map(|h| h.id));
        if current != Some(handle_id) {
            return Change::Unchanged;
        }
        self.eject(address, reason)
    }

    /// Under etcd membership (where a failed node stays in the ring until
    /// its lease lapses): replaces member `address`'s connection pool if it
    /// is still the one with `handle_id`, so the router reconnects.
    pub fn renew_handle(&self, address: &str, handle_id: u64) {
        let mut t = self.lock();
        let Some(e) = t.nodes.get_mut(address) else {
            return;
        };
        if !e.up || e.handle.as_ref().map(|h| h.id) != Some(handle_id) {
            return;
        }
        e.handle = Some((self.connector)(address));
        self.publish(&t);
    }

    /// Ejects every node whose last heartbeat is older than the timeout.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let stale: Vec<String> = {
            let t = self.lock();
            t.nodes
                .iter()
                .filter(|(_, e)| e.up && now.duration_since(e.last_seen) > self.heartbeat_timeout)
                .map(|(a, _)| a.clone())
                .collect()
        };
        for a in &stale {
            self.eject(a, "missed heartbeats");
        }
        stale
    }

    /// Replaces the ring with etcd's `record` at `revision`: under etcd
    /// membership the record is the whole truth, numbered and ordered by
    /// etcd; nothing here decides or numbers a change. Older revisions
    /// than the one installed are ignored.
    pub fn install(&self, revision: u64, record: &crate::etcd::Record) -> Change {
        let mut t = self.lock();
        if revision == t.epoch && !t.times.is_empty() || revision < t.epoch {
            return Change::Unchanged;
        }
        let now = Instant::now();
        let wanted: BTreeMap<&str, u64> = record
            .members
            .iter()
            .map(|m| (m.address.as_str(), m.joined))
            .collect();
        for (address, e) in t.nodes.iter_mut() {
            if e.up && !wanted.contains_key(address.as_str()) {
                e.up = false;
                e.down_since = Some(now);
                e.handle = None;
            }
        }
        for (&address, &joined) in &wanted {
            let handle = t
                .nodes
                .get(address)
                .and_then(|e| e.handle.clone())
                .unwrap_or_else(|| (self.connector)(address));
            t.nodes.insert(
                address.to_string(),
                Entry {
                    up: true,
                    last_seen: now,
                    down_since: None,
                    left: false,
                    joined_epoch: joined,
                    handle: Some(handle),
                },
            );
        }
        let mut times = BTreeMap::new();
        t.removals = record
            .removals
            .iter()
            .map(|r| {
                times.insert(r.epoch, r.at);
                let seed = crate::ring::member_seed(&r.address);
                Removal {
                    epoch: r.epoch,
                    seeds: vec![seed],
                    // Left or lapsed, it may be alive and still flushing.
                    left: Some(Departed {
                        seed,
                        address: Arc::from(r.address.as_str()),
                        joined: r.joined,
                    }),
                }
            })
            .collect();
        for m in &record.members {
            times.insert(m.joined, m.at);
        }
        // Never empty under etcd: marks the view's epochs as revisions.
        times.insert(0, 0);
        t.times = Arc::new(times);
        t.horizon = record.horizon;
        t.epoch = revision;
        forget_departed(&mut t);
        self.publish(&t);
        info!(revision, members = wanted.len(), "ring installed from etcd");
        Change::Changed(revision)
    }

    fn bring_up(&self, t: &mut Table, address: &str, now: Instant) -> u64 {
        let epoch = next_epoch(t.epoch);
        t.epoch = epoch;
        let handle = (self.connector)(address);
        t.nodes.insert(
            address.to_string(),
            Entry {
                up: true,
                last_seen: now,
                down_since: None,
                left: false,
                joined_epoch: epoch,
                handle: Some(handle),
            },
        );
        self.publish(t);
        forget_departed(t);
        epoch
    }

    fn remove(&self, t: &mut Table, addresses: &[&str]) -> u64 {
        let epoch = next_epoch(t.epoch);
        t.epoch = epoch;
        t.removals.push_back(Removal {
            epoch,
            seeds: addresses
                .iter()
                .map(|a| crate::ring::member_seed(a))
                .collect(),
            left: match addresses {
                [one] => t.nodes.get(*one).map(|e| Departed {
                    seed: crate::ring::member_seed(one),
                    address: Arc::from(*one),
                    joined: e.joined_epoch,
                }),
                _ => None,
            },
        });
        if t.removals.len() > MAX_REMOVALS
            && let Some(old) = t.removals.pop_front()
        {
            t.horizon = old.epoch;
        }
        self.publish(t);
        epoch
    }

    fn publish(&self, t: &Table) {
        // The table is a BTreeMap, so `up` is sorted by address exactly as
        // the ring sorts its members: ring index i is `up[i]`.
        let up: Vec<(&String, &Entry)> = t.nodes.iter().filter(|(_, e)| e.up).collect();
        let ring = Ring::new(up.iter().map(|(a, _)| a.as_str()));
        let joined = up.iter().map(|(_, e)| e.joined_epoch).collect();
        let nodes = up
            .iter()
            .map(|(a, e)| e.handle.clone().unwrap_or_else(|| (self.connector)(a)))
            .collect();
        self.view.store(Arc::new(View {
            epoch: t.epoch,
            ring,
            joined,
            nodes,
            removals: Arc::new(t.removals.clone()),
            horizon: t.horizon,
            handoff_window: self.handoff_window,
            times: t.times.clone(),
        }));
        self.changes.send_replace(t.epoch);
    }
}

/// A leave that names no member.
#[derive(Debug, thiserror::Error)]
#[error("{address} is not a member of this router's ring ({members})")]
pub struct NotMember {
    /// The address asked for (escaped for display).
    pub address: String,
    /// The members that are up, comma-separated.
    pub members: String,
}

impl NotMember {
    /// The error for `address`, listing the members that are up.
    fn listing<'a>(address: &str, up: impl Iterator<Item = &'a str>) -> NotMember {
        let members: Vec<&str> = up.collect();
        NotMember {
            address: crate::logging::escape(address),
            members: if members.is_empty() {
                "it has no members".into()
            } else {
                format!("members: {}", members.join(", "))
            },
        }
    }
}

/// The table's key for the member `address` names: the address itself,
/// else a member on the same port whose host is the same machine under
/// another name, else, for a loopback name, the only member on that port
/// (the guide's `localhost` form, as seen from another container).
fn find_member(t: &Table, address: &str) -> Option<String> {
    if let Some(key) = find_equivalent(t, address) {
        return Some(key);
    }
    let (host, port) = host_port(address)?;
    let up: Vec<&String> = t
        .nodes
        .iter()
        .filter(|(a, e)| e.up && host_port(a).is_some_and(|(_, p)| p == port))
        .map(|(a, _)| a)
        .collect();
    match up.as_slice() {
        [only] if is_loopback(&host) => Some(only.to_string()),
        _ => None,
    }
}

/// The table's key for `address` itself, or for the same address spelt
/// another way: the same port on the same machine under another name.
fn find_equivalent(t: &Table, address: &str) -> Option<String> {
    if t.nodes.contains_key(address) {
        return Some(address.to_string());
    }
    let canonical = crate::net::canonical_url(address).ok()?;
    if t.nodes.contains_key(&canonical) {
        return Some(canonical);
    }
    let (host, port) = host_port(address)?;
    let same_port: Vec<(&String, &Entry, String)> = t
        .nodes
        .iter()
        .filter_map(|(a, e)| {
            let (h, p) = host_port(a)?;
            (p == port).then_some((a, e, h))
        })
        .collect();
    same_port
        .iter()
        .filter(|(_, _, h)| same_node(h, &host))
        .max_by_key(|(_, e, _)| e.up)
        .map(|(a, _, _)| a.to_string())
}

/// `(host, port)` of a member address, the host lowercased and without
/// IPv6 brackets.
fn host_port(address: &str) -> Option<(String, u16)> {
    let (hostport, _) = crate::net::parse_url(address).ok()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_ascii_lowercase(), port.parse().ok()?))
}

/// Whether two host names denote the same machine: equal, or both this
/// machine (a loopback name or address, or this host's name, which is what
/// a node listening on `0.0.0.0` advertises).
fn same_node(a: &str, b: &str) -> bool {
    a == b || (is_this_machine(a) && is_this_machine(b))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_this_machine(host: &str) -> bool {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let name = NAME.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
    });
    is_loopback(host) || host == "0.0.0.0" || name.as_deref() == Some(host)
}

fn forget_departed(t: &mut Table) {
    let departed = t.nodes.values().filter(|e| !e.up).count();
    if departed <= MAX_DEPARTED {
        return;
    }
    let mut gone: Vec<(Instant, String)> = t
        .nodes
        .iter()
        .filter(|(_, e)| !e.up)
        .map(|(a, e)| (e.down_since.unwrap_or(e.last_seen), a.clone()))
        .collect();
    gone.sort();
    for (_, a) in gone.into_iter().take(departed - MAX_DEPARTED) {
        t.nodes.remove(&a);
    }
}

fn live(t: &Table) -> usize {
    t.nodes.values().filter(|e| e.up).count()
}

/// The next epoch: wall-clock microseconds, so that routers seeing the same
/// change number it alike, but always greater than the previous one.
fn next_epoch(prev: u64) -> u64 {
    wall_micros().max(prev + 1)
}

/// Wall-clock microseconds since the Unix epoch.
pub fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
