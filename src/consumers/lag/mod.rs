//! Lag and rogue-consumer detection from the wire.
//!
//! Per (group, topic, partition) Tollgate knows, from traffic it forwards:
//!
//! - the **head**: high watermark (last stable offset for `read_committed` readers), with the
//!   time each head was first seen, from the one partition-head store ([`crate::consumers::heads`]),
//!   which [`Lag::evaluate`] is handed; lag keeps no heads of its own;
//! - the **fetch position** (the offset the group's member fetches from) and when it last
//!   fetched;
//! - the **committed offset** (OffsetCommit) and when it was committed.
//!
//! Two more sources make every instance of a tier give the same answer, and keep a group
//! monitored when nobody is connected ([`crate::consumers::coordinator`], [`crate::peers`]):
//!
//! - the **group coordinator**: committed offsets (OffsetFetch) of every registered group and
//!   every group the cluster lists, whether or not it has members. A committed offset that
//!   moved counts as a commit at the time it was first seen;
//! - **the other instances**: each shares the fetch positions it saw (with when) through the
//!   state topic; a remote fetch counts like a local one.
//!
//! A group's consumers stopping (left cleanly, crashed, scaled to zero) is the incident to
//! show, not to forget: registered groups are never forgotten, other groups only after
//! `forget_after_seconds` without activity.
//!
//! From these: record lag (head − committed, head − position) and **time lag**: how long the
//! oldest record the group has not fetched has been waiting. That record was appended no later
//! than the first time Tollgate saw the head pass it, so time lag = now − (first time the head
//! was seen above the position). It needs no producer timestamps, keeps growing when the
//! consumer is gone, is 0 when the consumer is at the head, and is not fooled by quiet topics
//! or replays.
//!
//! Detections (each a per-partition problem; thresholds in `[lag]`):
//!
//! | problem | condition |
//! |---|---|
//! | `stopped` | record lag > 0 and no fetch and no commit anywhere in the tier for `stopped_after_seconds` |
//! | `commit_stall` | the position moved past the committed offset and no commit for `commit_stall_seconds` |
//! | `wedged` | assigned to a member that is still heartbeating, but not fetched for `wedged_after_seconds` |
//! | `rewind` | position or committed offset jumped back more than `rewind_offsets` (held for `rewind_hold_seconds`) |
//! | `over_slo` | time lag above the registry entry's `lag_slo_seconds` |
//! | `bandwidth` | (group level) read rate above the entry's `read_budget_bytes_per_second`, or `bandwidth_spike_factor` × the group's own baseline |
//!
//! **Probation.** A group registered with `tier = "probation"` that stays within its lag SLO
//! (no `over_slo`, no `stopped`) for `lag.probation_window_seconds` becomes eligible; it is
//! promoted automatically (`lag.auto_promote`) or by `POST /v1/groups/{group}/promote`. The
//! promotion is recorded in the state topic ([`crate::control::state`]), so it survives restarts and
//! holds on every instance; the group is then served as `primary`.
//!
//! The group status is the worst of its partitions': STOPPED > WEDGED > STALLED (commit stall)
//! > REWIND > ERR (over SLO) > WARN (bandwidth) > OK.

mod detect;
mod promotion;
mod publish;
#[cfg(test)]
mod tests;

use publish::PublishedSeries;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::consumers::groups::{Groups, TopicPartition};
use crate::consumers::heads::Heads;
use crate::control::config::LagConfig;
use crate::control::registry::Registry;
use crate::control::state::StateStore;
use crate::metrics::Metrics;

#[derive(Debug, Default, Clone)]
struct PartState {
    position: Option<i64>,
    last_fetch: Option<Instant>,
    committed: Option<i64>,
    last_commit: Option<Instant>,
    /// When the position last moved forward.
    position_moved: Option<Instant>,
    read_committed: bool,
    rewind: Option<(Instant, i64, i64)>,
    first_seen: Option<Instant>,
    /// When this instance itself last saw a fetch (what it shares with the tier).
    local_fetch: Option<Instant>,
}

