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
//! - **the other instances** ([`crate::tier`]): what each instance saw on the wire, shared
//!   through the state topic, arrives here as *remote* members and offset users;
//! - **the group coordinator** ([`crate::coordinator`]): DescribeGroups says which members
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
//! wins; when that does not separate them the fetch is [`AMBIGUOUS`] and the candidates are
//! kept with the decision (governance allows it only if every candidate may read the topic).
//! A connection with no candidate is group-less ([`NO_GROUP`]). Every state change bumps an
//! `epoch` and wakes [`Groups::changed`] waiters, so a decision is made again when anything
//! that could change it changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Group label of a fetch from a client that is in no group.
pub const NO_GROUP: &str = "(none)";
/// Group label when two groups match a connection equally well.
pub const AMBIGUOUS: &str = "(ambiguous)";

/// A topic partition by name.
pub type TopicPartition = (String, i32);

/// One client instance: its principal, `client.id` and source host. The principal is part
/// of it so that a tie made for one principal never carries over to another that shares a
/// client id and a host (librdkafka's default `rdkafka` behind one NAT address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub principal: String,
    pub client_id: String,
    pub host: IpAddr,
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
pub fn fingerprint(partitions: &HashMap<TopicPartition, i64>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default();
    partitions
        .keys()
        .fold(partitions.len() as u64, |acc, tp| acc ^ h.hash_one(tp))
}

/// Every group Tollgate knows of, and the ties of fetch connections to them.
pub struct Groups {
    inner: Mutex<HashMap<String, Group>>,
    epoch: AtomicU64,
    /// Upper bound on how long an offset user stays tied without committing again.
    offset_user_ttl: Duration,
    changed: tokio::sync::Notify,
    /// Wakes the coordinator poller for an on-demand refresh.
    refresh: tokio::sync::Notify,
}

/// The group a fetch connection belongs to, as decided by [`Groups::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub epoch: u64,
    /// Group name, [`NO_GROUP`] or [`AMBIGUOUS`].
    pub group: String,
    /// For [`AMBIGUOUS`]: the groups that matched equally well.
    pub candidates: Vec<String>,
}

/// A member another instance saw (from the tier topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMember {
    pub group: String,
    pub member_id: String,
    pub instance: Instance,
    pub assignment: BTreeSet<TopicPartition>,
    /// When that instance last heard from it.
    pub seen: SystemTime,
    pub expiry: Duration,
    pub kip848: bool,
}

/// An offset user another instance saw (from the tier topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOffsetUser {
    pub group: String,
    pub instance: Instance,
    pub partitions: BTreeSet<TopicPartition>,
    pub seen: SystemTime,
}

/// A group as `GET /v1/groups` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupView {
    pub group: String,
    pub protocol_type: Option<String>,
    pub generation: i32,
    /// The coordinator's state for the group, from the last DescribeGroups.
    pub state: Option<String>,
    pub members: Vec<MemberView>,
    /// Client instances that committed offsets for the group without being a member
    /// (`assign()` consumers that commit).
    pub offset_users: Vec<OffsetUserView>,
    /// Fetch connections to this instance tied to the group: connection id, client id, host.
    pub fetch_connections: Vec<FetchConnView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    pub coordinator_connection: u64,
    pub protocol: &'static str,
    /// `local` (seen on this instance's wire) or `remote` (seen by another instance).
    pub seen_by: &'static str,
    /// topic → partitions.
    pub assignment: BTreeMap<String, Vec<i32>>,
    pub last_seen_seconds_ago: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OffsetUserView {
    pub client_id: String,
    pub host: String,
    pub seen_by: &'static str,
    pub assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FetchConnView {
    pub connection_id: u64,
    pub client_id: String,
    pub host: String,
}

fn by_topic<'a>(tps: impl IntoIterator<Item = &'a TopicPartition>) -> BTreeMap<String, Vec<i32>> {
    let mut m: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in tps {
        m.entry(t.clone()).or_default().push(*p);
    }
    m
}

fn origin_label(o: Origin) -> &'static str {
    match o {
        Origin::Local => "local",
        Origin::Remote => "remote",
    }
}

