//! The audit trail: what happened, as versioned JSON events, in a Kafka topic of Tollgate's
//! own (`audit.topic`) and, if set, a file (`audit.file`, one event per line).
//!
//! Events (the schema, with every field, is `docs/audit.md`; [`SCHEMA_VERSION`] is each
//! event's `v`): a connection authenticated; a group joined or left; a refusal (every
//! policy that records one, shadow mode included); an admin-plane change that went to the
//! broker; a registry reload; a window opened by an admin (budget lifted, rewind allowed);
//! and, every `audit.window_seconds`, the **usage windows** of the instance: reads rolled up
//! per (group, principal, topic) and writes per (producer, topic), with bytes, records and
//! the offsets covered ([`Usage`], made by [`crate::consumers::ledger`]). Showback is
//! recomputed from those windows, so it survives restarts and adds up across the tier.
//!
//! **Bounded.** [`Audit::emit`] never blocks and never waits for the cluster:
//! - identical events (same kind and who/what, [`What::dedup_key`]) within
//!   `audit.dedup_seconds` are written once, then once more at the end of the interval
//!   with `repeats` = how many more there were;
//! - at most `audit.max_events_per_second` events are written (a token bucket; usage
//!   windows and the `dropped` summaries are not counted, since showback depends on them);
//!   the rest are counted and summarised in one `dropped` event per second;
//! - the queue to the writer holds [`QUEUE`] events; past that, events are dropped and
//!   counted (`tollgate_audit_events_dropped_total{reason}`).
//!
//! The topic is guarded like the state topic ([`crate::layers::own_topics`]): no client
//! writes it through Tollgate, so a usage window in it was written by an instance.

mod topic;

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::control::config::AuditConfig;
use crate::metrics::Metrics;

pub(crate) use topic::read_usage;

/// The `v` of every event. A consumer of the trail ignores kinds and fields it does not
/// know; a change that removes or retypes a field moves the version.
pub(crate) const SCHEMA_VERSION: u32 = 1;
/// Most events waiting for the writer.
pub(crate) const QUEUE: usize = 32_768;
/// Most distinct dedup keys remembered; past that, events are written without folding.
const MAX_KEYS: usize = 10_000;
/// Longest string an event carries (client ids, group and member ids are the client's
/// choice, up to 32 KiB each): longer ones are cut, on a character boundary.
pub(crate) const MAX_STRING: usize = 256;
/// Most resources one `admin_change` event lists.
pub(crate) const MAX_RESOURCES: usize = 1_000;

/// `s`, cut to at most [`MAX_STRING`] bytes on a character boundary.
pub(crate) fn clip(s: &str) -> &str {
    if s.len() <= MAX_STRING {
        return s;
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn clip_owned(s: &mut String) {
    let end = clip(s).len();
    s.truncate(end);
}

/// One event as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event {
    pub(crate) v: u32,
    /// Milliseconds since the Unix epoch.
    pub(crate) ts_ms: u64,
    /// The instance that wrote it (`tier.instance_id`).
    pub(crate) instance: String,
    #[serde(flatten)]
    pub(crate) what: What,
    /// How many more identical events were folded into this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) repeats: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What happened. Serialized with `kind` naming the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum What {
    /// A client connection authenticated (SASL through to the broker, or an mTLS
    /// certificate).
    Authenticated {
        principal: String,
        mechanism: String,
        peer: String,
    },
    /// A client's SASL authentication failed at the broker.
    AuthenticationFailed { mechanism: String, peer: String },
    /// The coordinator let a member into a group (a JoinGroup answered without error).
    GroupJoined(Member),
    /// A member left a group: `how` = `leave` (a LeaveGroup or KIP-848 leave heartbeat: it
    /// closed cleanly) or `expired` (it went silent past its session: killed, or cut off;
    /// `peer` is then its host without a port).
    GroupLeft {
        #[serde(flatten)]
        member: Member,
        how: String,
    },
    /// A policy refused a request (or, in shadow mode, would have).
    Refusal {
        reason: String,
        mode: String,
        api: String,
        group: String,
        topic: String,
        principal: String,
        client_id: String,
        peer: String,
    },
    /// An admin-plane request went to the broker, with what it names and the broker's
    /// answer per resource (`error` 0 = done).
    AdminChange {
        api: String,
        principal: String,
        client_id: String,
        peer: String,
        resources: Vec<Resource>,
    },
    /// The registry was reloaded (or a reload failed and the previous one stays).
    RegistryReload {
        trigger: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        error: String,
    },
    /// An admin opened a window: a read or produce budget lifted, a rewind allowed.
    WindowOpened {
        window: String,
        subject: String,
        seconds: u64,
    },
    /// One usage window of this instance.
    Usage(Usage),
    /// Events not written over `audit.max_events_per_second` in the last second.
    Dropped { count: u64 },
}

/// A group member, as the join and leave events name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Member {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) principal: String,
    pub(crate) peer: String,
}

