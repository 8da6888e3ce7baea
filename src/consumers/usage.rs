//! Usage: who produced and who read what, how much, and whether it was hot or cold.
//!
//! The attribution layer ([`crate::layers::attribution`]) decodes Produce and Fetch traffic
//! and the group APIs and reports here. This module owns:
//!
//! - the per-client Prometheus series (`tollgate_produced_*`, `tollgate_fetched_*`,
//!   `tollgate_produce_errors_total`) with **bounded cardinality**: each of `client_id`,
//!   `group` and `topic` admits at most a configured number of distinct values; further values
//!   are reported as [`OTHER`] and counted in `tollgate_attribution_label_overflow_total`.
//!   Series not updated for `idle_series_seconds` are removed, and their label values freed;
//! - the `hot`/`cold` class of every fetched partition, by its distance from the head in
//!   bytes ([`Usage::classify`], with the head and bytes-per-offset estimate from
//!   [`crate::consumers::heads`]);
//! - per (topic, client instance, group) **activity** with a one-minute byte-rate window,
//!   behind `GET /v1/topics/{topic}/consumers` and `/producers`.
//!
//! It is one of the peer components of the app state ([`crate::app::App`]): heads, topic
//! ids, groups and lag live beside it, each behind its own API, and it reaches into none of
//! them. A Fetch response is counted in one call ([`Usage::count_fetches`]): one lock
//! on the label state and one on the activity rows per response, not per partition.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounterVec;
use serde::Serialize;

use crate::control::config::AttributionConfig;
use crate::metrics::Metrics;

/// Label value that stands for every value over a cardinality cap.
pub(crate) const OTHER: &str = "other";

/// Hot or cold data, by distance from the partition head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Temperature {
    Hot,
    Cold,
}

impl Temperature {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Temperature::Hot => "hot",
            Temperature::Cold => "cold",
        }
    }
}

/// Direction of traffic, for the activity views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    Produce,
    Fetch,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ActivityKey {
    topic: String,
    direction: Direction,
    client_id: String,
    host: IpAddr,
    principal: String,
    group: Option<String>,
}

const WINDOW_BUCKETS: usize = 12;
const BUCKET_SECS: u64 = 5;

#[derive(Debug, Default)]
struct Activity {
    bytes: u64,
    records: u64,
    /// Bytes per 5-second bucket over the last minute: (bucket number, bytes).
    window: [(u64, u64); WINDOW_BUCKETS],
    last_seen: Option<Instant>,
    last_seen_wall: Option<SystemTime>,
}

impl Activity {
    fn add(&mut self, bucket: u64, bytes: u64, records: u64) {
        self.bytes += bytes;
        self.records += records;
        self.last_seen = Some(Instant::now());
        self.last_seen_wall = Some(SystemTime::now());
        let slot = &mut self.window[(bucket as usize) % WINDOW_BUCKETS];
        if slot.0 != bucket {
            *slot = (bucket, 0);
        }
        slot.1 += bytes;
    }
}

/// Seconds per bucket of the group read windows.
const READS_BUCKET_SECS: u64 = 10;
/// Buckets kept: five minutes.
const READS_BUCKETS: usize = 30;

/// One group's reads: (bucket number, hot bytes, cold bytes) per bucket.
#[derive(Debug, Default)]
struct GroupReads {
    buckets: [(u64, u64, u64); READS_BUCKETS],
    last: Option<Instant>,
}

impl GroupReads {
    fn add(&mut self, bucket: u64, temperature: Temperature, bytes: u64) {
        let slot = &mut self.buckets[(bucket as usize) % READS_BUCKETS];
        if slot.0 != bucket {
            *slot = (bucket, 0, 0);
        }
        match temperature {
            Temperature::Hot => slot.1 += bytes,
            Temperature::Cold => slot.2 += bytes,
        }
    }

