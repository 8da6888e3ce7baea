//! Tiered reads: what Tollgate knows of the secondary cluster, and the routing rule.
//!
//! - [`Syncs`]: every offset sync read from the offset-syncs topic (MirrorMaker 2's format,
//!   written by `tollgate mirror` or by MM2), kept whole per partition, and the translation
//!   of a primary offset into a secondary one. A translation is used only where it is exact:
//!   - between two syncs `(U1, D1)` and `(U2, D2)`, the primary offsets
//!     `U1 .. U1 + (D2 - D1)` map one to one onto `D1 .. D2`; with `tiered.mirror =
//!     "mirrormaker2"` (sparse syncs) only when `U2 - U1 == D2 - D1` (nothing was skipped);
//!   - after the last sync: with `tollgate mirror` (a sync at every change of the mapping)
//!     up to the secondary's high watermark; with MirrorMaker 2 never (its next sync may
//!     show a gap);
//!   - anywhere else (before the first sync, in a gap of the primary's offsets): not exact,
//!     and the partition is read from the primary.
//! - [`scan_batches`] and [`shift_base_offsets`]: which of the secondary's record batches
//!   lie wholly inside the exact segment (the first that does not ends the answer there), and
//!   their base offsets moved into primary offsets in place, in the secondary's response
//!   buffer. The base offset is outside the batch CRC, so nothing else changes.
//! - [`Tiered::decide`]: primary or secondary for one partition fetch, with hysteresis: a
//!   consumer partition further behind the head than `tiered.enter_lag` goes to the
//!   secondary and stays there until it is within `tiered.exit_lag`; a group whose effective
//!   tier is `probation` always reads from the secondary.
//! - The routes in force (who is on the secondary now) for `GET /v1/routing`, the
//!   secondary's high watermarks, and the background task that keeps the primary's heads of
//!   secondary-served partitions fresh and exports the mirror's lag.

pub(crate) mod cluster;
pub mod mirror;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::{info, warn};

use crate::brokers::upstream::UpstreamSettings;
use crate::consumers::heads::{Head, Heads, Observed};
use crate::control::config::TieredConfig;
use crate::control::config::{LagUnit, Mirror};
use crate::metrics::Metrics;
use crate::tiered::cluster::ClusterClient;

/// A stretch of offsets where the primary and the secondary advance together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub up_start: i64,
    pub down_start: i64,
    /// How many offsets the segment spans; `None`: up to the secondary's end.
    pub len: Option<i64>,
}

impl Segment {
    /// Primary offset minus secondary offset.
    pub fn delta(&self) -> i64 {
        self.up_start - self.down_start
    }

    /// The secondary offset of a primary offset in this segment.
    pub(crate) fn down(&self, up: i64) -> i64 {
        up - self.delta()
    }

    /// Whether secondary offsets `first..=last` are all inside the segment.
    pub(crate) fn contains_down(&self, first: i64, last: i64) -> bool {
        first >= self.down_start && self.len.is_none_or(|n| last < self.down_start + n)
    }
}

/// What a primary offset translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Translation {
    Exact(Segment),
    /// No sync at or before the offset.
    NoSync,
    /// Covered by syncs, but the mapping there is not known to be exact.
    Inexact,
}

/// Every offset sync, per primary (topic, partition): upstream offset → downstream offset.
pub(crate) struct Syncs {
    /// Syncs are written at every change of the mapping (`tollgate mirror`).
    dense: bool,
    map: RwLock<HashMap<(String, i32), BTreeMap<i64, i64>>>,
    count: std::sync::atomic::AtomicU64,
    loaded: AtomicBool,
}

impl Syncs {
    pub(crate) fn new(dense: bool) -> Syncs {
        Syncs {
            dense,
            map: RwLock::new(HashMap::new()),
            count: 0.into(),
            loaded: AtomicBool::new(false),
        }
    }

