//! The consumer decision: who is reading. Made ONCE per read request (Fetch, ListOffsets
//! from a consumer), before any policy layer sees it, by the decision layer
//! ([`crate::layers::decision`]), and carried on the request as a [`Consumer`]. Attribution,
//! governance, the budget layer and routing read it; none of them decides again.
//!
//! - **The tie** ([`Tie`]): which group the reading connection belongs to, by the rule in
//!   [`crate::consumers::groups`], from the connection's whole fetch session ([`FetchSession`]:
//!   incremental fetch sessions (KIP-227) name only what changed, so the session is kept
//!   here). A read tied to no group waits up to `attribution.tie_wait_ms` for the tier view
//!   (another instance may have seen the group's coordinator traffic), once per connection
//!   and set of partitions, and only while other instances are heard from.
//! - **The tier**: a registered group's tier in force (the registry's, or primary once a
//!   probation group is promoted). Routing keeps probation reads on the secondary.
//! - **The budget**: the group's read budget, and whether the group is demoted to the
//!   secondary now (`on_over_budget = "demote"`, over its budget tier-wide).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, FetchRequest, ListOffsetsRequest};

use crate::brokers::topic_ids::TopicIds;
use crate::consumers::budgets::{Budget, Budgets};
use crate::consumers::groups::{fingerprint, Groups, Tie, TopicPartition};
use crate::consumers::identity::ConnInfo;
use crate::consumers::lag::Lag;
use crate::control::registry::{RegistryHandle, Tier};
use crate::metrics::Metrics;

/// Who is reading: the one decision per read request.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Consumer {
    /// The group the reading connection belongs to.
    pub(crate) tie: Tie,
    /// A registered group's tier in force; `None` for an unregistered group or no group.
    pub(crate) tier: Option<Tier>,
    /// The group's read budget, when it has one.
    pub(crate) budget: Option<GroupBudget>,
    /// Over its budget with `on_over_budget = "demote"`: its mirrored partitions are served
    /// by the secondary cluster.
    pub(crate) demoted: bool,
}

impl Consumer {
    /// The group, when the read is tied to exactly one.
    pub(crate) fn group(&self) -> Option<&str> {
        self.tie.group()
    }

    /// A probation group (not promoted): routing keeps its reads on the secondary.
    pub(crate) fn on_probation(&self) -> bool {
        self.tier == Some(Tier::Probation)
    }
}

/// A group's read budget and how long it stays demoted once back under it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GroupBudget {
    pub(crate) budget: Budget,
    pub(crate) demote_hold: Duration,
}

/// One connection's fetch session, as the decision (which writes it) and attribution (which
/// reads each answer's fetch positions from it) need it.
#[derive(Default)]
pub struct FetchSession {
    state: Mutex<SessionState>,
}

#[derive(Default)]
struct SessionState {
    /// Fetch offset of every partition in the connection's fetch session.
    positions: HashMap<TopicPartition, i64>,
    /// The tie decided for the session, and the epoch it was decided at.
    tie: Option<(Tie, u64)>,
    /// Partitions changed since the tie was decided.
    dirty: bool,
    /// The partitions (fingerprint) this connection already waited for a tie on.
    waited: Option<u64>,
}

impl FetchSession {
    /// Apply a Fetch request: a full fetch (session epoch 0 or -1) replaces the session, an
    /// incremental one updates it, forgotten topics leave it.
    fn apply(&self, req: &FetchRequest, topic_ids: &TopicIds) {
        let mut s = self.state.lock().expect("lock");
        if req.session_epoch <= 0 {
            s.positions.clear();
            s.dirty = true;
        }
        for f in &req.forgotten_topics_data {
            let topic = topic_ids.topic_of(&f.topic, &f.topic_id);
            for p in &f.partitions {
                s.positions.remove(&(topic.clone(), *p));
                s.dirty = true;
            }
        }
        for t in &req.topics {
            let topic = topic_ids.topic_of(&t.topic, &t.topic_id);
            for p in &t.partitions {
                let prev = s
                    .positions
                    .insert((topic.clone(), p.partition), p.fetch_offset);
                s.dirty |= prev.is_none();
            }
        }
    }

    /// Read the session's fetch positions (held for `f`; only this connection's next
    /// request waits on it).
    pub(crate) fn with_positions<R>(
        &self,
        f: impl FnOnce(&HashMap<TopicPartition, i64>) -> R,
    ) -> R {
        f(&self.state.lock().expect("lock").positions)
    }
}

/// A consumer read, its body decoded (once, shared with every layer).
pub(crate) enum Read {
    Fetch(Arc<FetchRequest>),
    ListOffsets(Arc<ListOffsetsRequest>),
}

/// A read whose tie is decided, and how long it may still wait for a better one.
pub(crate) struct Pending {
    key: ApiKey,
    tie: Tie,
    epoch: u64,
    /// Wait for the tier view until then (a read tied to no group).
    pub(crate) wait_until: Option<Instant>,
}