    /// Rates over the last minute (the current bucket is partial: averaged over the time it
    /// covers), and bytes per second of every bucket over five minutes, oldest first.
    fn view(&self, bucket: u64, now: f64) -> GroupReadsView {
        let at = |b: u64| {
            let s = self.buckets[(b as usize) % READS_BUCKETS];
            if s.0 == b {
                (s.1, s.2)
            } else {
                (0, 0)
            }
        };
        let minute = 60 / READS_BUCKET_SECS;
        let first = bucket.saturating_sub(minute - 1);
        let (hot, cold) = (first..=bucket)
            .map(at)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let span = (now - (first * READS_BUCKET_SECS) as f64).clamp(1.0, 60.0);
        let history = (0..READS_BUCKETS as u64)
            .rev()
            .map(|back| {
                let (h, c) = bucket.checked_sub(back).map_or((0, 0), at);
                (h + c) as f64 / READS_BUCKET_SECS as f64
            })
            .collect();
        GroupReadsView {
            hot_bytes_per_second: hot as f64 / span,
            cold_bytes_per_second: cold as f64 / span,
            history_bytes_per_second: history,
        }
    }
}

/// A group's read rates, for the console.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct GroupReadsView {
    /// Over the last minute.
    pub(crate) hot_bytes_per_second: f64,
    pub(crate) cold_bytes_per_second: f64,
    /// Bytes per second in each 10-second bucket of the last five minutes, oldest first.
    pub(crate) history_bytes_per_second: Vec<f64>,
}

/// Who reads for a group (from this instance's activity rows).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct GroupReaders {
    pub(crate) principals: std::collections::BTreeSet<String>,
    pub(crate) client_ids: std::collections::BTreeSet<String>,
    pub(crate) topics: std::collections::BTreeSet<String>,
}

/// Who read a Fetch response: its group (or [`crate::consumers::groups::NO_GROUP`]), principal, client id
/// and host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(crate) group: &'a str,
    pub(crate) principal: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) host: IpAddr,
}

/// One partition's data in a Fetch response, for [`Usage::count_fetches`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FetchedPartition {
    pub(crate) topic: String,
    pub(crate) temperature: Temperature,
    /// `primary` or `secondary` (tiered reads).
    pub(crate) cluster: &'static str,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

fn add(sum: &mut (u64, u64), f: &FetchedPartition) {
    sum.0 += f.bytes;
    sum.1 += f.records;
}

/// One row of `GET /v1/topics/{topic}/consumers` or `/producers`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct TopicClientView {
    pub(crate) client_id: String,
    pub(crate) host: String,
    pub(crate) principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    /// Average over the last minute.
    pub(crate) bytes_per_second: f64,
    /// Seconds since the Unix epoch.
    pub(crate) last_seen: u64,
}

/// Which metric a tracked series belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Series {
    ProducedBytes,
    ProducedRecords,
    ProduceErrors,
    FetchedBytes,
    FetchedRecords,
    TieredBytes,
    TieredRecords,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LabelKind {
    ClientId,
    Group,
    Topic,
}

impl LabelKind {
    fn name(self) -> &'static str {
        match self {
            LabelKind::ClientId => "client_id",
            LabelKind::Group => "group",
            LabelKind::Topic => "topic",
        }
    }
}

#[derive(Default)]
struct LabelState {
    admitted: HashMap<(LabelKind, String), Instant>,
    counts: HashMap<LabelKind, usize>,
    series: HashMap<(Series, Vec<String>), Instant>,
}

/// Per-client produce and fetch series with capped cardinality, partition heads, topic ids
/// and the groups and lag views, shared by every connection of one instance.
pub struct Usage {
    cfg: AttributionConfig,
    metrics: Arc<Metrics>,
    labels: Mutex<LabelState>,
    activity: Mutex<HashMap<ActivityKey, Activity>>,
    /// Per group: bytes read, hot and cold, in 10-second buckets over five minutes.
    reads: Mutex<HashMap<String, GroupReads>>,
    started: Instant,
    /// Mirrored topics (tiered reads): their fetches are also counted per serving cluster.
    tiered_topics: std::collections::HashSet<String>,
}