    pub(crate) fn insert(&self, topic: &str, partition: i32, up: i64, down: i64) {
        let mut m = self.map.write().expect("lock");
        let new = m
            .entry((topic.to_string(), partition))
            .or_default()
            .insert(up, down)
            .is_none();
        if new {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many distinct syncs are held.
    pub(crate) fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The offset-syncs topic was read to its end once.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The partitions with syncs.
    pub(crate) fn partitions(&self) -> Vec<(String, i32)> {
        self.map.read().expect("lock").keys().cloned().collect()
    }

    /// The latest sync of a partition.
    pub(crate) fn latest(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let m = self.map.read().expect("lock");
        let s = m.get(&(topic.to_string(), partition))?;
        s.iter().next_back().map(|(u, d)| (*u, *d))
    }

    /// Translate a primary offset.
    pub(crate) fn translate(&self, topic: &str, partition: i32, up: i64) -> Translation {
        let m = self.map.read().expect("lock");
        let Some(s) = m.get(&(topic.to_string(), partition)) else {
            return Translation::NoSync;
        };
        let Some((&u1, &d1)) = s.range(..=up).next_back() else {
            return Translation::NoSync;
        };
        match s.range((Bound::Excluded(u1), Bound::Unbounded)).next() {
            Some((&u2, &d2)) => {
                let len = d2 - d1;
                let equal = u2 - u1 == len;
                if len < 0 || (!self.dense && !equal) || up - u1 >= len {
                    return Translation::Inexact;
                }
                Translation::Exact(Segment {
                    up_start: u1,
                    down_start: d1,
                    len: Some(len),
                })
            }
            None if self.dense => Translation::Exact(Segment {
                up_start: u1,
                down_start: d1,
                len: None,
            }),
            None => Translation::Inexact,
        }
    }

    /// The primary offset the secondary's end offset `down_end` corresponds to, by the
    /// latest sync (for the mirror-lag metric).
    pub(crate) fn up_of_end(&self, topic: &str, partition: i32, down_end: i64) -> Option<i64> {
        let (u, d) = self.latest(topic, partition)?;
        Some(u + (down_end - d).max(0))
    }
}

/// What the secondary's records for one partition allow, read without changing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `len` bytes are whole batches inside the segment; `next` is the primary
    /// offset after them.
    Batches { len: usize, next: i64 },
    /// No records.
    Empty,
    /// The first batch is not wholly inside the segment (or not a v2 data batch).
    Inexact,
}

/// The complete record batches at the front of `records` that lie inside `seg` (stopping at
/// the first that does not); a trailing partial batch is left out, as a broker may send one.
/// Batch headers are read by the one parser, [`crate::wire::records::entries`].
pub fn scan_batches(records: &[u8], seg: &Segment) -> Scan {
    let (mut len, mut next) = (0, 0);
    for e in crate::wire::records::entries(records) {
        let inside = seg.contains_down(e.base_offset(), e.last_offset());
        if !e.is_batch() || e.is_control() || !inside {
            break;
        }
        len += e.bytes.len();
        next = e.last_offset() + 1 + seg.delta();
    }
    if len > 0 {
        return Scan::Batches { len, next };
    }
    // Nothing usable: only a partial first batch (or nothing) is "empty"; a whole one that
    // cannot be served from the secondary is "inexact".
    let first_len = records
        .get(8..12)
        .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")).max(0) as usize + 12);
    let partial = records.len() < crate::wire::records::BATCH_HEADER_BYTES
        || first_len.is_some_and(|n| n > records.len());
    if records.is_empty() || partial {
        Scan::Empty
    } else {
        Scan::Inexact
    }
}

/// Move the base offset of every batch in `batches` (whole batches, as [`scan_batches`]
/// found them) by `delta`, in place. The base offset is outside the batch CRC: nothing else
/// changes, and nothing is copied.
pub fn shift_base_offsets(batches: &mut [u8], delta: i64) {
    let mut at = 0;
    while at + 12 <= batches.len() {
        let base = i64::from_be_bytes(batches[at..at + 8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(batches[at + 8..at + 12].try_into().expect("4 bytes"));
        batches[at..at + 8].copy_from_slice(&base.wrapping_add(delta).to_be_bytes());
        at += 12 + len.max(0) as usize;
    }
}

/// Where one partition fetch goes, and why (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Primary(&'static str),
    Secondary(&'static str),
}

/// A consumer partition on the secondary.
#[derive(Debug, Clone)]
struct RouteState {
    since: SystemTime,
    last_seen: Instant,
    offset: i64,
    lag: i64,
}

/// One route in `GET /v1/routing`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouteView {
    /// The group, or `client:<client.id>` for a consumer in no group.
    pub(crate) consumer: String,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    /// Unix seconds when the partition moved to the secondary.
    pub(crate) since: u64,
    pub(crate) fetch_offset: i64,
    /// Behind the primary's head, in `tiered.lag_unit`, at the last fetch.
    pub(crate) lag: i64,
}

/// Routes not used for this long are dropped.
const ROUTE_IDLE: Duration = Duration::from_secs(60);

/// (consumer, topic, partition).
type RouteKey = (String, String, i32);

/// Shards of the route table.
const ROUTE_SHARDS: usize = 16;

/// Who is on the secondary, sharded by (consumer, topic, partition): connections deciding
/// different partitions rarely wait on each other.
struct RouteTable {
    shards: Vec<Mutex<HashMap<RouteKey, RouteState>>>,
    /// Routes in all shards (the `tollgate_tiered_on_secondary` gauge).
    count: AtomicUsize,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            shards: (0..ROUTE_SHARDS).map(|_| Mutex::default()).collect(),
            count: AtomicUsize::new(0),
        }
    }
}

