//! Partition heads: one store, fed by every source that tells where a partition ends.
//!
//! Sources: Fetch responses (high watermark, last stable offset, log start, and the size of
//! the batches that came back), Produce acknowledgements (the head is at least past the
//! acknowledged batch), Tollgate's own ListOffsets refresh of quiet partitions, and the tiered
//! reads' refresh of mirrored partitions. Each source reports a whole response in one call, so
//! the store's lock is taken once per response, not once per partition.
//!
//! Readers:
//! - hot/cold classification and the tiered-read decision, through [`Heads::get`] (the last
//!   head and the bytes-per-offset estimate);
//! - lag, through [`Heads::lag_inputs`]: the head and how long the oldest record past a
//!   position has been waiting, computed for every tracked partition under one lock;
//! - the quiet-head refresh, through [`Heads::quiet`].
//!
//! Time lag needs the time each head was first seen: every partition keeps up to
//! [`HEAD_SAMPLES`] (head, first seen) samples, thinned by half when full (coarser, same span).
//! Partitions nobody reads or writes are dropped after the idle period (`attribution.
//! idle_series_seconds`) unless lag still tracks them ([`Heads::expire`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::consumers::groups::TopicPartition;

/// Most head samples kept per partition.
pub(crate) const HEAD_SAMPLES: usize = 512;

/// Weight of a new sample in the bytes-per-offset average.
const BPO_ALPHA: f64 = 0.2;

/// What a partition's head looks like, as last seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Head {
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    pub(crate) log_start_offset: i64,
    /// Average bytes per offset (exponentially weighted), 0 until data was seen.
    pub(crate) bytes_per_offset: f64,
    /// When the head was last observed (changed or not).
    pub(crate) updated: Instant,
}

/// One partition's head as a source reported it; -1 for what the source does not know.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Bytes and offsets spanned by complete batches that came with it (0 if none).
    pub batch_bytes: u64,
    pub batch_offsets: u64,
}

impl Observed {
    /// Only offsets (a ListOffsets answer, a refresh).
    pub fn offsets(high_watermark: i64, last_stable_offset: i64, log_start_offset: i64) -> Self {
        Observed {
            high_watermark,
            last_stable_offset,
            log_start_offset,
            batch_bytes: 0,
            batch_offsets: 0,
        }
    }
}

/// What lag needs of one tracked partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LagInput {
    /// The high watermark, or the last stable offset for `read_committed` readers.
    pub(crate) head: i64,
    /// How long the oldest record past the position has waited (0 at the head).
    pub(crate) waiting: Duration,
}

#[derive(Debug)]
struct PartitionHead {
    head: Head,
    /// The greatest head seen and the time each new one was first seen, oldest first.
    samples: VecDeque<(i64, Instant)>,
    /// Greatest last stable offset seen.
    lso: i64,
}

impl PartitionHead {
    fn new(now: Instant) -> Self {
        PartitionHead {
            head: Head {
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                bytes_per_offset: 0.0,
                updated: now,
            },
            samples: VecDeque::new(),
            lso: -1,
        }
    }

    fn observe(&mut self, o: &Observed, now: Instant) {
        let h = &mut self.head;
        if o.high_watermark >= 0 {
            h.high_watermark = o.high_watermark;
        }
        if o.last_stable_offset >= 0 {
            h.last_stable_offset = o.last_stable_offset;
            self.lso = self.lso.max(o.last_stable_offset);
        }
        if o.log_start_offset >= 0 {
            h.log_start_offset = o.log_start_offset;
        }
        h.updated = now;
        self.sample(o.high_watermark, now);
        self.refine(o.batch_bytes, o.batch_offsets);
    }

    /// A produce acknowledgement: the head is at least `at_least`.
    fn produced(&mut self, at_least: i64, bytes: u64, offsets: u64, now: Instant) {
        if at_least > self.head.high_watermark {
            self.head.high_watermark = at_least;
            self.head.updated = now;
        }
        self.sample(at_least, now);
        self.refine(bytes, offsets);
    }

    fn sample(&mut self, head: i64, now: Instant) {
        let greatest = self.samples.back().map_or(-1, |s| s.0);
        if head < 0 || (head <= greatest && !self.samples.is_empty()) {
            return;
        }
        if self.samples.len() >= HEAD_SAMPLES {
            let kept = self.samples.iter().skip(1).step_by(2).copied().collect();
            self.samples = kept;
        }
        self.samples.push_back((head, now));
    }

    fn refine(&mut self, bytes: u64, offsets: u64) {
        if offsets == 0 || bytes == 0 {
            return;
        }
        let sample = bytes as f64 / offsets as f64;
        let bpo = &mut self.head.bytes_per_offset;
        *bpo = if *bpo == 0.0 {
            sample
        } else {
            *bpo * (1.0 - BPO_ALPHA) + sample * BPO_ALPHA
        };
    }

