//! Per-group read budgets, enforced across the tier.
//!
//! A registry entry's `read_budget_bytes_per_second` with `on_over_budget = "throttle"` holds
//! the group's reads at the budget, counted over every instance of the tier. Kafka's own
//! quotas are per user or client id; this one is per consumer group.
//!
//! **Share of the budget.** Every instance counts the bytes it serves each group, keeps a
//! rate (an exponential average with a [`TAU`] time constant), and publishes it with the
//! tier's other observations ([`crate::peers`], every `tier.share_interval_ms`). Each
//! instance's allowance is an equal share of the budget among the instances serving the
//! group, or what the others leave unused if that is more:
//! `max(budget / serving, budget − Σ others' rates)`. With every instance busy the
//! allowances add up to the budget; an instance whose consumers want less leaves the rest to
//! the others. A rule that follows each instance's own rate (a share proportional to it)
//! was tried first and starved instances: a consumer's bursts (one record batch per fetch)
//! swung the shares. Rates older than [`REMOTE_STALE`] are ignored (an instance that
//! stopped serving the group).
//!
//! **Holding the rate.** A token bucket per group per instance, filled at the allowance
//! (at most one second's worth banked). A Fetch of a group over its allowance is held before
//! it goes to the broker until the bucket is out of debt (at most [`MAX_HOLD`] per request),
//! and asks for at most one second's worth of data (`max_bytes` and every partition's
//! `partition_max_bytes`, never below one record batch: the broker always returns the first
//! batch whole). The response carries the hold the next request will get in
//! `throttle_time_ms` (KIP-219), as a broker quota would, so clients that honour it back off
//! by themselves.
//!
//! **Producers.** The same machinery holds a registered producer at its
//! `produce_budget_bytes_per_second` ([`Kind::Writes`]: keyed by the producer's registry entry,
//! shared as `tier/writes/...`, its own metrics and lift records). `throttle` holds the
//! producer's next request as [`before`](Budgets::before) says and puts the hold in the
//! Produce answer's `throttle_time_ms`; `reject` refuses its writes while
//! [`over`](Budgets::over) says it is above the budget tier-wide.
//!
//! **Escape hatch.** `POST /v1/groups/{group}/budget/lift?seconds=N` lifts enforcement for a
//! period, recorded in the state topic so that every instance honours it; it expires by
//! itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::{info, warn};

use crate::control::registry::OverBudget;
use crate::control::state::StateStore;
use crate::metrics::Metrics;

/// Longest hold of one request: well inside the clients' request timeouts (Java 30 s,
/// librdkafka 60 s), as long as a broker quota's throttle gets.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(10);
/// A remote rate older than this is ignored.
pub(crate) const REMOTE_STALE: Duration = Duration::from_secs(5);
/// Key prefix of lift records in the state store.
const LIFT: &str = "budget-lift/";
/// Rate window.
const WINDOW: Duration = Duration::from_millis(500);
/// Time constant of the rate average.
pub(crate) const TAU: Duration = Duration::from_secs(3);

/// What a [`Budgets`] counts: consumer groups' reads or registered producers' writes. It
/// picks the metrics, the lift records and the words in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reads,
    Writes,
}

impl Kind {
    fn lift_prefix(self) -> &'static str {
        match self {
            Kind::Reads => LIFT,
            Kind::Writes => "produce-budget-lift/",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Reads => "read budget",
            Kind::Writes => "produce budget",
        }
    }
}

/// What governs a group's reads, from the registry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Budget {
    pub(crate) bytes_per_second: u64,
    pub(crate) action: OverBudget,
}

#[derive(Debug)]
struct GroupState {
    /// Bytes served here since `window_start`.
    window_bytes: u64,
    window_start: Instant,
    /// Bytes per second served here (average of the last windows).
    rate: f64,
    /// Other instances' rates: instance → (bytes per second, when published).
    remote: HashMap<String, (f64, Instant)>,
    /// Token bucket, in bytes (negative: debt).
    tokens: f64,
    refilled: Instant,
    /// Since when the group is held (over budget), for the log and the status.
    enforcing_since: Option<Instant>,
    /// Demoted (`on_over_budget = "demote"`) since, and below its budget since.
    demoted_since: Option<Instant>,
    below_since: Option<Instant>,
    throttled: Duration,
    last_seen: Instant,
}