/// A resource named by an admin request, and the broker's answer for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Resource {
    pub(crate) name: String,
    pub(crate) error: i16,
}

/// Reads or writes of one subject on one topic during one window of one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Usage {
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    /// `read`, `write` or `admin`.
    pub(crate) direction: String,
    /// The registry entry's owner; `unregistered` when no entry covers the subject.
    pub(crate) owner: String,
    /// Reads: the group (or `(none)`). Writes: the producer's registry entry, else its
    /// principal and client id.
    pub(crate) subject: String,
    pub(crate) principal: String,
    pub(crate) topic: String,
    #[serde(flatten)]
    pub(crate) counted: Counted,
    /// Per partition, the first and last offset of the batches read or written.
    pub(crate) offsets: Vec<Covered>,
}

/// What a usage window counts (and showback adds up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Counted {
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    pub(crate) hot_bytes: u64,
    pub(crate) cold_bytes: u64,
    /// Bytes the secondary cluster served.
    pub(crate) secondary_bytes: u64,
    /// Time from request to answer of the fetches the secondary served data for.
    pub(crate) secondary_seconds: f64,
    /// Time Tollgate held the subject's requests to keep it at its budget.
    pub(crate) throttled_seconds: f64,
    /// Requests refused.
    pub(crate) refusals: u64,
    /// Requests a policy in shadow mode would have refused.
    pub(crate) shadow_refusals: u64,
}

impl Counted {
    pub(crate) fn add(&mut self, o: &Counted) {
        (self.bytes, self.records) = (self.bytes + o.bytes, self.records + o.records);
        (self.hot_bytes, self.cold_bytes) =
            (self.hot_bytes + o.hot_bytes, self.cold_bytes + o.cold_bytes);
        self.secondary_bytes += o.secondary_bytes;
        self.secondary_seconds += o.secondary_seconds;
        self.throttled_seconds += o.throttled_seconds;
        (self.refusals, self.shadow_refusals) = (
            self.refusals + o.refusals,
            self.shadow_refusals + o.shadow_refusals,
        );
    }
}

/// The offsets of one partition a usage window covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Covered {
    pub(crate) partition: i32,
    pub(crate) first: i64,
    pub(crate) last: i64,
}