    /// The head a reader sees: the last stable offset for `read_committed` readers.
    fn head_for(&self, read_committed: bool) -> Option<i64> {
        let greatest = self.samples.back()?.0;
        Some(if read_committed && self.lso > 0 {
            self.lso
        } else {
            greatest
        })
    }

    /// How long the record at `position` has been waiting (0 when `position` is at `head`).
    fn waiting(&self, position: i64, head: i64, now: Instant) -> Duration {
        let greatest = self.samples.back().map_or(-1, |s| s.0);
        if position >= head.min(greatest) {
            return Duration::ZERO;
        }
        // The first sample whose head passed `position`: the record existed by then.
        let idx = self.samples.partition_point(|(h, _)| *h <= position);
        let since = self
            .samples
            .get(idx)
            .or(self.samples.front())
            .map_or(now, |s| s.1);
        now.saturating_duration_since(since)
    }
}

/// The partition-head store: per partition its high watermark, last stable offset, log start,
/// bytes per offset and when each head was first seen, fed by every source that learns one.
#[derive(Default)]
pub struct Heads {
    inner: Mutex<HashMap<TopicPartition, PartitionHead>>,
}

impl Heads {
    pub fn new() -> Heads {
        Heads::default()
    }

    /// Heads from one response (Fetch, ListOffsets, a refresh): one lock for all of them.
    pub fn observe<'a>(&self, observed: impl IntoIterator<Item = (&'a TopicPartition, Observed)>) {
        let now = Instant::now();
        let mut heads = self.inner.lock().expect("lock");
        for (tp, o) in observed {
            slot(&mut heads, tp, now).observe(&o, now);
        }
    }

    /// Acknowledged produces of one response: (partition, head at least, bytes, offsets).
    pub(crate) fn observe_produced<'a>(
        &self,
        acked: impl IntoIterator<Item = (&'a TopicPartition, i64, u64, u64)>,
    ) {
        let now = Instant::now();
        let mut heads = self.inner.lock().expect("lock");
        for (tp, at_least, bytes, offsets) in acked {
            slot(&mut heads, tp, now).produced(at_least, bytes, offsets, now);
        }
    }

    /// The last known head of a partition.
    pub(crate) fn get(&self, topic: &str, partition: i32) -> Option<Head> {
        self.inner
            .lock()
            .expect("lock")
            .get(&(topic.to_string(), partition))
            .map(|p| p.head)
    }

    /// The bytes-per-offset estimate of each partition (0 when unknown), under one lock.
    pub(crate) fn bytes_per_offset<'a>(
        &self,
        tps: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Vec<f64> {
        let heads = self.inner.lock().expect("lock");
        tps.into_iter()
            .map(|tp| heads.get(tp).map_or(0.0, |p| p.head.bytes_per_offset))
            .collect()
    }

    /// For each (partition, position, read_committed): its head and how long the oldest
    /// record past the position has waited, or `None` while no head was seen. One lock, no
    /// copies of the histories: lag evaluates on what this returns.
    pub(crate) fn lag_inputs<'a>(
        &self,
        tracked: impl IntoIterator<Item = (&'a TopicPartition, Option<i64>, bool)>,
    ) -> Vec<Option<LagInput>> {
        let now = Instant::now();
        let heads = self.inner.lock().expect("lock");
        tracked
            .into_iter()
            .map(|(tp, position, read_committed)| {
                let p = heads.get(tp)?;
                let head = p.head_for(read_committed)?;
                let waiting = position.map_or(Duration::ZERO, |pos| p.waiting(pos, head, now));
                Some(LagInput { head, waiting })
            })
            .collect()
    }

    /// How long ago the record at `offset` of `tp` was written, as far as the head history
    /// tells: 0 at the head; for an offset older than the history, the history's span (a
    /// lower bound). `None` while no head was seen.
    pub(crate) fn record_age(&self, tp: &TopicPartition, offset: i64) -> Option<Duration> {
        let heads = self.inner.lock().expect("lock");
        let p = heads.get(tp)?;
        let head = p.samples.back()?.0;
        Some(p.waiting(offset, head, Instant::now()))
    }

    /// Of `tracked`, the partitions whose head was not observed for `quiet`.
    pub(crate) fn quiet(
        &self,
        tracked: impl IntoIterator<Item = TopicPartition>,
        quiet: Duration,
    ) -> Vec<TopicPartition> {
        let now = Instant::now();
        let heads = self.inner.lock().expect("lock");
        tracked
            .into_iter()
            .filter(|tp| {
                heads
                    .get(tp)
                    .is_none_or(|h| now.duration_since(h.head.updated) >= quiet)
            })
            .collect()
    }

    /// Drop partitions not observed for `idle`, except those `keep` names (lag tracks them).
    /// Returns how many were dropped.
    pub(crate) fn expire(&self, idle: Duration, keep: impl Fn(&TopicPartition) -> bool) -> usize {
        let now = Instant::now();
        let mut heads = self.inner.lock().expect("lock");
        let before = heads.len();
        heads.retain(|tp, h| now.duration_since(h.head.updated) < idle || keep(tp));
        before - heads.len()
    }
}