impl GroupState {
    fn new(now: Instant) -> Self {
        GroupState {
            window_bytes: 0,
            window_start: now,
            rate: 0.0,
            remote: HashMap::new(),
            tokens: 0.0,
            refilled: now,
            enforcing_since: None,
            demoted_since: None,
            below_since: None,
            throttled: Duration::ZERO,
            last_seen: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let dt = now.duration_since(self.window_start);
        if dt < WINDOW {
            return;
        }
        let sample = self.window_bytes as f64 / dt.as_secs_f64();
        let keep = (-dt.as_secs_f64() / TAU.as_secs_f64()).exp();
        self.rate = self.rate * keep + sample * (1.0 - keep);
        self.window_bytes = 0;
        self.window_start = now;
    }

    fn tier_rate(&self, now: Instant) -> f64 {
        self.rate + self.fresh_remote(now).sum::<f64>()
    }

    fn fresh_remote(&self, now: Instant) -> impl Iterator<Item = f64> + '_ {
        self.remote
            .values()
            .filter(move |(_, at)| now.duration_since(*at) < REMOTE_STALE)
            .map(|(r, _)| *r)
    }

    /// This instance's share of `budget`: see the module docs.
    fn allowance(&self, budget: f64, now: Instant) -> f64 {
        let busy = budget * 0.01;
        let (mut others, mut serving) = (0.0, 1.0);
        for r in self.fresh_remote(now) {
            others += r;
            serving += f64::from(u8::from(r > busy));
        }
        (budget / serving).max(budget - others).clamp(busy, budget)
    }

    fn refill(&mut self, allowance: f64, now: Instant) {
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * allowance).min(allowance);
        self.refilled = now;
    }
}

/// A group's budget as `GET /v1/groups/{group}/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct BudgetStatus {
    pub(crate) read_budget_bytes_per_second: u64,
    pub(crate) on_over_budget: &'static str,
    /// The group's read rate over every instance (this one's, and the others' as shared).
    pub(crate) tier_bytes_per_second: f64,
    /// This instance's share of the budget now.
    pub(crate) allowance_bytes_per_second: f64,
    /// Held by the budget now.
    pub(crate) enforcing: bool,
    /// Total time this instance held the group's requests.
    pub(crate) throttled_seconds: f64,
    /// Served from the secondary cluster now (`on_over_budget = "demote"`).
    pub(crate) demoted: bool,
    /// Seconds since the Unix epoch until which enforcement is lifted.
    pub(crate) lifted_until: Option<u64>,
}

/// What a Fetch of a group under a throttling budget must do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hold {
    /// Wait this long before forwarding.
    pub(crate) wait: Duration,
    /// Ask for at most this many bytes.
    pub(crate) max_bytes: i32,
}

/// Every budgeted group's byte rate on this instance, its token bucket and demotion state
/// (at most [`MAX_GROUPS`] groups), and the shared state it reads the other instances' rates and
/// lifts from.
pub struct Budgets {
    kind: Kind,
    groups: Mutex<HashMap<String, GroupState>>,
    state: std::sync::RwLock<Arc<StateStore>>,
    metrics: Arc<Metrics>,
    /// Where holds are also counted (showback's throttled seconds).
    ledger: std::sync::OnceLock<Arc<crate::consumers::ledger::Ledger>>,
}

/// Most groups followed. Group names come from clients (a registry default budget covers
/// every unregistered name): when full, groups idle for `IDLE` make room, and a new group
/// beyond that is not followed (and not enforced) until some go idle.
pub(crate) const MAX_GROUPS: usize = 10_000;
/// A group not seen for this long is forgotten.
const IDLE: Duration = Duration::from_secs(300);

