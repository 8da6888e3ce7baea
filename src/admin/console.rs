//! The console: one page at the admin port (`GET /` or `/ui`) that shows who reads what, how
//! hot or cold, how far behind, who is on the secondary, who was refused, and the broker map.
//!
//! No build step and no external assets: the page (`console.html`: HTML, CSS and JavaScript
//! in one file) is compiled into the binary and reads one JSON document,
//! `GET /v1/console` ([`snapshot`]), every few seconds. Everything in it comes from the
//! components' own views (lag statuses, attribution's group reads and activity rows, the
//! registry, the routes in force, recent refusals, the topology); the console computes
//! nothing the API does not already say. It is read-only: promotion stays an API call with
//! the admin token.
//!
//! Registered groups are listed even with nothing to show yet: a consumer that is gone must
//! be more visible, not less.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::app::App;
use crate::brokers::topology::BrokerView;
use crate::consumers::lag::GroupStatus;
use crate::consumers::refusals::RefusalView;
use crate::consumers::usage::{Direction, GroupReaders, GroupReadsView};

/// The page, as served.
pub(crate) const PAGE: &str = include_str!("console.html");

/// Everything the page shows, in one document.
#[derive(Debug, Serialize)]
pub(crate) struct Console {
    /// Seconds since the Unix epoch.
    pub(crate) generated_at: u64,
    /// `enforce`, `shadow`, or `off` (no registry).
    pub(crate) governance: &'static str,
    pub(crate) onboarding: Option<String>,
    pub(crate) groups: Vec<GroupRow>,
    pub(crate) producers: Vec<ProducerRow>,
    pub(crate) refusals: Vec<RefusalView>,
    pub(crate) brokers: Vec<BrokerView>,
}

/// One consumer group.
#[derive(Debug, Default, Serialize)]
pub(crate) struct GroupRow {
    pub(crate) group: String,
    pub(crate) registered: bool,
    pub(crate) owner: Option<String>,
    pub(crate) contact: Option<String>,
    /// `primary`, `probation` or `promoted`.
    pub(crate) tier: Option<&'static str>,
    pub(crate) principals: Vec<String>,
    pub(crate) client_ids: Vec<String>,
    pub(crate) topics: Vec<String>,
    pub(crate) hot_bytes_per_second: f64,
    pub(crate) cold_bytes_per_second: f64,
    /// Bytes per second in 10-second buckets over five minutes, oldest first.
    pub(crate) history_bytes_per_second: Vec<f64>,
    /// Summed over the group's partitions: head − committed offset (or fetch position).
    pub(crate) lag_records: Option<i64>,
    /// The worst partition's time lag.
    pub(crate) lag_seconds: f64,
    /// OK, WARN, ERR, STOPPED, STALLED, WEDGED or REWIND; `NO DATA` for a registered group
    /// nobody has seen yet.
    pub(crate) status: &'static str,
    pub(crate) problems: Vec<&'static str>,
    /// Partitions lag follows for it.
    pub(crate) partitions: usize,
    /// Partitions the secondary cluster serves to it now (tiered reads).
    pub(crate) partitions_on_secondary: usize,
    /// `primary`, `secondary` or `both`; empty while it reads nothing.
    pub(crate) served_by: &'static str,
}

/// One producing client instance on one topic.
#[derive(Debug, Serialize)]
pub(crate) struct ProducerRow {
    pub(crate) topic: String,
    pub(crate) client_id: String,
    pub(crate) principal: String,
    pub(crate) host: String,
    pub(crate) bytes: u64,
    pub(crate) bytes_per_second: f64,
}