/// What the decision reads: the group view, promotions, the registry and the budgets, and
/// how long a group-less read may wait. Built once per proxy.
pub struct Decider {
    pub groups: Arc<Groups>,
    pub lag: Arc<Lag>,
    pub registry: Arc<RegistryHandle>,
    pub budgets: Arc<Budgets>,
    pub topic_ids: Arc<TopicIds>,
    pub metrics: Arc<Metrics>,
    /// `attribution.tie_wait_ms`.
    pub tie_wait: Duration,
}

impl Decider {
    /// The tie of a consumer read, right now; `None` for a follower broker's read.
    pub(crate) fn tie(
        &self,
        session: &FetchSession,
        read: &Read,
        conn: &ConnInfo,
    ) -> Option<Pending> {
        let (key, (tie, epoch)) = match read {
            Read::Fetch(fetch) => {
                if fetch.replica_id.0 >= 0 || fetch.replica_state.replica_id.0 >= 0 {
                    return None; // poses as a follower broker: governance refuses it
                }
                session.apply(fetch, &self.topic_ids);
                (ApiKey::Fetch, self.session_tie(session, conn))
            }
            Read::ListOffsets(lo) => {
                if lo.replica_id.0 >= 0 {
                    return None;
                }
                let epoch = self.groups.epoch();
                let parts = listed_partitions(lo);
                let tie = self.groups.resolve(conn.id, &conn.instance(), &parts);
                (ApiKey::ListOffsets, (tie, epoch))
            }
        };
        let wait_until = self.wait_until(key, session, &tie);
        Some(Pending {
            key,
            tie,
            epoch,
            wait_until,
        })
    }

    /// The session's tie, decided again only when group state or the session's partitions
    /// changed.
    fn session_tie(&self, session: &FetchSession, conn: &ConnInfo) -> (Tie, u64) {
        let epoch = self.groups.epoch();
        let mut s = session.state.lock().expect("lock");
        if let Some((tie, at)) = s.tie.as_ref().filter(|(_, at)| *at == epoch && !s.dirty) {
            return (tie.clone(), *at);
        }
        let tie = self.groups.resolve(conn.id, &conn.instance(), &s.positions);
        if tie != Tie::None {
            s.waited = None;
        }
        tracing::debug!(
            conn = conn.id,
            client_id = conn.client_id().unwrap_or_default(),
            group = tie.label(),
            partitions = s.positions.len(),
            "fetch tie decided"
        );
        s.tie = Some((tie.clone(), epoch));
        s.dirty = false;
        (tie, epoch)
    }

    /// How long a read may wait for the tier to tie it: only one tied to no group, while
    /// other instances are heard from, once per connection and set of partitions.
    fn wait_until(&self, key: ApiKey, session: &FetchSession, tie: &Tie) -> Option<Instant> {
        if self.tie_wait.is_zero() || *tie != Tie::None || self.groups.instances() <= 1 {
            return None;
        }
        let mut s = session.state.lock().expect("lock");
        let print = match key {
            ApiKey::Fetch => fingerprint(&s.positions),
            _ => u64::MAX, // ListOffsets: once per connection
        };
        if s.waited == Some(print) {
            return None;
        }
        s.waited = Some(print);
        Some(Instant::now() + self.tie_wait)
    }

    /// Wait until the group view changes in a way that ties this read, or its deadline.
    pub(crate) async fn wait(
        &self,
        session: &FetchSession,
        what: &Read,
        conn: &ConnInfo,
        read: &mut Pending,
    ) {
        let Some(deadline) = read.wait_until.take() else {
            return;
        };
        self.groups.want_refresh();
        let partitions = match what {
            Read::Fetch(_) => session.with_positions(HashMap::clone),
            Read::ListOffsets(lo) => listed_partitions(lo),
        };
        let started = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = self.groups.changed(read.epoch);
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                break;
            }
            read.epoch = self.groups.epoch();
            read.tie = self.groups.resolve(conn.id, &conn.instance(), &partitions);
            if read.key == ApiKey::Fetch {
                let mut s = session.state.lock().expect("lock");
                s.tie = Some((read.tie.clone(), read.epoch));
                s.dirty = false;
            }
            if read.tie != Tie::None {
                break;
            }
        }
        let outcome = if read.tie == Tie::None {
            "timed_out"
        } else {
            "tied"
        };
        self.metrics
            .tie_waits
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The whole decision for a read whose tie is final: its tier and its budget.
    pub(crate) fn decide(&self, read: Pending) -> Consumer {
        let mut consumer = Consumer {
            tie: read.tie,
            ..Consumer::default()
        };
        let (Some(group), Some(registry)) = (consumer.tie.group(), self.registry.get()) else {
            return consumer;
        };
        consumer.tier = self.lag.effective_tier(group, &registry);
        if read.key == ApiKey::Fetch {
            if let Some((bytes_per_second, action)) = registry.budget_for(group) {
                let budget = GroupBudget {
                    budget: Budget {
                        bytes_per_second,
                        action,
                    },
                    demote_hold: Duration::from_secs(registry.demote_hold_seconds),
                };
                consumer.demoted =
                    self.budgets
                        .demoted(group, Some(budget.budget), budget.demote_hold);
                consumer.budget = Some(budget);
            }
        }
        consumer
    }
}

