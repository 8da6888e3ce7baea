//! Consumer groups as seen on the wire, and the rule that ties a fetching connection to its
//! group.
//!
//! Fetch requests carry no group id, and a Kafka client talks to the group coordinator on a
//! different TCP connection than the ones it fetches on. What links them is the *client
//! instance*: the same `client.id` from the same source host (IP address). Tollgate records:
//!
//! - **members**: from JoinGroup (group, member id, session timeout), SyncGroup (the member's
//!   assignment, decoded from the consumer protocol), Heartbeat (liveness), LeaveGroup, and
//!   KIP-848's ConsumerGroupHeartbeat (member id, epoch and assignment by topic id);
//! - **offset users**: OffsetFetch and OffsetCommit name a group and partitions. A consumer
//!   that `assign()`s partitions but commits to a group is tied to that group this way.
//!
//! # The rule
//!
//! A fetching connection belongs to group G when G has a live member or offset user with the
//! connection's `client.id` and source host whose partitions cover the partitions the
//! connection fetches (in its fetch session) better than any other group's. When two groups
//! tie (two groups with the same `client.id` on one host, reading the same partitions), the
//! group whose committed offsets are closest below the connection's fetch offsets wins; when
//! that does not separate them either the fetch is labelled [`AMBIGUOUS`] and counted. A
//! connection with no candidate is group-less ([`NO_GROUP`]). The decision is cached per
//! connection and made again whenever group state changes (an `epoch` counter), so a member
//! that moves partitions after a rebalance moves its attribution with them.

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

/// One client instance: `client.id` and source host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub client_id: String,
    pub host: IpAddr,
}

#[derive(Debug)]
struct Member {
    instance: Instance,
    /// Connection the member talks to the coordinator on.
    coordinator_conn: u64,
    assignment: BTreeSet<TopicPartition>,
    last_seen: Instant,
    /// Members not heard from for this long are dropped (2 x session timeout).
    expiry: Duration,
    /// KIP-848 member (ConsumerGroupHeartbeat) rather than a classic one.
    kip848: bool,
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
        }
    }
}

#[derive(Debug)]
struct OffsetUser {
    partitions: BTreeSet<TopicPartition>,
    last_seen: Instant,
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
}

/// A connection's last group tie: (groups epoch, partitions fingerprint, group). A reader
/// asks for the same partitions again and again; the tie is decided again only when group
/// state or the partitions change.
#[derive(Debug, Default)]
pub struct TieCache(std::sync::Mutex<Option<(u64, u64, String)>>);

/// An order-independent fingerprint of a set of partitions.
fn fingerprint(partitions: &HashMap<TopicPartition, i64>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default();
    partitions
        .keys()
        .fold(partitions.len() as u64, |acc, tp| acc ^ h.hash_one(tp))
}

/// Every group Tollgate has seen, and the ties of fetch connections to them.
pub struct Groups {
    inner: Mutex<HashMap<String, Group>>,
    epoch: AtomicU64,
    /// How long an offset user without a member entry stays tied to its group.
    offset_user_ttl: Duration,
}

/// The group a fetch connection belongs to, as decided by [`Groups::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub epoch: u64,
    /// Group name, [`NO_GROUP`] or [`AMBIGUOUS`].
    pub group: String,
}

