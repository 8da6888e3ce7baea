//! The detections (see the module docs): one partition's lag and problems, and a group's
//! status from its partitions and its read rate.

use super::{GroupStatus, Lag, PartState, PartitionStatus, STATUS_ORDER};
use crate::consumers::groups::TopicPartition;
use crate::consumers::heads::LagInput;
use crate::control::registry::{Registry, Tier};
use std::time::{Duration, Instant};

impl Lag {
    /// One partition's lag and problems. `assigned`: to a member still heartbeating.
    pub(super) fn partition_status(
        &self,
        tp: TopicPartition,
        p: &PartState,
        input: Option<LagInput>,
        assigned: bool,
        slo: Option<u64>,
        now: Instant,
    ) -> PartitionStatus {
        let cfg = &self.cfg;
        let secs = |d: Duration| d.as_secs_f64();
        let head = input.map(|i| i.head);
        let lag_c = head.zip(p.committed).map(|(h, c)| (h - c).max(0));
        let lag_p = head.zip(p.position).map(|(h, c)| (h - c).max(0));
        let lag_seconds = match (input, p.basis()) {
            (Some(i), Some(_)) => secs(i.waiting),
            _ => 0.0,
        };
        let since_fetch = p.last_fetch.map(|t| now.duration_since(t));
        let since_commit = p.last_commit.map(|t| now.duration_since(t));
        let since_first = || {
            p.first_seen
                .map(|t| now.duration_since(t))
                .unwrap_or_default()
        };
        let no_fetch_for = since_fetch.unwrap_or_else(since_first);
        let mut problems = Vec::new();
        let lagging = lag_p.or(lag_c).unwrap_or(0) > 0;
        // Quiet means no fetch and no commit anywhere in the tier.
        let quiet_for = since_commit.map_or(no_fetch_for, |c| c.min(no_fetch_for));
        if lagging && quiet_for > Duration::from_secs(cfg.stopped_after_seconds) {
            problems.push("stopped");
        } else if assigned && no_fetch_for > Duration::from_secs(cfg.wedged_after_seconds) {
            problems.push("wedged");
        }
        let moved_past_commit = match (p.position, p.committed) {
            (Some(pos), Some(c)) => pos > c,
            (Some(pos), None) => pos > 0,
            _ => false,
        };
        let commit_age = since_commit.unwrap_or_else(since_first);
        let fetching =
            since_fetch.is_some_and(|d| d < Duration::from_secs(cfg.stopped_after_seconds));
        if moved_past_commit
            && fetching
            && commit_age > Duration::from_secs(cfg.commit_stall_seconds)
        {
            problems.push("commit_stall");
        }
        let rewind_hold = Duration::from_secs(cfg.rewind_hold_seconds);
        if p.rewind
            .is_some_and(|(t, _, _)| now.duration_since(t) < rewind_hold)
        {
            problems.push("rewind");
        }
        if slo.is_some_and(|slo| lag_seconds > slo as f64) {
            problems.push("over_slo");
        }
        PartitionStatus {
            topic: tp.0,
            partition: tp.1,
            head,
            position: p.position,
            committed: p.committed,
            lag_records_committed: lag_c,
            lag_records_position: lag_p,
            lag_seconds,
            seconds_since_fetch: since_fetch.map(secs),
            seconds_since_commit: since_commit.map(secs),
            problems,
        }
    }

    /// A group's status from its partitions' and its read rate ((rate, baseline)).
    pub(super) fn group_status(
        &self,
        group: String,
        mut partitions: Vec<PartitionStatus>,
        (rate, baseline): (f64, f64),
        registry: Option<&Registry>,
        now: Instant,
    ) -> GroupStatus {
        let cfg = &self.cfg;
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let entry = registry.and_then(|r| r.entry_for(&group));
        let budget = entry.and_then(|e| e.read_budget_bytes_per_second);
        let mut problems: Vec<&'static str> = Vec::new();
        for pr in partitions.iter().flat_map(|p| &p.problems) {
            if !problems.contains(pr) {
                problems.push(pr);
            }
        }
        let over_budget = budget.is_some_and(|b| rate > b as f64);
        let spike = baseline > cfg.bandwidth_min_bytes_per_second as f64
            && rate > baseline * cfg.bandwidth_spike_factor;
        if over_budget || spike {
            problems.push("bandwidth");
        }
        let status = STATUS_ORDER
            .iter()
            .find(|(p, _)| problems.contains(p))
            .map_or("OK", |(_, s)| *s);
        let promotion = self.promotion(&group);
        let tier = entry.map(|e| match e.tier {
            Tier::Primary => "primary",
            Tier::Probation if promotion.is_some() => "promoted",
            Tier::Probation => "probation",
        });
        let within = (tier == Some("probation"))
            .then(|| self.probation_clock(&group, &problems, now))
            .flatten();
        GroupStatus {
            tier,
            probation_within_slo_seconds: within,
            probation_eligible: within.is_some_and(|s| s >= cfg.probation_window_seconds as f64),
            promotion,
            group,
            status,
            lag_slo_seconds: entry.map(|e| e.lag_slo_seconds),
            read_bytes_per_second: rate,
            read_baseline_bytes_per_second: baseline,
            read_budget_bytes_per_second: budget,
            problems,
            partitions,
        }
    }
}
