//! The ledger: what each subject read, wrote, was held and was refused, rolled up into the
//! audit trail's usage windows ([`crate::control::audit::Usage`]).
//!
//! Attribution reports every acknowledged Produce and every Fetch answer here, the budgets
//! every hold, the refusal table every refusal. Rows are kept per (direction, subject,
//! principal, client id, topic) for the current window: reads by group (a group-less read
//! by its client id), writes by principal and client id. Every `audit.window_seconds`,
//! aligned to the wall clock so that the windows of all instances line up, [`Ledger::roll`]
//! writes one usage event per row and starts a new window. The owner is looked up in the
//! registry then: a consumer entry's for a group, a producer entry's (or a standalone
//! entry's) for the rest, `unregistered` when none covers the subject.
//!
//! Names come from clients, so a window keeps at most [`MAX_ROWS`] rows; past that, rows
//! fold into one whose subject and topic are `other`
//! (`tollgate_audit_usage_rows_overflow_total`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::consumers::refusals::{Refusal, Sink};
use crate::control::audit::{clip, now_ms, Audit, Counted, Covered, Usage, What};
use crate::control::registry::{ProduceVerdict, Registry, RegistryHandle};
use crate::metrics::Metrics;

/// Most rows one window keeps.
pub(crate) const MAX_ROWS: usize = 10_000;
/// The owner of a subject no registry entry covers.
pub(crate) const UNREGISTERED: &str = "unregistered";
/// Subject and topic of the row that over-cap rows fold into.
const OTHER: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Direction {
    Read,
    Write,
    /// Refused admin-plane requests.
    Admin,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
            Direction::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    direction: Direction,
    /// Reads: the group label. Writes held by a budget: the producer entry's name. Else "".
    subject: String,
    principal: String,
    client_id: String,
    topic: String,
}

#[derive(Debug, Default)]
struct Row {
    counted: Counted,
    offsets: BTreeMap<i32, (i64, i64)>,
}

impl Row {
    fn cover(&mut self, partition: i32, first: i64, last: i64) {
        if first < 0 || last < first {
            return;
        }
        let c = self.offsets.entry(partition).or_insert((first, last));
        *c = (c.0.min(first), c.1.max(last));
    }
}

/// The current window.
struct Window {
    start_ms: u64,
    rows: HashMap<Key, Row>,
}

/// One partition of a Fetch answer or of an acknowledged Produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// First and last offset delivered or written (-1: unknown, as for `acks=0`).
    pub(crate) first: i64,
    pub(crate) last: i64,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

/// One partition of a Fetch answer, as the ledger counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartRead<'a> {
    pub(crate) part: Part<'a>,
    pub(crate) hot: bool,
    pub(crate) secondary: bool,
}

/// Who read: the group label, and for a group-less read the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBy<'a> {
    pub(crate) group: &'a str,
    pub(crate) grouped: bool,
    pub(crate) principal: &'a str,
    pub(crate) client_id: &'a str,
}

/// The ledger. Cheap to share (`Arc`).
pub struct Ledger {
    audit: Arc<Audit>,
    registry: Arc<RegistryHandle>,
    window: Mutex<Window>,
    window_ms: u64,
    metrics: Arc<Metrics>,
}

impl Ledger {
    pub(crate) fn new(
        audit: Arc<Audit>,
        registry: Arc<RegistryHandle>,
        metrics: Arc<Metrics>,
    ) -> Ledger {
        let window_ms = audit.config().window_seconds.max(1) * 1000;
        Ledger {
            window: Mutex::new(Window {
                start_ms: now_ms() / window_ms * window_ms,
                rows: HashMap::new(),
            }),
            window_ms,
            audit,
            registry,
            metrics,
        }
    }