impl PartState {
    /// A fetch from `offset` at `at` (here or on another instance).
    fn fetched(&mut self, offset: i64, at: Instant, read_committed: bool, rewind_offsets: i64) {
        if self.last_fetch.is_some_and(|t| t > at) {
            return; // an older observation than one already applied
        }
        self.first_seen.get_or_insert(at);
        if let Some(prev) = self.position {
            if prev - offset > rewind_offsets {
                self.rewind = Some((at, prev, offset));
            }
        }
        if self.position.is_none_or(|prev| offset > prev) {
            self.position_moved = Some(at);
        }
        self.position = Some(offset);
        self.last_fetch = Some(at);
        self.read_committed = read_committed;
    }

    /// Where the group is, for time lag: the more recently observed of the fetch position
    /// and the committed offset. A consumer that committed after its last fetch seen here
    /// (on its way out, or an offset reset while the group is stopped) is where it
    /// committed; one that fetched since is where it fetches.
    fn basis(&self) -> Option<i64> {
        match (self.position, self.committed) {
            (Some(_), Some(c)) if self.last_commit > self.last_fetch => Some(c),
            (pos, c) => pos.or(c),
        }
    }

    /// A committed offset, seen at `at`.
    fn commit(&mut self, offset: i64, at: Instant, rewind_offsets: i64) {
        self.first_seen.get_or_insert(at);
        if let Some(prev) = self.committed {
            if prev - offset > rewind_offsets {
                self.rewind = Some((at, prev, offset));
            }
        }
        self.committed = Some(offset);
        self.last_commit = Some(at);
    }
}

/// What one instance saw a group fetch, for the tier: (partition, offset, when).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SharedFetches {
    pub(crate) group: String,
    pub(crate) read_committed: bool,
    pub(crate) partitions: Vec<(TopicPartition, i64, std::time::SystemTime)>,
}

#[derive(Debug, Default)]
struct GroupRate {
    bytes: u64,
    last_bytes: u64,
    last_eval: Option<Instant>,
    rate: f64,
    baseline: f64,
    samples: u64,
    last_activity: Option<Instant>,
}

/// A partition's lag and problems, as `GET /v1/groups/{group}/status` shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct PartitionStatus {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) head: Option<i64>,
    pub(crate) position: Option<i64>,
    pub(crate) committed: Option<i64>,
    pub(crate) lag_records_committed: Option<i64>,
    pub(crate) lag_records_position: Option<i64>,
    pub(crate) lag_seconds: f64,
    pub(crate) seconds_since_fetch: Option<f64>,
    pub(crate) seconds_since_commit: Option<f64>,
    pub(crate) problems: Vec<&'static str>,
}

/// A group's status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct GroupStatus {
    pub(crate) group: String,
    /// `primary`, `probation` or `promoted` (a probation group promoted since); absent for an
    /// unregistered group.
    pub(crate) tier: Option<&'static str>,
    /// For a probation group: how long it has been within its SLO without a break.
    pub(crate) probation_within_slo_seconds: Option<f64>,
    /// For a probation group: within its SLO for `lag.probation_window_seconds`.
    pub(crate) probation_eligible: bool,
    /// The promotion record, once promoted (from the state topic).
    pub(crate) promotion: Option<serde_json::Value>,
    /// OK, WARN, ERR, STOPPED, STALLED, WEDGED or REWIND.
    pub(crate) status: &'static str,
    pub(crate) lag_slo_seconds: Option<u64>,
    pub(crate) read_bytes_per_second: f64,
    pub(crate) read_baseline_bytes_per_second: f64,
    pub(crate) read_budget_bytes_per_second: Option<u64>,
    pub(crate) problems: Vec<&'static str>,
    pub(crate) partitions: Vec<PartitionStatus>,
}

/// Status precedence, worst first.
const STATUS_ORDER: &[(&str, &str)] = &[
    ("stopped", "STOPPED"),
    ("wedged", "WEDGED"),
    ("commit_stall", "STALLED"),
    ("rewind", "REWIND"),
    ("over_slo", "ERR"),
    ("bandwidth", "WARN"),
];

/// Lag and rogue-consumer detection for every tracked group partition: fetch positions,
/// commits and partition heads in; per-group status, lag series and alerts out, on each
/// [`Lag::evaluate`].
pub struct Lag {
    cfg: LagConfig,
    /// group → partition → state.
    parts: Mutex<Parts>,
    rates: Mutex<HashMap<String, GroupRate>>,
    /// Last evaluated statuses, by group.
    statuses: Mutex<BTreeMap<String, GroupStatus>>,
    /// Series published at the last evaluation, to remove the ones that cleared.
    published: Mutex<PublishedSeries>,
    /// Probation groups: since when they are within their SLO without a break.
    within_slo_since: Mutex<HashMap<String, Instant>>,
    /// Promoted groups: since when they are over their SLO without a break.
    over_slo_since: Mutex<HashMap<String, Instant>>,
    /// Durable state (promotions).
    state: RwLock<Arc<StateStore>>,
    tracked: Tracked,
}