impl RouteTable {
    fn shard(&self, key: &RouteKey) -> std::sync::MutexGuard<'_, HashMap<RouteKey, RouteState>> {
        use std::hash::{Hash, Hasher};
        // A fixed hasher: the same key must always find the same shard.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        self.shards[h.finish() as usize % ROUTE_SHARDS]
            .lock()
            .expect("lock")
    }

    /// Call `f` on every route, one shard locked at a time.
    fn each(&self, mut f: impl FnMut(&RouteKey, &RouteState)) {
        for shard in &self.shards {
            for (k, r) in shard.lock().expect("lock").iter() {
                f(k, r);
            }
        }
    }
}

/// Tiered reads, shared by every connection.
pub(crate) struct Tiered {
    pub(crate) cfg: TieredConfig,
    pub(crate) syncs: Arc<Syncs>,
    pub(crate) secondary: ClusterClient,
    pub(crate) primary: ClusterClient,
    metrics: Arc<Metrics>,
    routes: RouteTable,
    /// Secondary high watermark per primary (topic, partition), and when it was seen.
    secondary_hw: Mutex<HashMap<(String, i32), (i64, Instant)>>,
    /// Bytes the routing layer's read-ahead holds, all connections together (bounded by
    /// `tiered.read_ahead_bytes`).
    pub(crate) read_ahead_held: std::sync::atomic::AtomicUsize,
}