    pub(crate) fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// Run `f` on the row of `key` (or on the overflow row past [`MAX_ROWS`]). The key's
    /// names are cut to the audit trail's longest string first.
    fn with_row(&self, rows: &mut HashMap<Key, Row>, mut key: Key, f: impl FnOnce(&mut Row)) {
        for s in [
            &mut key.subject,
            &mut key.principal,
            &mut key.client_id,
            &mut key.topic,
        ] {
            let end = clip(s).len();
            s.truncate(end);
        }
        if let Some(r) = rows.get_mut(&key) {
            return f(r);
        }
        if rows.len() < MAX_ROWS {
            return f(rows.entry(key).or_default());
        }
        self.metrics.ledger_overflow.inc();
        let other = Key {
            direction: key.direction,
            subject: OTHER.into(),
            principal: String::new(),
            client_id: String::new(),
            topic: OTHER.into(),
        };
        f(rows.entry(other).or_default())
    }

    /// One Fetch answer's data. `seconds`: the time from request to answer, counted as the
    /// secondary's when it served any of the data (split evenly over the topics it served).
    pub(crate) fn reads(&self, by: ReadBy, parts: &[PartRead], seconds: f64) {
        let mut topics = per_topic(parts);
        let served = topics.iter().filter(|t| t.1.secondary_bytes > 0).count();
        for t in topics.iter_mut().filter(|t| t.1.secondary_bytes > 0) {
            t.1.secondary_seconds = seconds / served as f64;
        }
        let client_id = if by.grouped { "" } else { by.client_id };
        let mut w = self.window.lock().expect("lock");
        for (topic, counted, covered) in topics {
            let key = Key {
                direction: Direction::Read,
                subject: by.group.to_string(),
                principal: by.principal.to_string(),
                client_id: client_id.to_string(),
                topic: topic.to_string(),
            };
            self.with_row(&mut w.rows, key, |r| {
                r.counted.add(&counted);
                for (partition, first, last) in covered {
                    r.cover(partition, first, last);
                }
            });
        }
    }

    /// One Produce answer's acknowledged partitions.
    pub(crate) fn writes(&self, principal: &str, client_id: &str, parts: &[Part]) {
        let mut w = self.window.lock().expect("lock");
        for p in parts {
            let key = Key {
                direction: Direction::Write,
                subject: String::new(),
                principal: principal.to_string(),
                client_id: client_id.to_string(),
                topic: p.topic.to_string(),
            };
            self.with_row(&mut w.rows, key, |r| {
                r.counted.bytes += p.bytes;
                r.counted.records += p.records;
                r.cover(p.partition, p.first, p.last);
            });
        }
    }

    /// A budget held `subject` (a group, or a producer entry's name) for `wait`.
    pub(crate) fn throttled(&self, direction: Direction, subject: &str, wait: Duration) {
        let key = Key {
            direction,
            subject: subject.to_string(),
            principal: String::new(),
            client_id: String::new(),
            topic: String::new(),
        };
        let mut w = self.window.lock().expect("lock");
        self.with_row(&mut w.rows, key, |r| {
            r.counted.throttled_seconds += wait.as_secs_f64()
        });
    }

    /// Once the window has ended (or at once when `force`, at shutdown): write one usage
    /// event per row and start the next window.
    pub(crate) fn roll(&self, force: bool) {
        let now = now_ms();
        let (start_ms, rows) = {
            let mut w = self.window.lock().expect("lock");
            if !force && now < w.start_ms + self.window_ms {
                return;
            }
            let start = std::mem::replace(&mut w.start_ms, now / self.window_ms * self.window_ms);
            (start, std::mem::take(&mut w.rows))
        };
        let registry = self.registry.get();
        let end_ms = now.min(start_ms + self.window_ms).max(start_ms);
        for (key, row) in rows {
            let (owner, subject) = owner_of(registry.as_deref(), &key);
            self.audit.emit(What::Usage(Usage {
                start_ms,
                end_ms,
                direction: key.direction.label().into(),
                owner,
                subject,
                principal: key.principal,
                topic: key.topic,
                counted: row.counted,
                offsets: row
                    .offsets
                    .into_iter()
                    .map(|(partition, (first, last))| Covered {
                        partition,
                        first,
                        last,
                    })
                    .collect(),
            }));
        }
    }
}

