//! Running as a tier: what each instance saw on the wire, shared with the others through the
//! state topic ([`crate::control::state`]), so that any instance can place any connection.
//!
//! Behind a connection-level balancer a consumer's coordinator connection (JoinGroup,
//! SyncGroup, OffsetCommit) and its fetch connections land on different instances. The group
//! coordinator knows the members but, on some brokers (tansu), not their client ids or
//! assignments, and never the client's real address (it sees Tollgate's). So every instance
//! publishes, every `tier.share_interval_ms`, what only the wire shows:
//!
//! | key | value |
//! |---|---|
//! | `tier/member/{instance}/{group}/{member}` | client id, host, assignment, when last heard from, expiry |
//! | `tier/offsets/{instance}/{group}/{client}@{host}` | an offset user (an `assign()` consumer that commits), while its connection is open |
//! | `tier/fetch/{instance}/{group}` | the fetch positions it saw, with when |
//! | `tier/instance/{instance}/{run}` | that the instance is alive (`run`: a nonce per process, so two processes given one `tier.instance_id` each see the other's record) |
//! | `tier/reads/{instance}/{group}` | the bytes per second it serves a group with a read budget ([`crate::consumers::budgets`]) |
//! | `tier/writes/{instance}/{producer}` | the bytes per second a registered producer with a produce budget writes through it (`group` in the record holds the producer entry's name) |
//!
//! Records are republished every [`REFRESH`] and deleted (tombstoned) when what they say ends
//! (a member leaves, an offset user's connection closes). A record not republished for
//! [`STALE`] belongs to an instance that is gone and is ignored: nothing an instance saw
//! outlives it by more than that, and one not republished for [`FORGET`] is deleted by
//! whichever instance sees it (the topic does not keep every instance that ever ran). The
//! other instances apply the records as *remote* members
//! and offset users ([`crate::consumers::groups::Groups::set_remote`]) and remote fetches
//! ([`crate::consumers::lag::Lag::observe_remote_fetches`]); local observations always win.
//!
//! Coordination uses only what Kafka gives: the compacted state topic (no membership
//! protocol of our own). Without a state topic an instance shares nothing and says so in
//! `tollgate_state_store_up`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::consumers::budgets::Budgets;
use crate::consumers::groups::{Groups, Instance, RemoteMember, RemoteOffsetUser, TopicPartition};
use crate::consumers::lag::Lag;
use crate::consumers::lag::SharedFetches;
use crate::control::state::StateStore;
use crate::metrics::Metrics;

