//! Attribution: who produced and who read what, how much, and whether it was hot or cold.
//!
//! The attribution layer ([`crate::layers::attribution`]) decodes Produce and Fetch traffic
//! and the group APIs and reports here. This module owns:
//!
//! - the per-client Prometheus series (`tollgate_produced_*`, `tollgate_fetched_*`,
//!   `tollgate_produce_errors_total`) with **bounded cardinality**: each of `client_id`,
//!   `group` and `topic` admits at most a configured number of distinct values; further values
//!   are reported as [`OTHER`] and counted in `tollgate_attribution_label_overflow_total`.
//!   Series not updated for `idle_series_seconds` are removed, and their label values freed;
//! - each partition's **head** (high watermark, last stable offset, log start) and a
//!   bytes-per-offset estimate, from which every fetched partition is classed `hot` or `cold`
//!   by its distance from the head ([`Attribution::classify`]);
//! - the **topic id → name** map (Produce v13 and Fetch v13+ name topics by id), filled from
//!   every Metadata response that passes through and Tollgate's own Metadata refresh;
//! - per (topic, client instance, group) **activity** with a one-minute byte-rate window,
//!   behind `GET /v1/topics/{topic}/consumers` and `/producers`;
//! - the [`Groups`] model that ties fetching connections to consumer groups.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounterVec;
use serde::Serialize;
use uuid::Uuid;

use crate::config::{AttributionConfig, LagConfig};
use crate::groups::Groups;
use crate::lag::Lag;
use crate::metrics::Metrics;

/// Label value that stands for every value over a cardinality cap.
pub const OTHER: &str = "other";

/// Hot or cold data, by distance from the partition head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Temperature {
    Hot,
    Cold,
}

impl Temperature {
    pub fn label(self) -> &'static str {
        match self {
            Temperature::Hot => "hot",
            Temperature::Cold => "cold",
        }
    }
}

/// What a partition's head looks like, as last seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Average bytes per offset (exponentially weighted), 0 until data was seen.
    pub bytes_per_offset: f64,
    pub updated: Instant,
}

/// Direction of traffic, for the activity views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
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

/// One row of `GET /v1/topics/{topic}/consumers` or `/producers`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopicClientView {
    pub client_id: String,
    pub host: String,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub bytes: u64,
    pub records: u64,
    /// Average over the last minute.
    pub bytes_per_second: f64,
    /// Seconds since the Unix epoch.
    pub last_seen: u64,
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
pub struct Attribution {
    cfg: AttributionConfig,
    metrics: Arc<Metrics>,
    labels: Mutex<LabelState>,
    heads: Mutex<HashMap<(String, i32), Head>>,
    topic_names: RwLock<HashMap<Uuid, String>>,
    activity: Mutex<HashMap<ActivityKey, Activity>>,
    pub groups: Groups,
    /// Lag and rogue-consumer detection, fed by the same traffic.
    pub lag: Lag,
    started: Instant,
    tiered_topics: std::sync::OnceLock<std::collections::HashSet<String>>,
    /// Instances of the tier heard from recently, this one included ([`crate::tier`]).
    tier_size: std::sync::atomic::AtomicUsize,
}

/// Weight of a new sample in the bytes-per-offset average.
const BPO_ALPHA: f64 = 0.2;

impl Attribution {
    /// Mirrored topics (tiered reads): their fetches are also counted per serving cluster.
    pub fn set_tiered_topics(&self, topics: impl IntoIterator<Item = String>) {
        let _ = self.tiered_topics.set(topics.into_iter().collect());
    }

    /// Count fetched data of a mirrored topic by the cluster that served it.
    pub fn count_tiered_fetch(
        &self,
        group: &str,
        topic: &str,
        cluster: &'static str,
        bytes: u64,
        records: u64,
    ) {
        if !self.tiered_topics.get().is_some_and(|t| t.contains(topic)) {
            return;
        }
        let labels = {
            let mut l = self.labels.lock().expect("lock");
            let g = self.admit(&mut l, LabelKind::Group, group);
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            let labels = vec![g, t, cluster.to_string()];
            let now = Instant::now();
            l.series.insert((Series::TieredBytes, labels.clone()), now);
            l.series
                .insert((Series::TieredRecords, labels.clone()), now);
            labels
        };
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.metrics
            .tiered_fetched_bytes
            .with_label_values(&refs)
            .inc_by(bytes);
        self.metrics
            .tiered_fetched_records
            .with_label_values(&refs)
            .inc_by(records);
    }

    pub fn new(cfg: AttributionConfig, metrics: Arc<Metrics>) -> Attribution {
        Attribution::with_lag(cfg, LagConfig::default(), metrics)
    }