/// The local `Instant` of a wall-clock time (instances share a clock through NTP).
pub fn instant_of(t: SystemTime) -> Instant {
    let now = Instant::now();
    let ago = SystemTime::now().duration_since(t).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

impl Default for Groups {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

/// Which partitions of `fetching` a group's live members (or offset users) of `instance` cover.
fn coverage<'a>(
    grp: &'a Group,
    instance: &Instance,
    fetching: &HashMap<TopicPartition, i64>,
    now: Instant,
    ttl: Duration,
) -> (usize, usize) {
    let mut by_members: BTreeSet<&'a TopicPartition> = BTreeSet::new();
    for m in grp.members.values() {
        if &m.instance == instance && m.live(now) {
            by_members.extend(m.assignment.iter().filter(|tp| fetching.contains_key(*tp)));
        }
    }
    let mut by_offsets = 0;
    if let Some(u) = grp.offset_users.get(instance) {
        let open = u.origin == Origin::Remote || !u.conns.is_empty();
        if open && now.duration_since(u.last_seen) <= ttl {
            by_offsets = u
                .partitions
                .iter()
                .filter(|tp| fetching.contains_key(*tp))
                .count();
        }
    }
    (by_members.len(), by_offsets)
}

/// The best-scoring names; empty when nothing scored.
fn best_of<'a>(scores: impl Iterator<Item = (&'a String, usize)>) -> Vec<&'a String> {
    let mut best: Vec<&String> = Vec::new();
    let mut top = 0;
    for (name, score) in scores {
        if score == 0 || score < top {
            continue;
        }
        if score > top {
            best.clear();
            top = score;
        }
        best.push(name);
    }
    best
}

/// Add or refresh a remote member; `true` when that could change a tie.
fn upsert_remote_member(g: &mut HashMap<String, Group>, r: &RemoteMember) -> bool {
    let grp = g.entry(r.group.clone()).or_default();
    grp.protocol_type.get_or_insert_with(|| "consumer".into());
    let now = Instant::now();
    match grp.members.get_mut(&r.member_id) {
        Some(m) if m.origin == Origin::Local => false, // seen here: at least as fresh
        Some(m) => {
            let was_live = m.live(now);
            let changed = m.assignment != r.assignment || m.instance != r.instance;
            m.assignment = r.assignment.clone();
            m.instance = r.instance.clone();
            m.last_seen = instant_of(r.seen);
            m.expiry = r.expiry;
            changed || was_live != m.live(now)
        }
        None => {
            let mut m = Member::new(r.instance.clone(), 0, r.expiry, r.kip848);
            m.assignment = r.assignment.clone();
            m.last_seen = instant_of(r.seen);
            m.origin = Origin::Remote;
            grp.members.insert(r.member_id.clone(), m);
            true
        }
    }
}

/// Among tied groups, the one whose commits sit closest below the fetch offsets.
fn closest_commits(
    g: &HashMap<String, Group>,
    best: &[&String],
    fetching: &HashMap<TopicPartition, i64>,
) -> Option<String> {
    let distance = |name: &String| -> Option<i64> {
        let grp = &g[name];
        let mut total: Option<i64> = None;
        for (tp, &fetch) in fetching {
            if let Some(&(c, _)) = grp.committed.get(tp) {
                if c <= fetch {
                    *total.get_or_insert(0) += fetch - c;
                }
            }
        }
        total
    };
    let mut scored: Vec<(i64, &String)> = best
        .iter()
        .filter_map(|n| distance(n).map(|d| (d, *n)))
        .collect();
    scored.sort();
    match scored.as_slice() {
        [(d, n), rest @ ..] if rest.first().is_none_or(|(d2, _)| d2 > d) => Some((*n).clone()),
        _ => None,
    }
}

impl Groups {
    pub fn new(offset_user_ttl: Duration) -> Groups {
        Groups {
            inner: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(1),
            offset_user_ttl,
            changed: tokio::sync::Notify::new(),
            refresh: tokio::sync::Notify::new(),
        }
    }

    /// Changes whenever anything that decides a tie changes.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Resolves when the epoch moves past `seen` (or at once if it already has).
    pub async fn changed(&self, seen: u64) {
        let notified = self.changed.notified();
        if self.epoch() != seen {
            return;
        }
        notified.await;
    }