/// How often an unchanged record is republished.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);
/// A record not republished for this long is from an instance that is gone.
pub(crate) const STALE: Duration = Duration::from_secs(15);
/// A record not republished for this long is deleted (its instance is long gone).
pub(crate) const FORGET: Duration = Duration::from_secs(3600);
/// Key prefix of everything this module writes.
const PREFIX: &str = "tier/";

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn anonymous() -> String {
    crate::consumers::identity::ANONYMOUS.to_string()
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct MemberRecord {
    instance: String,
    published_ms: u64,
    group: String,
    member_id: String,
    /// Absent in records from instances before authentication existed.
    #[serde(default = "anonymous")]
    principal: String,
    client_id: String,
    host: IpAddr,
    assignment: Vec<TopicPartition>,
    seen_ms: u64,
    expiry_ms: u64,
    kip848: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct OffsetUserRecord {
    instance: String,
    published_ms: u64,
    group: String,
    #[serde(default = "anonymous")]
    principal: String,
    client_id: String,
    host: IpAddr,
    partitions: Vec<TopicPartition>,
    seen_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FetchRecord {
    instance: String,
    published_ms: u64,
    group: String,
    read_committed: bool,
    /// (topic, partition, offset, fetched at ms).
    partitions: Vec<(String, i32, i64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ReadsRecord {
    instance: String,
    published_ms: u64,
    group: String,
    bytes_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct InstanceRecord {
    instance: String,
    published_ms: u64,
    /// This process's start nonce: another live process publishing the same instance id
    /// shows up as another `run` (absent in records from older instances).
    #[serde(default)]
    run: String,
}

/// A random hex nonce of `len` characters.
fn nonce(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// The default instance id: the host name (from the OS, else `$HOSTNAME`, else
/// `tollgate`), the client listener's port, and a per-start nonce. Unique per process
/// without any configuration: outside Kubernetes `$HOSTNAME` is often unset, and two
/// instances sharing an id would each ignore the other's records as their own.
pub(crate) fn default_instance_id(listen_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "tollgate".into());
    format!("{host}-{listen_port}-{}", nonce(6))
}

/// One instance's side of the sharing: what it published last, what it applied last.
pub(crate) struct Sharer {
    id: String,
    /// This process's start nonce ([`InstanceRecord::run`]) and start time.
    run: String,
    started_ms: u64,
    /// When another live process was last seen publishing this instance's id.
    duplicate_at: Option<Instant>,
    /// key → (content without the publish time, when published).
    published: HashMap<String, (serde_json::Value, Instant)>,
    last_fetch_publish: Instant,
    /// fetch record key → publish time of the record last applied.
    applied_fetches: HashMap<String, u64>,
    applied_version: u64,
    applied_at: Instant,
}

impl Sharer {
    pub(crate) fn new(id: String) -> Sharer {
        Sharer {
            id,
            run: nonce(16),
            started_ms: ms(SystemTime::now()),
            duplicate_at: None,
            published: HashMap::new(),
            last_fetch_publish: Instant::now(),
            applied_fetches: HashMap::new(),
            applied_version: u64::MAX,
            applied_at: Instant::now(),
        }
    }

    /// Publish this instance's members, offset users and fetch positions.
    pub(crate) fn publish(&mut self, shared: &Sharing, store: &StateStore) {
        let now_wall = SystemTime::now();
        let (members, users) = shared.groups.local();
        let mut current: HashMap<String, (&'static str, serde_json::Value)> = HashMap::new();
        for m in members {
            let key = format!("{PREFIX}member/{}/{}/{}", self.id, m.group, m.member_id);
            let rec = MemberRecord {
                instance: self.id.clone(),
                published_ms: 0,
                group: m.group,
                member_id: m.member_id,
                principal: m.instance.principal,
                client_id: m.instance.client_id,
                host: m.instance.host,
                assignment: m.assignment.into_iter().collect(),
                seen_ms: ms(m.seen),
                expiry_ms: m.expiry.as_millis() as u64,
                kip848: m.kip848,
            };
            current.insert(key, ("member", to_value(&rec)));
        }
        for u in users {
            let key = format!(
                "{PREFIX}offsets/{}/{}/{}@{}#{}",
                self.id, u.group, u.instance.client_id, u.instance.host, u.instance.principal
            );
            let rec = OffsetUserRecord {
                instance: self.id.clone(),
                published_ms: 0,
                group: u.group,
                principal: u.instance.principal,
                client_id: u.instance.client_id,
                host: u.instance.host,
                partitions: u.partitions.into_iter().collect(),
                seen_ms: ms(u.seen),
            };
            current.insert(key, ("offset_user", to_value(&rec)));
        }
        let rec = InstanceRecord {
            instance: self.id.clone(),
            published_ms: 0,
            run: self.run.clone(),
        };
        current.insert(
            format!("{PREFIX}instance/{}/{}", self.id, self.run),
            ("instance", to_value(&rec)),
        );
        self.put_changed(store, current, now_wall, &shared.metrics);
        self.publish_fetches(shared, store, now_wall);
        self.publish_rates(&shared.budgets, "reads", shared, store, now_wall);
        self.publish_rates(&shared.writes, "writes", shared, store, now_wall);
    }

    /// The rate of every budgeted group (`reads`) or producer (`writes`) served here, every
    /// time (the tier's budget shares follow it).
    fn publish_rates(
        &mut self,
        budgets: &Budgets,
        kind: &'static str,
        shared: &Sharing,
        store: &StateStore,
        now_wall: SystemTime,
    ) {
        for (group, rate) in budgets.local_rates() {
            let rec = ReadsRecord {
                instance: self.id.clone(),
                published_ms: ms(now_wall),
                group: group.clone(),
                bytes_per_second: rate,
            };
            let key = format!("{PREFIX}{kind}/{}/{}", self.id, group);
            send(
                store,
                &key,
                Some(to_value(&rec)),
                &shared.metrics,
                kind,
                "put",
            );
        }
    }

    /// Send what changed (or is due for a refresh); delete what ended.
    fn put_changed(
        &mut self,
        store: &StateStore,
        current: HashMap<String, (&'static str, serde_json::Value)>,
        now_wall: SystemTime,
        metrics: &Metrics,
    ) {
        let now = Instant::now();
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.published.remove(&key);
            send(store, &key, None, metrics, kind_of(&key), "delete");
        }
        for (key, (kind, content)) in current {
            let due = match self.published.get(&key) {
                Some((old, at)) => {
                    !same_content(old, &content) || now.duration_since(*at) >= REFRESH
                }
                None => true,
            };
            if !due {
                continue;
            }
            let mut value = content.clone();
            value["published_ms"] = ms(now_wall).into();
            send(store, &key, Some(value), metrics, kind, "put");
            self.published.insert(key, (content, now));
        }
    }

    /// The fetch positions seen since the last publication, one record per group.
    fn publish_fetches(&mut self, shared: &Sharing, store: &StateStore, now_wall: SystemTime) {
        let since = self.last_fetch_publish;
        self.last_fetch_publish = Instant::now();
        for f in shared.lag.local_fetches(since) {
            let rec = FetchRecord {
                instance: self.id.clone(),
                published_ms: ms(now_wall),
                group: f.group.clone(),
                read_committed: f.read_committed,
                partitions: f
                    .partitions
                    .iter()
                    .map(|((t, p), o, at)| (t.clone(), *p, *o, ms(*at)))
                    .collect(),
            };
            let key = format!("{PREFIX}fetch/{}/{}", self.id, f.group);
            send(
                store,
                &key,
                Some(to_value(&rec)),
                &shared.metrics,
                "fetch",
                "put",
            );
        }
    }

    /// Apply the other instances' records (when the topic changed, and every [`REFRESH`] so
    /// that records going stale take effect).
    pub(crate) fn apply(&mut self, shared: &Sharing, store: &StateStore) {
        let version = store.version();
        if version == self.applied_version && self.applied_at.elapsed() < REFRESH {
            return;
        }
        self.applied_version = version;
        self.applied_at = Instant::now();
        let now_ms = ms(SystemTime::now());
        let fresh_after = now_ms.saturating_sub(STALE.as_millis() as u64);
        let forget_before = now_ms.saturating_sub(FORGET.as_millis() as u64);
        let mut members = Vec::new();
        let mut users = Vec::new();
        let mut instances: BTreeSet<String> = [self.id.clone()].into();
        for (key, value) in store.entries(PREFIX) {
            let instance = value["instance"].as_str().unwrap_or_default();
            let published = value["published_ms"].as_u64().unwrap_or(0);
            if published < forget_before {
                send(store, &key, None, &shared.metrics, kind_of(&key), "delete");
                continue;
            }
            // Our own record (fresh: republished every REFRESH) and any other fresh one under
            // this id: another live process.
            if instance == self.id && kind_of(&key) == "instance" && published >= fresh_after {
                self.check_duplicate(&value, published, &shared.metrics);
            }
            if instance == self.id || instance.is_empty() {
                continue;
            }
            match kind_of(&key) {
                "fetch" => self.apply_fetch(shared, &key, value, published),
                _ if published < fresh_after => {}
                kind @ ("reads" | "writes") => {
                    let instance = instance.to_string();
                    let budgets = match kind {
                        "reads" => &shared.budgets,
                        _ => &shared.writes,
                    };
                    if let Some(r) = parse::<ReadsRecord>(&key, value) {
                        let age = ms(SystemTime::now()).saturating_sub(published);
                        budgets.observe_remote(
                            &instance,
                            &r.group,
                            r.bytes_per_second,
                            Duration::from_millis(age),
                        );
                    }
                }
                "member" => members.extend(parse::<MemberRecord>(&key, value).map(remote_member)),
                "offset_user" => {
                    users.extend(parse::<OffsetUserRecord>(&key, value).map(remote_user))
                }
                "instance" => {
                    instances.insert(instance.to_string());
                }
                _ => {}
            }
        }
        shared.groups.set_remote(&members, &users);
        shared.metrics.tier_instances.set(instances.len() as i64);
        shared.groups.set_instances(instances.len());
    }

    /// Another live process publishing this instance's id (`tier.instance_id` set to the
    /// same value twice): each would ignore the other's records as its own, and the tier
    /// would silently fall apart. Said loudly: an error log, the
    /// `tollgate_tier_duplicate_instance_id` gauge (1 until [`STALE`] passes without seeing
    /// it again) and a warning on `/readyz`.
    fn check_duplicate(&mut self, value: &serde_json::Value, published: u64, metrics: &Metrics) {
        let run = value["run"].as_str().unwrap_or_default();
        if !run.is_empty() && run != self.run && published >= self.started_ms {
            let first = self
                .duplicate_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
            if first {
                tracing::error!(
                    instance = self.id,
                    other_run = run,
                    own_run = self.run,
                    "another live Tollgate process publishes this tier instance id; the two \
                     ignore each other's records. Give each instance its own tier.instance_id \
                     (or leave it empty for a unique default)"
                );
            }
            self.duplicate_at = Some(Instant::now());
        }
        let duplicate = self.duplicate_at.is_some_and(|at| at.elapsed() < STALE);
        metrics.tier_duplicate_instance_id.set(i64::from(duplicate));
    }

    fn apply_fetch(&mut self, shared: &Sharing, key: &str, value: serde_json::Value, at: u64) {
        if self.applied_fetches.get(key) == Some(&at) {
            return;
        }
        let Some(rec) = parse::<FetchRecord>(key, value) else {
            return;
        };
        self.applied_fetches.insert(key.to_string(), at);
        shared.lag.observe_remote_fetches(&SharedFetches {
            group: rec.group,
            read_committed: rec.read_committed,
            partitions: rec
                .partitions
                .into_iter()
                .map(|(t, p, o, at)| ((t, p), o, time_of(at)))
                .collect(),
        });
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Equal but for the publish time.
fn same_content(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("published_ms");
            o.remove("seen_ms");
        }
        v
    };
    strip(a) == strip(b)
}

fn kind_of(key: &str) -> &'static str {
    let rest = key.strip_prefix(PREFIX).unwrap_or_default();
    match rest.split('/').next() {
        Some("member") => "member",
        Some("offsets") => "offset_user",
        Some("fetch") => "fetch",
        Some("instance") => "instance",
        Some("reads") => "reads",
        Some("writes") => "writes",
        _ => "other",
    }
}

fn send(
    store: &StateStore,
    key: &str,
    value: Option<serde_json::Value>,
    metrics: &Metrics,
    kind: &str,
    op: &str,
) {
    match store.send(key, value) {
        Ok(()) => metrics.tier_published.with_label_values(&[kind, op]).inc(),
        Err(e) => warn!(key, error = %e, "cannot share a tier record"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, value: serde_json::Value) -> Option<T> {
    match serde_json::from_value(value) {
        Ok(r) => Some(r),
        Err(e) => {
            debug!(key, error = %e, "ignoring an unreadable tier record");
            None
        }
    }
}

fn remote_member(r: MemberRecord) -> RemoteMember {
    RemoteMember {
        group: r.group,
        member_id: r.member_id,
        instance: Instance {
            principal: r.principal,
            client_id: r.client_id,
            host: r.host,
        },
        assignment: r.assignment.into_iter().collect(),
        seen: time_of(r.seen_ms),
        expiry: Duration::from_millis(r.expiry_ms),
        kip848: r.kip848,
    }
}

fn remote_user(r: OffsetUserRecord) -> RemoteOffsetUser {
    RemoteOffsetUser {
        group: r.group,
        instance: Instance {
            principal: r.principal,
            client_id: r.client_id,
            host: r.host,
        },
        partitions: r.partitions.into_iter().collect(),
        seen: time_of(r.seen_ms),
    }
}

/// What the sharing reads and feeds: handed over by the server at start-up.
pub(crate) struct Sharing {
    pub(crate) groups: Arc<Groups>,
    pub(crate) lag: Arc<Lag>,
    /// Consumer groups' read budgets.
    pub(crate) budgets: Arc<Budgets>,
    /// Registered producers' produce budgets.
    pub(crate) writes: Arc<Budgets>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) every: Duration,
}

/// Share and apply every `tier.share_interval_ms` until shutdown.
pub(crate) async fn run(shared: Sharing, id: String, mut shutdown: watch::Receiver<bool>) {
    let every = shared.every;
    let mut sharer = Sharer::new(id);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let store = shared.lag.store();
        shared.metrics.state_store_up.set(i64::from(store.is_up()));
        if !store.is_up() {
            continue;
        }
        sharer.publish(&shared, &store);
        sharer.apply(&shared, &store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside Kubernetes `$HOSTNAME` is often unset and every host listens on the same
    /// port: the default must still differ between processes (the old `$HOSTNAME-<port>`
    /// did not).
    #[test]
    fn default_ids_differ_between_processes_on_one_port() {
        let (a, b) = (default_instance_id(9092), default_instance_id(9092));
        assert_ne!(a, b);
        assert!(a.contains("-9092-"), "{a}");
    }

    #[test]
    fn another_run_under_this_id_is_reported_and_forgotten() {
        let metrics = Metrics::new();
        let mut s = Sharer::new("i".into());
        let rec = |run: &str, published: u64| serde_json::json!({"instance": "i", "run": run, "published_ms": published});
        // Our own record, and one from before this process started (a previous run).
        s.check_duplicate(&rec(&s.run.clone(), s.started_ms), s.started_ms, &metrics);
        s.check_duplicate(&rec("old", s.started_ms - 1), s.started_ms - 1, &metrics);
        assert_eq!(metrics.tier_duplicate_instance_id.get(), 0);
        // Another live process.
        s.check_duplicate(&rec("other", s.started_ms + 1), s.started_ms + 1, &metrics);
        assert_eq!(metrics.tier_duplicate_instance_id.get(), 1);
        // Not seen again for STALE: cleared.
        s.duplicate_at = Some(Instant::now() - STALE);
        s.check_duplicate(
            &rec(&s.run.clone(), s.started_ms + 2),
            s.started_ms + 2,
            &metrics,
        );
        assert_eq!(metrics.tier_duplicate_instance_id.get(), 0);
    }

    fn sharing() -> Sharing {
        let metrics = Arc::new(Metrics::new());
        Sharing {
            groups: Arc::default(),
            lag: Arc::new(Lag::new(Default::default())),
            budgets: Arc::new(Budgets::new(metrics.clone())),
            writes: Arc::new(Budgets::of(
                crate::consumers::budgets::Kind::Writes,
                metrics.clone(),
            )),
            metrics,
            every: Duration::from_millis(500),
        }
    }

    #[test]
    fn two_processes_with_one_id_see_each_other_whatever_the_order() {
        for a_first in [true, false] {
            let store = StateStore::in_memory();
            let (sa, sb) = (sharing(), sharing());
            let (mut a, mut b) = (Sharer::new("same".into()), Sharer::new("same".into()));
            if a_first {
                a.publish(&sa, &store);
                b.publish(&sb, &store);
            } else {
                b.publish(&sb, &store);
                a.publish(&sa, &store);
            }
            a.apply(&sa, &store);
            b.apply(&sb, &store);
            assert_eq!(sa.metrics.tier_duplicate_instance_id.get(), 1);
            assert_eq!(sb.metrics.tier_duplicate_instance_id.get(), 1);
        }
    }

    #[test]
    fn records_of_instances_long_gone_are_deleted() {
        let store = StateStore::in_memory();
        let old = ms(SystemTime::now()) - FORGET.as_millis() as u64 - 1;
        let gone = serde_json::json!({"instance": "gone", "run": "r", "published_ms": old});
        store
            .send("tier/instance/gone/r", Some(gone.clone()))
            .unwrap();
        store.send("tier/member/gone/g/m", Some(gone)).unwrap();
        let s = sharing();
        let mut me = Sharer::new("me".into());
        me.publish(&s, &store);
        me.apply(&s, &store);
        let keys: Vec<String> = store.entries(PREFIX).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [format!("tier/instance/me/{}", me.run)]);
    }

    #[test]
    fn keys_have_kinds_and_content_ignores_times() {
        assert_eq!(kind_of("tier/member/a/g/m"), "member");
        assert_eq!(kind_of("tier/offsets/a/g/c@1.2.3.4"), "offset_user");
        assert_eq!(kind_of("tier/fetch/a/g"), "fetch");
        assert_eq!(kind_of("promotion/g"), "other");
        let a = serde_json::json!({"x": 1, "published_ms": 5, "seen_ms": 1});
        let b = serde_json::json!({"x": 1, "published_ms": 9, "seen_ms": 2});
        assert!(same_content(&a, &b));
        assert!(!same_content(&a, &serde_json::json!({"x": 2})));
    }

    #[test]
    fn member_records_round_trip() {
        let rec = MemberRecord {
            instance: "i".into(),
            published_ms: 1,
            group: "g".into(),
            member_id: "m".into(),
            principal: "User:billing".into(),
            client_id: "rdkafka".into(),
            host: "10.1.2.3".parse().unwrap(),
            assignment: vec![("t".into(), 3)],
            seen_ms: 1_700_000_000_000,
            expiry_ms: 12_000,
            kip848: false,
        };
        let back: MemberRecord = parse("k", to_value(&rec)).unwrap();
        assert_eq!(back, rec);
        let m = remote_member(back);
        assert_eq!(m.assignment.len(), 1);
        assert_eq!(m.expiry, Duration::from_secs(12));
        assert!(parse::<MemberRecord>("k", serde_json::json!({"bad": 1})).is_none());
        // A record from an instance before principals: anonymous.
        let mut old = to_value(&rec);
        old.as_object_mut().unwrap().remove("principal");
        let m = remote_member(parse("k", old).unwrap());
        assert_eq!(m.instance.principal, crate::consumers::identity::ANONYMOUS);
    }
}