type Parts = HashMap<String, HashMap<TopicPartition, PartState>>;
#[derive(Default)]
struct Tracked {
    partitions: AtomicUsize,
    /// Observations of new group partitions left out at the cap since the last evaluation.
    dropped: AtomicU64,
}

impl Lag {
    pub fn new(cfg: LagConfig) -> Lag {
        Lag {
            cfg,
            parts: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            statuses: Mutex::new(BTreeMap::new()),
            published: Mutex::new(PublishedSeries::default()),
            within_slo_since: Mutex::new(HashMap::new()),
            over_slo_since: Mutex::new(HashMap::new()),
            state: RwLock::new(Arc::new(StateStore::in_memory())),
            tracked: Tracked::default(),
        }
    }

    /// Use `store` for durable state (promotions).
    pub(crate) fn set_state(&self, store: Arc<StateStore>) {
        *self.state.write().expect("lock") = store;
    }

    /// The durable state store (in memory when no state topic is configured).
    pub(crate) fn store(&self) -> Arc<StateStore> {
        self.state.read().expect("lock").clone()
    }

    /// Every group partition tracked (the quiet-head refresh asks [`Heads::quiet`] which of
    /// them no traffic has shown lately).
    pub(crate) fn tracked_partitions(&self) -> std::collections::BTreeSet<TopicPartition> {
        self.parts
            .lock()
            .expect("lock")
            .values()
            .flat_map(|ps| ps.keys().cloned())
            .collect()
    }

    /// A member of `group` fetched these partitions, each from its offset, with the bytes it
    /// got. One call per Fetch response: one lock, no allocation for partitions already known.
    pub fn observe_fetches<'a>(
        &self,
        group: &str,
        fetched: impl IntoIterator<Item = (&'a TopicPartition, i64, u64)>,
        read_committed: bool,
    ) {
        let now = Instant::now();
        let mut total = 0;
        {
            let mut parts = self.parts.lock().expect("lock");
            let Some(g) = self.group_slot(&mut parts, group) else {
                return;
            };
            for (tp, offset, bytes) in fetched {
                total += bytes;
                let Some(p) = self.part_slot(g, tp) else {
                    continue;
                };
                p.fetched(offset, now, read_committed, self.cfg.rewind_offsets);
                p.local_fetch = Some(now);
            }
        }
        let mut rates = self.rates.lock().expect("lock");
        let r = match rates.get_mut(group) {
            Some(r) => r,
            None => rates.entry(group.to_string()).or_default(),
        };
        r.bytes += total;
        r.last_activity = Some(now);
    }

    /// The committed offset of `group` for `tp` as this instance knows it (commits seen on
    /// the wire here, and the coordinator's answers), if it knows one.
    pub(crate) fn committed(&self, group: &str, tp: &TopicPartition) -> Option<i64> {
        let parts = self.parts.lock().expect("lock");
        parts.get(group)?.get(tp)?.committed
    }

    /// `group` committed `offset` for `tp` (the coordinator accepted it).
    pub fn observe_commit(&self, group: &str, tp: TopicPartition, offset: i64) {
        let now = Instant::now();
        let mut parts = self.parts.lock().expect("lock");
        let Some(p) = self
            .group_slot(&mut parts, group)
            .and_then(|g| self.part_slot(g, &tp))
        else {
            return;
        };
        p.commit(offset, now, self.cfg.rewind_offsets);
        drop(parts);
        self.active(group, now);
    }