/// The partitions a ListOffsets request names (offset 0 each: a ListOffsets has no position).
pub(crate) fn listed_partitions(lo: &ListOffsetsRequest) -> HashMap<TopicPartition, i64> {
    lo.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| ((t.name.to_string(), p.partition_index), 0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::identity::ListenerKind;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::protocol::StrBytes;

    const REGISTRY: &str = "mode = \"enforce\"\n[[consumer]]\ngroup = \"g\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\ntier = \"probation\"\nlag_slo_seconds = 60\nread_budget_bytes_per_second = 1000\non_over_budget = \"demote\"\n";

    fn decider(dir: &tempfile::TempDir) -> Decider {
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, REGISTRY).unwrap();
        let metrics = Arc::new(Metrics::new());
        Decider {
            groups: Arc::default(),
            lag: Arc::new(Lag::new(Default::default())),
            registry: Arc::new(RegistryHandle::open(&path).unwrap()),
            budgets: Arc::new(Budgets::new(metrics.clone())),
            topic_ids: Arc::default(),
            metrics,
            tie_wait: Duration::from_secs(1),
        }
    }

    fn fetch(partitions: &[i32]) -> Read {
        let topic = FetchTopic::default()
            .with_topic(StrBytes::from_static_str("t").into())
            .with_partitions(
                partitions
                    .iter()
                    .map(|p| FetchPartition::default().with_partition(*p))
                    .collect(),
            );
        Read::Fetch(Arc::new(
            FetchRequest::default()
                .with_replica_id((-1).into())
                .with_topics(vec![topic]),
        ))
    }

    fn conn(id: u64) -> ConnInfo {
        ConnInfo::new(
            id,
            "10.0.0.1:5000".parse().unwrap(),
            ListenerKind::Bootstrap,
        )
    }

    #[test]
    fn a_member_s_fetch_is_its_group_with_its_tier_and_budget() {
        let dir = tempfile::tempdir().unwrap();
        let d = decider(&dir);
        let c = conn(1);
        d.groups.joined(
            "g",
            "m",
            1,
            "consumer",
            Duration::from_secs(10),
            c.instance(),
            2,
        );
        d.groups.assigned("g", "m", [("t".to_string(), 0)].into());
        let session = FetchSession::default();
        let read = d.tie(&session, &fetch(&[0]), &c).unwrap();
        assert!(read.wait_until.is_none());
        let consumer = d.decide(read);
        assert_eq!(consumer.tie, Tie::Group("g".into()));
        assert!(consumer.on_probation());
        let budget = consumer.budget.unwrap().budget;
        assert_eq!(budget.bytes_per_second, 1000);
        assert!(!consumer.demoted, "nothing read yet");
        session.with_positions(|p| assert_eq!(p.len(), 1));
    }

    #[test]
    fn a_groupless_read_waits_once_per_set_of_partitions_and_only_in_a_tier() {
        let dir = tempfile::tempdir().unwrap();
        let d = decider(&dir);
        let (c, session) = (conn(1), FetchSession::default());
        // Alone: no other instance could know more.
        let read = d.tie(&session, &fetch(&[0]), &c).unwrap();
        assert_eq!((read.tie, read.wait_until), (Tie::None, None));
        d.groups.set_instances(2);
        assert!(d
            .tie(&session, &fetch(&[0]), &c)
            .unwrap()
            .wait_until
            .is_some());
        assert!(d
            .tie(&session, &fetch(&[0]), &c)
            .unwrap()
            .wait_until
            .is_none());
        assert!(d
            .tie(&session, &fetch(&[0, 1]), &c)
            .unwrap()
            .wait_until
            .is_some());
        let decided = d.decide(d.tie(&session, &fetch(&[0, 1]), &c).unwrap());
        assert_eq!(
            (decided.tie, decided.tier, decided.budget),
            (Tie::None, None, None)
        );
    }

    #[test]
    fn a_follower_s_read_has_no_decision() {
        let dir = tempfile::tempdir().unwrap();
        let d = decider(&dir);
        let Read::Fetch(f) = fetch(&[0]) else {
            unreachable!()
        };
        let follower = Read::Fetch(Arc::new(FetchRequest::clone(&f).with_replica_id(1.into())));
        assert!(d
            .tie(&FetchSession::default(), &follower, &conn(1))
            .is_none());
    }
}