impl What {
    fn kind(&self) -> &'static str {
        match self {
            What::Authenticated { .. } => "authenticated",
            What::AuthenticationFailed { .. } => "authentication_failed",
            What::GroupJoined(_) => "group_joined",
            What::GroupLeft { .. } => "group_left",
            What::Refusal { .. } => "refusal",
            What::AdminChange { .. } => "admin_change",
            What::RegistryReload { .. } => "registry_reload",
            What::WindowOpened { .. } => "window_opened",
            What::Usage(_) => "usage",
            What::Dropped { .. } => "dropped",
        }
    }

    /// Events with one key within `audit.dedup_seconds` are folded; `None`: never folded.
    /// Peers are keyed by address without the port: a client reconnecting is the same one.
    fn dedup_key(&self) -> Option<String> {
        let ip = |peer: &str| peer.rsplit_once(':').map_or(peer, |(ip, _)| ip).to_string();
        Some(match self {
            What::Authenticated {
                principal,
                mechanism,
                peer,
            } => format!("a|{principal}|{mechanism}|{}", ip(peer)),
            What::AuthenticationFailed { mechanism, peer } => {
                format!("f|{mechanism}|{}", ip(peer))
            }
            What::Refusal {
                reason,
                mode,
                api,
                group,
                topic,
                principal,
                client_id,
                peer,
            } => format!(
                "r|{reason}|{mode}|{api}|{group}|{topic}|{principal}|{client_id}|{}",
                ip(peer)
            ),
            _ => return None,
        })
    }

    /// Every string field, to be cut to [`MAX_STRING`]; a long resource list is cut too.
    fn clip(&mut self) {
        let fields: Vec<&mut String> = match self {
            What::Authenticated {
                principal,
                mechanism,
                peer,
            } => vec![principal, mechanism, peer],
            What::AuthenticationFailed { mechanism, peer } => vec![mechanism, peer],
            What::GroupJoined(Member {
                group,
                member_id,
                client_id,
                principal,
                peer,
            })
            | What::GroupLeft {
                member:
                    Member {
                        group,
                        member_id,
                        client_id,
                        principal,
                        peer,
                    },
                ..
            } => {
                vec![group, member_id, client_id, principal, peer]
            }
            What::Refusal {
                group,
                topic,
                principal,
                client_id,
                peer,
                ..
            } => {
                vec![group, topic, principal, client_id, peer]
            }
            What::AdminChange {
                principal,
                client_id,
                resources,
                ..
            } => {
                resources.truncate(MAX_RESOURCES);
                let mut v = vec![principal, client_id];
                v.extend(resources.iter_mut().map(|r| &mut r.name));
                v
            }
            What::RegistryReload { error, .. } => vec![error],
            What::WindowOpened { subject, .. } => vec![subject],
            What::Usage(u) => vec![&mut u.owner, &mut u.subject, &mut u.principal, &mut u.topic],
            What::Dropped { .. } => Vec::new(),
        };
        fields.into_iter().for_each(clip_owned);
    }

    /// Not counted against `audit.max_events_per_second`.
    fn unmetered(&self) -> bool {
        matches!(self, What::Usage(_) | What::Dropped { .. })
    }
}

/// The sink every part reports to. Cheap to share (`Arc`).
pub(crate) struct Audit {
    instance: Mutex<String>,
    dedup: Duration,
    limit: Mutex<Limit>,
    folds: Mutex<HashMap<String, Fold>>,
    tx: SyncSender<Msg>,
    rx: Mutex<Option<Receiver<Msg>>>,
    metrics: Arc<Metrics>,
    config: AuditConfig,
}

/// One dedup key: its first event, and the identical ones since.
struct Fold {
    since: Instant,
    first: Event,
    repeats: u64,
}

/// The token bucket of `audit.max_events_per_second`, and what it turned away.
struct Limit {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Audit {
    pub(crate) fn new(config: AuditConfig, metrics: Arc<Metrics>) -> Audit {
        let (tx, rx) = sync_channel(QUEUE);
        Audit {
            instance: Mutex::new(String::new()),
            dedup: Duration::from_secs(config.dedup_seconds),
            limit: Mutex::new(Limit {
                tokens: config.max_events_per_second as f64,
                at: Instant::now(),
                dropped: 0,
            }),
            folds: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
            metrics,
            config,
        }
    }

    pub(crate) fn config(&self) -> &AuditConfig {
        &self.config
    }

    /// Name the instance in every event from now on (`tier.instance_id`, known at start).
    pub(crate) fn set_instance(&self, id: &str) {
        *self.instance.lock().expect("lock") = id.to_string();
    }

    /// Record one event: cut to size, folded, metered, queued; never blocks.
    pub(crate) fn emit(&self, mut what: What) {
        what.clip();
        let event = Event {
            v: SCHEMA_VERSION,
            ts_ms: now_ms(),
            instance: self.instance.lock().expect("lock").clone(),
            what,
            repeats: 0,
        };
        if self.folded(&event) || !self.admitted(&event.what) {
            return;
        }
        self.queue(event);
    }

    /// Is this a repeat of an event written within `audit.dedup_seconds`? (Then it is
    /// counted on the first one.)
    fn folded(&self, event: &Event) -> bool {
        let Some(key) = event.what.dedup_key().filter(|_| !self.dedup.is_zero()) else {
            return false;
        };
        let mut folds = self.folds.lock().expect("lock");
        if let Some(f) = folds.get_mut(&key) {
            f.repeats += 1;
            self.dropped("dedup");
            return true;
        }
        if folds.len() < MAX_KEYS {
            let first = event.clone();
            let since = Instant::now();
            folds.insert(
                key,
                Fold {
                    since,
                    first,
                    repeats: 0,
                },
            );
        }
        false
    }