    /// `group`'s partitions, created if `lag.max_partitions` leaves room for one more.
    fn group_slot<'a>(
        &self,
        parts: &'a mut Parts,
        group: &str,
    ) -> Option<&'a mut HashMap<TopicPartition, PartState>> {
        if !parts.contains_key(group) {
            if self.full() {
                return None;
            }
            parts.insert(group.to_string(), HashMap::new());
        }
        parts.get_mut(group)
    }

    /// The state of one group partition, created if `lag.max_partitions` allows. Every group
    /// partition is a handful of series (lag in records twice, in seconds, problems), and
    /// its names come from clients (commits name any group and topic): the cap keeps a client
    /// that invents them from growing memory and `/metrics` without bound.
    fn part_slot<'a>(
        &self,
        g: &'a mut HashMap<TopicPartition, PartState>,
        tp: &TopicPartition,
    ) -> Option<&'a mut PartState> {
        if !g.contains_key(tp) {
            if self.full() {
                return None;
            }
            self.tracked.partitions.fetch_add(1, Ordering::Relaxed);
            g.insert(tp.clone(), PartState::default());
        }
        g.get_mut(tp)
    }

    fn full(&self) -> bool {
        let full = self.tracked.partitions.load(Ordering::Relaxed) >= self.cfg.max_partitions;
        if full {
            self.tracked.dropped.fetch_add(1, Ordering::Relaxed);
        }
        full
    }

    fn active(&self, group: &str, at: Instant) {
        let mut rates = self.rates.lock().expect("lock");
        let r = rates.entry(group.to_string()).or_default();
        if r.last_activity.is_none_or(|t| t < at) {
            r.last_activity = Some(at);
        }
    }

    /// The coordinator says `group` has `offset` committed for `tp`. Tracks the partition
    /// (so an empty group stays monitored); a changed offset counts as a commit now.
    pub(crate) fn observe_cluster_commit(&self, group: &str, tp: TopicPartition, offset: i64) {
        {
            let mut parts = self.parts.lock().expect("lock");
            let Some(p) = self
                .group_slot(&mut parts, group)
                .and_then(|g| self.part_slot(g, &tp))
            else {
                return;
            };
            if p.committed == Some(offset) {
                p.first_seen.get_or_insert_with(Instant::now);
                return;
            }
        }
        self.observe_commit(group, tp, offset);
    }

    /// The topics of `group`'s tracked partitions.
    pub(crate) fn topics_of(&self, group: &str) -> std::collections::BTreeSet<String> {
        self.parts
            .lock()
            .expect("lock")
            .get(group)
            .map(|ps| ps.keys().map(|tp| tp.0.clone()).collect())
            .unwrap_or_default()
    }

    /// Another instance saw `group` fetch these partitions.
    pub(crate) fn observe_remote_fetches(&self, shared: &SharedFetches) {
        let mut latest: Option<Instant> = None;
        {
            let mut parts = self.parts.lock().expect("lock");
            let Some(g) = self.group_slot(&mut parts, &shared.group) else {
                return;
            };
            for (tp, offset, at) in &shared.partitions {
                let at = crate::consumers::groups::instant_of(*at);
                let Some(p) = self.part_slot(g, tp) else {
                    continue;
                };
                latest = latest.max(Some(at));
                p.fetched(*offset, at, shared.read_committed, self.cfg.rewind_offsets);
            }
        }
        if let Some(at) = latest {
            self.active(&shared.group, at);
        }
    }

    /// What this instance saw each group fetch since `since`, for the tier.
    pub(crate) fn local_fetches(&self, since: Instant) -> Vec<SharedFetches> {
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let parts = self.parts.lock().expect("lock");
        let mut out = Vec::new();
        for (group, ps) in parts.iter() {
            let mut shared = SharedFetches {
                group: group.clone(),
                read_committed: false,
                partitions: Vec::new(),
            };
            for (tp, p) in ps {
                let (Some(at), Some(pos)) = (p.local_fetch, p.position) else {
                    continue;
                };
                if at >= since {
                    shared.read_committed |= p.read_committed;
                    let when = wall - now.duration_since(p.last_fetch.unwrap_or(at));
                    shared.partitions.push((tp.clone(), pos, when));
                }
            }
            if !shared.partitions.is_empty() {
                out.push(shared);
            }
        }
        out
    }

    /// Forget a group (deleted, or silent for `forget_after_seconds`).
    pub(crate) fn forget(&self, group: &str) {
        if let Some(g) = self.parts.lock().expect("lock").remove(group) {
            self.tracked
                .partitions
                .fetch_sub(g.len(), Ordering::Relaxed);
        }
        self.rates.lock().expect("lock").remove(group);
        self.statuses.lock().expect("lock").remove(group);
    }

    /// The last evaluated status of `group`.
    pub(crate) fn status(&self, group: &str) -> Option<GroupStatus> {
        self.statuses.lock().expect("lock").get(group).cloned()
    }

    /// Every group's last evaluated status.
    pub(crate) fn statuses(&self) -> Vec<GroupStatus> {
        self.statuses
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// Recompute every group's status and publish the metrics. Works on snapshots taken one
    /// group at a time: a group's partitions are copied under a short lock, their heads read
    /// under another, and nothing is held while statuses are computed and published. The
    /// request path never waits for more than one group's copy (`cargo bench --bench stall`).
    pub fn evaluate(
        &self,
        heads: &Heads,
        groups: &Groups,
        registry: Option<&Registry>,
        metrics: &Metrics,
    ) {
        let now = Instant::now();
        self.forget_silent(now, registry);
        let alive = groups.live_assignments(Duration::from_secs(self.cfg.wedged_after_seconds));
        let rates = self.update_rates(now);
        let names: Vec<String> = self.parts.lock().expect("lock").keys().cloned().collect();
        let mut statuses: BTreeMap<String, GroupStatus> = BTreeMap::new();
        for group in names {
            let snapshot = self.snapshot(&group);
            if snapshot.is_empty() {
                continue; // forgotten meanwhile
            }
            let inputs = heads.lag_inputs(
                snapshot
                    .iter()
                    .map(|(tp, p)| (tp, p.basis(), p.read_committed)),
            );
            let slo = registry
                .and_then(|r| r.entry_for(&group))
                .map(|e| e.lag_slo_seconds);
            let parts = snapshot
                .into_iter()
                .zip(inputs)
                .map(|((tp, p), input)| {
                    let assigned = alive.contains_key(&(group.clone(), tp.clone()));
                    self.partition_status(tp, &p, input, assigned, slo, now)
                })
                .collect();
            let rate = rates.get(&group).copied().unwrap_or_default();
            let status = self.group_status(group.clone(), parts, rate, registry, now);
            statuses.insert(group, status);
        }
        if let (true, Some(reg)) = (self.cfg.auto_promote, registry) {
            self.auto_promote(&mut statuses, reg, metrics);
        }
        if self.cfg.demote_after_seconds > 0 {
            self.demote_promoted(&mut statuses, metrics, now);
        }
        self.publish(&statuses, metrics);
        *self.statuses.lock().expect("lock") = statuses;
    }

    /// Forget unregistered groups silent for `forget_after_seconds`.
    fn forget_silent(&self, now: Instant, registry: Option<&Registry>) {
        let forget_after = Duration::from_secs(self.cfg.forget_after_seconds);
        let silent: Vec<String> = self
            .rates
            .lock()
            .expect("lock")
            .iter()
            .filter(|(g, r)| {
                r.last_activity
                    .is_some_and(|t| now.duration_since(t) > forget_after)
                    && registry.is_none_or(|reg| reg.entry_for(g).is_none())
            })
            .map(|(g, _)| g.clone())
            .collect();
        for g in silent {
            self.forget(&g);
        }
    }

    /// Each group's read rate since the last evaluation, and its slow baseline.
    fn update_rates(&self, now: Instant) -> HashMap<String, (f64, f64)> {
        let mut rates = self.rates.lock().expect("lock");
        let mut out = HashMap::with_capacity(rates.len());
        for (g, r) in rates.iter_mut() {
            if let Some(t) = r.last_eval {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    r.rate = (r.bytes - r.last_bytes) as f64 / dt;
                    // Slow baseline (~ half-life of 30 evaluations), seeded by the first rate.
                    r.baseline = if r.samples == 0 {
                        r.rate
                    } else {
                        r.baseline * 0.977 + r.rate * 0.023
                    };
                    r.samples += 1;
                }
            }
            r.last_eval = Some(now);
            r.last_bytes = r.bytes;
            out.insert(g.clone(), (r.rate, r.baseline));
        }
        out
    }

    /// One group's tracked partitions, copied.
    fn snapshot(&self, group: &str) -> Vec<(TopicPartition, PartState)> {
        let parts = self.parts.lock().expect("lock");
        parts.get(group).map_or_else(Vec::new, |ps| {
            ps.iter().map(|(tp, p)| (tp.clone(), p.clone())).collect()
        })
    }
}
