//! Publishing an evaluation as Prometheus series, and removing the series that cleared.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use super::{GroupStatus, Lag, STATUS_ORDER};
use crate::metrics::Metrics;

#[derive(Default)]
pub(super) struct PublishedSeries {
    partition: HashSet<[String; 3]>,
    problems: HashSet<[String; 4]>,
    groups: HashSet<(String, &'static str)>,
    tiers: HashSet<(String, &'static str)>,
}

impl Lag {
    pub(super) fn publish(&self, statuses: &BTreeMap<String, GroupStatus>, m: &Metrics) {
        let mut now = PublishedSeries::default();
        for s in statuses.values() {
            for p in &s.partitions {
                let labels = [s.group.clone(), p.topic.clone(), p.partition.to_string()];
                let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                if let Some(v) = p.lag_records_committed {
                    m.lag_records_committed.with_label_values(&l).set(v);
                }
                if let Some(v) = p.lag_records_position {
                    m.lag_records_position.with_label_values(&l).set(v);
                }
                m.lag_seconds.with_label_values(&l).set(p.lag_seconds);
                for pr in &p.problems {
                    m.partition_problems
                        .with_label_values(&[l[0], l[1], l[2], pr])
                        .set(1);
                    now.problems.insert([
                        labels[0].clone(),
                        labels[1].clone(),
                        labels[2].clone(),
                        (*pr).to_string(),
                    ]);
                }
                now.partition.insert(labels);
            }
            for (_, st) in STATUS_ORDER.iter().chain([("", "OK")].iter()) {
                m.group_status
                    .with_label_values(&[s.group.as_str(), st])
                    .set(i64::from(*st == s.status));
                now.groups.insert((s.group.clone(), st));
            }
            m.group_read_rate
                .with_label_values(&[&s.group])
                .set(s.read_bytes_per_second);
            if let Some(t) = s.tier {
                for tier in ["primary", "probation", "promoted"] {
                    m.group_tier
                        .with_label_values(&[s.group.as_str(), tier])
                        .set(i64::from(tier == t));
                    now.tiers.insert((s.group.clone(), tier));
                }
            }
        }
        m.lag_partitions_tracked
            .set(self.tracked.partitions.load(Ordering::Relaxed) as i64);
        m.lag_partitions_dropped
            .inc_by(self.tracked.dropped.swap(0, Ordering::Relaxed));
        let mut prev = self.published.lock().expect("lock");
        for l in prev
            .partition
            .iter()
            .filter(|l| !now.partition.contains(*l))
        {
            let r: Vec<&str> = l.iter().map(String::as_str).collect();
            let _ = m.lag_records_committed.remove_label_values(&r);
            let _ = m.lag_records_position.remove_label_values(&r);
            let _ = m.lag_seconds.remove_label_values(&r);
        }
        for l in prev.problems.iter().filter(|l| !now.problems.contains(*l)) {
            let r: Vec<&str> = l.iter().map(String::as_str).collect();
            let _ = m.partition_problems.remove_label_values(&r);
        }
        for (g, st) in prev.groups.iter().filter(|x| !now.groups.contains(*x)) {
            let _ = m.group_status.remove_label_values(&[g.as_str(), st]);
            if !statuses.contains_key(g) {
                let _ = m.group_read_rate.remove_label_values(&[g.as_str()]);
            }
        }
        for (g, t) in prev.tiers.iter().filter(|x| !now.tiers.contains(*x)) {
            let _ = m.group_tier.remove_label_values(&[g.as_str(), t]);
        }
        *prev = now;
    }
}