impl Tiered {
    pub(crate) fn new(
        cfg: TieredConfig,
        primary_bootstrap: Vec<String>,
        primary: UpstreamSettings,
        secondary: UpstreamSettings,
        metrics: Arc<Metrics>,
    ) -> Tiered {
        Tiered {
            syncs: Arc::new(Syncs::new(cfg.mirror == Mirror::Tollgate)),
            secondary: ClusterClient::new(
                cfg.secondary_bootstrap_servers.clone(),
                secondary,
                metrics.clone(),
            ),
            primary: ClusterClient::new(primary_bootstrap, primary, metrics.clone()),
            cfg,
            metrics,
            routes: RouteTable::default(),
            secondary_hw: Mutex::new(HashMap::new()),
            read_ahead_held: Default::default(),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Primary or secondary for one partition fetch (before availability is checked).
    pub(crate) fn decide(
        &self,
        consumer: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        head: Option<Head>,
        pinned: Option<&'static str>,
    ) -> Route {
        let key = (consumer.to_string(), topic.to_string(), partition);
        let lag = head.map(|h| {
            let records = (h.high_watermark - offset).max(0);
            if self.cfg.lag_unit == LagUnit::Bytes {
                (records as f64 * h.bytes_per_offset) as i64
            } else {
                records
            }
        });
        let mut routes = self.routes.shard(&key);
        let on = routes.contains_key(&key);
        let route = if let Some(reason) = pinned {
            Route::Secondary(reason)
        } else {
            match lag {
                None => Route::Primary("head_unknown"),
                Some(l) if on && l > self.cfg.exit_lag as i64 => Route::Secondary("lag"),
                Some(l) if !on && l > self.cfg.enter_lag as i64 => Route::Secondary("lag"),
                Some(_) => Route::Primary("near_head"),
            }
        };
        match route {
            Route::Secondary(_) => {
                let now = Instant::now();
                let e = routes.entry(key).or_insert_with(|| {
                    self.routes.count.fetch_add(1, Ordering::Relaxed);
                    RouteState {
                        since: SystemTime::now(),
                        last_seen: now,
                        offset,
                        lag: 0,
                    }
                });
                e.last_seen = now;
                e.offset = offset;
                e.lag = lag.unwrap_or(0);
            }
            Route::Primary(_) => {
                if routes.remove(&key).is_some() {
                    self.routes.count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        drop(routes);
        self.metrics
            .tiered_on_secondary
            .set(self.routes.count.load(Ordering::Relaxed) as i64);
        route
    }

    /// Drop routes not used for a minute.
    pub(crate) fn sweep_routes(&self) {
        for shard in &self.routes.shards {
            let mut routes = shard.lock().expect("lock");
            let before = routes.len();
            routes.retain(|_, r| r.last_seen.elapsed() < ROUTE_IDLE);
            let gone = before - routes.len();
            self.routes.count.fetch_sub(gone, Ordering::Relaxed);
        }
        self.metrics
            .tiered_on_secondary
            .set(self.routes.count.load(Ordering::Relaxed) as i64);
    }

    /// Who is on the secondary now.
    pub(crate) fn routes(&self) -> Vec<RouteView> {
        let mut v: Vec<RouteView> = Vec::new();
        self.routes.each(|(c, t, p), r| {
            v.push(RouteView {
                consumer: c.clone(),
                topic: t.clone(),
                partition: *p,
                since: r
                    .since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                fetch_offset: r.offset,
                lag: r.lag,
            })
        });
        v.sort_by(|a, b| {
            (&a.consumer, &a.topic, a.partition).cmp(&(&b.consumer, &b.topic, b.partition))
        });
        v
    }

    /// Primary partitions currently served from the secondary.
    fn routed_partitions(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = Vec::new();
        self.routes.each(|(_, t, p), _| v.push((t.clone(), *p)));
        v.sort();
        v.dedup();
        v
    }

    /// The secondary's high watermark for a primary partition, as last seen.
    pub(crate) fn secondary_hw(&self, topic: &str, partition: i32) -> Option<(i64, Instant)> {
        self.secondary_hw
            .lock()
            .expect("lock")
            .get(&(topic.to_string(), partition))
            .copied()
    }

    pub(crate) fn observe_secondary_hw(&self, topic: &str, partition: i32, hw: i64) {
        self.secondary_hw
            .lock()
            .expect("lock")
            .insert((topic.to_string(), partition), (hw, Instant::now()));
    }
}

/// Read the offset-syncs topic from its beginning, forever, into `syncs` (a thread: the
/// consumer is librdkafka's). Returns when `stop` is set.
pub(crate) fn follow_syncs(
    bootstrap: String,
    props: Vec<(String, String)>,
    topic: String,
    syncs: Arc<Syncs>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer = match crate::tiered::mirror::eof_consumer(
        &bootstrap,
        "tollgate-offset-syncs",
        &props,
    ) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot create the offset-syncs consumer; tiered reads use the primary");
            return;
        }
    };
    // Wait for the topic (the mirror may not have created it yet).
    let partitions: Vec<i32> = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match crate::tiered::mirror::topic_partitions(&consumer, &topic) {
            Ok(Some(p)) => break p,
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        warn!(error = %e, "cannot read the offset-syncs topic");
        return;
    }
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) if open.remove(&p) && open.is_empty() => {
                syncs.loaded.store(true, Ordering::Relaxed);
                info!(syncs = syncs.len(), topic, "offset syncs loaded");
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => warn!(error = %e, "reading offset syncs"),
            Some(Ok(m)) => {
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    if let Some(((t, p), (up, down))) = crate::tiered::mirror::decode_sync(k, v) {
                        syncs.insert(&t, p, up, down);
                        metrics.tiered_offset_syncs.set(syncs.len() as i64);
                    }
                }
            }
        }
    }
}