/// The document behind `GET /v1/console`.
pub(crate) fn snapshot(shared: &App) -> Console {
    let registry = shared.registry.get();
    let statuses: BTreeMap<String, GroupStatus> = shared
        .lag
        .statuses()
        .into_iter()
        .map(|s| (s.group.clone(), s))
        .collect();
    let reads = shared.usage.group_reads();
    let readers = shared.usage.group_readers();
    let on_secondary = secondary_partitions(shared);
    let mut names: std::collections::BTreeSet<String> = statuses.keys().cloned().collect();
    names.extend(reads.keys().cloned());
    names.extend(readers.keys().cloned());
    if let Some(reg) = &registry {
        names.extend(reg.consumers.iter().filter_map(|e| e.group.clone()));
    }
    names.remove(crate::consumers::groups::NO_GROUP);
    let groups = names
        .into_iter()
        .map(|g| {
            let mut row = GroupRow {
                group: g.clone(),
                ..GroupRow::default()
            };
            if let Some(e) = registry.as_ref().and_then(|r| r.entry_for(&g)) {
                row.registered = true;
                row.owner = Some(e.owner.clone());
                row.contact = Some(e.contact.clone());
            }
            fill_status(&mut row, statuses.get(&g));
            fill_reads(&mut row, reads.get(&g), readers.get(&g));
            row.partitions_on_secondary = on_secondary.get(&g).copied().unwrap_or(0);
            row.served_by = match row.partitions_on_secondary {
                0 if row.partitions == 0
                    && row.hot_bytes_per_second + row.cold_bytes_per_second == 0.0 =>
                {
                    ""
                }
                0 => "primary",
                n if n >= row.partitions => "secondary",
                _ => "both",
            };
            row
        })
        .collect();
    Console {
        generated_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        governance: registry.as_ref().map_or("off", |r| r.mode.label()),
        onboarding: registry.as_ref().and_then(|r| r.onboarding.clone()),
        groups,
        producers: producers(shared),
        refusals: shared.refusals.recent(),
        brokers: shared.topology.brokers(),
    }
}

fn fill_status(row: &mut GroupRow, status: Option<&GroupStatus>) {
    let Some(s) = status else {
        row.status = if row.registered { "NO DATA" } else { "OK" };
        return;
    };
    row.tier = s.tier;
    row.status = s.status;
    row.partitions = s.partitions.len();
    row.problems = s.problems.clone();
    let lags: Vec<i64> = s
        .partitions
        .iter()
        .filter_map(|p| p.lag_records_committed.or(p.lag_records_position))
        .collect();
    row.lag_records = (!lags.is_empty()).then(|| lags.iter().sum());
    row.lag_seconds = s
        .partitions
        .iter()
        .map(|p| p.lag_seconds)
        .fold(0.0, f64::max);
    row.topics = s.partitions.iter().map(|p| p.topic.clone()).collect();
    row.topics.dedup();
}

fn fill_reads(row: &mut GroupRow, reads: Option<&GroupReadsView>, readers: Option<&GroupReaders>) {
    if let Some(r) = reads {
        row.hot_bytes_per_second = r.hot_bytes_per_second;
        row.cold_bytes_per_second = r.cold_bytes_per_second;
        row.history_bytes_per_second = r.history_bytes_per_second.clone();
    }
    if let Some(r) = readers {
        row.principals = r.principals.iter().cloned().collect();
        row.client_ids = r.client_ids.iter().cloned().collect();
        for t in &r.topics {
            if !row.topics.contains(t) {
                row.topics.push(t.clone());
            }
        }
    }
}

/// Per group, how many partitions the secondary serves it now.
fn secondary_partitions(shared: &App) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    if let Some(t) = &shared.tiered {
        for r in t.routes() {
            *out.entry(r.consumer).or_insert(0) += 1;
        }
    }
    out
}

fn producers(shared: &App) -> Vec<ProducerRow> {
    let mut out = Vec::new();
    for (topic, (producers, _)) in shared.usage.topics() {
        if producers == 0 {
            continue;
        }
        for c in shared.usage.topic_clients(&topic, Direction::Produce) {
            out.push(ProducerRow {
                topic: topic.clone(),
                client_id: c.client_id,
                principal: c.principal,
                host: c.host,
                bytes: c.bytes,
                bytes_per_second: c.bytes_per_second,
            });
        }
    }
    out.sort_by(|a, b| b.bytes_per_second.total_cmp(&a.bytes_per_second));
    out
}