impl Usage {
    /// `tiered_topics`: the mirrored topics when tiered reads are on, else none.
    pub fn new(
        cfg: AttributionConfig,
        metrics: Arc<Metrics>,
        tiered_topics: impl IntoIterator<Item = String>,
    ) -> Usage {
        Usage {
            cfg,
            metrics,
            labels: Mutex::new(LabelState::default()),
            activity: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            started: Instant::now(),
            tiered_topics: tiered_topics.into_iter().collect(),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn config(&self) -> &AttributionConfig {
        &self.cfg
    }

    // ---- hot/cold --------------------------------------------------------------------

    /// Hot or cold: how far `fetch_offset` is behind `high_watermark`, in bytes by the
    /// partition's bytes-per-offset estimate, against `hot_threshold_bytes`.
    pub(crate) fn classify(&self, distance_offsets: i64, bytes_per_offset: f64) -> Temperature {
        let distance_bytes = distance_offsets.max(0) as f64 * bytes_per_offset;
        if distance_bytes > self.cfg.hot_threshold_bytes as f64 {
            Temperature::Cold
        } else {
            Temperature::Hot
        }
    }

    // ---- counting --------------------------------------------------------------------

    /// Produced and acknowledged batches of one topic from one client.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn count_produce(
        &self,
        principal: &str,
        client_id: &str,
        host: IpAddr,
        topic: &str,
        bytes: u64,
        records: u64,
    ) {
        let (c, t) = {
            let mut l = self.labels.lock().expect("lock");
            let c = self.admit(&mut l, LabelKind::ClientId, client_id);
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            let labels = vec![principal.to_string(), c.clone(), t.clone()];
            let now = Instant::now();
            l.series
                .insert((Series::ProducedBytes, labels.clone()), now);
            l.series.insert((Series::ProducedRecords, labels), now);
            (c, t)
        };
        let labels = [principal, c.as_str(), t.as_str()];
        self.metrics
            .produced_bytes
            .with_label_values(&labels)
            .inc_by(bytes);
        self.metrics
            .produced_records
            .with_label_values(&labels)
            .inc_by(records);
        self.record_activity(
            ActivityKey {
                topic: topic.to_string(),
                direction: Direction::Produce,
                client_id: client_id.to_string(),
                host,
                principal: principal.to_string(),
                group: None,
            },
            bytes,
            records,
        );
    }

    /// A partition of a Produce failed with `error`.
    pub(crate) fn count_produce_error(&self, client_id: &str, topic: &str, error: &'static str) {
        let (c, t) = {
            let mut l = self.labels.lock().expect("lock");
            let c = self.admit(&mut l, LabelKind::ClientId, client_id);
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            l.series.insert(
                (
                    Series::ProduceErrors,
                    vec![c.clone(), t.clone(), error.into()],
                ),
                Instant::now(),
            );
            (c, t)
        };
        self.metrics
            .produce_errors
            .with_label_values(&[&c, &t, error])
            .inc();
    }

    /// One Fetch response's data, read by one client: the series and activity rows of every
    /// partition, under one lock on the label state and one on the activity rows.
    pub(crate) fn count_fetches(&self, reader: &Reader, fetched: &[FetchedPartition]) {
        // Sum per series first: a response names each topic once per partition.
        let mut by_class: BTreeMap<(&str, Temperature), (u64, u64)> = BTreeMap::new();
        let mut by_cluster: BTreeMap<(&str, &'static str), (u64, u64)> = BTreeMap::new();
        for f in fetched {
            add(by_class.entry((&f.topic, f.temperature)).or_default(), f);
            if self.tiered_topics.contains(&f.topic) {
                add(by_cluster.entry((&f.topic, f.cluster)).or_default(), f);
            }
        }
        if by_class.is_empty() {
            return;
        }
        let (fetched_labels, tiered_labels) =
            self.admit_fetch_series(reader, &by_class, &by_cluster);
        let m = &self.metrics;
        for (labels, (bytes, records)) in fetched_labels.iter().zip(by_class.values()) {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            m.fetched_bytes.with_label_values(&refs).inc_by(*bytes);
            m.fetched_records.with_label_values(&refs).inc_by(*records);
        }
        for (labels, (bytes, records)) in tiered_labels.iter().zip(by_cluster.values()) {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            m.tiered_fetched_bytes
                .with_label_values(&refs)
                .inc_by(*bytes);
            m.tiered_fetched_records
                .with_label_values(&refs)
                .inc_by(*records);
        }
        self.record_fetch_activity(reader, &by_class);
        self.record_group_reads(&fetched_labels[0][0], &by_class);
    }

    /// The group's read window (under its capped label: `other` past the cap).
    fn record_group_reads(
        &self,
        group: &str,
        by_class: &BTreeMap<(&str, Temperature), (u64, u64)>,
    ) {
        let bucket = self.started.elapsed().as_secs() / READS_BUCKET_SECS;
        let mut reads = self.reads.lock().expect("lock");
        let r = match reads.get_mut(group) {
            Some(r) => r,
            None => reads.entry(group.to_string()).or_default(),
        };
        for ((_, temperature), (bytes, _)) in by_class {
            r.add(bucket, *temperature, *bytes);
        }
        r.last = Some(Instant::now());
    }

    /// Every group's read rates and the five-minute history behind its sparkline.
    pub(crate) fn group_reads(&self) -> BTreeMap<String, GroupReadsView> {
        let now = self.started.elapsed().as_secs_f64();
        let bucket = (now as u64) / READS_BUCKET_SECS;
        let reads = self.reads.lock().expect("lock");
        reads
            .iter()
            .map(|(g, r)| (g.clone(), r.view(bucket, now)))
            .collect()
    }

    /// Who reads for each group, from the activity rows: principals, client ids, topics.
    pub(crate) fn group_readers(&self) -> BTreeMap<String, GroupReaders> {
        let a = self.activity.lock().expect("lock");
        let mut out: BTreeMap<String, GroupReaders> = BTreeMap::new();
        for k in a.keys().filter(|k| k.direction == Direction::Fetch) {
            let Some(g) = &k.group else { continue };
            let r = out.entry(g.clone()).or_default();
            r.principals.insert(k.principal.clone());
            r.client_ids.insert(k.client_id.clone());
            r.topics.insert(k.topic.clone());
        }
        out
    }

    /// The label values of a response's fetch series (under the caps), each marked in use.
    #[allow(clippy::type_complexity)]
    fn admit_fetch_series(
        &self,
        r: &Reader,
        by_class: &BTreeMap<(&str, Temperature), (u64, u64)>,
        by_cluster: &BTreeMap<(&str, &'static str), (u64, u64)>,
    ) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let now = Instant::now();
        let mut l = self.labels.lock().expect("lock");
        let g = self.admit(&mut l, LabelKind::Group, r.group);
        let c = self.admit(&mut l, LabelKind::ClientId, r.client_id);
        let mut fetched = Vec::with_capacity(by_class.len());
        for (topic, temperature) in by_class.keys() {
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            let labels = vec![
                g.clone(),
                r.principal.to_string(),
                c.clone(),
                t,
                temperature.label().into(),
            ];
            l.series.insert((Series::FetchedBytes, labels.clone()), now);
            l.series
                .insert((Series::FetchedRecords, labels.clone()), now);
            fetched.push(labels);
        }
        let mut tiered = Vec::with_capacity(by_cluster.len());
        for (topic, cluster) in by_cluster.keys() {
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            let labels = vec![g.clone(), t, cluster.to_string()];
            l.series.insert((Series::TieredBytes, labels.clone()), now);
            l.series
                .insert((Series::TieredRecords, labels.clone()), now);
            tiered.push(labels);
        }
        (fetched, tiered)
    }

    fn record_fetch_activity(
        &self,
        r: &Reader,
        by_class: &BTreeMap<(&str, Temperature), (u64, u64)>,
    ) {
        let mut by_topic: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((topic, _), (bytes, records)) in by_class {
            let e = by_topic.entry(topic).or_default();
            e.0 += bytes;
            e.1 += records;
        }
        let bucket = self.started.elapsed().as_secs() / BUCKET_SECS;
        let mut a = self.activity.lock().expect("lock");
        for (topic, (bytes, records)) in by_topic {
            let key = ActivityKey {
                topic: topic.to_string(),
                direction: Direction::Fetch,
                client_id: r.client_id.to_string(),
                host: r.host,
                principal: r.principal.to_string(),
                group: Some(r.group.to_string()),
            };
            a.entry(key).or_default().add(bucket, bytes, records);
        }
    }

    /// Admit a label value under its cap, or return [`OTHER`] and count the overflow.
    fn admit(&self, l: &mut LabelState, kind: LabelKind, value: &str) -> String {
        let now = Instant::now();
        if let Some(seen) = l.admitted.get_mut(&(kind, value.to_string())) {
            *seen = now;
            return value.to_string();
        }
        let cap = match kind {
            LabelKind::ClientId => self.cfg.max_client_ids,
            LabelKind::Group => self.cfg.max_groups,
            LabelKind::Topic => self.cfg.max_topics,
        };
        let count = l.counts.entry(kind).or_default();
        if *count >= cap {
            self.metrics
                .label_overflow
                .with_label_values(&[kind.name()])
                .inc();
            return OTHER.to_string();
        }
        *count += 1;
        l.admitted.insert((kind, value.to_string()), now);
        value.to_string()
    }

    fn record_activity(&self, key: ActivityKey, bytes: u64, records: u64) {
        let bucket = self.started.elapsed().as_secs() / BUCKET_SECS;
        let mut a = self.activity.lock().expect("lock");
        a.entry(key).or_default().add(bucket, bytes, records);
    }

    /// Who produced to (`Direction::Produce`) or fetched from a topic, busiest first.
    pub(crate) fn topic_clients(&self, topic: &str, direction: Direction) -> Vec<TopicClientView> {
        let bucket = self.started.elapsed().as_secs() / BUCKET_SECS;
        // The current bucket is partial: average over the time actually covered.
        let elapsed = self.started.elapsed().as_secs_f64();
        let span = elapsed.clamp(1.0, (WINDOW_BUCKETS as u64 * BUCKET_SECS) as f64);
        let a = self.activity.lock().expect("lock");
        let mut out: Vec<TopicClientView> = a
            .iter()
            .filter(|(k, _)| k.topic == topic && k.direction == direction)
            .map(|(k, v)| {
                let recent: u64 = v
                    .window
                    .iter()
                    .filter(|(b, _)| bucket.saturating_sub(*b) < WINDOW_BUCKETS as u64)
                    .map(|(_, n)| n)
                    .sum();
                TopicClientView {
                    client_id: k.client_id.clone(),
                    host: k.host.to_string(),
                    principal: k.principal.clone(),
                    group: k.group.clone(),
                    bytes: v.bytes,
                    records: v.records,
                    bytes_per_second: recent as f64 / span,
                    last_seen: v
                        .last_seen_wall
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.bytes_per_second
                .total_cmp(&a.bytes_per_second)
                .then(b.bytes.cmp(&a.bytes))
        });
        out
    }

    /// Topics with any activity, with their producer and consumer counts.
    pub(crate) fn topics(&self) -> BTreeMap<String, (usize, usize)> {
        let a = self.activity.lock().expect("lock");
        let mut m: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for k in a.keys() {
            let e = m.entry(k.topic.clone()).or_default();
            match k.direction {
                Direction::Produce => e.0 += 1,
                Direction::Fetch => e.1 += 1,
            }
        }
        m
    }

    /// Remove series, label values, activity rows and group state idle for longer than
    /// `idle_series_seconds`. Returns the number of series removed.
    pub(crate) fn sweep(&self) -> usize {
        self.sweep_older_than(Duration::from_secs(self.cfg.idle_series_seconds))
    }

    /// [`Usage::sweep`] with an explicit idle time (tests).
    pub(crate) fn sweep_older_than(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let idle_since = |t: &Instant| now.duration_since(*t) > idle;
        let mut removed = 0;
        {
            let mut l = self.labels.lock().expect("lock");
            let gone: Vec<(Series, Vec<String>)> = l
                .series
                .iter()
                .filter(|(_, t)| idle_since(t))
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                l.series.remove(&key);
                let vec: &IntCounterVec = match key.0 {
                    Series::ProducedBytes => &self.metrics.produced_bytes,
                    Series::ProducedRecords => &self.metrics.produced_records,
                    Series::ProduceErrors => &self.metrics.produce_errors,
                    Series::FetchedBytes => &self.metrics.fetched_bytes,
                    Series::FetchedRecords => &self.metrics.fetched_records,
                    Series::TieredBytes => &self.metrics.tiered_fetched_bytes,
                    Series::TieredRecords => &self.metrics.tiered_fetched_records,
                };
                let refs: Vec<&str> = key.1.iter().map(String::as_str).collect();
                if vec.remove_label_values(&refs).is_ok() {
                    removed += 1;
                }
            }
            let freed: Vec<(LabelKind, String)> = l
                .admitted
                .iter()
                .filter(|(_, t)| idle_since(t))
                .map(|(k, _)| k.clone())
                .collect();
            for key in freed {
                l.admitted.remove(&key);
                if let Some(c) = l.counts.get_mut(&key.0) {
                    *c = c.saturating_sub(1);
                }
            }
        }
        self.activity
            .lock()
            .expect("lock")
            .retain(|_, a| a.last_seen.is_some_and(|t| !idle_since(&t)));
        self.reads
            .lock()
            .expect("lock")
            .retain(|_, r| r.last.is_some_and(|t| !idle_since(&t)));
        self.metrics
            .attribution_series_removed
            .inc_by(removed as u64);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribution(cap: usize) -> Usage {
        let cfg = AttributionConfig {
            max_client_ids: cap,
            hot_threshold_bytes: 1000,
            ..AttributionConfig::default()
        };
        Usage::new(cfg, Arc::new(Metrics::new()), ["m".to_string()])
    }

    const HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn cardinality_cap_sends_the_rest_to_other_and_counts_it() {
        let a = attribution(2);
        for c in ["a", "b", "c", "d"] {
            a.count_produce("ANONYMOUS", c, HOST, "t", 10, 1);
        }
        let text = a.metrics.render();
        assert!(text.contains(
            "tollgate_produced_bytes_total{client_id=\"a\",principal=\"ANONYMOUS\",topic=\"t\"} 10"
        ));
        assert!(text.contains(
            "tollgate_produced_bytes_total{client_id=\"other\",principal=\"ANONYMOUS\",topic=\"t\"} 20"
        ), "{text}");
        assert!(text.contains("tollgate_attribution_label_overflow_total{label=\"client_id\"} 2"));
        // Idle series go, and free their label slots.
        assert_eq!(a.sweep_older_than(Duration::ZERO), 6);
        assert!(!a
            .metrics
            .render()
            .contains("tollgate_produced_bytes_total{"));
        a.count_produce("ANONYMOUS", "e", HOST, "t", 1, 1);
        assert!(a.metrics.render().contains("client_id=\"e\""));
    }

    #[test]
    fn hot_and_cold_by_distance_times_bytes_per_offset() {
        let a = attribution(10);
        assert_eq!(a.classify(100, 10.0), Temperature::Hot);
        assert_eq!(a.classify(101, 10.0), Temperature::Cold);
        assert_eq!(a.classify(-5, 10.0), Temperature::Hot);
    }

    fn fetched(
        topic: &str,
        temperature: Temperature,
        cluster: &'static str,
        bytes: u64,
    ) -> FetchedPartition {
        FetchedPartition {
            topic: topic.into(),
            temperature,
            cluster,
            bytes,
            records: 1,
        }
    }

    #[test]
    fn topic_views_rank_clients() {
        let a = attribution(10);
        let reader = |client_id| Reader {
            group: "g",
            principal: "ANONYMOUS",
            client_id,
            host: HOST,
        };
        a.count_fetches(
            &reader("slow"),
            &[fetched("t", Temperature::Hot, "primary", 10)],
        );
        a.count_fetches(
            &reader("fast"),
            &[fetched("t", Temperature::Cold, "primary", 1000)],
        );
        let v = a.topic_clients("t", Direction::Fetch);
        assert_eq!(v[0].client_id, "fast");
        assert_eq!(v[0].group.as_deref(), Some("g"));
        assert!(v[0].bytes_per_second > 0.0);
        assert!(a.topic_clients("t", Direction::Produce).is_empty());
    }

    #[test]
    fn one_response_sums_its_partitions_per_series() {
        let a = attribution(10);
        let reader = Reader {
            group: "g",
            principal: "ANONYMOUS",
            client_id: "c",
            host: HOST,
        };
        a.count_fetches(
            &reader,
            &[
                fetched("t", Temperature::Hot, "primary", 10),
                fetched("t", Temperature::Hot, "primary", 5),
                fetched("t", Temperature::Cold, "primary", 7),
                fetched("m", Temperature::Cold, "secondary", 100),
            ],
        );
        let text = a.metrics.render();
        let series = |s: &str| text.lines().any(|l| l == s);
        assert!(series("tollgate_fetched_bytes_total{client_id=\"c\",group=\"g\",principal=\"ANONYMOUS\",temperature=\"hot\",topic=\"t\"} 15"), "{text}");
        assert!(series("tollgate_fetched_bytes_total{client_id=\"c\",group=\"g\",principal=\"ANONYMOUS\",temperature=\"cold\",topic=\"t\"} 7"));
        assert!(series("tollgate_tiered_fetched_bytes_total{cluster=\"secondary\",group=\"g\",topic=\"m\"} 100"), "{text}");
        assert!(!text.contains("tollgate_tiered_fetched_bytes_total{cluster=\"primary\""));
        assert_eq!(a.topic_clients("t", Direction::Fetch)[0].bytes, 22);
    }
}