/// Keep the primary's heads of secondary-served partitions fresh (every
/// `head_max_age_ms`), and the mirror-lag metric (every `mirror_lag_interval_ms`).
pub(crate) async fn refresh(
    tiered: Arc<Tiered>,
    heads: Arc<Heads>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let cfg = tiered.cfg.clone();
    let tick = Duration::from_millis(cfg.head_max_age_ms.clamp(100, 60_000));
    let mut last_lag = Instant::now() - Duration::from_secs(3600);
    let timeout = Duration::from_millis(cfg.secondary_timeout_ms);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        tiered.sweep_routes();
        for (topic, p) in tiered.routed_partitions() {
            let Some(h) = heads.get(&topic, p) else {
                continue;
            };
            if h.updated.elapsed() < tick {
                continue;
            }
            match tiered
                .primary
                .head(&topic, p, h.high_watermark, timeout)
                .await
            {
                Ok((hw, lso, start)) => {
                    heads.observe([(&(topic.clone(), p), Observed::offsets(hw, lso, start))])
                }
                Err(e) => tracing::debug!(topic, partition = p, error = %e, "primary head refresh"),
            }
        }
        if cfg.mirror_lag_interval_ms != 0
            && last_lag.elapsed() >= Duration::from_millis(cfg.mirror_lag_interval_ms)
        {
            last_lag = Instant::now();
            refresh_mirror_lag(&tiered, &heads, timeout).await;
        }
    }
}

/// `tollgate_tiered_mirror_lag_records`: how far each mirrored partition's copy is behind the
/// primary, from both clusters' heads and the offset syncs.
async fn refresh_mirror_lag(tiered: &Tiered, heads: &Heads, timeout: Duration) {
    let cfg = &tiered.cfg;
    // The partitions come from the offset-syncs topic: cap the series they make.
    let mirrored = tiered.syncs.partitions().into_iter();
    for (topic, p) in mirrored
        .filter(|(t, _)| cfg.mirrors(t))
        .take(MAX_MIRROR_LAG_SERIES)
    {
        let Some((_, down)) = tiered.syncs.latest(&topic, p) else {
            continue;
        };
        let secondary_topic = cfg.secondary_topic(&topic);
        let at = tiered
            .secondary_hw(&topic, p)
            .map_or(down, |x| x.0.max(down));
        let Ok((sec_hw, _, _)) = tiered
            .secondary
            .head(&secondary_topic, p, at, timeout)
            .await
        else {
            tiered
                .metrics
                .tiered_secondary_errors
                .with_label_values(&["head"])
                .inc();
            continue;
        };
        tiered.observe_secondary_hw(&topic, p, sec_hw);
        let known = heads.get(&topic, p).map(|h| h.high_watermark);
        let at = known.unwrap_or_else(|| tiered.syncs.up_of_end(&topic, p, sec_hw).unwrap_or(0));
        let Ok((prim_hw, lso, start)) = tiered.primary.head(&topic, p, at, timeout).await else {
            continue;
        };
        heads.observe([(&(topic.clone(), p), Observed::offsets(prim_hw, lso, start))]);
        if let Some(up) = tiered.syncs.up_of_end(&topic, p, sec_hw) {
            tiered
                .metrics
                .tiered_mirror_lag
                .with_label_values(&[&topic, &p.to_string()])
                .set((prim_hw - up).max(0));
        }
    }
}

