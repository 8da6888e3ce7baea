//! Recent refusals: who governance refused (or, in shadow mode, would have), for the console.
//!
//! The metric `tollgate_rejected_requests_total{reason,api,mode}` counts every refusal but
//! cannot say who caused it (client ids and group names are unbounded label values), and the
//! log says who but is rate-limited. This keeps, per (reason, group, topic, principal, client
//! id, host), how many refusals and when the first and last were, for the last hour. Names
//! come from clients: at most [`MAX_ROWS`] rows are kept, and when full the row seen longest
//! ago makes room (a client inventing a group per request churns its own rows, nobody
//! else's recent ones).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Most rows kept.
pub(crate) const MAX_ROWS: usize = 1000;
/// How long a row is kept after its last refusal.
pub(crate) const KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    reason: &'static str,
    mode: &'static str,
    group: String,
    topic: String,
    principal: String,
    client_id: String,
    host: String,
}

#[derive(Debug, Clone)]
struct Row {
    api: &'static str,
    count: u64,
    first: SystemTime,
    last: SystemTime,
    last_at: Instant,
}

/// One refusal, as governance reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal<'a> {
    pub(crate) reason: &'static str,
    pub(crate) mode: &'static str,
    pub(crate) api: &'static str,
    pub(crate) group: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) principal: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) host: &'a str,
}

/// One row of the console's refusal table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct RefusalView {
    pub(crate) reason: &'static str,
    /// `enforce` (refused) or `shadow` (would have been).
    pub(crate) mode: &'static str,
    /// The API of the latest refusal.
    pub(crate) api: &'static str,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) principal: String,
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) count: u64,
    /// Seconds since the Unix epoch.
    pub(crate) first: u64,
    pub(crate) last: u64,
}

/// The last hour's refusals, one row per (reason, group, topic, principal, client id, host),
/// at most [`MAX_ROWS`] rows.
#[derive(Default)]
pub struct Refusals {
    rows: Mutex<HashMap<Key, Row>>,
    /// Where every refusal also goes (the audit trail's ledger).
    sink: std::sync::OnceLock<std::sync::Arc<dyn Sink>>,
}

/// Something else that wants every refusal (the ledger: counted per owner, audited).
pub(crate) trait Sink: Send + Sync {
    fn refused(&self, r: &Refusal<'_>);
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Refusals {
    pub fn new() -> Refusals {
        Refusals::default()
    }

    /// Hand every refusal to `sink` too.
    pub(crate) fn set_sink(&self, sink: std::sync::Arc<dyn Sink>) {
        let _ = self.sink.set(sink);
    }

    pub(crate) fn record(&self, r: Refusal<'_>) {
        if let Some(s) = self.sink.get() {
            s.refused(&r);
        }
        let key = Key {
            reason: r.reason,
            mode: r.mode,
            group: r.group.to_string(),
            topic: r.topic.to_string(),
            principal: r.principal.to_string(),
            client_id: r.client_id.to_string(),
            host: r.host.to_string(),
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut rows = self.rows.lock().expect("lock");
        if !rows.contains_key(&key) && rows.len() >= MAX_ROWS {
            rows.retain(|_, row| now.duration_since(row.last_at) < KEEP);
            if rows.len() >= MAX_ROWS {
                let oldest = rows
                    .iter()
                    .min_by_key(|(_, row)| row.last_at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    rows.remove(&k);
                }
            }
        }
        let row = rows.entry(key).or_insert(Row {
            api: r.api,
            count: 0,
            first: wall,
            last: wall,
            last_at: now,
        });
        row.api = r.api;
        row.count += 1;
        row.last = wall;
        row.last_at = now;
    }

    /// Refusals of the last hour, latest first.
    pub(crate) fn recent(&self) -> Vec<RefusalView> {
        let now = Instant::now();
        let rows = self.rows.lock().expect("lock");
        let mut out: Vec<RefusalView> = rows
            .iter()
            .filter(|(_, row)| now.duration_since(row.last_at) < KEEP)
            .map(|(k, row)| RefusalView {
                reason: k.reason,
                mode: k.mode,
                api: row.api,
                group: k.group.clone(),
                topic: k.topic.clone(),
                principal: k.principal.clone(),
                client_id: k.client_id.clone(),
                host: k.host.clone(),
                count: row.count,
                first: epoch(row.first),
                last: epoch(row.last),
            })
            .collect();
        out.sort_by(|a, b| b.last.cmp(&a.last).then(b.count.cmp(&a.count)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(group: &str) -> Refusal<'_> {
        Refusal {
            reason: "unregistered_group",
            mode: "enforce",
            api: "JoinGroup",
            group,
            topic: "",
            principal: "User:x",
            client_id: "rdkafka",
            host: "10.0.0.1",
        }
    }

    #[test]
    fn repeats_count_in_one_row_and_invented_names_stay_bounded() {
        let r = Refusals::new();
        r.record(refusal("rogue"));
        r.record(refusal("rogue"));
        assert_eq!(r.recent().len(), 1);
        assert_eq!(r.recent()[0].count, 2);
        for i in 0..(MAX_ROWS * 3) {
            r.record(refusal(&format!("invented-{i}")));
        }
        let recent = r.recent();
        assert_eq!(recent.len(), MAX_ROWS);
        assert!(recent
            .iter()
            .any(|v| v.group == format!("invented-{}", MAX_ROWS * 3 - 1)));
    }
}
