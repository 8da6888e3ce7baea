//! Consumer groups: the tier's view of who is in which group, and the rule that ties a
//! fetching connection to its group.
//!
//! Fetch requests carry no group id, and a Kafka client talks to the group coordinator on a
//! different TCP connection than the ones it fetches on (behind a balancer, often through a
//! different Tollgate instance). What links them is the *client instance*: the same
//! `client.id` from the same source host (IP address). The view is built from three sources:
//!
//! - **the wire** (fast path): JoinGroup, SyncGroup (the member's assignment, decoded from the
//!   consumer protocol), Heartbeat, LeaveGroup and KIP-848's ConsumerGroupHeartbeat, each
//!   applied when the broker's *answer* says it succeeded; and successful OffsetCommits, which
//!   make the committing client instance an **offset user** of the group (an `assign()`
//!   consumer that commits to a group);
//! - **the other instances** ([`crate::peers`]): what each instance saw on the wire, shared
//!   through the state topic, arrives here as *remote* members and offset users;
//! - **the group coordinator** ([`crate::consumers::coordinator`]): DescribeGroups says which members
//!   exist. A member the coordinator no longer lists is gone, wherever it was seen.
//!
//! # The rule
//!
//! A fetching connection belongs to group G when G has a live member with the connection's
//! `client.id` and source host whose assignment covers the partitions the connection fetches
//! (its whole fetch session) better than any other group's. Only when no live member matches
//! do offset users count, and an offset user ties only while the connection it committed on
//! is open (remote ones: while the instance that saw it keeps refreshing it). When two groups
//! tie, the group whose committed offsets are closest below the connection's fetch offsets
//! wins; when that does not separate them the fetch is [`Tie::Ambiguous`] and the candidates are
//! kept with the decision (governance allows it only if every candidate may read the topic).
//! A connection with no candidate is group-less ([`Tie::None`]). Every state change bumps an
//! `epoch` and wakes [`Groups::changed`] waiters, so a decision is made again when anything
//! that could change it changed.
//!
//! # Bounds
//!
//! Every name here comes from a client (group ids, member ids, client ids), so the view is
//! bounded ([`Limits`]): at most `tier.max_groups` groups, `tier.max_members_per_group`
//! members and `tier.max_offset_users_per_group` offset users per group. A new one over a
//! bound evicts the least recently active (a group with a live member or a tied fetch
//! connection last); evictions are counted (`tollgate_groups_evicted_total{what}`). The tier
//! records each instance publishes follow from this view, so they are bounded too.
//!
//! This file holds the group model and what the wire says; the rule is in `tie.rs`, what
//! the other instances and the coordinator say in `shared.rs`, and `GET /v1/groups`'s view in
//! `view.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub(crate) use tie::Tie;

/// Group label of a fetch from a client that is in no group ([`Tie::None`]).
pub(crate) const NO_GROUP: &str = "(none)";
/// Group label when two groups match a connection equally well ([`Tie::Ambiguous`]).
pub(crate) const AMBIGUOUS: &str = "(ambiguous)";

/// A topic partition by name.
pub type TopicPartition = (String, i32);

/// One client instance: its principal, `client.id` and source host. The principal is part
/// of it so that a tie made for one principal never carries over to another that shares a
/// client id and a host (librdkafka's default `rdkafka` behind one NAT address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Instance {
    pub(crate) principal: String,
    pub(crate) client_id: String,
    pub(crate) host: IpAddr,
}

/// Where a member or offset user was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// On this instance's wire.
    Local,
    /// By another instance (from the tier topic).
    Remote,
}

#[derive(Debug)]
struct Member {
    instance: Instance,
    /// Connection the member talks to the coordinator on (0 for remote members).
    coordinator_conn: u64,
    assignment: BTreeSet<TopicPartition>,
    last_seen: Instant,
    /// Members not heard from for this long are dropped (2 x session timeout).
    expiry: Duration,
    /// KIP-848 member (ConsumerGroupHeartbeat) rather than a classic one.
    kip848: bool,
    origin: Origin,
}