/// A group as `GET /v1/groups` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupView {
    pub group: String,
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub members: Vec<MemberView>,
    /// Client instances that fetched or committed offsets for the group without being a
    /// member (`assign()` consumers that commit).
    pub offset_users: Vec<OffsetUserView>,
    /// Fetch connections tied to the group: connection id, client id, host.
    pub fetch_connections: Vec<FetchConnView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    pub coordinator_connection: u64,
    pub protocol: &'static str,
    /// topic → partitions.
    pub assignment: BTreeMap<String, Vec<i32>>,
    pub last_seen_seconds_ago: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OffsetUserView {
    pub client_id: String,
    pub host: String,
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

impl Default for Groups {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl Groups {
    pub fn new(offset_user_ttl: Duration) -> Groups {
        Groups {
            inner: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(1),
            offset_user_ttl,
        }
    }

    /// Changes whenever anything that decides a tie changes.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
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
            if m.assignment != assignment {
                m.assignment = assignment;
                drop(g);
                self.bump();
                return;
            }
            m.last_seen = Instant::now();
        }
    }

    /// A KIP-848 ConsumerGroupHeartbeat answered: the member is alive; `assignment` is `Some`
    /// when the coordinator sent a new one; `left` when the member left the group. Returns
    /// `true` when its leaving left the group with no members.
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
    ) -> bool {
        let mut g = self.inner.lock().expect("lock");
        if left {
            let (removed, empty) = match g.get_mut(group) {
                Some(grp) => {
                    let removed = grp.members.remove(member_id).is_some();
                    (removed, removed && grp.members.is_empty())
                }
                None => (false, false),
            };
            drop(g);
            if removed {
                self.bump();
            }
            return empty;
        }
        let grp = g.entry(group.to_string()).or_default();
        grp.protocol_type = Some("consumer".into());
        grp.generation = grp.generation.max(epoch);
        let m = grp
            .members
            .entry(member_id.to_string())
            .or_insert_with(|| Member::new(instance.clone(), conn, Duration::from_secs(45), true));
        m.last_seen = Instant::now();
        m.coordinator_conn = conn;
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
        false
    }

    /// A classic Heartbeat (or any request naming the member) shows it is alive.
    pub fn alive(&self, group: &str, member_id: &str) {
        let mut g = self.inner.lock().expect("lock");
        if let Some(m) = g
            .get_mut(group)
            .and_then(|grp| grp.members.get_mut(member_id))
        {
            m.last_seen = Instant::now();
        }
    }

    /// LeaveGroup: the members left. Returns `true` when that left the group with no members.
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

    /// OffsetFetch or OffsetCommit: `instance` uses `group` for these partitions.
    /// `committed` carries the offsets of an OffsetCommit.
    pub fn offsets_used(
        &self,
        group: &str,
        instance: Instance,
        partitions: impl IntoIterator<Item = (TopicPartition, Option<i64>)>,
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
            });
        user.last_seen = now;
        let mut changed = false;
        let mut commits = Vec::new();
        for (tp, offset) in partitions {
            if let Some(o) = offset {
                commits.push((tp.clone(), o));
            }
            changed |= user.partitions.insert(tp);
        }
        for (tp, o) in commits {
            grp.committed.insert(tp, (o, SystemTime::now()));
        }
        drop(g);
        if changed {
            self.bump();
        }
    }

    /// [`Groups::resolve`] through a connection's [`TieCache`]: decided again only when group
    /// state or the set of partitions changed.
    pub fn resolve_cached(
        &self,
        cache: &TieCache,
        conn: u64,
        instance: &Instance,
        fetching: &HashMap<TopicPartition, i64>,
    ) -> String {
        let (epoch, print) = (self.epoch(), fingerprint(fetching));
        let mut tie = cache.0.lock().expect("lock");
        if let Some((e, f, g)) = tie.as_ref() {
            if *e == epoch && *f == print {
                return g.clone();
            }
        }
        let b = self.resolve(conn, instance, fetching);
        *tie = Some((b.epoch, print, b.group.clone()));
        b.group
    }

    /// The group of a fetch connection of `instance` that fetches `fetching` at these offsets.
    /// Records the tie for `GET /v1/groups` and returns it with the epoch it was decided at.
    pub fn resolve(
        &self,
        conn: u64,
        instance: &Instance,
        fetching: &HashMap<TopicPartition, i64>,
    ) -> Binding {
        let epoch = self.epoch();
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        // Score every group by how many fetched partitions its matching members cover.
        let mut best: Vec<(&String, usize)> = Vec::new();
        for (name, grp) in g.iter() {
            let mut covered: BTreeSet<&TopicPartition> = BTreeSet::new();
            for m in grp.members.values() {
                if &m.instance == instance && now.duration_since(m.last_seen) <= m.expiry {
                    covered.extend(m.assignment.iter().filter(|tp| fetching.contains_key(*tp)));
                }
            }
            if let Some(u) = grp.offset_users.get(instance) {
                if now.duration_since(u.last_seen) <= self.offset_user_ttl {
                    covered.extend(u.partitions.iter().filter(|tp| fetching.contains_key(*tp)));
                }
            }
            let score = covered.len();
            if score == 0 {
                continue;
            }
            match best.first().map(|b| b.1) {
                Some(s) if s > score => {}
                Some(s) if s == score => best.push((name, score)),
                _ => best = vec![(name, score)],
            }
        }
        let group = match best.len() {
            0 => NO_GROUP.to_string(),
            1 => best[0].0.clone(),
            _ => {
                // Tie: the group whose commits sit closest below the fetch offsets.
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
                    .filter_map(|(n, _)| distance(n).map(|d| (d, *n)))
                    .collect();
                scored.sort();
                match scored.as_slice() {
                    [(d, n), rest @ ..] if rest.first().is_none_or(|(d2, _)| d2 > d) => {
                        (*n).clone()
                    }
                    _ => AMBIGUOUS.to_string(),
                }
            }
        };
        for grp in g.values_mut() {
            grp.fetch_conns.remove(&conn);
        }
        if let Some(grp) = g.get_mut(&group) {
            grp.fetch_conns.insert(conn, instance.clone());
        }
        Binding { epoch, group }
    }

    /// Partitions assigned to members heard from within `max_silence`, with the member id.
    pub fn live_assignments(
        &self,
        max_silence: Duration,
    ) -> HashMap<(String, TopicPartition), String> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out = HashMap::new();
        for (name, grp) in g.iter() {
            for (id, m) in &grp.members {
                if now.duration_since(m.last_seen) <= max_silence {
                    for tp in &m.assignment {
                        out.insert((name.clone(), tp.clone()), id.clone());
                    }
                }
            }
        }
        out
    }

    /// A fetch connection closed.
    pub fn connection_closed(&self, conn: u64) {
        let mut g = self.inner.lock().expect("lock");
        for grp in g.values_mut() {
            grp.fetch_conns.remove(&conn);
        }
    }

    /// Drop members not heard from within their expiry and offset users idle past the TTL;
    /// forget groups with nothing left. Returns the groups forgotten.
    pub fn expire(&self) -> Vec<String> {
        let now = Instant::now();
        let mut g = self.inner.lock().expect("lock");
        let mut changed = false;
        for grp in g.values_mut() {
            let before = grp.members.len() + grp.offset_users.len();
            grp.members
                .retain(|_, m| now.duration_since(m.last_seen) <= m.expiry);
            grp.offset_users
                .retain(|_, u| now.duration_since(u.last_seen) <= self.offset_user_ttl);
            changed |= before != grp.members.len() + grp.offset_users.len();
        }
        let gone: Vec<String> = g
            .iter()
            .filter(|(_, grp)| {
                grp.members.is_empty() && grp.offset_users.is_empty() && grp.fetch_conns.is_empty()
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

    /// Every group, by name.
    pub fn view(&self) -> Vec<GroupView> {
        let now = Instant::now();
        let g = self.inner.lock().expect("lock");
        let mut out: Vec<GroupView> = g
            .iter()
            .map(|(name, grp)| {
                let mut members: Vec<MemberView> = grp
                    .members
                    .iter()
                    .map(|(id, m)| MemberView {
                        member_id: id.clone(),
                        client_id: m.instance.client_id.clone(),
                        host: m.instance.host.to_string(),
                        coordinator_connection: m.coordinator_conn,
                        protocol: if m.kip848 { "consumer" } else { "classic" },
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
                        assignment: by_topic(&u.partitions),
                    })
                    .collect();
                offset_users.sort_by(|a, b| (&a.client_id, &a.host).cmp(&(&b.client_id, &b.host)));
                GroupView {
                    group: name.clone(),
                    protocol_type: grp.protocol_type.clone(),
                    generation: grp.generation,
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
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(client: &str) -> Instance {
        Instance {
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

    #[test]
    fn member_assignment_decides_and_follows_a_rebalance() {
        let g = Groups::default();
        join(&g, "a", "m1", "app", &[0, 1]);
        join(&g, "b", "m2", "app", &[2, 3]);
        assert_eq!(
            g.resolve(9, &inst("app"), &fetching("t", &[0, 1], 0)).group,
            "a"
        );
        assert_eq!(
            g.resolve(10, &inst("app"), &fetching("t", &[2], 0)).group,
            "b"
        );
        let before = g.epoch();
        // Rebalance: group a's member now owns partition 2 as well; b's owns 3 only.
        g.assigned("a", "m1", tps("t", &[0, 1, 2]));
        g.assigned("b", "m2", tps("t", &[3]));
        assert!(g.epoch() > before);
        assert_eq!(
            g.resolve(10, &inst("app"), &fetching("t", &[2], 0)).group,
            "a"
        );
        // Other client ids and hosts never match.
        assert_eq!(
            g.resolve(11, &inst("other"), &fetching("t", &[0], 0)).group,
            NO_GROUP
        );
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
        // No commits yet: the two cannot be told apart.
        assert_eq!(
            g.resolve(5, &inst("rdkafka"), &fetching("t", &[0], 100))
                .group,
            AMBIGUOUS
        );
        g.offsets_used("a", inst("rdkafka"), [(("t".into(), 0), Some(90))]);
        g.offsets_used("b", inst("rdkafka"), [(("t".into(), 0), Some(5000))]);
        assert_eq!(
            g.resolve(5, &inst("rdkafka"), &fetching("t", &[0], 100))
                .group,
            "a"
        );
        assert_eq!(
            g.resolve(6, &inst("rdkafka"), &fetching("t", &[0], 5010))
                .group,
            "b"
        );
    }

    #[test]
    fn offset_users_and_leaving() {
        let g = Groups::default();
        g.offsets_used("tool", inst("cli"), [(("t".into(), 4), None)]);
        assert_eq!(
            g.resolve(1, &inst("cli"), &fetching("t", &[4], 0)).group,
            "tool"
        );
        join(&g, "x", "m", "app", &[0]);
        assert!(g.left("x", &["m".into()]), "the last member left");
        assert_eq!(
            g.resolve(2, &inst("app"), &fetching("t", &[0], 0)).group,
            NO_GROUP
        );
        g.connection_closed(1);
        let gone = g.expire();
        assert_eq!(gone, vec!["x".to_string()]);
    }

    #[test]
    fn kip848_assignment_and_leave() {
        let g = Groups::default();
        g.heartbeat_848("n", "u1", 3, Some(tps("t", &[1])), inst("java"), 4, false);
        assert_eq!(
            g.resolve(7, &inst("java"), &fetching("t", &[1], 0)).group,
            "n"
        );
        // A heartbeat without an assignment keeps the last one.
        g.heartbeat_848("n", "u1", 3, None, inst("java"), 4, false);
        assert_eq!(
            g.resolve(7, &inst("java"), &fetching("t", &[1], 0)).group,
            "n"
        );
        g.heartbeat_848("n", "u1", -1, None, inst("java"), 4, true);
        assert_eq!(
            g.resolve(7, &inst("java"), &fetching("t", &[1], 0)).group,
            NO_GROUP
        );
    }
}