/// Most `tollgate_tiered_mirror_lag_records` series (mirrored topic partitions) exported.
pub(crate) const MAX_MIRROR_LAG_SERIES: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH_HEADER: usize = crate::wire::records::BATCH_HEADER_BYTES;
    const ATTR_CONTROL: i16 = 0x20;

    /// One v2 record batch header (no records) at `base` spanning `n` offsets, padded to
    /// the minimum size; the CRC is not checked here.
    fn batch(base: i64, n: i32, control: bool) -> Vec<u8> {
        let mut b = vec![0u8; BATCH_HEADER];
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b[8..12].copy_from_slice(&((BATCH_HEADER - 12) as i32).to_be_bytes());
        b[16] = 2;
        if control {
            b[21..23].copy_from_slice(&ATTR_CONTROL.to_be_bytes());
        }
        b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
        b
    }

    fn base_of(b: &[u8]) -> i64 {
        i64::from_be_bytes(b[0..8].try_into().unwrap())
    }

    #[test]
    fn dense_syncs_translate_exactly_and_refuse_gaps() {
        let s = Syncs::new(true);
        assert_eq!(s.translate("t", 0, 5), Translation::NoSync);
        // 0 -> 0, then a gap at primary 100..102 (a transaction marker): sync 102 -> 100.
        s.insert("t", 0, 0, 0);
        s.insert("t", 0, 102, 100);
        let first = Segment {
            up_start: 0,
            down_start: 0,
            len: Some(100),
        };
        assert_eq!(s.translate("t", 0, 0), Translation::Exact(first));
        assert_eq!(s.translate("t", 0, 99), Translation::Exact(first));
        assert_eq!(s.translate("t", 0, 100), Translation::Inexact, "the gap");
        assert_eq!(s.translate("t", 0, 101), Translation::Inexact, "the gap");
        let tail = Segment {
            up_start: 102,
            down_start: 100,
            len: None,
        };
        assert_eq!(s.translate("t", 0, 500), Translation::Exact(tail));
        assert_eq!(tail.down(500), 498);
        assert_eq!(s.up_of_end("t", 0, 150), Some(152));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn sparse_syncs_are_exact_only_between_equal_steps() {
        let s = Syncs::new(false);
        s.insert("t", 0, 1000, 0);
        s.insert("t", 0, 1100, 100); // equal step: exact
        s.insert("t", 0, 1300, 150); // primary skipped: not exact
        assert!(matches!(s.translate("t", 0, 1050), Translation::Exact(_)));
        assert_eq!(s.translate("t", 0, 1200), Translation::Inexact);
        assert_eq!(s.translate("t", 0, 1400), Translation::Inexact, "tail");
        assert_eq!(s.translate("t", 0, 10), Translation::NoSync);
    }

    #[test]
    fn batches_are_rebased_inside_the_segment_only() {
        let seg = Segment {
            up_start: 1000,
            down_start: 10,
            len: Some(20),
        };
        let mut r = batch(10, 5, false);
        r.extend(batch(15, 10, false));
        r.extend(batch(25, 10, false)); // runs past the segment (ends at 34 > 29)
        let before = r.clone();
        let Scan::Batches { len, next } = scan_batches(&r, &seg) else {
            panic!("expected batches");
        };
        assert_eq!(len, 2 * BATCH_HEADER);
        assert_eq!(next, 1015);
        shift_base_offsets(&mut r[..len], seg.delta());
        assert_eq!(base_of(&r), 1000);
        assert_eq!(base_of(&r[BATCH_HEADER..]), 1005);
        // Everything after the base offset is untouched, and so is the batch left out.
        assert_eq!(&r[8..BATCH_HEADER], &before[8..BATCH_HEADER]);
        assert_eq!(&r[len..], &before[len..]);
        // A partial trailing batch is left out; nothing but a partial batch is empty.
        let mut p = batch(10, 5, false);
        p.extend(&batch(15, 5, false)[..30]);
        assert_eq!(
            scan_batches(&p, &seg),
            Scan::Batches {
                len: BATCH_HEADER,
                next: 1005
            }
        );
        assert_eq!(scan_batches(&p[BATCH_HEADER..], &seg), Scan::Empty);
        assert_eq!(scan_batches(&[], &seg), Scan::Empty);
        // A first batch that starts before the segment, or a control batch: not exact.
        assert_eq!(scan_batches(&batch(5, 10, false), &seg), Scan::Inexact);
        assert_eq!(scan_batches(&batch(10, 1, true), &seg), Scan::Inexact);
        // Open tail segment.
        let tail = Segment { len: None, ..seg };
        assert!(matches!(
            scan_batches(&batch(25, 100, false), &tail),
            Scan::Batches { next: 1115, .. }
        ));
    }

    fn tiered(enter: u64, exit: u64) -> Tiered {
        let cfg = TieredConfig {
            enter_lag: enter,
            exit_lag: exit,
            ..TieredConfig::default()
        };
        Tiered::new(
            cfg,
            vec!["127.0.0.1:1".into()],
            UpstreamSettings::plain(Duration::from_millis(10), 1 << 20),
            UpstreamSettings::plain(Duration::from_millis(10), 1 << 20),
            Arc::new(Metrics::new()),
        )
    }

    fn head(hw: i64) -> Option<Head> {
        Some(Head {
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
            bytes_per_offset: 100.0,
            updated: Instant::now(),
        })
    }

    #[test]
    fn routing_has_hysteresis_and_probation_always_reads_the_secondary() {
        let t = tiered(1000, 100);
        assert_eq!(
            t.decide("g", "t", 0, 0, None, None),
            Route::Primary("head_unknown")
        );
        assert_eq!(
            t.decide("g", "t", 0, 9_500, head(10_000), None),
            Route::Primary("near_head")
        );
        assert_eq!(
            t.decide("g", "t", 0, 8_000, head(10_000), None),
            Route::Secondary("lag")
        );
        assert_eq!(t.routes().len(), 1);
        // Between the thresholds: stays on the secondary ...
        assert_eq!(
            t.decide("g", "t", 0, 9_500, head(10_000), None),
            Route::Secondary("lag")
        );
        // ... until within exit_lag.
        assert_eq!(
            t.decide("g", "t", 0, 9_950, head(10_000), None),
            Route::Primary("near_head")
        );
        assert!(t.routes().is_empty());
        // Another consumer between the thresholds starts on the primary.
        assert_eq!(
            t.decide("h", "t", 0, 9_500, head(10_000), None),
            Route::Primary("near_head")
        );
        assert_eq!(
            t.decide("p", "t", 0, 9_999, head(10_000), Some("probation")),
            Route::Secondary("probation")
        );
        // Bytes: 20 records x 100 bytes > 1000.
        let mut b = tiered(1000, 100);
        b.cfg.lag_unit = LagUnit::Bytes;
        assert_eq!(
            b.decide("g", "t", 0, 9_980, head(10_000), None),
            Route::Secondary("lag")
        );
    }
}