impl Member {
    fn new(instance: Instance, conn: u64, expiry: Duration, kip848: bool) -> Member {
        Member {
            instance,
            coordinator_conn: conn,
            assignment: BTreeSet::new(),
            last_seen: Instant::now(),
            expiry,
            kip848,
            origin: Origin::Local,
        }
    }

    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) <= self.expiry
    }
}

#[derive(Debug)]
struct OffsetUser {
    partitions: BTreeSet<TopicPartition>,
    last_seen: Instant,
    /// The local connections it committed on; the tie ends when the last one closes.
    conns: BTreeSet<u64>,
    origin: Origin,
}

#[derive(Debug, Default)]
struct Group {
    protocol_type: Option<String>,
    generation: i32,
    members: HashMap<String, Member>,
    offset_users: HashMap<Instance, OffsetUser>,
    committed: HashMap<TopicPartition, (i64, SystemTime)>,
    /// Fetch connections currently tied to this group.
    fetch_conns: BTreeMap<u64, Instance>,
    /// The coordinator's state for the group (`Stable`, `Empty`, ...), when asked.
    cluster_state: Option<String>,
}

/// An order-independent fingerprint of a set of partitions.
pub(crate) fn fingerprint(partitions: &HashMap<TopicPartition, i64>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default();
    partitions
        .keys()
        .fold(partitions.len() as u64, |acc, tp| acc ^ h.hash_one(tp))
}

/// Every group Tollgate knows of, and the ties of fetch connections to them.
pub struct Groups {
    inner: Mutex<HashMap<String, Group>>,
    limits: Limits,
    /// Evicted so far: groups, members, offset users (taken by [`Groups::take_evicted`]).
    evicted: [AtomicU64; 3],
    /// Members seen on this instance's wire that went silent past their expiry (killed, or
    /// cut off), taken by [`Groups::take_expired`]: at most [`MAX_EXPIRED`] between takes.
    expired: Mutex<Vec<Expired>>,
    epoch: AtomicU64,
    /// Upper bound on how long an offset user stays tied without committing again.
    offset_user_ttl: Duration,
    changed: tokio::sync::Notify,
    /// Wakes the coordinator poller for an on-demand refresh.
    refresh: tokio::sync::Notify,
    /// Instances of the tier heard from recently, this one included ([`crate::peers`]).
    instances: std::sync::atomic::AtomicUsize,
}

/// The local `Instant` of a wall-clock time (instances share a clock through NTP).
pub(crate) fn instant_of(t: SystemTime) -> Instant {
    let now = Instant::now();
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

impl Default for Groups {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

/// Bounds on what the view holds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) groups: usize,
    pub(crate) members_per_group: usize,
    pub(crate) offset_users_per_group: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            groups: 10_000,
            members_per_group: 5_000,
            offset_users_per_group: 1_000,
        }
    }
}

const EVICTED_GROUPS: usize = 0;
const EVICTED_MEMBERS: usize = 1;
const EVICTED_USERS: usize = 2;

impl Group {
    /// When anything was last heard of the group, and whether it is in use now (a live
    /// member, or a fetch connection tied to it): the eviction order, least first.
    fn activity(&self, now: Instant) -> (bool, Instant) {
        let in_use = !self.fetch_conns.is_empty() || self.members.values().any(|m| m.live(now));
        let members = self.members.values().map(|m| m.last_seen);
        let users = self.offset_users.values().map(|u| u.last_seen);
        let last = members
            .chain(users)
            .max()
            .unwrap_or(now - Duration::from_secs(1));
        (in_use, last)
    }
}

impl Groups {
    pub fn new(offset_user_ttl: Duration) -> Groups {
        Self::with_limits(offset_user_ttl, Limits::default())
    }