    pub fn with_lag(cfg: AttributionConfig, lag: LagConfig, metrics: Arc<Metrics>) -> Attribution {
        Attribution {
            lag: Lag::new(lag),
            groups: Groups::new(Duration::from_secs(cfg.idle_series_seconds.min(300))),
            cfg,
            metrics,
            labels: Mutex::new(LabelState::default()),
            heads: Mutex::new(HashMap::new()),
            topic_names: RwLock::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            started: Instant::now(),
            tiered_topics: std::sync::OnceLock::new(),
            tier_size: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How long a read tied to no group waits for the tier view (`attribution.tie_wait_ms`):
    /// zero while this instance is alone (no other instance could know more).
    pub fn tie_wait(&self) -> Duration {
        if self.tier_size.load(std::sync::atomic::Ordering::Relaxed) <= 1 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.cfg.tie_wait_ms)
    }

    /// How many instances the tier has now (from the state topic).
    pub fn set_tier_size(&self, n: usize) {
        self.tier_size
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn config(&self) -> &AttributionConfig {
        &self.cfg
    }

    // ---- topic ids -------------------------------------------------------------------

    /// Record topic ids from a Metadata response.
    pub fn learn_topic_ids(&self, topics: impl IntoIterator<Item = (Uuid, String)>) {
        let new: Vec<(Uuid, String)> = {
            let known = self.topic_names.read().expect("lock");
            topics
                .into_iter()
                .filter(|(id, name)| !id.is_nil() && known.get(id) != Some(name))
                .collect()
        };
        if !new.is_empty() {
            self.topic_names.write().expect("lock").extend(new);
        }
    }

    /// The name of a topic id; unknown ids are named by the id itself.
    pub fn topic_name(&self, id: &Uuid) -> String {
        self.topic_names
            .read()
            .expect("lock")
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// The topic a request or response entry names: by name, or (Produce v13, Fetch v13+,
    /// OffsetCommit/OffsetFetch v10) by id when the name is empty.
    pub fn topic_of(&self, name: &str, id: &Uuid) -> String {
        if name.is_empty() && !id.is_nil() {
            self.topic_name(id)
        } else {
            name.to_string()
        }
    }

    // ---- heads and hot/cold ----------------------------------------------------------

    /// A fetch response told the partition's head; `batch_bytes`/`batch_offsets` are what
    /// its complete batches spanned.
    #[allow(clippy::too_many_arguments)]
    pub fn observe_head(
        &self,
        topic: &str,
        partition: i32,
        high_watermark: i64,
        last_stable_offset: i64,
        log_start_offset: i64,
        batch_bytes: u64,
        batch_offsets: u64,
    ) {
        let mut heads = self.heads.lock().expect("lock");
        let now = Instant::now();
        let h = heads.entry((topic.to_string(), partition)).or_insert(Head {
            high_watermark,
            last_stable_offset,
            log_start_offset,
            bytes_per_offset: 0.0,
            updated: now,
        });
        if high_watermark >= 0 {
            h.high_watermark = high_watermark;
        }
        if last_stable_offset >= 0 {
            h.last_stable_offset = last_stable_offset;
        }
        if log_start_offset >= 0 {
            h.log_start_offset = log_start_offset;
        }
        h.updated = now;
        update_bpo(h, batch_bytes, batch_offsets);
    }

    /// Produced batches refine the bytes-per-offset estimate and move the head forward.
    pub fn observe_produced(&self, topic: &str, partition: i32, bytes: u64, offsets: u64) {
        if offsets == 0 {
            return;
        }
        let mut heads = self.heads.lock().expect("lock");
        if let Some(h) = heads.get_mut(&(topic.to_string(), partition)) {
            update_bpo(h, bytes, offsets);
        }
    }

    /// The last known head of a partition.
    pub fn head(&self, topic: &str, partition: i32) -> Option<Head> {
        self.heads
            .lock()
            .expect("lock")
            .get(&(topic.to_string(), partition))
            .copied()
    }

    /// Hot or cold: how far `fetch_offset` is behind `high_watermark`, in bytes by the
    /// partition's bytes-per-offset estimate, against `hot_threshold_bytes`.
    pub fn classify(&self, distance_offsets: i64, bytes_per_offset: f64) -> Temperature {
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
    pub fn count_produce(
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
    pub fn count_produce_error(&self, client_id: &str, topic: &str, error: &'static str) {
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

    /// Fetched data of one topic by one client, hot or cold.
    #[allow(clippy::too_many_arguments)]
    pub fn count_fetch(
        &self,
        group: &str,
        principal: &str,
        client_id: &str,
        host: IpAddr,
        topic: &str,
        temperature: Temperature,
        bytes: u64,
        records: u64,
    ) {
        let labels = {
            let mut l = self.labels.lock().expect("lock");
            let g = self.admit(&mut l, LabelKind::Group, group);
            let c = self.admit(&mut l, LabelKind::ClientId, client_id);
            let t = self.admit(&mut l, LabelKind::Topic, topic);
            let labels = vec![g, principal.to_string(), c, t, temperature.label().into()];
            let now = Instant::now();
            l.series.insert((Series::FetchedBytes, labels.clone()), now);
            l.series
                .insert((Series::FetchedRecords, labels.clone()), now);
            labels
        };
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        self.metrics
            .fetched_bytes
            .with_label_values(&refs)
            .inc_by(bytes);
        self.metrics
            .fetched_records
            .with_label_values(&refs)
            .inc_by(records);
        self.record_activity(
            ActivityKey {
                topic: topic.to_string(),
                direction: Direction::Fetch,
                client_id: client_id.to_string(),
                host,
                principal: principal.to_string(),
                group: Some(group.to_string()),
            },
            bytes,
            records,
        );
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
        let e = a.entry(key).or_default();
        e.bytes += bytes;
        e.records += records;
        e.last_seen = Some(Instant::now());
        e.last_seen_wall = Some(SystemTime::now());
        let slot = &mut e.window[(bucket as usize) % WINDOW_BUCKETS];
        if slot.0 != bucket {
            *slot = (bucket, 0);
        }
        slot.1 += bytes;
    }

    /// Who produced to (`Direction::Produce`) or fetched from a topic, busiest first.
    pub fn topic_clients(&self, topic: &str, direction: Direction) -> Vec<TopicClientView> {
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
    pub fn topics(&self) -> BTreeMap<String, (usize, usize)> {
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
    pub fn sweep(&self) -> usize {
        self.sweep_older_than(Duration::from_secs(self.cfg.idle_series_seconds))
    }

    /// [`Attribution::sweep`] with an explicit idle time (tests).
    pub fn sweep_older_than(&self, idle: Duration) -> usize {
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
        self.heads
            .lock()
            .expect("lock")
            .retain(|_, h| !idle_since(&h.updated));
        self.groups.expire();
        self.metrics
            .attribution_series_removed
            .inc_by(removed as u64);
        removed
    }
}

fn update_bpo(h: &mut Head, bytes: u64, offsets: u64) {
    if offsets == 0 || bytes == 0 {
        return;
    }
    let sample = bytes as f64 / offsets as f64;
    h.bytes_per_offset = if h.bytes_per_offset == 0.0 {
        sample
    } else {
        h.bytes_per_offset * (1.0 - BPO_ALPHA) + sample * BPO_ALPHA
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribution(cap: usize) -> Attribution {
        let cfg = AttributionConfig {
            max_client_ids: cap,
            hot_threshold_bytes: 1000,
            ..AttributionConfig::default()
        };
        Attribution::new(cfg, Arc::new(Metrics::new()))
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
        a.observe_head("t", 0, 1000, 1000, 0, 100, 10);
        let h = a.head("t", 0).unwrap();
        assert_eq!(h.bytes_per_offset, 10.0);
        assert_eq!(a.classify(100, h.bytes_per_offset), Temperature::Hot);
        assert_eq!(a.classify(101, h.bytes_per_offset), Temperature::Cold);
        assert_eq!(a.classify(-5, h.bytes_per_offset), Temperature::Hot);
        a.observe_produced("t", 0, 300, 10);
        let h = a.head("t", 0).unwrap();
        assert!((h.bytes_per_offset - 14.0).abs() < 1e-9);
    }

    #[test]
    fn topic_views_rank_clients_and_unknown_ids_keep_their_id() {
        let a = attribution(10);
        a.count_fetch("g", "ANONYMOUS", "slow", HOST, "t", Temperature::Hot, 10, 1);
        a.count_fetch(
            "g",
            "ANONYMOUS",
            "fast",
            HOST,
            "t",
            Temperature::Cold,
            1000,
            9,
        );
        let v = a.topic_clients("t", Direction::Fetch);
        assert_eq!(v[0].client_id, "fast");
        assert_eq!(v[0].group.as_deref(), Some("g"));
        assert!(v[0].bytes_per_second > 0.0);
        assert!(a.topic_clients("t", Direction::Produce).is_empty());
        let id = Uuid::from_u128(7);
        assert_eq!(a.topic_name(&id), id.to_string());
        a.learn_topic_ids([(id, "named".to_string())]);
        assert_eq!(a.topic_name(&id), "named");
    }
}