fn slot<'a>(
    heads: &'a mut HashMap<TopicPartition, PartitionHead>,
    tp: &TopicPartition,
    now: Instant,
) -> &'a mut PartitionHead {
    if !heads.contains_key(tp) {
        heads.insert(tp.clone(), PartitionHead::new(now));
    }
    heads.get_mut(tp).expect("inserted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".into(), p)
    }

    #[test]
    fn every_source_feeds_the_same_head() {
        let heads = Heads::new();
        heads.observe([(&tp(0), Observed::offsets(100, 90, 5))]);
        heads.observe_produced([(&tp(0), 120, 300, 10)]);
        let h = heads.get("t", 0).unwrap();
        assert_eq!(h.high_watermark, 120);
        assert_eq!(h.last_stable_offset, 90);
        assert_eq!(h.log_start_offset, 5);
        assert_eq!(h.bytes_per_offset, 30.0);
        // A fetch response is the broker's word: it sets the head.
        heads.observe([(&tp(0), Observed::offsets(110, -1, -1))]);
        assert_eq!(heads.get("t", 0).unwrap().high_watermark, 110);
    }

    #[test]
    fn bytes_per_offset_is_a_moving_average() {
        let heads = Heads::new();
        let o = |bytes, offsets| Observed {
            batch_bytes: bytes,
            batch_offsets: offsets,
            ..Observed::offsets(1000, 1000, 0)
        };
        heads.observe([(&tp(0), o(100, 10))]);
        assert_eq!(heads.get("t", 0).unwrap().bytes_per_offset, 10.0);
        heads.observe([(&tp(0), o(300, 10))]);
        let bpo = heads.get("t", 0).unwrap().bytes_per_offset;
        assert!((bpo - 14.0).abs() < 1e-9, "{bpo}");
    }

    #[test]
    fn time_lag_is_how_long_the_oldest_unfetched_record_waited() {
        let t0 = Instant::now();
        let mut h = PartitionHead::new(t0);
        h.observe(&Observed::offsets(10, -1, -1), t0);
        h.observe(&Observed::offsets(20, -1, -1), t0 + Duration::from_secs(5));
        h.observe(&Observed::offsets(20, -1, -1), t0 + Duration::from_secs(6)); // no new sample
        assert_eq!(h.samples.len(), 2);
        let now = t0 + Duration::from_secs(8);
        assert_eq!(h.waiting(20, 20, now), Duration::ZERO);
        assert_eq!(h.waiting(15, 20, now), Duration::from_secs(3)); // head passed 15 at t0+5
        assert_eq!(h.waiting(3, 20, now), Duration::from_secs(8));
        // A read_committed reader at the last stable offset waits for nothing.
        assert_eq!(h.waiting(15, 15, now), Duration::ZERO);
        for i in 0..2000 {
            let at = t0 + Duration::from_secs(10 + i as u64);
            h.observe(&Observed::offsets(100 + i, -1, -1), at);
        }
        assert!(h.samples.len() <= HEAD_SAMPLES);
        assert_eq!(h.samples.back().unwrap().0, 2099);
    }

    #[test]
    fn lag_inputs_use_the_lso_for_read_committed_and_wait_from_first_sight() {
        let heads = Heads::new();
        heads.observe([(&tp(0), Observed::offsets(100, 80, 0))]);
        let got = heads.lag_inputs([
            (&tp(0), Some(100), false),
            (&tp(0), Some(50), true),
            (&tp(1), Some(0), false),
        ]);
        assert_eq!(got[0].unwrap().head, 100);
        assert_eq!(got[0].unwrap().waiting, Duration::ZERO);
        assert_eq!(got[1].unwrap().head, 80);
        assert!(got[2].is_none());
    }

    #[test]
    fn history_is_thinned_not_grown() {
        let heads = Heads::new();
        for h in 0..(HEAD_SAMPLES as i64 * 3) {
            heads.observe([(&tp(0), Observed::offsets(h, -1, -1))]);
        }
        let inner = heads.inner.lock().unwrap();
        assert!(inner[&tp(0)].samples.len() <= HEAD_SAMPLES);
    }

    #[test]
    fn expiry_keeps_what_lag_tracks() {
        let heads = Heads::new();
        heads.observe([
            (&tp(0), Observed::offsets(1, -1, -1)),
            (&tp(1), Observed::offsets(1, -1, -1)),
        ]);
        assert_eq!(heads.expire(Duration::ZERO, |tp| tp.1 == 1), 1);
        assert!(heads.get("t", 0).is_none());
        assert!(heads.get("t", 1).is_some());
    }
}