    pub(crate) fn with_limits(offset_user_ttl: Duration, limits: Limits) -> Groups {
        Groups {
            inner: Mutex::new(HashMap::new()),
            limits,
            evicted: Default::default(),
            expired: Mutex::default(),
            epoch: AtomicU64::new(1),
            offset_user_ttl,
            changed: tokio::sync::Notify::new(),
            refresh: tokio::sync::Notify::new(),
            instances: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// Changes whenever anything that decides a tie changes.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Resolves when the epoch moves past `seen` (or at once if it already has).
    pub(crate) async fn changed(&self, seen: u64) {
        let notified = self.changed.notified();
        if self.epoch() != seen {
            return;
        }
        notified.await;
    }

    /// How many instances the tier has now (from the state topic), this one included.
    pub(crate) fn instances(&self) -> usize {
        self.instances.load(Ordering::Relaxed)
    }

    /// The tier heard from `n` instances (this one included).
    pub(crate) fn set_instances(&self, n: usize) {
        self.instances.store(n, Ordering::Relaxed);
    }

    /// A read is waiting for a tie: ask the coordinator now rather than at the next period.
    pub(crate) fn want_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when [`Groups::want_refresh`] was called.
    pub(crate) async fn refresh_wanted(&self) {
        self.refresh.notified().await;
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Evictions since the last call: (groups, members, offset users).
    pub(crate) fn take_evicted(&self) -> (u64, u64, u64) {
        let take = |i: usize| self.evicted[i].swap(0, Ordering::AcqRel);
        (
            take(EVICTED_GROUPS),
            take(EVICTED_MEMBERS),
            take(EVICTED_USERS),
        )
    }

    fn count_evicted(&self, what: usize) {
        self.evicted[what].fetch_add(1, Ordering::AcqRel);
    }

    /// `name`'s group, made (and room made for it) when new.
    fn group_mut<'a>(&self, g: &'a mut HashMap<String, Group>, name: &str) -> &'a mut Group {
        if !g.contains_key(name) && g.len() >= self.limits.groups.max(1) {
            let now = Instant::now();
            let victim = g
                .iter()
                .min_by_key(|(_, grp)| grp.activity(now))
                .map(|(n, _)| n.clone());
            if let Some(v) = victim {
                g.remove(&v);
                self.count_evicted(EVICTED_GROUPS);
            }
        }
        g.entry(name.to_string()).or_default()
    }

    /// Make room for one more member in `grp` (evicting the least recently seen).
    fn room_for_member(&self, grp: &mut Group, member_id: &str) {
        if grp.members.contains_key(member_id)
            || grp.members.len() < self.limits.members_per_group.max(1)
        {
            return;
        }
        let oldest = grp
            .members
            .iter()
            .min_by_key(|(_, m)| m.last_seen)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            grp.members.remove(&id);
            self.count_evicted(EVICTED_MEMBERS);
        }
    }

    /// Make room for one more offset user in `grp` (evicting the least recently seen).
    fn room_for_user(&self, grp: &mut Group, instance: &Instance) {
        if grp.offset_users.contains_key(instance)
            || grp.offset_users.len() < self.limits.offset_users_per_group.max(1)
        {
            return;
        }
        let oldest = grp
            .offset_users
            .iter()
            .min_by_key(|(_, u)| u.last_seen)
            .map(|(i, _)| i.clone());
        if let Some(i) = oldest {
            grp.offset_users.remove(&i);
            self.count_evicted(EVICTED_USERS);
        }
    }