    /// A read is waiting for a tie: ask the coordinator now rather than at the next period.
    pub fn want_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when [`Groups::want_refresh`] was called.
    pub async fn refresh_wanted(&self) {
        self.refresh.notified().await;
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// A JoinGroup succeeded: `member_id` (from the response) is in `group` at `generation`.
    #[allow(clippy::too_many_arguments)]
    pub fn joined(
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
        let group = g.entry(group.to_string()).or_default();
        group.protocol_type = Some(protocol_type.to_string());
        group.generation = generation;
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
    pub fn assigned(&self, group: &str, member_id: &str, assignment: BTreeSet<TopicPartition>) {
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
    pub fn heartbeat_848(
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
        let grp = g.entry(group.to_string()).or_default();
        grp.protocol_type = Some("consumer".into());
        grp.generation = grp.generation.max(epoch);
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

    /// The coordinator answered a Heartbeat (or a commit) of this member: it is alive.
    pub fn alive(&self, group: &str, member_id: &str) {
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
    pub fn left(&self, group: &str, member_ids: &[String]) -> bool {
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
    pub fn committed(
        &self,
        group: &str,
        instance: Instance,
        conn: u64,
        partitions: impl IntoIterator<Item = (TopicPartition, i64)>,
    ) {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let grp = g.entry(group.to_string()).or_default();
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

    /// The group a fetch connection of `instance` that fetches `fetching` at these offsets
    /// belongs to (the rule in the module docs). Records the tie for `GET /v1/groups`.
    pub fn resolve(
        &self,
        conn: u64,
        instance: &Instance,
        fetching: &HashMap<TopicPartition, i64>,
    ) -> Binding {
        let epoch = self.epoch();
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let scores: Vec<(&String, (usize, usize))> = g
            .iter()
            .map(|(n, grp)| {
                (
                    n,
                    coverage(grp, instance, fetching, now, self.offset_user_ttl),
                )
            })
            .collect();
        // Live members beat offset users: offset users count only when no member matches.
        let mut best = best_of(scores.iter().map(|(n, s)| (*n, s.0)));
        if best.is_empty() {
            best = best_of(scores.iter().map(|(n, s)| (*n, s.1)));
        }
        let (group, candidates) = match best.len() {
            0 => (NO_GROUP.to_string(), Vec::new()),
            1 => (best[0].clone(), Vec::new()),
            _ => match closest_commits(&g, &best, fetching) {
                Some(n) => (n, Vec::new()),
                None => {
                    let mut c: Vec<String> = best.iter().map(|n| (*n).clone()).collect();
                    c.sort();
                    (AMBIGUOUS.to_string(), c)
                }
            },
        };
        for grp in g.values_mut() {
            grp.fetch_conns.remove(&conn);
        }
        if let Some(grp) = g.get_mut(&group) {
            grp.fetch_conns.insert(conn, instance.clone());
        }
        Binding {
            epoch,
            group,
            candidates,
        }
    }

    /// Partitions assigned to live members (heard from within `max_silence` and their
    /// expiry), with the member id.
    pub fn live_assignments(
        &self,
        max_silence: Duration,
    ) -> HashMap<(String, TopicPartition), String> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out = HashMap::new();
        for (name, grp) in g.iter() {
            for (id, m) in &grp.members {
                if m.live(now) && now.duration_since(m.last_seen) <= max_silence {
                    for tp in &m.assignment {
                        out.insert((name.clone(), tp.clone()), id.clone());
                    }
                }
            }
        }
        out
    }

    /// Groups with at least one live member.
    pub fn with_members(&self) -> BTreeSet<String> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        g.iter()
            .filter(|(_, grp)| grp.members.values().any(|m| m.live(now)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The topics `group`'s members are assigned and its offset users committed on.
    pub fn topics_of(&self, group: &str) -> BTreeSet<String> {
        let g = self.inner.lock().expect("lock");
        let Some(grp) = g.get(group) else {
            return BTreeSet::new();
        };
        let members = grp.members.values().flat_map(|m| m.assignment.iter());
        let users = grp.offset_users.values().flat_map(|u| u.partitions.iter());
        members.chain(users).map(|tp| tp.0.clone()).collect()
    }

    /// Every group name known.
    pub fn names(&self) -> Vec<String> {
        self.inner.lock().expect("lock").keys().cloned().collect()
    }

    /// A connection closed: its fetch ties go, and offset users that committed only on it
    /// stop being tied to their group.
    pub fn connection_closed(&self, conn: u64) {
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

    /// The coordinator described `group` (asked at `asked_at`): its state and, when given,
    /// the ids of its members. Members it does not list, and not heard from since the
    /// question was asked, are gone (classic members only: KIP-848 members live by their
    /// ConsumerGroupHeartbeat and expiry).
    pub fn apply_cluster(
        &self,
        group: &str,
        state: &str,
        members: Option<&BTreeSet<String>>,
        asked_at: Instant,
    ) {
        let mut g = self.inner.lock().expect("lock");
        let grp = g.entry(group.to_string()).or_default();
        grp.cluster_state = Some(state.to_string());
        let before = grp.members.len();
        if let Some(ids) = members {
            // KIP-848 members are not the classic DescribeGroups' to list.
            grp.members
                .retain(|id, m| m.kip848 || ids.contains(id) || m.last_seen > asked_at);
        }
        let changed = before != grp.members.len();
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// Replace what other instances saw with `members` and `users` (the tier topic's
    /// current content). What this instance saw itself is kept. The epoch moves only when a
    /// tie could change (a member or offset user came, went, or changed partitions).
    pub fn set_remote(&self, members: &[RemoteMember], users: &[RemoteOffsetUser]) {
        let mut g = self.inner.lock().expect("lock");
        let mut wanted_m: HashMap<(&str, &str), &RemoteMember> = HashMap::new();
        for r in members {
            wanted_m.insert((r.group.as_str(), r.member_id.as_str()), r);
        }
        let mut wanted_u: HashMap<(&str, &Instance), &RemoteOffsetUser> = HashMap::new();
        for r in users {
            wanted_u.insert((r.group.as_str(), &r.instance), r);
        }
        let mut changed = false;
        for (name, grp) in g.iter_mut() {
            let before = grp.members.len() + grp.offset_users.len();
            grp.members.retain(|id, m| {
                m.origin == Origin::Local || wanted_m.contains_key(&(name.as_str(), id.as_str()))
            });
            grp.offset_users.retain(|i, u| {
                u.origin == Origin::Local || wanted_u.contains_key(&(name.as_str(), i))
            });
            changed |= before != grp.members.len() + grp.offset_users.len();
        }
        for r in members {
            changed |= upsert_remote_member(&mut g, r);
        }
        for r in users {
            let grp = g.entry(r.group.clone()).or_default();
            match grp.offset_users.get_mut(&r.instance) {
                Some(u) if u.origin == Origin::Local => {}
                Some(u) => {
                    changed |= u.partitions != r.partitions;
                    u.partitions = r.partitions.clone();
                    u.last_seen = instant_of(r.seen);
                }
                None => {
                    grp.offset_users.insert(
                        r.instance.clone(),
                        OffsetUser {
                            partitions: r.partitions.clone(),
                            last_seen: instant_of(r.seen),
                            conns: BTreeSet::new(),
                            origin: Origin::Remote,
                        },
                    );
                    changed = true;
                }
            }
        }
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// What this instance saw itself, for the tier topic: live members and tied offset users.
    pub fn local(&self) -> (Vec<RemoteMember>, Vec<RemoteOffsetUser>) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let ago = |t: Instant| wall - now.duration_since(t);
        let g = self.inner.lock().expect("lock");
        let mut members = Vec::new();
        let mut users = Vec::new();
        for (name, grp) in g.iter() {
            for (id, m) in &grp.members {
                if m.origin == Origin::Local && m.live(now) {
                    members.push(RemoteMember {
                        group: name.clone(),
                        member_id: id.clone(),
                        instance: m.instance.clone(),
                        assignment: m.assignment.clone(),
                        seen: ago(m.last_seen),
                        expiry: m.expiry,
                        kip848: m.kip848,
                    });
                }
            }
            for (i, u) in &grp.offset_users {
                if u.origin == Origin::Local && !u.conns.is_empty() {
                    users.push(RemoteOffsetUser {
                        group: name.clone(),
                        instance: i.clone(),
                        partitions: u.partitions.clone(),
                        seen: ago(u.last_seen),
                    });
                }
            }
        }
        (members, users)
    }

    /// Drop members past their expiry and offset users idle past the TTL; forget groups with
    /// nothing left that the coordinator did not describe. (Lag monitoring of a group does
    /// not depend on this: see [`crate::lag`].)
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let mut changed = false;
        for grp in g.values_mut() {
            let before = grp.members.len() + grp.offset_users.len();
            grp.members.retain(|_, m| m.live(now));
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
        if changed || !gone.is_empty() {
            self.bump();
        }
        gone
    }

    /// The coordinator no longer lists `group`: forget it.
    pub fn forget(&self, group: &str) {
        if self.inner.lock().expect("lock").remove(group).is_some() {
            self.bump();
        }
    }

    /// Every group, by name.
    pub fn view(&self) -> Vec<GroupView> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out: Vec<GroupView> = g.iter().map(|(n, grp)| group_view(n, grp, now)).collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

fn group_view(name: &str, grp: &Group, now: Instant) -> GroupView {
    let mut members: Vec<MemberView> = grp
        .members
        .iter()
        .map(|(id, m)| MemberView {
            member_id: id.clone(),
            client_id: m.instance.client_id.clone(),
            host: m.instance.host.to_string(),
            coordinator_connection: m.coordinator_conn,
            protocol: if m.kip848 { "consumer" } else { "classic" },
            seen_by: origin_label(m.origin),
            assignment: by_topic(&m.assignment),
            last_seen_seconds_ago: now.duration_since(m.last_seen).as_secs(),
        })
        .collect();
    members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
    let mut offset_users: Vec<OffsetUserView> = grp
        .offset_users
        .iter()
        .map(|(i, u)| OffsetUserView {
            client_id: i.client_id.clone(),
            host: i.host.to_string(),
            seen_by: origin_label(u.origin),
            assignment: by_topic(&u.partitions),
        })
        .collect();
    offset_users.sort_by(|a, b| (&a.client_id, &a.host).cmp(&(&b.client_id, &b.host)));
    GroupView {
        group: name.to_string(),
        protocol_type: grp.protocol_type.clone(),
        generation: grp.generation,
        state: grp.cluster_state.clone(),
        members,
        offset_users,
        fetch_connections: grp
            .fetch_conns
            .iter()
            .map(|(id, i)| FetchConnView {
                connection_id: *id,
                client_id: i.client_id.clone(),
                host: i.host.to_string(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(client: &str) -> Instance {
        Instance {
            principal: crate::identity::ANONYMOUS.into(),
            client_id: client.into(),
            host: "10.0.0.1".parse().unwrap(),
        }
    }

    fn tps(t: &str, ps: &[i32]) -> BTreeSet<TopicPartition> {
        ps.iter().map(|p| (t.to_string(), *p)).collect()
    }

    fn fetching(t: &str, ps: &[i32], offset: i64) -> HashMap<TopicPartition, i64> {
        ps.iter().map(|p| ((t.to_string(), *p), offset)).collect()
    }

    fn join(g: &Groups, group: &str, member: &str, client: &str, parts: &[i32]) {
        g.joined(
            group,
            member,
            1,
            "consumer",
            Duration::from_secs(10),
            inst(client),
            1,
        );
        g.assigned(group, member, tps("t", parts));
    }

    fn group_of(g: &Groups, conn: u64, client: &str, parts: &[i32], offset: i64) -> String {
        g.resolve(conn, &inst(client), &fetching("t", parts, offset))
            .group
    }

    #[test]
    fn member_assignment_decides_and_follows_a_rebalance() {
        let g = Groups::default();
        join(&g, "a", "m1", "app", &[0, 1]);
        join(&g, "b", "m2", "app", &[2, 3]);
        assert_eq!(group_of(&g, 9, "app", &[0, 1], 0), "a");
        assert_eq!(group_of(&g, 10, "app", &[2], 0), "b");
        let before = g.epoch();
        // Rebalance: group a's member now owns partition 2 as well; b's owns 3 only.
        g.assigned("a", "m1", tps("t", &[0, 1, 2]));
        g.assigned("b", "m2", tps("t", &[3]));
        assert!(g.epoch() > before);
        assert_eq!(group_of(&g, 10, "app", &[2], 0), "a");
        // Other client ids and hosts never match.
        assert_eq!(group_of(&g, 11, "other", &[0], 0), NO_GROUP);
        let views = g.view();
        assert_eq!(views[0].fetch_connections.len(), 2);
        g.connection_closed(10);
        assert_eq!(g.view()[0].fetch_connections.len(), 1);
    }

    #[test]
    fn same_client_id_same_partitions_is_split_by_committed_offsets() {
        let g = Groups::default();
        join(&g, "a", "m1", "rdkafka", &[0]);
        join(&g, "b", "m2", "rdkafka", &[0]);
        // No commits yet: the two cannot be told apart; both are candidates.
        let b = g.resolve(5, &inst("rdkafka"), &fetching("t", &[0], 100));
        assert_eq!(b.group, AMBIGUOUS);
        assert_eq!(b.candidates, vec!["a".to_string(), "b".to_string()]);
        g.committed("a", inst("rdkafka"), 1, [(("t".into(), 0), 90)]);
        g.committed("b", inst("rdkafka"), 1, [(("t".into(), 0), 5000)]);
        assert_eq!(group_of(&g, 5, "rdkafka", &[0], 100), "a");
        assert_eq!(group_of(&g, 6, "rdkafka", &[0], 5010), "b");
    }

    #[test]
    fn an_offset_user_tie_ends_with_its_connection() {
        let g = Groups::default();
        g.committed("tool", inst("rdkafka"), 7, [(("t".into(), 4), 10)]);
        assert_eq!(group_of(&g, 1, "rdkafka", &[4], 10), "tool");
        // The committing client exits: the next reader with the same client.id and host
        // inherits nothing.
        let before = g.epoch();
        g.connection_closed(7);
        assert!(g.epoch() > before);
        assert_eq!(group_of(&g, 2, "rdkafka", &[4], 0), NO_GROUP);
    }

    #[test]
    fn live_members_beat_offset_users() {
        let g = Groups::default();
        // Group a committed on partition 0 from a connection that is still open.
        g.committed("a", inst("rdkafka"), 7, [(("t".into(), 0), 10)]);
        // A live member of group b (never commits) owns partition 0.
        join(&g, "b", "m", "rdkafka", &[0]);
        assert_eq!(group_of(&g, 3, "rdkafka", &[0], 10), "b");
    }

    #[test]
    fn leaving_and_the_coordinator_end_member_ties() {
        let g = Groups::default();
        join(&g, "x", "m", "app", &[0]);
        assert!(g.left("x", &["m".into()]), "the last member left");
        assert_eq!(group_of(&g, 2, "app", &[0], 0), NO_GROUP);
        join(&g, "y", "m1", "app", &[1]);
        join(&g, "y", "m2", "app", &[2]);
        let asked = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        // The coordinator lists m1 only: m2 timed out.
        g.apply_cluster("y", "Stable", Some(&["m1".to_string()].into()), asked);
        assert_eq!(group_of(&g, 3, "app", &[1], 0), "y");
        assert_eq!(group_of(&g, 4, "app", &[2], 0), NO_GROUP);
        // A member that joined after the question was asked is kept.
        join(&g, "y", "m3", "app", &[2]);
        g.apply_cluster("y", "Stable", Some(&["m1".to_string()].into()), asked);
        assert_eq!(group_of(&g, 4, "app", &[2], 0), "y");
        // A group the coordinator described is not forgotten when its members are gone.
        g.apply_cluster("x", "Empty", Some(&BTreeSet::new()), Instant::now());
        g.connection_closed(2);
        assert!(g.expire().is_empty());
        assert_eq!(g.view()[0].state.as_deref(), Some("Empty"));
    }

    #[test]
    fn remote_members_tie_and_local_ones_win() {
        let g = Groups::default();
        let remote = RemoteMember {
            group: "r".into(),
            member_id: "m".into(),
            instance: inst("rdkafka"),
            assignment: tps("t", &[0, 1]),
            seen: SystemTime::now(),
            expiry: Duration::from_secs(12),
            kip848: false,
        };
        let before = g.epoch();
        g.set_remote(std::slice::from_ref(&remote), &[]);
        assert!(g.epoch() > before);
        assert_eq!(group_of(&g, 1, "rdkafka", &[0, 1], 0), "r");
        assert_eq!(g.view()[0].members[0].seen_by, "remote");
        // A stale record (its instance stopped refreshing it) ties nothing.
        let stale = RemoteMember {
            seen: SystemTime::now() - Duration::from_secs(60),
            ..remote.clone()
        };
        g.set_remote(&[stale], &[]);
        assert_eq!(group_of(&g, 1, "rdkafka", &[0, 1], 0), NO_GROUP);
        // Gone from the topic: gone here.
        g.set_remote(&[], &[]);
        assert!(g.view()[0].members.is_empty());
        // Local members are published, and never replaced by remote ones.
        join(&g, "r", "m", "rdkafka", &[5]);
        g.set_remote(&[remote], &[]);
        assert_eq!(g.view()[0].members[0].seen_by, "local");
        let (members, users) = g.local();
        assert_eq!(members.len(), 1);
        assert!(users.is_empty());
    }

    #[test]
    fn kip848_assignment_and_leave() {
        let g = Groups::default();
        g.heartbeat_848("n", "u1", 3, Some(tps("t", &[1])), inst("java"), 4, false);
        assert_eq!(group_of(&g, 7, "java", &[1], 0), "n");
        // A heartbeat without an assignment keeps the last one.
        g.heartbeat_848("n", "u1", 3, None, inst("java"), 4, false);
        assert_eq!(group_of(&g, 7, "java", &[1], 0), "n");
        g.heartbeat_848("n", "u1", -1, None, inst("java"), 4, true);
        assert_eq!(group_of(&g, 7, "java", &[1], 0), NO_GROUP);
    }
}