    fn admitted(&self, what: &What) -> bool {
        if what.unmetered() {
            return true;
        }
        let rate = self.config.max_events_per_second as f64;
        let mut l = self.limit.lock().expect("lock");
        let now = Instant::now();
        l.tokens = (l.tokens + now.duration_since(l.at).as_secs_f64() * rate).min(rate);
        l.at = now;
        if l.tokens >= 1.0 {
            l.tokens -= 1.0;
            return true;
        }
        l.dropped += 1;
        drop(l);
        self.dropped("rate");
        false
    }

    fn queue(&self, event: Event) {
        let kind = event.what.kind();
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => self.metrics.audit_events.with_label_values(&[kind]).inc(),
            Err(TrySendError::Full(_)) => self.dropped("queue"),
            Err(TrySendError::Disconnected(_)) => self.dropped("closed"),
        }
    }

    fn dropped(&self, reason: &str) {
        self.metrics
            .audit_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Once a second: write the folded repeats whose interval ended, and the count of
    /// events the rate limit turned away.
    pub(crate) fn tick(&self) {
        let ended: Vec<Event> = {
            let mut folds = self.folds.lock().expect("lock");
            let mut ended = Vec::new();
            folds.retain(|_, f| {
                let keep = f.since.elapsed() < self.dedup;
                if !keep && f.repeats > 0 {
                    let mut e = f.first.clone();
                    (e.ts_ms, e.repeats) = (now_ms(), f.repeats);
                    ended.push(e);
                }
                keep
            });
            ended
        };
        ended.into_iter().for_each(|e| self.queue(e));
        let dropped = std::mem::take(&mut self.limit.lock().expect("lock").dropped);
        if dropped > 0 {
            self.emit(What::Dropped { count: dropped });
        }
    }

    /// Start writing the queue to `audit.topic` and `audit.file` on a thread of its own.
    /// Events emitted before are kept (up to [`QUEUE`]). Called once; later calls do
    /// nothing.
    pub(crate) fn start(&self, bootstrap: Vec<String>, props: Vec<(String, String)>) {
        let Some(rx) = self.rx.lock().expect("lock").take() else {
            return;
        };
        topic::spawn_writer(
            rx,
            bootstrap,
            props,
            self.config.clone(),
            self.metrics.clone(),
        );
    }

    /// The queue, for a test that reads the events instead of a writer.
    #[cfg(test)]
    pub(crate) fn take_queue(&self) -> Option<Receiver<Msg>> {
        self.rx.lock().expect("lock").take()
    }

    /// Wait (up to `timeout`) until the writer has written, and the cluster acknowledged,
    /// what was queued before this call: a clean shutdown loses no usage window.
    pub(crate) fn flush(&self, timeout: Duration) {
        if self.rx.lock().expect("lock").is_some() {
            return; // never started: nothing writes the queue
        }
        let deadline = Instant::now() + timeout;
        let (done, wait) = sync_channel(1);
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// What the writer thread is given.
pub(crate) enum Msg {
    /// Boxed: the queue holds [`QUEUE`] slots of the enum's size.
    Event(Box<Event>),
    /// Write everything before this, then say so.
    Flush(SyncSender<()>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(dedup_seconds: u64, max_events_per_second: u64) -> (Audit, Receiver<Msg>) {
        let config = AuditConfig {
            dedup_seconds,
            max_events_per_second,
            ..AuditConfig::default()
        };
        let a = Audit::new(config, Arc::new(Metrics::new()));
        let rx = a.take_queue().unwrap();
        a.set_instance("i1");
        (a, rx)
    }

    fn events(rx: &Receiver<Msg>) -> Vec<Event> {
        rx.try_iter()
            .filter_map(|m| match m {
                Msg::Event(e) => Some(*e),
                Msg::Flush(_) => None,
            })
            .collect()
    }

    fn refusal(peer: &str) -> What {
        What::Refusal {
            reason: "unregistered_group".into(),
            mode: "enforce".into(),
            api: "JoinGroup".into(),
            group: "g".into(),
            topic: String::new(),
            principal: "ANONYMOUS".into(),
            client_id: "rdkafka".into(),
            peer: peer.into(),
        }
    }

    #[test]
    fn identical_events_are_written_once_then_once_more_with_the_count() {
        let (a, rx) = audit(1, 1000);
        // One client reconnecting (new ports) is the same client.
        for port in 0..10 {
            a.emit(refusal(&format!("10.0.0.1:{}", 40000 + port)));
        }
        a.emit(refusal("10.0.0.2:40000"));
        let first = events(&rx);
        assert_eq!(first.len(), 2);
        assert_eq!(
            (first[0].v, first[0].instance.as_str(), first[0].repeats),
            (1, "i1", 0)
        );
        a.tick();
        assert!(events(&rx).is_empty(), "the interval has not ended");
        std::thread::sleep(Duration::from_millis(1100));
        a.tick();
        let folded = events(&rx);
        assert_eq!(folded.len(), 1, "only the key that repeated");
        assert_eq!(folded[0].repeats, 9);
        // The JSON is the documented shape.
        let json = serde_json::to_value(&folded[0]).unwrap();
        assert_eq!(json["kind"], "refusal");
        assert_eq!(json["repeats"], 9);
        assert_eq!(json["reason"], "unregistered_group");
        // After the interval the key starts over.
        a.emit(refusal("10.0.0.1:1"));
        assert_eq!(events(&rx).len(), 1);
    }

    #[test]
    fn over_the_rate_events_are_counted_in_one_dropped_event_and_usage_is_never_dropped() {
        let (a, rx) = audit(0, 5);
        for i in 0..20 {
            a.emit(What::RegistryReload {
                trigger: format!("t{i}"),
                ok: true,
                error: String::new(),
            });
        }
        for _ in 0..20 {
            a.emit(What::Usage(Usage::default()));
        }
        a.tick();
        let all = events(&rx);
        let count = |kind: &str| all.iter().filter(|e| e.what.kind() == kind).count();
        assert_eq!(count("registry_reload"), 5);
        assert_eq!(count("usage"), 20);
        assert_eq!(
            all.iter().find_map(|e| match e.what {
                What::Dropped { count } => Some(count),
                _ => None,
            }),
            Some(15)
        );
        // Every event reads back as it was written.
        for e in &all {
            let back: Event = serde_json::from_slice(&serde_json::to_vec(e).unwrap()).unwrap();
            assert_eq!(&back, e);
        }
    }

    #[test]
    fn a_client_chosen_name_is_cut_and_a_long_resource_list_too() {
        let (a, rx) = audit(60, 1000);
        let huge = "é".repeat(20_000); // 40,000 bytes, two per character
        let mut r = refusal("10.0.0.9:1");
        if let What::Refusal {
            client_id, group, ..
        } = &mut r
        {
            (*client_id, *group) = (huge.clone(), huge.clone());
        }
        a.emit(r);
        a.emit(What::AdminChange {
            api: "DeleteTopics".into(),
            principal: "p".into(),
            client_id: huge.clone(),
            peer: "x".into(),
            resources: (0..5000)
                .map(|i| Resource {
                    name: format!("t{i}"),
                    error: 0,
                })
                .collect(),
        });
        let all = events(&rx);
        let json = serde_json::to_string(&all).unwrap();
        assert!(json.len() < 40_000, "{} bytes", json.len());
        let What::Refusal { client_id, .. } = &all[0].what else {
            panic!()
        };
        assert_eq!(client_id.len(), MAX_STRING);
        let What::AdminChange { resources, .. } = &all[1].what else {
            panic!()
        };
        assert_eq!(resources.len(), MAX_RESOURCES);
    }

    #[test]
    fn a_member_event_is_flat_in_its_json_and_reads_back() {
        let (a, rx) = audit(60, 1000);
        let member = Member {
            group: "g".into(),
            member_id: "m".into(),
            client_id: "rdkafka".into(),
            principal: "ANONYMOUS".into(),
            peer: "10.0.0.1:1".into(),
        };
        a.emit(What::GroupJoined(member.clone()));
        a.emit(What::GroupLeft {
            member,
            how: "expired".into(),
        });
        for e in events(&rx) {
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(
                (&json["group"], &json["member_id"]),
                (&"g".into(), &"m".into())
            );
            if json["kind"] == "group_left" {
                assert_eq!(json["how"], "expired");
            }
            let back: Event = serde_json::from_value(json).unwrap();
            assert_eq!(back, e);
        }
    }
}