    /// A JoinGroup succeeded: `member_id` (from the response) is in `group` at `generation`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn joined(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        protocol_type: &str,
        session_timeout: Duration,
        instance: Instance,
        conn: u64,
    ) {
        let mut g = self.inner.lock().expect("lock");
        let group = self.group_mut(&mut g, group);
        group.protocol_type = Some(protocol_type.to_string());
        group.generation = generation;
        self.room_for_member(group, member_id);
        let m = group
            .members
            .entry(member_id.to_string())
            .or_insert_with(|| Member::new(instance.clone(), conn, Duration::ZERO, false));
        m.instance = instance;
        m.coordinator_conn = conn;
        m.last_seen = Instant::now();
        m.origin = Origin::Local;
        m.expiry = (session_timeout * 2).max(Duration::from_secs(10));
        drop(g);
        self.bump();
    }

    /// A SyncGroup answered `member_id` of `group` with its assignment.
    pub(crate) fn assigned(
        &self,
        group: &str,
        member_id: &str,
        assignment: BTreeSet<TopicPartition>,
    ) {
        let mut g = self.inner.lock().expect("lock");
        if let Some(m) = g
            .get_mut(group)
            .and_then(|grp| grp.members.get_mut(member_id))
        {
            m.last_seen = Instant::now();
            m.origin = Origin::Local;
            if m.assignment != assignment {
                m.assignment = assignment;
                drop(g);
                self.bump();
            }
        }
    }

    /// A KIP-848 ConsumerGroupHeartbeat answered: the member is alive; `assignment` is `Some`
    /// when the coordinator sent a new one; `left` when the member left the group.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn heartbeat_848(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
        assignment: Option<BTreeSet<TopicPartition>>,
        instance: Instance,
        conn: u64,
        left: bool,
    ) {
        if left {
            self.left(group, &[member_id.to_string()]);
            return;
        }
        let mut g = self.inner.lock().expect("lock");
        let grp = self.group_mut(&mut g, group);
        grp.protocol_type = Some("consumer".into());
        grp.generation = grp.generation.max(epoch);
        self.room_for_member(grp, member_id);
        let m = grp
            .members
            .entry(member_id.to_string())
            .or_insert_with(|| Member::new(instance.clone(), conn, Duration::from_secs(45), true));
        m.last_seen = Instant::now();
        m.coordinator_conn = conn;
        m.origin = Origin::Local;
        let changed = match assignment {
            Some(a) if a != m.assignment => {
                m.assignment = a;
                true
            }
            _ => false,
        };
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// Topics recorded under a topic id this instance did not know yet (a KIP-848 assignment
    /// names topics by id, and the client's Metadata may have gone through another
    /// instance), renamed once the id is learned: `names` maps the id's text to the topic.
    /// A heartbeat repeats an assignment only when it changes, so without this the member's
    /// partitions would keep the id for good and its fetches would never tie to it.
    pub(crate) fn rename_topics(&self, names: &HashMap<String, String>) {
        let mut renamed = false;
        let mut g = self.inner.lock().expect("lock");
        for m in g.values_mut().flat_map(|grp| grp.members.values_mut()) {
            if !m.assignment.iter().any(|(t, _)| names.contains_key(t)) {
                continue;
            }
            m.assignment = std::mem::take(&mut m.assignment)
                .into_iter()
                .map(|(t, p)| (names.get(&t).cloned().unwrap_or(t), p))
                .collect();
            renamed = true;
        }
        drop(g);
        if renamed {
            self.bump();
        }
    }

    /// The coordinator answered a Heartbeat (or a commit) of this member: it is alive.
    pub(crate) fn alive(&self, group: &str, member_id: &str) {
        let mut g = self.inner.lock().expect("lock");
        if let Some(m) = g
            .get_mut(group)
            .and_then(|grp| grp.members.get_mut(member_id))
        {
            m.last_seen = Instant::now();
        }
    }

    /// The coordinator accepted a LeaveGroup: the members left. Returns `true` when that left
    /// the group with no members. The group itself stays known (and monitored).
    pub(crate) fn left(&self, group: &str, member_ids: &[String]) -> bool {
        let mut g = self.inner.lock().expect("lock");
        let mut changed = false;
        let mut empty = false;
        if let Some(grp) = g.get_mut(group) {
            for id in member_ids {
                changed |= grp.members.remove(id).is_some();
            }
            empty = changed && grp.members.is_empty();
        }
        drop(g);
        if changed {
            self.bump();
        }
        empty
    }

    /// The coordinator accepted an OffsetCommit from `instance` on connection `conn`: it uses
    /// `group` for these partitions (an offset user) until that connection closes.
    pub(crate) fn committed(
        &self,
        group: &str,
        instance: Instance,
        conn: u64,
        partitions: impl IntoIterator<Item = (TopicPartition, i64)>,
    ) {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let grp = self.group_mut(&mut g, group);
        self.room_for_user(grp, &instance);
        let user = grp
            .offset_users
            .entry(instance)
            .or_insert_with(|| OffsetUser {
                partitions: BTreeSet::new(),
                last_seen: now,
                conns: BTreeSet::new(),
                origin: Origin::Local,
            });
        user.last_seen = now;
        let mut changed = user.origin != Origin::Local || user.conns.insert(conn);
        user.origin = Origin::Local;
        let mut commits = Vec::new();
        for (tp, o) in partitions {
            changed |= user.partitions.insert(tp.clone());
            commits.push((tp, o));
        }
        for (tp, o) in commits {
            grp.committed.insert(tp, (o, SystemTime::now()));
        }
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// The topics `group`'s members are assigned and its offset users committed on.
    pub(crate) fn topics_of(&self, group: &str) -> BTreeSet<String> {
        let g = self.inner.lock().expect("lock");
        let Some(grp) = g.get(group) else {
            return BTreeSet::new();
        };
        let members = grp.members.values().flat_map(|m| m.assignment.iter());
        let users = grp.offset_users.values().flat_map(|u| u.partitions.iter());
        members.chain(users).map(|tp| tp.0.clone()).collect()
    }

    /// Every group name known.
    pub(crate) fn names(&self) -> Vec<String> {
        self.inner.lock().expect("lock").keys().cloned().collect()
    }

    /// A connection closed: its fetch ties go, and offset users that committed only on it
    /// stop being tied to their group.
    pub(crate) fn connection_closed(&self, conn: u64) {
        let mut g = self.inner.lock().expect("lock");
        let mut changed = false;
        for grp in g.values_mut() {
            grp.fetch_conns.remove(&conn);
            grp.offset_users.retain(|_, u| {
                if u.origin == Origin::Local && u.conns.remove(&conn) {
                    changed = true;
                    return !u.conns.is_empty();
                }
                true
            });
        }
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// Drop members past their expiry and offset users idle past the TTL; forget groups with
    /// nothing left that the coordinator did not describe. (Lag monitoring of a group does
    /// not depend on this: see [`crate::consumers::lag`].)
    pub(crate) fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let mut changed = false;
        let mut expired = Vec::new();
        for (name, grp) in g.iter_mut() {
            let before = grp.members.len() + grp.offset_users.len();
            grp.members.retain(|id, m| {
                let live = m.live(now);
                if !live && m.origin == Origin::Local && expired.len() < MAX_EXPIRED {
                    expired.push(Expired {
                        group: name.clone(),
                        member_id: id.clone(),
                        instance: m.instance.clone(),
                    });
                }
                live
            });
            grp.offset_users
                .retain(|_, u| now.duration_since(u.last_seen) <= self.offset_user_ttl);
            changed |= before != grp.members.len() + grp.offset_users.len();
        }
        let gone: Vec<String> = g
            .iter()
            .filter(|(_, grp)| {
                grp.members.is_empty()
                    && grp.offset_users.is_empty()
                    && grp.fetch_conns.is_empty()
                    && grp.cluster_state.is_none()
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            g.remove(n);
        }
        drop(g);
        let mut taken = self.expired.lock().expect("lock");
        let room = MAX_EXPIRED.saturating_sub(taken.len());
        taken.extend(expired.into_iter().take(room));
        drop(taken);
        if changed || !gone.is_empty() {
            self.bump();
        }
        gone
    }
}

/// Most expired members kept between two [`Groups::take_expired`].
pub(crate) const MAX_EXPIRED: usize = 10_000;

/// A member seen on this instance's wire that stopped heartbeating past its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expired {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) instance: Instance,
}

impl Groups {
    /// The members that expired since the last call (for the audit trail).
    pub(crate) fn take_expired(&self) -> Vec<Expired> {
        std::mem::take(&mut *self.expired.lock().expect("lock"))
    }
}

mod shared;
#[cfg(test)]
mod tests;
mod tie;
mod view;

pub(crate) use shared::{RemoteMember, RemoteOffsetUser};