/// `group`'s state, created if [`MAX_GROUPS`] leaves room.
fn slot<'a>(
    groups: &'a mut HashMap<String, GroupState>,
    group: &str,
    now: Instant,
) -> Option<&'a mut GroupState> {
    if !groups.contains_key(group) {
        if groups.len() >= MAX_GROUPS {
            groups.retain(|_, g| now.duration_since(g.last_seen) < IDLE);
            if groups.len() >= MAX_GROUPS {
                return None;
            }
        }
        groups.insert(group.to_string(), GroupState::new(now));
    }
    groups.get_mut(group)
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Budgets {
    /// Consumer groups' read budgets.
    pub fn new(metrics: Arc<Metrics>) -> Budgets {
        Budgets::of(Kind::Reads, metrics)
    }

    /// Budgets of `kind`.
    pub fn of(kind: Kind, metrics: Arc<Metrics>) -> Budgets {
        Budgets {
            kind,
            groups: Mutex::new(HashMap::new()),
            state: std::sync::RwLock::new(Arc::new(StateStore::in_memory())),
            metrics,
            ledger: std::sync::OnceLock::new(),
        }
    }

    /// Count every hold in `ledger` too.
    pub(crate) fn set_ledger(&self, ledger: Arc<crate::consumers::ledger::Ledger>) {
        let _ = self.ledger.set(ledger);
    }

    /// Use `store` for lifts (shared by the tier).
    pub(crate) fn set_state(&self, store: Arc<StateStore>) {
        *self.state.write().expect("lock") = store;
    }

    fn store(&self) -> Arc<StateStore> {
        self.state.read().expect("lock").clone()
    }

    /// Lift enforcement for `group` for `period`; every instance honours it.
    pub(crate) fn lift(&self, group: &str, period: Duration, by: &str) -> Result<u64, String> {
        let until = epoch_ms(SystemTime::now() + period);
        let record = serde_json::json!({"group": group, "until_ms": until, "by": by});
        self.store()
            .put(&format!("{}{group}", self.kind.lift_prefix()), record)
            .map_err(|e| e.to_string())?;
        info!(
            group,
            seconds = period.as_secs(),
            by,
            "{} enforcement lifted",
            self.kind.noun()
        );
        Ok(until / 1000)
    }

    /// Until when enforcement is lifted for `group` (Unix milliseconds), if it is now.
    fn lifted_until(&self, group: &str) -> Option<u64> {
        let rec = self
            .store()
            .get(&format!("{}{group}", self.kind.lift_prefix()))?;
        let until = rec["until_ms"].as_u64()?;
        (until > epoch_ms(SystemTime::now())).then_some(until)
    }

    /// Before a Fetch of `group` goes to the broker: how long to hold it and how much it
    /// may ask for, or `None` when nothing applies.
    pub(crate) fn before(&self, group: &str, budget: Option<Budget>) -> Option<Hold> {
        let budget = budget.filter(|b| b.action == OverBudget::Throttle)?;
        if self.lifted_until(group).is_some() {
            return None;
        }
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("lock");
        let g = slot(&mut groups, group, now)?;
        g.roll(now);
        let b = budget.bytes_per_second as f64;
        let allowance = g.allowance(b, now);
        g.refill(allowance, now);
        let wait = if g.tokens < 0.0 {
            Duration::from_secs_f64(-g.tokens / allowance).min(MAX_HOLD)
        } else {
            Duration::ZERO
        };
        let over = g.tier_rate(now) > b * 1.02 || !wait.is_zero();
        self.note_enforcing(group, g, over, budget, now);
        if !wait.is_zero() {
            g.throttled += wait;
            let throttled = match self.kind {
                Kind::Reads => &self.metrics.consumer_throttle_seconds,
                Kind::Writes => &self.metrics.producer_throttle_seconds,
            };
            throttled
                .with_label_values(&[group])
                .inc_by(wait.as_secs_f64());
            if let Some(l) = self.ledger.get() {
                let direction = match self.kind {
                    Kind::Reads => crate::consumers::ledger::Direction::Read,
                    Kind::Writes => crate::consumers::ledger::Direction::Write,
                };
                l.throttled(direction, group, wait);
            }
        }
        Some(Hold {
            wait,
            max_bytes: allowance.clamp(1.0, i32::MAX as f64) as i32,
        })
    }

    /// Is `group` demoted now (`on_over_budget = "demote"`)? Over its budget, tier-wide, it
    /// is; it stays demoted until its rate has stayed below the budget for `hold`.
    pub(crate) fn demoted(&self, group: &str, budget: Option<Budget>, hold: Duration) -> bool {
        let Some(b) = budget.filter(|b| b.action == OverBudget::Demote) else {
            return false;
        };
        if self.lifted_until(group).is_some() {
            return false;
        }
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("lock");
        let Some(g) = slot(&mut groups, group, now) else {
            return false;
        };
        g.roll(now);
        let rate = g.tier_rate(now);
        let over = rate > b.bytes_per_second as f64;
        let gauge = self.metrics.consumer_demoted.with_label_values(&[group]);
        match (g.demoted_since, over) {
            (None, true) => {
                g.demoted_since = Some(now);
                g.below_since = None;
                gauge.set(1);
                warn!(
                    group,
                    rate = rate.round(),
                    budget = b.bytes_per_second,
                    action = "demote",
                    "read budget: group demoted to the secondary cluster"
                );
            }
            (Some(_), true) => g.below_since = None,
            (Some(_), false) => {
                let below = *g.below_since.get_or_insert(now);
                if now.duration_since(below) >= hold.max(Duration::from_secs(1)) {
                    g.demoted_since = None;
                    g.below_since = None;
                    gauge.set(0);
                    info!(
                        group,
                        rate = rate.round(),
                        budget = b.bytes_per_second,
                        "read budget: group back under budget; served by the primary again"
                    );
                }
            }
            (None, false) => {}
        }
        g.demoted_since.is_some()
    }

    /// A Fetch response of `bytes` went to a member of `group`; returns the hold the next
    /// request will get (for `throttle_time_ms`).
    ///
    /// While enforcement is lifted the bytes count for the group's rate only: they put the
    /// bucket in no debt and the answer carries no throttle time. (They did once: a lifted
    /// backfill's answers told the client to back off for up to [`MAX_HOLD`], and when the
    /// lift ended it owed everything it had read meanwhile.)
    pub(crate) fn served(&self, group: &str, bytes: u64, budget: Option<Budget>) -> Duration {
        let now = Instant::now();
        // The bucket is charged under a throttle budget in force only (the lift is looked up
        // for those alone).
        let charge = budget
            .filter(|b| b.action == OverBudget::Throttle)
            .filter(|_| self.lifted_until(group).is_none());
        let mut groups = self.groups.lock().expect("lock");
        if budget.is_none() && !groups.contains_key(group) {
            return Duration::ZERO;
        }
        match slot(&mut groups, group, now) {
            Some(g) => self.served_locked(g, bytes, charge, now),
            None => Duration::ZERO,
        }
    }

    /// Count `bytes` for the rate; with `charge` (a throttle budget in force), take them
    /// from the bucket and return the hold the next request will get.
    fn served_locked(
        &self,
        g: &mut GroupState,
        bytes: u64,
        charge: Option<Budget>,
        now: Instant,
    ) -> Duration {
        g.window_bytes += bytes;
        g.last_seen = now;
        g.roll(now);
        let Some(b) = charge else {
            return Duration::ZERO;
        };
        g.tokens -= bytes as f64;
        if g.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let allowance = g.allowance(b.bytes_per_second as f64, now);
        Duration::from_secs_f64(-g.tokens / allowance).min(MAX_HOLD)
    }

    /// Is `key` over its budget now, tier-wide (and not lifted)? For the budgets that are
    /// not held here (`alert`, `reject`): raises and clears the over-budget gauge and logs
    /// the change.
    pub(crate) fn over(&self, key: &str, budget: Option<Budget>) -> bool {
        let Some(b) = budget.filter(|b| b.action != OverBudget::Throttle) else {
            return false;
        };
        if self.lifted_until(key).is_some() {
            return false;
        }
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("lock");
        let Some(g) = slot(&mut groups, key, now) else {
            return false;
        };
        g.roll(now);
        let over = g.tier_rate(now) > b.bytes_per_second as f64;
        self.note_enforcing(key, g, over, b, now);
        over
    }

    fn note_enforcing(&self, group: &str, g: &mut GroupState, over: bool, b: Budget, now: Instant) {
        let gauge = match self.kind {
            Kind::Reads => &self.metrics.consumer_budget_enforced,
            Kind::Writes => &self.metrics.producer_over_budget,
        };
        let gauge = gauge.with_label_values(&[group]);
        let noun = self.kind.noun();
        match (over, g.enforcing_since) {
            (true, None) => {
                g.enforcing_since = Some(now);
                gauge.set(1);
                warn!(
                    group,
                    rate = g.tier_rate(now).round(),
                    budget = b.bytes_per_second,
                    action = b.action.label(),
                    "{noun}: over budget"
                );
            }
            (false, Some(since)) if now.duration_since(since) > Duration::from_secs(5) => {
                g.enforcing_since = None;
                gauge.set(0);
                info!(
                    group,
                    rate = g.tier_rate(now).round(),
                    budget = b.bytes_per_second,
                    "{noun}: back under budget"
                );
            }
            _ => {}
        }
    }

    /// This instance's read rate of every group it served lately, for the tier.
    pub(crate) fn local_rates(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        let mut groups = self.groups.lock().expect("lock");
        groups.retain(|_, g| now.duration_since(g.last_seen) < IDLE);
        groups
            .iter_mut()
            .filter_map(|(name, g)| {
                g.roll(now);
                (g.rate > 1.0).then(|| (name.clone(), g.rate))
            })
            .collect()
    }

    /// Another instance served `group` at `rate` bytes per second, `age` ago.
    pub(crate) fn observe_remote(&self, instance: &str, group: &str, rate: f64, age: Duration) {
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        let mut groups = self.groups.lock().expect("lock");
        if let Some(g) = slot(&mut groups, group, now) {
            g.remote.insert(instance.to_string(), (rate, at));
        }
    }

    /// The group's budget state, for its status.
    pub(crate) fn status(&self, group: &str, budget: Option<Budget>) -> Option<BudgetStatus> {
        let b = budget?;
        let now = Instant::now();
        let groups = self.groups.lock().expect("lock");
        let g = groups.get(group);
        Some(BudgetStatus {
            read_budget_bytes_per_second: b.bytes_per_second,
            on_over_budget: b.action.label(),
            tier_bytes_per_second: g.map_or(0.0, |g| g.tier_rate(now)),
            allowance_bytes_per_second: g.map_or(b.bytes_per_second as f64, |g| {
                g.allowance(b.bytes_per_second as f64, now)
            }),
            enforcing: g.is_some_and(|g| g.enforcing_since.is_some()),
            throttled_seconds: g.map_or(0.0, |g| g.throttled.as_secs_f64()),
            demoted: g.is_some_and(|g| g.demoted_since.is_some()),
            lifted_until: self.lifted_until(group).map(|ms| ms / 1000),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(b: u64) -> Option<Budget> {
        Some(Budget {
            bytes_per_second: b,
            action: OverBudget::Throttle,
        })
    }

    #[test]
    fn busy_instances_split_the_budget_and_idle_ones_leave_theirs() {
        let now = Instant::now();
        let mut a = GroupState::new(now);
        a.remote.insert("b".into(), (500.0, now));
        a.remote
            .insert("gone".into(), (5000.0, now - REMOTE_STALE * 2));
        let mut b = GroupState::new(now);
        b.remote.insert("a".into(), (500.0, now));
        let (mine, theirs) = (a.allowance(1000.0, now), b.allowance(1000.0, now));
        assert!((mine + theirs - 1000.0).abs() < 1e-6, "{mine} + {theirs}");
        // b's consumers want only 100 B/s: a may use the rest.
        a.remote.insert("b".into(), (100.0, now));
        assert_eq!(a.allowance(1000.0, now), 900.0);
        // Alone, the whole budget.
        assert_eq!(GroupState::new(now).allowance(1000.0, now), 1000.0);
    }

    #[test]
    fn a_group_over_its_allowance_is_held_and_alert_groups_never_are() {
        let b = Budgets::new(Arc::new(Metrics::new()));
        assert!(b.before("g", throttle(1000)).unwrap().wait.is_zero());
        let next = b.served("g", 5000, throttle(1000));
        assert!(next > Duration::ZERO);
        let hold = b.before("g", throttle(1000)).unwrap();
        assert!(hold.wait > Duration::ZERO && hold.wait <= MAX_HOLD);
        assert!(hold.max_bytes <= 1000);
        let alert = Some(Budget {
            bytes_per_second: 1000,
            action: OverBudget::Alert,
        });
        assert!(b.before("g", alert).is_none());
        assert!(b.before("g", None).is_none());
    }

    #[test]
    fn invented_group_names_stay_bounded() {
        let b = Budgets::new(Arc::new(Metrics::new()));
        for i in 0..MAX_GROUPS + 100 {
            b.served(&format!("invented-{i}"), 10, throttle(1000));
        }
        assert_eq!(b.groups.lock().unwrap().len(), MAX_GROUPS);
        // A known group is still followed.
        assert!(b.before("invented-0", throttle(1000)).is_some());
    }

    #[test]
    fn a_lift_stops_enforcement_until_it_expires() {
        let b = Budgets::new(Arc::new(Metrics::new()));
        b.served("g", 50_000, throttle(1000));
        b.lift("g", Duration::from_secs(60), "test").unwrap();
        assert!(b.before("g", throttle(1000)).is_none());
        assert!(b
            .status("g", throttle(1000))
            .unwrap()
            .lifted_until
            .is_some());
        b.lift("g", Duration::ZERO, "test").unwrap();
        assert!(b.before("g", throttle(1000)).is_some());
    }

    #[test]
    fn reads_while_lifted_carry_no_throttle_time_and_leave_no_debt() {
        let b = Budgets::new(Arc::new(Metrics::new()));
        b.lift("g", Duration::from_secs(60), "test").unwrap();
        // A lifted backfill at full speed.
        assert!(b.served("g", 50_000_000, throttle(1_000_000)).is_zero());
        b.lift("g", Duration::ZERO, "test").unwrap();
        // Enforcement is back, with no debt from the lift.
        let hold = b.before("g", throttle(1_000_000)).unwrap();
        assert!(hold.wait.is_zero(), "held for {:?}", hold.wait);
        // Its rate still counts what it read.
        assert!(b.status("g", throttle(1_000_000)).is_some());
    }
}