impl Sink for Ledger {
    /// A refusal: counted on its subject's row, and written as an audit event.
    fn refused(&self, r: &Refusal) {
        let direction = match r.api {
            "Produce" | "AddPartitionsToTxn" => Direction::Write,
            _ if !r.group.is_empty() => Direction::Read,
            _ => Direction::Admin,
        };
        // A group's refusals are the group's, whoever its client is.
        let grouped = direction == Direction::Read;
        let key = Key {
            direction,
            subject: if grouped {
                r.group.to_string()
            } else {
                String::new()
            },
            principal: r.principal.to_string(),
            client_id: if grouped { "" } else { r.client_id }.to_string(),
            topic: r.topic.to_string(),
        };
        let shadow = r.mode == "shadow";
        {
            let mut w = self.window.lock().expect("lock");
            self.with_row(&mut w.rows, key, |row| match shadow {
                true => row.counted.shadow_refusals += 1,
                false => row.counted.refusals += 1,
            });
        }
        self.audit.emit(What::Refusal {
            reason: r.reason.into(),
            mode: r.mode.into(),
            api: r.api.into(),
            group: r.group.into(),
            topic: r.topic.into(),
            principal: r.principal.into(),
            client_id: r.client_id.into(),
            peer: r.host.into(),
        });
    }
}

/// One topic of a Fetch answer: its counts, and (partition, first, last) of each partition.
type TopicSum<'a> = (&'a str, Counted, Vec<(i32, i64, i64)>);

/// A Fetch answer's partitions summed per topic (an answer names each topic's partitions
/// together), with the offsets each partition covered: one row lookup per topic.
fn per_topic<'a>(parts: &[PartRead<'a>]) -> Vec<TopicSum<'a>> {
    let mut topics: Vec<TopicSum> = Vec::new();
    for PartRead {
        part: p,
        hot,
        secondary,
    } in parts
    {
        if topics.last().is_none_or(|t| t.0 != p.topic) {
            topics.push((p.topic, Counted::default(), Vec::new()));
        }
        let Some((_, c, covered)) = topics.last_mut() else {
            continue;
        };
        (c.bytes, c.records) = (c.bytes + p.bytes, c.records + p.records);
        match hot {
            true => c.hot_bytes += p.bytes,
            false => c.cold_bytes += p.bytes,
        }
        if *secondary {
            c.secondary_bytes += p.bytes;
        }
        covered.push((p.partition, p.first, p.last));
    }
    topics
}

/// The owner and subject name of a row, from the registry in force.
fn owner_of(registry: Option<&Registry>, key: &Key) -> (String, String) {
    let unregistered = |subject: String| (UNREGISTERED.to_string(), subject);
    let client = |k: &Key| match (k.principal.as_str(), k.client_id.as_str()) {
        ("", c) => format!("client:{c}"),
        (p, "") => p.to_string(),
        (p, c) => format!("{p}/client:{c}"),
    };
    let Some(r) = registry else {
        return unregistered(match key.direction {
            Direction::Read if !key.subject.is_empty() => key.subject.clone(),
            _ => client(key),
        });
    };
    match key.direction {
        Direction::Read if key.client_id.is_empty() => match r.entry_for(&key.subject) {
            Some(e) => (e.owner.clone(), key.subject.clone()),
            None => unregistered(key.subject.clone()),
        },
        Direction::Read => match r.standalone_for(&key.client_id, &key.principal) {
            Some(s) => (
                s.owner.clone().unwrap_or_else(|| UNREGISTERED.into()),
                client(key),
            ),
            None => unregistered(client(key)),
        },
        Direction::Write if !key.subject.is_empty() => {
            match r.producers.iter().find(|e| e.name() == key.subject) {
                Some(e) => (e.owner.clone(), key.subject.clone()),
                None => unregistered(key.subject.clone()),
            }
        }
        Direction::Write => match r.produce_verdict(&key.client_id, &key.principal, &key.topic) {
            ProduceVerdict::Allowed(e) | ProduceVerdict::TopicNotAllowed(e) => {
                (e.owner.clone(), e.name())
            }
            _ => unregistered(client(key)),
        },
        Direction::Admin => unregistered(client(key)),
    }
}

#[cfg(test)]
mod tests;
